"""Receiving an uploaded checkpoint: streamed to disk, checked, stored once by content.

The order of checks is the order of cost, so a bad upload is refused as early as possible:

1. the header alone: spec JSON size, a known architecture within ``max_params`` (sized on
   the meta device, nothing allocated), announced size within ``max_upload_bytes`` and the
   blob quota, a sha256 of the right form;
2. while streaming: never more bytes than announced; the bytes go to a temp file, never
   into memory as a whole;
3. at the end: exact size, sha256, a safetensors header (not a pickle or ``torch.save``
   zip) no larger than ``max_header_bytes``, spec metadata equal to the header's spec, and
   weights that load into the architecture with finite values (non-finite weights are
   refused: a model with NaN weights cannot be pruned meaningfully);
4. only then is the file renamed to its content address and recorded. A refused upload
   leaves nothing behind.
"""

from __future__ import annotations

import json
import re
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from metaprune.errors import InvalidInputError, LimitExceededError, NotFoundError, quote
from metaprune.limits import Limits
from metaprune.models import ArchSpec
from service._generated import pruning_service_pb2 as pb
from service.auth import Principal
from service.blobs import BlobDir, HashingWriter
from service.config import ServiceConfig
from service.logs import log_event
from service.policy import spec_size
from service.store import ModelRecord, Store

__all__ = ["check_checkpoint_file", "receive_upload"]

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_MAX_NAME = 200


def receive_upload(
    requests: Iterator[pb.UploadModelRequest], principal: Principal, config: ServiceConfig,
    store: Store, blobs: BlobDir,
) -> tuple[ModelRecord, bool]:  # fmt: skip
    """Consume an UploadModel stream; return the stored model and whether it was new.

    Raises:
        InvalidInputError: malformed header, truncated stream, sha256 mismatch, not a
            metaprune safetensors checkpoint, weights that do not fit the spec.
        LimitExceededError: over a size, parameter or quota limit.
    """
    first = next(requests, None)
    if first is None or first.WhichOneof("part") != "header":
        raise InvalidInputError("an upload must start with an UploadHeader message")
    header = first.header
    spec = _check_header(header, config, store)
    limits = config.limits
    received, start = 0, time.perf_counter()
    with blobs.temp_file() as (tmp_path, f):
        writer = HashingWriter(f)
        try:
            for message in requests:
                if message.WhichOneof("part") != "chunk":
                    raise InvalidInputError("only chunk messages may follow the UploadHeader")
                received += len(message.chunk)
                if received > header.total_size:
                    raise InvalidInputError(
                        f"the upload is longer than the {header.total_size:,} bytes its header "
                        "announced"
                    )
                writer.write(message.chunk)
        finally:
            sha = writer.close()
        if received != header.total_size:
            raise InvalidInputError(
                f"truncated upload: received {received:,} of the {header.total_size:,} bytes "
                "the header announced"
            )
        if sha != header.sha256:
            raise InvalidInputError(
                f"sha256 mismatch: the header says {header.sha256}, the received bytes hash "
                f"to {sha} (corrupted in transit?)"
            )
        received_at = time.perf_counter()
        check_checkpoint_file(tmp_path, spec, limits)
        checked_at = time.perf_counter()
        record = ModelRecord(
            model_id=f"sha256:{sha}", sha256=sha, size=received,
            spec_json=json.dumps(spec.to_json(), sort_keys=True),
            params=spec_size(spec, limits, None), created_at=time.time(),
            display_name=header.display_name,
        )  # fmt: skip
        blobs.commit_blob(tmp_path, sha)
    created = store.add_model(record, principal.name)
    log_event(
        "upload", model_id=record.model_id, bytes=received, created=created,
        receive_s=round(received_at - start, 3), check_s=round(checked_at - received_at, 3),
        store_s=round(time.perf_counter() - checked_at, 3), token=principal.name,
    )  # fmt: skip
    return record, created


def _check_header(header: pb.UploadHeader, config: ServiceConfig, store: Store) -> ArchSpec:
    limits = config.limits
    spec_bytes = len(header.spec_json.encode())
    limits.check("max_spec_bytes", spec_bytes, what="the upload's spec_json")
    if not header.spec_json:
        raise InvalidInputError(
            "UploadHeader.spec_json is empty (expected the architecture spec JSON)"
        )
    if header.total_size <= 0:
        raise InvalidInputError(f"UploadHeader.total_size must be > 0 (found {header.total_size})")
    limits.check("max_upload_bytes", header.total_size, what="the upload")
    if not _SHA256.match(header.sha256):
        raise InvalidInputError(
            f"UploadHeader.sha256 must be 64 lowercase hex digits (found {quote(header.sha256)})"
        )
    if len(header.display_name) > _MAX_NAME:
        raise InvalidInputError(f"UploadHeader.display_name is over {_MAX_NAME} characters")
    used = store.used_bytes()
    already = store.get_model(f"sha256:{header.sha256}", None) is not None  # stored once
    if not already and used + header.total_size > config.blob_quota_bytes:
        raise LimitExceededError(
            "blob_quota_bytes", config.blob_quota_bytes, used + header.total_size,
            "stored models and results after this upload",
        )  # fmt: skip
    spec = ArchSpec.from_json(header.spec_json, limits=limits)  # bounded JSON depth
    spec_size(spec, limits, None)  # over max_params: refused before any byte is received
    return spec


def check_checkpoint_file(path: Path, spec: ArchSpec, limits: Limits) -> None:
    """Check that ``path`` is a metaprune safetensors checkpoint of ``spec`` with finite
    weights (reads the header first, so a huge or foreign header is refused cheaply).

    Raises:
        InvalidInputError / LimitExceededError: naming what the file is and what was expected.
    """
    with open(path, "rb") as f:
        head = f.read(8)
        size = path.stat().st_size
    if head[:2] == b"PK":
        raise InvalidInputError(
            "the upload is a zip archive (a torch.save checkpoint?), not safetensors; "
            "pickled checkpoints are never loaded: convert your own file on your machine with "
            "'metaprune import WEIGHTS --arch NAME -o OUT.safetensors'"
        )
    if head[:1] == b"\x80":
        raise InvalidInputError(
            "the upload is a Python pickle, not safetensors; pickles are never loaded: "
            "convert your own file on your machine with "
            "'metaprune import WEIGHTS --arch NAME -o OUT.safetensors'"
        )
    if len(head) < 8:
        raise InvalidInputError(f"the upload ({size} bytes) is too short to be a safetensors file")
    (header_len,) = struct.unpack("<Q", head)
    limits.check("max_header_bytes", header_len, "the upload's safetensors header")
    if header_len + 8 > size:
        raise InvalidInputError(
            f"the upload's safetensors header claims {header_len:,} bytes but the file has "
            f"{size:,}: not a safetensors file"
        )
    from metaprune import checkpoint

    try:
        stored = checkpoint.read_spec(path)
        # keys, shapes and dtypes against the spec, within limits
        state, _ = checkpoint.load_state(path, limits=limits, allow_non_finite=True)
    except (LimitExceededError, NotFoundError):
        raise
    except ValueError as err:  # CheckpointError: name "the upload", not the server's temp path
        text = str(err).replace(f"checkpoint {str(path)!r}", "the uploaded checkpoint")
        raise InvalidInputError(text.replace(repr(str(path)), "the upload")) from None
    bad = [key for key, t in state.items() if not _finite(t)]
    del state
    if bad:
        raise InvalidInputError(
            f"the uploaded checkpoint has NaN or Inf values in {len(bad)} tensor(s) "
            f"({quote(bad[:5])}); non-finite weights are refused"
        )
    if stored.to_json() != spec.to_json():
        raise InvalidInputError(
            f"the header's spec {quote(json.dumps(spec.to_json()))} differs from the spec "
            f"stored in the checkpoint {quote(json.dumps(stored.to_json()))}"
        )


def _finite(tensor: Any) -> bool:
    """Whether a tensor has no NaN/Inf: one min/max reduction (NaN propagates through both),
    ~20x faster than ``isfinite().all()`` and without a boolean copy of the tensor."""
    import torch

    if not tensor.is_floating_point() or tensor.numel() == 0:
        return True
    low, high = torch.aminmax(tensor)
    return bool(torch.isfinite(low) and torch.isfinite(high))
