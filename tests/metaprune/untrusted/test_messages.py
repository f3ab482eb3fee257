"""Class 3 of issue 9: messages that echo client data stay under 4 KB and say what was cut.

A generated client string (up to 5 MB, any Unicode, so multi-byte characters test the
byte budget) is sent through every surface that quotes what it was given; the error must
be a documented type, under ``MAX_MESSAGE_BYTES`` as UTF-8 (gRPC status details), and,
if it quotes the string at all, say how much was cut. The CLI prints one such line.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from metaprune import checkpoint
from metaprune.cli import main
from metaprune.data import get_dataset
from metaprune.errors import MAX_MESSAGE_BYTES, InvalidInputError, cap_message, quote
from metaprune.limits import Limits, check_spec
from metaprune.models import ArchSpec
from metaprune.pruning import PruneConfig, prune
from metaprune.testing.untrusted import check_error, generated, raises, raw_checkpoint

_SMALL = ArchSpec("cifar_resnet20", {"width": 0.25, "in_channels": 1})


def _surfaces(folder: Path) -> dict[str, Callable[[str], Any]]:
    from metanet.export import load as load_metanet

    def in_checkpoint(s: str) -> Any:
        path = raw_checkpoint(folder / "c.safetensors", {"format_version": 1, "name": s})
        return checkpoint.load(path)

    return {
        "model name": lambda s: ArchSpec(s),
        "kwarg key": lambda s: check_spec(ArchSpec("cifar_resnet20", {s: 1})),
        "kwarg value": lambda s: ArchSpec("cifar_resnet20", {"width": s}).build(),
        "plan path": lambda s: ArchSpec("cifar_resnet20", {}, {s: {"out_features": 3}}).build(),
        "spec json": lambda s: ArchSpec.from_json(json.dumps({"format_version": 1, "name": s})),
        "spec key": lambda s: ArchSpec.from_json({"format_version": 1, "name": "x", s: 1}),
        "dataset name": lambda s: get_dataset(s),
        "dataset option": lambda s: get_dataset("synthetic", **{s: 1}),
        "metanet name": lambda s: load_metanet(s),
        "config key": lambda s: PruneConfig.from_dict({s: 1, "target": {s: 2}}),
        "config method": lambda s: PruneConfig(method=s),
        "config device": lambda s: PruneConfig(device=s),
        "config metanet": lambda s: prune("x.safetensors", "digits", PruneConfig(method="metanet", metanet=s)),
        "limits key": lambda s: Limits.from_dict({s: 1}),
        "checkpoint path": lambda s: checkpoint.load(s),
        "checkpoint spec": in_checkpoint,
    }  # fmt: skip


_BIG = st.tuples(st.text(min_size=1, max_size=6), st.integers(300, 5_000_000)).map(
    lambda t: (t[0] * (t[1] // len(t[0]) + 1))[: t[1]]
)


@generated(40)
@given(name=st.sampled_from(sorted(_surfaces(Path(".")))), text=_BIG)
def test_quoted_client_data_is_capped(tmp_path_factory, name: str, text: str) -> None:
    folder = tmp_path_factory.mktemp("q")
    err = raises(lambda: _surfaces(folder)[name](text))
    message = check_error(err, InvalidInputError)
    if text[:60] in message:  # it quotes the client string: then it says how much was cut
        assert "more characters" in message, message[-300:]


@generated(25)
@given(text=_BIG, where=st.sampled_from(["dataset", "checkpoint", "metanet", "device"]))
def test_cli_prints_one_short_line(text: str, where: str) -> None:
    argv = ["eval", "x.safetensors", "--dataset", "digits"]
    if where == "dataset":
        argv[3] = text
    elif where == "checkpoint":
        argv[1] = text
    elif where == "metanet":
        argv = ["prune", "x.safetensors", "--dataset", "digits", "-o", "/nonexistent/out", "--metanet", text]  # fmt: skip
    else:
        argv = ["prune", "x.safetensors", "--dataset", "digits", "-o", "/nonexistent/out", "--device", text]  # fmt: skip
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        assert main(argv) == 2
    lines = stderr.getvalue().splitlines()
    assert len(lines) == 1 and len(lines[0].encode("utf-8")) < MAX_MESSAGE_BYTES
    assert "Traceback" not in lines[0]


def test_the_number_of_listed_problems_is_capped(tmp_path: Path) -> None:
    state = {f"junk.{i}": torch.zeros(1) for i in range(10_000)}
    path = raw_checkpoint(tmp_path / "many.safetensors", _SMALL.to_json(), state)
    err = raises(lambda: checkpoint.load(path))
    message = check_error(err, checkpoint.CheckpointError, "problems", "... and ")
    assert message.count("unexpected key") <= 8
    keys = {f"k{i}" * 50: 1 for i in range(100)}
    err = raises(lambda: PruneConfig.from_dict(keys))
    check_error(err, InvalidInputError, "and 92 more")


def test_quote_and_cap_message() -> None:
    assert quote("abc") == "'abc'" and quote(3) == "3"
    cut = quote("x" * 10_000)
    assert len(cut) < 260 and cut.endswith("(9,800 more characters)")
    deep: Any = []
    for _ in range(100_000):
        deep = [deep]
    assert len(quote(deep)) < 100  # no RecursionError, bounded work
    assert quote(list(range(10**6))).startswith("[0, 1, 2")
    long = "é" * 10_000  # 2 bytes each in UTF-8
    capped = cap_message(long)
    assert len(capped.encode("utf-8")) < MAX_MESSAGE_BYTES and "more characters cut" in capped
    err = InvalidInputError("y" * 1_000_000)
    assert len(str(err)) < MAX_MESSAGE_BYTES and str(err).endswith("more characters cut)")


@pytest.mark.parametrize("limit", [1, 100])
def test_limit_errors_name_the_limit_its_value_and_the_request(limit: int) -> None:
    err = raises(lambda: Limits(max_params=limit).check("max_params", 10**9, "spec 'x'"))
    message = check_error(err, InvalidInputError, "spec 'x'", "max_params", "1,000,000,000")
    assert f"max_params is {limit:,}" in message and "raise it" in message
