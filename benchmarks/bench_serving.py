"""Serving throughput at a fixed request rate: one pipeline, 2 clones, and the Ray Serve app with 1 and 2 replicas,
on the SD3-Medium-shaped model. Images per minute, p50 / p95 latency, and each replica's memory.

    python benchmarks/bench_serving.py                     # the 2-layer fp16 folder, 512x512, 4 steps, 8 requests

Requests arrive every `--interval` seconds (a fixed rate, not as fast as answered), each its own seed. In-process
rows: one pipeline behind a lock (a queue, as the demo), 2 clones with `PERFORMANCE_HINT=THROUGHPUT`. Ray rows: the
app of `serving/ray_app.py` on a local Ray (127.0.0.1), requests through `serving/client.py`; 1 replica with 2 CPUs, or
2 replicas with 1 CPU each and the throughput hint (one stream each). Throughput counts from the first request sent to
the last image received.
"""

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "serving"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_report import machine_description  # noqa: E402

PROMPT = "A raccoon trapped inside a glass jar full of colorful candies, the background is steamy with vivid colors"
THROUGHPUT = {"PERFORMANCE_HINT": "THROUGHPUT"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", type=Path, default=Path("build/bench/sd3-medium-shaped-2-layers-fp16"))
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--interval", type=float, default=3.0, help="seconds between requests")
    parser.add_argument("--output", type=Path, default=Path(__file__).resolve().parent / "results" / "bench_serving.md")
    return parser.parse_args(argv)


def fixed_rate(args, send) -> dict:
    """Send `args.requests` requests every `args.interval` s (`send(seed)` blocks until its image); the timings."""
    latencies = [None] * args.requests
    started = time.perf_counter()

    def one(seed):
        time.sleep(max(0.0, started + seed * args.interval - time.perf_counter()))
        sent = time.perf_counter()
        send(seed)
        latencies[seed] = time.perf_counter() - sent
        return time.perf_counter()

    with ThreadPoolExecutor(args.requests) as pool:
        finished = max(pool.map(one, range(args.requests)))
    ordered = sorted(latencies)
    return {
        "images_per_min": args.requests * 60 / (finished - started),
        "p50_s": statistics.median(ordered),
        "p95_s": ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))],
    }


def in_process(args, *, clones: int) -> dict:
    """A pool of one pipeline and its clones: a request waits for a free one (one pipeline: a queue)."""
    import queue

    from sd3_helper import OVStableDiffusion3Pipeline

    first = OVStableDiffusion3Pipeline.from_pretrained(args.model_dir, ov_config=THROUGHPUT if clones > 1 else None)
    pool = queue.Queue()
    for pipe in [first] + [first.clone() for _ in range(clones - 1)]:
        pipe.set_progress_bar_config(disable=True)
        pipe(PROMPT, height=args.size, width=args.size, num_inference_steps=1)  # compile and warm up
        pool.put(pipe)

    def send(seed):
        pipe = pool.get()
        try:
            pipe(PROMPT, height=args.size, width=args.size, num_inference_steps=args.steps, generator=seed)
        finally:
            pool.put(pipe)

    return fixed_rate(args, send)


def on_ray(args, *, replicas: int) -> dict:
    import psutil
    import ray
    from ray import serve

    from client import generate_image
    from serving.ray_app import build_app

    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})  # fmt: skip
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": 8197})
        options = {"model_dir": str(args.model_dir.resolve()), "replicas": replicas, "cpus_per_replica": 2 / replicas}
        if replicas > 1:
            options["ov_config"] = THROUGHPUT
        serve.run(build_app(options), route_prefix="/")
        url = "http://127.0.0.1:8197/v1"
        size = f"{args.size}x{args.size}"
        for _ in range(replicas * 2):  # each replica compiles its size once
            generate_image(url=url, model="sd3", prompt=PROMPT, size=size, steps=1, seed=0)
        result = fixed_rate(args, lambda seed: generate_image(url=url, model="sd3", prompt=PROMPT, size=size, steps=args.steps, seed=seed))
        import urllib.request

        pids = {json.loads(urllib.request.urlopen("http://127.0.0.1:8197/health").read())["pid"] for _ in range(20)}
        result["replica_rss_gb"] = [round(psutil.Process(pid).memory_info().rss / 1e9, 2) for pid in sorted(pids)]
        return result
    finally:
        serve.shutdown()
        ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows = {
        "1 pipeline (a queue)": in_process(args, clones=1),
        "2 clones, throughput hint": in_process(args, clones=2),
        "Ray, 1 replica (2 CPUs)": on_ray(args, replicas=1),
        "Ray, 2 replicas (1 CPU each, throughput hint)": on_ray(args, replicas=2),
    }
    machine = machine_description()
    lines = [
        f"# Serving at a fixed rate: {args.model_dir.name}, {args.size}x{args.size}, {args.steps} steps, {args.requests} requests "
        f"every {args.interval:g} s",
        "",
        f"Machine: {machine.get('cpu', '?')}, features {', '.join(machine.get('cpu_features', [])) or 'none of AVX-512 / AMX'}",
        "",
        "| setup | images/min | p50 latency (s) | p95 latency (s) | RSS per replica (GB) |",
        "|---|---:|---:|---:|---|",
        *(f"| {name} | {row['images_per_min']:.1f} | {row['p50_s']:.1f} | {row['p95_s']:.1f} | {', '.join(map(str, row.get('replica_rss_gb', []))) or 'in process'} |"
          for name, row in rows.items()),
    ]
    report = "\n".join(lines) + "\n"
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report)
    args.output.with_suffix(".json").write_text(json.dumps({"rows": rows, "machine": machine, "args": {k: str(v) for k, v in vars(args).items()}}, indent=1))
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
