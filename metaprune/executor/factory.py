"""``create_executor``: one entry point for every backend."""

from __future__ import annotations

from metaprune.errors import InvalidInputError, quote

from .api import Executor

__all__ = ["BACKENDS", "create_executor", "ray_available"]

BACKENDS = ("local", "ray")


def ray_available() -> bool:
    """Whether the optional Ray backend can be used (``pip install metaprune[ray]``)."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def create_executor(
    backend: str = "local",
    *,
    workers: int = 2,
    threads_per_worker: int = 1,
    ray_address: str | None = None,
    cancel_grace: float = 5.0,
) -> Executor:
    """An executor of the named backend.

    Args:
        backend: ``"local"`` (spawned worker processes) or ``"ray"`` (Ray tasks).
        workers: local: worker processes; ray: CPUs of a local Ray instance started when
            ``ray_address`` is ``None`` and Ray is not initialised yet.
        threads_per_worker: torch threads per task.
        ray_address: address of an existing Ray cluster (``"auto"``, ``"host:6379"``);
            ``None`` starts (or reuses) a local Ray instance.
        cancel_grace: seconds a cancelled task has to stop before it is killed.

    Raises:
        InvalidInputError: unknown backend, bad sizes, ``ray_address`` with the local
            backend, or the Ray backend without Ray installed.
    """
    if backend == "local":
        if ray_address is not None:
            raise InvalidInputError("ray_address is only meaningful with backend 'ray'")
        from .local import LocalExecutor

        return LocalExecutor(workers, threads_per_worker, cancel_grace=cancel_grace)
    if backend == "ray":
        if not ray_available():
            raise InvalidInputError(
                "the 'ray' backend needs Ray, which is not installed: "
                "pip install 'metaprune[ray]' (or use backend 'local')"
            )
        from .ray_backend import RayExecutor

        return RayExecutor(
            workers=workers,
            threads_per_worker=threads_per_worker,
            address=ray_address,
            cancel_grace=cancel_grace,
        )
    raise InvalidInputError(
        f"unknown executor backend {quote(backend)} (expected one of {list(BACKENDS)})"
    )
