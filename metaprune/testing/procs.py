"""Process helpers for tests that must leave no process behind (Linux ``/proc``)."""

from __future__ import annotations

import os
import time
from pathlib import Path

__all__ = ["alive", "descendants", "wait_gone"]


def _parents() -> dict[int, int]:
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(stat.parent.name)] = int(fields[1])
    return out


def descendants(pid: int | None = None) -> set[int]:
    """Pids of every live process below ``pid`` (default: this process)."""
    pid = os.getpid() if pid is None else pid
    parents = _parents()
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier and p not in found}
        found |= frontier
    return {p for p in found if alive(p)}


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its parent counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_gone(pids: set[int], timeout: float = 60.0) -> set[int]:
    """Wait up to ``timeout`` s for ``pids`` to exit; return those still alive."""
    deadline = time.monotonic() + timeout
    while (left := {p for p in pids if alive(p)}) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left
