"""Where a small model's time goes: ours (dynamic and static shapes, with and without the step cache) against
openvino.genai's defaults, on the same tiny folder, in one process, alternating.

    python benchmarks/bench_fixed_cost.py                 # builds and converts the tiny model under --work-dir
    python benchmarks/bench_fixed_cost.py --model-dir DIR  # any converted folder

On a tiny model a transformer infer takes a few milliseconds, so fixed costs per call (infer-request setup, input
copies, dynamic-shape dispatch, Python) decide the ratio to genai; at real shapes the step is level with genai
(docs/speed.md). Each configuration's median over `--rounds` rounds; the per-call transformer time and the Python
share of a call come from the pipeline's own `get_performance_metrics()`.

Results: `benchmarks/results/bench_fixed_cost_tiny.{json,md}`.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project's modules
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmark's modules

from bench_report import machine_description, write_results  # noqa: E402

PROMPT = "a photo of a cat"
GUIDANCE_SCALE = 5.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work-dir", type=Path, default=Path("build/bench-fixed-cost"))
    parser.add_argument("--model-dir", type=Path, default=None, help="a converted folder (default: the tiny model, fp16, no T5)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--output", type=Path, default=None)
    return parser.parse_args(argv)


def tiny_folder(work_dir: Path) -> Path:
    """The tiny checkpoint converted in fp16 without T5 (each step skipped when done before)."""
    from sd3_helper import convert_sd3, make_tiny_sd3

    checkpoint = work_dir / "sd3-tiny"
    if not (checkpoint / "model_index.json").is_file():
        make_tiny_sd3(checkpoint)
    return convert_sd3(checkpoint, work_dir / "sd3-tiny-ov-fp16-no-t5", weight_format="fp16", load_t5=False)


def runners(model_dir: Path, *, size: int, steps: int) -> dict:
    """Name -> (a function making one image, the pipeline whose metrics it fills, or None for genai)."""
    from sd3_helper import OVStableDiffusion3Pipeline, TaylorSeerConfig, make_genai_pipeline

    dynamic = OVStableDiffusion3Pipeline.from_pretrained(model_dir, shapes="dynamic")
    auto = OVStableDiffusion3Pipeline.from_pretrained(model_dir)  # compiles the transformer and VAE decoder at its first call
    static = OVStableDiffusion3Pipeline.from_pretrained(model_dir, compile=False).reshape(height=size, width=size)
    static.compile()
    genai = make_genai_pipeline(model_dir)
    call = dict(prompt=PROMPT, height=size, width=size, num_inference_steps=steps, guidance_scale=GUIDANCE_SCALE, generator=0)
    for pipe in (dynamic, auto, static):
        pipe.set_progress_bar_config(disable=True)

    def ours(pipe, **extra):
        return lambda: pipe(**call, **extra)

    def genai_default():
        genai.generate(PROMPT, height=size, width=size, num_inference_steps=steps, guidance_scale=GUIDANCE_SCALE, rng_seed=0)

    cache = TaylorSeerConfig()  # genai's default step cache
    return {
        "ours, dynamic shapes": (ours(dynamic, taylorseer=None), dynamic),
        "ours, static shapes (`reshape`)": (ours(static, taylorseer=None), static),
        "ours, dynamic shapes + step cache": (ours(dynamic, taylorseer=cache), dynamic),
        "ours, static shapes + step cache": (ours(static, taylorseer=cache), static),
        "ours, its defaults (auto shapes, step cache on)": (ours(auto), auto),
        "openvino.genai, its defaults (step cache on)": (genai_default, None),
    }


def measure(configurations: dict, *, rounds: int) -> dict:
    """One warm-up each, then `rounds` rounds visiting every configuration in turn: medians of the call's seconds, of
    a transformer infer and of the share of the call outside OpenVINO's infers (ours)."""
    for make_image, _ in configurations.values():
        make_image()
    seconds = {name: [] for name in configurations}
    transformer, outside = {name: [] for name in configurations}, {name: [] for name in configurations}
    for _ in range(rounds):
        for name, (make_image, pipe) in configurations.items():
            start = time.perf_counter()
            make_image()
            seconds[name].append(time.perf_counter() - start)
            if pipe is not None:
                metrics = pipe.get_performance_metrics()
                infers = sum(metrics.transformer_times) + sum(metrics.vae_decode_times)
                infers += sum(sum(times) for times in metrics.text_encoder_times.values())
                transformer[name].append(statistics.median(metrics.transformer_times))
                outside[name].append(1 - infers / metrics.total_time)
    rows = {}
    for name in configurations:
        rows[name] = {"seconds": statistics.median(seconds[name]), "all_seconds": seconds[name]}
        if transformer[name]:
            rows[name]["transformer_infer_s"] = statistics.median(transformer[name])
            rows[name]["outside_infer_share"] = statistics.median(outside[name])
    genai_seconds = rows["openvino.genai, its defaults (step cache on)"]["seconds"]
    for row in rows.values():
        row["ratio_to_genai"] = row["seconds"] / genai_seconds
    return rows


def markdown(results: dict) -> str:
    setup, machine = results["setup"], results["machine"]
    lines = [
        f"# Fixed costs on a small model: ours vs openvino.genai ({setup['model']})",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, features {', '.join(machine['cpu_features'])}; {machine['date']}.",
        f"{setup['size']}x{setup['size']}, {setup['steps']} steps, guidance {GUIDANCE_SCALE}; one process, {setup['rounds']} "
        "alternating rounds, medians.",
        "",
        "| configuration | s per image | ÷ genai | transformer infer (ms) | share of the call outside OpenVINO infers |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, row in results["rows"].items():
        infer = f"{1000 * row['transformer_infer_s']:.2f}" if "transformer_infer_s" in row else "-"
        share = f"{100 * row['outside_infer_share']:.1f} %" if "outside_infer_share" in row else "-"
        lines.append(f"| {name} | {row['seconds']:.4f} | {row['ratio_to_genai']:.2f} | {infer} | {share} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    model_dir = args.model_dir or tiny_folder(args.work_dir)
    rows = measure(runners(model_dir, size=args.size, steps=args.steps), rounds=args.rounds)
    model = f"`{Path(model_dir).name}`" + (": the tiny test model, fp16, no T5" if args.model_dir is None else "")
    results = {
        "setup": {"model": model, "size": args.size, "steps": args.steps, "rounds": args.rounds},
        "machine": machine_description(),
        "rows": rows,
    }
    report = markdown(results)
    write_results(results, stem="bench_fixed_cost_tiny", output=args.output, markdown=report)


if __name__ == "__main__":
    main()
