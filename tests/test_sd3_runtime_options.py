"""The shapes policy (`shapes="auto"`, static shapes by `reshape`), the compiled-model cache, and per-submodel devices
and configs."""

import numpy as np
import pytest
import openvino as ov
import torch

import sd3_helper
import sd3_openvino.runtime.submodels as sd3_submodels
from conftest import F32


def load(folder, **kwargs):
    pipeline = sd3_helper.OVStableDiffusion3Pipeline.from_pretrained(folder, **kwargs)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def compiled_property(submodel, name):
    return submodel.request.get_compiled_model().get_property(name)


def test_reshape_gives_static_shapes_same_images_and_enforces_them(converted, ov_pipeline):
    static = load(converted("fp32"), ov_config=F32, compile=False).reshape(height=32, width=48, batch_size=2)
    call = dict(prompt=["a cat", "a dog"], height=32, width=48, num_inference_steps=2, output_type="np")
    images = static(**call, generator=torch.Generator().manual_seed(1)).images
    expected = ov_pipeline("fp32")(**call, generator=torch.Generator().manual_seed(1)).images
    assert np.abs(images - expected).max() <= 1e-5
    transformer_inputs = {port.get_any_name(): list(port.get_shape()) for port in static.transformer.request.get_compiled_model().inputs}
    assert transformer_inputs == {
        "hidden_states": [4, 4, 16, 24],  # 2 prompts x (negative, positive)
        "encoder_hidden_states": [4, 77 + 256, 96],
        "pooled_projections": [4, 80],
        "timestep": [4],
        "text_attention_bias": [77 + 256],  # with T5 nothing folds: a zero bias
    }
    for other_call in (dict(height=64), dict(prompt="a cat"), dict(guidance_scale=1.0), dict(num_images_per_prompt=2)):
        with pytest.raises(ValueError, match=r"reshaped to static shapes .* but this call asks for .*pipe.reshape"):
            static(**{**call, **other_call})


def test_reshape_rejects_a_bad_size(converted):
    with pytest.raises(ValueError, match="`height` and `width` have to be divisible by 4"):
        load(converted("fp32"), compile=False).reshape(height=30, width=32)


def test_cache_dir_is_populated_then_reused(converted, tmp_path):
    cache_dir = tmp_path / "ov-cache"
    call = dict(prompt="a cat", height=32, width=32, num_inference_steps=1, output_type="np")
    cold = load(converted("fp32", load_t5=False), cache_dir=cache_dir)
    cold(**call)
    cached_files = sorted(path.name for path in cache_dir.iterdir())
    assert len(cached_files) >= 4 and not compiled_property(cold.transformer, "LOADED_FROM_CACHE")
    warm = load(converted("fp32", load_t5=False), cache_dir=cache_dir)
    warm(**call)
    assert all(compiled_property(submodel, "LOADED_FROM_CACHE") for submodel in warm.submodels.values())
    assert sorted(path.name for path in cache_dir.iterdir()) == cached_files


# -- The shapes policy (`from_pretrained(shapes=...)`) -----------------------------------------------------


def compiled_inputs(submodel) -> dict[str, str]:
    """The input shapes the submodel's compiled model runs, by input name, as OpenVINO prints them ("?" for a dynamic
    dimension). A reshaped port may carry the names of the nodes after it too ("58", "view:0"): the word is the input's."""
    ports = submodel.request.get_compiled_model().inputs
    return {min(name for name in port.get_names() if name.isidentifier()): str(port.get_partial_shape()) for port in ports}


def test_auto_shapes_compile_each_call_shape_and_give_the_dynamic_images(converted):
    folder = converted("fp32", load_t5=False)
    auto, dynamic = load(folder, ov_config=F32), load(folder, ov_config=F32, shapes="dynamic")
    assert auto.shapes == "auto" and auto.transformer.request is None and auto.vae_decoder.request is None  # wait for a call
    assert compiled_inputs(auto.text_encoder) == {"input_ids": "[?,77]"}
    assert compiled_inputs(dynamic.transformer)["hidden_states"] == "[?,4,?,?]"
    for size, images in ((dict(height=32, width=48), 1), (dict(height=64, width=32), 2), (dict(height=32, width=48), 1)):
        call = dict(prompt=["a cat"] * images, num_inference_steps=2, output_type="np", **size)
        expected = dynamic(**call, generator=torch.Generator().manual_seed(4)).images
        actual = auto(**call, generator=torch.Generator().manual_seed(4)).images
        assert np.abs(actual - expected).max() <= 1e-5
        latent_size = f"{size['height'] // 2},{size['width'] // 2}"
        assert compiled_inputs(auto.transformer) == {
            "hidden_states": f"[{2 * images},4,{latent_size}]",  # guidance doubles the batch
            "encoder_hidden_states": f"[{2 * images},78,96]",  # 77 CLIP tokens and T5's zero rows folded into one
            "pooled_projections": f"[{2 * images},80]",
            "timestep": f"[{2 * images}]",
            "text_attention_bias": "[78]",
        }
        assert compiled_inputs(auto.vae_decoder) == {"latent_sample": f"[{images},4,{latent_size}]"}
    assert auto.transformer.compilations == 3 and len(auto.transformer._compiled) == 1  # one kept: the default bound


def test_auto_shapes_keep_max_compiled_shapes_and_compile_a_seen_size_from_cache(converted, tmp_path):
    folder = converted("fp32", load_t5=False)
    call = dict(prompt="a cat", num_inference_steps=1, output_type="np")
    kept = load(folder, max_compiled_shapes=2)
    for height in (32, 64, 32, 64):
        kept(**call, height=height, width=32)
    assert kept.transformer.compilations == 2 and len(kept.transformer._compiled) == 2
    cached = load(folder, cache_dir=tmp_path / "cache")
    messages = []
    cached.on_compile = messages.append
    for height in (32, 64, 32):
        cached(**call, height=height, width=32)
    assert cached.transformer.compilations == 3 and compiled_property(cached.transformer, "LOADED_FROM_CACHE")
    assert messages == [f"Compiling the transformer and vae_decoder for 32x{height}..." for height in (32, 64, 32)]
    cached(**call, height=32, width=32)
    assert len(messages) == 3  # the same shape again: nothing compiles


def test_static_shapes_policy_and_bad_policies(converted):
    folder = converted("fp32", load_t5=False)
    static = load(folder, shapes="static", compile=False)
    assert static.shapes == "static" and static._static_shape["height"] == static.size_rules.default
    with pytest.raises(ValueError, match=r"reshaped to static shapes .*`shapes=\"auto\""):
        static(prompt="a cat", height=32, width=32, num_inference_steps=1)
    with pytest.raises(ValueError, match=r"`shapes` has to be one of \('auto', 'dynamic', 'static'\) but is 'fixed'"):
        load(folder, shapes="fixed")
    with pytest.raises(TypeError, match=r"`max_compiled_shapes` has to be a positive int .* but is 0"):
        load(folder, max_compiled_shapes=0)


def test_per_submodel_device_and_config_are_honoured(converted):
    pipeline = load(
        converted("fp32", load_t5=False),
        device={"transformer": "AUTO", "vae_decoder": "CPU"},
        ov_config={"transformer": {"PERFORMANCE_HINT": "THROUGHPUT"}, "vae_decoder": {"INFERENCE_PRECISION_HINT": "f32"}},
    )
    assert pipeline.transformer.device == "AUTO" and pipeline.text_encoder.device == "CPU"
    assert pipeline("a cat", num_inference_steps=1, output_type="np").images.shape == (1, 64, 64, 3)
    assert str(compiled_property(pipeline.transformer, "PERFORMANCE_HINT")).endswith("THROUGHPUT")  # compiled by the call
    assert str(compiled_property(pipeline.vae_decoder, "INFERENCE_PRECISION_HINT")) == "<Type: 'float32'>"
    assert str(compiled_property(pipeline.text_encoder, "PERFORMANCE_HINT")).endswith("LATENCY")


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("NPU", "`device` 'NPU' for all submodels is not available on this machine"),
        ({"transformer": "GPU.1"}, "`device` 'GPU.1' for transformer is not available on this machine"),
        ({"unet": "CPU"}, "`device` names unknown submodels ['unet']"),
    ],
)
def test_unavailable_device_is_named(converted, device, message):
    with pytest.raises(ValueError) as raised:
        load(converted("fp32", load_t5=False), device=device, compile=False)
    assert message in str(raised.value)


def test_the_cpu_cache_is_weightless_and_smaller_than_a_full_one(converted, tmp_path):
    transformer_xml = converted("fp32", load_t5=False) / "transformer" / "openvino_model.xml"
    config = sd3_submodels.submodel_ov_config(None, submodel="transformer", device="CPU", cache_dir=tmp_path / "ours")
    assert config == {"CACHE_DIR": str(tmp_path / "ours"), "CACHE_MODE": "OPTIMIZE_SIZE"}
    core = ov.Core()
    core.compile_model(transformer_xml, "CPU", config)
    core.compile_model(transformer_xml, "CPU", {"CACHE_DIR": str(tmp_path / "full")})
    blob_bytes = {name: sum(path.stat().st_size for path in (tmp_path / name).iterdir()) for name in ("ours", "full")}
    assert blob_bytes["ours"] < blob_bytes["full"] - 0.5 * transformer_xml.with_suffix(".bin").stat().st_size


def test_text_encoders_stay_f32_on_gpu():
    config = sd3_submodels.submodel_ov_config(None, submodel="text_encoder_3", device="GPU", cache_dir=None)
    assert config == {"INFERENCE_PRECISION_HINT": "f32"}
    assert sd3_submodels.submodel_ov_config(None, submodel="transformer", device="GPU", cache_dir=None) == {}
    user_choice = {"INFERENCE_PRECISION_HINT": "f16"}
    assert sd3_submodels.submodel_ov_config(user_choice, submodel="text_encoder", device="GPU", cache_dir=None) == user_choice


# ----------------------------------------------------------------------------------------------------------
# Text encoders on demand: the prompt cache and releasing the compiled encoders
# ----------------------------------------------------------------------------------------------------------

CALL = dict(prompt="a cat", negative_prompt="blurry", height=32, width=32, num_inference_steps=2, output_type="np")


def count_encoder_calls(pipeline) -> list[str]:
    """A list that grows by the submodel's name each time the pipeline runs a text encoder."""
    calls, run = [], pipeline.run_submodel

    def counted(submodel, **inputs):
        if submodel.name.startswith("text_encoder"):
            calls.append(submodel.name)
        return run(submodel, **inputs)

    pipeline.run_submodel = counted
    return calls


def test_prompt_cache_encodes_a_repeated_prompt_once(converted, ov_pipeline):
    pipeline = load(converted("fp32"), ov_config=F32)
    pipeline.enable_prompt_cache(max_prompts=2)
    calls = count_encoder_calls(pipeline)
    first = pipeline(**CALL, generator=1).images
    assert calls == ["text_encoder", "text_encoder_2", "text_encoder_3"]
    second = pipeline(**CALL, generator=2).images  # a seed sweep: no encoding
    assert len(calls) == 3
    np.testing.assert_array_equal(first, ov_pipeline("fp32")(**CALL, generator=1).images)  # cached = encoded
    assert np.abs(second - first).max() > 0
    pipeline(**{**CALL, "negative_prompt": "dark"}, generator=1)  # another negative is another entry
    pipeline(**{**CALL, "max_sequence_length": 77}, generator=1)  # and another T5 length (the first entry goes)
    assert len(calls) == 9
    pipeline(**CALL, generator=1)
    assert len(calls) == 12  # least recently used, evicted
    pipeline.disable_prompt_cache()
    pipeline(**CALL, generator=1)
    assert len(calls) == 15


def test_prompt_cache_follows_text_encoder_adapters(converted, tiny_checkpoint, tmp_path):
    from sd3_openvino.export.tiny_model import TINY_TEXT_ENCODER_LORA_TARGETS

    lora = sd3_helper.make_tiny_lora(tiny_checkpoint, tmp_path / "te-lora", seed=3, targets=(), text_encoder_targets=TINY_TEXT_ENCODER_LORA_TARGETS)
    pipeline = load(converted("fp32"), ov_config=F32)
    pipeline.enable_prompt_cache()
    base = pipeline(**CALL, generator=1).images
    pipeline.load_lora_weights(str(lora), adapter_name="te")
    with_lora = pipeline(**CALL, generator=1).images
    assert np.abs(with_lora - base).max() > 4 / 255  # encoded again, with the adapter
    pipeline.disable_lora()
    np.testing.assert_array_equal(pipeline(**CALL, generator=1).images, base)


def test_released_text_encoders_compile_again_and_give_the_same_image(converted, ov_pipeline):
    pipeline = load(converted("fp32"), ov_config=F32)
    pipeline.enable_text_encoder_release()
    first = pipeline(**CALL, generator=1).images
    assert all(getattr(pipeline, name).request is None for name in ("text_encoder", "text_encoder_2", "text_encoder_3"))
    assert pipeline.transformer.request is not None and pipeline.vae_decoder.request is not None
    np.testing.assert_array_equal(pipeline(**CALL, generator=1).images, first)
    np.testing.assert_array_equal(first, ov_pipeline("fp32")(**CALL, generator=1).images)
    pipeline.enable_text_encoder_release(("text_encoder_3",))  # T5 alone, the big one
    np.testing.assert_array_equal(pipeline(**CALL, generator=1).images, first)
    assert pipeline.text_encoder_3.request is None and pipeline.text_encoder_2.request is not None
    pipeline.disable_text_encoder_release()
    pipeline(**CALL, generator=1)
    assert pipeline.text_encoder_3.request is not None
    with pytest.raises(ValueError, match=r"`text_encoders` names \['t5'\]; the text encoders are"):
        pipeline.enable_text_encoder_release(("t5",))


@pytest.mark.parametrize("max_prompts", [0, -1, 2.5, "8", True])
def test_prompt_cache_size_is_checked(ov_pipeline, max_prompts):
    with pytest.raises(ValueError, match="`max_prompts` has to be a whole number >= 1"):
        ov_pipeline("fp32").enable_prompt_cache(max_prompts=max_prompts)
