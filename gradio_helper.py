"""An interactive Gradio demo for Stable Diffusion 3 with OpenVINO: text to image, image to image, inpainting, and
ControlNet when the pipeline has ControlNets, and an image prompt when it has an IP-Adapter.

    from gradio_helper import make_demo

    demo = make_demo(pipeline)  # an `OVStableDiffusion3Pipeline` (or diffusers' `StableDiffusion3Pipeline`)
    demo.launch()  # inline in Jupyter; `demo.close()` stops it

The three tabs share one set of compiled models (`from_pipe`; diffusers' pipeline gets the text tab only). Given an
`OVStableDiffusion3ControlNetPipeline`, the demo adds a "ControlNet" tab (an upload, a preprocessor such as canny
edges with a live preview of the control image, the ControlNet's scale and guidance window), sharing the same models.
Given a pipeline with an IP-Adapter loaded (`pipe.load_ip_adapter`), every tab shows an optional "Image prompt
(IP-Adapter)" upload and an "Image prompt scale" slider.
Compiled OpenVINO models are not re-entrant, so the demo runs one generation at a time, whichever tab asks, and
queues the other requests. Every field is checked before anything runs, and bad input becomes a readable `gr.Error`
that names the field, its value and the fix. The denoising steps show as a progress bar, and the Stop button
ends the running generation after its current step. On our pipelines the result area shows a live preview of each
step (`pipe.preview_images`) until the final image replaces it, and the advanced settings also offer the step cache
("Fast") and, when LoRA adapters are loaded (`pipe.load_lora_weights`), the adapter and its scale.

Standalone: `python gradio_helper.py MODEL_DIR [--device CPU] [--port N] [--share] [--lora PATH[:SCALE] ...]
[--controlnet DIR ...] [--ip-adapter PATH]` serves on 127.0.0.1 only. User mistakes (no model folder, a port in use, a file that is no LoRA) exit with status 2 and one
`error: ...` line.

The code lives in `sd3_openvino/demo/`: `checks` (the request and its checks), `runner` (`GenerationRunner`),
`handlers` (the events), `ui` (`make_demo`) and `cli` (`main`). Importing this file loads neither gradio nor torch.
"""

import sys

from sd3_openvino.demo.checks import (
    CONTROL_PREPROCESSOR,
    CONTROLNET_SCALE,
    FAST_STEP_CACHE,
    INPAINTING_STRENGTH,
    MAX_GUIDANCE_SCALE,
    MAX_CONTROLNET_SCALE,
    MAX_INFERENCE_STEPS,
    MAX_IP_ADAPTER_SCALE,
    MAX_LORA_SCALE,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    MIN_IP_ADAPTER_SCALE,
    MIN_LORA_SCALE,
    NO_ADAPTER,
    PAINT_THE_MASK,
    TASKS,
    GenerationRequest,
    RequestLimits,
    check_request,
    control_preview,
    fit_size,
    image_and_mask_from_editor,
    make_control_image,
    size_rules_of,
)
from sd3_openvino.demo.cli import (
    DEFAULT_PORT,
    LORA_SUFFIXES,
    PORTS_TO_TRY,
    UsageError,
    check_controlnet_dirs,
    check_ip_adapter_path,
    check_lora_arguments,
    check_model_dir,
    choose_port,
    load_ip_adapter,
    load_pipeline,
    main,
    port_is_free,
    serve,
)
from sd3_openvino.demo.handlers import DemoHandlers
from sd3_openvino.demo.runner import (
    PREVIEW_INTERVALS,
    GenerationRunner,
    GenerationUpdate,
    LivePreviews,
    controlnet_pipeline_of,
    demo_pipelines,
    is_openvino_pipeline,
)
from sd3_openvino.demo.ui import (
    API_NAMES,
    ELEM_ID_PREFIXES,
    EXAMPLE_PROMPTS,
    GENERATION_EVENT,
    MAX_FILE_SIZE_MB,
    TAB_LABELS,
    ControlDefaults,
    make_demo,
)

__all__ = [
    "API_NAMES",
    "CONTROLNET_SCALE",
    "CONTROL_PREPROCESSOR",
    "DEFAULT_PORT",
    "ELEM_ID_PREFIXES",
    "EXAMPLE_PROMPTS",
    "FAST_STEP_CACHE",
    "GENERATION_EVENT",
    "INPAINTING_STRENGTH",
    "LORA_SUFFIXES",
    "MAX_CONTROLNET_SCALE",
    "MAX_FILE_SIZE_MB",
    "MAX_GUIDANCE_SCALE",
    "MAX_INFERENCE_STEPS",
    "MAX_IP_ADAPTER_SCALE",
    "MAX_LORA_SCALE",
    "MAX_PROMPT_CHARS",
    "MAX_SEED",
    "MIN_IP_ADAPTER_SCALE",
    "MIN_LORA_SCALE",
    "NO_ADAPTER",
    "PAINT_THE_MASK",
    "PORTS_TO_TRY",
    "PREVIEW_INTERVALS",
    "TAB_LABELS",
    "TASKS",
    "ControlDefaults",
    "DemoHandlers",
    "GenerationRequest",
    "GenerationRunner",
    "GenerationUpdate",
    "LivePreviews",
    "RequestLimits",
    "UsageError",
    "check_controlnet_dirs",
    "check_ip_adapter_path",
    "check_lora_arguments",
    "check_model_dir",
    "check_request",
    "choose_port",
    "control_preview",
    "controlnet_pipeline_of",
    "demo_pipelines",
    "fit_size",
    "image_and_mask_from_editor",
    "is_openvino_pipeline",
    "load_ip_adapter",
    "load_pipeline",
    "main",
    "make_control_image",
    "make_demo",
    "port_is_free",
    "serve",
    "size_rules_of",
]

if __name__ == "__main__":
    sys.exit(main())
