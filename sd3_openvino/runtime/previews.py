"""Live previews of the latents a denoising loop holds, cheaply, in numpy, and `LatentPreviewMixin`, which gives the
pipelines their `preview_images`.

Two ways to see what the latents of a step will become:

- "linear": a (C + 1) x 3 matrix maps each latent cell's C channels (and a bias) to one RGB pixel. It is fitted once
  per model from the model's own VAE (`LatentRGBMap.fit`): a few seeded random latents are decoded at a small size,
  the images are averaged down to latent resolution, and a least-squares fit finds the matrix. No factor is written
  down for any model; a fine-tuned VAE gets its own map. A preview costs one small matrix product.
- "taesd": the decoder of a tiny autoencoder (TAESD, diffusers' `AutoencoderTiny`, e.g. `madebyollin/taesd3`)
  converted into the folder beside the other submodels (`PREVIEW_DECODER`, see `sd3_conversion.convert_preview_decoder`).
  It draws full-size images, sharper than the linear map's, for a small fraction of the real VAE's cost.

Both take the latents of the denoising loop (what `callback_on_step_end` gets), before the VAE's
`/ scaling_factor + shift_factor`: the linear map is fitted in that space, and TAESD3 is trained on it (its
`config.json` says `scaling_factor` 1, no shift; the values are read from there, as diffusers' pipeline reads them).

Imports numpy, the layout, the arrays, the image processing, `runtime/metrics.py` (a preview during a call is timed)
and `runtime/submodels.py` (the tiny decoder is an `OVSubmodel`).
"""

from dataclasses import dataclass
from pathlib import Path
import threading
from typing import Callable

import numpy as np
import PIL.Image

from .arrays import as_array
from .image_processing import ImageProcessor, interpolate_nearest, psnr
from .metrics import MetricsRecorder
from ..core.layout import CONFIG_JSON, SizeRules, is_converted, read_json, vae_scale_factor
from .submodels import OVSubmodel

PREVIEW_DECODER = "vae_preview_decoder"  # a tiny autoencoder's decoder; not in model_index.json, so other runtimes ignore it
PREVIEW_METHODS = ("linear", "taesd")
PREVIEW_OUTPUT_TYPES = ("pil", "np")


# ----------------------------------------------------------------------------------------------------------
# The linear map, fitted from the model's VAE
# ----------------------------------------------------------------------------------------------------------


def random_latents(rng: np.random.Generator, *, count: int, channels: int, size: int) -> np.ndarray:
    """`count` latents (count, channels, size, size) of unit variance with structure at several scales, as the
    latents of images have: white noise plus noise blown up from grids 2 and 4 times coarser."""
    fields = []
    for cell in (1, 2, 4):
        side = -(-size // cell)
        coarse = rng.standard_normal((count, channels, side, side), dtype=np.float32)
        fields.append(coarse.repeat(cell, axis=2).repeat(cell, axis=3)[:, :, :size, :size])
    return (sum(fields) / np.float32(np.sqrt(len(fields)))).astype(np.float32)


def area_mean(images: np.ndarray, *, factor: int) -> np.ndarray:
    """(B, C, H, W) -> (B, C, H / factor, W / factor): the mean of each `factor` x `factor` block."""
    batch, channels, height, width = images.shape
    return images.reshape(batch, channels, height // factor, factor, width // factor, factor).mean(axis=(3, 5))


def cells_as_rows(array: np.ndarray, *, margin: int) -> np.ndarray:
    """(B, C, h, w) -> (cells, C), leaving out `margin` cells at every edge."""
    inner = array[:, :, margin : array.shape[2] - margin, margin : array.shape[3] - margin]
    return inner.transpose(0, 2, 3, 1).reshape(-1, array.shape[1])


@dataclass(frozen=True)
class LatentRGBMap:
    """RGB in [0, 1] of each latent cell as `[latents, 1] @ matrix`, clipped: a preview at latent resolution."""

    matrix: np.ndarray  # (C + 1, 3): a row of RGB weights per latent channel, then the bias
    psnr: float | None = None  # dB, of the map's pixels against the VAE's images averaged down, on held-out latents

    @property
    def latent_channels(self) -> int:
        return self.matrix.shape[0] - 1

    @classmethod
    def fit(
        cls,
        decode: Callable[[np.ndarray], np.ndarray],
        *,
        latent_channels: int,
        scaling_factor: float,
        shift_factor: float,
        vae_scale_factor: int,
        num_samples: int = 3,  # random latents decoded for the fit (144 cells each inside the margin: plenty for C + 1 unknowns)
        num_held_out: int = 1,  # one more, decoded in the same call, to measure the fit (`psnr`)
        latent_size: int = 16,  # cells per side: small, so the fit is one small VAE call (a quarter of SD3's 512 x 512 decode)
        margin: int = 2,  # cells at the edges left out: the decoder pads there
        seed: int = 0,
    ) -> "LatentRGBMap":
        """Fit the map of the VAE decoder `decode` ((B, C, h, w) latents as the VAE takes them -> (B, 3, H, W) images
        in [-1, 1]) in the denoising loop's latent space: `decode` gets `latents / scaling_factor + shift_factor`."""
        rng = np.random.default_rng(seed)
        latents = random_latents(rng, count=num_samples + num_held_out, channels=latent_channels, size=latent_size)
        images = decode(latents / np.float32(scaling_factor) + np.float32(shift_factor))  # (B, 3, H, W) in [-1, 1]
        pixels = area_mean(ImageProcessor.denormalize(np.asarray(images, dtype=np.float32)), factor=vae_scale_factor)
        inputs = cells_as_rows(latents, margin=margin).astype(np.float64)
        inputs = np.concatenate([inputs, np.ones((len(inputs), 1))], axis=1)  # (cells, C + 1): the bias column
        targets = cells_as_rows(pixels, margin=margin).astype(np.float64)  # (cells, 3)
        fitted = num_samples * (latent_size - 2 * margin) ** 2  # the first rows: the fit's samples; the rest held out
        matrix = np.linalg.lstsq(inputs[:fitted], targets[:fitted], rcond=None)[0].astype(np.float32)
        held_out = np.clip(inputs[fitted:] @ matrix, 0, 1)
        return cls(matrix=matrix, psnr=psnr(held_out, targets[fitted:]) if num_held_out else None)

    def apply(self, latents: np.ndarray) -> np.ndarray:
        """(B, C, h, w) latents -> (B, h, w, 3) float32 RGB in [0, 1]."""
        weights, bias = self.matrix[:-1], self.matrix[-1]
        rgb = np.asarray(latents, dtype=np.float32).transpose(0, 2, 3, 1) @ weights  # (B, h, w, 3)
        rgb += bias
        return np.clip(rgb, 0, 1, out=rgb)


# ----------------------------------------------------------------------------------------------------------
# The tiny autoencoder's decoder
# ----------------------------------------------------------------------------------------------------------


def tiny_decoder_scale(config: dict) -> int:
    """Pixels per latent cell of a tiny autoencoder (diffusers' `AutoencoderTiny`): one upsampling between stages."""
    return config.get("upsampling_scaling_factor", 2) ** (len(config["decoder_block_out_channels"]) - 1)


def check_tiny_autoencoder(config: dict, *, vae_config: dict, where: str) -> None:
    """Raise a ValueError naming `where` unless `config` (an `AutoencoderTiny`'s) fits the VAE of `vae_config`: the same
    latent channels and pixels per latent cell (`madebyollin/taesd3` for SD3 and SD3.5; `taesd` is SD 1.x's)."""
    if config.get("_class_name") not in (None, "AutoencoderTiny") or "decoder_block_out_channels" not in config:
        raise ValueError(
            f"{where} is a {config.get('_class_name')!r}, not diffusers' 'AutoencoderTiny' (TAESD). Pass a tiny autoencoder "
            "such as 'madebyollin/taesd3'."
        )
    expected = (vae_config["latent_channels"], vae_scale_factor(vae_config))
    found = (config.get("latent_channels"), tiny_decoder_scale(config))
    if found != expected:
        raise ValueError(
            f"{where} decodes {found[0]} latent channels at {found[1]} pixels per cell, but this model's VAE has {expected[0]} "
            f"channels at {expected[1]} pixels per cell. Use the tiny autoencoder made for this model's VAE ('madebyollin/taesd3' "
            "for SD3 and SD3.5)."
        )


def missing_preview_decoder_error(model_dir: Path, reason: str) -> FileNotFoundError:
    """The error for `method="taesd"` on a folder without a converted tiny decoder: what is missing and the fix."""
    folder = model_dir / PREVIEW_DECODER
    return FileNotFoundError(
        f"`method='taesd'` needs a tiny autoencoder's decoder in `{folder}`, which {reason}. Convert one into the folder: "
        f"`convert_preview_decoder('madebyollin/taesd3', {str(model_dir)!r})` (or `python sd3_helper.py convert CHECKPOINT "
        f"{model_dir} --preview-decoder madebyollin/taesd3`), or use `method='linear'`, which needs nothing more."
    )


def load_preview_decoder(model_dir: Path, *, vae_config: dict, core, device: str, ov_config: dict) -> OVSubmodel:
    """The tiny decoder converted into `model_dir` (compiled on first use), or a named error if there is none or it
    does not fit the model's VAE."""
    folder = model_dir / PREVIEW_DECODER
    if not is_converted(folder):
        raise missing_preview_decoder_error(model_dir, "is incomplete" if folder.exists() else "is missing")
    config = read_json(folder / CONFIG_JSON, model_dir=model_dir)
    check_tiny_autoencoder(config, vae_config=vae_config, where=f"`{folder}`")
    return OVSubmodel(folder, core=core, device=device, ov_config=ov_config)


def tiny_decoder_inputs(latents: np.ndarray, *, config: dict) -> np.ndarray:
    """The denoising loop's latents as the tiny decoder takes them: `/ scaling_factor + shift_factor` from its own
    config, as diffusers' SD3 pipeline does with an `AutoencoderTiny` as its VAE (1 and 0 for TAESD3: no change)."""
    return latents / np.float32(config.get("scaling_factor") or 1.0) + np.float32(config.get("shift_factor") or 0.0)


# ----------------------------------------------------------------------------------------------------------
# Checks and output
# ----------------------------------------------------------------------------------------------------------


def check_preview_latents(latents, *, latent_channels: int, vae_scale_factor: int) -> np.ndarray:
    """`latents` (numpy or torch) as float32 numpy, or a ValueError / TypeError naming their shape and the expected one."""
    if latents is None or not hasattr(latents, "shape"):
        raise TypeError(f"`latents` has to be a numpy array or torch tensor (batch, {latent_channels}, h, w) but is {type(latents).__name__}.")
    shape = tuple(latents.shape)
    if len(shape) != 4 or shape[1] != latent_channels:
        raise ValueError(
            f"`latents` must have shape (batch, {latent_channels}, height / {vae_scale_factor}, width / {vae_scale_factor}) "
            f"({latent_channels} latent channels for this model) but has shape {shape}. Pass `callback_kwargs['latents']`"
            + (" with a batch axis (`latents[None]`)." if len(shape) == 3 else ".")
        )
    return as_array(latents)


def check_preview_options(*, method: str, output_type: str, size, maximum_side: int) -> None:
    """Raise a ValueError or TypeError naming a bad `method`, `output_type` or `size` (each side a positive int of at
    most `maximum_side` pixels, the largest image side of the model: checked before anything is allocated)."""
    if method not in PREVIEW_METHODS:
        raise ValueError(f"`method` must be one of {list(PREVIEW_METHODS)} but is {method!r}.")
    if output_type not in PREVIEW_OUTPUT_TYPES:
        raise ValueError(f"`output_type` must be one of {list(PREVIEW_OUTPUT_TYPES)} but is {output_type!r}.")
    if size is None:
        return
    if not (isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(side, int) and not isinstance(side, bool) for side in size)):
        raise TypeError(f"`size` has to be None or (width, height) in pixels, e.g. (512, 512), but is {size!r:.80}.")
    if not all(0 < side <= maximum_side for side in size):
        raise ValueError(
            f"`size` has to be (width, height) with sides from 1 to {maximum_side} pixels (this model's largest image side) "
            f"but is {tuple(size)}. Pass the image's size, e.g. ({maximum_side}, {maximum_side}) at most, or None."
        )


def preview_output(images: np.ndarray, *, output_type: str, size: tuple[int, int] | None):
    """(B, h, w, 3) previews in [0, 1] as PIL images or the array, resized (nearest) to `size` = (width, height).
    PIL images are resized after the conversion to 8 bits, so that only the small array is converted."""
    resized = size is not None and tuple(size) != (images.shape[2], images.shape[1])
    if output_type == "pil":
        pil_images = ImageProcessor.numpy_to_pil(images)
        return [image.resize(tuple(size), PIL.Image.Resampling.NEAREST) for image in pil_images] if resized else pil_images
    return interpolate_nearest(images.transpose(0, 3, 1, 2), size=(size[1], size[0])).transpose(0, 2, 3, 1) if resized else images


class LatentPreviews:
    """What a pipeline's previews need, made on first use and shared by the pipelines `from_pipe` makes from it:
    the fitted `LatentRGBMap` and the tiny decoder."""

    def __init__(self, *, model_dir: Path, vae_config: dict):
        self.model_dir, self.vae_config = Path(model_dir), vae_config
        self.rgb_map: LatentRGBMap | None = None
        self.decoder: OVSubmodel | None = None

    def linear_map(self, decode: Callable[[np.ndarray], np.ndarray]) -> LatentRGBMap:
        """The map of this model's VAE, fitted with `decode` on first use (see `LatentRGBMap.fit`)."""
        if self.rgb_map is None:
            config = self.vae_config
            self.rgb_map = LatentRGBMap.fit(
                decode,
                latent_channels=config["latent_channels"],
                scaling_factor=config["scaling_factor"],
                shift_factor=config.get("shift_factor") or 0.0,
                vae_scale_factor=vae_scale_factor(config),
            )
        return self.rgb_map

    def tiny_decoder(self, *, core, device: str, ov_config: dict) -> OVSubmodel:
        """The folder's tiny decoder, loaded on first use (see `load_preview_decoder`)."""
        if self.decoder is None:
            self.decoder = load_preview_decoder(self.model_dir, vae_config=self.vae_config, core=core, device=device, ov_config=ov_config)
        return self.decoder


# ----------------------------------------------------------------------------------------------------------
# The pipelines' preview API
# ----------------------------------------------------------------------------------------------------------


class LatentPreviewMixin:
    """`preview_images` for a pipeline: works on its `previews` (a `LatentPreviews`), its VAE decoder and its call lock."""

    previews: LatentPreviews
    vae_decoder: OVSubmodel
    vae_scale_factor: int
    size_rules: SizeRules  # `size` is checked against its `maximum` side
    model_dir: Path
    shapes: str  # the shapes policy (`shapes.py`)
    _call_lock: threading.RLock
    metrics_recorder: MetricsRecorder  # a preview during a call is timed into its `preview_times`

    def preview_images(self, latents, *, method: str = "linear", size: tuple[int, int] | None = None, output_type: str = "pil"):
        """What (B, C, h, w) `latents` of the denoising loop (numpy or torch: `callback_kwargs["latents"]`) look like, cheaply.

        `method="linear"`: a linear map from latent channels to RGB, fitted from this model's VAE on first use (one
        small VAE call, once for this pipeline and those `from_pipe` makes from it), then one small matrix product per
        preview: images of h x w pixels. `method="taesd"`: the tiny autoencoder's decoder converted into the folder
        (`convert_preview_decoder`): full-size images, sharper, at a small share of a step's cost (see docs/speed.md).
        `size=(width, height)` resizes them (nearest), e.g. to the image's size (sides up to `size_rules.maximum`).
        `output_type` "pil" gives PIL images, "np" a (B, H, W, 3) float32 array in [0, 1].

            def show(pipe, step, timestep, callback_kwargs):
                pipe.preview_images(callback_kwargs["latents"])[0].save(f"step-{step}.png")
                return {}
        """
        check_preview_options(method=method, output_type=output_type, size=size, maximum_side=self.size_rules.maximum)
        channels = self.vae_decoder.config["latent_channels"]
        latents = check_preview_latents(latents, latent_channels=channels, vae_scale_factor=self.vae_scale_factor)
        with self.metrics_recorder.preview():
            if method == "linear":
                rgb_map = self.previews.rgb_map
                if rgb_map is None:
                    with self._call_lock:  # the fit runs the VAE, which serves one call at a time
                        rgb_map = self.previews.linear_map(self._preview_fit_decode())
                images = rgb_map.apply(latents)
            else:
                with self._call_lock:
                    images = self._tiny_decode(latents)
            return preview_output(images, output_type=output_type, size=size)

    def _preview_fit_decode(self) -> Callable[[np.ndarray], np.ndarray]:
        """The VAE decode the linear preview map is fitted with: the pipeline's own while its decoder is dynamic, else
        (static shapes, or the "auto" policy, which compiles it per call size) a dynamic copy (the fit decodes small
        latents)."""
        decoder = self.vae_decoder
        shape = (decoder.shapes or {}).get("latent_sample")
        dynamic = all(size == -1 for axis, size in enumerate(shape) if axis != 1) if shape is not None else self.shapes == "dynamic"
        if dynamic:
            return self.vae_decode
        copy = OVSubmodel(self.model_dir / decoder.name, core=decoder.core, device=decoder.device, ov_config=decoder.ov_config)
        return lambda latents: copy(latent_sample=latents)["sample"]

    def _tiny_decode(self, latents: np.ndarray) -> np.ndarray:
        """(B, C, h, w) latents of the denoising loop -> (B, H, W, 3) images in [0, 1] by the folder's tiny decoder."""
        decoder = self.vae_decoder
        tiny = self.previews.tiny_decoder(core=decoder.core, device=decoder.device, ov_config=decoder.ov_config)
        images = self.run_submodel(tiny, latent_sample=tiny_decoder_inputs(latents, config=tiny.config))["sample"]
        return ImageProcessor.denormalize(images).transpose(0, 2, 3, 1)
