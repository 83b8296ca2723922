"""Memory and time of one image: our torch-free runtime against openvino.genai on the same fp16 folder; VAE tiling.

    python benchmarks/bench_memory.py                    # every part on the 2-layer SD3-Medium-shaped model
    python benchmarks/bench_memory.py --parts memory     # only the peak RSS of one image (memory, time, tiling)
    python benchmarks/bench_memory.py --quick            # tiny shapes: a smoke run of every code path

The model is `bench_sd3.py`'s random-weight SD3-Medium-shaped checkpoint (real CLIP-L, CLIP-G and VAE, no T5) in
fp16, built and converted once under `--work-dir`. Parts:

- memory: each runtime in a fresh process, one after the other: the RSS its imports add (ours: `from sd3_helper import OVStableDiffusion3Pipeline`,
  then openvino; genai: `import openvino_genai`), the RSS after loading and compiling the folder, and the peak RSS
  of one `--size` image (`--steps` steps, guidance 5). Ours runs with an int seed (no torch), at
  `max_sequence_length` 77 (what genai pads T5 to without T5: the same work) and 256 (diffusers' default).
- time: both runtimes in one process, alternating for `--rounds` whole images of `--time-steps` steps with
  genai's default step cache on both (`TaylorSeerConfig()` on ours) and the same work (`max_sequence_length` 77).
  Each image is split into text encoding, denoising steps, VAE decode and the rest: ours from its own methods
  (`encode_prompt`, `denoise`, `vae_decode`), genai from its performance metrics (text encoder and VAE infer
  durations, iteration durations). Ratios are per round, then the median (and range) over rounds.
- tiling: the PSNR of a `--tile-psnr-size` decode with `enable_vae_tiling(tile_sample_min_size=--tile-size)`
  against the whole decode, both in f32 so that only the tiling differs, on the final latents of a generation of
  that size; and the peak RSS of a `--tile-rss-size` decode, whole and tiled (the VAE config's tiles), each in a
  fresh process that loads the pipeline without compiling it (the decode compiles only the VAE decoder).

Results: `benchmarks/results/bench_memory_<N>-layers.{json,md}` (or `_quick`).
"""

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project's modules
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmark's modules

from bench_report import machine_description, write_results  # noqa: E402

PROMPT = "a photo of a cat sitting on a wooden table, highly detailed"
SEED = 42
GUIDANCE_SCALE = 5.0
GENAI_T5_POSITIONS = 77  # genai without T5 pads T5 to CLIP's 77 positions: ours at 77 does the same work
HEAVY_MODULES = ("torch", "diffusers", "transformers")
F32 = {"INFERENCE_PRECISION_HINT": "f32"}
PARTS = ("memory", "time", "tiling")
GB = 1e9


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work-dir", type=Path, default=Path("build/bench"))
    parser.add_argument("--layers", type=int, default=2, help="transformer blocks (24: SD3 Medium's depth)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    parser.add_argument("--size", type=int, default=512, help="image side of the memory and time parts")
    parser.add_argument("--steps", type=int, default=4, help="steps of the memory part's image")
    parser.add_argument("--time-steps", type=int, default=28, help="steps of the time part's images (the step cache skips some)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tile-psnr-size", type=int, default=1024)
    parser.add_argument(
        "--tile-variants", default="1024:0.25,512:0.25,512:0.5,768:0.25",
        help="tile side (pixels) and overlap factor of each tiled decode compared with the whole one (1024: SD3's config)",
    )  # fmt: skip
    parser.add_argument("--tile-rss-size", type=int, default=2048)
    parser.add_argument("--quick", action="store_true", help="tiny shapes and sizes, 2 steps, 1 round")
    parser.add_argument("--output", type=Path, default=None, help="default: benchmarks/results/bench_memory_<N>-layers.json")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # a task's JSON: run it in this process
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.steps, args.time_steps, args.rounds = 64, 2, 2, 1
        args.tile_psnr_size, args.tile_variants, args.tile_rss_size = 128, "64:0.25,64:0.5", 192
    return args


# ----------------------------------------------------------------------------------------------------------
# Measuring in this process
# ----------------------------------------------------------------------------------------------------------


def rss() -> int:
    """This process's resident memory now, in bytes."""
    import psutil

    return psutil.Process().memory_info().rss


def peak_rss() -> int:
    """This process's peak resident memory so far, in bytes: `VmHWM`, the high-water mark of its own address space.
    (`getrusage`'s `ru_maxrss` would not do: a child started by vfork + exec inherits its parent's peak.)"""
    status = Path("/proc/self/status")
    if status.is_file():
        return next(int(line.split()[1]) * 1024 for line in status.read_text().splitlines() if line.startswith("VmHWM:"))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # elsewhere: kilobytes on Linux, bytes on macOS


def heavy_modules() -> list[str]:
    return sorted(set(sys.modules) & set(HEAVY_MODULES))


def timed(obj, name: str) -> list[float]:
    """Replace `obj.name` by a wrapper that records each call's seconds; return the list it fills."""
    durations, method = [], getattr(obj, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            durations.append(time.perf_counter() - start)

    setattr(obj, name, wrapper)
    return durations


# ----------------------------------------------------------------------------------------------------------
# Tasks, each run by a fresh process (`--worker TASK`)
# ----------------------------------------------------------------------------------------------------------


def ours_image(task: dict) -> dict:
    """Import, load and compile our pipeline, and make one image with an int seed: RSS at each stage."""
    start = rss()
    from sd3_helper import OVStableDiffusion3Pipeline  # the documented import, through the lazy facade

    after_runtime = rss()
    import openvino  # noqa: F401  (from_pretrained would import it: counted apart)

    after_openvino = rss()
    pipe = OVStableDiffusion3Pipeline.from_pretrained(task["folder"])
    pipe.set_progress_bar_config(disable=True)
    loaded = rss()
    pipe(PROMPT, height=task["size"], width=task["size"], num_inference_steps=task["steps"], guidance_scale=GUIDANCE_SCALE,
         max_sequence_length=task["max_sequence_length"], generator=SEED)  # fmt: skip
    return {
        "import_runtime_bytes": after_runtime - start,
        "import_openvino_bytes": after_openvino - after_runtime,
        "loaded_bytes": loaded,
        "peak_bytes": peak_rss(),
        "heavy_modules": heavy_modules(),
    }


def genai_image(task: dict) -> dict:
    """The same with openvino.genai's Text2ImagePipeline (loaded by `sd3_genai.make_genai_pipeline`), seeded by its own
    generator (`rng_seed`), or by `TorchGenerator`, which imports torch."""
    start = rss()
    import openvino_genai

    after_import = rss()
    from sd3_openvino.runtime.genai import make_genai_pipeline

    pipe = make_genai_pipeline(task["folder"])
    loaded = rss()
    seed = {"generator": openvino_genai.TorchGenerator(SEED)} if task["torch_generator"] else {"rng_seed": SEED}
    pipe.generate(PROMPT, height=task["size"], width=task["size"], num_inference_steps=task["steps"], guidance_scale=GUIDANCE_SCALE, **seed)
    return {"import_genai_bytes": after_import - start, "loaded_bytes": loaded, "peak_bytes": peak_rss(), "heavy_modules": heavy_modules()}


def decode_rss(task: dict) -> dict:
    """Peak RSS of one VAE decode of `size` x `size` (random latents), whole or tiled, in a fresh process."""
    import numpy as np

    from sd3_openvino.runtime.pipeline import OVStableDiffusion3Pipeline

    pipe = OVStableDiffusion3Pipeline.from_pretrained(task["folder"], compile=False)  # the decode compiles only the VAE
    if task["tiled"]:
        pipe.enable_vae_tiling()
    channels, cells = pipe.vae_decoder.config["latent_channels"], task["size"] // pipe.vae_scale_factor
    latents = np.random.default_rng(0).standard_normal((1, channels, cells, cells), dtype=np.float32)
    baseline, start = rss(), time.perf_counter()
    pipe.decode_latents(latents, output_type="np")
    seconds = time.perf_counter() - start
    tile = None if pipe.vae_tiling is None else pipe.vae_tiling.tile_sample_min_size
    return {"baseline_bytes": baseline, "peak_bytes": peak_rss(), "seconds": seconds, "tile": tile, "heavy_modules": heavy_modules()}


def tiling_psnr(task: dict) -> dict:
    """PSNR of tiled decodes (each of `task["variants"]`: tile side, overlap factor) against the whole decode, all in
    f32, of a generation's final latents."""
    import numpy as np

    from sd3_openvino.runtime.pipeline import OVStableDiffusion3Pipeline

    pipe = OVStableDiffusion3Pipeline.from_pretrained(task["folder"], ov_config=F32)
    pipe.set_progress_bar_config(disable=True)
    size = task["size"]
    latents = pipe(PROMPT, height=size, width=size, num_inference_steps=task["steps"], guidance_scale=GUIDANCE_SCALE,
                   max_sequence_length=GENAI_T5_POSITIONS, generator=SEED, output_type="latent").images  # fmt: skip
    start = time.perf_counter()
    whole = pipe.decode_latents(latents, output_type="np").astype(np.float64)
    results = {"whole_s": time.perf_counter() - start, "variants": []}
    for tile, overlap in task["variants"]:
        pipe.enable_vae_tiling(tile_sample_min_size=tile, tile_overlap_factor=overlap)
        start = time.perf_counter()
        image = pipe.decode_latents(latents, output_type="np")
        seconds, mse = time.perf_counter() - start, float(np.mean((image - whole) ** 2))
        results["variants"].append({
            "tile": tile, "overlap": overlap, "tiled": pipe.vae_tiling.decodes_tiled(latents.shape), "seconds": seconds,
            "psnr_db": math.inf if mse == 0 else 10 * math.log10(1 / mse), "max_abs": float(np.abs(image - whole).max()),
        })  # fmt: skip
    return results


def both_runtimes_timed(task: dict) -> dict:
    """Whole images of ours and genai alternating in this process, each split into its stages."""
    import openvino_genai

    from sd3_openvino.runtime.genai import make_genai_pipeline
    from sd3_openvino.runtime.pipeline import OVStableDiffusion3Pipeline
    from sd3_openvino.runtime.steps import TaylorSeerConfig

    ours = OVStableDiffusion3Pipeline.from_pretrained(task["folder"])
    ours.set_progress_bar_config(disable=True)
    stages = {"text": timed(ours, "encode_prompt"), "steps": timed(ours, "denoise"), "decode": timed(ours, "vae_decode")}
    genai = make_genai_pipeline(task["folder"])
    common = dict(height=task["size"], width=task["size"], num_inference_steps=task["steps"], guidance_scale=GUIDANCE_SCALE)

    def run_ours() -> dict:
        start = time.perf_counter()
        ours(PROMPT, **common, max_sequence_length=GENAI_T5_POSITIONS, taylorseer=TaylorSeerConfig(), generator=SEED)
        return {"whole": time.perf_counter() - start, **{name: durations[-1] for name, durations in stages.items()}}

    def run_genai() -> dict:
        start = time.perf_counter()
        genai.generate(PROMPT, **common, generator=openvino_genai.TorchGenerator(SEED))
        whole, metrics = time.perf_counter() - start, genai.get_performance_metrics()
        return {
            "whole": whole,
            "text": sum(metrics.get_text_encoder_infer_duration().values()) / 1e3,  # milliseconds
            "steps": sum(metrics.raw_metrics.iteration_durations) / 1e6,  # microseconds
            "decode": metrics.get_vae_decoder_infer_duration() / 1e3,
        }

    runs = {"ours": run_ours, "genai": run_genai}
    for run in runs.values():
        run()  # warm-up
    times = {name: [] for name in runs}
    for round_index in range(task["rounds"]):
        for name in list(runs)[round_index % 2 :] + list(runs)[: round_index % 2]:  # alternating order
            result = runs[name]()
            result["other"] = result["whole"] - result["text"] - result["steps"] - result["decode"]
            times[name].append(result)
            print(f"round {round_index + 1}: {name} {result['whole']:.2f} s", flush=True)
    return {"times": times}


TASKS = {"ours_image": ours_image, "genai_image": genai_image, "decode_rss": decode_rss, "tiling_psnr": tiling_psnr, "both_timed": both_runtimes_timed}


def run_task(task: dict, *, timeout: float = 3600) -> dict:
    """Run `task` in a fresh Python process; its result, or `{"error": reason}`."""
    print(f"[{time.strftime('%H:%M:%S')}] {task['kind']} {({k: v for k, v in task.items() if k not in ('kind', 'folder')})}", flush=True)
    try:
        process = subprocess.run([sys.executable, __file__, "--worker", json.dumps(task)], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f} s"}
    lines = process.stdout.strip().splitlines()
    if process.returncode != 0 or not lines:
        reason = f"killed by signal {-process.returncode} (out of memory?)" if process.returncode < 0 else (process.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": reason[:300]}
    return json.loads(lines[-1])


# ----------------------------------------------------------------------------------------------------------
# The run and its report
# ----------------------------------------------------------------------------------------------------------


def ratio_summary(times: dict, stage: str) -> dict:
    ratios = [ours[stage] / genai[stage] for ours, genai in zip(times["ours"], times["genai"]) if genai[stage] > 0]
    return {
        "ours_s": statistics.median(run[stage] for run in times["ours"]),
        "genai_s": statistics.median(run[stage] for run in times["genai"]),
        "ratio": statistics.median(ratios) if ratios else None,
        "range": [min(ratios), max(ratios)] if ratios else None,
    }


def measure(args: argparse.Namespace, folder: Path) -> dict:
    parts = set(args.parts.split(","))
    results = {}
    if "memory" in parts:
        image = dict(folder=str(folder), size=args.size, steps=args.steps)
        results["memory"] = {
            "genai": run_task(dict(image, kind="genai_image", torch_generator=False)),
            "genai_torch_generator": run_task(dict(image, kind="genai_image", torch_generator=True)),
            "ours_77": run_task(dict(image, kind="ours_image", max_sequence_length=GENAI_T5_POSITIONS)),
            "ours_256": run_task(dict(image, kind="ours_image", max_sequence_length=256)),
        }
    if "time" in parts:
        timed_run = run_task(dict(kind="both_timed", folder=str(folder), size=args.size, steps=args.time_steps, rounds=args.rounds))
        if "error" not in timed_run:
            timed_run["stages"] = {stage: ratio_summary(timed_run["times"], stage) for stage in ("whole", "text", "steps", "decode", "other")}
        results["time"] = timed_run
    if "tiling" in parts:
        variants = [(int(tile), float(overlap)) for tile, overlap in (variant.split(":") for variant in args.tile_variants.split(","))]
        psnr_task = dict(kind="tiling_psnr", folder=str(folder), size=args.tile_psnr_size, variants=variants, steps=args.steps)
        results["tiling"] = {
            "psnr": run_task(psnr_task),
            "decode_whole": run_task(dict(kind="decode_rss", folder=str(folder), size=args.tile_rss_size, tiled=False)),
            "decode_tiled": run_task(dict(kind="decode_rss", folder=str(folder), size=args.tile_rss_size, tiled=True)),
        }
    return results


def gb(value) -> str:
    return "n/a" if value is None else f"{value / GB:.2f}"


def memory_lines(memory: dict, *, args: argparse.Namespace) -> list[str]:
    lines = [
        f"## Peak RSS of one image ({args.size}x{args.size}, {args.steps} steps, guidance {GUIDANCE_SCALE}), each runtime in a fresh process",
        "",
        "| runtime | imports add (MB) | RSS after load + compile (GB) | peak RSS (GB) | ÷ genai's peak | torch / diffusers / transformers loaded |",
        "|---|---:|---:|---:|---:|---|",
    ]
    genai_peak = memory["genai"].get("peak_bytes")
    names = {
        "genai": "openvino.genai, its own generator (`rng_seed`)",
        "genai_torch_generator": "openvino.genai, `TorchGenerator` (imports torch)",
        "ours_77": "ours via `sd3_helper`, int seed, max_sequence_length 77 (genai's work)",
        "ours_256": "ours via `sd3_helper`, int seed, max_sequence_length 256 (diffusers' default)",
    }
    for key, name in names.items():
        row = memory[key]
        if "error" in row:
            lines.append(f"| {name} | failed: {row['error']} | | | | |")
            continue
        imports = row.get("import_genai_bytes", row.get("import_runtime_bytes", 0) + row.get("import_openvino_bytes", 0))
        detail = "" if key.startswith("genai") else f" ({row['import_runtime_bytes'] / 1e6:.0f} sd3_helper and runtime + {row['import_openvino_bytes'] / 1e6:.0f} openvino)"
        share = f"{row['peak_bytes'] / genai_peak:.3f}" if genai_peak else "n/a"
        lines.append(f"| {name} | {imports / 1e6:.0f}{detail} | {gb(row['loaded_bytes'])} | {gb(row['peak_bytes'])} | {share} | {', '.join(row['heavy_modules']) or 'none'} |")
    return lines + [""]


def time_lines(timed_run: dict, *, args: argparse.Namespace) -> list[str]:
    header = (
        f"## Whole image, same work and step cache ({args.size}x{args.size}, {args.time_steps} steps, guidance {GUIDANCE_SCALE}, "
        f"genai's default TaylorSeer cache on both, ours at max_sequence_length {GENAI_T5_POSITIONS}), {args.rounds} alternating rounds in one process"
    )
    if "error" in timed_run:
        return [header, "", f"Failed: {timed_run['error']}", ""]
    lines = [header, "", "| stage | ours (s) | genai (s) | ours ÷ genai, median (range) over rounds |", "|---|---:|---:|---:|"]
    for stage, summary in timed_run["stages"].items():
        spread = f" ({summary['range'][0]:.3f} .. {summary['range'][1]:.3f})" if summary["range"] else ""
        ratio = "n/a" if summary["ratio"] is None else f"{summary['ratio']:.3f}{spread}"
        lines.append(f"| {stage} | {summary['ours_s']:.3f} | {summary['genai_s']:.3f} | {ratio} |")
    lines += [
        "",
        "text: ours `encode_prompt` (tokenizing and both CLIP encoders), genai its text encoders' infer time; steps: ours "
        "`denoise`, genai the sum of its iteration durations; decode: ours `vae_decode`, genai its VAE decoder's infer "
        "time; other: the rest of the call (post-processing to PIL, latents, scheduler set-up).",
        "",
    ]
    return lines


def tiling_lines(tiling: dict, *, args: argparse.Namespace) -> list[str]:
    psnr = tiling["psnr"]
    lines = [f"## VAE tiling (SD3-Medium-shaped VAE, {'tiny' if args.quick else 'real'} shapes)", ""]
    size = args.tile_psnr_size
    if "error" in psnr:
        lines.append(f"PSNR: failed: {psnr['error']}")
    else:
        lines += [
            f"Tiled against whole decode of a {size}x{size} generation's final latents ({args.steps} steps), all in f32 so that only "
            f"the tiling differs; the whole decode took {psnr['whole_s']:.1f} s. Target: >= 40 dB.",
            "",
            "| tile (px) | overlap factor | tiled? | PSNR (dB) | max abs difference | decode (s) |",
            "|---:|---:|---|---:|---:|---:|",
            *(
                f"| {v['tile']} | {v['overlap']} | {'yes' if v['tiled'] else f'no: {size} px fit one tile'} | {v['psnr_db']:.1f} | "
                f"{v['max_abs']:.4f} | {v['seconds']:.1f} |"
                for v in psnr["variants"]
            ),
        ]
    lines += ["", f"| {args.tile_rss_size}x{args.tile_rss_size} decode, fresh process | tile (px) | RSS before the decode (GB) | peak RSS (GB) | decode (s) |", "|---|---:|---:|---:|---:|"]
    for key, name in (("decode_whole", "whole"), ("decode_tiled", "tiled (`enable_vae_tiling()`)")):
        row = tiling[key]
        if "error" in row:
            lines.append(f"| {name} | failed: {row['error']} | | | |")
        else:
            lines.append(f"| {name} | {row['tile'] or '-'} | {gb(row['baseline_bytes'])} | {gb(row['peak_bytes'])} | {row['seconds']:.1f} |")
    return lines + [""]


def markdown(results: dict, *, args: argparse.Namespace) -> str:
    machine = results["machine"]
    lines = [
        f"# Memory and time of one image: ours (no torch) vs openvino.genai, {args.layers}-layer SD3-Medium-shaped model, fp16 IR, no T5",
        "",
        f"Machine: {machine.get('cpu', '?')}, {machine.get('cores')} cores, {machine.get('ram_gb')} GB RAM, features "
        f"{', '.join(machine.get('cpu_features', [])) or 'none of AVX-512 / AMX'}; openvino {machine['versions'].get('openvino')}, "
        f"openvino-genai {machine['versions'].get('openvino-genai')}; {machine.get('date')}.",
        "",
    ]
    if "memory" in results["measured"]:
        lines += memory_lines(results["measured"]["memory"], args=args)
    if "time" in results["measured"]:
        lines += time_lines(results["measured"]["time"], args=args)
    if "tiling" in results["measured"]:
        lines += tiling_lines(results["measured"]["tiling"], args=args)
    return "\n".join(lines)


def model_folder(args: argparse.Namespace) -> Path:
    """The fp16 folder of `bench_sd3.py`'s checkpoint, built and converted on first use."""
    from bench_checkpoint import build_checkpoint

    stem = f"tiny-{args.layers}-layers" if args.quick else f"sd3-medium-shaped-{args.layers}-layers"
    folder = args.work_dir / f"{stem}-fp16"
    if (folder / "model_index.json").is_file():
        return folder
    from sd3_helper import convert_sd3

    checkpoint = build_checkpoint(args.work_dir, layers=args.layers, quick=args.quick)
    return convert_sd3(checkpoint, folder, weight_format="fp16", load_t5=False)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        task = json.loads(args.worker)
        print(json.dumps(TASKS[task["kind"]](task)))
        return 0
    unknown = set(args.parts.split(",")) - set(PARTS)
    if unknown:
        raise SystemExit(f"error: `--parts` has unknown parts {sorted(unknown)}; choose from {list(PARTS)}.")
    folder = model_folder(args)
    results = {"setup": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items() if key != "worker"}}
    results["machine"] = machine_description()
    results["measured"] = measure(args, folder)
    stem = f"bench_memory_{'quick' if args.quick else f'{args.layers}-layers'}"
    write_results(results, stem=stem, output=args.output, markdown=markdown(results, args=args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
