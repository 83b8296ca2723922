"""What is traced: torch wrappers that give each SD3 submodel optimum-intel's inputs and outputs, their export
specs, and the one table of submodels (`SUBMODEL_EXPORTS`) that conversion loops over."""

import types
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..core.layout import BLOCK_MASK, vae_scale_factor


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
    values in SD3 Medium, out of reach of weight compression). Each vector is [a part that depends on the column, a part that depends on the row],
    so two `pos_embed_max_size` x D/2 tables hold the same numbers. The export then builds the crop a call needs
    from them: the same values, in 2 x 192 vectors instead of 192². A checkpoint whose table is not separable (checked
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


def vae_decoder_spec(vae) -> ExportSpec:
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
    SubmodelExport("vae_decoder", "vae", vae_decoder_spec, "VAE decoder"),
    SubmodelExport("vae_encoder", "vae", _vae_encoder_spec, "VAE encoder"),
)


# ----------------------------------------------------------------------------------------------------------
# Preparing a module for export
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


def module_paths(model: torch.nn.Module) -> dict[int, str]:
    """`id(submodule) -> its dotted path in model` ("transformer_blocks.0.attn.to_q")."""
    return {id(submodule): name for name, submodule in model.named_modules()}
