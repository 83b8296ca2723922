"""The OpenVINO runtime: the SD3 text-to-image pipeline on the submodels of `sd3_submodels`.

`OVStableDiffusion3Pipeline.__call__` follows diffusers' `StableDiffusion3Pipeline.__call__` (same argument
names, same scheduler, same image processor, same random latents), so the same seed gives the same image. Every
model constant is read from the `config.json` files saved beside the IRs. `generate` reads as diffusers'
numbered steps; each step is a short method that image-to-image and inpainting pipelines can reuse.

Everything runs in numpy: no torch, diffusers or transformers is imported unless a call is given torch objects (a
`torch.Generator`, torch tensors), and then only to hand torch tensors back (see `wants_torch`).

Imports the layout, the torch-free arrays, scheduler, noise, image processing and VAE tiling, `sd3_submodels`,
`sd3_steps` (step caching, skip-layer guidance) and `sd3_previews` (live previews of the latents).
"""

import logging
from collections import OrderedDict
import math
import threading
from dataclasses import dataclass
from numbers import Real
from pathlib import Path
from typing import Callable

import numpy as np

from .arrays import as_array, as_generator, check_generator, to_torch, wants_torch
from .image_processing import ImageProcessor, is_torch_tensor
from ..core.layout import (
    BLOCK_MASK,
    GENERATION_DEFAULTS,
    OV_MODEL_BIN,
    PIPELINE_SUBMODELS,
    TEXT_ENCODERS,
    TOKENIZERS,
    SizeRules,
    check_sd3_index,
    has_component,
    read_model_index,
)
from .lora import LoraAdapters
from .noise import randn_tensor
from .previews import LatentPreviews, check_preview_latents, check_preview_options, preview_output, tiny_decoder_inputs
from .scheduler import calculate_shift, retrieve_timesteps
from .steps import SkipLayerGuidance, TaylorSeerCache, TaylorSeerConfig
from .submodels import (
    OVSubmodel,
    check_devices,
    device_for,
    load_scheduler,
    load_tokenizer,
    physical_memory,
    release_file_pages,
    submodel_ov_config,
    trim_heap,
)
from .vae_tiling import TILE_OVERLAP_FACTOR, VaeTiling

OUTPUT_TYPES = ("pil", "np", "latent")
logger = logging.getLogger(__name__)
# ----------------------------------------------------------------------------------------------------------
# The pipeline
# ----------------------------------------------------------------------------------------------------------


@dataclass
class SD3PipelineOutput:
    """`images`: a list of PIL images, a (B, H, W, 3) float array in [0, 1], or (B, C, h, w) latents (a numpy
    array, or a torch tensor when the call was given torch objects: see `sd3_arrays.wants_torch`)."""

    images: list | np.ndarray


class PromptCache:
    """The text encoders' outputs for the last `max_prompts` distinct prompts (least recently used goes first), so
    that a seed sweep or a settings sweep over one prompt encodes it once. Keys hold every input of the encoding."""

    def __init__(self, max_prompts: int):
        if isinstance(max_prompts, bool) or not isinstance(max_prompts, int) or max_prompts < 1:
            raise ValueError(f"`max_prompts` has to be a whole number >= 1 but is {max_prompts!r}; use `disable_prompt_cache()` for none.")
        self.max_prompts, self.entries = max_prompts, OrderedDict()

    def get(self, key: tuple):
        if key in self.entries:
            self.entries.move_to_end(key)
        return self.entries.get(key)

    def put(self, key: tuple, value) -> None:
        self.entries[key] = value
        self.entries.move_to_end(key)
        while len(self.entries) > self.max_prompts:
            self.entries.popitem(last=False)


def as_batch(value: str | list[str] | None, batch_size: int, name: str) -> list[str] | None:
    """A prompt argument as a list of `batch_size` strings (a single string is repeated), None stays None."""
    if value is None:
        return None
    if not (isinstance(value, str) or (isinstance(value, list) and all(isinstance(item, str) for item in value))):
        raise TypeError(f"`{name}` has to be a str or a list of str but is {type(value).__name__}: {value!r:.200}.")
    values = [value] * batch_size if isinstance(value, str) else list(value)
    if len(values) != batch_size:
        raise ValueError(
            f"`{name}` has batch size {len(values)} but `prompt` has batch size {batch_size}. "
            f"Pass one `{name}` per prompt, or a single string for all."
        )
    return values


def call_shape(
    *, height: int, width: int, batch_size: int, num_images_per_prompt: int, do_classifier_free_guidance: bool, max_sequence_length: int
) -> dict:
    """What fixes every input shape of one kind of call (see `OVStableDiffusion3Pipeline.reshape`)."""
    return dict(
        height=height,
        width=width,
        batch_size=batch_size,
        num_images_per_prompt=num_images_per_prompt,
        do_classifier_free_guidance=do_classifier_free_guidance,
        max_sequence_length=max_sequence_length,
    )


class OVStableDiffusion3Pipeline:
    """Text-to-image with Stable Diffusion 3 on OpenVINO, argument for argument like diffusers' pipeline."""

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
        self.vae_tiling = None  # a `VaeTiling` after `enable_vae_tiling()`
        self.prompt_cache = None  # a `PromptCache` after `enable_prompt_cache()`
        self.release_text_encoders = ()  # the text encoders `enable_text_encoder_release()` drops after encoding
        self._pages_released = {}  # submodel name -> the compilation after whose first inference its IR pages went
        self._progress_bar_config = {}
        self._interrupt = False
        self._static_shape = None  # set by `reshape`
        self._call_lock = threading.RLock()  # infer requests and the scheduler hold per-call state
        self.lora = LoraAdapters(submodels=self.submodels, model_dir=self.model_dir)  # run-time LoRA adapters
        self.previews = LatentPreviews(model_dir=self.model_dir, vae_config=self.vae_decoder.config)  # see `preview_images`

    @classmethod
    def from_pretrained(
        cls,
        model_dir: str | Path,
        *,
        device: str | dict[str, str] = "CPU",
        ov_config: dict | None = None,
        cache_dir: str | Path | None = None,
        compile: bool = True,
    ) -> "OVStableDiffusion3Pipeline":
        """Load a folder written by `convert_sd3` (or optimum-cli) and compile its models for `device`.

        `device` is one OpenVINO device for all submodels ("CPU", "GPU", "AUTO") or a dict by submodel name
        (`{"transformer": "GPU", "text_encoder": "CPU"}`; unnamed submodels run on CPU). `ov_config` holds
        OpenVINO properties for all submodels (`{"INFERENCE_PRECISION_HINT": "f32"}`) or a dict of them by
        submodel name. Text encoders on a GPU run in f32 unless `ov_config` says otherwise. `cache_dir` keeps
        OpenVINO's compiled models there, so later loads skip compilation. With `compile=False` the models are
        compiled on first use (or call `compile()` after `reshape()`). Everything loads from local files only.
        """
        import openvino as ov

        model_dir = Path(model_dir)
        model_index = read_model_index(model_dir)
        check_sd3_index(model_index, where=f"`{model_dir}`")
        core = ov.Core()
        check_devices(device, available=core.available_devices)
        has_t5 = has_component(model_index, "text_encoder_3")
        submodels = {}
        for name in cls.submodel_names:
            if name == "text_encoder_3" and not has_t5:
                continue
            submodel_device = device_for(device, name)
            config = submodel_ov_config(ov_config, submodel=name, device=submodel_device, cache_dir=cache_dir)
            submodels[name] = OVSubmodel(model_dir / name, core=core, device=submodel_device, ov_config=config)
        tokenizers = {name: load_tokenizer(model_dir, name=name) for name in TOKENIZERS if name != "tokenizer_3" or has_t5}
        scheduler = load_scheduler(model_dir, model_index=model_index)
        pipe = cls(submodels=submodels, tokenizers=tokenizers, scheduler=scheduler, model_dir=model_dir)
        if compile:
            pipe.compile()
        return pipe

    @classmethod
    def from_pipe(cls, pipe: "OVStableDiffusion3Pipeline") -> "OVStableDiffusion3Pipeline":
        """A pipeline of this class that shares `pipe`'s compiled submodels, tokenizers and call lock (diffusers'
        `from_pipe`): nothing is compiled again; a submodel `pipe` lacks (the VAE encoder) is loaded from its folder."""
        submodels = dict(pipe.submodels)
        for name in cls.submodel_names:
            if name not in submodels and name != "text_encoder_3":
                decoder = pipe.vae_decoder
                submodels[name] = OVSubmodel(pipe.model_dir / name, core=decoder.core, device=decoder.device, ov_config=decoder.ov_config)
        tokenizers = {"tokenizer": pipe.tokenizer, "tokenizer_2": pipe.tokenizer_2, "tokenizer_3": pipe.tokenizer_3}
        scheduler = pipe.scheduler.__class__.from_config(pipe.scheduler.config)  # schedulers hold per-call state
        new_pipe = cls(submodels=submodels, tokenizers=tokenizers, scheduler=scheduler, model_dir=pipe.model_dir)
        new_pipe._call_lock = pipe._call_lock  # the shared infer requests serve one call at a time
        new_pipe.vae_tiling = pipe.vae_tiling  # diffusers' `from_pipe` shares the VAE and its tiling
        new_pipe.prompt_cache, new_pipe.release_text_encoders = pipe.prompt_cache, pipe.release_text_encoders  # and the text encoders' options
        new_pipe.lora = pipe.lora  # and the LoRA adapters of the models it shares
        new_pipe.previews = pipe.previews  # and the fitted preview map and tiny decoder
        new_pipe.set_progress_bar_config(**pipe.progress_bar_config)
        return new_pipe

    def compile(self) -> None:
        """Compile every submodel now instead of on first use."""
        for submodel in self.submodels.values():
            if submodel.request is None:
                submodel.compile()

    @property
    def submodels(self) -> dict[str, OVSubmodel]:
        """The loaded submodels by name (no `text_encoder_3` without T5)."""
        candidates = {name: getattr(self, name, None) for name in PIPELINE_SUBMODELS + ("vae_encoder",)}
        return {name: submodel for name, submodel in candidates.items() if submodel is not None}

    def reshape(
        self,
        *,
        height: int | None = None,
        width: int | None = None,
        batch_size: int = 1,
        num_images_per_prompt: int = 1,
        do_classifier_free_guidance: bool = True,
        max_sequence_length: int = GENERATION_DEFAULTS.max_sequence_length,
    ) -> "OVStableDiffusion3Pipeline":
        """Fix every input shape for one kind of call (static shapes compile to faster code); returns `self`.

        A later call with another size, batch, guidance on/off or `max_sequence_length` raises a ValueError.
        Models compile again on next use (or call `compile()`). With VAE tiling on, the VAE decoder keeps dynamic
        shapes (its tiles differ in size).
        """
        height = self.size_rules.default if height is None else height
        width = self.size_rules.default if width is None else width
        self.size_rules.check(height=height, width=width)
        guidance_copies = 2 if do_classifier_free_guidance else 1
        text_batch = batch_size * guidance_copies  # positive and negative prompts go through together
        image_batch = batch_size * num_images_per_prompt
        latent_height, latent_width = height // self.vae_scale_factor, width // self.vae_scale_factor
        transformer = self.transformer.config
        sequence_length = self.tokenizer_max_length + max_sequence_length

        for encoder in (self.text_encoder, self.text_encoder_2):
            encoder.reshape({"input_ids": [text_batch, self.tokenizer_max_length]})
        if self.text_encoder_3 is not None:
            self.text_encoder_3.reshape({"input_ids": [text_batch, max_sequence_length]})
        transformer_batch = image_batch * guidance_copies
        self.transformer.reshape(
            {
                "hidden_states": [transformer_batch, transformer["in_channels"], latent_height, latent_width],
                "encoder_hidden_states": [transformer_batch, sequence_length, transformer["joint_attention_dim"]],
                "pooled_projections": [transformer_batch, transformer["pooled_projection_dim"]],
                "timestep": [transformer_batch],
            }
        )
        self._static_shape = call_shape(
            height=height,
            width=width,
            batch_size=batch_size,
            num_images_per_prompt=num_images_per_prompt,
            do_classifier_free_guidance=do_classifier_free_guidance,
            max_sequence_length=max_sequence_length,
        )
        self._reshape_vae_decoder()
        return self

    def _reshape_vae_decoder(self) -> None:
        """The VAE decoder's input for the static shapes of `reshape`: dynamic while tiling (tiles differ in size)."""
        shape, factor = self._static_shape, self.vae_scale_factor
        static = [shape["batch_size"] * shape["num_images_per_prompt"], shape["height"] // factor, shape["width"] // factor]
        images, height, width = [-1, -1, -1] if self.vae_tiling is not None else static
        self.vae_decoder.reshape({"latent_sample": [images, self.vae_decoder.config["latent_channels"], height, width]})

    def _check_static_shape(self, shape: dict) -> None:
        if self._static_shape is not None and shape != self._static_shape:
            changed = {key: value for key, value in shape.items() if self._static_shape[key] != value}
            raise ValueError(
                f"This pipeline was reshaped to static shapes {self._static_shape}, but this call asks for {changed}. "
                "Call `pipe.reshape(...)` with the new values (the models compile again), or load the pipeline "
                "again without reshaping for dynamic shapes."
            )

    def run_submodel(self, submodel: OVSubmodel, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        """`submodel(**inputs)`; after the first inference of each compiled model its `openvino_model.bin` pages leave
        RSS (`sd3_submodels.release_file_pages`), so that OpenVINO holds the weights once, in its own buffers: the peak
        RSS of an image falls by about the IR's size (benchmarks/bench_memory.py). Images stay bit-identical."""
        outputs = submodel(**inputs)
        if self._pages_released.get(submodel.name) != submodel.compilations:
            release_file_pages(self.model_dir / submodel.name / OV_MODEL_BIN)
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

    def enable_vae_tiling(self, *, tile_sample_min_size: int | None = None, tile_overlap_factor: float = TILE_OVERLAP_FACTOR) -> None:
        """Decode (and, in the image pipelines, encode) images larger than one tile tile by tile, blending overlapping
        tiles as diffusers' `enable_vae_tiling()` does: memory for one tile's activations, not the whole image's.
        Tiles are the VAE config's `sample_size` pixels (1024 for SD3) or `tile_sample_min_size`; smaller images decode
        whole. A ValueError names tiles too small to overlap. After `reshape` the VAE decoder turns dynamic again."""
        self.vae_tiling = VaeTiling.from_config(
            self.vae_decoder.config, tile_sample_min_size=tile_sample_min_size, tile_overlap_factor=tile_overlap_factor
        )
        if self._static_shape is not None:
            self._reshape_vae_decoder()

    def disable_vae_tiling(self) -> None:
        """Decode (and encode) whole images again, in one VAE call."""
        self.vae_tiling = None
        if self._static_shape is not None:
            self._reshape_vae_decoder()

    # -- Text encoders on demand -------------------------------------------------------------------------

    def enable_prompt_cache(self, max_prompts: int = 16) -> None:
        """Keep the embeddings of the last `max_prompts` distinct prompts (with their negatives, `clip_skip` and
        `max_sequence_length`, and the text encoders' LoRA adapters), so that a repeated prompt is not encoded again."""
        self.prompt_cache = PromptCache(max_prompts)

    def disable_prompt_cache(self) -> None:
        """Encode every prompt again (and forget the cached embeddings)."""
        self.prompt_cache = None

    def enable_text_encoder_release(self, text_encoders: tuple[str, ...] = TEXT_ENCODERS) -> None:
        """After encoding, drop the compiled models of `text_encoders` (all three by default; `("text_encoder_3",)`
        for T5 alone, about 4.7 GB in int8), so that the denoising steps and the decode run without them; they compile
        again on the next prompt that needs them (from OpenVINO's cache when `from_pretrained(cache_dir=...)` gave
        one). Pairs well with `enable_prompt_cache`, which spares that for a repeated prompt."""
        unknown = [name for name in text_encoders if name not in TEXT_ENCODERS] if isinstance(text_encoders, (tuple, list)) else [text_encoders]
        if unknown:
            raise ValueError(f"`text_encoders` names {unknown}; the text encoders are {list(TEXT_ENCODERS)}.")
        self.release_text_encoders = tuple(text_encoders)

    def disable_text_encoder_release(self) -> None:
        """Keep the text encoders compiled between calls (the default)."""
        self.release_text_encoders = ()

    def release_text_encoder_models(self, text_encoders: tuple[str, ...] = TEXT_ENCODERS) -> None:
        """Drop the compiled models of `text_encoders` now, and the heap memory they held; each compiles again on
        its next use."""
        for name in text_encoders:
            submodel = getattr(self, name, None)
            if submodel is not None:
                submodel.request = None
        trim_heap()

    # -- LoRA adapters at run time (diffusers' names and meanings; see sd3_lora.py) ------------------------

    def load_lora_weights(self, pretrained_model_name_or_path_or_dict: str | Path | dict, adapter_name: str | None = None) -> None:
        """Load a LoRA (a `.safetensors` file, its folder, a hub id or a state dict; every format diffusers'
        `lora_state_dict` reads) for the transformer and, where it has them, the CLIP text encoders, and make it the
        active adapter at weight 1. The first adapter on a layer compiles its submodel again; later switches
        (`set_adapters`) do not. `adapter_name` defaults to `default_<n>`. Reading the file imports torch."""
        with self._call_lock:
            self.lora.load(pretrained_model_name_or_path_or_dict, adapter_name=adapter_name)

    def set_adapters(self, adapter_names: str | list[str], adapter_weights: float | dict | list | None = None) -> None:
        """Make `adapter_names` the active adapters, each at its weight (None: 1; one number for all; a list, one per
        name; a dict by component, e.g. `{"transformer": 0.8, "text_encoder": 0.5}`). Writes states only."""
        with self._call_lock:
            self.lora.set_adapters(adapter_names, adapter_weights)

    def disable_lora(self) -> None:
        """Generate without the adapters (they stay loaded, and `enable_lora` brings the same choice back)."""
        with self._call_lock:
            self.lora.enabled = False
            self.lora.write_states()

    def enable_lora(self) -> None:
        """Apply the active adapters again after `disable_lora`."""
        with self._call_lock:
            self.lora.enabled = True
            self.lora.write_states()

    def delete_adapters(self, adapter_names: str | list[str]) -> None:
        """Remove the named adapters."""
        with self._call_lock:
            self.lora.delete(adapter_names)

    def unload_lora_weights(self) -> None:
        """Remove every adapter; the submodels that had them get their original graphs back (compiled again on
        next use), so the base model runs at its own speed."""
        with self._call_lock:
            self.lora.unload()

    def get_active_adapters(self) -> list[str]:
        """The active adapters (the transformer's), as diffusers' `get_active_adapters`."""
        return self.lora.active_adapters()

    def get_list_adapters(self) -> dict[str, list[str]]:
        """`{component: loaded adapter names}`, as diffusers' `get_list_adapters`."""
        return self.lora.list_adapters()

    # -- Live previews of the latents (see sd3_previews.py) ---------------------------------------------

    def preview_images(self, latents, *, method: str = "linear", size: tuple[int, int] | None = None, output_type: str = "pil"):
        """What (B, C, h, w) `latents` of the denoising loop (numpy or torch: `callback_kwargs["latents"]`) look like, cheaply.

        `method="linear"`: a linear map from latent channels to RGB, fitted from this model's VAE on first use (one
        small VAE call, once for this pipeline and those `from_pipe` makes from it), then one small matrix product per
        preview (under 0.1 % of a step): images of h x w pixels. `method="taesd"`: the tiny autoencoder's decoder
        converted into the folder (`convert_preview_decoder`): full-size images, sharper, for a few % of a step.
        `size=(width, height)` resizes them (nearest), e.g. to the image's size. `output_type` "pil" gives PIL images,
        "np" a (B, H, W, 3) float32 array in [0, 1].

            def show(pipe, step, timestep, callback_kwargs):
                pipe.preview_images(callback_kwargs["latents"])[0].save(f"step-{step}.png")
                return {}
        """
        check_preview_options(method=method, output_type=output_type, size=size)
        channels = self.vae_decoder.config["latent_channels"]
        latents = check_preview_latents(latents, latent_channels=channels, vae_scale_factor=self.vae_scale_factor)
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
        """The VAE decode the linear preview map is fitted with: the pipeline's own, or a dynamic copy of the decoder
        while `reshape` holds it at one call's shape (the fit decodes small latents)."""
        decoder = self.vae_decoder
        shape = (decoder.shapes or {}).get("latent_sample")
        if shape is None or all(size == -1 for axis, size in enumerate(shape) if axis != 1):
            return self.vae_decode
        copy = OVSubmodel(self.model_dir / decoder.name, core=decoder.core, device=decoder.device, ov_config=decoder.ov_config)
        return lambda latents: copy(latent_sample=latents)["sample"]

    def _tiny_decode(self, latents: np.ndarray) -> np.ndarray:
        """(B, C, h, w) latents of the denoising loop -> (B, H, W, 3) images in [0, 1] by the folder's tiny decoder."""
        decoder = self.vae_decoder
        tiny = self.previews.tiny_decoder(core=decoder.core, device=decoder.device, ov_config=decoder.ov_config)
        images = self.run_submodel(tiny, latent_sample=tiny_decoder_inputs(latents, config=tiny.config))["sample"]
        return self.image_processor.denormalize(images).transpose(0, 2, 3, 1)

    # -- 1. Checks ---------------------------------------------------------------------------------------

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
    ) -> None:
        """Raise a ValueError or TypeError that names the bad argument, its value and the fix.

        `other_prompts` holds `prompt_2`, `prompt_3` and the negatives beyond `negative_prompt` by name.
        """
        self._check_numbers(
            height=height,
            width=width,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            num_images_per_prompt=num_images_per_prompt,
            max_sequence_length=max_sequence_length,
            clip_skip=clip_skip,
        )
        self._check_prompts(prompt=prompt, prompt_embeds=prompt_embeds, texts={"negative_prompt": negative_prompt, **(other_prompts or {})})
        self._check_embeds(
            prompt_embeds=prompt_embeds,
            pooled_prompt_embeds=pooled_prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
        )
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {list(OUTPUT_TYPES)} but is {output_type!r}.")
        unknown = set(callback_on_step_end_tensor_inputs) - set(self._callback_tensor_inputs)
        if unknown:
            raise ValueError(f"`callback_on_step_end_tensor_inputs` has {sorted(unknown)}; allowed: {self._callback_tensor_inputs}.")
        if callback_on_step_end is not None and not callable(callback_on_step_end):
            raise TypeError(f"`callback_on_step_end` has to be a function (pipe, step, timestep, callback_kwargs) but is {callback_on_step_end!r:.80}.")
        if taylorseer is not None and not isinstance(taylorseer, TaylorSeerConfig):
            raise TypeError(f"`taylorseer` has to be a TaylorSeerConfig or None but is {type(taylorseer).__name__}.")
        batch_size = (1 if isinstance(prompt, str) else len(prompt)) if prompt is not None else len(prompt_embeds)
        check_generator(generator)
        self._check_batch(images=batch_size * num_images_per_prompt, height=height, width=width, generator=generator)

    def check_size(self, *, height, width) -> None:
        """Raise a TypeError or ValueError unless `height` and `width` are ints this model accepts."""
        for name, value in (("height", height), ("width", width)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"`{name}` has to be an int (pixels) but is {type(value).__name__}: {value!r:.80}. Pass e.g. {self.size_rules.default}.")
        self.size_rules.check(height=height, width=width)

    def check_skip_layer_guidance(self, *, layers, scale, start, stop, guidance_scale) -> SkipLayerGuidance | None:
        """The call's `SkipLayerGuidance` (None without `skip_guidance_layers`), or a named error."""
        if layers is None:
            return None
        num_layers = self.transformer.config["num_layers"]
        if not isinstance(layers, (list, tuple)) or not layers or not all(isinstance(i, int) and not isinstance(i, bool) for i in layers):
            raise TypeError(f"`skip_guidance_layers` has to be a non-empty list of block indices (e.g. [7, 8, 9]) but is {layers!r:.80}.")
        if not all(0 <= index < num_layers for index in layers):
            raise ValueError(f"`skip_guidance_layers` {list(layers)} has indices outside 0..{num_layers - 1}: this transformer has {num_layers} blocks.")
        for name, value in (("skip_layer_guidance_scale", scale), ("skip_layer_guidance_start", start), ("skip_layer_guidance_stop", stop)):
            if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
                raise TypeError(f"`{name}` has to be a finite number but is {value!r:.80}.")
        if not 0.0 <= start < stop <= 1.0:
            raise ValueError(
                f"`skip_layer_guidance_start` and `skip_layer_guidance_stop` have to satisfy 0 <= start < stop <= 1 (fractions "
                f"of the steps) but are {start} and {stop}."
            )
        if guidance_scale <= 1.0:
            raise ValueError(
                f"Skip-layer guidance needs classifier-free guidance (`guidance_scale` > 1) but `guidance_scale` is "
                f"{guidance_scale}; diffusers would silently ignore `skip_guidance_layers` here. Raise `guidance_scale` or drop the layers."
            )
        if BLOCK_MASK not in self.transformer.state_names:
            raise ValueError(
                f"`{self.model_dir / 'transformer'}` has no `{BLOCK_MASK}` state, so its blocks cannot be skipped (an export of "
                "another tool or an older version): convert the checkpoint again with `convert_sd3(..., overwrite=True)`."
            )
        if self._static_shape is not None:
            raise ValueError("Skip-layer guidance runs the transformer on another batch size: load the pipeline without `reshape` to use it.")
        return SkipLayerGuidance(layers=tuple(layers), scale=float(scale), start=float(start), stop=float(stop))

    def _check_numbers(self, *, height, width, num_inference_steps, guidance_scale, num_images_per_prompt, max_sequence_length, clip_skip) -> None:
        self.check_size(height=height, width=width)
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` has to be a positive integer but is {num_inference_steps!r}.")
        if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, Real):
            raise TypeError(f"`guidance_scale` has to be a number (e.g. 7.0; <= 1 turns guidance off) but is {type(guidance_scale).__name__}: {guidance_scale!r:.80}.")
        if not math.isfinite(guidance_scale):
            raise ValueError(f"`guidance_scale` has to be a finite number (e.g. 7.0; <= 1 turns guidance off) but is {guidance_scale!r}.")
        if isinstance(num_images_per_prompt, bool) or not isinstance(num_images_per_prompt, int):
            raise TypeError(f"`num_images_per_prompt` has to be an int but is {type(num_images_per_prompt).__name__}: {num_images_per_prompt!r:.80}.")
        if num_images_per_prompt < 1:
            raise ValueError(f"`num_images_per_prompt` has to be at least 1 but is {num_images_per_prompt}.")
        if isinstance(max_sequence_length, bool) or not isinstance(max_sequence_length, int):
            raise TypeError(f"`max_sequence_length` has to be an int but is {type(max_sequence_length).__name__}: {max_sequence_length!r:.80}.")
        if not 0 < max_sequence_length <= 512:
            raise ValueError(f"`max_sequence_length` must be between 1 and 512 but is {max_sequence_length}.")
        layers = min(self.text_encoder.config["num_hidden_layers"], self.text_encoder_2.config["num_hidden_layers"])
        if clip_skip is not None and (isinstance(clip_skip, bool) or not isinstance(clip_skip, int) or not 0 <= clip_skip < layers):
            raise ValueError(f"`clip_skip` has to be None or an int from 0 to {layers - 1} (the CLIP encoders have {layers} layers) but is {clip_skip!r}.")

    @staticmethod
    def _check_prompts(*, prompt, prompt_embeds, texts: dict) -> None:
        if (prompt is None) == (prompt_embeds is None):
            raise ValueError(
                "Provide exactly one of `prompt` or `prompt_embeds`; got "
                f"{'both' if prompt is not None else 'neither'} (prompt={prompt!r:.200})."
            )
        if prompt is not None and not (isinstance(prompt, str) or (isinstance(prompt, list) and all(isinstance(p, str) for p in prompt))):
            raise TypeError(f"`prompt` has to be a str or a list of str but is {type(prompt).__name__}: {prompt!r:.200}.")
        if isinstance(prompt, list) and not prompt:
            raise ValueError("`prompt` is an empty list; pass at least one prompt (a str, or a list of str).")
        batch_size = 1 if isinstance(prompt, str) or prompt is None else len(prompt)
        for name, value in texts.items():
            if value is not None:  # with `prompt_embeds` there is no prompt batch to match: only the type counts
                as_batch(value, batch_size if prompt is not None or not isinstance(value, list) else len(value), name)

    def _check_embeds(self, *, prompt_embeds, pooled_prompt_embeds, negative_prompt_embeds, negative_pooled_prompt_embeds) -> None:
        if prompt_embeds is not None and pooled_prompt_embeds is None:
            raise ValueError("`pooled_prompt_embeds` must be given with `prompt_embeds` (both come from `encode_prompt`).")
        if negative_prompt_embeds is not None and negative_pooled_prompt_embeds is None:
            raise ValueError("`negative_pooled_prompt_embeds` must be given with `negative_prompt_embeds`.")
        config = self.transformer.config
        expected = {
            "prompt_embeds": f"(batch, {self.tokenizer_max_length} + T5 tokens, {config['joint_attention_dim']})",
            "pooled_prompt_embeds": f"(batch, {config['pooled_projection_dim']})",
        }
        given = dict(
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            pooled_prompt_embeds=pooled_prompt_embeds,
            negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
        )
        for name, value in given.items():
            if value is None:
                continue
            kind = "pooled_prompt_embeds" if "pooled" in name else "prompt_embeds"
            if not isinstance(value, np.ndarray) and not is_torch_tensor(value):
                raise TypeError(f"`{name}` has to be a numpy array or torch tensor {expected[kind]} (from `encode_prompt`) but is {type(value).__name__}.")
            shape = tuple(value.shape)
            fits = (
                len(shape) == 2 and shape[1] == config["pooled_projection_dim"]
                if kind == "pooled_prompt_embeds"
                else len(shape) == 3 and shape[1] > self.tokenizer_max_length and shape[2] == config["joint_attention_dim"]
            )
            if not fits:
                raise ValueError(f"`{name}` must have shape {expected[kind]} for this model but has shape {shape}; make it with `pipe.encode_prompt`.")
        for positive, negative in (("prompt_embeds", "negative_prompt_embeds"), ("pooled_prompt_embeds", "negative_pooled_prompt_embeds")):
            if given[positive] is not None and given[negative] is not None and given[positive].shape != given[negative].shape:
                raise ValueError(
                    f"`{positive}` and `{negative}` must have the same shape but have {tuple(given[positive].shape)} and {tuple(given[negative].shape)}."
                )

    def _check_batch(self, *, images: int, height: int, width: int, generator) -> None:
        if isinstance(generator, list) and len(generator) != images:
            raise ValueError(
                f"You have passed a list of {len(generator)} generators, but requested an effective batch size of {images} "
                "(prompts x `num_images_per_prompt`). Pass one generator per image, or a single generator."
            )
        needed, available = self.estimated_memory(images=images, height=height, width=width), physical_memory()
        if available is not None and needed > available:
            raise ValueError(
                f"{images} images of {width}x{height} need about {needed / 1e9:.1f} GB of activations (estimated), more "
                f"than this machine's {available / 1e9:.1f} GB of memory. Lower `num_images_per_prompt`, the number of "
                "prompts or the size, and generate in several calls."
            )

    def estimated_memory(self, *, images: int, height: int, width: int) -> int:
        """A lower estimate of the bytes a call's activations take: per image, the VAE decoder's full-resolution
        feature maps and the output, and the transformer's token activations (x2 with guidance)."""
        vae, transformer = self.vae_decoder.config, self.transformer.config
        pixels = height * width
        vae_bytes = 4 * pixels * (2 * vae["block_out_channels"][0] + 2 * 3)
        tokens = pixels // self.size_rules.multiple**2 + self.tokenizer_max_length
        width_of_tokens = transformer.get("num_attention_heads", 1) * transformer.get("attention_head_dim", 64)
        transformer_bytes = 4 * tokens * width_of_tokens * 10 * 2  # q, k, v, MLP (4x) ... ; x2: guidance
        return images * (vae_bytes + transformer_bytes)

    # -- 3. Text encoding --------------------------------------------------------------------------------

    @staticmethod
    def _token_ids(tokenizer, prompts: list[str], *, max_length: int, encoder: str, limit: str) -> np.ndarray:
        """Token ids (B, max_length), padded and truncated; what truncation drops is logged as diffusers does."""
        input_ids = tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True, return_tensors="np").input_ids
        untruncated_ids = tokenizer(prompts, padding="longest", return_tensors="np").input_ids
        if untruncated_ids.shape[-1] > input_ids.shape[-1]:
            removed_text = tokenizer.batch_decode(untruncated_ids[:, max_length - 1 : -1])
            logger.warning(f"The following part of your input was truncated because {encoder} {limit} {max_length} tokens: {removed_text}")
        return input_ids.astype(np.int64)

    def _clip_embeds(self, prompts: list[str], *, index: int, clip_skip: int | None) -> tuple[np.ndarray, np.ndarray]:
        """(penultimate hidden states (B, 77, width), pooled projection (B, projection_dim)) of one CLIP encoder."""
        tokenizer, encoder = [(self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)][index]
        input_ids = self._token_ids(tokenizer, prompts, max_length=self.tokenizer_max_length, encoder="CLIP", limit="can only handle sequences up to")
        outputs = self.run_submodel(encoder, input_ids=input_ids)
        layer = encoder.config["num_hidden_layers"] - 1 - (clip_skip or 0)  # diffusers: hidden_states[-(clip_skip + 2)]
        return outputs[f"hidden_states.{layer}"], outputs["text_embeds"]

    def _t5_embeds(self, prompts: list[str], *, max_sequence_length: int) -> np.ndarray:
        """T5 hidden states (B, max_sequence_length, joint_attention_dim), zeros when the model has no T5."""
        if self.text_encoder_3 is None:
            width = self.transformer.config["joint_attention_dim"]
            return np.zeros((len(prompts), max_sequence_length, width), dtype=np.float32)
        input_ids = self._token_ids(self.tokenizer_3, prompts, max_length=max_sequence_length, encoder="T5", limit="reads `max_sequence_length` =")
        return self.run_submodel(self.text_encoder_3, input_ids=input_ids)["last_hidden_state"]

    def _encode(self, prompts: list[str], prompts_2: list[str], prompts_3: list[str], *, clip_skip, max_sequence_length):
        clip_l, pooled_l = self._clip_embeds(prompts, index=0, clip_skip=clip_skip)
        clip_g, pooled_g = self._clip_embeds(prompts_2, index=1, clip_skip=clip_skip)
        t5 = self._t5_embeds(prompts_3, max_sequence_length=max_sequence_length)
        clip = np.concatenate([clip_l, clip_g], axis=-1)
        clip = np.pad(clip, ((0, 0), (0, 0), (0, t5.shape[-1] - clip.shape[-1])))  # zero-pad to the T5 width
        prompt_embeds = np.concatenate([clip, t5], axis=-2)  # (B, 77 + max_sequence_length, joint_attention_dim)
        pooled = np.concatenate([pooled_l, pooled_g], axis=-1)  # (B, pooled_projection_dim)
        return prompt_embeds, pooled

    def _cached_encode(self, texts: list[list[str]], *, clip_skip, max_sequence_length) -> tuple[np.ndarray, np.ndarray]:
        """`_encode(*texts)`, from the prompt cache when it is on; the text encoders are released after it when
        `enable_text_encoder_release()` asked for it."""
        adapters = tuple(self.lora.signature(name) for name in TEXT_ENCODERS)  # a LoRA on a text encoder changes its output
        key = (tuple(map(tuple, texts)), clip_skip, max_sequence_length, adapters)
        cached = self.prompt_cache.get(key) if self.prompt_cache is not None else None
        if cached is not None:
            return cached
        embeds, pooled = self._encode(*texts, clip_skip=clip_skip, max_sequence_length=max_sequence_length)
        if self.prompt_cache is not None:
            self.prompt_cache.put(key, (embeds, pooled))
        if self.release_text_encoders:
            self.release_text_encoder_models(self.release_text_encoders)
        return embeds, pooled

    def encode_prompt(
        self,
        prompt: str | list[str],
        prompt_2: str | list[str] | None = None,
        prompt_3: str | list[str] | None = None,
        *,
        negative_prompt: str | list[str] | None = None,
        negative_prompt_2: str | list[str] | None = None,
        negative_prompt_3: str | list[str] | None = None,
        do_classifier_free_guidance: bool = True,
        num_images_per_prompt: int = 1,
        clip_skip: int | None = None,
        max_sequence_length: int = GENERATION_DEFAULTS.max_sequence_length,
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray | None]:
        """(prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds), float32 numpy.

        As diffusers: `prompt_2` / `prompt_3` default to `prompt`, negatives default to "", and each embedding is
        repeated `num_images_per_prompt` times. Positive and negative prompts go through each encoder as one batch.
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        batch_size = len(prompts)
        texts = [prompts, as_batch(prompt_2, batch_size, "prompt_2") or prompts, as_batch(prompt_3, batch_size, "prompt_3") or prompts]
        if do_classifier_free_guidance:
            negatives = as_batch(negative_prompt or "", batch_size, "negative_prompt")
            negatives_2 = as_batch(negative_prompt_2, batch_size, "negative_prompt_2") or negatives
            negatives_3 = as_batch(negative_prompt_3, batch_size, "negative_prompt_3") or negatives
            texts = [texts[0] + negatives, texts[1] + negatives_2, texts[2] + negatives_3]
        with self._call_lock:
            embeds, pooled = self._cached_encode(texts, clip_skip=clip_skip, max_sequence_length=max_sequence_length)
        embeds = np.repeat(embeds, num_images_per_prompt, axis=0)
        pooled = np.repeat(pooled, num_images_per_prompt, axis=0)
        if not do_classifier_free_guidance:
            return embeds, None, pooled, None
        split = batch_size * num_images_per_prompt
        return embeds[:split], embeds[split:], pooled[:split], pooled[split:]

    def prepare_embeddings(
        self,
        *,
        prompts: dict,
        prompt_embeds,
        negative_prompt_embeds,
        pooled_prompt_embeds,
        negative_pooled_prompt_embeds,
        do_classifier_free_guidance: bool,
        num_images_per_prompt: int,
        clip_skip: int | None,
        max_sequence_length: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The transformer's text inputs (embeddings, pooled) as float32 numpy: encoded from `prompts` (the keyword
        arguments of `encode_prompt`) unless given (numpy or torch), with the negative batch first when guidance is on."""
        prompt_embeds, negative_prompt_embeds = as_array(prompt_embeds), as_array(negative_prompt_embeds)
        pooled_prompt_embeds, negative_pooled_prompt_embeds = as_array(pooled_prompt_embeds), as_array(negative_pooled_prompt_embeds)
        if prompt_embeds is None:
            embeds, negative_embeds, pooled, negative_pooled = self.encode_prompt(
                **prompts,
                do_classifier_free_guidance=do_classifier_free_guidance and negative_prompt_embeds is None,
                num_images_per_prompt=num_images_per_prompt,
                clip_skip=clip_skip,
                max_sequence_length=max_sequence_length,
            )
            prompt_embeds, pooled_prompt_embeds = embeds, pooled
            if negative_prompt_embeds is None:
                negative_prompt_embeds, negative_pooled_prompt_embeds = negative_embeds, negative_pooled
        elif do_classifier_free_guidance and negative_prompt_embeds is None:
            raise ValueError("With `prompt_embeds` and `guidance_scale > 1`, pass `negative_prompt_embeds` too.")
        if not do_classifier_free_guidance:
            return prompt_embeds, pooled_prompt_embeds
        return (
            np.concatenate([negative_prompt_embeds, prompt_embeds], axis=0),
            np.concatenate([negative_pooled_prompt_embeds, pooled_prompt_embeds], axis=0),
        )

    # -- 4. Latents --------------------------------------------------------------------------------------

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

    # -- 5. Timesteps ------------------------------------------------------------------------------------

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

    # -- 6. Denoising ------------------------------------------------------------------------------------

    def predict_noise(
        self,
        latents: np.ndarray,
        *,
        timestep: np.float32,
        text: tuple[np.ndarray, np.ndarray],
        guidance_scale: float,
        model_input: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> np.ndarray:
        """One transformer call on `latents` (doubled for guidance, then passed through `model_input` if given);
        returns the flow prediction, not yet guided."""
        encoder_hidden_states, pooled_projections = text
        do_classifier_free_guidance = guidance_scale > 1.0
        latent_model_input = np.concatenate([latents] * 2) if do_classifier_free_guidance else latents
        if model_input is not None:
            latent_model_input = model_input(latent_model_input)
        return self.run_submodel(
            self.transformer,
            hidden_states=latent_model_input,
            timestep=np.full(latent_model_input.shape[0], timestep, dtype=np.float32),
            encoder_hidden_states=encoder_hidden_states,
            pooled_projections=pooled_projections,
        )["out_sample"]

    def predict_skipping(self, latents: np.ndarray, *, timestep: np.float32, text: tuple[np.ndarray, np.ndarray], layers: tuple[int, ...]) -> np.ndarray:
        """One transformer call on `latents` and the positive `text` with the blocks `layers` skipped (the
        transformer's `block_mask` state set to 0 there for this call)."""
        mask = np.ones(self.transformer.config["num_layers"], dtype=np.float32)
        mask[list(layers)] = 0.0
        encoder_hidden_states, pooled_projections = text
        return self.transformer.call_with_states(
            {BLOCK_MASK: mask},
            hidden_states=latents,
            timestep=np.full(latents.shape[0], timestep, dtype=np.float32),
            encoder_hidden_states=encoder_hidden_states,
            pooled_projections=pooled_projections,
        )["out_sample"]

    @staticmethod
    def guide(noise_pred: np.ndarray, *, guidance_scale: float) -> np.ndarray:
        """Classifier-free guidance: move from the unconditional prediction past the conditional one."""
        if guidance_scale <= 1.0:
            return noise_pred
        noise_pred_uncond, noise_pred_text = np.split(noise_pred, 2)
        return noise_pred_uncond + np.float32(guidance_scale) * (noise_pred_text - noise_pred_uncond)

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
    ) -> np.ndarray:
        """The denoising loop: predict the flow (or take it from the step cache), guide it, take a scheduler step.

        `conditioning` (from `initial_latents`) may add transformer input channels (`model_input`) and change the
        latents after each step (`after_step`), as inpainting does. `skip_layer_guidance` adds its extra pass on
        the steps of its window. `callback_on_step_end` gets numpy arrays (torch tensors with `torch_callback`)."""
        from tqdm.auto import tqdm

        model_input = getattr(conditioning, "model_input", None)
        after_step = getattr(conditioning, "after_step", None)
        text = (prompt_embeds, pooled_prompt_embeds)
        positive_text = tuple(array[len(array) // 2 :] for array in text)  # guidance batches are [negative, positive]
        cache = TaylorSeerCache(taylorseer, num_steps=len(timesteps)) if taylorseer else None
        for step, t in enumerate(tqdm(timesteps, **self._progress_bar_config)):
            if self.interrupt:
                break
            if cache is None or cache.computes(step):
                noise_pred = self.predict_noise(latents, timestep=t, text=text, guidance_scale=guidance_scale, model_input=model_input)
                if cache is not None:
                    cache.update(step, noise_pred)
            else:
                noise_pred = cache.predict(step)
            guided = self.guide(noise_pred, guidance_scale=guidance_scale)
            if skip_layer_guidance is not None and skip_layer_guidance.active(step, num_steps=len(timesteps)):
                skipped = self.predict_skipping(latents, timestep=t, text=positive_text, layers=skip_layer_guidance.layers)
                guided = guided + (np.split(noise_pred, 2)[1] - skipped) * np.float32(skip_layer_guidance.scale)
            latents = self.scheduler.step(guided, t, latents, return_dict=False)[0]
            if after_step is not None:
                latents = after_step(latents, step)
            if callback_on_step_end is not None:
                values = {"latents": latents, "prompt_embeds": prompt_embeds, "pooled_prompt_embeds": pooled_prompt_embeds}
                callback_kwargs = {name: to_torch(values[name]) if torch_callback else values[name] for name in callback_on_step_end_tensor_inputs}
                callback_outputs = callback_on_step_end(self, step, to_torch(t) if torch_callback else t, callback_kwargs) or {}
                latents = as_array(callback_outputs["latents"]) if "latents" in callback_outputs else latents
        return latents

    # -- 7. Decode ---------------------------------------------------------------------------------------

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

    # -- The call ----------------------------------------------------------------------------------------

    def __call__(self, *args, **kwargs) -> "SD3PipelineOutput | tuple":
        """Generate images; see `generate`."""
        return self.generate(*args, **kwargs)

    def generate(
        self,
        prompt: str | list[str] | None = None,
        prompt_2: str | list[str] | None = None,
        prompt_3: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = GENERATION_DEFAULTS.num_inference_steps,
        sigmas: list[float] | None = None,
        guidance_scale: float = GENERATION_DEFAULTS.guidance_scale,
        negative_prompt: str | list[str] | None = None,
        negative_prompt_2: str | list[str] | None = None,
        negative_prompt_3: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        generator=None,
        latents=None,
        prompt_embeds=None,
        negative_prompt_embeds=None,
        pooled_prompt_embeds=None,
        negative_pooled_prompt_embeds=None,
        output_type: str = "pil",
        return_dict: bool = True,
        clip_skip: int | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006 (read only, as in diffusers)
        max_sequence_length: int = GENERATION_DEFAULTS.max_sequence_length,
        mu: float | None = None,
        taylorseer: TaylorSeerConfig | None = None,
        skip_guidance_layers: list[int] | None = None,
        skip_layer_guidance_scale: float = 2.8,
        skip_layer_guidance_stop: float = 0.2,
        skip_layer_guidance_start: float = 0.01,
        image_inputs=None,
    ) -> SD3PipelineOutput | tuple:
        """Generate images from text; arguments mean what they mean in diffusers' `StableDiffusion3Pipeline`
        (skip-layer guidance included, see `SkipLayerGuidance`). Guidance runs only when `guidance_scale > 1`.
        `callback_on_step_end(pipe, step, timestep, callback_kwargs)` may return replacements for the tensors and
        set `pipe._interrupt = True` to stop. `taylorseer=TaylorSeerConfig()` turns on openvino.genai's default
        step cache. Thread-safe: calls run one at a time. `image_inputs` is set by the image pipelines.
        `generator`: a `torch.Generator`, an int seed or a `TorchCPUGenerator` (the same noise without torch), or a list.
        `latents` and embeddings may be numpy or torch. Latent outputs and callback tensors are torch tensors when the
        call was given torch objects, as in diffusers, else numpy (see `sd3_arrays`): then torch is never imported.
        """
        height = self.size_rules.default if height is None else height
        width = self.size_rules.default if width is None else width

        # 1. Check inputs
        self.check_inputs(
            prompt=prompt, height=height, width=width, num_inference_steps=num_inference_steps,
            negative_prompt=negative_prompt, prompt_embeds=prompt_embeds, pooled_prompt_embeds=pooled_prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds, negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
            output_type=output_type, max_sequence_length=max_sequence_length,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs, taylorseer=taylorseer,
            guidance_scale=guidance_scale, num_images_per_prompt=num_images_per_prompt, clip_skip=clip_skip,
            generator=generator, callback_on_step_end=callback_on_step_end, other_prompts=dict(
                prompt_2=prompt_2, prompt_3=prompt_3, negative_prompt_2=negative_prompt_2, negative_prompt_3=negative_prompt_3
            ),
        )  # fmt: skip

        skip_layer_guidance = self.check_skip_layer_guidance(
            layers=skip_guidance_layers, scale=skip_layer_guidance_scale, start=skip_layer_guidance_start,
            stop=skip_layer_guidance_stop, guidance_scale=guidance_scale,
        )  # fmt: skip

        # 2. Define call parameters
        batch_size = 1 if isinstance(prompt, str) else len(prompt) if prompt is not None else prompt_embeds.shape[0]
        do_classifier_free_guidance = guidance_scale > 1.0
        shape = call_shape(
            height=height, width=width, batch_size=batch_size, num_images_per_prompt=num_images_per_prompt,
            do_classifier_free_guidance=do_classifier_free_guidance, max_sequence_length=max_sequence_length,
        )  # fmt: skip
        user_arrays = (generator, latents, prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds)
        returns_torch = wants_torch(*user_arrays) or (image_inputs is not None and image_inputs.torch_inputs)
        generator = as_generator(generator)  # a seed: one stream for the whole call
        with self._call_lock:
            self._check_static_shape(shape)
            self._interrupt = False

            # 3. Encode prompt
            prompt_embeds, pooled_prompt_embeds = self.prepare_embeddings(
                prompts=dict(
                    prompt=prompt, prompt_2=prompt_2, prompt_3=prompt_3, negative_prompt=negative_prompt,
                    negative_prompt_2=negative_prompt_2, negative_prompt_3=negative_prompt_3,
                ),
                prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
                pooled_prompt_embeds=pooled_prompt_embeds, negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
                do_classifier_free_guidance=do_classifier_free_guidance, num_images_per_prompt=num_images_per_prompt,
                clip_skip=clip_skip, max_sequence_length=max_sequence_length,
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
                skip_layer_guidance=skip_layer_guidance, torch_callback=returns_torch,
            )  # fmt: skip

            # 7. Decode
            if output_type == "latent" and returns_torch:
                latents = to_torch(latents)
            images = latents if output_type == "latent" else self.decode_latents(latents, output_type=output_type)
            images = images if output_type == "latent" else self.finish_images(images, image_inputs=image_inputs)
        return SD3PipelineOutput(images=images) if return_dict else (images,)
