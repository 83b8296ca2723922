"""One folder for every OpenVINO runtime: our export in optimum-intel and openvino.genai, optimum-cli's in ours."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import openvino as ov
import pytest
import torch

import sd3_helper
from conftest import F32

PROMPT = dict(prompt="a photo of a cat", negative_prompt="blurry", guidance_scale=5.0, num_inference_steps=4)
SEED = 42


def ours(ov_pipeline, load_t5: bool, **overrides) -> np.ndarray:
    kwargs = {**PROMPT, **overrides}
    return ov_pipeline("fp32", load_t5)(**kwargs, generator=torch.Generator().manual_seed(SEED), output_type="np").images


def genai_image(pipeline, **overrides) -> np.ndarray:
    import openvino_genai

    kwargs = {**PROMPT, "height": 64, "width": 64, **overrides}
    image = pipeline.generate(kwargs.pop("prompt"), generator=openvino_genai.TorchGenerator(SEED), **kwargs)
    return image.data.astype(np.float32) / 255  # genai returns uint8 (B, H, W, 3)


@pytest.mark.parametrize("load_t5", [True, False], ids=["t5", "no-t5"])
def test_optimum_intel_loads_our_export_and_matches(converted, ov_pipeline, load_t5):
    from optimum.intel import OVStableDiffusion3Pipeline as OptimumPipeline

    pipeline = OptimumPipeline.from_pretrained(converted("fp32", load_t5), ov_config=F32)
    images = pipeline(**PROMPT, height=64, width=64, generator=torch.Generator().manual_seed(SEED), output_type="np").images
    assert np.abs(images - ours(ov_pipeline, load_t5)).max() <= 1e-3  # measured here: 0.0


def test_genai_loads_our_export_with_t5_within_one_level(converted, ov_pipeline):
    pipeline = sd3_helper.make_genai_pipeline(converted("fp32", True), ov_config=F32)
    difference = np.abs(genai_image(pipeline) - ours(ov_pipeline, True))
    print(f"\ngenai vs ours, T5: max {difference.max():.5f}, mean {difference.mean():.5f}")
    assert difference.max() <= 1 / 255 + 1e-6  # uint8 rounding only


def test_genai_without_t5_pads_the_t5_part_to_clip_length(converted, ov_pipeline):
    """Without T5, diffusers (and ours) pad the T5 part of the text tokens with zeros to `max_sequence_length`
    (256 by default); openvino.genai pads it to CLIP's 77 positions. Ours given `max_sequence_length=77` does
    the same work and makes genai's image; at the default the images differ (measured: max 0.025)."""
    import json

    folder = converted("fp32", False)
    clip_positions = json.loads((folder / "text_encoder" / "config.json").read_text())["max_position_embeddings"]
    genai = genai_image(sd3_helper.make_genai_pipeline(folder, ov_config=F32))
    same_tokens = np.abs(genai - ours(ov_pipeline, False, max_sequence_length=clip_positions))
    diffusers_tokens = np.abs(genai - ours(ov_pipeline, False))
    print(f"\ngenai vs ours, no T5: max {same_tokens.max():.5f} at {clip_positions} T5 positions, {diffusers_tokens.max():.5f} at 256")
    assert same_tokens.max() <= 1 / 255 + 1e-6  # uint8 rounding only
    assert diffusers_tokens.max() > 2 / 255


def test_make_genai_pipeline_uses_our_defaults(converted):
    import openvino_genai

    pipeline = sd3_helper.make_genai_pipeline(converted("fp32", True))
    assert isinstance(pipeline, openvino_genai.Text2ImagePipeline)
    config = pipeline.get_generation_config()
    assert (config.num_inference_steps, config.guidance_scale, config.max_sequence_length) == (28, 7.0, 256)
    assert (config.height, config.width) == (64, 64)  # sample_size 32 x vae_scale_factor 2


def test_make_genai_pipeline_names_a_missing_tokenizer_model(converted, tmp_path):
    folder = tmp_path / "no-ov-tokenizer"
    shutil.copytree(converted("fp32", False), folder)
    (folder / "tokenizer_2" / "openvino_tokenizer.xml").unlink()
    with pytest.raises(FileNotFoundError, match=r"tokenizer_2/openvino_tokenizer.xml` is missing \(openvino.genai needs it\)"):
        sd3_helper.make_genai_pipeline(folder)


def test_openvino_tokenizers_match_the_hf_tokenizers(converted):
    from transformers import AutoTokenizer

    folder = converted("fp32", True)
    core = ov.Core()
    for name in ("tokenizer", "tokenizer_2", "tokenizer_3"):
        ov_tokenizer = core.compile_model(folder / name / "openvino_tokenizer.xml", "CPU")
        expected = AutoTokenizer.from_pretrained(folder / name)("a watercolor painting of a lighthouse").input_ids
        assert ov_tokenizer(["a watercolor painting of a lighthouse"])["input_ids"][0].tolist() == expected


@pytest.fixture(scope="module")
def optimum_cli_export(tiny_checkpoint, tmp_path_factory) -> Path:
    output_dir = tmp_path_factory.mktemp("optimum-cli") / "tiny-sd3"
    optimum_cli = Path(sys.executable).with_name("optimum-cli")
    command = [str(optimum_cli), "export", "openvino", "--model", str(tiny_checkpoint), "--task", "text-to-image", "--weight-format", "fp32", str(output_dir)]
    subprocess.run(command, check=True, capture_output=True, timeout=900)
    return output_dir


def test_our_pipeline_loads_an_optimum_cli_export_and_matches(optimum_cli_export, ov_pipeline):
    pipeline = sd3_helper.OVStableDiffusion3Pipeline.from_pretrained(optimum_cli_export, ov_config=F32)
    pipeline.set_progress_bar_config(disable=True)
    images = pipeline(**PROMPT, generator=torch.Generator().manual_seed(SEED), output_type="np").images
    assert np.abs(images - ours(ov_pipeline, True)).max() <= 1e-3


def test_taylorseer_step_caching_matches_genai(converted, ov_pipeline, monkeypatch):
    """Our TaylorSeerConfig skips the same steps as openvino.genai's TaylorSeerCacheConfig and makes its image."""
    import openvino_genai

    genai_config = openvino_genai.TaylorSeerCacheConfig()
    genai_config.cache_interval, genai_config.disable_cache_before_step, genai_config.disable_cache_after_step = 3, 3, -2
    genai_pipeline = sd3_helper.make_genai_pipeline(converted("fp32", True), ov_config=F32)
    genai = genai_image(genai_pipeline, num_inference_steps=12, taylorseer_config=genai_config)
    genai_infers = len(genai_pipeline.get_performance_metrics().raw_metrics.transformer_inference_durations)

    infers = []
    original_call = sd3_helper.OVSubmodel.__call__
    monkeypatch.setattr(sd3_helper.OVSubmodel, "__call__", lambda self, **inputs: infers.append(self.name) or original_call(self, **inputs))
    config = sd3_helper.TaylorSeerConfig(cache_interval=3, disable_cache_before_step=3, disable_cache_after_step=-2)
    cached = ours(ov_pipeline, True, num_inference_steps=12, height=64, width=64, taylorseer=config)
    assert infers.count("transformer") == genai_infers == 7  # steps 0-2, 5, 8, 10, 11
    assert np.abs(cached - genai).max() <= 1 / 255 + 1e-6
    uncached = ours(ov_pipeline, True, num_inference_steps=12, height=64, width=64, taylorseer=None)
    assert np.abs(uncached - genai).max() > 2 / 255  # the cache changes the image; genai's is the cached one


def test_the_step_cache_is_on_by_default_and_none_turns_it_off(ov_pipeline, monkeypatch):
    """The default call caches steps as openvino.genai's defaults do (12 steps: 3 predicted); `taylorseer=None` computes
    every step, diffusers' image; with 8 steps or fewer the defaults skip none."""
    infers = []
    original_call = sd3_helper.OVSubmodel.__call__
    monkeypatch.setattr(sd3_helper.OVSubmodel, "__call__", lambda self, **inputs: infers.append(self.name) or original_call(self, **inputs))
    default = ours(ov_pipeline, True, num_inference_steps=12)
    assert infers.count("transformer") == 9  # steps 6, 7 and 9 come from the cache
    explicit = ours(ov_pipeline, True, num_inference_steps=12, taylorseer=sd3_helper.TaylorSeerConfig())
    infers.clear()
    uncached = ours(ov_pipeline, True, num_inference_steps=12, taylorseer=None)
    assert infers.count("transformer") == 12
    assert np.array_equal(default, explicit) and np.abs(default - uncached).max() > 1 / 255
    assert np.array_equal(ours(ov_pipeline, True, num_inference_steps=8), ours(ov_pipeline, True, num_inference_steps=8, taylorseer=None))


def test_taylorseer_config_errors(ov_pipeline):
    with pytest.raises(ValueError, match=r"`cache_interval` has to be an int >= 2 but is 1"):
        sd3_helper.TaylorSeerConfig(cache_interval=1)
    with pytest.raises(TypeError, match=r"`taylorseer` has to be a TaylorSeerConfig or None but is dict"):
        ours(ov_pipeline, True, taylorseer={"cache_interval": 3})
