"""Benchmark SD3 text-to-image on CPU: our OpenVINO pipeline (fp16, int8, int4, int8-hybrid IRs) against the
peers it can import (diffusers torch fp32 / bf16, optimum-intel, openvino.genai), in one interleaved run.

    python benchmarks/bench_sd3.py                  # 2-layer SD3-Medium-shaped model, ~25 min on 2 cores
    python benchmarks/bench_sd3.py --layers 24 --runtimes ours-fp16,ours-int8-hybrid   # full depth
    python benchmarks/bench_sd3.py --quick          # smoke run: tiny sizes, 2 steps, 1 round

No download: the checkpoint is random-weight, built from configs with SD3 Medium's real widths (patch 2, 16
latent channels, 24 heads x 64, joint width 4096, caption projection 1536, pooled 2048, CLIP-L and CLIP-G
text encoders, the real VAE; no T5) and `--layers` transformer blocks (24 = full depth). It is written once
to `--work-dir` and converted there by `convert_sd3` (fp16, int8, int4) and, for int8-hybrid, by
`convert_sd3` when it takes the `--calibration-samples` count, else by `quantize_sd3` on the fp16 IR (the
table says which). Each conversion runs in a process of its own whose time and peak RSS are measured.

Every visit of a runtime is a process of its own: its peak RSS is its own, only one runtime is in memory at
a time, and a peer that fails to import or load becomes a table row with the reason instead of stopping the
run. Each round visits every runtime once, in a rotating order, so slow drifts of the machine (thermal,
neighbours) spread over all of them, and the table shows medians over rounds:

- step: seconds per denoising step inside a pipeline call (batch 2 = classifier-free guidance), from the
  intervals between `callback_on_step_end` calls (openvino.genai: its own per-iteration metrics);
- transformer: the raw forward, an infer of the transformer alone on the same batch-2 inputs;
- overhead: step minus the transformer infer time measured inside the same steps, in % of a step;
- text encoding, VAE decode: the pipeline's own encode / decode of one prompt / one latent;
- whole image: text encoding + `--steps` steps + VAE decode. To save time only `--timed-steps` steps are run
  per call and the rest are extrapolated from the median step time (the table says so);
- TFLOPS: the forward's FLOPs (`transformer_flops`, counted from the config) over the forward's median time,
  against a bf16 matmul peak (4096^3 in torch and in an OpenVINO MatMul model) measured in the same run;
- PSNR of each runtime's image against our fp16 pipeline's image (same prompt, seed and steps);
- compile time without a cache and with an empty `CACHE_DIR` (cold), in a process of their own before the
  first visit, and with the filled cache (warm) in every visit;
- IR sizes (xml + bin per submodel) and their ratio to fp16;
- head to head (`HEAD_TO_HEAD`): pairs of runtimes in one process, measured alternately, the median ratio of
  each pair's times. The machine's speed can drift by 2x over minutes (a shared VM), which the visits above see
  as noise between rounds; the two halves of a pair see the same speed, so the targets are judged on these.

Results go to `benchmarks/results/` (JSON and a markdown table, with the machine: CPU model, cores, RAM and
library versions). Timings taken while other work runs on the machine are noisy: run it on a quiet machine.
"""

import argparse
import inspect
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

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
# Head-to-head comparisons, each in one process (see `_head_to_head_task`): (A, B, measure, pairs); the table
# shows A ÷ B, and the targets are judged on these ratios.
HEAD_TO_HEAD = (
    ("ours-fp16-genai-tokens", "genai-fp16", "step", 9),  # the same IR and the same work
    ("ours-fp16", "optimum-fp16", "step", 9),  # the same IR and the same work
    ("ours-fp16-static", "ours-fp16", "step", 9),  # what `pipe.reshape(...)` (static shapes) gains
    ("ours-fp16-static-genai-tokens", "genai-fp16", "step", 9),
    ("ours-int8-hybrid", "ours-fp16", "forward", 15),
    ("ours-int8-hybrid", "genai-fp16", "whole", 3),
    ("ours-fp16-genai-tokens", "genai-fp16", "whole", 3),
    # genai caches steps by default (TaylorSeer lite, 14 of 28 transformer calls); ours with the same cache:
    ("ours-int8-hybrid-taylorseer", "genai-fp16", "whole", 3),
    ("ours-fp16-genai-tokens-taylorseer", "genai-fp16", "whole", 3),
)
MATMUL_SIDE = 4096  # the bf16 peak is measured on a square matmul of this side

# SD3 Medium's shapes (stabilityai/stable-diffusion-3-medium-diffusers, the config.json of each component).
SD3_MEDIUM = {
    "transformer": dict(
        sample_size=128,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        attention_head_dim=64,
        num_attention_heads=24,
        joint_attention_dim=4096,
        caption_projection_dim=1536,
        pooled_projection_dim=2048,  # CLIP-L's 768 + CLIP-G's 1280 pooled projections
        pos_embed_max_size=192,
    ),
    "text_encoder": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, projection_dim=768, hidden_act="quick_gelu"),
    "text_encoder_2": dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20, projection_dim=1280, hidden_act="gelu"),
    "vae": dict(block_out_channels=(128, 256, 512, 512), latent_channels=16, layers_per_block=2, norm_num_groups=32, sample_size=1024),
    "clip_vocab_size": 49408,
}
# The same structure, tiny (same patch and latent channels): for `--quick`, a smoke run of every code path.
TINY = {
    "transformer": dict(
        SD3_MEDIUM["transformer"],
        sample_size=32,
        attention_head_dim=16,
        num_attention_heads=4,
        joint_attention_dim=128,
        caption_projection_dim=64,
        pooled_projection_dim=80,  # 32 + 48, the tiny CLIPs' projections
        pos_embed_max_size=48,
    ),
    "text_encoder": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, projection_dim=32, hidden_act="quick_gelu"),
    "text_encoder_2": dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, projection_dim=48, hidden_act="gelu"),
    "vae": dict(block_out_channels=(16, 32), latent_channels=16, layers_per_block=1, norm_num_groups=8, sample_size=64),
    "clip_vocab_size": 1000,
}


# ----------------------------------------------------------------------------------------------------------
# The checkpoint
# ----------------------------------------------------------------------------------------------------------


def build_checkpoint(work_dir: Path, *, layers: int, quick: bool = False) -> Path:
    """Write (once) a random-weight SD3 checkpoint of SD3 Medium's shapes with `layers` transformer blocks
    (tiny shapes with `quick`), in diffusers format and fp16, without T5; return its folder."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from sd3_conversion import _publish, _staging_dir
    from sd3_tiny_model import _train_clip_tokenizer

    shapes = TINY if quick else SD3_MEDIUM
    folder = work_dir / (f"tiny-{layers}-layers" if quick else f"sd3-medium-shaped-{layers}-layers")
    if (folder / "model_index.json").is_file():
        return folder

    def half(module):
        return module.to(torch.float16).eval()  # built in f32 (CPU init), stored in fp16 as the real checkpoint

    torch.manual_seed(0)
    tokenizers = {
        "tokenizer": _train_clip_tokenizer(vocab_size=600, pad_token="<|endoftext|>"),
        "tokenizer_2": _train_clip_tokenizer(vocab_size=600, pad_token="!"),  # SD3's CLIP-G tokenizer pads with "!"
    }
    components = {}
    for name in ("text_encoder", "text_encoder_2"):
        tokenizer = tokenizers[name.replace("text_encoder", "tokenizer")]
        config = CLIPTextConfig(
            **shapes[name],
            vocab_size=shapes["clip_vocab_size"],
            max_position_embeddings=77,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        components[name] = half(CLIPTextModelWithProjection(config))
    components["transformer"] = half(SD3Transformer2DModel(**shapes["transformer"], num_layers=layers))
    blocks = len(shapes["vae"]["block_out_channels"])
    components["vae"] = half(
        AutoencoderKL(
            **shapes["vae"],
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * blocks,
            up_block_types=("UpDecoderBlock2D",) * blocks,
            scaling_factor=1.5305,  # SD3's
            shift_factor=0.0609,
            use_quant_conv=False,
            use_post_quant_conv=False,
        )
    )
    pipeline = StableDiffusion3Pipeline(
        **components,
        **tokenizers,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
        text_encoder_3=None,
        tokenizer_3=None,
    )
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = _staging_dir(folder)
    try:
        pipeline.save_pretrained(staging)
        _publish(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def transformer_flops(config: dict, *, height: int, width: int, vae_scale_factor: int, text_tokens: int, batch: int) -> float:
    """FLOPs of one forward of an SD3 (MMDiT) transformer, counting 2 per multiply-add of its matmuls.

    With N image tokens (one per patch), M text tokens (77 CLIP + `max_sequence_length` T5 positions), width
    D = heads x head_dim and L joint blocks, per image:
        patch embedding 2·N·(C·p²)·D, context embedding 2·M·joint_attention_dim·D,
        per block: 24·(N + M)·D² for the q, k, v, out projections and the 4x MLPs of both streams
        (the last block's text stream has only q, k, v: 6·M·D²) and 4·(N + M)²·D for attention,
        output projection 2·N·D·(p²·C_out); the per-image conditioning MLPs and adaLN are counted too.
    Elementwise work (norms, softmax, activations) is left out: it is < 1% here. For the 2-layer model at
    512x512 with 333 text tokens this gives 333.7 GFLOP, equal to a count over the MatMul, Convolution and
    ScaledDotProductAttention shapes of the IR reshaped to those inputs (with max_sequence_length 77, i.e.
    154 text tokens, it gives the ~293 GFLOP quoted in issue 5).
    """
    patch = config["patch_size"]
    width_d = config["num_attention_heads"] * config["attention_head_dim"]
    layers = config["num_layers"]
    n = (height // vae_scale_factor // patch) * (width // vae_scale_factor // patch)
    m = text_tokens
    tokens = n + m
    flops = 2 * n * config["in_channels"] * patch**2 * width_d  # patch embedding
    flops += 2 * m * config["joint_attention_dim"] * width_d  # context embedding
    flops += 2 * (256 * width_d + width_d**2 + config["pooled_projection_dim"] * width_d + width_d**2)  # timestep/text MLPs
    for layer in range(layers):
        last = layer == layers - 1
        flops += 24 * n * width_d**2 + (6 if last else 24) * m * width_d**2
        flops += 4 * tokens**2 * width_d
        flops += 2 * width_d * 6 * width_d + 2 * width_d * (2 if last else 6) * width_d  # adaLN modulation
    flops += 2 * width_d * 2 * width_d + 2 * n * width_d * patch**2 * config["out_channels"]  # norm_out, proj_out
    return float(flops * batch)


# ----------------------------------------------------------------------------------------------------------
# Work done in subprocesses (one per conversion, one per runtime visit): each reports its own peak RSS
# ----------------------------------------------------------------------------------------------------------


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def _convert_task(task: dict) -> dict:
    """Convert the checkpoint to one weight format; time it and report the peak RSS above the imports."""
    import nncf  # noqa: F401  (imported before the baseline, like the others)
    import openvino  # noqa: F401

    import sd3_conversion
    import sd3_quantization

    output_dir = Path(task["output_dir"])
    shutil.rmtree(output_dir, ignore_errors=True)
    baseline = _rss()
    start = time.perf_counter()
    fmt = task["weight_format"]
    samples = task["calibration_samples"]
    default_samples = inspect.signature(sd3_quantization.quantize_sd3).parameters["num_samples"].default
    convert_options = {"num_samples": samples} if fmt == "int8-hybrid" and samples != default_samples else {}
    result = {"calibration_samples": samples} if fmt == "int8-hybrid" else {}
    convert_takes_options = set(convert_options) <= set(inspect.signature(sd3_conversion.convert_sd3).parameters)
    if fmt in sd3_conversion.WEIGHT_FORMATS and convert_takes_options:
        sd3_conversion.convert_sd3(task["checkpoint"], output_dir, load_t5=False, weight_format=fmt, **convert_options)
        result["source"] = "checkpoint"
    else:  # int8-hybrid with a sample count convert_sd3 cannot take (or before it knows int8-hybrid)
        sd3_quantization.quantize_sd3(task["fp16_dir"], output_dir, num_samples=samples)
        result["source"] = "fp16 IR"
    return {"seconds": time.perf_counter() - start, "peak_rss": _peak_rss(), "baseline_rss": baseline, **result}


def _matmul_peak_task(task: dict) -> dict:
    """bf16 matmul throughput (TFLOPS) of a MATMUL_SIDE^3 product in torch and in an OpenVINO MatMul model."""
    import numpy as np
    import openvino as ov
    import openvino.opset13 as opset
    import torch

    side, repeats = MATMUL_SIDE, 10
    flops = 2 * side**3
    a, b = torch.randn(side, side, dtype=torch.bfloat16), torch.randn(side, side, dtype=torch.bfloat16)
    times = []
    for index in range(repeats + 3):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    torch_tflops = flops / statistics.median(times[3:]) / 1e12

    # A FullyConnected layer, as the transformer's: f32 activations times constant weights, bf16 inside (AMX).
    parameter = opset.parameter([side, side], ov.Type.f32, name="x")
    weights = opset.constant(np.random.default_rng(0).standard_normal((side, side), dtype=np.float32))
    model = ov.Model([opset.matmul(parameter, weights, transpose_a=False, transpose_b=True)], [parameter])
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "bf16"})
    request, x = compiled.create_infer_request(), np.random.default_rng(1).standard_normal((side, side), dtype=np.float32)
    times = []
    for index in range(repeats + 3):
        start = time.perf_counter()
        request.infer({"x": x})
        times.append(time.perf_counter() - start)
    return {"torch_bf16_tflops": torch_tflops, "openvino_bf16_tflops": flops / statistics.median(times[3:]) / 1e12}


class TimedRequest:
    """Stands in for an OpenVINO infer request or compiled model: times `infer(...)` and `(...)` calls and
    keeps the last call, so the same forward can be replayed alone."""

    def __init__(self, request):
        self._request = request
        self.durations: list[float] = []
        self.last_call = None

    def __getattr__(self, name):
        return getattr(self._request, name)

    def _timed(self, method, *args, **kwargs):
        start = time.perf_counter()
        result = method(*args, **kwargs)
        self.durations.append(time.perf_counter() - start)
        self.last_call = (method, args, kwargs)
        return result

    def infer(self, *args, **kwargs):
        return self._timed(self._request.infer, *args, **kwargs)

    def __call__(self, *args, **kwargs):
        return self._timed(self._request, *args, **kwargs)

    def replay(self) -> float:
        method, args, kwargs = self.last_call
        start = time.perf_counter()
        method(*args, **kwargs)
        return time.perf_counter() - start


def _time_method(obj, name: str) -> list[float]:
    """Replace `obj.name` by a wrapper that records each call's duration; return the list it fills."""
    durations, method = [], getattr(obj, name)

    def timed(*args, **kwargs):
        start = time.perf_counter()
        result = method(*args, **kwargs)
        durations.append(time.perf_counter() - start)
        return result

    setattr(obj, name, timed)
    return durations


def _generation_options(task: dict, *, steps: int) -> dict:
    """The arguments every runtime's text-to-image call gets (all name them alike)."""
    return {
        "negative_prompt": NEGATIVE_PROMPT,
        "height": task["height"],
        "width": task["width"],
        "num_inference_steps": steps,
        "guidance_scale": GUIDANCE_SCALE,
        "max_sequence_length": task["max_sequence_length"],
    }


class DiffusersStyleRuntime:
    """A pipeline with diffusers' call signature (ours, diffusers, optimum-intel): shared timing code."""

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
        options = _generation_options(self.task, steps=steps)
        if self.task.get("taylorseer"):
            import sd3_helper

            options["taylorseer"] = sd3_helper.TaylorSeerConfig()  # openvino.genai's defaults
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
    def load(self, cache_dir: Path | None) -> None:
        import sd3_helper

        options = {}
        if cache_dir is not None:
            if "cache_dir" in inspect.signature(sd3_helper.OVStableDiffusion3Pipeline.from_pretrained).parameters:
                options["cache_dir"] = cache_dir
            else:
                options["ov_config"] = {"CACHE_DIR": str(cache_dir)}
        self.pipe = sd3_helper.OVStableDiffusion3Pipeline.from_pretrained(self.task["folder"], device="CPU", compile=False, **options)
        self.pipe.set_progress_bar_config(disable=True)
        if self.task.get("static"):
            shape = {key: self.task[key] for key in ("height", "width", "max_sequence_length")}
            self.pipe.reshape(**shape, do_classifier_free_guidance=GUIDANCE_SCALE > 1)

    def compile(self) -> None:
        self.pipe.compile()

    def instrument(self):
        transformer = self.pipe.transformer.request = TimedRequest(self.pipe.transformer.request)
        vae = self.pipe.vae_decoder.request = TimedRequest(self.pipe.vae_decoder.request)
        return transformer.durations, transformer.replay, _time_method(self.pipe, "encode_prompt"), vae.durations


class OptimumRuntime(OursRuntime):
    def imports(self) -> None:
        super().imports()
        import optimum.intel  # noqa: F401

    def load(self, cache_dir: Path | None) -> None:
        from optimum.intel import OVStableDiffusion3Pipeline

        ov_config = {"CACHE_DIR": str(cache_dir)} if cache_dir is not None else None
        self.pipe = OVStableDiffusion3Pipeline.from_pretrained(self.task["folder"], ov_config=ov_config, compile=False)
        self.pipe.set_progress_bar_config(disable=True)


class DiffusersRuntime(DiffusersStyleRuntime):
    def load(self, cache_dir: Path | None) -> None:
        import torch

        import sd3_conversion

        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[self.task["dtype"]]
        self.pipe = sd3_conversion.load_sd3_pipeline(self.task["checkpoint"], load_t5=False, torch_dtype=dtype)
        self.pipe.set_progress_bar_config(disable=True)

    compile = None  # eager PyTorch: nothing to compile

    def instrument(self):
        import torch

        transformer, durations, state = self.pipe.transformer, [], {}

        def before(module, args, kwargs):
            state.update(start=time.perf_counter(), kwargs=kwargs)

        def after(module, args, kwargs, output):
            durations.append(time.perf_counter() - state["start"])

        for hook in getattr(self, "_hooks", []):
            hook.remove()
        self._hooks = [
            transformer.register_forward_pre_hook(before, with_kwargs=True),
            transformer.register_forward_hook(after, with_kwargs=True),
        ]

        def replay() -> float:
            with torch.no_grad():
                start = time.perf_counter()
                transformer.forward(**state["kwargs"])  # forward() skips the hooks
                return time.perf_counter() - start

        return durations, replay, _time_method(self.pipe, "encode_prompt"), _time_method(self.pipe.vae, "decode")


class GenAIRuntime:
    """openvino.genai's C++ Text2ImagePipeline; timings from its own performance metrics."""

    def __init__(self, task: dict):
        self.task = task
        self.pipe = None

    def imports(self) -> None:
        import openvino_genai  # noqa: F401

    def load(self, cache_dir: Path | None) -> None:
        import openvino_genai

        self.pipe = openvino_genai.Text2ImagePipeline(self.task["folder"])
        self.properties = {"CACHE_DIR": str(cache_dir)} if cache_dir is not None else {}

    def compile(self) -> None:
        self.pipe.compile("CPU", **self.properties)

    def call(self, *, steps: int):
        import numpy as np
        import openvino_genai

        generator = openvino_genai.TorchGenerator(SEED)  # the same latents as torch.Generator().manual_seed(SEED)
        image = self.pipe.generate(PROMPT, **_generation_options(self.task, steps=steps), generator=generator)
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


def _compile_probe_task(task: dict) -> dict:
    """Compile times without a cache and with an empty `CACHE_DIR` (which this fills for the visits)."""
    runtime = RUNTIME_CLASSES[task["family"]](task)
    runtime.imports()
    cache_dir = Path(task["cache_dir"])
    shutil.rmtree(cache_dir, ignore_errors=True)
    result = {}
    for kind, cache in (("no_cache", None), ("cold", cache_dir)):
        runtime.pipe = None  # free the previous load first
        runtime.load(cache)
        start = time.perf_counter()
        runtime.compile()
        result[f"compile_{kind}_s"] = time.perf_counter() - start
    return result


def _head_to_head_task(task: dict) -> dict:
    """Two runtimes in one process, measured alternately (A B, B A, A B, ...), `pairs` times.

    On a shared machine the speed drifts, by up to 2x over minutes on the 2-core VM this was written on; visits
    in separate processes see that drift as noise, while the two halves of a pair see the same speed. The ratio
    of each pair's times is robust; its median over pairs is reported. `measure` is `step` (median seconds of a
    call's steps), `forward` (one transformer infer on the inputs of a real step, our runtimes only) or `whole`
    (text encoding + all steps + VAE decode).
    """
    runtimes = [RUNTIME_CLASSES[spec["family"]](spec) for spec in task["pair"]]
    for runtime, spec in zip(runtimes, task["pair"]):
        runtime.imports()
        runtime.load(Path(spec["cache_dir"]) if spec["cache_dir"] else None)
        if runtime.compile is not None:
            runtime.compile()
        runtime.call(steps=2)  # warm-up, and the inputs a forward replays
    measure = task["measure"]
    if measure == "forward":
        replays = [runtime.instrument()[1] for runtime in runtimes]
        for runtime in runtimes:
            runtime.call(steps=2, output_type="latent")  # records the inputs of a real step
        measures = [lambda replay=replay: replay() for replay in replays]
    elif measure == "step":
        measures = [lambda runtime=runtime: statistics.median(runtime.step_times(task["timed_steps"])) for runtime in runtimes]
    else:
        measures = [runtime.whole_image for runtime in runtimes]
    seconds = [[], []]
    for pair in range(task["pairs"]):
        for index in (0, 1) if pair % 2 == 0 else (1, 0):
            seconds[index].append(measures[index]())
    ratios = [a / b for a, b in zip(*seconds)]
    return {"seconds": seconds, "ratios": ratios}


def _runtime_task(task: dict) -> dict:
    """One visit of one runtime: load and compile (warm cache), warm up, one timed call, standalone forwards,
    and in the first visit the full image."""
    import numpy as np

    runtime = RUNTIME_CLASSES[task["family"]](task)
    runtime.imports()
    result = {"baseline_rss": _rss()}
    start = time.perf_counter()
    runtime.load(Path(task["cache_dir"]) if task["cache_dir"] else None)
    result["load_s"] = time.perf_counter() - start
    if runtime.compile is not None:
        start = time.perf_counter()
        runtime.compile()
        result["compile_warm_s"] = time.perf_counter() - start

    runtime.call(steps=2)  # warm-up: first-inference work (weight repacking, kernel selection) is not timed
    result.update(runtime.timed_call(task["timed_steps"]))
    if task["image_path"]:
        start = time.perf_counter()
        np.save(task["image_path"], np.asarray(runtime.call(steps=task["steps"]), dtype=np.float32))
        result["whole_image_measured_s"] = time.perf_counter() - start
    result["peak_rss"] = _peak_rss()
    return result


def _build_task(task: dict) -> dict:
    folder = build_checkpoint(Path(task["work_dir"]), layers=task["layers"], quick=task["quick"])
    return {"checkpoint": str(folder)}


TASKS = {
    "build": _build_task,
    "convert": _convert_task,
    "matmul": _matmul_peak_task,
    "compile_probe": _compile_probe_task,
    "runtime": _runtime_task,
    "head_to_head": _head_to_head_task,
}


def _worker_main(task_path: str) -> int:
    task = json.loads(Path(task_path).read_text())
    result = TASKS[task["kind"]](task)
    Path(task["result_path"]).write_text(json.dumps(result))
    return 0


@dataclass
class Outcome:
    ok: bool
    result: dict = field(default_factory=dict)
    reason: str = ""
    seconds: float = 0.0


def run_in_subprocess(task: dict, *, logs: Path, name: str, timeout: float = 3 * 3600) -> Outcome:
    """Run `task` in a fresh Python process; its output goes to `logs/<name>.log`."""
    logs.mkdir(parents=True, exist_ok=True)
    task_path, result_path = logs / f"{name}.task.json", logs / f"{name}.result.json"
    result_path.unlink(missing_ok=True)
    task_path.write_text(json.dumps({**task, "result_path": str(result_path)}))
    start = time.perf_counter()
    with open(logs / f"{name}.log", "w") as log:
        try:
            process = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "--worker", str(task_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                cwd=ROOT,
            )
            returncode = process.returncode
        except subprocess.TimeoutExpired:
            returncode = f"timeout after {timeout:.0f} s"
    seconds = time.perf_counter() - start
    if returncode == 0 and result_path.is_file():
        return Outcome(True, json.loads(result_path.read_text()), seconds=seconds)
    return Outcome(False, reason=_failure_reason(logs / f"{name}.log", returncode), seconds=seconds)


def _failure_reason(log_path: Path, returncode) -> str:
    """The exception line of a failed worker's log (or its last line), for the table."""
    lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.split(":")[0].endswith(("Error", "Exception"))]
    detail = (errors or lines or ["no output"])[-1]
    if isinstance(returncode, int) and returncode < 0:
        detail = f"killed by signal {-returncode} (out of memory?); last output: {detail}"
    return f"{detail[:300]} (log: {log_path})"


# ----------------------------------------------------------------------------------------------------------
# The run: checkpoint, conversions, interleaved rounds of visits, tables
# ----------------------------------------------------------------------------------------------------------


def machine_description() -> dict:
    """CPU model and flags, cores, RAM, Python and library versions, read without importing the libraries."""
    from importlib import metadata

    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    fields = dict(line.split(":", 1) for line in cpuinfo.splitlines() if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    flags = set(fields.get("flags", "").split())
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").is_file() else ""
    mem_kb = next((int(line.split()[1]) for line in meminfo.splitlines() if line.startswith("MemTotal:")), 0)
    versions = {}
    for package in ("openvino", "openvino-genai", "openvino-tokenizers", "nncf", "torch", "diffusers", "transformers", "optimum-intel", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpu": fields.get("model name", platform.processor()),
        "cores": os.cpu_count(),
        "cpu_features": sorted(flags & {"avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "amx_tile"}),
        "ram_gb": round(mem_kb / 1024**2, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def folder_size(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def ir_sizes(folder: Path) -> dict[str, int]:
    """xml + bin bytes of each submodel of an OpenVINO SD3 folder."""
    return {
        sub.name: sum((sub / name).stat().st_size for name in ("openvino_model.xml", "openvino_model.bin"))
        for sub in sorted(folder.iterdir())
        if (sub / "openvino_model.xml").is_file()
    }


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


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize_runtime(visits: list[dict], *, compile_probe: dict, steps: int, timed_steps: int, flops: float) -> dict:
    """Medians over rounds of each visit's own medians."""
    per_round_step = [statistics.median(visit["step_s"]) for visit in visits if visit["step_s"]]
    step = _median(per_round_step)
    step_infer = _median([statistics.median(visit["step_infer_s"]) for visit in visits if visit["step_infer_s"]])
    forward = _median([statistics.median(visit["forward_s"]) for visit in visits if visit["forward_s"]])
    whole = _median(
        [visit["call_s"] + (steps - timed_steps) * statistics.median(visit["step_s"]) for visit in visits if visit["step_s"]]
    )
    vae = _median([visit["vae_decode_s"] for visit in visits])
    first = visits[0]
    return {
        "rounds": len(visits),
        "step_s": step,
        "forward_s": forward,
        "forward_in_loop": bool(first.get("forward_in_loop")),
        "step_infer_s": step_infer,
        "overhead_pct": 100 * (step - step_infer) / step if step and step_infer else None,
        "text_encoding_s": _median([visit["text_encoding_s"] for visit in visits]),
        "vae_decode_s": vae,
        "whole_image_s": whole,
        "vae_share_pct": 100 * vae / whole if whole and vae is not None else None,
        "whole_image_measured_s": first.get("whole_image_measured_s"),
        "forward_tflops": flops / forward / 1e12 if forward else None,
        "load_s": _median([visit["load_s"] for visit in visits]),
        "compile_no_cache_s": compile_probe.get("compile_no_cache_s"),
        "compile_cold_s": compile_probe.get("compile_cold_s"),
        "compile_warm_s": _median([visit["compile_warm_s"] for visit in visits if "compile_warm_s" in visit]),
        "peak_rss": max(visit["peak_rss"] for visit in visits),
        "baseline_rss": _median([visit["baseline_rss"] for visit in visits]),
    }


def psnr(image, reference) -> float:
    """Peak signal-to-noise ratio in dB of two images with values in [0, 1]."""
    import numpy as np

    mse = float(np.mean((np.asarray(image, dtype=np.float64) - np.asarray(reference, dtype=np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def _fmt(value, spec: str = ".2f", suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def _gb(value) -> str:
    return _fmt(None if value is None else value / 1e9, ".2f")


def _size(num_bytes: int) -> str:
    return f"{num_bytes / 1e9:.2f} GB" if num_bytes >= 1e9 else f"{num_bytes / 1e6:.1f} MB"


def markdown_report(results: dict) -> str:
    """The results as markdown: setup, runtimes table, conversions table, targets."""
    setup, machine = results["setup"], results["machine"]
    peak = results["matmul_peak"]
    lines = [
        f"### SD3 benchmark: {setup['model']}",
        "",
        f"{setup['height']}x{setup['width']}, guidance {GUIDANCE_SCALE}, {setup['steps']} steps, max_sequence_length "
        f"{setup['max_sequence_length']}; medians of {setup['repeats']} interleaved rounds; {machine['date']}.",
        f"Machine: {machine['cpu']}, {machine['cores']} cores ({', '.join(machine['cpu_features'])}), {machine['ram_gb']} GB RAM; "
        + ", ".join(f"{name} {version}" for name, version in machine["versions"].items() if version)
        + ".",
        f"Transformer forward (batch 2): {results['forward_gflop']:.0f} GFLOP. bf16 matmul peak ({MATMUL_SIDE}^3): "
        f"torch {_fmt(peak.get('torch_bf16_tflops'))} TFLOPS, OpenVINO {_fmt(peak.get('openvino_bf16_tflops'))} TFLOPS.",
        "",
    ]
    table = [
        "| runtime | s / step | transformer forward (s) | overhead (% of step) | text encoding (s) | VAE decode (s) "
        "| whole image (s) ¹ | VAE share | forward TFLOPS | PSNR vs ours-fp16 (dB) | peak RSS (GB) ² | load (s) | compile (s): no cache / cold / warm ³ |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in results["runtimes"].items():
        if "skipped" in row:
            table.append(f"| {name} | skipped: {row['skipped']} |" + " |" * 11)
            continue
        forward = _fmt(row["forward_s"], ".3f") + (" ⁴" if row["forward_in_loop"] else "")
        compiles = " / ".join(_fmt(row[key], ".1f") for key in ("compile_no_cache_s", "compile_cold_s", "compile_warm_s"))
        table.append(
            f"| {name} | {_fmt(row['step_s'], '.3f')} | {forward} | {_fmt(row['overhead_pct'], '.1f')} "
            f"| {_fmt(row['text_encoding_s'], '.3f')} | {_fmt(row['vae_decode_s'], '.2f')} | {_fmt(row['whole_image_s'], '.1f')} "
            f"| {_fmt(row['vae_share_pct'], '.0f', ' %')} | {_fmt(row['forward_tflops'], '.2f')} | {_fmt(row.get('psnr_db'), '.1f')} "
            f"| {_gb(row['peak_rss'])} ({_gb(row['peak_rss'] - row['baseline_rss'])}) | {_fmt(row['load_s'], '.1f')} | {compiles} |"
        )
    timed, steps = setup["timed_steps"], setup["steps"]
    table += [
        "",
        f"¹ text encoding + {steps} steps + VAE decode: each call ran {timed} steps"
        + (f", the other {steps - timed} are extrapolated from the median step time." if steps > timed else "."),
        "² the largest peak RSS of the runtime's own process over its visits (in parentheses: above its post-import baseline).",
        "³ load: reading the folder (`from_pretrained(compile=False)`, the genai constructor, diffusers' `from_pretrained`); "
        "compile: OpenVINO compilation without a cache, with an empty `CACHE_DIR` (cold) and with the filled one (warm).",
        "⁴ openvino.genai has no standalone forward: the median of its in-loop transformer infers.",
        "",
        "Text tokens per transformer call: "
        + ", ".join(f"{name} {row['text_tokens']}" for name, row in results["runtimes"].items() if "text_tokens" in row)
        + ". Without T5, openvino.genai pads the T5 part to 77 positions where diffusers pads to `max_sequence_length`; "
        "`ours-fp16-genai-tokens` is our pipeline with `max_sequence_length=77`, the same work"
        + (
            f" and the same image (PSNR {results['psnr_ours_genai_tokens_vs_genai_db']:.1f} dB against genai's)."
            if results.get("psnr_ours_genai_tokens_vs_genai_db") is not None
            else "."
        ),
    ]
    lines += table if setup["repeats"] else ["No interleaved rounds in this run.", ""]
    lines += [
        "",
        "| weight format | " + " | ".join(results["submodels"]) + " | total | largest ratio to fp16 | conversion (s) "
        "| conversion peak RSS (GB) | above post-import baseline (GB) |",
        "|---|" + "---|" * (len(results["submodels"]) + 5),
    ]
    for fmt, row in results["formats"].items():
        sizes = row.get("ir_bytes", {})
        cells = [f"{_size(sizes[sub])} ({row['ratio_to_fp16'][sub]:.2f})" if sub in sizes else "n/a" for sub in results["submodels"]]
        conversion = row.get("conversion", {})
        note = f" (from the {conversion['source']})" if conversion.get("source") == "fp16 IR" else ""
        if conversion.get("calibration_samples"):
            note += f" ({conversion['calibration_samples']} calibration samples)"
        if conversion.get("skipped"):
            note = f" ({conversion['skipped']})"
        lines.append(
            f"| {fmt} | " + " | ".join(cells) + f" | {_size(sum(sizes.values()))} | {_fmt(row.get('largest_ratio'))} "
            f"| {_fmt(conversion.get('seconds'), '.0f')}{note} | {_gb(conversion.get('peak_rss'))} "
            f"| {_gb(conversion['peak_rss'] - conversion['baseline_rss']) if conversion.get('peak_rss') else 'n/a'} |"
        )
    lines += ["", f"Checkpoint (fp16 safetensors) on disk: {_size(results['checkpoint_bytes'])}.", ""]
    if results.get("head_to_head"):
        lines += [
            "Head to head: both runtimes in one process, measured alternately; the ratio of each pair's times, median "
            "(and range) over pairs. Robust to the machine's speed drifting between the visits above.",
            "",
            "| A | B | measure | pairs | A (s) | B (s) | A ÷ B |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in results["head_to_head"]:
            if "skipped" in row:
                lines.append(f"| {row['a']} | {row['b']} | {row['measure']} | skipped: {row['skipped']} | | | |")
                continue
            lines.append(
                f"| {row['a']} | {row['b']} | {row['measure']} | {row['pairs']} | {row['a_s']:.3f} | {row['b_s']:.3f} "
                f"| {row['ratio']:.3f} ({row['ratio_min']:.3f} .. {row['ratio_max']:.3f}) |"
            )
        lines.append("")
    lines += ["| target | measured | met |", "|---|---|---|"]
    lines += [f"| {target['target']} | {target['measured']} | {target['met']} |" for target in results["targets"]]
    return "\n".join(lines) + "\n"


def evaluate_targets(results: dict) -> list[dict]:
    """Issue 5's targets, as ratios of this run's numbers (n/a when a row is missing)."""
    rows, formats = results["runtimes"], results["formats"]

    def value(runtime: str, key: str):
        return rows.get(runtime, {}).get(key)

    def target(text: str, measured: float | None, met: bool | None, spec: str = ".2f") -> dict:
        return {"target": text, "measured": _fmt(measured, spec), "met": "n/a" if met is None else ("yes" if met else "no")}

    targets = []
    duels = {(row["a"], row["b"], row["measure"]): row["ratio"] for row in results.get("head_to_head", []) if "ratio" in row}
    duel_targets = [
        (("ours-fp16-genai-tokens", "genai-fp16", "step"), "head to head: ours-fp16 s/step ÷ genai-fp16 s/step <= 1 (same IR, same work)", lambda r: r <= 1),
        (("ours-fp16", "optimum-fp16", "step"), "head to head: ours-fp16 s/step ÷ optimum-fp16 s/step <= 1 (same IR, same work)", lambda r: r <= 1),
        (
            ("ours-fp16-static-genai-tokens", "genai-fp16", "step"),
            "head to head: ours-fp16 with static shapes s/step ÷ genai-fp16 s/step <= 1 (same IR, same work)",
            lambda r: r <= 1,
        ),
        (("ours-int8-hybrid", "ours-fp16", "forward"), "head to head: int8-hybrid forward ÷ fp16 forward <= 1/1.4 = 0.714", lambda r: r <= 1 / 1.4),
        (("ours-int8-hybrid", "genai-fp16", "whole"), "head to head: ours-int8-hybrid whole image ÷ genai-fp16's < 1", lambda r: r < 1),
        (("ours-fp16-genai-tokens", "genai-fp16", "whole"), "head to head: ours-fp16 whole image ÷ genai-fp16's (same work) < 1", lambda r: r < 1),
        (
            ("ours-int8-hybrid-taylorseer", "genai-fp16", "whole"),
            "head to head: ours-int8-hybrid whole image ÷ genai-fp16's, both with genai's step cache < 1",
            lambda r: r < 1,
        ),
        (
            ("ours-fp16-genai-tokens-taylorseer", "genai-fp16", "whole"),
            "head to head: ours-fp16 whole image ÷ genai-fp16's, same work and step cache < 1",
            lambda r: r < 1,
        ),
    ]
    for key, text, check in duel_targets:
        if key in duels:
            targets.append(target(text, duels[key], check(duels[key]), ".3f"))
    genai_step = value("genai-fp16", "step_s")
    for ours in ("ours-fp16-genai-tokens", "ours-fp16"):
        ours_step = value(ours, "step_s")
        ratio = ours_step / genai_step if ours_step and genai_step else None
        same_work = value(ours, "text_tokens") == value("genai-fp16", "text_tokens")
        tokens = f"{value(ours, 'text_tokens')} vs {value('genai-fp16', 'text_tokens')} text tokens"
        text = f"{ours} s/step ÷ genai-fp16 s/step <= 1 ({tokens})"
        targets.append(target(text, ratio, None if ratio is None or not same_work else ratio <= 1))
    overhead = value("ours-fp16", "overhead_pct")
    targets.append(target("ours-fp16 pipeline overhead <= 2 % of a step", overhead, None if overhead is None else overhead <= 2, ".1f"))
    fp16_forward, hybrid_forward = value("ours-fp16", "forward_s"), value("ours-int8-hybrid", "forward_s")
    speedup = fp16_forward / hybrid_forward if fp16_forward and hybrid_forward else None
    targets.append(target("int8-hybrid forward speed-up over fp16 >= 1.4", speedup, None if speedup is None else speedup >= 1.4))
    largest = formats.get("int8", {}).get("largest_ratio")
    targets.append(target("int8 IR size ÷ fp16, every submodel <= 0.55", largest, None if largest is None else largest <= 0.55))
    for fmt in ("fp16", "int8"):
        peak = formats.get(fmt, {}).get("conversion", {}).get("peak_rss")
        ratio = peak / results["checkpoint_bytes"] if peak else None
        text = f"{fmt} conversion peak RSS ÷ checkpoint size <= 1.5 (the target is for 24 layers)"
        targets.append(target(text, ratio, None if ratio is None else ratio <= 1.5))
    peers = [row["whole_image_s"] for name, row in rows.items() if not name.startswith("ours") and row.get("whole_image_s")]
    for ours in ("ours-fp16", "ours-fp16-genai-tokens", "ours-int8-hybrid"):
        whole = value(ours, "whole_image_s")
        ratio = whole / min(peers) if whole and peers else None
        targets.append(target(f"{ours} whole image ÷ fastest peer's < 1", ratio, None if ratio is None else ratio < 1))
    return targets


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("--layers", type=int, default=2, help="transformer blocks (SD3 Medium has 24)")
    parser.add_argument("--steps", type=int, default=28, help="denoising steps of the whole image")
    parser.add_argument("--timed-steps", type=int, default=4, help="steps run per timed call (the rest is extrapolated)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--max-sequence-length", type=int, default=256, help="T5 positions (zeros without T5), as diffusers' default")
    parser.add_argument("--runtimes", default=",".join(RUNTIMES), help=f"comma-separated subset of {','.join(RUNTIMES)}")
    parser.add_argument(
        "--calibration-samples",
        type=int,
        default=28,
        help="int8-hybrid calibration samples (default: one 28-step image, to fit the run in ~25 min on 2 cores; "
        "quantize_sd3's default of 200 takes ~25 min more, NNCF collecting its statistics in f32)",
    )
    parser.add_argument("--skip-conversion-memory", action="store_true", help="reuse converted folders found in --work-dir instead of converting (and measuring) again")
    parser.add_argument("--work-dir", type=Path, default=ROOT / "build" / "bench")
    parser.add_argument("--output", type=Path, default=None, help="JSON results (default: benchmarks/results/bench_sd3_<model>.json)")
    parser.add_argument("--markdown", type=Path, default=None, help="markdown table (default: beside the JSON, .md)")
    parser.add_argument(
        "--head-to-head-only",
        action="store_true",
        help="only the head-to-head pairs, on the converted folders of an earlier run (no conversions, no rounds)",
    )
    parser.add_argument("--head-to-head-filter", default="", help="only the head-to-head pairs whose 'A B measure' contains this text")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny shapes, 128x128, 2 steps, 1 round, cached conversions")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:  # conversions of the tiny model are cached between quick runs, like the checkpoint
        args.steps, args.timed_steps, args.repeats, args.height, args.width = 2, 2, 1, 128, 128
        args.skip_conversion_memory = True
    if args.head_to_head_only:
        args.repeats, args.skip_conversion_memory = 0, True
    unknown = set(args.runtimes.split(",")) - set(RUNTIMES)
    if unknown:
        parser.error(f"--runtimes has unknown names {sorted(unknown)}; choose from {','.join(RUNTIMES)}")
    if not 2 <= args.timed_steps <= args.steps:
        parser.error(f"--timed-steps must be between 2 and --steps ({args.steps}) but is {args.timed_steps}")
    return args


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.worker:
        return _worker_main(args.worker)
    started = time.perf_counter()
    work_dir = args.work_dir.resolve()
    names = [name for name in RUNTIMES if name in args.runtimes.split(",")]
    formats = [fmt for fmt in OUR_FORMATS if any(n == f"ours-{fmt}" or n.startswith(f"ours-{fmt}-") for n in names)]
    if any(n.split("-")[0] in ("optimum", "genai") for n in names) and "fp16" not in formats:
        formats.insert(0, "fp16")  # the peers run our fp16 export
    if "int8-hybrid" in formats or "int8" in formats:  # IR size ratios need the fp16 folder, hybrid starts from it
        formats = ["fp16"] + [fmt for fmt in formats if fmt != "fp16"]

    # 1. The checkpoint
    _log("building the checkpoint (cached in --work-dir)")
    task = {"kind": "build", "work_dir": str(work_dir), "layers": args.layers, "quick": args.quick}
    built = run_in_subprocess(task, logs=work_dir / "logs", name="build")
    if not built.ok:
        print(f"error: could not build the checkpoint: {built.reason}", file=sys.stderr)
        return 1
    checkpoint = Path(built.result["checkpoint"])
    run_dir = work_dir / f"run-{checkpoint.name}"  # logs, images and compile caches of this model's runs
    logs = run_dir / "logs"
    config = json.loads((checkpoint / "transformer" / "config.json").read_text())
    vae_config = json.loads((checkpoint / "vae" / "config.json").read_text())
    vae_scale_factor = 2 ** (len(vae_config["block_out_channels"]) - 1)
    if args.height % (vae_scale_factor * config["patch_size"]) or args.width % (vae_scale_factor * config["patch_size"]):
        print(f"error: --height and --width must be multiples of {vae_scale_factor * config['patch_size']}", file=sys.stderr)
        return 2

    # 2. Conversions, each in its own process (time and peak RSS)
    folders, format_rows = {}, {}
    for fmt in formats:
        folder = work_dir / f"ov-{checkpoint.name}-{fmt}"
        folders[fmt] = folder
        if args.skip_conversion_memory and (folder / "model_index.json").is_file():
            format_rows[fmt] = {"conversion": {"skipped": "reused a cached conversion"}}
            continue
        _log(f"converting to {fmt}")
        task = {
            "kind": "convert",
            "checkpoint": str(checkpoint),
            "output_dir": str(folder),
            "weight_format": fmt,
            "fp16_dir": str(folders["fp16"]),
            "calibration_samples": args.calibration_samples,
        }
        outcome = run_in_subprocess(task, logs=logs, name=f"convert-{fmt}", timeout=12 * 3600)  # 24 layers on 2 cores: hours
        format_rows[fmt] = {"conversion": outcome.result if outcome.ok else {"skipped": f"failed: {outcome.reason}"}}
        _log(f"  {fmt}: " + (f"{outcome.result['seconds']:.0f} s, peak RSS {outcome.result['peak_rss'] / 1e9:.2f} GB" if outcome.ok else outcome.reason))
    submodels = ["transformer", "text_encoder", "text_encoder_2", "vae_decoder", "vae_encoder"]
    fp16_sizes = ir_sizes(folders["fp16"]) if (folders.get("fp16", Path("/nonexistent")) / "model_index.json").is_file() else {}
    for fmt, row in format_rows.items():
        if (folders[fmt] / "model_index.json").is_file():
            row["ir_bytes"] = ir_sizes(folders[fmt])
            row["ratio_to_fp16"] = {sub: size / fp16_sizes[sub] for sub, size in row["ir_bytes"].items() if sub in fp16_sizes}
            row["largest_ratio"] = max(row["ratio_to_fp16"].values()) if row["ratio_to_fp16"] else None

    # 3. Interleaved rounds: every round visits every runtime once (and the matmul peak), in a rotating order
    specs = runtime_specs(names, folders=folders, checkpoint=checkpoint, run_dir=run_dir)
    clip_positions = json.loads((checkpoint / "text_encoder" / "config.json").read_text())["max_position_embeddings"]
    has_t5 = (checkpoint / "text_encoder_3").is_dir()
    for name, spec in specs.items():
        spec.update(text_tokens(name, max_sequence_length=args.max_sequence_length, clip_positions=clip_positions, has_t5=has_t5))
    visits, probes, failures, peaks = {name: [] for name in names}, {}, {}, []
    for name, spec in specs.items():
        missing = spec.get("folder") and not (Path(spec["folder"]) / "model_index.json").is_file()
        if missing:
            failures[name] = f"no converted folder ({Path(spec['folder']).name})"
    images_dir = run_dir / "images"
    shutil.rmtree(images_dir, ignore_errors=True)  # PSNR compares this run's images only
    images_dir.mkdir(parents=True)
    order = names + ["matmul-peak"]
    for round_index in range(args.repeats):
        shift = round_index % len(order)
        for name in order[shift:] + order[:shift]:
            if name in failures:
                continue
            if name == "matmul-peak":
                outcome = run_in_subprocess({"kind": "matmul"}, logs=logs, name=f"matmul-peak-round{round_index + 1}")
                if outcome.ok:
                    peaks.append(outcome.result)
                continue
            first = not visits[name]
            if first and specs[name]["cache_dir"]:
                outcome = run_in_subprocess({"kind": "compile_probe", **specs[name]}, logs=logs, name=f"{name}-compile")
                probes[name] = outcome.result if outcome.ok else {}
            task = {
                "kind": "runtime",
                **specs[name],
                "height": args.height,
                "width": args.width,
                "steps": args.steps,
                "timed_steps": args.timed_steps,
                "image_path": str(images_dir / f"{name}.npy") if first else None,
            }
            outcome = run_in_subprocess(task, logs=logs, name=f"{name}-round{round_index + 1}")
            if outcome.ok:
                visits[name].append(outcome.result)
                step = statistics.median(outcome.result["step_s"]) if outcome.result["step_s"] else float("nan")
                _log(f"round {round_index + 1}/{args.repeats} {name}: {step:.3f} s/step (visit {outcome.seconds:.0f} s)")
            elif first:
                failures[name] = outcome.reason
                _log(f"round {round_index + 1}/{args.repeats} {name}: skipped: {outcome.reason}")
            else:
                _log(f"round {round_index + 1}/{args.repeats} {name}: failed, round not counted: {outcome.reason}")

    # 4. Head-to-head pairs, each in one process
    head_to_head = []
    for a, b, measure, pairs in HEAD_TO_HEAD:
        bases = [name.replace("-static", "").replace("-taylorseer", "") for name in (a, b)]  # variants run with their runtime
        if any(base not in names or base in failures for base in bases) or args.head_to_head_filter not in f"{a} {b} {measure}":
            continue
        for name in (a, b):
            if name not in specs:
                specs[name] = runtime_specs([name], folders=folders, checkpoint=checkpoint, run_dir=run_dir)[name]
                spec_tokens = text_tokens(name, max_sequence_length=args.max_sequence_length, clip_positions=clip_positions, has_t5=has_t5)
                specs[name].update(spec_tokens)
        pair = [{**specs[name], "height": args.height, "width": args.width, "steps": args.steps, "timed_steps": args.timed_steps} for name in (a, b)]
        pairs = min(pairs, 3) if args.quick else pairs
        task = {"kind": "head_to_head", "pair": pair, "measure": measure, "pairs": pairs, "timed_steps": args.timed_steps}
        outcome = run_in_subprocess(task, logs=logs, name=f"head-to-head-{a}-{b}-{measure}")
        row = {"a": a, "b": b, "measure": measure, "pairs": pairs}
        if outcome.ok:
            seconds, ratios = outcome.result["seconds"], outcome.result["ratios"]
            row.update(a_s=_median(seconds[0]), b_s=_median(seconds[1]), ratio=_median(ratios), ratio_min=min(ratios), ratio_max=max(ratios))
            _log(f"head to head, {measure}: {a} ÷ {b} = {row['ratio']:.3f} ({row['ratio_min']:.3f} .. {row['ratio_max']:.3f})")
        else:
            row["skipped"] = outcome.reason
            _log(f"head to head, {measure}: {a} vs {b}: failed: {outcome.reason}")
        head_to_head.append(row)

    # 5. Summary
    def flops_of(tokens: int) -> float:
        return transformer_flops(config, height=args.height, width=args.width, vae_scale_factor=vae_scale_factor, text_tokens=tokens, batch=2)

    flops = flops_of(clip_positions + args.max_sequence_length)
    rows = {}
    for name in names:
        if name in failures or not visits[name]:
            rows[name] = {"skipped": failures.get(name, "no successful visit")}
            continue
        rows[name] = summarize_runtime(
            visits[name], compile_probe=probes.get(name, {}), steps=args.steps, timed_steps=args.timed_steps, flops=flops_of(specs[name]["text_tokens"])
        )
        rows[name]["text_tokens"] = specs[name]["text_tokens"]
        rows[name]["visits"] = visits[name]
    import numpy as np

    reference = images_dir / "ours-fp16.npy"
    if reference.is_file() and "ours-fp16" not in failures:
        for name in names:
            if "skipped" not in rows[name] and (images_dir / f"{name}.npy").is_file():
                rows[name]["psnr_db"] = psnr(np.load(images_dir / f"{name}.npy"), np.load(reference))
    same_work = [images_dir / f"{name}.npy" for name in ("ours-fp16-genai-tokens", "genai-fp16")]
    psnr_same_work = psnr(*(np.load(path) for path in same_work)) if all(path.is_file() for path in same_work) else None
    model = "tiny (quick)" if args.quick else f"SD3-Medium-shaped, {args.layers} of 24 transformer layers, no T5, random weights"
    results = {
        "setup": {
            "model": model,
            "layers": args.layers,
            "height": args.height,
            "width": args.width,
            "steps": args.steps,
            "timed_steps": args.timed_steps,
            "repeats": args.repeats,
            "max_sequence_length": args.max_sequence_length,
            "guidance_scale": GUIDANCE_SCALE,
            "prompt": PROMPT,
            "seed": SEED,
        },
        "machine": machine_description(),
        "forward_gflop": flops / 1e9,
        "matmul_peak": {key: _median([peak[key] for peak in peaks]) for key in ("torch_bf16_tflops", "openvino_bf16_tflops")},
        "checkpoint_bytes": folder_size(checkpoint),
        "submodels": submodels,
        "formats": format_rows,
        "runtimes": rows,
        "psnr_ours_genai_tokens_vs_genai_db": psnr_same_work,
        "head_to_head": head_to_head,
        "total_seconds": None,
    }
    results["targets"] = evaluate_targets(results)
    if not args.repeats:  # the targets judged on rounds have nothing to judge
        results["targets"] = [target for target in results["targets"] if target["measured"] != "n/a"]
    results["total_seconds"] = time.perf_counter() - started
    tag = ("quick" if args.quick else f"{args.layers}-layers") + ("-head-to-head" if args.head_to_head_only else "")
    output = args.output or ROOT / "benchmarks" / "results" / f"bench_sd3_{tag}.json"
    markdown_path = args.markdown or output.with_suffix(".md")
    output.parent.mkdir(parents=True, exist_ok=True)
    markdown_path.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2, default=str) + "\n")
    report = markdown_report(results)
    markdown_path.write_text(report)
    print(report)
    _log(f"done in {results['total_seconds'] / 60:.1f} min: {output}, {markdown_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
