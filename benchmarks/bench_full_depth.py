"""Full-depth timings (issue 24, item 4): seconds per SD3 Medium image on this CPU, ours against openvino.genai and
optimum-intel on the same folders.

    python benchmarks/bench_full_depth.py                  # every run below (about an hour on 2 cores)
    python benchmarks/bench_full_depth.py --only genai-fp16 ours-fp16
    python benchmarks/bench_full_depth.py --prepare-only   # build and convert the folders, run nothing

The folders are `bench_checkpoint.py`'s SD3-Medium-shaped checkpoint (24 transformer layers, the real CLIP-L/G and
VAE, no T5, random weights, which time like real ones) converted without T5: `<work-dir>/sd3-medium-shaped-24-layers-
{fp16,int8,int8-hybrid}`, each made in a process of its own when missing. int8-hybrid is `quantize_sd3` on the fp16
folder calibrated on `--hybrid-samples` transformer calls at `--hybrid-size` pixels, SmoothQuant off by default
(`quantize_sd3`'s defaults, 200 calls at 512x512 with SmoothQuant, need more than the 23.5 GB of a 2-core VM at full
depth: killed at 22.5 GB, and at 22 GB with 28 calls at 256x256; these settings change the ranges, not the work of a step). The
fastest path is a view of the int8-hybrid folder with the int8 folder's VAE decoder (int8 weights).
Every run is a fresh process (its peak RSS is its own): load, one 2-step call (the compilation of "auto" shapes and
the first-call costs), then the timed call. Ours reports its stages with `get_performance_metrics()`, genai with its
own performance metrics, optimum-intel by the `callback_on_step_end` marks and the call's wall time. Runs that
compare two runtimes are visited one after the other, in the table's order. The 1024x1024 rows run `--big-steps`
steps; their whole image is extrapolated to `--steps` from the step time (the table says so).
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_report import machine_description  # noqa: E402

PROMPT = "A raccoon trapped inside a glass jar full of colorful candies, the background is steamy with vivid colors"
SEED = 141
GUIDANCE_SCALE = 5.0
WARMUP_STEPS = 2
FULL_CACHE = {"cache_dir": "cache-fp16-full", "ov_config": {"CACHE_MODE": "OPTIMIZE_SPEED"}}  # blobs with the weights
# name -> (runtime, folder, options, size key); options of ours are `from_pretrained` / call keywords.
RUNS = {
    "genai-fp16 (defaults: step cache)": ("genai", "fp16", {}, "small"),
    "ours-fp16 (defaults: auto shapes, step cache)": ("ours", "fp16", {}, "small"),
    "ours-fp16, weightless cache, cold compile": ("ours", "fp16", {"cache_dir": "cache-fp16", "fresh_cache": True, "steps": WARMUP_STEPS}, "small"),
    "ours-fp16, weightless cache, cached compile": ("ours", "fp16", {"cache_dir": "cache-fp16", "steps": WARMUP_STEPS}, "small"),
    "ours-fp16, full-weight cache, cold compile": ("ours", "fp16", {**FULL_CACHE, "fresh_cache": True, "steps": WARMUP_STEPS}, "small"),
    "ours-fp16, full-weight cache, cached compile": ("ours", "fp16", {**FULL_CACHE, "steps": WARMUP_STEPS}, "small"),
    "genai-fp16, step cache off": ("genai", "fp16", {"taylorseer": None}, "small"),
    "ours-fp16, step cache off (diffusers-exact)": ("ours", "fp16", {"taylorseer": None}, "small"),
    "optimum-intel fp16": ("optimum", "fp16", {}, "small"),
    "ours-fp16, dynamic shapes, step cache off": ("ours", "fp16", {"taylorseer": None, "shapes": "dynamic", "steps": 8}, "small"),
    "ours-int8": ("ours", "int8", {}, "small"),
    "ours-int8-hybrid + int8 VAE (fastest path)": ("ours", "fastest", {}, "small"),
    "genai-fp16 (defaults)": ("genai", "fp16", {}, "big"),
    "ours-fp16 (defaults)": ("ours", "fp16", {}, "big"),
    "CLI `generate`, int8, defaults": ("cli", "int8", {"steps": 1}, "big"),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work-dir", type=Path, default=Path("build/bench"))
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--big-size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--big-steps", type=int, default=2)
    parser.add_argument("--only", nargs="+", default=None, help="run names (or their beginnings) to run")
    parser.add_argument("--rounds", type=int, default=1, help="visit the runs this many times, in turn; each row is its median round")
    parser.add_argument("--layers", type=int, default=24, help="transformer blocks (24: SD3 Medium; 2: the quick proxy)")
    parser.add_argument("--output", type=Path, default=None, help="default: benchmarks/results/bench_full_depth_<layers>-layers")
    parser.add_argument("--hybrid-samples", type=int, default=28, help="int8-hybrid calibration: transformer calls recorded")
    parser.add_argument("--hybrid-size", type=int, default=256, help="int8-hybrid calibration: image side in pixels")
    parser.add_argument("--hybrid-smooth-quant-alpha", type=float, default=-1.0, help="int8-hybrid: NNCF's SmoothQuant strength (negative: off, which fits 24 GB)")
    parser.add_argument("--prepare-only", action="store_true", help="build and convert the missing folders, then stop")
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def vm_hwm() -> int:
    """This process's peak resident memory (VmHWM) in bytes."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ----------------------------------------------------------------------------------------------------------
# One run, in a process of its own
# ----------------------------------------------------------------------------------------------------------


def run_ours(task: dict) -> dict:
    from sd3_helper import OVStableDiffusion3Pipeline

    options = dict(task["options"])
    load_options = {key: options.pop(key) for key in ("cache_dir", "shapes", "ov_config") if key in options}
    started = time.perf_counter()
    pipe = OVStableDiffusion3Pipeline.from_pretrained(task["folder"], **load_options)
    load_s = time.perf_counter() - started
    pipe.set_progress_bar_config(disable=True)
    call = dict(height=task["size"], width=task["size"], guidance_scale=GUIDANCE_SCALE, **options)
    pipe(PROMPT, num_inference_steps=WARMUP_STEPS, generator=SEED, **call)
    first = pipe.get_performance_metrics()
    pipe(PROMPT, num_inference_steps=task["steps"], generator=SEED, **call)
    metrics = pipe.get_performance_metrics()
    return {
        "load_s": load_s,
        "compile_s": sum(first.compile_times.values()),
        "image_s": metrics.total_time,
        "step_s": sorted(metrics.step_times)[len(metrics.step_times) // 2],
        "transformer_calls": len(metrics.transformer_times),
        "text_s": sum(sum(times) for times in metrics.text_encoder_times.values()),
        "decode_s": sum(metrics.vae_decode_times),
    }


def run_genai(task: dict) -> dict:
    import numpy as np
    import openvino_genai

    started = time.perf_counter()
    pipe = openvino_genai.Text2ImagePipeline(task["folder"], "CPU")
    load_s = time.perf_counter() - started
    if "taylorseer" in task["options"]:
        config = pipe.get_generation_config()
        config.taylorseer_config = None
        pipe.set_generation_config(config)
    call = dict(height=task["size"], width=task["size"], guidance_scale=GUIDANCE_SCALE)
    pipe.generate(PROMPT, num_inference_steps=WARMUP_STEPS, generator=openvino_genai.TorchGenerator(SEED), **call)
    started = time.perf_counter()
    pipe.generate(PROMPT, num_inference_steps=task["steps"], generator=openvino_genai.TorchGenerator(SEED), **call)
    image_s = time.perf_counter() - started
    raw = pipe.get_performance_metrics().raw_metrics
    metrics = pipe.get_performance_metrics()
    return {
        "load_s": load_s,
        "image_s": image_s,
        "step_s": float(np.median(raw.iteration_durations)) / 1e6,  # microseconds
        "transformer_calls": len(raw.transformer_inference_durations),
        "text_s": sum(metrics.get_text_encoder_infer_duration().values()) / 1e3,  # milliseconds
        "decode_s": metrics.get_vae_decoder_infer_duration() / 1e3,
    }


def run_optimum(task: dict) -> dict:
    import numpy as np
    import torch
    from optimum.intel import OVStableDiffusion3Pipeline

    started = time.perf_counter()
    pipe = OVStableDiffusion3Pipeline.from_pretrained(task["folder"])
    load_s = time.perf_counter() - started
    pipe.set_progress_bar_config(disable=True)
    call = dict(height=task["size"], width=task["size"], guidance_scale=GUIDANCE_SCALE)
    pipe(PROMPT, num_inference_steps=WARMUP_STEPS, generator=torch.Generator().manual_seed(SEED), **call)
    marks = []

    def mark(pipe, step, timestep, callback_kwargs):
        marks.append(time.perf_counter())
        return callback_kwargs

    started = time.perf_counter()
    pipe(PROMPT, num_inference_steps=task["steps"], generator=torch.Generator().manual_seed(SEED), callback_on_step_end=mark, **call)
    image_s = time.perf_counter() - started
    return {"load_s": load_s, "image_s": image_s, "step_s": float(np.median(np.diff(marks))), "transformer_calls": task["steps"]}


def run_cli(task: dict) -> dict:
    """The CLI's `generate` with its defaults, in a child process: its wall time and peak RSS."""
    started = time.perf_counter()
    command = [sys.executable, "sd3_helper.py", "generate", task["folder"], "--prompt", PROMPT, "--steps", str(task["steps"])]
    command += ["--height", str(task["size"]), "--width", str(task["size"]), "--output", str(Path(task["result_path"]).with_suffix(".png"))]
    subprocess.run(command, check=True)
    return {"image_s": time.perf_counter() - started, "peak_rss": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}


def run_prepare(task: dict) -> dict:
    """Build the checkpoint and convert it to one weight format (`task["weight_format"]`), in this process."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_checkpoint import build_checkpoint

    from sd3_helper import convert_sd3, quantize_sd3

    work_dir, weight_format, stem = Path(task["work_dir"]), task["weight_format"], folder_stem(task.get("layers", 24))
    checkpoint = build_checkpoint(work_dir, layers=task.get("layers", 24))
    output_dir = work_dir / f"{stem}-{weight_format}"
    started = time.perf_counter()
    if weight_format == "int8-hybrid":
        size = task["hybrid_size"]
        quantize_sd3(
            work_dir / f"{stem}-fp16", output_dir, num_samples=task["hybrid_samples"], height=size, width=size,
            smooth_quant_alpha=task.get("hybrid_smooth_quant_alpha"),
        )  # fmt: skip
    else:
        convert_sd3(checkpoint, output_dir, load_t5=False, weight_format=weight_format)
    return {"seconds": time.perf_counter() - started}


RUNNERS = {"ours": run_ours, "genai": run_genai, "optimum": run_optimum, "cli": run_cli, "prepare": run_prepare}


def worker(task_path: Path) -> int:
    task = json.loads(task_path.read_text())
    result = RUNNERS[task["runtime"]](task)
    result.setdefault("peak_rss", vm_hwm())
    Path(task["result_path"]).write_text(json.dumps(result))
    return 0


# ----------------------------------------------------------------------------------------------------------
# The run, and the table
# ----------------------------------------------------------------------------------------------------------


def folder_stem(layers: int) -> str:
    """The converted folders' name before the weight format (`bench_checkpoint.build_checkpoint`'s checkpoint name)."""
    return f"sd3-medium-shaped-{layers}-layers"


def fastest_view(work_dir: Path, *, layers: int) -> Path:
    """The int8-hybrid folder with the int8 folder's VAE decoder, as a folder of links."""
    stem = folder_stem(layers)
    view, hybrid = work_dir / f"{stem}-fastest", work_dir / f"{stem}-int8-hybrid"
    view.mkdir(exist_ok=True)
    for item in hybrid.iterdir():
        source = work_dir / f"{stem}-int8" / item.name if item.name == "vae_decoder" else item
        link = view / item.name
        if not link.is_symlink():
            link.symlink_to(source.resolve())
    return view


def prepare(args: argparse.Namespace, logs: Path) -> None:
    """Make the missing folders (fp16 first: int8-hybrid is quantized from it), each in a process of its own."""
    for weight_format in ("fp16", "int8", "int8-hybrid"):
        if (args.work_dir / f"{folder_stem(args.layers)}-{weight_format}" / "model_index.json").is_file():
            continue
        task = {"runtime": "prepare", "work_dir": str(args.work_dir), "weight_format": weight_format, "layers": args.layers}
        task.update(hybrid_samples=args.hybrid_samples, hybrid_size=args.hybrid_size, hybrid_smooth_quant_alpha=args.hybrid_smooth_quant_alpha)
        task.update(result_path=str(logs / f"prepare-{weight_format}.json"))
        (logs / f"prepare-{weight_format}.task.json").write_text(json.dumps(task))
        print(f"[{time.strftime('%H:%M:%S')}] preparing {weight_format}", flush=True)
        with open(logs / f"prepare-{weight_format}.log", "w") as log:
            command = [sys.executable, __file__, "--worker", str(logs / f"prepare-{weight_format}.task.json")]
            process = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)
        if process.returncode != 0:  # the runs on this folder report it missing
            print(f"preparing {weight_format} failed with exit status {process.returncode} (log: {logs / f'prepare-{weight_format}.log'})", flush=True)


def run_one(name: str, spec: tuple, args: argparse.Namespace, logs: Path) -> dict:
    runtime, folder, options, size_key = spec
    options = dict(options)
    needed = args.work_dir / f"{folder_stem(args.layers)}-{'int8-hybrid' if folder == 'fastest' else folder}"
    if not (needed / "model_index.json").is_file():  # not built (int8-hybrid: see docs/speed.md)
        return {"name": name, "error": f"no model in {needed}"}
    folder_path = fastest_view(args.work_dir, layers=args.layers) if folder == "fastest" else needed
    if "cache_dir" in options:
        options["cache_dir"] = str(args.work_dir / options["cache_dir"])
        if options.pop("fresh_cache", False):  # this run's compile is the cold one
            shutil.rmtree(options["cache_dir"], ignore_errors=True)
    steps = options.pop("steps", args.steps if size_key == "small" else args.big_steps)
    size = args.size if size_key == "small" else args.big_size
    slug = "".join(char if char.isalnum() else "-" for char in name)[:60]
    task = {"runtime": runtime, "folder": str(folder_path), "options": options, "steps": steps, "size": size}
    task["result_path"] = str(logs / f"{slug}.json")
    (logs / f"{slug}.task.json").write_text(json.dumps(task))
    print(f"[{time.strftime('%H:%M:%S')}] {name}", flush=True)
    with open(logs / f"{slug}.log", "w") as log:
        process = subprocess.run([sys.executable, __file__, "--worker", str(logs / f"{slug}.task.json")], stdout=log, stderr=subprocess.STDOUT)
    if process.returncode != 0:
        return {"name": name, "error": f"exit status {process.returncode} (log: {logs / f'{slug}.log'})"}
    return {"name": name, "steps": steps, "size": size, **json.loads(Path(task["result_path"]).read_text())}


def transformer_call_s(row: dict) -> float:
    """Seconds of a step that runs the transformer: the median step when every step does, else the steps' time
    (the image less its text encoding and decode) over the transformer calls."""
    if row["transformer_calls"] == row["steps"] or "decode_s" not in row:
        return row["step_s"]
    return (row["image_s"] - row["text_s"] - row["decode_s"]) / row["transformer_calls"]


def median_visit(visits: list[dict]) -> dict:
    """The visit of median image time (the upper one of two), with every visit's image time beside it."""
    done = sorted((visit for visit in visits if "error" not in visit), key=lambda visit: visit["image_s"])
    if not done:
        return visits[-1]
    return {**done[len(done) // 2], "rounds_image_s": [visit["image_s"] for visit in visits if "error" not in visit]}


def whole_image_s(row: dict, steps: int) -> float:
    """The image's seconds at `steps` steps: measured when the row ran them, else extrapolated: text encoding and
    decode as measured, plus its transformer step time for each step that runs the transformer at `steps` steps
    (all of them with the step cache off; with it, as many as `TaylorSeerConfig()` computes, 14 of 28)."""
    if row["steps"] == steps or "step_s" not in row:  # the CLI's row: its process's wall time, as run
        return row["image_s"]
    from notebook_utils import transformer_steps
    from sd3_openvino.runtime.steps import TaylorSeerConfig

    calls = steps if "off" in row["name"] else transformer_steps(TaylorSeerConfig(), num_inference_steps=steps)
    return row.get("text_s", 0.0) + row.get("decode_s", 0.0) + calls * transformer_call_s(row)


CELLS = {"call_s": ".2f", "transformer_calls": "d", "text_s": ".2f", "decode_s": ".2f", "load_s": ".1f", "compile_s": ".1f"}


def markdown(rows: list[dict], args: argparse.Namespace, machine: dict) -> str:
    genai_defaults = {row["size"]: row for row in rows if row["name"].startswith("genai-fp16") and "off" not in row["name"] and "error" not in row}
    lines = [
        f"# {'Full-depth SD3 Medium' if args.layers == 24 else f'SD3 Medium shapes, {args.layers} of 24 layers'} on CPU: one image, "
        f"guidance {GUIDANCE_SCALE}, {args.steps} steps, no T5",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores ({', '.join(machine['cpu_features'])}), {machine['ram_gb']} GB RAM; "
        f"openvino {machine['versions']['openvino']}, openvino-genai {machine['versions']['openvino-genai']}, "
        f"optimum-intel {machine['versions']['optimum-intel']}; {machine['date']}. Random weights of SD3 Medium's shapes "
        f"({args.layers} transformer layers, real CLIP-L/G and VAE). Each visit a fresh process; rows run once in this order, except "
        "those with alternating rounds (visited in turn in a later run; their median round).",
        "",
        "| run | image (s) | ÷ genai default | s per transformer step | transformer calls | text (s) | decode (s) | load (s) | compile in 1st call (s) | peak RSS (GB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['name']} | failed: {row['error']} |" + " |" * 8)
            continue
        image = whole_image_s(row, args.steps)
        note = f" ({row['steps']} steps run, {args.steps} extrapolated)" if image != row["image_s"] else f" ({row['steps']} steps)"
        base = genai_defaults.get(row["size"])
        ratio = f"{image / whole_image_s(base, args.steps):.2f}" if base and "step_s" in row else ""
        cells = {key: (f"{row[key]:{spec}}" if key in row else "") for key, spec in CELLS.items()}
        cells["call_s"] = f"{transformer_call_s(row):.2f}" if "step_s" in row else ""
        if len(row.get("rounds_image_s", [])) > 1:
            note += f", median of {len(row['rounds_image_s'])} alternating rounds: " + ", ".join(f"{value:.1f}" for value in row["rounds_image_s"]) + " s"
        lines.append(
            f"| {row['name']}, {row['size']}x{row['size']}{note} | {image:.1f} | {ratio} | {cells['call_s']} | "
            f"{cells['transformer_calls']} | {cells['text_s']} | {cells['decode_s']} | {cells['load_s']} | {cells['compile_s']} | "
            f"{row['peak_rss'] / 1e9:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        return worker(args.worker)
    args.output = args.output or Path(f"benchmarks/results/bench_full_depth_{args.layers}-layers")
    logs = args.work_dir / "full-depth-logs"
    logs.mkdir(parents=True, exist_ok=True)
    prepare(args, logs)
    if args.prepare_only:
        return 0
    names = [name for name in RUNS if args.only is None or any(name.startswith(prefix) for prefix in args.only)]
    machine, rows = machine_description(), []
    if args.only is not None and args.output.with_suffix(".json").is_file():  # rerun some rows of an earlier run
        rows = [row for row in json.loads(args.output.with_suffix(".json").read_text())["rows"] if row["name"] in RUNS and row["name"] not in names]
    visits = {name: [] for name in names}
    for _ in range(args.rounds):
        for name in names:
            visits[name].append(run_one(name, RUNS[name], args, logs))
        rounds = {name: median_visit(runs) for name, runs in visits.items()}
        merged = sorted([*rows, *rounds.values()], key=lambda row: list(RUNS).index(row["name"]))
        results = {"machine": machine, "size": args.size, "steps": args.steps, "rows": merged}
        args.output.with_suffix(".json").write_text(json.dumps(results, indent=1))
        args.output.with_suffix(".md").write_text(markdown(merged, args, machine))
    print(args.output.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
