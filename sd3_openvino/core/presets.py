"""Model presets: the SD3 family's checkpoints with their recommended generation settings, in one table.

    from sd3_helper import MODEL_PRESETS, get_preset

    preset = get_preset("sd3.5-medium")
    pipe(prompt, num_inference_steps=preset.num_inference_steps, guidance_scale=preset.guidance_scale,
         skip_guidance_layers=preset.skip_guidance_layers)

Settings are those of each model card. Sizes are estimated from the parameter counts (in billions) and the bytes a
weight takes in each format, so one table serves every format. A bottom-layer module: it imports the standard library only.
"""

import os
from dataclasses import dataclass

# Bytes per weight as stored. int4: 4-bit groups of 64 (+ scales) for ~80 % of the transformer and all of T5,
# 8 bits for the rest (see export/ir.py INT4_SETTINGS); CLIP and the VAE are 8-bit in int4 and int8-hybrid.
BYTES_PER_WEIGHT = {"fp32": 4.0, "fp16": 2.0, "int8": 1.0, "int4": 0.6, "int8-hybrid": 1.0}
SMALL_PARTS_BYTES = {"fp32": 4.0, "fp16": 2.0, "int8": 1.0, "int4": 1.0, "int8-hybrid": 1.0}  # CLIP-L/G, VAE
CLIP_AND_VAE_PARAMETERS_B = 0.124 + 0.695 + 0.084  # CLIP-L, CLIP-G (with projections), the VAE
T5_XXL_PARAMETERS_B = 4.76


@dataclass(frozen=True)
class ModelPreset:
    """One checkpoint of the SD3 family and the settings its model card recommends."""

    key: str  # what `SD3_MODEL_ID` / `get_preset` take
    name: str
    hub_id: str
    num_inference_steps: int
    guidance_scale: float  # <= 1: no negative batch (turbo models are distilled to work without guidance)
    transformer_parameters_b: float
    t5_recommended: bool  # the model was trained to lean on T5 (SD3 Medium does well without it)
    skip_guidance_layers: tuple[int, ...] | None = None  # skip-layer guidance, where the model card advises it
    tiny_family: str = "sd3"  # the block types of its offline tiny stand-in (`make_tiny_sd3(family=...)`)
    scheduler_shift: float | None = None  # the sigma shift its model card sets on the scheduler (None: the checkpoint's own)

    @property
    def few_step(self) -> bool:
        """A distilled model: few steps and no guidance."""
        return self.guidance_scale <= 1.0

    def approximate_size_gb(self, weight_format: str, *, with_t5: bool) -> float:
        """The converted folder's approximate size on disk (and the weights' share of RAM) in GB."""
        large = self.transformer_parameters_b + (T5_XXL_PARAMETERS_B if with_t5 else 0.0)
        return large * BYTES_PER_WEIGHT[weight_format] + CLIP_AND_VAE_PARAMETERS_B * SMALL_PARTS_BYTES[weight_format]


MODEL_PRESETS = {
    preset.key: preset
    for preset in (
        ModelPreset("sd3-medium", "SD3 Medium", "stabilityai/stable-diffusion-3-medium-diffusers", 28, 7.0, 2.03, t5_recommended=False),
        ModelPreset(
            "sd3.5-medium",
            "SD3.5 Medium",
            "stabilityai/stable-diffusion-3.5-medium",
            40,
            4.5,
            2.47,
            t5_recommended=True,
            skip_guidance_layers=(7, 8, 9),
            tiny_family="sd3.5-medium",
        ),
        ModelPreset("sd3.5-large", "SD3.5 Large", "stabilityai/stable-diffusion-3.5-large", 28, 3.5, 8.06, t5_recommended=True, tiny_family="sd3.5-large"),
        ModelPreset(
            "sd3.5-large-turbo", "SD3.5 Large Turbo", "stabilityai/stable-diffusion-3.5-large-turbo", 4, 0.0, 8.06, t5_recommended=True, tiny_family="sd3.5-large"
        ),
        # TensorArt's distilled community checkpoints (the openvino_notebooks SD3 notebook's default is the Medium one):
        # 8 steps, low guidance and the scheduler's shift raised to 5, as their model cards set them.
        ModelPreset(
            "sd3.5-medium-turbo",
            "SD3.5 Medium Turbo (TensorArt)",
            "tensorart/stable-diffusion-3.5-medium-turbo",
            8,
            1.5,
            2.47,
            t5_recommended=True,
            tiny_family="sd3.5-medium",
            scheduler_shift=5.0,
        ),
        ModelPreset(
            "sd3.5-large-turbox",
            "SD3.5 Large TurboX (TensorArt)",
            "tensorart/stable-diffusion-3.5-large-TurboX",
            8,
            1.5,
            8.06,
            t5_recommended=True,
            tiny_family="sd3.5-large",
            scheduler_shift=5.0,
        ),
    )
}
TINY_PREFIX = "tiny"  # "tiny" or "tiny-<preset key>": the offline stand-in of a preset


def check_preset_name(value, *, name: str) -> str:
    """`value` if it is a str, else a TypeError naming the argument `name`, the type received and what to pass."""
    if not isinstance(value, str):
        raise TypeError(
            f"`{name}` has to be a str (a preset key such as 'sd3.5-medium', a hub id or a local folder) but is "
            f"{type(value).__name__}: {value!r:.80}."
        )
    return value


def get_preset(key: str) -> ModelPreset:
    """The preset `key` (e.g. "sd3.5-medium"), a ValueError listing the keys, or a TypeError if `key` is no str."""
    check_preset_name(key, name="key")
    if key not in MODEL_PRESETS:
        raise ValueError(f"`{key}` is not a model preset; choose one of {list(MODEL_PRESETS)} (or pass a hub id or a local folder).")
    return MODEL_PRESETS[key]


def preset_for(model_id: str | os.PathLike) -> ModelPreset | None:
    """The preset a model id stands for: a preset key, its hub id, or "tiny" / "tiny-<key>" (None otherwise; a
    TypeError if `model_id` is no str)."""
    model_id = os.fspath(model_id) if isinstance(model_id, os.PathLike) else model_id  # a local folder as a Path
    check_preset_name(model_id, name="model_id")
    if model_id == TINY_PREFIX:
        return MODEL_PRESETS["sd3-medium"]
    if model_id.startswith(f"{TINY_PREFIX}-"):
        return get_preset(model_id[len(TINY_PREFIX) + 1 :])
    by_hub_id = {preset.hub_id: preset for preset in MODEL_PRESETS.values()}
    return MODEL_PRESETS.get(model_id) or by_hub_id.get(model_id)


def presets_table() -> str:
    """A Markdown table of the presets: hub id, settings, T5, and approximate sizes per weight format."""
    formats = ("fp16", "int8", "int4")
    rows = [
        "| preset | hub id | steps | guidance | skip-layer guidance | scheduler shift | T5 | " + " | ".join(f"{f} GB (no T5 / T5)" for f in formats) + " |",
        "|---|---|---:|---:|---|---:|---|" + "---:|" * len(formats),
    ]
    for preset in MODEL_PRESETS.values():
        sizes = " | ".join(
            f"{preset.approximate_size_gb(f, with_t5=False):.1f} / {preset.approximate_size_gb(f, with_t5=True):.1f}" for f in formats
        )
        layers = ", ".join(map(str, preset.skip_guidance_layers)) if preset.skip_guidance_layers else "-"
        t5 = "recommended" if preset.t5_recommended else "optional"
        shift = f"{preset.scheduler_shift:g}" if preset.scheduler_shift is not None else "checkpoint's"
        rows.append(f"| {preset.name} | `{preset.hub_id}` | {preset.num_inference_steps} | {preset.guidance_scale} | {layers} | {shift} | {t5} | {sizes} |")
    return "\n".join(rows)
