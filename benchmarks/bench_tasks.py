"""What one worker process does: every kind of task `run_in_subprocess` can run, in the table `TASKS`.

Every visit of a runtime is a process of its own (`runtime_task`): its peak RSS is its own, only one runtime is
in memory at a time, and a peer that fails to import or load becomes a table row with the reason instead of
stopping the run. A visit loads and compiles (with a warm OpenVINO `CACHE_DIR`), warms up with a 2-step call,
then times one call of `--timed-steps` steps and three standalone transformer forwards; the first visit also
generates the full `--steps` image used for PSNR. Before it, `compile_probe_task` measures the compile time
without a cache and with an empty `CACHE_DIR` (cold). `matmul_peak_task` measures the machine's bf16 matmul
peak once per round, and `head_to_head_task` runs the pairs of `HEAD_TO_HEAD`.
"""

import shutil
import statistics
import time
from pathlib import Path

from bench_checkpoint import build_task, convert_task
from bench_process import peak_rss, rss
from bench_runtimes import make_runtime

# Head-to-head comparisons, each in one process (see `head_to_head_task`): (A, B, measure, pairs); the table
# shows A ÷ B, and the targets are judged on these ratios.
HEAD_TO_HEAD = (
    ("ours-fp16-genai-tokens", "genai-fp16", "step", 9),  # the same IR and the same work
    ("ours-fp16", "optimum-fp16", "step", 9),  # the same IR and the same work
    ("ours-fp16-static", "ours-fp16", "step", 9),  # what `pipe.reshape(...)` (static shapes) gains
    ("ours-fp16-static-genai-tokens", "genai-fp16", "step", 9),
    ("ours-int8-hybrid", "ours-fp16", "forward", 15),
    ("ours-int8-hybrid", "genai-fp16", "whole", 3),
    ("ours-fp16-genai-tokens", "genai-fp16", "whole", 3),
    # genai caches steps by default (TaylorSeer lite, 14 of 28 transformer calls); ours with the same cache:
    ("ours-int8-hybrid-taylorseer", "genai-fp16", "whole", 3),
    ("ours-fp16-genai-tokens-taylorseer", "genai-fp16", "whole", 3),
)
MATMUL_SIDE = 4096  # the bf16 peak is measured on a square matmul of this side


def matmul_peak_task(task: dict) -> dict:
    """bf16 matmul throughput (TFLOPS) of a MATMUL_SIDE^3 product in torch and in an OpenVINO MatMul model."""
    import numpy as np
    import openvino as ov
    import openvino.opset13 as opset
    import torch

    side, repeats = MATMUL_SIDE, 10
    flops = 2 * side**3
    a, b = torch.randn(side, side, dtype=torch.bfloat16), torch.randn(side, side, dtype=torch.bfloat16)
    times = []
    for index in range(repeats + 3):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    torch_tflops = flops / statistics.median(times[3:]) / 1e12

    # A FullyConnected layer, as the transformer's: f32 activations times constant weights, bf16 inside (AMX).
    parameter = opset.parameter([side, side], ov.Type.f32, name="x")
    weights = opset.constant(np.random.default_rng(0).standard_normal((side, side), dtype=np.float32))
    model = ov.Model([opset.matmul(parameter, weights, transpose_a=False, transpose_b=True)], [parameter])
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "bf16"})
    request, x = compiled.create_infer_request(), np.random.default_rng(1).standard_normal((side, side), dtype=np.float32)
    times = []
    for index in range(repeats + 3):
        start = time.perf_counter()
        request.infer({"x": x})
        times.append(time.perf_counter() - start)
    return {"torch_bf16_tflops": torch_tflops, "openvino_bf16_tflops": flops / statistics.median(times[3:]) / 1e12}


def compile_probe_task(task: dict) -> dict:
    """Compile times without a cache and with an empty `CACHE_DIR` (which this fills for the visits)."""
    runtime = make_runtime(task)
    runtime.imports()
    cache_dir = Path(task["cache_dir"])
    shutil.rmtree(cache_dir, ignore_errors=True)
    result = {}
    for kind, cache in (("no_cache", None), ("cold", cache_dir)):
        runtime.pipe = None  # free the previous load first
        runtime.load(cache)
        start = time.perf_counter()
        runtime.compile()
        result[f"compile_{kind}_s"] = time.perf_counter() - start
    return result


def runtime_task(task: dict) -> dict:
    """One visit of one runtime: load and compile (warm cache), warm up, one timed call, standalone forwards,
    and in the first visit the full image."""
    import numpy as np

    runtime = make_runtime(task)
    runtime.imports()
    result = {"baseline_rss": rss()}
    start = time.perf_counter()
    runtime.load(Path(task["cache_dir"]) if task["cache_dir"] else None)
    result["load_s"] = time.perf_counter() - start
    if runtime.compile is not None:
        start = time.perf_counter()
        runtime.compile()
        result["compile_warm_s"] = time.perf_counter() - start

    runtime.call(steps=2)  # warm-up: first-inference work (weight repacking, kernel selection) is not timed
    result.update(runtime.timed_call(task["timed_steps"]))
    if task["image_path"]:
        start = time.perf_counter()
        np.save(task["image_path"], np.asarray(runtime.call(steps=task["steps"]), dtype=np.float32))
        result["whole_image_measured_s"] = time.perf_counter() - start
    result["peak_rss"] = peak_rss()
    return result


def head_to_head_task(task: dict) -> dict:
    """Two runtimes in one process, measured alternately (A B, B A, A B, ...), `pairs` times.

    On a shared machine the speed drifts, by up to 2x over minutes on the 2-core VM this was written on; visits
    in separate processes see that drift as noise, while the two halves of a pair see the same speed. The ratio
    of each pair's times is robust; its median over pairs is reported. `measure` is `step` (median seconds of a
    call's steps), `forward` (one transformer infer on the inputs of a real step, our runtimes only) or `whole`
    (text encoding + all steps + VAE decode).
    """
    runtimes = [make_runtime(spec) for spec in task["pair"]]
    for runtime, spec in zip(runtimes, task["pair"]):
        runtime.imports()
        runtime.load(Path(spec["cache_dir"]) if spec["cache_dir"] else None)
        if runtime.compile is not None:
            runtime.compile()
        runtime.call(steps=2)  # warm-up, and the inputs a forward replays
    measure = task["measure"]
    if measure == "forward":
        replays = [runtime.instrument()[1] for runtime in runtimes]
        for runtime in runtimes:
            runtime.call(steps=2, output_type="latent")  # records the inputs of a real step
        measures = [lambda replay=replay: replay() for replay in replays]
    elif measure == "step":
        measures = [lambda runtime=runtime: statistics.median(runtime.step_times(task["timed_steps"])) for runtime in runtimes]
    else:
        measures = [runtime.whole_image for runtime in runtimes]
    seconds = [[], []]
    for pair in range(task["pairs"]):
        for index in (0, 1) if pair % 2 == 0 else (1, 0):
            seconds[index].append(measures[index]())
    ratios = [a / b for a, b in zip(*seconds)]
    return {"seconds": seconds, "ratios": ratios}


TASKS = {
    "build": build_task,
    "convert": convert_task,
    "matmul": matmul_peak_task,
    "compile_probe": compile_probe_task,
    "runtime": runtime_task,
    "head_to_head": head_to_head_task,
}
