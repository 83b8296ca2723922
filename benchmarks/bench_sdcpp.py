"""stable-diffusion.cpp against our OpenVINO pipeline (issue 27, item 6): the same SD3-Medium-shaped weights on CPU.

    python benchmarks/bench_sdcpp.py --single-file build/bench/sd3-medium-shaped-24-layers.safetensors \\
        --ours-fp16 build/bench/sd3-medium-shaped-24-layers-sf-fp16 --ours-int8 build/bench/sd3-medium-shaped-24-layers-sf-int8 \\
        --sdcpp-python sdcpp/bin/python
    python benchmarks/bench_sdcpp.py ... --only "sd.cpp f16" --sizes 64 --steps 1       # a wiring check

stable-diffusion.cpp (`stable-diffusion-cpp-python`, its CPU backend, in a venv of its own: `--sdcpp-python`;
`SDCPP_INSTALL` builds it in about 4 minutes on 2 cores) loads the single file (the SD3 transformer with CLIP-L/G and
the VAE in it, no T5) as f16 and as q8_0 (`wtype`: every linear weight quantized at load, or read from a q8_0 GGUF
written once by its `convert` with `--gguf-dir`); ours loads the folders `convert_sd3(single_file, out,
load_t5=False, weight_format=...)` made of the same file. Both sides do the same work: the prompt and an empty negative
prompt through CLIP-L/G, 154 text tokens (77 CLIP + 77 zero T5 tokens: sd.cpp's fixed padding without T5; ours with
`max_sequence_length=77`), guidance 5 (sd.cpp: two batch-1 transformer calls per step; ours: one batch-2 call), Euler
on flow-matching sigmas with shift 3, every step computed (no step cache on either side), `--threads` threads, the
same seed (the two draw different noise: sd.cpp's Philox "cuda" RNG against torch's; images are not compared).

Each (run, size) is a fresh process whose peak RSS (VmHWM) is its own: load, one `WARMUP_STEPS` call at the same size
(sd.cpp's first CLIP call and graph allocation, our compilation), then the timed call of `--steps` steps. sd.cpp's
stages come from its log lines (`SDCPP_LOG_TIMES`), ours from `get_performance_metrics()`. A load that fails in
sd.cpp does not raise (its wrapper checks a NULL ctypes pointer with `is None`) and a later call then crashes, so the
worker checks the context pointer itself and the parent turns a crash or a timeout into a row that says why.

The sigma schedules differ slightly (`sdcpp_sigmas` and `diffusers_sigmas` below): sd.cpp
shifts `linspace(1, 1/1000, N)`, diffusers (and so we) shift `linspace(1, shift(1/1000), N)`; the table shows the
largest difference for the step count.
"""

import argparse
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPT = "A raccoon trapped inside a glass jar full of colorful candies, the background is steamy with vivid colors"
SEED = 141
GUIDANCE_SCALE = 5.0
FLOW_SHIFT = 3.0  # SD3 Medium's scheduler config; sd.cpp's default for SD3 too (`default_flow_shift`)
TRAIN_TIMESTEPS = 1000
WARMUP_STEPS = 1
FOLDER_STEM = "sd3-medium-shaped-24-layers"
# A CPU build from source, in a venv of its own.
SDCPP_INSTALL = "python3 -m venv sdcpp && CMAKE_BUILD_PARALLEL_LEVEL=2 sdcpp/bin/pip install stable-diffusion-cpp-python==0.4.7"
# name -> (runtime, weights): sd.cpp's `wtype`, or the command-line option that names our folder.
RUNS = {
    "sd.cpp f16": ("sdcpp", "f16"),
    "sd.cpp q8_0": ("sdcpp", "q8_0"),
    "ours fp16": ("ours", "ours_fp16"),
    "ours int8": ("ours", "ours_int8"),
    "ours int8-hybrid": ("ours", "ours_int8_hybrid"),
}
# stable-diffusion.cpp's log lines (src/stable-diffusion.cpp, 0.4.7) -> the field each one fills (seconds, MB).
SDCPP_LOG_TIMES = {
    "text_s": r"get_learned_condition completed, taking ([\d.]+)s",  # CLIP-L/G of prompt and negative prompt
    "sampling_s": r"(?<!hires )sampling completed, taking ([\d.]+)s",  # the denoising loop of one image
    "decode_s": r"decode_first_stage completed, taking ([\d.]+)s",
    "generate_s": r"generate_image completed in ([\d.]+)s",
    "params_mb": r"total params memory size = ([\d.]+)MB",  # at load: every weight as held in memory
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    single_file = Path(f"build/bench/{FOLDER_STEM}.safetensors")
    parser.add_argument("--single-file", type=Path, default=single_file, help="the SD3 single file, CLIP-L/G in it, no T5")
    parser.add_argument("--ours-fp16", type=Path, default=None, help="our fp16 folder converted from --single-file")
    parser.add_argument("--ours-int8", type=Path, default=None, help="our int8 folder converted from --single-file")
    parser.add_argument("--ours-int8-hybrid", type=Path, default=None, help="our int8-hybrid folder (its row runs only when given)")
    parser.add_argument("--sdcpp-python", type=Path, default=None, help="a Python with stable-diffusion-cpp-python (a venv of its own)")
    parser.add_argument("--gguf-dir", type=Path, default=None, help="write a q8_0 GGUF of --single-file here once; the q8_0 row loads it")
    parser.add_argument("--sdcpp-flash-attn", action="store_true", help="sd.cpp's `diffusion_flash_attn` (off by default, as its CLI)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-sequence-length", type=int, default=77, help="ours; 77 gives sd.cpp's 154 text tokens")
    parser.add_argument("--only", nargs="+", default=None, help="run names (or their beginnings) to run")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds one (run, size) process may take")
    parser.add_argument("--work-dir", type=Path, default=Path("build/bench"), help="the runs' logs go to <work-dir>/sdcpp-logs")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/bench_sdcpp_24-layers"))
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------------------------------------
# The two sigma schedules (numpy; the parent computes them)
# ----------------------------------------------------------------------------------------------------------


def sdcpp_sigmas(steps: int, shift: float = FLOW_SHIFT) -> list[float]:
    """sd.cpp's SD3 sigmas: `DiscreteScheduler` over `DiscreteFlowDenoiser` (src/denoiser.hpp), in float32 as in C++.

    t_i = 999 - i * 999 / (N - 1), sigma_i = shift * s / (1 + (shift - 1) * s) with s = (t_i + 1) / 1000, i.e. the
    shifted `linspace(1, 1/1000, N)`; one step is [1]; then 0 is appended.
    """
    import numpy as np

    f32, t_max = np.float32, 999

    def t_to_sigma(t):
        s = (f32(t) + f32(1)) / f32(TRAIN_TIMESTEPS)
        return f32(shift) * s / (f32(1) + (f32(shift) - f32(1)) * s)

    if steps == 1:
        return [float(t_to_sigma(t_max)), 0.0]
    step = f32(t_max) / f32(steps - 1)
    return [float(t_to_sigma(f32(t_max) - step * f32(i))) for i in range(steps)] + [0.0]


def diffusers_sigmas(steps: int, shift: float = FLOW_SHIFT) -> list[float]:
    """diffusers' `FlowMatchEulerDiscreteScheduler(shift=shift).set_timesteps(N)` sigmas (ours are the same):
    sigma_min = shift(1/1000) from `__init__`, then the shifted `linspace(1, sigma_min, N)`, then 0 appended."""
    import numpy as np

    def shifted(s):
        return shift * s / (1 + (shift - 1) * s)

    sigmas = shifted(np.linspace(1.0, shifted(1 / TRAIN_TIMESTEPS), steps)).astype(np.float32)
    return [*map(float, sigmas), 0.0]


def max_difference(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


# ----------------------------------------------------------------------------------------------------------
# One run, in a process of its own (sd.cpp's in its own venv: stdlib and stable_diffusion_cpp only)
# ----------------------------------------------------------------------------------------------------------


def vm_hwm() -> int:
    """This process's peak resident memory (VmHWM) in bytes."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


SDCPP_LOG: list[str] = []  # every sd.cpp log line of this process, also echoed to stderr (the run's log file)


def capture_sdcpp_log() -> None:
    """Route sd.cpp's log into `SDCPP_LOG` (the callback is kept alive at module level: sd.cpp calls it until exit)."""
    import ctypes

    import stable_diffusion_cpp

    @stable_diffusion_cpp.sd_log_callback
    def on_log(level: int, text: bytes, data) -> None:
        line = text.decode("utf-8", errors="replace")
        SDCPP_LOG.append(line)
        sys.stderr.write(line)
        sys.stderr.flush()

    globals()["_SDCPP_LOG_CALLBACK"] = on_log
    stable_diffusion_cpp.sd_set_log_callback(on_log, ctypes.c_void_p(0))


def log_values(lines: list[str]) -> dict:
    """The `SDCPP_LOG_TIMES` fields found in `lines` (the last of each)."""
    values = {}
    for key, pattern in SDCPP_LOG_TIMES.items():
        found = re.findall(pattern, "".join(lines))
        if found:
            values[key] = float(found[-1])
    return values


def run_sdcpp(task: dict) -> dict:
    from importlib import metadata

    import stable_diffusion_cpp
    from stable_diffusion_cpp import StableDiffusion

    capture_sdcpp_log()
    started = time.perf_counter()
    sd = StableDiffusion(
        model_path=task["model_path"], wtype=task["wtype"], n_threads=task["threads"], vae_decode_only=True,
        diffusion_flash_attn=task["flash_attn"], verbose=True,
    )
    load_s = time.perf_counter() - started
    if not sd._model.model:  # a NULL `LP_sd_ctx_t`: the wrapper's `is None` check misses it, the next call would crash
        sd._model.model = None  # nor may its destructor free it (`free_sd_ctx(NULL)` segfaults)
        errors = [line.strip() for line in SDCPP_LOG if "fail" in line.lower() or "error" in line.lower()]
        return {"error": "sd.cpp could not load the model: " + ("; ".join(errors[-3:]) or "see the log")}
    loaded = log_values(SDCPP_LOG)

    def generate(steps: int) -> dict:
        marks, first_line = [], len(SDCPP_LOG)
        started = time.perf_counter()
        images = sd.generate_image(
            prompt=PROMPT, negative_prompt="", width=task["size"], height=task["size"], cfg_scale=GUIDANCE_SCALE,
            sample_method="euler", scheduler="discrete", sample_steps=steps, flow_shift=FLOW_SHIFT, seed=SEED,
            progress_callback=lambda step, total, mean_s: marks.append((step, total, time.perf_counter())),
        )
        wall_s = time.perf_counter() - started
        values = log_values(SDCPP_LOG[first_line:])
        if not images or "sampling_s" not in values:
            raise RuntimeError(f"sd.cpp generated no image ({len(images)} images, log values {values})")
        steps_marks = [moment for step, total, moment in marks if total == steps and step > 0]  # the sampler's
        return {"image_s": wall_s, "step_marks_s": [b - a for a, b in zip(steps_marks, steps_marks[1:])], **values}

    warmup = generate(WARMUP_STEPS)
    timed = generate(task["steps"])
    return {
        "load_s": load_s,
        "params_gb": loaded.get("params_mb", 0.0) * 2**20 / 1e9,
        "warmup_image_s": warmup["image_s"],
        "image_s": timed["image_s"],
        "text_s": timed["text_s"],
        "step_s": timed["sampling_s"] / task["steps"],
        "step_marks_s": timed["step_marks_s"],
        "decode_s": timed.get("decode_s"),
        "transformer_calls": 2 * task["steps"],  # cond and uncond, batch 1 each
        "model_version": next(iter(re.findall(r"Version: (\S+)", "".join(SDCPP_LOG))), None),  # what sd.cpp read the file as
        "version": metadata.version("stable-diffusion-cpp-python"),
        "system_info": " ".join(stable_diffusion_cpp.sd_get_system_info().decode().split()),
    }


def run_sdcpp_convert(task: dict) -> dict:
    """sd.cpp's `convert`: the single file as one GGUF of `wtype` (what `sd -M convert --type q8_0` writes)."""
    from stable_diffusion_cpp import StableDiffusion

    capture_sdcpp_log()
    partial = Path(task["output"] + ".partial")
    started = time.perf_counter()
    converter = StableDiffusion(n_threads=task["threads"], verbose=True)  # no model: `convert` reads the file itself
    done = converter.convert(input_path=task["model_path"], output_path=str(partial), output_type=task["wtype"])
    if not done:
        return {"error": "sd.cpp's convert failed (see the log)"}
    partial.rename(task["output"])
    return {"convert_s": time.perf_counter() - started}


def run_ours(task: dict) -> dict:
    from sd3_helper import OVStableDiffusion3Pipeline

    started = time.perf_counter()
    pipe = OVStableDiffusion3Pipeline.from_pretrained(task["folder"], ov_config={"INFERENCE_NUM_THREADS": task["threads"]})
    load_s = time.perf_counter() - started
    pipe.set_progress_bar_config(disable=True)
    call = dict(height=task["size"], width=task["size"], guidance_scale=GUIDANCE_SCALE, max_sequence_length=task["max_sequence_length"])
    call["taylorseer"] = None  # the step cache off: every step runs the transformer, as sd.cpp's
    pipe(PROMPT, num_inference_steps=WARMUP_STEPS, generator=SEED, **call)
    first = pipe.get_performance_metrics()
    pipe(PROMPT, num_inference_steps=task["steps"], generator=SEED, **call)
    metrics = pipe.get_performance_metrics()
    return {
        "load_s": load_s,
        "compile_s": sum(first.compile_times.values()),
        "warmup_image_s": first.total_time,
        "image_s": metrics.total_time,
        "text_s": sum(sum(times) for times in metrics.text_encoder_times.values()),
        "step_s": metrics.mean_step_time,
        "step_marks_s": metrics.step_times,
        "decode_s": sum(metrics.vae_decode_times),
        "transformer_calls": len(metrics.transformer_times),
        "shift": pipe.scheduler.shift,
        "sigmas": [float(sigma) for sigma in pipe.scheduler.sigmas],
    }


RUNNERS = {"sdcpp": run_sdcpp, "sdcpp-convert": run_sdcpp_convert, "ours": run_ours}


def worker(task_path: Path) -> int:
    task = json.loads(task_path.read_text())
    try:
        result = RUNNERS[task["runtime"]](task)
    except Exception as error:  # noqa: BLE001 - the parent shows it as the row's reason
        result = {"error": f"{type(error).__name__}: {error}"}
    result["peak_rss"] = vm_hwm()
    Path(task["result_path"]).write_text(json.dumps(result))
    sys.stdout.flush()
    sys.stderr.flush()
    # sd.cpp frees its context at exit, logging through a callback Python may have torn down (and segfaults on a
    # context that failed to load): the result is written, so leave without running any destructor.
    os._exit(1 if "error" in result else 0)


# ----------------------------------------------------------------------------------------------------------
# The runs, and the table
# ----------------------------------------------------------------------------------------------------------


def size_on_disk(path: Path) -> int:
    """Bytes of a file, or of every file in a folder."""
    path = Path(path)
    return path.stat().st_size if path.is_file() else sum(item.stat().st_size for item in path.rglob("*") if item.is_file())


def run_process(python: Path, task: dict, *, slug: str, logs: Path, timeout: int) -> dict:
    """Run `task` in `python bench_sdcpp.py --worker`, its output in `logs/<slug>.log`: its result, or why it has none."""
    task_path, log_path = logs / f"{slug}.task.json", logs / f"{slug}.log"
    task["result_path"] = str(logs / f"{slug}.json")
    Path(task["result_path"]).unlink(missing_ok=True)
    task_path.write_text(json.dumps(task))
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    with open(log_path, "w") as log:
        try:
            command = [str(python), __file__, "--worker", str(task_path)]
            process = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout} s (log: {log_path})"}
    result = json.loads(Path(task["result_path"]).read_text()) if Path(task["result_path"]).is_file() else {}
    if process.returncode != 0 and "error" not in result:
        how = f"killed by {signal.Signals(-process.returncode).name}" if process.returncode < 0 else f"exit status {process.returncode}"
        result = {"error": f"{how} (log: {log_path})"}
    return result


def q8_gguf(args: argparse.Namespace, logs: Path) -> tuple[Path | None, str | None]:
    """The q8_0 GGUF of `--single-file` in `--gguf-dir`, written once: (path, None), or (None, why not)."""
    output = args.gguf_dir / f"{args.single_file.stem}-q8_0.gguf"
    if output.is_file():
        return output, None
    args.gguf_dir.mkdir(parents=True, exist_ok=True)
    print(f"[{time.strftime('%H:%M:%S')}] sd.cpp convert -> {output}", flush=True)
    task = {"runtime": "sdcpp-convert", "model_path": str(args.single_file.resolve()), "output": str(output.resolve())}
    task.update(wtype="q8_0", threads=args.threads)
    result = run_process(args.sdcpp_python, task, slug="sdcpp-convert-q8_0", logs=logs, timeout=args.timeout)
    return (output, None) if "error" not in result else (None, result["error"])


def run_one(name: str, size: int, args: argparse.Namespace, logs: Path, gguf: tuple[Path | None, str | None]) -> dict:
    runtime, weights = RUNS[name]
    row = {"name": name, "size": size, "steps": args.steps}
    task = {"runtime": runtime, "size": size, "steps": args.steps, "threads": args.threads}
    if runtime == "sdcpp":
        model = args.single_file
        if weights == "q8_0" and args.gguf_dir is not None:
            if gguf[0] is None:
                return {**row, "error": f"no q8_0 GGUF: {gguf[1]}"}
            model = gguf[0]
        wtype = "default" if model.suffix == ".gguf" else weights  # a GGUF keeps its own types
        task.update(model_path=str(model.resolve()), wtype=wtype, flash_attn=args.sdcpp_flash_attn)
        python, row["model"] = args.sdcpp_python, str(model)
        row["quantized_at_load"] = weights != "f16" and model.suffix != ".gguf"
    else:
        folder = getattr(args, weights)
        task.update(folder=str(folder), max_sequence_length=args.max_sequence_length)
        python, row["model"] = Path(sys.executable), str(folder)
    row["disk_bytes"] = size_on_disk(Path(row["model"]))
    slug = "".join(char if char.isalnum() else "-" for char in f"{name}-{size}")
    print(f"[{time.strftime('%H:%M:%S')}] {name}, {size}x{size}", flush=True)
    return {**row, **run_process(python, task, slug=slug, logs=logs, timeout=args.timeout)}


def add_sigma_differences(rows: list[dict], steps: int) -> float:
    """Each sd.cpp row's largest |sigma difference| from ours (our rows' recorded sigmas, else diffusers' formula);
    returns our recorded sigmas' largest difference from `diffusers_sigmas` (0 up to float32 rounding)."""
    ours = next((row["sigmas"] for row in rows if RUNS[row["name"]][0] == "ours" and "sigmas" in row), None)
    reference = ours or diffusers_sigmas(steps)
    for row in rows:
        if row["name"].startswith("sd.cpp") and "error" not in row:
            row["sigmas"] = sdcpp_sigmas(steps)
            row["sigma_difference"] = max_difference(row["sigmas"], reference)
    return max_difference(ours, diffusers_sigmas(steps)) if ours else 0.0


def sdcpp_description(rows: list[dict]) -> dict:
    """sd.cpp's version and the CPU features its build uses (from its `sd_get_system_info()`, as a row recorded it)."""
    info = next((row for row in rows if "system_info" in row), None)
    if info is None:
        return {}
    items = info["system_info"].replace("System Info:", "").split("|")
    features = [item.split("=")[0].strip() for item in items if item.strip().endswith("= 1")]
    return {"version": info["version"], "system_info": info["system_info"], "features": ", ".join(features)}


def markdown(rows: list[dict], args: argparse.Namespace, results: dict) -> str:
    machine, sdcpp = results["machine"], results.get("sdcpp", {})
    base = {row["size"]: row for row in rows if row["name"] == "sd.cpp f16" and "error" not in row}
    lines = [
        f"# stable-diffusion.cpp against ours on CPU: SD3 Medium shapes, guidance {GUIDANCE_SCALE}, Euler, flow shift {FLOW_SHIFT}, "
        f"{args.steps} steps, {args.threads} threads, no T5",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores ({', '.join(machine['cpu_features'])}), {machine['ram_gb']} GB RAM; "
        f"openvino {machine['versions']['openvino']}, stable-diffusion-cpp-python {sdcpp.get('version', '?')} (CPU backend: "
        f"{sdcpp.get('features', '?')}); {machine['date']}. Random weights of SD3 Medium's shapes (24 transformer layers, "
        f"CLIP-L/G, VAE) in one single file (`{args.single_file.name}`), ours converted from it. Each row a fresh process: "
        f"load, a {WARMUP_STEPS}-step warm-up call, then the timed call.",
        "",
        "| run | size | steps | text encoding (s) | s/step (denoising) | ÷ sd.cpp f16 | s/image | decode (s) | load (s) | peak RSS (GB) "
        "| model on disk (GB) | max abs σ difference from ours |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['name']} | {row['size']} | | failed: {row['error']} |" + " |" * 8)
            continue
        reference = base.get(row["size"])
        ratio = f"{row['step_s'] / reference['step_s']:.2f}" if reference else ""
        disk = f"{row['disk_bytes'] / 1e9:.2f}" + (" (f16 file, q8_0 at load)" if row.get("quantized_at_load") else "")
        sigma = f"{row['sigma_difference']:.4f}" if "sigma_difference" in row else "0"
        lines.append(
            f"| {row['name']} | {row['size']}x{row['size']} | {row['steps']} | {row['text_s']:.2f} | {row['step_s']:.2f} | {ratio} | "
            f"{row['image_s']:.1f} | {row['decode_s'] or 0:.2f} | {row['load_s']:.1f} | {row['peak_rss'] / 1e9:.2f} | {disk} | {sigma} |"
        )
    lines += [
        "",
        "- s/step: the denoising loop's time over its steps (sd.cpp: its log's `sampling completed`; ours: the mean of "
        "`get_performance_metrics().step_times`). A step is guided: sd.cpp runs the transformer twice with batch 1, "
        "ours once with batch 2. Text encoding: CLIP-L and CLIP-G on the prompt and the empty negative prompt "
        "(sd.cpp: `get_learned_condition completed`). s/image: the timed call's wall time.",
        f"- Text tokens: sd.cpp 154 (77 CLIP and 77 zero tokens for the missing T5), ours {77 + args.max_sequence_length} "
        f"(`max_sequence_length={args.max_sequence_length}`).",
        "- σ: sd.cpp shifts `linspace(1, 1/1000, N)`, diffusers and ours `linspace(1, shift(1/1000), N)`; they differ "
        "most at the last non-zero σ (0.0030 against 0.0089 for any N > 1), which changes no timing.",
    ]
    if any("params_gb" in row for row in rows):
        first_size = [row for row in rows if "params_gb" in row and row["size"] == rows[0]["size"]]
        held = ", ".join(f"{row['name']} {row['params_gb']:.2f} GB" for row in first_size)
        lines.append(f"- sd.cpp's weights as held in memory (its `total params memory size`): {held}.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        return worker(args.worker)
    from bench_report import machine_description

    wanted = [name for name in RUNS if args.only is None or any(name.startswith(prefix) for prefix in args.only)]
    names = [name for name in wanted if RUNS[name][0] == "sdcpp" or getattr(args, RUNS[name][1]) is not None]
    for name in sorted(set(wanted) - set(names), key=wanted.index):
        print(f"skipping {name}: --{RUNS[name][1].replace('_', '-')} not given", flush=True)
    if any(RUNS[name][0] == "sdcpp" for name in names):
        if not args.single_file.is_file():
            raise FileNotFoundError(f"`--single-file` {args.single_file} is not a file; pass the SD3 single file (CLIP-L/G in it, no T5).")
        if args.sdcpp_python is None:
            raise ValueError(f"`--sdcpp-python` is not given; pass a Python that has stable-diffusion-cpp-python ({SDCPP_INSTALL}).")
    logs = args.work_dir / "sdcpp-logs"
    logs.mkdir(parents=True, exist_ok=True)
    gguf = q8_gguf(args, logs) if args.gguf_dir is not None and "sd.cpp q8_0" in names else (None, None)
    results = {"machine": machine_description(), "steps": args.steps, "sizes": args.sizes, "threads": args.threads, "rows": []}
    for size in args.sizes:
        for name in names:
            results["rows"].append(run_one(name, size, args, logs, gguf))
            results["ours_sigmas_vs_diffusers"] = add_sigma_differences(results["rows"], args.steps)
            results["sdcpp"] = sdcpp_description(results["rows"])
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
            args.output.with_suffix(".md").write_text(markdown(results["rows"], args, results))
    print(args.output.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
