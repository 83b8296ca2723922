"""The command line, end to end in subprocesses: tiny-model -> convert -> generate a PNG."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

HELPER = Path(__file__).resolve().parents[1] / "sd3_helper.py"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(HELPER), *args], capture_output=True, text=True, timeout=600)

def generated_images(model_dir, runs: dict[str, list[str]], *, common: list[str], tmp_path) -> dict:
    """`generate` once per `runs` entry (name -> extra flags), each image as an int16 array by name."""
    import numpy as np

    images = {}
    for name, flags in runs.items():
        result = run("generate", str(model_dir), *common, *flags, "--output", str(tmp_path / f"{name}.png"))
        assert result.returncode == 0, result.stderr
        with Image.open(tmp_path / f"{name}.png") as image:
            images[name] = np.asarray(image, dtype=np.int16)
    return images



def fake_checkpoint(folder: Path, *, without: str | None = None) -> Path:
    """A checkpoint's folders and config files (no weights): what the conversion checks before it loads anything."""
    from sd3_openvino.core.layout import CHECKPOINT_COMPONENT_FILES

    libraries = {"transformer": "diffusers", "vae": "diffusers", "scheduler": "diffusers"}
    index = {"_class_name": "StableDiffusion3Pipeline"}
    for name, config_file in CHECKPOINT_COMPONENT_FILES.items():
        index[name] = [libraries.get(name, "transformers"), "SomeClass"]
        if name != without:
            (folder / name).mkdir(parents=True)
            (folder / name / config_file).write_text("{}")
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


CONVERT_USER_ERRORS = {
    "missing-folder": (lambda tmp: [str(tmp / "no-such-checkpoint"), str(tmp / "out")], "`{tmp}/no-such-checkpoint` does not exist"),
    "missing-vae": (lambda tmp: [str(fake_checkpoint(tmp / "ckpt", without="vae")), str(tmp / "out")], "`vae/` in `{tmp}/ckpt` is missing"),
    "missing-t5": (lambda tmp: [str(fake_checkpoint(tmp / "ckpt", without="text_encoder_3")), str(tmp / "out")], "`text_encoder_3/` in `{tmp}/ckpt` is missing"),
    "output-inside-source": (lambda tmp: [str(fake_checkpoint(tmp / "ckpt")), str(tmp / "ckpt" / "ov")], "is inside the source folder"),
    "missing-lora": (
        lambda tmp: [str(fake_checkpoint(tmp / "ckpt")), str(tmp / "out"), "--lora", str(tmp / "style.safetensors")],
        "style.safetensors' does not exist",
    ),
}


@pytest.mark.parametrize(("arguments", "message"), CONVERT_USER_ERRORS.values(), ids=CONVERT_USER_ERRORS.keys())
def test_convert_reports_a_user_error_in_one_line_before_importing_diffusers(tmp_path, arguments, message):
    """No diffusers warning ("Multiple distributions found for package optimum") above the error: the checks run
    before diffusers is imported."""
    result = run("convert", *arguments(tmp_path))
    assert result.returncode == 2 and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert message.format(tmp=tmp_path) in result.stderr and "login" not in result.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "ckpt" / "ov").exists()


def test_the_checks_ask_for_t5_s_folder_only_with_t5(tmp_path):
    from sd3_openvino.core.layout import check_local_checkpoint

    checkpoint = fake_checkpoint(tmp_path / "ckpt", without="tokenizer_3")
    with pytest.raises(FileNotFoundError, match=r"`tokenizer_3/` in .* is missing"):
        check_local_checkpoint(checkpoint, load_t5=True)
    assert check_local_checkpoint(checkpoint, load_t5=False)["vae"] == ["diffusers", "SomeClass"]
    (checkpoint / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusion3Pipeline", "transformer": ["diffusers", "X"]}))
    with pytest.raises(ValueError, match=r"The `model_index.json` of `.*ckpt` lists no `text_encoder`, which the conversion reads"):
        check_local_checkpoint(checkpoint, load_t5=False)


@pytest.mark.parametrize("command", [[], ["tiny-model"], ["convert"], ["generate"], ["tiny-ip-adapter"]])
def test_help(command):
    result = run(*command, "--help")
    assert result.returncode == 0 and "usage: sd3_helper.py" in result.stdout


@pytest.mark.slow  # builds, converts and generates in subprocesses
def test_tiny_model_convert_generate(tmp_path):
    checkpoint, model_dir, image_path = tmp_path / "tiny", tmp_path / "tiny-ov", tmp_path / "out" / "image.png"
    assert run("tiny-model", str(checkpoint)).returncode == 0
    assert (checkpoint / "model_index.json").is_file()

    converted = run("convert", str(checkpoint), str(model_dir), "--weight-format", "int8", "--no-t5")
    assert converted.returncode == 0, converted.stderr
    assert (model_dir / "model_index.json").is_file() and not (model_dir / "text_encoder_3").exists()

    generated = run(
        "generate", str(model_dir), "--prompt", "a cat", "--output", str(image_path),
        "--steps", "2", "--seed", "3", "--height", "32", "--width", "48",
    )
    assert generated.returncode == 0, generated.stderr
    with Image.open(image_path) as image:
        assert image.format == "PNG" and image.size == (48, 32)

    pixels, cache_dir = {}, tmp_path / "ov-cache"
    no_cache = ("--no-step-cache", "--shapes", "dynamic", "--cache-dir", str(cache_dir))
    for flags in ((), ("--step-cache",), no_cache):  # 12 steps: the step cache skips the transformer on steps 6, 7 and 9
        path = tmp_path / f"steps12-{len(pixels)}.png"
        result = run("generate", str(model_dir), "--prompt", "a cat", "--output", str(path), "--steps", "12", *flags)
        assert result.returncode == 0, result.stderr
        with Image.open(path) as image:
            pixels[flags] = image.tobytes()
    assert pixels[()] == pixels[("--step-cache",)] != pixels[no_cache]  # the step cache is on by default
    assert len(list(cache_dir.glob("*.blob"))) >= 4


def test_the_command_line_imports_torch_only_to_convert():
    code = "import sys; from sd3_openvino.export import cli; print(sorted({'torch', 'diffusers'} & set(sys.modules)))"
    imported = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=HELPER.parent, check=True)
    assert imported.stdout.strip() == "[]"  # `generate` loads the runtime only: 0.5 GB less RSS


def test_generate_reports_bad_input_without_traceback(tmp_path):
    result = run("generate", str(tmp_path / "nowhere"), "--prompt", "a cat")
    assert result.returncode == 2
    assert "nowhere` does not exist" in result.stderr and "Traceback" not in result.stderr


def test_generate_from_an_image_and_a_mask(converted, tmp_path):
    model_dir = converted("fp32", load_t5=False)
    picture, mask = tmp_path / "picture.png", tmp_path / "mask.png"
    Image.new("RGB", (48, 32), color=(200, 120, 40)).save(picture)
    mask_image = Image.new("L", (48, 32), color=0)
    mask_image.paste(255, (12, 8, 36, 24))
    mask_image.save(mask)
    common = ["--prompt", "a red ball", "--steps", "4", "--height", "32", "--width", "48"]
    for extra, name in (([], "restyled.png"), (["--mask", str(mask)], "repainted.png")):
        result = run("generate", str(model_dir), *common, "--image", str(picture), "--strength", "0.5", *extra, "--output", str(tmp_path / name))
        assert result.returncode == 0, result.stderr
        with Image.open(tmp_path / name) as image:
            assert image.size == (48, 32)
    wrong = run("generate", str(model_dir), *common, "--mask", str(mask), "--output", str(tmp_path / "x.png"))
    assert wrong.returncode == 2 and "`--mask` and `--strength` need `--image`" in wrong.stderr and "Traceback" not in wrong.stderr


def test_generate_with_loras_at_run_time_equals_the_api(converted, tiny_checkpoint, tmp_path):
    import numpy as np

    import sd3_helper

    model_dir = converted("fp32", load_t5=False)
    first = sd3_helper.make_tiny_lora(tiny_checkpoint, tmp_path / "lora-1", seed=1)
    second = sd3_helper.make_tiny_lora(tiny_checkpoint, tmp_path / "lora-2", seed=2, targets=("attn.to_q",))
    common = ["--prompt", "a cat", "--steps", "2", "--seed", "5", "--height", "32", "--width", "32"]
    images = generated_images(model_dir, {"base": [], "lora": ["--lora", f"{first}:0.7", "--lora", str(second)]}, common=common, tmp_path=tmp_path)

    pipe = sd3_helper.OVStableDiffusion3Pipeline.from_pretrained(model_dir)
    pipe.set_progress_bar_config(disable=True)
    sd3_helper.load_adapters(pipe, [(str(first), 0.7), (str(second), 1.0)])
    assert pipe.get_active_adapters() == ["lora_0", "lora_1"]
    expected = np.asarray(pipe("a cat", num_inference_steps=2, generator=5, height=32, width=32).images[0], dtype=np.int16)
    assert np.abs(images["lora"] - expected).max() <= 1  # the same call in-process (CPU default precision, PNG rounding)
    assert np.abs(images["lora"] - images["base"]).max() > 4  # the adapters are applied

    bad = run("generate", str(model_dir), *common, "--lora", str(tmp_path / "base.png"), "--output", str(tmp_path / "x.png"))
    assert bad.returncode == 2 and "could not be read" in bad.stderr and "Traceback" not in bad.stderr
    nan = run("generate", str(model_dir), *common, "--lora", f"{first}:nan", "--output", str(tmp_path / "x.png"))
    assert nan.returncode == 2 and "has to be a finite number" in nan.stderr


IP_ADAPTER_FLAG_ERRORS = {  # (flags after `generate MODEL_DIR --prompt ...`, fragment of the one error)
    "image-without-adapter": (["--ip-image", "{tmp}/cat.png"], "`--ip-image` needs `--ip-adapter PATH`"),
    "scale-without-adapter": (["--ip-scale", "0.7"], "`--ip-scale` needs `--ip-adapter PATH`"),
    "adapter-without-image": (["--ip-adapter", "{tmp}"], "`--ip-adapter` needs `--ip-image PATH`: the image to prompt with"),
    "nan-scale": (["--ip-adapter", "{tmp}", "--ip-image", "{tmp}/cat.png", "--ip-scale", "nan"],
                  "argument --ip-scale: has to be a finite number but is 'nan'"),
    "inf-scale": (["--ip-adapter", "{tmp}", "--ip-image", "{tmp}/cat.png", "--ip-scale", "inf"],
                  "argument --ip-scale: has to be a finite number but is 'inf'"),
    "missing-image": (["--ip-adapter", "{tmp}", "--ip-image", "{tmp}/cat.png"], "`--ip-image` '{tmp}/cat.png' does not exist."),
    "missing-adapter": (["--ip-adapter", "{tmp}/ipa", "--ip-image", "{tmp}/cat.png"], "`--ip-adapter` '{tmp}/ipa' does not exist."),
}  # fmt: skip


@pytest.mark.parametrize(("flags", "message"), IP_ADAPTER_FLAG_ERRORS.values(), ids=IP_ADAPTER_FLAG_ERRORS.keys())
def test_generate_names_a_bad_ip_adapter_flag_before_loading_a_model(tmp_path, flags, message):
    """argparse's error (usage, then the message) for a flag without its partner or a scale that is no finite number;
    one `error:` line for a path that does not exist. No model folder is needed: all of it is checked first."""
    flags = [flag.format(tmp=tmp_path) for flag in flags]
    result = run("generate", str(tmp_path / "no-model"), "--prompt", "a cat", "--output", str(tmp_path / "x.png"), *flags)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert message.format(tmp=tmp_path) in result.stderr.splitlines()[-1], result.stderr
    assert not (tmp_path / "x.png").exists()


def test_tiny_ip_adapter_refuses_a_checkpoint_that_is_not_there(tmp_path):
    result = run("tiny-ip-adapter", str(tmp_path / "no-checkpoint"), str(tmp_path / "ipa"))
    assert result.returncode == 2 and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert f"`checkpoint` '{tmp_path}/no-checkpoint' holds no `transformer/config.json`" in result.stderr
    assert not (tmp_path / "ipa").exists()


def test_generate_with_an_image_prompt_equals_the_api(
    ov_large_fp32, tiny_large_checkpoint, tiny_ip_adapter_source, ov_ip_adapter, tmp_path
):
    """`tiny-ip-adapter` writes `make_tiny_ip_adapter`'s adapter; `generate --ip-adapter` prompts with `--ip-image` at
    `--ip-scale` (0.5 by default) as `load_ip_adapter` + `set_ip_adapter_scale` do, and names a folder that is none."""
    import numpy as np

    import sd3_helper

    source = tmp_path / "tiny-ipa"
    made = run("tiny-ip-adapter", str(tiny_large_checkpoint), str(source))
    assert made.returncode == 0, made.stderr
    assert (source / "image_encoder" / "config.json").is_file()
    weights = (source / "ip-adapter.safetensors").read_bytes()
    assert weights == (tiny_ip_adapter_source / "ip-adapter.safetensors").read_bytes()  # the same seed, the same adapter
    photo = tmp_path / "photo.png"
    Image.new("RGB", (40, 24), color=(230, 60, 20)).save(photo)
    common = ["--prompt", "a cat", "--steps", "3", "--seed", "5", "--height", "32", "--width", "32", "--no-step-cache"]
    runs = {
        "base": [],
        "prompted": ["--ip-adapter", str(ov_ip_adapter), "--ip-image", str(photo), "--ip-scale", "0.8"],
        "default-scale": ["--ip-adapter", str(ov_ip_adapter), "--ip-image", str(photo)],
    }
    images = generated_images(ov_large_fp32, runs, common=common, tmp_path=tmp_path)

    pipe = sd3_helper.OVStableDiffusion3Pipeline.from_pretrained(ov_large_fp32)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_ip_adapter(ov_ip_adapter)
    pipe.set_ip_adapter_scale(0.8)
    with Image.open(photo) as picture:
        expected = pipe("a cat", ip_adapter_image=picture.convert("RGB"), num_inference_steps=3, generator=5, height=32, width=32, taylorseer=None)
    expected = np.asarray(expected.images[0], dtype=np.int16)
    assert np.abs(images["prompted"] - expected).max() <= 1  # the same call in-process (CPU default precision, PNG rounding)
    assert np.abs(images["prompted"] - images["base"]).max() > 4  # the image prompt changes the image
    assert np.abs(images["default-scale"] - images["prompted"]).max() > 0  # 0.5 by default, not 0.8

    bad = run("generate", str(ov_large_fp32), *common, "--ip-adapter", str(tmp_path), "--ip-image", str(photo), "--output", str(tmp_path / "x.png"))
    assert bad.returncode == 2 and bad.stderr.startswith(f"error: `--ip-adapter` '{tmp_path}': ") and "Traceback" not in bad.stderr, bad.stderr
