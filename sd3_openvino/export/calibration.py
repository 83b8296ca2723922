"""Calibration data for int8 quantization: our own `OVStableDiffusion3Pipeline` runs the fp16 model on the shipped
prompts (`calibration_prompts.txt`) and the inputs of the transformer (or of the VAE) are recorded.

Calibration needs no download, and the same `seed` gives the same prompts, negative prompts, latents and recorded
inputs. The encoder of the VAE is calibrated on decoded images plus `synthetic_images`, made offline. Why these
settings: docs/quantization.md.
"""

import random
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..runtime.text_folding import TEXT_ATTENTION_BIAS

CALIBRATION_PROMPTS_FILE = Path(__file__).resolve().parent / "calibration_prompts.txt"
# Negative prompts drawn for calibration, as in the original tutorial, plus "" (the pipeline's default).
NEGATIVE_PROMPTS = (
    "",
    "blurry unreal occluded",
    "low contrast disfigured uncentered mangled",
    "amateur out of frame low quality nsfw",
    "ugly underexposed jpeg artifacts",
    "low saturation disturbing content",
    "overexposed severe distortion",
    "ugly mutilated out of frame disfigured",
)
CALIBRATION_STEPS = 28  # SD3 Medium's usual number of steps: the timesteps calibration sees are the ones used
CALIBRATION_GUIDANCE_SCALE = 5.0  # the tutorial's setting; with guidance the transformer sees batch 2 (CFG)
DEFAULT_NUM_SAMPLES = 200  # transformer calls recorded, as in the original openvino_notebooks tutorial
CALIBRATION_MAX_SIDE = 512  # pixels; the tutorial calibrates at 512x512: 1/4 of the activations of 1024x1024
DEFAULT_VAE_NUM_SAMPLES = 8  # whole generations whose final latents calibrate the decoder (+ as many synthetic images for the encoder)


def load_calibration_prompts(prompts_file: str | Path | None = None) -> list[str]:
    """The prompts of `prompts_file` (default: the shipped `calibration_prompts.txt`), one a line.

    Blank lines and lines starting with `#` are skipped.
    """
    path = Path(prompts_file) if prompts_file is not None else CALIBRATION_PROMPTS_FILE
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    prompts = [line for line in lines if line and not line.startswith("#")]
    if not prompts:
        raise ValueError(f"`prompts_file` {str(path)!r} holds no prompts; write one prompt a line.")
    return prompts


class RecordingSubmodel:
    """Stands in for an `OVSubmodel`: runs it and keeps a copy of the inputs of its first `max_calls` calls.

    An input equal to the previous call's (the prompt embeddings, the same at every step of an image) is kept
    once and shared, which keeps the recording a fraction of the size of full copies.
    """

    def __init__(self, submodel, *, max_calls: int):
        self.submodel = submodel
        self.max_calls = max_calls
        self.recorded: list[dict[str, np.ndarray]] = []

    @property
    def full(self) -> bool:
        return len(self.recorded) >= self.max_calls

    def __getattr__(self, name):  # config, name, model, ... of the wrapped submodel
        return getattr(self.submodel, name)

    def __call__(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        if not self.full:
            previous = self.recorded[-1] if self.recorded else {}
            self.recorded.append(
                {
                    name: previous[name] if name in previous and np.array_equal(previous[name], value) else np.array(value, copy=True)
                    for name, value in inputs.items()
                    if name != TEXT_ATTENTION_BIAS  # a run-time input (zeros, unfolded), not the converted IR's
                }
            )
        return self.submodel(**inputs)


def calibration_calls(prompts: list[str], *, seed: int, count: int) -> Iterator[tuple[str, str, torch.Generator]]:
    """(prompt, negative prompt, generator) of the first `count` calibration images: prompts in an order shuffled
    by `seed`, a negative prompt drawn from `NEGATIVE_PROMPTS`, latents seeded by `seed` and the position."""
    rng = random.Random(seed)
    order = rng.sample(range(len(prompts)), k=len(prompts))
    for position in range(count):
        yield prompts[order[position % len(order)]], rng.choice(NEGATIVE_PROMPTS), torch.Generator().manual_seed(seed * 1_000_003 + position)


def calibration_size(pipe, *, height: int | None, width: int | None) -> tuple[int, int]:
    """(height, width) of calibration images: the given ones, else the model's native size, at most
    `CALIBRATION_MAX_SIDE` pixels."""
    default = min(pipe.size_rules.default, CALIBRATION_MAX_SIDE)
    return height or default, width or default


@contextmanager
def recording(pipe, name: str, *, max_calls: int) -> Iterator[RecordingSubmodel]:
    """Wrap `pipe.<name>` in a `RecordingSubmodel` and turn the progress bar and text folding off for the block (the
    recorded inputs are the converted IR's: unfolded text, no `text_attention_bias`); restore all three."""
    recorder = RecordingSubmodel(getattr(pipe, name), max_calls=max_calls)
    progress_config, folds = pipe.progress_bar_config, pipe.fold_text_padding
    setattr(pipe, name, recorder)
    pipe.set_progress_bar_config(disable=True)
    pipe.fold_text_padding = False
    try:
        yield recorder
    finally:
        setattr(pipe, name, recorder.submodel)
        pipe.set_progress_bar_config(**progress_config)
        pipe.fold_text_padding = folds


def collect_calibration_data(
    pipe,
    *,
    prompts: list[str],
    num_samples: int,
    seed: int = 0,
    num_inference_steps: int = CALIBRATION_STEPS,
    guidance_scale: float = CALIBRATION_GUIDANCE_SCALE,
    height: int | None = None,
    width: int | None = None,
) -> list[dict[str, np.ndarray]]:
    """Run `pipe` (an `OVStableDiffusion3Pipeline`) on `prompts` and return the inputs of its first
    `num_samples` transformer calls, one dict of named arrays per call.

    Prompts, negative prompts and latents come from `calibration_calls(prompts, seed=seed, ...)`, so the same
    arguments always give the same data. Images are not decoded, and the last image stops as soon as
    `num_samples` calls are recorded. `height` and `width` default to the model's native size, at most
    `CALIBRATION_MAX_SIDE` pixels. `pipe.transformer` is restored afterwards.
    """
    from tqdm.auto import tqdm

    if num_samples < 1:
        raise ValueError(f"`num_samples` has to be a positive integer but is {num_samples!r}.")
    height, width = calibration_size(pipe, height=height, width=width)

    def stop_when_full(running_pipe, step, timestep, callback_kwargs):
        progress.update(len(recorder.recorded) - progress.n)
        running_pipe._interrupt = recorder.full
        return callback_kwargs

    progress = tqdm(total=num_samples, desc="Collecting calibration data", unit="sample")
    with recording(pipe, "transformer", max_calls=num_samples) as recorder:
        try:
            # at least one sample per image, so this many images suffice
            for prompt, negative_prompt, generator in calibration_calls(prompts, seed=seed, count=num_samples):
                if recorder.full:
                    break
                pipe(
                    prompt,
                    negative_prompt=negative_prompt,
                    height=height,
                    width=width,
                    num_inference_steps=num_inference_steps,
                    guidance_scale=guidance_scale,
                    generator=generator,
                    output_type="latent",
                    callback_on_step_end=stop_when_full,
                )
        finally:
            progress.close()
    return recorder.recorded


def synthetic_images(*, count: int, height: int, width: int, seed: int = 0) -> list:
    """`count` PIL images made offline from `seed`: a two-colour gradient, a few filled ellipses and rectangles,
    and noise at three scales (a texture), softened by a slight blur. With images the pipeline decodes, they
    stand in for the photos image-to-image is given, which cannot be downloaded here."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:1 : height * 1j, 0:1 : width * 1j]
    images = []
    for _ in range(count):
        angle = rng.uniform(0, 2 * np.pi)
        ramp = np.cos(angle) * x + np.sin(angle) * y
        ramp = (ramp - ramp.min()) / (np.ptp(ramp) + 1e-6)  # (H, W) in [0, 1]
        start, end = rng.uniform(0, 255, size=(2, 3))
        image = Image.fromarray((start + (end - start) * ramp[..., None]).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(rng.integers(2, 7)):
            box = [*sorted(rng.uniform(0, width, 2)), *sorted(rng.uniform(0, height, 2))]
            shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
            shape((box[0], box[2], box[1], box[3]), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        pixels = np.asarray(image, dtype=np.float32)
        for scale, amplitude in ((32, 24.0), (8, 12.0), (1, 6.0)):  # coarse blotches to fine grain
            noise = rng.normal(size=(max(height // scale, 1), max(width // scale, 1), 3)).astype(np.float32)
            channels = [np.asarray(Image.fromarray(channel).resize((width, height), Image.BICUBIC)) for channel in noise.transpose(2, 0, 1)]
            pixels += amplitude * np.stack(channels, axis=-1)
        images.append(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(radius=0.7)))
    return images


def collect_vae_calibration_data(
    pipe,
    *,
    prompts: list[str],
    num_samples: int,
    seed: int = 0,
    num_inference_steps: int = CALIBRATION_STEPS,
    guidance_scale: float = CALIBRATION_GUIDANCE_SCALE,
    height: int | None = None,
    width: int | None = None,
) -> dict[str, list[dict[str, np.ndarray]]]:
    """Calibration inputs of the VAE: `{"vae_decoder": [...], "vae_encoder": [...]}`, one dict of named arrays
    per sample.

    The decoder's: what `pipe` feeds it at the end of `num_samples` whole generations (the images of
    `calibration_calls(prompts, seed=seed, ...)`, at `height` x `width`, default as `collect_calibration_data`).
    The encoder's: the pixels of those decoded images and of as many `synthetic_images`, preprocessed as the
    image-to-image pipeline does. `pipe.vae_decoder` is restored afterwards.
    """
    from tqdm.auto import tqdm

    if num_samples < 1:
        raise ValueError(f"`num_samples` has to be a positive integer but is {num_samples!r}.")
    height, width = calibration_size(pipe, height=height, width=width)
    images = []
    with recording(pipe, "vae_decoder", max_calls=num_samples) as recorder:
        calls = calibration_calls(prompts, seed=seed, count=num_samples)
        for prompt, negative_prompt, generator in tqdm(calls, total=num_samples, desc="Collecting VAE calibration data", unit="image"):
            output = pipe(
                prompt,
                negative_prompt=negative_prompt,
                height=height,
                width=width,
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                generator=generator,
            )
            images += output.images
    images += synthetic_images(count=num_samples, height=height, width=width, seed=seed)
    encoder_inputs = [{"sample": np.asarray(pipe.image_processor.preprocess(image, height=height, width=width), dtype=np.float32)} for image in images]  # float32 numpy
    return {"vae_decoder": recorder.recorded, "vae_encoder": encoder_inputs}


def calibration_settings(
    *,
    prompts_file: str | Path | None = None,
    num_samples: int = DEFAULT_NUM_SAMPLES,
    seed: int = 0,
    num_inference_steps: int = CALIBRATION_STEPS,
    guidance_scale: float = CALIBRATION_GUIDANCE_SCALE,
    height: int | None = None,
    width: int | None = None,
) -> dict:
    """The keyword arguments of `collect_calibration_data` (the prompts read from `prompts_file`), with
    `quantize_sd3`'s defaults."""
    return dict(
        prompts=load_calibration_prompts(prompts_file),
        num_samples=num_samples,
        seed=seed,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        height=height,
        width=width,
    )
