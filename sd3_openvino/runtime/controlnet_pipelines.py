"""ControlNet with Stable Diffusion 3 / 3.5 on OpenVINO, argument for argument like diffusers' pipelines.

`OVStableDiffusion3ControlNetPipeline` follows diffusers' `StableDiffusion3ControlNetPipeline` (0.39) and
`OVStableDiffusion3ControlNetInpaintingPipeline` its `StableDiffusion3ControlNetInpaintingPipeline`: a control image
(or one per ControlNet), `controlnet_conditioning_scale`, `control_guidance_start` / `control_guidance_end`, and every
argument of the text-to-image pipeline (LoRA, skip-layer guidance, the step cache, previews, VAE tiling).

They are the text-to-image pipeline of `runtime/pipeline.py` with its steps reused: `generate` checks the control
arguments and preprocesses the control images, `initial_latents` encodes them with the VAE and hands the denoising loop a
`ControlNetResiduals` (`runtime/controlnet.py`) that runs the ControlNets each step and sets the transformer's residual
states. A step the step cache skips runs no ControlNet either; a step where every scale is 0 (outside the guidance
window) runs the transformer alone, which adds exactly what diffusers' zero residuals add.

Two deliberate differences from diffusers, both making the same call give the same image:
- The control image is encoded to the VAE's latent mean; diffusers samples the latent distribution with the global
  torch RNG (not the call's `generator`), so two identical diffusers calls differ. The tests compare against diffusers
  with the mean.
- Without `height` and `width` the image takes the control image's size (snapped to the model's multiple); diffusers
  takes the model's default size and stretches the control image. A control image of another aspect ratio than the
  image is refused (`check_control_size`) rather than stretched.

Imports numpy, the layout, checks, image processing and the text-to-image pipeline; OpenVINO when models load.
"""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.layout import PIPELINE_SUBMODELS
from .arrays import as_array
from .checks import check_control_guidance, check_control_size, check_controlnet_scales, check_finite
from .controlnet import ZEROS, ControlNet, ControlNetResiduals, enable_controlnet_states, guidance_keep, load_controlnets
from .image_processing import IMAGE_KINDS, ImageBatch, ImageProcessor, interpolate_nearest
from .image_pipelines import StepConditioning
from .loading import shared_ov_config
from .metrics import records_call
from .pipeline import OVStableDiffusion3Pipeline, SD3PipelineOutput
from .prompts import prompt_batch_size
from .submodels import device_for, submodel_ov_config


@dataclass
class ControlInputs:
    """What a ControlNet call adds, checked and preprocessed (see `OVStableDiffusion3ControlNetPipeline.generate`)."""

    images: list[np.ndarray]  # per ControlNet: (n, 3, H, W) in [-1, 1], n = 1 or one per prompt
    scales: list[float]
    starts: list[float]
    ends: list[float]
    pooled_projections: np.ndarray | None = None  # the user's `controlnet_pooled_projections`, (images, dim)
    masks: list[np.ndarray] | None = None  # inpainting: per ControlNet (n, 1, H, W) in {0, 1}, 1 repaints
    torch_inputs: bool = False
    extra: dict = field(default_factory=dict)


class OVStableDiffusion3ControlNetPipeline(OVStableDiffusion3Pipeline):
    """Text-to-image guided by ControlNets (canny, depth, pose, tile, blur) with Stable Diffusion 3 / 3.5 on OpenVINO."""

    submodel_names = PIPELINE_SUBMODELS + ("vae_encoder",)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if self.vae_encoder is None:
            raise FileNotFoundError(f"`{self.model_dir / 'vae_encoder'}` is missing: ControlNet pipelines encode the control image with it.")
        self.controlnets: list[ControlNet] = []  # set by `from_pretrained` / `from_pipe` (`attach_controlnets`)

    # -- Loading -------------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, *, controlnet, compile: bool = True, **kwargs) -> "OVStableDiffusion3ControlNetPipeline":
        """Load a folder written by `convert_sd3` and the ControlNet folder(s) `controlnet` (one path, or a list for
        multi-ControlNet) written by `convert_sd3_controlnet`; every other argument is
        `OVStableDiffusion3Pipeline.from_pretrained`'s (`device` and `ov_config` may name "controlnet")."""
        pipe = super().from_pretrained(model_dir, compile=False, **kwargs)
        pipe.attach_controlnets(
            controlnet, device=kwargs.get("device", "CPU"), ov_config=kwargs.get("ov_config"), cache_dir=kwargs.get("cache_dir")
        )
        if compile:
            pipe.compile()
        return pipe

    @classmethod
    def from_pipe(cls, pipe, *, controlnet=None) -> "OVStableDiffusion3ControlNetPipeline":
        """A ControlNet pipeline that shares `pipe`'s compiled models (no second copy of the base models; see
        `OVStableDiffusion3Pipeline.from_pipe`) with the ControlNet folder(s) `controlnet`, or `pipe`'s ControlNets
        when `pipe` is a ControlNet pipeline and `controlnet` is None. The shared transformer gains the residual states
        (it compiles once more, then serves both pipelines)."""
        new_pipe = super().from_pipe(pipe)
        if controlnet is None:
            if not getattr(pipe, "controlnets", None):
                raise TypeError("`controlnet` is required: pass a folder written by `convert_sd3_controlnet` (or a list of them).")
            new_pipe.controlnets = pipe.controlnets
            enable_controlnet_states(new_pipe.transformer, where=new_pipe.model_dir / "transformer")
            new_pipe.enable_text_folding()
        else:
            new_pipe.attach_controlnets(controlnet, device=pipe.transformer.device, ov_config=shared_ov_config(pipe.transformer))
        return new_pipe

    def attach_controlnets(self, controlnet, *, device: str | dict = "CPU", ov_config: dict | None = None, cache_dir=None) -> None:
        """Load the ControlNet folder(s) `controlnet`, check them against this transformer, give the transformer its
        residual states."""
        submodel_device = device_for(device, "controlnet")
        config = submodel_ov_config(ov_config, submodel="controlnet", device=submodel_device, cache_dir=cache_dir)
        self.controlnets = load_controlnets(
            controlnet, core=self.transformer.core, device=submodel_device, ov_config=config, transformer_config=self.transformer.config
        )
        enable_controlnet_states(self.transformer, where=self.model_dir / "transformer")
        self.enable_text_folding()  # the ControlNets that read the text get its bias too

    def text_attention_models(self) -> list:
        """The transformer and the ControlNets that read the prompt embeddings (InstantX's)."""
        return [self.transformer] + [controlnet.submodel for controlnet in self.controlnets if controlnet.reads_text]

    def clone_extras(self, twin) -> None:
        """A clone runs its own infer requests on the ControlNets too (see `OVStableDiffusion3Pipeline.clone`)."""
        twin.controlnets = [ControlNet(controlnet.submodel.clone(), controlnet.path) for controlnet in self.controlnets]

    def compile(self) -> None:
        """Compile the base models (see `OVStableDiffusion3Pipeline.compile`) and the ControlNets."""
        super().compile()
        for controlnet in self.controlnets:
            if controlnet.submodel.request is None:
                controlnet.submodel.compile()

    # -- The control images --------------------------------------------------------------------------------

    def check_control_images(self, control_image, *, name: str = "control_image") -> list[ImageBatch]:
        """`control_image` as one `ImageBatch` per ControlNet: one image (or a batch: a list of images) for one
        ControlNet, a list of one per ControlNet for several; a named error for another kind or count."""
        count = len(self.controlnets)
        if control_image is None:
            raise ValueError(f"`{name}` is required: pass {IMAGE_KINDS}{'' if count == 1 else f', a list of {count}: one per ControlNet'}.")
        if count > 1 and (not isinstance(control_image, (list, tuple)) or len(control_image) != count):
            got = f"a list of {len(control_image)}" if isinstance(control_image, (list, tuple)) else type(control_image).__name__
            raise ValueError(f"The pipeline has {count} ControlNets, so `{name}` has to be a list of {count} control images (one per ControlNet) but is {got}.")
        per_net = list(control_image) if count > 1 else [control_image]
        batches = [self.image_processor.as_batch(image, name=name) for image in per_net]
        if any(batch.is_latents for batch in batches):
            raise ValueError(f"`{name}` has to be an image (edges, depth, a photo) the pipeline encodes, not latents.")
        return batches

    def control_size(self, batches: list[ImageBatch], *, kwargs: dict) -> tuple[int, int]:
        """The call's `height` and `width`: as given, or the first control image's size snapped to the model's multiple;
        every control image must have the image's aspect ratio (`check_control_size`)."""
        control_height, control_width = batches[0].size
        height = self.size_rules.snap(control_height) if kwargs.get("height") is None else kwargs["height"]
        width = self.size_rules.snap(control_width) if kwargs.get("width") is None else kwargs["width"]
        self.check_size(height=height, width=width)
        for batch in batches:
            check_control_size(control_size=batch.size, height=height, width=width)
        return height, width

    def check_control_batch(self, batches: list[ImageBatch], *, prompt, kwargs: dict) -> None:
        """Each ControlNet gets one control image for all prompts, or one per prompt."""
        prompts = prompt_batch_size(prompt, kwargs.get("prompt_embeds"))
        for batch in batches:
            if len(batch) not in (1, prompts):
                raise ValueError(f"`control_image` holds {len(batch)} images for {prompts} prompt(s); pass one control image for all prompts or one per prompt.")

    def encode_control_image(self, pixels: np.ndarray, *, shift: bool) -> np.ndarray:
        """(n, 3, H, W) control images -> (n, latent_channels, h, w): the VAE's latent mean, minus `shift_factor` when
        `shift`, times `scaling_factor` (diffusers' step 3, with the mean: see the module docstring)."""
        config = self.vae_decoder.config
        mean, _ = np.split(self.vae_encode(pixels), 2, axis=1)
        shift_factor = np.float32(config.get("shift_factor") or 0.0) if shift else np.float32(0.0)
        return (mean - shift_factor) * np.float32(config["scaling_factor"])

    def control_latents(self, control: ControlInputs, *, batch_size: int) -> list[np.ndarray]:
        """Each ControlNet's encoded control image for `batch_size` images (diffusers' `prepare_image`: one image is
        repeated for all; one per prompt is repeated for each prompt's images)."""
        latents = []
        for controlnet, pixels in zip(self.controlnets, control.images):
            # InstantX's ControlNets were trained without the VAE's shift (diffusers keys it to the pooled-zeros flag)
            encoded = self.encode_control_image(pixels, shift=not controlnet.zero_pooled_text)
            latents.append(np.repeat(encoded, batch_size // len(encoded), axis=0))
        return latents

    # -- Hooks of `generate` -------------------------------------------------------------------------------

    def initial_latents(self, *, batch_size: int, height: int, width: int, generator, latents, timesteps, image_inputs):
        """The text-to-image latents, and the step conditioning that runs the ControlNets (`ControlNetResiduals`)."""
        latents, _ = super().initial_latents(
            batch_size=batch_size, height=height, width=width, generator=generator, latents=latents, timesteps=timesteps, image_inputs=None
        )
        control: ControlInputs = image_inputs
        enable_controlnet_states(self.transformer, where=self.model_dir / "transformer")  # again after `unload_lora_weights`
        residuals = ControlNetResiduals(
            controlnets=self.controlnets,
            control_latents=self.control_latents(control, batch_size=batch_size),
            scales=control.scales,
            keep=guidance_keep(num_steps=len(timesteps), starts=control.starts, ends=control.ends),
            pooled_text=self.pooled_text(control),
            num_layers=self.transformer.config["num_layers"],
            run_submodel=self.run_submodel,
        )
        return latents, StepConditioning(transformer_states=residuals)

    def pooled_text(self, control: ControlInputs) -> list:
        """What each ControlNet reads as pooled text: the user's `controlnet_pooled_projections`, else zeros for
        InstantX's ControlNets (`force_zeros_for_pooled_projection`), else the prompt's (see `ControlNetResiduals`)."""
        if control.pooled_projections is not None:
            return [control.pooled_projections] * len(self.controlnets)
        return [ZEROS if controlnet.zero_pooled_text else None for controlnet in self.controlnets]

    # -- The call ------------------------------------------------------------------------------------------

    def __call__(self, *args, **kwargs) -> SD3PipelineOutput | tuple:
        """Generate images; see `generate`."""
        return self.generate(*args, **kwargs)

    @records_call  # from the control images' preprocessing on (see `get_performance_metrics`)
    def generate(
        self,
        prompt=None,
        control_image=None,
        controlnet_conditioning_scale: float | list[float] = 1.0,
        control_guidance_start: float | list[float] = 0.0,
        control_guidance_end: float | list[float] = 1.0,
        controlnet_pooled_projections=None,
        **kwargs,
    ) -> SD3PipelineOutput | tuple:
        """Generate images from text, guided by `control_image` (one image, or a list of one per ControlNet).

        `controlnet_conditioning_scale` (one, or one per ControlNet) weighs each ControlNet's residuals (0 turns it off);
        each acts from `control_guidance_start` to `control_guidance_end` (fractions of the steps). Without `height`
        and `width` the image takes the control image's size. `controlnet_pooled_projections` (images x pooled width)
        replace the pooled text the ControlNets read. Every other argument is `OVStableDiffusion3Pipeline.generate`'s.
        """
        control = self.prepare_control_inputs(
            prompt=prompt, control_image=control_image, scale=controlnet_conditioning_scale, start=control_guidance_start,
            end=control_guidance_end, pooled_projections=controlnet_pooled_projections, kwargs=kwargs,
        )  # fmt: skip
        return super().generate(prompt, **kwargs, image_inputs=control)

    def prepare_control_inputs(self, *, prompt, control_image, scale, start, end, pooled_projections, kwargs: dict) -> ControlInputs:
        """The checked control arguments and the control images preprocessed at the call's size (set in `kwargs`)."""
        count = len(self.controlnets)
        scales = check_controlnet_scales(scale, count=count)
        starts, ends = check_control_guidance(start, end, count=count)
        batches = self.check_control_images(control_image)
        self.check_control_batch(batches, prompt=prompt, kwargs=kwargs)
        kwargs["height"], kwargs["width"] = self.control_size(batches, kwargs=kwargs)
        check_finite(pooled_projections, name="controlnet_pooled_projections")
        return ControlInputs(
            images=[self.image_processor.preprocess(batch, height=kwargs["height"], width=kwargs["width"]) for batch in batches],
            scales=scales,
            starts=starts,
            ends=ends,
            pooled_projections=self.check_pooled_projections(pooled_projections, prompt=prompt, kwargs=kwargs),
            torch_inputs=any(batch.from_torch for batch in batches),
        )

    def check_pooled_projections(self, pooled_projections, *, prompt, kwargs: dict) -> np.ndarray | None:
        """`controlnet_pooled_projections` as (images, pooled width) float32, doubled for guidance, or None."""
        if pooled_projections is None:
            return None
        pooled = as_array(pooled_projections).astype(np.float32)
        images = prompt_batch_size(prompt, kwargs.get("prompt_embeds")) * kwargs.get("num_images_per_prompt", 1)
        expected = (images, self.transformer.config["pooled_projection_dim"])
        if pooled.shape != expected:
            raise ValueError(f"`controlnet_pooled_projections` must have shape {expected} (images, pooled width) but has shape {pooled.shape}.")
        guided = kwargs.get("guidance_scale", 7.0) > 1.0
        return np.concatenate([pooled] * 2) if guided else pooled


class OVStableDiffusion3ControlNetInpaintingPipeline(OVStableDiffusion3ControlNetPipeline):
    """Inpainting with an inpainting ControlNet (Alimama's SD3 ControlNet Inpainting: `extra_conditioning_channels=1`),
    argument for argument like diffusers' `StableDiffusion3ControlNetInpaintingPipeline`: `control_image` is the image,
    `control_mask` is white where the image is repainted."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.mask_processor = ImageProcessor(
            vae_scale_factor=self.vae_scale_factor,
            vae_latent_channels=self.vae_decoder.config["latent_channels"],
            do_normalize=False,
            do_binarize=True,
            do_convert_grayscale=True,
        )

    def attach_controlnets(self, controlnet, **kwargs) -> None:
        """As `OVStableDiffusion3ControlNetPipeline.attach_controlnets`; each ControlNet must read the mask channel."""
        super().attach_controlnets(controlnet, **kwargs)
        latent_channels = self.vae_decoder.config["latent_channels"]
        for loaded in self.controlnets:
            if loaded.conditioning_channels != latent_channels + 1:
                raise ValueError(
                    f"The ControlNet in `{loaded.path}` reads {loaded.conditioning_channels} channels, not the {latent_channels} + 1 "
                    "(latents and mask) of an inpainting ControlNet; load it with `OVStableDiffusion3ControlNetPipeline`."
                )

    @records_call
    def generate(self, prompt=None, control_image=None, control_mask=None, **kwargs) -> SD3PipelineOutput | tuple:
        """Repaint the part of `control_image` where `control_mask` is white (1) by `prompt`. Every other argument is
        `OVStableDiffusion3ControlNetPipeline.generate`'s."""
        masks = self.check_control_masks(control_mask, images=self.check_control_images(control_image))
        return super().generate(prompt, control_image=control_image, **kwargs, control_masks=masks)

    def check_control_masks(self, control_mask, *, images: list[ImageBatch]) -> list[ImageBatch]:
        """One mask per ControlNet (as `control_image`), each of its image's size and count."""
        if control_mask is None:
            raise ValueError(f"`control_mask` is required: pass {IMAGE_KINDS} (white repaints).")
        per_net = list(control_mask) if len(self.controlnets) > 1 else [control_mask]
        masks = [self.mask_processor.as_batch(mask, name="control_mask") for mask in per_net]
        for mask, image in zip(masks, images):
            if len(mask) != len(image) or mask.size != image.size:
                raise ValueError(
                    f"`control_mask` holds {len(mask)} mask(s) of {mask.size} (height, width) but `control_image` holds "
                    f"{len(image)} of {image.size}; pass one mask of the image's size per control image."
                )
        return masks

    def prepare_control_inputs(self, *, kwargs: dict, **arguments) -> ControlInputs:
        """As the ControlNet pipeline's, with the masks preprocessed at the call's size."""
        masks = kwargs.pop("control_masks")
        control = super().prepare_control_inputs(kwargs=kwargs, **arguments)
        control.masks = [self.mask_processor.preprocess(mask, height=kwargs["height"], width=kwargs["width"]) for mask in masks]
        return control

    def pooled_text(self, control: ControlInputs) -> list:
        """diffusers' inpainting ControlNet pipeline gives its ControlNet zeros as pooled text unless the user passes some."""
        if control.pooled_projections is not None:
            return [control.pooled_projections] * len(self.controlnets)
        return [ZEROS] * len(self.controlnets)

    def control_latents(self, control: ControlInputs, *, batch_size: int) -> list[np.ndarray]:
        """Each ControlNet's control: the image with the masked part set to -1, encoded (with the VAE's shift), and the
        kept region (1 - mask) at latent size, concatenated (diffusers' `prepare_image_with_mask`)."""
        latents = []
        latent_size = tuple(side // self.vae_scale_factor for side in control.images[0].shape[2:])
        for pixels, mask in zip(control.images, control.masks):
            masked = np.where(mask > 0.5, np.float32(-1.0), pixels)
            encoded = self.encode_control_image(masked, shift=True)
            kept = 1.0 - interpolate_nearest(mask, size=latent_size)
            conditioned = np.concatenate([encoded, kept.astype(np.float32)], axis=1)
            latents.append(np.repeat(conditioned, batch_size // len(conditioned), axis=0))
        return latents
