"""Small helpers for `stable-diffusion-v3.ipynb`: option widgets, model folders, the weight format comparison, timing,
the LoRA stand-ins of the tiny model, and the canny ControlNet and the IP-Adapter of each model.

The notebook's cells call these so that each cell stays a few lines long. The project's API itself lives in
`sd3_helper`; nothing here is needed to use it from your own code.
"""

import time
from dataclasses import dataclass
from pathlib import Path

TINY_MODEL_ID = "tiny"  # `model_id` value that builds and uses the offline tiny checkpoint
TINY_LORA_SEEDS = {"random_a": 1, "random_b": 2}  # the tiny model's stand-in LoRA adapters, by name: their seeds
# The canny ControlNet of each preset: (its hub id, the `make_tiny_sd3_controlnet` family of its tiny stand-in).
# SD3.5 Large Turbo has SD3.5 Large's architecture and gets its ControlNet (trained on SD3.5 Large); SD3.5 Medium has none.
CANNY_CONTROLNETS = {
    "sd3-medium": ("InstantX/SD3-Controlnet-Canny", "instantx"),
    "sd3.5-large": ("stabilityai/stable-diffusion-3.5-large-controlnet-canny", "sd3.5"),
    "sd3.5-large-turbo": ("stabilityai/stable-diffusion-3.5-large-controlnet-canny", "sd3.5"),
}
CONTROLNET_WEIGHT_FORMAT = {"int8-hybrid": "int8"}  # a ControlNet takes weight-only formats: int8-hybrid's gets int8 weights


@dataclass(frozen=True)
class IPAdapterSource:
    """What `pipe.load_ip_adapter` takes for one IP-Adapter: its first three arguments (see `ip_adapter_for`)."""

    source: str | Path  # a hub id, or a folder in InstantX's layout
    weight_name: str = "ip-adapter.safetensors"  # the weights file in `source`
    image_encoder_folder: str = "image_encoder"  # a folder in `source`, or the image encoder's own hub id or folder


# InstantX's adapter, trained on SD3.5 Large: its weights are a .bin file and its SigLIP image encoder is Google's checkpoint.
INSTANTX_IP_ADAPTER = IPAdapterSource(
    "InstantX/SD3.5-Large-IP-Adapter", weight_name="ip-adapter.bin", image_encoder_folder="google/siglip-so400m-patch14-384"
)
# The IP-Adapter of each preset. SD3.5 Large Turbo and TensorArt's TurboX have SD3.5 Large's architecture and get its
# adapter; SD3 Medium has no published one, and SD3.5 Medium's dual-attention blocks (its turbo variants' too) fit none.
IP_ADAPTERS = {key: INSTANTX_IP_ADAPTER for key in ("sd3.5-large", "sd3.5-large-turbo", "sd3.5-large-turbox")}
DUAL_ATTENTION_FAMILY = "sd3.5-medium"  # the `tiny_family` of the presets whose transformer has dual-attention blocks


# ----------------------------------------------------------------------------------------------------------
# Options as widgets
# ----------------------------------------------------------------------------------------------------------


@dataclass
class FixedOption:
    """Stands in for a widget where ipywidgets is not installed: it has the `value` it was given."""

    value: object
    description: str = ""


def checkbox(*, value: bool, description: str):
    """An `ipywidgets.Checkbox`, or a `FixedOption` holding `value` when ipywidgets is not installed.

    Without a widget front end (a headless run) nobody changes the widget, so `.value` stays `value`.
    """
    try:
        import ipywidgets as widgets
    except ImportError:
        return FixedOption(value=value, description=description)
    return widgets.Checkbox(value=value, description=description, style={"description_width": "initial"})


def dropdown(*, options: list[str], value: str, description: str):
    """An `ipywidgets.Dropdown`, or a `FixedOption` holding `value` when ipywidgets is not installed."""
    if value not in options:
        raise ValueError(f"`value` must be one of {options} but is {value!r}.")
    try:
        import ipywidgets as widgets
    except ImportError:
        return FixedOption(value=value, description=description)
    return widgets.Dropdown(options=options, value=value, description=description)


def device_widget(*, default: str = "CPU", description: str = "Device:"):
    """A dropdown of this machine's OpenVINO devices (`core.available_devices + ["AUTO"]`).

    `default` is selected if it is available here; otherwise "AUTO" is, with a warning.
    """
    import openvino as ov

    devices = ov.Core().available_devices + ["AUTO"]
    if default not in devices:
        print(f"Device {default!r} is not available here (found {devices}); using 'AUTO'.")
        default = "AUTO"
    return dropdown(options=devices, value=default, description=description)


# ----------------------------------------------------------------------------------------------------------
# Model folders
# ----------------------------------------------------------------------------------------------------------


def resolve_model_id(model_id: str | Path, *, models_dir: Path) -> str | Path:
    """The checkpoint to load: a preset's hub id for a preset key ("sd3.5-medium"), the offline tiny stand-in
    (built once) for "tiny" or "tiny-<preset key>", else `model_id` itself (a hub id or a local folder)."""
    from sd3_helper import get_preset, make_tiny_sd3, preset_for

    model_id = str(model_id)
    if not is_tiny(model_id):
        preset = preset_for(model_id)
        return preset.hub_id if preset is not None else model_id
    family = get_preset(model_id.removeprefix(f"{TINY_MODEL_ID}-")).tiny_family if model_id != TINY_MODEL_ID else "sd3"
    tiny_dir = Path(models_dir) / ("sd3-tiny" if model_id == TINY_MODEL_ID else f"sd3-{model_id}")
    if not (tiny_dir / "model_index.json").is_file():
        make_tiny_sd3(tiny_dir, family=family)
    return tiny_dir


def is_tiny(model_id: str | Path) -> bool:
    """True for "tiny" and "tiny-<preset key>": the offline random stand-ins of `resolve_model_id`."""
    return str(model_id).startswith(TINY_MODEL_ID)


def tiny_loras(checkpoint: str | Path, *, models_dir: Path) -> dict[str, Path]:
    """Random LoRA adapters for the tiny `checkpoint` (`TINY_LORA_SEEDS`), made once, offline, in a moment: they
    stand in for downloaded ones. Returns `{adapter name: folder}`."""
    from sd3_helper import make_tiny_lora

    loras = {}
    for name, seed in TINY_LORA_SEEDS.items():
        folder = Path(models_dir) / f"{Path(str(checkpoint)).name}-lora-{name}"
        loras[name] = folder if folder.is_dir() else make_tiny_lora(checkpoint, folder, seed=seed)
    return loras


def canny_controlnet(model_id: str | Path) -> tuple[str, str] | None:
    """The canny ControlNet for `model_id`'s preset, `(hub id, family of its tiny stand-in)` from `CANNY_CONTROLNETS`
    ("tiny" and "tiny-<preset key>" stand for their preset), or None for a model without one (SD3.5 Medium, a folder or
    a hub id of no preset)."""
    from sd3_helper import preset_for

    preset = preset_for(str(model_id))
    return CANNY_CONTROLNETS.get(preset.key) if preset is not None else None


def controlnet_for(model_id: str | Path, *, checkpoint: str | Path, models_dir: Path, weight_format: str) -> Path | None:
    """The OpenVINO folder of the canny ControlNet for `model_id` (see `canny_controlnet`), used with the SD3
    `checkpoint`, in `weight_format` (int8-hybrid: int8), converted once to `models_dir`; None for a model without one.

    For the tiny models a random ControlNet of the same family stands in (`tiny_controlnet`). `checkpoint` is also the
    `base_model` whose patch embedding Stability's SD3.5 ControlNets take at conversion. Converting again is skipped
    (`convert_sd3_controlnet` keeps a folder converted from the same source with the same options).
    """
    from sd3_helper import convert_sd3_controlnet

    controlnet = canny_controlnet(model_id)
    if controlnet is None:
        return None
    source, family = controlnet
    if is_tiny(model_id):
        source = tiny_controlnet(checkpoint, models_dir=models_dir, family=family)
    controlnet_format = CONTROLNET_WEIGHT_FORMAT.get(weight_format, weight_format)
    output_dir = Path(models_dir) / f"{Path(str(checkpoint)).name}-controlnet-canny-ov-{controlnet_format}"  # one per base model
    return convert_sd3_controlnet(source, output_dir, weight_format=controlnet_format, base_model=checkpoint)


def tiny_controlnet(checkpoint: str | Path, *, models_dir: Path, family: str) -> Path:
    """A random ControlNet of `family` ("instantx" or "sd3.5") for the tiny `checkpoint`, made once, offline, in a
    moment: it stands in for a downloaded canny ControlNet. Returns its folder (diffusers format)."""
    from sd3_helper import make_tiny_sd3_controlnet

    folder = Path(models_dir) / f"{Path(str(checkpoint)).name}-controlnet-canny"
    return folder if (folder / "config.json").is_file() else make_tiny_sd3_controlnet(checkpoint, folder, family=family)


def no_ip_adapter_reason(model_id: str | Path) -> str | None:
    """Why `model_id` gets no IP-Adapter in the notebook (a sentence), or None when it gets one: an SD3.5 Large preset
    (`IP_ADAPTERS`) or a tiny stand-in without dual-attention blocks ("tiny", "tiny-sd3.5-large...")."""
    from sd3_helper import preset_for

    preset = preset_for(str(model_id))
    if preset is not None and preset.tiny_family == DUAL_ATTENTION_FAMILY:
        return (
            f"{model_id} has dual-attention blocks (SD3.5 Medium's MMDiT-X), which SD3 IP-Adapters do not fit "
            "(`load_ip_adapter` refuses them): skipping this section."
        )
    if is_tiny(model_id) or (preset is not None and preset.key in IP_ADAPTERS):
        return None
    if preset is not None and preset.key == "sd3-medium":
        return "No IP-Adapter is published for SD3 Medium: skipping this section (SD3.5 Large has InstantX's)."
    return (
        f"No IP-Adapter is set for {model_id} here: skipping this section. InstantX/SD3.5-Large-IP-Adapter fits SD3.5 Large "
        "models; set `ip_adapter` (the commented line) to load it or another adapter."
    )


def ip_adapter_for(model_id: str | Path, *, checkpoint: str | Path, models_dir: Path) -> IPAdapterSource | None:
    """The IP-Adapter to load on `model_id`'s pipeline (`IP_ADAPTERS`), or None, with the reason printed, for a model
    without one (see `no_ip_adapter_reason`).

    For the tiny models a random adapter for the tiny `checkpoint` stands in (`tiny_ip_adapter`, made once, offline).
    Nothing is downloaded or converted here: `pipe.load_ip_adapter` converts the adapter once, into its SD3 folder.
    """
    from sd3_helper import preset_for

    reason = no_ip_adapter_reason(model_id)
    if reason is not None:
        print(reason)
        return None
    if is_tiny(model_id):
        return IPAdapterSource(tiny_ip_adapter(checkpoint, models_dir=models_dir))
    return IP_ADAPTERS[preset_for(str(model_id)).key]


def tiny_ip_adapter(checkpoint: str | Path, *, models_dir: Path) -> Path:
    """A random IP-Adapter for the tiny `checkpoint` in InstantX's layout (`ip-adapter.safetensors`, `image_encoder/`),
    made once, offline, in a moment: it stands in for a downloaded one. Returns its folder."""
    from sd3_helper import make_tiny_ip_adapter

    folder = Path(models_dir) / f"{Path(str(checkpoint)).name}-ip-adapter"
    return folder if (folder / "ip-adapter.safetensors").is_file() else make_tiny_ip_adapter(checkpoint, folder)


def timed(pipe, **kwargs) -> tuple:
    """`pipe(**kwargs)`'s first image and the seconds the call took."""
    start = time.perf_counter()
    image = pipe(**kwargs).images[0]
    return image, time.perf_counter() - start


def transformer_steps(step_cache, *, num_inference_steps: int) -> int:
    """How many of `num_inference_steps` steps run the transformer with the step cache `step_cache` (a
    `TaylorSeerConfig`); the others take its output from the cache."""
    from sd3_openvino.runtime.steps import TaylorSeerCache

    cache, computed = TaylorSeerCache(step_cache, num_steps=num_inference_steps), 0
    for step in range(num_inference_steps):
        if cache.computes(step):
            cache.update(step, 0.0)  # only which steps compute matters here, not the values
            computed += 1
    return computed


def generation_settings(model_id: str, *, num_inference_steps: int | None, guidance_scale: float | None, skip_guidance_layers) -> dict:
    """Steps, guidance and skip-layer guidance for `model_id`: each given value, else its preset's (else the
    SD3 Medium defaults). Skip layers the model does not have, or with guidance off, are dropped."""
    from sd3_helper import get_preset, preset_for

    preset = preset_for(str(model_id)) or get_preset("sd3-medium")
    guidance = preset.guidance_scale if guidance_scale is None else guidance_scale
    layers = preset.skip_guidance_layers if skip_guidance_layers is None else skip_guidance_layers
    return dict(
        num_inference_steps=preset.num_inference_steps if num_inference_steps is None else num_inference_steps,
        guidance_scale=guidance,
        skip_guidance_layers=list(layers) if layers and guidance > 1 else None,
    )


def use_preset_scheduler(pipe, model_id: str) -> float:
    """Give `pipe` the scheduler shift that `model_id`'s preset sets (TensorArt's turbo checkpoints sample with
    shift 5, as their model cards do: `FlowMatchEulerDiscreteScheduler.from_config(..., shift=5)` in diffusers);
    return the shift `pipe` samples with. A model without such a preset keeps its checkpoint's scheduler."""
    from sd3_helper import preset_for

    preset = preset_for(str(model_id))
    if preset is not None and preset.scheduler_shift is not None:
        pipe.scheduler = type(pipe.scheduler).from_config({**pipe.scheduler.config.to_dict(), "shift": preset.scheduler_shift})
    return pipe.scheduler.config.shift


def time_presets(pipe, *, presets: list, prompt: str, height: int, width: int, seed: int) -> str:
    """A Markdown table of the time for one image with each preset's steps and guidance on `pipe`."""
    import torch

    rows = ["| settings | steps | guidance | time per image |", "| --- | ---: | ---: | ---: |"]
    for preset in presets:
        start = time.perf_counter()
        pipe(
            prompt,
            height=height,
            width=width,
            num_inference_steps=preset.num_inference_steps,
            guidance_scale=preset.guidance_scale,
            generator=torch.Generator().manual_seed(seed),
        )
        rows.append(f"| {preset.name} | {preset.num_inference_steps} | {preset.guidance_scale} | {time.perf_counter() - start:.2f} s |")
    return "\n".join(rows)


def ov_model_dir(checkpoint: str | Path, *, models_dir: Path, weight_format: str, load_t5: bool) -> Path:
    """Where the OpenVINO model of `checkpoint` in `weight_format` goes: one folder per variant."""
    t5_suffix = "" if load_t5 else "-no-t5"
    return Path(models_dir) / f"{Path(str(checkpoint)).name}-ov-{weight_format}{t5_suffix}"


def describe_components(pipe) -> str:
    """A Markdown table of a diffusers pipeline's components: class and number of parameters."""
    rows = ["| component | class | parameters |", "| --- | --- | ---: |"]
    for name, component in pipe.components.items():
        if component is None:
            continue
        parameters = sum(p.numel() for p in component.parameters()) if hasattr(component, "parameters") else None
        count = f"{parameters / 1e6:,.2f} M" if parameters is not None else ""
        rows.append(f"| `{name}` | {type(component).__name__} | {count} |")
    return "\n".join(rows)


def format_bytes(size: int) -> str:
    """`size` in B, KB, MB or GB (decimal units, as disk tools show them)."""
    for unit in ("B", "KB", "MB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.2f} GB"


# ----------------------------------------------------------------------------------------------------------
# Comparing weight formats
# ----------------------------------------------------------------------------------------------------------


INT8_VAE_LABEL = "int8-hybrid + int8 VAE"  # the comparison's entry for `quantize_vae=True`
INT8_VAE_VARIANT = "int8-hybrid-int8-vae"  # the same in its folder's and files' names


@dataclass
class FormatResult:
    """One weight format in the comparison."""

    weight_format: str  # the name shown: a weight format, or `INT8_VAE_LABEL`
    variant: str  # the same in file names: the weight format, or `INT8_VAE_VARIANT`
    model_dir: Path
    size_bytes: int  # the whole OpenVINO model folder on disk
    latency_s: float  # one image, after a warm-up call
    image: object  # PIL.Image.Image

    @property
    def label(self) -> str:
        return f"{self.weight_format}: {format_bytes(self.size_bytes)}, {self.latency_s:.2f} s"


def compare_weight_formats(
    checkpoint: str | Path,
    *,
    models_dir: Path,
    weight_formats: list[str],
    load_t5: bool,
    device: str,
    prompt: str,
    height: int,
    width: int,
    num_inference_steps: int,
    guidance_scale: float,
    seed: int,
    quantize_vae: bool = False,
) -> list[FormatResult]:
    """Convert `checkpoint` in each weight format (skipped when done before), then time one image with each.

    With `quantize_vae`, one more entry, `INT8_VAE_LABEL`: int8-hybrid with the VAE in int8 too, quantized from
    the fp16 folder (`int8_vae_folder`).
    Pipelines are loaded one at a time and freed before the next, so memory holds one model at once. Every
    format gets the same prompt and seed, so the images differ only by the compression.
    """
    import gc

    import torch

    from sd3_helper import OVStableDiffusion3Pipeline, convert_sd3, folder_size

    results = []
    for variant in [*weight_formats, *([INT8_VAE_VARIANT] if quantize_vae else [])]:
        if variant == INT8_VAE_VARIANT:
            model_dir = int8_vae_folder(checkpoint, models_dir=models_dir, load_t5=load_t5)
        else:
            model_dir = ov_model_dir(checkpoint, models_dir=models_dir, weight_format=variant, load_t5=load_t5)
            convert_sd3(checkpoint, model_dir, load_t5=load_t5, weight_format=variant)
        pipe = OVStableDiffusion3Pipeline.from_pretrained(model_dir, device=device)
        pipe.set_progress_bar_config(disable=True)
        generate = dict(prompt=prompt, height=height, width=width, guidance_scale=guidance_scale)
        pipe(**generate, num_inference_steps=1)  # warm-up: the first call allocates buffers
        start = time.perf_counter()
        image = pipe(
            **generate, num_inference_steps=num_inference_steps, generator=torch.Generator().manual_seed(seed)
        ).images[0]
        latency = time.perf_counter() - start
        results.append(
            FormatResult(
                weight_format=INT8_VAE_LABEL if variant == INT8_VAE_VARIANT else variant,
                variant=variant,
                model_dir=model_dir,
                size_bytes=folder_size(model_dir),
                latency_s=latency,
                image=image,
            )
        )
        del pipe
        gc.collect()
    return results


def int8_vae_folder(checkpoint: str | Path, *, models_dir: Path, load_t5: bool) -> Path:
    """int8-hybrid with the VAE in int8 too (`quantize_sd3(..., quantize_vae=True)` with its default calibration),
    quantized from the fp16 folder of `checkpoint` (converted first when it is not there); each step is skipped
    when done before. Returns the folder."""
    from sd3_helper import convert_sd3, quantize_sd3

    fp16_dir = ov_model_dir(checkpoint, models_dir=models_dir, weight_format="fp16", load_t5=load_t5)
    convert_sd3(checkpoint, fp16_dir, load_t5=load_t5, weight_format="fp16")
    model_dir = ov_model_dir(checkpoint, models_dir=models_dir, weight_format=INT8_VAE_VARIANT, load_t5=load_t5)
    return quantize_sd3(fp16_dir, model_dir, quantize_vae=True)


def comparison_table(results: list[FormatResult]) -> str:
    """A Markdown table of the comparison: size on disk and latency, relative to the first format too."""
    first = results[0]
    rows = [
        f"| weight format | size on disk | vs {first.weight_format} | latency per image | speed-up |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for result in results:
        size, latency = format_bytes(result.size_bytes), f"{result.latency_s:.2f} s"
        relative_size, speed_up = result.size_bytes / first.size_bytes, first.latency_s / result.latency_s
        rows.append(f"| {result.weight_format} | {size} | {relative_size:.2f}x | {latency} | {speed_up:.2f}x |")
    return "\n".join(rows)


def bar_chart_figure(panels: dict[str, dict[str, float]], *, title: str = ""):
    """A matplotlib figure with one bar chart per panel (`{panel title: {bar label: value}}`), side by side, each bar
    labelled with its value. A `matplotlib.figure.Figure`, not pyplot: no global state, nothing drawn twice."""
    from matplotlib.figure import Figure

    if not panels or not all(isinstance(bars, dict) and bars for bars in panels.values()):
        raise ValueError(f"`panels` has to map each panel title to a non-empty {{label: value}} dict but is {panels!r:.200}.")
    figure = Figure(figsize=(4.2 * len(panels), 3.2), layout="constrained")
    for axes, (panel, bars) in zip(figure.subplots(1, len(panels), squeeze=False)[0], panels.items()):
        container = axes.bar(list(bars), list(bars.values()), color=[f"C{index}" for index in range(len(bars))])
        axes.bar_label(container, fmt="%.3g", padding=2)
        axes.set_title(panel)
        axes.margins(y=0.15)
        axes.tick_params(axis="x", labelrotation=20)
    if title:
        figure.suptitle(title)
    return figure


def bar_charts(panels: dict[str, dict[str, float]], *, title: str = ""):
    """`bar_chart_figure(panels)` drawn into a PIL image, which Jupyter shows as a PNG wherever the matplotlib
    backend is set up or not, and which `.save(path)` writes (like `image_grid`'s)."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    figure = bar_chart_figure(panels, title=title)
    buffer = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buffer)
    return Image.open(io.BytesIO(buffer.getvalue()))


def image_grid(images: list, *, labels: list[str], font_size: int = 14):
    """The images side by side in one PIL image, each with its label underneath."""
    from PIL import Image, ImageDraw, ImageFont

    if len(images) != len(labels):
        raise ValueError(f"Got {len(images)} images but {len(labels)} labels; pass one label per image.")
    font = ImageFont.load_default(size=font_size)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_widths = [int(measure.textlength(label, font=font)) for label in labels]
    padding, label_height = 8, font_size + 8
    cell_width = max(max(image.width for image in images), max(label_widths)) + padding
    cell_height = max(image.height for image in images) + label_height
    grid = Image.new("RGB", (cell_width * len(images), cell_height), color="white")
    draw = ImageDraw.Draw(grid)
    for index, (image, label, label_width) in enumerate(zip(images, labels, label_widths, strict=True)):
        left = index * cell_width
        grid.paste(image, (left + (cell_width - image.width) // 2, 0))
        draw.text(
            (left + (cell_width - label_width) // 2, cell_height - label_height + 2), label, fill="black", font=font
        )
    return grid


# ----------------------------------------------------------------------------------------------------------
# The same folder in openvino.genai
# ----------------------------------------------------------------------------------------------------------


def compare_with_genai(
    pipe,
    *,
    model_dir: Path,
    device: str,
    prompt: str,
    height: int,
    width: int,
    num_inference_steps: int,
    guidance_scale: float,
    seed: int,
) -> tuple[str, list, list[str]]:
    """Time one image from our pipeline and from openvino.genai's C++ pipeline on the same folder and seed.

    Returns a Markdown table of the two latencies, the two images and their labels. Both get a warm-up call.
    """
    import numpy as np
    import openvino_genai
    import torch
    from PIL import Image

    from sd3_helper import make_genai_pipeline

    settings = dict(height=height, width=width, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale)
    genai_pipe = make_genai_pipeline(model_dir, device=device)
    genai_pipe.generate(prompt, **{**settings, "num_inference_steps": 1})  # warm-up
    start = time.perf_counter()
    genai_image = genai_pipe.generate(prompt, generator=openvino_genai.TorchGenerator(seed), **settings).data[0]
    genai_latency = time.perf_counter() - start

    pipe(prompt, **{**settings, "num_inference_steps": 1})  # warm-up
    start = time.perf_counter()
    our_image = pipe(prompt, generator=torch.Generator().manual_seed(seed), **settings).images[0]
    our_latency = time.perf_counter() - start

    table = "\n".join(
        [
            "| pipeline | latency per image |",
            "| --- | ---: |",
            f"| `OVStableDiffusion3Pipeline` (Python) | {our_latency:.2f} s |",
            f"| `openvino_genai.Text2ImagePipeline` (C++) | {genai_latency:.2f} s |",
        ]
    )
    images = [our_image, Image.fromarray(np.asarray(genai_image, dtype=np.uint8))]
    return table, images, [f"ours: {our_latency:.2f} s", f"openvino.genai: {genai_latency:.2f} s"]


def rectangle_mask(*, width: int, height: int, fraction: float = 0.5):
    """A black PIL mask ("L") with a white centred rectangle of `fraction` of each side: the part to repaint."""
    from PIL import Image, ImageDraw

    mask = Image.new("L", (width, height), color=0)
    left, top = round(width * (1 - fraction) / 2), round(height * (1 - fraction) / 2)
    ImageDraw.Draw(mask).rectangle([left, top, width - left - 1, height - top - 1], fill=255)
    return mask
