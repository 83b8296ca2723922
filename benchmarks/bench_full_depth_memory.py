"""Full-depth memory (issue 14, item 7): what converting and running SD3 Medium takes, with and without T5-XXL.

    python benchmarks/bench_full_depth_memory.py                    # 24 layers, full T5-XXL, 1024x1024, 1 step
    python benchmarks/bench_full_depth_memory.py --t5-layers 4      # a quicker look: T5-XXL's widths, 4 layers

The checkpoint is `bench_checkpoint.py`'s SD3-Medium-shaped one at full depth (24 transformer layers, CLIP-L's 12
and CLIP-G's 32 layers, the real VAE) plus `bench_text_encoders.py`'s random T5 encoder of T5-XXL's shapes with
`--t5-layers` layers (24 = T5-XXL, 4.7B parameters, 9.5 GB in fp16), all random weights. Every figure comes from
a fresh process:

- conversion: `convert_sd3(..., load_t5=True)` to fp16 and to int8. A thread samples the RSS every 0.1 s and
  charges each sample to the submodel being converted (loaded, exported and freed), so one conversion gives the
  peak with T5 (the process's `VmHWM`) and the peak of the other submodels, which is what a conversion without T5
  peaks at (submodels are converted one at a time, each freed before the next);
- generation: one image from the int8 folder at `--size` with `--steps` steps with the lean runtime (`sd3_runtime`,
  no torch), with T5 kept (the default), with T5 released after encoding (`enable_text_encoder_release(
  text_encoders=["text_encoder_3"])`), and from a view of the folder without T5; each with the default "auto"
  shapes (the transformer and VAE decoder compiled for the call's size), with dynamic shapes (`shapes="dynamic"`)
  and with static shapes (`pipe.reshape(height=, width=)`: OpenVINO's CPU plugin plans the memory of a static model
  ahead and reuses it, and a dynamic one at 1024x1024 holds about 5 GB more). Reported:
  the RSS after loading, during the steps, after the call, and the process's peak.
"""

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project's modules
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmark's modules

from bench_report import machine_description, write_results  # noqa: E402
from bench_text_encoders import T5_XXL_LAYERS, build_t5_checkpoint, vm_hwm, without_t5  # noqa: E402

WEIGHT_FORMATS = ("fp16", "int8")
GENERATION_FORMAT = "int8"
RELEASE_T5 = ["enable_text_encoder_release", {"text_encoders": ["text_encoder_3"]}]
DYNAMIC = {"shapes": "dynamic"}
MODES = {  # name: (use the view without T5, pipeline methods called with keyword arguments before the image, from_pretrained keywords)
    "with T5, kept (defaults: auto shapes)": (False, [], {}),
    "with T5, released after encoding": (False, [RELEASE_T5], {}),
    "without T5 (defaults: auto shapes)": (True, [], {}),
    "with T5, kept, dynamic shapes": (False, [], DYNAMIC),
    "with T5, released, dynamic shapes": (False, [RELEASE_T5], DYNAMIC),
    "without T5, dynamic shapes": (True, [], DYNAMIC),
    "with T5, kept, static shapes (`reshape`)": (False, [["reshape", "SIZE"]], {}),
    "with T5, released, static shapes (`reshape`)": (False, [RELEASE_T5, ["reshape", "SIZE"]], {}),
    "without T5, static shapes (`reshape`)": (True, [["reshape", "SIZE"]], {}),
}
PROMPT = "a lighthouse on a cliff at dawn, oil painting"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work-dir", type=Path, default=Path("build/bench"))
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--t5-layers", type=int, default=T5_XXL_LAYERS)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--modes", nargs="+", default=None, help="run only the generation modes whose names hold one of these words")
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def current_rss() -> int:
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(status["VmRSS"].split()[0]) * 1024


class SubmodelRssSampler:
    """Samples this process's RSS every `interval` seconds in a thread and keeps the maximum of each submodel: the
    one whose `sd3_conversion._convert_submodel` call (load, export, free) is running, "other" outside them."""

    def __init__(self, *, interval: float = 0.1):
        self.interval, self.current = interval, "other"
        self.peaks: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            name, rss = self.current, current_rss()
            self.peaks[name] = max(self.peaks.get(name, 0), rss)
            self._stop.wait(self.interval)

    def charging(self, convert_submodel: Callable) -> Callable:
        """`convert_submodel` that charges the samples taken while it runs to the submodel it converts."""

        def wrapper(checkpoint, item, **kwargs):
            self.current = item.name
            try:
                return convert_submodel(checkpoint, item, **kwargs)
            finally:
                self.peaks[item.name] = max(self.peaks.get(item.name, 0), current_rss())
                self.current = "other"

        return wrapper

    def __enter__(self) -> "SubmodelRssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()


def convert_worker(task: dict) -> dict:
    import sd3_openvino.export.conversion as sd3_conversion
    from sd3_helper import convert_sd3, folder_size

    output_dir = Path(task["output_dir"])
    baseline = current_rss()
    start = time.perf_counter()
    with SubmodelRssSampler() as sampler:
        sd3_conversion._convert_submodel = sampler.charging(sd3_conversion._convert_submodel)  # this process only
        convert_sd3(task["checkpoint"], output_dir, weight_format=task["weight_format"], load_t5=True)
    seconds = time.perf_counter() - start
    sizes = {item.name: folder_size(output_dir / item.name) for item in sd3_conversion.SUBMODEL_EXPORTS}
    return {"seconds": seconds, "peak_rss": vm_hwm(), "rss_after_imports": baseline, "submodel_peaks": sampler.peaks, "ir_bytes": sizes}


def image_worker(task: dict) -> dict:
    from sd3_openvino.runtime.pipeline import OVStableDiffusion3Pipeline

    baseline = current_rss()
    start = time.perf_counter()
    pipe = OVStableDiffusion3Pipeline.from_pretrained(task["model_dir"], **task["load"])
    pipe.set_progress_bar_config(disable=True)
    for method, arguments in task["methods"]:
        getattr(pipe, method)(**(dict(height=task["size"], width=task["size"]) if arguments == "SIZE" else arguments))
    load_seconds, after_load = time.perf_counter() - start, current_rss()
    during = []

    def on_step_end(pipe, step, timestep, callback_kwargs):
        during.append(current_rss())
        return callback_kwargs

    start = time.perf_counter()
    image = pipe(
        prompt=PROMPT, height=task["size"], width=task["size"], num_inference_steps=task["steps"], generator=0, callback_on_step_end=on_step_end
    ).images[0]
    return {
        "rss_after_imports": baseline,
        "rss_after_load": after_load,
        "load_seconds": load_seconds,
        "call_seconds": time.perf_counter() - start,
        "rss_during_steps": max(during),
        "rss_after_call": current_rss(),
        "peak_rss": vm_hwm(),
        "image_size": list(image.size),
    }


def worker(task_path: Path) -> None:
    task = json.loads(task_path.read_text())
    result = convert_worker(task) if task["kind"] == "convert" else image_worker(task)
    Path(task["result_path"]).write_text(json.dumps(result))


def run_worker(task: dict, *, logs: Path, name: str) -> dict:
    """`task` in a fresh Python process (this file's `--worker`); its result (kept, so a rerun skips it)."""
    logs.mkdir(parents=True, exist_ok=True)
    task_path, result_path = logs / f"{name}.task.json", logs / f"{name}.result.json"
    if result_path.is_file() and json.loads(task_path.read_text()) == {**task, "result_path": str(result_path)}:
        return json.loads(result_path.read_text())
    result_path.unlink(missing_ok=True)
    task_path.write_text(json.dumps({**task, "result_path": str(result_path)}))
    print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
    with open(logs / f"{name}.log", "w") as log:
        subprocess.run([sys.executable, __file__, "--worker", str(task_path)], stdout=log, stderr=subprocess.STDOUT, check=True)
    return json.loads(result_path.read_text())


def gb(value: float) -> str:
    return f"{value / 1e9:.2f}"


def report(args: argparse.Namespace, conversions: dict, generations: dict) -> str:
    machine = machine_description()
    t5_depth = "T5-XXL-shaped (24 of 24 layers)" if args.t5_layers == T5_XXL_LAYERS else f"T5-XXL-shaped with {args.t5_layers} of {T5_XXL_LAYERS} layers"
    lines = [
        f"# Full-depth memory: SD3-Medium-shaped ({args.layers} transformer layers, real CLIP and VAE) + {t5_depth}, random weights",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['ram_gb']} GB RAM, features {', '.join(machine['cpu_features']) or 'none of AVX-512 / AMX'}; "
        f"openvino {machine['versions']['openvino']}, nncf {machine['versions']['nncf']}; {machine['date']}. Each row in a fresh process.",
        "",
        "## Conversion (`convert_sd3`, one submodel at a time)",
        "",
        "| weight format | peak RSS with T5 (GB) | peak RSS without T5 (GB) | T5's own peak (GB) | transformer's peak (GB) | IR with T5 (GB) | IR without T5 (GB) | time (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for weight_format, result in conversions.items():
        peaks, sizes = result["submodel_peaks"], result["ir_bytes"]
        without = max(value for name, value in peaks.items() if name != "text_encoder_3")
        lines.append(
            f"| {weight_format} | {gb(result['peak_rss'])} | {gb(without)} | {gb(peaks.get('text_encoder_3', 0))} | {gb(peaks.get('transformer', 0))} | "
            f"{gb(sum(sizes.values()))} | {gb(sum(value for name, value in sizes.items() if name != 'text_encoder_3'))} | {result['seconds']:.0f} |"
        )
    lines += [
        "",
        "Peak without T5: the highest RSS sampled while the other submodels converted (a conversion with `load_t5=False` does the same work).",
        "",
        f"## Generation ({GENERATION_FORMAT} folder, {args.size}x{args.size}, {args.steps} step(s), the pipeline's defaults otherwise)",
        "",
        "| text encoders, shapes | RSS after loading (GB) | RSS during the steps (GB) | RSS after the call (GB) | peak RSS (GB) | image (s) |",
        "|---|---:|---:|---:|---:|---:|",
        *(
            f"| {name} | {gb(result['rss_after_load'])} | {gb(result['rss_during_steps'])} | {gb(result['rss_after_call'])} | {gb(result['peak_rss'])} | "
            f"{result['call_seconds']:.0f} |"
            for name, result in generations.items()
        ),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        worker(args.worker)
        return 0
    checkpoint = build_t5_checkpoint(args.work_dir, layers=args.layers, t5_layers=args.t5_layers)
    logs = args.work_dir / f"logs-full-depth-{args.layers}-t5-{args.t5_layers}"
    conversions = {}
    for weight_format in WEIGHT_FORMATS:
        task = {"kind": "convert", "checkpoint": str(checkpoint), "output_dir": str(args.work_dir / f"{checkpoint.name}-{weight_format}"), "weight_format": weight_format}
        conversions[weight_format] = run_worker(task, logs=logs, name=f"convert-{weight_format}")
    model_dir = args.work_dir / f"{checkpoint.name}-{GENERATION_FORMAT}"
    generations = {}
    for index, (name, (no_t5, methods, load)) in enumerate(MODES.items()):
        if args.modes is not None and not any(word in name for word in args.modes):
            continue
        folder = without_t5(model_dir) if no_t5 else model_dir
        task = {"kind": "image", "model_dir": str(folder), "methods": methods, "load": load, "size": args.size, "steps": args.steps}
        generations[name] = run_worker(task, logs=logs, name=f"image-{index}-{args.size}")
    results = {"machine": machine_description(), "settings": {key: str(value) for key, value in vars(args).items()}, "conversions": conversions, "generations": generations}
    stem = f"bench_full_depth_memory_{args.layers}-layers-t5-{args.t5_layers}-{args.size}"
    write_results(results, stem=stem, output=args.output, markdown=report(args, conversions, generations))
    return 0


if __name__ == "__main__":
    sys.exit(main())
