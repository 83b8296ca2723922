"""ControlNet on OpenVINO against diffusers' SD3 ControlNet pipelines, on tiny random ControlNets of both families.

diffusers samples the control image's latent distribution with the global torch RNG; ours takes its mean (see
`runtime/controlnet_pipelines.py`), so the references here encode with the mean too (`encode_with_mean`).
"""

import json
import shutil

import numpy as np
import openvino as ov
import pytest
import torch
from PIL import Image

import sd3_helper
from conftest import F32, psnr
from sd3_openvino.core.layout import block_output_name, controlnet_state_name
from sd3_openvino.runtime.controlnet import add_controlnet_states, find_block_outputs

STEPS = 4
HEIGHT, WIDTH = 32, 48
COMMON = dict(prompt="a photo of a cat", negative_prompt="blurry", guidance_scale=5.0, height=HEIGHT, width=WIDTH, num_inference_steps=STEPS)


def control_picture(seed: int, *, size=(WIDTH, HEIGHT)) -> Image.Image:
    """A random RGB picture (width x height) standing in for canny edges or a depth map."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def mask_picture() -> Image.Image:
    mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    mask[8:24, 12:36] = 255
    return Image.fromarray(mask)


def encode_with_mean(pipe):
    """Make diffusers' pipeline `pipe` encode control images to the latent mean (as ours does), not a random sample."""
    encode = pipe.vae.encode

    def encode_mean(*args, **kwargs):
        output = encode(*args, **kwargs)
        output.latent_dist.sample = lambda generator=None: output.latent_dist.mean
        return output

    pipe.vae.encode = encode_mean
    return pipe


@pytest.fixture(scope="session")
def controlnet_pipelines(controlnet_models):
    """`pipelines(*names, inpainting=False)` -> (ours, diffusers') with those ControlNets, made once each."""
    from diffusers import SD3ControlNetModel, StableDiffusion3ControlNetInpaintingPipeline, StableDiffusion3ControlNetPipeline

    cache = {}

    def load(*names: str, inpainting: bool = False):
        if names not in cache:
            checkpoint, model_dir = controlnet_models[names[0]][:2]
            folders = [controlnet_models[name][3] for name in names]
            ours_class = sd3_helper.OVStableDiffusion3ControlNetInpaintingPipeline if inpainting else sd3_helper.OVStableDiffusion3ControlNetPipeline
            ours = ours_class.from_pretrained(model_dir, controlnet=folders if len(names) > 1 else folders[0], ov_config=F32)
            nets = [SD3ControlNetModel.from_pretrained(controlnet_models[name][2]) for name in names]
            reference_class = StableDiffusion3ControlNetInpaintingPipeline if inpainting else StableDiffusion3ControlNetPipeline
            reference = reference_class.from_pretrained(
                checkpoint, controlnet=nets if len(nets) > 1 else nets[0], text_encoder_3=None, tokenizer_3=None
            )
            for pipe in (ours, reference):
                pipe.set_progress_bar_config(disable=True)
            cache[names] = (ours, encode_with_mean(reference))
        return cache[names]

    return load


def run(pipe, *, ours: bool, **kwargs) -> np.ndarray:
    arguments = {**COMMON, **kwargs, "generator": torch.Generator().manual_seed(5), "output_type": "np"}
    if ours:
        arguments["taylorseer"] = arguments.get("taylorseer")  # every step computed, as diffusers
    return pipe(**arguments).images


PARITY_CASES = {
    "instantx": (("instantx",), dict(control_image=control_picture(0), controlnet_conditioning_scale=0.8)),
    "sd3.5-family": (("sd3.5",), dict(control_image=control_picture(0), controlnet_conditioning_scale=0.7)),
    "multi-per-net-scales": (("instantx", "instantx-2"), dict(control_image=[control_picture(0), control_picture(1)], controlnet_conditioning_scale=[0.6, 1.2])),
    "guidance-window": (("instantx",), dict(control_image=control_picture(0), control_guidance_start=0.25, control_guidance_end=0.75)),
    "multi-windows": (
        ("instantx", "instantx-2"),
        dict(
            control_image=[control_picture(0), control_picture(1)], controlnet_conditioning_scale=[1.0, 0.9],  # diffusers needs a list here
            control_guidance_start=[0.0, 0.5], control_guidance_end=[0.5, 1.0],
        ),
    ),
    "guidance-off": (("instantx",), dict(control_image=control_picture(0), guidance_scale=1.0)),
    "batch-2": (("instantx",), dict(control_image=control_picture(0), prompt=["a photo of a cat", "a dog"], negative_prompt=["blurry", "dark"])),
    "two-images-per-prompt": (("sd3.5",), dict(control_image=control_picture(2), num_images_per_prompt=2)),
}


@pytest.mark.parametrize("names, case", PARITY_CASES.values(), ids=PARITY_CASES.keys())
def test_controlnet_matches_diffusers(controlnet_pipelines, names, case):
    ours, reference = controlnet_pipelines(*names)
    expected = run(reference, ours=False, **case)
    actual = run(ours, ours=True, **case)
    assert actual.shape == expected.shape == (len(expected), HEIGHT, WIDTH, 3)
    assert np.abs(actual - expected).max() <= 1e-3  # measured: ~1e-6
    without = run(ours, ours=True, **{**case, "controlnet_conditioning_scale": 0.0})  # one scale for every ControlNet
    assert np.abs(actual - without).max() > 0.05, "the ControlNet changes the image"


def test_controlnet_inpainting_matches_diffusers(controlnet_pipelines):
    ours, reference = controlnet_pipelines("inpainting", inpainting=True)
    case = dict(control_image=control_picture(3), control_mask=mask_picture(), controlnet_conditioning_scale=0.9)
    expected, actual = run(reference, ours=False, **case), run(ours, ours=True, **case)
    assert np.abs(actual - expected).max() <= 1e-3


def test_scale_zero_and_an_empty_window_give_the_plain_image_without_running_the_controlnet(controlnet_pipelines):
    ours, _ = controlnet_pipelines("instantx")
    expected = run(sd3_helper.OVStableDiffusion3Pipeline.from_pipe(ours), ours=True)
    np.testing.assert_array_equal(run(ours, ours=True, control_image=control_picture(0), controlnet_conditioning_scale=0.0), expected)
    assert ours.get_performance_metrics().controlnet_times == []
    run(ours, ours=True, control_image=control_picture(0), control_guidance_start=0.5, control_guidance_end=1.0)
    assert len(ours.get_performance_metrics().controlnet_times) == STEPS // 2  # steps 2 and 3 of 4


def test_the_transformer_ir_is_unchanged_and_plain_images_stay_bit_identical(controlnet_models):
    _, model_dir, _, folder = controlnet_models["instantx"]
    plain = sd3_helper.OVStableDiffusion3Pipeline.from_pretrained(model_dir, ov_config=F32)
    plain.set_progress_bar_config(disable=True)
    before = run(plain, ours=True)
    control = sd3_helper.OVStableDiffusion3ControlNetPipeline.from_pipe(plain, controlnet=folder)
    assert control.transformer is plain.transformer, "one compiled transformer serves both pipelines"
    assert controlnet_state_name(0) in plain.transformer.state_names
    np.testing.assert_array_equal(run(plain, ours=True), before)  # zero residual states add exactly nothing
    run(control, ours=True, control_image=control_picture(0))
    np.testing.assert_array_equal(run(plain, ours=True), before)  # states are reset after each ControlNet step
    model = ov.Core().read_model(model_dir / "transformer" / "openvino_model.xml")
    assert [v.get_info().variable_id for v in model.get_variables()] == ["block_mask"]


def test_optimum_intel_and_genai_give_the_same_images_with_a_controlnet_in_the_folder(controlnet_models, tmp_path):
    import openvino_genai
    from optimum.intel import OVStableDiffusion3Pipeline as OptimumPipeline

    _, model_dir, source, _ = controlnet_models["instantx"]
    folder = shutil.copytree(model_dir, tmp_path / "with-controlnet")
    sd3_helper.convert_sd3_controlnet(source, folder / "controlnet", weight_format="fp32")
    kwargs = dict(**COMMON, max_sequence_length=77, output_type="np")
    for loaded in (model_dir, folder):
        optimum = OptimumPipeline.from_pretrained(loaded, ov_config=F32)
        image = optimum(**kwargs, generator=torch.Generator().manual_seed(5)).images
        genai = sd3_helper.make_genai_pipeline(loaded, ov_config=F32)
        arguments = {key: value for key, value in COMMON.items() if key != "prompt"}
        genai_image = genai.generate(COMMON["prompt"], **arguments, generator=openvino_genai.TorchGenerator(5)).data
        if loaded == model_dir:
            expected_optimum, expected_genai = image, genai_image
    np.testing.assert_array_equal(image, expected_optimum)
    np.testing.assert_array_equal(genai_image, expected_genai)


def test_the_step_cache_skips_the_controlnet_with_the_transformer(controlnet_pipelines):
    ours, _ = controlnet_pipelines("instantx")
    ours(**{**COMMON, "num_inference_steps": 10}, control_image=control_picture(0), generator=1, output_type="np")
    metrics = ours.get_performance_metrics()
    assert len(metrics.controlnet_times) == len(metrics.transformer_times) < 10, "cached steps run neither"


def test_skip_layer_guidance_and_lora_work_with_a_controlnet(controlnet_pipelines, tiny_checkpoints, tmp_path):
    ours, _ = controlnet_pipelines("sd3.5")
    case = dict(control_image=control_picture(0))
    plain = run(ours, ours=True, **case)
    skipped = run(ours, ours=True, **case, skip_guidance_layers=[1], skip_layer_guidance_start=0.0, skip_layer_guidance_stop=1.0)
    assert np.isfinite(skipped).all() and np.abs(skipped - plain).max() > 1e-3
    lora = sd3_helper.make_tiny_lora(tiny_checkpoints(family="sd3.5-large"), tmp_path / "lora")
    ours.load_lora_weights(lora)
    with_lora = run(ours, ours=True, **case)
    ours.unload_lora_weights()  # reads the transformer IR anew: the next call gives it its residual states again
    assert np.abs(with_lora - plain).max() > 1e-3
    np.testing.assert_allclose(run(ours, ours=True, **case), plain, atol=1e-6)


def test_device_and_ov_config_may_name_the_controlnet(controlnet_models, controlnet_pipelines):
    _, model_dir, _, folder = controlnet_models["instantx"]
    every = ("transformer", "text_encoder", "text_encoder_2", "vae_decoder", "vae_encoder", "controlnet")
    pipe = sd3_helper.OVStableDiffusion3ControlNetPipeline.from_pretrained(
        model_dir, controlnet=folder, device={"transformer": "CPU", "controlnet": "CPU"}, ov_config={name: F32 for name in every}
    )
    assert pipe.controlnets[0].submodel.ov_config == F32 and pipe.vae_encoder.ov_config == F32
    reference, _ = controlnet_pipelines("instantx")
    case = dict(control_image=control_picture(0))
    np.testing.assert_array_equal(run(pipe, ours=True, **case), run(reference, ours=True, **case))


def test_a_controlnet_pipeline_clone_generates_at_the_same_time(controlnet_pipelines):
    import threading

    ours, _ = controlnet_pipelines("instantx", "instantx-2")
    twin = ours.clone()
    assert twin.controlnets[0].submodel.shared is ours.controlnets[0].submodel.shared
    cases = [dict(control_image=[control_picture(0), control_picture(1)]), dict(control_image=[control_picture(2), control_picture(3)], prompt="a dog")]
    expected = [run(ours, ours=True, **case) for case in cases]
    results = {}
    threads = [threading.Thread(target=lambda i=i, pipe=pipe: results.__setitem__(i, run(pipe, ours=True, **cases[i]))) for i, pipe in enumerate((ours, twin))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index, want in enumerate(expected):
        np.testing.assert_array_equal(results[index], want)


def test_previews_and_vae_tiling_work_with_a_controlnet(controlnet_models):
    _, model_dir, _, folder = controlnet_models["instantx"]
    pipe = sd3_helper.OVStableDiffusion3ControlNetPipeline.from_pretrained(model_dir, controlnet=folder, ov_config=F32)
    pipe.set_progress_bar_config(disable=True)
    whole = run(pipe, ours=True, control_image=control_picture(0))
    previews = []

    def preview(pipeline, step, timestep, callback_kwargs):
        previews.append(pipeline.preview_images(callback_kwargs["latents"])[0])
        return {}

    pipe.enable_vae_tiling(tile_sample_min_size=16)  # a 32x48 image: 2 x 3 overlapping tiles, each way through the VAE
    tiled = run(pipe, ours=True, control_image=control_picture(0), callback_on_step_end=preview)
    assert len(previews) == STEPS and previews[0].size == (WIDTH // pipe.vae_scale_factor, HEIGHT // pipe.vae_scale_factor)
    assert tiled.shape == whole.shape and np.isfinite(tiled).all()
    assert len(pipe.get_performance_metrics().vae_encode_times) > 1, "the control image was encoded tile by tile"


@pytest.mark.parametrize("weight_format", ["int8", "int4"])
def test_compressed_controlnets_stay_close_to_fp32(controlnet_models, controlnet_pipelines, tmp_path, weight_format):
    _, model_dir, source, fp32_folder = controlnet_models["instantx"]
    folder = sd3_helper.convert_sd3_controlnet(source, tmp_path / weight_format, weight_format=weight_format)
    assert folder.joinpath("openvino_model.bin").stat().st_size < fp32_folder.joinpath("openvino_model.bin").stat().st_size / 2
    fp32, _ = controlnet_pipelines("instantx")
    compressed = sd3_helper.OVStableDiffusion3ControlNetPipeline.from_pipe(fp32, controlnet=folder)
    case = dict(control_image=control_picture(0))
    assert psnr(run(compressed, ours=True, **case), run(fp32, ours=True, **case)) > 40  # measured ~60 dB (docs/controlnet.md)


# ----------------------------------------------------------------------------------------------------------
# Conversion: records, resume, refusals
# ----------------------------------------------------------------------------------------------------------


def test_conversion_writes_a_record_and_resumes(controlnet_models):
    _, _, source, folder = controlnet_models["instantx"]
    record = json.loads((folder / "openvino_conversion.json").read_text())
    assert record["kind"] == "sd3_controlnet" and record["options"]["weight_format"] == "fp32"
    written = (folder / "openvino_model.bin").stat().st_mtime_ns
    assert sd3_helper.convert_sd3_controlnet(source, folder, weight_format="fp32") == folder
    assert (folder / "openvino_model.bin").stat().st_mtime_ns == written, "an equal conversion is kept, not redone"
    with pytest.raises(ValueError, match="another source or with other options .*weight_format"):
        sd3_helper.convert_sd3_controlnet(source, folder, weight_format="int8")


def test_conversion_refusals(controlnet_models, tmp_path):
    checkpoint, model_dir, source, _ = controlnet_models["sd3.5"]
    with pytest.raises(ValueError, match="SD3.5-style ControlNet .*Pass `base_model`"):
        sd3_helper.convert_sd3_controlnet(source, tmp_path / "no-base", weight_format="fp32")
    assert not (tmp_path / "no-base").exists()
    with pytest.raises(ValueError, match="holds other files .*Choose a new or empty folder"):
        sd3_helper.convert_sd3_controlnet(source, model_dir, base_model=checkpoint)
    assert (model_dir / "model_index.json").is_file(), "the SD3 folder is untouched"
    with pytest.raises(ValueError, match="a ControlNet converts to"):
        sd3_helper.convert_sd3_controlnet(source, tmp_path / "hybrid", weight_format="int8-hybrid")
    with pytest.raises(FileNotFoundError, match="Could not load an SD3 ControlNet"):
        sd3_helper.convert_sd3_controlnet(tmp_path / "nothing", tmp_path / "out")


# ----------------------------------------------------------------------------------------------------------
# Bad input: named errors before any work
# ----------------------------------------------------------------------------------------------------------

BAD_CALLS = {
    "no-control-image": (dict(), ValueError, "`control_image` is required"),
    "latents-as-control": (dict(control_image=np.zeros((1, 4, 16, 24), dtype=np.float32)), ValueError, "has to be an image .*not latents"),
    "wrong-aspect": (dict(control_image=control_picture(0, size=(32, 32))), ValueError, "is 32x32 .*the image is 48x32: the control would be stretched"),
    "scale-nan": (dict(control_image=control_picture(0), controlnet_conditioning_scale=float("nan")), ValueError, "finite number >= 0"),
    "scale-negative": (dict(control_image=control_picture(0), controlnet_conditioning_scale=-0.5), ValueError, "finite number >= 0"),
    "scale-bool": (dict(control_image=control_picture(0), controlnet_conditioning_scale=True), TypeError, "has to be a number"),
    "scales-wrong-length": (dict(control_image=control_picture(0), controlnet_conditioning_scale=[0.5, 0.5]), ValueError, "holds 2 values but the pipeline has 1 ControlNet"),
    "start-after-end": (dict(control_image=control_picture(0), control_guidance_start=0.6, control_guidance_end=0.4), ValueError, "has to be smaller than `control_guidance_end`"),
    "end-above-1": (dict(control_image=control_picture(0), control_guidance_end=1.5), ValueError, "between 0 and 1 but is 1.5"),
    "control-batch-3-for-2-prompts": (
        dict(control_image=[control_picture(0)] * 3, prompt=["a", "b"], negative_prompt=None), ValueError, "holds 3 images for 2 prompt",
    ),
}


@pytest.mark.parametrize("kwargs, error, message", BAD_CALLS.values(), ids=BAD_CALLS.keys())
def test_bad_control_arguments_are_named(controlnet_pipelines, kwargs, error, message):
    ours, _ = controlnet_pipelines("instantx")
    with pytest.raises(error, match=message):
        ours(**{**COMMON, **kwargs})


def test_multi_controlnet_needs_one_control_image_per_net(controlnet_pipelines):
    ours, _ = controlnet_pipelines("instantx", "instantx-2")
    with pytest.raises(ValueError, match="has 2 ControlNets, so `control_image` has to be a list of 2"):
        ours(**COMMON, control_image=control_picture(0))


def test_a_controlnet_for_another_transformer_is_refused(controlnet_models, tiny_checkpoints, tmp_path):
    wide = tiny_checkpoints(latent_channels=16)
    folder = sd3_helper.convert_sd3_controlnet(sd3_helper.make_tiny_sd3_controlnet(wide, tmp_path / "cn16"), tmp_path / "cn16-ov", weight_format="fp32")
    _, model_dir, _, _ = controlnet_models["instantx"]
    with pytest.raises(ValueError, match=r"made for another transformer: its latent channels \(in_channels\) is 16, this transformer's is 4"):
        sd3_helper.OVStableDiffusion3ControlNetPipeline.from_pretrained(model_dir, controlnet=folder)
    with pytest.raises(FileNotFoundError, match="holds no converted ControlNet"):
        sd3_helper.OVStableDiffusion3ControlNetPipeline.from_pretrained(model_dir, controlnet=tmp_path)
    with pytest.raises(ValueError, match="not the 4 \\+ 1 .*of an inpainting ControlNet"):
        sd3_helper.OVStableDiffusion3ControlNetInpaintingPipeline.from_pretrained(model_dir, controlnet=controlnet_models["instantx"][3])


def test_block_outputs_are_found_without_their_names_as_in_older_folders(controlnet_models):
    _, model_dir, _, _ = controlnet_models["sd3.5"]  # 3 blocks: two chains of gates (image: 3, text: 2)
    model = ov.Core().read_model(model_dir / "transformer" / "openvino_model.xml")
    named = [op.get_friendly_name() for op in find_block_outputs(model, num_layers=3, where=model_dir)]
    assert named == [block_output_name(index) for index in range(3)]
    renamed = {}
    for index, op in enumerate(op for op in model.get_ops() if op.get_type_name() == "Select"):
        renamed[op.get_friendly_name()] = f"where_{index}/aten.where.self/Select"  # as a folder converted before the names
        op.set_friendly_name(renamed[op.get_friendly_name()])
    found = find_block_outputs(model, num_layers=3, where=model_dir)
    assert [op.get_friendly_name() for op in found] == [renamed[name] for name in named]
    add_controlnet_states(model, num_layers=3, where=model_dir)
    assert [v.get_info().variable_id for v in model.get_variables()][1:] == [controlnet_state_name(0), controlnet_state_name(1)]


def test_a_transformer_without_gates_is_refused_with_the_fix(controlnet_models):
    _, model_dir, _, _ = controlnet_models["instantx"]
    vae = ov.Core().read_model(model_dir / "vae_decoder" / "openvino_model.xml")
    with pytest.raises(ValueError, match="has no skip gates to find its blocks' outputs by.*Convert the folder with this project"):
        add_controlnet_states(vae, num_layers=2, where=model_dir / "vae_decoder")


# ----------------------------------------------------------------------------------------------------------
# The command line
# ----------------------------------------------------------------------------------------------------------


def cli(*args: str):
    import subprocess
    import sys
    from pathlib import Path

    helper = Path(__file__).resolve().parents[1] / "sd3_helper.py"
    return subprocess.run([sys.executable, str(helper), *args], capture_output=True, text=True, timeout=600)


def test_cli_converts_a_controlnet_and_generates_with_it_as_the_api_does(controlnet_models, controlnet_pipelines, tmp_path):
    checkpoint, model_dir, _, _ = controlnet_models["instantx"]
    made = cli("tiny-controlnet", str(checkpoint), str(tmp_path / "cn"))
    assert made.returncode == 0, made.stderr
    converted = cli("convert-controlnet", str(tmp_path / "cn"), str(tmp_path / "cn-ov"), "--weight-format", "fp32")
    assert converted.returncode == 0, converted.stderr
    photo = tmp_path / "photo.png"
    control_picture(4).save(photo)
    common = ["--prompt", "a red ball", "--steps", "3", "--seed", "3", "--no-step-cache", "--device", "CPU"]
    result = cli("generate", str(model_dir), *common, "--controlnet", str(tmp_path / "cn-ov"), "--control-image", str(photo),
                 "--control-preprocessor", "canny", "--control-scale", "0.7", "--output", str(tmp_path / "out.png"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    ours = sd3_helper.OVStableDiffusion3ControlNetPipeline.from_pretrained(model_dir, controlnet=tmp_path / "cn-ov")
    expected = ours(
        "a red ball", control_image=sd3_helper.canny_edges(Image.open(photo)), controlnet_conditioning_scale=0.7,
        num_inference_steps=3, generator=3, taylorseer=None,
    ).images[0]  # fmt: skip
    with Image.open(tmp_path / "out.png") as image:
        assert image.size == (WIDTH, HEIGHT), "the image takes the control image's size"
        np.testing.assert_array_equal(np.asarray(image), np.asarray(expected))


CLI_ERRORS = {
    "control-image-without-controlnet": (["--control-image", "x.png"], "`--control-image` and `--control-scale` need `--controlnet`"),
    "one-image-for-two-nets": (["--controlnet", "a", "--controlnet", "b", "--control-image", "PHOTO"], "one `--control-image` per `--controlnet`: got 1 for 2"),
    "missing-control-image": (["--controlnet", "a", "--control-image", "missing.png"], "`--control-image` 'missing.png' does not exist"),
}


@pytest.mark.parametrize("arguments, message", CLI_ERRORS.values(), ids=CLI_ERRORS.keys())
def test_cli_control_errors_are_one_line_before_loading(tmp_path, arguments, message):
    control_picture(0).save(tmp_path / "photo.png")
    arguments = [str(tmp_path / "photo.png") if argument == "PHOTO" else argument for argument in arguments]
    result = cli("generate", str(tmp_path / "no-model"), "--prompt", "x", *arguments, "--output", str(tmp_path / "o.png"))
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
