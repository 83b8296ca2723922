"""The project's modules form one-way layers: no import cycle, every import points down, no borrowed privates."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# Bottom to top. A module may import only modules before it in this list (functions' lazy imports included).
LAYERS = [
    "sd3_presets",
    "sd3_layout",
    "sd3_steps",
    "sd3_noise",
    "sd3_scheduler",
    "sd3_image_processing",
    "sd3_arrays",
    "sd3_vae_tiling",
    "sd3_tokenizers",
    "sd3_submodels",
    "sd3_lora",
    "sd3_previews",
    "sd3_runtime",
    "sd3_image_pipelines",
    "sd3_genai",
    "sd3_conversion",
    "sd3_quantization",
    "sd3_tiny_model",
    "sd3_helper",
    "gradio_helper",
    "notebook_utils",
]
BENCHMARKS = sorted(path.stem for path in (REPO_ROOT / "benchmarks").glob("*.py"))


def project_modules() -> list[str]:
    return sorted(path.stem for path in REPO_ROOT.glob("*.py"))


def imported_names(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names taken from it) for every import statement in the file, at any depth."""
    imports = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            imports += [(alias.name.split(".")[0], []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imports.append((node.module.split(".")[0], [alias.name for alias in node.names]))
    return imports


def project_imports(path: Path) -> set[str]:
    modules = set(project_modules())
    return {module for module, _ in imported_names(path) if module in modules} - {path.stem}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle in `graph` as a list of modules (first == last), or None."""
    state, stack = {}, []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for neighbour in sorted(graph.get(node, ())):
            if state.get(neighbour) == "open":
                return stack[stack.index(neighbour) :] + [neighbour]
            if neighbour not in state and (cycle := visit(neighbour)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_every_module_has_a_layer():
    assert set(project_modules()) == set(LAYERS), "add new top-level modules to LAYERS (bottom to top)"


def test_no_import_cycle_among_the_project_modules():
    graph = {module: project_imports(REPO_ROOT / f"{module}.py") for module in project_modules()}
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_find_cycle_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("module", LAYERS)
def test_imports_point_down(module):
    allowed = set(LAYERS[: LAYERS.index(module)])
    upward = project_imports(REPO_ROOT / f"{module}.py") - allowed
    assert not upward, f"{module} imports {sorted(upward)}, which sit above it in {LAYERS}"


@pytest.mark.parametrize("path", [*(REPO_ROOT / f"{m}.py" for m in LAYERS), *(REPO_ROOT / "benchmarks").glob("*.py")], ids=str)
def test_no_private_names_borrowed(path):
    modules = set(project_modules()) | set(BENCHMARKS)
    borrowed = [
        f"{module}.{name}"
        for module, names in imported_names(path)
        if module in modules and module != path.stem
        for name in names
        if name.startswith("_")
    ]
    assert not borrowed, f"{path.name} imports private names {borrowed}; make them public in the lower module"


@pytest.mark.parametrize("module", LAYERS)
def test_each_module_imports_alone_in_a_fresh_interpreter(module):
    code = f"import {module}"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
