"""Argument checks shared by the pipelines and the demo: each raises a TypeError or ValueError that names the
argument, shows its value and says the fix, so that a message is written once.

Each check takes the values it needs (the model's `SizeRules`, its configs), not a pipeline. Imports the layout,
`runtime/image_processing.py` (to recognise torch tensors without importing torch) and `runtime/steps.py`.
"""

import math
from numbers import Real
from pathlib import Path
from typing import Callable

import numpy as np

from ..core.layout import BLOCK_MASK, SizeRules
from .image_processing import is_torch_tensor
from .steps import SkipLayerGuidance, TaylorSeerConfig

OUTPUT_TYPES = ("pil", "np", "latent")
MAX_SEQUENCE_LENGTH = 512  # T5's longest input in SD3, as diffusers checks it


def check_strength(strength, *, num_inference_steps: int) -> float:
    """`strength` as a float in [0, 1] that leaves at least one of `num_inference_steps` denoising steps."""
    if isinstance(strength, bool) or not isinstance(strength, Real):
        raise TypeError(f"`strength` has to be a number between 0 and 1 but is {type(strength).__name__}: {strength!r:.80}.")
    if not (math.isfinite(strength) and 0.0 <= strength <= 1.0):
        raise ValueError(f"`strength` has to be between 0 and 1 but is {strength!r}.")
    if isinstance(num_inference_steps, int) and not isinstance(num_inference_steps, bool) and num_inference_steps * strength < 1:
        raise ValueError(
            f"`strength` {strength} with `num_inference_steps` {num_inference_steps} leaves no denoising step "
            f"({num_inference_steps} x {strength} < 1). Use `strength` >= {1 / num_inference_steps:.4g} or more steps."
        )
    return float(strength)


# ----------------------------------------------------------------------------------------------------------
# Numbers
# ----------------------------------------------------------------------------------------------------------


def check_size(*, height, width, size_rules: SizeRules) -> None:
    """Raise a TypeError or ValueError unless `height` and `width` are ints `size_rules` accepts."""
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"`{name}` has to be an int (pixels) but is {type(value).__name__}: {value!r:.80}. Pass e.g. {size_rules.default}.")
    size_rules.check(height=height, width=width)


def check_num_inference_steps(num_inference_steps) -> None:
    """`num_inference_steps` is a positive int."""
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise ValueError(f"`num_inference_steps` has to be a positive integer but is {num_inference_steps!r}.")


def check_guidance_scale(guidance_scale) -> None:
    """`guidance_scale` is a finite number (<= 1 turns guidance off)."""
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, Real):
        raise TypeError(f"`guidance_scale` has to be a number (e.g. 7.0; <= 1 turns guidance off) but is {type(guidance_scale).__name__}: {guidance_scale!r:.80}.")
    if not math.isfinite(guidance_scale):
        raise ValueError(f"`guidance_scale` has to be a finite number (e.g. 7.0; <= 1 turns guidance off) but is {guidance_scale!r}.")


def check_num_images_per_prompt(num_images_per_prompt) -> None:
    """`num_images_per_prompt` is an int >= 1."""
    if isinstance(num_images_per_prompt, bool) or not isinstance(num_images_per_prompt, int):
        raise TypeError(f"`num_images_per_prompt` has to be an int but is {type(num_images_per_prompt).__name__}: {num_images_per_prompt!r:.80}.")
    if num_images_per_prompt < 1:
        raise ValueError(f"`num_images_per_prompt` has to be at least 1 but is {num_images_per_prompt}.")


def check_max_sequence_length(max_sequence_length) -> None:
    """`max_sequence_length` (T5 tokens) is an int from 1 to 512."""
    if isinstance(max_sequence_length, bool) or not isinstance(max_sequence_length, int):
        raise TypeError(f"`max_sequence_length` has to be an int but is {type(max_sequence_length).__name__}: {max_sequence_length!r:.80}.")
    if not 0 < max_sequence_length <= MAX_SEQUENCE_LENGTH:
        raise ValueError(f"`max_sequence_length` must be between 1 and {MAX_SEQUENCE_LENGTH} but is {max_sequence_length}.")


def check_clip_skip(clip_skip, *, num_layers: int) -> None:
    """`clip_skip` is None or an int that leaves a layer of CLIP encoders with `num_layers` layers (the smaller one's)."""
    if clip_skip is not None and (isinstance(clip_skip, bool) or not isinstance(clip_skip, int) or not 0 <= clip_skip < num_layers):
        raise ValueError(f"`clip_skip` has to be None or an int from 0 to {num_layers - 1} (the CLIP encoders have {num_layers} layers) but is {clip_skip!r}.")


# ----------------------------------------------------------------------------------------------------------
# Prompts and embeddings
# ----------------------------------------------------------------------------------------------------------


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


def check_prompts(*, prompt, prompt_embeds, texts: dict) -> None:
    """Exactly one of `prompt` and `prompt_embeds`; `prompt` and the other prompt arguments `texts` (by name) are
    strings or lists of strings of one batch size."""
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


def check_embeds(
    *, prompt_embeds, pooled_prompt_embeds, negative_prompt_embeds, negative_pooled_prompt_embeds, transformer_config: dict, clip_tokens: int
) -> None:
    """The embeddings given (None where not) come in pairs and have the shapes of `encode_prompt`'s outputs for a
    transformer of `transformer_config` after `clip_tokens` CLIP tokens."""
    embeds = dict(
        prompt_embeds=prompt_embeds,
        negative_prompt_embeds=negative_prompt_embeds,
        pooled_prompt_embeds=pooled_prompt_embeds,
        negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
    )
    if embeds["prompt_embeds"] is not None and embeds["pooled_prompt_embeds"] is None:
        raise ValueError("`pooled_prompt_embeds` must be given with `prompt_embeds` (both come from `encode_prompt`).")
    if embeds["negative_prompt_embeds"] is not None and embeds["negative_pooled_prompt_embeds"] is None:
        raise ValueError("`negative_pooled_prompt_embeds` must be given with `negative_prompt_embeds`.")
    text_width, pooled_width = transformer_config["joint_attention_dim"], transformer_config["pooled_projection_dim"]
    expected = {"prompt_embeds": f"(batch, {clip_tokens} + T5 tokens, {text_width})", "pooled_prompt_embeds": f"(batch, {pooled_width})"}
    for name, value in embeds.items():
        if value is None:
            continue
        kind = "pooled_prompt_embeds" if "pooled" in name else "prompt_embeds"
        if not isinstance(value, np.ndarray) and not is_torch_tensor(value):
            raise TypeError(f"`{name}` has to be a numpy array or torch tensor {expected[kind]} (from `encode_prompt`) but is {type(value).__name__}.")
        shape = tuple(value.shape)
        if kind == "pooled_prompt_embeds":
            fits = len(shape) == 2 and shape[1] == pooled_width
        else:
            fits = len(shape) == 3 and shape[1] > clip_tokens and shape[2] == text_width
        if not fits:
            raise ValueError(f"`{name}` must have shape {expected[kind]} for this model but has shape {shape}; make it with `pipe.encode_prompt`.")
        check_finite(value, name=name)
    for positive in ("prompt_embeds", "pooled_prompt_embeds"):
        negative = f"negative_{positive}"
        if embeds[positive] is not None and embeds[negative] is not None and embeds[positive].shape != embeds[negative].shape:
            raise ValueError(
                f"`{positive}` and `{negative}` must have the same shape but have {tuple(embeds[positive].shape)} and {tuple(embeds[negative].shape)}."
            )


# ----------------------------------------------------------------------------------------------------------
# Finite numbers
# ----------------------------------------------------------------------------------------------------------


def check_finite(value, *, name: str) -> None:
    """Raise a ValueError naming `name` if `value` (None, a numpy array or a torch tensor: latents, embeddings) holds
    NaN or infinite values: one NaN spreads to the whole image."""
    if value is None:
        return
    array = value.detach().cpu().float().numpy() if is_torch_tensor(value) else np.asarray(value)
    if array.dtype.kind not in "fc":
        return
    finite = np.isfinite(array)
    if not finite.all():
        raise ValueError(
            f"`{name}` contains NaN or infinite values ({array.size - int(finite.sum())} of {array.size}); pass finite "
            "values: a NaN spreads to the whole image."
        )


def check_finite_latents(latents: np.ndarray, *, step: int, num_steps: int) -> None:
    """Raise a FloatingPointError if the latents after denoising step `step` (counted from 0, as `callback_on_step_end`
    counts) of `num_steps` hold NaN or infinite values: there is no point running the others."""
    if not np.isfinite(latents).all():
        raise FloatingPointError(
            f"The latents became NaN or infinite at denoising step {step + 1} of {num_steps} (counted from 1; "
            f"`callback_on_step_end` calls it step {step}); the remaining steps were not run. Usual causes: a LoRA "
            "adapter's scale too large (lower `adapter_weights` in `set_adapters`), bf16 overflow on this CPU (load with "
            '`ov_config={"INFERENCE_PRECISION_HINT": "f32"}`), or a NaN in an input (a callback\'s `latents`, an image).'
        )


# ----------------------------------------------------------------------------------------------------------
# Outputs, callbacks, step options
# ----------------------------------------------------------------------------------------------------------


def check_output_type(output_type) -> None:
    """`output_type` is one of `OUTPUT_TYPES`."""
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"`output_type` must be one of {list(OUTPUT_TYPES)} but is {output_type!r}.")


def check_callback(callback_on_step_end: Callable | None, *, tensor_inputs: list[str], allowed: list[str]) -> None:
    """`callback_on_step_end` is None or callable, and asks only for `allowed` tensors."""
    unknown = set(tensor_inputs) - set(allowed)
    if unknown:
        raise ValueError(f"`callback_on_step_end_tensor_inputs` has {sorted(unknown)}; allowed: {allowed}.")
    if callback_on_step_end is not None and not callable(callback_on_step_end):
        raise TypeError(f"`callback_on_step_end` has to be a function (pipe, step, timestep, callback_kwargs) but is {callback_on_step_end!r:.80}.")


def check_taylorseer(taylorseer) -> None:
    """`taylorseer` is None or a `TaylorSeerConfig`."""
    if taylorseer is not None and not isinstance(taylorseer, TaylorSeerConfig):
        raise TypeError(f"`taylorseer` has to be a TaylorSeerConfig or None but is {type(taylorseer).__name__}.")


def check_skip_layer_guidance(
    *, layers, scale, start, stop, guidance_scale, num_layers: int, block_mask: bool, transformer_dir: Path, static_shape: bool
) -> SkipLayerGuidance | None:
    """The call's `SkipLayerGuidance` (None without `layers`), or a named error. `num_layers`: the transformer's blocks;
    `block_mask`: whether its IR has the state that skips them; `static_shape`: whether the pipeline was reshaped."""
    if layers is None:
        return None
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
    if not block_mask:
        raise ValueError(
            f"`{transformer_dir}` has no `{BLOCK_MASK}` state, so its blocks cannot be skipped (an export of "
            "another tool or an older version): convert the checkpoint again with `convert_sd3(..., overwrite=True)`."
        )
    if static_shape:
        raise ValueError("Skip-layer guidance runs the transformer on another batch size: load the pipeline without `reshape` to use it.")
    return SkipLayerGuidance(layers=tuple(layers), scale=float(scale), start=float(start), stop=float(stop))


# ----------------------------------------------------------------------------------------------------------
# Batch and memory
# ----------------------------------------------------------------------------------------------------------


def check_generators(generator, *, images: int) -> None:
    """A list of generators has one per image (prompts x `num_images_per_prompt`)."""
    if isinstance(generator, list) and len(generator) != images:
        raise ValueError(
            f"You have passed a list of {len(generator)} generators, but requested an effective batch size of {images} "
            "(prompts x `num_images_per_prompt`). Pass one generator per image, or a single generator."
        )


def estimated_memory(*, images: int, height: int, width: int, vae_config: dict, transformer_config: dict, token_multiple: int, clip_tokens: int) -> int:
    """A lower estimate of the bytes a call's activations take: per image, the VAE decoder's full-resolution
    feature maps and the output, and the transformer's token activations (x2 with guidance). `token_multiple`:
    pixels per transformer token along a side; `clip_tokens`: the CLIP tokens of the text."""
    pixels = height * width
    vae_bytes = 4 * pixels * (2 * vae_config["block_out_channels"][0] + 2 * 3)
    tokens = pixels // token_multiple**2 + clip_tokens
    width_of_tokens = transformer_config.get("num_attention_heads", 1) * transformer_config.get("attention_head_dim", 64)
    transformer_bytes = 4 * tokens * width_of_tokens * 10 * 2  # q, k, v, MLP (4x) ... ; x2: guidance
    return images * (vae_bytes + transformer_bytes)


def check_memory(*, images: int, height: int, width: int, needed: int, available: int | None) -> None:
    """Refuse a call whose activations (`needed` bytes, see `estimated_memory`) exceed the machine's memory
    (`available` bytes; None: unknown, nothing is refused)."""
    if available is not None and needed > available:
        raise ValueError(
            f"{images} images of {width}x{height} need about {needed / 1e9:.1f} GB of activations (estimated), more "
            f"than this machine's {available / 1e9:.1f} GB of memory. Lower `num_images_per_prompt`, the number of "
            "prompts or the size, and generate in several calls."
        )


# ----------------------------------------------------------------------------------------------------------
# ControlNet
# ----------------------------------------------------------------------------------------------------------


def _per_controlnet(value, *, name: str, count: int) -> list:
    """`value` as one entry per ControlNet: a list of `count` entries, or one value repeated."""
    if isinstance(value, (list, tuple)):
        if len(value) != count:
            raise ValueError(f"`{name}` holds {len(value)} values but the pipeline has {count} ControlNet(s); pass one value, or one per ControlNet.")
        return list(value)
    return [value] * count


def check_controlnet_scales(scale, *, count: int) -> list[float]:
    """`controlnet_conditioning_scale` (a number >= 0, or one per ControlNet) as a list of `count` floats."""
    scales = _per_controlnet(scale, name="controlnet_conditioning_scale", count=count)
    for value in scales:
        if isinstance(value, bool) or not isinstance(value, Real):
            raise TypeError(
                f"`controlnet_conditioning_scale` has to be a number (e.g. 0.7) or a list of one per ControlNet but holds "
                f"{type(value).__name__}: {value!r:.80}."
            )
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"`controlnet_conditioning_scale` has to be a finite number >= 0 (0 turns a ControlNet off) but holds {value!r}.")
    return [float(value) for value in scales]


def check_control_guidance(start, end, *, count: int) -> tuple[list[float], list[float]]:
    """`control_guidance_start` and `control_guidance_end` (fractions of the steps, or one per ControlNet) as lists of
    `count` floats with 0 <= start < end <= 1."""
    starts = _per_controlnet(start, name="control_guidance_start", count=count)
    ends = _per_controlnet(end, name="control_guidance_end", count=count)
    for first, last in zip(starts, ends):
        for name, value in (("control_guidance_start", first), ("control_guidance_end", last)):
            if isinstance(value, bool) or not isinstance(value, Real) or not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise ValueError(f"`{name}` has to be a fraction of the steps between 0 and 1 but is {value!r:.80}.")
        if first >= last:
            raise ValueError(f"`control_guidance_start` {first} has to be smaller than `control_guidance_end` {last}: the ControlNet acts between them.")
    return [float(value) for value in starts], [float(value) for value in ends]


def check_control_size(*, control_size: tuple[int, int], height: int, width: int, name: str = "control_image", tolerance: float = 0.02) -> None:
    """Raise a ValueError if a control image's aspect ratio differs from the output's by more than `tolerance`: it
    would be stretched, and the control (edges, depth) would no longer line up with the image."""
    control_height, control_width = control_size
    ratio = (control_width / control_height) / (width / height)
    if abs(ratio - 1.0) > tolerance:
        raise ValueError(
            f"`{name}` is {control_width}x{control_height} (width x height) but the image is {width}x{height}: the control "
            "would be stretched. Crop or pad the control image to the image's aspect ratio, or pass `height` and `width` "
            f"in its ratio (e.g. leave them out: the image then takes the control image's size)."
        )
