"""Shared fixtures: the tiny SD3 checkpoints and their OpenVINO conversions, each built once per test session; and
the `slow` tier: every test that needs one of them (or a server, a notebook run, a browser) is marked `slow`, so
`pytest tests/ -m "not slow"` runs the rest in minutes."""

import inspect
import sys
from pathlib import Path

import openvino
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sd3_helper  # noqa: E402
from notebook_utils import ov_model_dir  # noqa: E402
from sd3_openvino.runtime.image_processing import psnr  # noqa: E402,F401  (one psnr, shared by the tests)

F32 = {"INFERENCE_PRECISION_HINT": "f32"}  # exact arithmetic on CPUs whose default is bf16 (AMX)
TINY_CHECKPOINT_NAME = "sd3-tiny"  # `notebook_utils.resolve_model_id("tiny")`'s folder: the notebook runs reuse it
TINY_VARIANTS = ("family", "latent_channels", "inpainting")  # the `make_tiny_sd3` arguments a variant may set
# Fixtures that build or convert a model, or launch a server, a notebook or a browser: a test that needs any of them
# (directly or through another fixture: `item.fixturenames` is the whole closure) is `slow`.
SLOW_FIXTURES = {
    # here
    "tiny_models_dir",
    "tiny_checkpoints",
    "tiny_checkpoint",
    "converted",
    "diffusers_pipeline",
    "ov_pipeline",
    "int8_vae_folder",
    "tiny_large_checkpoint",
    "ov_large_fp32",
    "tiny_ip_adapter_source",
    "ov_ip_adapter",
    "controlnet_models",
    # in the test files
    "diffusers_image_pipelines",  # test_image_pipelines: diffusers' pipelines of the tiny checkpoint
    "ov_image_pipelines",
    "inpaint_pair",  # test_image_pipelines: the 16-channel tiny variants
    "optimum_cli_export",  # test_interop: optimum-cli converts the checkpoint
    "tiny_lora",  # test_lora: LoRA files made from the checkpoint
    "second_lora",
    "fused_folder",  # test_lora: a conversion with a fused LoRA
    "runtime_pipeline",
    "tiny_taesd",  # test_previews: a tiny autoencoder, converted into a folder
    "preview_folder",
    "hybrid",  # test_sd3_quantization: int8-hybrid quantization
    "sd35",  # test_skip_layer_guidance: the SD3.5-shaped tiny model
    "tokenizer_pairs",  # test_torch_free
    "tiled_pipelines",  # test_vae_tiling
    "tiny_ov_model",  # test_gradio_demo
    "pipeline",
    "lora_pipeline",
    "taesd_pipeline",
    "server",  # test_gradio_demo: `python gradio_helper.py` in a subprocess
    "lora_client",  # test_gradio_demo: a demo launched in this process
    "browser",  # test_gradio_demo, test_jupyterlab: headless Chromium
    "controlnet_folder",  # test_gradio_demo: a tiny ControlNet, converted
    "controlnet_pipeline",
    "controlnet_client",  # test_gradio_demo: the ControlNet demo launched in this process
    "jupyter_lab",  # test_jupyterlab: a JupyterLab server
    "executed",  # test_notebook: the notebook run by papermill
}


def pytest_collection_modifyitems(config, items):
    """Mark `slow` every test whose fixture closure holds one of `SLOW_FIXTURES`."""
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """A test outside the `slow` tier that converts a model fails with a message that says how to file it."""
    if item.get_closest_marker("slow"):
        return (yield)

    def refuse(*args, **kwargs):
        raise RuntimeError(
            f"{item.nodeid} converts a model but is not marked slow: add the fixture that converts to `SLOW_FIXTURES` "
            "in tests/conftest.py, or mark the test `@pytest.mark.slow`."
        )

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(openvino, "convert_model", refuse)
        return (yield)


def tiny_variant(**variant) -> dict:
    """`variant` with `make_tiny_sd3`'s defaults filled in for the rest of `TINY_VARIANTS`."""
    if unknown := sorted(set(variant) - set(TINY_VARIANTS)):
        raise TypeError(f"The tiny variants differ in {TINY_VARIANTS}, not in {unknown}.")
    parameters = inspect.signature(sd3_helper.make_tiny_sd3).parameters
    return {name: variant.get(name, parameters[name].default) for name in TINY_VARIANTS}


def variant_name(*, family: str, latent_channels: int, inpainting: bool) -> str:
    """The checkpoint folder's name: `sd3-tiny`, plus what differs from `make_tiny_sd3`'s defaults."""
    defaults = tiny_variant()
    name = TINY_CHECKPOINT_NAME if family == defaults["family"] else f"{TINY_CHECKPOINT_NAME}-{family}"
    if latent_channels != defaults["latent_channels"]:
        name += f"-{latent_channels}ch"
    return name + ("-inpainting" if inpainting else "")


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory) -> Path:
    """`<pytest's base temp>/models`: also the notebook's `models_dir` in test_notebook and test_gradio_demo, so the
    notebook's runs find the checkpoint and its conversions made here (and the other way round)."""
    models_dir = tmp_path_factory.getbasetemp() / "models"
    models_dir.mkdir(exist_ok=True)
    return models_dir


@pytest.fixture(scope="session")
def tiny_checkpoints(tiny_models_dir):
    """`tiny_checkpoints(family=, latent_channels=, inpainting=)` -> a tiny checkpoint (`make_tiny_sd3`'s
    arguments), each variant built once per session."""

    def build(**variant) -> Path:
        variant = tiny_variant(**variant)
        checkpoint = tiny_models_dir / variant_name(**variant)
        if not (checkpoint / "model_index.json").is_file():  # a notebook run may have made it (same seed, same model)
            sd3_helper.make_tiny_sd3(checkpoint, **variant)
        return checkpoint

    return build


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_checkpoints) -> Path:
    return tiny_checkpoints()


@pytest.fixture(scope="session")
def converted(tiny_models_dir, tiny_checkpoints):
    """`converted(weight_format, load_t5, **variant)` -> the folder of `tiny_checkpoints(**variant)` converted;
    each conversion happens once per session, in the folder the notebook would use for it (`ov_model_dir`)."""
    folders = {}

    def convert(weight_format: str = "fp32", load_t5: bool = True, **variant) -> Path:
        key = (weight_format, load_t5, tuple(sorted(tiny_variant(**variant).items())))
        if key not in folders:
            checkpoint = tiny_checkpoints(**variant)
            output_dir = ov_model_dir(checkpoint, models_dir=tiny_models_dir, weight_format=weight_format, load_t5=load_t5)
            folders[key] = sd3_helper.convert_sd3(checkpoint, output_dir, load_t5=load_t5, weight_format=weight_format)
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


# -- IP-Adapter: the SD3.5-Large-shaped tiny model and a tiny adapter for it ----------------------------------------


@pytest.fixture(scope="session")
def tiny_large_checkpoint(tiny_checkpoints) -> Path:
    """The tiny SD3.5-Large-shaped checkpoint (qk-norm, no dual attention: the blocks IP-Adapters fit)."""
    return tiny_checkpoints(family="sd3.5-large")


@pytest.fixture(scope="session")
def ov_large_fp32(converted) -> Path:
    return converted("fp32", family="sd3.5-large")


@pytest.fixture(scope="session")
def tiny_ip_adapter_source(tiny_models_dir, tiny_large_checkpoint) -> Path:
    """A tiny IP-Adapter for `tiny_large_checkpoint` in InstantX's layout (`ip-adapter.safetensors`, `image_encoder/`)."""
    folder = tiny_models_dir / f"{tiny_large_checkpoint.name}-ip-adapter"
    if not (folder / "ip-adapter.safetensors").is_file():
        sd3_helper.make_tiny_ip_adapter(tiny_large_checkpoint, folder)
    return folder


@pytest.fixture(scope="session")
def ov_ip_adapter(ov_large_fp32, tiny_ip_adapter_source) -> Path:
    """`tiny_ip_adapter_source` converted for `ov_large_fp32`, where `load_ip_adapter(tiny_ip_adapter_source)` puts it."""
    from sd3_openvino.runtime.ip_adapter_api import converted_ip_adapter_dir

    folder = converted_ip_adapter_dir(ov_large_fp32, tiny_ip_adapter_source, weight_name="ip-adapter.safetensors", subfolder=None)
    return sd3_helper.convert_sd3_ip_adapter(tiny_ip_adapter_source, folder, model_dir=ov_large_fp32)


# -- ControlNets: tiny ones of both families, converted (test_controlnet, test_text_folding) ---------------------------


@pytest.fixture(scope="session")
def controlnet_models(tiny_checkpoints, converted, tmp_path_factory):
    """name -> (base checkpoint, our fp32 base folder without T5, the ControlNet checkpoint, its fp32 conversion)."""
    root = tmp_path_factory.mktemp("controlnets")
    made = {}
    plans = {
        "instantx": dict(family="sd3", options=dict(family="instantx", num_layers=1)),
        "instantx-2": dict(family="sd3", options=dict(family="instantx", num_layers=1, seed=1)),
        "sd3.5": dict(family="sd3.5-large", options=dict(family="sd3.5", num_layers=2)),
        "inpainting": dict(family="sd3", options=dict(family="instantx", num_layers=1, inpainting=True)),
    }
    for name, plan in plans.items():
        checkpoint = tiny_checkpoints(family=plan["family"])
        source = sd3_helper.make_tiny_sd3_controlnet(checkpoint, root / name, **plan["options"])
        folder = sd3_helper.convert_sd3_controlnet(source, root / f"{name}-ov", weight_format="fp32", base_model=checkpoint)
        made[name] = (checkpoint, converted("fp32", False, family=plan["family"]), source, folder)
    return made
