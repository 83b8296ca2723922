"""Bad input on purpose: every mistake gets a named error, no data is lost, and loading never touches the network."""

import hashlib
import json
import logging
import math
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import sd3_openvino.export.conversion as sd3_conversion
import sd3_helper
from conftest import F32

HELPER = Path(__file__).resolve().parents[1] / "sd3_helper.py"

# -- Arguments of the pipeline ------------------------------------------------------------------------------

BAD_ARGUMENTS = {
    "guidance-inf": (dict(guidance_scale=math.inf), ValueError, "`guidance_scale` has to be a finite number"),
    "guidance-nan": (dict(guidance_scale=math.nan), ValueError, "`guidance_scale` has to be a finite number"),
    "guidance-str": (dict(guidance_scale="7"), TypeError, "`guidance_scale` has to be a number (e.g. 7.0; <= 1 turns guidance off) but is str"),
    "height-zero": (dict(height=0), ValueError, "`height` and `width` must be between 4 and 192 for this model but are 0 and 64"),
    "height-float": (dict(height=64.0), TypeError, "`height` has to be an int (pixels) but is float: 64.0"),
    "width-str": (dict(width="64"), TypeError, "`width` has to be an int (pixels) but is str: '64'"),
    "steps-bool": (dict(num_inference_steps=True), ValueError, "`num_inference_steps` has to be a positive integer but is True"),
    "images-zero": (dict(num_images_per_prompt=0), ValueError, "`num_images_per_prompt` has to be at least 1 but is 0"),
    "images-negative": (dict(num_images_per_prompt=-1), ValueError, "`num_images_per_prompt` has to be at least 1 but is -1"),
    "images-float": (dict(num_images_per_prompt=2.0), TypeError, "`num_images_per_prompt` has to be an int but is float"),
    "images-too-many": (dict(num_images_per_prompt=100_000), ValueError, "GB of activations (estimated), more than this machine's"),
    "generators-too-many": (
        dict(generator=[torch.Generator().manual_seed(i) for i in range(3)]),
        ValueError,
        "a list of 3 generators, but requested an effective batch size of 1",
    ),
    "prompt-empty-list": (dict(prompt=[]), ValueError, "`prompt` is an empty list"),
    "negative-int": (dict(negative_prompt=5), TypeError, "`negative_prompt` has to be a str or a list of str but is int: 5"),
    "prompt-2-int": (dict(prompt_2=3), TypeError, "`prompt_2` has to be a str or a list of str but is int: 3"),
    "clip-skip-too-large": (dict(clip_skip=100), ValueError, "`clip_skip` has to be None or an int from 0 to 2 (the CLIP encoders have 3 layers) but is 100"),
    "max-sequence-length-str": (dict(max_sequence_length="77"), TypeError, "`max_sequence_length` has to be an int but is str"),
    "callback-not-callable": (dict(callback_on_step_end="print"), TypeError, "`callback_on_step_end` has to be a function"),
    "embeds-wrong-width": (
        dict(prompt=None, prompt_embeds=torch.zeros(1, 333, 5), pooled_prompt_embeds=torch.zeros(1, 80), guidance_scale=1.0),
        ValueError,
        "`prompt_embeds` must have shape (batch, 77 + T5 tokens, 96) for this model but has shape (1, 333, 5)",
    ),
    "pooled-wrong-width": (
        dict(prompt=None, prompt_embeds=torch.zeros(1, 333, 96), pooled_prompt_embeds=torch.zeros(1, 7), guidance_scale=1.0),
        ValueError,
        "`pooled_prompt_embeds` must have shape (batch, 80) for this model but has shape (1, 7)",
    ),
    "embeds-not-an-array": (
        dict(prompt=None, prompt_embeds=np.zeros((1, 333, 96)).tolist(), pooled_prompt_embeds=np.zeros((1, 80)), guidance_scale=1.0),
        TypeError,
        "`prompt_embeds` has to be a numpy array or torch tensor",
    ),
    "negative-embeds-other-shape": (
        dict(
            prompt=None,
            prompt_embeds=torch.zeros(1, 333, 96),
            pooled_prompt_embeds=torch.zeros(1, 80),
            negative_prompt_embeds=torch.zeros(1, 109, 96),
            negative_pooled_prompt_embeds=torch.zeros(1, 80),
        ),
        ValueError,
        "`prompt_embeds` and `negative_prompt_embeds` must have the same shape but have (1, 333, 96) and (1, 109, 96)",
    ),
}


@pytest.mark.parametrize(("kwargs", "error", "message"), BAD_ARGUMENTS.values(), ids=BAD_ARGUMENTS.keys())
def test_bad_argument_gives_a_named_error(ov_pipeline, kwargs, error, message):
    pipe = ov_pipeline("fp32")
    arguments = {"prompt": "a cat", "num_inference_steps": 1, "height": 64, "width": 64, **kwargs}
    with pytest.raises(error) as raised:
        pipe(**arguments)
    assert message in str(raised.value)


def test_long_prompt_is_cut_with_a_warning_that_says_what_was_dropped(ov_pipeline):
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("sd3_openvino.runtime.pipeline")
    logger.addHandler(handler)
    try:
        ov_pipeline("fp32").encode_prompt("a cat " * 100 + "zebra", do_classifier_free_guidance=False, max_sequence_length=32)
    finally:
        logger.removeHandler(handler)
    messages = [record.getMessage() for record in records if record.levelno == logging.WARNING]
    assert any("truncated because CLIP can only handle sequences up to 77 tokens" in message for message in messages)
    assert any("truncated because T5 reads `max_sequence_length` = 32 tokens" in message for message in messages)
    assert all("zebra" in message for message in messages)


def test_generate_is_safe_to_call_from_several_threads(ov_pipeline):
    pipe = ov_pipeline("fp32")
    common = dict(num_inference_steps=2, height=32, width=32, output_type="np")
    expected = pipe.generate("a cat", generator=torch.Generator().manual_seed(3), **common).images
    results, errors = [], []

    def run() -> None:
        try:
            results.append(pipe.generate("a cat", generator=torch.Generator().manual_seed(3), **common).images)
        except Exception as error:  # noqa: BLE001 (collected and asserted below)
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(results) == 3
    for images in results:
        np.testing.assert_array_equal(images, expected)


# -- Data that must never be lost ---------------------------------------------------------------------------


def tree_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        digest.update(str(path.relative_to(folder)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture
def checkpoint_copy(tiny_checkpoint, tmp_path):
    copy = tmp_path / "checkpoint"
    shutil.copytree(tiny_checkpoint, copy)
    return copy


@pytest.mark.parametrize(
    ("output", "relation"),
    [(lambda src: src, "is the source folder"), (lambda src: src / "ov", "is inside the source folder"), (lambda src: src.parent, "contains the source folder")],
    ids=["same", "inside", "contains"],
)
def test_output_that_overlaps_the_source_is_refused_before_anything_is_written(checkpoint_copy, output, relation):
    before = tree_digest(checkpoint_copy.parent)
    with pytest.raises(ValueError, match=f"{relation}.*Choose an `output_dir` outside the source folder"):
        sd3_helper.convert_sd3(checkpoint_copy, output(checkpoint_copy), weight_format="int8")
    assert tree_digest(checkpoint_copy.parent) == before


def test_cli_convert_into_the_source_exits_2_and_keeps_the_source(checkpoint_copy):
    before = tree_digest(checkpoint_copy)
    result = subprocess.run([sys.executable, str(HELPER), "convert", str(checkpoint_copy), str(checkpoint_copy)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")][0].endswith("outside the source folder.")
    assert tree_digest(checkpoint_copy) == before


def test_conversion_records_its_source_and_refuses_another(converted, tiny_checkpoint, tmp_path):
    folder = tmp_path / "converted"
    shutil.copytree(converted("fp32", load_t5=False), folder)
    record = json.loads((folder / "openvino_conversion.json").read_text())
    assert record["options"] == {"weight_format": "fp32", "load_t5": False}
    assert len(record["source"]["fingerprint"]) == 64 and record["source"]["path"] == str(tiny_checkpoint.resolve())

    other = sd3_helper.make_tiny_sd3(tmp_path / "other-checkpoint", seed=1)  # same shapes, other weights
    before = tree_digest(folder)
    with pytest.raises(ValueError, match=r"holds a conversion of another source or with other options \(source fingerprint.*overwrite=True"):
        sd3_helper.convert_sd3(other, folder, weight_format="fp32", load_t5=False)
    with pytest.raises(ValueError, match=r"options load_t5: False there, True now"):
        sd3_helper.convert_sd3(tiny_checkpoint, folder, weight_format="fp32", load_t5=True)
    assert tree_digest(folder) == before
    moved = tmp_path / "moved-checkpoint"
    shutil.copytree(tiny_checkpoint, moved)  # the same checkpoint in another place is the same source
    sd3_helper.convert_sd3(moved, folder, weight_format="fp32", load_t5=False)


def test_failed_conversion_leaves_nothing_it_created(tiny_checkpoint, tmp_path, monkeypatch):
    output = tmp_path / "new" / "deeper" / "out"
    with pytest.raises(FileNotFoundError, match="The checkpoint `.*no-such-checkpoint` does not exist"):
        sd3_helper.convert_sd3(tmp_path / "no-such-checkpoint", output)
    assert not (tmp_path / "new").exists()

    def fail(*args, **kwargs):
        raise RuntimeError("simulated failure in the first submodel")

    monkeypatch.setattr(sd3_conversion, "compress_weights", fail)
    with pytest.raises(RuntimeError, match="simulated failure"):
        sd3_helper.convert_sd3(tiny_checkpoint, output, weight_format="int8")
    assert not (tmp_path / "new").exists(), "the folders the failed call created are removed"
    existing = tmp_path / "existing"
    (existing / "mine.txt").parent.mkdir()
    (existing / "mine.txt").write_text("keep me")
    with pytest.raises(RuntimeError, match="simulated failure"):
        sd3_helper.convert_sd3(tiny_checkpoint, existing, weight_format="int8")
    assert (existing / "mine.txt").read_text() == "keep me", "what was there before is never removed"


def test_non_sd3_checkpoint_is_named(tmp_path):
    folder = tmp_path / "sd15"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}))
    with pytest.raises(ValueError, match=r"is not an SD3 checkpoint: `_class_name` is 'StableDiffusionPipeline'"):
        sd3_helper.convert_sd3(folder, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# -- Presets -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, 5, ["sd3.5-medium"], b"tiny"], ids=["none", "int", "list", "bytes"])
def test_presets_name_an_argument_of_the_wrong_type(value):
    from sd3_helper import get_preset, preset_for

    for function, argument in ((preset_for, "model_id"), (get_preset, "key")):
        with pytest.raises(TypeError, match=rf"`{argument}` has to be a str \(a preset key such as 'sd3.5-medium', a hub id or a local folder\) but is {type(value).__name__}"):
            function(value)
    with pytest.raises(ValueError, match=r"`sd3-large` is not a model preset; choose one of"):
        get_preset("sd3-large")
    assert preset_for(Path("/models/sd3")) is None and preset_for("tiny-sd3.5-medium").key == "sd3.5-medium"


# -- Damaged or foreign converted folders: named errors, never the network ----------------------------------


@pytest.fixture
def no_network(monkeypatch):
    """Every attempt to open a network connection fails the test."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise AssertionError(f"network access attempted: {args!r:.200}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    path.write_text(json.dumps(change(data)))


DAMAGE = {
    "no-scheduler": (lambda d: shutil.rmtree(d / "scheduler"), FileNotFoundError, "scheduler/scheduler_config.json` is missing"),
    "no-tokenizer": (lambda d: shutil.rmtree(d / "tokenizer"), FileNotFoundError, "tokenizer` is missing"),
    "tokenizer-garbage": (
        lambda d: [path.write_text("{not json") for path in (d / "tokenizer").glob("*.json")],
        ValueError,
        "tokenizer` could not be read as a tokenizer",
    ),
    "index-without-scheduler": (
        lambda d: edit_json(d / "model_index.json", lambda data: {k: v for k, v in data.items() if k != "scheduler"}),
        ValueError,
        "names no diffusers scheduler",
    ),
    "index-is-a-list": (lambda d: (d / "model_index.json").write_text("[1, 2]"), ValueError, "model_index.json` holds a list, not a JSON object"),
    "index-not-json": (lambda d: (d / "model_index.json").write_text("{oops"), ValueError, "model_index.json` is not valid JSON"),
    "index-not-sd3": (
        lambda d: edit_json(d / "model_index.json", lambda data: {**data, "_class_name": "StableDiffusionXLPipeline"}),
        ValueError,
        "is not an SD3 checkpoint: `_class_name` is 'StableDiffusionXLPipeline'",
    ),
    "config-missing-key": (
        lambda d: edit_json(d / "transformer" / "config.json", lambda data: {k: v for k, v in data.items() if k != "patch_size"}),
        ValueError,
        "transformer/config.json` lacks the keys ['patch_size']",
    ),
    "config-not-json": (lambda d: (d / "vae_decoder" / "config.json").write_text("{oops"), ValueError, "vae_decoder/config.json` is not valid JSON"),
    "scheduler-config-not-json": (
        lambda d: (d / "scheduler" / "scheduler_config.json").write_text("{oops"),
        ValueError,
        "scheduler_config.json` is not valid JSON",
    ),
}


@pytest.fixture
def folder_copy(converted, tmp_path):
    folder = tmp_path / "damaged"
    shutil.copytree(converted("fp32", load_t5=False), folder)
    return folder


def test_intact_folder_loads_without_network(folder_copy, no_network):
    pipe = sd3_helper.OVStableDiffusion3Pipeline.from_pretrained(folder_copy, ov_config=F32)
    pipe.set_progress_bar_config(disable=True)
    assert pipe("a cat", num_inference_steps=1, height=32, width=32, output_type="np").images.shape == (1, 32, 32, 3)
    assert no_network == []


@pytest.mark.parametrize(("damage", "error", "message"), DAMAGE.values(), ids=DAMAGE.keys())
def test_damaged_folder_gives_a_named_error_without_network(folder_copy, no_network, damage, error, message):
    damage(folder_copy)
    with pytest.raises(error) as raised:
        sd3_helper.OVStableDiffusion3Pipeline.from_pretrained(folder_copy, compile=False)
    assert message in str(raised.value)
    assert "convert_sd3(" in str(raised.value) or "SD3 checkpoint" in str(raised.value), "the message says the fix"
    assert no_network == []


# -- The command line ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "message"),
    [("image.txt", "needs an image extension Pillow can write"), ("blocker/image.png", "a part of its folder is a file")],
    ids=["extension", "parent-is-a-file"],
)
def test_cli_checks_the_output_before_loading_the_model(tmp_path, output, message):
    (tmp_path / "blocker").write_text("a file where a folder is needed")
    result = subprocess.run(
        [sys.executable, str(HELPER), "generate", str(tmp_path / "nowhere"), "--prompt", "a cat", "--output", str(tmp_path / output)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(errors) == 1 and message in errors[0], result.stderr
