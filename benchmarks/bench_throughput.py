"""Throughput of many requests on one machine: one pipeline vs several, sequential vs batched.

    python benchmarks/bench_throughput.py --model-dir build/bench/ov-sd3-medium-shaped-2-layers-fp16 --requests 8

Each option serves the same `--requests` prompts and reports images per minute, mean latency per request
and peak RSS. Options:
  sequential    one pipeline, one request at a time (what the Gradio demo's queue does)
  batched       one pipeline, requests grouped `--batch` at a time into one call
  N pipelines   N pipelines (each with its own compiled models), one thread each, threads split the cores
Without `--model-dir`, the tiny checkpoint is built and converted (its numbers only show overhead).
"""

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sd3_helper  # noqa: E402


def _peak_rss_gb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def _load(model_dir: Path, *, threads: int | None) -> sd3_helper.OVStableDiffusion3Pipeline:
    ov_config = {"INFERENCE_NUM_THREADS": threads} if threads else None
    pipeline = sd3_helper.OVStableDiffusion3Pipeline.from_pretrained(model_dir, ov_config=ov_config)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _serve(pipeline, prompts: list[str], *, steps: int, size: int, batch: int, latencies: list[float]) -> None:
    for start in range(0, len(prompts), batch):
        group = prompts[start : start + batch]
        began = time.perf_counter()
        pipeline(group, num_inference_steps=steps, height=size, width=size, guidance_scale=5.0, generator=torch.Generator().manual_seed(start))
        latencies.extend([time.perf_counter() - began] * len(group))


def run_option(model_dir: Path, *, pipelines: int, batch: int, prompts: list[str], steps: int, size: int) -> dict:
    cores = os.cpu_count() or 1
    instances = [_load(model_dir, threads=max(1, cores // pipelines) if pipelines > 1 else None) for _ in range(pipelines)]
    for instance in instances:  # warm-up: first inference allocates
        _serve(instance, prompts[:1], steps=1, size=size, batch=1, latencies=[])
    latencies: list[float] = []
    shards = [prompts[index::pipelines] for index in range(pipelines)]
    began = time.perf_counter()
    workers = [threading.Thread(target=_serve, args=(instance, shard), kwargs=dict(steps=steps, size=size, batch=batch, latencies=latencies)) for instance, shard in zip(instances, shards)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - began
    return {
        "pipelines": pipelines,
        "batch": batch,
        "images_per_minute": round(60 * len(prompts) / elapsed, 2),
        "mean_latency_s": round(sum(latencies) / len(latencies), 2),
        "peak_rss_gb": round(_peak_rss_gb(), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", type=Path, default=None, help="a converted folder (default: the tiny model)")
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=None, help="default: 512, or 64 for the tiny model")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--max-pipelines", type=int, default=2)
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/throughput.json"))
    args = parser.parse_args()

    model_dir = args.model_dir
    if model_dir is None:
        work = Path("build/throughput")
        model_dir = sd3_helper.convert_sd3(sd3_helper.make_tiny_sd3(work / "tiny-sd3"), work / "tiny-sd3-fp16", load_t5=False)
    size = args.size or (512 if args.model_dir else 64)
    prompts = [f"a photo of a cat, variation {index}" for index in range(args.requests)]
    options = [dict(pipelines=1, batch=1), dict(pipelines=1, batch=args.batch)]
    options += [dict(pipelines=count, batch=1) for count in range(2, args.max_pipelines + 1)]
    results = []
    for option in options:  # each option in a fresh process would isolate RSS; here peak RSS only grows
        results.append(run_option(model_dir, prompts=prompts, steps=args.steps, size=size, **option))
        print(json.dumps(results[-1]))

    print(f"\n{args.requests} requests, {args.steps} steps, {size}x{size}, guidance 5, {model_dir}\n")
    print("| option | images / min | mean latency (s) | peak RSS (GB, cumulative) |\n|---|---|---|---|")
    for result in results:
        name = f"{result['pipelines']} pipelines, one thread each" if result["pipelines"] > 1 else ("sequential" if result["batch"] == 1 else f"batched x{result['batch']}")
        print(f"| {name} | {result['images_per_minute']} | {result['mean_latency_s']} | {result['peak_rss_gb']} |")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"model_dir": str(model_dir), "size": size, "steps": args.steps, "results": results}, indent=2))


if __name__ == "__main__":
    main()
