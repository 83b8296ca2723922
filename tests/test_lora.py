"""LoRA on our export (issue 12, first part): the IR names each linear layer by its module path, so
openvino.genai's adapters find the transformer's layers on our folder and match diffusers with the same LoRA."""

import numpy as np
import pytest
import torch
from conftest import F32

import sd3_helper
from sd3_openvino.core.layout import linear_node_name
from sd3_openvino.runtime.genai import genai_adapter_config
from sd3_openvino.export.tiny_model import TINY_LORA_TARGETS, make_tiny_lora

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


@pytest.mark.parametrize(
    ("alpha", "message"),
    [(float("nan"), "has to be a finite number"), (float("inf"), "has to be a finite number"), ("1", "has to be a finite number"),
     (1e30, "has to be between -100 and 100")],
)  # fmt: skip
def test_genai_adapter_alpha_must_be_finite_and_bounded(tiny_lora, alpha, message):
    with pytest.raises(ValueError, match=message):
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


@pytest.mark.parametrize("scale", [1e30, -101])
def test_fused_lora_scale_beyond_100_is_refused_before_anything_is_written(tmp_path, tiny_checkpoint, tiny_lora, scale):
    with pytest.raises(ValueError, match="adapter weights beyond \\+-100 overflow the model's activations"):
        sd3_helper.convert_sd3(tiny_checkpoint, tmp_path / "out", lora=[(tiny_lora, scale)])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "text, expected", [("a.safetensors", ("a.safetensors", 1.0)), ("a.safetensors:0.8", ("a.safetensors", 0.8)), ("org/lora:-0.5", ("org/lora", -0.5))]
)
def test_cli_lora_argument(text, expected):
    assert sd3_helper.lora_argument(text) == expected


def test_cli_lora_argument_names_a_bad_scale():
    import argparse

    with pytest.raises(argparse.ArgumentTypeError, match="SCALE"):
        sd3_helper.lora_argument("a.safetensors:strong")


# ----------------------------------------------------------------------------------------------------------
# Run time: load_lora_weights / set_adapters / disable_lora / enable_lora / unload_lora_weights
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def second_lora(tmp_path_factory, tiny_checkpoint):
    """Another rank and alpha (scaling 2), other layers, and layers in both CLIP text encoders."""
    from sd3_openvino.export.tiny_model import TINY_TEXT_ENCODER_LORA_TARGETS

    return make_tiny_lora(
        tiny_checkpoint,
        tmp_path_factory.mktemp("lora") / "tiny-lora-2",
        seed=2,
        rank=2,
        alpha=4,
        targets=("attn.to_q", "attn.to_v", "ff.net.2"),
        text_encoder_targets=TINY_TEXT_ENCODER_LORA_TARGETS,
    )


@pytest.fixture
def runtime_pipeline(converted):
    """A pipeline of its own: adapters change its submodels' graphs."""
    pipeline = sd3_helper.OVStableDiffusion3Pipeline.from_pretrained(converted("fp32", True), ov_config=F32)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def test_runtime_adapters_match_diffusers_at_every_step(runtime_pipeline, tiny_checkpoint, tiny_lora, second_lora):
    from sd3_openvino.runtime.lora import lora_module_paths

    ours, reference = runtime_pipeline, sd3_helper.load_sd3_pipeline(tiny_checkpoint)
    reference.set_progress_bar_config(disable=True)
    base = diffusers_image(ours)
    steps = [
        ("load a", lambda pipe: pipe.load_lora_weights(str(tiny_lora), adapter_name="a")),
        ("a at 0.8", lambda pipe: pipe.set_adapters(["a"], [LORA_SCALE])),
        ("load b (text encoders too)", lambda pipe: pipe.load_lora_weights(str(second_lora), adapter_name="b")),
        ("b at -0.6", lambda pipe: pipe.set_adapters("b", -0.6)),
        ("a and b", lambda pipe: pipe.set_adapters(["a", "b"], adapter_weights=[0.5, 1.3])),
        ("per component", lambda pipe: pipe.set_adapters(["b"], [{"transformer": 0.4, "text_encoder": 1.5}])),
        ("disabled", lambda pipe: pipe.disable_lora()),
        ("enabled", lambda pipe: pipe.enable_lora()),
        ("unloaded", lambda pipe: pipe.unload_lora_weights()),
    ]
    images = {}
    for label, step in steps:
        step(ours)
        step(reference)
        images[label] = diffusers_image(ours)
        difference = np.abs(images[label] - diffusers_image(reference)).max()
        print(f"\n{label}: ours vs diffusers {difference:.2e}, change from the base image {np.abs(images[label] - base).max():.4f}")
        assert difference <= 1e-3, label
        assert ours.get_active_adapters() == reference.get_active_adapters(), label
        assert ours.get_list_adapters() == reference.get_list_adapters(), label
    for label in ("load a", "a at 0.8", "load b (text encoders too)", "b at -0.6", "a and b", "per component", "enabled"):
        assert np.abs(images[label] - base).max() > 4 / 255, label  # each choice is applied
    np.testing.assert_array_equal(images["disabled"], base)
    np.testing.assert_array_equal(images["unloaded"], base)
    assert not lora_module_paths(ours.transformer.model) and not lora_module_paths(ours.text_encoder.model)  # the original graphs


def test_switching_adapters_compiles_nothing(runtime_pipeline, tiny_lora, second_lora):
    runtime_pipeline.load_lora_weights(str(tiny_lora), adapter_name="a")
    runtime_pipeline.load_lora_weights(str(second_lora), adapter_name="b")
    diffusers_image(runtime_pipeline)
    requests = {name: id(submodel.request) for name, submodel in runtime_pipeline.submodels.items()}
    runtime_pipeline.set_adapters(["a", "b"], [0.3, 0.9])
    runtime_pipeline.disable_lora()
    runtime_pipeline.enable_lora()
    runtime_pipeline.delete_adapters("a")
    assert runtime_pipeline.get_list_adapters() == {"transformer": ["b"], "text_encoder": ["b"], "text_encoder_2": ["b"]}
    assert {name: id(submodel.request) for name, submodel in runtime_pipeline.submodels.items()} == requests


def test_adapters_survive_reshape_and_are_shared_with_from_pipe(runtime_pipeline, tiny_lora):
    from sd3_openvino.runtime.image_pipelines import OVStableDiffusion3Img2ImgPipeline

    runtime_pipeline.load_lora_weights(str(tiny_lora), adapter_name="a")
    with_lora = diffusers_image(runtime_pipeline)
    runtime_pipeline.reshape(height=GENERATION["height"], width=GENERATION["width"], max_sequence_length=256)
    np.testing.assert_allclose(diffusers_image(runtime_pipeline), with_lora, atol=1e-5)  # compiled again, states set again
    image_to_image = OVStableDiffusion3Img2ImgPipeline.from_pipe(runtime_pipeline)
    assert image_to_image.get_active_adapters() == ["a"]
    image_to_image.disable_lora()
    assert runtime_pipeline.lora.enabled is False  # one set of adapters for the shared models


@pytest.mark.parametrize("weight_format", ["int8", "int8-hybrid"])
def test_runtime_adapter_on_compressed_and_quantized_folders(weight_format, converted, int8_vae_folder, tiny_lora):
    folder = converted("int8", True) if weight_format == "int8" else int8_vae_folder
    pipeline = sd3_helper.OVStableDiffusion3Pipeline.from_pretrained(folder, ov_config=F32)
    pipeline.set_progress_bar_config(disable=True)
    base = diffusers_image(pipeline)
    pipeline.load_lora_weights(str(tiny_lora))
    assert pipeline.get_active_adapters() == ["default_0"]
    assert np.abs(diffusers_image(pipeline) - base).max() > 4 / 255  # the layers kept their names through NNCF
    pipeline.unload_lora_weights()
    np.testing.assert_array_equal(diffusers_image(pipeline), base)


def test_runtime_adapter_bad_input(runtime_pipeline, tiny_lora, tmp_path):
    from safetensors.numpy import save_file

    runtime_pipeline.load_lora_weights(str(tiny_lora), adapter_name="a")
    with pytest.raises(ValueError, match="'a' is already in use"):
        runtime_pipeline.load_lora_weights(str(tiny_lora), adapter_name="a")
    with pytest.raises(ValueError, match=r"Adapter 'nope' is not loaded; loaded adapters: \['a'\]"):
        runtime_pipeline.set_adapters(["nope"])
    with pytest.raises(ValueError, match="has 2 entries for 1 `adapter_names`"):
        runtime_pipeline.set_adapters(["a"], [0.5, 0.5])
    for weight in (float("nan"), float("inf"), "0.5", True):
        with pytest.raises(ValueError, match="has to be a finite number"):
            runtime_pipeline.set_adapters(["a"], [weight])
    with pytest.raises(ValueError, match="names \\['unet'\\]"):
        runtime_pipeline.set_adapters(["a"], [{"unet": 1.0}])
    with pytest.raises(TypeError, match="`adapter_names` has to be a string or a list of strings"):
        runtime_pipeline.set_adapters(3)

    not_a_lora, other_model, no_layer = tmp_path / "weights.safetensors", tmp_path / "unet.safetensors", tmp_path / "nowhere.safetensors"
    save_file({"transformer.proj_out.weight": np.zeros((2, 2), dtype=np.float32)}, str(not_a_lora))
    save_file({"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": np.zeros((4, 8), dtype=np.float32)}, str(other_model))
    save_file(
        {f"transformer.no_such_block.to_q.lora_{part}.weight": np.zeros(shape, dtype=np.float32) for part, shape in (("A", (4, 32)), ("B", (32, 4)))},
        str(no_layer),
    )
    unreachable = "sd3-helper-tests/no-such-lora"  # a hub id: no network here, no such repository elsewhere
    for path, message in (
        (not_a_lora, "is not a LoRA"),
        (other_model, "another model"),
        (no_layer, "does not fit"),
        (unreachable, "could not be read"),
    ):
        with pytest.raises(ValueError, match=message):
            runtime_pipeline.load_lora_weights(str(path), adapter_name="bad")
    with pytest.raises(FileNotFoundError, match="`pretrained_model_name_or_path_or_dict` '.*missing.safetensors' does not exist"):
        runtime_pipeline.load_lora_weights(str(tmp_path / "missing.safetensors"), adapter_name="bad")
    with pytest.raises(TypeError, match="`pretrained_model_name_or_path_or_dict` has to be"):
        runtime_pipeline.load_lora_weights(5, adapter_name="bad")
    with pytest.raises(ValueError, match="adapter weights beyond"):
        runtime_pipeline.set_adapters(["a"], [1e30])
    assert runtime_pipeline.get_list_adapters() == {"transformer": ["a"]}  # a failed load changes nothing


def test_a_folder_without_named_layers_is_refused_with_the_fix(tmp_path):
    import openvino as ov
    from openvino import opset13 as ops

    from sd3_openvino.runtime.lora import add_lora_states

    inputs = ops.parameter([1, 4], np.float32, name="x")
    matmul = ops.matmul(inputs, ops.constant(np.ones((3, 4), np.float32)), False, True)
    matmul.set_friendly_name("linear_3/aten.linear.default/MatMul")  # torch.export's name, before module paths
    model = ov.Model([ops.result(matmul)], [inputs])
    with pytest.raises(ValueError, match="Convert the folder again"):
        add_lora_states(model, ["transformer_blocks.0.attn.to_q"], where=tmp_path / "transformer")


def test_runtime_adapter_in_diffusers_older_key_format_matches_diffusers(runtime_pipeline, tiny_checkpoint, tiny_lora, tmp_path):
    """`lora.down` / `lora.up` keys (diffusers' format before peft) are normalised as diffusers' loader does."""
    from safetensors.numpy import load_file, save_file

    weights = load_file(str(tiny_lora / "pytorch_lora_weights.safetensors"))
    older = {key.replace("lora_A", "lora.down").replace("lora_B", "lora.up"): value for key, value in weights.items()}
    save_file(older, str(tmp_path / "older.safetensors"))
    runtime_pipeline.load_lora_weights(str(tmp_path / "older.safetensors"), adapter_name="older")
    reference = sd3_helper.load_sd3_pipeline(tiny_checkpoint)
    reference.set_progress_bar_config(disable=True)
    reference.load_lora_weights(str(tmp_path / "older.safetensors"), adapter_name="older")
    ours, theirs = diffusers_image(runtime_pipeline), diffusers_image(reference)
    assert np.abs(ours - theirs).max() <= 1e-3
    runtime_pipeline.unload_lora_weights()
    assert np.abs(ours - diffusers_image(runtime_pipeline)).max() > 4 / 255


def test_adapters_switched_off_and_on_at_the_cpu_default_precision(converted, tiny_lora, second_lora):
    """bf16 on CPUs with AVX-512 bf16 or AMX: an OpenVINO LoRA state emptied after use broke the next image."""
    pipeline = sd3_helper.OVStableDiffusion3Pipeline.from_pretrained(converted("fp32", True))
    pipeline.set_progress_bar_config(disable=True)
    base = diffusers_image(pipeline)
    pipeline.load_lora_weights(str(tiny_lora), adapter_name="a")
    with_lora = diffusers_image(pipeline)
    pipeline.disable_lora()
    disabled = diffusers_image(pipeline)
    assert np.abs(disabled - base).max() <= 0.05  # bf16 rounds the graph with LoRA nodes differently (exact in f32)
    pipeline.enable_lora()
    np.testing.assert_allclose(diffusers_image(pipeline), with_lora, atol=1e-6)
    pipeline.load_lora_weights(str(second_lora), adapter_name="b")  # new LoRA layers: compiled again
    pipeline.set_adapters([])
    pipeline.set_adapters(["a"])
    again = diffusers_image(pipeline)
    assert np.isfinite(again).all() and np.abs(again - with_lora).max() <= 0.05  # zeros on b's layers; bf16 rounding
    assert np.isfinite(with_lora).all() and np.abs(with_lora - base).max() > 4 / 255
