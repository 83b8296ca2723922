"""Tiled VAE decode and encode (`enable_vae_tiling`) against diffusers' own tiling of the tiny PyTorch VAE."""

import contextlib

import numpy as np
import pytest
import torch

import sd3_helper
from sd3_openvino.runtime.vae_tiling import VaeTiling, blend_h, blend_v

PARITY_ATOL = 1e-3  # max abs pixel difference in [0, 1]; measured here: 1.5e-6 at f32 (decode; encode + decode)
TILE = 32  # pixels: 16 latent cells of the tiny VAE (scale factor 2), so a 64x96 image is 3x4 overlapping tiles
SIZE = dict(height=64, width=96)
STEPS = 3


@contextlib.contextmanager
def diffusers_tiling(pipe, *, tile_sample_min_size: int):
    """diffusers' `vae.enable_tiling()` with tiles of `tile_sample_min_size` pixels, undone afterwards (the
    session's pipelines share the VAE)."""
    vae = pipe.vae
    sizes = (vae.tile_sample_min_size, vae.tile_latent_min_size)
    vae.enable_tiling()
    vae.tile_sample_min_size = tile_sample_min_size
    vae.tile_latent_min_size = tile_sample_min_size // (2 ** (len(vae.config.block_out_channels) - 1))
    try:
        yield
    finally:
        vae.disable_tiling()
        vae.tile_sample_min_size, vae.tile_latent_min_size = sizes


@pytest.fixture(scope="module")
def tiled_pipelines(ov_pipeline):
    """(text-to-image, image-to-image) sharing the cached fp32 pipeline's compiled models, with tiles of TILE px."""
    text = sd3_helper.OVStableDiffusion3Pipeline.from_pipe(ov_pipeline("fp32"))
    text.enable_vae_tiling(tile_sample_min_size=TILE)
    image = sd3_helper.OVStableDiffusion3Img2ImgPipeline.from_pipe(text)
    for pipe in (text, image):
        pipe.set_progress_bar_config(disable=True)
    return text, image


def generate(pipe, **kwargs) -> np.ndarray:
    return pipe("a photo of a cat", num_inference_steps=STEPS, generator=torch.Generator().manual_seed(5), output_type="np", **SIZE, **kwargs).images


def test_tiled_decode_matches_diffusers_tiled_decode(diffusers_pipeline, ov_pipeline, tiled_pipelines):
    text, _ = tiled_pipelines
    assert text.vae_tiling.decodes_tiled((1, 4, 32, 48)) and ov_pipeline("fp32").vae_tiling is None
    with diffusers_tiling(diffusers_pipeline(True), tile_sample_min_size=TILE):
        expected = generate(diffusers_pipeline(True))
    actual = generate(text)
    assert actual.shape == expected.shape == (1, 64, 96, 3)
    print(f"\ntiled decode, ours vs diffusers: max abs difference {np.abs(actual - expected).max():.2e}")
    assert np.abs(actual - expected).max() <= PARITY_ATOL
    untiled = generate(ov_pipeline("fp32"))
    assert np.abs(actual - untiled).max() > 10 * PARITY_ATOL, "the tiles change the image (the tiny VAE has no smooth seams)"


def test_tiled_encode_and_decode_match_diffusers_image_to_image(diffusers_pipeline, tiled_pipelines):
    from diffusers import StableDiffusion3Img2ImgPipeline

    _, ours = tiled_pipelines
    reference = StableDiffusion3Img2ImgPipeline.from_pipe(diffusers_pipeline(True))
    reference.set_progress_bar_config(disable=True)
    image = np.random.default_rng(0).random((1, 64, 96, 3), dtype=np.float32)
    assert ours.vae_tiling.encodes_tiled((1, 3, 64, 96))
    with diffusers_tiling(reference, tile_sample_min_size=TILE):
        expected = generate(reference, image=image, strength=0.6)
    difference = np.abs(generate(ours, image=image, strength=0.6) - expected).max()
    print(f"\ntiled encode + decode, ours vs diffusers: max abs difference {difference:.2e}")
    assert difference <= PARITY_ATOL


def test_images_no_larger_than_a_tile_decode_whole(ov_pipeline, tiled_pipelines):
    text, _ = tiled_pipelines
    small = dict(height=32, width=32)
    call = dict(prompt="a cat", num_inference_steps=1, generator=3, output_type="np", **small)
    np.testing.assert_array_equal(text(**call).images, ov_pipeline("fp32")(**call).images)


def test_disable_restores_whole_decoding_and_static_shapes_keep_working(converted, ov_pipeline):
    pipe = sd3_helper.OVStableDiffusion3Pipeline.from_pretrained(converted("fp32"), ov_config={"INFERENCE_PRECISION_HINT": "f32"}, compile=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.reshape(**SIZE)
    untiled = generate(ov_pipeline("fp32"))
    pipe.enable_vae_tiling(tile_sample_min_size=TILE)  # the decoder goes back to dynamic shapes for its tiles
    tiled = generate(pipe)
    assert np.abs(tiled - untiled).max() > 10 * PARITY_ATOL
    pipe.disable_vae_tiling()
    assert pipe.vae_tiling is None
    assert np.abs(generate(pipe) - untiled).max() <= 1e-5
    assert list(pipe.vae_decoder.model.input(0).get_partial_shape()) == [1, 4, 32, 48]


def test_blending_matches_diffusers():
    from diffusers import AutoencoderKL

    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((2, 1, 3, 9, 7), dtype=np.float32)
    for blend, extent in ((AutoencoderKL.blend_v, 4), (AutoencoderKL.blend_h, 5), (AutoencoderKL.blend_v, 20)):
        expected = blend(None, torch.from_numpy(a.copy()), torch.from_numpy(b.copy()), extent).numpy()
        ours = {AutoencoderKL.blend_v: blend_v, AutoencoderKL.blend_h: blend_h}[blend](a.copy(), b.copy(), extent)
        np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-6)


def test_tile_sizes_come_from_the_vae_config():
    config = {"block_out_channels": [128, 256, 512, 512], "sample_size": 1024}  # SD3's VAE
    assert VaeTiling.from_config(config) == VaeTiling(tile_sample_min_size=1024, tile_latent_min_size=128, tile_overlap_factor=0.25)
    assert VaeTiling.from_config(config, tile_sample_min_size=512).tile_latent_min_size == 64


BAD_TILING = {
    "model-too-small": (dict(config={"block_out_channels": [8, 16], "sample_size": 4}), "This model is too small to tile: the VAE's `sample_size` 4 gives tiles of 2 latent cells"),
    "tile-too-small": (dict(tile_sample_min_size=6), "`tile_sample_min_size` 6 gives tiles of 3 latent cells, too few to overlap"),
    "tile-not-a-multiple": (dict(tile_sample_min_size=33), "`tile_sample_min_size` 33 is not a multiple of the VAE's scale factor 2"),
    "overlap-out-of-range": (dict(tile_overlap_factor=1.5), "`tile_overlap_factor` has to be a number between 0 and 1"),
}


@pytest.mark.parametrize(("kwargs", "message"), BAD_TILING.values(), ids=BAD_TILING.keys())
def test_bad_tiling_is_named(ov_pipeline, kwargs, message):
    pipe = sd3_helper.OVStableDiffusion3Pipeline.from_pipe(ov_pipeline("fp32"))
    config = kwargs.pop("config", None)
    with pytest.raises(ValueError) as raised:
        if config is None:
            pipe.enable_vae_tiling(**kwargs)
        else:
            VaeTiling.from_config(config, **kwargs)
    assert message in str(raised.value)
    assert pipe.vae_tiling is None
