"""Every kind of image input, at the `ImageProcessor.preprocess` level (fast tier: no model): each is either the same
array as its float [0, 1] RGB equivalent (uint8 = float / 255, "L" = its RGB conversion, RGBA = RGB with alpha dropped,
...), passed through as latents, or refused with a named error. Pipeline-level cases are in test_image_pipelines.py."""

import numpy as np
import pytest
import torch
from PIL import Image

from sd3_openvino.runtime.image_processing import ImageProcessor
from sd3_openvino.runtime.image_pipelines import OVStableDiffusion3Img2ImgPipeline

H, W = 24, 32  # not square, so that swapped sides show
SIZE = dict(height=16, width=24)  # a resize, so that the array path (torch's "nearest") and PIL's filter both run
IMAGES = ImageProcessor(vae_scale_factor=8, vae_latent_channels=16)
IMAGES_4CH = ImageProcessor(vae_scale_factor=8, vae_latent_channels=4)  # SD3's tiny VAEs: RGBA must not pass as latents
MASKS = ImageProcessor(vae_scale_factor=8, vae_latent_channels=16, do_normalize=False, do_binarize=True, do_convert_grayscale=True)

RNG = np.random.default_rng(0)
RGB8 = RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)
ALPHA8 = RNG.integers(0, 256, (H, W, 1), dtype=np.uint8)
GRAY8 = RNG.integers(0, 256, (H, W), dtype=np.uint8)
MASK8 = np.zeros((H, W), dtype=np.uint8)
MASK8[6:18, 8:20] = 255
RGB = RGB8.astype(np.float32) / 255  # the float [0, 1] equivalents
GRAY_RGB = np.repeat(GRAY8[..., None], 3, axis=-1).astype(np.float32) / 255
MASK = MASK8.astype(np.float32) / 255
LATENTS = RNG.standard_normal((1, 16, 6, 8)).astype(np.float32)  # a numpy (1, 16, h, 4) reads as RGBA (B, H, W, C)


def pil(array: np.ndarray, mode: str | None = None) -> Image.Image:
    return Image.fromarray(array, mode=mode)


# id: (processor, input factory, equivalent-input factory: the same processor on it gives the same array)
SAME_AS = {
    "uint8-hwc-is-float-over-255": (IMAGES, lambda: RGB8, lambda: RGB),
    "uint8-bhwc": (IMAGES, lambda: RGB8[None], lambda: RGB),
    "float64-hwc": (IMAGES, lambda: RGB.astype(np.float64), lambda: RGB),
    "float16-hwc": (IMAGES, lambda: RGB.astype(np.float16), lambda: RGB.astype(np.float16).astype(np.float32)),
    "numpy-bchw": (IMAGES, lambda: RGB.transpose(2, 0, 1)[None].copy(), lambda: RGB),
    "torch-bchw": (IMAGES, lambda: torch.from_numpy(RGB).permute(2, 0, 1)[None], lambda: RGB),
    "torch-chw": (IMAGES, lambda: torch.from_numpy(RGB).permute(2, 0, 1), lambda: RGB),
    "torch-uint8-bchw": (IMAGES, lambda: torch.from_numpy(RGB8).permute(2, 0, 1)[None], lambda: RGB),
    "torch-bfloat16": (IMAGES, lambda: torch.from_numpy(RGB).to(torch.bfloat16), lambda: torch.from_numpy(RGB).to(torch.bfloat16).float().numpy()),
    "gray-hw-float-is-rgb": (IMAGES, lambda: GRAY8.astype(np.float32) / 255, lambda: GRAY_RGB),
    "gray-hw1-uint8-is-rgb": (IMAGES, lambda: GRAY8[..., None], lambda: GRAY_RGB),
    "gray-b1hw-torch-is-rgb": (IMAGES, lambda: torch.from_numpy(GRAY8)[None, None], lambda: GRAY_RGB),
    "rgba-hwc-drops-alpha": (IMAGES, lambda: np.concatenate([RGB8, ALPHA8], axis=-1), lambda: RGB),
    "rgba-bhwc-4ch-vae-is-no-latents": (IMAGES_4CH, lambda: np.concatenate([RGB8, ALPHA8], axis=-1)[None], lambda: RGB),
    "list-of-uint8": (IMAGES, lambda: [RGB8, RGB8], lambda: np.stack([RGB, RGB])),
    "pil-rgb-is-uint8": (IMAGES, lambda: pil(RGB8), lambda: pil(RGB8)),  # PIL's lanczos: compared to itself below too
    "pil-l-is-its-rgb": (IMAGES, lambda: pil(GRAY8, "L"), lambda: pil(GRAY8, "L").convert("RGB")),
    "pil-rgba-is-its-rgb": (IMAGES, lambda: pil(np.concatenate([RGB8, ALPHA8], axis=-1), "RGBA"), lambda: pil(RGB8)),
    "pil-rgba-4ch-vae-is-no-latents": (IMAGES_4CH, lambda: pil(np.concatenate([RGB8, ALPHA8], axis=-1), "RGBA"), lambda: pil(RGB8)),
    "pil-p-is-its-rgb": (IMAGES, lambda: pil(RGB8).convert("P"), lambda: pil(RGB8).convert("P").convert("RGB")),
    "mask-uint8-hw": (MASKS, lambda: MASK8, lambda: MASK),
    "mask-bool-hw": (MASKS, lambda: MASK8 > 0, lambda: MASK),
    "mask-rgb-uint8-hwc": (MASKS, lambda: np.repeat(MASK8[..., None], 3, axis=-1), lambda: MASK),
    "mask-rgba-bchw": (MASKS, lambda: np.repeat(MASK[None, None], 4, axis=1), lambda: MASK),
    "mask-pil-l-is-array": (MASKS, lambda: pil(MASK8, "L"), lambda: MASK),
    "mask-pil-1-is-its-l": (MASKS, lambda: pil(MASK8, "L").convert("1"), lambda: pil(MASK8, "L")),
    "mask-pil-rgba-is-its-l": (MASKS, lambda: pil(MASK8, "L").convert("RGBA"), lambda: pil(MASK8, "L")),
}


@pytest.mark.parametrize(("processor", "make_input", "make_equivalent"), SAME_AS.values(), ids=SAME_AS.keys())
@pytest.mark.parametrize("size", [{}, SIZE], ids=["native-size", "resized"])
def test_image_input_gives_the_same_array_as_its_equivalent(processor, make_input, make_equivalent, size):
    actual = processor.preprocess(make_input(), **size)
    expected = processor.preprocess(make_equivalent(), **size)
    assert actual.dtype == np.float32 and actual.shape[1] == (1 if processor.do_convert_grayscale else 3)
    np.testing.assert_allclose(actual, expected, atol=1e-6)


def test_uint8_array_is_scaled_like_pil():
    """At the native size (no resize filter) a uint8 array and the PIL image of it give the same numbers."""
    np.testing.assert_array_equal(IMAGES.preprocess(RGB8), IMAGES.preprocess(pil(RGB8)))
    assert IMAGES.preprocess(RGB8).max() <= 1.0  # today's bug: uint8 taken as [-1, 1] reached 509


LATENT_INPUTS = {
    "torch-bchw": (IMAGES, lambda: torch.from_numpy(LATENTS)),
    "numpy-bchw": (IMAGES, lambda: LATENTS),
    "torch-4ch-vae": (IMAGES_4CH, lambda: torch.from_numpy(LATENTS[:, :4])),
}


@pytest.mark.parametrize(("processor", "make_input"), LATENT_INPUTS.values(), ids=LATENT_INPUTS.keys())
def test_channels_first_latents_pass_through(processor, make_input):
    latents = make_input()
    batch = processor.as_batch(latents)
    assert batch.is_latents
    np.testing.assert_array_equal(processor.preprocess(latents, **SIZE), np.asarray(latents))


def nan_image() -> np.ndarray:
    image = RGB.copy()
    image[3, 4, 1] = np.nan
    return image


# id: (processor, input factory, error, message)
REFUSED = {
    "empty-array": (IMAGES, lambda: np.zeros((0,), np.float32), ValueError, "`image` is empty (shape (0,))"),
    "empty-batch": (IMAGES, lambda: np.zeros((0, H, W, 3), np.float32), ValueError, "`image` is empty (shape (0, 24, 32, 3))"),
    "empty-list": (IMAGES, lambda: [], ValueError, "`image` is an empty list"),
    "complex": (IMAGES, lambda: RGB.astype(np.complex64), TypeError, "`image` has dtype complex64: pass floats in [0, 1] or uint8"),
    "strings": (IMAGES, lambda: np.full((H, W, 3), "a"), TypeError, "`image` has dtype <U1"),
    "objects": (IMAGES, lambda: np.full((H, W, 3), None), TypeError, "`image` has dtype object"),
    "bool-image": (IMAGES, lambda: RGB > 0.5, TypeError, "a boolean array is a mask"),
    "int64-image": (IMAGES, lambda: RGB8.astype(np.int64), TypeError, "`image` has dtype int64"),
    "1-d": (IMAGES, lambda: RGB.ravel(), ValueError, f"`image` has shape ({H * W * 3},), which is no image"),
    "5-d": (IMAGES, lambda: RGB[None, None], ValueError, f"`image` has shape (1, 1, {H}, {W}, 3), which is no image"),
    "two-channels": (IMAGES, lambda: RGB[..., :2], ValueError, f"`image` has shape ({H}, {W}, 2), which is no image"),
    "five-channels-first": (IMAGES, lambda: np.zeros((1, 5, H, W), np.float32), ValueError, "or latents (B, 16, h, w)"),
    "float-0-255": (IMAGES, lambda: RGB * 255, ValueError, "`image` values have to be in [0, 1] (floats; uint8 arrays are read as 0-255"),
    "nan": (IMAGES, nan_image, ValueError, "`image` contains NaN or infinite values (1 of 2304)"),
    "inf-latents": (IMAGES, lambda: torch.from_numpy(LATENTS * np.inf), ValueError, "`image` contains NaN or infinite values"),
    "different-sizes": (IMAGES, lambda: [RGB, RGB[:16]], ValueError, "`image` holds images of different sizes [(24, 32), (16, 32)]"),
    "pil-and-array": (IMAGES, lambda: [pil(RGB8), RGB], TypeError, "`image` mixes PIL images and arrays"),
    "latents-and-image": (IMAGES, lambda: [torch.from_numpy(LATENTS), torch.zeros(1, 3, 6, 8)], ValueError, "mixes latents and images"),
    "a-path": (IMAGES, lambda: "cat.png", TypeError, "`image` has to be a PIL image, a numpy array or torch tensor"),
    "list-of-lists": (IMAGES, lambda: [[0.0, 1.0]], TypeError, "`image` has to be a PIL image, a numpy array or torch tensor ((H, W)"),
    "mask-0-255-float": (MASKS, lambda: MASK * 255, ValueError, "`mask_image` values have to be in [0, 1] (binarized at 0.5: 1 repaints)"),
    "mask-nan": (MASKS, lambda: MASK * np.nan, ValueError, "`mask_image` contains NaN or infinite values"),
    "mask-latent-channels": (MASKS, lambda: torch.zeros(1, 16, H, W), ValueError, "`mask_image` has shape (1, 16, 24, 32), which is no image"),
    "mask-int32": (MASKS, lambda: MASK8.astype(np.int32), TypeError, "`mask_image` has dtype int32"),
}


@pytest.mark.parametrize(("processor", "make_input", "error", "message"), REFUSED.values(), ids=REFUSED.keys())
def test_bad_image_input_gives_a_named_error(processor, make_input, error, message):
    with pytest.raises(error) as raised:
        processor.preprocess(make_input(), **SIZE)
    assert message in str(raised.value)


def test_from_pipe_of_a_folder_says_to_use_from_pretrained():
    with pytest.raises(TypeError, match=r"`pipe` has to be a loaded pipeline .* but is str: 'models/sd3'; to load a converted folder use "
                       r"`OVStableDiffusion3Img2ImgPipeline.from_pretrained\(folder\)`"):  # fmt: skip
        OVStableDiffusion3Img2ImgPipeline.from_pipe("models/sd3")
