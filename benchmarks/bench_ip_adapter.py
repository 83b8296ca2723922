"""IP-Adapter's cost per denoising step on the SD3-Medium-shaped model, each configuration in a fresh process.

Three configurations: no adapter, an adapter loaded but given no image prompt (the transformer graph still holds the
image attention, fed zeros at scale 0), and an adapter prompting with an image (scale 0.6).

    python benchmarks/bench_ip_adapter.py                                   # 24 layers, 512x512, fp16, 2 rounds
    python benchmarks/bench_ip_adapter.py --weight-formats fp16 int8        # int8 folders and adapters too
    python benchmarks/bench_ip_adapter.py --layers 2 --size 256 --image-encoder-layers 2 --steps 2 --rounds 1  # smoke run

The model is `bench_checkpoint.py`'s SD3-Medium-shaped checkpoint (`--layers` joint blocks 1536 wide, the real CLIP-L/G
and VAE, no T5, random weights, which time like trained ones), built once under `--work-dir` and converted there with
`convert_sd3` (`<work-dir>/sd3-medium-shaped-<layers>-layers-<format>`, the folders `bench_full_depth.py` and
`bench_controlnet.py` use). The adapter has InstantX/SD3.5-Large-IP-Adapter's dimensions (`IPAdapterShape`: SigLIP
so400m at 384 px, a 4-layer resampler 1280 wide with 64 queries) except the widths that must match the transformer (the
resampler's output and each block's image attention: 1536); random weights in InstantX's layout (`make_ip_adapter`),
converted at each weight format with `convert_sd3_ip_adapter`. Building and converting run in a process of their own.

Each (weight format, configuration) then runs in a fresh process, visited in turn for `--rounds` rounds: load the
folder (and the adapter), a warm-up call of `--warmup-steps` steps (compilation and first-call costs; the image
encoder's first run), then the timed call of `--steps` steps with the same image, at `--size` guided (batch 2), every step
computed (no step cache), latents out (no decode). From `get_performance_metrics()`: the median step and transformer
infer, and the adapter's submodels' infers ("ip_image_encoder", "ip_image_projection": `image_encoder_times`,
`image_projection_times`) where the metrics file them; a version whose metrics know only the transformer, ControlNet, VAE
and text encoders leaves them out, and then `AdapterTimer`'s own timings of their `run_submodel` calls stand in.
`AdapterTimer` also times the image-prompt stage (`prepare_image_prompt`) of each call. Peak RSS: the process's `VmHWM`.
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project's modules
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmark's modules

from bench_checkpoint import SD3_MEDIUM  # noqa: E402
from bench_process import failure_reason  # noqa: E402
from bench_report import machine_description, write_results  # noqa: E402

PROMPT = "A raccoon trapped inside a glass jar full of colorful candies, the background is steamy with vivid colors"
SEED = 141
GUIDANCE_SCALE = 5.0  # > 1: guided, the transformer and the resampler run on a batch of 2
IP_ADAPTER_SCALE = 0.6
IMAGE_STEPS = 28  # SD3's usual step count, for the per-image figure
HEAD_WIDTH = 64  # diffusers' loader reads the resampler's heads as its `to_q` width / 64
# name -> (load the adapter, pass an image prompt)
CONFIGURATIONS = {
    "no adapter": (False, False),
    "adapter loaded, no image prompt": (True, False),
    f"adapter active, image prompt (scale {IP_ADAPTER_SCALE})": (True, True),
}
BASELINE = "no adapter"


@dataclass(frozen=True)
class IPAdapterShape:
    """InstantX/SD3.5-Large-IP-Adapter's dimensions: its image encoder (google/siglip-so400m-patch14-384) and resampler.
    The widths that must match the transformer (the resampler's output, each block's image attention) come from it."""

    encoder_hidden_size: int = 1152  # SigLIP so400m
    encoder_intermediate_size: int = 4304
    encoder_layers: int = 27
    encoder_heads: int = 16
    image_size: int = 384
    patch_size: int = 14  # 27 x 27 = 729 image tokens
    resampler_hidden_dim: int = 1280  # 20 heads of 64; also each block's `timesteps_emb_dim`
    resampler_depth: int = 4
    num_queries: int = 64
    timestep_in_dim: int = 320


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work-dir", type=Path, default=Path("build/bench"))
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=4, help="steps of the timed call (an image has 28; we report s/step)")
    parser.add_argument("--warmup-steps", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2, help="visit the configurations this many times, in turn")
    parser.add_argument("--weight-formats", nargs="+", default=["fp16"], choices=["fp16", "int8"])
    parser.add_argument("--image-encoder-layers", type=int, default=IPAdapterShape.encoder_layers, help="SigLIP so400m has 27; fewer for a smoke run")
    parser.add_argument("--output", type=Path, default=None, help="the JSON result (the markdown beside it); default results/bench_ip_adapter_<layers>-layers-<size>.json")
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------------------------------------
# The adapter, in InstantX's layout
# ----------------------------------------------------------------------------------------------------------


def make_ip_adapter(checkpoint: Path, output_dir: Path, *, shape: IPAdapterShape, seed: int = 0) -> Path:
    """Write a random-weight SD3 IP-Adapter of `shape` for the checkpoint at `checkpoint` to `output_dir`; return it.

    `make_tiny_ip_adapter`'s layout with the dimensions as arguments: `ip-adapter.safetensors` (`image_proj.*`, the
    resampler in InstantX's key names; `ip_adapter.{block}.*`, one image attention per transformer block, as wide as the
    transformer) and `image_encoder/`, a SigLIP vision model with its `preprocessor_config.json`. The modules' own
    initialisation, stored in fp16 like the checkpoint."""
    import torch
    from diffusers.models.attention_processor import SD3IPAdapterJointAttnProcessor2_0
    from diffusers.models.embeddings import IPAdapterTimeImageProjection
    from safetensors.torch import save_file
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    from sd3_helper import staged_dir
    from sd3_openvino.export.tiny_model import instantx_resampler_key

    config = json.loads((checkpoint / "transformer" / "config.json").read_text())
    width = config["num_attention_heads"] * config["attention_head_dim"]
    torch.manual_seed(seed)
    encoder_config = SiglipVisionConfig(
        hidden_size=shape.encoder_hidden_size, intermediate_size=shape.encoder_intermediate_size, num_hidden_layers=shape.encoder_layers,
        num_attention_heads=shape.encoder_heads, image_size=shape.image_size, patch_size=shape.patch_size,
    )  # fmt: skip
    encoder = SiglipVisionModel(encoder_config).to(torch.float16).eval()
    resampler = IPAdapterTimeImageProjection(
        embed_dim=shape.encoder_hidden_size, output_dim=width, hidden_dim=shape.resampler_hidden_dim, depth=shape.resampler_depth,
        dim_head=HEAD_WIDTH, heads=shape.resampler_hidden_dim // HEAD_WIDTH, num_queries=shape.num_queries, timestep_in_dim=shape.timestep_in_dim,
    )  # fmt: skip
    state = {f"image_proj.{instantx_resampler_key(key)}": value for key, value in resampler.state_dict().items()}
    for block in range(config["num_layers"]):
        processor = SD3IPAdapterJointAttnProcessor2_0(
            hidden_size=width, ip_hidden_states_dim=width, head_dim=config["attention_head_dim"], timesteps_emb_dim=shape.resampler_hidden_dim
        )
        state.update({f"ip_adapter.{block}.{key}": value for key, value in processor.state_dict().items()})
    with staged_dir(output_dir) as staging:
        save_file({key: value.to(torch.float16).contiguous() for key, value in state.items()}, str(staging / "ip-adapter.safetensors"))
        encoder.save_pretrained(staging / "image_encoder")
        SiglipImageProcessor(size={"height": shape.image_size, "width": shape.image_size}).save_pretrained(staging / "image_encoder")
    return output_dir


def prepare(task: dict) -> dict:
    """Build (once) the checkpoint and the adapter; convert both to each weight format (each kept once converted)."""
    from bench_checkpoint import build_checkpoint

    from sd3_helper import convert_sd3, convert_sd3_ip_adapter

    work_dir, shape = Path(task["work_dir"]), IPAdapterShape(**task["shape"])
    checkpoint = build_checkpoint(work_dir, layers=task["layers"])
    source = work_dir / f"ip-adapter-instantx-shaped-{task['layers']}-blocks-siglip-{shape.encoder_layers}-layers"
    if not (source / "ip-adapter.safetensors").is_file():
        make_ip_adapter(checkpoint, source, shape=shape)
    folders = {}
    for weight_format in task["weight_formats"]:
        model_dir = convert_sd3(checkpoint, work_dir / f"{checkpoint.name}-{weight_format}", weight_format=weight_format, load_t5=False)
        adapter_dir = convert_sd3_ip_adapter(source, work_dir / f"{source.name}-{weight_format}", model_dir=model_dir, weight_format=weight_format)
        folders[weight_format] = {"model_dir": str(model_dir), "adapter_dir": str(adapter_dir)}
    return {"folders": folders}


# ----------------------------------------------------------------------------------------------------------
# One configuration, in a process of its own
# ----------------------------------------------------------------------------------------------------------


class AdapterTimer:
    """Times, on one pipeline, what its `PerformanceMetrics` may leave out: each `run_submodel` inference by submodel
    name (less a compilation it triggered, as the metrics count it) and each `prepare_image_prompt` (preprocessing, the
    feature cache's look-up, the image encoder). Wraps the two methods of this instance only; `reset` before a call."""

    def __init__(self, pipe):
        self.infers: dict[str, list[float]] = {}
        self.image_prompt: list[float] = []
        run_submodel, prepare_image_prompt = pipe.run_submodel, pipe.prepare_image_prompt

        def timed_run_submodel(submodel, **kwargs):
            compilations, started = submodel.compilations, time.perf_counter()
            outputs = run_submodel(submodel, **kwargs)
            seconds = time.perf_counter() - started
            if submodel.compilations != compilations:
                seconds = max(seconds - submodel.compile_time, 0.0)
            self.infers.setdefault(submodel.name, []).append(seconds)
            return outputs

        def timed_prepare_image_prompt(*args, **kwargs):
            started = time.perf_counter()
            image_prompt = prepare_image_prompt(*args, **kwargs)
            self.image_prompt.append(time.perf_counter() - started)
            return image_prompt

        pipe.run_submodel, pipe.prepare_image_prompt = timed_run_submodel, timed_prepare_image_prompt

    def reset(self) -> None:
        self.infers, self.image_prompt = {}, []


def prompt_image(size: int = 512):
    """A synthetic picture for the image prompt (the encoder's time does not depend on what it shows)."""
    import numpy as np
    from PIL import Image

    rows, columns = np.indices((size, size))
    pixels = np.stack([rows * 255 // size, columns * 255 // size, (rows + columns) // 32 % 2 * 200], axis=-1)  # (H, W, 3)
    return Image.fromarray(pixels.astype(np.uint8))


def adapter_infers(metrics, timer: AdapterTimer, *, field: str, submodel: str) -> list[float]:
    """The infers of one of the adapter's submodels: the metrics' `field` where they have it, else `timer`'s."""
    recorded = getattr(metrics, field, None)
    return list(recorded) if recorded is not None else timer.infers.get(submodel, [])


def call_record(metrics, timer: AdapterTimer) -> dict:
    """One call's figures: the metrics' steps, transformer infers and compilations, and the adapter's submodels."""
    return {
        "num_steps": metrics.num_steps,
        "step_s": metrics.step_times,
        "transformer_s": metrics.transformer_times,
        "text_encoding_s": sum(sum(times) for times in metrics.text_encoder_times.values()),
        "compile_s": metrics.compile_times,
        "total_s": metrics.total_time,
        "resampler_s": adapter_infers(metrics, timer, field="image_projection_times", submodel="ip_image_projection"),
        "image_encoder_s": adapter_infers(metrics, timer, field="image_encoder_times", submodel="ip_image_encoder"),
        "adapter_infers_from": "metrics" if hasattr(metrics, "image_projection_times") else "AdapterTimer",
        "image_prompt_s": sum(timer.image_prompt),
    }


def run_configuration(task: dict) -> dict:
    """Load, a warm-up call, the timed call with the same image; both calls' figures and the process's peak RSS."""
    from sd3_helper import OVStableDiffusion3Pipeline

    started = time.perf_counter()
    pipe = OVStableDiffusion3Pipeline.from_pretrained(task["model_dir"])
    pipe.set_progress_bar_config(disable=True)
    pipe.enable_memory_metrics()
    if task["load_adapter"]:
        pipe.load_ip_adapter(task["adapter_dir"])
        pipe.set_ip_adapter_scale(IP_ADAPTER_SCALE)
    load_s = time.perf_counter() - started
    timer = AdapterTimer(pipe)
    call = dict(height=task["size"], width=task["size"], guidance_scale=GUIDANCE_SCALE, taylorseer=None, output_type="latent")
    if task["image_prompt"]:
        call["ip_adapter_image"] = prompt_image()
    calls = []
    for steps in (task["warmup_steps"], task["steps"]):
        timer.reset()
        pipe(PROMPT, num_inference_steps=steps, generator=SEED, **call)
        calls.append(call_record(pipe.get_performance_metrics(), timer))
    return {"load_s": load_s, "first_call": calls[0], "timed_call": calls[1], "peak_rss": pipe.get_performance_metrics().peak_rss}


TASKS = {"prepare": prepare, "configuration": run_configuration}


def worker(task_path: Path) -> int:
    task = json.loads(task_path.read_text())
    Path(task["result_path"]).write_text(json.dumps(TASKS[task["kind"]](task)))
    return 0


def run_in_process(task: dict, *, logs: Path, name: str) -> dict:
    """`task` in a fresh Python process (this file's `--worker`); its result, or {"error": why} when it failed."""
    logs.mkdir(parents=True, exist_ok=True)
    task_path, result_path, log_path = logs / f"{name}.task.json", logs / f"{name}.result.json", logs / f"{name}.log"
    result_path.unlink(missing_ok=True)
    task_path.write_text(json.dumps({**task, "result_path": str(result_path)}))
    print(f"[{time.strftime('%H:%M:%S')}] {name}", flush=True)
    with open(log_path, "w") as log:
        process = subprocess.run([sys.executable, __file__, "--worker", str(task_path)], stdout=log, stderr=subprocess.STDOUT)
    if process.returncode != 0 or not result_path.is_file():
        return {"error": failure_reason(log_path, process.returncode)}
    return json.loads(result_path.read_text())


# ----------------------------------------------------------------------------------------------------------
# The table
# ----------------------------------------------------------------------------------------------------------


def median_or_none(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize(visits: list[dict], baselines: list[dict]) -> dict:
    """Medians over rounds of a configuration's visits; its extra step time over the baseline's visit of the same round."""
    done = [visit for visit in visits if "error" not in visit]
    if not done:
        return {"error": visits[-1]["error"]}
    step = [statistics.median(visit["timed_call"]["step_s"]) for visit in done]
    transformer = [statistics.median(visit["timed_call"]["transformer_s"]) for visit in done]
    extra = [
        statistics.median(visit["timed_call"]["step_s"]) - statistics.median(base["timed_call"]["step_s"])
        for visit, base in zip(visits, baselines)
        if "error" not in visit and "error" not in base
    ]
    first, timed = [visit["first_call"] for visit in done], [visit["timed_call"] for visit in done]
    return {
        "rounds": len(done),
        "step_s": statistics.median(step),
        "step_per_round_s": step,
        "transformer_s": statistics.median(transformer),
        "extra_step_s": median_or_none(extra),
        "resampler_s": median_or_none([statistics.median(call["resampler_s"]) for call in timed if call["resampler_s"]]),
        "resampler_calls": len(timed[0]["resampler_s"]),
        "encoder_first_s": median_or_none([sum(call["image_encoder_s"]) for call in first if call["image_encoder_s"]]),
        "encoder_compile_s": median_or_none([call["compile_s"]["ip_image_encoder"] for call in first if "ip_image_encoder" in call["compile_s"]]),
        "image_prompt_first_s": statistics.median([call["image_prompt_s"] for call in first]),
        "image_prompt_cached_s": statistics.median([call["image_prompt_s"] for call in timed]),
        "encoder_runs_cached": max(len(call["image_encoder_s"]) for call in timed),
        "first_call_compile_s": statistics.median([sum(call["compile_s"].values()) for call in first]),
        "peak_rss": max(visit["peak_rss"] for visit in done),
    }


def spread(per_round: list[float]) -> str:
    """The range of the rounds' values, " (min-max)", when there are several rounds; else ""."""
    return f" ({min(per_round):.3f}-{max(per_round):.3f})" if len(per_round) > 1 else ""


def _cell(value: float | None, spec: str = ".3f") -> str:
    return "" if value is None else f"{value:{spec}}"


def format_table(weight_format: str, rows: dict[str, dict], *, steps: int) -> list[str]:
    """One weight format's rows (`summarize`'s) as a markdown table, with `findings` under it."""
    base = rows.get(BASELINE, {})
    lines = [
        f"### {weight_format} folder and adapter",
        "",
        "| configuration | s / step (range over rounds) | extra vs no adapter (s / step) | transformer infer (s) | transformer share | resampler (s / step) "
        "| image prompt, 1st call (s) ¹ | image prompt, 2nd call, same image (s) ² | compile in 1st call (s) | peak RSS (GB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in rows.items():
        if "error" in row:
            lines.append(f"| {name} | failed: {row['error']} |" + " |" * 8)
            continue
        extra = ""
        if name != BASELINE and row["extra_step_s"] is not None and "step_s" in base:
            extra = f"{row['extra_step_s']:+.3f} ({100 * row['extra_step_s'] / base['step_s']:+.1f} %)"
        first = f"{row['image_prompt_first_s']:.3f} (encoder {_cell(row['encoder_first_s'])}, + compile {_cell(row['encoder_compile_s'], '.2f')})" if row["encoder_first_s"] else ""
        cached = f"{row['image_prompt_cached_s']:.4f} ({row['encoder_runs_cached']} encoder runs)" if row["encoder_first_s"] else ""
        lines.append(
            f"| {name} | {row['step_s']:.3f}{spread(row['step_per_round_s'])} | {extra} | {row['transformer_s']:.3f} | {100 * row['transformer_s'] / row['step_s']:.1f} % "
            f"| {_cell(row['resampler_s'], '.4f')} | {first} | {cached} | {row['first_call_compile_s']:.1f} | {row['peak_rss'] / 1e9:.2f} |"
        )
    return lines + [""] + findings(rows, steps=steps) + [""]


def findings(rows: dict[str, dict], *, steps: int) -> list[str]:
    """The table's answer in sentences: what the image attention and the resampler add to a step, and to an image."""
    base, loaded, active = (rows.get(name, {}) for name in CONFIGURATIONS)
    if any("error" in row or not row for row in (base, loaded, active)) or None in (loaded["extra_step_s"], active["extra_step_s"]):
        return []
    attention = active["transformer_s"] - base["transformer_s"]
    rest = active["extra_step_s"] - attention - (active["resampler_s"] or 0.0)
    return [
        f"- An active adapter adds **{active['extra_step_s']:+.3f} s per step ({100 * active['extra_step_s'] / base['step_s']:+.1f} %)**: "
        f"the transformer's infer {attention:+.3f} s (the image attention in every block), the resampler {_cell(active['resampler_s'])} s "
        f"(it ran {active['resampler_calls']} times in the {steps}-step call, once per step), the rest {rest:+.3f} s.",
        f"- Loaded but given no image prompt, the graph still runs the image attention (on zeros, scale 0): {loaded['extra_step_s']:+.3f} s "
        f"per step ({100 * loaded['extra_step_s'] / base['step_s']:+.1f} %); `unload_ip_adapter()` takes it out.",
        f"- A {IMAGE_STEPS}-step image with every step computed: {IMAGE_STEPS * active['extra_step_s'] + (active['encoder_first_s'] or 0.0):+.1f} s "
        f"with the adapter active, the image encoder's first run included ({IMAGE_STEPS * active['step_s']:.0f} s of steps against "
        f"{IMAGE_STEPS * base['step_s']:.0f} s without an adapter).",
    ]


def markdown(args: argparse.Namespace, machine: dict, tables: dict[str, dict]) -> str:
    shape = IPAdapterShape(encoder_layers=args.image_encoder_layers)
    width = SD3_MEDIUM["transformer"]["num_attention_heads"] * SD3_MEDIUM["transformer"]["attention_head_dim"]
    lines = [
        f"# IP-Adapter cost per step: {args.layers}-layer SD3-Medium-shaped transformer (width {width}, real CLIP-L/G and VAE, no T5), "
        f"{args.size}x{args.size}, guided (batch 2), every step computed",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['ram_gb']} GB RAM, features "
        f"{', '.join(machine['cpu_features']) or 'none of AVX-512 / AMX'}; openvino {machine['versions']['openvino']}; {machine['date']}. "
        f"Each row a fresh process, visited in turn for {args.rounds} round(s) (medians over rounds): a {args.warmup_steps}-step warm-up "
        f"call, then a timed call of {args.steps} steps (s / step: median step of `get_performance_metrics()`).",
        "",
        f"Adapter (random weights, InstantX/SD3.5-Large-IP-Adapter's dimensions): SigLIP {shape.encoder_layers} layers x "
        f"{shape.encoder_hidden_size} at {shape.image_size} px, patch {shape.patch_size}; resampler {shape.resampler_depth} layers x "
        f"{shape.resampler_hidden_dim} ({shape.resampler_hidden_dim // HEAD_WIDTH} heads of {HEAD_WIDTH}), {shape.num_queries} queries, "
        f"output {width}; one image attention per block ({width} wide, heads of {SD3_MEDIUM['transformer']['attention_head_dim']}). "
        f"Scale {IP_ADAPTER_SCALE}.",
        "",
    ]
    for weight_format, rows in tables.items():
        lines += format_table(weight_format, rows, steps=args.steps)
    lines += [
        "¹ `prepare_image_prompt` of the warm-up call: preprocessing, the feature cache's look-up and the image encoder's run "
        "(its infer and, apart, its compilation).",
        "² The same stage in the timed call: the features come from the adapter's cache, the encoder does not run.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        return worker(args.worker)
    logs = args.work_dir / f"logs-ip-adapter-{args.layers}-layers-{args.size}"
    shape = IPAdapterShape(encoder_layers=args.image_encoder_layers)
    prepared = run_in_process(
        {"kind": "prepare", "work_dir": str(args.work_dir), "layers": args.layers, "weight_formats": args.weight_formats, "shape": asdict(shape)},
        logs=logs, name="prepare",
    )  # fmt: skip
    if "error" in prepared:
        raise SystemExit(f"Building or converting the model failed: {prepared['error']}")
    visits = {(fmt, name): [] for fmt in args.weight_formats for name in CONFIGURATIONS}
    for round_index in range(args.rounds):
        for (weight_format, name), runs in visits.items():
            load_adapter, image_prompt = CONFIGURATIONS[name]
            task = {"kind": "configuration", **prepared["folders"][weight_format], "load_adapter": load_adapter, "image_prompt": image_prompt}
            task |= {"size": args.size, "steps": args.steps, "warmup_steps": args.warmup_steps}
            slug = "".join(char if char.isalnum() else "-" for char in name)
            runs.append(run_in_process(task, logs=logs, name=f"{weight_format}-{slug}-round-{round_index}"))
    tables = {fmt: {name: summarize(visits[fmt, name], visits[fmt, BASELINE]) for name in CONFIGURATIONS} for fmt in args.weight_formats}
    machine = machine_description()
    results = {
        "machine": machine,
        "settings": {key: str(value) for key, value in vars(args).items() if key != "worker"},
        "adapter_shape": asdict(shape),
        "summary": tables,
        "visits": {f"{fmt} / {name}": runs for (fmt, name), runs in visits.items()},
    }
    write_results(results, stem=f"bench_ip_adapter_{args.layers}-layers-{args.size}", output=args.output, markdown=markdown(args, machine, tables))
    return 0


if __name__ == "__main__":
    sys.exit(main())
