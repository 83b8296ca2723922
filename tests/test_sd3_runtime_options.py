"""Static shapes (`reshape`), the compiled-model cache, and per-submodel devices and configs."""

import numpy as np
import pytest
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
    }
    for other_call in (dict(height=64), dict(prompt="a cat"), dict(guidance_scale=1.0), dict(num_images_per_prompt=2)):
        with pytest.raises(ValueError, match=r"reshaped to static shapes .* but this call asks for .*pipe.reshape"):
            static(**{**call, **other_call})


def test_reshape_rejects_a_bad_size(converted):
    with pytest.raises(ValueError, match="`height` and `width` have to be divisible by 4"):
        load(converted("fp32"), compile=False).reshape(height=30, width=32)


def test_cache_dir_is_populated_then_reused(converted, tmp_path):
    cache_dir = tmp_path / "ov-cache"
    cold = load(converted("fp32", load_t5=False), cache_dir=cache_dir)
    cached_files = sorted(path.name for path in cache_dir.iterdir())
    assert len(cached_files) >= 4 and not compiled_property(cold.transformer, "LOADED_FROM_CACHE")
    warm = load(converted("fp32", load_t5=False), cache_dir=cache_dir)
    assert all(compiled_property(submodel, "LOADED_FROM_CACHE") for submodel in warm.submodels.values())
    assert sorted(path.name for path in cache_dir.iterdir()) == cached_files


def test_per_submodel_device_and_config_are_honoured(converted):
    pipeline = load(
        converted("fp32", load_t5=False),
        device={"transformer": "AUTO", "vae_decoder": "CPU"},
        ov_config={"transformer": {"PERFORMANCE_HINT": "THROUGHPUT"}, "vae_decoder": {"INFERENCE_PRECISION_HINT": "f32"}},
    )
    assert pipeline.transformer.device == "AUTO" and pipeline.text_encoder.device == "CPU"
    assert str(compiled_property(pipeline.transformer, "PERFORMANCE_HINT")).endswith("THROUGHPUT")
    assert str(compiled_property(pipeline.vae_decoder, "INFERENCE_PRECISION_HINT")) == "<Type: 'float32'>"
    assert str(compiled_property(pipeline.text_encoder, "PERFORMANCE_HINT")).endswith("LATENCY")
    assert pipeline("a cat", num_inference_steps=1, output_type="np").images.shape == (1, 64, 64, 3)


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
