"""Skip-layer guidance on a tiny SD3.5-shaped model: one transformer IR serves both passes (a `block_mask` state)."""

import numpy as np
import openvino as ov
import pytest
import torch

import sd3_helper
from conftest import F32

STEPS = 8
COMMON = dict(prompt="a photo of a cat", negative_prompt="blurry", guidance_scale=5.0, height=32, width=48, num_inference_steps=STEPS)


@pytest.fixture(scope="session")
def sd35(tiny_checkpoints, converted):
    """(tiny SD3.5-Medium-shaped checkpoint, its fp32 conversion without T5, our pipeline, diffusers' pipeline)."""
    checkpoint = tiny_checkpoints(family="sd3.5-medium")
    model_dir = converted("fp32", False, family="sd3.5-medium")
    ours = sd3_helper.OVStableDiffusion3Pipeline.from_pretrained(model_dir, ov_config=F32)
    reference = sd3_helper.load_sd3_pipeline(checkpoint, load_t5=False)
    for pipe in (ours, reference):
        pipe.set_progress_bar_config(disable=True)
    return checkpoint, model_dir, ours, reference


def images(pipe, **kwargs) -> np.ndarray:
    return pipe(**{**COMMON, **kwargs}, generator=torch.Generator().manual_seed(11), output_type="np").images


SLG_CASES = {
    "recommended-layers-7-8-9": dict(skip_guidance_layers=[7, 8, 9], skip_layer_guidance_start=0.01, skip_layer_guidance_stop=0.5),
    "layers-2-3-wide-window-scale-3.5": dict(skip_guidance_layers=[2, 3], skip_layer_guidance_start=0.0, skip_layer_guidance_stop=0.9, skip_layer_guidance_scale=3.5),
}


@pytest.mark.parametrize("case", SLG_CASES.values(), ids=SLG_CASES.keys())
def test_skip_layer_guidance_matches_diffusers(sd35, case):
    _, _, ours, reference = sd35
    expected, actual = images(reference, **case), images(ours, **case)
    assert np.abs(actual - expected).max() <= 1e-3  # measured: ~1e-6
    assert np.abs(actual - images(ours)).max() > 1e-3, "the extra pass changes the image"


def test_without_skip_layers_the_image_is_unchanged(sd35):
    _, _, ours, reference = sd35
    assert np.abs(images(ours) - images(reference)).max() <= 1e-3


def test_the_transformer_ir_keeps_its_inputs_and_starts_with_every_block(sd35):
    _, model_dir, ours, _ = sd35
    model = ov.Core().read_model(model_dir / "transformer" / "openvino_model.xml")
    assert [i.get_any_name() for i in model.inputs] == ["hidden_states", "encoder_hidden_states", "pooled_projections", "timestep"]
    assert [v.get_info().variable_id for v in model.get_variables()] == ["block_mask"]
    before = images(ours)
    images(ours, skip_guidance_layers=[0, 1, 2, 3], skip_layer_guidance_start=0.0, skip_layer_guidance_stop=1.0)
    np.testing.assert_array_equal(images(ours), before)  # the state is reset after each skip pass


def test_optimum_intel_and_genai_load_the_folder_and_match(sd35):
    import openvino_genai
    from optimum.intel import OVStableDiffusion3Pipeline as OptimumPipeline

    _, model_dir, ours, _ = sd35
    optimum = OptimumPipeline.from_pretrained(model_dir, ov_config=F32)
    expected = images(ours, max_sequence_length=77)
    optimum_images = optimum(**COMMON, max_sequence_length=77, generator=torch.Generator().manual_seed(11), output_type="np").images
    assert np.abs(optimum_images - expected).max() <= 1e-5
    genai = sd3_helper.make_genai_pipeline(model_dir, ov_config=F32)
    arguments = {key: value for key, value in COMMON.items() if key != "prompt"}
    genai_images = genai.generate(COMMON["prompt"], **arguments, generator=openvino_genai.TorchGenerator(11)).data
    assert np.abs(genai_images.astype(np.float32) / 255 - expected).max() <= 1 / 255 + 1e-6


BAD_SLG = {
    "layer-out-of-range": (dict(skip_guidance_layers=[10]), ValueError, "`skip_guidance_layers` [10] has indices outside 0..9: this transformer has 10 blocks"),
    "layers-not-a-list": (dict(skip_guidance_layers=7), TypeError, "`skip_guidance_layers` has to be a non-empty list of block indices"),
    "start-after-stop": (dict(skip_guidance_layers=[1], skip_layer_guidance_start=0.5, skip_layer_guidance_stop=0.2), ValueError, "0 <= start < stop <= 1"),
    "stop-above-1": (dict(skip_guidance_layers=[1], skip_layer_guidance_stop=1.5), ValueError, "but are 0.01 and 1.5"),
    "scale-nan": (dict(skip_guidance_layers=[1], skip_layer_guidance_scale=float("nan")), TypeError, "`skip_layer_guidance_scale` has to be a finite number"),
    "guidance-off": (dict(skip_guidance_layers=[1], guidance_scale=1.0), ValueError, "Skip-layer guidance needs classifier-free guidance"),
}


@pytest.mark.parametrize(("kwargs", "error", "message"), BAD_SLG.values(), ids=BAD_SLG.keys())
def test_bad_skip_layer_guidance_is_named(sd35, kwargs, error, message):
    with pytest.raises(error) as raised:
        sd35[2](**{**COMMON, "num_inference_steps": 1, **kwargs})
    assert message in str(raised.value)
