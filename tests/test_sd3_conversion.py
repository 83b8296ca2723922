"""convert_sd3: the folder layout, weight formats, idempotence, atomicity, and errors for damaged folders."""

import copy
import json
import math
import shutil

import openvino as ov
import pytest
import torch

import sd3_openvino.export.conversion as sd3_conversion
import sd3_helper

INT4_SUBMODELS = ["transformer", "text_encoder_3"]
SUBMODELS = ["transformer", "text_encoder", "text_encoder_2", "text_encoder_3", "vae_decoder", "vae_encoder"]

# optimum-intel's SD3 export names (optimum/exporters/openvino/model_configs.py), so the folder is interchangeable.
EXPECTED_INPUTS = {
    "transformer": {"hidden_states", "timestep", "encoder_hidden_states", "pooled_projections"},
    "text_encoder": {"input_ids"},
    "text_encoder_2": {"input_ids"},
    "text_encoder_3": {"input_ids"},
    "vae_decoder": {"latent_sample"},
    "vae_encoder": {"sample"},
}
EXPECTED_OUTPUTS = {
    "transformer": ["out_sample"],
    "text_encoder": ["text_embeds", "last_hidden_state"] + [f"hidden_states.{i}" for i in range(4)],
    "text_encoder_2": ["text_embeds", "last_hidden_state"] + [f"hidden_states.{i}" for i in range(4)],
    "text_encoder_3": ["last_hidden_state"],
    "vae_decoder": ["sample"],
    "vae_encoder": ["latent_parameters"],
}


def ir_size(folder, submodel):
    return sum((folder / submodel / name).stat().st_size for name in ("openvino_model.xml", "openvino_model.bin"))


def test_layout_matches_optimum_intel_and_genai(converted):
    folder = converted("fp32")
    model_index = json.loads((folder / "model_index.json").read_text())
    assert model_index["_class_name"] == "StableDiffusion3Pipeline"
    for name in ("tokenizer", "tokenizer_2", "tokenizer_3", "scheduler"):
        assert (folder / name).is_dir()
    core = ov.Core()
    for submodel in SUBMODELS:
        assert json.loads((folder / submodel / "config.json").read_text())
        model = core.read_model(folder / submodel / "openvino_model.xml")
        assert {port.get_any_name() for port in model.inputs} == EXPECTED_INPUTS[submodel]
        assert [port.get_any_name() for port in model.outputs] == EXPECTED_OUTPUTS[submodel]
        assert model.get_rt_info(sd3_conversion.RT_INFO_WEIGHT_FORMAT).astype(str) == "fp32"
    transformer = core.read_model(folder / "transformer" / "openvino_model.xml")
    assert str(transformer.input("hidden_states").get_partial_shape()) == "[?,4,?,?]"
    assert not list(folder.glob(".*")), "no staging folders are left behind"


def test_without_t5_marks_it_absent(converted):
    folder = converted("fp32", load_t5=False)
    model_index = json.loads((folder / "model_index.json").read_text())
    assert model_index["text_encoder_3"] == [None, None] and model_index["tokenizer_3"] == [None, None]
    assert not (folder / "text_encoder_3").exists() and not (folder / "tokenizer_3").exists()
    assert sd3_helper.OVStableDiffusion3Pipeline.from_pretrained(folder, compile=False).text_encoder_3 is None


def test_weight_formats_shrink_the_weights(converted):
    bin_size = lambda fmt, name: (converted(fmt) / name / "openvino_model.bin").stat().st_size  # noqa: E731
    sizes = {fmt: {name: bin_size(fmt, name) for name in SUBMODELS} for fmt in ("fp32", "fp16", "int8", "int4")}
    print("\nIR weight sizes (bytes):", json.dumps(sizes))
    for name in SUBMODELS:
        assert sizes["fp16"][name] < 0.55 * sizes["fp32"][name]
        assert sizes["int8"][name] < 0.8 * sizes["fp16"][name]  # tiny layers: per-channel scales weigh a lot
    for name in INT4_SUBMODELS:
        assert sizes["int4"][name] < sizes["int8"][name]
    core = ov.Core()
    int4_transformer = core.read_model(converted("int4") / "transformer" / "openvino_model.xml")
    constant_types = {op.get_output_element_type(0).get_type_name() for op in int4_transformer.get_ops() if op.get_type_name() == "Constant"}
    assert "i4" in constant_types and "u8" in constant_types, constant_types  # 4 bits, sensitive layers at 8
    int8_transformer = core.read_model(converted("int8") / "transformer" / "openvino_model.xml")
    large_f32 = [op.get_friendly_name() for op in int8_transformer.get_ops() if op.get_type_name() == "Constant" and op.get_output_element_type(0) == ov.Type.f32 and op.get_byte_size() >= 16 * 1024]
    assert not large_f32, f"buffers left in f32 after int8 compression: {large_f32}"


def _tiny_transformer(tiny_checkpoint):
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel.from_pretrained(tiny_checkpoint, subfolder="transformer").eval()


def test_position_table_is_stored_as_two_factors(tiny_checkpoint, converted):
    transformer = _tiny_transformer(tiny_checkpoint)
    table_elements = transformer.pos_embed.pos_embed.numel()
    factored = copy.deepcopy(transformer)
    assert sd3_conversion.factor_position_embedding(factored)
    config = transformer.config
    for height, width in [(8, 8), (16, 24), (config.pos_embed_max_size * config.patch_size, 4)]:
        inputs = {
            "hidden_states": torch.randn(2, config.in_channels, height, width),
            "encoder_hidden_states": torch.randn(2, 7, config.joint_attention_dim),
            "pooled_projections": torch.randn(2, config.pooled_projection_dim),
            "timestep": torch.tensor([3.0, 500.0]),
        }
        with torch.no_grad():
            assert torch.equal(factored(**inputs).sample, transformer(**inputs).sample), (height, width)
    for weight_format in ("fp32", "int8"):
        model = ov.Core().read_model(converted(weight_format) / "transformer" / "openvino_model.xml")
        constant_sizes = [math.prod(op.get_output_shape(0)) for op in model.get_ops() if op.get_type_name() == "Constant"]
        assert table_elements not in constant_sizes, f"{weight_format}: the full position table is still in the IR"


def test_position_table_that_is_not_separable_is_kept(tiny_checkpoint):
    transformer = _tiny_transformer(tiny_checkpoint)
    with torch.no_grad():
        transformer.pos_embed.pos_embed[0, 5, 0] += 1.0
    table = transformer.pos_embed.pos_embed.clone()
    assert not sd3_conversion.factor_position_embedding(transformer)
    assert torch.equal(transformer.pos_embed.pos_embed, table)


def test_second_conversion_skips_finished_submodels(tiny_checkpoint, converted, capsys):
    folder = converted("fp16", load_t5=True)
    mtimes = {name: (folder / name / "openvino_model.bin").stat().st_mtime_ns for name in SUBMODELS}
    sd3_helper.convert_sd3(tiny_checkpoint, folder, weight_format="fp16")
    assert {name: (folder / name / "openvino_model.bin").stat().st_mtime_ns for name in SUBMODELS} == mtimes
    assert capsys.readouterr().out.count("already converted, skipped") == len(SUBMODELS)


def test_other_weight_format_into_same_folder_needs_overwrite(tiny_checkpoint, converted):
    folder = converted("fp16")
    with pytest.raises(ValueError, match=r"was converted with weight_format='fp16', not 'int8'.*overwrite=True"):
        sd3_helper.convert_sd3(tiny_checkpoint, folder, weight_format="int8")
    assert (folder / "model_index.json").is_file(), "a refused conversion leaves the complete folder complete"


def test_unknown_weight_format(tiny_checkpoint, tmp_path):
    with pytest.raises(ValueError, match=r"`weight_format` must be one of \['fp32', 'fp16', 'int8', 'int4', 'int8-hybrid'\] but is 'int3'"):
        sd3_helper.convert_sd3(tiny_checkpoint, tmp_path / "out", weight_format="int3")
    assert not (tmp_path / "out").exists()


def test_missing_model_says_how_to_fix(tmp_path, monkeypatch):
    for loader in (
        lambda: sd3_helper.convert_sd3(tmp_path / "no-such-model", tmp_path / "out"),
        lambda: sd3_helper.load_sd3_pipeline(tmp_path / "no-such-model"),
    ):
        with pytest.raises(FileNotFoundError) as raised:
            loader()
        message = str(raised.value)
        assert "no-such-model` does not exist" in message and "local folder" in message and "hub id" in message
        assert "login" not in message and "license" not in message, "hub advice is for hub ids only"
    from diffusers import DiffusionPipeline

    def unreachable(*args, **kwargs):
        raise OSError("simulated: gated repository")

    monkeypatch.setattr(DiffusionPipeline, "load_config", unreachable)
    with pytest.raises(FileNotFoundError, match=r"Could not load the SD3 checkpoint `no-such-org/no-such-model`.*accept the license.*huggingface-cli login"):
        sd3_helper.convert_sd3("no-such-org/no-such-model", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("component", ["vae", "text_encoder_2", "scheduler/scheduler_config.json"])
def test_a_checkpoint_without_a_component_fails_before_any_work(tiny_checkpoint, tmp_path, monkeypatch, component):
    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(tiny_checkpoint, checkpoint)
    missing = checkpoint / component
    shutil.rmtree(missing) if missing.is_dir() else missing.unlink()

    def no_work(*args, **kwargs):
        raise AssertionError("a submodel was loaded before the checkpoint was checked")

    monkeypatch.setattr(sd3_conversion, "load_component", no_work)
    shown = f"{component}/" if missing.suffix != ".json" else component
    for weight_format in ("fp16", "int8-hybrid"):
        with pytest.raises(FileNotFoundError, match=rf"^`{shown}` in `{checkpoint}` is missing: its `model_index.json` names") as raised:
            sd3_helper.convert_sd3(checkpoint, tmp_path / "out", weight_format=weight_format)
        assert "login" not in str(raised.value) and "hub" not in str(raised.value)
        assert not (tmp_path / "out").exists()
    with pytest.raises(FileNotFoundError, match=rf"`{shown}` in `{checkpoint}` is missing"):
        sd3_helper.load_sd3_pipeline(checkpoint)


def test_t5_s_folder_is_needed_only_with_t5(tiny_checkpoint, tmp_path):
    from sd3_openvino.core.layout import check_local_checkpoint

    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(tiny_checkpoint, checkpoint)
    shutil.rmtree(checkpoint / "text_encoder_3")
    with pytest.raises(FileNotFoundError, match=r"`text_encoder_3/` in .* is missing"):
        check_local_checkpoint(checkpoint, load_t5=True)
    assert check_local_checkpoint(checkpoint, load_t5=False)["vae"] == ["diffusers", "AutoencoderKL"]
    assert check_local_checkpoint("stabilityai/stable-diffusion-3-medium-diffusers") is None  # a hub id: checked on download


def test_interrupted_conversion_resumes_and_loads(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    output_dir = tmp_path / "interrupted"
    real_compress = sd3_conversion.compress_weights

    def fail_on_clip_g(ov_model, *, submodel, weight_format):
        if submodel == "text_encoder_2":
            raise KeyboardInterrupt("simulated kill in the middle of the conversion")
        return real_compress(ov_model, submodel=submodel, weight_format=weight_format)

    monkeypatch.setattr(sd3_conversion, "compress_weights", fail_on_clip_g)
    with pytest.raises(KeyboardInterrupt):
        sd3_helper.convert_sd3(tiny_checkpoint, output_dir, weight_format="fp32")
    assert sd3_conversion.is_converted(output_dir / "transformer")
    assert not (output_dir / "text_encoder_2").exists()
    assert not (output_dir / "model_index.json").exists()
    with pytest.raises(FileNotFoundError, match=r"model_index.json` is missing.*re-run `convert_sd3"):
        sd3_helper.OVStableDiffusion3Pipeline.from_pretrained(output_dir)

    monkeypatch.setattr(sd3_conversion, "compress_weights", real_compress)
    capsys.readouterr()
    sd3_helper.convert_sd3(tiny_checkpoint, output_dir, weight_format="fp32")
    assert "transformer: already converted, skipped" in capsys.readouterr().out
    pipeline = sd3_helper.OVStableDiffusion3Pipeline.from_pretrained(output_dir, ov_config={"INFERENCE_PRECISION_HINT": "f32"})
    pipeline.set_progress_bar_config(disable=True)
    assert pipeline("a cat", num_inference_steps=1, output_type="np").images.shape == (1, 64, 64, 3)
    assert not list(output_dir.glob(".*"))


@pytest.fixture
def damaged_copy(converted, tmp_path):
    folder = tmp_path / "damaged"
    shutil.copytree(converted("fp32", load_t5=False), folder)
    return folder


def test_missing_submodel_names_the_file(damaged_copy):
    shutil.rmtree(damaged_copy / "vae_decoder")
    with pytest.raises(FileNotFoundError) as raised:
        sd3_helper.OVStableDiffusion3Pipeline.from_pretrained(damaged_copy)
    assert f"`{damaged_copy / 'vae_decoder' / 'openvino_model.xml'}` is missing" in str(raised.value)
    assert "re-run `convert_sd3(" in str(raised.value) and "overwrite=True" in str(raised.value)


def test_truncated_bin_names_the_file(damaged_copy):
    bin_path = damaged_copy / "transformer" / "openvino_model.bin"
    bin_path.write_bytes(bin_path.read_bytes()[: bin_path.stat().st_size // 2])
    with pytest.raises(ValueError) as raised:
        sd3_helper.OVStableDiffusion3Pipeline.from_pretrained(damaged_copy)
    assert f"`{bin_path}` is truncated" in str(raised.value) and "re-run `convert_sd3(" in str(raised.value)


def test_corrupt_xml_names_the_file(damaged_copy):
    xml_path = damaged_copy / "text_encoder" / "openvino_model.xml"
    xml_path.write_bytes(xml_path.read_bytes()[:5000])
    with pytest.raises(ValueError) as raised:
        sd3_helper.OVStableDiffusion3Pipeline.from_pretrained(damaged_copy)
    assert f"`{xml_path}` could not be read" in str(raised.value) and "re-run `convert_sd3(" in str(raised.value)
