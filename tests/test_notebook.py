"""`stable-diffusion-v3.ipynb`: committed clean, and run headless with papermill on the offline tiny model."""

import ast
import json
import os
import shutil
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # the helpers live beside the notebook, not in an installed package
    sys.path.insert(0, str(REPO_ROOT))

from notebook_utils import INT8_VAE_LABEL, INT8_VAE_VARIANT, ov_model_dir  # noqa: E402

NOTEBOOK = REPO_ROOT / "stable-diffusion-v3.ipynb"
ARTIFACTS_DIR = Path(os.environ.get("SD3_ARTIFACTS_DIR", REPO_ROOT / "artifacts"))
KNOBS = {"model_id", "load_t5", "weight_format", "device", "height", "width", "num_inference_steps"}
KNOBS |= {"guidance_scale", "seed", "prompt", "launch_demo", "image_to_image", "skip_guidance_layers"}
KNOBS |= {"compare_formats", "quantize_vae", "lora_adapters", "use_controlnet", "use_ip_adapter"}
WIDTH, HEIGHT = 48, 64  # not square, so that swapped sides show
TEST_PARAMETERS = {
    "model_id": "tiny",
    "load_t5": True,
    "weight_format": "fp16",
    "height": HEIGHT,
    "width": WIDTH,
    "num_inference_steps": 3,
    "quantize_vae": True,  # the comparison's int8-hybrid + int8 VAE column (a quantization of the fp16 folder)
    "launch_demo": False,
}


def code_cells(notebook) -> list:
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def run_parameters_cell(*, environ: dict[str, str]) -> dict:
    """The values the parameters cell sets, run with `environ` as the environment."""
    source = code_cells(nbformat.read(NOTEBOOK, as_version=4))[0].source
    namespace = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("SD3_MODEL_ID", raising=False)
        for name, value in environ.items():
            patch.setenv(name, value)
        exec(compile(source, "parameters", "exec"), namespace)
    return namespace


def test_notebook_is_committed_without_outputs():
    for cell in code_cells(nbformat.read(NOTEBOOK, as_version=4)):
        assert cell.outputs == [] and cell.execution_count is None, f"cell with outputs:\n{cell.source[:200]}"


def test_tensorart_turbo_presets_sample_with_their_model_cards_settings():
    """TensorArt's SD3.5 Medium Turbo and Large TurboX: 8 steps, guidance 1.5, the scheduler's shift raised to 5 (the
    sigmas diffusers' FlowMatchEulerDiscreteScheduler gives with shift=5); other presets keep the checkpoint's."""
    from types import SimpleNamespace

    from diffusers import FlowMatchEulerDiscreteScheduler

    from notebook_utils import generation_settings, use_preset_scheduler
    from sd3_openvino.runtime.scheduler import FlowMatchEulerScheduler

    requested = dict(num_inference_steps=None, guidance_scale=None, skip_guidance_layers=None)
    for preset in ("sd3.5-medium-turbo", "tiny-sd3.5-large-turbox"):
        assert generation_settings(preset, **requested) == dict(num_inference_steps=8, guidance_scale=1.5, skip_guidance_layers=None)
        pipe = SimpleNamespace(scheduler=FlowMatchEulerScheduler.from_config({"shift": 3.0}))
        assert use_preset_scheduler(pipe, preset) == 5.0
        pipe.scheduler.set_timesteps(8)
        reference = FlowMatchEulerDiscreteScheduler(shift=5.0)
        reference.set_timesteps(8)
        np.testing.assert_allclose(pipe.scheduler.sigmas, reference.sigmas.numpy(), rtol=1e-6)
    kept = SimpleNamespace(scheduler=FlowMatchEulerScheduler.from_config({"shift": 3.0}))
    assert use_preset_scheduler(kept, "sd3.5-large") == 3.0 and use_preset_scheduler(kept, "/models/my-sd3") == 3.0


def test_first_code_cell_is_tagged_parameters_and_holds_every_knob():
    first = code_cells(nbformat.read(NOTEBOOK, as_version=4))[0]
    assert "parameters" in first.metadata.get("tags", [])
    assigned = {
        target.id for node in ast.parse(first.source).body if isinstance(node, ast.Assign) for target in node.targets
    }
    assert KNOBS <= assigned, f"missing: {KNOBS - assigned}"


def test_parameter_defaults_serve_the_real_model_and_sd3_model_id_switches_it():
    from notebook_utils import generation_settings, resolve_model_id

    defaults = run_parameters_cell(environ={})
    assert defaults["model_id"] == "sd3-medium"
    assert resolve_model_id(defaults["model_id"], models_dir=Path("models")) == "stabilityai/stable-diffusion-3-medium-diffusers"
    assert (defaults["height"], defaults["width"], defaults["num_inference_steps"]) == (512, 512, None)
    requested = {name: defaults[name] for name in ("num_inference_steps", "guidance_scale", "skip_guidance_layers")}
    assert generation_settings(defaults["model_id"], **requested) == dict(num_inference_steps=28, guidance_scale=7.0, skip_guidance_layers=None)
    assert generation_settings("sd3.5-medium", **requested) == dict(num_inference_steps=40, guidance_scale=4.5, skip_guidance_layers=[7, 8, 9])
    assert generation_settings("sd3.5-large-turbo", **{**requested, "num_inference_steps": 6})["num_inference_steps"] == 6
    assert run_parameters_cell(environ={"SD3_MODEL_ID": "/models/my-sd3"})["model_id"] == "/models/my-sd3"


def test_transformer_steps_counts_the_steps_the_step_cache_computes():
    from notebook_utils import transformer_steps
    from sd3_helper import TaylorSeerConfig

    genai_default = TaylorSeerConfig()
    assert [transformer_steps(genai_default, num_inference_steps=steps) for steps in (3, 8, 9, 28)] == [3, 8, 8, 14]
    # steps 0-2, 5, 8, 10, 11: the transformer calls test_interop counts in openvino.genai with these settings
    config = TaylorSeerConfig(cache_interval=3, disable_cache_before_step=3, disable_cache_after_step=-2)
    assert transformer_steps(config, num_inference_steps=12) == 7


INSTANTX_CANNY, STABILITY_CANNY = "InstantX/SD3-Controlnet-Canny", "stabilityai/stable-diffusion-3.5-large-controlnet-canny"
CANNY_CONTROLNET_CASES = {  # model id -> the hub id of its canny ControlNet (None: the notebook skips the section)
    "sd3-medium": INSTANTX_CANNY,
    "stabilityai/stable-diffusion-3-medium-diffusers": INSTANTX_CANNY,
    "tiny": INSTANTX_CANNY,  # a random stand-in of the same family
    "sd3.5-large": STABILITY_CANNY,
    "tiny-sd3.5-large-turbo": STABILITY_CANNY,
    "sd3.5-medium": None,
    "/models/my-sd3": None,
}


@pytest.mark.parametrize("model_id, expected", CANNY_CONTROLNET_CASES.items(), ids=CANNY_CONTROLNET_CASES.keys())
def test_each_model_gets_the_canny_controlnet_of_its_family(model_id, expected):
    from notebook_utils import canny_controlnet

    controlnet = canny_controlnet(model_id)
    assert (controlnet[0] if controlnet else None) == expected
    assert controlnet is None or controlnet[1] == ("instantx" if expected == INSTANTX_CANNY else "sd3.5")


def test_controlnet_for_converts_the_presets_controlnet_with_the_model_as_base_model(tmp_path):
    """`convert_sd3_controlnet` stubbed: which ControlNet, where, in which format, with which base model."""
    import sd3_helper
    from notebook_utils import controlnet_for

    calls = []

    def convert(checkpoint, output_dir, **options):
        calls.append((checkpoint, output_dir, options))
        return output_dir

    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(vars(sd3_helper), "convert_sd3_controlnet", convert)  # without importing the real one (torch)
        base = "stabilityai/stable-diffusion-3.5-large"
        folder = controlnet_for("sd3.5-large", checkpoint=base, models_dir=tmp_path, weight_format="int8-hybrid")
        assert controlnet_for("sd3.5-medium", checkpoint="stabilityai/stable-diffusion-3.5-medium", models_dir=tmp_path, weight_format="int8") is None
    assert folder == tmp_path / "stable-diffusion-3.5-large-controlnet-canny-ov-int8"  # int8-hybrid is a transformer format
    assert calls == [(STABILITY_CANNY, folder, {"weight_format": "int8", "base_model": base})]


INSTANTX_IP_ADAPTER = ("InstantX/SD3.5-Large-IP-Adapter", "ip-adapter.bin", "google/siglip-so400m-patch14-384")
TINY_IP_ADAPTER = ("<models_dir>/<checkpoint>-ip-adapter", "ip-adapter.safetensors", "image_encoder")  # made offline
DUAL_ATTENTION, NOT_PUBLISHED, NOT_SET = "has dual-attention blocks", "No IP-Adapter is published for SD3 Medium", "No IP-Adapter is set"
IP_ADAPTER_CASES = {  # model id -> (source, weight_name, image_encoder_folder), or the start of the reason it has none
    "tiny": TINY_IP_ADAPTER,  # SD3-shaped, no dual attention: a random adapter shows the section on it
    "tiny-sd3.5-large": TINY_IP_ADAPTER,
    "tiny-sd3.5-large-turbo": TINY_IP_ADAPTER,
    "sd3.5-large": INSTANTX_IP_ADAPTER,
    "stabilityai/stable-diffusion-3.5-large": INSTANTX_IP_ADAPTER,
    "sd3.5-large-turbo": INSTANTX_IP_ADAPTER,
    "sd3.5-large-turbox": INSTANTX_IP_ADAPTER,  # TensorArt's distilled SD3.5 Large
    "sd3-medium": NOT_PUBLISHED,
    "stabilityai/stable-diffusion-3-medium-diffusers": NOT_PUBLISHED,
    "sd3.5-medium": DUAL_ATTENTION,
    "sd3.5-medium-turbo": DUAL_ATTENTION,
    "tiny-sd3.5-medium": DUAL_ATTENTION,  # `load_ip_adapter` would refuse its transformer
    "/models/my-sd3": NOT_SET,
}


@pytest.mark.parametrize("model_id, expected", IP_ADAPTER_CASES.items(), ids=IP_ADAPTER_CASES.keys())
def test_each_model_gets_the_ip_adapter_of_its_family_or_the_reason_it_has_none(model_id, expected, tmp_path, capsys):
    """`make_tiny_ip_adapter` stubbed: which adapter, with which `load_ip_adapter` arguments, and nothing built."""
    import sd3_helper
    from notebook_utils import ip_adapter_for

    made = []

    def make(checkpoint, output_dir):
        made.append((checkpoint, output_dir))
        return output_dir

    checkpoint = tmp_path / "sd3-tiny-x"
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(vars(sd3_helper), "make_tiny_ip_adapter", make)  # without importing the real one (torch)
        adapter = ip_adapter_for(model_id, checkpoint=checkpoint, models_dir=tmp_path)
    printed = capsys.readouterr().out
    if isinstance(expected, str):
        assert adapter is None and made == [] and expected in printed and "skipping this section" in printed
        return
    assert printed == ""
    if expected is TINY_IP_ADAPTER:
        folder = tmp_path / "sd3-tiny-x-ip-adapter"  # beside the tiny checkpoint's other stand-ins
        assert made == [(checkpoint, folder)]
        expected = (folder, *expected[1:])
    else:
        assert made == []
    assert (adapter.source, adapter.weight_name, adapter.image_encoder_folder) == expected


def test_tiny_ip_adapter_is_made_once_and_loads_with_the_pipelines_defaults(tmp_path):
    """A folder already made is used as it is; `IPAdapterSource`'s defaults are `load_ip_adapter`'s, so the notebook's
    keyword call loads a tiny folder as `load_ip_adapter(folder)` does."""
    import inspect

    import sd3_helper
    from notebook_utils import IPAdapterSource, tiny_ip_adapter

    folder = tmp_path / "sd3-tiny-ip-adapter"
    folder.mkdir()
    (folder / "ip-adapter.safetensors").write_bytes(b"")
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(vars(sd3_helper), "make_tiny_ip_adapter", lambda *args, **kwargs: pytest.fail("made again"))
        assert tiny_ip_adapter(tmp_path / "sd3-tiny", models_dir=tmp_path) == folder
    defaults = inspect.signature(sd3_helper.OVStableDiffusion3Pipeline.load_ip_adapter).parameters
    source = IPAdapterSource(folder)
    assert (source.weight_name, source.image_encoder_folder) == (defaults["weight_name"].default, defaults["image_encoder_folder"].default)


def test_bar_charts_draw_one_panel_per_comparison_with_the_values():
    from notebook_utils import bar_chart_figure, bar_charts

    panels = {"latency per image (s)": {"fp16": 1.5, "int8": 0.75}, "size on disk (MB)": {"fp16": 40.0, "int8": 20.0}}
    figure = bar_chart_figure(panels)
    heights = [[patch.get_height() for patch in axes.patches] for axes in figure.axes]
    assert [axes.get_title() for axes in figure.axes] == ["latency per image (s)", "size on disk (MB)"]
    assert heights == [[1.5, 0.75], [40.0, 20.0]]
    assert [label.get_text() for label in figure.axes[0].get_xticklabels()] == ["fp16", "int8"]
    with pytest.raises(ValueError, match="`panels` has to map each panel title to a non-empty"):
        bar_charts({"latency per image (s)": {}})
    image = bar_charts(panels)  # what the notebook shows and saves: a PIL image, a PNG in any Jupyter
    assert image.format == "PNG" and image.width > 2 * image.height > 300


@pytest.fixture(scope="module")
def executed(tmp_path_factory) -> dict:
    """Run the whole notebook as papermill does; models go where test_gradio_demo puts them (made once)."""
    import papermill

    models_dir = tmp_path_factory.getbasetemp() / "models"
    output_dir = ARTIFACTS_DIR / "notebook-outputs"
    shutil.rmtree(output_dir, ignore_errors=True)  # images left by an earlier run must not pass for new ones
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    executed_path = ARTIFACTS_DIR / "stable-diffusion-v3.executed.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOK),
        str(executed_path),
        parameters={**TEST_PARAMETERS, "models_dir": str(models_dir), "output_dir": str(output_dir)},
        cwd=str(REPO_ROOT),
        kernel_name="python3",
        progress_bar=False,
        execution_timeout=600,
    )
    return {"notebook": nbformat.read(executed_path, as_version=4), "models_dir": models_dir, "output_dir": output_dir}


def test_every_cell_runs_without_errors(executed):
    cells = code_cells(executed["notebook"])
    assert all(cell.execution_count is not None for cell in cells)
    errors = [output for cell in cells for output in cell.outputs if output.output_type == "error"]
    assert errors == []


def test_the_image_has_the_requested_size(executed):
    assert Image.open(executed["output_dir"] / "image.png").size == (WIDTH, HEIGHT)


def code_outputs(executed: dict, kind: str) -> list[str]:
    """Every output of `kind` ("text/markdown", or "stdout" for printed text) of the executed notebook, in order."""
    cells = code_cells(executed["notebook"])
    if kind == "stdout":
        return [output.text for cell in cells for output in cell.outputs if output.get("name") == "stdout"]
    return [output.data[kind] for cell in cells for output in cell.outputs if kind in output.get("data", {})]


def grid_cells(path: Path, count: int) -> list[np.ndarray]:
    """The `count` images of an `image_grid` of WIDTH x HEIGHT images, left to right (each centred in its cell)."""
    grid = np.asarray(Image.open(path))
    cell_width = grid.shape[1] // count
    lefts = [index * cell_width + (cell_width - WIDTH) // 2 for index in range(count)]
    return [grid[:HEIGHT, left : left + WIDTH] for left in lefts]


def max_difference(first: np.ndarray, second: np.ndarray) -> int:
    return int(np.abs(first.astype(np.int16) - second.astype(np.int16)).max())


def test_the_preview_strip_shows_each_step_then_the_image(executed):
    strip_cell = next(cell for cell in code_cells(executed["notebook"]) if "preview_strip" in cell.source)
    assert any("image/png" in output.get("data", {}) for output in strip_cell.outputs), "the strip is not shown"
    *previews, final = grid_cells(executed["output_dir"] / "previews.png", 4)  # 3 steps, then the final image
    np.testing.assert_array_equal(final, np.asarray(Image.open(executed["output_dir"] / "image.png")))
    for preview in previews:  # the linear map's pixel per latent cell, blown up to the image's size (2 x 2 here)
        np.testing.assert_array_equal(preview, preview[::2, ::2].repeat(2, axis=0).repeat(2, axis=1))
    assert max_difference(previews[0], previews[-1]) > 0, "the previews should change from step to step"
    assert max_difference(previews[-1], final) > 0  # a preview, not the VAE's image


def test_weight_formats_are_compared(executed):
    variants = ("fp16", "int8", "int4", INT8_VAE_VARIANT)  # the tests turn `quantize_vae` on
    images = {fmt: Image.open(executed["output_dir"] / f"image-{fmt}.png") for fmt in variants}
    assert {image.size for image in images.values()} == {(WIDTH, HEIGHT)}
    # fp16 is the format of the main run: same model, prompt and seed, so the very same image
    main_image = np.asarray(Image.open(executed["output_dir"] / "image.png"))
    np.testing.assert_array_equal(np.asarray(images["fp16"]), main_image)
    grid = Image.open(executed["output_dir"] / "weight-formats.png")
    assert grid.width >= 4 * WIDTH and grid.height > HEIGHT
    table = next(text for text in code_outputs(executed, "text/markdown") if "weight format" in text)
    assert [line.split("|")[1].strip() for line in table.splitlines()[2:]] == ["fp16", "int8", "int4", INT8_VAE_LABEL]
    int8_vae_dir = ov_model_dir(
        executed["models_dir"] / "sd3-tiny", models_dir=executed["models_dir"], weight_format=INT8_VAE_VARIANT, load_t5=True
    )
    assert '"quantize_vae": true' in (int8_vae_dir / "openvino_conversion.json").read_text()


def test_step_cache_section_times_both_images(executed):
    printed = "".join(code_outputs(executed, "stdout"))
    # 3 steps: genai's default cache computes the first 6 steps, so nothing is skipped and the images are equal
    assert "transformer on 3 of 3 steps" in printed
    exact, cached = grid_cells(executed["output_dir"] / "step-cache.png", 2)
    main_image = np.asarray(Image.open(executed["output_dir"] / "image.png"))
    np.testing.assert_array_equal(cached, main_image)  # the default call, as the main image's
    np.testing.assert_array_equal(exact, cached)
    assert Image.open(executed["output_dir"] / "step-cache-chart.png").format == "PNG"


def test_comparisons_are_plotted_beside_their_tables(executed):
    for name in ("formats-chart.png", "step-cache-chart.png"):
        chart = Image.open(executed["output_dir"] / name)
        assert chart.format == "PNG" and chart.width > 200 and chart.height > 150
    plotted = [cell for cell in code_cells(executed["notebook"]) if "bar_charts(" in cell.source]
    assert len(plotted) == 2 and all(any("image/png" in output.get("data", {}) for output in cell.outputs) for cell in plotted)


def test_lora_section_shows_the_scales_and_the_second_adapter_then_unloads(executed):
    main_image = np.asarray(Image.open(executed["output_dir"] / "image.png"))
    scale_0, scale_half, scale_1 = grid_cells(executed["output_dir"] / "lora-scales.png", 3)
    first, second = grid_cells(executed["output_dir"] / "lora-switch.png", 2)
    np.testing.assert_array_equal(first, scale_1)  # the first adapter at 1.0, shown again beside the second one
    # Scale 0 adds nothing: only the graph with LoRA states rounds differently at the CPU's default precision
    noise = max_difference(scale_0, main_image)  # measured 6/255 (bf16)
    half, full, switched = max_difference(scale_half, scale_0), max_difference(scale_1, scale_0), max_difference(second, first)
    print(f"\nscale 0 vs no LoRA: {noise}/255; vs scale 0: 0.5 {half}/255, 1.0 {full}/255; second vs first adapter {switched}/255")
    assert noise <= 12 and half > 0 and min(full, switched) > max(noise, 4)  # measured 13, 23 and 64
    printed = "".join(code_outputs(executed, "stdout"))
    assert "loaded adapters: {'transformer': ['random_a', 'random_b']}, active: ['random_b']" in printed
    assert "adapters after unload_lora_weights: {}" in printed


def test_fused_lora_section_converts_its_own_folder_and_times_four_steps(executed):
    model_dir = ov_model_dir(executed["models_dir"] / "sd3-tiny", models_dir=executed["models_dir"], weight_format="fp16", load_t5=True)
    flash_dir = model_dir.with_name(f"{model_dir.name}-flash")
    record = (flash_dir / "openvino_conversion.json").read_text()
    assert (flash_dir / "model_index.json").is_file() and "random_a" in record and '"weight_format": "fp16"' in record
    assert "fused LoRA: " in "".join(code_outputs(executed, "stdout"))
    base, fused = grid_cells(executed["output_dir"] / "fused-lora.png", 2)
    assert max_difference(base, fused) > 4, "4 steps of the fused model should not give the base model's image"


def test_controlnet_section_shows_the_edges_and_the_images_at_three_scales(executed):
    from sd3_helper import canny_edges

    edges, scale_0, scale_half, scale_1 = grid_cells(executed["output_dir"] / "controlnet.png", 4)
    source = Image.open(executed["output_dir"] / "image.png")
    np.testing.assert_array_equal(edges, np.asarray(canny_edges(source)))  # the control image: the generated image's edges
    half, full = max_difference(scale_half, scale_0), max_difference(scale_1, scale_0)
    print(f"\nControlNet vs scale 0: 0.5 {half}/255, 1.0 {full}/255")
    assert min(half, full) > 12, "the random tiny ControlNet should change the image"  # measured 98 and 134
    shown = next(cell for cell in code_cells(executed["notebook"]) if "controlnet_grid" in cell.source)
    assert any("image/png" in output.get("data", {}) for output in shown.outputs), "the grid is not shown"
    assert "one transformer serves both pipelines: True" in "".join(code_outputs(executed, "stdout"))
    folder = executed["models_dir"] / "sd3-tiny-controlnet-canny-ov-fp16"  # the notebook's weight format in the tests
    record = json.loads((folder / "openvino_conversion.json").read_text())
    assert record["kind"] == "sd3_controlnet" and record["options"]["weight_format"] == "fp16"


def test_ip_adapter_section_shows_the_image_prompt_and_three_scales_then_unloads(executed):
    image_prompt, scale_0, scale_half, scale_1 = grid_cells(executed["output_dir"] / "ip-adapter.png", 4)
    np.testing.assert_array_equal(image_prompt, np.asarray(Image.open(executed["output_dir"] / "image.png")))  # the generated image
    half, full = max_difference(scale_half, scale_0), max_difference(scale_1, scale_0)
    print(f"\nIP-Adapter vs scale 0: 0.5 {half}/255, 1.0 {full}/255")
    assert min(half, full) > 4, "the random tiny IP-Adapter should change the image"  # measured 23 and 43
    shown = next(cell for cell in code_cells(executed["notebook"]) if "ip_grid" in cell.source)
    assert any("image/png" in output.get("data", {}) for output in shown.outputs), "the grid is not shown"
    printed = "".join(code_outputs(executed, "stdout"))
    assert "IP-Adapter: " in printed and "IP-Adapter at scale 1.0: 3 steps in " in printed and "image prompt " in printed
    assert "IP-Adapter after unload_ip_adapter: None" in printed
    model_dir = ov_model_dir(executed["models_dir"] / "sd3-tiny", models_dir=executed["models_dir"], weight_format="fp16", load_t5=True)
    (folder,) = (model_dir / "ip_adapters").iterdir()  # converted once, into the SD3 folder
    record = json.loads((folder / "openvino_conversion.json").read_text())
    assert record["kind"] == "sd3_ip_adapter" and (executed["models_dir"] / "sd3-tiny-ip-adapter" / "ip-adapter.safetensors").is_file()


def test_image_to_image_and_inpainting_section_shows_inputs_and_results(executed):
    restyled = Image.open(executed["output_dir"] / "image-to-image.png")  # input + two strengths
    repainted = Image.open(executed["output_dir"] / "inpainting.png")  # input + mask + result
    assert restyled.width >= 3 * WIDTH and repainted.width >= 3 * WIDTH and restyled.height > HEIGHT
    source = np.asarray(Image.open(executed["output_dir"] / "image.png"))
    left_cell = np.asarray(repainted)[:HEIGHT, (repainted.width // 3 - WIDTH) // 2 :][:, :WIDTH]
    np.testing.assert_array_equal(left_cell, source)  # the first cell is the generated image itself


PRESET_RUN = dict(
    height=32, width=32, compare_formats=False, compare_genai=False, image_to_image=False, lora_adapters=False, use_controlnet=False,
    use_ip_adapter=False, launch_demo=False,
)  # fmt: skip


@pytest.mark.slow  # papermill runs the notebook, which builds and converts a tiny model
@pytest.mark.parametrize("preset", ["sd3.5-medium", "sd3.5-large", "sd3.5-large-turbo", "sd3.5-medium-turbo"])
def test_each_preset_runs_headless_on_its_tiny_stand_in(preset, tmp_path_factory):
    """`SD3_MODEL_ID=tiny-<preset>`: the preset's steps, guidance and skip-layer guidance fill the parameters."""
    import papermill

    executed_path = tmp_path_factory.mktemp("presets") / f"{preset}.ipynb"
    output_dir = executed_path.parent / "outputs"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SD3_MODEL_ID", f"tiny-{preset}")
        papermill.execute_notebook(
            str(NOTEBOOK), str(executed_path), kernel_name="python3", progress_bar=False, execution_timeout=600, cwd=str(REPO_ROOT),
            parameters={**PRESET_RUN, "models_dir": str(tmp_path_factory.getbasetemp() / "models"), "output_dir": str(output_dir)},
        )  # fmt: skip
    notebook = nbformat.read(executed_path, as_version=4)
    printed = "".join(output.get("text", "") for cell in code_cells(notebook) for output in cell.outputs if output.output_type == "stream")
    expected = {"sd3.5-medium": "steps: 40, guidance: 4.5, skip-layer guidance: [7, 8, 9]", "sd3.5-large": "steps: 28, guidance: 3.5, skip-layer guidance: None"}
    expected["sd3.5-large-turbo"] = "steps: 4, guidance: 0.0, skip-layer guidance: None"
    expected["sd3.5-medium-turbo"] = "steps: 8, guidance: 1.5, skip-layer guidance: None"
    assert expected[preset] in printed
    assert f"scheduler shift: {5 if preset == 'sd3.5-medium-turbo' else 3}\n" in printed
    assert Image.open(output_dir / "image.png").size == (32, 32)
    markdown = [output.data["text/markdown"] for cell in code_cells(notebook) for output in cell.outputs if "text/markdown" in output.get("data", {})]
    assert any("SD3.5 Large Turbo | 4 | 0.0" in text for text in markdown) == (preset == "sd3.5-large-turbo"), "the turbo timing table"


def test_demo_cell_launches_the_demo_inline(executed):
    """The notebook's own demo cell, on a pipeline like the notebook's, with `launch_demo = True`."""
    from nbclient import NotebookClient

    demo_cell = next(cell for cell in code_cells(nbformat.read(NOTEBOOK, as_version=4)) if "make_demo(" in cell.source)
    model_dir = ov_model_dir(
        executed["models_dir"] / "sd3-tiny", models_dir=executed["models_dir"], weight_format="fp16", load_t5=True
    )
    setup = f"""
import os
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
from sd3_helper import OVStableDiffusion3Pipeline
pipe = OVStableDiffusion3Pipeline.from_pretrained({str(model_dir)!r})
height, width, num_inference_steps, guidance_scale, launch_demo = {HEIGHT}, {WIDTH}, 2, 5.0, True
"""
    check = """
import httpx
from gradio_client import Client
response = httpx.get(demo.local_url, timeout=10)
image_path, seed = Client(demo.local_url, verbose=False).predict(
    "a cat", "", 5, False, width, height, guidance_scale, num_inference_steps, api_name="/generate"
)
demo.close()
print(response.status_code, demo.local_url, seed)
"""
    notebook = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(source) for source in (setup, demo_cell.source, check)]
    )
    NotebookClient(
        notebook, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(REPO_ROOT)}}
    ).execute()
    printed = "".join(output.text for output in notebook.cells[2].outputs if output.get("name") == "stdout")
    status, url, seed = printed.splitlines()[-1].split()
    assert status == "200" and url.startswith("http://127.0.0.1:") and seed == "5"
    launch_outputs = [output for output in notebook.cells[1].outputs if output.output_type == "display_data"]
    assert any("text/html" in output.data for output in launch_outputs), "the demo was not shown inline"
