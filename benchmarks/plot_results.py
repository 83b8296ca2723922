"""Bar charts of the recorded benchmark results, written as PNGs next to their JSON files.

    python benchmarks/plot_results.py [--results-dir benchmarks/results]

Each chart plots what the matching `.md` table shows, read from the JSON file of the same name; a JSON file that is
not there is skipped with a printed note. Every title names the machine (CPU, cores, CPU flags) and the date of the
run, from the JSON's `machine`. Charts:

- `bench_sd3_<N>-layers-formats.png`: our pipeline per weight format: whole image, transformer forward, IR size.
- `bench_sd3_<N>-layers-runtimes.png`: seconds per step and whole image of every runtime of the interleaved rounds.
- `bench_sd3_<N>-layers-head-to-head.png`: the A / B ratio of each head-to-head pair, with its range.
- `bench_sd3_<N>-layers-taylorseer.png`: whole images with and without the step cache, ours and genai.
- `bench_memory_<N>-layers.png`: peak RSS of one image, ours against genai, and the whole image's stage times.
- `bench_vae_<N>-layers.png`: decode time of the fp16 and int8 VAE, and the whole image against genai.
- `bench_image_to_image_<N>-layers.png`: time per image of text-to-image and image-to-image.
- `bench_full_depth_24-layers.png`: full-depth SD3 Medium at 512x512: the whole images that ran all 28 steps, and
  the peak RSS, ours against openvino.genai and optimum-intel.
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project's modules
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmark's modules

import matplotlib  # noqa: E402

matplotlib.use("Agg")
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

DEFAULT_RESULTS_DIR = Path(__file__).resolve().parent / "results"
FIGSIZE = (9.0, 3.5)  # inches; at DPI this is 900x350 px
DPI = 100
GB = 1e9
OURS_COLOR = "#1f77b4"
PEER_COLOR = "#ff7f0e"
MEMORY_LABELS = {  # bench_memory.py's runtime keys, as its markdown table names them
    "genai": "genai, rng_seed",
    "genai_torch_generator": "genai, TorchGenerator",
    "ours_77": "ours, 77 T5 positions",
    "ours_256": "ours, 256 T5 positions",
}


def machine_line(data: dict) -> str:
    """The machine and date of a result file, e.g. `Intel(R) Xeon(R) Processor, 2 cores (amx_bf16, ...); <date>`."""
    machine = data.get("machine", {})
    flags = ", ".join(machine.get("cpu_features", [])) or "no flags recorded"
    return f"{machine.get('cpu', 'unknown CPU')}, {machine.get('cores', '?')} cores ({flags}); {machine.get('date', 'no date')}"


def new_figure(panels: int, title: str, data: dict) -> tuple[Figure, list]:
    """A 900x350 px figure with `panels` side-by-side axes and a two-line title: what it shows, then the machine."""
    figure = Figure(figsize=FIGSIZE, dpi=DPI)
    FigureCanvasAgg(figure)
    axes = figure.subplots(nrows=1, ncols=panels, squeeze=False)[0]
    figure.suptitle(f"{title}\n{machine_line(data)}", fontsize=8.5)
    return figure, list(axes)


def bar_panel(
    ax, *, labels: list[str], values: list[float], ylabel: str, title: str, fmt: str = "{:.2f}", colors=None, rotation: int = 20
):
    """Vertical bars, one per label, each labelled with its value; `rotation` tilts long labels (0: centred)."""
    bars = ax.bar(range(len(values)), values, color=colors or OURS_COLOR)
    ax.bar_label(bars, labels=[fmt.format(value) for value in values], fontsize=7, padding=1)
    ax.set_xticks(range(len(labels)), labels, fontsize=7, rotation=rotation, ha="right" if rotation else "center")
    finish_axes(ax, ylabel=ylabel, title=title, top=max(values))


def grouped_panel(ax, *, groups: list[str], series: dict[str, list[float]], colors: list[str], ylabel: str, title: str):
    """Bars side by side per group, one series per color, each labelled with its value; a legend names the series."""
    width = 0.8 / len(series)
    for index, ((name, values), color) in enumerate(zip(series.items(), colors)):
        positions = [group + (index - (len(series) - 1) / 2) * width for group in range(len(groups))]
        bars = ax.bar(positions, values, width=width, color=color, label=name)
        ax.bar_label(bars, labels=[f"{value:.2f}" for value in values], fontsize=6.5, padding=1)
    ax.set_xticks(range(len(groups)), groups, fontsize=7)
    ax.legend(fontsize=6.5, loc="upper right")
    finish_axes(ax, ylabel=ylabel, title=title, top=max(max(values) for values in series.values()))


def finish_axes(ax, *, ylabel: str, title: str, top: float):
    """Axis label, panel title, head room for the value labels, and a light grid."""
    ax.set_ylabel(ylabel, fontsize=7.5)
    ax.set_title(title, fontsize=8)
    ax.set_ylim(0, top * 1.18)
    ax.tick_params(axis="y", labelsize=7)
    ax.grid(axis="y", alpha=0.3)


def plot_formats(data: dict) -> Figure:
    """Our pipeline per weight format: whole image and transformer forward (medians), and the IRs' size on disk."""
    formats = [name for name in data["formats"] if "step_s" in data["runtimes"].get(f"ours-{name}", {})]
    runtimes = [data["runtimes"][f"ours-{name}"] for name in formats]
    setup = data["setup"]
    figure, (whole, forward, size) = new_figure(
        3, f"Our pipeline per weight format: {setup['model']}, {setup['width']}x{setup['height']}, {setup['steps']} steps", data
    )
    bar_panel(whole, labels=formats, values=[r["whole_image_s"] for r in runtimes], ylabel="s", title="whole image (s)", fmt="{:.1f}")
    bar_panel(forward, labels=formats, values=[r["forward_s"] for r in runtimes], ylabel="s", title="transformer forward (s)", fmt="{:.3f}")
    sizes = [sum(data["formats"][name]["ir_bytes"].values()) / GB for name in formats]
    bar_panel(size, labels=formats, values=sizes, ylabel="GB", title="IR size on disk, all submodels (GB)")
    figure.tight_layout()
    return figure


def plot_runtimes(data: dict) -> Figure:
    """Seconds per denoising step and whole image of every runtime that completed a visit."""
    names = [name for name, runtime in data["runtimes"].items() if "step_s" in runtime]
    runtimes = [data["runtimes"][name] for name in names]
    colors = [OURS_COLOR if name.startswith("ours") else PEER_COLOR for name in names]
    figure, (step, whole) = new_figure(2, f"Every runtime, medians of {data['setup']['repeats']} interleaved rounds (blue: ours)", data)
    bar_panel(step, labels=names, values=[r["step_s"] for r in runtimes], ylabel="s", title="s / step", fmt="{:.3f}", colors=colors)
    bar_panel(whole, labels=names, values=[r["whole_image_s"] for r in runtimes], ylabel="s", title="whole image (s)", fmt="{:.1f}", colors=colors)
    figure.tight_layout()
    return figure


def plot_head_to_head(data: dict) -> Figure:
    """The A / B time ratio of each head-to-head pair, median with its range over pairs; below 1 means A is faster."""
    pairs = data["head_to_head"]
    labels = [f"{pair['a']}\n÷ {pair['b']} ({pair['measure']})" for pair in pairs]
    ratios = [pair["ratio"] for pair in pairs]
    errors = [[r - p["ratio_min"] for r, p in zip(ratios, pairs)], [p["ratio_max"] - r for r, p in zip(ratios, pairs)]]
    figure, (ax,) = new_figure(1, "Head to head, alternating in one process: A ÷ B time, median and range over pairs", data)
    bars = ax.barh(range(len(pairs)), ratios, xerr=errors, color=OURS_COLOR, error_kw={"elinewidth": 0.8, "capsize": 2})
    ax.bar_label(bars, labels=[f"{ratio:.3f}" for ratio in ratios], fontsize=7, padding=3, label_type="center", color="white")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(pairs)), labels, fontsize=6.5)
    ax.invert_yaxis()
    ax.set_xlabel("A ÷ B (below 1: A is faster)", fontsize=7.5)
    ax.tick_params(axis="x", labelsize=7)
    figure.tight_layout()
    return figure


def whole_pairs(data: dict | None) -> dict[str, dict]:
    """The head-to-head pairs of whole images, by A's name."""
    if data is None:
        return {}
    return {pair["a"]: pair for pair in data.get("head_to_head", []) if pair["measure"] == "whole"}


def plot_taylorseer(data: dict, without_cache: dict | None = None) -> Figure:
    """Whole images head to head against genai (its default step cache always on), ours with and without the cache.

    `data` is the step-cache run (`ours-*-taylorseer` pairs); `without_cache` the head-to-head run whose whole-image
    pairs ran ours without the cache, if that file exists.
    """
    cached = whole_pairs(data)
    uncached = whole_pairs(without_cache)
    series = {"ours, no cache": [], "genai, paired with ours without cache": [], "ours, step cache": [], "genai, paired with ours with cache": []}
    groups = []
    for name, pair in cached.items():
        plain = uncached.get(name.removesuffix("-taylorseer"), {})
        groups.append(f"{name.removesuffix('-taylorseer')} vs {pair['b']}")
        for values, value in zip(series.values(), [plain.get("a_s", 0.0), plain.get("b_s", 0.0), pair["a_s"], pair["b_s"]]):
            values.append(value)
    figure, (ax,) = new_figure(1, "Whole image (s), head to head with openvino.genai (its default step cache on)", data)
    colors = ["#9ecae1", "#fdd0a2", OURS_COLOR, PEER_COLOR]
    source = f"without cache: the head-to-head run of {without_cache['machine']['date']}" if without_cache else "no run without cache"
    grouped_panel(ax, groups=groups, series=series, colors=colors, ylabel="s per image", title=source)
    figure.tight_layout()
    return figure


def plot_memory(data: dict) -> Figure:
    """Peak RSS of one image per runtime, and the whole image's stage times, ours against genai."""
    memory, stages = data["measured"]["memory"], data["measured"]["time"]["stages"]
    names = list(memory)
    labels = [MEMORY_LABELS.get(name, name) for name in names]
    colors = [OURS_COLOR if name.startswith("ours") else PEER_COLOR for name in names]
    figure, (rss, times) = new_figure(2, "One image, ours (no torch) vs openvino.genai, same fp16 folder", data)
    peaks = [memory[name]["peak_bytes"] / GB for name in names]
    bar_panel(rss, labels=labels, values=peaks, ylabel="GB", title=f"peak RSS, {data['setup']['size']} px, fresh process", colors=colors)
    grouped_panel(
        times,
        groups=list(stages),
        series={"ours": [stage["ours_s"] for stage in stages.values()], "genai": [stage["genai_s"] for stage in stages.values()]},
        colors=[OURS_COLOR, PEER_COLOR],
        ylabel="s",
        title=f"whole image by stage, {data['setup']['time_steps']} steps, step cache on both (medians)",
    )
    figure.tight_layout()
    return figure


def plot_vae(data: dict) -> Figure:
    """Median decode time of the fp16 and int8 VAE decoders, and the whole image against genai."""
    figure, axes = new_figure(2, f"int8 VAE, {data['setup']['size']}x{data['setup']['size']}, medians of {data['setup']['rounds']} rounds", data)
    for ax, (part, title) in zip(axes, [("decode", "VAE decode (s)"), ("whole", "whole image (s)")]):
        times = data["speed"][part]
        colors = [PEER_COLOR if name.startswith("genai") else OURS_COLOR for name in times]
        values = [statistics.median(rounds) for rounds in times.values()]
        labels = [name.replace(" + ", "\n+ ").replace(" (", "\n(") for name in times]
        bar_panel(ax, labels=labels, values=values, ylabel="s", title=title, colors=colors, rotation=0)
    figure.tight_layout()
    return figure


def plot_image_to_image(data: dict) -> Figure:
    """Median time per image of ours text-to-image, ours image-to-image and genai image-to-image."""
    setup, times = data["setup"], data["times"]
    labels = list(times) + ["VAE encode alone", "VAE decode alone"]
    values = [statistics.median(rounds) for rounds in times.values()] + [data["encode_s"], data["decode_s"]]
    colors = [PEER_COLOR if name.startswith("genai") else OURS_COLOR for name in labels]
    title = f"Image-to-image, {setup['size']}x{setup['size']}, {setup['steps']} steps, strength {setup['strength']}, medians of {setup['rounds']} rounds"
    figure, (ax,) = new_figure(1, title, data)
    bar_panel(ax, labels=labels, values=values, ylabel="s", title="median time per image (s)", colors=colors, rotation=0)
    figure.tight_layout()
    return figure


def plot_full_depth(data: dict) -> Figure:
    """The full-depth table's 512x512 rows that ran every step: seconds per image and peak RSS."""
    rows = [row for row in data["rows"] if "error" not in row and row["size"] == data["size"] and row["steps"] == data["steps"]]
    labels = [row["name"].replace(" (", "\n(").replace(", step cache off", "\nstep cache off") for row in rows]
    colors = [OURS_COLOR if row["name"].startswith("ours") else PEER_COLOR for row in rows]
    title = f"Full-depth SD3 Medium (random weights, no T5), {data['size']}x{data['size']}, {data['steps']} steps"
    figure, (seconds, memory) = new_figure(2, title, data)
    bar_panel(seconds, labels=labels, values=[row["image_s"] for row in rows], ylabel="s", title="one image (s)", fmt="{:.1f}", colors=colors, rotation=30)
    bar_panel(memory, labels=labels, values=[row["peak_rss"] / GB for row in rows], ylabel="GB", title="peak RSS (GB)", colors=colors, rotation=30)
    figure.tight_layout()
    return figure


def load_result(path: Path) -> dict | None:
    """The JSON of a result file, or None (with a printed note) when it is not there."""
    if not path.is_file():
        print(f"skipped {path.name}: no such file in {path.parent}")
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def plot_results(results_dir: Path | str = DEFAULT_RESULTS_DIR, *, layers: int = 2) -> list[Path]:
    """Write every chart whose JSON file exists in `results_dir`; return the PNG paths written."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise ValueError(f"`results_dir` must be a folder of benchmark results but is {str(results_dir)!r}; pass --results-dir.")
    sd3 = f"bench_sd3_{layers}-layers"
    charts = [  # (JSON file, PNG file, chart, extra JSON file passed as a second argument)
        (f"{sd3}.json", f"{sd3}-formats.png", plot_formats, None),
        (f"{sd3}.json", f"{sd3}-runtimes.png", plot_runtimes, None),
        (f"{sd3}-head-to-head.json", f"{sd3}-head-to-head.png", plot_head_to_head, None),
        (f"{sd3}-taylorseer.json", f"{sd3}-taylorseer.png", plot_taylorseer, f"{sd3}-head-to-head.json"),
        (f"bench_memory_{layers}-layers.json", f"bench_memory_{layers}-layers.png", plot_memory, None),
        (f"bench_vae_{layers}-layers.json", f"bench_vae_{layers}-layers.png", plot_vae, None),
        (f"bench_image_to_image_{layers}-layers.json", f"bench_image_to_image_{layers}-layers.png", plot_image_to_image, None),
        ("bench_full_depth_24-layers.json", "bench_full_depth_24-layers.png", plot_full_depth, None),
    ]
    written = []
    for json_name, png_name, chart, extra_name in charts:
        data = load_result(results_dir / json_name)
        if data is None:
            continue
        extra = [load_result(results_dir / extra_name)] if extra_name else []
        figure = chart(data, *extra)
        figure.savefig(results_dir / png_name, dpi=DPI, metadata={"Software": None})
        written.append(results_dir / png_name)
        print(f"wrote {results_dir / png_name}")
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS_DIR, help="folder of the JSON results; PNGs go there too")
    parser.add_argument("--layers", type=int, default=2, help="the transformer depth of the result files to plot")
    args = parser.parse_args(argv)
    plot_results(args.results_dir, layers=args.layers)


if __name__ == "__main__":
    main()
