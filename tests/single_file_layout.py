"""Test code only: a diffusers SD3 checkpoint written back to the original single-file layout (Stability / ComfyUI
key names), and community LoRAs (Kohya, ComfyUI) on those keys, so the tests can make the files users have.

The key layout is public (Stability's `sd3_impls.py`, diffusers' `single_file_utils.py` reads it); this is the
inverse of diffusers' `convert_sd3_transformer_checkpoint_to_diffusers` and `convert_ldm_vae_checkpoint`, written
apart from the product's own mapping (`export/single_file.py`, `runtime/lora_formats.py`) so a test compares two
independent readings. `check_round_trip` proves the inverse against diffusers' forward conversion.
"""

from pathlib import Path

import torch

TRANSFORMER_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_ENCODER_PREFIXES = {
    "text_encoder": "text_encoders.clip_l.transformer.",
    "text_encoder_2": "text_encoders.clip_g.transformer.",
    "text_encoder_3": "text_encoders.t5xxl.transformer.",
}
# diffusers module path in a block -> original module path in `joint_blocks.N`
BLOCK_MODULES = {
    "attn.to_out.0": "x_block.attn.proj",
    "attn.to_add_out": "context_block.attn.proj",
    "attn.norm_q": "x_block.attn.ln_q",
    "attn.norm_k": "x_block.attn.ln_k",
    "attn.norm_added_q": "context_block.attn.ln_q",
    "attn.norm_added_k": "context_block.attn.ln_k",
    "attn2.to_out.0": "x_block.attn2.proj",
    "attn2.norm_q": "x_block.attn2.ln_q",
    "attn2.norm_k": "x_block.attn2.ln_k",
    "norm1.linear": "x_block.adaLN_modulation.1",
    "norm1_context.linear": "context_block.adaLN_modulation.1",
    "ff.net.0.proj": "x_block.mlp.fc1",
    "ff.net.2": "x_block.mlp.fc2",
    "ff_context.net.0.proj": "context_block.mlp.fc1",
    "ff_context.net.2": "context_block.mlp.fc2",
}
FUSED_QKV = {  # original fused linear -> the three diffusers linears it holds, in order
    "x_block.attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "context_block.attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "x_block.attn2.qkv": ("attn2.to_q", "attn2.to_k", "attn2.to_v"),
}
GLOBAL_MODULES = {
    "pos_embed.proj": "x_embedder.proj",
    "time_text_embed.timestep_embedder.linear_1": "t_embedder.mlp.0",
    "time_text_embed.timestep_embedder.linear_2": "t_embedder.mlp.2",
    "time_text_embed.text_embedder.linear_1": "y_embedder.mlp.0",
    "time_text_embed.text_embedder.linear_2": "y_embedder.mlp.2",
    "context_embedder": "context_embedder",
    "proj_out": "final_layer.linear",
    "norm_out.linear": "final_layer.adaLN_modulation.1",
}


def swap_halves(tensor: torch.Tensor) -> torch.Tensor:
    """SD3's original AdaLayerNormContinuous is (shift, scale), diffusers' (scale, shift): its own inverse."""
    first, second = tensor.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def is_swapped(original_module: str, *, num_layers: int) -> bool:
    """Whether the original module's output rows are (shift, scale) in the original and swapped in diffusers."""
    return original_module in ("final_layer.adaLN_modulation.1", f"joint_blocks.{num_layers - 1}.context_block.adaLN_modulation.1")


def original_transformer_state_dict(transformer) -> dict:
    """The diffusers `SD3Transformer2DModel`'s weights under the original (bare) key names."""
    state = {key: value.detach().clone() for key, value in transformer.state_dict().items()}
    num_layers = transformer.config.num_layers
    original = {"pos_embed": state.pop("pos_embed.pos_embed")}
    for index in range(num_layers):
        block = f"transformer_blocks.{index}."
        for fused, parts in FUSED_QKV.items():
            for kind in ("weight", "bias"):
                keys = [f"{block}{part}.{kind}" for part in parts]
                if keys[0] in state:
                    original[f"joint_blocks.{index}.{fused}.{kind}"] = torch.cat([state.pop(key) for key in keys])
        for module, original_module in BLOCK_MODULES.items():
            for kind in ("weight", "bias"):
                if f"{block}{module}.{kind}" in state:
                    value = state.pop(f"{block}{module}.{kind}")
                    name = f"joint_blocks.{index}.{original_module}"
                    original[f"{name}.{kind}"] = swap_halves(value) if is_swapped(name, num_layers=num_layers) else value
    for module, original_module in GLOBAL_MODULES.items():
        for kind in ("weight", "bias"):
            value = state.pop(f"{module}.{kind}")
            original[f"{original_module}.{kind}"] = swap_halves(value) if is_swapped(original_module, num_layers=num_layers) else value
    assert not state, f"transformer keys without an original name: {sorted(state)[:5]}"
    return original


def _vae_key(key: str, *, num_up_blocks: int) -> str:
    """One diffusers AutoencoderKL key under its LDM name (inverse of diffusers' `convert_ldm_vae_checkpoint`)."""
    import re

    key = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
    key = re.sub(r"down_blocks\.(\d+)\.resnets\.", r"down.\1.block.", key)
    key = re.sub(r"down_blocks\.(\d+)\.downsamplers\.0\.", r"down.\1.downsample.", key)
    key = re.sub(r"up_blocks\.(\d+)\.resnets\.", lambda m: f"up.{num_up_blocks - 1 - int(m[1])}.block.", key)
    key = re.sub(r"up_blocks\.(\d+)\.upsamplers\.0\.", lambda m: f"up.{num_up_blocks - 1 - int(m[1])}.upsample.", key)
    key = re.sub(r"mid_block\.resnets\.(\d+)\.", lambda m: f"mid.block_{int(m[1]) + 1}.", key)
    key = key.replace("mid_block.attentions.0.", "mid.attn_1.")
    for new, old in (("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."), ("to_out.0.", "proj_out.")):
        key = key.replace(f"attn_1.{new}", f"attn_1.{old}")
    return key


def original_vae_state_dict(vae) -> dict:
    """The diffusers `AutoencoderKL`'s weights under the LDM names (attention projections as 1x1 convolutions)."""
    num_up_blocks = len(vae.config.up_block_types)
    original = {}
    for key, value in vae.state_dict().items():
        name = _vae_key(key, num_up_blocks=num_up_blocks)
        is_attention_projection = ".attn_1." in name and name.endswith("weight") and value.ndim == 2
        original[name] = value.detach().clone()[:, :, None, None] if is_attention_projection else value.detach().clone()
    return original


def single_file_state_dict(pipeline, *, text_encoders: bool = True, t5: bool = True, vae: bool = True) -> dict:
    """The pipeline's parts as one Stability-layout state dict: the transformer (`model.diffusion_model.`), the VAE
    (`first_stage_model.`), and with `text_encoders` CLIP-L / CLIP-G (and T5 with `t5`) under `text_encoders.*`."""
    state = {f"{TRANSFORMER_PREFIX}{key}": value for key, value in original_transformer_state_dict(pipeline.transformer).items()}
    if vae:
        state |= {f"{VAE_PREFIX}{key}": value for key, value in original_vae_state_dict(pipeline.vae).items()}
    names = [name for name in TEXT_ENCODER_PREFIXES if text_encoders and (t5 or name != "text_encoder_3")]
    for name in names:
        module = getattr(pipeline, name, None)
        if module is not None:
            state |= {f"{TEXT_ENCODER_PREFIXES[name]}{key}": value.detach().clone() for key, value in module.state_dict().items()}
    return state


def save_single_file(state_dict: dict, path: Path) -> Path:
    """Write `state_dict` as a `.safetensors` single file (contiguous copies, shared tensors duplicated)."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: value.contiguous().clone() for key, value in state_dict.items()}, str(path))
    return path


def save_gguf(state_dict: dict, path: Path, *, quant_type: str = "Q8_0") -> Path:
    """Write `state_dict` (original bare keys, as ComfyUI-GGUF's SD3 files) as a GGUF file: matrices whose rows fill
    whole quantization blocks in `quant_type` (Q8_0, Q4_0, ...), the rest (biases, norms, odd widths) in F32."""
    import gguf

    qtype = gguf.GGMLQuantizationType[quant_type]
    block_size = gguf.GGML_QUANT_SIZES[qtype][0]
    writer = gguf.GGUFWriter(str(path), arch="sd3")
    for name, value in state_dict.items():
        data = value.detach().float().numpy()
        if data.ndim == 2 and data.shape[-1] % block_size == 0:
            writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


CLIP_PREFIXES = {"kohya": {"text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}}


def community_lora_key(module: str, *, component: str, lora_format: str) -> str:
    """The name of an original-layout module in a Kohya or ComfyUI LoRA."""
    if lora_format == "kohya":
        prefix = "lora_unet_" if component == "transformer" else CLIP_PREFIXES["kohya"][component]
        return prefix + module.replace(".", "_")
    prefix = "diffusion_model." if component == "transformer" else TEXT_ENCODER_PREFIXES[component]
    return prefix + module


def community_lora(
    single_file: dict, targets: dict[str, list[str]], *, lora_format: str, rank: int, alpha: float | None, scale: float, seed: int
) -> tuple[dict, dict]:
    """A random LoRA on the original-layout modules `targets` (`{component: [module, ...]}`) in `lora_format`
    ("kohya" or "original"), and `single_file` with it merged at `scale` as Kohya defines it: each weight
    `W + scale * (alpha / rank) * up @ down` (alpha defaults to rank). Returns (LoRA state dict, merged single file)."""
    generator = torch.Generator().manual_seed(seed)
    lora, merged = {}, dict(single_file)
    for component, modules in targets.items():
        weight_prefix = TRANSFORMER_PREFIX if component == "transformer" else TEXT_ENCODER_PREFIXES[component]
        if not any(key.startswith(weight_prefix) for key in merged):
            weight_prefix = ""  # a transformer-only file: bare keys
        for module in modules:
            weight = merged[f"{weight_prefix}{module}.weight"]
            down = torch.randn(rank, weight.shape[1], generator=generator) * 0.3
            up = torch.randn(weight.shape[0], rank, generator=generator) * 0.3
            factor = scale * (rank if alpha is None else alpha) / rank
            merged[f"{weight_prefix}{module}.weight"] = weight + factor * (up @ down)
            name = community_lora_key(module, component=component, lora_format=lora_format)
            lora[f"{name}.lora_down.weight"], lora[f"{name}.lora_up.weight"] = down, up
            if alpha is not None:
                lora[f"{name}.alpha"] = torch.tensor(float(alpha))
    return lora, merged
