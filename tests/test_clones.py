"""`pipe.clone()`: pipelines that generate at the same time on one set of compiled models (openvino.genai's `clone()`)."""

import gc
import threading

import numpy as np
import pytest

import sd3_helper
from conftest import F32

COMMON = dict(num_inference_steps=3, height=32, width=48, output_type="np", taylorseer=None)


@pytest.fixture(scope="module")
def clone_source(converted):
    pipe = sd3_helper.OVStableDiffusion3Pipeline.from_pretrained(converted("fp32", False), ov_config=F32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def in_threads(*jobs) -> list:
    """Run each `(pipe, kwargs)` in its own thread at once; their images in order."""
    results = [None] * len(jobs)

    def run(index, pipe, kwargs):
        results[index] = pipe(**COMMON, **kwargs).images

    threads = [threading.Thread(target=run, args=(index, pipe, kwargs)) for index, (pipe, kwargs) in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_clones_share_the_compiled_models_and_generate_at_once(clone_source):
    pipe = clone_source
    jobs = [dict(prompt="a cat", generator=1), dict(prompt="a dog", negative_prompt="blurry", generator=2), dict(prompt="a car", generator=3)]
    expected = [pipe(**COMMON, **job).images for job in jobs]
    compilations = pipe.transformer.compilations
    clones = [pipe.clone(), pipe.clone()]
    assert all(clone.transformer.shared is pipe.transformer.shared for clone in clones) and pipe.transformer.shared.members == 3
    assert all(clone.transformer.request is not pipe.transformer.request for clone in clones), "each its own infer request"
    actual = in_threads(*zip([pipe, *clones], jobs))
    for got, want in zip(actual, expected):
        np.testing.assert_array_equal(got, want)
    assert pipe.transformer.compilations == compilations and all(clone.transformer.compilations == compilations for clone in clones)
    assert clones[0].get_performance_metrics().num_steps == COMMON["num_inference_steps"], "each clone has its own metrics"
    del clones
    gc.collect()
    assert pipe.transformer.shared.members == 1


def test_a_clone_compiles_a_new_size_once_for_all(clone_source):
    pipe = clone_source
    clone = pipe.clone()
    size = dict(height=48, width=32)
    clone(**{**COMMON, **size}, prompt="a cat", generator=1)
    compilations = pipe.transformer.compilations
    pipe(**{**COMMON, **size}, prompt="a cat", generator=1)  # the clone compiled this size: the pipeline reuses it
    assert pipe.transformer.compilations == compilations


def test_image_pipelines_clone_too(clone_source):
    image = np.random.default_rng(0).random((32, 48, 3), dtype=np.float32)
    img2img = sd3_helper.OVStableDiffusion3Img2ImgPipeline.from_pipe(clone_source)
    twin = img2img.clone()
    expected = img2img(**COMMON, prompt="a cat", image=image, generator=4).images
    got, again = in_threads((twin, dict(prompt="a cat", image=image, generator=4)), (img2img, dict(prompt="a cat", image=image, generator=4)))
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(again, expected)
    del twin
    gc.collect()


def test_lora_choice_is_per_clone_and_graph_changes_wait_for_the_clones(converted, tiny_checkpoint, tmp_path):
    pipe = sd3_helper.OVStableDiffusion3Pipeline.from_pretrained(converted("fp32", False), ov_config=F32)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(sd3_helper.make_tiny_lora(tiny_checkpoint, tmp_path / "lora"), adapter_name="style")
    with_lora = pipe(**COMMON, prompt="a cat", generator=1).images
    clone = pipe.clone()
    clone.set_adapters("style", adapter_weights=0.0)
    np.testing.assert_allclose(clone(**COMMON, prompt="a cat", generator=1).images, with_lora_off(pipe), atol=1e-6)
    np.testing.assert_array_equal(pipe(**COMMON, prompt="a cat", generator=1).images, with_lora)  # the source keeps its choice
    second = sd3_helper.make_tiny_lora(tiny_checkpoint, tmp_path / "lora-2", targets=("proj_out",), seed=7)
    with pytest.raises(ValueError, match=r"Loading a LoRA adapter for new layers changes the `transformer` graph, which this pipeline shares with 1 clone"):
        pipe.load_lora_weights(second, adapter_name="other")
    with pytest.raises(ValueError, match=r"Reading the IR again \(`unload_lora_weights`\) changes the `transformer` graph"):
        clone.unload_lora_weights()
    del clone
    gc.collect()
    pipe.unload_lora_weights()  # no clone left: allowed again


def with_lora_off(pipe) -> np.ndarray:
    """`pipe`'s image with its adapters off, its choice restored after."""
    pipe.disable_lora()
    try:
        return pipe(**COMMON, prompt="a cat", generator=1).images
    finally:
        pipe.enable_lora()
