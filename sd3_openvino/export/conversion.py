"""Convert a Stable Diffusion 3 checkpoint (diffusers format) to OpenVINO IR with NNCF weight compression.

`convert_to_openvino` (behind `sd3_helper.convert_sd3`) writes the folder layout of `core/layout.py`, which
optimum-intel and openvino.genai load, with the same input and output names as optimum-intel's SD3 export. One
table (`modules.SUBMODEL_EXPORTS`) describes every submodel; one loop converts them, one at a time, freeing the
PyTorch weights before the next.

The folder is written inside `core.files.model_folder`, as the int8-hybrid writer (`quantization.py`) writes its
own: each submodel staged and published when complete, the conversion record first, `model_index.json` last. An
interrupted conversion never leaves files that look finished, and the next call picks up where it stopped.

The pieces: `loading.py` (the checkpoint, LoRA fusing), `modules.py` (what is traced), `ir.py` (post-processing
of the IR: weight compression, f16 constants, layer names, states), `records.py` (the conversion record).
"""

import gc
from pathlib import Path

import torch

from ..core.files import ModelFolder, check_output_outside_source, model_folder
from ..core.layout import (
    COPIED_COMPONENTS,
    HYBRID_WEIGHT_FORMAT,
    OV_MODEL_XML,
    OV_TOKENIZER_XML,
    RT_INFO_WEIGHT_FORMAT,
    WEIGHT_FORMATS,
    has_component,
    is_converted,
)
from ..runtime.lora import LORA_COMPONENTS, check_lora, read_lora_state_dict
from .ir import compress_weights, name_block_outputs, name_linear_layers, parameter_to_state
from .loading import fuse_loras, load_component, load_model_index_and_revision, quiet_progress_bars, transformer_layers
from .modules import SUBMODEL_EXPORTS, ExportSpec, GatedBlock, SubmodelExport, compute_in_float32, factor_position_embedding, module_paths
from .records import conversion_record
from .single_file import SingleFileCheckpoint

IR_WEIGHT_FORMATS = tuple(name for name in WEIGHT_FORMATS if name != HYBRID_WEIGHT_FORMAT)  # what this module writes


def check_weight_format(weight_format: str) -> None:
    """Raise a ValueError naming the valid choices if `weight_format` is not one of `WEIGHT_FORMATS`."""
    if weight_format not in WEIGHT_FORMATS:
        raise ValueError(f"`weight_format` must be one of {list(WEIGHT_FORMATS)} but is {weight_format!r}.")


# ----------------------------------------------------------------------------------------------------------
# One submodel: trace, post-process, save
# ----------------------------------------------------------------------------------------------------------


def export_ir(spec: ExportSpec, *, submodel: str, weight_format: str):
    """Trace `spec.module` with `torch.export` and return the `openvino.Model`: inputs and outputs named and
    shaped as `spec` says, linear layers named by module path, states made, weights compressed for
    `weight_format`, which its rt_info records."""
    import openvino as ov

    # torch.export rather than TorchScript tracing: transformers' mask helpers reject the tensors that tracing
    # makes of shapes, and an exported program shares the module's weights instead of copying them.
    dynamic_shapes = {
        name: {axis: torch.export.Dim.AUTO for axis, size in enumerate(shape) if size == -1}
        for name, shape in spec.input_shapes.items()
    }
    with torch.no_grad():
        program = torch.export.export(spec.module, args=(), kwargs=spec.example_input, dynamic_shapes=dynamic_shapes)
        ov_model = ov.convert_model(program)
    name_linear_layers(ov_model, program, module=spec.module, module_names=spec.module_names or module_paths(spec.source))
    block_paths = {path: block.index for path, block in spec.module.named_modules() if isinstance(block, GatedBlock)}
    name_block_outputs(ov_model, program, block_paths=block_paths)
    for ov_input, (name, shape) in zip(ov_model.inputs, spec.input_shapes.items()):
        ov_input.get_tensor().set_names({name})
    ov_model.reshape({name: ov.PartialShape(shape) for name, shape in spec.input_shapes.items()})
    for ov_output, name in zip(ov_model.outputs, spec.output_names):
        ov_output.get_tensor().set_names({name})
    for name, initial in (spec.states or {}).items():
        ov_model = parameter_to_state(ov_model, name=name, initial=initial)
    ov_model = compress_weights(ov_model, submodel=submodel, weight_format=weight_format)
    ov_model.set_rt_info(weight_format, RT_INFO_WEIGHT_FORMAT)
    for option, value in (spec.runtime_options or {}).items():
        ov_model.set_rt_info(value, ["runtime_options", option])
    return ov_model


def save_ir(ov_model, directory: Path, *, config_source: torch.nn.Module, weight_format: str) -> None:
    """Save `ov_model` as `openvino_model.xml|.bin` (f16 constants unless fp32) and `config_source`'s
    `config.json` into `directory`."""
    import openvino as ov

    ov.save_model(ov_model, directory / OV_MODEL_XML, compress_to_fp16=weight_format != "fp32")
    if hasattr(config_source, "save_config"):  # diffusers
        config_source.save_config(directory)
    else:  # transformers
        config_source.config.save_pretrained(directory)


def _convert_submodel(
    checkpoint: str | Path | SingleFileCheckpoint, item: SubmodelExport, *, model_index: dict, weight_format: str, folder: ModelFolder, lora: list[tuple[str, float]]
) -> None:
    """Load one component in 16 bits (f32 for fp32), fuse the LoRAs into it, export it into `folder`, free it."""
    # fp32 output needs f32 weights; every other format stores at most 16 bits, so load them in 16 bits.
    torch_dtype = torch.float32 if weight_format == "fp32" else torch.float16
    module = load_component(checkpoint, model_index=model_index, name=item.component, torch_dtype=torch_dtype)
    if lora and item.component in LORA_COMPONENTS:
        fuse_loras(module, component=item.component, lora=lora, transformer_layers=transformer_layers(checkpoint))
    if item.name == "transformer":
        factor_position_embedding(module)  # before the upcast, so the factors stay 16-bit too
    module = compute_in_float32(module.eval()) if torch_dtype != torch.float32 else module.eval()
    spec = item.make_spec(module)
    ov_model = export_ir(spec, submodel=item.name, weight_format=weight_format)
    with folder.submodel(item.name) as staging:
        save_ir(ov_model, staging, config_source=spec.source, weight_format=weight_format)
    del module, spec, ov_model
    gc.collect()


# ----------------------------------------------------------------------------------------------------------
# Tokenizers and scheduler
# ----------------------------------------------------------------------------------------------------------


def _save_openvino_tokenizer(tokenizer, directory: Path) -> None:
    """Save `openvino_tokenizer.xml` / `openvino_detokenizer.xml`, which openvino.genai needs to run the folder."""
    import openvino as ov
    from openvino_tokenizers import convert_tokenizer

    ov_tokenizer, ov_detokenizer = convert_tokenizer(tokenizer, with_detokenizer=True)
    ov.save_model(ov_tokenizer, directory / OV_TOKENIZER_XML)
    ov.save_model(ov_detokenizer, directory / "openvino_detokenizer.xml")


def _copy_components(checkpoint: str | Path, *, model_index: dict, has_t5: bool, folder: ModelFolder) -> None:
    """Copy the tokenizers (also as OpenVINO tokenizer models) and the scheduler that `folder` needs."""
    for name in COPIED_COMPONENTS:
        if (name == "tokenizer_3" and not has_t5) or not folder.needs_component(name):
            continue
        component = load_component(checkpoint, model_index=model_index, name=name)
        with folder.submodel(name) as staging:
            component.save_pretrained(staging)
            if name.startswith("tokenizer"):
                _save_openvino_tokenizer(component, staging)


# ----------------------------------------------------------------------------------------------------------
# The whole checkpoint
# ----------------------------------------------------------------------------------------------------------


def convert_to_openvino(
    checkpoint: str | Path | SingleFileCheckpoint,
    output_dir: str | Path,
    *,
    load_t5: bool = True,
    weight_format: str = "fp16",
    lora: list[tuple[str | Path, float]] | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert an SD3 checkpoint to OpenVINO IR with `weight_format` fp32, fp16, int8 or int4; return `output_dir`.

    `lora` (`[(path, scale), ...]`) are fused into the transformer and CLIP text encoders at their scales first
    (see `loading.fuse_loras`); the conversion record names them, so another LoRA or scale is another conversion.

    The work behind `sd3_helper.convert_sd3` for every format but int8-hybrid (see there). Refused before anything
    is written: an `output_dir` that is the source folder, inside it or around it, a local checkpoint that lacks a
    component it reads (`check_local_checkpoint`), and (unless `overwrite=True`) one that holds a conversion of
    another source or with other options. Submodels are converted one at a time
    and freed before the next; finished ones are skipped unless `overwrite=True`; `model_index.json` is written
    last, so a folder that has it is complete. A call that fails before a submodel is finished removes the
    folders it created.
    """
    check_weight_format(weight_format)
    if weight_format not in IR_WEIGHT_FORMATS:
        raise ValueError(f"`weight_format` {weight_format!r} is made by `sd3_helper.convert_sd3`; this function writes {list(IR_WEIGHT_FORMATS)}.")
    output_dir = Path(output_dir)
    check_output_outside_source(checkpoint, output_dir)
    lora = check_lora(lora)
    model_index, revision = load_model_index_and_revision(checkpoint, load_t5=load_t5)  # a local folder's parts first
    has_t5 = load_t5 and has_component(model_index, "text_encoder_3")
    for source, _ in lora:
        read_lora_state_dict(source, transformer_layers=transformer_layers(checkpoint))  # a bad LoRA fails before anything is written
    record = conversion_record(checkpoint, revision=revision, weight_format=weight_format, load_t5=has_t5, lora=lora)
    exports = [item for item in SUBMODEL_EXPORTS if has_t5 or item.name != "text_encoder_3"]
    written_index = model_index if has_t5 else {**model_index, "text_encoder_3": [None, None], "tokenizer_3": [None, None]}
    with model_folder(
        output_dir,
        record=record,
        model_index=written_index,
        submodels=[item.name for item in exports],
        weight_format=weight_format,
        overwrite=overwrite,
    ) as folder, quiet_progress_bars():
        _convert_submodels(checkpoint, exports, model_index=model_index, weight_format=weight_format, folder=folder, lora=lora)
        _copy_components(checkpoint, model_index=model_index, has_t5=has_t5, folder=folder)
    return output_dir


def _convert_submodels(
    checkpoint: str | Path,
    exports: list[SubmodelExport],
    *,
    model_index: dict,
    weight_format: str,
    folder: ModelFolder,
    lora: list[tuple[str, float]],
) -> None:
    """Convert the submodels of `exports` that `folder` does not hold yet, with one progress bar over them."""
    from tqdm.auto import tqdm

    progress = tqdm(exports, desc="Converting SD3 to OpenVINO", unit="submodel")
    for item in progress:
        progress.set_postfix_str(item.description)
        if folder.is_finished(item.name):
            tqdm.write(f"{item.name}: already converted, skipped")
            continue
        _convert_submodel(checkpoint, item, model_index=model_index, weight_format=weight_format, folder=folder, lora=lora)


__all__ = [
    "IR_WEIGHT_FORMATS",
    "SUBMODEL_EXPORTS",
    "check_weight_format",
    "compress_weights",
    "convert_to_openvino",
    "export_ir",
    "factor_position_embedding",
    "is_converted",
    "save_ir",
]
