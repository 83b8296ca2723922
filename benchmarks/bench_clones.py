"""`pipe.clone()` against separate pipelines: memory of 1, 2 and 4 of each, and the throughput of 2 clones generating
at once, on the SD3-Medium-shaped model.

    python benchmarks/bench_clones.py                      # the 2-layer fp16 folder, 512x512, 4 steps

Each memory row is a fresh process (its RSS is its own): load, make the clones (or load the pipelines), generate one
image on each, then read the process's RSS and peak RSS. Throughput: 4 images through one pipeline one after another,
then 2 clones generating 2 each in two threads, at OpenVINO's CPU defaults (latency hint: one stream using every core)
and with `PERFORMANCE_HINT=THROUGHPUT` (a stream per request).
"""

import argparse
import json
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project's modules
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmark's modules

from bench_report import machine_description  # noqa: E402

PROMPT = "A raccoon trapped inside a glass jar full of colorful candies, the background is steamy with vivid colors"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", type=Path, default=Path("build/bench/sd3-medium-shaped-2-layers-fp16"))
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # "clones:N" or "pipelines:N" or "throughput"
    parser.add_argument("--output", type=Path, default=Path(__file__).resolve().parent / "results" / "bench_clones.md")
    return parser.parse_args(argv)


def rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def generate(pipe, args, seed: int) -> None:
    pipe(PROMPT, height=args.size, width=args.size, num_inference_steps=args.steps, generator=seed, taylorseer=None)


def memory_worker(args, kind: str, count: int) -> dict:
    from sd3_helper import OVStableDiffusion3Pipeline

    first = OVStableDiffusion3Pipeline.from_pretrained(args.model_dir)
    first.set_progress_bar_config(disable=True)
    pipes = [first] + [first.clone() if kind == "clones" else OVStableDiffusion3Pipeline.from_pretrained(args.model_dir) for _ in range(count - 1)]
    for seed, pipe in enumerate(pipes):
        pipe.set_progress_bar_config(disable=True)
        generate(pipe, args, seed)
    return {"rss": rss_bytes(), "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def throughput_worker(args) -> dict:
    from sd3_helper import OVStableDiffusion3Pipeline

    results = {}
    for label, ov_config in (("latency hint (default)", None), ("PERFORMANCE_HINT=THROUGHPUT", {"PERFORMANCE_HINT": "THROUGHPUT"})):
        pipe = OVStableDiffusion3Pipeline.from_pretrained(args.model_dir, ov_config=ov_config)
        pipe.set_progress_bar_config(disable=True)
        generate(pipe, args, 0)  # compile and warm up
        clone = pipe.clone()
        generate(clone, args, 0)
        started = time.perf_counter()
        for seed in range(4):
            generate(pipe, args, seed)
        sequential = time.perf_counter() - started
        started = time.perf_counter()
        threads = [threading.Thread(target=lambda p=p, s=s: [generate(p, args, s + k) for k in (0, 2)]) for s, p in enumerate((pipe, clone))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        concurrent = time.perf_counter() - started
        results[label] = {"one pipeline, 4 images in turn (s)": sequential, "2 clones, 2 images each at once (s)": concurrent}
        del pipe, clone
    return results


def run_worker(args, worker: str) -> dict:
    command = [sys.executable, __file__, "--model-dir", str(args.model_dir), "--size", str(args.size), "--steps", str(args.steps), "--worker", worker]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def row_label(key: str) -> str:
    """"clones:2" -> "2 pipelines: 1 + 1 clone"; "pipelines:2" -> "2 separate pipelines"."""
    kind, _, count = key.partition(":")
    if kind == "pipelines":
        return f"{count} separate pipelines"
    return "1 pipeline" if count == "1" else f"{count} pipelines: 1 + {int(count) - 1} clone{'s' if int(count) > 2 else ''}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        kind, _, count = args.worker.partition(":")
        print(json.dumps(throughput_worker(args) if kind == "throughput" else memory_worker(args, kind, int(count))))
        return 0
    memory = {f"{kind}:{count}": run_worker(args, f"{kind}:{count}") for count in (1, 2, 4) for kind in ("clones", "pipelines") if not (kind == "pipelines" and count == 1)}
    throughput = run_worker(args, "throughput")
    machine = machine_description()
    one = memory["clones:1"]["rss"]
    lines = [
        f"# clone() against separate pipelines: {args.model_dir.name}, {args.size}x{args.size}, {args.steps} steps",
        "",
        f"Machine: {machine.get('cpu', '?')}, features {', '.join(machine.get('cpu_features', [])) or 'none of AVX-512 / AMX'}; "
        "each row a fresh process after one image per pipeline",
        "",
        "| pipelines | RSS (GB) | ÷ one pipeline | peak RSS (GB) |",
        "|---|---:|---:|---:|",
        *(f"| {row_label(key)} | {value['rss'] / 1e9:.2f} | {value['rss'] / one:.2f} | {value['peak_rss'] / 1e9:.2f} |" for key, value in memory.items()),
        "",
        "| OpenVINO setting | one pipeline, 4 images in turn (s) | 2 clones, 2 images each at once (s) | images/min, one | images/min, 2 clones |",
        "|---|---:|---:|---:|---:|",
        *(f"| {label} | {row['one pipeline, 4 images in turn (s)']:.1f} | {row['2 clones, 2 images each at once (s)']:.1f} | "
          f"{4 * 60 / row['one pipeline, 4 images in turn (s)']:.1f} | {4 * 60 / row['2 clones, 2 images each at once (s)']:.1f} |" for label, row in throughput.items()),
    ]
    report = "\n".join(lines) + "\n"
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report)
    args.output.with_suffix(".json").write_text(json.dumps({"memory": memory, "throughput": throughput, "machine": machine}, indent=1))
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
