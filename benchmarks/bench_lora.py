"""LoRA adapters' cost on the SD3-Medium-shaped model (issue 12), head to head in one process.

    python benchmarks/bench_lora.py                   # 2 transformer layers, 512x512, rank 16 on the attention
    python benchmarks/bench_lora.py --rank 64 --targets all

The checkpoint is `bench_sd3.py`'s (built once under `--work-dir`), converted to fp16 without T5 (again if the folder
predates linear layers named by module path, which run-time adapters need). A random LoRA of `--rank` on
`--targets` is made with peft (`make_tiny_lora`), and the same LoRA is fused at conversion into a second fp16 folder.

Measured, alternating in rounds so that each round sees one machine speed (the transformer forward of a guided
step, batch 2):
- the base model, never given an adapter: today's step;
- the same folder with the adapter loaded and active, and loaded but disabled (empty states);
- the folder with the LoRA fused at conversion;
- after `unload_lora_weights()`: the original graph again.
Then the time of `load_lora_weights` (reading the file, adding states; the compile is on the next call, timed
apart), and of switching: `set_adapters` between scales and between two adapters, `disable_lora` / `enable_lora`.
"""

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project's modules
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmark's modules

from bench_checkpoint import build_checkpoint  # noqa: E402
from bench_report import machine_description, write_results  # noqa: E402
from bench_skip_layers import forward_inputs, timed  # noqa: E402

TARGETS = {
    "attention": ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0"),  # the usual SD3 LoRA
    "all": (
        "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj",
        "attn.to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2",
    ),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work-dir", type=Path, default=Path("build/bench"))
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--targets", choices=sorted(TARGETS), default="attention")
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--switches", type=int, default=20)
    parser.add_argument("--output", type=Path, default=None, help="default: results/bench_lora_<N>-layers-r<rank>-<targets>.json")
    return parser.parse_args(argv)


def has_named_layers(folder: Path) -> bool:
    from sd3_helper import linear_node_name

    return linear_node_name("transformer_blocks.0.attn.to_q") in (folder / "transformer" / "openvino_model.xml").read_text()


def folders(args: argparse.Namespace) -> tuple[Path, Path, Path, Path]:
    """(base fp16 folder, LoRA, second LoRA, folder with the LoRA fused at conversion), made once."""
    from sd3_helper import convert_sd3, make_tiny_lora

    checkpoint = build_checkpoint(args.work_dir, layers=args.layers)
    base_dir = args.work_dir / f"{checkpoint.name}-fp16"
    overwrite = (base_dir / "model_index.json").is_file() and not has_named_layers(base_dir)
    convert_sd3(checkpoint, base_dir, weight_format="fp16", load_t5=False, overwrite=overwrite)
    loras = []
    for seed in (1, 2):
        lora_dir = args.work_dir / f"{checkpoint.name}-lora-r{args.rank}-{args.targets}-{seed}"
        if not (lora_dir / "pytorch_lora_weights.safetensors").is_file():
            make_tiny_lora(checkpoint, lora_dir, seed=seed, rank=args.rank, targets=TARGETS[args.targets])
        loras.append(lora_dir)
    fused_dir = args.work_dir / f"{checkpoint.name}-fp16-lora-r{args.rank}-{args.targets}"
    convert_sd3(checkpoint, fused_dir, weight_format="fp16", load_t5=False, lora=[(loras[0], 1.0)])
    return base_dir, loras[0], loras[1], fused_dir


def switch_times(pipe, *, switches: int) -> dict[str, list[float]]:
    """Seconds per `set_adapters` / `disable_lora` / `enable_lora` call on a compiled pipeline with adapters a and b."""
    times = {"set_adapters (scale)": [], "set_adapters (other adapter)": [], "set_adapters (both)": [], "disable_lora + enable_lora": []}
    for index in range(switches):
        times["set_adapters (scale)"].append(timed(lambda: pipe.set_adapters(["a"], [0.5 + index % 2 * 0.3])))
        times["set_adapters (other adapter)"].append(timed(lambda: pipe.set_adapters(["b"], [0.8])))
        times["set_adapters (both)"].append(timed(lambda: pipe.set_adapters(["a", "b"], [0.6, 0.4])))
        times["disable_lora + enable_lora"].append(timed(lambda: (pipe.disable_lora(), pipe.enable_lora())))
    pipe.set_adapters(["a"], [1.0])
    return times


def main(argv: list[str] | None = None) -> int:
    from sd3_helper import OVStableDiffusion3Pipeline

    args = parse_args(argv)
    base_dir, lora, second_lora, fused_dir = folders(args)
    pipes = {name: OVStableDiffusion3Pipeline.from_pretrained(folder) for name, folder in (("base", base_dir), ("adapter", base_dir), ("fused", fused_dir))}
    adapter_pipe = pipes["adapter"]
    load_seconds = timed(lambda: adapter_pipe.load_lora_weights(str(lora), adapter_name="a"))
    inputs = forward_inputs(adapter_pipe.transformer, batch=2, size=args.size, vae_scale_factor=adapter_pipe.vae_scale_factor)
    compile_seconds = timed(lambda: adapter_pipe.transformer(**inputs))  # the first call compiles the graph with states
    adapter_pipe.load_lora_weights(str(second_lora), adapter_name="b")  # the same layers: no new states, no compile
    adapter_pipe.set_adapters(["a"], [1.0])

    def disabled_forward():
        adapter_pipe.disable_lora()
        try:
            return adapter_pipe.transformer(**inputs)
        finally:
            adapter_pipe.enable_lora()

    calls = {
        "base (no adapter)": lambda: pipes["base"].transformer(**inputs),
        "adapter active": lambda: adapter_pipe.transformer(**inputs),
        "adapter loaded, disabled": disabled_forward,
        "fused at conversion": lambda: pipes["fused"].transformer(**inputs),
    }
    for call in calls.values():
        call()  # warm-up (and compilation)
    times = {name: [] for name in calls}
    for _ in range(args.repeats):
        for name, call in calls.items():
            times[name].append(timed(call))
    switches = switch_times(adapter_pipe, switches=args.switches)
    adapter_pipe.unload_lora_weights()
    adapter_pipe.transformer(**inputs)  # compiles the original graph again
    unloaded = {"base (no adapter)": [], "after unload_lora_weights": []}
    for _ in range(max(2, args.repeats // 2)):
        unloaded["base (no adapter)"].append(timed(calls["base (no adapter)"]))
        unloaded["after unload_lora_weights"].append(timed(lambda: adapter_pipe.transformer(**inputs)))

    base = times["base (no adapter)"]
    ratios = {name: [value / reference for value, reference in zip(values, base)] for name, values in times.items() if name != "base (no adapter)"}
    ratios["after unload_lora_weights"] = [a / b for a, b in zip(unloaded["after unload_lora_weights"], unloaded["base (no adapter)"])]
    machine = machine_description()
    stem = f"bench_lora_{args.layers}-layers-r{args.rank}-{args.targets}"
    lines = [
        f"# LoRA at run time: {args.layers}-layer SD3-Medium-shaped transformer, fp16 IR, {args.size}x{args.size}, rank {args.rank} on "
        f"{len(TARGETS[args.targets])} linear layers per block ({args.targets}), {args.repeats} alternating rounds",
        "",
        f"Machine: {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores, features {', '.join(machine.get('cpu_features', [])) or 'none of AVX-512 / AMX'}",
        "",
        "| guided step's transformer forward (batch 2) | median (s) | ratio to base, median (range) |",
        "|---|---:|---:|",
        f"| base (no adapter) | {statistics.median(base):.3f} | 1 |",
        *(
            f"| {name} | {statistics.median(times.get(name, unloaded.get(name, []))):.3f} | "
            f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f}) |"
            for name, values in ratios.items()
        ),
        "",
        "| adapter operation | median (ms) | max (ms) |",
        "|---|---:|---:|",
        f"| load_lora_weights (read the file, add states) | {load_seconds * 1000:.0f} | |",
        f"| first call after loading (compiles the graph with states) | {compile_seconds * 1000:.0f} | |",
        *(f"| {name} | {statistics.median(values) * 1000:.2f} | {max(values) * 1000:.2f} |" for name, values in switches.items()),
        "",
        "Targets (issue 12): no adapter within 1 % of the base step; one adapter active <= 1.15x; switching < 2 s; fused = base.",
    ]
    results = {
        "machine": machine,
        "settings": vars(args) | {"work_dir": str(args.work_dir), "output": str(args.output)},
        "seconds": times | {"unloaded": unloaded},
        "ratios": ratios,
        "load_seconds": load_seconds,
        "first_call_seconds": compile_seconds,
        "switch_seconds": switches,
    }
    write_results(results, stem=stem, output=args.output, markdown="\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
