"""The OpenVINO runtime: the SD3 text-to-image pipeline on the submodels of `runtime/submodels.py`.

`OVStableDiffusion3Pipeline.__call__` follows diffusers' `StableDiffusion3Pipeline.__call__` (same argument
names, same scheduler, same image processor, same random latents), so the same seed gives the same image. Every
model constant is read from the `config.json` files saved beside the IRs. `generate` reads as diffusers'
numbered steps; each step is a short method that the image-to-image and inpainting pipelines reuse.

The class holds the denoising steps. As diffusers does with its loader mixins, the other concerns live beside it:
argument checks in `checks.py` (plain functions, shared with the demo), loading a folder and `from_pipe` in
`loading.py`, prompt encoding and its cache in `prompts.py`, the LoRA API in `lora_api.py`, live previews in
`previews.py`, static shapes and VAE tiling in `shapes.py`, each call's timings (`get_performance_metrics`) in
`metrics.py`.

Everything runs in numpy: no torch, diffusers or transformers is imported unless a call is given torch objects (a
`torch.Generator`, torch tensors), and then only to hand torch tensors back (see `arrays.wants_torch`).
"""

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..core.layout import BLOCK_MASK, GENERATION_DEFAULTS, PIPELINE_SUBMODELS, TEXT_ENCODERS, TOKENIZERS, SizeRules
from .arrays import as_array, as_generator, check_generator, to_torch, wants_torch
from .checks import (
    check_callback,
    check_clip_skip,
    check_embeds,
    check_finite,
    check_finite_latents,
    check_generators,
    check_guidance_scale,
    check_max_sequence_length,
    check_memory,
    check_num_images_per_prompt,
    check_num_inference_steps,
    check_output_type,
    check_prompts,
    check_size,
    check_skip_layer_guidance,
    check_taylorseer,
    estimated_memory,
)
from .image_processing import ImageProcessor
from .ip_adapter_api import IPAdapterMixin
from .loading import PipelineLoaderMixin
from .lora import LoraAdapters
from .lora_api import LoraLoaderMixin
from .metrics import MetricsRecorder, PerformanceMetricsMixin, records_call
from .noise import randn_tensor
from .previews import LatentPreviewMixin, LatentPreviews
from .prompts import PromptEncoder, PromptEncodingMixin, prompt_batch_size
from .scheduler import calculate_shift, retrieve_timesteps
from .shapes import ShapesMixin, call_shape
from .steps import DEFAULT_STEP_CACHE, SkipLayerGuidance, TaylorSeerCache, TaylorSeerConfig, classifier_free_guidance
from .submodels import OVSubmodel, physical_memory, release_file_pages
from .text_folding import TextFoldingMixin, TransformerText

logger = logging.getLogger(__name__)  # truncation warnings of `encode_prompt` come from here, as in diffusers


@dataclass
class SD3PipelineOutput:
    """`images`: a list of PIL images, a (B, H, W, 3) float array in [0, 1], or (B, C, h, w) latents (a numpy
    array, or a torch tensor when the call was given torch objects: see `arrays.wants_torch`)."""

    images: list | np.ndarray


class OVStableDiffusion3Pipeline(
    PipelineLoaderMixin, PromptEncodingMixin, LoraLoaderMixin, IPAdapterMixin, LatentPreviewMixin, ShapesMixin, TextFoldingMixin,
    PerformanceMetricsMixin,
):  # fmt: skip
    """Text-to-image with Stable Diffusion 3 on OpenVINO, argument for argument like diffusers' pipeline; calls run one at a
    time (thread-safe)."""

    _callback_tensor_inputs = ["latents", "prompt_embeds", "pooled_prompt_embeds"]
    submodel_names = PIPELINE_SUBMODELS  # the image pipelines add "vae_encoder"
    default_num_inference_steps = GENERATION_DEFAULTS.num_inference_steps

    def __init__(self, *, submodels: dict[str, OVSubmodel | None], tokenizers: dict, scheduler, model_dir: Path):
        self.transformer = submodels["transformer"]
        self.text_encoder = submodels["text_encoder"]
        self.text_encoder_2 = submodels["text_encoder_2"]
        self.text_encoder_3 = submodels.get("text_encoder_3")
        self.vae_decoder = submodels["vae_decoder"]
        self.vae_encoder = submodels.get("vae_encoder")
        self.tokenizer = tokenizers["tokenizer"]
        self.tokenizer_2 = tokenizers["tokenizer_2"]
        self.tokenizer_3 = tokenizers.get("tokenizer_3")
        self.scheduler = scheduler
        self.model_dir = model_dir

        self.size_rules = SizeRules.from_configs(transformer_config=self.transformer.config, vae_config=self.vae_decoder.config)
        self.vae_scale_factor = self.size_rules.vae_scale_factor
        self.patch_size = self.size_rules.patch_size
        self.default_sample_size = self.transformer.config["sample_size"]
        self.tokenizer_max_length = self.tokenizer.model_max_length
        self.image_processor = ImageProcessor(
            vae_scale_factor=self.vae_scale_factor, vae_latent_channels=self.vae_decoder.config["latent_channels"]
        )
        self.prompt_encoder = PromptEncoder(  # holds the prompt cache and the text encoders to release
            tokenizers={name: getattr(self, name) for name in TOKENIZERS},
            text_encoders={name: getattr(self, name) for name in TEXT_ENCODERS},
            joint_attention_dim=self.transformer.config["joint_attention_dim"],
            logger=logger,
        )
        self.vae_tiling = None  # a `VaeTiling` after `enable_vae_tiling()`
        self._pages_released = {}  # submodel name -> the compilation after whose first inference its IR pages went
        self._progress_bar_config = {}
        self._interrupt = False
        self.fold_text_padding = False  # fold repeated text tokens (`text_folding.py`): `from_pretrained` turns it on
        self.shapes = "dynamic"  # the shapes policy: the IR's own until `from_pretrained` sets one (see `shapes.py`)
        self.on_compile = None  # called with a message when a call compiles the models for its shape (the demo's status)
        self._static_shape = None  # set by `reshape`
        self._call_lock = threading.RLock()  # infer requests and the scheduler hold per-call state
        self.lora = LoraAdapters(submodels=self.submodels, model_dir=self.model_dir)  # run-time LoRA adapters
        self.previews = LatentPreviews(model_dir=self.model_dir, vae_config=self.vae_decoder.config)  # see `preview_images`
        self.metrics_recorder = MetricsRecorder(read_time=sum(submodel.read_time for submodel in self.submodels.values()))

    def run_submodel(self, submodel: OVSubmodel, *, states: dict[str, np.ndarray] | None = None, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        """`submodel(**inputs)` (with its OpenVINO `states` set for this inference only, if given); after the first
        inference of each compiled model its `openvino_model.bin` pages leave RSS (`submodels.release_file_pages`), so
        that OpenVINO holds the weights once, in its own buffers, not also as the file's pages (docs/memory.md shows
        what that saves). Images stay bit-identical. Each inference is timed into the call's `PerformanceMetrics` (see
        `get_performance_metrics`)."""
        with self.metrics_recorder.infer(submodel):
            outputs = submodel.call_with_states(states, **inputs) if states else submodel(**inputs)
        if self._pages_released.get(submodel.name) != submodel.compilations:
            release_file_pages(submodel.bin_path)
            self._pages_released[submodel.name] = submodel.compilations
        return outputs

    @property
    def interrupt(self) -> bool:
        """Set `pipe._interrupt = True` (from `callback_on_step_end`, say) to stop the denoising loop early."""
        return self._interrupt

    def set_progress_bar_config(self, **kwargs) -> None:
        """Options for the tqdm progress bar over the denoising steps, e.g. `disable=True`."""
        self._progress_bar_config = kwargs

    @property
    def progress_bar_config(self) -> dict:
        """The options last given to `set_progress_bar_config` (a copy)."""
        return dict(self._progress_bar_config)

    # -- 1. Checks (see checks.py) -------------------------------------------------------------------------

    def check_inputs(
        self,
        *,
        prompt,
        height: int,
        width: int,
        num_inference_steps: int,
        negative_prompt,
        prompt_embeds,
        pooled_prompt_embeds,
        negative_prompt_embeds,
        negative_pooled_prompt_embeds,
        output_type: str,
        max_sequence_length: int,
        callback_on_step_end_tensor_inputs: list[str],
        taylorseer: "TaylorSeerConfig | None" = None,
        guidance_scale: float = GENERATION_DEFAULTS.guidance_scale,
        num_images_per_prompt: int = 1,
        clip_skip: int | None = None,
        generator=None,
        other_prompts: dict | None = None,
        callback_on_step_end: Callable | None = None,
        latents=None,
    ) -> None:
        """Raise a ValueError or TypeError that names the bad argument, its value and the fix.

        `other_prompts` holds `prompt_2`, `prompt_3` and the negatives beyond `negative_prompt` by name.
        """
        self.check_size(height=height, width=width)
        check_num_inference_steps(num_inference_steps)
        check_guidance_scale(guidance_scale)
        check_num_images_per_prompt(num_images_per_prompt)
        check_max_sequence_length(max_sequence_length)
        check_clip_skip(clip_skip, num_layers=min(self.text_encoder.config["num_hidden_layers"], self.text_encoder_2.config["num_hidden_layers"]))
        check_prompts(prompt=prompt, prompt_embeds=prompt_embeds, texts={"negative_prompt": negative_prompt, **(other_prompts or {})})
        check_embeds(
            prompt_embeds=prompt_embeds, pooled_prompt_embeds=pooled_prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
            negative_pooled_prompt_embeds=negative_pooled_prompt_embeds, transformer_config=self.transformer.config,
            clip_tokens=self.tokenizer_max_length,
        )  # fmt: skip
        check_finite(latents, name="latents")
        check_output_type(output_type)
        check_callback(callback_on_step_end, tensor_inputs=callback_on_step_end_tensor_inputs, allowed=self._callback_tensor_inputs)
        check_taylorseer(taylorseer)
        check_generator(generator)
        images = prompt_batch_size(prompt, prompt_embeds) * num_images_per_prompt
        check_generators(generator, images=images)
        needed = self.estimated_memory(images=images, height=height, width=width)
        check_memory(images=images, height=height, width=width, needed=needed, available=physical_memory())

    def check_size(self, *, height, width) -> None:
        """Raise a TypeError or ValueError unless `height` and `width` are ints this model accepts."""
        check_size(height=height, width=width, size_rules=self.size_rules)

    def check_skip_layer_guidance(self, *, layers, scale, start, stop, guidance_scale) -> SkipLayerGuidance | None:
        """The call's `SkipLayerGuidance` (None without `skip_guidance_layers`), or a named error."""
        if layers is None:
            return None
        return check_skip_layer_guidance(
            layers=layers, scale=scale, start=start, stop=stop, guidance_scale=guidance_scale,
            num_layers=self.transformer.config["num_layers"], block_mask=BLOCK_MASK in self.transformer.state_names,
            transformer_dir=self.model_dir / "transformer", static_shape=self._static_shape is not None,
        )  # fmt: skip

    def estimated_memory(self, *, images: int, height: int, width: int) -> int:
        """A lower estimate of the bytes a call's activations take (see `checks.estimated_memory`)."""
        return estimated_memory(
            images=images, height=height, width=width, vae_config=self.vae_decoder.config, transformer_config=self.transformer.config,
            token_multiple=self.size_rules.multiple, clip_tokens=self.tokenizer_max_length,
        )  # fmt: skip

    def start_call(self) -> None:
        """A call starts uninterrupted, with the run-time changes of the transformer graph made again where a graph
        change dropped them (`unload_lora_weights` reads the IR anew): the folded text's bias, an IP-Adapter's image
        attention."""
        self._interrupt = False
        self.enable_text_folding()
        self.enable_ip_adapter_attention()

    # -- 3. Text encoding: `encode_prompt` and `prepare_embeddings` of `PromptEncodingMixin` (prompts.py) ---

    # -- 4. Latents ----------------------------------------------------------------------------------------

    def prepare_latents(self, *, batch_size: int, height: int, width: int, generator, latents) -> np.ndarray:
        """Gaussian latents (batch_size, in_channels, height / vae_scale_factor, width / vae_scale_factor), float32 numpy
        and the same numbers as diffusers' for the same seed; or `latents` (numpy or torch) checked."""
        shape = (
            batch_size,
            self.vae_decoder.config["latent_channels"],
            height // self.vae_scale_factor,
            width // self.vae_scale_factor,
        )
        if latents is None:
            return randn_tensor(shape, generator=as_generator(generator))
        if tuple(latents.shape) != shape:
            raise ValueError(f"`latents` must have shape {shape} for this batch and size but has shape {tuple(latents.shape)}.")
        return as_array(latents)

    # -- 5. Timesteps --------------------------------------------------------------------------------------

    def prepare_timesteps(self, *, num_inference_steps: int, sigmas: list[float] | None, mu: float | None, height: int, width: int) -> np.ndarray:
        """Set the scheduler's timesteps (shifted by `mu` for this image size where the scheduler shifts dynamically)."""
        # Adapted from diffusers' StableDiffusion3Pipeline.__call__, step 5.
        config = self.scheduler.config
        if config.get("use_dynamic_shifting", None) and mu is None:
            image_seq_len = (height // self.size_rules.multiple) * (width // self.size_rules.multiple)
            mu = calculate_shift(
                image_seq_len,
                base_seq_len=config.get("base_image_seq_len", 256),
                max_seq_len=config.get("max_image_seq_len", 4096),
                base_shift=config.get("base_shift", 0.5),
                max_shift=config.get("max_shift", 1.16),
            )
        scheduler_kwargs = {} if mu is None else {"mu": mu}
        timesteps, _ = retrieve_timesteps(self.scheduler, num_inference_steps=num_inference_steps, sigmas=sigmas, **scheduler_kwargs)
        return timesteps

    def strength_timesteps(self, timesteps: np.ndarray, *, image_inputs) -> np.ndarray:
        """The timesteps a call runs: all of them here; image-to-image starts later (its `strength`)."""
        return timesteps

    def initial_latents(self, *, batch_size: int, height: int, width: int, generator, latents, timesteps, image_inputs):
        """(starting latents, per-step conditioning or None): Gaussian noise here; the image pipelines start from
        the encoded image and condition the steps on a mask."""
        return self.prepare_latents(batch_size=batch_size, height=height, width=width, generator=generator, latents=latents), None

    def finish_images(self, images, *, image_inputs):
        """The decoded images as returned; inpainting pastes a cropped result back onto the original."""
        return images

    # -- 6. Denoising --------------------------------------------------------------------------------------

    def predict_noise(
        self,
        latents: np.ndarray,
        *,
        timestep: np.float32,
        text: TransformerText,
        guidance_scale: float,
        model_input: Callable[[np.ndarray], np.ndarray] | None = None,
        transformer_states: Callable[..., dict | None] | None = None,
        step: int = 0,
        image_prompt=None,
    ) -> np.ndarray:
        """One transformer call on `latents` (doubled for guidance, then passed through `model_input` if given), with
        the states `transformer_states(latent_model_input, timestep=, step=, text=)` gives for this step (a ControlNet's
        residuals) and the adapter inputs of `image_prompt` (an IP-Adapter's, see `ip_adapter_inputs`); returns the flow
        prediction, not yet guided."""
        do_classifier_free_guidance = guidance_scale > 1.0
        latent_model_input = np.concatenate([latents] * 2) if do_classifier_free_guidance else latents
        states = transformer_states(latent_model_input, timestep=timestep, step=step, text=text) if transformer_states else None
        if model_input is not None:
            latent_model_input = model_input(latent_model_input)
        return self.run_submodel(
            self.transformer,
            states=states,
            hidden_states=latent_model_input,
            timestep=np.full(latent_model_input.shape[0], timestep, dtype=np.float32),
            **text.inputs(self.transformer),
            **self.ip_adapter_inputs(image_prompt, timestep=timestep, batch=latent_model_input.shape[0]),
        )["out_sample"]

    def predict_skipping(
        self, latents: np.ndarray, *, timestep: np.float32, text: TransformerText, layers: tuple[int, ...], states: dict | None = None,
        image_prompt=None,
    ) -> np.ndarray:  # fmt: skip
        """One transformer call on `latents` and the positive `text` with the blocks `layers` skipped (the
        transformer's `block_mask` state set to 0 there for this call), and other `states` (a ControlNet's residuals), with
        the positive half of `image_prompt`."""
        image_inputs = self.ip_adapter_inputs(image_prompt, timestep=timestep, batch=latents.shape[0], positive_only=True)
        mask = np.ones(self.transformer.config["num_layers"], dtype=np.float32)
        mask[list(layers)] = 0.0
        with self.metrics_recorder.infer(self.transformer):  # the one inference that does not go through `run_submodel`
            return self.transformer.call_with_states(
                {BLOCK_MASK: mask, **(states or {})},
                hidden_states=latents,
                timestep=np.full(latents.shape[0], timestep, dtype=np.float32),
                **text.inputs(self.transformer),
                **image_inputs,
            )["out_sample"]

    def denoise(
        self,
        latents: np.ndarray,
        *,
        timesteps: np.ndarray,
        prompt_embeds: np.ndarray,
        pooled_prompt_embeds: np.ndarray,
        guidance_scale: float,
        taylorseer: TaylorSeerConfig | None,
        callback_on_step_end: Callable | None,
        callback_on_step_end_tensor_inputs: list[str],
        conditioning=None,
        skip_layer_guidance: SkipLayerGuidance | None = None,
        torch_callback: bool = False,
        image_prompt=None,
    ) -> np.ndarray:
        """The denoising loop: predict the flow (or take it from the step cache), guide it, take a scheduler step.

        `conditioning` (from `initial_latents`) may add transformer input channels (`model_input`) and change the
        latents after each step (`after_step`), as inpainting does, or set transformer states each step
        (`transformer_states`, a ControlNet's residuals). `skip_layer_guidance` adds its extra pass on
        the steps of its window; `image_prompt` (an IP-Adapter's) conditions every step. `callback_on_step_end` gets numpy
        arrays (torch tensors with `torch_callback`)."""
        from tqdm.auto import tqdm

        model_input = getattr(conditioning, "model_input", None)
        after_step = getattr(conditioning, "after_step", None)
        transformer_states = getattr(conditioning, "transformer_states", None)
        text = self.transformer_text(prompt_embeds, pooled_prompt_embeds)  # repeated trailing tokens folded (text_folding.py)
        positive_text = text.positive()  # guidance batches are [negative, positive]
        cache = TaylorSeerCache(taylorseer, num_steps=len(timesteps)) if taylorseer else None
        for step, t in enumerate(tqdm(timesteps, **self._progress_bar_config)):
            if self.interrupt:
                break
            started = time.perf_counter()
            if cache is None or cache.computes(step):
                noise_pred = self.predict_noise(
                    latents, timestep=t, text=text, guidance_scale=guidance_scale, model_input=model_input,
                    transformer_states=transformer_states, step=step, image_prompt=image_prompt,
                )  # fmt: skip
                if cache is not None:
                    cache.update(step, noise_pred)
            else:
                noise_pred = cache.predict(step)
            guided = classifier_free_guidance(noise_pred, guidance_scale=guidance_scale)
            if skip_layer_guidance is not None and skip_layer_guidance.active(step, num_steps=len(timesteps)):
                states = transformer_states.positive() if transformer_states is not None else None  # this step's residuals
                skipped = self.predict_skipping(
                    latents, timestep=t, text=positive_text, layers=skip_layer_guidance.layers, states=states, image_prompt=image_prompt
                )
                guided = guided + (np.split(noise_pred, 2)[1] - skipped) * np.float32(skip_layer_guidance.scale)
            latents = self.scheduler.step(guided, t, latents, return_dict=False)[0]
            if after_step is not None:
                latents = after_step(latents, step)
            if callback_on_step_end is not None:
                values = {"latents": latents, "prompt_embeds": prompt_embeds, "pooled_prompt_embeds": pooled_prompt_embeds}
                callback_kwargs = {name: to_torch(values[name]) if torch_callback else values[name] for name in callback_on_step_end_tensor_inputs}
                callback_outputs = callback_on_step_end(self, step, to_torch(t) if torch_callback else t, callback_kwargs) or {}
                latents = as_array(callback_outputs["latents"]) if "latents" in callback_outputs else latents
            check_finite_latents(latents, step=step, num_steps=len(timesteps))  # one `isfinite` a step: costs nothing measurable
            self.metrics_recorder.add_step(time.perf_counter() - started)
        return latents

    # -- 7. Decode -----------------------------------------------------------------------------------------

    def decode_latents(self, latents, *, output_type: str):
        """Undo the VAE scaling and shift of (B, C, h, w) latents (numpy or torch), decode, post-process to `output_type`."""
        config = self.vae_decoder.config
        latents = as_array(latents) / np.float32(config["scaling_factor"]) + np.float32(config.get("shift_factor") or 0.0)
        return self.image_processor.postprocess(self.vae_decode(latents), output_type=output_type)

    def vae_decode(self, latents: np.ndarray) -> np.ndarray:
        """(B, C, h, w) unscaled latents -> (B, 3, H, W) images in [-1, 1]: one VAE call, or one per tile."""

        def decode(tile: np.ndarray) -> np.ndarray:
            return self.run_submodel(self.vae_decoder, latent_sample=tile)["sample"]

        if self.vae_tiling is not None and self.vae_tiling.decodes_tiled(latents.shape):
            return self.vae_tiling.decode(decode, latents)
        return decode(latents)

    def vae_encode(self, pixels: np.ndarray) -> np.ndarray:
        """(B, 3, H, W) images -> (B, 2 x latent_channels, h, w) latent mean and log-variance: one VAE encoder call, or
        one per tile after `enable_vae_tiling()` (image-to-image, inpainting and ControlNet pipelines load the encoder)."""

        def encode(tile: np.ndarray) -> np.ndarray:
            return self.run_submodel(self.vae_encoder, sample=tile)["latent_parameters"]

        if self.vae_tiling is not None and self.vae_tiling.encodes_tiled(pixels.shape):
            return self.vae_tiling.encode(encode, pixels)
        return encode(pixels)

    def output_images(self, latents: np.ndarray, *, output_type: str, returns_torch: bool, image_inputs):
        """What the call returns: the latents for `output_type="latent"` (torch when the call was given torch
        objects), else the decoded images, finished by `finish_images`."""
        if output_type == "latent":
            return to_torch(latents) if returns_torch else latents
        return self.finish_images(self.decode_latents(latents, output_type=output_type), image_inputs=image_inputs)

    # -- The call ------------------------------------------------------------------------------------------

    def __call__(self, *args, **kwargs) -> "SD3PipelineOutput | tuple":
        """Generate images; see `generate`."""
        return self.generate(*args, **kwargs)

    @records_call  # the call's `PerformanceMetrics` (see `get_performance_metrics`)
    def generate(
        self, prompt: str | list[str] | None = None, prompt_2: str | list[str] | None = None, prompt_3: str | list[str] | None = None,
        height: int | None = None, width: int | None = None, num_inference_steps: int = GENERATION_DEFAULTS.num_inference_steps,
        sigmas: list[float] | None = None, guidance_scale: float = GENERATION_DEFAULTS.guidance_scale,
        negative_prompt: str | list[str] | None = None, negative_prompt_2: str | list[str] | None = None,
        negative_prompt_3: str | list[str] | None = None, num_images_per_prompt: int = 1, generator=None, latents=None,
        prompt_embeds=None, negative_prompt_embeds=None, pooled_prompt_embeds=None, negative_pooled_prompt_embeds=None,
        output_type: str = "pil", return_dict: bool = True, clip_skip: int | None = None, callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006 (read only, as in diffusers)
        max_sequence_length: int = GENERATION_DEFAULTS.max_sequence_length, mu: float | None = None,
        taylorseer: TaylorSeerConfig | None = DEFAULT_STEP_CACHE,
        skip_guidance_layers: list[int] | None = None, skip_layer_guidance_scale: float = 2.8, skip_layer_guidance_stop: float = 0.2,
        skip_layer_guidance_start: float = 0.01, ip_adapter_image=None, ip_adapter_image_embeds=None, image_inputs=None,
    ) -> SD3PipelineOutput | tuple:  # fmt: skip
        """Generate images from text; arguments mean what they mean in diffusers' `StableDiffusion3Pipeline`, skip-layer
        guidance (`SkipLayerGuidance`) and IP-Adapter image prompts (`load_ip_adapter`) included; guidance runs when
        `guidance_scale > 1`; `callback_on_step_end` may return new tensors and set `pipe._interrupt = True` to stop.
        `taylorseer`: the step cache, genai's by default; None computes every step (diffusers' image). `generator`: a
        `torch.Generator`, an int seed, a `TorchCPUGenerator` or a list. Latents and embeddings may be numpy or torch; outputs
        and callback tensors are torch when the call got torch objects, else numpy. Image pipelines set `image_inputs`."""
        height, width = (self.size_rules.default if side is None else side for side in (height, width))
        other_prompts = dict(prompt_2=prompt_2, prompt_3=prompt_3, negative_prompt_2=negative_prompt_2, negative_prompt_3=negative_prompt_3)
        embeds = dict(prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds, pooled_prompt_embeds=pooled_prompt_embeds,
                      negative_pooled_prompt_embeds=negative_pooled_prompt_embeds)  # fmt: skip

        # 1. Check inputs
        self.check_inputs(
            prompt=prompt, negative_prompt=negative_prompt, other_prompts=other_prompts, **embeds, height=height, width=width,
            num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, num_images_per_prompt=num_images_per_prompt,
            max_sequence_length=max_sequence_length, clip_skip=clip_skip, output_type=output_type, generator=generator, latents=latents,
            taylorseer=taylorseer, callback_on_step_end=callback_on_step_end, callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
        )  # fmt: skip
        skip_layer_guidance = self.check_skip_layer_guidance(
            layers=skip_guidance_layers, scale=skip_layer_guidance_scale, start=skip_layer_guidance_start, stop=skip_layer_guidance_stop, guidance_scale=guidance_scale
        )  # fmt: skip

        # 2. Define call parameters
        batch_size = prompt_batch_size(prompt, prompt_embeds)
        do_classifier_free_guidance = guidance_scale > 1.0
        returns_torch = wants_torch(generator, latents, *embeds.values()) or (image_inputs is not None and image_inputs.torch_inputs)
        generator = as_generator(generator)  # a seed: one stream for the whole call
        with self._call_lock:
            self.start_call()
            shape = call_shape(height=height, width=width, batch_size=batch_size, num_images_per_prompt=num_images_per_prompt, max_sequence_length=max_sequence_length,
                               do_classifier_free_guidance=do_classifier_free_guidance, text_tokens=self.expected_text_tokens(max_sequence_length))  # fmt: skip
            self.fit_call_shape(shape, transformer_batch_varies=skip_layer_guidance is not None)

            # 3. Encode prompt, and the image prompt of an IP-Adapter
            prompt_embeds, pooled_prompt_embeds = self.prepare_embeddings(
                prompts=dict(prompt=prompt, negative_prompt=negative_prompt, **other_prompts), **embeds,
                do_classifier_free_guidance=do_classifier_free_guidance, num_images_per_prompt=num_images_per_prompt,
                clip_skip=clip_skip, max_sequence_length=max_sequence_length,
            )  # fmt: skip
            self.fit_text_tokens(shape, text=self.transformer_text(prompt_embeds, pooled_prompt_embeds), transformer_batch_varies=skip_layer_guidance is not None)
            image_prompt = self.prepare_image_prompt(
                ip_adapter_image, ip_adapter_image_embeds, batch_size=batch_size, num_images=batch_size * num_images_per_prompt,
                do_classifier_free_guidance=do_classifier_free_guidance,
            )  # fmt: skip

            # 4. Prepare timesteps
            timesteps = self.prepare_timesteps(num_inference_steps=num_inference_steps, sigmas=sigmas, mu=mu, height=height, width=width)
            timesteps = self.strength_timesteps(timesteps, image_inputs=image_inputs)

            # 5. Prepare latents
            latents, conditioning = self.initial_latents(
                batch_size=batch_size * num_images_per_prompt, height=height, width=width, generator=generator,
                latents=latents, timesteps=timesteps, image_inputs=image_inputs,
            )  # fmt: skip

            # 6. Denoising loop
            latents = self.denoise(
                latents, timesteps=timesteps, prompt_embeds=prompt_embeds, pooled_prompt_embeds=pooled_prompt_embeds,
                guidance_scale=guidance_scale, taylorseer=taylorseer, callback_on_step_end=callback_on_step_end,
                callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs, conditioning=conditioning,
                skip_layer_guidance=skip_layer_guidance, torch_callback=returns_torch, image_prompt=image_prompt,
            )  # fmt: skip

            # 7. Decode
            images = self.output_images(latents, output_type=output_type, returns_torch=returns_torch, image_inputs=image_inputs)
        return SD3PipelineOutput(images=images) if return_dict else (images,)
