"""What runs the demo's generations, without a UI: the pipeline of each task (`demo_pipelines`), and
`GenerationRunner`, which checks a request, runs one generation at a time, reports each step with its live preview
(`LivePreviews`), sets the LoRA adapter choice and the IP-Adapter's scale, and stops a generation on request.

Plain Python (no Gradio), so it can be tested and reused without a UI. Our pipelines are imported where they are
needed, and torch only where a generation starts (its generator), so importing this module stays light.
"""

import logging
import queue
import threading
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from ..runtime.arrays import as_array  # light: numpy only
from .checks import (
    MAX_INFERENCE_STEPS,
    MAX_IP_ADAPTER_SCALE,
    MAX_LORA_SCALE,
    MIN_IP_ADAPTER_SCALE,
    MIN_LORA_SCALE,
    NO_ADAPTER,
    GenerationRequest,
    RequestLimits,
    check_request,
    size_rules_of,
)

# Live previews: the linear map is cheap, so every step gets one; the tiny decoder (TAESD, when the folder has one)
# draws sharper ones but runs inside the generation, so only every few steps.
PREVIEW_INTERVALS = {"linear": 1, "taesd": 3}

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationUpdate:
    """What `GenerationRunner.stream` yields: one update after each denoising step, then the result."""

    done: int  # the denoising steps done
    total: int  # the steps that run (`GenerationRequest.denoising_steps`)
    seed: int  # the seed used
    image: object = None  # the step's preview (a PIL image of the request's size; None: none this step), or the result
    final: bool = False  # True for the last update: `image` is the result
    summary: str | None = None  # the last update's timings (`PerformanceMetrics.summary()`; None for other pipelines)
    status: str | None = None  # what runs before the first step when it takes a while ("Compiling the transformer ...")


def is_openvino_pipeline(pipeline) -> bool:
    """True for our `OVStableDiffusion3Pipeline` (and its image pipelines): they take `taylorseer=` and switch LoRA
    adapters at run time. diffusers' pipeline gets neither in the demo."""
    from ..runtime.pipeline import OVStableDiffusion3Pipeline

    return isinstance(pipeline, OVStableDiffusion3Pipeline)


def controlnet_pipeline_of(pipeline):
    """`pipeline` if it is an `OVStableDiffusion3ControlNetPipeline` the ControlNet tab can serve, else None. An
    inpainting ControlNet pipeline (its call needs a mask) gets no tab, with a warning."""
    from ..runtime.controlnet_pipelines import (
        OVStableDiffusion3ControlNetInpaintingPipeline,
        OVStableDiffusion3ControlNetPipeline,
    )

    if isinstance(pipeline, OVStableDiffusion3ControlNetInpaintingPipeline):
        logger.warning("The demo has no tab for ControlNet inpainting: load the ControlNet with `OVStableDiffusion3ControlNetPipeline`.")
        return None
    return pipeline if isinstance(pipeline, OVStableDiffusion3ControlNetPipeline) else None


def demo_pipelines(pipeline) -> dict:
    """The pipeline of each task the demo serves, by `TASKS` name, all sharing `pipeline`'s compiled models.

    For an `OVStableDiffusion3Pipeline` (or one of its image or ControlNet pipelines): text to image, and image to
    image and inpainting built with `from_pipe` (nothing compiles again; the VAE encoder is loaded once if `pipeline`
    lacks it), and "controlnet" when `pipeline` is an `OVStableDiffusion3ControlNetPipeline` (`controlnet_pipeline_of`).
    For another pipeline (diffusers'), text to image only; for a folder without `vae_encoder/`, no image to image nor
    inpainting, with a warning.
    """
    from ..runtime.controlnet_pipelines import OVStableDiffusion3ControlNetPipeline
    from ..runtime.image_pipelines import OVStableDiffusion3Img2ImgPipeline, OVStableDiffusion3InpaintPipeline
    from ..runtime.pipeline import OVStableDiffusion3Pipeline

    if not is_openvino_pipeline(pipeline):
        return {"text-to-image": pipeline}
    text_to_image = pipeline
    if isinstance(pipeline, (OVStableDiffusion3Img2ImgPipeline, OVStableDiffusion3ControlNetPipeline)):  # needs an image
        text_to_image = OVStableDiffusion3Pipeline.from_pipe(pipeline)
    controlnet = {"controlnet": pipeline} if controlnet_pipeline_of(pipeline) is not None else {}
    try:
        image_to_image = OVStableDiffusion3Img2ImgPipeline.from_pipe(pipeline)
        inpainting = OVStableDiffusion3InpaintPipeline.from_pipe(image_to_image)  # shares its VAE encoder
    except (OSError, ValueError) as error:  # no `vae_encoder/` in the folder, a transformer inpainting cannot use
        logger.warning("The demo offers no image to image nor inpainting: %s", error)
        return {"text-to-image": text_to_image, **controlnet}
    return {"text-to-image": text_to_image, "image-to-image": image_to_image, "inpainting": inpainting, **controlnet}


class LivePreviews:
    """The live previews of a generation's steps: the method, which steps get one, and drawing them. A preview
    never ends a generation: the first that fails turns the previews off (`method` None) with a warning.

    `pipeline` is ours (it has `preview_images`); with `enabled` False (diffusers' pipeline) there are none.
    """

    def __init__(self, pipeline, *, enabled: bool):
        self.method = self._warm(pipeline) if enabled else None  # "taesd", "linear", or None: no previews

    @staticmethod
    def _warm(pipeline) -> str | None:
        """The previews' method, made ready now so that no generation waits for it: "taesd" when the folder has a
        tiny decoder (`convert_preview_decoder`), else "linear" (the map is fitted here: one small VAE call, shared
        with the `from_pipe` pipelines), None when neither works."""
        from ..runtime.previews import PREVIEW_DECODER

        latents = np.zeros((1, pipeline.vae_decoder.config["latent_channels"], 8, 8), np.float32)  # (B, C, h, w)
        methods = ["taesd", "linear"] if (pipeline.model_dir / PREVIEW_DECODER).exists() else ["linear"]
        for method in methods:
            try:
                pipeline.preview_images(latents, method=method)
                return method
            except (OSError, ValueError, RuntimeError) as error:  # a damaged tiny decoder, a VAE that fails
                logger.warning("No %s previews in the demo: %s", method, error)
        return None

    def for_step(self, pipe, latents, *, size: tuple[int, int], done: int, total: int) -> Callable | None:
        """What draws step `done`'s preview at `size` (width, height) when called, from any thread, outside the
        generation's lock; None when this step gets none. The linear map's holds a copy of the step's latents; the
        tiny decoder's is drawn here, in the step (it runs on the shared infer requests), every
        `PREVIEW_INTERVALS["taesd"]` steps and at the last."""
        method = self.method
        if method is None or (done % PREVIEW_INTERVALS[method] and done != total):
            return None
        if method == "linear":  # a copy (the loop may reuse its array; numpy or torch), mapped later, outside the lock
            latents = as_array(latents).copy()
            return lambda: pipe.preview_images(latents, size=size)[0]
        try:
            image = pipe.preview_images(latents, method=method, size=size)[0]
        except (OSError, ValueError, RuntimeError) as error:
            self._failed(error)
            return None
        return lambda: image

    def draw(self, draw: Callable):
        """`draw()`, or None if it fails (the previews are then off)."""
        try:
            return draw()
        except (OSError, ValueError, TypeError, RuntimeError) as error:
            self._failed(error)
            return None

    def _failed(self, error: Exception) -> None:
        logger.warning("Live previews are off from now on: %s", error)
        self.method = None


class GenerationRunner:
    """Runs the demo's pipelines: checks the request, one generation at a time, progress, live previews, and stop.

    `pipeline` serves text to image; `image_to_image`, `inpainting` and `controlnet` (optional) are pipelines that share
    its compiled models (see `demo_pipelines`), so one lock serves them all. The LoRA adapters and the IP-Adapter belong
    to those shared models too: a request's adapter choice and image prompt scale are set under the same lock, just
    before its generation, and stay set after it.
    """

    def __init__(
        self,
        pipeline,
        *,
        image_to_image=None,
        inpainting=None,
        controlnet=None,
        max_inference_steps: int = MAX_INFERENCE_STEPS,
    ):
        self.pipeline = pipeline
        candidates = {
            "text-to-image": pipeline, "image-to-image": image_to_image, "inpainting": inpainting, "controlnet": controlnet
        }  # fmt: skip
        self.pipelines = {task: pipe for task, pipe in candidates.items() if pipe is not None}
        self.size_rules = size_rules_of(pipeline)
        self.max_inference_steps = max_inference_steps
        self.openvino = is_openvino_pipeline(pipeline)  # the step cache, run-time LoRA adapters and previews
        self.lock = threading.Lock()  # the compiled models hold one infer request each: never run two calls at once
        self._stop = threading.Event()
        self._owner: str | None = None  # who started the running generation (a Gradio session)
        self.previews = LivePreviews(pipeline, enabled=self.openvino)

    @property
    def preview_method(self) -> str | None:
        """The live previews' method: "taesd", "linear", or None (diffusers' pipeline, or previews that failed)."""
        return self.previews.method

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

    @property
    def ip_adapter(self):
        """The IP-Adapter loaded into the pipeline (`pipe.ip_adapter`, shared by its `from_pipe` pipelines), or None."""
        return getattr(self.pipeline, "ip_adapter", None) if self.openvino else None

    def ip_adapter_scale(self) -> float:
        """The loaded IP-Adapter's scale now, within the image prompt scale slider's ends (0.0 without one)."""
        if self.ip_adapter is None:
            return MIN_IP_ADAPTER_SCALE
        return min(max(self.ip_adapter.scale, MIN_IP_ADAPTER_SCALE), MAX_IP_ADAPTER_SCALE)

    def limits(self) -> RequestLimits:
        """What a request may ask for now: this runner's tasks, sizes and steps, and the adapters loaded now."""
        return RequestLimits(
            tasks=self.tasks,
            size_rules=self.size_rules,
            max_inference_steps=self.max_inference_steps,
            step_cache=self.openvino,
            pipeline_name=type(self.pipeline).__name__,
            adapters=tuple(self.adapters),
            controlnets=len(self.pipelines["controlnet"].controlnets) if "controlnet" in self.pipelines else 0,
            ip_adapter=self.ip_adapter is not None,
        )

    def check(self, **fields) -> GenerationRequest:
        """The request with every field checked (`check_request`'s keyword arguments: prompt, negative_prompt, seed,
        randomize_seed, width, height, guidance_scale, num_inference_steps, task, image, mask_image, strength,
        fast, adapter, lora_scale, ControlNet's preprocessor, controlnet_conditioning_scale, control_guidance_start,
        control_guidance_end, and IP-Adapter's ip_adapter_image, ip_adapter_scale); a ValueError or TypeError names
        the first bad field."""
        return check_request(self.limits(), **fields)

    def generate(self, *, on_step: Callable[[int, int], None] | None = None, owner: str | None = None, **fields):
        """Generate one image; return `(image, seed used)`. `fields` are the request's fields, the keyword
        arguments of `check`; bad input raises a ValueError or TypeError at once.

        `on_step(done, total)` is called after every denoising step (`total` counts the steps that run: fewer
        than `num_inference_steps` at a strength below 1). Waits while another generation runs.
        """
        request = self.check(**fields)
        report = None if on_step is None else lambda done, total, draw: on_step(done, total)
        image, _ = self._run(request, on_step=report, owner=owner)
        return image, request.seed

    def stream(self, *, owner: str | None = None, **fields) -> Iterator[GenerationUpdate]:
        """Generate one image as `generate` does, reporting as it goes: a `GenerationUpdate` after every denoising
        step, with the step's live preview when there is one, then the result (`final`). Bad input raises at once.

        The generation runs in a thread of its own. The previews are drawn here, in the caller's thread and outside
        the lock; a step whose successor is already done gets none, so a slow reader sees the latest. Closing the
        iterator early (its reader is gone) stops the generation after its current step.
        """
        request = self.check(**fields)
        updates = queue.SimpleQueue()  # ("status", text), ("step", done, total, draw) per step, then ("result", ...) / ("error", error)
        cancelled = threading.Event()

        def on_step(done: int, total: int, draw: Callable | None) -> None:
            updates.put(("step", done, total, draw))

        def on_status(text: str) -> None:
            updates.put(("status", text))

        def work() -> None:
            try:
                result = self._run(request, on_step=on_step, on_status=on_status, owner=owner, previews=True, cancelled=cancelled)
                updates.put(("result", *result))
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
                    image, summary = payload
                    yield GenerationUpdate(done=done, total=total, seed=request.seed, image=image, final=True, summary=summary)
                    return
                if kind == "status":
                    yield GenerationUpdate(done=done, total=total, seed=request.seed, status=payload[0])
                    continue
                done, total, draw = payload
                image = None if draw is None or not updates.empty() else self.previews.draw(draw)
                yield GenerationUpdate(done=done, total=total, seed=request.seed, image=image)
        finally:
            cancelled.set()  # nobody reads on: stop after the current step (nothing to stop once the result is in)

    def _run(
        self,
        request: GenerationRequest,
        *,
        on_step: Callable | None = None,
        on_status: Callable[[str], None] | None = None,
        owner: str | None = None,
        previews: bool = False,
        cancelled: threading.Event | None = None,
    ):
        """Generate the checked `request`, one generation at a time; return the image and the call's timings
        (`PerformanceMetrics.summary()` of our pipelines, None for others).

        `on_step(done, total, draw)` is called after every denoising step. With `previews`, `draw` (else None) makes
        the step's preview when called (`LivePreviews.for_step`). `on_status(text)` hears what runs before the first
        step when it takes a while (our pipelines compiling for a new size). `cancelled`, once set, stops the
        generation after its current step.
        """
        import torch

        size = (request.width, request.height)

        def on_step_end(pipe, step: int, timestep, callback_kwargs: dict) -> dict:
            done, total = step + 1, request.denoising_steps
            if on_step is not None:
                draw = None
                if previews:
                    draw = self.previews.for_step(pipe, callback_kwargs["latents"], size=size, done=done, total=total)
                on_step(done, total, draw)
            if self._stop.is_set() or (cancelled is not None and cancelled.is_set()):
                pipe._interrupt = True
            return callback_kwargs

        with self.lock:
            self._stop.clear()
            self._owner = owner
            pipeline = self.pipelines[request.task]
            if self.openvino:
                pipeline.on_compile = on_status  # the shared models compile for a new size: say so
            try:
                self._apply_adapter(request)
                if request.ip_adapter_scale is not None:  # the adapter is shared: setting it on one pipeline sets it on all
                    self.pipeline.set_ip_adapter_scale(request.ip_adapter_scale)
                image = pipeline(
                    **request.pipeline_arguments(),
                    generator=torch.Generator().manual_seed(request.seed),
                    callback_on_step_end=on_step_end,
                ).images[0]
                return image, (pipeline.get_performance_metrics().summary() if self.openvino else None)
            finally:
                self._owner = None
                if self.openvino:
                    pipeline.on_compile = None

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
