"""The demo's requests: the limits of its controls, and the checks that turn what a page or an API client sent into
a `GenerationRequest` in the types the pipeline takes. Each check names the field, its value and the fix; the
checks the pipelines make too (`check_size`, `check_strength`) are theirs, so a message is written once.

Plain Python (numpy and PIL only, PIL imported where an image is read; OpenCV where canny edges are made): no UI
library, no OpenVINO.
"""

import math
import random
from dataclasses import dataclass
from numbers import Real

from ..core.layout import SizeRules
from ..runtime.checks import check_control_guidance, check_size, check_strength
from ..runtime.control_images import CONTROL_PREPROCESSORS, control_image_for  # light: numpy (OpenCV inside canny)
from ..runtime.steps import DEFAULT_STEP_CACHE  # light: numpy only

MAX_SEED = 2**31 - 1  # the largest seed a gr.Number and every torch generator accept
# T5 reads at most 512 tokens of a prompt (CLIP 77), about 2,000 characters of English at ~4 characters a token.
# Twice that is refused at once: no prompt the model can read is lost, while a pasted megabyte of text never reaches
# the tokenizers (issue 10), which would spend time and memory on it only to cut it to 512 tokens.
MAX_PROMPT_CHARS = 4_000
MAX_INFERENCE_STEPS = 50  # the steps slider's end (SD3 Medium's default is 28); each step is one transformer pass
MAX_GUIDANCE_SCALE = 20.0  # the guidance slider's end (SD3 Medium's default is 7)
# "Fast (step cache)": openvino.genai's default TaylorSeer settings, on by default in our pipelines as in genai (off:
# diffusers' image). With 28 steps, 14 take the transformer's output from the cache.
FAST_STEP_CACHE = DEFAULT_STEP_CACHE
NO_ADAPTER = "None"  # the adapter choice that generates without LoRA (`disable_lora`)
MIN_LORA_SCALE, MAX_LORA_SCALE = -1.0, 2.0  # the LoRA scale slider's ends (negative scales push away from the style)
# The demo's tabs: openvino.genai's task names, and "controlnet" (a ControlNet pipeline's tab)
TASKS = ("text-to-image", "image-to-image", "inpainting", "controlnet")
# Inpainting's default strength. SD3's usual 16-channel transformer knows what lies under the mask only through the
# latents it starts from: at 1.0 that is pure noise, and the repaint often ignores the colours and light around it
# (a visible patch). 0.85 starts from the image noised to 85 % of the schedule: a trace of the original colours and
# shapes stays, so the repaint fits in, and the content is still replaced. A 33-channel inpainting transformer sees
# the masked image in every step's input, so it starts from pure noise (1.0).
INPAINTING_STRENGTH = 0.85
PAINT_THE_MASK = "paint the area to repaint with the brush (white = repaint)"
# ControlNet: the scale slider's end and start value (0 turns the ControlNet off; InstantX's canny examples use 0.5 to
# 0.8, and 1.0 and beyond follows the edges so closely that the image looks traced), and the preprocessor at first.
MAX_CONTROLNET_SCALE, CONTROLNET_SCALE = 2.0, 0.7
CONTROL_PREPROCESSOR = "canny"
# IP-Adapter: the image prompt scale slider's ends (0 ignores the image prompt, 1 is the adapter's full weight)
MIN_IP_ADAPTER_SCALE, MAX_IP_ADAPTER_SCALE = 0.0, 1.0


def size_rules_of(pipeline) -> SizeRules:
    """The image sizes `pipeline` accepts: its `size_rules`, or read from its transformer's and VAE's configs."""
    rules = getattr(pipeline, "size_rules", None)
    if rules is not None:
        return rules
    vae = getattr(pipeline, "vae_decoder", None)
    if vae is None:
        vae = pipeline.vae  # diffusers' `StableDiffusion3Pipeline`
    return SizeRules.from_configs(transformer_config=pipeline.transformer.config, vae_config=vae.config)


def fit_size(image_size: tuple[int, int], rules: SizeRules) -> tuple[int, int]:
    """(width, height) for an uploaded image of `image_size`: its own size, scaled down (keeping its aspect ratio)
    to at most the model's native area (`rules.default` squared), each side snapped to a size the model accepts."""
    width, height = image_size
    scale = min(1.0, rules.default / math.sqrt(width * height))
    return rules.snap(width * scale), rules.snap(height * scale)


def make_control_image(image, *, preprocessor: str, width: int, height: int):
    """The control image the ControlNet tab gives the pipeline, and shows as its preview: `image` cropped centrally
    to the aspect ratio of `width` x `height` and resized to that size (so the control lines up with the image and is
    never stretched), then through `preprocessor` (`control_image_for`: canny edges at the image's resolution)."""
    import PIL.Image
    import PIL.ImageOps

    fitted = PIL.ImageOps.fit(image.convert("RGB"), (width, height), method=PIL.Image.Resampling.LANCZOS)
    return control_image_for(fitted, preprocessor=preprocessor)


def control_preview(image, *, preprocessor, width, height, size_rules: SizeRules):
    """The ControlNet tab's preview of `image` (a PIL image; None: no upload, no preview): `make_control_image` at the
    size sliders' `width` x `height`, checked as a Run checks them, so the preview is what the ControlNet gets."""
    if image is None:
        return None
    width, height = _as_whole(width, name="width"), _as_whole(height, name="height")
    check_size(height=height, width=width, size_rules=size_rules)
    preprocessor = _check_preprocessor(preprocessor)
    image = _check_image(image, name="image", missing="upload the image to make the control image from")
    return make_control_image(image, preprocessor=preprocessor, width=width, height=height)


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
    fast: bool | None = None  # the step cache (`FAST_STEP_CACHE`) on or off; None: a pipeline without one (diffusers')
    adapter: str | None = None  # a loaded LoRA adapter, `NO_ADAPTER` (LoRA off), or None: the adapters as they are set
    lora_scale: float = 1.0  # the adapter's weight (`set_adapters([adapter], [lora_scale])`)
    control_image: object = None  # ControlNet: `make_control_image`'s (a list of it, one per ControlNet, for several)
    controlnet_conditioning_scale: float | None = None  # ControlNet: one scale for every ControlNet
    control_guidance_start: float = 0.0  # ControlNet: the fractions of the steps it acts between
    control_guidance_end: float = 1.0
    ip_adapter_image: object = None  # IP-Adapter: the image prompt (a PIL image), or None: none
    ip_adapter_scale: float | None = None  # IP-Adapter: its scale (`set_ip_adapter_scale`), or None: as it is set

    @property
    def denoising_steps(self) -> int:
        """The steps that run: all for text to image, the last `strength` share of them for the image tasks."""
        if self.strength is None:
            return self.num_inference_steps
        # Adapted from diffusers' `get_timesteps`, float for float: 10 steps at 0.8 run 8 (10 * (1 - 0.8) would skip
        # only 1)
        init_timestep = min(self.num_inference_steps * self.strength, self.num_inference_steps)
        return self.num_inference_steps - int(max(self.num_inference_steps - init_timestep, 0))

    def pipeline_arguments(self) -> dict:
        """The keyword arguments of the task's pipeline call for this request (all but the generator and the
        callback): the image tasks add the image and strength, inpainting the mask, ControlNet the control image and
        its scale and window, `fast` the step cache, an image prompt `ip_adapter_image` (its scale is set on the
        pipeline: `GenerationRunner`)."""
        arguments = dict(
            prompt=self.prompt,
            negative_prompt=self.negative_prompt or None,
            width=self.width,
            height=self.height,
            guidance_scale=self.guidance_scale,
            num_inference_steps=self.num_inference_steps,
        )
        if self.task in ("image-to-image", "inpainting"):
            arguments.update(image=self.image, strength=self.strength)
        if self.task == "inpainting":
            arguments.update(mask_image=self.mask_image)
        if self.task == "controlnet":
            arguments.update(
                control_image=self.control_image,
                controlnet_conditioning_scale=self.controlnet_conditioning_scale,
                control_guidance_start=self.control_guidance_start,
                control_guidance_end=self.control_guidance_end,
            )
        if self.fast is not None:  # ours: the cache, or every step computed (diffusers' image)
            arguments.update(taylorseer=FAST_STEP_CACHE if self.fast else None)
        if self.ip_adapter_image is not None:
            arguments.update(ip_adapter_image=self.ip_adapter_image)
        return arguments


@dataclass(frozen=True)
class RequestLimits:
    """What a demo's requests may ask for: the tasks it serves, the sizes and steps its pipeline takes, its
    options (the step cache, the loaded LoRA adapters)."""

    tasks: tuple[str, ...]  # in `TASKS` order
    size_rules: SizeRules
    max_inference_steps: int = MAX_INFERENCE_STEPS
    step_cache: bool = False  # `fast` may be on: our pipelines only
    pipeline_name: str = ""  # the pipeline's class, named when `fast` is refused
    adapters: tuple[str, ...] = ()  # the LoRA adapters loaded into the pipeline
    controlnets: int = 0  # the ControlNet pipeline's ControlNets: each gets the tab's one control image
    ip_adapter: bool = False  # an IP-Adapter is loaded: a request may carry an image prompt


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


def _check_bool(value, *, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` has to be True or False but is {value!r:.80}.")
    return value


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


def _check_fast(fast, *, limits: RequestLimits) -> bool | None:
    """`fast` as the request keeps it: a bool for our pipelines (None: their default, on), None for a pipeline without
    the step cache (diffusers'), which refuses it on."""
    if fast is None:
        return True if limits.step_cache else None
    if _check_bool(fast, name="fast") and not limits.step_cache:
        raise ValueError(
            f"`fast` (the step cache) needs an `OVStableDiffusion3Pipeline` but this demo runs "
            f"{limits.pipeline_name}. Leave `fast` off."
        )
    return fast if limits.step_cache else None


def _check_adapter(adapter, *, lora_scale, loaded: tuple[str, ...]) -> tuple[str | None, float]:
    """`adapter` (None: leave the adapters as they are set) and `lora_scale` in their types, or an error naming
    the `loaded` adapters."""
    lora_scale = _as_finite(lora_scale, name="lora_scale", minimum=MIN_LORA_SCALE, maximum=MAX_LORA_SCALE)
    if adapter is None:
        return None, lora_scale
    if not isinstance(adapter, str):
        raise TypeError(f"`adapter` has to be a str but is {type(adapter).__name__}: {adapter!r:.80}.")
    if adapter != NO_ADAPTER and adapter not in loaded:
        if not loaded:
            raise ValueError(
                f"`adapter` {adapter!r:.80} is not loaded: the pipeline has no LoRA adapters. Load one with "
                f"`pipe.load_lora_weights(path, adapter_name=...)` before `make_demo`, or choose {NO_ADAPTER!r}."
            )
        raise ValueError(
            f"`adapter` {adapter!r:.80} is not loaded; loaded adapters: {list(loaded)}. "
            f"Choose one of them or {NO_ADAPTER!r}."
        )
    return adapter, lora_scale


def _check_image_prompt(image, scale, *, loaded: bool) -> dict:
    """The image prompt fields of a checked request: `ip_adapter_image` (None: none) and `ip_adapter_scale` (None: as it
    is set, else from `MIN_IP_ADAPTER_SCALE` to `MAX_IP_ADAPTER_SCALE`); either is refused when no IP-Adapter is `loaded`."""
    if not loaded and (image is not None or scale is not None):
        name = "ip_adapter_image" if image is not None else "ip_adapter_scale"
        raise ValueError(
            f"`{name}` needs an IP-Adapter but the pipeline has none. Load one with `pipe.load_ip_adapter(...)` before "
            "`make_demo` (or `gradio_helper.py MODEL_DIR --ip-adapter PATH`), or leave the image prompt out."
        )
    if scale is not None:
        scale = _as_finite(scale, name="ip_adapter_scale", minimum=MIN_IP_ADAPTER_SCALE, maximum=MAX_IP_ADAPTER_SCALE)
    if image is not None:
        image = _check_image(image, name="ip_adapter_image", missing="upload the image to prompt with")
    return dict(ip_adapter_image=image, ip_adapter_scale=scale)


def _check_images(task: str, *, image, mask_image, strength, num_inference_steps: int) -> tuple:
    """(image, mask_image, strength) of `task`: None for what the task does not take; the image tasks need an image
    and a strength that leaves a denoising step, inpainting a mask of the image's size with something painted."""
    if task not in ("image-to-image", "inpainting"):
        return None, None, None
    verb = "restyle" if task == "image-to-image" else "repaint"
    image = _check_image(image, name="image", missing=f"upload the image to {verb}")
    strength = _as_finite(strength, name="strength", minimum=0.0, maximum=1.0)  # a UI field's type and range
    strength = check_strength(strength, num_inference_steps=num_inference_steps)  # the pipelines' one-step rule
    mask_image = _check_mask(mask_image, image=image) if task == "inpainting" else None
    return image, mask_image, strength


def _check_preprocessor(preprocessor) -> str:
    if not isinstance(preprocessor, str) or preprocessor not in CONTROL_PREPROCESSORS:
        raise ValueError(f"`preprocessor` has to be one of {list(CONTROL_PREPROCESSORS)} but is {preprocessor!r:.80}.")
    return preprocessor


def _check_control(task: str, *, limits: RequestLimits, width: int, height: int, **control) -> dict:
    """The ControlNet fields of a checked request (none but for "controlnet"): the scale (from 0, off, to
    `MAX_CONTROLNET_SCALE`), the window (`control_guidance_start` < `control_guidance_end`, fractions of the steps), and
    the control image made from the upload (`make_control_image`), one per ControlNet."""
    if task != "controlnet":
        return {}
    scale = _as_finite(
        control["controlnet_conditioning_scale"], name="controlnet_conditioning_scale", minimum=0.0, maximum=MAX_CONTROLNET_SCALE
    )
    start = _as_finite(control["control_guidance_start"], name="control_guidance_start", minimum=0.0, maximum=1.0)
    end = _as_finite(control["control_guidance_end"], name="control_guidance_end", minimum=0.0, maximum=1.0)
    check_control_guidance(start, end, count=1)  # the pipelines' rule: start < end
    preprocessor = _check_preprocessor(control["preprocessor"])
    image = _check_image(control["image"], name="image", missing="upload the image to make the control image from")
    control_image = make_control_image(image, preprocessor=preprocessor, width=width, height=height)
    return dict(
        control_image=[control_image] * limits.controlnets if limits.controlnets > 1 else control_image,
        controlnet_conditioning_scale=scale,
        control_guidance_start=start,
        control_guidance_end=end,
    )


def check_request(
    limits: RequestLimits,
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
    fast: bool | None = None,
    adapter: str | None = None,
    lora_scale: float = 1.0,
    preprocessor: str | None = CONTROL_PREPROCESSOR,
    controlnet_conditioning_scale: float | None = CONTROLNET_SCALE,
    control_guidance_start: float = 0.0,
    control_guidance_end: float = 1.0,
    ip_adapter_image=None,
    ip_adapter_scale: float | None = None,
) -> GenerationRequest:
    """The request with every field checked against `limits`; a ValueError or TypeError names the first bad field.

    The texts' lengths are checked first, so an over-long paste is refused before any other work. The seed
    may be left empty (None) when `randomize_seed` is set; a random one is drawn then. Image to image needs
    `image` (a PIL image) and `strength`; inpainting also `mask_image` (the image's size, something painted).
    ControlNet needs `image` too, which `preprocessor` (one of `CONTROL_PREPROCESSORS`) turns into the control image
    at the request's size (`make_control_image`), and takes `controlnet_conditioning_scale` and the window
    `control_guidance_start` < `control_guidance_end`.
    `fast` turns the step cache on or off (our pipelines; None: on, their default; refused on for others). `adapter` is a loaded LoRA adapter (applied at
    `lora_scale`, from `MIN_LORA_SCALE` to `MAX_LORA_SCALE`), `NO_ADAPTER` for none, or None to leave the
    pipeline's adapters as they are set. With an IP-Adapter loaded, `ip_adapter_image` (a PIL image; None: none) prompts
    with an image at `ip_adapter_scale` (`MIN_IP_ADAPTER_SCALE` to `MAX_IP_ADAPTER_SCALE`; None: the scale set)."""
    if task not in limits.tasks:
        raise ValueError(f"`task` has to be one of {limits.tasks} but is {task!r:.80}.")
    prompt = _check_text(prompt, name="prompt")
    negative_prompt = _check_text(negative_prompt, name="negative_prompt")
    if not prompt.strip():
        raise ValueError("The prompt is empty: describe the image you want, e.g. 'a photo of a cat'.")
    if not _check_bool(randomize_seed, name="randomize_seed") or seed is not None:
        seed = _as_int(seed, name="seed", minimum=0, maximum=MAX_SEED)
    width, height = _as_whole(width, name="width"), _as_whole(height, name="height")
    check_size(height=height, width=width, size_rules=limits.size_rules)  # names both sides, the nearest accepted
    guidance_scale = _as_finite(guidance_scale, name="guidance_scale", minimum=0.0, maximum=MAX_GUIDANCE_SCALE)
    num_inference_steps = _as_int(
        num_inference_steps, name="num_inference_steps", minimum=1, maximum=limits.max_inference_steps
    )
    fast = _check_fast(fast, limits=limits)
    adapter, lora_scale = _check_adapter(adapter, lora_scale=lora_scale, loaded=limits.adapters)
    image_prompt = _check_image_prompt(ip_adapter_image, ip_adapter_scale, loaded=limits.ip_adapter)
    control = _check_control(
        task, limits=limits, width=width, height=height, image=image, preprocessor=preprocessor,
        controlnet_conditioning_scale=controlnet_conditioning_scale, control_guidance_start=control_guidance_start,
        control_guidance_end=control_guidance_end,
    )  # fmt: skip
    image, mask_image, strength = _check_images(
        task, image=image, mask_image=mask_image, strength=strength, num_inference_steps=num_inference_steps
    )
    return GenerationRequest(
        prompt=prompt,
        negative_prompt=negative_prompt,
        seed=random.randint(0, MAX_SEED) if randomize_seed else seed,
        width=width,
        height=height,
        guidance_scale=guidance_scale,
        num_inference_steps=num_inference_steps,
        task=task,
        image=image,
        mask_image=mask_image,
        strength=strength,
        fast=fast,
        adapter=adapter,
        lora_scale=lora_scale,
        **control,
        **image_prompt,
    )
