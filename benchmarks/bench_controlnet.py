"""ControlNet's cost on the SD3-Medium-shaped model: the ControlNet step against the plain step, the plain step with and
without the residual states, and diffusers' ControlNet pipeline on the same work, in one process.

    python benchmarks/bench_controlnet.py                  # 24 layers, an InstantX-shaped ControlNet of 6 blocks

The base is `bench_full_depth_memory.py`'s SD3-Medium-shaped checkpoint (`<work-dir>/sd3-medium-shaped-24-layers`,
random weights, which time like trained ones) and its fp16 folder. The ControlNet has InstantX's SD3 Canny shape
(SD3 Medium's widths, `--controlnet-layers` blocks; random weights), made by `make_tiny_sd3_controlnet` and converted
to fp16. Three transformer forwards of a guided 512x512 step (batch 2) are timed in alternating rounds: the IR as
converted (a plain pipeline), the same IR with the ControlNet residual states at zero (what a plain call runs once a
ControlNet pipeline shares the transformer), and the ControlNet. Then whole calls (`--steps` steps, every step computed)
of our ControlNet pipeline (OpenVINO's CPU default: bf16 compute) and of diffusers' (float32, its CPU default; its
ControlNet pipeline fails in bfloat16 on CPU), the steps timed by `callback_on_step_end`.
"""

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project's modules
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmark's modules

from bench_report import machine_description  # noqa: E402

PROMPT = "A raccoon trapped inside a glass jar full of colorful candies, the background is steamy with vivid colors"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work-dir", type=Path, default=Path("build/bench"))
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--controlnet-layers", type=int, default=6, help="InstantX's SD3 ControlNets have 6 (canny, pose) or 12 blocks")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--skip-diffusers", action="store_true")
    parser.add_argument("--output", type=Path, default=Path(__file__).resolve().parent / "results" / "bench_controlnet_24-layers.md")
    return parser.parse_args(argv)


def control_picture(size: int):
    """Canny edges of a synthetic picture: what a canny ControlNet reads."""
    import numpy as np
    from PIL import Image

    from sd3_helper import canny_edges

    grid = np.indices((size, size)).sum(axis=0) // 32 % 2 * 200
    return canny_edges(Image.fromarray(np.stack([grid.astype(np.uint8)] * 3, axis=-1)))


def transformer_inputs(pipe, *, size: int) -> dict:
    import numpy as np

    config, rng = pipe.transformer.config, np.random.default_rng(0)
    side = size // pipe.vae_scale_factor
    return {
        "hidden_states": rng.standard_normal((2, config["in_channels"], side, side), dtype=np.float32),
        "timestep": np.full(2, 500.0, dtype=np.float32),
        "encoder_hidden_states": rng.standard_normal((2, 333, config["joint_attention_dim"]), dtype=np.float32),
        "pooled_projections": rng.standard_normal((2, config["pooled_projection_dim"]), dtype=np.float32),
    }


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def prepare_controlnet(args, checkpoint: Path) -> Path:
    from sd3_helper import convert_sd3_controlnet, make_tiny_sd3_controlnet

    source = args.work_dir / f"controlnet-instantx-shaped-{args.controlnet_layers}-blocks"
    if not (source / "config.json").is_file():
        make_tiny_sd3_controlnet(checkpoint, source, num_layers=args.controlnet_layers)
    return convert_sd3_controlnet(source, args.work_dir / f"{source.name}-fp16", weight_format="fp16")


def time_forwards(args, *, model_dir: Path, controlnet_dir: Path) -> tuple[dict, dict]:
    """Alternating rounds of the three forwards; then our whole ControlNet call. Returns (forward times, call metrics)."""
    import numpy as np

    from sd3_helper import OVStableDiffusion3ControlNetPipeline, OVStableDiffusion3Pipeline

    # compile=False: only the transformers and the ControlNet compile for the forwards (two pipelines' text encoders would not fit)
    plain = OVStableDiffusion3Pipeline.from_pretrained(model_dir, compile=False)
    control = OVStableDiffusion3ControlNetPipeline.from_pretrained(model_dir, controlnet=controlnet_dir, compile=False)
    for pipe in (plain, control):
        pipe.set_progress_bar_config(disable=True)
        pipe.reshape(height=args.size, width=args.size, batch_size=1)
    inputs = transformer_inputs(plain, size=args.size)
    controlnet = control.controlnets[0].submodel
    side = args.size // plain.vae_scale_factor
    controlnet_inputs = {
        "hidden_states": inputs["hidden_states"],
        "controlnet_cond": np.random.default_rng(1).standard_normal((2, controlnet.config["in_channels"], side, side), dtype=np.float32),
        "pooled_projections": np.zeros_like(inputs["pooled_projections"]),
        "timestep": inputs["timestep"],
        "conditioning_scale": np.ones(1, dtype=np.float32),
        "encoder_hidden_states": inputs["encoder_hidden_states"],
    }
    calls = {
        "transformer, IR as converted (plain pipeline)": lambda: plain.transformer(**inputs),
        "transformer with the residual states at zero": lambda: control.transformer(**inputs),
        "ControlNet": lambda: controlnet(**controlnet_inputs),
    }
    for call in calls.values():
        call()  # compile and warm up
    times = {name: [] for name in calls}
    for _ in range(args.rounds):
        for name, call in calls.items():
            times[name].append(timed(call))
    del plain
    gc.collect()
    picture = control_picture(args.size)
    control(PROMPT, control_image=picture, num_inference_steps=1, taylorseer=None, generator=1)  # first-call costs
    control(PROMPT, control_image=picture, num_inference_steps=args.steps, taylorseer=None, generator=1)
    metrics = control.get_performance_metrics()
    return times, {"step_times": metrics.step_times, "transformer_times": metrics.transformer_times, "controlnet_times": metrics.controlnet_times}


def time_diffusers(args, *, checkpoint: Path, controlnet_source: Path) -> dict:
    """Steps of diffusers' ControlNet pipeline and of its plain pipeline on the same work, in float32 (diffusers' CPU
    default; its ControlNet pipeline fails in bfloat16 on CPU: "Input type (float) and bias type (c10::BFloat16)")."""
    import torch
    from diffusers import SD3ControlNetModel, StableDiffusion3ControlNetPipeline, StableDiffusion3Pipeline

    controlnet = SD3ControlNetModel.from_pretrained(controlnet_source, torch_dtype=torch.float32)
    pipe = StableDiffusion3ControlNetPipeline.from_pretrained(
        checkpoint, controlnet=controlnet, torch_dtype=torch.float32, text_encoder_3=None, tokenizer_3=None
    )
    pipe.set_progress_bar_config(disable=True)
    results = {}
    for name, runner, extra in (
        ("diffusers ControlNet step", pipe, {"control_image": control_picture(args.size)}),
        ("diffusers plain step", StableDiffusion3Pipeline.from_pipe(pipe), {}),
    ):
        marks = []

        def mark(_pipe, _step, _timestep, kwargs):
            marks.append(time.perf_counter())
            return kwargs

        with torch.no_grad():
            runner(PROMPT, **extra, height=args.size, width=args.size, num_inference_steps=args.steps + 1,
                   callback_on_step_end=mark, generator=torch.Generator().manual_seed(1))  # fmt: skip
        results[name] = [later - earlier for earlier, later in zip(marks, marks[1:])]  # the steps after the first
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    checkpoint = args.work_dir / f"sd3-medium-shaped-{args.layers}-layers"
    model_dir = args.work_dir / f"{checkpoint.name}-fp16"
    if not (model_dir / "model_index.json").is_file():
        raise SystemExit(f"{model_dir} is missing: run benchmarks/bench_full_depth_memory.py first (it builds and converts the checkpoint).")
    controlnet_dir = prepare_controlnet(args, checkpoint)
    forwards, ours = time_forwards(args, model_dir=model_dir, controlnet_dir=controlnet_dir)
    gc.collect()
    theirs = {} if args.skip_diffusers else time_diffusers(args, checkpoint=checkpoint, controlnet_source=args.work_dir / controlnet_dir.name.removesuffix("-fp16"))
    median = statistics.median
    plain, with_states, controlnet = (median(values) for values in forwards.values())
    state_ratios = [a / b for a, b in zip(*list(forwards.values())[1::-1])]  # with states / as converted, per round
    machine = machine_description()
    lines = [
        f"# ControlNet cost: {args.layers}-layer SD3-Medium-shaped transformer, InstantX-shaped ControlNet of {args.controlnet_layers} blocks, "
        f"fp16 IRs, {args.size}x{args.size}, guided (batch 2)",
        "",
        f"Machine: {machine.get('cpu', '?')}, features {', '.join(machine.get('cpu_features', [])) or 'none of AVX-512 / AMX'}, "
        f"{args.rounds} alternating rounds",
        "",
        "| forward | median (s) | min (s) | max (s) |",
        "|---|---:|---:|---:|",
        *(f"| {name} | {median(values):.3f} | {min(values):.3f} | {max(values):.3f} |" for name, values in forwards.items()),
        "",
        f"- Plain step with the residual states at zero / as converted, round by round (the same round sees the same machine "
        f"speed): median **{median(state_ratios):.3f}**, range {min(state_ratios):.3f}-{max(state_ratios):.3f}.",
        f"- ControlNet step (ControlNet + transformer) / plain step: **{(controlnet + with_states) / plain:.2f}x** "
        f"(the ControlNet forward is {controlnet / plain:.2f}x a transformer forward).",
        f"- Our ControlNet call, {args.steps} steps every one computed: {median(ours['step_times']):.2f} s per step "
        f"(transformer {median(ours['transformer_times']):.2f} s, ControlNet {median(ours['controlnet_times']):.2f} s).",
    ]
    if theirs:
        diffusers_step = median(theirs["diffusers ControlNet step"])
        lines += [
            f"- diffusers (PyTorch float32) ControlNet step: {diffusers_step:.2f} s, plain step {median(theirs['diffusers plain step']):.2f} s: "
            f"ours is **{diffusers_step / median(ours['step_times']):.2f}x** faster per ControlNet step.",
        ]
    report = "\n".join(lines) + "\n"
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report)
    args.output.with_suffix(".json").write_text(json.dumps({"forwards": forwards, "ours": ours, "diffusers": theirs, "machine": machine}, indent=1))
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
