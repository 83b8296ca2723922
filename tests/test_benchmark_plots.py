"""`benchmarks/plot_results.py`: bar charts of the committed benchmark results (fast tier: no model, a few seconds)."""

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def load_plot_results():
    """The script as a module, loaded from its file (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("plot_results", REPO_ROOT / "benchmarks" / "plot_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def plot_results():
    return load_plot_results()


@pytest.fixture
def results_copy(tmp_path):
    """A temporary copy of the committed JSON results, without their PNGs."""
    for path in RESULTS_DIR.glob("*.json"):
        shutil.copy(path, tmp_path / path.name)
    return tmp_path


def test_writes_a_png_per_chart_next_to_the_json(plot_results, results_copy):
    written = plot_results.plot_results(results_copy)
    names = {path.name for path in written}
    assert {"bench_sd3_2-layers-formats.png", "bench_sd3_2-layers-taylorseer.png", "bench_memory_2-layers.png", "bench_full_depth_24-layers.png"} <= names
    for path in written:
        assert path.parent == results_copy
        assert path.read_bytes()[:8] == PNG_SIGNATURE, f"{path.name} is not a PNG"
        assert path.stat().st_size < 80_000, f"{path.name} is {path.stat().st_size} bytes"


def test_skips_missing_json_files_with_a_note(plot_results, results_copy, capsys):
    (results_copy / "bench_memory_2-layers.json").unlink()
    written = plot_results.plot_results(results_copy)
    assert "bench_memory_2-layers.png" not in {path.name for path in written}
    assert "skipped bench_memory_2-layers.json" in capsys.readouterr().out


def test_formats_chart_bars_equal_the_json_values(plot_results):
    data = json.loads((RESULTS_DIR / "bench_sd3_2-layers.json").read_text(encoding="utf-8"))
    figure = plot_results.plot_formats(data)
    whole, forward, size = figure.axes
    formats = list(data["formats"])
    assert [bar.get_height() for bar in whole.patches] == [data["runtimes"][f"ours-{name}"]["whole_image_s"] for name in formats]
    assert [bar.get_height() for bar in forward.patches] == [data["runtimes"][f"ours-{name}"]["forward_s"] for name in formats]
    sizes = [sum(data["formats"][name]["ir_bytes"].values()) / 1e9 for name in formats]
    assert [bar.get_height() for bar in size.patches] == pytest.approx(sizes)
    assert data["machine"]["cpu"] in figure.get_suptitle() and data["machine"]["date"] in figure.get_suptitle()


def test_memory_chart_bars_equal_the_json_values(plot_results):
    data = json.loads((RESULTS_DIR / "bench_memory_2-layers.json").read_text(encoding="utf-8"))
    rss, stages = plot_results.plot_memory(data).axes
    assert [bar.get_height() for bar in rss.patches] == pytest.approx([run["peak_bytes"] / 1e9 for run in data["measured"]["memory"].values()])
    times = data["measured"]["time"]["stages"].values()
    assert [bar.get_height() for bar in stages.patches] == [t["ours_s"] for t in times] + [t["genai_s"] for t in times]


def test_bad_results_dir_names_the_argument(plot_results, tmp_path):
    with pytest.raises(ValueError, match="`results_dir` must be a folder"):
        plot_results.plot_results(tmp_path / "missing")


def test_full_depth_chart_bars_are_the_rows_that_ran_every_step(plot_results):
    data = json.loads((RESULTS_DIR / "bench_full_depth_24-layers.json").read_text(encoding="utf-8"))
    seconds, memory = plot_results.plot_full_depth(data).axes
    rows = [row for row in data["rows"] if "error" not in row and row["size"] == 512 and row["steps"] == 28]
    assert len(rows) >= 5 and [bar.get_height() for bar in seconds.patches] == [row["image_s"] for row in rows]
    assert [bar.get_height() for bar in memory.patches] == [row["peak_rss"] / 1e9 for row in rows]
