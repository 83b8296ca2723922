"""Image-to-image and inpainting against diffusers' PyTorch pipelines on the tiny checkpoint, and their input checks."""

import numpy as np
import pytest
import torch
from PIL import Image

import sd3_helper
from conftest import F32

PARITY_ATOL = 1e-3  # max abs pixel difference in [0, 1]
STEPS = 4
SIZE = dict(height=48, width=64)  # not square, so that swapped sides show


def test_image(seed: int = 0, *, height: int = 48, width: int = 64) -> Image.Image:
    """A smooth colourful picture (a random-weight model restyles anything; this one has structure to keep)."""
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    rng = np.random.default_rng(seed)
    phases = rng.uniform(0, 2 * np.pi, size=3)
    pixels = np.stack([0.5 + 0.5 * np.sin(6 * x + 4 * y + phase) for phase in phases], axis=-1)
    return Image.fromarray((pixels * 255).astype(np.uint8))


def test_mask(*, height: int = 48, width: int = 64) -> np.ndarray:
    """(H, W) float mask in {0, 1}: a rectangle in the middle to repaint."""
    mask = np.zeros((height, width), dtype=np.float32)
    mask[height // 4 : 3 * height // 4, width // 3 : 2 * width // 3] = 1.0
    return mask


test_image.__test__ = test_mask.__test__ = False  # helpers, not tests


@pytest.fixture(scope="session")
def diffusers_image_pipelines(diffusers_pipeline):
    """`diffusers_image_pipelines(kind, load_t5)` -> diffusers' img2img / inpaint pipeline from the same components."""
    from diffusers import StableDiffusion3Img2ImgPipeline, StableDiffusion3InpaintPipeline

    pipelines = {}

    def load(kind: str, load_t5: bool = True):
        if (kind, load_t5) not in pipelines:
            cls = {"img2img": StableDiffusion3Img2ImgPipeline, "inpaint": StableDiffusion3InpaintPipeline}[kind]
            pipe = cls.from_pipe(diffusers_pipeline(load_t5))
            pipe.set_progress_bar_config(disable=True)
            pipelines[kind, load_t5] = pipe
        return pipelines[kind, load_t5]

    return load


def fix_inpaint_decode(pipe) -> None:
    """diffusers 0.39's inpainting pipeline decodes `latents / scaling_factor` and forgets `+ shift_factor` (its
    other SD3 pipelines add it); ours adds it. Compare against diffusers with that one line fixed."""
    vae = pipe.vae
    original_decode = vae.decode

    def decode(latents, *args, **kwargs):
        kwargs.pop("generator", None)
        return original_decode(latents + vae.config.shift_factor, *args, **kwargs)

    vae.decode = decode


@pytest.fixture(scope="session")
def ov_image_pipelines(ov_pipeline):
    """`ov_image_pipelines(kind, load_t5)` -> our pipeline made with `from_pipe` from the cached text-to-image one."""
    pipelines = {}

    def load(kind: str, load_t5: bool = True):
        if (kind, load_t5) not in pipelines:
            cls = {"img2img": sd3_helper.OVStableDiffusion3Img2ImgPipeline, "inpaint": sd3_helper.OVStableDiffusion3InpaintPipeline}[kind]
            pipelines[kind, load_t5] = cls.from_pipe(ov_pipeline("fp32", load_t5))
        return pipelines[kind, load_t5]

    return load


def run_both(diffusers_pipe, ov_pipe, **kwargs):
    outputs = []
    for pipe in (diffusers_pipe, ov_pipe):
        generator = torch.Generator().manual_seed(kwargs.get("seed", 7))
        arguments = {key: value for key, value in kwargs.items() if key != "seed"}
        outputs.append(pipe(num_inference_steps=STEPS, generator=generator, output_type="np", **arguments).images)
    return outputs


IMG2IMG_CASES = {
    "strength-0.3": dict(strength=0.3),
    "strength-0.75-negative": dict(strength=0.75, negative_prompt="blurry"),
    "strength-1.0": dict(strength=1.0),
    "guidance-off": dict(strength=0.75, guidance_scale=1.0),
    "batch-2-prompts-2-images": dict(prompt=["a cat", "a dog"], num_images_per_prompt=2, strength=0.75),
    "square-numpy-image": dict(image_kind="numpy", strength=0.6, height=64, width=64),
    "tensor-image": dict(image_kind="tensor", strength=0.6),
}


def image_as(kind: str, image: Image.Image):
    if kind == "numpy":
        return np.asarray(image, dtype=np.float32)[None] / 255.0  # (1, H, W, 3) in [0, 1]
    if kind == "tensor":
        return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]  # (1, 3, H, W) in [0, 1]
    return image


@pytest.mark.parametrize("load_t5", [True, False], ids=["t5", "no-t5"])
@pytest.mark.parametrize("case", IMG2IMG_CASES.values(), ids=IMG2IMG_CASES.keys())
def test_img2img_matches_diffusers(diffusers_image_pipelines, ov_image_pipelines, case, load_t5):
    case = {"prompt": "a watercolor of a lighthouse", **SIZE, **case}
    image = image_as(case.pop("image_kind", "pil"), test_image(height=case["height"], width=case["width"]))
    expected, actual = run_both(diffusers_image_pipelines("img2img", load_t5), ov_image_pipelines("img2img", load_t5), image=image, **case)
    assert actual.shape == expected.shape and actual.dtype == np.float32
    assert np.abs(actual - expected).max() <= PARITY_ATOL


def mask_as(kind: str, mask: np.ndarray):
    if kind == "pil":
        return Image.fromarray((mask * 255).astype(np.uint8))
    if kind == "tensor":
        return torch.from_numpy(mask)[None, None]  # (1, 1, H, W)
    return mask


@pytest.fixture(scope="session")
def inpaint_pair(tiny_checkpoints, converted):
    """`inpaint_pair(concatenating)` -> (ours, diffusers') inpainting pipelines on a tiny checkpoint with 16 latent
    channels (diffusers' inpainting pipeline needs SD3's 16), without T5; built and converted once."""
    from diffusers import StableDiffusion3InpaintPipeline

    pairs = {}

    def load(concatenating: bool = False):
        if concatenating not in pairs:
            variant = dict(latent_channels=16, inpainting=concatenating)
            checkpoint = tiny_checkpoints(**variant)
            model_dir = converted("fp32", False, **variant)
            ours = sd3_helper.OVStableDiffusion3InpaintPipeline.from_pretrained(model_dir, ov_config=F32)
            reference = StableDiffusion3InpaintPipeline.from_pretrained(checkpoint, text_encoder_3=None, tokenizer_3=None)
            for pipe in (ours, reference):
                pipe.set_progress_bar_config(disable=True)
            fix_inpaint_decode(reference)
            pairs[concatenating] = ours, reference
        return pairs[concatenating]

    return load


INPAINT_CASES = {
    "pil-mask-strength-1": dict(mask_kind="pil", strength=1.0),
    "numpy-mask-strength-0.6": dict(mask_kind="numpy", strength=0.6),
    "tensor-mask-strength-0.8": dict(mask_kind="tensor", strength=0.8, negative_prompt="blurry"),
    "padding-mask-crop": dict(mask_kind="pil", strength=0.9, padding_mask_crop=4, output_type="pil"),
    "two-images-per-prompt": dict(mask_kind="pil", strength=0.75, num_images_per_prompt=2),
}


@pytest.mark.parametrize("case", INPAINT_CASES.values(), ids=INPAINT_CASES.keys())
def test_inpaint_matches_diffusers(inpaint_pair, case):
    case = {"prompt": "a red ball", **SIZE, **case}
    mask = mask_as(case.pop("mask_kind"), test_mask())
    output_type = case.pop("output_type", "np")
    outputs = []
    ours, reference = inpaint_pair(concatenating=False)
    for pipe in (reference, ours):
        outputs.append(
            pipe(image=test_image(), mask_image=mask, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(3), output_type=output_type, **case).images
        )
    expected, actual = (np.stack([np.asarray(image, dtype=np.float32) / 255 for image in images]) if output_type == "pil" else images for images in outputs)
    assert actual.shape == expected.shape
    assert np.abs(actual - expected).max() <= (1 / 255 + 1e-6 if output_type == "pil" else PARITY_ATOL)


def test_inpaint_keeps_the_unmasked_part(ov_image_pipelines):
    """After the last step the latents outside the mask are the image's own (the first draw of the generator)."""
    pipe = ov_image_pipelines("inpaint")
    image, mask = test_image(), test_mask()
    latents = pipe(
        "a red ball", image=image, mask_image=mask, strength=1.0, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(3), output_type="latent", **SIZE
    ).images
    image_latents = torch.from_numpy(pipe.encode_image(pipe.preprocess_image(image, **SIZE), generator=torch.Generator().manual_seed(3)))
    factor = pipe.vae_scale_factor
    keep = torch.from_numpy(mask[::factor, ::factor] < 0.5)  # latent cells wholly outside the rectangle
    assert torch.allclose(latents[..., keep], image_latents[..., keep], atol=1e-5)
    assert not torch.allclose(latents[..., ~keep], image_latents[..., ~keep], atol=1e-2)


def test_from_pipe_shares_the_compiled_submodels(ov_pipeline):
    pipe = ov_pipeline("fp32")
    img2img = sd3_helper.OVStableDiffusion3Img2ImgPipeline.from_pipe(pipe)
    inpaint = sd3_helper.OVStableDiffusion3InpaintPipeline.from_pipe(img2img)
    for name in ("transformer", "text_encoder", "text_encoder_2", "text_encoder_3", "vae_decoder"):
        assert getattr(img2img, name) is getattr(pipe, name) and getattr(inpaint, name) is getattr(pipe, name)
    assert inpaint.vae_encoder is img2img.vae_encoder and img2img.vae_encoder is not None
    assert img2img.scheduler is not pipe.scheduler and img2img._call_lock is pipe._call_lock


# -- The 33-channel inpainting transformer ------------------------------------------------------------------


def test_inpaint_with_a_concatenating_transformer_matches_diffusers(inpaint_pair):
    ours, reference = inpaint_pair(concatenating=True)
    assert ours.concatenates_mask and ours.transformer.config["in_channels"] == 2 * 16 + 1
    for strength in (1.0, 0.7):
        expected, actual = run_both(reference, ours, prompt="a red ball", image=test_image(), mask_image=test_mask(), strength=strength, **SIZE)
        assert np.abs(actual - expected).max() <= PARITY_ATOL


# -- openvino.genai on our folder ---------------------------------------------------------------------------


def genai_tensor(image: Image.Image):
    import openvino as ov

    return ov.Tensor(np.asarray(image, dtype=np.uint8)[None])


def test_genai_image_to_image_and_inpainting_on_our_folder(converted, ov_image_pipelines):
    import openvino_genai

    folder = converted("fp32", True)
    common = dict(prompt="a red ball", strength=0.75, num_inference_steps=STEPS, guidance_scale=5.0, **SIZE)
    img2img = sd3_helper.make_genai_pipeline(folder, task="image-to-image", ov_config=F32)
    inpaint = sd3_helper.make_genai_pipeline(folder, task="inpainting", ov_config=F32)
    assert isinstance(img2img, openvino_genai.Image2ImagePipeline) and isinstance(inpaint, openvino_genai.InpaintingPipeline)
    mask = Image.fromarray((test_mask() * 255).astype(np.uint8)).convert("RGB")
    results = {}
    for name, pipe, extra in (("img2img", img2img, {}), ("inpaint", inpaint, {"mask_image": genai_tensor(mask)})):
        arguments = {key: value for key, value in common.items() if key != "prompt"}
        genai = pipe.generate(common["prompt"], genai_tensor(test_image()), **extra, generator=openvino_genai.TorchGenerator(5), **arguments)
        ours = ov_image_pipelines(name)(
            image=test_image(), **({"mask_image": mask} if extra else {}), generator=torch.Generator().manual_seed(5), output_type="np", **common
        ).images
        results[name] = np.abs(genai.data.astype(np.float32) / 255 - ours)
        print(f"\ngenai vs ours, {name}: max {results[name].max():.4f}, mean {results[name].mean():.5f}")
    # Measured: max 0.0039 for both, i.e. genai's uint8 rounding only (it adds the VAE shift back when inpainting,
    # as we do, and draws the VAE sample and the noise from the generator in the same order).
    assert results["img2img"].max() <= 1 / 255 + 1e-6
    assert results["inpaint"].max() <= 1 / 255 + 1e-6


# -- Bad input ----------------------------------------------------------------------------------------------

BAD_IMAGE_INPUTS = {
    "strength-above-1": (dict(strength=1.5), ValueError, "`strength` has to be between 0 and 1 but is 1.5"),
    "strength-negative": (dict(strength=-0.1), ValueError, "`strength` has to be between 0 and 1 but is -0.1"),
    "strength-str": (dict(strength="0.5"), TypeError, "`strength` has to be a number between 0 and 1 but is str"),
    "no-step-left": (dict(strength=0.2, num_inference_steps=4), ValueError, "leaves no denoising step (4 x 0.2 < 1). Use `strength` >= 0.25"),
    "image-missing": (dict(image=None), ValueError, "`image` is required"),
    "image-not-an-image": (dict(image="cat.png"), TypeError, "`image` has to be a PIL image, a numpy array"),
    "height-beyond-maximum": (dict(height=400), ValueError, "`height` and `width` must be between 4 and 192"),
}


@pytest.mark.parametrize(("kwargs", "error", "message"), BAD_IMAGE_INPUTS.values(), ids=BAD_IMAGE_INPUTS.keys())
def test_img2img_bad_input(ov_image_pipelines, kwargs, error, message):
    arguments = {"prompt": "a cat", "image": test_image(), "num_inference_steps": 2, **SIZE, **kwargs}
    with pytest.raises(error) as raised:
        ov_image_pipelines("img2img")(**arguments)
    assert message in str(raised.value)


BAD_MASKS = {
    "other-size": (lambda: test_mask(height=32, width=32), ValueError, "`mask_image` is (32, 32) (height, width) but `image` is (48, 64)"),
    "0-255-values": (lambda: test_mask() * 255, ValueError, "`mask_image` values have to be in [0, 1]"),
    "not-an-image": (lambda: [[0, 1]], TypeError, "`mask_image` has to be a PIL image"),
    "missing": (lambda: None, ValueError, "`mask_image` is required"),
}


@pytest.mark.parametrize(("make_mask", "error", "message"), BAD_MASKS.values(), ids=BAD_MASKS.keys())
def test_inpaint_bad_mask(ov_image_pipelines, make_mask, error, message):
    with pytest.raises(error) as raised:
        ov_image_pipelines("inpaint")("a cat", image=test_image(), mask_image=make_mask(), num_inference_steps=2, **SIZE)
    assert message in str(raised.value)


FROM_PIPE_SCRIPT = """
import resource, sys, torch
from sd3_helper import OVStableDiffusion3Img2ImgPipeline, OVStableDiffusion3InpaintPipeline, OVStableDiffusion3Pipeline

def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

common = dict(height=48, width=64, num_inference_steps=2, output_type="np")
pipe = OVStableDiffusion3Pipeline.from_pretrained(sys.argv[1])
image = pipe("a cat", **common).images[0]
before = peak()
img2img = OVStableDiffusion3Img2ImgPipeline.from_pipe(pipe)
img2img("a cat", image=image, strength=0.5, **common)
inpaint = OVStableDiffusion3InpaintPipeline.from_pipe(pipe)
inpaint("a cat", image=image, mask_image=(image[..., 0] > 0.5).astype("float32"), strength=0.5, **common)
print(before, peak())
"""


def test_from_pipe_adds_at_most_five_percent_to_peak_rss(converted):
    import subprocess
    import sys
    from pathlib import Path

    result = subprocess.run(
        [sys.executable, "-c", FROM_PIPE_SCRIPT, str(converted("fp32", True))],
        cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    before, after = map(int, result.stdout.split()[-2:])
    print(f"\npeak RSS {before / 1e9:.2f} GB -> {after / 1e9:.2f} GB with image-to-image and inpainting from_pipe")
    assert after <= 1.05 * before


# -- Image inputs of every kind (the full table is at the `preprocess` level, in test_image_inputs.py) --------


def img2img_np(pipe, image, **kwargs):
    return pipe("a red ball", image=image, strength=0.75, num_inference_steps=2, generator=torch.Generator().manual_seed(5), output_type="np", **SIZE, **kwargs).images


def test_uint8_and_gray_images_give_what_their_float_rgb_equivalents_give(ov_image_pipelines):
    """A uint8 array is read as 0-255 (today's bug: taken as [-1, 1]); PIL "L" and RGBA are converted to RGB."""
    pipe = ov_image_pipelines("img2img")
    pixels = np.array(test_image(), dtype=np.uint8)  # writable, for torch.from_numpy
    reference = img2img_np(pipe, pixels.astype(np.float32) / 255)
    np.testing.assert_array_equal(img2img_np(pipe, pixels), reference)
    np.testing.assert_array_equal(img2img_np(pipe, torch.from_numpy(pixels).permute(2, 0, 1)[None]), reference)
    gray = test_image().convert("L")
    np.testing.assert_array_equal(img2img_np(pipe, gray), img2img_np(pipe, gray.convert("RGB")))
    rgba = test_image().convert("RGBA")
    rgba.putalpha(128)
    np.testing.assert_array_equal(img2img_np(pipe, rgba), img2img_np(pipe, test_image()))


def test_inpaint_uint8_mask_gives_what_its_float_mask_gives(ov_image_pipelines):
    pipe = ov_image_pipelines("inpaint")
    mask = test_mask()
    reference = img2img_np(pipe, test_image(), mask_image=mask)
    np.testing.assert_array_equal(img2img_np(pipe, test_image(), mask_image=(mask * 255).astype(np.uint8)), reference)
    np.testing.assert_array_equal(img2img_np(pipe, test_image(), mask_image=np.repeat(mask[..., None], 3, axis=-1) > 0.5), reference)


MASK_COUNTS = {
    "three-masks-two-images": (2, 3, ValueError, "`mask_image` holds 3 masks but `image` holds 2 images; pass one mask for all images or one mask per image"),
    "two-masks-one-image": (1, 2, ValueError, "`mask_image` holds 2 masks but `image` holds 1 images"),
}


@pytest.mark.parametrize(("images", "masks", "error", "message"), MASK_COUNTS.values(), ids=MASK_COUNTS.keys())
def test_inpaint_mask_count_is_checked_by_name(ov_image_pipelines, images, masks, error, message):
    with pytest.raises(error) as raised:
        ov_image_pipelines("inpaint")(["a cat"] * images, image=[test_image()] * images, mask_image=[test_mask()] * masks, num_inference_steps=2, **SIZE)
    assert message in str(raised.value)


def test_inpaint_one_mask_for_two_images(ov_image_pipelines):
    images = ov_image_pipelines("inpaint")(
        ["a cat", "a dog"], image=[test_image(0), test_image(1)], mask_image=test_mask(), num_inference_steps=2, output_type="np", **SIZE
    ).images
    assert images.shape == (2, *SIZE.values(), 3)


PADDING_MASK_CROP_CASES = {
    "empty-mask": (
        lambda: dict(mask_image=Image.new("L", (64, 48))), ValueError,
        "`mask_image` is empty (all black): with `padding_mask_crop` the crop is the mask's bounding box",
    ),
    "numpy-mask": (lambda: dict(mask_image=test_mask()), TypeError, "`padding_mask_crop` needs `image` and `mask_image` as one PIL image each"),
    "np-output": (
        lambda: dict(mask_image=Image.fromarray((test_mask() * 255).astype(np.uint8)), output_type="np"), ValueError,
        "`output_type` has to be 'pil' but is 'np'",
    ),
}  # fmt: skip


@pytest.mark.parametrize(("make_kwargs", "error", "message"), PADDING_MASK_CROP_CASES.values(), ids=PADDING_MASK_CROP_CASES.keys())
def test_inpaint_padding_mask_crop_inputs_are_checked_by_name(ov_image_pipelines, make_kwargs, error, message):
    """diffusers fails on an empty mask with a PIL coordinate error; we refuse it by name rather than crop to the
    whole image."""
    with pytest.raises(error) as raised:
        ov_image_pipelines("inpaint")("a cat", image=test_image(), padding_mask_crop=4, num_inference_steps=2, **SIZE, **make_kwargs())
    assert message in str(raised.value)


def test_from_pipe_keeps_the_static_shapes_of_reshape(converted):
    pipe = sd3_helper.OVStableDiffusion3Pipeline.from_pretrained(converted("fp32", True), ov_config=F32, compile=False).reshape(**SIZE)
    img2img = sd3_helper.OVStableDiffusion3Img2ImgPipeline.from_pipe(pipe)
    assert img2img._static_shape == pipe._static_shape
    with pytest.raises(ValueError, match=r"This pipeline was reshaped to static shapes .* but this call asks for \{'height': 32, 'width': 32\}"):
        img2img("a cat", image=test_image(), num_inference_steps=2, height=32, width=32)
