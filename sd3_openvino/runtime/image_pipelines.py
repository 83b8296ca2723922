"""Image-to-image and inpainting with Stable Diffusion 3 on OpenVINO, argument for argument like diffusers'.

`OVStableDiffusion3Img2ImgPipeline` and `OVStableDiffusion3InpaintPipeline` follow diffusers'
`StableDiffusion3Img2ImgPipeline` and `StableDiffusion3InpaintPipeline` (0.39): the same pre- and post-processing
(`image_processing.ImageProcessor`, diffusers' `VaeImageProcessor` in numpy), the same VAE sampling and noise (the
generator is used in the same order), the same strength schedule.

They are the text-to-image pipeline of `runtime/pipeline.py` with its steps reused. Each `generate` checks its
arguments, builds the call's `ImageInputs` (`prepare_image_inputs`, `prepare_inpaint_inputs`), and hands them to
`generate_from_image`, which runs the text-to-image steps. The subclasses only change what starts the latents (the
encoded image), and for inpainting what conditions every step (the mask). Each class calls only its direct parent.

One deliberate difference: diffusers' inpainting pipeline decodes `latents / scaling_factor` without adding the
VAE's `shift_factor` back (its image-to-image and text-to-image pipelines add it). We add it, so the unmasked part
of the image keeps its colours; the tests compare against diffusers with that one line fixed.

Like the runtime, they work in numpy and import torch only to read torch tensors or a `torch.Generator` a user
passes (and then hand torch tensors back, see `arrays.py`).

Imports the layout, the arrays, checks, image processing, metrics and noise modules, and the text-to-image pipeline.
"""

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .arrays import as_array, as_generator, wants_torch
from .image_processing import IMAGE_KINDS, ImageBatch, ImageProcessor, interpolate_nearest
from ..core.layout import PIPELINE_SUBMODELS
from .checks import check_finite, check_strength
from .noise import randn_tensor
from .metrics import records_call
from .pipeline import OVStableDiffusion3Pipeline, SD3PipelineOutput


@dataclass
class ImageInputs:
    """What image-to-image and inpainting add to a call, preprocessed (see `OVStableDiffusion3Pipeline.generate`)."""

    image: np.ndarray  # (B, 3, H, W) in [-1, 1], or (B, latent_channels, h, w) latents
    strength: float
    mask: np.ndarray | None = None  # (B, 1, H, W) in {0, 1}: 1 repaints
    masked_image_latents: np.ndarray | None = None  # given by the user instead of the masked image
    torch_inputs: bool = False  # the user passed torch tensors: latents and callback tensors go back as torch
    original_image: object = None  # for `padding_mask_crop`: the image and mask the result is pasted back on
    mask_image: object = None
    crops_coords: tuple | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class StepConditioning:
    """Per-call additions to the denoising loop (see `OVStableDiffusion3Pipeline.denoise`)."""

    model_input: Callable[[np.ndarray], np.ndarray] | None = None  # after the CFG doubling
    after_step: Callable[[np.ndarray, int], np.ndarray] | None = None  # latents after each scheduler step
    transformer_states: Callable[..., dict | None] | None = None  # each step's transformer states (`controlnet.ControlNetResiduals`)


class OVStableDiffusion3Img2ImgPipeline(OVStableDiffusion3Pipeline):
    """Image-to-image with Stable Diffusion 3 on OpenVINO, argument for argument like diffusers' pipeline."""

    submodel_names = PIPELINE_SUBMODELS + ("vae_encoder",)
    default_strength = 0.6  # diffusers' default

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if self.vae_encoder is None:
            raise FileNotFoundError(f"`{self.model_dir / 'vae_encoder'}` is missing: image-to-image and inpainting need the VAE encoder.")

    # -- The image -----------------------------------------------------------------------------------------

    def check_image(self, image, *, name: str = "image") -> ImageBatch:
        """`image` checked and converted once (`ImageProcessor.as_batch`: PIL images to RGB, arrays to (B, 3, H, W)
        float, latents recognised), or a TypeError or ValueError naming `name`."""
        if image is None:
            raise ValueError(f"`{name}` is required: pass {IMAGE_KINDS}.")
        return self.image_processor.as_batch(image, name=name)

    def preprocess_image(self, image, *, height: int, width: int, **kwargs) -> np.ndarray:
        """diffusers' `VaeImageProcessor.preprocess`: resize to `height` x `width`, (B, 3, H, W) float32 in [-1, 1]
        (torch latents (B, latent_channels, h, w) pass through, as diffusers accepts them)."""
        return self.image_processor.preprocess(image, height=height, width=width, **kwargs)

    def encode_image(self, image, *, generator) -> np.ndarray:
        """VAE-encode (B, 3, H, W) pixels (numpy or torch) and sample the latent distribution with `generator`, then
        scale and shift as diffusers does: (sample - shift_factor) * scaling_factor. Latents pass through unchanged."""
        # Adapted from diffusers' retrieve_latents + DiagonalGaussianDistribution.sample
        config = self.vae_decoder.config
        image, generator = as_array(image), as_generator(generator)
        if image.shape[1] == config["latent_channels"]:
            return image
        generators = generator if isinstance(generator, list) else [generator] * image.shape[0]
        samples = []
        for index in range(image.shape[0]) if isinstance(generator, list) else [None]:
            pixels = image if index is None else image[index : index + 1]
            mean, logvar = np.split(self.vae_encode(pixels), 2, axis=1)
            std = np.exp(np.float32(0.5) * np.clip(logvar, -30.0, 20.0))
            noise = randn_tensor(mean.shape, generator=generator if index is None else generators[index])
            samples.append(mean + std * noise)
        latents = np.concatenate(samples)
        return (latents - np.float32(config.get("shift_factor") or 0.0)) * np.float32(config["scaling_factor"])

    # -- Hooks of `generate` -------------------------------------------------------------------------------

    def strength_timesteps(self, timesteps: np.ndarray, *, image_inputs: ImageInputs | None) -> np.ndarray:
        """The last `strength` share of the schedule (diffusers' `get_timesteps`)."""
        if image_inputs is None:
            return timesteps
        num_inference_steps = len(timesteps)
        init_timestep = min(num_inference_steps * image_inputs.strength, num_inference_steps)
        t_start = int(max(num_inference_steps - init_timestep, 0))
        timesteps = timesteps[t_start * self.scheduler.order :]
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(t_start * self.scheduler.order)
        return timesteps

    def initial_latents(self, *, batch_size: int, height: int, width: int, generator, latents, timesteps, image_inputs):
        """The encoded image, repeated per image and noised to the first timestep (diffusers' `prepare_latents`)."""
        if latents is not None:
            return super().initial_latents(
                batch_size=batch_size, height=height, width=width, generator=generator, latents=latents, timesteps=timesteps, image_inputs=None
            )
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(f"You have passed a list of {len(generator)} generators, but requested an effective batch size of {batch_size}.")
        init_latents = self.repeat_to_batch(self.encode_image(image_inputs.image, generator=generator), batch_size=batch_size, name="image")
        noise = self.prepare_latents(batch_size=batch_size, height=height, width=width, generator=generator, latents=None)
        return self.scheduler.scale_noise(init_latents, timesteps[:1].repeat(batch_size), noise), None

    @staticmethod
    def repeat_to_batch(array: np.ndarray, *, batch_size: int, name: str) -> np.ndarray:
        """`array` repeated along the batch to `batch_size` (prompts x images per prompt), as diffusers does."""
        if batch_size % array.shape[0] != 0:
            raise ValueError(
                f"Cannot duplicate `{name}` of batch size {array.shape[0]} to {batch_size} images (prompts x "
                f"`num_images_per_prompt`); pass one `{name}` or one per prompt."
            )
        return np.concatenate([array] * (batch_size // array.shape[0]), axis=0)

    # -- The call ------------------------------------------------------------------------------------------

    def __call__(self, *args, **kwargs) -> SD3PipelineOutput | tuple:
        """Generate images; see `generate`."""
        return self.generate(*args, **kwargs)

    @records_call  # from the image's preprocessing on (see `get_performance_metrics`)
    def generate(self, prompt=None, image=None, strength: float | None = None, **kwargs) -> SD3PipelineOutput | tuple:
        """Restyle `image` (a PIL image, numpy array, torch tensor, or list of them) by `prompt`.

        `strength` (0.6 by default, as diffusers) is how much of the schedule runs: 1.0 ignores the image's content,
        0.3 keeps most of it. Every other argument is `OVStableDiffusion3Pipeline.generate`'s. The image is resized
        to `height` x `width` (the model's native size by default), as diffusers does.
        """
        height, width = self.call_size(kwargs)
        image = self.check_image(image)
        strength = self.call_strength(strength, kwargs)
        image_inputs = self.prepare_image_inputs(image, strength=strength, height=height, width=width)
        return self.generate_from_image(prompt, image_inputs=image_inputs, **{**kwargs, "height": height, "width": width})

    def generate_from_image(self, prompt, *, image_inputs: ImageInputs, **kwargs) -> SD3PipelineOutput | tuple:
        """The text-to-image steps of `OVStableDiffusion3Pipeline.generate`, started from `image_inputs` (the
        `strength_timesteps` and `initial_latents` of this class, and the mask of inpainting)."""
        return super().generate(prompt, **kwargs, image_inputs=image_inputs)

    def prepare_image_inputs(self, image, *, strength: float, height: int, width: int) -> ImageInputs:
        """The image (an `ImageBatch` from `check_image`, or any image) preprocessed at `height` x `width`, with the
        call's `strength`."""
        image = self.check_image(image)
        return ImageInputs(image=self.preprocess_image(image, height=height, width=width), strength=strength, torch_inputs=image.from_torch)

    def call_size(self, kwargs: dict) -> tuple[int, int]:
        """`height` and `width` of a call (the native size when not given), checked before images are resized."""
        height = self.size_rules.default if kwargs.get("height") is None else kwargs["height"]
        width = self.size_rules.default if kwargs.get("width") is None else kwargs["width"]
        self.check_size(height=height, width=width)
        return height, width

    def call_strength(self, strength: float | None, kwargs: dict) -> float:
        """`strength` of a call (`default_strength` when not given), checked against its `num_inference_steps`."""
        strength = self.default_strength if strength is None else strength
        check_strength(strength, num_inference_steps=kwargs.get("num_inference_steps", self.default_num_inference_steps))
        return strength


class OVStableDiffusion3InpaintPipeline(OVStableDiffusion3Img2ImgPipeline):
    """Inpainting with Stable Diffusion 3 on OpenVINO, argument for argument like diffusers' pipeline.

    Works with the usual 16-channel transformer (the unmasked part is put back after every step) and with a
    33-channel inpainting transformer (latents, mask and masked-image latents concatenated).
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        latent_channels = self.vae_decoder.config["latent_channels"]
        self.mask_processor = ImageProcessor(
            vae_scale_factor=self.vae_scale_factor,
            vae_latent_channels=latent_channels,
            do_normalize=False,
            do_binarize=True,
            do_convert_grayscale=True,
        )
        in_channels = self.transformer.config["in_channels"]
        if in_channels not in (latent_channels, 2 * latent_channels + 1):
            raise ValueError(
                f"The transformer has {in_channels} input channels; inpainting needs {latent_channels} (latents) or "
                f"{2 * latent_channels + 1} (latents, mask and masked-image latents)."
            )

    @property
    def concatenates_mask(self) -> bool:
        """True for a 33-channel inpainting transformer (mask and masked image as extra input channels)."""
        return self.transformer.config["in_channels"] != self.vae_decoder.config["latent_channels"]

    def check_mask(self, mask_image, *, image: ImageBatch) -> ImageBatch:
        """The mask converted once (`mask_processor.as_batch`): an image with values in [0, 1] (diffusers converts it
        to one channel and binarizes it at 0.5: 1 repaints), of the image's size, one for all images or one per image."""
        if mask_image is None:
            raise ValueError(f"`mask_image` is required: pass {IMAGE_KINDS}.")
        mask = self.mask_processor.as_batch(mask_image, name="mask_image")
        if len(mask) not in (1, len(image)):
            raise ValueError(
                f"`mask_image` holds {len(mask)} masks but `image` holds {len(image)} images; pass one mask for all "
                "images or one mask per image."
            )
        if not image.is_latents and mask.size != image.size:
            raise ValueError(f"`mask_image` is {mask.size} (height, width) but `image` is {image.size}; pass a mask of the image's size.")
        return mask

    @staticmethod
    def check_padding_mask_crop(padding_mask_crop, *, image: ImageBatch, mask: ImageBatch, output_type) -> None:
        """`padding_mask_crop` is None, or pixels >= 0 with one PIL image, one PIL mask that is not empty and PIL output
        (the crop is the mask's bounding box, and the result is pasted back onto the image)."""
        if padding_mask_crop is None:
            return
        if isinstance(padding_mask_crop, bool) or not isinstance(padding_mask_crop, int) or padding_mask_crop < 0:
            raise ValueError(f"`padding_mask_crop` has to be None or an int >= 0 (pixels) but is {padding_mask_crop!r}.")
        if not all(isinstance(batch.images, list) and len(batch) == 1 for batch in (image, mask)):
            raise TypeError(
                "`padding_mask_crop` needs `image` and `mask_image` as one PIL image each (the result is pasted back onto "
                f"the image) but got {len(image)} image(s) and {len(mask)} mask(s) as arrays or lists; pass PIL images "
                "(`PIL.Image.fromarray`) or drop `padding_mask_crop`."
            )
        if output_type != "pil":
            raise ValueError(f"`padding_mask_crop` pastes the result onto the PIL image: `output_type` has to be 'pil' but is {output_type!r}.")
        if not np.asarray(mask.images[0].convert("L")).any():
            raise ValueError(
                "`mask_image` is empty (all black): with `padding_mask_crop` the crop is the mask's bounding box, and an "
                "empty mask has none. Paint the area to repaint (white) or drop `padding_mask_crop`."
            )

    @records_call  # from the image's preprocessing on (see `get_performance_metrics`)
    def generate(
        self,
        prompt=None,
        image=None,
        mask_image=None,
        masked_image_latents=None,
        strength: float | None = None,
        padding_mask_crop: int | None = None,
        **kwargs,
    ) -> SD3PipelineOutput | tuple:
        """Repaint the part of `image` where `mask_image` is white (1) by `prompt`.

        `strength` (0.6 by default) as in image-to-image; 1.0 starts the masked part from pure noise.
        `padding_mask_crop` works on the mask's bounding box grown by that many pixels, then pastes the result
        back onto the original image. `masked_image_latents` replace the encoded masked image. Every other
        argument is `OVStableDiffusion3Pipeline.generate`'s.
        """
        height, width = self.call_size(kwargs)
        image = self.check_image(image)
        mask_image = self.check_mask(mask_image, image=image)
        self.check_padding_mask_crop(padding_mask_crop, image=image, mask=mask_image, output_type=kwargs.get("output_type", "pil"))
        check_finite(masked_image_latents, name="masked_image_latents")
        strength = self.call_strength(strength, kwargs)
        image_inputs = self.prepare_inpaint_inputs(
            image, mask_image=mask_image, masked_image_latents=masked_image_latents, strength=strength,
            padding_mask_crop=padding_mask_crop, height=height, width=width,
        )  # fmt: skip
        return self.generate_from_image(prompt, image_inputs=image_inputs, **{**kwargs, "height": height, "width": width})

    def prepare_inpaint_inputs(
        self, image, *, mask_image, masked_image_latents, strength: float, padding_mask_crop: int | None, height: int, width: int
    ) -> ImageInputs:
        """The image and mask (`ImageBatch`es from the checks, or any images) preprocessed at `height` x `width`
        (cropped to the mask's box grown by `padding_mask_crop` pixels when given), with what `finish_images` needs to
        paste the result back."""
        image = self.check_image(image)
        mask_image = self.check_mask(mask_image, image=image)
        crops_coords, resize_mode = None, "default"
        if padding_mask_crop is not None:
            crops_coords = self.mask_processor.get_crop_region(mask_image.images[0], width, height, pad=padding_mask_crop)
            resize_mode = "fill"
        return ImageInputs(
            image=self.preprocess_image(image, height=height, width=width, crops_coords=crops_coords, resize_mode=resize_mode),
            strength=strength,
            mask=self.mask_processor.preprocess(mask_image, height=height, width=width, resize_mode=resize_mode, crops_coords=crops_coords),
            masked_image_latents=as_array(masked_image_latents),
            torch_inputs=image.from_torch or mask_image.from_torch or wants_torch(masked_image_latents),
            original_image=image.images[0] if crops_coords is not None else None,
            mask_image=mask_image.images[0] if crops_coords is not None else None,
            crops_coords=crops_coords,
        )

    def initial_latents(self, *, batch_size: int, height: int, width: int, generator, latents, timesteps, image_inputs):
        """Noise, or the encoded image noised to the first timestep when `strength` < 1, and the mask's
        conditioning of every step (diffusers' `prepare_latents` and `prepare_mask_latents`)."""
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(f"You have passed a list of {len(generator)} generators, but requested an effective batch size of {batch_size}.")
        is_strength_max = image_inputs.strength == 1.0
        image_latents = None
        if not self.concatenates_mask or (latents is None and not is_strength_max):
            image_latents = self.repeat_to_batch(self.encode_image(image_inputs.image, generator=generator), batch_size=batch_size, name="image")
        if latents is None:
            noise = self.prepare_latents(batch_size=batch_size, height=height, width=width, generator=generator, latents=None)
            latents = noise if is_strength_max else self.scheduler.scale_noise(image_latents, timesteps[:1].repeat(batch_size), noise)
        else:
            noise = latents = self.prepare_latents(batch_size=batch_size, height=height, width=width, generator=generator, latents=latents)
        mask, masked_image_latents = self.prepare_mask_latents(image_inputs, batch_size=batch_size, height=height, width=width, generator=generator)
        if self.concatenates_mask:
            return latents, StepConditioning(model_input=self._concatenate(mask=mask, masked_image_latents=masked_image_latents))
        return latents, StepConditioning(after_step=self._blend(image_latents=image_latents, mask=mask, noise=noise, timesteps=timesteps))

    def prepare_mask_latents(self, image_inputs: ImageInputs, *, batch_size: int, height: int, width: int, generator):
        """The mask at latent size and the masked image's latents, per image (doubled for guidance by the caller)."""
        config = self.vae_decoder.config
        mask = interpolate_nearest(image_inputs.mask, size=(height // self.vae_scale_factor, width // self.vae_scale_factor))
        masked_image = image_inputs.masked_image_latents
        if masked_image is None:
            masked_image = image_inputs.image * (image_inputs.mask < 0.5)
        masked_image_latents = self.encode_image(masked_image, generator=generator)
        if masked_image.shape[1] == config["latent_channels"]:  # given as latents: diffusers scales them too
            masked_image_latents = (masked_image_latents - (config.get("shift_factor") or 0.0)) * config["scaling_factor"]
        mask = self.repeat_to_batch(mask, batch_size=batch_size, name="mask_image")
        masked_image_latents = self.repeat_to_batch(masked_image_latents, batch_size=batch_size, name="image")
        return mask, masked_image_latents

    @staticmethod
    def _concatenate(*, mask: np.ndarray, masked_image_latents: np.ndarray):
        """The 33-channel transformer's input: latents, mask and masked-image latents (doubled with guidance)."""

        def model_input(latent_model_input: np.ndarray) -> np.ndarray:
            copies = latent_model_input.shape[0] // mask.shape[0]
            return np.concatenate([latent_model_input, np.concatenate([mask] * copies), np.concatenate([masked_image_latents] * copies)], axis=1)

        return model_input

    def _blend(self, *, image_latents, mask, noise, timesteps):
        """After each step: the unmasked part back to the image, noised to the next step's level (16 channels)."""

        def blend(latents: np.ndarray, step: int) -> np.ndarray:
            init_latents_proper = image_latents
            if step < len(timesteps) - 1:
                init_latents_proper = self.scheduler.scale_noise(image_latents, timesteps[step + 1 : step + 2], noise)
            return (1 - mask) * init_latents_proper + mask * latents

        return blend

    def finish_images(self, images, *, image_inputs):
        """With `padding_mask_crop`, paste each result back onto the original image."""
        if image_inputs is None or image_inputs.crops_coords is None:
            return images
        return [self.image_processor.apply_overlay(image_inputs.mask_image, image_inputs.original_image, image, image_inputs.crops_coords) for image in images]
