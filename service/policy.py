"""What this server accepts: the checks a request passes before any work is queued.

The library validates values (``PruneConfig.from_dict``); this module adds the server's
policy on top: dataset and metanetwork *names* from the configuration only (a client never
names a path), devices the server has, job settings and architecture size within
:class:`~metaprune.limits.Limits`. Every check raises one of the library's categories with a
message naming the field, the expectation and what was found.
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence

from metaprune.errors import InvalidInputError, NotFoundError, quote
from metaprune.limits import Limits, check_spec
from metaprune.models import ArchSpec
from metaprune.pruning.config import PruneConfig

__all__ = ["MAX_REQUEST_ID", "check_job", "check_name", "check_request_id", "spec_size"]

#: the longest ``request_id`` (characters), as the proto documents
MAX_REQUEST_ID = 128


def check_name(kind: str, name: str, allowed: Sequence[str]) -> str:
    """``name`` if it is one of ``allowed``; a path is refused as such, anything else is
    NOT_FOUND with the list of names."""
    if not isinstance(name, str) or not name:
        raise InvalidInputError(f"{kind} must be a non-empty name (found {quote(name)})")
    if "/" in name or os.sep in name or name.startswith(".") or "\\" in name:
        raise InvalidInputError(
            f"{kind} must be a registered name, not a path (found {quote(name)}); "
            f"this server offers {sorted(allowed)}"
        )
    if name not in allowed:
        raise NotFoundError(f"unknown {kind} {quote(name)} (this server offers {sorted(allowed)})")
    return name


def check_request_id(request_id: str) -> str:
    """``request_id`` if it has 1-``MAX_REQUEST_ID`` printable characters. An empty id is
    refused, never replaced: a generated one would make a retried request a second job."""
    if not 1 <= len(request_id) <= MAX_REQUEST_ID or not request_id.isprintable():
        raise InvalidInputError(
            f"request_id must be 1-{MAX_REQUEST_ID} printable characters, unique per job "
            f"(e.g. a UUID; found {quote(request_id)}, {len(request_id)} characters)"
        )
    return request_id


def spec_size(spec: ArchSpec, limits: Limits, input_shape: tuple[int, ...] | None) -> int:
    """Check the parameters (and, given ``input_shape``, the MACs) of ``spec`` against
    ``limits`` without allocating the model (:func:`metaprune.limits.check_spec`, on the
    meta device); return the parameter count. Sizes that passed are remembered per spec,
    limits and shape (a meta build costs ~60 ms, paid before an upload's first byte is
    read; refusals are not remembered).

    Raises:
        LimitExceededError: over ``max_params``, ``max_macs`` or another size limit.
    """
    key = (json.dumps(spec.to_json(), sort_keys=True), limits, input_shape)
    with _SIZES_LOCK:
        if key in _SIZES:
            _SIZES.move_to_end(key)
            return _SIZES[key]
    params = int(check_spec(spec, limits, input_shape).params)
    with _SIZES_LOCK:
        _SIZES[key] = params
        while len(_SIZES) > _MAX_SIZES:
            _SIZES.popitem(last=False)
    return params


_SIZES: OrderedDict[tuple[str, Limits, tuple[int, ...] | None], int] = OrderedDict()
_SIZES_LOCK = threading.Lock()
_MAX_SIZES = 256


def _check_auto_metanet(metanetworks: Sequence[str]) -> None:
    from metanet.export import list_pretrained

    registered = set(list_pretrained())
    if not registered or not registered <= set(metanetworks):
        raise InvalidInputError(
            "metanet 'auto' chooses among every registered metanetwork "
            f"({sorted(registered)}) but this server offers {sorted(metanetworks)}; "
            "name one of those instead"
        )


def check_job(config: PruneConfig, limits: Limits, metanetworks: Sequence[str]) -> None:
    """Server policy for a job's settings.

    Raises:
        InvalidInputError / NotFoundError / LimitExceededError: see the module doc.
    """
    if not config.target.value > 1.0:  # the library allows 1 (a no-op); a service job must prune
        raise InvalidInputError(
            f"config.target.value must be > 1 for a pruning job (found {config.target.value!r})"
        )
    if config.metanet is not None and config.metanet != "auto":
        check_name("metanetwork", config.metanet, metanetworks)
    elif config.method == "metanet":  # None or "auto": the worker chooses among every
        _check_auto_metanet(metanetworks)  # registered one, so all must be offered
    if config.device != "cpu":
        import torch

        if not (config.device.startswith("cuda") and torch.cuda.is_available()):
            raise InvalidInputError(
                f"config.device {quote(config.device)} is not available on this server (use 'cpu')"
            )
    config.check_limits(limits)
