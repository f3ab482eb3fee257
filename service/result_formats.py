"""A succeeded job's result in the format a client asks for.

``safetensors`` (the default) is the pruned checkpoint itself. ``onnx`` and ``pt2`` are the
same model written by :mod:`metaprune.export` for serving stacks without metaprune: made
once per job and format, in a worker process through the executor (an exporter that
crashes takes a worker down, never the server), at the input shape the job pruned at, checked
against the PyTorch model there, and cached beside the checkpoint (``model.onnx`` +
``model.onnx.sha256``) until the job is deleted. Concurrent requests for the same file
wait for one conversion.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from metaprune.errors import InvalidInputError, quote
from metaprune.export import FORMATS as EXPORT_FORMATS
from service.errors import FailedPreconditionError

if TYPE_CHECKING:
    from metaprune.executor import Executor
    from metaprune.limits import Limits

__all__ = ["FORMATS", "EXPORT_TASK", "ResultFiles"]

FORMATS = ("safetensors", *EXPORT_FORMATS)
EXPORT_TASK = "service.job_task:run_export"


class ResultFiles:
    """The result file of a job in each format, converting (once) on demand."""

    def __init__(self, executor: Executor, limits: Limits, timeout: float = 3600.0) -> None:
        self.executor, self.limits, self.timeout = executor, limits, timeout
        self._lock = threading.Lock()
        self._locks: dict[tuple[str, str], threading.Lock] = {}

    def get(self, folder: Path, format: str, checkpoint_sha256: str) -> tuple[Path, str]:
        """``(path, sha256)`` of the result in ``format`` (``""`` = safetensors).

        Raises:
            InvalidInputError: an unknown format.
            FailedPreconditionError: the model cannot be exported in that format.
        """
        format = format or "safetensors"
        if format not in FORMATS:
            raise InvalidInputError(
                f"format must be one of {', '.join(FORMATS)} (found {quote(format, 40)})"
            )
        checkpoint = folder / "model.safetensors"
        if format == "safetensors":
            return checkpoint, checkpoint_sha256
        path, digest = folder / f"model.{format}", folder / f"model.{format}.sha256"
        with self._lock:
            lock = self._locks.setdefault((str(folder), format), threading.Lock())
        with lock:
            if not digest.exists():  # the digest is written last: its presence means done
                self._convert(checkpoint, path, digest, format)
        return path, digest.read_text().strip()

    def _convert(self, checkpoint: Path, path: Path, digest: Path, format: str) -> None:
        from metaprune.executor import TaskSpec

        args: dict[str, Any] = {
            "checkpoint": str(checkpoint), "out": str(path), "format": format,
            "limits": self.limits.to_dict(),
        }  # fmt: skip
        result = self.executor.submit(TaskSpec(EXPORT_TASK, args)).result(self.timeout)
        if not result.ok or result.value is None:
            raise FailedPreconditionError(
                f"the job's model cannot be exported as {format}: {result.error}"
            )
        tmp = digest.with_name(f".{digest.name}.tmp")
        tmp.write_text(str(result.value["sha256"]) + "\n")
        tmp.replace(digest)
