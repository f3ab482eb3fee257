"""Class 5 of issue 9: no path from the CLI or a ``PruneConfig`` reaches an unpickler, and
metanetwork names never resolve against the working directory.

The guard runs in a child process whose unpicklers (``pickle``/``_pickle`` load, loads and
``Unpickler``, ``torch.load``, torch's weights-only unpickler) are replaced by traps that
record the call; every CLI and ``PruneConfig`` path that could name a pickle is then
driven with files that would create a marker file if unpickled. The traps are proven live
by a canary call at the end, so the test fails if a code path unpickles anything.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from metaprune.testing.bounded import run_bounded
from metaprune.testing.untrusted import check_error, raises


class _Payload:
    """Creates ``marker`` when unpickled."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (Path(self.marker),))


def _install_traps(calls: list[str]) -> None:
    import _pickle
    import pickle

    import torch._weights_only_unpickler as weights_only
    import torch.serialization

    def trap(name: str) -> Any:
        def called(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            raise RuntimeError(f"unpickling guard: {name} was called")

        return called

    class TrapUnpickler(pickle.Unpickler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            calls.append("Unpickler")
            raise RuntimeError("unpickling guard: Unpickler was created")

    for module in (pickle, _pickle):
        module.load, module.loads = (
            trap(f"{module.__name__}.load"),
            trap(f"{module.__name__}.loads"),
        )
    pickle.Unpickler = TrapUnpickler
    torch.load = torch.serialization.load = trap("torch.load")
    weights_only.Unpickler.load = trap("weights_only.Unpickler.load")


def _child_guarded() -> dict[str, Any]:
    """In the child, with cwd a fresh directory: every path, traps installed."""
    from metaprune import checkpoint
    from metaprune.cli import main
    from metaprune.errors import InvalidInputError
    from metaprune.models import ArchSpec
    from metaprune.pruning import PruneConfig, prune

    cwd = Path.cwd()
    marker = cwd / "PWNED"
    torch.save({"state_dict": _Payload(str(marker))}, cwd / "evil.ckpt")
    evil_bytes = (cwd / "evil.ckpt").read_bytes()
    for name in ("evil.safetensors", "evil", "resnet20-digits.ckpt", "evil.json"):
        (cwd / name).write_bytes(evil_bytes)
    registry = cwd / "registry"
    registry.mkdir()
    (registry / "planted.safetensors").write_bytes(evil_bytes)
    os.environ["METAPRUNE_METANET_PATH"] = str(registry)
    spec = ArchSpec("cifar_resnet20", {"width": 0.25, "in_channels": 1})
    good = str(checkpoint.save(spec.build(), spec, cwd / "good" / "m.safetensors"))
    (cwd / "config.yaml").write_text("method: metanet\nmetanet: ./evil.ckpt\n")

    calls: list[str] = []
    _install_traps(calls)
    prune_args = ["--dataset", "digits", "-o", str(cwd / "out"), "--quiet"]
    argvs = [
        ["prune", "evil.ckpt", *prune_args],
        ["prune", "evil.safetensors", *prune_args],
        ["info", "evil.ckpt"],
        ["info", "evil.safetensors"],
        ["eval", "evil.ckpt", "--dataset", "digits"],
        ["prune", good, *prune_args, "--metanet", "evil.ckpt"],
        ["prune", good, *prune_args, "--metanet", "./evil.ckpt"],
        ["prune", good, *prune_args, "--metanet", "evil"],
        ["prune", good, *prune_args, "--metanet", "evil.json"],
        ["prune", good, *prune_args, "--metanet", "planted"],
        ["prune", good, *prune_args, "--metanet", "resnet20-digits.ckpt"],
        ["prune", good, *prune_args, "--config", "config.yaml"],
    ]
    statuses = [main(argv) for argv in argvs]
    errors = []
    for metanet in ("evil.ckpt", str(cwd / "evil.ckpt"), "evil", "planted", "evil.safetensors"):
        for config in (
            PruneConfig(method="metanet", metanet=metanet),
            PruneConfig.from_dict({"method": "metanet", "metanet": metanet}),
        ):
            try:
                prune(good, "digits", config)
            except InvalidInputError as err:
                errors.append(type(err).__name__)
    before_canary = list(calls)
    with contextlib.suppress(RuntimeError):
        torch.load(cwd / "evil.ckpt", weights_only=True)  # the canary: the traps are live
    return {
        "statuses": statuses,
        "errors": errors,
        "calls": before_canary,
        "canary": calls[len(before_canary) :],
        "pwned": marker.exists(),
        "out": (cwd / "out").exists(),
    }


@pytest.mark.slow
def test_no_cli_or_config_path_reaches_an_unpickler(tmp_path: Path) -> None:
    result = run_bounded(__file__, "_child_guarded", cwd=tmp_path, timeout=600)
    assert result["ok"], result.get("error")
    value = result["value"]
    assert value["canary"] == ["torch.load"], value  # the traps were live
    assert value["calls"] == [], value["calls"]
    assert not value["pwned"] and not value["out"]
    assert value["statuses"] == [2] * 12
    assert len(value["errors"]) == 10


def test_names_never_resolve_against_the_working_directory(tmp_path: Path, monkeypatch) -> None:
    from metanet import MetaNetwork
    from metanet.export import MetanetNotFoundError, export, list_pretrained
    from metanet.export import load as load_metanet

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("METAPRUNE_METANET_PATH", raising=False)
    absent = raises(lambda: load_metanet("local-net"))
    export(MetaNetwork(1, 4, edge_types=["CONV:9"]), tmp_path / "local-net")  # a valid export
    present = raises(lambda: load_metanet("local-net"))
    check_error(present, MetanetNotFoundError, "'local-net' is not registered")
    assert str(present) == str(absent)  # "not found" reads the same either way
    assert load_metanet("./local-net").config["hidden"] == 4  # a path is explicit
    with pytest.raises(Exception, match="only registered names are accepted"):
        load_metanet("./local-net", allow_paths=False)
    for hostile in ("../local-net", "..", "local-net/../x", "a" * 500, "", " "):
        err = raises(lambda: load_metanet(hostile, allow_paths=False))  # noqa: B023
        check_error(err, (MetanetNotFoundError, type(present).__mro__[1]))
    # a registry directory (absolute, from the environment) makes the name resolve
    monkeypatch.setenv("METAPRUNE_METANET_PATH", f"relative{os.pathsep}{tmp_path}")
    assert "local-net" in list_pretrained()
    assert load_metanet("local-net", allow_paths=False).config["hidden"] == 4


def test_a_service_accepts_registered_metanetwork_names_only(tmp_path: Path) -> None:
    from metaprune.errors import InvalidInputError, NotFoundError
    from metaprune.pruning import PruneConfig, prune

    for metanet, kind in (("./m.safetensors", InvalidInputError), ("nope", NotFoundError)):
        config = PruneConfig(method="metanet", metanet=metanet)
        err = raises(lambda: prune("x.safetensors", "digits", config, metanet_paths=False))  # noqa: B023
        check_error(err, kind, repr(metanet))
