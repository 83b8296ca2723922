"""LoRA on our export (issue 12, first part): the IR names each linear layer by its module path, so
openvino.genai's adapters find the transformer's layers on our folder and match diffusers with the same LoRA."""

import numpy as np
import pytest
import torch
from conftest import F32

import sd3_helper
from sd3_conversion import linear_node_name
from sd3_genai import genai_adapter_config
from sd3_tiny_model import TINY_LORA_TARGETS, make_tiny_lora

GENERATION = dict(prompt="a red fox in the snow", num_inference_steps=3, guidance_scale=5.0, height=64, width=64)
SEED = 0
LORA_SCALE = 0.8


@pytest.fixture(scope="module")
def tiny_lora(tmp_path_factory, tiny_checkpoint):
    return make_tiny_lora(tiny_checkpoint, tmp_path_factory.mktemp("lora") / "tiny-lora", seed=1)


def genai_image(pipeline, **overrides) -> np.ndarray:
    import openvino_genai

    kwargs = {**GENERATION, **overrides}
    image = pipeline.generate(kwargs.pop("prompt"), generator=openvino_genai.TorchGenerator(SEED), **kwargs)
    return image.data.astype(np.float32) / 255


def diffusers_image(pipeline) -> np.ndarray:
    return pipeline(**GENERATION, generator=torch.Generator().manual_seed(SEED), output_type="np").images


def test_every_linear_layer_is_named_by_its_module_path(converted, tiny_checkpoint):
    import openvino as ov
    from diffusers import SD3Transformer2DModel

    transformer = SD3Transformer2DModel.from_pretrained(str(tiny_checkpoint), subfolder="transformer")
    linear_paths = {name for name, module in transformer.named_modules() if isinstance(module, torch.nn.Linear)}
    ov_model = ov.Core().read_model(converted("fp32", True) / "transformer" / "openvino_model.xml")
    matmul_names = {op.get_friendly_name() for op in ov_model.get_ops() if op.get_type_name() == "MatMul"}
    assert {linear_node_name(path) for path in linear_paths} <= matmul_names
    assert linear_node_name("transformer_blocks.0.attn.to_q") in matmul_names  # no `.block` from the export's gating


def test_genai_adapter_on_our_folder_matches_diffusers_with_the_lora(converted, tiny_checkpoint, tiny_lora):
    import openvino_genai

    folder = converted("fp32", True)
    base = genai_image(sd3_helper.make_genai_pipeline(folder, ov_config=F32))
    pipeline = sd3_helper.make_genai_pipeline(folder, ov_config=F32, adapters=[(tiny_lora, LORA_SCALE)])
    with_lora = genai_image(pipeline)
    switched_off = genai_image(pipeline, adapters=openvino_genai.AdapterConfig())

    reference = sd3_helper.load_sd3_pipeline(tiny_checkpoint)
    reference.set_progress_bar_config(disable=True)
    reference_base = diffusers_image(reference)
    reference.load_lora_weights(str(tiny_lora), adapter_name="tiny")
    reference.set_adapters(["tiny"], [LORA_SCALE])
    reference_lora = diffusers_image(reference)

    change, reference_change = np.abs(with_lora - base).max(), np.abs(reference_lora - reference_base).max()
    difference = np.abs(with_lora - reference_lora).max()
    print(f"\nLoRA changes genai's image by {change:.4f} (diffusers' by {reference_change:.4f}); genai vs diffusers {difference:.4f}")
    assert change > 4 / 255 and reference_change > 4 / 255  # the adapter is applied, not reported unused
    assert difference <= 2 / 255  # measured 0.0039 (genai rounds to uint8); without the LoRA 0.0049
    np.testing.assert_array_equal(switched_off, base)  # generate(adapters=...) switches it off


def test_tiny_lora_targets_the_attention_layers(tiny_lora):
    from safetensors import safe_open

    with safe_open(str(tiny_lora / "pytorch_lora_weights.safetensors"), framework="np") as lora:
        keys = list(lora.keys())
    assert keys and all(key.startswith("transformer.transformer_blocks.") for key in keys)
    assert {key.split(".lora_")[0].split(".", 3)[-1] for key in keys} == set(TINY_LORA_TARGETS)


@pytest.mark.parametrize("alpha", [float("nan"), float("inf"), "1"])
def test_genai_adapter_alpha_must_be_finite(tiny_lora, alpha):
    with pytest.raises(ValueError, match="has to be a finite number"):
        genai_adapter_config([(tiny_lora, alpha)])


def test_genai_adapter_path_must_exist(tmp_path):
    with pytest.raises(FileNotFoundError, match="pytorch_lora_weights.safetensors"):
        genai_adapter_config([(tmp_path, 1.0)])


# ----------------------------------------------------------------------------------------------------------
# Fused at conversion: convert_sd3(..., lora=[(path, scale)])
# ----------------------------------------------------------------------------------------------------------

FUSED_SCALE = 0.7


@pytest.fixture(scope="module")
def fused_folder(tmp_path_factory, tiny_checkpoint, tiny_lora):
    output_dir = tmp_path_factory.mktemp("fused") / "tiny-sd3-lora-fp32"
    return sd3_helper.convert_sd3(tiny_checkpoint, output_dir, weight_format="fp32", lora=[(tiny_lora, FUSED_SCALE)])


def test_lora_fused_at_conversion_matches_diffusers_fused(fused_folder, tiny_checkpoint, tiny_lora, converted):
    ours = sd3_helper.OVStableDiffusion3Pipeline.from_pretrained(fused_folder, ov_config=F32)
    ours.set_progress_bar_config(disable=True)
    reference = sd3_helper.load_sd3_pipeline(tiny_checkpoint)
    reference.set_progress_bar_config(disable=True)
    reference.load_lora_weights(str(tiny_lora), adapter_name="tiny")
    reference.fuse_lora(lora_scale=FUSED_SCALE)
    difference = np.abs(diffusers_image(ours) - diffusers_image(reference)).max()
    base = sd3_helper.OVStableDiffusion3Pipeline.from_pretrained(converted("fp32", True), ov_config=F32)
    base.set_progress_bar_config(disable=True)
    change = np.abs(diffusers_image(ours) - diffusers_image(base)).max()
    print(f"\nfused LoRA: ours vs diffusers {difference:.2e}, change from the base model {change:.4f}")
    assert difference <= 1e-3
    assert change > 4 / 255  # the fused LoRA is in the weights


def test_conversion_record_names_the_lora_and_another_scale_is_refused(fused_folder, tiny_checkpoint, tiny_lora):
    import json

    record = json.loads((fused_folder / "openvino_conversion.json").read_text())
    (entry,) = record["options"]["lora"]
    assert entry["scale"] == FUSED_SCALE and entry["source"] == str(tiny_lora) and len(entry["sha256"]) == 64
    with pytest.raises(ValueError, match="overwrite"):
        sd3_helper.convert_sd3(tiny_checkpoint, fused_folder, weight_format="fp32", lora=[(tiny_lora, 0.5)])
    assert (fused_folder / "model_index.json").is_file()  # the refused call touched nothing


def test_not_a_lora_is_refused_before_anything_is_written(tmp_path, tiny_checkpoint):
    from safetensors.numpy import save_file

    not_a_lora = tmp_path / "weights.safetensors"
    save_file({"transformer.proj_out.weight": np.zeros((2, 2), dtype=np.float32)}, str(not_a_lora))
    with pytest.raises(ValueError, match="is not a LoRA"):
        sd3_helper.convert_sd3(tiny_checkpoint, tmp_path / "out", lora=[(not_a_lora, 1.0)])
    text_file = tmp_path / "notes.safetensors"
    text_file.write_text("not safetensors")
    with pytest.raises(ValueError, match="could not be read"):
        sd3_helper.convert_sd3(tiny_checkpoint, tmp_path / "out", lora=[(text_file, 1.0)])
    assert not (tmp_path / "out").exists()


def test_lora_for_another_model_is_refused(tmp_path, tiny_checkpoint):
    from safetensors.numpy import save_file

    unet_lora = tmp_path / "unet_lora.safetensors"
    save_file({"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": np.zeros((4, 8), dtype=np.float32)}, str(unet_lora))
    with pytest.raises(ValueError, match="another model"):
        sd3_helper.convert_sd3(tiny_checkpoint, tmp_path / "out", lora=[(unet_lora, 1.0)])


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), "0.5", True])
def test_lora_scale_must_be_a_finite_number(tmp_path, tiny_checkpoint, tiny_lora, scale):
    with pytest.raises(ValueError, match="has to be a finite number"):
        sd3_helper.convert_sd3(tiny_checkpoint, tmp_path / "out", lora=[(tiny_lora, scale)])


@pytest.mark.parametrize(
    "text, expected", [("a.safetensors", ("a.safetensors", 1.0)), ("a.safetensors:0.8", ("a.safetensors", 0.8)), ("org/lora:-0.5", ("org/lora", -0.5))]
)
def test_cli_lora_argument(text, expected):
    assert sd3_helper.lora_argument(text) == expected


def test_cli_lora_argument_names_a_bad_scale():
    import argparse

    with pytest.raises(argparse.ArgumentTypeError, match="SCALE"):
        sd3_helper.lora_argument("a.safetensors:strong")
