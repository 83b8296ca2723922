"""Image pre- and post-processing of the SD3 pipelines in numpy and Pillow: diffusers' `VaeImageProcessor` without torch.

`ImageProcessor` takes the same arguments as diffusers' `VaeImageProcessor` and gives the same numbers (tests compare
them): `preprocess` turns images into (B, C, H, W) float32 in [-1, 1], resized as diffusers resizes (PIL's filter for
PIL images, torch's "nearest" for arrays); `postprocess` turns decoded (B, C, H, W) images into PIL images or
(B, H, W, C) arrays in [0, 1]. The inpainting pipeline's `mask_processor` is `ImageProcessor(do_normalize=False,
do_binarize=True, do_convert_grayscale=True)`.

What an image may be (`as_image_batch`, the inputs diffusers documents, converted or refused by name): a PIL image
in any mode (converted to RGB; masks to L); a numpy array or torch tensor (H, W), (H, W, C), (B, H, W, C) or
(B, C, H, W), C in 1, 3, 4 (gray is repeated to RGB, RGBA loses its alpha as `convert("RGB")` does; masks keep one
channel), float in [0, 1] or uint8 in 0-255 (scaled by 1/255 as PIL images are); or a list of these. As in diffusers,
tensors may be in [-1, 1] (then not normalized again, with a warning), a torch tensor (C, H, W) is channels-first,
and a channels-first 4-D array whose C is the VAE's latent channels is taken as latents and passed through.

Imports numpy and Pillow; torch only to read a torch tensor a user passes, or for `output_type="pt"`.
"""

import warnings
from dataclasses import dataclass

import numpy as np
import PIL.Image
import PIL.ImageOps

RESAMPLING = {
    "linear": PIL.Image.Resampling.BILINEAR,
    "bilinear": PIL.Image.Resampling.BILINEAR,
    "bicubic": PIL.Image.Resampling.BICUBIC,
    "lanczos": PIL.Image.Resampling.LANCZOS,
    "nearest": PIL.Image.Resampling.NEAREST,
}
OUTPUT_TYPES = ("latent", "pt", "np", "pil")
RESIZE_MODES = ("default", "fill", "crop")


def is_torch_tensor(value) -> bool:
    """True for a `torch.Tensor`, told apart without importing torch."""
    return type(value).__module__.startswith("torch") and hasattr(value, "detach")


def _to_numpy(value) -> np.ndarray:
    return value.detach().cpu().numpy() if is_torch_tensor(value) else value


IMAGE_KINDS = (
    "a PIL image, a numpy array or torch tensor ((H, W), (H, W, C), (B, H, W, C) or (B, C, H, W) with C in 1, 3, 4; "
    "floats in [0, 1] or uint8 in 0-255), or a list of these"
)
IMAGE_CHANNELS = (1, 3, 4)  # gray, RGB, RGBA
RANGE_SLACK = 0.1  # images may overshoot [0, 1] (or [-1, 1]) by this much: the ringing of a bicubic or Lanczos resize
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # PIL's convert("L") weights, for masks given in colour


@dataclass(frozen=True)
class ImageBatch:
    """Images as the processors take them (see `as_image_batch`): PIL images (RGB; masks L or RGB) or a (B, C, H, W)
    float32 array with C = 3 (masks 1), values as given, or latents (C = the VAE's latent channels)."""

    images: list | np.ndarray
    is_latents: bool = False
    from_torch: bool = False  # given as torch tensors: the call hands torch tensors back

    def __len__(self) -> int:
        return len(self.images)

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the first image."""
        first = self.images[0]
        return (first.height, first.width) if isinstance(first, PIL.Image.Image) else tuple(self.images.shape[2:4])


def as_image_batch(image, *, name: str = "image", mask: bool = False, latent_channels: int | None = None) -> ImageBatch:
    """`image` (see the module docstring) as an `ImageBatch`, or a TypeError or ValueError that names `name`, shows what
    it got and says the fix. `mask`: one channel, values in [0, 1]; `latent_channels`: the VAE's (None: no latents)."""
    if isinstance(image, ImageBatch):
        return image
    items = image if isinstance(image, list) else [image]
    if not items:
        raise ValueError(f"`{name}` is an empty list; pass {IMAGE_KINDS}.")
    is_pil = [isinstance(item, PIL.Image.Image) for item in items]
    for item in items:
        if not (isinstance(item, (PIL.Image.Image, np.ndarray)) or is_torch_tensor(item)):
            what = f"a list holding {type(item).__name__}" if isinstance(image, list) else type(item).__name__
            raise TypeError(f"`{name}` has to be {IMAGE_KINDS}, but is {what}: {item!r:.80}.")
    if all(is_pil):
        return ImageBatch(images=[_convert_mode(item, mask=mask) for item in items])
    if any(is_pil):
        raise TypeError(f"`{name}` mixes PIL images and arrays in one list; pass a list of one kind.")
    arrays = [_as_nchw(item, name=name, mask=mask, latent_channels=latent_channels) for item in items]
    if len({is_latents for _, is_latents in arrays}) > 1:
        raise ValueError(f"`{name}` mixes latents and images in one list; pass one kind.")
    shapes = [array.shape[1:] for array, _ in arrays]
    if len(set(shapes)) > 1:
        sizes = [shape[1:] for shape in shapes]
        raise ValueError(
            f"`{name}` holds images of different sizes {sizes} (height, width); resize them to one size first, or pass "
            "PIL images (each is resized to `height` x `width`)."
        )
    return ImageBatch(
        images=np.concatenate([array for array, _ in arrays]), is_latents=arrays[0][1], from_torch=any(is_torch_tensor(item) for item in items)
    )


def _convert_mode(image: PIL.Image.Image, *, mask: bool) -> PIL.Image.Image:
    """Images to RGB (RGBA loses its alpha, before any resize); masks of modes other than L and RGB to L (RGB masks
    are resized first and then converted, as diffusers does)."""
    if mask:
        return image if image.mode in ("L", "RGB") else image.convert("L")
    return image if image.mode == "RGB" else image.convert("RGB")


def _as_float(value, *, name: str, mask: bool) -> np.ndarray:
    """A numpy array or torch tensor as float numpy: uint8 scaled by 1/255 (float32), bool (masks only) as 0 and 1."""
    if is_torch_tensor(value):
        value = value.detach().cpu()
        value = value.float() if str(value.dtype) == "torch.bfloat16" else value
        value = value.numpy()
    if value.dtype == np.uint8:
        return value.astype(np.float32) / 255.0
    if value.dtype == np.bool_ and mask:
        return value.astype(np.float32)
    if value.dtype.kind != "f":
        fix = "pass floats in [0, 1] or uint8 in 0-255"
        if value.dtype.kind in "iu":
            fix += " (e.g. `array.astype(np.uint8)` for 0-255 values, `array.astype(np.float32)` for 0 and 1)"
        if value.dtype == np.bool_:
            fix += " (a boolean array is a mask: pass it as `mask_image`, or as `array.astype(np.float32)`)"
        raise TypeError(f"`{name}` has dtype {value.dtype}: {fix}.")
    return value if value.dtype == np.float64 else value.astype(np.float32)  # float64 until the end, as in diffusers


def _layout(shape: tuple, *, torch_input: bool, mask: bool, latent_channels: int | None) -> str | None:
    """How an array of `shape` is read (diffusers' meanings first): "HW", "HWC", "CHW", "BHW", "BHWC", "BCHW",
    "latents", or None for a shape no image has."""
    if len(shape) == 2:
        return "HW"
    if len(shape) == 3:
        if torch_input:  # diffusers: a 3-D tensor is (C, H, W), or (B, H, W) for masks
            return "BHW" if mask else ("CHW" if shape[0] in IMAGE_CHANNELS else "HWC" if shape[-1] in IMAGE_CHANNELS else None)
        return "HWC" if shape[-1] in IMAGE_CHANNELS else ("BHW" if mask else None)
    if len(shape) == 4:
        channels_first = shape[1] in IMAGE_CHANNELS or shape[1] == latent_channels
        if torch_input and channels_first or not torch_input and shape[-1] not in IMAGE_CHANNELS and channels_first:
            return "latents" if shape[1] == latent_channels and not mask else "BCHW"
        return "BHWC" if shape[-1] in IMAGE_CHANNELS else None
    return None


def _as_nchw(value, *, name: str, mask: bool, latent_channels: int | None) -> tuple[np.ndarray, bool]:
    """(a (B, C, H, W) float32 array with C = 3 (1 for masks) or the latent channels, whether it is latents)."""
    torch_input = is_torch_tensor(value)
    array = _as_float(value, name=name, mask=mask)
    if array.size == 0:
        raise ValueError(f"`{name}` is empty (shape {tuple(array.shape)}); pass {IMAGE_KINDS}.")
    layout = _layout(array.shape, torch_input=torch_input, mask=mask, latent_channels=None if mask else latent_channels)
    if layout is None:
        latents = "" if mask or latent_channels is None else f", or latents (B, {latent_channels}, h, w)"
        raise ValueError(
            f"`{name}` has shape {tuple(array.shape)}, which is no image: pass (H, W), (H, W, C), (B, H, W, C) or (B, C, H, W) "
            f"with C in 1 (gray), 3 (RGB) or 4 (RGBA){latents}."
        )
    check_finite_image(array, name=name, mask=mask, latents=layout == "latents")
    if layout == "latents":
        return array, True
    array = {
        "HW": lambda a: a[None, None], "HWC": lambda a: a.transpose(2, 0, 1)[None], "CHW": lambda a: a[None],
        "BHW": lambda a: a[:, None], "BHWC": lambda a: a.transpose(0, 3, 1, 2), "BCHW": lambda a: a,
    }[layout](array)  # fmt: skip
    if mask:
        return (array if array.shape[1] == 1 else np.einsum("bchw,c->bhw", array[:, :3], LUMA)[:, None]), False
    return (np.repeat(array, 3, axis=1) if array.shape[1] == 1 else array[:, :3]), False


def check_finite_image(array: np.ndarray, *, name: str, mask: bool, latents: bool = False) -> None:
    """Raise a ValueError unless float `array` is finite and in range: [0, 1] for masks, [0, 1] or [-1, 1] for images
    (give or take `RANGE_SLACK`), any range for `latents`."""
    finite = np.isfinite(array)
    if not finite.all():
        raise ValueError(
            f"`{name}` contains NaN or infinite values ({array.size - int(finite.sum())} of {array.size}); pass finite "
            f"values{'' if latents else ' in [0, 1]'}: a NaN spreads to the whole image."
        )
    if latents:
        return
    low, high = float(array.min()), float(array.max())
    if mask and (low < 0 or high > 1):
        raise ValueError(
            f"`{name}` values have to be in [0, 1] (binarized at 0.5: 1 repaints) but range from {low} to {high}; "
            "divide a 0-255 float mask by 255, or pass it as uint8."
        )
    if not mask and (low < -1 - RANGE_SLACK or high > 1 + RANGE_SLACK):
        raise ValueError(
            f"`{name}` values have to be in [0, 1] (floats; uint8 arrays are read as 0-255; tensors may be in [-1, 1]) but "
            f"range from {low} to {high}; divide a 0-255 float image by 255, or pass it as uint8."
        )


def interpolate_nearest(images: np.ndarray, *, size: tuple[int, int]) -> np.ndarray:
    """(B, C, H, W) `images` resized to `size` = (height, width) as `torch.nn.functional.interpolate(images, size)`
    (mode "nearest": source index floor(i * in / out) in float32) does."""

    def source_indices(in_size: int, out_size: int) -> np.ndarray:
        if out_size == in_size:
            return np.arange(out_size)
        scale = np.float32(in_size) / np.float32(out_size)
        return np.minimum(np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64), in_size - 1)

    rows = source_indices(images.shape[2], size[0])
    columns = source_indices(images.shape[3], size[1])
    return images[:, :, rows][:, :, :, columns]


def _grow_span(low: int, high: int, *, length: float, limit: int) -> tuple[int, int]:
    """[low, high) grown about its centre to `length`, then moved back inside [0, limit) (`get_crop_region`'s step 3)."""
    grow = int(length - (high - low))
    low, high = low - grow // 2, high + grow - grow // 2
    if high >= limit:
        low, high = low - (high - limit), limit
    if low < 0:
        low, high = 0, high - low
    return low, min(high, limit)


@dataclass(frozen=True)
class ImageProcessor:
    """diffusers' `VaeImageProcessor` (0.39) in numpy: the same arguments, methods and results."""

    do_resize: bool = True  # resize to `height` x `width`, or down to multiples of `vae_scale_factor`
    vae_scale_factor: int = 8
    vae_latent_channels: int = 4  # a (B, this, h, w) tensor is taken as latents and passed through
    resample: str = "lanczos"  # PIL's filter for PIL images (arrays use nearest)
    reducing_gap: int | None = None
    do_normalize: bool = True  # [0, 1] -> [-1, 1]
    do_binarize: bool = False  # values < 0.5 -> 0, others -> 1 (masks)
    do_convert_rgb: bool = False  # PIL images are converted to RGB anyway (masks to L): see `as_image_batch`
    do_convert_grayscale: bool = False  # masks: one channel

    def __post_init__(self):
        if self.do_convert_rgb and self.do_convert_grayscale:
            raise ValueError("`do_convert_rgb` and `do_convert_grayscale` can not both be set to `True`; choose one.")
        if self.resample not in RESAMPLING:
            raise ValueError(f"`resample` must be one of {list(RESAMPLING)} but is {self.resample!r}.")

    # -- Conversions ---------------------------------------------------------------------------------------

    @staticmethod
    def numpy_to_pil(images: np.ndarray) -> list[PIL.Image.Image]:
        """(B, H, W, C) or (H, W, C) in [0, 1] -> PIL images (mode "L" for one channel)."""
        if images.ndim == 3:
            images = images[None, ...]
        scaled = images * 255
        images = np.round(scaled, out=scaled).astype("uint8")
        if images.shape[-1] == 1:
            return [PIL.Image.fromarray(image.squeeze(), mode="L") for image in images]
        return [PIL.Image.fromarray(image) for image in images]

    @staticmethod
    def pil_to_numpy(images: list[PIL.Image.Image] | PIL.Image.Image) -> np.ndarray:
        """PIL images -> (B, H, W, C) (or (B, H, W) for mode "L") float32 in [0, 1]."""
        images = images if isinstance(images, list) else [images]
        return np.stack([np.array(image).astype(np.float32) / 255.0 for image in images], axis=0)

    @staticmethod
    def numpy_to_nchw(images: np.ndarray) -> np.ndarray:
        """(B, H, W, C) or (B, H, W) -> (B, C, H, W), as diffusers' `numpy_to_pt`."""
        if images.ndim == 3:
            images = images[..., None]
        return images.transpose(0, 3, 1, 2)

    @staticmethod
    def normalize(images: np.ndarray) -> np.ndarray:
        """[0, 1] -> [-1, 1]."""
        return 2.0 * images - 1.0

    @staticmethod
    def denormalize(images: np.ndarray) -> np.ndarray:
        """[-1, 1] -> [0, 1], clipped, into a new array (one temporary, not three: a 2048 px image is 50 MB)."""
        result = images * 0.5
        result += 0.5
        return np.clip(result, 0, 1, out=result)

    @staticmethod
    def convert_to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
        return image.convert("RGB")

    @staticmethod
    def convert_to_grayscale(image: PIL.Image.Image) -> PIL.Image.Image:
        return image.convert("L")

    def binarize(self, image: np.ndarray) -> np.ndarray:
        """Values below 0.5 -> 0, the others -> 1."""
        image = image.copy()
        image[image < 0.5] = 0
        image[image >= 0.5] = 1
        return image

    # -- Sizes ---------------------------------------------------------------------------------------------

    def get_default_height_width(self, image, *, height: int | None = None, width: int | None = None, channels_first: bool = True) -> tuple[int, int]:
        """`height` and `width`, from the image where not given, rounded down to multiples of `vae_scale_factor`.
        Arrays are (B, C, H, W) when `channels_first`, else (B, H, W[, C])."""
        if isinstance(image, PIL.Image.Image):
            size = (image.height, image.width)
        else:
            size = image.shape[2:4] if channels_first else image.shape[1:3]
        height = size[0] if height is None else height
        width = size[1] if width is None else width
        return height - height % self.vae_scale_factor, width - width % self.vae_scale_factor

    @staticmethod
    def get_crop_region(mask_image: PIL.Image.Image, width: int, height: int, pad: int = 0) -> tuple[int, int, int, int]:
        """(x1, y1, x2, y2): the box around the mask's non-zero pixels, grown by `pad` and to the aspect ratio of
        `width` x `height` (inpainting's `padding_mask_crop`)."""
        # Adapted from diffusers.image_processor.VaeImageProcessor.get_crop_region
        mask_image = mask_image.convert("L")
        mask = np.array(mask_image)
        h, w = mask.shape
        columns, rows = np.flatnonzero(mask.any(axis=0)), np.flatnonzero(mask.any(axis=1))
        crop_left, crop_right = (columns[0], w - 1 - columns[-1]) if len(columns) else (w, w)
        crop_top, crop_bottom = (rows[0], h - 1 - rows[-1]) if len(rows) else (h, h)

        x1, y1 = int(max(crop_left - pad, 0)), int(max(crop_top - pad, 0))
        x2, y2 = int(min(w - crop_right + pad, w)), int(min(h - crop_bottom + pad, h))

        ratio_crop_region = (x2 - x1) / (y2 - y1)
        ratio_processing = width / height
        if ratio_crop_region > ratio_processing:
            y1, y2 = _grow_span(y1, y2, length=(x2 - x1) / ratio_processing, limit=mask_image.height)
        else:
            x1, x2 = _grow_span(x1, x2, length=(y2 - y1) * ratio_processing, limit=mask_image.width)
        return x1, y1, x2, y2

    def _resize_and_fill(self, image: PIL.Image.Image, width: int, height: int) -> PIL.Image.Image:
        """Fit inside `width` x `height` keeping the aspect ratio, centre, and fill the borders by stretching the
        image's edge rows or columns."""
        # Adapted from diffusers.image_processor.VaeImageProcessor._resize_and_fill
        ratio = width / height
        src_ratio = image.width / image.height
        src_w = width if ratio < src_ratio else image.width * height // image.height
        src_h = height if ratio >= src_ratio else image.height * width // image.width

        resized = image.resize((src_w, src_h), resample=RESAMPLING[self.resample])
        res = PIL.Image.new("RGB", (width, height))
        res.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
        if ratio < src_ratio:
            fill_height = height // 2 - src_h // 2
            if fill_height > 0:
                res.paste(resized.resize((width, fill_height), box=(0, 0, width, 0)), box=(0, 0))
                res.paste(resized.resize((width, fill_height), box=(0, resized.height, width, resized.height)), box=(0, fill_height + src_h))
        elif ratio > src_ratio:
            fill_width = width // 2 - src_w // 2
            if fill_width > 0:
                res.paste(resized.resize((fill_width, height), box=(0, 0, 0, height)), box=(0, 0))
                res.paste(resized.resize((fill_width, height), box=(resized.width, 0, resized.width, height)), box=(fill_width + src_w, 0))
        return res

    def _resize_and_crop(self, image: PIL.Image.Image, width: int, height: int) -> PIL.Image.Image:
        """Cover `width` x `height` keeping the aspect ratio, centre, and crop what sticks out."""
        # Adapted from diffusers.image_processor.VaeImageProcessor._resize_and_crop
        ratio = width / height
        src_ratio = image.width / image.height
        src_w = width if ratio > src_ratio else image.width * height // image.height
        src_h = height if ratio <= src_ratio else image.height * width // image.width

        resized = image.resize((src_w, src_h), resample=RESAMPLING[self.resample])
        res = PIL.Image.new("RGB", (width, height))
        res.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
        return res

    def resize(self, image: PIL.Image.Image | np.ndarray, *, height: int, width: int, resize_mode: str = "default") -> PIL.Image.Image | np.ndarray:
        """A PIL image resized with `resample` ("fill" and "crop" keep its aspect ratio), or a (B, C, H, W) array
        with torch's "nearest" (only `resize_mode="default"`)."""
        if resize_mode not in RESIZE_MODES:
            raise ValueError(f"`resize_mode` must be one of {list(RESIZE_MODES)} but is {resize_mode!r}.")
        if not isinstance(image, PIL.Image.Image):
            if resize_mode != "default":
                raise ValueError(f"`resize_mode` {resize_mode!r} is only supported for PIL images; arrays and tensors take 'default'.")
            return interpolate_nearest(image, size=(height, width))
        if resize_mode == "fill":
            return self._resize_and_fill(image, width, height)
        if resize_mode == "crop":
            return self._resize_and_crop(image, width, height)
        return image.resize((width, height), resample=RESAMPLING[self.resample], reducing_gap=self.reducing_gap)

    # -- Pre- and post-processing --------------------------------------------------------------------------

    def as_batch(self, image, *, name: str | None = None) -> ImageBatch:
        """`image` checked and converted (see `as_image_batch`): masks when `do_convert_grayscale`, else images (or
        latents with `vae_latent_channels`). `name` (for errors) is "mask_image" or "image" unless given."""
        mask = self.do_convert_grayscale
        name = name or ("mask_image" if mask else "image")
        return as_image_batch(image, name=name, mask=mask, latent_channels=None if mask else self.vae_latent_channels)

    def preprocess(
        self,
        image,
        *,
        height: int | None = None,
        width: int | None = None,
        resize_mode: str = "default",
        crops_coords: tuple[int, int, int, int] | None = None,
    ) -> np.ndarray:
        """Images (see the module docstring, or an `ImageBatch` from `as_batch`) -> (B, C, H, W) float32, resized to
        `height` x `width` and normalized to [-1, 1] (latents pass through)."""
        # Adapted from diffusers.image_processor.VaeImageProcessor.preprocess
        batch = self.as_batch(image)
        if batch.is_latents:
            return batch.images.astype(np.float32)  # latents need no preprocessing

        # 1. To (B, C, H, W) at the requested size
        if isinstance(batch.images, list):
            image = batch.images
            if crops_coords is not None:
                image = [item.crop(crops_coords) for item in image]
            if self.do_resize:
                height, width = self.get_default_height_width(image[0], height=height, width=width)
                image = [self.resize(item, height=height, width=width, resize_mode=resize_mode) for item in image]
            if self.do_convert_grayscale:
                image = [self.convert_to_grayscale(item) for item in image]
            image = self.numpy_to_nchw(self.pil_to_numpy(image))
        else:
            image = batch.images
            height, width = self.get_default_height_width(image, height=height, width=width)
            if self.do_resize:
                image = self.resize(image, height=height, width=width)

        # 2. [0, 1] -> [-1, 1]; masks are binarized instead
        do_normalize = self.do_normalize
        if do_normalize and image.min() < 0:
            warnings.warn(
                "Passing `image` with value range in [-1,1] is deprecated. The expected value range is [0,1] "
                f"for torch tensors and numpy arrays. You passed `image` with value range [{image.min()},{image.max()}]",
                FutureWarning,
            )
            do_normalize = False
        if do_normalize:
            image = self.normalize(image)
        if self.do_binarize:
            image = self.binarize(image)
        return image.astype(np.float32)

    def postprocess(self, image: np.ndarray, *, output_type: str = "pil", do_denormalize: list[bool] | None = None):
        """Decoded (B, C, H, W) images in [-1, 1] -> a list of PIL images (`output_type="pil"`), a (B, H, W, C) float32
        array in [0, 1] ("np"), a (B, C, H, W) torch tensor in [0, 1] ("pt"), or unchanged ("latent")."""
        # Adapted from diffusers.image_processor.VaeImageProcessor.postprocess
        image = _to_numpy(image)
        if not isinstance(image, np.ndarray):
            raise ValueError(f"Input for postprocessing is in incorrect format: {type(image).__name__}. Pass a numpy array (B, C, H, W).")
        if output_type not in OUTPUT_TYPES:
            warnings.warn(f"the output_type {output_type} is outdated and has been set to `np`. Please set it to one of {list(OUTPUT_TYPES)}.")
            output_type = "np"
        if output_type == "latent":
            return image
        if do_denormalize is None:
            image = self.denormalize(image) if self.do_normalize else image
        else:
            image = np.stack([self.denormalize(item) if flag else item for item, flag in zip(image, do_denormalize)])
        if output_type == "pt":
            import torch

            return torch.from_numpy(np.ascontiguousarray(image))
        image = image.transpose(0, 2, 3, 1).astype(np.float32)  # (B, H, W, C)
        if output_type == "np":
            return image
        return self.numpy_to_pil(image)

    def apply_overlay(
        self,
        mask: PIL.Image.Image,
        init_image: PIL.Image.Image,
        image: PIL.Image.Image,
        crop_coords: tuple[int, int, int, int] | None = None,
    ) -> PIL.Image.Image:
        """`image` (the inpainted crop when `crop_coords` are given) pasted over `init_image` where `mask` is white."""
        # Adapted from diffusers.image_processor.VaeImageProcessor.apply_overlay
        width, height = init_image.width, init_image.height
        init_image_masked = PIL.Image.new("RGBa", (width, height))
        init_image_masked.paste(init_image.convert("RGBA").convert("RGBa"), mask=PIL.ImageOps.invert(mask.convert("L")))
        init_image_masked = init_image_masked.convert("RGBA")
        if crop_coords is not None:
            x, y, x2, y2 = crop_coords
            base_image = PIL.Image.new("RGBA", (width, height))
            base_image.paste(self.resize(image, height=y2 - y, width=x2 - x, resize_mode="crop"), (x, y))
            image = base_image.convert("RGB")
        image = image.convert("RGBA")
        image.alpha_composite(init_image_masked)
        return image.convert("RGB")


def psnr(image, reference) -> float:
    """Peak signal-to-noise ratio in dB of two images: float arrays with values in [0, 1], or PIL images and uint8
    arrays (0-255), which are scaled to [0, 1] first."""

    def unit_range(value) -> np.ndarray:
        array = np.asarray(value)
        return array / 255.0 if array.dtype == np.uint8 else array.astype(np.float64)

    mse = float(np.mean((unit_range(image) - unit_range(reference)) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(1.0 / mse))
