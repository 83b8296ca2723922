"""The folder rules of `sd3_openvino`: its folders are layers, and imports point down.

Bottom to top: `core` (standard library only) < `runtime` (torch-free) < `export` (needs torch) < `demo`, then the
faces users import: `sd3_helper` < `gradio_helper` < `notebook_utils`. `export` and `demo` both sit on `runtime`:
the demo may reach the exporter from its command line only (`demo/cli.py`), and only inside functions, so that
building a demo never loads torch; `export` never imports `demo`. Every import counts, at module level or inside a
function, relative imports resolved. All checks read source (AST) except the fresh-interpreter ones."""

import ast
import functools
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "sd3_openvino"
LAYERS = ["core", "runtime", "export", "demo"]  # the package's folders, bottom to top
FACES = ["sd3_helper", "gradio_helper", "notebook_utils"]  # top-level files, above the package, bottom to top
DEMO_TO_EXPORT = {f"{PACKAGE}.demo.cli"}  # the demo modules that may import `export`: lazily only
# The runtime modules that may import `export` lazily: `load_ip_adapter` takes an adapter's source as diffusers does, and
# converting it needs torch (a converted folder loads without).
RUNTIME_TO_EXPORT = {f"{PACKAGE}.runtime.ip_adapter_api"}
HEAVY = {"torch", "diffusers", "transformers", "nncf", "peft", "accelerate", "optimum"}  # what the runtime leaves out
# (runtime file, function, package): why that function may import `package` when it is called
RUNTIME_LAZY_HEAVY = {
    ("arrays.py", "to_torch", "torch"): "hands torch tensors back when a user passed torch objects (as diffusers)",
    ("image_processing.py", "ImageProcessor.postprocess", "torch"): "`output_type='pt'` asks for a torch tensor",
    ("noise.py", "_randn_one", "torch"): "draws with a user's `torch.Generator` (the same numbers as diffusers)",
    ("lora.py", "read_lora_state_dict", "diffusers"): "reads LoRA files with diffusers' reader (every key format it knows)",
    ("lora.py", "peft_state_dict", "diffusers"): "diffusers' key conversions, as its LoRA loaders make them",
    ("lora.py", "empty_model", "accelerate"): "builds the model's layers without weights (and imports its library)",
    ("lora.py", "inject_lora", "diffusers"): "diffusers' SD3 LoRA loaders give the layers and their scalings",
    ("lora.py", "inject_lora", "transformers"): "quiets transformers' logger while they run",
    ("lora.py", "read_lora_layers", "peft"): "peft's layer class, to find the layers the LoRA adapts",
    ("lora_formats.py", "convert_community_lora", "torch"): "Kohya / ComfyUI LoRAs arrive as torch tensors (read for diffusers' loaders)",
}


# -- Reading the imports ---------------------------------------------------------------------------------------


def module_name(path: Path) -> str:
    """`sd3_openvino/runtime/pipeline.py` -> `sd3_openvino.runtime.pipeline`; `.../__init__.py` -> the package."""
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.cache
def project_files() -> dict[str, Path]:
    """Every module of the package, and the faces: {dotted name: path}."""
    paths = [*sorted((REPO_ROOT / PACKAGE).rglob("*.py")), *(REPO_ROOT / f"{face}.py" for face in FACES)]
    return {module_name(path): path for path in paths}


def resolve(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    """The absolute module a `from ... import` reads from (relative levels resolved against `importer`)."""
    if node.level == 0:
        return node.module
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imports_of(path: Path, importer: str | None = None) -> list[dict]:
    """Every import in the file of module `importer`: {module, names, function (None at module level), line}."""
    importer, is_package = importer or module_name(path), path.name == "__init__.py"
    found = []

    def visit(node: ast.AST, function: str | None, scope: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(child, f"{scope}{child.name}", f"{scope}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, function, f"{scope}{child.name}.")
            elif isinstance(child, ast.Import):
                found.extend({"module": alias.name, "names": [], "function": function, "line": child.lineno} for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                module, names = resolve(child, importer, is_package), [alias.name for alias in child.names]
                found.append({"module": module, "names": names, "function": function, "line": child.lineno})
                for name in names:  # `from . import noise` imports the module `noise`
                    if f"{module}.{name}" in project_files():
                        found.append({"module": f"{module}.{name}", "names": [], "function": function, "line": child.lineno})
            else:
                visit(child, function, scope)

    visit(ast.parse(path.read_text(encoding="utf-8")), None, "")
    return found


def project_module(module: str) -> str | None:
    """The project module `module` names (a face, the package, or one of its modules or folders), else None."""
    if module in FACES or module == PACKAGE or module.startswith(f"{PACKAGE}."):
        return module
    return None


def layer_of(module: str) -> int:
    """The layer's height: the package's folders 0-3 (its own `__init__` counts as `core`), the faces above."""
    if module in FACES:
        return len(LAYERS) + FACES.index(module)
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 else 0


def upward_imports(module: str, path: Path) -> list[str]:
    """The imports of `module` that point at a higher layer, or from the demo to export (allowed: the lazy imports of
    `DEMO_TO_EXPORT` and `RUNTIME_TO_EXPORT`)."""
    upward = []
    for found in imports_of(path, module):
        if (target := project_module(found["module"])) is None:
            continue
        to_export = target.startswith(f"{PACKAGE}.export")
        if to_export and module in DEMO_TO_EXPORT | RUNTIME_TO_EXPORT and found["function"] is not None:
            continue  # listed lazy imports of export
        if layer_of(target) <= layer_of(module) and not (to_export and module.startswith(f"{PACKAGE}.demo")):
            continue  # down, except demo -> export (the demo runs without torch)
        upward.append(f"line {found['line']}: {found['module']}" + (f" (in {found['function']})" if found["function"] else ""))
    return upward


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


# -- The rules ---------------------------------------------------------------------------------------------------

MODULES = project_files()


def test_every_package_folder_is_a_layer():
    folders = {path.name for path in (REPO_ROOT / PACKAGE).iterdir() if path.is_dir() and path.name != "__pycache__"}
    assert folders == set(LAYERS), f"add new folders of {PACKAGE} to LAYERS (bottom to top)"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module):
    upward = upward_imports(module, MODULES[module])
    assert not upward, f"{module} imports from a layer above it ({LAYERS} then {FACES}): {upward}"


def test_the_rule_finds_upward_and_allows_the_demo_cli_s_lazy_export(tmp_path):
    assert resolve(ast.parse("from ..core.layout import X").body[0], f"{PACKAGE}.runtime.pipeline", False) == f"{PACKAGE}.core.layout"
    assert resolve(ast.parse("from . import noise").body[0], f"{PACKAGE}.runtime", True) == f"{PACKAGE}.runtime"
    assert layer_of(f"{PACKAGE}.runtime.x") < layer_of(f"{PACKAGE}.export.x") < layer_of(f"{PACKAGE}.demo.x") < layer_of("sd3_helper")
    source = "from ..export.convert import convert_sd3\ndef main():\n    from ..export.convert import convert_sd3\n"
    (tmp_path / "demo.py").write_text(source)
    assert [line.split(":")[0] for line in upward_imports(f"{PACKAGE}.demo.cli", tmp_path / "demo.py")] == ["line 1"]
    assert len(upward_imports(f"{PACKAGE}.demo.ui", tmp_path / "demo.py")) == 2  # only the command line may
    (tmp_path / "runtime.py").write_text("def f():\n    from ..demo.ui import make_demo\n")
    assert upward_imports(f"{PACKAGE}.runtime.noise", tmp_path / "runtime.py") == [f"line 2: {PACKAGE}.demo.ui (in f)"]


@pytest.mark.parametrize("module", sorted(name for name in MODULES if layer_of(name) == 0))
def test_core_imports_only_the_standard_library(module):
    outside = [
        f"line {found['line']}: {found['module']}"
        for found in imports_of(MODULES[module])
        if found["module"].split(".")[0] not in sys.stdlib_module_names and not project_module(found["module"])
    ]
    assert not outside, f"{module} is in `core`, which imports the standard library only, but imports {outside}"


def runtime_heavy_imports() -> dict[tuple[str, str | None, str], int]:
    """{(runtime file, function or None, package): line} for every import of a `HEAVY` package in `runtime/`."""
    found = {}
    for path in sorted((REPO_ROOT / PACKAGE / "runtime").glob("*.py")):
        for entry in imports_of(path):
            if (package := entry["module"].split(".")[0]) in HEAVY:
                found.setdefault((path.name, entry["function"], package), entry["line"])
    return found


def test_runtime_imports_no_torch_at_module_level_and_lazily_only_where_listed():
    found = runtime_heavy_imports()
    module_level = [f"{file}:{line} {package}" for (file, function, package), line in found.items() if function is None]
    assert not module_level, f"runtime/ must import none of {sorted(HEAVY)} at module level: {module_level}"
    unlisted = [f"{file}:{line} {package} in {function}" for (file, function, package), line in found.items() if (file, function, package) not in RUNTIME_LAZY_HEAVY]
    assert not unlisted, f"new lazy imports in runtime/ (list each in RUNTIME_LAZY_HEAVY with the reason): {unlisted}"
    stale = sorted(set(RUNTIME_LAZY_HEAVY) - set(found))
    assert not stale, f"RUNTIME_LAZY_HEAVY lists imports that are gone: {stale}"


def test_no_import_cycle_among_the_project_modules():
    graph = {name: {found["module"] for found in imports_of(path) if found["module"] in MODULES} - {name} for name, path in MODULES.items()}
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_find_cycle_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


BENCHMARKS = sorted((REPO_ROOT / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("path", [*MODULES.values(), *BENCHMARKS], ids=lambda path: str(path.relative_to(REPO_ROOT)))
def test_no_private_names_borrowed(path):
    own = module_name(path) if path.parent != REPO_ROOT / "benchmarks" else path.stem
    lenders = set(MODULES) | {benchmark.stem for benchmark in BENCHMARKS}
    borrowed = [
        f"{found['module']}.{name}"
        for found in imports_of(path)
        if found["module"] in lenders and found["module"] != own
        for name in found["names"]
        if name.startswith("_") and not name.endswith("__")
    ]
    assert not borrowed, f"{path.name} imports private names {borrowed}; make them public in the lower module"


IMPORT_EACH_ALONE = """
import importlib, json, sys, traceback
sys.path.insert(0, ".")
own = lambda name: name.split(".")[0] in {"sd3_openvino", *FACES}
failures = {}
for module in MODULES:
    for name in [name for name in sys.modules if own(name)]:  # project code afresh, third-party modules kept
        del sys.modules[name]
    try:
        importlib.import_module(module)
    except BaseException:
        failures[module] = traceback.format_exc(limit=-3)
print(json.dumps(failures))
"""


def test_each_module_imports_alone_in_a_fresh_interpreter():
    """One interpreter imports each module in turn, with every project module forgotten before each (third-party
    libraries stay loaded: they are the slow part), so each one imports on its own."""
    code = f"FACES = {FACES!r}\nMODULES = {sorted(MODULES)!r}\n{IMPORT_EACH_ALONE}"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    failures = json.loads(result.stdout.strip().splitlines()[-1])
    assert not failures, "\n".join(f"import {module} failed:\n{error}" for module, error in failures.items())


FACE_PROBE = """
import json, sys
sys.path.insert(0, ".")
heavy = lambda: sorted({name.split(".")[0] for name in sys.modules} & HEAVY)
import sd3_helper
loaded = {"import sd3_helper": heavy()}
from sd3_helper import OVStableDiffusion3Pipeline
loaded["from sd3_helper import OVStableDiffusion3Pipeline"] = heavy()
print(json.dumps(loaded))
"""


def test_the_facade_and_its_pipeline_load_no_torch():
    code = f"HEAVY = set({sorted(HEAVY)!r})\n{FACE_PROBE}"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded == {statement: [] for statement in loaded}, f"these load heavy packages: {loaded}"


def test_every_name_in_sd3_helper_all_imports():
    sd3_helper = importlib.import_module("sd3_helper")
    missing = []
    for name in sd3_helper.__all__:
        try:
            getattr(sd3_helper, name)
        except (AttributeError, ImportError) as error:
            missing.append(f"{name}: {error}")
    assert not missing, f"sd3_helper.__all__ names that do not import: {missing}"
