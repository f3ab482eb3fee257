"""How far the floor lets a model be pruned (metaprune/pruning/reachable.py): the bound
equals what a full progressive prune saturates at, costs no real memory, and refuses a
target past it before any work, in the library and in the CLI."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from metaprune import DEFAULT_LIMITS, ArchSpec, checkpoint
from metaprune.cli import main
from metaprune.pruning import ConfigError, PruneConfig, progressive_prune, prune
from metaprune.pruning.config import PruningOptions, Target
from metaprune.pruning.reachable import (
    _spec_bound,
    check_reachable,
    check_reachable_spec,
    max_reachable,
    max_reachable_spec,
)

SPEC = ArchSpec("cifar_vgg11_bn", {"in_channels": 1, "width": 0.25})
EXAMPLE = torch.randn(1, 1, 8, 8)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return SPEC.build().eval()


@pytest.mark.parametrize(
    "options",
    [PruningOptions(), PruningOptions(max_layer_ratio=0.5, min_channels=3),
     PruningOptions(round_to=4)],
)  # fmt: skip
def test_the_bound_is_where_a_full_progressive_prune_saturates(model, options) -> None:
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bound = {kind: max_reachable(model, EXAMPLE, options, kind) for kind in ("macs", "params")}
    for key, value in model.state_dict().items():  # the model itself is untouched
        assert value.device.type == "cpu" and torch.equal(value, before[key]), key
    saturated = copy.deepcopy(model)
    history = progressive_prune(
        saturated, EXAMPLE, Target("macs", 1e9), steps=8, round_to=options.round_to,
        max_layer_ratio=options.max_layer_ratio, min_channels=options.min_channels,
    )  # fmt: skip
    assert not history[-1].reached  # the schedule ran into the floor
    assert history[-1].macs_speedup == pytest.approx(bound["macs"], rel=1e-9)
    assert history[-1].param_ratio == pytest.approx(bound["params"], rel=1e-9)
    assert 1.5 < bound["macs"] < 1 / (1 - options.max_layer_ratio) ** 2 + 1e-9


def test_a_looser_floor_reaches_further(model) -> None:
    values = [
        max_reachable(model, EXAMPLE, PruningOptions(max_layer_ratio=r)) for r in (0.25, 0.5, 0.75)
    ]
    assert values == sorted(values) and values[0] < values[-1]
    with pytest.raises(ConfigError, match="kind must be one of"):
        max_reachable(model, EXAMPLE, kind="latency")


def test_check_refuses_past_the_bound_naming_it(model) -> None:
    best = max_reachable(model, EXAMPLE)
    ok = PruneConfig(target=Target("macs", best * 0.999))
    assert check_reachable(model, EXAMPLE, ok) == best
    with pytest.raises(ConfigError) as info:
        check_reachable(model, EXAMPLE, PruneConfig(target=Target("macs", 1e9)))
    message = str(info.value)
    shown = f"{math.floor(best * 100) / 100:.2f}"
    assert f"this model reaches at most {shown}; ask for <= {shown}" in message
    assert message.startswith("target.value 1e+09 (macs ratio) cannot be reached")
    latency = PruneConfig(target=Target("latency", 1e9))
    assert check_reachable(model, EXAMPLE, latency) is None  # only known by measuring


def test_the_spec_bound_matches_the_model_bound_and_is_cached(model) -> None:
    best = max_reachable(model, EXAMPLE)
    assert max_reachable_spec(SPEC, (1, 8, 8), PruningOptions(), "macs", DEFAULT_LIMITS) == best
    hits = _spec_bound.cache_info().hits
    config = PruneConfig(target=Target("macs", best * 0.99))
    assert check_reachable_spec(SPEC, (1, 8, 8), config, DEFAULT_LIMITS) == best
    assert _spec_bound.cache_info().hits == hits + 1  # cached: a repeated request costs nothing
    with pytest.raises(ConfigError, match="at most"):
        check_reachable_spec(SPEC, (1, 8, 8), PruneConfig(target=Target("macs", 99.0)),
                             DEFAULT_LIMITS)  # fmt: skip


def test_prune_refuses_before_any_work(model) -> None:
    events = []
    with pytest.raises(ConfigError, match="cannot be reached"):
        prune(model, "digits", PruneConfig(target=Target("params", 1e6)), events.append,
              spec=SPEC)  # fmt: skip
    # refused by the start-up checks, before the base evaluation started
    assert [e.metrics.get("check") for e in events] == [None, "model", "data", "classifier"]
    assert {e.stage for e in events} == {"checks"}


def test_the_cli_refuses_an_unreachable_target_at_once(tmp_path, capsys, model) -> None:
    path = checkpoint.save(model, SPEC, tmp_path / "vgg.safetensors")
    status = main(["prune", str(path), "--dataset", "digits", "-o", str(tmp_path / "out"),
                   "--target-speedup", "1e9", "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert status == 2, err
    assert "cannot be reached" in err and "this model reaches at most" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("seed", ["-1", str(2**32), str(10**20)])
def test_seeds_are_bounded_in_the_cli(tmp_path, capsys, seed) -> None:
    status = main(["prune", str(tmp_path / "m.safetensors"), "--dataset", "digits", "-o",
                   str(tmp_path), "--seed", seed])  # fmt: skip
    err = capsys.readouterr().err
    assert status == 2 and f"expected an int in [0, {2**32 - 1}], found {seed!r}" in err
    status = main(["eval", str(tmp_path / "m.safetensors"), "--dataset", "digits",
                   "--seed", seed])  # fmt: skip
    assert status == 2 and "--seed" in capsys.readouterr().err
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"seed": int(seed)}))
    assert main(["prune", str(tmp_path / "m.safetensors"), "--dataset", "digits", "-o",
                 str(tmp_path), "--config", str(config)]) == 2  # fmt: skip
    assert "seed must be an int" in capsys.readouterr().err


class _DataDependent(torch.nn.Module):
    """A forward that needs real values (``.item()``): no meta-device run."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 8, 3)
        self.fc = torch.nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        if h.mean().item() > 1e9:
            h = h * 0
        return self.fc(h.mean((2, 3)))


def test_a_model_that_cannot_run_on_meta_is_not_refused() -> None:
    config = PruneConfig(target=Target("macs", 1e9))
    assert check_reachable(_DataDependent(), EXAMPLE, config) is None  # not known: no refusal


class _WidthInForward(torch.nn.Module):
    """conv1's width is a constant of forward (the dry run freezes it) and carries most
    of the MACs; 1x8x8 inputs, 10 classes (digits)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(32, 4, 1)
        self.fc = torch.nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x).reshape(x.shape[0], 32, 8, 8).relu()
        return self.fc(self.conv2(x).relu().mean((2, 3)))


def test_frozen_groups_count_before_any_work() -> None:
    """A target only the frozen groups could reach is refused after the dry run, naming
    them, before any evaluation (it used to run the whole job and end short)."""
    from metaprune.pruning.structure import check_prunable

    torch.manual_seed(0)
    model = _WidthInForward().eval()
    frozen = check_prunable(model, EXAMPLE).frozen_modules
    assert frozen == ("conv1",)
    assert 1.0 < max_reachable(model, EXAMPLE, frozen=frozen) < 1.2  # conv2 alone
    config = PruneConfig(target=Target("macs", 1.2))
    assert check_reachable(model, EXAMPLE, config) is None  # unfrozen, the bound breaks it
    events = []
    with pytest.raises(ConfigError, match=r"'conv1'\) this model reaches at most") as err:
        prune(model, "digits", config, events.append)
    assert "cannot prune structurally" in str(err.value)
    # refused after the dry run, inside the start-up checks: no evaluation started
    assert [e.metrics.get("check") for e in events] == [None, "model", "data", "classifier",
                                                        "reachable"]  # fmt: skip
    assert {e.stage for e in events} == {"checks"}
