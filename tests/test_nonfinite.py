"""NaN and infinite values: refused by name where they enter (latents, embeddings, images, masks), and a denoising
step that turns the latents non-finite stops the call there with a FloatingPointError that says which step."""

import numpy as np
import pytest

import sd3_helper
from sd3_openvino.runtime.checks import check_finite, check_finite_latents

STEPS = 4
SIZE = dict(height=48, width=64)


def with_nan(array: np.ndarray, *, value: float = np.nan) -> np.ndarray:
    array = np.array(array, dtype=np.float32)
    array.flat[array.size // 2] = value
    return array


# -- Fast: the checks themselves ----------------------------------------------------------------------------


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_check_finite_names_the_argument(value):
    with pytest.raises(ValueError, match=r"`latents` contains NaN or infinite values \(1 of 8\); pass finite values"):
        check_finite(with_nan(np.zeros(8), value=value), name="latents")
    check_finite(np.zeros(8), name="latents")  # finite: nothing to say
    check_finite(None, name="latents")


def test_check_finite_latents_says_the_step_counted_from_1():
    with pytest.raises(FloatingPointError, match=r"at denoising step 3 of 28 \(counted from 1; `callback_on_step_end` calls it step 2\)"):
        check_finite_latents(with_nan(np.zeros(8)), step=2, num_steps=28)


# -- Slow: on the converted tiny model ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipe(ov_pipeline):
    return ov_pipeline("fp32")


@pytest.fixture(scope="module")
def inpaint(ov_pipeline):
    return sd3_helper.OVStableDiffusion3InpaintPipeline.from_pipe(ov_pipeline("fp32"))


def latents_shape(pipe) -> tuple[int, ...]:
    return (1, pipe.vae_decoder.config["latent_channels"], SIZE["height"] // pipe.vae_scale_factor, SIZE["width"] // pipe.vae_scale_factor)


def embeds(pipe) -> dict:
    positive, negative, pooled, negative_pooled = pipe.encode_prompt("a cat")
    return dict(prompt_embeds=positive, negative_prompt_embeds=negative, pooled_prompt_embeds=pooled, negative_pooled_prompt_embeds=negative_pooled)


NAN_INPUTS = ["latents", "prompt_embeds", "pooled_prompt_embeds", "negative_prompt_embeds", "negative_pooled_prompt_embeds"]


@pytest.mark.parametrize("name", NAN_INPUTS)
def test_nan_input_is_refused_by_name(pipe, name):
    arguments = embeds(pipe) if "embeds" in name else {"prompt": "a cat", "latents": np.zeros(latents_shape(pipe), np.float32)}
    arguments[name] = with_nan(arguments[name])
    with pytest.raises(ValueError, match=rf"^`{name}` contains NaN or infinite values \(1 of "):
        pipe(num_inference_steps=STEPS, **SIZE, **arguments)


def test_nan_torch_latents_are_refused_by_name(pipe):
    import torch

    latents = torch.zeros(latents_shape(pipe), dtype=torch.bfloat16)
    latents[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"`latents` contains NaN or infinite values"):
        pipe("a cat", num_inference_steps=STEPS, latents=latents, **SIZE)


def test_nan_masked_image_latents_are_refused_by_name(inpaint):
    image = np.full((*SIZE.values(), 3), 0.5, np.float32)
    mask = np.ones(tuple(SIZE.values()), np.float32)
    with pytest.raises(ValueError, match=r"`masked_image_latents` contains NaN or infinite values"):
        inpaint("a cat", image=image, mask_image=mask, masked_image_latents=with_nan(np.zeros(latents_shape(inpaint))), num_inference_steps=STEPS, **SIZE)


def test_nan_image_and_mask_are_refused_by_name(inpaint):
    image = np.full((*SIZE.values(), 3), 0.5, np.float32)
    mask = np.ones(tuple(SIZE.values()), np.float32)
    with pytest.raises(ValueError, match=r"`image` contains NaN or infinite values"):
        inpaint("a cat", image=with_nan(image), mask_image=mask, num_inference_steps=STEPS, **SIZE)
    with pytest.raises(ValueError, match=r"`mask_image` contains NaN or infinite values"):
        inpaint("a cat", image=image, mask_image=with_nan(mask, value=np.inf), num_inference_steps=STEPS, **SIZE)


def test_callback_returning_nan_latents_stops_at_that_step(pipe):
    steps_seen = []

    def callback(pipeline, step, timestep, callback_kwargs):
        steps_seen.append(step)
        return {"latents": with_nan(callback_kwargs["latents"])} if step == 1 else {}

    with pytest.raises(FloatingPointError, match=r"at denoising step 2 of 4 \(counted from 1; `callback_on_step_end` calls it step 1\)"):
        pipe("a cat", num_inference_steps=STEPS, callback_on_step_end=callback, **SIZE)
    assert steps_seen == [0, 1]  # the remaining steps did not run


def test_transformer_output_turning_nan_stops_at_that_step(pipe, monkeypatch):
    """A transformer that overflows (a LoRA scale too large, bf16) on the second step: the error names step 2 and
    lists the usual causes; steps 3 and 4 never run."""
    calls = []
    predict_noise = pipe.predict_noise

    def overflowing(latents, **kwargs):
        calls.append(len(calls))
        prediction = predict_noise(latents, **kwargs)
        return np.full_like(prediction, np.nan) if len(calls) == 2 else prediction

    monkeypatch.setattr(pipe, "predict_noise", overflowing)
    with pytest.raises(FloatingPointError) as raised:
        pipe("a cat", num_inference_steps=STEPS, output_type="np", **SIZE)
    message = str(raised.value)
    assert "at denoising step 2 of 4" in message and "remaining steps were not run" in message
    assert "adapter's scale too large" in message and '`ov_config={"INFERENCE_PRECISION_HINT": "f32"}`' in message
    assert len(calls) == 2
