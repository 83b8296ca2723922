"""Per-stage timings of each pipeline call, like openvino.genai's `get_performance_metrics()`: `PerformanceMetrics`
(the value a user reads), `MetricsRecorder` (what fills it during a call) and `PerformanceMetricsMixin`, which gives
the pipelines `get_performance_metrics`, `load_time` and the memory switch.

Recording reads `time.perf_counter` around what already runs: every submodel inference (the pipeline's
`run_submodel`, skip-layer passes included), each denoising step, each preview and the whole call; it changes no
image. A call's metrics live in a thread-local slot while it runs, so a preview drawn in another thread, or a call of
another thread, records nothing into it. Stdlib only.
"""

import copy
import functools
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Callable

TEXT_ENCODER_PREFIX = "text_encoder"
STAGE_OF_SUBMODEL = {
    "transformer": "transformer_times",
    "controlnet": "controlnet_times",
    "vae_decoder": "vae_decode_times",
    "vae_encoder": "vae_encode_times",
    "ip_image_encoder": "image_encoder_times",
    "ip_image_projection": "image_projection_times",
}


@dataclass
class PerformanceMetrics:
    """What one pipeline call spent where, in seconds (`peak_rss` in bytes). Lists hold one entry per call of the stage.

    The stages that run one after another (`text_encoder_times`, `step_times`, `vae_encode_times`,
    `vae_decode_times`) add up to less than `total_time`: the rest is argument checks, tokenizing and numpy pre- and
    post-processing. Transformer inferences and previews run inside the steps; compilations inside the inference that
    needed them (and are not counted in its infer time).
    """

    load_time: float = 0.0  # reading the folder, and the first compilation of each submodel (at load or on first use)
    compile_times: dict[str, float] = field(default_factory=dict)  # submodel -> compile seconds during this call
    text_encoder_times: dict[str, list[float]] = field(default_factory=dict)  # encoder -> each infer (none: cached prompt)
    step_times: list[float] = field(default_factory=list)  # wall time of each denoising step that ran
    transformer_times: list[float] = field(default_factory=list)  # each transformer infer (skip-layer passes too)
    controlnet_times: list[float] = field(default_factory=list)  # each ControlNet infer (inside the steps)
    image_encoder_times: list[float] = field(default_factory=list)  # each IP-Adapter image encoder infer (none: cached image)
    image_projection_times: list[float] = field(default_factory=list)  # each IP-Adapter resampler infer (inside the steps)
    vae_encode_times: list[float] = field(default_factory=list)  # each VAE encoder infer (one per tile when tiled)
    vae_decode_times: list[float] = field(default_factory=list)  # each VAE decoder infer (one per tile when tiled)
    preview_times: list[float] = field(default_factory=list)  # each `preview_images` during the call
    total_time: float = 0.0  # wall time of the whole call
    num_steps: int = 0  # the denoising steps that ran (fewer than asked when interrupted or at a strength below 1)
    peak_rss: int | None = None  # the process's peak resident memory after the call; only with `enable_memory_metrics()`

    @property
    def mean_step_time(self) -> float:
        """The mean seconds of a denoising step (0.0 when none ran)."""
        return sum(self.step_times) / len(self.step_times) if self.step_times else 0.0

    def summary(self) -> str:
        """One line, e.g. "28 steps in 41.2 s (1.47 s/step), text 0.400 s, decode 2.10 s, total 44.0 s": the stages
        that ran, and the peak memory when recorded."""
        steps = f"{self.num_steps} steps in {seconds_text(sum(self.step_times))} s ({seconds_text(self.mean_step_time)} s/step)"
        stages = {
            "text": [seconds for times in self.text_encoder_times.values() for seconds in times],
            "controlnet": self.controlnet_times,
            "image prompt": self.image_encoder_times + self.image_projection_times,
            "encode": self.vae_encode_times,
            "decode": self.vae_decode_times,
            "previews": self.preview_times,
            "compile": list(self.compile_times.values()),
        }
        parts = [steps] + [f"{name} {seconds_text(sum(times))} s" for name, times in stages.items() if times]
        parts.append(f"total {seconds_text(self.total_time)} s")
        if self.peak_rss is not None:
            parts.append(f"peak RSS {self.peak_rss / 2**30:.2f} GiB")
        return ", ".join(parts)

    def as_dict(self) -> dict:
        """The fields as plain dicts, lists and numbers (JSON-ready)."""
        return asdict(self)


def seconds_text(seconds: float) -> str:
    """Seconds for `summary`: one decimal from 10 s up, else three significant digits ("41.2", "1.47", "0.0213")."""
    return f"{seconds:.1f}" if seconds >= 10 else f"{seconds:#.3g}"


def peak_rss() -> int | None:
    """This process's peak resident memory in bytes: `VmHWM` of /proc/self/status on Linux, else `getrusage`'s
    `ru_maxrss` (kilobytes on Linux, bytes on macOS); None where neither exists."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import resource
    except ImportError:  # Windows
        return None
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024


class MetricsRecorder:
    """Fills the `PerformanceMetrics` of the call running in this thread, and keeps the last finished call's.

    `read_time`: the seconds it took to read the pipeline's folder (see `PerformanceMetricsMixin.load_time`).
    `track_memory`: fill `peak_rss` after each call.
    """

    def __init__(self, *, read_time: float = 0.0, track_memory: bool = False):
        self.read_time = read_time
        self.track_memory = track_memory
        self.last: PerformanceMetrics | None = None  # the last call that finished without an error
        self._local = threading.local()  # `metrics`: this thread's running call; `previews`: open `preview` blocks

    @property
    def current(self) -> PerformanceMetrics | None:
        """The metrics of the call running in this thread, or None."""
        return getattr(self._local, "metrics", None)

    @contextmanager
    def call(self):
        """Record one call. A call inside another (an image pipeline's `generate` calling the text-to-image one) adds
        to the outer one. A call that raises leaves `last` as it was."""
        if self.current is not None:
            yield
            return
        metrics, started = PerformanceMetrics(), time.perf_counter()
        self._local.metrics = metrics
        try:
            yield
        finally:
            self._local.metrics = None
        metrics.total_time = time.perf_counter() - started
        metrics.num_steps = len(metrics.step_times)
        if self.track_memory:
            metrics.peak_rss = peak_rss()
        self.last = metrics

    @contextmanager
    def infer(self, submodel):
        """Time one inference of `submodel` (an `OVSubmodel`: its `name`, `compilations`, `compile_time`); a
        compilation it triggers goes to `compile_times`, not to the inference."""
        metrics = self.current
        if metrics is None:
            yield
            return
        compilations, started = submodel.compilations, time.perf_counter()
        yield
        seconds = time.perf_counter() - started
        if submodel.compilations != compilations:
            metrics.compile_times[submodel.name] = metrics.compile_times.get(submodel.name, 0.0) + submodel.compile_time
            seconds = max(seconds - submodel.compile_time, 0.0)
        if getattr(self._local, "previews", 0):
            return  # counted in `preview_times`
        if submodel.name.startswith(TEXT_ENCODER_PREFIX):
            metrics.text_encoder_times.setdefault(submodel.name, []).append(seconds)
        elif submodel.name in STAGE_OF_SUBMODEL:
            getattr(metrics, STAGE_OF_SUBMODEL[submodel.name]).append(seconds)

    @contextmanager
    def preview(self):
        """Time one preview into `preview_times`; the inferences inside it count there only."""
        metrics = self.current
        if metrics is None:
            yield
            return
        self._local.previews = getattr(self._local, "previews", 0) + 1
        started = time.perf_counter()
        try:
            yield
        finally:
            self._local.previews -= 1
        metrics.preview_times.append(time.perf_counter() - started)

    def add_step(self, seconds: float) -> None:
        """Record one denoising step's wall time."""
        metrics = self.current
        if metrics is not None:
            metrics.step_times.append(seconds)


def records_call(method: Callable) -> Callable:
    """Decorate a pipeline's `generate` so that its whole call is recorded by `self.metrics_recorder`."""

    @functools.wraps(method)
    def recorded(self, *args, **kwargs):
        with self.metrics_recorder.call():
            return method(self, *args, **kwargs)

    return recorded


class PerformanceMetricsMixin:
    """`get_performance_metrics`, `load_time` and the memory switch for a pipeline with a `metrics_recorder` and
    `submodels`."""

    metrics_recorder: MetricsRecorder
    submodels: dict

    @property
    def load_time(self) -> float:
        """Seconds to get this pipeline ready: reading its folder, plus the first compilation of each submodel (in
        `from_pretrained`, or on first use with `compile=False`)."""
        compiles = [submodel.first_compile_time for submodel in self.submodels.values()]
        return self.metrics_recorder.read_time + sum(seconds for seconds in compiles if seconds is not None)

    def get_performance_metrics(self) -> PerformanceMetrics:
        """The `PerformanceMetrics` of this pipeline's last call that finished (a copy; a call that raised leaves the
        previous one), with `load_time`; before any call, only `load_time` is set.

            pipe(prompt, num_inference_steps=28)
            print(pipe.get_performance_metrics().summary())
        """
        metrics = copy.deepcopy(self.metrics_recorder.last) or PerformanceMetrics()
        metrics.load_time = self.load_time
        return metrics

    def enable_memory_metrics(self) -> None:
        """Fill `peak_rss` after each call: the process's peak resident memory so far (Linux `VmHWM`), which covers
        the call and everything before it in this process, loading included."""
        self.metrics_recorder.track_memory = True

    def disable_memory_metrics(self) -> None:
        """Leave `peak_rss` None (the default)."""
        self.metrics_recorder.track_memory = False
