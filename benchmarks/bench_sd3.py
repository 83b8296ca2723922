"""Benchmark SD3 text-to-image on CPU: our OpenVINO pipeline (fp16, int8, int4, int8-hybrid IRs) against the
peers it can import (diffusers torch fp32 / bf16, optimum-intel, openvino.genai), in one interleaved run.

    python benchmarks/bench_sd3.py                  # 2-layer SD3-Medium-shaped model, ~25 min on 2 cores
    python benchmarks/bench_sd3.py --layers 24 --runtimes ours-fp16,ours-int8-hybrid   # full depth
    python benchmarks/bench_sd3.py --quick          # smoke run: tiny sizes, 2 steps, 1 round

No download: the model is a random-weight checkpoint with SD3 Medium's shapes, converted to each weight format
in a process of its own (time and peak RSS). Every visit of a runtime is a process of its own too, and rounds
visit every runtime in a rotating order; the table shows medians over rounds, and head-to-head pairs (two
runtimes alternating in one process) give the ratios the targets are judged on. The parts:

    bench_sd3.py         this entry point: the command line
    bench_run.py         the run, step by step: checkpoint, conversions, rounds, head to head, results
    bench_checkpoint.py  the SD3-Medium-shaped checkpoint, its conversions, the transformer's FLOPs
    bench_runtimes.py    the runtimes (ours, optimum-intel, diffusers, openvino.genai) and how a call is timed
    bench_tasks.py       what one worker process does: a visit, a compile probe, a head-to-head pair, the matmul peak
    bench_process.py     running a task in a process of its own, its RSS, its failure reason
    bench_report.py      medians, the markdown tables (what each column means), the targets, the machine

Results go to `benchmarks/results/` (JSON and a markdown table, with the machine: CPU model, cores, RAM and
library versions). Timings taken while other work runs on the machine are noisy: run it on a quiet machine.
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the project's modules; this folder's are beside this file

from bench_run import run_benchmark, run_worker_task  # noqa: E402
from bench_runtimes import RUNTIMES  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
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
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # run one task file in this process (see bench_process.py)
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return run_worker_task(args.worker)
    return run_benchmark(args)


if __name__ == "__main__":
    sys.exit(main())
