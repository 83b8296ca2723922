"""Work done in processes of their own: one per conversion, one per runtime visit, one per head-to-head pair.

`run_in_subprocess(task, ...)` writes the task (a JSON-able dict whose `kind` names a function of the task
table in `bench_tasks.TASKS`) beside its log, runs `bench_sd3.py --worker TASK_FILE` in a fresh Python process,
and returns an `Outcome`: the result dict the task wrote, or the reason it failed (the exception line of its
log, "killed by signal 9 (out of memory?)", a timeout), so that a runtime that cannot import or load becomes a
table row instead of stopping the run. Each task reports its own memory with `rss()` (after its imports: the
baseline) and `peak_rss()`, which in a fresh process is that task's own peak.
"""

import json
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
ENTRY_POINT = Path(__file__).resolve().with_name("bench_sd3.py")  # its hidden `--worker TASK_FILE` runs one task


def rss() -> int:
    """This process's resident memory now, in bytes."""
    import psutil

    return psutil.Process().memory_info().rss


def peak_rss() -> int:
    """This process's peak resident memory so far, in bytes."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


@dataclass
class Outcome:
    ok: bool
    result: dict = field(default_factory=dict)
    reason: str = ""
    seconds: float = 0.0


def run_in_subprocess(task: dict, *, logs: Path, name: str, timeout: float = 3 * 3600) -> Outcome:
    """Run `task` in a fresh Python process; its output goes to `logs/<name>.log`."""
    logs.mkdir(parents=True, exist_ok=True)
    task_path, result_path = logs / f"{name}.task.json", logs / f"{name}.result.json"
    result_path.unlink(missing_ok=True)
    task_path.write_text(json.dumps({**task, "result_path": str(result_path)}))
    start = time.perf_counter()
    with open(logs / f"{name}.log", "w") as log_file:
        try:
            process = subprocess.run(
                [sys.executable, str(ENTRY_POINT), "--worker", str(task_path)],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                cwd=ROOT,
            )
            returncode = process.returncode
        except subprocess.TimeoutExpired:
            returncode = f"timeout after {timeout:.0f} s"
    seconds = time.perf_counter() - start
    if returncode == 0 and result_path.is_file():
        return Outcome(True, json.loads(result_path.read_text()), seconds=seconds)
    return Outcome(False, reason=failure_reason(logs / f"{name}.log", returncode), seconds=seconds)


def failure_reason(log_path: Path, returncode: int | str) -> str:
    """The exception line of a failed worker's log (or its last line), for the table."""
    lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.split(":")[0].endswith(("Error", "Exception"))]
    detail = (errors or lines or ["no output"])[-1]
    if isinstance(returncode, int) and returncode < 0:
        detail = f"killed by signal {-returncode} (out of memory?); last output: {detail}"
    return f"{detail[:300]} (log: {log_path})"


def run_worker(task_path: str | Path, *, tasks: dict[str, Callable[[dict], dict]]) -> int:
    """The worker side of `run_in_subprocess`: run the task in `task_path`, write its result beside it."""
    task = json.loads(Path(task_path).read_text())
    result = tasks[task["kind"]](task)
    Path(task["result_path"]).write_text(json.dumps(result))
    return 0
