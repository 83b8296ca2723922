"""`convert_sd3`: one entry point for every weight format, the plain conversion and the calibrated int8-hybrid."""

from pathlib import Path

from ..core.files import check_output_outside_source
from ..core.layout import HYBRID_WEIGHT_FORMAT, check_local_checkpoint
from ..runtime.lora import check_lora
from .conversion import check_weight_format, convert_to_openvino
from .quantization import convert_sd3_hybrid


def convert_sd3(
    checkpoint: str | Path,
    output_dir: str | Path,
    *,
    load_t5: bool = True,
    weight_format: str = "fp16",
    quantize_vae: bool = False,
    lora: list[tuple[str | Path, float]] | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert an SD3 checkpoint to OpenVINO IR in the optimum-intel / openvino.genai layout; return `output_dir`.

    `checkpoint` is a hub id or a local diffusers folder. `weight_format` is `fp32`, `fp16`, `int8` (NNCF 8-bit
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
    check_output_outside_source(checkpoint, output_dir)
    check_local_checkpoint(checkpoint, load_t5=load_t5)
    check_lora(lora)
    if weight_format == HYBRID_WEIGHT_FORMAT:
        return convert_sd3_hybrid(checkpoint, output_dir, load_t5=load_t5, quantize_vae=quantize_vae, lora=lora, overwrite=overwrite)
    if quantize_vae:
        raise ValueError(
            f"`quantize_vae=True` needs `weight_format='{HYBRID_WEIGHT_FORMAT}'` (the VAE is calibrated with the "
            f"transformer) but `weight_format` is {weight_format!r}. Pass weight_format='{HYBRID_WEIGHT_FORMAT}', or leave `quantize_vae` off."
        )
    return convert_to_openvino(checkpoint, output_dir, load_t5=load_t5, weight_format=weight_format, lora=lora, overwrite=overwrite)
