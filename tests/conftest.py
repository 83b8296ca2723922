"""Shared fixtures: one tiny SD3 checkpoint and its OpenVINO conversions, built once per test session."""

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sd3_helper  # noqa: E402
from sd3_openvino.runtime.image_processing import psnr  # noqa: E402,F401  (one psnr, shared by the tests)

F32 = {"INFERENCE_PRECISION_HINT": "f32"}  # exact arithmetic on CPUs whose default is bf16 (AMX)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return sd3_helper.make_tiny_sd3(tmp_path_factory.mktemp("checkpoint") / "tiny-sd3")


@pytest.fixture(scope="session")
def converted(tmp_path_factory, tiny_checkpoint):
    """`converted(weight_format, load_t5)` -> folder; each conversion happens once per session."""
    folders = {}

    def convert(weight_format: str = "fp32", load_t5: bool = True) -> Path:
        key = (weight_format, load_t5)
        if key not in folders:
            output_dir = tmp_path_factory.mktemp("ov") / f"tiny-sd3-{weight_format}{'' if load_t5 else '-no-t5'}"
            folders[key] = sd3_helper.convert_sd3(tiny_checkpoint, output_dir, load_t5=load_t5, weight_format=weight_format)
        return folders[key]

    return convert


@pytest.fixture(scope="session")
def diffusers_pipeline(tiny_checkpoint):
    """`diffusers_pipeline(load_t5)` -> the PyTorch reference pipeline, fp32."""
    pipelines = {}

    def load(load_t5: bool = True):
        if load_t5 not in pipelines:
            pipeline = sd3_helper.load_sd3_pipeline(tiny_checkpoint, load_t5=load_t5)
            pipeline.set_progress_bar_config(disable=True)
            pipelines[load_t5] = pipeline
        return pipelines[load_t5]

    return load


@pytest.fixture(scope="session")
def ov_pipeline(converted):
    """`ov_pipeline(weight_format, load_t5, ov_config)` -> a compiled OpenVINO pipeline, cached."""
    pipelines = {}

    def load(weight_format: str = "fp32", load_t5: bool = True, ov_config: dict | None = F32):
        key = (weight_format, load_t5, tuple(sorted((ov_config or {}).items())))
        if key not in pipelines:
            pipeline = sd3_helper.OVStableDiffusion3Pipeline.from_pretrained(
                converted(weight_format, load_t5), ov_config=ov_config
            )
            pipeline.set_progress_bar_config(disable=True)
            pipelines[key] = pipeline
        return pipelines[key]

    return load


@pytest.fixture(scope="session")
def int8_vae_folder(converted, tmp_path_factory) -> Path:
    """The tiny model in int8-hybrid with `quantize_vae=True` (few calibration samples: a fast test fixture)."""
    from sd3_openvino.export.quantization import quantize_sd3

    output_dir = tmp_path_factory.mktemp("int8-vae") / "tiny-sd3-int8-hybrid-int8-vae"
    return quantize_sd3(converted("fp16"), output_dir, num_samples=8, num_inference_steps=4, quantize_vae=True, vae_num_samples=2)
