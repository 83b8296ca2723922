"""Community LoRA formats for SD3 / SD3.5, read into diffusers' peft keys: Kohya (`lora_unet_joint_blocks_0_x_block_
attn_qkv.lora_down.weight`, `lora_te1_...`, `lora_te2_...`) and ComfyUI / original-key LoRAs (`diffusion_model.joint_
blocks.0.x_block.attn.qkv.lora_down.weight`, `text_encoders.clip_l.transformer....`).

diffusers 0.39 has no converter for SD3's community formats (its Kohya converters are for other models), so the
mapping is here. These LoRAs target the original MMDiT's layers: one fused `qkv` linear per attention, whose LoRA
becomes three (`to_q`, `to_k`, `to_v`) sharing the down matrix, each with its third of the up matrix; and the
original (shift, scale) order of the last block's context norm and of the final norm, which diffusers stores as
(scale, shift), so those up matrices swap halves as diffusers' single-file loader swaps the weights. Kohya's scale,
`alpha / rank` (1 without an alpha), is folded into the up matrix, so the result is a plain peft LoRA of scaling 1.

`community_lora_format` tells the format from the keys; `convert_community_lora` returns the state dict diffusers'
SD3 loaders read (`transformer.<module path>.lora_A.weight`; text encoders in diffusers' `lora_linear_layer` keys,
the only ones its text-encoder loader reads for every CLIP linear), which `lora.read_lora_state_dict` then reads.
"""

import re

LORA_FORMATS = (
    "diffusers / peft (`transformer.transformer_blocks.0.attn.to_q.lora_A.weight`)",
    "Kohya (`lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight`, `lora_te1_...`, `lora_te2_...`)",
    "ComfyUI / original keys (`diffusion_model.joint_blocks.0.x_block.attn.qkv.lora_down.weight`)",
)
KOHYA_PREFIXES = {"lora_unet_": "transformer", "lora_te1_": "text_encoder", "lora_te2_": "text_encoder_2", "lora_te3_": "text_encoder_3"}
ORIGINAL_PREFIXES = {  # ComfyUI and original-key LoRAs: key prefix -> component (longest first)
    "text_encoders.clip_l.transformer.": "text_encoder",
    "text_encoders.clip_g.transformer.": "text_encoder_2",
    "text_encoders.t5xxl.transformer.": "text_encoder_3",
    "base_model.model.": "transformer",
    "model.diffusion_model.": "transformer",
    "diffusion_model.": "transformer",
    "transformer.": "transformer",
    "": "transformer",
}
# Original MMDiT module (in `joint_blocks.N`) -> the diffusers modules it holds (a fused qkv holds three).
BLOCK_MODULES = {
    "x_block.attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "context_block.attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "x_block.attn2.qkv": ("attn2.to_q", "attn2.to_k", "attn2.to_v"),
    "x_block.attn.proj": ("attn.to_out.0",),
    "context_block.attn.proj": ("attn.to_add_out",),
    "x_block.attn2.proj": ("attn2.to_out.0",),
    "x_block.mlp.fc1": ("ff.net.0.proj",),
    "x_block.mlp.fc2": ("ff.net.2",),
    "context_block.mlp.fc1": ("ff_context.net.0.proj",),
    "context_block.mlp.fc2": ("ff_context.net.2",),
    "x_block.adaLN_modulation.1": ("norm1.linear",),
    "context_block.adaLN_modulation.1": ("norm1_context.linear",),
}
GLOBAL_MODULES = {
    "context_embedder": "context_embedder",
    "t_embedder.mlp.0": "time_text_embed.timestep_embedder.linear_1",
    "t_embedder.mlp.2": "time_text_embed.timestep_embedder.linear_2",
    "y_embedder.mlp.0": "time_text_embed.text_embedder.linear_1",
    "y_embedder.mlp.2": "time_text_embed.text_embedder.linear_2",
    "final_layer.linear": "proj_out",
    "final_layer.adaLN_modulation.1": "norm_out.linear",
}
SWAPPED_GLOBALS = ("final_layer.adaLN_modulation.1",)  # (shift, scale) in the original, (scale, shift) in diffusers
BLOCK_MODULE = re.compile(r"joint_blocks\.(\d+)\.(.+)")
KOHYA_BLOCK = re.compile(r"joint_blocks_(\d+)_(x_block|context_block)_(attn2|attn|mlp|adaLN_modulation)_(qkv|proj|fc1|fc2|1)")
KOHYA_CLIP = re.compile(r"text_model_encoder_layers_(\d+)_(self_attn|mlp)_(q_proj|k_proj|v_proj|out_proj|fc1|fc2)")
DOWN_UP = {"lora_down.weight": "down", "lora_up.weight": "up", "lora_A.weight": "down", "lora_B.weight": "up", "alpha": "alpha"}


def community_lora_format(keys) -> str | None:
    """"kohya", "original" (ComfyUI / original keys) or None (diffusers / peft, or not an SD3 LoRA) for a LoRA's keys."""
    keys = list(keys)
    if any(key.startswith(tuple(KOHYA_PREFIXES)) for key in keys):
        return "kohya"
    if any("joint_blocks." in key or key.startswith(("text_encoders.", "diffusion_model.", "model.diffusion_model.")) for key in keys):
        return "original"
    return None


def split_key(key: str) -> tuple[str, str] | None:
    """A LoRA key as (module name, part: "down", "up" or "alpha"); None for a key of another kind."""
    for suffix, part in DOWN_UP.items():
        if key.endswith(f".{suffix}"):
            return key[: -len(suffix) - 1], part
    return None


def kohya_module(name: str, *, source: str) -> tuple[str, str]:
    """A Kohya module name as (component, original module path with dots)."""
    prefix = next(prefix for prefix in KOHYA_PREFIXES if name.startswith(prefix))
    component, rest = KOHYA_PREFIXES[prefix], name[len(prefix) :]
    if component == "text_encoder_3":
        return component, rest  # refused by `group_layers`, with the reason
    if component == "transformer":
        block = KOHYA_BLOCK.fullmatch(rest)
        if block:
            return component, f"joint_blocks.{block[1]}.{block[2]}.{block[3]}.{block[4]}"
        underscored = {original.replace(".", "_"): original for original in GLOBAL_MODULES}
        if rest in underscored:
            return component, underscored[rest]
    else:
        layer = KOHYA_CLIP.fullmatch(rest)
        if layer:
            return component, f"text_model.encoder.layers.{layer[1]}.{layer[2]}.{layer[3]}"
        if rest == "text_projection":
            return component, rest
    raise ValueError(f"LoRA {source} has a Kohya layer `{name}` that is no layer of SD3's MMDiT or CLIP encoders. Is it a LoRA for another model?")


def original_module(name: str) -> tuple[str, str]:
    """A ComfyUI / original-key module name as (component, original module path)."""
    prefix = next(prefix for prefix in ORIGINAL_PREFIXES if name.startswith(prefix))
    return ORIGINAL_PREFIXES[prefix], name[len(prefix) :]


def diffusers_modules(path: str, *, transformer_layers: int, source: str) -> tuple[tuple[str, ...], bool]:
    """The diffusers module paths an original transformer module holds, and whether its output halves swap."""
    if path in GLOBAL_MODULES:
        return (GLOBAL_MODULES[path],), path in SWAPPED_GLOBALS
    block = BLOCK_MODULE.fullmatch(path)
    if block and block[2] in BLOCK_MODULES:
        index = int(block[1])
        if index >= transformer_layers:
            raise ValueError(f"LoRA {source} adapts `{path}`, but the transformer has {transformer_layers} blocks (0-{transformer_layers - 1}). Is it for another model?")
        swapped = block[2] == "context_block.adaLN_modulation.1" and index == transformer_layers - 1
        return tuple(f"transformer_blocks.{index}.{module}" for module in BLOCK_MODULES[block[2]]), swapped
    raise ValueError(f"LoRA {source} adapts `{path}`, which is no linear layer of SD3's MMDiT (its formats: {'; '.join(LORA_FORMATS)}).")


def group_layers(state_dict: dict, *, lora_format: str, source: str) -> dict[tuple[str, str], dict]:
    """`{(component, original module path): {"down", "up", "alpha"}}` of a community LoRA's tensors."""
    layers = {}
    for key, value in state_dict.items():
        parts = split_key(key)
        if parts is None:
            kind = "DoRA (`dora_scale`)" if key.endswith("dora_scale") else "a tensor of no LoRA layer"
            raise ValueError(f"LoRA {source} holds `{key}`, {kind}, which is not supported; its formats: {'; '.join(LORA_FORMATS)}.")
        name, part = parts
        module = kohya_module(name, source=source) if lora_format == "kohya" else original_module(name)
        layers.setdefault(module, {})[part] = value
    for (component, path), tensors in layers.items():
        if component == "text_encoder_3":
            raise ValueError(
                f"LoRA {source} adapts the T5 encoder (`{path}`), which diffusers' SD3 LoRA loader and this runtime do not "
                "adapt. Use a LoRA without T5 layers (remove its `lora_te3_` / `t5xxl` tensors)."
            )
        if "down" not in tensors or "up" not in tensors:
            raise ValueError(f"LoRA {source} has no down/up pair for `{path}` (it holds {sorted(tensors)}).")
    return layers


def convert_community_lora(state_dict: dict, *, lora_format: str, transformer_layers: int | None, source: str) -> dict:
    """A Kohya or ComfyUI / original-key SD3 LoRA (`state_dict`: torch tensors) as a peft state dict with scaling 1:
    `alpha / rank` folded into the up matrix, fused qkv LoRAs split, swapped norms' up matrices swapped. The
    transformer's block count (`transformer_layers`) tells which block is the last (a ValueError if it is needed
    and None)."""
    import torch

    converted = {}
    for (component, path), tensors in group_layers(state_dict, lora_format=lora_format, source=source).items():
        down, up = tensors["down"].float(), tensors["up"].float()
        rank = down.shape[0]
        scale = float(tensors["alpha"]) / rank if "alpha" in tensors else 1.0
        up = up.reshape(up.shape[0], rank) * scale
        down = down.reshape(rank, -1)
        if component == "transformer":
            if transformer_layers is None:
                raise ValueError(f"LoRA {source}: reading its original-key layers needs the transformer's block count.")
            modules, swapped = diffusers_modules(path, transformer_layers=transformer_layers, source=source)
        else:
            modules, swapped = (path,), False
        if swapped:
            first, second = up.chunk(2, dim=0)
            up = torch.cat([second, first], dim=0)
        names = ("lora_A", "lora_B") if component == "transformer" else ("lora_linear_layer.down", "lora_linear_layer.up")
        for module, part in zip(modules, up.chunk(len(modules), dim=0)):
            converted[f"{component}.{module}.{names[0]}.weight"] = down.clone()
            converted[f"{component}.{module}.{names[1]}.weight"] = part.contiguous()
    return converted
