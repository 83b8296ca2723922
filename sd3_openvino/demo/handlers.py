"""What the demo's events do, between Gradio and a `GenerationRunner` (`DemoHandlers`), and the endpoints that
Gradio calls and reads its API from (`text_to_image_endpoints`, `image_endpoints`, `controlnet_endpoint`).

gradio is imported inside the functions that need it, so importing this module needs no UI library.
"""

import logging
from typing import Callable, Iterator

from .checks import control_preview, fit_size, image_and_mask_from_editor
from .runner import GenerationRunner

logger = logging.getLogger(__name__)


def _session_of(request) -> str | None:
    """The Gradio session that sent `request` (None for a call without one)."""
    return request.session_hash if request else None


class DemoHandlers:
    """What the demo's events do, between Gradio and a `GenerationRunner`: read the image fields, report the
    progress, turn bad input into a readable `gr.Error`, stop a generation, fit the size sliders to an upload, and
    preview the ControlNet tab's control image.

    `image_fields` holds each image tab's image component, by task (the UI's image tabs fill it), and
    `image_prompt_fields` each tab's IP-Adapter image prompt (with an IP-Adapter loaded): the Run events have
    `preprocess=False`, so `run` asks the component itself to read what the page sent.
    """

    def __init__(self, runner: GenerationRunner):
        self.runner = runner
        self.image_fields: dict = {}
        self.image_prompt_fields: dict = {}

    @staticmethod
    def read_payload(component, payload, *, name: str):
        """A file field's payload as `component`'s own preprocessing gives it (the events have `preprocess=False`).
        The page sends the image editor's images ahead and only their id with the event; the component finds them."""
        if payload is None:
            return None
        try:
            return component.preprocess(component.data_model.model_validate(payload))
        except (OSError, ValueError) as error:  # not an image file
            raise ValueError(f"`{name}` could not be read as an image ({type(error).__name__}).") from error

    def run(self, task: str, request, progress, **fields) -> Iterator[tuple]:
        """Generate for `task` with the event's `fields`, yielding `(image, seed used)`: the live preview of each
        step while the progress bar follows the steps (after a status, such as compiling for a new size), then the result (an API client's result: the last value), with
        the call's timings in a notice (`PerformanceMetrics.summary()`, our pipelines only); or raise a `gr.Error`."""
        import gradio as gr

        try:
            if task in ("image-to-image", "controlnet"):
                fields["image"] = self.read_payload(self.image_fields[task], fields["image"], name="image")
            elif task == "inpainting":
                editor_value = self.read_payload(self.image_fields[task], fields["image"], name="image_and_mask")
                fields["image"], fields["mask_image"] = image_and_mask_from_editor(editor_value)
            if fields.get("ip_adapter_image") is not None and task in self.image_prompt_fields:
                prompt_field = self.image_prompt_fields[task]
                fields["ip_adapter_image"] = self.read_payload(prompt_field, fields["ip_adapter_image"], name="ip_adapter_image")
            for update in self.runner.stream(task=task, owner=_session_of(request), **fields):
                if update.status is not None:  # compiling for a new size: tens of seconds before the first step
                    progress((0, update.total), desc=update.status, unit="steps")
                    continue
                if update.summary is not None:  # the result's: "28 steps in 41.2 s (1.47 s/step), ..."
                    gr.Info(update.summary, title="Generated")
                if update.image is not None:
                    yield update.image, update.seed
                if not update.final:  # after the preview: the page shows the step count over it until the next one
                    progress((update.done, update.total), desc="Denoising", unit="steps")
        except (ValueError, TypeError) as error:
            raise gr.Error(str(error), title="Invalid input", print_exception=False) from error
        except Exception as error:  # an OpenVINO or memory error: say what failed instead of a bare "Error"
            logger.exception("Generation failed")
            raise gr.Error(f"Generation failed ({type(error).__name__}: {error}). See the server log.") from error

    def control_preview(self, image, preprocessor: str, width, height):
        """The ControlNet tab's live preview (`control_preview`): the control image a Run would give the ControlNet
        now, None without an upload; a bad choice or size is a readable `gr.Error`."""
        import gradio as gr

        try:
            return control_preview(image, preprocessor=preprocessor, width=width, height=height, size_rules=self.runner.size_rules)
        except (ValueError, TypeError) as error:
            raise gr.Error(str(error), title="Invalid input", print_exception=False) from error

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
# gradio when the function is defined, and this module imports gradio only when a demo is built, so the
# endpoints are defined in these two functions and pass everything on to `DemoHandlers`. They are generators
# (`yield from`): Gradio streams what they yield (the previews, then the result) and gives API clients the last
# value. The options after the required inputs (`fast`, `adapter`, `lora_scale`) have defaults: a demo without the
# matching controls passes fewer inputs (`fast` None: the pipeline's default, the step cache on for ours). The image
# prompt (`ip_adapter_image`, `ip_adapter_scale`) comes by name (`inputs_kwargs`), and only with an IP-Adapter loaded.


def text_to_image_endpoints(handlers: DemoHandlers) -> dict:
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
        fast: bool | None = None,
        adapter: str | None = None,
        lora_scale: float = 1.0,
        ip_adapter_image: dict | None = None,
        ip_adapter_scale: float | None = None,
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
            ip_adapter_image=ip_adapter_image,
            ip_adapter_scale=ip_adapter_scale,
        )

    def stop(request: gr.Request) -> None:
        handlers.stop(request)

    return {"text-to-image": generate, "stop": stop}


def image_endpoints(handlers: DemoHandlers) -> dict:
    """`/image_to_image` and `/inpaint`, by task: an image (an image editor's value for inpainting), then
    `/generate`'s inputs up to the steps, then strength, then the options (fast, adapter, LoRA scale, image prompt)."""
    return {"image-to-image": _image_to_image_endpoint(handlers), "inpainting": _inpaint_endpoint(handlers)}


def _image_to_image_endpoint(handlers: DemoHandlers) -> Callable:
    """`/image_to_image`: the image to restyle, then `/generate`'s inputs up to the steps, strength, the options."""
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
        fast: bool | None = None,
        adapter: str | None = None,
        lora_scale: float = 1.0,
        ip_adapter_image: dict | None = None,
        ip_adapter_scale: float | None = None,
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
            ip_adapter_image=ip_adapter_image,
            ip_adapter_scale=ip_adapter_scale,
        )

    return image_to_image


def _inpaint_endpoint(handlers: DemoHandlers) -> Callable:
    """`/inpaint`: an image editor's value (the image, the painted layers), then `/generate`'s inputs up to the
    steps, strength, the options."""
    import gradio as gr

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
        fast: bool | None = None,
        adapter: str | None = None,
        lora_scale: float = 1.0,
        ip_adapter_image: dict | None = None,
        ip_adapter_scale: float | None = None,
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
            ip_adapter_image=ip_adapter_image,
            ip_adapter_scale=ip_adapter_scale,
        )

    return inpaint


def controlnet_endpoint(handlers: DemoHandlers) -> Callable:
    """`/controlnet`: the image the control image is made from and the preprocessor (`CONTROL_PREPROCESSORS`), then
    `/generate`'s inputs up to the steps, the ControlNet scale and its window (start, end), the options."""
    import gradio as gr

    def controlnet(
        image: dict | None,
        preprocessor: str,
        prompt: str,
        negative_prompt: str,
        seed: float,
        randomize_seed: bool,
        width: float,
        height: float,
        guidance_scale: float,
        num_inference_steps: float,
        controlnet_conditioning_scale: float,
        control_guidance_start: float,
        control_guidance_end: float,
        fast: bool | None = None,
        adapter: str | None = None,
        lora_scale: float = 1.0,
        ip_adapter_image: dict | None = None,
        ip_adapter_scale: float | None = None,
        request: gr.Request = None,
        progress=gr.Progress(),
    ):
        yield from handlers.run(
            "controlnet",
            request,
            progress,
            image=image,
            preprocessor=preprocessor,
            prompt=prompt,
            negative_prompt=negative_prompt,
            seed=seed,
            randomize_seed=randomize_seed,
            width=width,
            height=height,
            guidance_scale=guidance_scale,
            num_inference_steps=num_inference_steps,
            controlnet_conditioning_scale=controlnet_conditioning_scale,
            control_guidance_start=control_guidance_start,
            control_guidance_end=control_guidance_end,
            fast=fast,
            adapter=adapter,
            lora_scale=lora_scale,
            ip_adapter_image=ip_adapter_image,
            ip_adapter_scale=ip_adapter_scale,
        )

    return controlnet
