"""``ServiceConfig``: everything ``metaprune serve`` needs, with embedded defaults.

A TOML (``.toml``) or YAML (``.yaml``/``.yml``) file overrides the defaults; unknown keys
are refused by name. Example (TOML)::

    host = "0.0.0.0"
    port = 50051
    data_dir = "/var/lib/metaprune"
    workers = 2
    datasets = ["digits", "synthetic"]

    [limits]                 # metaprune.Limits fields
    max_params = 50_000_000

    [[tokens]]
    name = "ci"
    token = "..."            # or token_file = "/run/secrets/ci-token"
    role = "user"            # "admin" (sees every job), "user", or "viewer" (read-only)

    [tls]
    cert_file = "server.pem"
    key_file = "server.key"
    client_ca_file = "clients-ca.pem"   # optional: require client certificates (mTLS)

With no tokens configured, the server uses ``DATA_DIR/admin.token`` (an admin token named
``admin``), generating it on first start with file mode 0600 and printing it once.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from metaprune.errors import InvalidInputError, quote
from metaprune.limits import Limits

__all__ = ["ROLES", "ServiceConfig", "TlsConfig", "TokenConfig", "load_config"]

ROLES = ("admin", "user", "viewer")
DEFAULT_DATA_DIR = Path("~/.local/share/metaprune")
ADMIN_TOKEN_FILE = "admin.token"


@dataclasses.dataclass(frozen=True)
class TokenConfig:
    """A named bearer token. ``token`` is the secret itself (or read from ``token_file``)."""

    name: str
    token: str = ""
    token_file: str | None = None
    role: str = "user"

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise InvalidInputError(
                f"tokens[].name must be a non-empty string (found {quote(self.name)})"
            )
        if self.role not in ROLES:
            raise InvalidInputError(
                f"token {self.name!r}: role must be one of {list(ROLES)} (found {quote(self.role)})"
            )
        if self.token_file and not self.token:
            secret = Path(self.token_file).expanduser().read_text().strip()
            object.__setattr__(self, "token", secret)
        if len(self.token) < 16:
            raise InvalidInputError(
                f"token {self.name!r}: the secret must be at least 16 characters "
                f"(found {len(self.token)})"
            )


@dataclasses.dataclass(frozen=True)
class TlsConfig:
    """Server certificate and key (PEM files); ``client_ca_file`` turns on mTLS."""

    cert_file: str
    key_file: str
    client_ca_file: str | None = None


@dataclasses.dataclass(frozen=True)
class ServiceConfig:
    """The server's settings.

    Args:
        host, port: where to listen (``port=0`` picks a free port; the bound one is returned
            by :func:`service.server.create_server`).
        data_dir: SQLite database, blobs and results (layout in ``service/README.md``).
        workers: job worker processes (jobs running at once).
        threads_per_worker: torch threads of each worker.
        datasets: dataset names clients may ask for (registered in ``metaprune.data``).
        data_root: local root of file-based datasets (never from a client).
        metanetworks: metanetwork names clients may ask for (``None`` = every shipped one).
        tokens: the bearer tokens; empty = the generated admin token in ``data_dir``.
        tls: TLS / mTLS; ``None`` = plaintext (fine on loopback).
        limits: :class:`metaprune.limits.Limits` for uploads, architectures and jobs.
        max_message_bytes: largest gRPC message either way (upload chunks are <= 1 MiB).
        max_queued_jobs: queued jobs (all tokens) before CreatePruneJob is refused.
        max_jobs_per_token: unfinished (queued + running) jobs of one token.
        blob_quota_bytes: bytes of stored models and results.
        max_attempts: starts of a job (a server restart re-queues a running job) before it
            is failed.
        grace_seconds: how long a graceful stop waits for in-flight RPCs and running jobs.
        rpc_threads: threads for the blocking work of RPCs (SQLite, file I/O, checks); the
            gRPC server itself is ``grpc.aio`` on one event loop, so an open stream holds
            no thread and this does not bound how many streams are open.
        max_streams_per_token: open ``WatchJob`` + ``DownloadResult`` streams of one token.
        max_uploads_per_token: ``UploadModel`` streams of one token in progress at once.
        upload_idle_seconds: an upload that sends nothing for this long is cut
            (DEADLINE_EXCEEDED) and its temporary file removed.
        metrics_port: serve Prometheus ``/metrics`` over HTTP on ``host:metrics_port``
            (``0`` = any free port); ``None`` (the default) = no endpoint.
        watch_interval: minimum seconds between two progress messages to one watcher.
        chunk_bytes: download chunk size.
        sink_threads: threads of each upload's sink (sha256, write, NaN/Inf scan): 1, or 2
            to hash on a thread of its own (shorter critical path where cores are free);
            0 (default) = 2 when the server may use 3 or more cores, else 1.
        log_json: one JSON line per RPC and per job transition on stderr.
        raw_bytes_rpc: also serve ``/metaprune.bench.RawBytes/{Upload,Download}``, plain
            byte streams with no checks, so ``benchmarks/service.py`` can compare the upload
            and download paths with raw gRPC streaming on the same server (off by default).
    """

    host: str = "127.0.0.1"
    port: int = 50051
    data_dir: str = str(DEFAULT_DATA_DIR)
    workers: int = 1
    threads_per_worker: int = 1
    datasets: tuple[str, ...] = ("digits", "synthetic")
    data_root: str | None = None
    metanetworks: tuple[str, ...] | None = None
    tokens: tuple[TokenConfig, ...] = ()
    tls: TlsConfig | None = None
    limits: Limits = dataclasses.field(default_factory=Limits)
    max_message_bytes: int = 4 * 1024 * 1024
    max_queued_jobs: int = 100
    max_jobs_per_token: int = 20
    blob_quota_bytes: int = 50 * 1024**3
    max_attempts: int = 3
    grace_seconds: float = 10.0
    rpc_threads: int = 32
    max_streams_per_token: int = 16
    max_uploads_per_token: int = 4
    upload_idle_seconds: float = 30.0
    metrics_port: int | None = None
    watch_interval: float = 0.1
    chunk_bytes: int = 1024 * 1024
    sink_threads: int = 0
    log_json: bool = True
    raw_bytes_rpc: bool = False

    def __post_init__(self) -> None:
        for name in ("workers", "threads_per_worker", "max_message_bytes", "max_queued_jobs",
                     "max_jobs_per_token", "blob_quota_bytes", "max_attempts", "rpc_threads",
                     "chunk_bytes", "max_streams_per_token", "max_uploads_per_token"):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInputError(
                    f"service config {name} must be an int >= 1 (found {quote(value)})"
                )
        for name in ("port", "metrics_port"):
            value = getattr(self, name)
            if name == "metrics_port" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 65536:
                raise InvalidInputError(
                    f"service config {name} must be 0-65535 (found {quote(value)})"
                )
        if self.sink_threads not in (0, 1, 2) or isinstance(self.sink_threads, bool):
            raise InvalidInputError(
                f"service config sink_threads must be 0 (auto), 1 or 2 (found {quote(self.sink_threads)})"
            )
        idle = self.upload_idle_seconds
        if isinstance(idle, bool) or not isinstance(idle, (int, float)) or not 0 < idle < 1e9:
            raise InvalidInputError(
                f"service config upload_idle_seconds must be a number of seconds in (0, 1e9) (found {quote(idle)})"
            )
        if self.chunk_bytes > self.max_message_bytes - 1024:
            raise InvalidInputError(
                f"chunk_bytes ({self.chunk_bytes}) must leave room under max_message_bytes "
                f"({self.max_message_bytes})"
            )
        names = [t.name for t in self.tokens]
        if len(set(names)) != len(names):
            raise InvalidInputError(f"token names must be unique (found {names})")

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def public_limits(self) -> dict[str, float]:
        """Every limit a client may hit, by name (reported by GetServerInfo)."""
        out = {k: float(v) for k, v in self.limits.to_dict().items()}
        for name in ("max_message_bytes", "max_queued_jobs", "max_jobs_per_token",
                     "blob_quota_bytes", "workers", "max_streams_per_token",
                     "max_uploads_per_token", "upload_idle_seconds"):  # fmt: skip
            out[name] = float(getattr(self, name))
        out["max_concurrent_jobs"] = float(self.workers)
        return out

    def resolved_tokens(self, announce: bool = True) -> tuple[TokenConfig, ...]:
        """The configured tokens, or the data directory's admin token (generated once,
        mode 0600, printed on stderr when created)."""
        if self.tokens:
            return self.tokens
        path = self.data_path / ADMIN_TOKEN_FILE
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            secret = secrets.token_urlsafe(32)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secret + "\n")
            if announce:
                print(
                    f"metaprune serve: generated admin token (stored in {path}, mode 0600; "
                    f"shown only now):\n{secret}",
                    file=sys.stderr,
                    flush=True,
                )
        return (TokenConfig("admin", path.read_text().strip(), role="admin"),)


def load_config(path: str | os.PathLike[str] | None = None, **overrides: Any) -> ServiceConfig:
    """The defaults, overridden by the file at ``path`` (TOML or YAML), then ``overrides``
    (``None`` values are ignored, so CLI flags can be passed through unconditionally).

    Raises:
        InvalidInputError: unreadable file, unknown keys or invalid values.
    """
    data: dict[str, Any] = {}
    if path is not None:
        data = _read(Path(path))
    data.update({k: v for k, v in overrides.items() if v is not None})
    return _parse(data)


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as err:
        raise InvalidInputError(f"cannot read service config {str(path)!r}: {err}") from None
    try:
        if path.suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            raise InvalidInputError(
                f"service config {str(path)!r}: expected a .toml, .yaml, .yml or .json file"
            )
    except (ValueError, ImportError) as err:  # tomllib/yaml/json decode errors are ValueErrors
        if isinstance(err, InvalidInputError):
            raise
        raise InvalidInputError(f"service config {str(path)!r} is not valid: {err}") from None
    if not isinstance(data, Mapping):
        raise InvalidInputError(f"service config {str(path)!r} must be a mapping")
    return dict(data)


def _parse(data: Mapping[str, Any]) -> ServiceConfig:
    fields = {f.name for f in dataclasses.fields(ServiceConfig)}
    unknown = sorted(str(k) for k in data if k not in fields)
    if unknown:
        raise InvalidInputError(
            f"service config: unknown key(s) {quote(unknown)} (expected a subset of {sorted(fields)})"
        )
    kwargs = dict(data)
    try:
        if "limits" in kwargs and not isinstance(kwargs["limits"], Limits):
            kwargs["limits"] = Limits.from_dict(kwargs["limits"])
        if "tokens" in kwargs:
            kwargs["tokens"] = tuple(
                t if isinstance(t, TokenConfig) else TokenConfig(**t) for t in kwargs["tokens"]
            )
        if isinstance(kwargs.get("tls"), Mapping):
            kwargs["tls"] = TlsConfig(**kwargs["tls"])
        for key in ("datasets", "metanetworks"):
            if kwargs.get(key) is not None:
                kwargs[key] = tuple(kwargs[key])
        return ServiceConfig(**kwargs)
    except TypeError as err:  # unknown keys inside tokens/tls
        raise InvalidInputError(f"service config: {err}") from None
    except OSError as err:  # token_file
        raise InvalidInputError(f"service config: cannot read a token file: {err}") from None
