"""The Gradio demo: `GenerationRunner` on its own, then `python gradio_helper.py` served on loopback and driven by
`gradio_client` and by a headless Chromium, on the offline tiny model."""

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # the helpers live beside the notebook, not in an installed package
    sys.path.insert(0, str(REPO_ROOT))

from conftest import F32  # noqa: E402
from gradio_helper import (  # noqa: E402
    FAST_STEP_CACHE,
    INPAINTING_STRENGTH,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    NO_ADAPTER,
    DemoHandlers,
    GenerationRunner,
    demo_pipelines,
    fit_size,
    image_and_mask_from_editor,
    make_control_image,
    make_demo,
    size_rules_of,
)
from notebook_utils import resolve_model_id, tiny_loras  # noqa: E402
from sd3_helper import OVStableDiffusion3Pipeline  # noqa: E402
from sd3_openvino.core.layout import SizeRules  # noqa: E402

ARTIFACTS_DIR = Path(os.environ.get("SD3_ARTIFACTS_DIR", REPO_ROOT / "artifacts"))
WIDTH, HEIGHT = 48, 64  # not square, so that swapped sides show; multiples of the tiny model's 4
FAKE_CONFIGS = dict(  # for stand-in pipelines: multiples of 8 (VAE factor 4 x patch 2) up to 64 (8 patches), native 32
    transformer_config={"patch_size": 2, "pos_embed_max_size": 8, "sample_size": 8},
    vae_config={"block_out_channels": [1, 1, 1]},
)
FAKE_SIZE_RULES = SizeRules.from_configs(**FAKE_CONFIGS)
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")  # Debian's chromium, chromium-driver
CHROMIUM_ARGUMENTS = (
    "--headless=new",
    "--no-sandbox",  # CI runs as root
    "--disable-dev-shm-usage",
    "--window-size=1280,1100",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",  # the page may reach this machine only
)


def generate_args(
    *,
    prompt: str = "a photo of a cat",
    seed: int = 7,
    randomize_seed: bool = False,
    width=WIDTH,
    height=HEIGHT,
    steps=2,
    negative_prompt="",
    guidance_scale=5.0,
) -> tuple:
    """The inputs of the `/generate` endpoint, in order (any type: the server must name what is wrong)."""
    return (prompt, negative_prompt, seed, randomize_seed, width, height, guidance_scale, steps)


def load_pixels(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


PICTURE_SIZE = (96, 80)  # (width, height): another size and aspect than WIDTH x HEIGHT, so the resize shows
PAINTED_BOX = (30, 20, 62, 52)  # (left, top, right, bottom) of the stroke on the picture
PHOTO_SIZE, PHOTO_FIT = (320, 240), (72, 56)  # an upload, and the sliders it sets on the tiny model (`fit_size`)


def picture(size: tuple[int, int] = PICTURE_SIZE) -> Image.Image:
    """An RGB test picture: an orange disc on navy."""
    from PIL import ImageDraw

    image = Image.new("RGB", size, "navy")
    ImageDraw.Draw(image).ellipse((size[0] // 4, size[1] // 8, 3 * size[0] // 4, 7 * size[1] // 8), fill="orange")
    return image


def painted_layer(size: tuple[int, int] = PICTURE_SIZE, box: tuple = PAINTED_BOX) -> Image.Image:
    """An image editor layer: transparent, with `box` painted by the demo's brush (white at 70 % opacity)."""
    from PIL import ImageDraw

    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    ImageDraw.Draw(layer).rectangle(box, fill=(255, 255, 255, 178))
    return layer


def box_mask(size: tuple[int, int] = PICTURE_SIZE, box: tuple = PAINTED_BOX) -> Image.Image:
    """A black-and-white mask: `box` white (repaint)."""
    mask = Image.new("L", size, 0)
    mask.paste(255, box=(box[0], box[1], box[2] + 1, box[3] + 1))
    return mask


@pytest.fixture(scope="module", autouse=True)
def no_analytics():
    """gradio and gradio_client report usage online unless this is set (and only this turns the client's off)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
        yield


@pytest.fixture(scope="module")
def tiny_ov_model(converted) -> Path:
    """The tiny model converted in fp16 (the session's folder, which the notebook test also uses)."""
    return converted("fp16")


@pytest.fixture(scope="module")
def pipeline(tiny_ov_model) -> OVStableDiffusion3Pipeline:
    pipe = OVStableDiffusion3Pipeline.from_pretrained(tiny_ov_model)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ----------------------------------------------------------------------------------------------------------
# Without a server
# ----------------------------------------------------------------------------------------------------------


def test_helpers_import_without_ui_libraries():
    code = "import sys, gradio_helper, notebook_utils; print(sorted({'gradio', 'ipywidgets'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_size_rules_come_from_the_model(pipeline):
    limits = size_rules_of(pipeline)
    assert limits == SizeRules.from_configs(
        transformer_config=pipeline.transformer.config, vae_config=pipeline.vae_decoder.config
    )
    assert (limits.multiple, limits.maximum, limits.default) == (4, 192, 64)  # 2 x 2, 48 patches x 4, 32 x 2
    assert [limits.snap(side) for side in (1, 49, 51, 1000)] == [4, 48, 52, 192]


def test_size_rules_of_a_diffusers_pipeline_come_from_its_vae():
    diffusers_like = SimpleNamespace(  # diffusers' pipeline names its VAE `vae`, and has no `size_rules`
        transformer=SimpleNamespace(config=FAKE_CONFIGS["transformer_config"]),
        vae=SimpleNamespace(config=FAKE_CONFIGS["vae_config"]),
    )
    assert size_rules_of(diffusers_like) == FAKE_SIZE_RULES
    assert (FAKE_SIZE_RULES.multiple, FAKE_SIZE_RULES.maximum, FAKE_SIZE_RULES.default) == (8, 64, 32)


def test_demo_sliders_step_by_the_size_multiple_within_the_limits(pipeline):
    import gradio as gr

    demo = make_demo(pipeline, height=61, examples=["a red car"])
    sliders = {block.label: block for block in demo.blocks.values() if isinstance(block, gr.Slider)}
    for label, value in (("Width", 64), ("Height", 60)):
        slider = sliders[label]
        assert (slider.minimum, slider.maximum, slider.step, slider.value) == (4, 192, 4, value)
    assert {"generate", "stop"} <= {dependency.api_name for dependency in demo.fns.values()}


def test_runner_reports_every_step_and_the_seed(pipeline):
    steps = []
    image, seed = GenerationRunner(pipeline).generate(
        prompt="a cat",
        seed=3,
        width=WIDTH,
        height=HEIGHT,
        guidance_scale=5.0,
        num_inference_steps=3,
        on_step=lambda done, total: steps.append((done, total)),
    )
    assert steps == [(1, 3), (2, 3), (3, 3)]
    assert seed == 3 and image.size == (WIDTH, HEIGHT)


TOO_LONG = "a" * (MAX_PROMPT_CHARS + 1)
BAD_INPUTS = [  # (change to a good request, exception type, fragment of its message)
    ({"prompt": "  "}, ValueError, "prompt is empty"),
    ({"prompt": None}, ValueError, "prompt is empty"),  # an empty Gradio field arrives as None
    ({"prompt": 5}, TypeError, "`prompt` has to be a str but is int: 5"),
    ({"prompt": ["a cat"]}, TypeError, "`prompt` has to be a str but is list"),
    ({"prompt": TOO_LONG}, ValueError, f"`prompt` is {MAX_PROMPT_CHARS + 1:,} characters long; the limit is 4,000"),
    ({"negative_prompt": 5}, TypeError, "`negative_prompt` has to be a str but is int: 5"),
    ({"negative_prompt": TOO_LONG}, ValueError, "`negative_prompt` is 4,001 characters long"),
    ({"seed": 1.5}, ValueError, "`seed` has to be a whole number but is 1.5"),
    ({"seed": MAX_SEED + 1}, ValueError, "`seed` has to be between 0 and"),
    ({"seed": -1}, ValueError, "`seed` has to be between 0 and 2147483647 but is -1"),
    ({"seed": "7"}, TypeError, "`seed` has to be a number but is str: '7'"),
    ({"seed": None}, TypeError, "`seed` has to be a number but is NoneType"),
    ({"seed": float("nan")}, ValueError, "`seed` has to be a whole number but is nan"),
    ({"randomize_seed": "yes"}, TypeError, "`randomize_seed` has to be True or False but is 'yes'"),
    ({"width": 50}, ValueError, "divisible by 4"),
    ({"width": 50}, ValueError, "are 64 and 50. Try 64 and 48"),  # the nearest accepted sizes
    ({"width": "abc"}, TypeError, "`width` has to be a number but is str: 'abc'"),
    ({"width": "48"}, TypeError, "`width` has to be a number but is str: '48'"),
    ({"width": True}, TypeError, "`width` has to be a number but is bool"),
    ({"width": 48.5}, ValueError, "`width` has to be a whole number but is 48.5"),
    ({"width": float("inf")}, ValueError, "`width` has to be a whole number but is inf"),
    ({"height": None}, TypeError, "`height` has to be a number but is NoneType"),
    ({"height": 0}, ValueError, "must be between 4 and 192 for this model but are 0 and 48. Try 4 and 48"),
    ({"height": -64}, ValueError, "must be between 4 and 192 for this model but are -64 and 48"),
    ({"height": 400}, ValueError, "must be between 4 and 192 for this model but are 400 and 48. Try 192 and 48"),
    ({"guidance_scale": float("nan")}, ValueError, "`guidance_scale` has to be a finite number between 0.0 and 20.0"),
    ({"guidance_scale": float("inf")}, ValueError, "`guidance_scale` has to be a finite number"),
    ({"guidance_scale": "7"}, TypeError, "`guidance_scale` has to be a number but is str: '7'"),
    ({"guidance_scale": -1}, ValueError, "`guidance_scale` has to be between 0.0 and 20.0 but is -1.0"),
    ({"guidance_scale": 21}, ValueError, "`guidance_scale` has to be between 0.0 and 20.0 but is 21.0"),
    ({"num_inference_steps": 0}, ValueError, "`num_inference_steps` has to be between 1"),
    ({"num_inference_steps": 51}, ValueError, "`num_inference_steps` has to be between 1 and 50 but is 51"),
    ({"num_inference_steps": 2.5}, ValueError, "`num_inference_steps` has to be a whole number but is 2.5"),
    ({"num_inference_steps": True}, TypeError, "`num_inference_steps` has to be a number but is bool"),
    ({"num_inference_steps": "28"}, TypeError, "`num_inference_steps` has to be a number but is str: '28'"),
]


@pytest.mark.parametrize("change, error_type, message", BAD_INPUTS, ids=lambda value: repr(value)[:40])
def test_runner_rejects_bad_input_with_a_readable_message(pipeline, change, error_type, message):
    request = dict(prompt="a cat", seed=1, width=WIDTH, height=HEIGHT, guidance_scale=5.0, num_inference_steps=1)
    with pytest.raises(error_type) as error:
        GenerationRunner(pipeline).generate(**{**request, **change})
    assert message in str(error.value)


class NeverCalled:
    """A stand-in pipeline that fails the test if it is called, and whose lock is always taken."""

    size_rules = FAKE_SIZE_RULES

    def __call__(self, **kwargs):
        raise AssertionError(f"the pipeline ran for a request that should have been refused: {sorted(kwargs)}")


def test_an_over_long_prompt_is_refused_at_once_without_waiting_for_the_lock():
    runner = GenerationRunner(NeverCalled())
    runner.lock.acquire()  # another generation runs
    request = dict(width=8, height=8, guidance_scale=1.0, num_inference_steps=1)
    started = time.monotonic()
    for field in ("prompt", "negative_prompt"):
        with pytest.raises(ValueError, match=f"`{field}` is 10,000,000 characters long"):
            runner.generate(**{"prompt": "a cat", **request, field: "x" * 10_000_000})
    assert time.monotonic() - started < 1.0


def test_an_empty_seed_is_fine_when_it_is_randomized():
    runner = GenerationRunner(NeverCalled())
    checked = runner.check(
        prompt="a cat", seed=None, randomize_seed=True, width=8, height=16, guidance_scale=1.0, num_inference_steps=1
    )
    assert 0 <= checked.seed <= MAX_SEED and (checked.width, checked.height, checked.negative_prompt) == (8, 16, "")


class OverlapDetector:
    """A stand-in pipeline that records whether two calls ever ran at the same time."""

    size_rules = FAKE_SIZE_RULES  # what the runner checks sizes against

    def __init__(self):
        self.running, self.overlapped, self.calls = 0, False, 0
        self.count_lock = threading.Lock()

    def __call__(self, **kwargs):
        with self.count_lock:
            self.running += 1
            self.calls += 1
            self.overlapped |= self.running > 1
        time.sleep(0.05)
        with self.count_lock:
            self.running -= 1
        return type("Output", (), {"images": [Image.new("RGB", (kwargs["width"], kwargs["height"]))]})


def test_runner_runs_one_generation_at_a_time():
    fake = OverlapDetector()
    runner = GenerationRunner(fake)
    request = dict(prompt="a cat", width=8, height=8, guidance_scale=1.0, num_inference_steps=1)
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda seed: runner.generate(**request, seed=seed), range(8)))
    assert fake.calls == 8 and not fake.overlapped


# ----------------------------------------------------------------------------------------------------------
# Image to image and inpainting, without a server
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_pipes(pipeline) -> dict:
    return demo_pipelines(pipeline)


def test_demo_pipelines_share_the_compiled_models(pipeline, demo_pipes):
    assert list(demo_pipes) == ["text-to-image", "image-to-image", "inpainting"]
    assert demo_pipes["text-to-image"] is pipeline
    for task in ("image-to-image", "inpainting"):
        shared = demo_pipes[task].submodels
        assert all(shared[name] is submodel for name, submodel in pipeline.submodels.items()), task
    # the VAE encoder the text pipeline lacks is loaded once, for both image pipelines
    assert "vae_encoder" not in pipeline.submodels
    assert demo_pipes["inpainting"].submodels["vae_encoder"] is demo_pipes["image-to-image"].submodels["vae_encoder"]


def test_an_image_pipeline_given_to_the_demo_serves_every_tab(demo_pipes):
    from sd3_helper import OVStableDiffusion3InpaintPipeline

    given = demo_pipes["inpainting"]
    pipes = demo_pipelines(given)
    assert type(pipes["text-to-image"]) is OVStableDiffusion3Pipeline  # its call needs no image
    assert isinstance(pipes["inpainting"], OVStableDiffusion3InpaintPipeline)
    for pipe in pipes.values():
        assert all(pipe.submodels[name] is submodel for name, submodel in given.submodels.items())


def test_a_folder_without_the_vae_encoder_gets_text_to_image_only(tiny_ov_model, tmp_path):
    model_dir = tmp_path / "no-encoder"
    shutil.copytree(tiny_ov_model, model_dir, ignore=shutil.ignore_patterns("vae_encoder"))
    pipe = OVStableDiffusion3Pipeline.from_pretrained(model_dir)
    assert list(demo_pipelines(pipe)) == ["text-to-image"]


def test_demo_has_a_tab_and_an_endpoint_per_task(pipeline):
    import gradio as gr

    demo = make_demo(pipeline)
    blocks = list(demo.blocks.values())
    tabs = [block.label for block in blocks if isinstance(block, gr.Tab)]
    assert tabs == ["Text to image", "Image to image", "Inpainting"]
    api_names = {dependency.api_name for dependency in demo.fns.values()}
    assert {"generate", "image_to_image", "inpaint", "stop"} <= api_names
    strengths = [block.value for block in blocks if isinstance(block, gr.Slider) and block.label == "Strength"]
    assert strengths == [0.6, INPAINTING_STRENGTH]  # diffusers' default; see INPAINTING_STRENGTH for 0.85
    (editor,) = [block for block in blocks if isinstance(block, gr.ImageEditor)]
    assert (editor.type, editor.image_mode) == ("pil", "RGBA")  # the layers keep their alpha: what is painted


def test_a_pipeline_of_another_kind_gets_text_to_image_only():
    import gradio as gr

    demo = make_demo(NeverCalled())  # not ours (diffusers', say): no image pipelines to build with `from_pipe`
    assert not any(isinstance(block, (gr.Tab, gr.ImageEditor)) for block in demo.blocks.values())
    api_names = {dependency.api_name for dependency in demo.fns.values()}
    assert {"generate", "stop"} <= api_names and not {"image_to_image", "inpaint"} & api_names


def test_an_upload_sets_the_size_to_the_image_s_within_the_native_area(pipeline):
    rules = FAKE_SIZE_RULES  # multiples of 8 up to 64, native 32
    assert fit_size((16, 24), rules) == (16, 24)  # small enough: kept, never enlarged
    assert fit_size((17, 23), rules) == (16, 24)  # snapped to multiples of 8
    assert fit_size((4000, 3000), rules) == (40, 24)  # 37 x 28 pixels: the native area, same aspect, snapped
    assert fit_size((6400, 100), rules) == (64, 8)  # a side never beyond the maximum nor below one multiple
    assert fit_size(PHOTO_SIZE, size_rules_of(pipeline)) == PHOTO_FIT  # what the browser test expects


def test_the_painted_layers_become_the_mask():
    second_box = (70, 60, 90, 75)
    image, mask = image_and_mask_from_editor(
        {
            "background": picture().convert("RGBA"),
            "layers": [painted_layer(), painted_layer(box=second_box)],
            "composite": None,
        }
    )
    assert image.mode == "RGB" and image.size == PICTURE_SIZE
    np.testing.assert_array_equal(np.asarray(image), np.asarray(picture()))
    expected = np.maximum(np.asarray(box_mask()), np.asarray(box_mask(box=second_box)))
    assert mask.mode == "L"
    np.testing.assert_array_equal(np.asarray(mask), expected)  # white where any layer is painted, else black


def test_the_editor_value_may_lack_the_image_or_the_mask():
    assert image_and_mask_from_editor(None) == (None, None)
    no_image = {"background": None, "layers": [painted_layer()], "composite": None}
    assert image_and_mask_from_editor(no_image) == (None, None)
    image, mask = image_and_mask_from_editor({"background": picture(), "layers": [], "composite": None})
    assert image.size == PICTURE_SIZE and mask is None
    transparent = Image.new("RGBA", PICTURE_SIZE, (0, 0, 0, 0))
    image, mask = image_and_mask_from_editor({"background": transparent, "layers": [transparent], "composite": None})
    assert image.getcolors() == [(96 * 80, (255, 255, 255))]  # transparency shows as white, as on the page
    assert mask.getbbox() is None  # nothing painted: the runner says so


def test_a_layer_of_another_size_than_the_image_is_refused():
    value = {"background": picture(), "layers": [painted_layer(size=(40, 40))], "composite": None}
    with pytest.raises(ValueError, match="`mask_image` layer 0 is 40x40 but `image` is 96x80"):
        image_and_mask_from_editor(value)


@pytest.mark.parametrize("task", ["image-to-image", "inpainting"])
@pytest.mark.parametrize("num_inference_steps, strength, steps_run", [(4, 0.5, 2), (10, 0.8, 8), (3, 1.0, 3)])
def test_runner_image_tasks_give_the_asked_size_and_report_the_steps_that_run(
    demo_pipes, task, num_inference_steps, strength, steps_run
):
    runner = GenerationRunner(
        demo_pipes["text-to-image"], image_to_image=demo_pipes["image-to-image"], inpainting=demo_pipes["inpainting"]
    )
    steps = []
    image, seed = runner.generate(
        task=task,
        image=picture(),
        mask_image=box_mask() if task == "inpainting" else None,
        strength=strength,
        prompt="a cat",
        seed=3,
        width=WIDTH,
        height=HEIGHT,
        guidance_scale=5.0,
        num_inference_steps=num_inference_steps,
        on_step=lambda done, total: steps.append((done, total)),
    )
    # the pipeline's own schedule, float for float: 10 steps at 0.8 skip int(10 - 8.0) = 2, not int(1.9999999999999996)
    assert steps == [(done, steps_run) for done in range(1, steps_run + 1)]
    assert seed == 3 and image.size == (WIDTH, HEIGHT)


IMAGE_BAD_INPUTS = [  # (task, change to a good request, exception type, fragment of its message)
    ("image-to-image", {"image": None}, ValueError, "`image` is missing: upload the image to restyle"),
    ("inpainting", {"image": None}, ValueError, "`image` is missing: upload the image to repaint"),
    ("image-to-image", {"image": "cat.png"}, TypeError, "`image` has to be a PIL image but is str: 'cat.png'"),
    ("image-to-image", {"strength": 1.5}, ValueError, "`strength` has to be between 0.0 and 1.0 but is 1.5"),
    ("inpainting", {"strength": 1.5}, ValueError, "`strength` has to be between 0.0 and 1.0 but is 1.5"),
    ("image-to-image", {"strength": -0.1}, ValueError, "`strength` has to be between 0.0 and 1.0 but is -0.1"),
    ("image-to-image", {"strength": float("nan")}, ValueError, "`strength` has to be a finite number between 0.0 and"),
    ("image-to-image", {"strength": "0.5"}, TypeError, "`strength` has to be a number but is str: '0.5'"),
    ("image-to-image", {"strength": None}, TypeError, "`strength` has to be a number but is NoneType"),
    ("image-to-image", {"strength": 0.2}, ValueError, "leaves no denoising step (4 x 0.2 < 1). Use `strength` >= 0.25"),
    ("inpainting", {"mask_image": None}, ValueError, "`mask_image` is missing: paint the area to repaint"),
    ("inpainting", {"mask_image": Image.new("L", PICTURE_SIZE, 0)}, ValueError, "nothing is painted. Please paint"),
    ("inpainting", {"mask_image": Image.new("L", PICTURE_SIZE, 100)}, ValueError, "nothing is painted"),  # < 128
    ("inpainting", {"mask_image": box_mask(size=(40, 40))}, ValueError, "`mask_image` is 40x40 but `image` is 96x80"),
    ("upscaling", {}, ValueError, "`task` has to be one of ('text-to-image', 'image-to-image', 'inpainting')"),
    ("inpainting", {"prompt": ""}, ValueError, "prompt is empty"),  # and every check of the text tab
    ("image-to-image", {"width": 50}, ValueError, "divisible by 8"),
]


@pytest.mark.parametrize("task, change, error_type, message", IMAGE_BAD_INPUTS, ids=lambda value: repr(value)[:40])
def test_runner_rejects_bad_image_input_with_a_readable_message(task, change, error_type, message):
    runner = GenerationRunner(NeverCalled(), image_to_image=NeverCalled(), inpainting=NeverCalled())
    request = dict(prompt="a cat", seed=1, width=16, height=16, guidance_scale=1.0, num_inference_steps=4)
    request.update(image=picture(), strength=0.5, mask_image=box_mask())
    with pytest.raises(error_type) as error:
        runner.generate(task=task, **{**request, **change})
    assert message in str(error.value)


def test_runner_without_image_pipelines_refuses_the_image_tasks():
    runner = GenerationRunner(NeverCalled())
    assert runner.tasks == ("text-to-image",)
    with pytest.raises(ValueError, match=r"`task` has to be one of \('text-to-image',\) but is 'inpainting'"):
        runner.generate(task="inpainting", prompt="a cat", width=8, height=8, guidance_scale=1.0, num_inference_steps=1)


# ----------------------------------------------------------------------------------------------------------
# The step cache ("Fast") and LoRA adapters
# ----------------------------------------------------------------------------------------------------------

ADAPTERS = ["random_a", "random_b"]  # `notebook_utils.TINY_LORA_SEEDS`: the notebook's stand-ins
REQUEST = dict(prompt="a photo of a cat", seed=7, width=WIDTH, height=HEIGHT, guidance_scale=5.0, num_inference_steps=2)


@pytest.fixture(scope="module")
def lora_pipeline(tiny_ov_model, tiny_checkpoint, tiny_models_dir) -> OVStableDiffusion3Pipeline:
    """A pipeline of its own (adapters change its submodels) with the tiny model's two random LoRAs, in f32 so that
    images compare exactly."""
    pipe = OVStableDiffusion3Pipeline.from_pretrained(tiny_ov_model, ov_config=F32)
    pipe.set_progress_bar_config(disable=True)
    for name, folder in tiny_loras(tiny_checkpoint, models_dir=tiny_models_dir).items():
        pipe.load_lora_weights(folder, adapter_name=name)
    return pipe


def direct_image(pipe, *, adapter: str | None = None, lora_scale: float = 1.0, **options) -> np.ndarray:
    """`REQUEST` straight from `pipe`, after `set_adapters([adapter], [lora_scale])` (`NO_ADAPTER`: `disable_lora`)."""
    import torch

    if adapter == NO_ADAPTER:
        pipe.disable_lora()
    elif adapter is not None:
        pipe.enable_lora()
        pipe.set_adapters([adapter], [lora_scale])
    request = {**REQUEST, **options}
    image = pipe(
        request.pop("prompt"), generator=torch.Generator().manual_seed(request.pop("seed")), **request
    ).images[0]
    return np.asarray(image)


def blocks_labelled(demo, kind, label: str) -> list:
    return [block for block in demo.blocks.values() if isinstance(block, kind) and block.label == label]


def api_parameters(demo, api_name: str) -> list[tuple]:
    """(name, default) of each input of the endpoint `api_name`, as API clients see them."""
    parameters = demo.get_api_info()["named_endpoints"][api_name]["parameters"]
    return [(parameter["parameter_name"], parameter["parameter_default"]) for parameter in parameters]


def test_adapter_choice_and_scale_show_only_when_adapters_are_loaded(pipeline, lora_pipeline):
    import gradio as gr

    plain, with_adapters = make_demo(pipeline), make_demo(lora_pipeline)
    assert not blocks_labelled(plain, gr.Dropdown, "LoRA adapter")
    assert not blocks_labelled(plain, gr.Slider, "LoRA scale")
    assert api_parameters(plain, "/generate")[-2:] == [("num_inference_steps", 28), ("fast", True)]
    dropdowns = blocks_labelled(with_adapters, gr.Dropdown, "LoRA adapter")
    sliders = blocks_labelled(with_adapters, gr.Slider, "LoRA scale")
    assert len(dropdowns) == len(sliders) == 3  # one of each per tab
    for dropdown in dropdowns:
        assert [value for _, value in dropdown.choices] == [NO_ADAPTER, *ADAPTERS]
        assert dropdown.value == lora_pipeline.get_active_adapters()[0]  # the adapter active when the demo was built
    assert {(slider.minimum, slider.maximum, slider.value) for slider in sliders} == {(-1.0, 2.0, 1.0)}
    active = lora_pipeline.get_active_adapters()[0]
    assert api_parameters(with_adapters, "/generate")[-4:] == [
        ("num_inference_steps", 28), ("fast", True), ("adapter", active), ("lora_scale", 1.0)
    ]  # fmt: skip
    for api_name in ("/image_to_image", "/inpaint"):  # the options come after strength
        names = [name for name, _ in api_parameters(with_adapters, api_name)]
        assert names[-4:] == ["strength", "fast", "adapter", "lora_scale"]


def test_fast_switch_is_in_every_tab_on_and_absent_for_another_pipeline(pipeline):
    import gradio as gr

    switches = blocks_labelled(make_demo(pipeline), gr.Checkbox, "Fast (step cache)")
    assert len(switches) == 3 and all(switch.value is True for switch in switches)  # on, as the pipeline's default
    assert not blocks_labelled(make_demo(NeverCalled()), gr.Checkbox, "Fast (step cache)")


def test_runner_applies_the_chosen_adapter_as_set_adapters_does(lora_pipeline):
    runner = GenerationRunner(lora_pipeline)
    choices = [("random_a", 0.5), (NO_ADAPTER, 1.0), ("random_b", -0.8), ("random_a", 0.5)]
    images = [
        np.asarray(runner.generate(**REQUEST, adapter=adapter, lora_scale=scale)[0]) for adapter, scale in choices
    ]
    np.testing.assert_array_equal(images[3], images[0])  # the same choice again: nothing left over from the others
    for (adapter, scale), image in zip(choices[:3], images[:3]):
        expected = direct_image(lora_pipeline, adapter=adapter, lora_scale=scale)
        np.testing.assert_array_equal(image, expected, err_msg=adapter)
    assert len({image.tobytes() for image in images[:3]}) == 3, "each adapter choice should give another image"


def test_runner_without_an_adapter_choice_leaves_the_adapters_as_set(lora_pipeline):
    expected = direct_image(lora_pipeline, adapter="random_b", lora_scale=0.3)
    np.testing.assert_array_equal(np.asarray(GenerationRunner(lora_pipeline).generate(**REQUEST)[0]), expected)


BAD_OPTIONS = [  # (change to a good request, exception type, fragment of its message)
    ({"adapter": "nope"}, ValueError, "`adapter` 'nope' is not loaded; loaded adapters: ['random_a', 'random_b']. "
     "Choose one of them or 'None'."),
    ({"adapter": 3}, TypeError, "`adapter` has to be a str but is int: 3"),
    ({"lora_scale": float("nan")}, ValueError, "`lora_scale` has to be a finite number between -1.0 and 2.0 "
     "but is nan"),
    ({"lora_scale": float("inf")}, ValueError, "`lora_scale` has to be a finite number between -1.0 and 2.0 "
     "but is inf"),
    ({"lora_scale": 2.5}, ValueError, "`lora_scale` has to be between -1.0 and 2.0 but is 2.5"),
    ({"lora_scale": "1"}, TypeError, "`lora_scale` has to be a number but is str: '1'"),
    ({"fast": "yes"}, TypeError, "`fast` has to be True or False but is 'yes'"),
    ({"fast": 1}, TypeError, "`fast` has to be True or False but is 1"),
]  # fmt: skip


@pytest.mark.parametrize("change, error_type, message", BAD_OPTIONS, ids=lambda value: repr(value)[:40])
def test_bad_options_are_refused_with_a_readable_message(lora_pipeline, change, error_type, message):
    with pytest.raises(error_type) as error:
        GenerationRunner(lora_pipeline).check(**{**REQUEST, "adapter": "random_a", **change})
    assert message in str(error.value)


def test_an_adapter_is_refused_where_none_is_loaded_and_fast_where_there_is_no_step_cache(pipeline):
    with pytest.raises(ValueError, match="`adapter` 'random_a' is not loaded: the pipeline has no LoRA adapters"):
        GenerationRunner(pipeline).check(**REQUEST, adapter="random_a")
    GenerationRunner(pipeline).check(**REQUEST, adapter=NO_ADAPTER)  # "None" is always a valid choice
    with pytest.raises(ValueError, match=r"`fast` \(the step cache\) needs an `OVStableDiffusion3Pipeline` but this"):
        GenerationRunner(NeverCalled()).generate(**REQUEST, fast=True)  # diffusers' pipeline, say


def test_fast_is_openvino_genai_s_default_step_cache(pipeline):
    import openvino_genai

    genai = openvino_genai.TaylorSeerCacheConfig()  # what openvino.genai runs SD3 with by default
    fields = ("cache_interval", "disable_cache_before_step", "disable_cache_after_step")
    assert [getattr(FAST_STEP_CACHE, field) for field in fields] == [getattr(genai, field) for field in fields]
    runner, steps = GenerationRunner(pipeline), 9  # with 9 steps, the default cache skips the transformer on step 6
    request = {**REQUEST, "num_inference_steps": steps}
    exact, fast, unset = (np.asarray(runner.generate(**request, fast=flag)[0]) for flag in (False, True, None))
    assert not np.array_equal(exact, fast), "the step cache should change the image"
    np.testing.assert_array_equal(fast, direct_image(pipeline, num_inference_steps=steps, taylorseer=FAST_STEP_CACHE))
    np.testing.assert_array_equal(unset, fast)  # no choice: the pipeline's default, the step cache
    np.testing.assert_array_equal(exact, direct_image(pipeline, num_inference_steps=steps, taylorseer=None))


@pytest.fixture(scope="module")
def lora_client(lora_pipeline, tmp_path_factory):
    """The demo of `lora_pipeline`, launched in this process on a loopback port, and a client of it."""
    from gradio_client import Client

    demo = make_demo(lora_pipeline)
    demo.launch(server_name="127.0.0.1", server_port=free_loopback_port(), prevent_thread_lock=True, quiet=True)
    yield Client(demo.local_url, verbose=False, download_files=tmp_path_factory.mktemp("lora-downloads"))
    demo.close()


def test_served_adapter_choice_fast_switch_and_their_errors(lora_client, lora_pipeline, image_files):
    from gradio_client.exceptions import AppError

    with_adapter = load_pixels(lora_client.predict(*generate_args(), False, "random_a", 0.5, api_name="/generate")[0])
    without = load_pixels(lora_client.predict(*generate_args(), False, NO_ADAPTER, 0.5, api_name="/generate")[0])
    np.testing.assert_array_equal(with_adapter, direct_image(lora_pipeline, adapter="random_a", lora_scale=0.5))
    np.testing.assert_array_equal(without, direct_image(lora_pipeline, adapter=NO_ADAPTER))
    image_path, _ = lora_client.predict(*generate_args(), api_name="/generate")  # options left out: initial values
    assert Image.open(image_path).size == (WIDTH, HEIGHT)
    restyled, seed = lora_client.predict(  # an image tab: the options after strength
        image_input("/image_to_image", image_files), *generate_args(), 0.75, True, "random_b", -0.5,
        api_name="/image_to_image",
    )
    assert Image.open(restyled).size == (WIDTH, HEIGHT) and seed == 7
    with pytest.raises(AppError, match=r"`adapter` 'nope' is not loaded; loaded adapters: \['random_a', 'random_b'\]"):
        lora_client.predict(*generate_args(), False, "nope", 1.0, api_name="/generate")
    with pytest.raises(AppError, match="`lora_scale` has to be between -1.0 and 2.0 but is 5.0"):
        lora_client.predict(*generate_args(), False, "random_a", 5.0, api_name="/generate")


# ----------------------------------------------------------------------------------------------------------
# Live previews
# ----------------------------------------------------------------------------------------------------------


def direct_image_and_previews(pipe, *, method: str = "linear", **options) -> tuple[np.ndarray, list[np.ndarray]]:
    """`direct_image`, and the preview of each step drawn in the call's `callback_on_step_end` at the image's size."""
    previews = []

    def collect(pipe, step, timestep, callback_kwargs):
        preview = pipe.preview_images(callback_kwargs["latents"], method=method, size=(WIDTH, HEIGHT))[0]
        previews.append(np.asarray(preview))
        return {}

    return direct_image(pipe, callback_on_step_end=collect, **options), previews


def streamed(runner: GenerationRunner, **options) -> tuple[list, object]:
    """The step updates and the final one of `runner.stream` for `REQUEST` (changed by `options`), without the
    status updates (compiling for a size that another test's call replaced: see the test after the next)."""
    *steps, final = runner.stream(**{**REQUEST, **options})
    assert final.final and not any(update.final for update in steps)
    return [update for update in steps if update.status is None], final


def test_stream_yields_the_previews_of_the_steps_then_the_pipeline_s_own_image(pipeline):
    runner = GenerationRunner(pipeline)
    assert runner.preview_method == "linear"  # fitted when the runner was made: no generation waits for it
    steps, final = streamed(runner, num_inference_steps=4)
    image, expected = direct_image_and_previews(pipeline, num_inference_steps=4)
    assert [(update.done, update.total, update.seed) for update in steps] == [(done, 4, 7) for done in range(1, 5)]
    previews = {update.done: np.asarray(update.image) for update in steps if update.image is not None}
    assert previews, "no step got a preview"  # one whose successor was already done when it was read gets none
    for done, preview in previews.items():
        assert preview.shape == (HEIGHT, WIDTH, 3)
        np.testing.assert_array_equal(preview, expected[done - 1])  # what `preview_images` draws of that step
    assert (final.done, final.seed) == (4, 7)
    np.testing.assert_array_equal(np.asarray(final.image), image)  # previews change nothing in the result
    assert final.summary.startswith("4 steps in ") and "decode" in final.summary  # the call's `PerformanceMetrics`
    assert all(update.summary is None for update in steps)


def test_the_handler_yields_previews_before_the_result_and_reports_every_step(pipeline, capsys):
    handlers, progress = DemoHandlers(GenerationRunner(pipeline)), []
    outputs = list(
        handlers.run("text-to-image", None, lambda value, **details: progress.append((value, details)), **REQUEST)
    )
    assert len(outputs) >= 2, "no preview before the result"
    assert {(image.size, seed) for image, seed in outputs} == {((WIDTH, HEIGHT), 7)}
    np.testing.assert_array_equal(np.asarray(outputs[-1][0]), direct_image(pipeline))
    denoising = [(value, details) for value, details in progress if details["desc"] == "Denoising"]
    assert denoising == [((done, 2), {"desc": "Denoising", "unit": "steps"}) for done in (1, 2)]
    assert "2 steps in " in capsys.readouterr().out  # the timings' notice (`gr.Info` prints outside an event)


def test_a_new_size_says_that_it_compiles_before_the_first_step_and_a_seen_size_does_not(pipeline):
    handlers, progress = DemoHandlers(GenerationRunner(pipeline)), []
    new_size = dict(REQUEST, width=WIDTH + 4)  # no other test asks for it: the models compile for it now
    for _ in range(2):
        list(handlers.run("text-to-image", None, lambda value, **details: progress.append((value, details)), **new_size))
    compiling = f"Compiling the transformer and vae_decoder for {WIDTH + 4}x{HEIGHT}..."
    assert progress[0] == ((0, 2), {"desc": compiling, "unit": "steps"})  # the bar says so before the first step
    assert [details["desc"] for _, details in progress[1:]] == ["Denoising"] * 4  # the second call compiles nothing
    assert pipeline.on_compile is None  # the runner's listener is gone after the call


def test_a_failing_preview_turns_the_previews_off_and_the_generation_goes_on(pipeline, monkeypatch):
    runner = GenerationRunner(pipeline)

    def broken(*args, **kwargs):
        raise RuntimeError("the preview map is gone")

    monkeypatch.setattr(pipeline, "preview_images", broken)
    steps, final = streamed(runner)
    assert runner.preview_method is None and all(update.image is None for update in steps)
    np.testing.assert_array_equal(np.asarray(final.image), direct_image(pipeline))


class SteppingPipeline:
    """A stand-in pipeline (not ours, so without previews, as diffusers'): `num_inference_steps` steps of
    `step_seconds`, each followed by `callback_on_step_end`; it stops when the callback sets `_interrupt`."""

    size_rules = FAKE_SIZE_RULES

    def __init__(self, step_seconds: float = 0.02):
        self.step_seconds, self.steps_run, self._interrupt = step_seconds, 0, False

    def __call__(self, *, num_inference_steps, width, height, callback_on_step_end, **kwargs):
        self.steps_run, self._interrupt = 0, False
        for step in range(num_inference_steps):
            time.sleep(self.step_seconds)
            self.steps_run += 1
            callback_on_step_end(self, step, None, {"latents": None})
            if self._interrupt:
                break
        return SimpleNamespace(images=[Image.new("RGB", (width, height), "orange")])


FAKE_REQUEST = dict(prompt="a cat", seed=1, width=16, height=8, guidance_scale=1.0, num_inference_steps=40)


def test_stop_during_a_stream_ends_it_with_the_image_of_the_steps_done():
    fake = SteppingPipeline()
    runner = GenerationRunner(fake)
    updates = runner.stream(**FAKE_REQUEST)
    first = next(updates)  # the first step's update comes while the pipeline still runs
    runner.stop()
    *steps, final = [first, *updates]
    assert first.done == 1 and final.final and final.done == fake.steps_run < 40
    assert final.image.size == (16, 8) and all(update.image is None for update in steps)  # no previews: not ours
    assert final.summary is None  # nor metrics


def test_closing_a_stream_early_stops_its_generation():
    fake = SteppingPipeline()
    runner = GenerationRunner(fake)
    updates = runner.stream(**FAKE_REQUEST)
    next(updates)
    updates.close()  # the reader is gone (a closed page)
    assert runner.lock.acquire(timeout=5), "the generation went on"
    assert fake.steps_run < 40


def test_a_pipeline_without_previews_gets_the_result_only_and_the_progress(tmp_path):
    handlers, progress = DemoHandlers(GenerationRunner(SteppingPipeline(step_seconds=0))), []
    outputs = list(handlers.run("text-to-image", None, lambda value, **details: progress.append(value), **FAKE_REQUEST))
    assert [(image.size, seed) for image, seed in outputs] == [((16, 8), 1)]
    assert progress == [(done, 40) for done in range(1, 41)]


@pytest.fixture(scope="module")
def taesd_pipeline(tiny_ov_model, tmp_path_factory) -> OVStableDiffusion3Pipeline:
    """The tiny model with a tiny random TAESD decoder converted into its folder (a copy), in f32."""
    from sd3_helper import convert_preview_decoder, make_tiny_taesd

    folder = tmp_path_factory.mktemp("taesd") / "tiny-sd3-taesd"
    shutil.copytree(tiny_ov_model, folder)
    channels = json.loads((folder / "vae_decoder" / "config.json").read_text())["latent_channels"]
    taesd = make_tiny_taesd(folder.parent / "tiny-taesd", latent_channels=channels, vae_scale_factor=2)
    convert_preview_decoder(taesd, folder)
    pipe = OVStableDiffusion3Pipeline.from_pretrained(folder, ov_config=F32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_with_a_tiny_decoder_in_the_folder_the_previews_are_taesd_s_every_few_steps(taesd_pipeline):
    runner = GenerationRunner(taesd_pipeline)
    assert runner.preview_method == "taesd"
    steps, final = streamed(runner, num_inference_steps=7)
    image, expected = direct_image_and_previews(taesd_pipeline, method="taesd", num_inference_steps=7)
    previews = {update.done: np.asarray(update.image) for update in steps if update.image is not None}
    assert previews and set(previews) <= {3, 6, 7}  # every `PREVIEW_INTERVALS["taesd"]` steps, and the last
    for done, preview in previews.items():
        np.testing.assert_array_equal(preview, expected[done - 1])
    np.testing.assert_array_equal(np.asarray(final.image), image)


def test_the_progress_shows_over_the_previews_and_covers_the_result_without_them(pipeline):
    def show_progress(demo) -> set:
        runs = [fn for fn in demo.fns.values() if fn.api_name in ("generate", "image_to_image", "inpaint")]
        return {fn.show_progress for fn in runs}

    assert show_progress(make_demo(pipeline)) == {"minimal"}  # a bar and a step count over the preview
    assert show_progress(make_demo(NeverCalled())) == {"full"}


# ----------------------------------------------------------------------------------------------------------
# The served demo
# ----------------------------------------------------------------------------------------------------------


def test_cli_reports_a_missing_model_folder(tmp_path):
    result = run_cli(str(tmp_path / "missing"))
    assert result.returncode == 2
    assert "error:" in result.stderr and "missing` does not exist" in result.stderr and "Traceback" not in result.stderr
    assert_one_error_line(result, "missing` does not exist")


def run_cli(*arguments: str) -> subprocess.CompletedProcess:
    """`python gradio_helper.py ARGUMENTS` as a user runs it (it must fail fast here: the timeout is short)."""
    command = [sys.executable, "gradio_helper.py", *arguments]
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)


def assert_one_error_line(result: subprocess.CompletedProcess, fragment: str) -> None:
    """Exit status 2, and stderr is one `error:` line holding `fragment`, without a traceback."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr


def test_cli_reports_a_folder_that_is_not_a_converted_model(tmp_path):
    assert_one_error_line(run_cli(str(tmp_path)), "model_index.json` is missing")


def test_cli_reports_a_port_in_use_before_loading_the_model(tiny_ov_model):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        started = time.monotonic()
        result = run_cli(str(tiny_ov_model), "--port", str(port))
    assert_one_error_line(result, f"`--port` {port} on 127.0.0.1 is in use")
    assert time.monotonic() - started < 20, "the port should be checked before the model loads"


def test_cli_loads_lora_adapters_before_building_the_demo(tiny_ov_model, tmp_path_factory, monkeypatch):
    import gradio as gr

    import gradio_helper

    models_dir = tmp_path_factory.getbasetemp() / "models"
    loras = tiny_loras(resolve_model_id("tiny", models_dir=models_dir), models_dir=models_dir)
    launched = []
    monkeypatch.setattr(gr.Blocks, "launch", lambda demo, **options: launched.append(demo))  # build, do not serve
    flags = ["--lora", f"{loras['random_a']}:0.5", "--lora", str(loras["random_b"])]
    assert gradio_helper.main([str(tiny_ov_model), *flags]) == 0
    (demo,) = launched
    dropdowns = blocks_labelled(demo, gr.Dropdown, "LoRA adapter")
    sliders = blocks_labelled(demo, gr.Slider, "LoRA scale")
    assert [value for _, value in dropdowns[0].choices] == [NO_ADAPTER, "lora_0", "lora_1"]  # `load_adapters`' names
    assert {(dropdown.value, slider.value) for dropdown, slider in zip(dropdowns, sliders)} == {("lora_0", 0.5)}


@pytest.mark.parametrize(
    "lora, message",
    [
        ("{missing}", "`--lora` '{missing}' does not exist. Pass a LoRA `.safetensors` file, its folder or a hub id"),
        ("{missing}:nan", "The scale of LoRA '{missing}' in `lora` has to be a finite number"),
        ("{missing}:abc", "SCALE after the last ':' has to be a number, e.g. my_lora.safetensors:0.8"),
        ("{not_a_lora}:0.8", "`--lora`: LoRA '{not_a_lora}' could not be read"),  # found once the model is loaded
    ],
    ids=["missing-file", "nan-scale", "scale-not-a-number", "not-a-lora"],
)
def test_cli_reports_a_bad_lora_in_one_error_line(tiny_ov_model, tmp_path, capsys, lora, message):
    import gradio_helper

    paths = dict(missing=str(tmp_path / "style.safetensors"), not_a_lora=str(tmp_path / "not-a-lora.safetensors"))
    Path(paths["not_a_lora"]).write_text("not a LoRA")
    try:
        status = gradio_helper.main([str(tiny_ov_model), "--lora", lora.format(**paths)])
    except SystemExit as exit:  # argparse's own check of the option's form
        status = exit.code
    stderr = capsys.readouterr().err
    assert status == 2 and "Traceback" not in stderr, stderr
    last = stderr.strip().splitlines()[-1]  # (diffusers may log above it)
    assert "error: " in last and message.format(**paths) in last, stderr


def free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_ov_model, tmp_path_factory):
    """`python gradio_helper.py MODEL_DIR --port N` as a user starts it (with a small upload limit); yields (url, process)."""
    import httpx

    port = free_loopback_port()
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "gradio_helper.py", str(tiny_ov_model), "--port", str(port), "--max-file-size", str(UPLOAD_LIMIT_MB)],
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while True:
        if process.poll() is not None:
            pytest.fail(f"the demo exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the demo did not answer on {url} within 120 s:\n{log_path.read_text()}")
        time.sleep(0.5)
    yield url, process
    process.terminate()
    process.wait(timeout=30)
    log = log_path.read_text()  # gradio itself logs a traceback for out-of-range sliders; our code must not
    own_frames = [f'File "{REPO_ROOT / name}' for name in ("gradio_helper.py", "sd3_helper.py", "sd3_openvino/")]
    assert not any(frame in log for frame in own_frames), f"the server logged a stack trace of the demo:\n{log}"


UPLOAD_LIMIT_MB = 1  # the served demo's `--max-file-size` (default 50): small, so the test's file is small


def test_an_upload_over_the_limit_is_refused(server):
    import httpx

    limit = UPLOAD_LIMIT_MB * 1024 * 1024
    upload = f"{server[0]}gradio_api/upload"  # where gradio 6 takes the files of image inputs
    refused = httpx.post(upload, files={"files": ("big.png", b"\0" * (limit + 1), "image/png")}, timeout=60)
    assert refused.status_code == 413 and f"File size exceeded maximum allowed size of {limit} bytes" in refused.text
    accepted = httpx.post(upload, files={"files": ("small.png", b"\0" * (limit - 1024), "image/png")}, timeout=60)
    assert accepted.status_code == 200, accepted.text


@pytest.mark.parametrize("bad", ["0", "1.5", "ten"])
def test_the_upload_limit_is_a_whole_number_of_megabytes(bad, capsys):
    from sd3_openvino.demo.cli import main
    from sd3_openvino.demo.ui import MAX_FILE_SIZE_MB

    assert MAX_FILE_SIZE_MB == 50
    with pytest.raises(SystemExit) as exit:
        main(["no-such-model", "--max-file-size", bad])
    assert exit.value.code == 2
    assert f"--max-file-size: has to be a whole number of megabytes from 1 but is '{bad}'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def client(server, tmp_path_factory):
    from gradio_client import Client

    return Client(server[0], verbose=False, download_files=tmp_path_factory.mktemp("downloads"))


def test_server_listens_on_loopback_only(server):
    import psutil

    listening = [c.laddr for c in psutil.Process(server[1].pid).net_connections(kind="inet") if c.status == "LISTEN"]
    assert listening and all(address.ip == "127.0.0.1" for address in listening), listening


def test_generate_returns_an_image_of_the_requested_size(client):
    image_path, seed = client.predict(*generate_args(seed=7), api_name="/generate")
    assert Image.open(image_path).size == (WIDTH, HEIGHT)
    assert seed == 7


def test_same_seed_gives_the_same_image(client):
    first, second, other = (
        load_pixels(client.predict(*generate_args(seed=seed), api_name="/generate")[0]) for seed in (11, 11, 12)
    )
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, other), "a different seed should give a different image"


def test_randomized_seed_is_reported_and_reproduces_the_image(client):
    image_path, seed = client.predict(*generate_args(randomize_seed=True), api_name="/generate")
    assert 0 <= seed <= MAX_SEED
    again_path, again_seed = client.predict(*generate_args(seed=seed), api_name="/generate")
    assert again_seed == seed
    np.testing.assert_array_equal(load_pixels(image_path), load_pixels(again_path))


@pytest.mark.parametrize(
    "args, message",
    [
        (generate_args(width=50), "`height` and `width` have to be divisible by 4"),
        (generate_args(height=400), "`height` and `width` must be between 4 and 192 for this model but are 400"),
        (generate_args(prompt=""), "prompt is empty"),
        (generate_args(width="abc"), "`width` has to be a number but is str: 'abc'"),
        (generate_args(guidance_scale="7"), "`guidance_scale` has to be a number but is str: '7'"),
        (generate_args(steps=51), "`num_inference_steps` has to be between 1 and 50 but is 51"),
        (generate_args(negative_prompt=5), "`negative_prompt` has to be a str but is int: 5"),
        (generate_args(seed=-1), "`seed` has to be between 0 and 2147483647 but is -1"),
    ],
    ids=["size-multiple", "size-range", "empty", "width-abc", "guidance-str", "steps-max", "negative-int", "seed"],
)
def test_invalid_input_is_a_readable_error_and_the_demo_keeps_working(client, args, message):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=message) as error:
        client.predict(*args, api_name="/generate")
    assert "Traceback" not in str(error.value)
    image_path, _ = client.predict(*generate_args(), api_name="/generate")
    assert Image.open(image_path).size == (WIDTH, HEIGHT)


def test_an_over_long_prompt_is_refused_at_once_and_costs_no_memory(server, client):
    import psutil
    from gradio_client.exceptions import AppError

    server_process = psutil.Process(server[1].pid)
    client.predict(*generate_args(), api_name="/generate")  # warm: the first call allocates what every call needs
    rss_before = server_process.memory_info().rss
    for field in ("prompt", "negative_prompt"):
        started = time.monotonic()
        with pytest.raises(AppError, match=f"`{field}` is 10,000,000 characters long; the limit is 4,000"):
            client.predict(*generate_args(**{field: "x" * 10_000_000}), api_name="/generate")
        assert time.monotonic() - started < 2.0, f"a 10 MB {field} took {time.monotonic() - started:.1f} s to refuse"
    growth = (server_process.memory_info().rss - rss_before) / 2**20
    assert growth < 200, f"the server grew by {growth:.0f} MB for two refused requests"


def test_concurrent_requests_are_queued_and_all_answered(server, client, tmp_path):
    from gradio_client import Client

    seeds = [21, 22, 23, 24]
    expected = [load_pixels(client.predict(*generate_args(seed=seed), api_name="/generate")[0]) for seed in seeds]
    users = [Client(server[0], verbose=False, download_files=tmp_path) for _ in seeds]  # four browser sessions
    jobs = [user.submit(*generate_args(seed=seed), api_name="/generate") for user, seed in zip(users, seeds)]
    for job, seed, pixels in zip(jobs, seeds, expected, strict=True):
        image_path, used_seed = job.result(timeout=120)
        assert used_seed == seed
        np.testing.assert_array_equal(load_pixels(image_path), pixels)  # no request saw another one's state


def drain_progress(job) -> list:
    """The progress updates a finished gradio_client job received, in order."""
    updates = []
    while not job.communicator.updates.empty():
        update = job.communicator.updates.get_nowait()
        updates.extend(getattr(update, "progress_data", None) or [])
    return updates


def test_progress_of_the_denoising_steps_and_the_previews_reach_the_client(client):
    # Gradio sends only the latest progress (every 10 ms): steps of ~100 ms each arrive one by one, fast ones may not
    job = client.submit(*generate_args(width=192, height=192, steps=12), api_name="/generate")
    image_path, seed = job.result(timeout=60)
    progress = drain_progress(job)
    assert {(unit.length, unit.unit) for unit in progress} == {(12, "steps")}
    compiling = "Compiling the transformer and vae_decoder for 192x192..."  # before the first step, when the size is new
    assert {unit.desc for unit in progress} - {compiling} == {"Denoising"}
    steps = [unit.index for unit in progress if unit.desc == "Denoising"]
    assert len(steps) >= 3 and steps == sorted(set(steps)) and 1 <= steps[0] and steps[-1] <= 12, steps
    *previews, last = job.outputs()  # streamed: the previews, then the result, which `result` and `predict` give
    assert previews and last == (image_path, seed) and {output[1] for output in previews} == {7}
    assert {Image.open(path).size for path, _ in previews} == {(192, 192)}
    assert not any(np.array_equal(load_pixels(path), load_pixels(image_path)) for path, _ in previews)


def test_stop_ends_the_running_generation_early(client):
    # fast=False: every step runs the transformer, so that the 50 steps outlast the Stop request's round trip
    job = client.submit(*generate_args(width=192, height=192, steps=50), False, api_name="/generate")
    deadline = time.monotonic() + 60
    while not job.status().progress_data and time.monotonic() < deadline:  # wait for the first step
        time.sleep(0.02)
    client.predict(api_name="/stop")
    job.result(timeout=60)
    last_step = max(unit.index for unit in drain_progress(job))
    assert last_step < 50, "the generation ran all its steps despite Stop"
    image_path, _ = client.predict(*generate_args(), api_name="/generate")  # the next one runs in full
    assert Image.open(image_path).size == (WIDTH, HEIGHT)


# ----------------------------------------------------------------------------------------------------------
# The image tabs' endpoints, served
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def image_files(tmp_path_factory) -> SimpleNamespace:
    """The test picture, a painted layer, an unpainted one, and a larger photo, as PNG files."""
    folder = tmp_path_factory.mktemp("images")
    images = dict(
        picture=picture(),
        layer=painted_layer(),
        unpainted=Image.new("RGBA", PICTURE_SIZE, (0, 0, 0, 0)),
        photo=picture(PHOTO_SIZE),
    )
    for name, image in images.items():
        image.save(folder / f"{name}.png")
    (folder / "text.png").write_text("not an image")
    return SimpleNamespace(**{name: folder / f"{name}.png" for name in [*images, "text"]})


def image_input(api_name: str, files: SimpleNamespace, *, image: str | None = "picture", layer: str | None = "layer"):
    """The first input of an image endpoint: the file `image` (None: none), or for `/inpaint` an image editor value
    whose background is `image` and whose one layer is `layer` (None: no layer)."""
    from gradio_client import handle_file

    background = None if image is None else handle_file(str(getattr(files, image)))
    if api_name == "/image_to_image":
        return background
    layers = [] if layer is None else [handle_file(str(getattr(files, layer)))]
    return {"background": background, "layers": layers, "composite": None}


def endpoint_args(api_name: str, files: SimpleNamespace, *, seed: int) -> tuple:
    """The inputs of a good request to any tab's endpoint (strength 0.75 on the image tabs)."""
    if api_name == "/generate":
        return generate_args(seed=seed)
    return (image_input(api_name, files), *generate_args(seed=seed), 0.75)


IMAGE_ENDPOINTS = ["/image_to_image", "/inpaint"]


@pytest.mark.parametrize("api_name", IMAGE_ENDPOINTS)
def test_image_tab_gives_the_asked_size_and_the_same_image_for_the_same_seed(client, image_files, api_name):
    first, second, other = (
        client.predict(*endpoint_args(api_name, image_files, seed=seed), api_name=api_name) for seed in (11, 11, 12)
    )
    assert (first[1], second[1], other[1]) == (11, 11, 12)
    assert {Image.open(path).size for path in (first[0], second[0], other[0])} == {(WIDTH, HEIGHT)}  # 96x80 resized
    np.testing.assert_array_equal(load_pixels(first[0]), load_pixels(second[0]))
    assert not np.array_equal(load_pixels(first[0]), load_pixels(other[0])), "a different seed should differ"


@pytest.mark.parametrize(
    "api_name, image, layer, strength, message",
    [
        ("/image_to_image", None, None, 0.6, "`image` is missing: upload the image to restyle"),
        ("/image_to_image", "text", None, 0.6, "`image` could not be read as an image (UnidentifiedImageError)"),
        ("/image_to_image", "picture", None, 1.5, "`strength` has to be between 0.0 and 1.0 but is 1.5"),
        ("/image_to_image", "picture", None, 0.2, "leaves no denoising step (2 x 0.2 < 1). Use `strength` >= 0.5"),
        ("/inpaint", None, "layer", 0.85, "`image` is missing: upload the image to repaint"),
        ("/inpaint", "picture", "unpainted", 0.85, "`mask_image` is empty: nothing is painted. Please paint the area"),
        ("/inpaint", "picture", None, 0.85, "`mask_image` is missing: paint the area to repaint with the brush"),
        ("/inpaint", "picture", "text", 0.85, "`image_and_mask` could not be read as an image"),
        ("/inpaint", "picture", "layer", 1.5, "`strength` has to be between 0.0 and 1.0 but is 1.5"),
    ],
    ids=[
        "no-image", "not-an-image", "strength-1.5", "no-step-left",
        "no-image", "nothing-painted", "no-layer", "layer-not-an-image", "strength-1.5",
    ],
)  # fmt: skip
def test_bad_image_input_is_a_readable_error(client, image_files, api_name, image, layer, strength, message):
    from gradio_client.exceptions import AppError

    first = image_input(api_name, image_files, image=image, layer=layer)
    with pytest.raises(AppError) as error:
        client.predict(first, *generate_args(), strength, api_name=api_name)
    assert message in str(error.value) and "Traceback" not in str(error.value)


def test_progress_counts_the_steps_that_run_at_the_strength(client, image_files):
    job = client.submit(
        image_input("/image_to_image", image_files),
        *generate_args(width=192, height=192, steps=12),
        0.5,
        api_name="/image_to_image",
    )
    job.result(timeout=60)
    progress = drain_progress(job)
    denoising = {(unit.length, unit.unit, unit.desc) for unit in progress if not unit.desc.startswith("Compiling")}
    assert denoising == {(6, "steps", "Denoising")}  # a new size first says it compiles (see the test of that)


def test_stop_ends_a_running_image_generation_early(client, image_files):
    job = client.submit(
        image_input("/inpaint", image_files), *generate_args(width=192, height=192, steps=50), 1.0, False, api_name="/inpaint"
    )  # fast=False: every step runs the transformer, so that the 50 steps outlast the Stop request's round trip
    deadline = time.monotonic() + 60
    while not job.status().progress_data and time.monotonic() < deadline:  # wait for the first step
        time.sleep(0.02)
    client.predict(api_name="/stop")  # one Stop endpoint for every tab
    job.result(timeout=60)
    assert max(unit.index for unit in drain_progress(job)) < 50, "the generation ran all its steps despite Stop"
    image_path, _ = client.predict(*endpoint_args("/image_to_image", image_files, seed=1), api_name="/image_to_image")
    assert Image.open(image_path).size == (WIDTH, HEIGHT)  # the next one runs


def test_requests_of_every_tab_are_queued_one_at_a_time_and_all_answered(server, client, image_files, tmp_path):
    from gradio_client import Client

    requests = [  # (api_name, inputs): the tabs share the compiled models' infer requests
        (api_name, endpoint_args(api_name, image_files, seed=seed))
        for api_name, seed in (("/generate", 41), ("/image_to_image", 42), ("/inpaint", 43), ("/image_to_image", 44))
    ]
    expected = [load_pixels(client.predict(*inputs, api_name=api_name)[0]) for api_name, inputs in requests]
    users = [Client(server[0], verbose=False, download_files=tmp_path) for _ in requests]  # four browser sessions
    jobs = [user.submit(*inputs, api_name=api_name) for user, (api_name, inputs) in zip(users, requests)]
    for job, pixels in zip(jobs, expected, strict=True):
        np.testing.assert_array_equal(load_pixels(job.result(timeout=120)[0]), pixels)


# ----------------------------------------------------------------------------------------------------------
# In a real browser
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    """Headless Debian Chromium through Selenium, allowed to resolve loopback names only.

    Skipped where the browser is not installed, except in CI (`CI=true`), where that is a failure.
    """
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not shutil.which(path)]
    try:
        from selenium import webdriver
    except ImportError:
        missing.append("selenium (pip)")
    if missing:
        message = f"{missing} not installed: apt-get install -y chromium chromium-driver; pip install selenium"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in CHROMIUM_ARGUMENTS:
        options.add_argument(argument)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


def wait_for_image(driver, *, previous_src: str | None = None, timeout: float = 90, result_id: str = "result"):
    """The result image (of the element `result_id`) once the generation is done (a new one when `previous_src` is
    given): while it runs, the image shows live previews under the progress (its status tracker), which then hides."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def new_image(driver):
        images = driver.find_elements(By.CSS_SELECTOR, f"#{result_id} img")
        shown = [image for image in images if image.get_attribute("src") and image.get_attribute("src") != previous_src]
        trackers = driver.find_elements(By.CSS_SELECTOR, f"#{result_id} [data-testid='status-tracker']")
        done = all("hide" in tracker.get_attribute("class").split() for tracker in trackers)
        return shown[0] if shown and done and driver.execute_script("return arguments[0].complete", shown[0]) else None

    return WebDriverWait(driver, timeout).until(new_image)


def test_browser_types_a_prompt_clicks_run_and_sees_the_image(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server[0])
    prompt = WebDriverWait(browser, 60).until(
        expected_conditions.element_to_be_clickable((By.CSS_SELECTOR, "#prompt textarea, #prompt input"))
    )
    assert prompt.get_attribute("maxlength") == str(MAX_PROMPT_CHARS)  # the page stops typing at the limit
    prompt.send_keys("a photo of a cat")
    browser.find_element(By.ID, "run").click()
    image = wait_for_image(browser)
    size = browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", image)
    assert size == [64, 64]  # the sliders' default: the tiny model's native size
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS_DIR / "gradio-demo.png"))
    assert browser.save_screenshot(str(ARTIFACTS_DIR / "gradio-demo-text-to-image.png"))  # the first tab

    prompt.send_keys(Keys.ENTER)  # Enter in the prompt runs too
    wait_for_image(browser, previous_src=image.get_attribute("src"))
    seed_used = browser.find_element(By.CSS_SELECTOR, "#seed-used input")
    assert seed_used.get_attribute("value").isdigit()


def open_tab(driver, label: str, *, prefix: str):
    """Click the tab button `label`; return the tab's prompt field once it can be typed in."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    tab = (By.XPATH, f"//button[@role='tab' and normalize-space()='{label}']")
    WebDriverWait(driver, 60).until(expected_conditions.element_to_be_clickable(tab)).click()  # once the page is built
    prompt = (By.CSS_SELECTOR, f"#{prefix}prompt textarea, #{prefix}prompt input")
    return WebDriverWait(driver, 30).until(expected_conditions.element_to_be_clickable(prompt))


def upload_and_wait_for_the_size(driver, path: Path, *, prefix: str) -> None:
    """Upload `path` into the tab's image field, open its advanced settings, and wait until the upload has set the
    width and height sliders to the image's fitted size."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.find_element(By.CSS_SELECTOR, f"#{prefix}image input[type=file]").send_keys(str(path))
    accordions = driver.find_elements(By.XPATH, "//*[contains(@class, 'label-wrap')][contains(., 'Advanced settings')]")
    [element for element in accordions if element.is_displayed()][0].click()  # the open tab's

    def size(driver):
        values = [driver.find_element(By.CSS_SELECTOR, f"#{prefix}{side} input[type=number]").get_attribute("value")
                  for side in ("width", "height")]  # fmt: skip
        return values if values == [str(side) for side in PHOTO_FIT] else None

    WebDriverWait(driver, 30).until(size)


def test_browser_image_to_image_tab(server, browser, image_files):
    from selenium.webdriver.common.by import By

    browser.get(server[0])
    prompt = open_tab(browser, "Image to image", prefix="image-to-image-")
    upload_and_wait_for_the_size(browser, image_files.photo, prefix="image-to-image-")  # 320x240 -> 72x56
    prompt.send_keys("a watercolor painting")
    browser.find_element(By.ID, "image-to-image-run").click()
    image = wait_for_image(browser, result_id="image-to-image-result")
    size = browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", image)
    assert size == list(PHOTO_FIT)
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS_DIR / "gradio-demo-image-to-image.png"))


def test_browser_inpainting_tab_paints_the_mask_with_the_brush(server, browser, image_files):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server[0])
    prompt = open_tab(browser, "Inpainting", prefix="inpainting-")
    upload_and_wait_for_the_size(browser, image_files.photo, prefix="inpainting-")
    prompt.send_keys("a red apple")
    run = browser.find_element(By.ID, "inpainting-run")
    run.click()  # nothing painted yet
    toast = (By.CSS_SELECTOR, "[data-testid='toast-text']")
    texts = lambda driver: " ".join(element.text for element in driver.find_elements(*toast))  # noqa: E731
    WebDriverWait(browser, 30).until(lambda driver: "nothing is painted" in texts(driver))
    for close in browser.find_elements(By.CSS_SELECTOR, "[data-testid='toast-close']"):
        close.click()
    WebDriverWait(browser, 30).until(lambda driver: not driver.find_elements(*toast))

    canvases = browser.find_elements(By.CSS_SELECTOR, "#inpainting-image canvas")
    canvas = [element for element in canvases if element.is_displayed()][0]
    stroke = ActionChains(browser).move_to_element_with_offset(canvas, -40, -20).click_and_hold()  # the brush is on
    stroke.move_by_offset(30, 0).move_by_offset(30, 10).move_by_offset(20, 20).release().perform()
    run.click()
    image = wait_for_image(browser, result_id="inpainting-result")
    size = browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", image)
    assert size == list(PHOTO_FIT)
    # the one notice left is the result's timings (`PerformanceMetrics.summary()`), no error: the stroke made a mask
    assert "nothing is painted" not in texts(browser), "the painted stroke should make a mask"
    assert all(" steps in " in element.text for element in browser.find_elements(*toast)), texts(browser)
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS_DIR / "gradio-demo-inpainting.png"))


# ----------------------------------------------------------------------------------------------------------
# The ControlNet tab
# ----------------------------------------------------------------------------------------------------------

CONTROL_SIZE = (48, 32)  # (width, height) of the ControlNet tests' pictures and images: tiny, not square
CONTROL_REQUEST = dict(
    prompt="a photo of a cat", seed=7, width=CONTROL_SIZE[0], height=CONTROL_SIZE[1], guidance_scale=5.0,
    num_inference_steps=2, controlnet_conditioning_scale=0.8, control_guidance_start=0.0, control_guidance_end=1.0,
)  # fmt: skip


class NeverCalledControlNet(NeverCalled):
    """A stand-in ControlNet pipeline (as `OVStableDiffusion3ControlNetPipeline`, with `controlnets`) that is never called."""

    def __init__(self, controlnets: int = 1):
        self.controlnets = [object()] * controlnets


def controlnet_runner(controlnets: int = 1) -> GenerationRunner:
    return GenerationRunner(NeverCalled(), controlnet=NeverCalledControlNet(controlnets))


def test_the_control_image_is_the_upload_cropped_to_the_size_s_aspect_then_preprocessed():
    from PIL import ImageOps

    from sd3_helper import canny_edges

    photo = picture(PICTURE_SIZE)  # 96x80: another aspect than 48x32
    made = make_control_image(photo, preprocessor="canny", width=48, height=32)
    expected = canny_edges(ImageOps.fit(photo, (48, 32), method=Image.Resampling.LANCZOS))
    assert made.size == (48, 32) and made.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(made), np.asarray(expected))
    same_size = picture(CONTROL_SIZE)  # already the size: used as it is
    np.testing.assert_array_equal(
        np.asarray(make_control_image(same_size, preprocessor="none", width=48, height=32)), np.asarray(same_size)
    )


def test_the_controlnet_request_carries_one_control_image_per_controlnet():
    one = controlnet_runner().check(task="controlnet", image=picture(CONTROL_SIZE), preprocessor="canny", **CONTROL_REQUEST)
    assert one.control_image.size == CONTROL_SIZE and (one.image, one.strength) == (None, None)
    arguments = one.pipeline_arguments()
    assert {key: arguments[key] for key in ("controlnet_conditioning_scale", "control_guidance_start", "control_guidance_end")} == {
        "controlnet_conditioning_scale": 0.8, "control_guidance_start": 0.0, "control_guidance_end": 1.0
    }  # fmt: skip
    assert "image" not in arguments and "strength" not in arguments
    two = controlnet_runner(2).check(task="controlnet", image=picture(CONTROL_SIZE), preprocessor="canny", **CONTROL_REQUEST)
    assert len(two.control_image) == 2 and two.control_image[0] is two.control_image[1]  # the same image for each


def test_the_live_preview_is_the_canny_edges_a_run_would_use():
    import gradio as gr

    from sd3_helper import canny_edges

    handlers = DemoHandlers(controlnet_runner())
    preview = handlers.control_preview(picture(CONTROL_SIZE), "canny", 48.0, 32.0)  # the sliders send floats
    np.testing.assert_array_equal(np.asarray(preview), np.asarray(canny_edges(picture(CONTROL_SIZE))))
    assert set(np.unique(np.asarray(preview))) == {0, 255} and np.asarray(preview).max() == 255  # white edges on black
    assert handlers.control_preview(None, "canny", 48, 32) is None  # no upload, no preview
    blurred_preview = handlers.control_preview(picture(CONTROL_SIZE), "blur", 48, 32)
    assert not np.array_equal(np.asarray(blurred_preview), np.asarray(preview))
    with pytest.raises(gr.Error, match=r"`preprocessor` has to be one of \['canny', 'blur', 'depth', 'none'\] but is 'sobel'"):
        handlers.control_preview(picture(CONTROL_SIZE), "sobel", 48, 32)


CONTROLNET_BAD_INPUTS = [  # (change to a good ControlNet request, exception type, fragment of its message)
    ({"controlnet_conditioning_scale": float("nan")}, ValueError,
     "`controlnet_conditioning_scale` has to be a finite number between 0.0 and 2.0 but is nan"),
    ({"controlnet_conditioning_scale": -0.5}, ValueError, "`controlnet_conditioning_scale` has to be between 0.0 and 2.0 but is -0.5"),
    ({"controlnet_conditioning_scale": 2.5}, ValueError, "`controlnet_conditioning_scale` has to be between 0.0 and 2.0 but is 2.5"),
    ({"controlnet_conditioning_scale": "1"}, TypeError, "`controlnet_conditioning_scale` has to be a number but is str: '1'"),
    ({"control_guidance_start": 0.6, "control_guidance_end": 0.4}, ValueError,
     "`control_guidance_start` 0.6 has to be smaller than `control_guidance_end` 0.4"),
    ({"control_guidance_start": 0.5, "control_guidance_end": 0.5}, ValueError, "`control_guidance_start` 0.5 has to be smaller than"),
    ({"control_guidance_end": 1.5}, ValueError, "`control_guidance_end` has to be between 0.0 and 1.0 but is 1.5"),
    ({"control_guidance_start": None}, TypeError, "`control_guidance_start` has to be a number but is NoneType"),
    ({"image": None}, ValueError, "`image` is missing: upload the image to make the control image from"),
    ({"image": "cat.png"}, TypeError, "`image` has to be a PIL image but is str: 'cat.png'"),
    ({"preprocessor": "sobel"}, ValueError, "`preprocessor` has to be one of ['canny', 'blur', 'depth', 'none'] but is 'sobel'"),
    ({"width": 50}, ValueError, "divisible by 8"),  # and every check of the text tab
]  # fmt: skip


@pytest.mark.parametrize("change, error_type, message", CONTROLNET_BAD_INPUTS, ids=lambda value: repr(value)[:40])
def test_runner_rejects_bad_controlnet_input_with_a_readable_message(change, error_type, message):
    request = {**CONTROL_REQUEST, "width": 16, "height": 8, "image": picture(), "preprocessor": "canny", **change}
    with pytest.raises(error_type) as error:
        controlnet_runner().generate(task="controlnet", **request)
    assert message in str(error.value)


def test_runner_without_a_controlnet_refuses_the_controlnet_task():
    with pytest.raises(ValueError, match=r"`task` has to be one of \('text-to-image',\) but is 'controlnet'"):
        GenerationRunner(NeverCalled()).check(task="controlnet", image=picture(), **{**CONTROL_REQUEST, "width": 16, "height": 8})


@pytest.fixture(scope="module")
def controlnet_folder(tiny_checkpoint, tmp_path_factory) -> Path:
    """A tiny random InstantX-style ControlNet for the tiny checkpoint, converted (fp32)."""
    from sd3_helper import convert_sd3_controlnet, make_tiny_sd3_controlnet

    root = tmp_path_factory.mktemp("demo-controlnet")
    source = make_tiny_sd3_controlnet(tiny_checkpoint, root / "controlnet")
    return convert_sd3_controlnet(source, root / "controlnet-ov", weight_format="fp32", base_model=tiny_checkpoint)


@pytest.fixture(scope="module")
def controlnet_pipeline(tiny_ov_model, controlnet_folder):
    from sd3_helper import OVStableDiffusion3ControlNetPipeline

    pipe = OVStableDiffusion3ControlNetPipeline.from_pretrained(tiny_ov_model, controlnet=controlnet_folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tab_labels(demo) -> list[str]:
    import gradio as gr

    return [block.label for block in demo.blocks.values() if isinstance(block, gr.Tab)]


def test_a_controlnet_pipeline_gets_a_controlnet_tab_and_a_plain_one_does_not(pipeline, controlnet_pipeline):
    import gradio as gr

    from sd3_helper import OVStableDiffusion3ControlNetPipeline

    pipes = demo_pipelines(controlnet_pipeline)
    assert list(pipes) == ["text-to-image", "image-to-image", "inpainting", "controlnet"]
    assert pipes["controlnet"] is controlnet_pipeline and type(pipes["text-to-image"]) is OVStableDiffusion3Pipeline
    for task in ("text-to-image", "image-to-image", "inpainting"):  # plain pipelines sharing the compiled models
        assert not isinstance(pipes[task], OVStableDiffusion3ControlNetPipeline)
        assert all(pipes[task].submodels[name] is model for name, model in controlnet_pipeline.submodels.items()), task
    demo, plain = make_demo(controlnet_pipeline), make_demo(pipeline)
    assert tab_labels(demo) == ["Text to image", "Image to image", "Inpainting", "ControlNet"]
    assert "ControlNet" not in tab_labels(plain)
    assert "controlnet" in {fn.api_name for fn in demo.fns.values()} - {fn.api_name for fn in plain.fns.values()}
    (radio,) = blocks_labelled(demo, gr.Radio, "Preprocessor")
    assert [value for _, value in radio.choices] == ["canny", "blur", "depth", "none"] and radio.value == "canny"
    (scale,) = blocks_labelled(demo, gr.Slider, "ControlNet scale")
    assert (scale.minimum, scale.maximum, scale.value) == (0.0, 2.0, 0.7)
    windows = blocks_labelled(demo, gr.Slider, "Guidance start") + blocks_labelled(demo, gr.Slider, "Guidance end")
    assert [(slider.minimum, slider.maximum, slider.value) for slider in windows] == [(0.0, 1.0, 0.0), (0.0, 1.0, 1.0)]
    stops = [block for block in demo.blocks.values() if isinstance(block, gr.Button) and block.value == "Stop"]
    assert [block.elem_id for block in stops][-1] == "controlnet-stop"  # connected as every tab's (`/stop`)
    (preview,) = blocks_labelled(demo, gr.Image, "Control image")
    assert any(preview in fn.outputs for fn in demo.fns.values()), "nothing updates the preview"
    names = [name for name, _ in api_parameters(demo, "/controlnet")]
    assert names[:3] == ["image", "preprocessor", "prompt"]
    assert names[-5:] == [
        "num_inference_steps", "controlnet_conditioning_scale", "control_guidance_start", "control_guidance_end", "fast"
    ]  # fmt: skip


@pytest.fixture(scope="module")
def controlnet_client(controlnet_pipeline, tmp_path_factory):
    """The demo of `controlnet_pipeline`, launched in this process on a loopback port (closed whatever happens), and a
    client of it."""
    from gradio_client import Client

    demo = make_demo(controlnet_pipeline)
    try:
        demo.launch(server_name="127.0.0.1", server_port=free_loopback_port(), prevent_thread_lock=True, quiet=True)
        yield Client(demo.local_url, verbose=False, download_files=tmp_path_factory.mktemp("controlnet-downloads"))
    finally:
        demo.close()


@pytest.fixture(scope="module")
def control_photo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("control") / "photo.png"
    picture(CONTROL_SIZE).save(path)
    return path


def controlnet_args(photo: Path | None, *, preprocessor: str = "canny", scale=0.8, start=0.0, end=1.0) -> tuple:
    """The inputs of `/controlnet` for `photo` (None: no upload) and `CONTROL_REQUEST`'s settings, every step computed."""
    from gradio_client import handle_file

    image = None if photo is None else handle_file(str(photo))
    size = dict(width=CONTROL_SIZE[0], height=CONTROL_SIZE[1])
    return (image, preprocessor, *generate_args(seed=7, **size), scale, start, end, False)


def test_served_controlnet_gives_the_pipeline_s_image_for_the_same_arguments(controlnet_client, controlnet_pipeline, control_photo):
    import torch

    from sd3_helper import canny_edges

    job = controlnet_client.submit(*controlnet_args(control_photo), api_name="/controlnet")
    image_path, seed = job.result(timeout=120)
    assert seed == 7 and len(job.outputs()) >= 2, "the previews should stream before the result"
    request = {key: value for key, value in CONTROL_REQUEST.items() if key not in ("prompt", "seed")}
    expected = controlnet_pipeline(
        CONTROL_REQUEST["prompt"], control_image=canny_edges(Image.open(control_photo)), taylorseer=None,
        generator=torch.Generator().manual_seed(7), **request,
    ).images[0]  # fmt: skip
    assert Image.open(image_path).size == CONTROL_SIZE
    np.testing.assert_array_equal(load_pixels(image_path), np.asarray(expected))
    unguided, _ = controlnet_client.predict(*controlnet_args(control_photo, scale=0.0), api_name="/controlnet")
    assert not np.array_equal(load_pixels(unguided), load_pixels(image_path)), "the ControlNet should change the image"


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(scale=-0.5), "`controlnet_conditioning_scale` has to be between 0.0 and 2.0 but is -0.5"),
        (dict(start=0.7, end=0.3), "`control_guidance_start` 0.7 has to be smaller than `control_guidance_end` 0.3"),
        (dict(photo=None), "`image` is missing: upload the image to make the control image from"),
        (dict(preprocessor="sobel"), "`preprocessor` has to be one of ['canny', 'blur', 'depth', 'none'] but is 'sobel'"),
    ],
    ids=["negative-scale", "start-after-end", "no-image", "unknown-preprocessor"],
)
def test_served_controlnet_names_bad_input(controlnet_client, control_photo, change, message):
    from gradio_client.exceptions import AppError

    arguments = {"photo": control_photo, **change}
    with pytest.raises(AppError) as error:
        controlnet_client.predict(*controlnet_args(arguments.pop("photo"), **arguments), api_name="/controlnet")
    assert message in str(error.value) and "Traceback" not in str(error.value)


def test_cli_loads_the_controlnet_pipeline_with_controlnet(tiny_ov_model, controlnet_folder, monkeypatch):
    import gradio as gr

    import gradio_helper

    launched = []
    monkeypatch.setattr(gr.Blocks, "launch", lambda demo, **options: launched.append(demo))  # build, do not serve
    assert gradio_helper.main([str(tiny_ov_model), "--controlnet", str(controlnet_folder)]) == 0
    (demo,) = launched
    assert tab_labels(demo)[-1] == "ControlNet"


def test_cli_reports_a_folder_without_a_controlnet_before_loading(tiny_ov_model, tmp_path, capsys):
    import gradio_helper

    assert gradio_helper.main([str(tiny_ov_model), "--controlnet", str(tmp_path)]) == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith("error: `--controlnet` ") and "holds no converted ControlNet (`openvino_model.xml`)" in stderr
    assert "Traceback" not in stderr


# ----------------------------------------------------------------------------------------------------------
# The image prompt (IP-Adapter)
# ----------------------------------------------------------------------------------------------------------

IMAGE_PROMPT_LABELS = ("Image prompt (IP-Adapter)", "Image prompt scale")


@pytest.fixture(scope="module")
def ip_adapter_pipeline(ov_large_fp32, ov_ip_adapter) -> OVStableDiffusion3Pipeline:
    """The SD3.5-Large-shaped tiny model with the tiny IP-Adapter loaded, in f32 so that images compare exactly."""
    pipe = OVStableDiffusion3Pipeline.from_pretrained(ov_large_fp32, ov_config=F32)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_ip_adapter(ov_ip_adapter)
    return pipe


def endpoint(demo, api_name: str):
    """The function behind the demo's endpoint `api_name` (called directly: no server)."""
    (fn,) = [fn.fn for fn in demo.fns.values() if fn.api_name == api_name]
    return fn


def file_payload(path: Path) -> dict:
    """What the page (or `gradio_client.handle_file`) sends for an uploaded file, once gradio has it."""
    return {"path": str(path), "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}


def test_the_image_prompt_shows_only_with_an_ip_adapter_loaded(pipeline, ip_adapter_pipeline):
    import gradio as gr

    plain = make_demo(pipeline)
    assert not blocks_labelled(plain, gr.Image, IMAGE_PROMPT_LABELS[0]) and not blocks_labelled(plain, gr.Slider, IMAGE_PROMPT_LABELS[1])
    assert not {"ip_adapter_image", "ip_adapter_scale"} & {name for name, _ in api_parameters(plain, "/generate")}
    ip_adapter_pipeline.set_ip_adapter_scale(0.65)
    prompted = make_demo(ip_adapter_pipeline)
    images, sliders = blocks_labelled(prompted, gr.Image, IMAGE_PROMPT_LABELS[0]), blocks_labelled(prompted, gr.Slider, IMAGE_PROMPT_LABELS[1])
    assert len(images) == len(sliders) == 3  # one of each per tab
    assert {(slider.minimum, slider.maximum, slider.value) for slider in sliders} == {(0.0, 1.0, 0.65)}  # the adapter's scale
    for api_name in ("/generate", "/image_to_image", "/inpaint"):  # after the options, by name
        assert api_parameters(prompted, api_name)[-3:] == [("fast", True), ("ip_adapter_image", None), ("ip_adapter_scale", 0.65)]


def test_the_handler_prompts_with_the_uploaded_image_at_the_slider_s_scale(ip_adapter_pipeline, image_files):
    generate = endpoint(make_demo(ip_adapter_pipeline), "generate")

    def served(**image_prompt) -> np.ndarray:
        *_, (image, seed) = generate(*generate_args(), False, progress=lambda *args, **kwargs: None, **image_prompt)
        return np.asarray(image)

    photo = file_payload(image_files.photo)
    prompted = served(ip_adapter_image=photo, ip_adapter_scale=0.8)
    assert ip_adapter_pipeline.ip_adapter.scale == 0.8  # set before the call, and it stays set
    weaker = served(ip_adapter_image=photo, ip_adapter_scale=0.2)
    assert ip_adapter_pipeline.ip_adapter.scale == 0.2
    without = served()  # no image prompt
    np.testing.assert_array_equal(weaker, direct_image(ip_adapter_pipeline, taylorseer=None, ip_adapter_image=picture(PHOTO_SIZE)))
    ip_adapter_pipeline.set_ip_adapter_scale(0.8)
    np.testing.assert_array_equal(prompted, direct_image(ip_adapter_pipeline, taylorseer=None, ip_adapter_image=picture(PHOTO_SIZE)))
    assert len({prompted.tobytes(), weaker.tobytes(), without.tobytes()}) == 3, "the image prompt and its scale should change the image"


IMAGE_PROMPT_BAD_INPUTS = [  # (change to a good request, exception type, fragment of its message)
    ({"ip_adapter_scale": 1.5}, ValueError, "`ip_adapter_scale` has to be between 0.0 and 1.0 but is 1.5"),
    ({"ip_adapter_scale": float("nan")}, ValueError, "`ip_adapter_scale` has to be a finite number between 0.0 and 1.0 but is nan"),
    ({"ip_adapter_scale": "0.5"}, TypeError, "`ip_adapter_scale` has to be a number but is str: '0.5'"),
    ({"ip_adapter_image": "cat.png"}, TypeError, "`ip_adapter_image` has to be a PIL image but is str: 'cat.png'"),
]  # fmt: skip


@pytest.mark.parametrize("change, error_type, message", IMAGE_PROMPT_BAD_INPUTS, ids=lambda value: repr(value)[:40])
def test_a_bad_image_prompt_is_refused_with_a_readable_message(change, error_type, message):
    from gradio_helper import RequestLimits, check_request

    limits = RequestLimits(tasks=("text-to-image",), size_rules=FAKE_SIZE_RULES, ip_adapter=True)
    checked = check_request(limits, **REQUEST, ip_adapter_image=picture(), ip_adapter_scale=0.3)
    assert checked.pipeline_arguments()["ip_adapter_image"] is checked.ip_adapter_image and checked.ip_adapter_scale == 0.3
    assert "ip_adapter_image" not in check_request(limits, **REQUEST).pipeline_arguments()  # no image prompt: none passed
    with pytest.raises(error_type) as error:
        check_request(limits, **{**REQUEST, "ip_adapter_image": picture(), **change})
    assert message in str(error.value)


def test_an_image_prompt_is_refused_where_no_ip_adapter_is_loaded():
    for field, value in (("ip_adapter_image", picture()), ("ip_adapter_scale", 0.5)):
        with pytest.raises(ValueError, match=f"`{field}` needs an IP-Adapter but the pipeline has none. Load one with"):
            GenerationRunner(NeverCalled()).generate(**REQUEST, **{field: value})


def test_cli_loads_the_ip_adapter_and_names_a_missing_one(ov_large_fp32, ov_ip_adapter, tmp_path, monkeypatch, capsys):
    import gradio as gr

    import gradio_helper

    assert gradio_helper.main([str(ov_large_fp32), "--ip-adapter", str(tmp_path / "no-adapter")]) == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith(f"error: `--ip-adapter` '{tmp_path / 'no-adapter'}' does not exist.") and "Traceback" not in stderr
    launched = []
    monkeypatch.setattr(gr.Blocks, "launch", lambda demo, **options: launched.append(demo))  # build, do not serve
    assert gradio_helper.main([str(ov_large_fp32), "--ip-adapter", str(ov_ip_adapter)]) == 0
    (demo,) = launched
    assert len(blocks_labelled(demo, gr.Image, IMAGE_PROMPT_LABELS[0])) == 3
    assert gradio_helper.main([str(ov_large_fp32), "--ip-adapter", str(tmp_path)]) == 2  # a folder that is no adapter
    assert capsys.readouterr().err.startswith(f"error: `--ip-adapter` '{tmp_path}': ")


@pytest.fixture(scope="module")
def ip_adapter_server(ip_adapter_pipeline):
    """The demo of `ip_adapter_pipeline`, launched in this process on a loopback port (closed whatever happens); its URL."""
    demo = make_demo(ip_adapter_pipeline)
    try:
        demo.launch(server_name="127.0.0.1", server_port=free_loopback_port(), prevent_thread_lock=True, quiet=True)
        yield demo.local_url
    finally:
        demo.close()


def test_browser_prompts_with_an_uploaded_image(ip_adapter_server, browser, image_files):
    """The page's image prompt: upload, Run, the result; the screenshot is docs/images/demo-ip-adapter.png's source."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(ip_adapter_server)
    prompt = WebDriverWait(browser, 60).until(
        expected_conditions.element_to_be_clickable((By.CSS_SELECTOR, "#prompt textarea, #prompt input"))
    )
    browser.find_element(By.CSS_SELECTOR, "#ip-adapter-image input[type=file]").send_keys(str(image_files.photo))
    WebDriverWait(browser, 30).until(lambda driver: driver.find_elements(By.CSS_SELECTOR, "#ip-adapter-image img"))
    prompt.send_keys("a photo of a cat")
    browser.find_element(By.ID, "run").click()
    wait_for_image(browser)
    toasts = " ".join(element.text for element in browser.find_elements(By.CSS_SELECTOR, "[data-testid='toast-text']"))
    assert " steps in " in toasts and "Invalid input" not in toasts, toasts  # the timings' notice, no error
    for close in browser.find_elements(By.CSS_SELECTOR, "[data-testid='toast-close']"):
        close.click()  # the notice would cover the page's corner in the screenshot
    WebDriverWait(browser, 30).until(lambda driver: not driver.find_elements(By.CSS_SELECTOR, "[data-testid='toast-text']"))
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS_DIR / "gradio-demo-ip-adapter.png"))
