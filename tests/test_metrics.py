"""Per-stage metrics of every pipeline call (`get_performance_metrics`, `runtime/metrics.py`): each stage present as
often as it runs, the stages adding up to the call's wall time, compilations attributed, memory only when asked, a
failed call leaving the last good metrics; and `PerformanceMetrics` itself (fast: no model)."""

import re
import threading
import time

import numpy as np
import pytest

from sd3_helper import OVStableDiffusion3Img2ImgPipeline, OVStableDiffusion3InpaintPipeline, OVStableDiffusion3Pipeline
from sd3_helper import PerformanceMetrics, TaylorSeerConfig
from sd3_openvino.runtime.metrics import MetricsRecorder, peak_rss

from conftest import F32

SIZE = dict(height=32, width=32, output_type="np")
ENCODERS = ["text_encoder", "text_encoder_2", "text_encoder_3"]
# The stages that run one after another cover most of a call; the rest is argument checks, tokenizing, the
# scheduler's set-up and numpy pre- and post-processing. The tiny model's inferences take a millisecond or two, so
# that rest could be most of a call on a loaded machine: the model tests add INFER_DELAY to every inference, as a
# real model's take longer, and then the stages cover at least half of each call.
MIN_COVERED = 0.5
INFER_DELAY = 0.03  # seconds
# A cache that skips steps 1 (of 4): 3 transformer calls.
STEP_CACHE = TaylorSeerConfig(cache_interval=2, disable_cache_before_step=1, disable_cache_after_step=-1)


def unique_prompt(name: str) -> str:
    """A prompt no other test encodes, so that a prompt cache another test turned on cannot skip the encoders."""
    return f"a metrics test: {name}"


def covered(metrics: PerformanceMetrics) -> float:
    """The seconds of the stages that run one after another."""
    text = sum(sum(times) for times in metrics.text_encoder_times.values())
    return text + sum(metrics.step_times) + sum(metrics.vae_encode_times) + sum(metrics.vae_decode_times)


def check_stages(metrics: PerformanceMetrics, *, steps: int, transformer_calls: int, encodes: int, compiled=()) -> None:
    assert metrics.num_steps == len(metrics.step_times) == steps
    assert len(metrics.transformer_times) == transformer_calls
    assert {name: len(times) for name, times in metrics.text_encoder_times.items()} == {name: 1 for name in ENCODERS}
    assert len(metrics.vae_decode_times) == 1 and len(metrics.vae_encode_times) == encodes
    assert metrics.preview_times == [] and list(metrics.compile_times) == list(compiled)
    compiling = sum(metrics.compile_times.values())  # inside the inference that needed it, not in its infer time
    assert MIN_COVERED * metrics.total_time <= covered(metrics) + compiling <= metrics.total_time
    assert metrics.load_time > 0 and metrics.peak_rss is None


@pytest.fixture(autouse=True)
def slower_inferences(monkeypatch):
    """Every submodel inference takes INFER_DELAY longer (see MIN_COVERED); the fast tests make none."""
    from sd3_openvino.runtime.submodels import OVSubmodel

    infer = OVSubmodel.__call__

    def delayed(self, **inputs):
        time.sleep(INFER_DELAY)
        return infer(self, **inputs)

    monkeypatch.setattr(OVSubmodel, "__call__", delayed)


@pytest.fixture(scope="module")
def pipe(converted):
    """A text-to-image pipeline with dynamic shapes (so that no call compiles for its size: see the test of "auto"
    shapes below), f32, with metrics of its own; the pipelines `from_pipe` share its compiled models."""
    pipeline = OVStableDiffusion3Pipeline.from_pretrained(converted("fp32"), ov_config=F32, shapes="dynamic")
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


# ----------------------------------------------------------------------------------------------------------
# The stages of each kind of call
# ----------------------------------------------------------------------------------------------------------


def test_text_to_image_with_guidance_records_every_stage(pipe):
    pipe(unique_prompt("guided"), num_inference_steps=3, guidance_scale=5.0, generator=1, **SIZE)
    metrics = pipe.get_performance_metrics()
    check_stages(metrics, steps=3, transformer_calls=3, encodes=0)  # guidance runs as one batch: one call a step
    assert all(infer <= step for infer, step in zip(metrics.transformer_times, metrics.step_times))


def test_step_cache_without_guidance_runs_fewer_transformer_calls_than_steps(pipe):
    pipe(unique_prompt("cached"), num_inference_steps=4, guidance_scale=1.0, taylorseer=STEP_CACHE, generator=1, **SIZE)
    check_stages(pipe.get_performance_metrics(), steps=4, transformer_calls=3, encodes=0)


def test_skip_layer_guidance_passes_count_as_transformer_calls(pipe):
    layers = dict(skip_guidance_layers=[1], skip_layer_guidance_start=0.0, skip_layer_guidance_stop=0.5)
    pipe(unique_prompt("skip layers"), num_inference_steps=4, guidance_scale=5.0, generator=1, **layers, **SIZE)
    check_stages(pipe.get_performance_metrics(), steps=4, transformer_calls=4 + 1, encodes=0)  # 0 < step < 2: step 1


def test_image_to_image_and_inpainting_record_the_vae_encoder(pipe):
    image = np.full((1, 32, 32, 3), 0.5, dtype=np.float32)
    mask = np.zeros((1, 32, 32, 1), dtype=np.float32)
    mask[:, 8:24, 8:24] = 1.0
    before = pipe.get_performance_metrics()
    img2img = OVStableDiffusion3Img2ImgPipeline.from_pipe(pipe)
    img2img(unique_prompt("img2img"), image=image, strength=0.5, num_inference_steps=4, generator=1, **SIZE)
    metrics = img2img.get_performance_metrics()  # strength 0.5: 2 of 4 steps; the VAE encoder compiles on first use
    check_stages(metrics, steps=2, transformer_calls=2, encodes=1, compiled=["vae_encoder"])
    assert metrics.load_time > pipe.load_time + metrics.compile_times["vae_encoder"]  # it read the VAE encoder too
    inpaint = OVStableDiffusion3InpaintPipeline.from_pipe(pipe)
    inpaint(unique_prompt("inpaint"), image=image, mask_image=mask, strength=1.0, num_inference_steps=2, generator=1, **SIZE)
    metrics = inpaint.get_performance_metrics()  # the image and the masked image are encoded, as in diffusers
    check_stages(metrics, steps=2, transformer_calls=2, encodes=2, compiled=["vae_encoder"])
    assert pipe.get_performance_metrics() == before  # each pipeline has its own metrics


# ----------------------------------------------------------------------------------------------------------
# Previews, compilations, memory, failures
# ----------------------------------------------------------------------------------------------------------


def test_previews_are_timed_apart_from_the_vae_decoder(ov_pipeline):
    pipe = OVStableDiffusion3Pipeline.from_pipe(ov_pipeline("fp32"))

    def preview(pipe, step, timestep, callback_kwargs):
        pipe.preview_images(callback_kwargs["latents"])  # the first one fits the linear map: VAE calls, counted here
        return {}

    pipe(unique_prompt("previews"), num_inference_steps=2, guidance_scale=1.0, callback_on_step_end=preview, generator=1, **SIZE)
    metrics = pipe.get_performance_metrics()
    assert len(metrics.preview_times) == 2 and len(metrics.vae_decode_times) == 1
    assert sum(metrics.preview_times) <= sum(metrics.step_times)  # previews run inside the steps


def test_a_compilation_during_a_call_is_attributed_to_its_submodel(pipe):
    pipe.release_text_encoder_models(("text_encoder_2",))  # compiles again on its next use
    pipe(unique_prompt("recompile"), num_inference_steps=2, guidance_scale=1.0, generator=1, **SIZE)
    metrics = pipe.get_performance_metrics()
    assert list(metrics.compile_times) == ["text_encoder_2"] and metrics.compile_times["text_encoder_2"] > 0
    assert metrics.text_encoder_times["text_encoder_2"][0] < metrics.compile_times["text_encoder_2"]  # not in the infer time
    assert covered(metrics) + metrics.compile_times["text_encoder_2"] <= metrics.total_time
    assert "compile" in metrics.summary()


def test_peak_rss_is_filled_only_when_enabled(ov_pipeline, pipe):
    other = OVStableDiffusion3Pipeline.from_pipe(ov_pipeline("fp32"))
    other.enable_memory_metrics()
    other(unique_prompt("memory"), num_inference_steps=2, generator=1, **SIZE)
    assert other.get_performance_metrics().peak_rss > 0
    assert re.search(r"peak RSS \d+\.\d\d GiB$", other.get_performance_metrics().summary())
    other.disable_memory_metrics()
    other(unique_prompt("memory"), num_inference_steps=2, generator=1, **SIZE)
    assert other.get_performance_metrics().peak_rss is None
    assert pipe.get_performance_metrics().peak_rss is None


def test_a_failed_call_leaves_the_last_good_metrics(ov_pipeline):
    pipe = OVStableDiffusion3Pipeline.from_pipe(ov_pipeline("fp32"))
    assert pipe.get_performance_metrics().num_steps == 0 and pipe.get_performance_metrics().load_time > 0  # before any call
    pipe(unique_prompt("good"), num_inference_steps=3, guidance_scale=1.0, generator=1, **SIZE)
    good = pipe.get_performance_metrics()

    def fail(pipe, step, timestep, callback_kwargs):
        raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        pipe(unique_prompt("bad"), num_inference_steps=2, callback_on_step_end=fail, generator=1, **SIZE)
    with pytest.raises(ValueError, match="`height` and `width` have to be divisible"):
        pipe(unique_prompt("bad"), num_inference_steps=2, height=33, width=32, output_type="np")
    assert pipe.get_performance_metrics() == good
    pipe.get_performance_metrics().step_times.clear()  # a copy
    assert pipe.get_performance_metrics().num_steps == 3 == len(pipe.get_performance_metrics().step_times)


def test_metrics_change_no_image(pipe):
    call = dict(prompt=unique_prompt("same"), num_inference_steps=2, generator=3, **SIZE)
    measured = OVStableDiffusion3Pipeline.from_pipe(pipe)
    measured.enable_memory_metrics()
    np.testing.assert_array_equal(measured(**call).images, pipe(**call).images)


def test_auto_shapes_record_the_compile_for_a_new_size_in_its_call(ov_pipeline):
    auto = OVStableDiffusion3Pipeline.from_pipe(ov_pipeline("fp32"))  # the default "auto" shapes
    assert auto.shapes == "auto"
    auto(unique_prompt("auto, first size"), num_inference_steps=1, guidance_scale=1.0, generator=1, **SIZE)
    auto(unique_prompt("auto, new size"), num_inference_steps=1, guidance_scale=1.0, generator=1, **{**SIZE, "width": 40})
    metrics = auto.get_performance_metrics()
    assert sorted(metrics.compile_times) == ["transformer", "vae_decoder"] and min(metrics.compile_times.values()) > 0
    assert metrics.transformer_times[0] + metrics.compile_times["transformer"] <= metrics.step_times[0]  # in the step, not the infer
    assert covered(metrics) + metrics.compile_times["vae_decoder"] <= metrics.total_time


# ----------------------------------------------------------------------------------------------------------
# `PerformanceMetrics` and the recorder (fast: no model)
# ----------------------------------------------------------------------------------------------------------


def example_metrics(**changes) -> PerformanceMetrics:
    fields = dict(
        load_time=3.0, text_encoder_times={"text_encoder": [0.1], "text_encoder_3": [0.3]}, step_times=[1.5, 1.44, 1.47],
        transformer_times=[1.4, 1.4, 1.4], vae_decode_times=[2.1], total_time=7.0, num_steps=3,
    )  # fmt: skip
    return PerformanceMetrics(**{**fields, **changes})


def test_summary_names_the_stages_that_ran():
    assert example_metrics().summary() == "3 steps in 4.41 s (1.47 s/step), text 0.400 s, decode 2.10 s, total 7.00 s"
    assert example_metrics(vae_encode_times=[0.5], preview_times=[0.01, 0.02], compile_times={"vae_encoder": 0.9}).summary() == (
        "3 steps in 4.41 s (1.47 s/step), text 0.400 s, encode 0.500 s, decode 2.10 s, previews 0.0300 s, compile 0.900 s, total 7.00 s"
    )
    assert example_metrics(step_times=[41.2 / 28] * 28, num_steps=28, total_time=44.04).summary().startswith("28 steps in 41.2 s (1.47 s/step)")
    image_prompt = example_metrics(image_encoder_times=[0.25], image_projection_times=[0.05, 0.05, 0.05]).summary()
    assert "text 0.400 s, image prompt 0.400 s, decode 2.10 s" in image_prompt  # the encoder once, the resampler each step
    assert example_metrics(total_time=44.04).summary().endswith("total 44.0 s")
    assert PerformanceMetrics().summary() == "0 steps in 0.00 s (0.00 s/step), total 0.00 s"


def test_as_dict_is_plain_data():
    data = example_metrics(peak_rss=2**30).as_dict()
    assert data["text_encoder_times"] == {"text_encoder": [0.1], "text_encoder_3": [0.3]} and data["peak_rss"] == 2**30
    assert set(data) == {
        "load_time", "compile_times", "text_encoder_times", "step_times", "transformer_times", "controlnet_times", "image_encoder_times",
        "image_projection_times", "vae_encode_times", "vae_decode_times", "preview_times", "total_time", "num_steps", "peak_rss",
    }  # fmt: skip


class FakeSubmodel:
    """What the recorder reads of an `OVSubmodel`; `run` compiles first when asked."""

    def __init__(self, name: str):
        self.name, self.compilations, self.compile_time = name, 0, None

    def run(self, recorder: MetricsRecorder, *, compiles: bool = False) -> None:
        with recorder.infer(self):
            if compiles:
                self.compilations, self.compile_time = self.compilations + 1, 0.25


def test_recorder_attributes_compilations_and_records_only_its_own_thread():
    recorder, transformer = MetricsRecorder(), FakeSubmodel("transformer")
    transformer.run(recorder)  # outside a call: nothing recorded
    with recorder.call():
        transformer.run(recorder, compiles=True)
        transformer.run(recorder)
        thread = threading.Thread(target=transformer.run, args=(recorder,))  # another thread's inference
        thread.start()
        thread.join()
        with recorder.call():  # a call inside a call adds to the outer one
            recorder.add_step(0.5)
    metrics = recorder.last
    assert metrics.compile_times == {"transformer": 0.25} and len(metrics.transformer_times) == 2
    assert metrics.transformer_times[0] < 0.25  # the compilation is not in the inference's time
    assert metrics.step_times == [0.5] and metrics.num_steps == 1 and metrics.peak_rss is None


def test_peak_rss_reads_this_process():
    assert peak_rss() > 10 * 2**20
