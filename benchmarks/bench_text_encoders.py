"""Text encoders on demand (issue 14): the memory that releasing them saves, on a T5-XXL-shaped encoder.

    python benchmarks/bench_text_encoders.py                 # T5-XXL's widths, 4 of its 24 layers, int8
    python benchmarks/bench_text_encoders.py --t5-layers 8

The checkpoint is `bench_sd3.py`'s SD3-Medium-shaped one (2 transformer layers, real CLIP shapes) plus a random
T5 encoder of T5-XXL's shapes (d_model 4096, 64 heads, d_ff 10240, vocabulary 32128) with `--t5-layers` layers,
converted to int8. Each mode runs in a fresh process: one 512x512 image, then a second one with the same prompt
and another seed. Reported: RSS during the denoising steps (read in `callback_on_step_end`), after the call, the
process's peak, and the second call's time (with release on, it compiles the encoders again; with the prompt cache,
it encodes nothing). The saving scales with T5's layers: the table extrapolates it to T5-XXL's 24.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project's modules
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmark's modules

from bench_checkpoint import build_checkpoint  # noqa: E402
from bench_report import machine_description, write_results  # noqa: E402

T5_XXL = dict(d_model=4096, d_kv=64, d_ff=10240, num_heads=64, vocab_size=32128, relative_attention_num_buckets=32, feed_forward_proj="gated-gelu")
T5_XXL_LAYERS = 24
MODES = {  # pipeline methods called before the images, with their arguments
    "kept (default)": [],
    "T5 released after encoding": [["enable_text_encoder_release", [["text_encoder_3"]]]],
    "all three released": [["enable_text_encoder_release", []]],
    "all released + prompt cache": [["enable_text_encoder_release", []], ["enable_prompt_cache", []]],
    "no T5 (folder without it)": [],
}
NO_T5_MODE = "no T5 (folder without it)"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work-dir", type=Path, default=Path("build/bench"))
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--t5-layers", type=int, default=4)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def build_t5_checkpoint(work_dir: Path, *, layers: int, t5_layers: int) -> Path:
    """The SD3-Medium-shaped checkpoint with a T5-XXL-shaped `text_encoder_3` of `t5_layers` layers (made once;
    the other components are links to the checkpoint without T5)."""
    import torch
    from transformers import T5Config, T5EncoderModel

    from sd3_helper import staged_dir
    from sd3_openvino.export.tiny_model import train_t5_tokenizer

    base = build_checkpoint(work_dir, layers=layers)
    folder = work_dir / f"{base.name}-t5xxl-{t5_layers}-layers"
    if (folder / "model_index.json").is_file():
        return folder
    tokenizer = train_t5_tokenizer(vocab_size=400)
    torch.manual_seed(0)
    config = T5Config(**T5_XXL, num_layers=t5_layers, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float16)  # built straight in fp16: T5-XXL's 24 layers would be 19 GB in f32
    try:
        encoder = T5EncoderModel(config).eval()
    finally:
        torch.set_default_dtype(default_dtype)
    with staged_dir(folder) as staging:
        for entry in base.iterdir():
            if entry.name != "model_index.json":
                (staging / entry.name).symlink_to(entry.resolve())
        encoder.save_pretrained(staging / "text_encoder_3")
        tokenizer.save_pretrained(staging / "tokenizer_3")
        index = json.loads((base / "model_index.json").read_text())
        index |= {"text_encoder_3": ["transformers", "T5EncoderModel"], "tokenizer_3": ["transformers", type(tokenizer).__name__]}
        (staging / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder


def without_t5(model_dir: Path) -> Path:
    """A view of the converted folder without T5: links to its submodels, a `model_index.json` without T5."""
    view = model_dir.with_name(f"{model_dir.name}-view-no-t5")
    view.mkdir(exist_ok=True)
    for entry in model_dir.iterdir():
        if entry.name not in ("model_index.json", "text_encoder_3", "tokenizer_3") and not (view / entry.name).exists():
            (view / entry.name).symlink_to(entry.resolve())
    index = json.loads((model_dir / "model_index.json").read_text())
    index = {key: value for key, value in index.items() if key not in ("text_encoder_3", "tokenizer_3")}
    (view / "model_index.json").write_text(json.dumps(index, indent=2))
    return view


def convert_in_subprocess(checkpoint: Path, output_dir: Path, *, logs: Path) -> dict:
    """`convert_sd3(checkpoint, output_dir, weight_format="int8")` in a fresh process: its peak RSS and time."""
    return run_worker({"kind": "convert", "checkpoint": str(checkpoint), "output_dir": str(output_dir)}, logs=logs, name="convert-int8")


def convert_worker(task: dict) -> dict:
    from sd3_helper import convert_sd3

    start = time.perf_counter()
    convert_sd3(task["checkpoint"], task["output_dir"], weight_format="int8", load_t5=True)
    return {"seconds": time.perf_counter() - start, "peak_rss": vm_hwm()}


def vm_hwm() -> int:
    """This process's peak RSS in bytes (`VmHWM`)."""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(status["VmHWM"].split()[0]) * 1024


def worker(task_path: Path) -> None:
    task = json.loads(task_path.read_text())
    result = convert_worker(task) if task["kind"] == "convert" else image_worker(task)
    Path(task["result_path"]).write_text(json.dumps(result))


def image_worker(task: dict) -> dict:
    """One mode in this fresh process: two images; their memory and times."""
    import psutil

    from sd3_helper import OVStableDiffusion3Pipeline

    process = psutil.Process()
    pipe = OVStableDiffusion3Pipeline.from_pretrained(task["model_dir"])
    pipe.set_progress_bar_config(disable=True)
    for method, arguments in task["methods"]:
        getattr(pipe, method)(*arguments)
    during = []

    def on_step_end(pipe, step, timestep, callback_kwargs):
        during.append(process.memory_info().rss)
        return callback_kwargs

    call = dict(prompt="a lighthouse on a cliff at dawn", height=task["size"], width=task["size"], num_inference_steps=task["steps"], callback_on_step_end=on_step_end)
    seconds = []
    for seed in (0, 1):
        start = time.perf_counter()
        pipe(**call, generator=seed)
        seconds.append(time.perf_counter() - start)
    return {
        "rss_during_steps": max(during),
        "rss_after_call": process.memory_info().rss,
        "peak_rss": vm_hwm(),
        "first_call_seconds": seconds[0],
        "second_call_seconds": seconds[1],
    }


def run_worker(task: dict, *, logs: Path, name: str) -> dict:
    """`task` in a fresh Python process (this file's `--worker`); its result."""
    logs.mkdir(parents=True, exist_ok=True)
    task_path, result_path = logs / f"{name}.task.json", logs / f"{name}.result.json"
    result_path.unlink(missing_ok=True)
    task_path.write_text(json.dumps({**task, "result_path": str(result_path)}))
    with open(logs / f"{name}.log", "w") as log:
        subprocess.run([sys.executable, __file__, "--worker", str(task_path)], stdout=log, stderr=subprocess.STDOUT, check=True)
    return json.loads(result_path.read_text())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        worker(args.worker)
        return 0
    from sd3_helper import folder_size

    checkpoint = build_t5_checkpoint(args.work_dir, layers=args.layers, t5_layers=args.t5_layers)
    model_dir, logs = args.work_dir / f"{checkpoint.name}-int8", args.work_dir / f"logs-text-encoders-{args.layers}"
    conversion = convert_in_subprocess(checkpoint, model_dir, logs=logs) if not (model_dir / "model_index.json").is_file() else None
    t5_size = folder_size(model_dir / "text_encoder_3")
    results = {}
    for index, (name, methods) in enumerate(MODES.items()):
        folder = without_t5(model_dir) if name == NO_T5_MODE else model_dir
        task = {"kind": "image", "model_dir": str(folder), "methods": methods, "size": args.size, "steps": args.steps}
        results[name] = run_worker(task, logs=logs, name=f"mode-{index}")
    kept = results["kept (default)"]["rss_during_steps"]
    t5_share = kept - results["T5 released after encoding"]["rss_during_steps"]
    gb = lambda value: f"{value / 1e9:.2f}"  # noqa: E731
    machine = machine_description()
    lines = [
        f"# Text encoders on demand: SD3-Medium-shaped ({args.layers} transformer layers) + T5-XXL-shaped encoder with {args.t5_layers} of "
        f"{T5_XXL_LAYERS} layers, int8, {args.size}x{args.size}, {args.steps} steps",
        "",
        f"Machine: {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores, features {', '.join(machine.get('cpu_features', [])) or 'none of AVX-512 / AMX'}. "
        f"T5 IR: {gb(t5_size)} GB. Each mode in a fresh process.",
        "",
        "| text encoders | RSS during the steps (GB) | saved (GB) | RSS after the call (GB) | peak RSS (GB) | first call (s) | same prompt, next seed (s) |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {name} | {gb(result['rss_during_steps'])} | {gb(kept - result['rss_during_steps'])} | {gb(result['rss_after_call'])} | "
            f"{gb(result['peak_rss'])} | {result['first_call_seconds']:.1f} | {result['second_call_seconds']:.1f} |"
            for name, result in results.items()
        ),
        "",
        f"Releasing T5 alone saves {gb(t5_share)} GB during the steps, for a {gb(t5_size)} GB T5 IR of {args.t5_layers} layers. "
        f"T5-XXL's {T5_XXL_LAYERS} layers scale both by about {T5_XXL_LAYERS / args.t5_layers:.0f}x (embeddings aside): "
        f"about {gb(t5_share / args.t5_layers * T5_XXL_LAYERS)} GB saved.",
        *(["", f"Conversion (int8, with this T5) in a fresh process: {conversion['seconds']:.0f} s, peak RSS {gb(conversion['peak_rss'])} GB."] if conversion else []),
    ]
    results = {"machine": machine, "settings": {key: str(value) for key, value in vars(args).items()}, "t5_ir_bytes": t5_size, "conversion": conversion, "modes": results}
    write_results(results, stem=f"bench_text_encoders_{args.layers}-layers-t5-{args.t5_layers}", output=args.output, markdown="\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
