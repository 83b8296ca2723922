"""An interactive Gradio demo for Stable Diffusion 3 with OpenVINO: text to image, image to image, inpainting.

    from gradio_helper import make_demo

    demo = make_demo(pipeline)  # an `OVStableDiffusion3Pipeline` (or diffusers' `StableDiffusion3Pipeline`)
    demo.launch()  # inline in Jupyter; `demo.close()` stops it

The three tabs share one set of compiled models (`from_pipe`; diffusers' pipeline gets the text tab only).
Compiled OpenVINO models are not re-entrant, so the demo runs one generation at a time, whichever tab asks, and
queues the other requests. Every field is checked before anything runs, and bad input becomes a readable `gr.Error`
that names the field, its value and the fix. The denoising steps show as a progress bar, and the Stop button
ends the running generation after its current step. On our pipelines the result area shows a live preview of each
step (`pipe.preview_images`) until the final image replaces it, and the advanced settings also offer the step cache
("Fast") and, when LoRA adapters are loaded (`pipe.load_lora_weights`), the adapter and its scale.

Standalone: `python gradio_helper.py MODEL_DIR [--device CPU] [--port N] [--share] [--lora PATH[:SCALE] ...]` serves
on 127.0.0.1 only. User mistakes (no model folder, a port in use, a file that is no LoRA) exit with status 2 and one
`error: ...` line.
"""

import argparse
import contextlib
import logging
import math
import queue
import random
import socket
import sys
import threading
from dataclasses import dataclass
from numbers import Real
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from sd3_openvino.runtime.arrays import as_array  # light: numpy only
from sd3_openvino.core.layout import GENERATION_DEFAULTS, SizeRules, read_model_index  # light: no torch, no OpenVINO
from sd3_openvino.runtime.steps import TaylorSeerConfig  # light: numpy only

MAX_SEED = 2**31 - 1  # the largest seed a gr.Number and every torch generator accept
# T5 reads at most 512 tokens of a prompt (CLIP 77), about 2,000 characters of English at ~4 characters a token.
# Twice that is refused at once: no prompt the model can read is lost, while a pasted 10 MB text never reaches
# the tokenizers (issue 10: it took 32 s and grew the server from 1.1 to 2.9 GB, only to be cut to 512 tokens).
MAX_PROMPT_CHARS = 4_000
MAX_INFERENCE_STEPS = 50  # the steps slider's end (SD3 Medium's default is 28); each step is one transformer pass
MAX_GUIDANCE_SCALE = 20.0  # the guidance slider's end (SD3 Medium's default is 7)
DEFAULT_PORT, PORTS_TO_TRY = 7860, 100  # like gradio: the first free port of 7860..7959
LORA_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")  # `--lora` names a file, not a hub id, when it ends so
# "Fast (step cache)": openvino.genai's default TaylorSeer settings (it turns them on by default for SD3; our
# pipeline, like diffusers, keeps them off). With 28 steps, 14 take the transformer's output from the cache.
FAST_STEP_CACHE = TaylorSeerConfig()
NO_ADAPTER = "None"  # the adapter choice that generates without LoRA (`disable_lora`)
MIN_LORA_SCALE, MAX_LORA_SCALE = -1.0, 2.0  # the LoRA scale slider's ends (negative scales push away from the style)
# Live previews: the linear map costs ~0.1 ms, so every step gets one; the tiny decoder (TAESD, when the folder has
# one) draws sharper ones for a few % of a step, and runs inside the generation, so only every few steps.
PREVIEW_INTERVALS = {"linear": 1, "taesd": 3}
EXAMPLE_PROMPTS = (
    "A raccoon trapped inside a glass jar full of colorful candies, the background is steamy with vivid colors",
    "a photo of a cat holding a sign that says hello world",
    "an astronaut riding a horse on the moon, digital art",
    "a watercolor painting of a lighthouse at sunset",
    "a cozy cabin in the snowy mountains, warm light in the windows",
)

logger = logging.getLogger(__name__)


def size_rules_of(pipeline) -> SizeRules:
    """The image sizes `pipeline` accepts: its `size_rules`, or read from its transformer's and VAE's configs."""
    rules = getattr(pipeline, "size_rules", None)
    if rules is not None:
        return rules
    vae = getattr(pipeline, "vae_decoder", None)
    if vae is None:
        vae = pipeline.vae  # diffusers' `StableDiffusion3Pipeline`
    return SizeRules.from_configs(transformer_config=pipeline.transformer.config, vae_config=vae.config)


# ----------------------------------------------------------------------------------------------------------
# Checks of the request: each names the field, its value and the fix
# ----------------------------------------------------------------------------------------------------------


def _check_text(value, *, name: str) -> str:
    """`value` (a text field, maybe None when left empty) as a str of at most `MAX_PROMPT_CHARS` characters."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise TypeError(f"`{name}` has to be a str but is {type(value).__name__}: {value!r:.80}.")
    if len(value) > MAX_PROMPT_CHARS:
        raise ValueError(
            f"`{name}` is {len(value):,} characters long; the limit is {MAX_PROMPT_CHARS:,} "
            "(the text encoders read at most 512 tokens). Shorten it."
        )
    return value


def _as_number(value, *, name: str) -> float:
    """`value` as a float, or a TypeError naming `name` for a str, a bool, None or another non-number."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"`{name}` has to be a number but is {type(value).__name__}: {value!r:.80}.")
    return float(value)


def _as_whole(value, *, name: str) -> int:
    """`value` (a number from a UI field, maybe a whole float) as an int, or a ValueError or TypeError."""
    number = _as_number(value, name=name)
    if not number.is_integer():
        raise ValueError(f"`{name}` has to be a whole number but is {value!r}.")
    return int(number)


def _as_int(value, *, name: str, minimum: int, maximum: int) -> int:
    """`value` as a whole number from `minimum` to `maximum`, or a ValueError or TypeError."""
    number = _as_whole(value, name=name)
    if not minimum <= number <= maximum:
        raise ValueError(f"`{name}` has to be between {minimum} and {maximum} but is {number}.")
    return number


def _as_finite(value, *, name: str, minimum: float, maximum: float) -> float:
    """`value` as a finite float in range, or a ValueError or TypeError."""
    number = _as_number(value, name=name)
    if not math.isfinite(number):
        raise ValueError(f"`{name}` has to be a finite number between {minimum} and {maximum} but is {value!r}.")
    if not minimum <= number <= maximum:
        raise ValueError(f"`{name}` has to be between {minimum} and {maximum} but is {number}.")
    return number


TASKS = ("text-to-image", "image-to-image", "inpainting")  # the demo's tabs, by openvino.genai's task names
# Inpainting's default strength. SD3's usual 16-channel transformer knows what lies under the mask only through the
# latents it starts from: at 1.0 that is pure noise, and the repaint often ignores the colours and light around it
# (a visible patch). 0.85 starts from the image noised to 85 % of the schedule: a trace of the original colours and
# shapes stays, so the repaint fits in, and the content is still replaced. A 33-channel inpainting transformer sees
# the masked image in every step's input, so it starts from pure noise (1.0).
INPAINTING_STRENGTH = 0.85
PAINT_THE_MASK = "paint the area to repaint with the brush (white = repaint)"


def _check_image(value, *, name: str, missing: str):
    """`value` (an image field, None when nothing was uploaded) as a PIL image, or a ValueError or TypeError."""
    import PIL.Image

    if value is None:
        raise ValueError(f"`{name}` is missing: {missing}.")
    if not isinstance(value, PIL.Image.Image):
        raise TypeError(f"`{name}` has to be a PIL image but is {type(value).__name__}: {value!r:.80}.")
    return value


def _check_mask(value, *, image):
    """`value` as a mask of `image`'s size with something to repaint (white after binarizing at 128, as diffusers)."""
    mask = _check_image(value, name="mask_image", missing=PAINT_THE_MASK)
    if mask.size != image.size:
        raise ValueError(
            f"`mask_image` is {mask.width}x{mask.height} but `image` is {image.width}x{image.height} (width x height); "
            "paint the mask on the image, at its size."
        )
    if mask.convert("L").point(lambda value: 255 if value >= 128 else 0).getbbox() is None:
        raise ValueError(f"`mask_image` is empty: nothing is painted. Please {PAINT_THE_MASK}.")
    return mask


def _check_strength(value, *, num_inference_steps: int) -> float:
    """`value` as a strength in [0, 1] that leaves at least one denoising step (the pipelines' rule)."""
    strength = _as_finite(value, name="strength", minimum=0.0, maximum=1.0)
    if strength * num_inference_steps < 1:
        raise ValueError(
            f"`strength` {strength} with `num_inference_steps` {num_inference_steps} leaves no denoising step "
            f"({num_inference_steps} x {strength} < 1). Use `strength` >= {1 / num_inference_steps:.4g} or more steps."
        )
    return strength


def image_and_mask_from_editor(value: dict | None) -> tuple:
    """The uploaded image (RGB) and the painted mask ("L", white where any layer is painted) of a `gr.ImageEditor`
    value: a dict of PIL images `background`, `layers` (RGBA, transparent where nothing is painted) and
    `composite`. Either is None when missing: no image uploaded, or no layer sent.
    """
    import PIL.Image
    import PIL.ImageChops

    if not value or value.get("background") is None:
        return None, None
    background = value["background"].convert("RGBA")
    image = PIL.Image.alpha_composite(PIL.Image.new("RGBA", background.size, "white"), background).convert("RGB")
    layers = [layer for layer in value.get("layers") or [] if layer is not None]
    if not layers:
        return image, None
    mask = PIL.Image.new("L", image.size, 0)
    for index, layer in enumerate(layers):
        if layer.size != image.size:
            raise ValueError(
                f"`mask_image` layer {index} is {layer.width}x{layer.height} but `image` is "
                f"{image.width}x{image.height} (width x height); paint the layers on the image, at its size."
            )
        painted = layer.convert("RGBA").getchannel("A").point(lambda alpha: 255 if alpha > 0 else 0)
        mask = PIL.ImageChops.lighter(mask, painted)
    return image, mask


def fit_size(image_size: tuple[int, int], rules: SizeRules) -> tuple[int, int]:
    """(width, height) for an uploaded image of `image_size`: its own size, scaled down (keeping its aspect ratio)
    to at most the model's native area (`rules.default` squared), each side snapped to a size the model accepts."""
    width, height = image_size
    scale = min(1.0, rules.default / math.sqrt(width * height))
    return rules.snap(width * scale), rules.snap(height * scale)


@dataclass(frozen=True)
class GenerationRequest:
    """One checked request of the demo, in the types the pipeline takes."""

    prompt: str
    negative_prompt: str
    seed: int
    width: int
    height: int
    guidance_scale: float
    num_inference_steps: int
    task: str = "text-to-image"  # one of `TASKS`
    image: object = None  # image tasks: a PIL image of any size (the pipeline resizes it to width x height)
    mask_image: object = None  # inpainting: a PIL image of the image's size; white repaints
    strength: float | None = None  # image tasks: the share of the denoising schedule that runs
    fast: bool = False  # the step cache (`FAST_STEP_CACHE`)
    adapter: str | None = None  # a loaded LoRA adapter, `NO_ADAPTER` (LoRA off), or None: the adapters as they are set
    lora_scale: float = 1.0  # the adapter's weight (`set_adapters([adapter], [lora_scale])`)

    @property
    def denoising_steps(self) -> int:
        """The steps that run: all for text to image, the last `strength` share of them for the image tasks."""
        if self.strength is None:
            return self.num_inference_steps
        # As diffusers' `get_timesteps`, float for float: 10 steps at 0.8 run 8 (10 * (1 - 0.8) would skip only 1)
        init_timestep = min(self.num_inference_steps * self.strength, self.num_inference_steps)
        return self.num_inference_steps - int(max(self.num_inference_steps - init_timestep, 0))


@dataclass(frozen=True)
class GenerationUpdate:
    """What `GenerationRunner.stream` yields: one update after each denoising step, then the result."""

    done: int  # the denoising steps done
    total: int  # the steps that run (`GenerationRequest.denoising_steps`)
    seed: int  # the seed used
    image: object = None  # the step's preview (a PIL image of the request's size; None: none this step), or the result
    final: bool = False  # True for the last update: `image` is the result


def is_openvino_pipeline(pipeline) -> bool:
    """True for our `OVStableDiffusion3Pipeline` (and its image pipelines): they take `taylorseer=` and switch LoRA
    adapters at run time. diffusers' pipeline gets neither in the demo."""
    from sd3_helper import OVStableDiffusion3Pipeline

    return isinstance(pipeline, OVStableDiffusion3Pipeline)


def demo_pipelines(pipeline) -> dict:
    """The pipeline of each task the demo serves, by `TASKS` name, all sharing `pipeline`'s compiled models.

    For an `OVStableDiffusion3Pipeline` (or one of its image pipelines): text to image, and image to image and
    inpainting built with `from_pipe` (nothing compiles again; the VAE encoder is loaded once if `pipeline` lacks
    it). For another pipeline (diffusers'), or a folder without `vae_encoder/`, text to image only, with a warning.
    """
    from sd3_helper import (
        OVStableDiffusion3Img2ImgPipeline,
        OVStableDiffusion3InpaintPipeline,
        OVStableDiffusion3Pipeline,
    )

    if not is_openvino_pipeline(pipeline):
        return {"text-to-image": pipeline}
    text_to_image = pipeline
    if isinstance(pipeline, OVStableDiffusion3Img2ImgPipeline):  # its call needs an image
        text_to_image = OVStableDiffusion3Pipeline.from_pipe(pipeline)
    try:
        image_to_image = OVStableDiffusion3Img2ImgPipeline.from_pipe(pipeline)
        inpainting = OVStableDiffusion3InpaintPipeline.from_pipe(image_to_image)  # shares its VAE encoder
    except (OSError, ValueError) as error:  # no `vae_encoder/` in the folder, a transformer inpainting cannot use
        logger.warning("The demo offers text to image only: %s", error)
        return {"text-to-image": text_to_image}
    return {"text-to-image": text_to_image, "image-to-image": image_to_image, "inpainting": inpainting}


class GenerationRunner:
    """Runs the demo's pipelines: checks the request, one generation at a time, progress, live previews, and stop.

    `pipeline` serves text to image; `image_to_image` and `inpainting` (optional) are pipelines that share its
    compiled models (see `demo_pipelines`), so one lock serves all three. The LoRA adapters belong to those shared
    models too: a request's adapter choice is set under the same lock, just before its generation, and stays set
    after it. Plain Python (no Gradio), so it can be tested and reused without a UI.
    """

    def __init__(
        self, pipeline, *, image_to_image=None, inpainting=None, max_inference_steps: int = MAX_INFERENCE_STEPS
    ):
        self.pipeline = pipeline
        candidates = {"text-to-image": pipeline, "image-to-image": image_to_image, "inpainting": inpainting}
        self.pipelines = {task: pipe for task, pipe in candidates.items() if pipe is not None}
        self.size_rules = size_rules_of(pipeline)
        self.max_inference_steps = max_inference_steps
        self.openvino = is_openvino_pipeline(pipeline)  # the step cache, run-time LoRA adapters and previews
        self.lock = threading.Lock()  # the compiled models hold one infer request each: never run two calls at once
        self._stop = threading.Event()
        self._owner: str | None = None  # who started the running generation (a Gradio session)
        self.preview_method = self._warm_previews()  # "taesd", "linear", or None: no previews

    def _warm_previews(self) -> str | None:
        """The live previews' method, made ready now so that no generation waits for it: "taesd" when the folder has
        a tiny decoder (`convert_preview_decoder`), else "linear" (the map is fitted here: one small VAE call, shared
        with the `from_pipe` pipelines), None for a pipeline without `preview_images` (diffusers')."""
        if not self.openvino:
            return None
        from sd3_openvino.runtime.previews import PREVIEW_DECODER

        latents = np.zeros((1, self.pipeline.vae_decoder.config["latent_channels"], 8, 8), np.float32)  # (B, C, h, w)
        methods = ["taesd", "linear"] if (self.pipeline.model_dir / PREVIEW_DECODER).exists() else ["linear"]
        for method in methods:
            try:
                self.pipeline.preview_images(latents, method=method)
                return method
            except (OSError, ValueError, RuntimeError) as error:  # a damaged tiny decoder, a VAE that fails
                logger.warning("No %s previews in the demo: %s", method, error)
        return None

    @property
    def tasks(self) -> tuple[str, ...]:
        """The tasks this runner serves, in `TASKS` order."""
        return tuple(self.pipelines)

    @property
    def adapters(self) -> list[str]:
        """The LoRA adapters loaded into the pipeline (in any component), in load order; [] for diffusers' pipeline."""
        if not self.openvino:
            return []
        names = [name for component_names in self.pipeline.get_list_adapters().values() for name in component_names]
        return list(dict.fromkeys(names))

    def active_adapter(self) -> str:
        """The adapter the pipeline has active now (the first, when several are), else `NO_ADAPTER`."""
        active = self.pipeline.get_active_adapters() if self.adapters else []
        return active[0] if active else NO_ADAPTER

    def active_lora_scale(self) -> float:
        """The weight the active adapter (`active_adapter`) has now, within the scale slider's ends; 1.0 for none."""
        adapter = self.active_adapter()
        if adapter == NO_ADAPTER:
            return 1.0
        weights = self.pipeline.lora.weights[adapter]  # component -> weight; the transformer's first
        weight = weights.get("transformer", next(iter(weights.values()), 1.0))
        return min(max(weight, MIN_LORA_SCALE), MAX_LORA_SCALE)

    def _check_fast(self, fast) -> bool:
        if not isinstance(fast, bool):
            raise TypeError(f"`fast` has to be True or False but is {fast!r:.80}.")
        if fast and not self.openvino:
            raise ValueError(
                f"`fast` (the step cache) needs an `OVStableDiffusion3Pipeline` but this demo runs "
                f"{type(self.pipeline).__name__}. Leave `fast` off."
            )
        return fast

    def _check_adapter(self, adapter, *, lora_scale) -> tuple[str | None, float]:
        """`adapter` (None: leave the adapters as they are set) and `lora_scale` in their types, or an error naming
        the loaded adapters."""
        lora_scale = _as_finite(lora_scale, name="lora_scale", minimum=MIN_LORA_SCALE, maximum=MAX_LORA_SCALE)
        if adapter is None:
            return None, lora_scale
        if not isinstance(adapter, str):
            raise TypeError(f"`adapter` has to be a str but is {type(adapter).__name__}: {adapter!r:.80}.")
        loaded = self.adapters
        if adapter != NO_ADAPTER and adapter not in loaded:
            if not loaded:
                raise ValueError(
                    f"`adapter` {adapter!r:.80} is not loaded: the pipeline has no LoRA adapters. Load one with "
                    f"`pipe.load_lora_weights(path, adapter_name=...)` before `make_demo`, or choose {NO_ADAPTER!r}."
                )
            raise ValueError(
                f"`adapter` {adapter!r:.80} is not loaded; loaded adapters: {loaded}. "
                f"Choose one of them or {NO_ADAPTER!r}."
            )
        return adapter, lora_scale

    def check(
        self,
        *,
        prompt: str,
        negative_prompt: str | None = "",
        seed: int | None = 0,
        randomize_seed: bool = False,
        width: int,
        height: int,
        guidance_scale: float,
        num_inference_steps: int,
        task: str = "text-to-image",
        image=None,
        mask_image=None,
        strength: float | None = None,
        fast: bool = False,
        adapter: str | None = None,
        lora_scale: float = 1.0,
    ) -> GenerationRequest:
        """The request with every field checked; a ValueError or TypeError names the first bad field.

        The texts' lengths are checked first, so an over-long paste is refused before any other work. The seed
        may be left empty (None) when `randomize_seed` is set; a random one is drawn then. Image to image needs
        `image` (a PIL image) and `strength`; inpainting also `mask_image` (the image's size, something painted).
        `fast` turns on the step cache (our pipelines only). `adapter` is a loaded LoRA adapter (applied at
        `lora_scale`, from `MIN_LORA_SCALE` to `MAX_LORA_SCALE`), `NO_ADAPTER` for none, or None to leave the
        pipeline's adapters as they are set.
        """
        if task not in self.pipelines:
            raise ValueError(f"`task` has to be one of {self.tasks} but is {task!r:.80}.")
        prompt = _check_text(prompt, name="prompt")
        negative_prompt = _check_text(negative_prompt, name="negative_prompt")
        if not prompt.strip():
            raise ValueError("The prompt is empty: describe the image you want, e.g. 'a photo of a cat'.")
        if not isinstance(randomize_seed, bool):
            raise TypeError(f"`randomize_seed` has to be True or False but is {randomize_seed!r:.80}.")
        if not randomize_seed or seed is not None:
            seed = _as_int(seed, name="seed", minimum=0, maximum=MAX_SEED)
        width, height = _as_whole(width, name="width"), _as_whole(height, name="height")
        self.size_rules.check(height=height, width=width)  # names both sides and the nearest accepted ones
        guidance_scale = _as_finite(guidance_scale, name="guidance_scale", minimum=0.0, maximum=MAX_GUIDANCE_SCALE)
        num_inference_steps = _as_int(
            num_inference_steps, name="num_inference_steps", minimum=1, maximum=self.max_inference_steps
        )
        fast = self._check_fast(fast)
        adapter, lora_scale = self._check_adapter(adapter, lora_scale=lora_scale)
        if task != "text-to-image":
            verb = "restyle" if task == "image-to-image" else "repaint"
            image = _check_image(image, name="image", missing=f"upload the image to {verb}")
            strength = _check_strength(strength, num_inference_steps=num_inference_steps)
        if task == "inpainting":
            mask_image = _check_mask(mask_image, image=image)
        return GenerationRequest(
            prompt=prompt,
            negative_prompt=negative_prompt,
            seed=random.randint(0, MAX_SEED) if randomize_seed else seed,
            width=width,
            height=height,
            guidance_scale=guidance_scale,
            num_inference_steps=num_inference_steps,
            task=task,
            image=image if task != "text-to-image" else None,
            mask_image=mask_image if task == "inpainting" else None,
            strength=strength if task != "text-to-image" else None,
            fast=fast,
            adapter=adapter,
            lora_scale=lora_scale,
        )

    def generate(self, *, on_step: Callable[[int, int], None] | None = None, owner: str | None = None, **fields):
        """Generate one image; return `(image, seed used)`. `fields` are the request's fields, the keyword
        arguments of `check`; bad input raises a ValueError or TypeError at once.

        `on_step(done, total)` is called after every denoising step (`total` counts the steps that run: fewer
        than `num_inference_steps` at a strength below 1). Waits while another generation runs.
        """
        request = self.check(**fields)
        report = None if on_step is None else lambda done, total, draw: on_step(done, total)
        return self._run(request, on_step=report, owner=owner), request.seed

    def stream(self, *, owner: str | None = None, **fields) -> Iterator[GenerationUpdate]:
        """Generate one image as `generate` does, reporting as it goes: a `GenerationUpdate` after every denoising
        step, with the step's live preview when there is one, then the result (`final`). Bad input raises at once.

        The generation runs in a thread of its own. The previews are drawn here, in the caller's thread and outside
        the lock; a step whose successor is already done gets none, so a slow reader sees the latest. Closing the
        iterator early (its reader is gone) stops the generation after its current step.
        """
        request = self.check(**fields)
        updates = queue.SimpleQueue()  # ("step", done, total, draw) per step, then ("result", image) / ("error", error)
        cancelled = threading.Event()

        def on_step(done: int, total: int, draw: Callable | None) -> None:
            updates.put(("step", done, total, draw))

        def work() -> None:
            try:
                image = self._run(request, on_step=on_step, owner=owner, previews=True, cancelled=cancelled)
                updates.put(("result", image))
            except BaseException as error:  # raised again in the reader's thread
                updates.put(("error", error))

        threading.Thread(target=work, name="demo-generation", daemon=True).start()
        done, total = 0, request.denoising_steps
        try:
            while True:
                kind, *payload = updates.get()
                if kind == "error":
                    raise payload[0]
                if kind == "result":
                    yield GenerationUpdate(done=done, total=total, seed=request.seed, image=payload[0], final=True)
                    return
                done, total, draw = payload
                image = None if draw is None or not updates.empty() else self._draw_preview(draw)
                yield GenerationUpdate(done=done, total=total, seed=request.seed, image=image)
        finally:
            cancelled.set()  # nobody reads on: stop after the current step (nothing to stop once the result is in)

    def _run(
        self,
        request: GenerationRequest,
        *,
        on_step: Callable | None = None,
        owner: str | None = None,
        previews: bool = False,
        cancelled: threading.Event | None = None,
    ):
        """Generate the checked `request`, one generation at a time; return the image.

        `on_step(done, total, draw)` is called after every denoising step. With `previews`, `draw` (else None) makes
        the step's preview when called, from any thread, outside the lock: the linear map's holds a copy of the
        step's latents; the tiny decoder's is drawn in the step (it runs on the shared infer requests), every
        `PREVIEW_INTERVALS["taesd"]` steps. `cancelled`, once set, stops the generation after its current step.
        """
        import torch

        size = (request.width, request.height)

        def on_step_end(pipe, step: int, timestep, callback_kwargs: dict) -> dict:
            done, total = step + 1, request.denoising_steps
            if on_step is not None:
                draw = None
                if previews:
                    draw = self._preview(pipe, callback_kwargs["latents"], size=size, done=done, total=total)
                on_step(done, total, draw)
            if self._stop.is_set() or (cancelled is not None and cancelled.is_set()):
                pipe._interrupt = True
            return callback_kwargs

        arguments = dict(
            prompt=request.prompt,
            negative_prompt=request.negative_prompt or None,
            width=request.width,
            height=request.height,
            guidance_scale=request.guidance_scale,
            num_inference_steps=request.num_inference_steps,
        )
        if request.task != "text-to-image":
            arguments.update(image=request.image, strength=request.strength)
        if request.task == "inpainting":
            arguments.update(mask_image=request.mask_image)
        if request.fast:
            arguments.update(taylorseer=FAST_STEP_CACHE)
        with self.lock:
            self._stop.clear()
            self._owner = owner
            try:
                self._apply_adapter(request)
                return self.pipelines[request.task](
                    **arguments,
                    generator=torch.Generator().manual_seed(request.seed),
                    callback_on_step_end=on_step_end,
                ).images[0]
            finally:
                self._owner = None

    def _preview(self, pipe, latents, *, size: tuple[int, int], done: int, total: int) -> Callable | None:
        """What draws step `done`'s preview at `size` (width, height), or None when this step gets none (see `_run`)."""
        method = self.preview_method
        if method is None or (done % PREVIEW_INTERVALS[method] and done != total):
            return None
        if method == "linear":  # a copy (the loop may reuse its array; numpy or torch), mapped later, outside the lock
            latents = as_array(latents).copy()
            return lambda: pipe.preview_images(latents, size=size)[0]
        try:
            image = pipe.preview_images(latents, method=method, size=size)[0]
        except (OSError, ValueError, RuntimeError) as error:
            self._previews_failed(error)
            return None
        return lambda: image

    def _draw_preview(self, draw: Callable):
        """`draw()`, or None if it fails (the previews are then off: a preview never ends a generation)."""
        try:
            return draw()
        except (OSError, ValueError, TypeError, RuntimeError) as error:
            self._previews_failed(error)
            return None

    def _previews_failed(self, error: Exception) -> None:
        logger.warning("Live previews are off from now on: %s", error)
        self.preview_method = None

    def _apply_adapter(self, request: GenerationRequest) -> None:
        """Set the request's adapter choice on the shared models (call it holding the lock). States only: instant."""
        if request.adapter is None or (request.adapter == NO_ADAPTER and not self.adapters):
            return
        if request.adapter == NO_ADAPTER:
            self.pipeline.disable_lora()
            return
        self.pipeline.enable_lora()  # after a `disable_lora`, `set_adapters` alone would leave them off
        self.pipeline.set_adapters([request.adapter], [request.lora_scale])

    def stop(self, *, owner: str | None = None) -> None:
        """Stop the running generation after its current step (only if `owner` started it, when given)."""
        if owner is None or owner == self._owner:
            self._stop.set()


TAB_LABELS = {"text-to-image": "Text to image", "image-to-image": "Image to image", "inpainting": "Inpainting"}
API_NAMES = {"text-to-image": "generate", "image-to-image": "image_to_image", "inpainting": "inpaint"}
ELEM_ID_PREFIXES = {"text-to-image": "", "image-to-image": "image-to-image-", "inpainting": "inpainting-"}
GENERATION_EVENT = dict(  # the options of every tab's Run event
    preprocess=False,  # Gradio's conversion fails on `width="abc"` with a bare "Error"; the runner names it
    concurrency_limit=1,  # one generation at a time, whichever tab; the queue answers the others in turn
    concurrency_id="generation",
)


@dataclass(frozen=True)
class ControlDefaults:
    """The initial values and limits of every tab's settings (`make_demo`'s arguments)."""

    rules: SizeRules  # the size sliders step by the model's size multiple and stop at its largest size
    width: int  # a size the model accepts
    height: int
    guidance_scale: float
    num_inference_steps: int
    max_inference_steps: int  # the steps slider's end
    step_cache: bool = False  # show the "Fast (step cache)" switch (our pipelines)
    adapters: tuple[str, ...] = ()  # the loaded LoRA adapters: an adapter choice and a scale when there are some
    adapter: str = NO_ADAPTER  # the adapter chosen at first: the one active when the demo is built
    lora_scale: float = 1.0  # the LoRA scale at first: the active adapter's weight (`--lora PATH:SCALE`)
    previews: bool = False  # the result image shows live previews (our pipelines)


def _session_of(request) -> str | None:
    """The Gradio session that sent `request` (None for a call without one)."""
    return request.session_hash if request else None


# ----------------------------------------------------------------------------------------------------------
# What the demo's events do
# ----------------------------------------------------------------------------------------------------------


class DemoHandlers:
    """What the demo's events do, between Gradio and a `GenerationRunner`: read the image fields, report the
    progress, turn bad input into a readable `gr.Error`, stop a generation, and fit the size sliders to an upload.

    `image_fields` holds each image tab's image component, by task (`_image_tab` fills it): the Run events have
    `preprocess=False`, so `run` asks the component itself to read what the page sent.
    """

    def __init__(self, runner: GenerationRunner):
        self.runner = runner
        self.image_fields: dict = {}

    def read_payload(self, task: str, payload, *, name: str):
        """A file field's payload as Gradio's own preprocessing gives it (the events have `preprocess=False`). The
        page sends the image editor's images ahead and only their id with the event; the component finds them."""
        if payload is None:
            return None
        component = self.image_fields[task]
        try:
            return component.preprocess(component.data_model.model_validate(payload))
        except (OSError, ValueError) as error:  # not an image file
            raise ValueError(f"`{name}` could not be read as an image ({type(error).__name__}).") from error

    def run(self, task: str, request, progress, **fields) -> Iterator[tuple]:
        """Generate for `task` with the event's `fields`, yielding `(image, seed used)`: the live preview of each
        step while the progress bar follows the steps, then the result (an API client's result: the last value); or
        raise a `gr.Error`."""
        import gradio as gr

        try:
            if task == "image-to-image":
                fields["image"] = self.read_payload(task, fields["image"], name="image")
            elif task == "inpainting":
                editor_value = self.read_payload(task, fields["image"], name="image_and_mask")
                fields["image"], fields["mask_image"] = image_and_mask_from_editor(editor_value)
            for update in self.runner.stream(task=task, owner=_session_of(request), **fields):
                if update.image is not None:
                    yield update.image, update.seed
                if not update.final:  # after the preview: the page shows the step count over it until the next one
                    progress((update.done, update.total), desc="Denoising", unit="steps")
        except (ValueError, TypeError) as error:
            raise gr.Error(str(error), title="Invalid input", print_exception=False) from error
        except Exception as error:  # an OpenVINO or memory error: say what failed instead of a bare "Error"
            logger.exception("Generation failed")
            raise gr.Error(f"Generation failed ({type(error).__name__}: {error}). See the server log.") from error

    def stop(self, request) -> None:
        """Stop the generation that `request`'s session started, after its current step."""
        self.runner.stop(owner=_session_of(request))

    def fit_sliders(self, value):
        """The size sliders for an uploaded image (a PIL image, or an image editor's value)."""
        import gradio as gr

        image = value.get("background") if isinstance(value, dict) else value
        return (gr.skip(), gr.skip()) if image is None else fit_size(image.size, self.runner.size_rules)


# The endpoints. Gradio reads an endpoint's API from its signature: the parameters before `request` are the API's
# inputs, in order and by name; it fills in `request: gr.Request` and `progress=gr.Progress()` itself. Both need
# gradio when the function is defined, and this module imports gradio only when a demo is built, so the endpoints
# are defined in these two functions and pass everything on to `DemoHandlers`. They are generators (`yield from`):
# Gradio streams what they yield (the previews, then the result) and gives API clients the last value. The options
# after the required inputs (`fast`, `adapter`, `lora_scale`) have defaults: a demo without the matching controls
# passes fewer inputs.


def _text_to_image_endpoints(handlers: DemoHandlers) -> dict:
    """`/generate` (text to image) and `/stop`, by task ("stop" for Stop)."""
    import gradio as gr

    def generate(
        prompt: str,
        negative_prompt: str,
        seed: float,
        randomize_seed: bool,
        width: float,
        height: float,
        guidance_scale: float,
        num_inference_steps: float,
        fast: bool = False,
        adapter: str | None = None,
        lora_scale: float = 1.0,
        request: gr.Request = None,
        progress=gr.Progress(),
    ):
        yield from handlers.run(
            "text-to-image",
            request,
            progress,
            prompt=prompt,
            negative_prompt=negative_prompt,
            seed=seed,
            randomize_seed=randomize_seed,
            width=width,
            height=height,
            guidance_scale=guidance_scale,
            num_inference_steps=num_inference_steps,
            fast=fast,
            adapter=adapter,
            lora_scale=lora_scale,
        )

    def stop(request: gr.Request) -> None:
        handlers.stop(request)

    return {"text-to-image": generate, "stop": stop}


def _image_endpoints(handlers: DemoHandlers) -> dict:
    """`/image_to_image` and `/inpaint`, by task: an image (an image editor's value for inpainting), then
    `/generate`'s inputs up to the steps, then strength, then the options (fast, adapter, LoRA scale)."""
    import gradio as gr

    def image_to_image(
        image: dict | None,
        prompt: str,
        negative_prompt: str,
        seed: float,
        randomize_seed: bool,
        width: float,
        height: float,
        guidance_scale: float,
        num_inference_steps: float,
        strength: float,
        fast: bool = False,
        adapter: str | None = None,
        lora_scale: float = 1.0,
        request: gr.Request = None,
        progress=gr.Progress(),
    ):
        yield from handlers.run(
            "image-to-image",
            request,
            progress,
            image=image,
            prompt=prompt,
            negative_prompt=negative_prompt,
            seed=seed,
            randomize_seed=randomize_seed,
            width=width,
            height=height,
            guidance_scale=guidance_scale,
            num_inference_steps=num_inference_steps,
            strength=strength,
            fast=fast,
            adapter=adapter,
            lora_scale=lora_scale,
        )

    def inpaint(
        image_and_mask: dict | None,
        prompt: str,
        negative_prompt: str,
        seed: float,
        randomize_seed: bool,
        width: float,
        height: float,
        guidance_scale: float,
        num_inference_steps: float,
        strength: float,
        fast: bool = False,
        adapter: str | None = None,
        lora_scale: float = 1.0,
        request: gr.Request = None,
        progress=gr.Progress(),
    ):
        yield from handlers.run(
            "inpainting",
            request,
            progress,
            image=image_and_mask,
            prompt=prompt,
            negative_prompt=negative_prompt,
            seed=seed,
            randomize_seed=randomize_seed,
            width=width,
            height=height,
            guidance_scale=guidance_scale,
            num_inference_steps=num_inference_steps,
            strength=strength,
            fast=fast,
            adapter=adapter,
            lora_scale=lora_scale,
        )

    return {"image-to-image": image_to_image, "inpainting": inpaint}


# ----------------------------------------------------------------------------------------------------------
# The parts of a tab (each builds its components where it is called: in the caller's `gr.Blocks` context)
# ----------------------------------------------------------------------------------------------------------


def _prompt_row(task: str) -> tuple:
    """The prompt, Run and Stop, in one row."""
    import gradio as gr

    prefix = ELEM_ID_PREFIXES[task]
    with gr.Row(equal_height=True):
        prompt = gr.Textbox(
            label="Prompt",
            placeholder="Describe the image, then press Enter",
            max_lines=1,
            max_length=MAX_PROMPT_CHARS,  # the page stops typing there; `GenerationRunner.check` refuses API calls
            scale=5,
            elem_id=f"{prefix}prompt",
        )
        run_button = gr.Button("Run", variant="primary", scale=0, min_width=100, elem_id=f"{prefix}run")
        stop_button = gr.Button("Stop", variant="stop", scale=0, min_width=100, elem_id=f"{prefix}stop")
    return prompt, run_button, stop_button


def _result_image(task: str):
    import gradio as gr

    prefix = ELEM_ID_PREFIXES[task]
    return gr.Image(label="Result", type="pil", format="png", interactive=False, elem_id=f"{prefix}result")


def _used_seed_box(task: str):
    import gradio as gr

    prefix = ELEM_ID_PREFIXES[task]
    return gr.Number(label="Seed used", precision=0, interactive=False, elem_id=f"{prefix}seed-used")


def _advanced_settings(task: str, defaults: ControlDefaults) -> tuple[list, list]:
    """The inputs after the prompt: (negative prompt, seed, randomize seed, width, height, guidance, steps) and the
    options (`_options`)."""
    import gradio as gr

    prefix, rules = ELEM_ID_PREFIXES[task], defaults.rules
    with gr.Accordion("Advanced settings", open=False):
        negative_prompt = gr.Textbox(
            label="Negative prompt",
            placeholder="What the image should not show",
            max_lines=1,
            max_length=MAX_PROMPT_CHARS,
        )
        with gr.Row():
            seed = gr.Number(label="Seed", value=0, precision=0, minimum=0, maximum=MAX_SEED)
            randomize_seed = gr.Checkbox(label="Randomize seed", value=True)
        with gr.Row():
            slider = dict(minimum=rules.multiple, maximum=rules.maximum, step=rules.multiple)
            width = gr.Slider(label="Width", value=defaults.width, elem_id=f"{prefix}width", **slider)
            height = gr.Slider(label="Height", value=defaults.height, elem_id=f"{prefix}height", **slider)
        with gr.Row():
            guidance = gr.Slider(
                label="Guidance scale", minimum=0.0, maximum=MAX_GUIDANCE_SCALE, step=0.1, value=defaults.guidance_scale
            )
            steps = gr.Slider(
                label="Inference steps",
                minimum=1,
                maximum=defaults.max_inference_steps,
                step=1,
                value=defaults.num_inference_steps,
            )
        options = _options(task, defaults)
    return [negative_prompt, seed, randomize_seed, width, height, guidance, steps], options


def _options(task: str, defaults: ControlDefaults) -> list:
    """The step cache switch (our pipelines), then the LoRA adapter and its scale (when adapters are loaded): the
    endpoints' last inputs, in this order."""
    import gradio as gr

    prefix, options = ELEM_ID_PREFIXES[task], []
    if defaults.step_cache:
        options.append(
            gr.Checkbox(
                label="Fast (step cache)",
                info="Predict the transformer's output on some steps (openvino.genai's default): faster, a slightly "
                "different image",
                value=False,  # off, as in diffusers: the same seed gives diffusers' image
                elem_id=f"{prefix}fast",
            )
        )
    if defaults.adapters:
        with gr.Row():
            adapter = gr.Dropdown(
                label="LoRA adapter",
                choices=[NO_ADAPTER, *defaults.adapters],
                value=defaults.adapter,
                elem_id=f"{prefix}adapter",
            )
            lora_scale = gr.Slider(
                label="LoRA scale",
                minimum=MIN_LORA_SCALE,
                maximum=MAX_LORA_SCALE,
                step=0.05,
                value=defaults.lora_scale,
                elem_id=f"{prefix}lora-scale",
            )
        options += [adapter, lora_scale]
    return options


def _image_field(task: str):
    """The image to restyle (image to image), or the image editor to paint the mask on (inpainting)."""
    import gradio as gr

    elem_id = f"{ELEM_ID_PREFIXES[task]}image"
    if task == "image-to-image":
        return gr.Image(label="Image", type="pil", sources=["upload", "clipboard"], elem_id=elem_id)
    return gr.ImageEditor(
        label="Image: paint the area to repaint",
        type="pil",
        image_mode="RGBA",  # the layers keep their alpha: painted pixels are the mask
        sources=["upload", "clipboard"],
        brush=gr.Brush(colors=[("#ffffff", 0.7)], color_mode="fixed"),  # white repaints
        layers=False,
        transforms=(),  # a crop would have to crop the mask too
        elem_id=elem_id,
    )


def _initial_strength(task: str, pipeline) -> float:
    """Strength's initial value: the image to image pipeline's default (0.6, as diffusers), `INPAINTING_STRENGTH`
    for inpainting, 1.0 for an inpainting transformer that sees the masked image in every step (33 channels)."""
    if task == "image-to-image":
        return pipeline.default_strength
    return 1.0 if getattr(pipeline, "concatenates_mask", False) else INPAINTING_STRENGTH


def _strength_slider(value: float):
    import gradio as gr

    return gr.Slider(
        label="Strength",
        info="How much to change: 1 repaints from noise, 0.3 keeps most of the image",
        minimum=0.0,
        maximum=1.0,
        step=0.05,
        value=value,
    )


def _on_run(task: str, fn: Callable, *, prompt, run_button, inputs: list, outputs: list, previews: bool):
    """Run `fn` on Run or Enter in the prompt, in the queue that every tab shares; returns the event. With live
    `previews`, the progress shows as a bar and a step count over them ("minimal"), not as a cover that hides them."""
    import gradio as gr

    return gr.on(
        triggers=[run_button.click, prompt.submit],
        fn=fn,
        inputs=inputs,
        outputs=outputs,
        api_name=API_NAMES[task],
        show_progress="minimal" if previews else "full",
        **GENERATION_EVENT,
    )


# ----------------------------------------------------------------------------------------------------------
# The tabs and the demo
# ----------------------------------------------------------------------------------------------------------


def _text_to_image_tab(generate: Callable, *, examples: list[str], defaults: ControlDefaults) -> tuple:
    """The text to image controls and their Run event; returns (the event, the Stop button)."""
    import gradio as gr

    task = "text-to-image"
    prompt, run_button, stop_button = _prompt_row(task)
    result = _result_image(task)
    settings, options = _advanced_settings(task, defaults)
    used_seed = _used_seed_box(task)
    gr.Examples(examples=[[example] for example in examples], inputs=[prompt], label="Example prompts")
    inputs = [prompt, *settings, *options]
    event = _on_run(
        task,
        generate,
        prompt=prompt,
        run_button=run_button,
        inputs=inputs,
        outputs=[result, used_seed],
        previews=defaults.previews,
    )
    return event, stop_button


def _image_tab(
    task: str, fn: Callable, *, handlers: DemoHandlers, strength: float, defaults: ControlDefaults
) -> tuple:
    """An image tab's controls (image to image, inpainting), its Run event, and an upload that fits the size
    sliders to the image; returns (the Run event, the Stop button)."""
    import gradio as gr

    prompt, run_button, stop_button = _prompt_row(task)
    with gr.Row(equal_height=True):
        image = handlers.image_fields[task] = _image_field(task)
        result = _result_image(task)
    strength_slider = _strength_slider(strength)
    settings, options = _advanced_settings(task, defaults)
    used_seed = _used_seed_box(task)
    width_slider, height_slider = settings[3], settings[4]
    image.upload(
        fn=handlers.fit_sliders,
        inputs=image,
        outputs=[width_slider, height_slider],
        queue=False,
        api_name=False,
        show_progress="hidden",
    )
    event = _on_run(
        task,
        fn,
        prompt=prompt,
        run_button=run_button,
        inputs=[image, prompt, *settings, strength_slider, *options],
        outputs=[result, used_seed],
        previews=defaults.previews,
    )
    return event, stop_button


def _connect_stop_buttons(buttons: list, *, stop: Callable, events: list) -> None:
    """Each Stop ends this session's generation, whichever tab; one `/stop` endpoint serves every tab."""
    for index, button in enumerate(buttons):
        api_name = "stop" if index == 0 else False
        button.click(fn=stop, inputs=None, outputs=None, cancels=events, queue=False, api_name=api_name)


def make_demo(
    pipeline,
    *,
    examples: list[str] | None = None,
    title: str = "Stable Diffusion 3 with OpenVINO",
    height: int | None = None,
    width: int | None = None,
    num_inference_steps: int = GENERATION_DEFAULTS.num_inference_steps,
    guidance_scale: float = GENERATION_DEFAULTS.guidance_scale,
    max_inference_steps: int = MAX_INFERENCE_STEPS,
):
    """Build (without launching) a `gr.Blocks` demo for an SD3 pipeline, with tabs "Text to image", "Image to
    image" and "Inpainting" (text to image only for a pipeline that is not ours; see `demo_pipelines`).

    The tabs share one set of compiled models (`from_pipe`) and one queue: one generation at a time, whichever
    tab asks. `examples` are prompts to offer (default: `EXAMPLE_PROMPTS`). `height`, `width` (default: the
    model's native size), `num_inference_steps` and `guidance_scale` are the initial values of each tab's
    controls. The size sliders step by the model's size multiple and stop at its largest size.

    On the image tabs the image is resized to the width and height of the sliders, as diffusers does. Uploading
    an image sets those sliders to the image's own size scaled down to the model's native area and snapped to
    sizes it accepts (`fit_size`): the result keeps the image's aspect ratio, and the user sees the size and
    can change it before pressing Run. Strength starts at 0.6 for image to image (diffusers' default) and at
    `INPAINTING_STRENGTH` (0.85; 1.0 for a 33-channel inpainting transformer) for inpainting.

    On our pipelines each tab's advanced settings have a "Fast (step cache)" switch, off by default (diffusers'
    image): on, the call gets `taylorseer=FAST_STEP_CACHE`, openvino.genai's default step cache. When `pipeline`
    has LoRA adapters loaded (`pipeline.get_list_adapters()`), they also have an adapter choice (`NO_ADAPTER` or a
    loaded adapter, at first the active one) and a LoRA scale (-1 to 2, at first the active adapter's weight); each
    generation sets them with `set_adapters([adapter], [scale])`, or `disable_lora()` for `NO_ADAPTER`, in its turn
    in the queue.

    While a generation runs, the result image shows the live preview of its latest step (our pipelines:
    `preview_images`, the linear map every step, or the folder's tiny decoder every `PREVIEW_INTERVALS["taesd"]`
    steps; see `GenerationRunner.stream`), and the final image replaces it. diffusers' pipeline shows the final
    image only.

    API endpoints (outputs: image, seed used, streamed: the previews, then the result, which is what
    `gradio_client`'s `predict` returns; Stop: `/stop`):
    - `/generate`: prompt, negative prompt, seed, randomize seed, width, height, guidance scale, steps, then the
      options: fast (our pipelines), adapter and LoRA scale (with adapters loaded).
    - `/image_to_image`: image, then `/generate`'s inputs up to the steps, then strength, then the options.
    - `/inpaint`: a `gr.ImageEditor` value `{"background": image, "layers": [painted layers], "composite": ...}`
      (the layers' painted, non-transparent pixels are the area to repaint), then `/generate`'s inputs up to the
      steps, then strength, then the options.
    The options may be left out (the controls' initial values are used). The inputs reach `GenerationRunner.check`
    as sent (Gradio's own conversion is off), so a bad value from an API client gets the same named error as one
    from the page.
    """
    import gradio as gr

    # 1. The pipeline of each task, all sharing one set of compiled models, and the runner that checks and runs them
    pipelines = demo_pipelines(pipeline)
    runner = GenerationRunner(
        pipelines["text-to-image"],
        image_to_image=pipelines.get("image-to-image"),
        inpainting=pipelines.get("inpainting"),
        max_inference_steps=max_inference_steps,
    )
    # 2. The controls' initial values, and the functions that the events call
    rules = runner.size_rules
    defaults = ControlDefaults(
        rules=rules,
        width=rules.snap(width or rules.default),
        height=rules.snap(height or rules.default),
        guidance_scale=guidance_scale,
        num_inference_steps=num_inference_steps,
        max_inference_steps=max_inference_steps,
        step_cache=runner.openvino,
        adapters=tuple(runner.adapters),
        adapter=runner.active_adapter(),
        lora_scale=runner.active_lora_scale(),
        previews=runner.preview_method is not None,
    )
    examples = list(EXAMPLE_PROMPTS if examples is None else examples)
    handlers = DemoHandlers(runner)
    endpoints = {**_text_to_image_endpoints(handlers), **_image_endpoints(handlers)}
    # 3. A tab per task (no tabs for text to image alone), each with its Run event and its Stop button
    several_tabs = len(runner.tasks) > 1
    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        gr.Markdown(f"# {title}")
        with gr.Tabs() if several_tabs else contextlib.nullcontext():
            with gr.Tab(TAB_LABELS["text-to-image"], id="text-to-image") if several_tabs else contextlib.nullcontext():
                tabs = [_text_to_image_tab(endpoints["text-to-image"], examples=examples, defaults=defaults)]
            for task in [task for task in runner.tasks if task != "text-to-image"]:
                with gr.Tab(TAB_LABELS[task], id=task):
                    strength = _initial_strength(task, pipelines[task])
                    tabs.append(
                        _image_tab(task, endpoints[task], handlers=handlers, strength=strength, defaults=defaults)
                    )
        # 4. Every Stop button stops this session's generation, whichever tab started it
        events, stop_buttons = ([*column] for column in zip(*tabs))
        _connect_stop_buttons(stop_buttons, stop=endpoints["stop"], events=events)
    return demo


# ----------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------


class UsageError(Exception):
    """A mistake of the user's (a missing folder, a busy port): reported as one `error:` line, exit status 2."""


def _port(text: str) -> int:
    """`--port` as an int from 1 to 65535; argparse reports anything else with this message and exits 2."""
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"has to be a whole number from 1 to 65535 but is {text!r}")
    return int(text)


def _lora(text: str) -> tuple[str, float]:
    """`--lora PATH[:SCALE]` as `(path, scale)` (`sd3_helper.lora_argument`, imported only when the option is used)."""
    from sd3_helper import lora_argument

    return lora_argument(text)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gradio_helper.py", description="Serve the SD3 OpenVINO demo.")
    parser.add_argument("model_dir", type=Path, help="a folder written by convert_sd3 (or optimum-cli)")
    parser.add_argument("--device", default="CPU", help="OpenVINO device: CPU, GPU, AUTO, ...")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    parser.add_argument(
        "--port", type=_port, default=None, help=f"default: the first free port from {DEFAULT_PORT}"
    )
    parser.add_argument("--share", action="store_true", help="also make a public gradio.live link")
    parser.add_argument(
        "--lora",
        action="append",
        type=_lora,
        default=[],
        metavar="PATH[:SCALE]",
        help="load a LoRA adapter (a file, its folder or a hub id; named lora_0, lora_1, ...) for the demo's adapter "
        "choice, which starts on the first one at its SCALE (default 1.0); repeatable",
    )
    return parser.parse_args(argv)


def port_is_free(*, host: str, port: int) -> bool:
    """True when a server can listen on `host:port` now (a bind test, as gradio's own; `host` may be a name)."""
    try:
        family, kind, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as error:
        raise UsageError(f"`--host` {host!r} is not an address of this machine ({error}). Try 127.0.0.1.") from error
    with socket.socket(family, kind) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port in TIME_WAIT is free for uvicorn too
        try:
            probe.bind(address)
        except OSError:
            return False
    return True


def choose_port(*, host: str, port: int | None) -> int:
    """`port` if it is free on `host`, else a UsageError; with no `port`, the first free one from `DEFAULT_PORT`."""
    if port is not None:
        if not port_is_free(host=host, port=port):
            raise UsageError(
                f"`--port` {port} on {host} is in use (is another demo still running?). "
                "Stop that server, pass another `--port`, or leave it out to take the first free port."
            )
        return port
    candidates = range(DEFAULT_PORT, DEFAULT_PORT + PORTS_TO_TRY)
    for candidate in candidates:
        if port_is_free(host=host, port=candidate):
            return candidate
    raise UsageError(
        f"ports {candidates.start}-{candidates.stop - 1} on {host} are all in use. Pass a free one with `--port`."
    )


def check_lora_arguments(lora: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """The `--lora` (path, scale) pairs, or a UsageError for a scale that is not a finite number or a local path that
    does not exist, before the model loads (whether a file is a LoRA for this model shows when it is loaded)."""
    if not lora:
        return []
    from sd3_helper import check_lora

    try:
        lora = check_lora(lora)
    except (ValueError, TypeError) as error:
        raise UsageError(f"`--lora`: {error}") from error
    for source, _ in lora:
        path = Path(source).expanduser()
        # a path: what cannot be a hub id ("name" or "namespace/name")
        local = path.is_absolute() or source.startswith((".", "~")) or source.count("/") > 1
        if (local or path.suffix in LORA_SUFFIXES) and not path.exists():
            raise UsageError(
                f"`--lora` {source!r} does not exist. Pass a LoRA `.safetensors` file, its folder or a hub id "
                "(namespace/name)."
            )
    return lora


def check_model_dir(model_dir: Path) -> None:
    """A UsageError naming `model_dir` if it is not a converted model folder (fast: before the model loads)."""
    try:
        read_model_index(model_dir)
    except (OSError, ValueError) as error:
        raise UsageError(str(error)) from error


def serve(args: argparse.Namespace) -> None:
    """Check the folder, the LoRA scales and the port (in a moment), then load the model (minutes) and its LoRA
    adapters, and serve until stopped."""
    check_model_dir(args.model_dir)
    lora = check_lora_arguments(args.lora)
    port = choose_port(host=args.host, port=args.port)
    from sd3_helper import OVStableDiffusion3Pipeline, load_adapters

    try:
        pipeline = OVStableDiffusion3Pipeline.from_pretrained(args.model_dir, device=args.device)
    except (ValueError, OSError, RuntimeError) as error:  # a damaged or foreign folder, an unknown device
        raise UsageError(str(error)) from error
    try:
        load_adapters(pipeline, lora)
    except (ValueError, TypeError, OSError, RuntimeError) as error:  # not a LoRA, one for another model
        raise UsageError(f"`--lora`: {error}") from error
    except Exception as error:  # a hub id without network (httpx's errors), say
        sources = ", ".join(repr(source) for source, _ in lora)
        raise UsageError(f"`--lora` {sources} could not be loaded ({type(error).__name__}: {error}).") from error
    pipeline.set_progress_bar_config(disable=True)  # the UI shows the progress
    demo = make_demo(pipeline)
    try:
        demo.launch(server_name=args.host, server_port=port, share=args.share)
    except OSError as error:  # another server took the port while the model loaded
        raise UsageError(f"cannot serve on {args.host}:{port}: {error}") from error


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python gradio_helper.py`; returns the exit status (2 for a mistake of the user's)."""
    args = _parse_args(argv)
    try:
        serve(args)
    except UsageError as error:
        print("error: " + " ".join(str(error).split("\n")), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
