"""Image pre- and post-processing of the SD3 pipelines in numpy and Pillow: diffusers' `VaeImageProcessor` without torch.

`ImageProcessor` takes the same arguments as diffusers' `VaeImageProcessor` and gives the same numbers (tests compare
them): `preprocess` turns PIL images, numpy arrays (H, W, C) / (B, H, W, C) in [0, 1] or torch tensors (B, C, H, W)
into (B, C, H, W) float32 in [-1, 1], resized as diffusers resizes (PIL's filter for PIL images, torch's "nearest"
for arrays); `postprocess` turns decoded (B, C, H, W) images into PIL images or (B, H, W, C) arrays in [0, 1].
The inpainting pipeline's `mask_processor` is `ImageProcessor(do_normalize=False, do_binarize=True,
do_convert_grayscale=True)`.

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


def _is_image(value) -> bool:
    return isinstance(value, PIL.Image.Image) or (isinstance(value, np.ndarray) or is_torch_tensor(value)) and value.ndim in (2, 3)


def is_image_or_list(images) -> bool:
    """A PIL image, a 2-D/3-D array or tensor, a 4-D batch, or a list of images (diffusers' `is_valid_image_imagelist`)."""
    if (isinstance(images, np.ndarray) or is_torch_tensor(images)) and images.ndim == 4:
        return True
    if isinstance(images, list):
        return all(_is_image(image) for image in images)
    return _is_image(images)


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
    do_convert_rgb: bool = False
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

    def preprocess(
        self,
        image,
        *,
        height: int | None = None,
        width: int | None = None,
        resize_mode: str = "default",
        crops_coords: tuple[int, int, int, int] | None = None,
    ) -> np.ndarray:
        """PIL image(s), numpy array(s) (H, W, C) / (B, H, W, C) in [0, 1], or torch tensor(s) (B, C, H, W) ->
        (B, C, H, W) float32, resized to `height` x `width` and normalized to [-1, 1] (latents pass through)."""
        # Adapted from diffusers.image_processor.VaeImageProcessor.preprocess
        channels_first = is_torch_tensor(image[0] if isinstance(image, list) and image else image)
        image = [_to_numpy(item) for item in image] if isinstance(image, list) else _to_numpy(image)

        # 1. A 3-D grayscale array gets its missing channel (or batch) axis
        if self.do_convert_grayscale and isinstance(image, np.ndarray) and image.ndim == 3:
            if channels_first:
                image = image[:, None]
            else:
                image = np.expand_dims(image, axis=0 if image.shape[-1] == 1 else -1)
        if isinstance(image, list) and image and isinstance(image[0], np.ndarray) and image[0].ndim == 4:
            image = np.concatenate(image, axis=0)
        if not (is_image_or_list(image) and (not isinstance(image, list) or image)):
            raise ValueError(f"`image` has to be a PIL image, a numpy array, a torch tensor or a list of them, but is {type(image).__name__}.")
        image = image if isinstance(image, list) else [image]

        # 2. To (B, C, H, W) at the requested size
        if isinstance(image[0], PIL.Image.Image):
            if crops_coords is not None:
                image = [item.crop(crops_coords) for item in image]
            if self.do_resize:
                height, width = self.get_default_height_width(image[0], height=height, width=width)
                image = [self.resize(item, height=height, width=width, resize_mode=resize_mode) for item in image]
            if self.do_convert_rgb:
                image = [self.convert_to_rgb(item) for item in image]
            elif self.do_convert_grayscale:
                image = [self.convert_to_grayscale(item) for item in image]
            image = self.numpy_to_nchw(self.pil_to_numpy(image))
        else:
            image = np.concatenate(image, axis=0) if image[0].ndim == 4 else np.stack(image, axis=0)
            if channels_first:
                if self.do_convert_grayscale and image.ndim == 3:
                    image = image[:, None]
                if image.shape[1] == self.vae_latent_channels:
                    return image.astype(np.float32)  # latents need no preprocessing
            else:
                image = self.numpy_to_nchw(image)
            height, width = self.get_default_height_width(image, height=height, width=width)
            if self.do_resize:
                image = self.resize(image, height=height, width=width)

        # 3. [0, 1] -> [-1, 1]; masks are binarized instead
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
