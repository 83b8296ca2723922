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
def diffusers_tiling(pipe, *, tile_sample_min_size: int, tile_overlap_factor: float = 0.25):
    """diffusers' `vae.enable_tiling()` with tiles of `tile_sample_min_size` pixels overlapping by
    `tile_overlap_factor`, undone afterwards (the session's pipelines share the VAE)."""
    vae = pipe.vae
    sizes = (vae.tile_sample_min_size, vae.tile_latent_min_size, vae.tile_overlap_factor)
    vae.enable_tiling()
    vae.tile_sample_min_size, vae.tile_overlap_factor = tile_sample_min_size, tile_overlap_factor
    vae.tile_latent_min_size = tile_sample_min_size // (2 ** (len(vae.config.block_out_channels) - 1))
    try:
        yield
    finally:
        vae.disable_tiling()
        vae.tile_sample_min_size, vae.tile_latent_min_size, vae.tile_overlap_factor = sizes


def make_tiled_pipelines(ov_pipeline, *, tile_overlap_factor: float = 0.25):
    """(text-to-image, image-to-image) sharing the cached fp32 pipeline's compiled models, with tiles of TILE px."""
    text = sd3_helper.OVStableDiffusion3Pipeline.from_pipe(ov_pipeline("fp32"))
    text.enable_vae_tiling(tile_sample_min_size=TILE, tile_overlap_factor=tile_overlap_factor)
    image = sd3_helper.OVStableDiffusion3Img2ImgPipeline.from_pipe(text)
    for pipe in (text, image):
        pipe.set_progress_bar_config(disable=True)
    return text, image


@pytest.fixture(scope="module")
def tiled_pipelines(ov_pipeline):
    return make_tiled_pipelines(ov_pipeline)


# Overlaps of a whole number of the tiny VAE's 16-cell tiles, where diffusers' tiling is right (0.25: its default).
# For the others (0.3: 4.8 cells, 0.9: 14.4) diffusers strides by int(16 x (1 - overlap)) cells but crops each tile
# to 32 - int(32 x overlap) pixels, so each tile adds pixels twice (see `test_tiles_line_up_for_every_overlap`).
DIFFUSERS_RIGHT_OVERLAPS = (0.25, 0.5)
DIFFUSERS_WRONG_OVERLAPS = (0.3, 0.9)


def generate(pipe, **kwargs) -> np.ndarray:
    return pipe("a photo of a cat", num_inference_steps=STEPS, generator=torch.Generator().manual_seed(5), output_type="np", **SIZE, **kwargs).images


@pytest.mark.parametrize("overlap", DIFFUSERS_RIGHT_OVERLAPS)
def test_tiled_decode_matches_diffusers_tiled_decode(diffusers_pipeline, ov_pipeline, overlap):
    text, _ = make_tiled_pipelines(ov_pipeline, tile_overlap_factor=overlap)
    assert text.vae_tiling.decodes_tiled((1, 4, 32, 48)) and ov_pipeline("fp32").vae_tiling is None
    with diffusers_tiling(diffusers_pipeline(True), tile_sample_min_size=TILE, tile_overlap_factor=overlap):
        expected = generate(diffusers_pipeline(True))
    actual = generate(text)
    assert actual.shape == expected.shape == (1, 64, 96, 3)
    print(f"\ntiled decode, ours vs diffusers: max abs difference {np.abs(actual - expected).max():.2e}")
    assert np.abs(actual - expected).max() <= PARITY_ATOL
    untiled = generate(ov_pipeline("fp32"))
    assert np.abs(actual - untiled).max() > 10 * PARITY_ATOL, "the tiles change the image (the tiny VAE has no smooth seams)"


@pytest.mark.parametrize("overlap", DIFFUSERS_RIGHT_OVERLAPS)
def test_tiled_encode_and_decode_match_diffusers_image_to_image(diffusers_pipeline, ov_pipeline, overlap):
    from diffusers import StableDiffusion3Img2ImgPipeline

    _, ours = make_tiled_pipelines(ov_pipeline, tile_overlap_factor=overlap)
    reference = StableDiffusion3Img2ImgPipeline.from_pipe(diffusers_pipeline(True))
    reference.set_progress_bar_config(disable=True)
    image = np.random.default_rng(0).random((1, 64, 96, 3), dtype=np.float32)
    assert ours.vae_tiling.encodes_tiled((1, 3, 64, 96))
    with diffusers_tiling(reference, tile_sample_min_size=TILE, tile_overlap_factor=overlap):
        expected = generate(reference, image=image, strength=0.6)
    difference = np.abs(generate(ours, image=image, strength=0.6) - expected).max()
    print(f"\ntiled encode + decode, ours vs diffusers: max abs difference {difference:.2e}")
    assert difference <= PARITY_ATOL


def upsample(latents: np.ndarray, *, scale: int) -> np.ndarray:
    """A 'decoder' whose every pixel depends on its own latent cell only: tiled, it must give the whole result."""
    return np.repeat(np.repeat(latents * 2 + 1, scale, axis=2), scale, axis=3)


def downsample(pixels: np.ndarray, *, scale: int) -> np.ndarray:
    """An 'encoder' whose every cell depends on its own pixels only."""
    batch, channels, height, width = pixels.shape
    return pixels.reshape(batch, channels, height // scale, scale, width // scale, scale).mean(axis=(3, 5))


@pytest.mark.parametrize("overlap", (0.1, *DIFFUSERS_RIGHT_OVERLAPS, *DIFFUSERS_WRONG_OVERLAPS, 0.75))
@pytest.mark.parametrize(("scale", "tile"), [(2, 32), (8, 64)])
def test_tiles_line_up_for_every_overlap(overlap, scale, tile):
    """Tiled, a decoder or encoder that works cell by cell gives its whole result, of the size asked for (diffusers
    gives 133 x 133 pixels for 128 x 128 at overlap 0.3 with 16-cell tiles, 254 x 254 at 0.9)."""
    config = {"block_out_channels": [8] * (scale.bit_length()), "sample_size": tile}
    try:
        tiling = VaeTiling.from_config(config, tile_overlap_factor=overlap)
    except ValueError as error:  # 8-cell tiles cannot overlap by 0.1 (0.8 cells) or step by 0.1 of a tile
        assert "too small to tile" in str(error) and scale == 8 and overlap in (0.1, 0.9)
        return
    latents = np.random.default_rng(0).standard_normal((2, 3, 128 // scale + 3, 128 // scale + 1), dtype=np.float32)
    decoded = tiling.decode(lambda tile_latents: upsample(tile_latents, scale=scale), latents)
    whole = upsample(latents, scale=scale)
    assert decoded.shape == whole.shape
    np.testing.assert_allclose(decoded, whole, rtol=0, atol=1e-5)  # float32 blending of equal values
    encoded = tiling.encode(lambda tile_pixels: downsample(tile_pixels, scale=scale), whole)
    assert encoded.shape == latents.shape
    np.testing.assert_allclose(encoded, downsample(whole, scale=scale), rtol=0, atol=1e-5)


@pytest.mark.parametrize("overlap", DIFFUSERS_WRONG_OVERLAPS)
def test_every_overlap_gives_the_size_asked_for_and_image_to_image_runs(ov_pipeline, overlap):
    text, image = make_tiled_pipelines(ov_pipeline, tile_overlap_factor=overlap)
    size = dict(height=128, width=128)
    call = dict(prompt="a cat", num_inference_steps=2, generator=3, output_type="np", **size)
    first = text(**call).images
    assert first.shape == (1, 128, 128, 3)
    assert image(**call, image=first, strength=0.6).images.shape == (1, 128, 128, 3)


def test_images_no_larger_than_a_tile_decode_whole(ov_pipeline, tiled_pipelines):
    text, _ = tiled_pipelines
    small = dict(height=32, width=32)
    call = dict(prompt="a cat", num_inference_steps=1, generator=3, output_type="np", **small)
    whole = ov_pipeline("fp32")(**call).images  # its decoder compiled for 32x32 ("auto" shapes); the tiled one's is dynamic
    np.testing.assert_allclose(text(**call).images, whole, rtol=0, atol=1e-5)


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
