"""Skip-layer guidance's cost on the SD3-Medium-shaped model: the gated transformer IR against one without gates,
and the extra pass, head to head in one process.

    python benchmarks/bench_skip_layers.py --baseline-dir build/bench/sd3-medium-shaped-2-layers-fp16-no-gates

The checkpoint is `bench_sd3.py`'s (built once under `--work-dir`); it is converted to fp16 with today's export
(every block gated by the `block_mask` state). `--baseline-dir` is an fp16 folder of the same checkpoint exported
without gates (an export of an earlier version, or optimum-cli's), if you have one. The transformer forward of a
guided step (batch 2) is timed alternately on both IRs; then the skip pass (batch 1, blocks `--skip-layers`
skipped), which skip-layer guidance adds on the steps of its window.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project's modules
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmark's modules

from bench_checkpoint import build_checkpoint  # noqa: E402
from bench_report import machine_description  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work-dir", type=Path, default=Path("build/bench"))
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--skip-layers", type=int, nargs="+", default=[1])
    parser.add_argument("--baseline-dir", type=Path, default=None, help="an fp16 folder of the same checkpoint without gates")
    parser.add_argument("--output", type=Path, default=Path(__file__).resolve().parent / "results" / "bench_skip_layers.md")
    return parser.parse_args(argv)


def forward_inputs(transformer, *, batch: int, size: int, vae_scale_factor: int) -> dict:
    import numpy as np

    config, rng = transformer.config, np.random.default_rng(0)
    side = size // vae_scale_factor
    return {
        "hidden_states": rng.standard_normal((batch, config["in_channels"], side, side), dtype=np.float32),
        "timestep": np.full(batch, 500.0, dtype=np.float32),
        "encoder_hidden_states": rng.standard_normal((batch, 77 + 256, config["joint_attention_dim"]), dtype=np.float32),
        "pooled_projections": rng.standard_normal((batch, config["pooled_projection_dim"]), dtype=np.float32),
    }


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    import numpy as np

    from sd3_helper import OVStableDiffusion3Pipeline, convert_sd3

    args = parse_args(argv)
    checkpoint = build_checkpoint(args.work_dir, layers=args.layers)
    gated_dir = convert_sd3(checkpoint, args.work_dir / f"{checkpoint.name}-fp16-gated", weight_format="fp16", load_t5=False)
    pipes = {"gated": OVStableDiffusion3Pipeline.from_pretrained(gated_dir)}
    if args.baseline_dir is not None:
        pipes["no gates"] = OVStableDiffusion3Pipeline.from_pretrained(args.baseline_dir)
    scale = pipes["gated"].vae_scale_factor
    guided = forward_inputs(pipes["gated"].transformer, batch=2, size=args.size, vae_scale_factor=scale)
    single = forward_inputs(pipes["gated"].transformer, batch=1, size=args.size, vae_scale_factor=scale)
    mask = np.ones(pipes["gated"].transformer.config["num_layers"], dtype=np.float32)
    mask[args.skip_layers] = 0.0
    calls = {name: (lambda pipe=pipe: pipe.transformer(**guided)) for name, pipe in pipes.items()}
    calls["skip pass (batch 1)"] = lambda: pipes["gated"].transformer.call_with_states({"block_mask": mask}, **single)
    for call in calls.values():
        call()  # warm-up
    times = {name: [] for name in calls}
    for _ in range(args.repeats):
        for name, call in calls.items():  # alternating: each round sees one machine speed
            times[name].append(timed(call))
    machine = machine_description()
    lines = [
        f"# Skip-layer guidance cost: {args.layers}-layer SD3-Medium-shaped transformer, fp16 IR, {args.size}x{args.size}, {args.repeats} alternating rounds",
        "",
        f"Machine: {machine.get('cpu', '?')}, features {', '.join(machine.get('cpu_features', [])) or 'none of AVX-512 / AMX'}",
        "",
        "| transformer call | median (s) | min (s) |",
        "|---|---:|---:|",
        *(f"| {name} | {statistics.median(values):.3f} | {min(values):.3f} |" for name, values in times.items()),
    ]
    if "no gates" in times:
        ratios = [a / b for a, b in zip(times["gated"], times["no gates"])]
        lines += ["", f"Gated / no gates, guided forward: median {statistics.median(ratios):.3f} (range {min(ratios):.3f}-{max(ratios):.3f})."]
    step, extra = statistics.median(times["gated"]), statistics.median(times["skip pass (batch 1)"])
    lines += ["", f"A step in the skip-layer window costs {(step + extra) / step:.2f}x a guided step (one more batch-1 pass)."]
    report = "\n".join(lines) + "\n"
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
