"""OpenVINO submodels of a converted folder: reading and compiling them, where they run, and the folder's
tokenizers and scheduler, all from local files.

Imports the layout, and the torch-free `sd3_tokenizers` and `sd3_scheduler` (no transformers, no diffusers).
"""

import copy
import os
import sys
import threading
import time
import weakref
from pathlib import Path

import numpy as np

from ..core.layout import (
    CONFIG_JSON,
    CONFIGURABLE_SUBMODELS,
    MODEL_INDEX,
    OV_MODEL_BIN,
    OV_MODEL_XML,
    TEXT_ENCODERS,
    check_bin_size,
    check_config_keys,
    incomplete_model_error,
    read_json,
)
from .scheduler import SCHEDULER_CLASS, FlowMatchEulerScheduler
from .tokenizers import load_tokenizer as load_text_tokenizer

VIRTUAL_DEVICES = ("AUTO", "HETERO", "MULTI", "BATCH")
MADV_DONTNEED = 4  # Linux's madvise advice: drop these pages; a later read of a file mapping reads the file again

# ----------------------------------------------------------------------------------------------------------
# One OpenVINO submodel, and where it runs
# ----------------------------------------------------------------------------------------------------------


class SharedCompilation:
    """The compiled models of one submodel graph by input shapes, shared by the submodel and its clones
    (`OVSubmodel.clone`): each compiled model holds a copy of the weights, whichever clone compiled it. The lock
    serializes shaping the shared graph and compiling it."""

    def __init__(self):
        self.compiled = {}  # shapes key -> openvino.CompiledModel, oldest first
        self.lock = threading.RLock()
        self.members = 1  # the submodel and its live clones

    def join(self, clone) -> None:
        """Count `clone` as a member until it is garbage-collected."""
        with self.lock:
            self.members += 1
        weakref.finalize(clone, self.leave)

    def leave(self) -> None:
        with self.lock:
            self.members -= 1


class OVSubmodel:
    """One converted submodel: its IR, its `config.json`, and a compiled model made on first use.

    Calling it with named numpy inputs runs one inference and returns the outputs by name.
    """

    def __init__(self, submodel_dir: Path, *, core, device: str = "CPU", ov_config: dict | None = None):
        model_dir = submodel_dir.parent
        xml_path, bin_path = submodel_dir / OV_MODEL_XML, submodel_dir / OV_MODEL_BIN
        for path in (xml_path, bin_path, submodel_dir / CONFIG_JSON):
            if not path.is_file():
                raise FileNotFoundError(incomplete_model_error(path, model_dir, "is missing"))
        check_bin_size(xml_path, bin_path, model_dir)
        self.config = read_json(submodel_dir / CONFIG_JSON, model_dir=model_dir)
        check_config_keys(self.config, submodel=submodel_dir.name, path=submodel_dir / CONFIG_JSON, model_dir=model_dir)
        started = time.perf_counter()
        try:
            self.model = core.read_model(xml_path, bin_path)
        except RuntimeError as error:
            reason = f"could not be read ({str(error).strip().splitlines()[0]})"
            raise ValueError(incomplete_model_error(xml_path, model_dir, reason)) from error
        self.name, self.xml_path, self.bin_path = submodel_dir.name, xml_path, bin_path
        self.core, self.device, self.ov_config = core, device, dict(ov_config or {})
        if self.ov_config.get("CACHE_MODE") == "OPTIMIZE_SIZE":  # a weightless blob loads its weights from this file
            self.ov_config.setdefault("WEIGHTS_PATH", str(bin_path))
        self.request = None
        self.read_time = time.perf_counter() - started  # seconds `read_model` took
        self.compilations = 0  # how many times `compile` has run (a new infer request each time)
        self.first_compile_time = self.compile_time = None  # seconds of the first and of the last `compile`
        self.shapes = None  # the input shapes of the last `reshape`
        self.states = {}  # state name -> value (None: empty) that every infer request starts with (LoRA adapters)
        self.max_compiled_shapes = 1  # infer requests kept compiled, by input shapes (see `reshape`)
        self._compiled = {}  # shapes key -> infer request, oldest first; holds `request` when it has one
        self.shared = SharedCompilation()  # the compiled models, shared with this submodel's clones (`clone`)

    def compile(self) -> None:
        """Make this submodel's infer request (with the states of `set_states`) on the compiled model of its shapes: the
        one its clones share when they have it, else compiled now for its device; the seconds a compilation took are
        `compile_time` (see `metrics.PerformanceMetrics.compile_times`)."""
        key = _shapes_key(self.shapes)
        self._compiled.pop(key, None)  # a request of these shapes is replaced, not kept twice
        with self.shared.lock:
            compiled = self.shared.compiled.pop(key, None)
            if compiled is None:
                while self.shared.compiled and len(self.shared.compiled) >= self.max_compiled_shapes:
                    self.shared.compiled.pop(next(iter(self.shared.compiled)))  # freed before the new one compiles
                if self.shapes is not None:
                    self.model.reshape(self.shapes)  # the graph is shared with the clones: shaped under their lock
                started = time.perf_counter()
                compiled = self.core.compile_model(self.model, self.device, self.ov_config)
                self.compile_time = time.perf_counter() - started
                if self.first_compile_time is None:
                    self.first_compile_time = self.compile_time
                self.compilations += 1
            self.shared.compiled[key] = compiled  # the most recent
        self.request = compiled.create_infer_request()
        self._compiled[key] = self.request
        self.write_states(self.states)

    def reshape(self, shapes: dict[str, list[int]]) -> bool:
        """Give inputs these shapes (static ones compile to faster code on CPU, and are needed on NPU); return True
        when the model compiles again on next use, False when it already runs these shapes. Up to
        `max_compiled_shapes` infer requests stay compiled, by shapes (each holds its own copy of the weights): a
        shape kept is reused at once; past the bound the oldest is dropped before the new one compiles."""
        key = _shapes_key(shapes)
        if key == _shapes_key(self.shapes) and self.request is not None:
            return False
        self.shapes = {name: list(dims) for name, dims in shapes.items()}
        self.request = self._compiled.pop(key, None)
        if self.request is not None:  # kept: most recent again, with the states set since it last ran
            self._compiled[key] = self.request
            self.write_states(self.states)
            return False
        while self._compiled and len(self._compiled) >= self.max_compiled_shapes:
            self._compiled.pop(next(iter(self._compiled)))  # freed before the new one compiles: one copy at a time
        with self.shared.lock:
            if key in self.shared.compiled:  # a clone compiled these shapes: run them at once
                self.compile()
                return False
            self.model.reshape(shapes)
        return True

    def release(self) -> None:
        """Drop every compiled model and infer request (their memory goes back once no clone runs them either); the
        model compiles again on next use."""
        self.request, self._compiled = None, {}
        with self.shared.lock:
            self.shared.compiled.clear()

    def clone(self) -> "OVSubmodel":
        """This submodel with its own infer requests on the same compiled models (one copy of the weights), for
        another thread: its states (LoRA adapters) are its own. Its graph is shared: change it (`check_unshared`) before
        cloning."""
        twin = copy.copy(self)
        twin.states, twin.request, twin._compiled = dict(self.states), None, {}
        twin.shapes = None if self.shapes is None else {name: list(dims) for name, dims in self.shapes.items()}
        self.shared.join(twin)
        if self.request is not None:
            twin.compile()  # a new infer request on the shared compiled model: nothing compiles
        return twin

    def check_unshared(self, change: str) -> None:
        """Raise a ValueError if this submodel's graph is shared with clones: `change` (e.g. "loading a LoRA adapter
        for new layers") would change it under them."""
        if self.shared.members > 1:
            raise ValueError(
                f"{change} changes the `{self.name}` graph, which this pipeline shares with {self.shared.members - 1} "
                "clone(s) (`clone()`). Do it before cloning, or on a pipeline loaded with `from_pretrained`."
            )

    def reload(self) -> None:
        """Read the IR again (dropping graph changes such as LoRA states, keeping `reshape`'s shapes); the model is
        compiled again on next use."""
        self.check_unshared("Reading the IR again (`unload_lora_weights`)")
        self.model, self.states, self.request, self._compiled = self.core.read_model(self.xml_path, self.bin_path), {}, None, {}
        self.shared = SharedCompilation()
        if self.shapes is not None:  # the IR's own inputs (inputs a graph change added come back with it)
            names = {name for model_input in self.model.inputs for name in model_input.get_names()}
            self.model.reshape({name: dims for name, dims in self.shapes.items() if name in names})

    def set_states(self, states: dict[str, np.ndarray | None]) -> None:
        """Keep `states` (name -> value; None empties a state) for every infer request, this one and later ones."""
        self.states.update(states)
        if self.request is not None:
            self.write_states(states)

    def write_states(self, states: dict[str, np.ndarray | None]) -> None:
        import openvino as ov

        by_name = {state.name: state for state in self.request.query_state()}
        for name, value in states.items():
            if value is None:
                by_name[name].reset()
            else:
                by_name[name].state = ov.Tensor(np.ascontiguousarray(value, dtype=np.float32))

    @property
    def state_names(self) -> list[str]:
        """The model's OpenVINO states (the transformer's `block_mask`, for skip-layer guidance)."""
        return [variable.get_info().variable_id for variable in self.model.get_variables()]

    def call_with_states(self, states: dict[str, np.ndarray], **inputs: np.ndarray) -> dict[str, np.ndarray]:
        """Run once with the named states set to `states`, then reset them to their initial values."""
        import openvino as ov

        if self.request is None:
            self.compile()
        by_name = {state.name: state for state in self.request.query_state()}
        for name, value in states.items():
            by_name[name].state = ov.Tensor(np.ascontiguousarray(value))
        try:
            return self(**inputs)
        finally:
            for name in states:
                by_name[name].reset()

    def __call__(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        if self.request is None:
            self.compile()
        results = self.request.infer(inputs, share_inputs=True, share_outputs=False)
        # An output can carry several tensor names after compilation; answer to each of them.
        return {name: value for output, value in results.items() for name in output.get_names()}


def _shapes_key(shapes: dict[str, list[int]] | None) -> tuple | None:
    """A hashable key of input shapes (None: the IR's own)."""
    return None if shapes is None else tuple(sorted((name, tuple(dims)) for name, dims in shapes.items()))


def device_for(device: str | dict[str, str], submodel: str) -> str:
    """The device of `submodel`: `device` itself, or its entry in a per-submodel dict (CPU when unnamed)."""
    return device.get(submodel, "CPU") if isinstance(device, dict) else device


def check_devices(device: str | dict[str, str], *, available: list[str]) -> None:
    """Name an unknown submodel or an unavailable device before OpenVINO fails deep inside compilation."""
    if isinstance(device, dict) and set(device) - set(CONFIGURABLE_SUBMODELS):
        unknown = sorted(set(device) - set(CONFIGURABLE_SUBMODELS))
        raise ValueError(f"`device` names unknown submodels {unknown}; use {list(CONFIGURABLE_SUBMODELS)}.")
    if not isinstance(device, (str, dict)):
        raise TypeError(f"`device` has to be a str such as 'CPU' or a dict by submodel but is {device!r}.")
    for submodel, name in (device.items() if isinstance(device, dict) else [("all submodels", device)]):
        if not isinstance(name, str):
            raise TypeError(f"`device` for {submodel} has to be a str such as 'CPU' but is {name!r}.")
        physical = name.split(":")[-1].split(",") if name.startswith(VIRTUAL_DEVICES) else [name]
        missing = [part for part in physical if part and part.split(".")[0] not in {d.split(".")[0] for d in available}]
        if missing and name not in VIRTUAL_DEVICES:
            raise ValueError(f"`device` {name!r} for {submodel} is not available on this machine; available: {available + ['AUTO']}.")


def submodel_ov_config(ov_config: dict | None, *, submodel: str, device: str, cache_dir: Path | None) -> dict:
    """OpenVINO properties of one submodel: `ov_config` (shared, or its entry when keyed by submodel name),
    the compiled-model cache (weightless on CPU: a few MB a model instead of a copy of its weights), and f32 for text encoders on a GPU (they lose accuracy in f16, and run once a prompt)."""
    ov_config = ov_config or {}
    per_submodel = bool(ov_config) and set(ov_config) <= set(CONFIGURABLE_SUBMODELS)
    config = dict(ov_config.get(submodel, {}) if per_submodel else ov_config)
    if cache_dir is not None:
        config.setdefault("CACHE_DIR", str(cache_dir))
        if device == "CPU":  # weightless: the blob holds the compiled graph and points into the IR for the weights
            config.setdefault("CACHE_MODE", "OPTIMIZE_SIZE")
    if submodel in TEXT_ENCODERS and "GPU" in device:
        config.setdefault("INFERENCE_PRECISION_HINT", "f32")
    return config


def release_file_pages(path: Path) -> int:
    """Drop from this process's RSS the pages of every read-only memory mapping of the file `path`; return the bytes
    those mappings span (0 where there are none, and on systems other than Linux, where this does nothing).

    OpenVINO memory-maps `openvino_model.bin`. On a submodel's first inference the CPU plugin copies every weight into
    buffers of its own (repacked, in its inference precision), and the file pages it read stay resident as clean
    duplicates, nearly the whole file (docs/memory.md has the figures). `madvise(MADV_DONTNEED)` hands them back
    to the page cache; should OpenVINO read the mapping again, the kernel reads the file again (a read-only mapping
    holds nothing else, so nothing is lost).
    """
    if not sys.platform.startswith("linux"):
        return 0
    import ctypes

    madvise = ctypes.CDLL(None, use_errno=True).madvise
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    target, released = str(Path(path).resolve()), 0
    with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
        for line in maps:  # "start-end perms offset dev inode path"
            fields = line.rstrip("\n").split(maxsplit=5)
            if len(fields) == 6 and fields[5] == target and "w" not in fields[1]:
                start, end = (int(address, 16) for address in fields[0].split("-"))
                if madvise(start, end - start, MADV_DONTNEED) == 0:
                    released += end - start
    return released


def trim_heap() -> None:
    """Hand the C heap's free memory back to the OS (glibc's `malloc_trim`; nothing elsewhere). Memory OpenVINO
    frees with a compiled model otherwise stays in this process's heap, and its RSS, for later allocations."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc
            pass


def physical_memory() -> int | None:
    """This machine's physical memory in bytes, or None where the OS does not say (then no batch is refused)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


# ----------------------------------------------------------------------------------------------------------
# Loading the folder's tokenizers and scheduler (local files only)
# ----------------------------------------------------------------------------------------------------------


def load_tokenizer(model_dir: Path, *, name: str):
    """The tokenizer saved in `model_dir / name`, read from local files only, without transformers
    (`sd3_tokenizers.TextTokenizer`: the same ids as transformers' tokenizer)."""
    tokenizer_dir = model_dir / name
    if not tokenizer_dir.is_dir():
        raise FileNotFoundError(incomplete_model_error(tokenizer_dir, model_dir, "is missing"))
    try:
        return load_text_tokenizer(model_dir, name=name)
    except ValueError as error:
        reason = f"could not be read as a tokenizer ({type(error).__name__}: {str(error).strip().splitlines()[0][:300]})"
        raise ValueError(incomplete_model_error(tokenizer_dir, model_dir, reason)) from error


def load_scheduler(model_dir: Path, *, model_index: dict):
    """The flow-matching scheduler named in `model_index.json` (`sd3_scheduler.FlowMatchEulerScheduler`, diffusers'
    `FlowMatchEulerDiscreteScheduler` in numpy), configured from `model_dir / "scheduler"`."""
    entry = model_index.get("scheduler")
    class_name = entry[1] if isinstance(entry, list) and len(entry) == 2 else None
    if not isinstance(class_name, str):
        reason = f"names no diffusers scheduler (its `scheduler` entry is {entry!r})"
        raise ValueError(incomplete_model_error(model_dir / MODEL_INDEX, model_dir, reason))
    if class_name != SCHEDULER_CLASS:
        raise ValueError(
            f"`{model_dir / MODEL_INDEX}` names the scheduler {class_name!r}; this runtime runs SD3's {SCHEDULER_CLASS!r} "
            f"only. Set the `scheduler` entry to [\"diffusers\", \"{SCHEDULER_CLASS}\"]."
        )
    return FlowMatchEulerScheduler.from_pretrained(model_dir)
