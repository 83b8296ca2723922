"""Static shapes (`reshape`), the compiled-model cache, and per-submodel devices and configs."""

import numpy as np
import pytest
import torch

import sd3_helper
import sd3_submodels
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
