"""Run a test body in a child process with a memory rlimit and a timeout.

Tests of hostile inputs must not take the test runner down when a check is missing: a
spec that really allocated 10^12 parameters would kill the machine, not fail a test.
:func:`run_bounded` runs ``function()`` from a Python file in a fresh interpreter whose
address space is capped (``RLIMIT_AS``; an over-allocation then fails inside the child)
and which is killed after ``timeout`` seconds, and reports what happened as plain data,
including the child's peak resident memory, so the test can assert it stayed bounded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["BoundedResult", "run_bounded"]

_MARK = "@@bounded-result@@"

_CHILD = f"""
import json, resource, runpy, sys, time, traceback
limit = int(sys.argv[3])
_, hard = resource.getrlimit(resource.RLIMIT_AS)
resource.setrlimit(resource.RLIMIT_AS, (limit, hard))  # soft: grandchildren may set their own
start = time.monotonic()
try:
    value = runpy.run_path(sys.argv[1])[sys.argv[2]]()
    result = {{"ok": True, "value": value}}
except BaseException as err:  # report everything, including MemoryError
    result = {{"ok": False, "error": "".join(traceback.format_exception(err))[-4000:]}}
result["max_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
result["seconds"] = time.monotonic() - start
print("\\n{_MARK}" + json.dumps(result, default=str))
"""

BoundedResult = dict[str, Any]


def run_bounded(
    script: str | os.PathLike[str],
    function: str,
    *,
    memory_bytes: int = 6 * 1024**3,
    timeout: float = 300.0,
    cwd: str | os.PathLike[str] | None = None,
) -> BoundedResult:
    """Run ``function()`` (no arguments, JSON-able return value) defined in the Python file
    ``script`` in a child process capped at ``memory_bytes`` of address space.

    Returns:
        ``{"ok": bool, "value": ..., "error": traceback text, "max_rss_bytes": int,
        "seconds": float, "returncode": int}``; ``ok`` is false if the function raised,
        the child died, or printed no result.

    Raises:
        subprocess.TimeoutExpired: the child ran longer than ``timeout`` (it is killed).
    """
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(Path(script).resolve()), function, str(memory_bytes)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith(_MARK)]
    if not lines:
        return {
            "ok": False,
            "error": f"child exited with {done.returncode} without a result: {done.stderr[-3000:]}",
            "returncode": done.returncode,
        }
    result: BoundedResult = json.loads(lines[-1][len(_MARK) :])
    result["returncode"] = done.returncode
    return result
