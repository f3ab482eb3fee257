"""``metaprune export``: a pruned model for serving stacks that never import metaprune.

Two formats, both traced once with :func:`torch.export.export` (batch dimension dynamic
where the model allows it, else fixed, and the result says which):

* ``onnx``: :func:`torch.onnx.export` of that program, input ``"input"`` (N, C, H, W),
  output ``"logits"``; checked by running it in ``onnxruntime``;
* ``pt2``: :func:`torch.export.save`; checked by :func:`torch.export.load` of the written
  file. A ``.pt2`` archive holds pickled parts: metaprune produces them and never accepts
  one from anybody (only the file just written here is loaded back, to check it).

Every export is checked before it is reported: the written file's outputs on seeded random
inputs (batch 2, and batch 3 when the batch is dynamic) are compared with the PyTorch
model's at ``|diff| <= TOLERANCE * max(1, max |logits|)``; a file that fails is removed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from metaprune import checkpoint
from metaprune.errors import InvalidInputError, describe_exception, quote
from metaprune.limits import DEFAULT_LIMITS, Limits, check_spec
from metaprune.models import ArchSpec

__all__ = [
    "FORMATS",
    "TOLERANCE",
    "ExportError",
    "ExportResult",
    "checkpoint_input_shape",
    "export_checkpoint",
    "export_model",
]

FORMATS = ("onnx", "pt2")
#: Relative tolerance of the check (float32 kernels of another runtime reorder sums).
TOLERANCE = 1e-4
_MAX_BATCH = 4096


class ExportError(InvalidInputError):
    """The model cannot be exported, or the exported file does not reproduce it."""


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What :func:`export_model` wrote and how it was checked.

    Attributes:
        path: the written file.
        format: ``"onnx"`` or ``"pt2"``.
        input_shape: ``(C, H, W)`` of one input.
        dynamic_batch: whether the batch dimension is dynamic.
        fixed_batch: the batch size of a static export (``None`` when dynamic).
        max_abs_diff: the largest output difference of the check.
        tolerance: the absolute bound it was held to.
        max_abs_output: the largest output magnitude of the check (the scale of the diff).
        note: why the batch is fixed, if it is.
    """

    path: Path
    format: str
    input_shape: tuple[int, int, int]
    dynamic_batch: bool
    fixed_batch: int | None
    max_abs_diff: float
    tolerance: float
    max_abs_output: float
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["path"] = str(self.path)
        return out


def export_model(
    model: nn.Module,
    out: str | os.PathLike[str],
    format: str,
    input_shape: tuple[int, int, int],
    *,
    dynamic_batch: bool = True,
) -> ExportResult:
    """Export ``model`` (copied to CPU float32, eval mode) to ``out`` and check the file.

    Raises:
        ExportError: an unknown format, a model torch.export cannot trace, or a written
            file whose outputs differ from the model's beyond the tolerance.
    """
    if format not in FORMATS:
        raise ExportError(
            f"export format must be one of {', '.join(FORMATS)} (found {quote(format)})"
        )
    shape = tuple(int(d) for d in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ExportError(
            f"input_shape must be (C, H, W) of positive ints (found {quote(input_shape)})"
        )
    model = _cpu_eval(model)
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(2, *shape, generator=generator)
    program, note = _trace(model, example, dynamic_batch)
    dynamic = not note
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".tmp-{os.getpid()}-{out.name}")  # torch.export wants the suffix
    try:
        if format == "onnx":
            _write_onnx(program, example, tmp)
        else:
            torch.export.save(program, str(tmp))
        checks = [example] + ([torch.randn(3, *shape, generator=generator)] if dynamic else [])
        diff, bound, scale = _check(model, tmp, format, checks)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    fixed = None if dynamic else int(example.shape[0])
    return ExportResult(out, format, shape, dynamic, fixed, diff, bound, scale, note)  # type: ignore[arg-type]


def export_checkpoint(
    path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    format: str,
    *,
    input_shape: tuple[int, int, int] | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> ExportResult:
    """Export the model of a metaprune checkpoint; the input shape defaults to
    :func:`checkpoint_input_shape`.

    Raises:
        CheckpointError: see :func:`metaprune.checkpoint.load`.
        LimitExceededError: the model or its MACs at ``input_shape`` are over ``limits``.
        ExportError: see :func:`export_model`.
    """
    spec = checkpoint.read_spec(path, limits=limits)
    shape = input_shape or checkpoint_input_shape(path, spec, limits)
    for d in shape:
        limits.check("max_image_size", d, "export input size")
    check_spec(spec, limits, shape)  # MACs at this input, before anything is built
    model, _ = checkpoint.load(path, limits=limits)
    return export_model(model, out, format, shape)


def checkpoint_input_shape(
    path: str | os.PathLike[str], spec: ArchSpec, limits: Limits = DEFAULT_LIMITS
) -> tuple[int, int, int]:
    """The input a checkpoint was pruned at (``input_shape`` metadata, written by
    ``prune``), else the ``input_size`` of an imported hub ``pretrained_cfg``, else the
    spec's ``in_channels``/``in_chans`` (default 3) at its ``img_size`` or the size
    ``metaprune info`` uses (8 for one channel, else 32)."""
    from safetensors import safe_open

    with safe_open(str(checkpoint._checkpoint_file(Path(path), limits)), framework="pt") as f:
        meta = f.metadata() or {}
    for key, pick in (("input_shape", lambda v: v), ("pretrained_cfg", lambda v: v["input_size"])):
        with contextlib.suppress(ValueError, KeyError, TypeError):
            shape = pick(json.loads(meta[key]))
            if len(shape) == 3 and all(isinstance(d, int) and d >= 1 for d in shape):
                return tuple(shape)  # type: ignore[return-value]
    kwargs: Mapping[str, Any] = spec.kwargs
    channels = kwargs.get("in_channels", kwargs.get("in_chans", 3))
    size = kwargs.get("img_size", 8 if channels == 1 else 32)
    if isinstance(size, (list, tuple)) and len(size) == 2 and size[0] == size[1]:
        size = size[0]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in (channels, size)):
        raise ExportError(
            f"cannot tell the input shape of {spec.name!r} (in_channels {quote(channels)}, "
            f"size {quote(size)}); pass it, e.g. --input-size 224"
        )
    return (channels, size, size)


def _cpu_eval(model: nn.Module) -> nn.Module:
    import copy

    model = copy.deepcopy(model).to("cpu")
    return model.float().eval()


def _trace(model: nn.Module, example: Tensor, dynamic: bool) -> tuple[Any, str]:
    """The exported program, dynamic in the batch if possible; and why not, if not."""
    note = ""
    if dynamic:
        batch = torch.export.Dim("batch", min=1, max=_MAX_BATCH)
        try:
            return torch.export.export(model, (example,), dynamic_shapes=({0: batch},)), ""
        except Exception as err:  # noqa: BLE001 (any tracing failure: try a fixed batch)
            note = f"batch fixed at {example.shape[0]}: {describe_exception(err, 200)}"
    else:
        note = f"batch fixed at {example.shape[0]} on request"
    try:
        return torch.export.export(model, (example,)), note
    except Exception as err:  # noqa: BLE001 (a model torch.export cannot trace)
        raise ExportError(
            f"torch.export cannot trace this model: {describe_exception(err)}"
        ) from None


def _write_onnx(program: Any, example: Tensor, path: Path) -> None:
    quiet = io.StringIO()
    try:
        with contextlib.redirect_stdout(quiet):  # the exporter prints its progress
            torch.onnx.export(
                program, (example,), str(path), dynamo=True, input_names=["input"],
                output_names=["logits"], external_data=False,
            )  # fmt: skip
    except ImportError as err:
        raise ExportError(
            f"ONNX export needs the onnx and onnxscript packages ({describe_exception(err)}); "
            "pip install 'metaprune[export]'"
        ) from None
    except Exception as err:  # noqa: BLE001 (an operator the exporter does not cover)
        raise ExportError(f"torch.onnx.export failed: {describe_exception(err)}") from None


def _check(
    model: nn.Module, path: Path, format: str, inputs: list[Tensor]
) -> tuple[float, float, float]:
    run = _onnx_runner(path) if format == "onnx" else _pt2_runner(path)
    worst, bound, scale = 0.0, TOLERANCE, 0.0
    with torch.no_grad():
        for x in inputs:
            ref = model(x)
            got = torch.as_tensor(run(x))
            if got.shape != ref.shape:
                raise ExportError(
                    f"the exported {format} file gives outputs of shape {tuple(got.shape)} "
                    f"for input {tuple(x.shape)}, the model {tuple(ref.shape)}"
                )
            scale = max(scale, float(ref.abs().max()))
            bound = max(bound, TOLERANCE * max(1.0, scale))
            worst = max(worst, float((got - ref).abs().max()))
    if not worst <= bound:
        raise ExportError(
            f"the exported {format} file differs from the model by up to {worst:.3g} "
            f"(allowed {bound:.3g}); it was not written"
        )
    return worst, bound, scale


def _onnx_runner(path: Path) -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise ExportError(
            "checking an ONNX export needs onnxruntime; pip install 'metaprune[export]'"
        ) from None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x.numpy()})[0]


def _pt2_runner(path: Path) -> Any:
    module = torch.export.load(str(path)).module()  # the file written just now, by us
    return module
