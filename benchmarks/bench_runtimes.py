"""The runtimes under test, one class per family, each able to load, compile, generate and time itself.

    ours-<format>[-static][-genai-tokens][-taylorseer]   our `OVStableDiffusion3Pipeline` on one IR folder
    optimum-fp16     optimum-intel's `OVStableDiffusion3Pipeline` on our fp16 export (it is in their layout)
    diffusers-<dtype>   diffusers' `StableDiffusion3Pipeline` in torch fp32 or bf16, on the checkpoint
    genai-fp16       openvino.genai's C++ `Text2ImagePipeline` on our fp16 export

`-static` gives our pipeline static shapes (`pipe.reshape(...)`), `-genai-tokens` the text tokens genai uses
(see `text_tokens`), `-taylorseer` the step cache with openvino.genai's defaults (`TaylorSeerConfig()`).

How a call is timed: the diffusers-style runtimes (ours, optimum-intel, diffusers) record the time of each
`callback_on_step_end` call, so a step is the interval between two (batch 2: guidance > 1); the transformer's
infer request (the torch module's forward, with hooks, for diffusers) is wrapped to time each in-step infer
and keep its inputs, which a standalone forward then replays; `encode_prompt` and the VAE decode are wrapped
alike. openvino.genai reports the same from its own performance metrics (iteration, transformer infer, text
encoder and VAE decoder durations); it has no standalone forward, so its in-loop infers stand in.
"""

import time
from pathlib import Path

PROMPT = "A raccoon trapped inside a glass jar full of colorful candies, the background is steamy with vivid colors"
NEGATIVE_PROMPT = ""
SEED = 141  # the original tutorial's
GUIDANCE_SCALE = 5.0  # the original tutorial's; > 1, so every step runs the transformer on a batch of 2
OUR_FORMATS = ("fp16", "int8", "int4", "int8-hybrid")
# ours-fp16-genai-tokens: our fp16 pipeline given as many text tokens as openvino.genai uses (see `text_tokens`)
RUNTIMES = tuple(f"ours-{fmt}" for fmt in OUR_FORMATS) + (
    "ours-fp16-genai-tokens",
    "diffusers-fp32",
    "diffusers-bf16",
    "optimum-fp16",
    "genai-fp16",
)


# ----------------------------------------------------------------------------------------------------------
# What each runtime name runs
# ----------------------------------------------------------------------------------------------------------


def text_tokens(runtime: str, *, max_sequence_length: int, clip_positions: int, has_t5: bool) -> dict:
    """The text tokens the transformer sees in `runtime`, and the `max_sequence_length` its call gets.

    diffusers, optimum-intel and ours pad the T5 part (zeros without T5) to `max_sequence_length`, after the
    `clip_positions` CLIP tokens. openvino.genai without T5 pads it to `clip_positions` instead, whatever
    `max_sequence_length` says (`transformer_tokenizer_max_length *= 2` in its StableDiffusion3Pipeline::reshape
    and the same zeros in its compute_hidden_states): less work per step, and an image that differs from
    diffusers'. `ours-fp16-genai-tokens` runs our pipeline with `max_sequence_length=clip_positions`, the same
    work as genai, to compare the runtimes on equal terms.
    """
    if runtime.startswith("genai") and not has_t5:
        return {"text_tokens": 2 * clip_positions, "max_sequence_length": max_sequence_length}
    if runtime.removesuffix("-taylorseer").endswith("genai-tokens") and not has_t5:
        return {"text_tokens": 2 * clip_positions, "max_sequence_length": clip_positions}
    return {"text_tokens": clip_positions + max_sequence_length, "max_sequence_length": max_sequence_length}


def runtime_specs(names: list[str], *, folders: dict[str, Path], checkpoint: Path, run_dir: Path) -> dict[str, dict]:
    """The worker task fields of each runtime: which code loads what."""
    specs = {}
    for name in names:
        family, variant = name.split("-", 1)
        cache_dir = str(run_dir / "cache" / name)
        if family == "ours":  # ours-<format>[-static][-genai-tokens][-taylorseer]
            fmt = variant.removesuffix("-taylorseer").removesuffix("-genai-tokens").removesuffix("-static")
            static = "-static" in variant
            cache_dir = str(run_dir / "cache" / (f"ours-{fmt}-static" if static else f"ours-{fmt}"))
            specs[name] = {"family": "ours", "folder": str(folders[fmt]), "cache_dir": cache_dir, "static": static}
            specs[name]["taylorseer"] = variant.endswith("-taylorseer")
        elif family == "diffusers":
            specs[name] = {"family": "diffusers", "checkpoint": str(checkpoint), "dtype": variant, "cache_dir": None}
        else:  # optimum-intel and openvino.genai on our fp16 export (it is in their layout)
            specs[name] = {"family": family, "folder": str(folders["fp16"]), "cache_dir": cache_dir}
    return specs


# ----------------------------------------------------------------------------------------------------------
# Timers
# ----------------------------------------------------------------------------------------------------------


class TimedRequest:
    """Stands in for an OpenVINO infer request or compiled model: times `infer(...)` and `(...)` calls and
    keeps the last call, so the same forward can be replayed alone."""

    def __init__(self, request):
        self.wrapped = request
        self.durations: list[float] = []
        self.last_call = None

    def __getattr__(self, name):
        return getattr(self.wrapped, name)

    def timed(self, method, *args, **kwargs):
        start = time.perf_counter()
        result = method(*args, **kwargs)
        self.durations.append(time.perf_counter() - start)
        self.last_call = (method, args, kwargs)
        return result

    def infer(self, *args, **kwargs):
        return self.timed(self.wrapped.infer, *args, **kwargs)

    def __call__(self, *args, **kwargs):
        return self.timed(self.wrapped, *args, **kwargs)

    def replay(self) -> float:
        method, args, kwargs = self.last_call
        start = time.perf_counter()
        method(*args, **kwargs)
        return time.perf_counter() - start


def time_method(obj, name: str) -> list[float]:
    """Replace `obj.name` by a wrapper that records each call's duration; return the list it fills."""
    durations, method = [], getattr(obj, name)

    def timed(*args, **kwargs):
        start = time.perf_counter()
        result = method(*args, **kwargs)
        durations.append(time.perf_counter() - start)
        return result

    setattr(obj, name, timed)
    return durations


def generation_options(task: dict, *, steps: int) -> dict:
    """The arguments every runtime's text-to-image call gets (all name them alike)."""
    return {
        "negative_prompt": NEGATIVE_PROMPT,
        "height": task["height"],
        "width": task["width"],
        "num_inference_steps": steps,
        "guidance_scale": GUIDANCE_SCALE,
        "max_sequence_length": task["max_sequence_length"],
    }


# ----------------------------------------------------------------------------------------------------------
# The runtimes
# ----------------------------------------------------------------------------------------------------------


class DiffusersStyleRuntime:
    """A pipeline with diffusers' call signature (ours, diffusers, optimum-intel): shared timing code."""

    takes_taylorseer = False  # the call takes `taylorseer=` (ours)

    def __init__(self, task: dict):
        self.task = task
        self.pipe = None

    def imports(self) -> None:
        """Import what loading needs before the RSS baseline and the load timer (the libraries import lazily)."""
        import torch  # noqa: F401
        from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline  # noqa: F401
        from transformers import CLIPTextModelWithProjection, CLIPTokenizer, CLIPTokenizerFast  # noqa: F401

        import sd3_helper  # noqa: F401

    def call(self, *, steps: int, callback=None, output_type: str = "np"):
        import torch

        generator = torch.Generator().manual_seed(SEED)
        options = generation_options(self.task, steps=steps)
        if self.takes_taylorseer:  # ours: the step cache only in the `-taylorseer` variants (it is on by default)
            from sd3_helper import TaylorSeerConfig

            options["taylorseer"] = TaylorSeerConfig() if self.task.get("taylorseer") else None  # openvino.genai's defaults
        return self.pipe(PROMPT, **options, generator=generator, output_type=output_type, callback_on_step_end=callback).images[0]

    def step_times(self, steps: int) -> list[float]:
        """Seconds of steps 2 .. `steps` of one call (without the VAE decode, which steps do not include)."""
        marks = []

        def mark(pipe, step, timestep, callback_kwargs):
            marks.append(time.perf_counter())
            return {}

        self.call(steps=steps, callback=mark, output_type="latent")
        return [after - before for before, after in zip(marks, marks[1:])]

    def whole_image(self) -> float:
        start = time.perf_counter()
        self.call(steps=self.task["steps"])
        return time.perf_counter() - start

    def instrument(self):
        """Install timers; return (transformer durations, replay function, text encoding, VAE decode durations)."""
        raise NotImplementedError

    def timed_call(self, steps: int) -> dict:
        transformer_durations, replay, text_durations, vae_durations = self.instrument()
        marks = []

        def mark(pipe, step, timestep, callback_kwargs):
            marks.append(time.perf_counter())
            return {}

        start = time.perf_counter()
        self.call(steps=steps, callback=mark)
        call_seconds = time.perf_counter() - start
        return {
            "call_s": call_seconds,
            "step_s": [after - before for before, after in zip(marks, marks[1:])],  # whole iterations 1 .. steps-1
            "step_infer_s": transformer_durations[1:],
            "text_encoding_s": sum(text_durations),
            "vae_decode_s": sum(vae_durations),
            "forward_s": [replay() for _ in range(3)],
        }


class OursRuntime(DiffusersStyleRuntime):
    takes_taylorseer = True

    def load(self, cache_dir: Path | None) -> None:
        from sd3_helper import OVStableDiffusion3Pipeline

        # Dynamic shapes unless `-static` (then `reshape`): the names say which; the default "auto" would compile at the first call.
        self.pipe = OVStableDiffusion3Pipeline.from_pretrained(
            self.task["folder"], device="CPU", cache_dir=cache_dir, compile=False, shapes="dynamic"
        )
        self.pipe.set_progress_bar_config(disable=True)
        if self.task.get("static"):
            shape = {key: self.task[key] for key in ("height", "width", "max_sequence_length")}
            self.pipe.reshape(**shape, do_classifier_free_guidance=GUIDANCE_SCALE > 1)

    def compile(self) -> None:
        self.pipe.compile()

    def instrument(self):
        transformer = self.pipe.transformer.request = TimedRequest(self.pipe.transformer.request)
        vae = self.pipe.vae_decoder.request = TimedRequest(self.pipe.vae_decoder.request)
        return transformer.durations, transformer.replay, time_method(self.pipe, "encode_prompt"), vae.durations


class OptimumRuntime(OursRuntime):
    takes_taylorseer = False
    def imports(self) -> None:
        super().imports()
        import optimum.intel  # noqa: F401

    def load(self, cache_dir: Path | None) -> None:
        from optimum.intel import OVStableDiffusion3Pipeline

        ov_config = {"CACHE_DIR": str(cache_dir)} if cache_dir is not None else None
        self.pipe = OVStableDiffusion3Pipeline.from_pretrained(self.task["folder"], ov_config=ov_config, compile=False)
        self.pipe.set_progress_bar_config(disable=True)


class DiffusersRuntime(DiffusersStyleRuntime):
    hooks = ()

    def load(self, cache_dir: Path | None) -> None:
        import torch

        from sd3_helper import load_sd3_pipeline

        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[self.task["dtype"]]
        self.pipe = load_sd3_pipeline(self.task["checkpoint"], load_t5=False, torch_dtype=dtype)
        self.pipe.set_progress_bar_config(disable=True)

    compile = None  # eager PyTorch: nothing to compile

    def instrument(self):
        import torch

        transformer, durations, state = self.pipe.transformer, [], {}

        def before(module, args, kwargs):
            state.update(start=time.perf_counter(), kwargs=kwargs)

        def after(module, args, kwargs, output):
            durations.append(time.perf_counter() - state["start"])

        for hook in self.hooks:
            hook.remove()
        self.hooks = [
            transformer.register_forward_pre_hook(before, with_kwargs=True),
            transformer.register_forward_hook(after, with_kwargs=True),
        ]

        def replay() -> float:
            with torch.no_grad():
                start = time.perf_counter()
                transformer.forward(**state["kwargs"])  # forward() skips the hooks
                return time.perf_counter() - start

        return durations, replay, time_method(self.pipe, "encode_prompt"), time_method(self.pipe.vae, "decode")


class GenAIRuntime:
    """openvino.genai's C++ Text2ImagePipeline; timings from its own performance metrics."""

    def __init__(self, task: dict):
        self.task = task
        self.pipe = None

    def imports(self) -> None:
        import openvino_genai  # noqa: F401

    def load(self, cache_dir: Path | None) -> None:
        import openvino_genai

        # Constructed without a device, so that loading and compiling are timed apart (make_genai_pipeline does both).
        self.pipe = openvino_genai.Text2ImagePipeline(self.task["folder"])
        self.properties = {"CACHE_DIR": str(cache_dir)} if cache_dir is not None else {}

    def compile(self) -> None:
        self.pipe.compile("CPU", **self.properties)

    def call(self, *, steps: int):
        import numpy as np
        import openvino_genai

        generator = openvino_genai.TorchGenerator(SEED)  # the same latents as torch.Generator().manual_seed(SEED)
        image = self.pipe.generate(PROMPT, **generation_options(self.task, steps=steps), generator=generator)
        return np.asarray(image.data[0], dtype=np.float32) / 255.0

    def step_times(self, steps: int) -> list[float]:
        self.call(steps=steps)
        return [value / 1e6 for value in self.pipe.get_performance_metrics().raw_metrics.iteration_durations][1:]

    def whole_image(self) -> float:
        start = time.perf_counter()
        self.call(steps=self.task["steps"])
        return time.perf_counter() - start

    def timed_call(self, steps: int) -> dict:
        start = time.perf_counter()
        self.call(steps=steps)
        call_seconds = time.perf_counter() - start
        metrics = self.pipe.get_performance_metrics()
        transformer = [value / 1e6 for value in metrics.raw_metrics.transformer_inference_durations]  # microseconds
        return {
            "call_s": call_seconds,
            "step_s": [value / 1e6 for value in metrics.raw_metrics.iteration_durations][1:],
            "step_infer_s": transformer[1:],
            "text_encoding_s": sum(metrics.get_text_encoder_infer_duration().values()) / 1e3,  # milliseconds
            "vae_decode_s": metrics.get_vae_decoder_infer_duration() / 1e3,
            "forward_s": transformer[1:],  # no standalone forward: the in-loop infers of the same compiled model
            "forward_in_loop": True,
        }


RUNTIME_CLASSES = {"ours": OursRuntime, "optimum": OptimumRuntime, "diffusers": DiffusersRuntime, "genai": GenAIRuntime}


def make_runtime(spec: dict):
    """The runtime object for one entry of `runtime_specs` (plus the call's size and steps)."""
    return RUNTIME_CLASSES[spec["family"]](spec)
