"""`convert_sd3`: one entry point for every weight format, the plain conversion and the calibrated int8-hybrid."""

from pathlib import Path

from ..core.files import check_output_outside_source
from ..core.layout import HYBRID_WEIGHT_FORMAT, check_local_checkpoint
from ..runtime.lora import check_lora
from .conversion import check_weight_format, convert_to_openvino
from .quantization import convert_sd3_hybrid
from .single_file import SingleFileCheckpoint, is_single_file, single_file_checkpoint


def convert_sd3(
    checkpoint: str | Path,
    output_dir: str | Path,
    *,
    config: str | Path | None = None,
    load_t5: bool = True,
    weight_format: str = "fp16",
    quantize_vae: bool = False,
    lora: list[tuple[str | Path, float]] | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert an SD3 checkpoint to OpenVINO IR in the optimum-intel / openvino.genai layout; return `output_dir`.

    `checkpoint` is a hub id, a local diffusers folder, or a single file: an SD3 / SD3.5 `.safetensors` in the
    Stability / ComfyUI layout (with or without CLIP-L/G and T5 in it) or a GGUF transformer, read as diffusers'
    `from_single_file` reads it. `config` (single files only) names the base, a local diffusers folder or hub id
    of the same family, for what the file lacks: tokenizers, scheduler, configs and any missing part (so a
    transformer-only file is converted with the base's VAE and text encoders); without it the official base of
    the file's family is inferred, as diffusers does (needs the hub). `weight_format` is `fp32`, `fp16`, `int8` (NNCF 8-bit
    weights in every submodel), `int4` (4-bit transformer and T5, see `ir.INT4_SETTINGS`) or
    `int8-hybrid` (the transformer's activations and weights in int8, calibrated by `quantize_sd3` with its
    defaults, the other submodels int8 weights; for its options call `quantize_sd3` on an fp16 folder).
    Without `load_t5`, T5-XXL is neither loaded nor converted, and the pipeline runs without it.
    `quantize_vae=True` (int8-hybrid only) quantizes the VAE decoder's and encoder's activations too (see
    `quantization.quantize_vae_model`): a faster decode, at the quality docs/quantization.md states.
    `lora` (`[(lora_path_or_hub_id, scale), ...]`) fuses LoRA adapters at their scales into the transformer and
    the CLIP text encoders before conversion (the original tutorial's "Flash SD3" recipe); the folder's
    `openvino_conversion.json` records them.

    Submodels are loaded in 16 bits (f32 for `fp32`), converted one at a time and freed before the next.
    Finished submodels are skipped unless `overwrite=True`; `model_index.json` is written last, so a folder
    that has it is complete.

    What can be checked in a moment is checked before any work and before diffusers is imported: the options, the
    output folder, a local checkpoint's components (`check_local_checkpoint`) and the LoRA paths.
    """
    check_weight_format(weight_format)
    check_lora(lora)
    checkpoint = checkpoint_source(checkpoint, config=config, load_t5=load_t5)
    for source in (checkpoint, checkpoint.config) if isinstance(checkpoint, SingleFileCheckpoint) else (checkpoint,):
        check_output_outside_source(source, output_dir)
    if weight_format == HYBRID_WEIGHT_FORMAT:
        return convert_sd3_hybrid(checkpoint, output_dir, load_t5=load_t5, quantize_vae=quantize_vae, lora=lora, overwrite=overwrite)
    if quantize_vae:
        raise ValueError(
            f"`quantize_vae=True` needs `weight_format='{HYBRID_WEIGHT_FORMAT}'` (the VAE is calibrated with the "
            f"transformer) but `weight_format` is {weight_format!r}. Pass weight_format='{HYBRID_WEIGHT_FORMAT}', or leave `quantize_vae` off."
        )
    return convert_to_openvino(checkpoint, output_dir, load_t5=load_t5, weight_format=weight_format, lora=lora, overwrite=overwrite)


def checkpoint_source(checkpoint: str | Path, *, config: str | Path | None, load_t5: bool) -> str | Path | SingleFileCheckpoint:
    """What `convert_sd3` reads: a single file as a `SingleFileCheckpoint` (with its base), a diffusers folder
    (checked: `check_local_checkpoint`) or a hub id as it is. `config` is refused for anything but a single file."""
    if is_single_file(checkpoint):
        return single_file_checkpoint(checkpoint, config=config, load_t5=load_t5)
    if config is not None:
        raise ValueError(
            f"`config` ({str(config)!r}) names the base of a single-file checkpoint, but `checkpoint` {str(checkpoint)!r} is "
            "no `.safetensors` / `.gguf` file: a diffusers folder or hub id carries its own configs. Leave `config` out."
        )
    check_local_checkpoint(checkpoint, load_t5=load_t5)
    return checkpoint
