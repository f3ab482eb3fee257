"""Fixtures: a real server on 127.0.0.1 port 0 (one per session, so its worker process
stays warm across modules), clients per token, a tiny checkpoint."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from service.client import PruningClient
from service.testing import TOKENS, make_checkpoint, running_server


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random cifar_resnet20 for the synthetic dataset (3 channels, 4 classes, ~1 MB)."""
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with running_server(tmp_path_factory.mktemp("data")) as srv:
        yield srv


@pytest.fixture(scope="session")
def connect(server: Any) -> Iterator[Callable[..., PruningClient]]:
    """``connect("alice")``: a client of the module's server with that token."""
    clients: list[PruningClient] = []

    def make(name: str | None = "alice", **kwargs: Any) -> PruningClient:
        token = TOKENS[name][0] if name else ""
        client = PruningClient(f"127.0.0.1:{server.port}", token, timeout=30, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture(scope="session")
def model_id(connect: Callable[..., PruningClient], checkpoint: Path) -> str:
    return connect("alice").upload(checkpoint).model_id
