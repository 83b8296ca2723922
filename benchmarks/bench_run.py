"""The run, in the order `run_benchmark` goes: checkpoint, conversions, interleaved rounds, head to head, results.

Every step that loads a model runs in a process of its own (`bench_process.run_in_subprocess`, the tasks of
`bench_tasks.TASKS`); this process only plans, collects and writes. Each round visits every runtime once (and
the bf16 matmul peak), in a rotating order, so that slow drifts of the machine spread over all of them.
"""

import json
import shutil
import statistics
import sys
import time
from argparse import Namespace
from dataclasses import dataclass, field
from pathlib import Path

from bench_checkpoint import SUBMODELS, ir_sizes, transformer_flops
from bench_process import log, run_in_subprocess, run_worker
from bench_report import add_psnr, evaluate_targets, machine_description, markdown_report, median, summarize_runtime
from bench_runtimes import GUIDANCE_SCALE, OUR_FORMATS, PROMPT, RUNTIMES, SEED, runtime_specs, text_tokens
from bench_tasks import HEAD_TO_HEAD, TASKS

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass
class Run:
    """What the steps of one run share: the options, the checkpoint and the folders made from it."""

    args: Namespace
    work_dir: Path
    names: list[str]  # the runtimes of `--runtimes`, in `RUNTIMES` order
    checkpoint: Path | None = None  # set by `build`
    folders: dict[str, Path] = field(default_factory=dict)  # converted folder by weight format, set by `convert`

    @property
    def run_dir(self) -> Path:
        return self.work_dir / f"run-{self.checkpoint.name}"  # logs, images and compile caches of this model's runs

    @property
    def logs(self) -> Path:
        return self.run_dir / "logs"

    def folder(self, weight_format: str) -> Path:
        return self.work_dir / f"ov-{self.checkpoint.name}-{weight_format}"

    def config(self, component: str) -> dict:
        return json.loads((self.checkpoint / component / "config.json").read_text())

    def specs(self, names: list[str]) -> dict[str, dict]:
        """The worker task fields of each runtime in `names`, with the text tokens it runs."""
        specs = runtime_specs(names, folders=self.folders, checkpoint=self.checkpoint, run_dir=self.run_dir)
        clip_positions = self.config("text_encoder")["max_position_embeddings"]
        has_t5 = (self.checkpoint / "text_encoder_3").is_dir()
        for name, spec in specs.items():
            spec.update(text_tokens(name, max_sequence_length=self.args.max_sequence_length, clip_positions=clip_positions, has_t5=has_t5))
        return specs

    def forward_flops(self, text_tokens: int) -> float:
        """FLOPs of one batch-2 transformer forward at the run's size with `text_tokens` text tokens."""
        vae_scale_factor = 2 ** (len(self.config("vae")["block_out_channels"]) - 1)
        size = {"height": self.args.height, "width": self.args.width, "vae_scale_factor": vae_scale_factor}
        return transformer_flops(self.config("transformer"), **size, text_tokens=text_tokens, batch=2)

    def call_options(self) -> dict:
        """The size and steps every runtime task gets."""
        return {"height": self.args.height, "width": self.args.width, "steps": self.args.steps, "timed_steps": self.args.timed_steps}


def run_worker_task(task_path: str) -> int:
    """`bench_sd3.py --worker TASK_FILE`: run one task of `TASKS` (in the process `run_in_subprocess` started)."""
    return run_worker(task_path, tasks=TASKS)


def weight_formats(names: list[str]) -> list[str]:
    """Our weight formats the runtimes `names` need, fp16 first where another needs it."""
    formats = [fmt for fmt in OUR_FORMATS if any(n == f"ours-{fmt}" or n.startswith(f"ours-{fmt}-") for n in names)]
    if any(n.split("-")[0] in ("optimum", "genai") for n in names) and "fp16" not in formats:
        formats.insert(0, "fp16")  # the peers run our fp16 export
    if "int8-hybrid" in formats or "int8" in formats:  # IR size ratios need the fp16 folder, hybrid starts from it
        formats = ["fp16"] + [fmt for fmt in formats if fmt != "fp16"]
    return formats


# 1. The checkpoint
def build(run: Run) -> str | None:
    """Build (or find) the checkpoint in a process of its own; return an error message, or None."""
    log("building the checkpoint (cached in --work-dir)")
    args = run.args
    task = {"kind": "build", "work_dir": str(run.work_dir), "layers": args.layers, "quick": args.quick, "height": args.height, "width": args.width}
    built = run_in_subprocess(task, logs=run.work_dir / "logs", name="build")
    if not built.ok:
        return f"could not build the checkpoint: {built.reason}"
    run.checkpoint = Path(built.result["checkpoint"])
    return built.result["size_error"]


# 2. Conversions, each in its own process (time and peak RSS)
def convert(run: Run, formats: list[str]) -> dict[str, dict]:
    """Convert the checkpoint to each format (or reuse a cached folder); return the rows of the formats table."""
    format_rows = {}
    for fmt in formats:
        folder = run.folders[fmt] = run.folder(fmt)
        if run.args.skip_conversion_memory and (folder / "model_index.json").is_file():
            format_rows[fmt] = {"conversion": {"skipped": "reused a cached conversion"}}
            continue
        log(f"converting to {fmt}")
        task = {
            "kind": "convert",
            "checkpoint": str(run.checkpoint),
            "output_dir": str(folder),
            "weight_format": fmt,
            "fp16_dir": str(run.folder("fp16")),  # int8-hybrid's source
            "calibration_samples": run.args.calibration_samples,
        }
        outcome = run_in_subprocess(task, logs=run.logs, name=f"convert-{fmt}", timeout=12 * 3600)  # 24 layers on 2 cores: hours
        format_rows[fmt] = {"conversion": outcome.result if outcome.ok else {"skipped": f"failed: {outcome.reason}"}}
        log(f"  {fmt}: " + (f"{outcome.result['seconds']:.0f} s, peak RSS {outcome.result['peak_rss'] / 1e9:.2f} GB" if outcome.ok else outcome.reason))
    fp16_folder = run.folders.get("fp16")
    fp16_sizes = ir_sizes(fp16_folder) if fp16_folder and (fp16_folder / "model_index.json").is_file() else {}
    for fmt, row in format_rows.items():
        if (run.folders[fmt] / "model_index.json").is_file():
            row["ir_bytes"] = ir_sizes(run.folders[fmt])
            row["ratio_to_fp16"] = {sub: size / fp16_sizes[sub] for sub, size in row["ir_bytes"].items() if sub in fp16_sizes}
            row["largest_ratio"] = max(row["ratio_to_fp16"].values()) if row["ratio_to_fp16"] else None
    return format_rows


@dataclass
class Rounds:
    """What the interleaved rounds measured."""

    visits: dict[str, list[dict]]  # each runtime's successful visits
    probes: dict[str, dict] = field(default_factory=dict)  # each runtime's compile probe
    failures: dict[str, str] = field(default_factory=dict)  # why a runtime has no row
    peaks: list[dict] = field(default_factory=list)  # the matmul peak of each round


def visit(run: Run, rounds: Rounds, name: str, spec: dict, *, round_index: int) -> None:
    """One visit of runtime `name` (after a compile probe, if it is the first); record it in `rounds`."""
    label = f"round {round_index + 1}/{run.args.repeats} {name}"
    first = not rounds.visits[name]
    if first and spec["cache_dir"]:
        outcome = run_in_subprocess({"kind": "compile_probe", **spec}, logs=run.logs, name=f"{name}-compile")
        rounds.probes[name] = outcome.result if outcome.ok else {}
    image_path = str(run.run_dir / "images" / f"{name}.npy") if first else None
    task = {"kind": "runtime", **spec, **run.call_options(), "image_path": image_path}
    outcome = run_in_subprocess(task, logs=run.logs, name=f"{name}-round{round_index + 1}")
    if outcome.ok:
        rounds.visits[name].append(outcome.result)
        step = statistics.median(outcome.result["step_s"]) if outcome.result["step_s"] else float("nan")
        log(f"{label}: {step:.3f} s/step (visit {outcome.seconds:.0f} s)")
    elif first:
        rounds.failures[name] = outcome.reason
        log(f"{label}: skipped: {outcome.reason}")
    else:
        log(f"{label}: failed, round not counted: {outcome.reason}")


# 3. Interleaved rounds: every round visits every runtime once (and the matmul peak), in a rotating order
def run_rounds(run: Run, specs: dict[str, dict]) -> Rounds:
    rounds = Rounds(visits={name: [] for name in run.names})
    for name, spec in specs.items():
        if spec.get("folder") and not (Path(spec["folder"]) / "model_index.json").is_file():
            rounds.failures[name] = f"no converted folder ({Path(spec['folder']).name})"
    images_dir = run.run_dir / "images"
    shutil.rmtree(images_dir, ignore_errors=True)  # PSNR compares this run's images only
    images_dir.mkdir(parents=True)
    order = run.names + ["matmul-peak"]
    for round_index in range(run.args.repeats):
        shift = round_index % len(order)
        for name in order[shift:] + order[:shift]:
            if name in rounds.failures:
                continue
            if name == "matmul-peak":
                outcome = run_in_subprocess({"kind": "matmul"}, logs=run.logs, name=f"matmul-peak-round{round_index + 1}")
                if outcome.ok:
                    rounds.peaks.append(outcome.result)
            else:
                visit(run, rounds, name, specs[name], round_index=round_index)
    return rounds


# 4. Head-to-head pairs, each in one process
def run_head_to_head(run: Run, specs: dict[str, dict], failures: dict[str, str]) -> list[dict]:
    """Each pair of `HEAD_TO_HEAD` whose runtimes are in this run and work (and match `--head-to-head-filter`)."""
    rows = []
    for a, b, measure, pairs in HEAD_TO_HEAD:
        bases = [name.replace("-static", "").replace("-taylorseer", "") for name in (a, b)]  # variants run with their runtime
        if any(base not in run.names or base in failures for base in bases) or run.args.head_to_head_filter not in f"{a} {b} {measure}":
            continue
        specs.update(run.specs([name for name in (a, b) if name not in specs]))
        pairs = min(pairs, 3) if run.args.quick else pairs
        pair = [{**specs[name], **run.call_options()} for name in (a, b)]
        task = {"kind": "head_to_head", "pair": pair, "measure": measure, "pairs": pairs, "timed_steps": run.args.timed_steps}
        outcome = run_in_subprocess(task, logs=run.logs, name=f"head-to-head-{a}-{b}-{measure}")
        row = {"a": a, "b": b, "measure": measure, "pairs": pairs}
        if outcome.ok:
            seconds, ratios = outcome.result["seconds"], outcome.result["ratios"]
            row.update(a_s=median(seconds[0]), b_s=median(seconds[1]), ratio=median(ratios), ratio_min=min(ratios), ratio_max=max(ratios))
            log(f"head to head, {measure}: {a} ÷ {b} = {row['ratio']:.3f} ({row['ratio_min']:.3f} .. {row['ratio_max']:.3f})")
        else:
            row["skipped"] = outcome.reason
            log(f"head to head, {measure}: {a} vs {b}: failed: {outcome.reason}")
        rows.append(row)
    return rows


# 5. Summary
def runtime_rows(run: Run, specs: dict[str, dict], rounds: Rounds) -> dict[str, dict]:
    """Each runtime's medians over rounds (or why it has none), with its visits."""
    args, rows = run.args, {}
    for name in run.names:
        if name in rounds.failures or not rounds.visits[name]:
            rows[name] = {"skipped": rounds.failures.get(name, "no successful visit")}
            continue
        tokens = specs[name]["text_tokens"]
        rows[name] = summarize_runtime(
            rounds.visits[name], compile_probe=rounds.probes.get(name, {}), steps=args.steps, timed_steps=args.timed_steps, flops=run.forward_flops(tokens)
        )
        rows[name]["text_tokens"] = tokens
        rows[name]["visits"] = rounds.visits[name]
    return rows


def collect_results(run: Run, *, format_rows: dict, rows: dict, rounds: Rounds, head_to_head: list[dict]) -> dict:
    """The JSON document of the run (without `targets` and `total_seconds`)."""
    from sd3_helper import folder_size

    args = run.args
    flops = run.forward_flops(run.config("text_encoder")["max_position_embeddings"] + args.max_sequence_length)  # diffusers' tokens
    model = "tiny (quick)" if args.quick else f"SD3-Medium-shaped, {args.layers} of 24 transformer layers, no T5, random weights"
    return {
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
        "matmul_peak": {key: median([peak[key] for peak in rounds.peaks]) for key in ("torch_bf16_tflops", "openvino_bf16_tflops")},
        "checkpoint_bytes": folder_size(run.checkpoint),
        "submodels": list(SUBMODELS),
        "formats": format_rows,
        "runtimes": rows,
        "psnr_ours_genai_tokens_vs_genai_db": add_psnr(rows, images_dir=run.run_dir / "images"),
        "head_to_head": head_to_head,
        "total_seconds": None,
    }


def write_results(results: dict, args: Namespace) -> None:
    """The JSON and the markdown report, to `--output` / `--markdown` or `benchmarks/results/bench_sd3_<tag>`."""
    tag = ("quick" if args.quick else f"{args.layers}-layers") + ("-head-to-head" if args.head_to_head_only else "")
    output = args.output or RESULTS_DIR / f"bench_sd3_{tag}.json"
    markdown_path = args.markdown or output.with_suffix(".md")
    output.parent.mkdir(parents=True, exist_ok=True)
    markdown_path.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2, default=str) + "\n")
    report = markdown_report(results)
    markdown_path.write_text(report)
    print(report)
    log(f"done in {results['total_seconds'] / 60:.1f} min: {output}, {markdown_path}")


def run_benchmark(args: Namespace) -> int:
    """The whole benchmark for parsed `bench_sd3.py` options; return the exit status."""
    started = time.perf_counter()
    names = [name for name in RUNTIMES if name in args.runtimes.split(",")]
    run = Run(args=args, work_dir=args.work_dir.resolve(), names=names)
    error = build(run)
    if error:
        print(f"error: {error}", file=sys.stderr)
        return 1 if run.checkpoint is None else 2
    format_rows = convert(run, weight_formats(names))
    specs = run.specs(names)
    rounds = run_rounds(run, specs)
    head_to_head = run_head_to_head(run, specs, rounds.failures)
    rows = runtime_rows(run, specs, rounds)
    results = collect_results(run, format_rows=format_rows, rows=rows, rounds=rounds, head_to_head=head_to_head)
    results["targets"] = evaluate_targets(results)
    results["total_seconds"] = time.perf_counter() - started
    write_results(results, args)
    return 0
