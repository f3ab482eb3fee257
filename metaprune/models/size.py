"""The size of an architecture spec, known before anything real is allocated.

A spec is a few hundred bytes of client data that can ask for a 10^9-output classifier or
a stage of 10^8 blocks. :func:`spec_size` measures it without allocating real memory:

1. The model is built on the **meta device** (shapes only, no data) under a *build guard*:
   global parameter/buffer registration hooks count tensors, elements and time while the
   constructor runs, and stop it with :class:`~metaprune.errors.LimitExceededError` as soon
   as it passes ``Limits.max_params`` (elements), ``max_tensors`` or ``max_build_seconds``.
   So even the meta build of an absurd spec is cut short after a bounded amount of work.
2. MACs, when the input shape is known, come from a forward pass on the meta device.
3. A few constructors cannot run on the meta device (torchvision's RegNets compute their
   widths with tensors and ``.tolist()``). Those are built in a **child process** under an
   address-space rlimit (``RLIMIT_AS``) and a timeout, with the same guard, and only their
   counts come back. Nothing unbounded ever runs in the caller's process. The child finds
   the constructor by importing the module that registered it (registration at import, as
   in timm), so a model registered inside a function cannot take this path.

Constructor failures on odd kwargs (division by zero, assertions, torch runtime errors)
leave as :class:`~metaprune.models.SpecError` with a one-line reason.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.nn.modules.module import (
    register_module_buffer_registration_hook,
    register_module_parameter_registration_hook,
)

from metaprune.errors import (
    InvalidInputError,
    LimitExceededError,
    MetapruneError,
    describe_exception,
    quote,
)
from metaprune.limits import DEFAULT_LIMITS, Limits

if TYPE_CHECKING:
    from metaprune.models.spec import ArchSpec

__all__ = ["SpecSize", "build_guard", "construct", "spec_size"]

# the child process imports torch, torchvision and metaprune (~4 GiB of address space on
# a CPU build; CUDA builds map far more) before it builds anything; the model's bytes come
# on top of that. The parent has imported the same, so its own address space is the guide.
_CHILD_BASE_BYTES = 5 * 1024**3
_CHILD_BYTES_PER_ELEMENT = 8  # float32 weights + initialisation temporaries


@dataclasses.dataclass(frozen=True)
class SpecSize:
    """What a spec costs.

    Attributes:
        params: parameters of the built model (shared parameters counted once).
        macs: multiply-accumulates of one forward pass of one input, or ``None`` if no
            input shape was given (Torch-Pruning's counter, as ``measure_cost``).
    """

    params: int
    macs: int | None = None


# ----------------------------------------------------------------------------- build guard


class _Guard:
    def __init__(self, limits: Limits, what: str) -> None:
        self.limits, self.what = limits, what
        self.elements = self.tensors = 0
        self.start = time.monotonic()

    def add(self, tensor: Tensor, replaces: Tensor | None = None) -> None:
        """Count ``tensor``; one it ``replaces`` (same module, same name) stops counting,
        so a plan replay resizing a model's tensors counts the resized model once."""
        if replaces is None:
            self.tensors += 1
        self.elements += int(tensor.numel()) - (0 if replaces is None else int(replaces.numel()))
        limits = self.limits
        if self.elements > limits.max_params:
            raise LimitExceededError(
                "max_params", limits.max_params, self.elements,
                f"{self.what} (parameter and buffer elements, counting stopped here)",
            )  # fmt: skip
        if self.tensors > limits.max_tensors:
            raise LimitExceededError("max_tensors", limits.max_tensors, self.tensors, self.what)
        elapsed = time.monotonic() - self.start
        if elapsed > limits.max_build_seconds:
            raise LimitExceededError(
                "max_build_seconds", limits.max_build_seconds, round(elapsed, 1), self.what
            )


_LOCAL = threading.local()  # the guard is per thread: other threads build unguarded


def _on_registration(module: nn.Module, name: str, tensor: Tensor | None) -> None:
    guard: _Guard | None = getattr(_LOCAL, "guard", None)
    if guard is not None and tensor is not None:  # called before the tensor is stored
        own = module._parameters.get(name, module._buffers.get(name))
        guard.add(tensor, own if isinstance(own, Tensor) else None)


register_module_parameter_registration_hook(_on_registration)
register_module_buffer_registration_hook(_on_registration)


@contextlib.contextmanager
def build_guard(limits: Limits = DEFAULT_LIMITS, what: str = "model") -> Iterator[None]:
    """Within this block (on this thread), every parameter or buffer a module registers is
    counted against ``limits``: :class:`LimitExceededError` stops the constructor early."""
    previous = getattr(_LOCAL, "guard", None)
    _LOCAL.guard = _Guard(limits, what)
    try:
        yield
    finally:
        _LOCAL.guard = previous


def _is_meta_failure(err: BaseException) -> bool:
    """Whether ``err`` says the constructor needs real data (not that the kwargs are bad)."""
    text = str(err).lower()
    return isinstance(err, NotImplementedError) or (
        isinstance(err, RuntimeError) and "meta" in text
    )


def construct(
    spec: ArchSpec,
    device: torch.device | str | None = None,
    limits: Limits | None = DEFAULT_LIMITS,
) -> nn.Module:
    """Build ``spec`` (on ``device``) under the build guard (none if ``limits`` is ``None``);
    the one place spec constructors run.

    Raises:
        LimitExceededError: the constructor passed a limit (stopped early).
        SpecError: the constructor or the channel plan failed (one-line reason).
        NotImplementedError/RuntimeError: only on the meta device, when the constructor
            needs real data (callers fall back to a bounded child process).
    """
    from metaprune.models.channel_plan import apply_channel_plan
    from metaprune.models.registry import create_model
    from metaprune.models.spec import SpecError

    what = f"spec {quote(spec.name)}"
    guard = build_guard(limits, what) if limits is not None else contextlib.nullcontext()
    with guard:
        try:
            with torch.device(device) if device is not None else contextlib.nullcontext():
                model = create_model(spec.name, **spec.kwargs)
            if spec.channel_plan is not None:
                apply_channel_plan(model, spec.channel_plan)
        except MetapruneError:
            raise
        except (NotImplementedError, RuntimeError) as err:
            if str(device) == "meta" and _is_meta_failure(err):
                raise
            if limits is not None and "allocate" in str(err).lower():
                raise LimitExceededError(
                    "max_params", limits.max_params, limits.max_params + 1,
                    f"{what} (building it ran out of its memory budget)",
                ) from None  # fmt: skip
            raise SpecError(f"{what}: cannot build it: {describe_exception(err)}") from None
        except MemoryError:
            raise SpecError(f"{what}: cannot build it: out of memory") from None
        except Exception as err:  # noqa: BLE001 (constructor errors on odd kwargs: any type)
            raise SpecError(f"{what}: cannot build it: {describe_exception(err)}") from None
    if not isinstance(model, nn.Module):
        raise SpecError(f"{what}: the constructor returned {type(model).__name__}, not a module")
    return model


# ----------------------------------------------------------------------------- sizing


def _check_input_shape(input_shape: Any, limits: Limits) -> tuple[int, ...] | None:
    if input_shape is None:
        return None
    if not isinstance(input_shape, (tuple, list)) or not 1 <= len(input_shape) <= 4:
        raise InvalidInputError(
            f"input_shape must be a tuple of 1-4 ints such as (C, H, W) (found {quote(input_shape)})"
        )
    for dim in input_shape:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise InvalidInputError(
                f"input_shape must hold positive ints (found {quote(tuple(input_shape))})"
            )
        limits.check("max_image_size", dim, f"input shape {tuple(input_shape)}")
    return tuple(input_shape)


def _count_params(model: nn.Module) -> int:
    return sum(int(p.numel()) for p in model.parameters())  # parameters() dedups shared ones


def _count_macs(model: nn.Module, input_shape: tuple[int, ...], device: str, what: str) -> int:
    import torch_pruning as tp

    example = torch.zeros((1, *input_shape), device=device)
    try:
        macs, _ = tp.utils.count_ops_and_params(model.eval(), example)
    except MetapruneError:
        raise
    except Exception as err:  # noqa: BLE001 (forward errors of any type mean a bad shape)
        if device == "meta" and _is_meta_failure(err):
            raise
        raise InvalidInputError(
            f"{what} does not accept inputs of shape {input_shape}: {describe_exception(err)}"
        ) from None
    return int(macs)


def _measure(
    spec: ArchSpec, input_shape: tuple[int, ...] | None, device: str, limits: Limits
) -> SpecSize:
    model = construct(spec, device, limits)
    if device != "meta":
        model = model.to("meta")  # the forward pass for MACs needs no data
    macs = None
    if input_shape is not None:
        macs = _count_macs(model, input_shape, "meta", f"spec {quote(spec.name)}")
    return SpecSize(params=_count_params(model), macs=macs)


def spec_size(
    spec: ArchSpec,
    input_shape: tuple[int, ...] | None = None,
    *,
    limits: Limits = DEFAULT_LIMITS,
) -> SpecSize:
    """Parameters (and, given ``input_shape`` ``(C, H, W)``, MACs) of ``spec``'s model,
    computed without allocating real memory (see the module doc).

    The measurement itself is bounded by ``limits``: a spec over ``max_params``,
    ``max_tensors`` or ``max_build_seconds`` stops early with :class:`LimitExceededError`.
    Use :func:`metaprune.limits.check_spec` to also compare the result with the limits.

    Raises:
        LimitExceededError: see above; or an input dimension over ``max_image_size``.
        SpecError: the constructor fails with these kwargs / this channel plan.
        InvalidInputError: the model does not accept ``input_shape``.
    """
    from metaprune.models.spec import ArchSpec

    if not isinstance(spec, ArchSpec):
        raise InvalidInputError(f"spec must be an ArchSpec (found {type(spec).__name__})")
    shape = _check_input_shape(input_shape, limits)
    key = json.dumps(spec.to_json(), sort_keys=True)
    return _cached_size(key, shape, limits)


@functools.lru_cache(maxsize=256)
def _cached_size(key: str, shape: tuple[int, ...] | None, limits: Limits) -> SpecSize:
    # errors are not cached (lru_cache only stores returned values)
    from metaprune.models.spec import ArchSpec

    spec = ArchSpec.from_json(key)
    try:
        return _measure(spec, shape, "meta", limits)
    except (NotImplementedError, RuntimeError) as err:
        if not _is_meta_failure(err):
            raise
    return _size_in_child(spec, shape, limits)


# ----------------------------------------------------------------------------- child process

_CHILD_CODE = """
import json, resource, sys
limit = int(sys.argv[1])
_, hard = resource.getrlimit(resource.RLIMIT_AS)
if hard != resource.RLIM_INFINITY:
    limit = min(limit, hard)
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from metaprune.models.size import _child_main
_child_main()
"""


def _child_main() -> None:
    """Entry point of the sizing child: request JSON on stdin, one JSON line on stdout."""
    from metaprune.models.spec import ArchSpec

    torch.set_num_threads(1)
    request = json.loads(sys.stdin.read())
    with contextlib.suppress(ImportError):
        importlib.import_module(request["module"])  # registers the model
    limits = Limits.from_dict(request["limits"])
    shape = tuple(request["input_shape"]) if request["input_shape"] is not None else None
    try:
        size = _measure(ArchSpec.from_json(request["spec"]), shape, "cpu", limits)
        reply: dict[str, Any] = {"ok": dataclasses.asdict(size)}
    except LimitExceededError as err:
        reply = {"limit": [err.limit, err.value, err.requested], "message": str(err)}
    except MetapruneError as err:
        reply = {"error": type(err).__name__, "message": str(err)}
    except MemoryError:
        reply = {"oom": True}
    except RuntimeError as err:
        if "alloc" not in str(err).lower():
            raise
        reply = {"oom": True}
    sys.stdout.write("\n" + json.dumps(reply) + "\n")


def _child_base_bytes() -> int:
    """Address space the child needs before building: this process's, plus slack."""
    try:
        with open("/proc/self/status") as f:  # noqa: PTH123
            for line in f:
                if line.startswith("VmSize:"):
                    return max(_CHILD_BASE_BYTES, int(line.split()[1]) * 1024 + 1024**3)
    except (OSError, ValueError, IndexError):
        pass
    return _CHILD_BASE_BYTES


def _size_in_child(spec: ArchSpec, shape: tuple[int, ...] | None, limits: Limits) -> SpecSize:
    from metaprune.models.spec import SpecError

    what = f"spec {quote(spec.name)}"
    budget = _child_base_bytes() + _CHILD_BYTES_PER_ELEMENT * limits.max_params
    from metaprune.models.registry import _REGISTRY

    module = getattr(_REGISTRY.get(spec.name), "__module__", "metaprune.models")
    request = {
        "spec": spec.to_json(), "input_shape": shape, "limits": limits.to_dict(), "module": module,
    }  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))
    try:
        done = subprocess.run(
            [sys.executable, "-c", _CHILD_CODE, str(budget)],
            input=json.dumps(request), capture_output=True, text=True, env=env,
            timeout=limits.max_build_seconds,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        raise LimitExceededError(
            "max_build_seconds", limits.max_build_seconds, limits.max_build_seconds,
            f"{what} (sized in a child process, which did not finish in time)",
        ) from None  # fmt: skip
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    reply = json.loads(lines[-1]) if lines else {}
    if "ok" in reply:
        return SpecSize(**reply["ok"])
    if "limit" in reply:
        name, value, requested = reply["limit"]
        error = LimitExceededError(name, value, requested, what)
        error.args = (reply.get("message") or str(error),)  # the child's words, with detail
        raise error
    if "oom" in reply or done.returncode == -signal.SIGKILL:
        raise LimitExceededError(
            "max_params", limits.max_params, limits.max_params + 1,
            f"{what} (building it needed more than its {budget / 1024**3:.1f} GiB memory budget)",
        )  # fmt: skip
    if reply.get("error") == "UnknownModelError":
        raise SpecError(
            f"{what}: its constructor cannot run on the meta device, and a child process "
            f"cannot find it (register it at import of module {module!r})"
        )
    if reply.get("error") == "SpecError":
        raise SpecError(reply["message"])
    if "message" in reply:
        raise InvalidInputError(reply["message"])
    status = (
        f"killed by signal {-done.returncode}" if done.returncode < 0 else f"exit {done.returncode}"
    )
    tail = [line for line in done.stderr.splitlines() if line.strip()][-1:]
    reason = describe_exception(RuntimeError(tail[0])) if tail else status
    raise SpecError(f"{what}: cannot build it ({status}): {reason}")
