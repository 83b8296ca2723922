"""The demo's Gradio UI: `make_demo(pipeline)` builds a `gr.Blocks` with a tab per task (text to image, image to
image, inpainting, and ControlNet for a ControlNet pipeline), each made of small parts (the prompt row, the advanced
settings, the options, the image field, the image prompt of an IP-Adapter).

gradio is imported inside the functions that build the UI, so importing this module needs no UI library.

API endpoints (outputs: image, seed used, streamed: the previews, then the result, which is what `gradio_client`'s
`predict` returns; Stop: `/stop`):
- `/generate`: prompt, negative prompt, seed, randomize seed, width, height, guidance scale, steps, then the
  options: fast (our pipelines), adapter and LoRA scale (with adapters loaded).
- `/image_to_image`: image, then `/generate`'s inputs up to the steps, then strength, then the options.
- `/inpaint`: a `gr.ImageEditor` value `{"background": image, "layers": [painted layers], "composite": ...}`
  (the layers' painted, non-transparent pixels are the area to repaint), then `/generate`'s inputs up to the
  steps, then strength, then the options.
- `/controlnet` (a ControlNet pipeline only): the image the control image is made from, the preprocessor (one of
  `CONTROL_PREPROCESSORS`: "canny", "blur", "depth", "none"), then `/generate`'s inputs up to the steps, then the
  ControlNet scale, guidance start and guidance end, then the options.
The options may be left out (the controls' initial values are used). With an IP-Adapter loaded, every endpoint also takes
`ip_adapter_image` (an image file, or None: no image prompt) and `ip_adapter_scale` (0 to 1) after the options, by
name, or positionally right after the options the demo shows. The inputs reach `GenerationRunner.check`
as sent (Gradio's own conversion is off), so a bad value from an API client gets the same named error as one
from the page.
"""

import contextlib
from dataclasses import dataclass
from typing import Callable

from ..core.layout import GENERATION_DEFAULTS, SizeRules
from .checks import (
    CONTROL_PREPROCESSOR,
    CONTROL_PREPROCESSORS,
    CONTROLNET_SCALE,
    INPAINTING_STRENGTH,
    MAX_CONTROLNET_SCALE,
    MAX_GUIDANCE_SCALE,
    MAX_INFERENCE_STEPS,
    MAX_IP_ADAPTER_SCALE,
    MAX_LORA_SCALE,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    MIN_IP_ADAPTER_SCALE,
    MIN_LORA_SCALE,
    NO_ADAPTER,
)
from .handlers import DemoHandlers, controlnet_endpoint, image_endpoints, text_to_image_endpoints
from .runner import GenerationRunner, demo_pipelines

EXAMPLE_PROMPTS = (
    "A raccoon trapped inside a glass jar full of colorful candies, the background is steamy with vivid colors",
    "a photo of a cat holding a sign that says hello world",
    "an astronaut riding a horse on the moon, digital art",
    "a watercolor painting of a lighthouse at sunset",
    "a cozy cabin in the snowy mountains, warm light in the windows",
)
MAX_FILE_SIZE_MB = 50  # the largest upload `python gradio_helper.py` accepts (`--max-file-size`); gradio has no limit
TAB_LABELS = {
    "text-to-image": "Text to image", "image-to-image": "Image to image", "inpainting": "Inpainting", "controlnet": "ControlNet"
}  # fmt: skip
API_NAMES = {"text-to-image": "generate", "image-to-image": "image_to_image", "inpainting": "inpaint", "controlnet": "controlnet"}
ELEM_ID_PREFIXES = {
    "text-to-image": "", "image-to-image": "image-to-image-", "inpainting": "inpainting-", "controlnet": "controlnet-"
}  # fmt: skip
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
    ip_adapter_scale: float | None = None  # the IP-Adapter's scale when the demo is built; None: no IP-Adapter, no image prompt


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
                value=True,  # on, as our pipelines' default (and openvino.genai's); off gives diffusers' image
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


def _image_prompt(task: str, *, handlers: DemoHandlers, defaults: ControlDefaults) -> dict:
    """With an IP-Adapter loaded, the image prompt over its scale, in a column of the tab's image row, by the name of
    the endpoints' parameter (the Run event passes them by name: `inputs_kwargs`); {} without one."""
    import gradio as gr

    if defaults.ip_adapter_scale is None:
        return {}
    prefix = ELEM_ID_PREFIXES[task]
    with gr.Column():
        image = handlers.image_prompt_fields[task] = gr.Image(
            label="Image prompt (IP-Adapter)",
            type="pil",
            sources=["upload", "clipboard"],
            elem_id=f"{prefix}ip-adapter-image",
        )
        scale = gr.Slider(
            label="Image prompt scale",
            info="How strongly the image prompt conditions the image: 0 ignores it, 1 is the adapter's full weight",
            minimum=MIN_IP_ADAPTER_SCALE,
            maximum=MAX_IP_ADAPTER_SCALE,
            step=0.05,
            value=defaults.ip_adapter_scale,
            elem_id=f"{prefix}ip-adapter-scale",
        )
    return {"ip_adapter_image": image, "ip_adapter_scale": scale}


def _image_field(task: str):
    """The image to restyle (image to image), the image to make the control image from (ControlNet), or the image
    editor to paint the mask on (inpainting)."""
    import gradio as gr

    elem_id = f"{ELEM_ID_PREFIXES[task]}image"
    if task in ("image-to-image", "controlnet"):
        label = "Image" if task == "image-to-image" else "Image: the control image is made from it"
        return gr.Image(label=label, type="pil", sources=["upload", "clipboard"], elem_id=elem_id)
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


def _on_run(
    task: str, fn: Callable, *, prompt, run_button, inputs: list, outputs: list, previews: bool, image_prompt: dict
):
    """Run `fn` on Run or Enter in the prompt, in the queue that every tab shares; returns the event. `inputs` go
    by position, the `image_prompt` controls (`_image_prompt`) by name. With live `previews`, the progress shows as a
    bar and a step count over them ("minimal"), not as a cover that hides them."""
    import gradio as gr

    return gr.on(
        triggers=[run_button.click, prompt.submit],
        fn=fn,
        inputs=inputs,
        inputs_kwargs=image_prompt or None,
        outputs=outputs,
        api_name=API_NAMES[task],
        show_progress="minimal" if previews else "full",
        **GENERATION_EVENT,
    )


def _text_to_image_tab(generate: Callable, *, handlers: DemoHandlers, examples: list[str], defaults: ControlDefaults) -> tuple:
    """The text to image controls and their Run event; returns (the event, the Stop button)."""
    import gradio as gr

    task = "text-to-image"
    prompt, run_button, stop_button = _prompt_row(task)
    with gr.Row(equal_height=True) if defaults.ip_adapter_scale is not None else contextlib.nullcontext():
        image_prompt = _image_prompt(task, handlers=handlers, defaults=defaults)
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
        image_prompt=image_prompt,
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
        image_prompt = _image_prompt(task, handlers=handlers, defaults=defaults)
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
        image_prompt=image_prompt,
    )
    return event, stop_button


def _control_settings(task: str) -> list:
    """The ControlNet scale and the fractions of the steps it acts between (start, end), in one row."""
    import gradio as gr

    prefix = ELEM_ID_PREFIXES[task]
    with gr.Row():
        scale = gr.Slider(
            label="ControlNet scale",
            info="How closely to follow the control image: 0 ignores it",
            minimum=0.0,
            maximum=MAX_CONTROLNET_SCALE,
            step=0.05,
            value=CONTROLNET_SCALE,
            elem_id=f"{prefix}scale",
        )
        fraction = dict(minimum=0.0, maximum=1.0, step=0.05)
        start = gr.Slider(label="Guidance start", info="The share of the steps before it acts", value=0.0, **fraction)
        end = gr.Slider(label="Guidance end", info="The share of the steps after which it stops", value=1.0, **fraction)
    return [scale, start, end]


def _connect_control_preview(handlers: DemoHandlers, *, image, preprocessor, size: list, preview) -> None:
    """Show the control image a Run would use (`DemoHandlers.control_preview`) whenever the upload, the preprocessor or
    the size changes (an upload changes all three: it fits the size sliders too)."""
    import gradio as gr

    gr.on(
        triggers=[image.change, preprocessor.change, *(slider.change for slider in size)],
        fn=handlers.control_preview,
        inputs=[image, preprocessor, *size],
        outputs=preview,
        queue=False,
        api_name=False,
        show_progress="hidden",
        trigger_mode="always_last",
    )


def _controlnet_tab(fn: Callable, *, handlers: DemoHandlers, defaults: ControlDefaults) -> tuple:
    """The ControlNet tab: an upload, the preprocessor and the live preview of the control image it makes, the result,
    the ControlNet's settings, and the usual prompt and settings; returns (the Run event, the Stop button)."""
    import gradio as gr

    task = "controlnet"
    prefix = ELEM_ID_PREFIXES[task]
    prompt, run_button, stop_button = _prompt_row(task)
    with gr.Row(equal_height=True):
        image = handlers.image_fields[task] = _image_field(task)
        preview = gr.Image(label="Control image", type="pil", format="png", interactive=False, elem_id=f"{prefix}control-image")
        image_prompt = _image_prompt(task, handlers=handlers, defaults=defaults)
        result = _result_image(task)
    preprocessor = gr.Radio(
        label="Preprocessor",
        info="What the ControlNet reads: canny edges, a blur (tile/blur ControlNets), a depth map you upload, or the upload itself",
        choices=list(CONTROL_PREPROCESSORS),
        value=CONTROL_PREPROCESSOR,
        elem_id=f"{prefix}preprocessor",
    )
    control_settings = _control_settings(task)
    settings, options = _advanced_settings(task, defaults)
    used_seed = _used_seed_box(task)
    size = [settings[3], settings[4]]
    image.upload(fn=handlers.fit_sliders, inputs=image, outputs=size, queue=False, api_name=False, show_progress="hidden")
    _connect_control_preview(handlers, image=image, preprocessor=preprocessor, size=size, preview=preview)
    event = _on_run(
        task,
        fn,
        prompt=prompt,
        run_button=run_button,
        inputs=[image, preprocessor, prompt, *settings, *control_settings, *options],
        outputs=[result, used_seed],
        previews=defaults.previews,
        image_prompt=image_prompt,
    )
    return event, stop_button


def _connect_stop_buttons(buttons: list, *, stop: Callable, events: list) -> None:
    """Each Stop ends this session's generation, whichever tab; one `/stop` endpoint serves every tab."""
    for index, button in enumerate(buttons):
        api_name = "stop" if index == 0 else False
        button.click(fn=stop, inputs=None, outputs=None, cancels=events, queue=False, api_name=api_name)


def _control_defaults(
    runner: GenerationRunner,
    *,
    height: int | None,
    width: int | None,
    num_inference_steps: int,
    guidance_scale: float,
    max_inference_steps: int,
) -> ControlDefaults:
    """The controls' initial values: `make_demo`'s arguments (sizes snapped to ones the model accepts, the
    model's native size by default) and what `runner`'s pipeline offers (step cache, adapters, previews, IP-Adapter)."""
    rules = runner.size_rules
    return ControlDefaults(
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
        ip_adapter_scale=runner.ip_adapter_scale() if runner.ip_adapter is not None else None,
    )


def _task_tabs(pipelines: dict, *, handlers: DemoHandlers, examples: list[str], defaults: ControlDefaults) -> None:
    """A tab per task of `pipelines` (no tabs for text to image alone), each with its Run event and its Stop button;
    every Stop button stops this session's generation, whichever tab started it."""
    import gradio as gr

    endpoints = {**text_to_image_endpoints(handlers), **image_endpoints(handlers), "controlnet": controlnet_endpoint(handlers)}
    several_tabs = len(pipelines) > 1
    with gr.Tabs() if several_tabs else contextlib.nullcontext():
        with gr.Tab(TAB_LABELS["text-to-image"], id="text-to-image") if several_tabs else contextlib.nullcontext():
            tabs = [_text_to_image_tab(endpoints["text-to-image"], handlers=handlers, examples=examples, defaults=defaults)]
        for task in [task for task in pipelines if task != "text-to-image"]:
            with gr.Tab(TAB_LABELS[task], id=task):
                if task == "controlnet":
                    tabs.append(_controlnet_tab(endpoints[task], handlers=handlers, defaults=defaults))
                else:
                    strength = _initial_strength(task, pipelines[task])
                    tabs.append(_image_tab(task, endpoints[task], handlers=handlers, strength=strength, defaults=defaults))
    events, stop_buttons = ([*column] for column in zip(*tabs))
    _connect_stop_buttons(stop_buttons, stop=endpoints["stop"], events=events)


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
    image" and "Inpainting" (text to image only for a pipeline that is not ours; see `demo_pipelines`), and
    "ControlNet" when `pipeline` is an `OVStableDiffusion3ControlNetPipeline` (the other tabs then run plain pipelines
    made from it with `from_pipe`).

    The tabs share one set of compiled models (`from_pipe`) and one queue: one generation at a time, whichever
    tab asks. `examples` are prompts to offer (default: `EXAMPLE_PROMPTS`). `height`, `width` (default: the
    model's native size), `num_inference_steps` and `guidance_scale` are the initial values of each tab's
    controls. The size sliders step by the model's size multiple and stop at its largest size.

    On the image tabs the image is resized to the width and height of the sliders, as diffusers does. Uploading
    an image sets those sliders to the image's own size scaled down to the model's native area and snapped to
    sizes it accepts (`fit_size`): the result keeps the image's aspect ratio, and the user sees the size and
    can change it before pressing Run. Strength starts at the image to image pipeline's default (diffusers') and
    at `INPAINTING_STRENGTH` (1.0 for a 33-channel inpainting transformer) for inpainting.

    The ControlNet tab makes the control image from an upload with a preprocessor (`CONTROL_PREPROCESSORS`, canny
    at first) and shows it as it changes: the upload cropped centrally to the size sliders' aspect ratio, resized to
    their size, then preprocessed (`make_control_image`), exactly what Run gives the ControlNet. An upload sets the
    sliders as on the image tabs. Its scale (`CONTROLNET_SCALE` at first) and its window (guidance start and end)
    apply to every ControlNet of the pipeline, and each gets the same control image.

    On our pipelines each tab's advanced settings have a "Fast (step cache)" switch, on by default as in the pipelines:
    on, the call gets `taylorseer=FAST_STEP_CACHE` (openvino.genai's default step cache), off `taylorseer=None`
    (diffusers' image). When `pipeline`
    has LoRA adapters loaded (`pipeline.get_list_adapters()`), they also have an adapter choice (`NO_ADAPTER` or a
    loaded adapter, at first the active one) and a LoRA scale (at first the active adapter's weight); each
    generation sets them with `set_adapters([adapter], [scale])`, or `disable_lora()` for `NO_ADAPTER`, in its turn
    in the queue. When `pipeline` has an IP-Adapter loaded (`pipeline.load_ip_adapter`), every tab has an optional
    "Image prompt (IP-Adapter)" upload, passed as `ip_adapter_image`, and an "Image prompt scale" (0 to 1, at first the
    adapter's scale), which each generation sets with `set_ip_adapter_scale` in its turn in the queue.

    While a generation runs, the result image shows the live preview of its latest step (our pipelines:
    `preview_images`, see `LivePreviews`), and the final image replaces it. diffusers' pipeline shows the final
    image only. The API endpoints are listed in this module's docstring.

    Gradio stores every upload, of any size, unless the demo is launched with a limit: pass one to `launch`, as
    `python gradio_helper.py` does (`demo.launch(max_file_size=f"{MAX_FILE_SIZE_MB}mb")`); gradio answers a larger
    upload with status 413. (gradio sets the limit in `launch`, so one set on the Blocks here would be replaced.)
    """
    import gradio as gr

    # 1. The pipeline of each task, all sharing one set of compiled models, and the runner that checks and runs them
    pipelines = demo_pipelines(pipeline)
    runner = GenerationRunner(
        pipelines["text-to-image"],
        image_to_image=pipelines.get("image-to-image"),
        inpainting=pipelines.get("inpainting"),
        controlnet=pipelines.get("controlnet"),
        max_inference_steps=max_inference_steps,
    )
    # 2. The controls' initial values
    defaults = _control_defaults(
        runner,
        height=height,
        width=width,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        max_inference_steps=max_inference_steps,
    )
    # 3. A tab per task, each with its Run event and its Stop button
    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        gr.Markdown(f"# {title}")
        examples = list(EXAMPLE_PROMPTS if examples is None else examples)
        _task_tabs(runner.pipelines, handlers=DemoHandlers(runner), examples=examples, defaults=defaults)
    return demo
