"""Issue 27, the fast tier: named errors for files that are no SD3 single file, a missing or misplaced `config`,
and community LoRAs that cannot be read; the community-LoRA mapping on hand-made tensors (no model is built)."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import sd3_helper
from sd3_openvino.runtime.lora import read_lora_state_dict
from sd3_openvino.runtime.lora_formats import community_lora_format, convert_community_lora


def write(path: Path, tensors: dict) -> Path:
    save_file({key: value.contiguous() for key, value in tensors.items()}, str(path))
    return path


@pytest.fixture
def base(tmp_path) -> Path:
    """A folder that looks like a diffusers SD3 checkpoint to the checks made before loading (configs, no weights)."""
    import json

    folder = tmp_path / "base"
    index = {"_class_name": "StableDiffusion3Pipeline", "transformer": ["diffusers", "SD3Transformer2DModel"]}
    for name, config in (("transformer", "config.json"), ("vae", "config.json"), ("text_encoder", "config.json"),
                         ("text_encoder_2", "config.json"), ("tokenizer", "tokenizer_config.json"),
                         ("tokenizer_2", "tokenizer_config.json"), ("scheduler", "scheduler_config.json")):  # fmt: skip
        (folder / name).mkdir(parents=True)
        (folder / name / config).write_text("{}")
        index.setdefault(name, ["x", "y"])
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


def test_a_safetensors_file_without_an_mmdit_is_refused_by_name(tmp_path, base):
    path = write(tmp_path / "unet.safetensors", {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2, 2)})
    with pytest.raises(ValueError, match=r"unet.safetensors.*no SD3 / SD3.5 single-file checkpoint.*joint_blocks"):
        sd3_helper.convert_sd3(path, tmp_path / "out", config=base)
    assert not (tmp_path / "out").exists()


def test_a_single_file_of_unknown_shapes_needs_config(tmp_path):
    path = write(tmp_path / "finetune.safetensors", {"joint_blocks.0.x_block.attn.qkv.weight": torch.zeros(6, 2), "pos_embed": torch.zeros(1, 4, 2)})
    with pytest.raises(ValueError, match=r"finetune.safetensors.*single file.*Pass `config=`"):
        sd3_helper.convert_sd3(path, tmp_path / "out")


def test_without_config_the_official_base_is_inferred_and_its_absence_named(tmp_path, monkeypatch):
    """SD3 Medium's shapes (its context norm's 9216 outputs, 192 x 192 positions) name its diffusers repository, as in
    diffusers; offline, the error says what the base is for and to pass `config=`."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = write(tmp_path / "sd3_medium.safetensors", {
        "model.diffusion_model.joint_blocks.0.context_block.adaLN_modulation.1.bias": torch.zeros(9216, dtype=torch.float16),
        "model.diffusion_model.pos_embed": torch.zeros(1, 192 * 192, 1, dtype=torch.float16),
    })  # fmt: skip
    with pytest.raises(FileNotFoundError, match=r"sd3_medium.safetensors.*'stabilityai/stable-diffusion-3-medium-diffusers' \(inferred from the file's shapes.*Pass `config=`"):
        sd3_helper.convert_sd3(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_config_must_exist_and_is_refused_for_a_folder(tmp_path, base):
    path = write(tmp_path / "model.safetensors", {"joint_blocks.0.x_block.attn.qkv.weight": torch.zeros(6, 2)})
    with pytest.raises(FileNotFoundError, match="no-such-base"):
        sd3_helper.convert_sd3(path, tmp_path / "out", config=tmp_path / "no-such-base")
    with pytest.raises(ValueError, match=r"`config`.*names the base of a single-file checkpoint.*Leave `config` out"):
        sd3_helper.convert_sd3(base, tmp_path / "out", config=base)


def test_a_file_of_another_kind_names_the_accepted_sources(tmp_path):
    path = tmp_path / "model.ckpt"
    path.write_bytes(b"\0" * 16)
    with pytest.raises(FileNotFoundError, match=r"is a file.*single-file checkpoint \(`.safetensors` or a GGUF"):
        sd3_helper.convert_sd3(path, tmp_path / "out")


def test_the_output_folder_may_not_be_the_base(tmp_path, base):
    path = write(tmp_path / "model.safetensors", {"joint_blocks.0.x_block.attn.qkv.weight": torch.zeros(6, 2)})
    with pytest.raises(ValueError, match="is inside the source folder"):
        sd3_helper.convert_sd3(path, base / "converted", config=base)


# ----------------------------------------------------------------------------------------------------------
# Community LoRAs
# ----------------------------------------------------------------------------------------------------------


def kohya_layer(name: str, *, out: int, inputs: int, rank: int = 2, alpha: float | None = None) -> dict:
    generator = torch.Generator().manual_seed(0)
    layer = {f"{name}.lora_down.weight": torch.randn(rank, inputs, generator=generator), f"{name}.lora_up.weight": torch.randn(out, rank, generator=generator)}
    return layer | ({f"{name}.alpha": torch.tensor(alpha)} if alpha is not None else {})


def test_formats_are_told_from_the_keys():
    assert community_lora_format(["lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight"]) == "kohya"
    assert community_lora_format(["lora_te2_text_model_encoder_layers_0_mlp_fc1.alpha"]) == "kohya"
    assert community_lora_format(["diffusion_model.joint_blocks.3.context_block.mlp.fc1.lora_up.weight"]) == "original"
    assert community_lora_format(["transformer.transformer_blocks.0.attn.to_q.lora_A.weight"]) is None


def test_a_fused_qkv_lora_becomes_three_sharing_the_down_matrix_with_kohyas_scale():
    layer = kohya_layer("lora_unet_joint_blocks_0_x_block_attn_qkv", out=12, inputs=4, rank=2, alpha=1.0)
    converted = convert_community_lora(layer, lora_format="kohya", transformer_layers=2, source="'test'")
    down, up = layer["lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight"], layer["lora_unet_joint_blocks_0_x_block_attn_qkv.lora_up.weight"]
    for index, module in enumerate(("to_q", "to_k", "to_v")):
        prefix = f"transformer.transformer_blocks.0.attn.{module}"
        torch.testing.assert_close(converted[f"{prefix}.lora_A.weight"], down)
        torch.testing.assert_close(converted[f"{prefix}.lora_B.weight"], up[4 * index : 4 * (index + 1)] * 0.5)  # alpha / rank


def test_the_last_blocks_context_norm_swaps_halves_and_other_blocks_do_not():
    layers = kohya_layer("lora_unet_joint_blocks_0_context_block_adaLN_modulation_1", out=4, inputs=3)
    layers |= kohya_layer("lora_unet_joint_blocks_1_context_block_adaLN_modulation_1", out=4, inputs=3)
    converted = convert_community_lora(layers, lora_format="kohya", transformer_layers=2, source="'test'")
    up = layers["lora_unet_joint_blocks_1_context_block_adaLN_modulation_1.lora_up.weight"]
    torch.testing.assert_close(converted["transformer.transformer_blocks.1.norm1_context.linear.lora_B.weight"], torch.cat([up[2:], up[:2]]))
    torch.testing.assert_close(
        converted["transformer.transformer_blocks.0.norm1_context.linear.lora_B.weight"],
        layers["lora_unet_joint_blocks_0_context_block_adaLN_modulation_1.lora_up.weight"],
    )


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        (kohya_layer("lora_unet_joint_blocks_0_x_block_attn_qkvv", out=6, inputs=2), r"Kohya layer `lora_unet_joint_blocks_0_x_block_attn_qkvv`.*another model"),
        (kohya_layer("lora_te3_encoder_block_0_layer_0_SelfAttention_q", out=2, inputs=2), r"T5 encoder.*lora_te3_"),
        (kohya_layer("lora_unet_joint_blocks_7_x_block_mlp_fc1", out=2, inputs=2), r"joint_blocks.7.x_block.mlp.fc1.*2 blocks"),
        ({"diffusion_model.joint_blocks.0.x_block.attn.qkv.dora_scale": torch.ones(1, 6)}, r"DoRA"),
        ({"diffusion_model.joint_blocks.0.x_block.attn.qkv.lora_down.weight": torch.ones(2, 2)}, r"no down/up pair"),
        (kohya_layer("diffusion_model.x_embedder.proj", out=2, inputs=2), r"no linear layer of SD3's MMDiT.*Kohya"),
        ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.ones(2, 2)}, r"Kohya layer.*another model"),
        ({"unet.down_blocks.0.lora.down.weight": torch.ones(2, 2)}, r"(no weights for SD3|could not be read).*formats"),
    ],
    ids=["unknown-kohya-layer", "t5-layers", "block-beyond-the-model", "dora", "no-up", "conv-layer", "sdxl-kohya", "other-model"],
)  # fmt: skip
def test_community_loras_that_cannot_be_read_get_a_named_error(tmp_path, tensors, message):
    path = write(tmp_path / "lora.safetensors", tensors)
    with pytest.raises(ValueError, match=message):
        read_lora_state_dict(path, transformer_layers=2)


@pytest.mark.parametrize("prefix", ["diffusion_model.", "model.diffusion_model.", "transformer.", "base_model.model.", ""])
@pytest.mark.parametrize("names", [("lora_down", "lora_up"), ("lora_A", "lora_B")])
def test_comfyui_prefixes_and_names_map_to_the_same_layers(prefix, names):
    generator = torch.Generator().manual_seed(0)
    down, up = torch.randn(2, 4, generator=generator), torch.randn(6, 2, generator=generator)
    layer = {f"{prefix}joint_blocks.1.x_block.mlp.fc2.{names[0]}.weight": down, f"{prefix}joint_blocks.1.x_block.mlp.fc2.{names[1]}.weight": up}
    clip = {f"text_encoders.clip_g.transformer.text_model.encoder.layers.0.self_attn.out_proj.{names[0]}.weight": down,
            f"text_encoders.clip_g.transformer.text_model.encoder.layers.0.self_attn.out_proj.{names[1]}.weight": up}  # fmt: skip
    assert community_lora_format(layer | clip) == "original"
    converted = convert_community_lora(layer | clip, lora_format="original", transformer_layers=2, source="'test'")
    assert set(converted) == {
        "transformer.transformer_blocks.1.ff.net.2.lora_A.weight",
        "transformer.transformer_blocks.1.ff.net.2.lora_B.weight",
        "text_encoder_2.text_model.encoder.layers.0.self_attn.out_proj.lora_linear_layer.down.weight",
        "text_encoder_2.text_model.encoder.layers.0.self_attn.out_proj.lora_linear_layer.up.weight",
    }
    torch.testing.assert_close(converted["transformer.transformer_blocks.1.ff.net.2.lora_B.weight"], up)  # no alpha: scale 1
