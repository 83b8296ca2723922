"""The results: medians over rounds, the markdown tables, issue 5's targets, and the machine they ran on.

Each round visits every runtime once, in a rotating order, so slow drifts of the machine (thermal,
neighbours) spread over all of them, and the table shows medians over rounds:

- step: seconds per denoising step inside a pipeline call (batch 2 = classifier-free guidance), from the
  intervals between `callback_on_step_end` calls (openvino.genai: its own per-iteration metrics);
- transformer: the raw forward, an infer of the transformer alone on the same batch-2 inputs;
- overhead: step minus the transformer infer time measured inside the same steps, in % of a step;
- text encoding, VAE decode: the pipeline's own encode / decode of one prompt / one latent;
- whole image: text encoding + `--steps` steps + VAE decode. To save time only `--timed-steps` steps are run
  per call and the rest are extrapolated from the median step time (the table says so);
- TFLOPS: the forward's FLOPs (`transformer_flops`, counted from the config) over the forward's median time,
  against a bf16 matmul peak (4096^3 in torch and in an OpenVINO MatMul model) measured in the same run;
- PSNR of each runtime's image against our fp16 pipeline's image (same prompt, seed and steps);
- compile time without a cache and with an empty `CACHE_DIR` (cold), in a process of their own before the
  first visit, and with the filled cache (warm) in every visit;
- IR sizes (xml + bin per submodel) and their ratio to fp16;
- head to head (`HEAD_TO_HEAD`): pairs of runtimes in one process, measured alternately, the median ratio of
  each pair's times. The machine's speed can drift by 2x over minutes (a shared VM), which the visits above see
  as noise between rounds; the two halves of a pair see the same speed, so the targets are judged on these.

The JSON and the markdown carry the machine (`machine_description`: CPU model, cores, RAM and library versions).
"""

import os
import platform
import statistics
from datetime import datetime, timezone
from pathlib import Path

from bench_tasks import MATMUL_SIDE

# Issue 5's targets judged on the head-to-head ratios: ((A, B, measure), text, met).
HEAD_TO_HEAD_TARGETS = (
    (("ours-fp16-genai-tokens", "genai-fp16", "step"), "head to head: ours-fp16 s/step ÷ genai-fp16 s/step <= 1 (same IR, same work)", lambda r: r <= 1),
    (("ours-fp16", "optimum-fp16", "step"), "head to head: ours-fp16 s/step ÷ optimum-fp16 s/step <= 1 (same IR, same work)", lambda r: r <= 1),
    (
        ("ours-fp16-static-genai-tokens", "genai-fp16", "step"),
        "head to head: ours-fp16 with static shapes s/step ÷ genai-fp16 s/step <= 1 (same IR, same work)",
        lambda r: r <= 1,
    ),
    (("ours-int8-hybrid", "ours-fp16", "forward"), "head to head: int8-hybrid forward ÷ fp16 forward <= 1/1.4 = 0.714", lambda r: r <= 1 / 1.4),
    (("ours-int8-hybrid", "genai-fp16", "whole"), "head to head: ours-int8-hybrid whole image ÷ genai-fp16's < 1", lambda r: r < 1),
    (("ours-fp16-genai-tokens", "genai-fp16", "whole"), "head to head: ours-fp16 whole image ÷ genai-fp16's (same work) < 1", lambda r: r < 1),
    (
        ("ours-int8-hybrid-taylorseer", "genai-fp16", "whole"),
        "head to head: ours-int8-hybrid whole image ÷ genai-fp16's, both with genai's step cache < 1",
        lambda r: r < 1,
    ),
    (
        ("ours-fp16-genai-tokens-taylorseer", "genai-fp16", "whole"),
        "head to head: ours-fp16 whole image ÷ genai-fp16's, same work and step cache < 1",
        lambda r: r < 1,
    ),
)


def machine_description() -> dict:
    """CPU model and flags, cores, RAM, Python and library versions, read without importing the libraries."""
    from importlib import metadata

    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    fields = dict(line.split(":", 1) for line in cpuinfo.splitlines() if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    flags = set(fields.get("flags", "").split())
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").is_file() else ""
    mem_kb = next((int(line.split()[1]) for line in meminfo.splitlines() if line.startswith("MemTotal:")), 0)
    versions = {}
    for package in ("openvino", "openvino-genai", "openvino-tokenizers", "nncf", "torch", "diffusers", "transformers", "optimum-intel", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpu": fields.get("model name", platform.processor()),
        "cores": os.cpu_count(),
        "cpu_features": sorted(flags & {"avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "amx_tile"}),
        "ram_gb": round(mem_kb / 1024**2, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


# ----------------------------------------------------------------------------------------------------------
# Medians over rounds
# ----------------------------------------------------------------------------------------------------------


def write_results(results: dict, *, stem: str, output: Path | None, markdown: str) -> None:
    """Save `results` as `results/<stem>.json` (or `output`) and `markdown` beside it as `.md`, and print it."""
    import json

    output = output or Path(__file__).resolve().parent / "results" / f"{stem}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    output.with_suffix(".md").write_text(markdown)
    print(markdown)


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize_runtime(visits: list[dict], *, compile_probe: dict, steps: int, timed_steps: int, flops: float) -> dict:
    """Medians over rounds of each visit's own medians."""
    per_round_step = [statistics.median(visit["step_s"]) for visit in visits if visit["step_s"]]
    step = median(per_round_step)
    step_infer = median([statistics.median(visit["step_infer_s"]) for visit in visits if visit["step_infer_s"]])
    forward = median([statistics.median(visit["forward_s"]) for visit in visits if visit["forward_s"]])
    whole = median([visit["call_s"] + (steps - timed_steps) * statistics.median(visit["step_s"]) for visit in visits if visit["step_s"]])
    vae = median([visit["vae_decode_s"] for visit in visits])
    first = visits[0]
    return {
        "rounds": len(visits),
        "step_s": step,
        "forward_s": forward,
        "forward_in_loop": bool(first.get("forward_in_loop")),
        "step_infer_s": step_infer,
        "overhead_pct": 100 * (step - step_infer) / step if step and step_infer else None,
        "text_encoding_s": median([visit["text_encoding_s"] for visit in visits]),
        "vae_decode_s": vae,
        "whole_image_s": whole,
        "vae_share_pct": 100 * vae / whole if whole and vae is not None else None,
        "whole_image_measured_s": first.get("whole_image_measured_s"),
        "forward_tflops": flops / forward / 1e12 if forward else None,
        "load_s": median([visit["load_s"] for visit in visits]),
        "compile_no_cache_s": compile_probe.get("compile_no_cache_s"),
        "compile_cold_s": compile_probe.get("compile_cold_s"),
        "compile_warm_s": median([visit["compile_warm_s"] for visit in visits if "compile_warm_s" in visit]),
        "peak_rss": max(visit["peak_rss"] for visit in visits),
        "baseline_rss": median([visit["baseline_rss"] for visit in visits]),
    }


def add_psnr(rows: dict[str, dict], *, images_dir: Path) -> float | None:
    """Add each runtime's PSNR against ours-fp16's image to its row (`psnr_db`); return the PSNR of
    ours-fp16-genai-tokens against genai-fp16 (the same work), or None."""
    import numpy as np

    from sd3_helper import psnr

    def image(name: str) -> Path:
        return images_dir / f"{name}.npy"

    reference = image("ours-fp16")  # the folder holds this run's images only
    if reference.is_file():
        for name, row in rows.items():
            if "skipped" not in row and image(name).is_file():
                row["psnr_db"] = psnr(np.load(image(name)), np.load(reference))
    same_work = [image("ours-fp16-genai-tokens"), image("genai-fp16")]
    return psnr(*(np.load(path) for path in same_work)) if all(path.is_file() for path in same_work) else None


# ----------------------------------------------------------------------------------------------------------
# The markdown report
# ----------------------------------------------------------------------------------------------------------


def _fmt(value, spec: str = ".2f", suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def _gb(value) -> str:
    return _fmt(None if value is None else value / 1e9, ".2f")


def _size(num_bytes: int) -> str:
    return f"{num_bytes / 1e9:.2f} GB" if num_bytes >= 1e9 else f"{num_bytes / 1e6:.1f} MB"


def _setup_lines(results: dict) -> list[str]:
    setup, machine, peak = results["setup"], results["machine"], results["matmul_peak"]
    return [
        f"### SD3 benchmark: {setup['model']}",
        "",
        f"{setup['height']}x{setup['width']}, guidance {setup['guidance_scale']}, {setup['steps']} steps, max_sequence_length "
        f"{setup['max_sequence_length']}; medians of {setup['repeats']} interleaved rounds; {machine['date']}.",
        f"Machine: {machine['cpu']}, {machine['cores']} cores ({', '.join(machine['cpu_features'])}), {machine['ram_gb']} GB RAM; "
        + ", ".join(f"{name} {version}" for name, version in machine["versions"].items() if version)
        + ".",
        f"Transformer forward (batch 2): {results['forward_gflop']:.0f} GFLOP. bf16 matmul peak ({MATMUL_SIDE}^3): "
        f"torch {_fmt(peak.get('torch_bf16_tflops'))} TFLOPS, OpenVINO {_fmt(peak.get('openvino_bf16_tflops'))} TFLOPS.",
        "",
    ]


def _runtime_table(results: dict) -> list[str]:
    table = [
        "| runtime | s / step | transformer forward (s) | overhead (% of step) | text encoding (s) | VAE decode (s) "
        "| whole image (s) ¹ | VAE share | forward TFLOPS | PSNR vs ours-fp16 (dB) | peak RSS (GB) ² | load (s) | compile (s): no cache / cold / warm ³ |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in results["runtimes"].items():
        if "skipped" in row:
            table.append(f"| {name} | skipped: {row['skipped']} |" + " |" * 11)
            continue
        forward = _fmt(row["forward_s"], ".3f") + (" ⁴" if row["forward_in_loop"] else "")
        compiles = " / ".join(_fmt(row[key], ".1f") for key in ("compile_no_cache_s", "compile_cold_s", "compile_warm_s"))
        table.append(
            f"| {name} | {_fmt(row['step_s'], '.3f')} | {forward} | {_fmt(row['overhead_pct'], '.1f')} "
            f"| {_fmt(row['text_encoding_s'], '.3f')} | {_fmt(row['vae_decode_s'], '.2f')} | {_fmt(row['whole_image_s'], '.1f')} "
            f"| {_fmt(row['vae_share_pct'], '.0f', ' %')} | {_fmt(row['forward_tflops'], '.2f')} | {_fmt(row.get('psnr_db'), '.1f')} "
            f"| {_gb(row['peak_rss'])} ({_gb(row['peak_rss'] - row['baseline_rss'])}) | {_fmt(row['load_s'], '.1f')} | {compiles} |"
        )
    timed, steps = results["setup"]["timed_steps"], results["setup"]["steps"]
    same_work_psnr = results.get("psnr_ours_genai_tokens_vs_genai_db")
    return table + [
        "",
        f"¹ text encoding + {steps} steps + VAE decode: each call ran {timed} steps"
        + (f", the other {steps - timed} are extrapolated from the median step time." if steps > timed else "."),
        "² the largest peak RSS of the runtime's own process over its visits (in parentheses: above its post-import baseline).",
        "³ load: reading the folder (`from_pretrained(compile=False)`, the genai constructor, diffusers' `from_pretrained`); "
        "compile: OpenVINO compilation without a cache, with an empty `CACHE_DIR` (cold) and with the filled one (warm).",
        "⁴ openvino.genai has no standalone forward: the median of its in-loop transformer infers.",
        "",
        "Text tokens per transformer call: "
        + ", ".join(f"{name} {row['text_tokens']}" for name, row in results["runtimes"].items() if "text_tokens" in row)
        + ". Without T5, openvino.genai pads the T5 part to 77 positions where diffusers pads to `max_sequence_length`; "
        "`ours-fp16-genai-tokens` is our pipeline with `max_sequence_length=77`, the same work"
        + (f" and the same image (PSNR {same_work_psnr:.1f} dB against genai's)." if same_work_psnr is not None else "."),
    ]


def _format_table(results: dict) -> list[str]:
    submodels = results["submodels"]
    lines = [
        "| weight format | " + " | ".join(submodels) + " | total | largest ratio to fp16 | conversion (s) "
        "| conversion peak RSS (GB) | above post-import baseline (GB) |",
        "|---|" + "---|" * (len(submodels) + 5),
    ]
    for fmt, row in results["formats"].items():
        sizes = row.get("ir_bytes", {})
        cells = [f"{_size(sizes[sub])} ({row['ratio_to_fp16'][sub]:.2f})" if sub in sizes else "n/a" for sub in submodels]
        conversion = row.get("conversion", {})
        note = f" (from the {conversion['source']})" if conversion.get("source") == "fp16 IR" else ""
        if conversion.get("calibration_samples"):
            note += f" ({conversion['calibration_samples']} calibration samples)"
        if conversion.get("skipped"):
            note = f" ({conversion['skipped']})"
        lines.append(
            f"| {fmt} | " + " | ".join(cells) + f" | {_size(sum(sizes.values()))} | {_fmt(row.get('largest_ratio'))} "
            f"| {_fmt(conversion.get('seconds'), '.0f')}{note} | {_gb(conversion.get('peak_rss'))} "
            f"| {_gb(conversion['peak_rss'] - conversion['baseline_rss']) if conversion.get('peak_rss') else 'n/a'} |"
        )
    return lines + ["", f"Checkpoint (fp16 safetensors) on disk: {_size(results['checkpoint_bytes'])}.", ""]


def _head_to_head_table(results: dict) -> list[str]:
    lines = [
        "Head to head: both runtimes in one process, measured alternately; the ratio of each pair's times, median "
        "(and range) over pairs. Robust to the machine's speed drifting between the visits above.",
        "",
        "| A | B | measure | pairs | A (s) | B (s) | A ÷ B |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in results["head_to_head"]:
        if "skipped" in row:
            lines.append(f"| {row['a']} | {row['b']} | {row['measure']} | skipped: {row['skipped']} | | | |")
            continue
        lines.append(
            f"| {row['a']} | {row['b']} | {row['measure']} | {row['pairs']} | {row['a_s']:.3f} | {row['b_s']:.3f} "
            f"| {row['ratio']:.3f} ({row['ratio_min']:.3f} .. {row['ratio_max']:.3f}) |"
        )
    return lines + [""]


def markdown_report(results: dict) -> str:
    """The results as markdown: setup, runtimes table, conversions table, head to head, targets."""
    lines = _setup_lines(results)
    lines += _runtime_table(results) if results["setup"]["repeats"] else ["No interleaved rounds in this run.", ""]
    lines += [""] + _format_table(results)
    if results.get("head_to_head"):
        lines += _head_to_head_table(results)
    lines += ["| target | measured | met |", "|---|---|---|"]
    lines += [f"| {target['target']} | {target['measured']} | {target['met']} |" for target in results["targets"]]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------
# Targets
# ----------------------------------------------------------------------------------------------------------


def _target(text: str, measured: float | None, met: bool | None, spec: str = ".2f") -> dict:
    return {"target": text, "measured": _fmt(measured, spec), "met": "n/a" if met is None else ("yes" if met else "no")}


def evaluate_targets(results: dict) -> list[dict]:
    """Issue 5's targets, as ratios of this run's numbers (n/a when a row is missing)."""
    rows, formats = results["runtimes"], results["formats"]

    def value(runtime: str, key: str):
        return rows.get(runtime, {}).get(key)

    duels = {(row["a"], row["b"], row["measure"]): row["ratio"] for row in results.get("head_to_head", []) if "ratio" in row}
    targets = [_target(text, duels[key], check(duels[key]), ".3f") for key, text, check in HEAD_TO_HEAD_TARGETS if key in duels]
    genai_step = value("genai-fp16", "step_s")
    for ours in ("ours-fp16-genai-tokens", "ours-fp16"):
        ours_step = value(ours, "step_s")
        ratio = ours_step / genai_step if ours_step and genai_step else None
        same_work = value(ours, "text_tokens") == value("genai-fp16", "text_tokens")
        tokens = f"{value(ours, 'text_tokens')} vs {value('genai-fp16', 'text_tokens')} text tokens"
        text = f"{ours} s/step ÷ genai-fp16 s/step <= 1 ({tokens})"
        targets.append(_target(text, ratio, None if ratio is None or not same_work else ratio <= 1))
    overhead = value("ours-fp16", "overhead_pct")
    targets.append(_target("ours-fp16 pipeline overhead <= 2 % of a step", overhead, None if overhead is None else overhead <= 2, ".1f"))
    fp16_forward, hybrid_forward = value("ours-fp16", "forward_s"), value("ours-int8-hybrid", "forward_s")
    speedup = fp16_forward / hybrid_forward if fp16_forward and hybrid_forward else None
    targets.append(_target("int8-hybrid forward speed-up over fp16 >= 1.4", speedup, None if speedup is None else speedup >= 1.4))
    largest = formats.get("int8", {}).get("largest_ratio")
    targets.append(_target("int8 IR size ÷ fp16, every submodel <= 0.55", largest, None if largest is None else largest <= 0.55))
    for fmt in ("fp16", "int8"):
        peak = formats.get(fmt, {}).get("conversion", {}).get("peak_rss")
        ratio = peak / results["checkpoint_bytes"] if peak else None
        text = f"{fmt} conversion peak RSS ÷ checkpoint size <= 1.5 (the target is for 24 layers)"
        targets.append(_target(text, ratio, None if ratio is None else ratio <= 1.5))
    peers = [row["whole_image_s"] for name, row in rows.items() if not name.startswith("ours") and row.get("whole_image_s")]
    for ours in ("ours-fp16", "ours-fp16-genai-tokens", "ours-int8-hybrid"):
        whole = value(ours, "whole_image_s")
        ratio = whole / min(peers) if whole and peers else None
        targets.append(_target(f"{ours} whole image ÷ fastest peer's < 1", ratio, None if ratio is None else ratio < 1))
    if not results["setup"]["repeats"]:  # the targets judged on rounds have nothing to judge
        targets = [target for target in targets if target["measured"] != "n/a"]
    return targets
