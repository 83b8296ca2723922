"""Convert a Stable Diffusion 3 checkpoint (diffusers format) to OpenVINO IR with NNCF weight compression.

`convert_to_openvino` (behind `sd3_helper.convert_sd3`) writes the folder layout of `sd3_layout`, which
optimum-intel and openvino.genai load, with the same input and output names as optimum-intel's SD3 export. One table (`SUBMODEL_EXPORTS`) describes
every submodel; one loop converts them, one at a time, freeing the PyTorch weights before the next.

Every folder is written with `sd3_layout.staged_dir` (a hidden staging folder renamed into place when
complete), and `model_index.json` is written last: an interrupted conversion never leaves files that look
finished, and the next call picks up where it stopped.

Imports the bottom layer `sd3_layout`, `sd3_lora` (reading LoRA files) and `sd3_previews` (the tiny preview decoder's checks). The calibrated "int8-hybrid" format is made from an fp16 folder by
`sd3_quantization`, which builds on this module (this one never imports it); `sd3_helper.convert_sd3` offers both.
"""

import gc
import hashlib
import importlib
import logging
import types
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from ..core.layout import (
    BLOCK_MASK,
    CONFIG_JSON,
    COPIED_COMPONENTS,
    HYBRID_WEIGHT_FORMAT,
    MODEL_INDEX,
    OV_MODEL_XML,
    OV_TOKENIZER_XML,
    RT_INFO_WEIGHT_FORMAT,
    SCHEDULER_CONFIG,
    WEIGHT_FORMATS,
    check_output_outside_source,
    check_sd3_index,
    has_component,
    is_converted,
    linear_node_name,
    read_json,
    read_model_index,
    recorded_weight_format,
    refuse_other_conversion,
    refuse_other_weight_format,
    remove_stale_staging,
    removed_on_failure,
    staged_dir,
    vae_scale_factor,
    write_conversion_record,
    write_json_atomically,
)
from ..runtime.lora import LORA_COMPONENTS, LORA_WEIGHT_NAME, check_lora, read_lora_state_dict
from ..runtime.previews import PREVIEW_DECODER, check_tiny_autoencoder

IR_WEIGHT_FORMATS = tuple(name for name in WEIGHT_FORMATS if name != HYBRID_WEIGHT_FORMAT)  # what this module writes


# ----------------------------------------------------------------------------------------------------------
# Loading the PyTorch checkpoint
# ----------------------------------------------------------------------------------------------------------


def _model_not_found(checkpoint: str | Path, error: Exception) -> FileNotFoundError:
    return FileNotFoundError(
        f"Could not load the SD3 checkpoint `{checkpoint}` ({type(error).__name__}: {error}). "
        "Pass either a local folder in diffusers format (it contains `model_index.json`) or a Hugging Face hub "
        "id such as `stabilityai/stable-diffusion-3-medium-diffusers`. The official SD3 checkpoints are gated: "
        "accept the license on the model page, then log in with `huggingface-cli login` (or "
        "`huggingface_hub.login()`) on a machine that can reach huggingface.co."
    )


def load_model_index_and_revision(checkpoint: str | Path) -> tuple[dict, str | None]:
    """`load_model_index`, and the hub revision (commit) it was read from (None for a local folder)."""
    from diffusers import DiffusionPipeline

    try:
        config, revision = DiffusionPipeline.load_config(str(checkpoint), return_commit_hash=True)
    except Exception as error:  # hub, network and file errors all mean the same thing to the user
        raise _model_not_found(checkpoint, error) from error
    model_index = dict(config)
    check_sd3_index(model_index, where=f"`{checkpoint}`")
    return model_index, revision


def load_model_index(checkpoint: str | Path) -> dict:
    """Read `model_index.json` of an SD3 checkpoint (local folder or hub id), with a clear error if it is absent
    or describes another kind of pipeline."""
    return load_model_index_and_revision(checkpoint)[0]


SAMPLED_BYTES = 1 << 20  # of a large file, the fingerprint reads the first and the last MiB (and its size)


def _file_digest(path: Path) -> str:
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as file:
        digest.update(file.read(SAMPLED_BYTES))
        if size > 2 * SAMPLED_BYTES:
            file.seek(size - SAMPLED_BYTES)
        digest.update(file.read(SAMPLED_BYTES))
    return digest.hexdigest()


def checkpoint_fingerprint(folder: str | Path) -> str:
    """A digest of a local checkpoint folder: every file's path, size, and content (the first and last MiB of
    files larger than 2 MiB: any retrained or fine-tuned weights differ there). Hidden files are skipped."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts):
            digest.update(f"{relative.as_posix()}:{_file_digest(path)};".encode())
    return digest.hexdigest()


def conversion_record(checkpoint: str | Path, *, revision: str | None, options: dict) -> dict:
    """What `sd3_layout.CONVERSION_RECORD` holds: the source (a hub id and revision, or a local folder's
    fingerprint) and the conversion's options."""
    if Path(checkpoint).is_dir():
        source = {"fingerprint": checkpoint_fingerprint(checkpoint), "path": str(Path(checkpoint).resolve())}
    else:
        source = {"hub_id": str(checkpoint), "revision": revision}
    return {"source": source, "options": options}


# ----------------------------------------------------------------------------------------------------------
# LoRA adapters fused at conversion
# ----------------------------------------------------------------------------------------------------------

def lora_options(lora: list[tuple[str, float]]) -> list[dict]:
    """What a conversion record says of its fused LoRAs: source, content digest (local files) and scale."""
    options = []
    for source, scale in lora:
        path = Path(source)
        path = path / LORA_WEIGHT_NAME if path.is_dir() else path
        options.append({"source": source, "sha256": _file_digest(path) if path.is_file() else None, "scale": scale})
    return options


def fuse_loras(module: torch.nn.Module, *, component: str, lora: list[tuple[str, float]]) -> None:
    """Fuse each `(source, scale)` LoRA of `lora` that has weights for `component` into `module`'s weights, as
    diffusers' `load_lora_weights` + `set_adapters` + `fuse_lora` do, and remove the LoRA layers again."""
    from diffusers import StableDiffusion3Pipeline
    from diffusers.utils.peft_utils import recurse_remove_peft_layers
    from peft.tuners.tuners_utils import BaseTunerLayer

    names = []
    for index, (source, scale) in enumerate(lora):
        state_dict, metadata = read_lora_state_dict(source)
        if not any(key.startswith(f"{component}.") for key in state_dict):
            continue
        name = f"lora_{index}"
        if component == "transformer":
            StableDiffusion3Pipeline.load_lora_into_transformer(state_dict, transformer=module, adapter_name=name, metadata=metadata)
        else:
            StableDiffusion3Pipeline.load_lora_into_text_encoder(
                state_dict, network_alphas=None, text_encoder=module, prefix=component, adapter_name=name, metadata=metadata
            )
        for layer in module.modules():
            if isinstance(layer, BaseTunerLayer) and name in layer.scaling:
                layer.scaling[name] *= scale  # diffusers' adapter weight
        names.append(name)
    if names:
        for layer in module.modules():
            if isinstance(layer, BaseTunerLayer):
                layer.merge(adapter_names=[name for name in names if name in layer.scaling])
        recurse_remove_peft_layers(module)


def load_sd3_pipeline(checkpoint: str | Path, *, load_t5: bool = True, torch_dtype: torch.dtype | None = None):
    """Load the PyTorch `diffusers.StableDiffusion3Pipeline` from a hub id or a local folder.

    With `load_t5=False` the T5-XXL encoder (4.7B parameters, about 9.5 GB in fp16) and its tokenizer are not
    loaded; the pipeline then uses zeros in place of the T5 embeddings, as diffusers does.
    """
    from diffusers import StableDiffusion3Pipeline

    load_model_index(checkpoint)  # fails early, with the helpful message, if the model is unreachable
    t5_kwargs = {} if load_t5 else {"text_encoder_3": None, "tokenizer_3": None}
    try:
        return StableDiffusion3Pipeline.from_pretrained(str(checkpoint), torch_dtype=torch_dtype, **t5_kwargs)
    except OSError as error:
        raise _model_not_found(checkpoint, error) from error


def _load_component(checkpoint: str | Path, *, model_index: dict, name: str, **kwargs):
    """Load one component (`transformer`, `vae`, `tokenizer_2`, ...) by the class `model_index.json` names."""
    library_name, class_name = model_index[name]
    component_class = getattr(importlib.import_module(library_name), class_name)
    try:
        return component_class.from_pretrained(str(checkpoint), subfolder=name, **kwargs)
    except OSError as error:
        raise _model_not_found(checkpoint, error) from error


# ----------------------------------------------------------------------------------------------------------
# Export wrappers: each gives a submodel the inputs and outputs optimum-intel's SD3 export has.
# Example inputs have batch 2 so that torch.export keeps the batch dynamic (it specializes sizes 0 and 1).
# ----------------------------------------------------------------------------------------------------------


class ClipTextEncoderExport(torch.nn.Module):
    """CLIP text encoder with projection -> (text_embeds, last_hidden_state, hidden_states.0 ... hidden_states.N)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        output = self.model(input_ids=input_ids, output_hidden_states=True, return_dict=True)
        return (output.text_embeds, output.last_hidden_state, *output.hidden_states)


class T5EncoderExport(torch.nn.Module):
    """T5 encoder -> last_hidden_state."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        return self.model(input_ids=input_ids, return_dict=True).last_hidden_state


class _BlockMaskHolder:
    """The block mask of the call being traced, shared by the gated blocks (a plain object: not a submodule)."""

    mask: torch.Tensor | None = None


class GatedBlock(torch.nn.Module):
    """A transformer block that runs where `block_mask[index]` is 1 and passes its inputs through where it is 0,
    as diffusers' `skip_layers` does. Both results are computed and one is selected, so the traced graph is the
    same for every mask."""

    def __init__(self, block: torch.nn.Module, *, index: int, holder: _BlockMaskHolder):
        super().__init__()
        self.block, self.index, self.holder = block, index, holder

    def forward(self, hidden_states, encoder_hidden_states, temb, joint_attention_kwargs=None):
        encoder_out, hidden_out = self.block(
            hidden_states=hidden_states, encoder_hidden_states=encoder_hidden_states, temb=temb, joint_attention_kwargs=joint_attention_kwargs
        )
        runs = self.holder.mask[self.index] > 0.5
        hidden_out = torch.where(runs, hidden_out, hidden_states)
        if encoder_out is not None:  # the last block returns no text stream
            encoder_out = torch.where(runs, encoder_out, encoder_hidden_states)
        return encoder_out, hidden_out


class TransformerExport(torch.nn.Module):
    """MMDiT transformer -> out_sample (the predicted flow), with a per-block mask (see `GatedBlock`).

    The mask becomes an OpenVINO state initialised to ones (`parameter_to_state`), not an input: runtimes that
    do not know it (optimum-intel, openvino.genai) run every block, and ours sets it for skip-layer guidance."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.holder = _BlockMaskHolder()
        model.transformer_blocks = torch.nn.ModuleList(
            GatedBlock(block, index=index, holder=self.holder) for index, block in enumerate(model.transformer_blocks)
        )

    def forward(self, hidden_states, encoder_hidden_states, pooled_projections, timestep, block_mask):  # optimum-intel's order
        self.holder.mask = block_mask
        return self.model(
            hidden_states=hidden_states,
            timestep=timestep,
            encoder_hidden_states=encoder_hidden_states,
            pooled_projections=pooled_projections,
            return_dict=False,
        )[0]


class VaeDecoderExport(torch.nn.Module):
    """VAE decoder: unscaled latents -> image in [-1, 1]."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, latent_sample):
        return self.vae.decode(latent_sample, return_dict=False)[0]


class VaeEncoderExport(torch.nn.Module):
    """VAE encoder: image in [-1, 1] -> latent distribution parameters (mean and log-variance)."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, sample):
        return self.vae.encode(sample).latent_dist.parameters


@dataclass(frozen=True)
class ExportSpec:
    """How to export one submodel: the module to trace, example inputs and shapes, output names."""

    module: torch.nn.Module
    example_input: dict[str, torch.Tensor]
    input_shapes: dict[str, list[int]]  # -1 marks a dynamic dimension
    output_names: list[str]
    source: torch.nn.Module  # the diffusers / transformers model, whose config is saved beside the IR
    runtime_options: dict[str, str] | None = None
    states: dict[str, np.ndarray] | None = None  # inputs that become OpenVINO states, with their initial values
    module_names: dict[int, str] | None = None  # id(module) -> its path in `source`, when wrapping renamed it


def _clip_spec(model) -> ExportSpec:
    num_layers = model.config.num_hidden_layers
    max_length = model.config.max_position_embeddings
    return ExportSpec(
        module=ClipTextEncoderExport(model),
        example_input={"input_ids": torch.ones((2, max_length), dtype=torch.int64)},
        input_shapes={"input_ids": [-1, -1]},
        output_names=["text_embeds", "last_hidden_state"] + [f"hidden_states.{i}" for i in range(num_layers + 1)],
        source=model,
    )


def _t5_spec(model) -> ExportSpec:
    return ExportSpec(
        module=T5EncoderExport(model),
        example_input={"input_ids": torch.ones((2, 16), dtype=torch.int64)},
        input_shapes={"input_ids": [-1, -1]},
        output_names=["last_hidden_state"],
        source=model,
        runtime_options={"ACTIVATIONS_SCALE_FACTOR": "8.0"},  # as optimum-intel: keeps T5 finite in f16 on GPU
    )


def _cropped_separable_pos_embed(patch_embed, height: int, width: int) -> torch.Tensor:
    """`PatchEmbed.cropped_pos_embed` from the two 1D factors of the table (see `factor_position_embedding`)."""
    max_size = patch_embed.pos_embed_max_size
    height, width = height // patch_embed.patch_size, width // patch_embed.patch_size
    if height > max_size or width > max_size:
        raise ValueError(f"Latent size {height}x{width} (in patches) exceeds `pos_embed_max_size` {max_size}.")
    top, left = (max_size - height) // 2, (max_size - width) // 2
    columns = patch_embed.pos_embed_columns[left : left + width]  # (width, D/2)
    rows = patch_embed.pos_embed_rows[top : top + height]  # (height, D/2)
    grid = torch.cat([columns[None].expand(height, -1, -1), rows[:, None].expand(-1, width, -1)], dim=-1)
    return grid.reshape(1, height * width, grid.shape[-1])


def factor_position_embedding(transformer: torch.nn.Module) -> bool:
    """Store SD3's 2D sin-cos position table as its two 1D factors; return whether it did.

    `transformer.pos_embed.pos_embed` holds a vector for every cell of a `pos_embed_max_size`² grid (192² x 1536
    values in SD3 Medium: 113 MB in fp16, more than a quarter of a 2-layer transformer and out of reach of
    weight compression). Each vector is [a part that depends on the column, a part that depends on the row],
    so two `pos_embed_max_size` x D/2 tables hold the same numbers. The export then builds the crop a call needs
    from them: the same values, 0.6 MB instead of 113. A checkpoint whose table is not separable (checked
    exactly) is left as it is.
    """
    patch_embed = getattr(transformer, "pos_embed", None)
    max_size = getattr(patch_embed, "pos_embed_max_size", None)
    if max_size is None or getattr(patch_embed, "pos_embed", None) is None:
        return False
    table = patch_embed.pos_embed.reshape(max_size, max_size, -1)
    half = table.shape[-1] // 2
    columns, rows = table[0, :, :half], table[:, 0, half:]
    rebuilt = torch.cat([columns[None].expand(max_size, -1, -1), rows[:, None].expand(-1, max_size, -1)], dim=-1)
    if not torch.equal(rebuilt, table):
        return False
    patch_embed.register_buffer("pos_embed_columns", columns.clone())
    patch_embed.register_buffer("pos_embed_rows", rows.clone())
    patch_embed.pos_embed = patch_embed.pos_embed.new_zeros(1)  # forward only checks that it is not None
    patch_embed.cropped_pos_embed = types.MethodType(_cropped_separable_pos_embed, patch_embed)
    return True


def _transformer_spec(model) -> ExportSpec:
    config = model.config
    latent_side = 8 * config.patch_size  # any multiple of the patch size traces the same graph
    example_input = {
        "hidden_states": torch.randn(2, config.in_channels, latent_side, latent_side),
        "encoder_hidden_states": torch.randn(2, 16, config.joint_attention_dim),
        "pooled_projections": torch.randn(2, config.pooled_projection_dim),
        "timestep": torch.tensor([500.0, 500.0]),
        BLOCK_MASK: torch.ones(config.num_layers),
    }
    input_shapes = {
        "hidden_states": [-1, config.in_channels, -1, -1],
        "encoder_hidden_states": [-1, -1, config.joint_attention_dim],
        "pooled_projections": [-1, config.pooled_projection_dim],
        "timestep": [-1],
        BLOCK_MASK: [config.num_layers],
    }
    states = {BLOCK_MASK: np.ones(config.num_layers, dtype=np.float32)}
    module_names = module_paths(model)  # before `GatedBlock` adds `.block` to the blocks' paths
    return ExportSpec(
        TransformerExport(model), example_input, input_shapes, ["out_sample"], source=model, states=states, module_names=module_names
    )


def _vae_decoder_spec(vae) -> ExportSpec:
    channels = vae.config.latent_channels
    return ExportSpec(
        module=VaeDecoderExport(vae),
        example_input={"latent_sample": torch.randn(2, channels, 8, 8)},
        input_shapes={"latent_sample": [-1, channels, -1, -1]},
        output_names=["sample"],
        source=vae,
    )


def _vae_encoder_spec(vae) -> ExportSpec:
    channels = vae.config.in_channels
    scale_factor = vae_scale_factor(vae.config)
    return ExportSpec(
        module=VaeEncoderExport(vae),
        example_input={"sample": torch.randn(2, channels, 8 * scale_factor, 8 * scale_factor)},
        input_shapes={"sample": [-1, channels, -1, -1]},
        output_names=["latent_parameters"],
        source=vae,
    )


@dataclass(frozen=True)
class SubmodelExport:
    name: str  # folder in the OpenVINO layout
    component: str  # component in the diffusers checkpoint
    make_spec: Callable[[torch.nn.Module], ExportSpec]
    description: str


# The one table of submodels. Order: the largest first, so a machine that lacks memory fails early.
SUBMODEL_EXPORTS = (
    SubmodelExport("transformer", "transformer", _transformer_spec, "MMDiT transformer (denoiser)"),
    SubmodelExport("text_encoder_3", "text_encoder_3", _t5_spec, "T5-XXL text encoder"),
    SubmodelExport("text_encoder_2", "text_encoder_2", _clip_spec, "CLIP-G text encoder"),
    SubmodelExport("text_encoder", "text_encoder", _clip_spec, "CLIP-L text encoder"),
    SubmodelExport("vae_decoder", "vae", _vae_decoder_spec, "VAE decoder"),
    SubmodelExport("vae_encoder", "vae", _vae_encoder_spec, "VAE encoder"),
)


# ----------------------------------------------------------------------------------------------------------
# Weight compression
# ----------------------------------------------------------------------------------------------------------

# int4 settings per submodel. The MMDiT and T5 hold ~97% of SD3's weights, so they get 4 bits; NNCF keeps
# their embeddings and last layer at int8 (all_layers=False) and, for the transformer, the 20% of layers with
# the largest 4-bit error too (ratio 0.8), because the denoiser's errors accumulate over every step. A group
# of 64 input channels divides SD3's widths (1536, 4096) and is more accurate than 128 at ~3% size cost.
# The CLIP encoders (small, and their pooled output steers the whole image) and the VAE (convolutions, which
# NNCF compresses to 8 bits only) stay int8.
INT4_SETTINGS = {
    "transformer": {"ratio": 0.8, "group_size": 64},
    "text_encoder_3": {"ratio": 1.0, "group_size": 64},
}


def compress_weights(ov_model, *, submodel: str, weight_format: str):
    """Compress an `openvino.Model`'s weights for `weight_format` (see `INT4_SETTINGS` for the int4 choices).

    fp32 and fp16 return the model unchanged (fp16 is applied when saving); int8 is NNCF's asymmetric per-channel
    8-bit weight compression; int4 is symmetric 4-bit with groups for the transformer and T5, int8 elsewhere.
    """
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedCompressionParameters, GroupSizeFallbackMode

    if weight_format in ("fp32", "fp16"):
        return ov_model
    if weight_format == "int4" and submodel in INT4_SETTINGS:
        with quiet_nncf():
            compressed = nncf.compress_weights(
                ov_model,
                mode=nncf.CompressWeightsMode.INT4_SYM,
                **INT4_SETTINGS[submodel],
                # Widths not divisible by the group get the largest power-of-two group that divides them.
                advanced_parameters=AdvancedCompressionParameters(group_size_fallback_mode=GroupSizeFallbackMode.ADJUST),
            )
    else:
        with quiet_nncf():
            compressed = nncf.compress_weights(ov_model, mode=nncf.CompressWeightsMode.INT8_ASYM)
    return store_large_constants_in_fp16(compressed)


@contextmanager
def quiet_nncf() -> Iterator[None]:
    """Keep NNCF's per-layer INFO chatter and bit-width tables out of the output; its warnings stay."""
    from nncf.common.logging import nncf_logger

    level = nncf_logger.level
    nncf_logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        nncf_logger.setLevel(level)


@contextmanager
def quiet_progress_bars() -> Iterator[None]:
    """Hide transformers' and diffusers' per-file bars ("Loading weights", "Writing model shards") in the block,
    so a conversion shows one bar over its submodels."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    enabled = [(library, library.is_progress_bar_enabled()) for library in (transformers_logging, diffusers_logging)]
    for library, _ in enabled:
        library.disable_progress_bar()
    try:
        yield
    finally:
        for library, was_enabled in enabled:
            if was_enabled:
                library.enable_progress_bar()


def store_large_constants_in_fp16(ov_model, *, min_bytes: int = 16 * 1024):
    """Store the large f32 constants NNCF leaves alone (buffers such as SD3's position-embedding table, 226 MB
    in f32) as f16 + Convert, as `save_model(compress_to_fp16=True)` does for an uncompressed model but skips
    once a model holds compressed weights."""
    import numpy as np
    import openvino as ov
    import openvino.opset13 as opset

    for op in ov_model.get_ops():
        if op.get_type_name() != "Constant" or op.get_output_element_type(0) != ov.Type.f32 or op.get_byte_size() < min_bytes:
            continue
        data = op.get_data()
        if np.abs(data).max() >= np.finfo(np.float16).max:
            continue  # would overflow in f16
        decompressed = opset.convert(opset.constant(data.astype(np.float16)), ov.Type.f32)
        for target in list(op.output(0).get_target_inputs()):
            target.replace_source_output(decompressed.output(0))
    ov_model.validate_nodes_and_infer_types()
    return ov_model


# ----------------------------------------------------------------------------------------------------------
# Conversion
# ----------------------------------------------------------------------------------------------------------


class _ToFloat32(torch.nn.Module):
    def forward(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.float()


def compute_in_float32(module: torch.nn.Module) -> torch.nn.Module:
    """Keep a 16-bit module's weights in 16 bits but make every use of them an f32 upcast.

    The exported graph then computes in f32 with f16 constants feeding `Convert` ops, which is exactly what
    an fp16 IR is; the weights never exist in f32 in memory, halving the conversion's peak RSS.
    """
    from torch.nn.utils import parametrize

    for submodule in list(module.modules()):
        tensors = list(submodule.named_parameters(recurse=False)) + list(submodule.named_buffers(recurse=False))
        for name, tensor in tensors:
            if tensor is not None and tensor.dtype in (torch.float16, torch.bfloat16):
                parametrize.register_parametrization(submodule, name, _ToFloat32(), unsafe=True)
    return module


def _save_config(model: torch.nn.Module, directory: Path) -> None:
    if hasattr(model, "save_config"):  # diffusers
        model.save_config(directory)
    else:  # transformers
        model.config.save_pretrained(directory)


def _export_submodel(spec: ExportSpec, *, submodel: str, weight_format: str, output_dir: Path) -> None:
    """Trace, compress and save one submodel into a staging folder, then publish it."""
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

    with staged_dir(output_dir / submodel) as staging:
        ov.save_model(ov_model, staging / OV_MODEL_XML, compress_to_fp16=weight_format != "fp32")
        _save_config(spec.source, staging)


def module_paths(model: torch.nn.Module) -> dict[int, str]:
    """`id(submodule) -> its dotted path in model` ("transformer_blocks.0.attn.to_q")."""
    return {id(submodule): name for name, submodule in model.named_modules()}


def name_linear_layers(ov_model, program, *, module: torch.nn.Module, module_names: dict[int, str]) -> None:
    """Name each `nn.Linear`'s MatMul in `ov_model` by its module path (`linear_node_name`).

    `torch.export` names ops after graph nodes (`linear_3/aten.linear.default/MatMul`); the module that ran each
    linear is in the node's `nn_module_stack`, as a path in the traced wrapper `module`, which `module_names`
    maps back to the path in the diffusers / transformers model (where LoRA adapters name their layers).
    """
    paths = {}
    for node in program.graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if node.op == "call_function" and node.target is torch.ops.aten.linear.default and stack:
            wrapper_path = list(stack.values())[-1][0]
            name = module_names.get(id(module.get_submodule(wrapper_path)))
            if name:
                paths[node.name] = name
    for op in ov_model.get_ops():
        graph_node = op.get_friendly_name().split("/")[0]
        if op.get_type_name() == "MatMul" and graph_node in paths:
            op.set_friendly_name(linear_node_name(paths[graph_node]))


def parameter_to_state(ov_model, *, name: str, initial: np.ndarray):
    """The model with its input `name` replaced by an OpenVINO state (ReadValue + Assign) that starts at `initial`:
    callers that never set it get `initial`; `infer_request.query_state()` sets it for a call."""
    import openvino as ov
    from openvino import opset13 as ops
    from openvino.op.util import Variable, VariableInfo

    parameter = next(p for p in ov_model.get_parameters() if name in p.output(0).get_names())
    info = VariableInfo()
    info.data_shape, info.data_type, info.variable_id = ov.PartialShape(list(initial.shape)), ov.Type.f32, name
    variable = Variable(info)
    read = ops.read_value(ops.constant(initial.astype(np.float32)), variable)
    for target in list(parameter.output(0).get_target_inputs()):
        target.replace_source_output(read.output(0))
    parameters = [p for p in ov_model.get_parameters() if p is not parameter]
    sinks = list(ov_model.get_sinks()) + [ops.assign(read, variable)]
    return ov.Model(ov_model.get_results(), sinks, parameters, list(ov_model.get_variables()) + [variable], ov_model.get_friendly_name())


def _save_openvino_tokenizer(tokenizer, directory: Path) -> None:
    """Save `openvino_tokenizer.xml` / `openvino_detokenizer.xml`, which openvino.genai needs to run the folder."""
    import openvino as ov
    from openvino_tokenizers import convert_tokenizer

    ov_tokenizer, ov_detokenizer = convert_tokenizer(tokenizer, with_detokenizer=True)
    ov.save_model(ov_tokenizer, directory / OV_TOKENIZER_XML)
    ov.save_model(ov_detokenizer, directory / "openvino_detokenizer.xml")


def _copy_component(checkpoint: str | Path, *, model_index: dict, name: str, output_dir: Path) -> None:
    """Copy a tokenizer (also as an OpenVINO tokenizer model) or the scheduler into the output folder."""
    component = _load_component(checkpoint, model_index=model_index, name=name)
    with staged_dir(output_dir / name) as staging:
        component.save_pretrained(staging)
        if name.startswith("tokenizer"):
            _save_openvino_tokenizer(component, staging)


def check_weight_format(weight_format: str) -> None:
    """Raise a ValueError naming the valid choices if `weight_format` is not one of `WEIGHT_FORMATS`."""
    if weight_format not in WEIGHT_FORMATS:
        raise ValueError(f"`weight_format` must be one of {list(WEIGHT_FORMATS)} but is {weight_format!r}.")


def _convert_submodel(
    checkpoint: str | Path, item: SubmodelExport, *, model_index: dict, weight_format: str, output_dir: Path, lora: list[tuple[str, float]]
) -> None:
    """Load one component in 16 bits (f32 for fp32), fuse the LoRAs into it, export it to `output_dir / item.name`, free it."""
    # fp32 output needs f32 weights; every other format stores at most 16 bits, so load them in 16 bits.
    torch_dtype = torch.float32 if weight_format == "fp32" else torch.float16
    module = _load_component(checkpoint, model_index=model_index, name=item.component, torch_dtype=torch_dtype)
    if lora and item.component in LORA_COMPONENTS:
        fuse_loras(module, component=item.component, lora=lora)
    if item.name == "transformer":
        factor_position_embedding(module)  # before the upcast, so the factors stay 16-bit too
    module = compute_in_float32(module.eval()) if torch_dtype != torch.float32 else module.eval()
    _export_submodel(item.make_spec(module), submodel=item.name, weight_format=weight_format, output_dir=output_dir)
    del module
    gc.collect()


def _copy_components(checkpoint: str | Path, *, model_index: dict, has_t5: bool, output_dir: Path, overwrite: bool) -> None:
    """Copy the tokenizers (also as OpenVINO tokenizer models) and the scheduler that are not there yet."""
    for name in COPIED_COMPONENTS:
        if name == "tokenizer_3" and not has_t5:
            continue
        finished_marker = OV_TOKENIZER_XML if name.startswith("tokenizer") else SCHEDULER_CONFIG
        if overwrite or not (output_dir / name / finished_marker).is_file():
            _copy_component(checkpoint, model_index=model_index, name=name, output_dir=output_dir)


def convert_to_openvino(
    checkpoint: str | Path,
    output_dir: str | Path,
    *,
    load_t5: bool = True,
    weight_format: str = "fp16",
    lora: list[tuple[str | Path, float]] | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert an SD3 checkpoint to OpenVINO IR with `weight_format` fp32, fp16, int8 or int4; return `output_dir`.

    `lora` (`[(path, scale), ...]`) are fused into the transformer and CLIP text encoders at their scales first
    (see `fuse_loras`); the conversion record names them, so another LoRA or scale is another conversion.

    The work behind `sd3_helper.convert_sd3` for every format but int8-hybrid (see there). Refused before anything
    is written: an `output_dir` that is the source folder, inside it or around it, and (unless `overwrite=True`)
    one that holds a conversion of another source or with other options. Submodels are converted one at a time
    and freed before the next; finished ones are skipped unless `overwrite=True`; `model_index.json` is written
    last, so a folder that has it is complete. A call that fails before a submodel is finished removes the
    folders it created.
    """
    check_weight_format(weight_format)
    if weight_format not in IR_WEIGHT_FORMATS:
        raise ValueError(f"`weight_format` {weight_format!r} is made by `sd3_helper.convert_sd3`; this function writes {list(IR_WEIGHT_FORMATS)}.")
    output_dir = Path(output_dir)
    check_output_outside_source(checkpoint, output_dir)
    model_index, revision = load_model_index_and_revision(checkpoint)
    has_t5 = load_t5 and has_component(model_index, "text_encoder_3")
    lora = check_lora(lora)
    for source, _ in lora:
        read_lora_state_dict(source)  # a bad LoRA fails before anything is written
    options = {"weight_format": weight_format, "load_t5": has_t5, **({"lora": lora_options(lora)} if lora else {})}
    record = conversion_record(checkpoint, revision=revision, options=options)
    exports = [item for item in SUBMODEL_EXPORTS if has_t5 or item.name != "text_encoder_3"]
    finished = set() if overwrite else {item.name for item in exports if is_converted(output_dir / item.name)}
    refuse_other_weight_format(output_dir, sorted(finished), weight_format=weight_format)
    if not overwrite:
        refuse_other_conversion(output_dir, record)
    with removed_on_failure(output_dir), quiet_progress_bars():
        remove_stale_staging(output_dir)
        (output_dir / MODEL_INDEX).unlink(missing_ok=True)  # the folder is incomplete until the end
        write_conversion_record(output_dir, record)
        _convert_submodels(
            checkpoint, exports, model_index=model_index, weight_format=weight_format, output_dir=output_dir, finished=finished, lora=lora
        )
        _copy_components(checkpoint, model_index=model_index, has_t5=has_t5, output_dir=output_dir, overwrite=overwrite)
    if not has_t5:
        model_index.update(text_encoder_3=[None, None], tokenizer_3=[None, None])
    write_json_atomically(model_index, output_dir / MODEL_INDEX)
    return output_dir


def _convert_submodels(
    checkpoint: str | Path,
    exports: list[SubmodelExport],
    *,
    model_index: dict,
    weight_format: str,
    output_dir: Path,
    finished: set,
    lora: list[tuple[str, float]],
) -> None:
    """Convert the submodels of `exports` not in `finished`, with one progress bar over them."""
    from tqdm.auto import tqdm

    progress = tqdm(exports, desc="Converting SD3 to OpenVINO", unit="submodel")
    for item in progress:
        progress.set_postfix_str(item.description)
        if item.name in finished:
            tqdm.write(f"{item.name}: already converted, skipped")
            continue
        _convert_submodel(checkpoint, item, model_index=model_index, weight_format=weight_format, output_dir=output_dir, lora=lora)


# ----------------------------------------------------------------------------------------------------------
# The tiny autoencoder's decoder, for live previews (see sd3_previews.py)
# ----------------------------------------------------------------------------------------------------------

PREVIEW_WEIGHT_FORMATS = ("fp32", "fp16")  # the tiny decoder is a few MB: compressing it further gains nothing


@contextmanager
def diffusers_errors_only() -> Iterator[None]:
    """diffusers' log at ERROR level in the block (`AutoencoderTiny` warns of the `block_out_channels` its own config holds)."""
    from diffusers.utils import logging as diffusers_logging

    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(verbosity)


def _tiny_autoencoder_not_found(source: str | Path, error: Exception) -> FileNotFoundError:
    return FileNotFoundError(
        f"Could not load the tiny autoencoder `{source}` ({type(error).__name__}: {str(error).strip().splitlines()[0][:300]}). "
        "Pass a local folder with its `config.json` and weights, or a Hugging Face hub id such as 'madebyollin/taesd3' on "
        "a machine that can reach huggingface.co (elsewhere: `huggingface-cli download madebyollin/taesd3 --local-dir taesd3` "
        "there, then pass the folder)."
    )


def _load_tiny_autoencoder(source: str | Path, *, vae_config: dict):
    """diffusers' `AutoencoderTiny` from a hub id or a local folder, in f32, once its config is found to fit the VAE of
    `vae_config` (`check_tiny_autoencoder`: before any weights are read); a FileNotFoundError naming `source` if absent."""
    from diffusers import AutoencoderTiny

    try:
        with diffusers_errors_only():
            config = AutoencoderTiny.load_config(str(source))
    except (OSError, ValueError) as error:  # ValueError: huggingface_hub's, for a path that is no folder and no hub id
        raise _tiny_autoencoder_not_found(source, error) from error
    check_tiny_autoencoder(dict(config), vae_config=vae_config, where=f"`{source}`")
    try:
        with diffusers_errors_only():
            return AutoencoderTiny.from_pretrained(str(source), torch_dtype=torch.float32).eval()
    except OSError as error:  # a config without weights
        raise _tiny_autoencoder_not_found(source, error) from error


def convert_preview_decoder(
    tiny_autoencoder: str | Path, model_dir: str | Path, *, weight_format: str | None = None, overwrite: bool = False
) -> Path:
    """Convert the decoder of a tiny autoencoder (TAESD: diffusers' `AutoencoderTiny`, e.g. 'madebyollin/taesd3') into
    the converted SD3 folder `model_dir`, for `pipe.preview_images(latents, method="taesd")`; return its folder.

    It goes to `model_dir / "vae_preview_decoder"` (an IR taking `latent_sample`, giving `sample` in [-1, 1], and the
    autoencoder's `config.json`), written atomically. `model_index.json` does not list it, so optimum-intel and
    openvino.genai load the folder as before. `weight_format` is "fp32" or "fp16" (default: fp32 for an fp32 folder,
    else fp16). The autoencoder has to fit the folder's VAE (latent channels and scale). A folder that already holds
    this autoencoder's decoder is kept unless `overwrite=True`; one that holds another's is refused.
    """
    model_dir = Path(model_dir)
    check_sd3_index(read_model_index(model_dir), where=f"`{model_dir}`")
    vae_config = read_json(model_dir / "vae_decoder" / CONFIG_JSON, model_dir=model_dir)
    if weight_format is None:
        weight_format = "fp32" if recorded_weight_format(model_dir / "vae_decoder") == "fp32" else "fp16"
    if weight_format not in PREVIEW_WEIGHT_FORMATS:
        raise ValueError(f"`weight_format` of the preview decoder must be one of {list(PREVIEW_WEIGHT_FORMATS)} but is {weight_format!r}.")
    folder = model_dir / PREVIEW_DECODER
    if is_converted(folder) and not overwrite:
        converted_from = read_json(folder / CONFIG_JSON, model_dir=model_dir).get("_name_or_path")
        if converted_from == str(tiny_autoencoder) and recorded_weight_format(folder) == weight_format:
            return folder  # already converted
        raise ValueError(
            f"`{folder}` holds the decoder of {converted_from!r} in {recorded_weight_format(folder)}, not of "
            f"{str(tiny_autoencoder)!r} in {weight_format}. Pass `overwrite=True` to replace it."
        )
    tiny = _load_tiny_autoencoder(tiny_autoencoder, vae_config=vae_config)
    _export_submodel(_vae_decoder_spec(tiny), submodel=PREVIEW_DECODER, weight_format=weight_format, output_dir=model_dir)
    return folder
