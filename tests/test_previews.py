"""Live previews (`pipe.preview_images`): the linear map fitted from the model's VAE, and a tiny autoencoder's
decoder (TAESD) converted into the folder, against diffusers' `AutoencoderTiny`; in a real call's callback, cached,
torch-free, and with named errors."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

import sd3_helper
from conftest import F32, psnr
from sd3_openvino.runtime.image_processing import ImageProcessor
from sd3_openvino.runtime.previews import PREVIEW_DECODER, LatentRGBMap, area_mean, random_latents

ROOT = Path(__file__).resolve().parents[1]
TAESD_ATOL = 1e-4  # our IR's preview vs diffusers' AutoencoderTiny decode, f32; measured: 6e-8
# The tiny model's random VAE hardly depends on its latents (a linear map explains ~0 % of its pixels' variance), so
# there the fit can only match a constant colour: measured 20.3 dB on held-out latents, the images' own mean colour
# (an oracle) 20.4 dB. On a decoder with an image's structure (`structured_decoder`) the same fit gives 35.6 dB where
# the mean colour gives 18.9 dB.
TINY_VAE_MIN_PSNR = 19.0
STRUCTURED_MIN_PSNR = 33.0


@pytest.fixture(scope="module")
def channels(converted) -> int:
    return json.loads((converted("fp32", False) / "vae_decoder" / "config.json").read_text())["latent_channels"]


@pytest.fixture(scope="module")
def tiny_taesd(tmp_path_factory, channels) -> Path:
    return sd3_helper.make_tiny_taesd(tmp_path_factory.mktemp("taesd") / "tiny-taesd", latent_channels=channels, vae_scale_factor=2)


@pytest.fixture(scope="module")
def preview_folder(converted, tiny_taesd, tmp_path_factory) -> Path:
    """A copy of the fp32 no-T5 folder with the tiny autoencoder's decoder converted into it."""
    folder = tmp_path_factory.mktemp("previews") / "tiny-sd3-fp32-previews"
    shutil.copytree(converted("fp32", False), folder)
    sd3_helper.convert_preview_decoder(tiny_taesd, folder)
    return folder


def fresh_pipe(folder: Path) -> sd3_helper.OVStableDiffusion3Pipeline:
    pipe = sd3_helper.OVStableDiffusion3Pipeline.from_pretrained(folder, ov_config=F32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def preview_pipe(preview_folder):
    return fresh_pipe(preview_folder)


def latents_of(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


@pytest.fixture
def count_calls(monkeypatch):
    """The names of the submodels called from now on, in order."""
    calls = []
    original_call = sd3_helper.OVSubmodel.__call__
    monkeypatch.setattr(sd3_helper.OVSubmodel, "__call__", lambda self, **inputs: calls.append(self.name) or original_call(self, **inputs))
    return calls


# -- The linear map ----------------------------------------------------------------------------------------


def test_linear_previews_are_latent_sized_rgb_in_0_1(preview_pipe, channels):
    latents = latents_of((2, channels, 12, 16))
    images = preview_pipe.preview_images(latents, output_type="np")
    assert images.shape == (2, 12, 16, 3) and images.dtype == np.float32
    assert images.min() >= 0.0 and images.max() <= 1.0
    pil = preview_pipe.preview_images(latents)
    assert [(image.mode, image.size) for image in pil] == [("RGB", (16, 12))] * 2
    np.testing.assert_array_equal(np.asarray(pil[0]), ImageProcessor.numpy_to_pil(images)[0])
    big = preview_pipe.preview_images(latents, size=(64, 48), output_type="np")  # nearest: each cell a 4 x 4 block
    np.testing.assert_array_equal(big, images.repeat(4, axis=1).repeat(4, axis=2))
    big_pil = preview_pipe.preview_images(torch.from_numpy(latents), size=(64, 48))
    np.testing.assert_array_equal(np.asarray(big_pil[1]), np.asarray(ImageProcessor.numpy_to_pil(big)[1]))


def test_linear_previews_change_with_the_latents(preview_pipe, channels):
    first, second = (preview_pipe.preview_images(latents_of((1, channels, 16, 16), seed), output_type="np") for seed in (1, 2))
    assert np.abs(first - second).max() > 1e-3
    assert first.std(axis=(1, 2)).min() > 1e-3, "a preview is not one flat colour"
    assert np.abs(preview_pipe.previews.rgb_map.matrix[:-1]).max() > 0


def structured_decoder(rng: np.random.Generator, *, channels: int, scale: int, linear: bool):
    """A stand-in VAE decoder with an image's structure: cells -> RGB through a random matrix (then tanh, neighbours
    bleeding in and a checkerboard texture within each cell, unless `linear`), upsampled by `scale`."""
    matrix = rng.normal(0, 0.35, (channels, 3)).astype(np.float32)
    bias = np.array([0.1, -0.05, 0.0], dtype=np.float32)[:, None, None]

    def decode(raw: np.ndarray) -> np.ndarray:
        if linear:
            return (np.einsum("bchw,cd->bdhw", raw, 0.3 * matrix) + bias).repeat(scale, 2).repeat(scale, 3)
        rgb = np.tanh(np.einsum("bchw,cd->bdhw", raw, matrix) + bias)
        rgb = 0.8 * rgb + 0.05 * sum(np.roll(rgb, shift, axis=axis) for shift in (1, -1) for axis in (2, 3))
        up = rgb.repeat(scale, 2).repeat(scale, 3)
        checker = (np.indices(up.shape[2:]).sum(0) % 2 * 2 - 1).astype(np.float32)
        return up + 0.2 * checker * np.abs(up)

    return decode, 0.3 * matrix, bias[:, 0, 0]


def test_the_fit_recovers_a_linear_decoder_in_the_denoising_space():
    """Decoded latents are `latents / scaling_factor + shift_factor`; the map takes the loop's latents, so it is the
    decoder's matrix divided by the scaling, with the shift folded into the bias (and [-1, 1] -> [0, 1])."""
    decode, matrix, bias = structured_decoder(np.random.default_rng(7), channels=6, scale=4, linear=True)
    rgb_map = LatentRGBMap.fit(decode, latent_channels=6, scaling_factor=2.0, shift_factor=0.25, vae_scale_factor=4)
    np.testing.assert_allclose(rgb_map.matrix[:-1], matrix / 2.0 / 2, atol=1e-6)
    np.testing.assert_allclose(rgb_map.matrix[-1], (0.25 * matrix.sum(axis=0) + bias) / 2 + 0.5, atol=1e-6)
    assert rgb_map.psnr > 100


def test_the_fit_is_close_on_a_decoder_with_an_images_structure():
    decode, _, _ = structured_decoder(np.random.default_rng(7), channels=6, scale=4, linear=False)
    rgb_map = LatentRGBMap.fit(decode, latent_channels=6, scaling_factor=2.0, shift_factor=0.25, vae_scale_factor=4)
    latents = random_latents(np.random.default_rng(99), count=2, channels=6, size=24)  # held out, larger
    reference = area_mean(ImageProcessor.denormalize(decode(latents / 2.0 + 0.25)), factor=4).transpose(0, 2, 3, 1)
    measured, constant = psnr(rgb_map.apply(latents), reference), psnr(np.broadcast_to(reference.mean(axis=(0, 1, 2)), reference.shape), reference)
    print(f"\nstructured decoder: linear preview {measured:.1f} dB (fit's own held-out {rgb_map.psnr:.1f} dB), mean colour {constant:.1f} dB")
    assert measured >= STRUCTURED_MIN_PSNR and rgb_map.psnr >= STRUCTURED_MIN_PSNR
    assert measured > constant + 10


def test_linear_previews_against_the_tiny_models_vae(preview_pipe, channels):
    """The preview against the real decode averaged down to latent resolution, on held-out latents."""
    config = preview_pipe.vae_decoder.config
    latents = random_latents(np.random.default_rng(123), count=2, channels=channels, size=24)
    decoded = preview_pipe.vae_decode(latents / np.float32(config["scaling_factor"]) + np.float32(config["shift_factor"]))
    reference = area_mean(ImageProcessor.denormalize(decoded), factor=preview_pipe.vae_scale_factor).transpose(0, 2, 3, 1)
    preview = preview_pipe.preview_images(latents, output_type="np")
    measured, constant = psnr(preview, reference), psnr(np.broadcast_to(reference.mean(axis=(0, 1, 2)), reference.shape), reference)
    print(f"\ntiny VAE: linear preview {measured:.1f} dB (fit's held-out {preview_pipe.previews.rgb_map.psnr:.1f} dB), mean colour {constant:.1f} dB")
    assert measured >= TINY_VAE_MIN_PSNR and measured >= constant - 0.5


def test_the_map_is_fitted_once_and_shared_with_from_pipe(preview_folder, channels, count_calls):
    pipe = fresh_pipe(preview_folder)
    latents = latents_of((1, channels, 8, 8))
    first = pipe.preview_images(latents, output_type="np")
    assert count_calls == ["vae_decoder"]  # the fit: one small batch
    np.testing.assert_array_equal(pipe.preview_images(latents, output_type="np"), first)
    image_pipe = sd3_helper.OVStableDiffusion3Img2ImgPipeline.from_pipe(pipe)
    assert image_pipe.previews is pipe.previews
    image_pipe.preview_images(latents)
    assert count_calls == ["vae_decoder"]


def test_the_fit_works_on_a_reshaped_pipeline(preview_folder, preview_pipe, channels):
    """`reshape` holds the VAE decoder at one call's shape; the fit decodes its small latents with a dynamic copy."""
    pipe = fresh_pipe(preview_folder).reshape(height=32, width=32, do_classifier_free_guidance=False)
    latents = latents_of((1, channels, 16, 16))
    np.testing.assert_allclose(pipe.preview_images(latents, output_type="np"), preview_pipe.preview_images(latents, output_type="np"), atol=1e-5)
    pipe("a cat", height=32, width=32, num_inference_steps=1, guidance_scale=1.0, generator=0, output_type="latent")  # still static


@pytest.mark.parametrize("generator", [3, "torch"], ids=["int-seed", "torch-generator"])
def test_previews_from_callback_on_step_end(preview_pipe, generator):
    generator = torch.Generator().manual_seed(3) if generator == "torch" else generator
    previews, latent_types = [], []

    def show(pipe, step, timestep, callback_kwargs):
        latents = callback_kwargs["latents"]
        latent_types.append(type(latents))
        previews.append(pipe.preview_images(latents, size=(32, 32))[0])
        return {}

    final = preview_pipe("a cat", height=32, width=32, num_inference_steps=3, generator=generator, output_type="latent", callback_on_step_end=show).images
    assert latent_types == [torch.Tensor if isinstance(generator, torch.Generator) else np.ndarray] * 3
    assert [image.size for image in previews] == [(32, 32)] * 3 and all(isinstance(image, PIL.Image.Image) for image in previews)
    np.testing.assert_array_equal(np.asarray(previews[-1]), np.asarray(preview_pipe.preview_images(final, size=(32, 32))[0]))
    assert np.abs(np.asarray(previews[0], dtype=np.int16) - np.asarray(previews[-1], dtype=np.int16)).max() > 0


# -- The tiny autoencoder (TAESD) --------------------------------------------------------------------------


def test_taesd_previews_match_diffusers_autoencoder_tiny(preview_pipe, tiny_taesd, channels):
    from diffusers import AutoencoderTiny

    latents = latents_of((2, channels, 8, 12), seed=4)
    ours = preview_pipe.preview_images(latents, method="taesd", output_type="np")
    autoencoder = AutoencoderTiny.from_pretrained(tiny_taesd).eval()
    config = autoencoder.config
    with torch.no_grad():  # what diffusers' SD3 pipeline does with an AutoencoderTiny as its VAE
        decoded = autoencoder.decode(torch.from_numpy(latents) / config.scaling_factor + config.shift_factor).sample
    expected = (decoded / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert ours.shape == expected.shape == (2, 16, 24, 3)
    print(f"\nTAESD preview vs diffusers AutoencoderTiny: max abs difference {np.abs(ours - expected).max():.1e}")
    assert np.abs(ours - expected).max() <= TAESD_ATOL
    raw = preview_pipe.previews.decoder(latent_sample=latents)["sample"]  # before the clip to [0, 1], which hides much
    assert np.abs(raw - decoded.numpy()).max() <= TAESD_ATOL and decoded.std() > 0.1
    from_torch = preview_pipe.preview_images(torch.from_numpy(latents), method="taesd", output_type="np")
    np.testing.assert_array_equal(from_torch, ours)
    assert [image.size for image in preview_pipe.preview_images(latents, method="taesd")] == [(24, 16)] * 2


def test_taesd_needs_the_converted_decoder(ov_pipeline, converted, channels):
    folder = converted("fp32", False)
    with pytest.raises(FileNotFoundError, match=rf"needs a tiny autoencoder's decoder in `{folder / PREVIEW_DECODER}`, which is missing.*convert_preview_decoder\('madebyollin/taesd3'"):
        ov_pipeline("fp32", False).preview_images(latents_of((1, channels, 8, 8)), method="taesd")


def test_convert_preview_decoder_skips_refuses_and_checks(preview_folder, tiny_taesd, tiny_checkpoint, tmp_path, channels):
    xml = preview_folder / PREVIEW_DECODER / "openvino_model.xml"
    before = xml.stat().st_mtime_ns
    assert sd3_helper.convert_preview_decoder(tiny_taesd, preview_folder) == preview_folder / PREVIEW_DECODER
    assert xml.stat().st_mtime_ns == before, "already converted: skipped"
    other = sd3_helper.make_tiny_taesd(tmp_path / "other-taesd", latent_channels=channels, seed=1)
    with pytest.raises(ValueError, match=r"holds the decoder of .*tiny-taesd.* not of .*other-taesd.* Pass `overwrite=True`"):
        sd3_helper.convert_preview_decoder(other, preview_folder)
    wrong = sd3_helper.make_tiny_taesd(tmp_path / "sd3-sized-taesd", latent_channels=channels + 12, vae_scale_factor=8)
    with pytest.raises(ValueError, match=rf"decodes {channels + 12} latent channels at 8 pixels per cell, but this model's VAE has {channels} channels at 2"):
        sd3_helper.convert_preview_decoder(wrong, preview_folder, overwrite=True)
    with pytest.raises(ValueError, match=r"is a 'AutoencoderKL', not diffusers' 'AutoencoderTiny' \(TAESD\)"):
        sd3_helper.convert_preview_decoder(tiny_checkpoint / "vae", preview_folder, overwrite=True)
    with pytest.raises(ValueError, match=r"`weight_format` of the preview decoder must be one of \['fp32', 'fp16'\] but is 'int4'"):
        sd3_helper.convert_preview_decoder(tiny_taesd, preview_folder, weight_format="int4")
    with pytest.raises(FileNotFoundError, match=r"Could not load the tiny autoencoder .*no-such-taesd.*madebyollin/taesd3"):
        sd3_helper.convert_preview_decoder(tmp_path / "no-such-taesd", preview_folder, overwrite=True)
    assert xml.stat().st_mtime_ns == before, "a refused conversion leaves the folder as it was"
    assert json.loads((preview_folder / PREVIEW_DECODER / "config.json").read_text())["_name_or_path"] == str(tiny_taesd)


def test_the_cli_converts_the_preview_decoder(tiny_checkpoint, preview_folder, tiny_taesd, tmp_path):
    folder = tmp_path / "cli-copy"
    shutil.copytree(preview_folder, folder)
    shutil.rmtree(folder / PREVIEW_DECODER)
    arguments = ["convert", str(tiny_checkpoint), str(folder), "--no-t5", "--weight-format", "fp32", "--preview-decoder", str(tiny_taesd)]
    assert sd3_helper.main(arguments) == 0  # the submodels are already converted: only the preview decoder is new
    assert (folder / PREVIEW_DECODER / "openvino_model.xml").is_file()


def test_genai_loads_a_folder_with_a_preview_decoder(preview_folder):
    import openvino_genai

    pipeline = sd3_helper.make_genai_pipeline(preview_folder)
    image = pipeline.generate("a cat", height=32, width=32, num_inference_steps=1, generator=openvino_genai.TorchGenerator(0))
    assert image.data.shape == (1, 32, 32, 3)


# -- Bad input and the torch-free runtime ------------------------------------------------------------------


def test_bad_preview_input_is_named(preview_pipe, channels):
    with pytest.raises(ValueError, match=rf"`latents` must have shape \(batch, {channels}, height / 2, width / 2\) \({channels} latent channels for this model\) but has shape \(1, {channels + 1}, 8, 8\)"):
        preview_pipe.preview_images(latents_of((1, channels + 1, 8, 8)))
    with pytest.raises(ValueError, match=r"but has shape \(\d+, 8, 8\).*with a batch axis \(`latents\[None\]`\)"):
        preview_pipe.preview_images(latents_of((channels, 8, 8)))
    with pytest.raises(TypeError, match=r"`latents` has to be a numpy array or torch tensor"):
        preview_pipe.preview_images([[1.0]])
    with pytest.raises(ValueError, match=r"`method` must be one of \['linear', 'taesd'\] but is 'vae'"):
        preview_pipe.preview_images(latents_of((1, channels, 8, 8)), method="vae")
    with pytest.raises(ValueError, match=r"`output_type` must be one of \['pil', 'np'\] but is 'latent'"):
        preview_pipe.preview_images(latents_of((1, channels, 8, 8)), output_type="latent")
    with pytest.raises(TypeError, match=r"`size` has to be None or \(width, height\) in pixels"):
        preview_pipe.preview_images(latents_of((1, channels, 8, 8)), size=512)


@pytest.mark.parametrize("size", [(100_000, 100_000), (64, 10**9), (0, 64), (64, -8)])
def test_a_preview_size_beyond_the_model_s_sides_is_refused_before_anything_is_allocated(preview_pipe, channels, size):
    maximum = preview_pipe.size_rules.maximum
    message = rf"`size` has to be \(width, height\) with sides from 1 to {maximum} pixels .* but is {re.escape(str(size))}"
    for method in ("linear", "taesd"):  # refused before the map is fitted or the tiny decoder runs
        with pytest.raises(ValueError, match=message):
            preview_pipe.preview_images(latents_of((1, channels, 8, 8)), method=method, size=size, output_type="np")
    with pytest.raises(TypeError, match=r"`size` has to be None or \(width, height\) in pixels, e.g. \(512, 512\), but is \(64.0, 64\)"):
        preview_pipe.preview_images(latents_of((1, channels, 8, 8)), size=(64.0, 64))
    assert preview_pipe.preview_images(latents_of((1, channels, 8, 8)), size=(maximum, maximum))[0].size == (maximum, maximum)


TORCH_FREE_PREVIEWS = """
import sys
import numpy as np
import sd3_openvino.runtime.pipeline as sd3_runtime
pipe = sd3_runtime.OVStableDiffusion3Pipeline.from_pretrained(sys.argv[1])
pipe.set_progress_bar_config(disable=True)
previews = []
pipe("a cat", height=32, width=32, num_inference_steps=2, generator=1,
     callback_on_step_end=lambda pipe, step, t, kwargs: previews.append(pipe.preview_images(kwargs["latents"])) or {})
previews.append(pipe.preview_images(np.zeros((1, pipe.vae_decoder.config["latent_channels"], 8, 8), np.float32), method="taesd"))
heavy = sorted(name for name in ("torch", "diffusers", "transformers") if name in sys.modules)
print(len(previews), heavy)
"""


def test_previews_run_without_torch(preview_folder):
    result = subprocess.run([sys.executable, "-c", TORCH_FREE_PREVIEWS, str(preview_folder)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "3 []"
