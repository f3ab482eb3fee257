"""Tests for metaprune/pruning/config.py: defaults, round trip, validation messages."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml

from metaprune.pruning import (
    CONFIG_VERSION,
    ConfigError,
    FinetuneBudget,
    PruneConfig,
    PruningOptions,
    SparseTraining,
    Target,
)


def test_defaults_are_valid_and_versioned():
    config = PruneConfig()
    assert config.version == CONFIG_VERSION == 2
    assert config.method == "auto"  # resolved per job, see metaprune/pruning/auto.py
    assert config.importance.normalizer == "auto" and config.sparse.reg == "auto"
    assert config.target == Target("macs", 2.0)
    assert config.bn_recalibration_images > 0  # recalibration is on by default
    # budgets are images and seconds, whatever the batch size (issue 18)
    assert config.pruning.curve_points >= 1 and config.pruning.curve_images >= 1
    assert config.importance.search_images >= 1 and config.latency.batch_size is None
    assert 0 < config.latency.seconds <= 10
    assert config.pruning.max_layer_ratio < 1 and config.pruning.min_channels >= 2


def test_frozen_at_every_level():
    config = PruneConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.method = "random"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.target.value = 3.0  # type: ignore[misc]


def test_round_trip_through_json_and_yaml():
    config = PruneConfig(
        method="group-l2-sl", target=Target("latency", 1.5), metanet=None,
        after_pruning=FinetuneBudget(epochs=3, schedule="step", milestones=(2, 1)),
        pruning=PruningOptions(steps=50, round_to=2),
    )  # fmt: skip
    data = config.to_dict()
    assert data["after_pruning"]["milestones"] == [1, 2]  # sorted, a plain list
    assert PruneConfig.from_dict(json.loads(json.dumps(data))) == config
    assert PruneConfig.from_dict(yaml.safe_load(yaml.safe_dump(data))) == config
    assert PruneConfig.from_dict({}) == PruneConfig()  # missing keys take defaults


def test_version_1_data_is_migrated():
    old = {"version": 1, "batch_size": 32, "bn_recalibration_batches": 5,
           "pruning": {"steps": 40, "curve_every": 4}}  # fmt: skip
    config = PruneConfig.from_dict(old)
    assert config.version == 2 and config.bn_recalibration_images == 160  # the images it used
    assert config.pruning.steps == 40 and config.pruning == PruningOptions(steps=40)
    # unversioned data with retired keys (manifests, YAML files) migrates the same way
    assert PruneConfig.from_dict({k: v for k, v in old.items() if k != "version"}) == config
    assert PruneConfig.from_dict({"bn_recalibration_batches": 2}).bn_recalibration_images == 256
    assert PruneConfig().bn_recalibration_images == 1024
    assert PruneConfig.from_dict({"version": 1}) == PruneConfig()
    with pytest.raises(ConfigError, match="not both"):
        PruneConfig.from_dict({"bn_recalibration_batches": 2, "bn_recalibration_images": 9})
    with pytest.raises(ConfigError, match=r"bn_recalibration_batches must be an int >= 0"):
        PruneConfig.from_dict({"bn_recalibration_batches": -1})
    with pytest.raises(ConfigError, match="unknown key"):  # retired keys are not version 2 keys
        PruneConfig.from_dict({"version": 2, "bn_recalibration_batches": 2})


def test_sparse_reg_is_a_number_or_auto():
    assert SparseTraining(reg=0.1).reg == 0.1 and SparseTraining(reg=1).reg == 1.0
    sparse = SparseTraining(auto_grid=[0.01, 0.3, 0.01])
    assert sparse.auto_grid == (0.3, 0.01)  # deduplicated, largest first
    data = PruneConfig(sparse=SparseTraining(reg=0.05, search_fraction=0.25)).to_dict()
    assert data["sparse"] == {
        "reg": 0.05,
        "search_fraction": 0.25,
        "step_down": 0.0,
        "auto_grid": [0.3, 0.1, 0.03, 0.01, 0.003, 0.001],
        "growing_ceiling": 10.0,
        "growing_ramp": 0.25,
    }
    assert PruneConfig.from_dict(json.loads(json.dumps(data))).sparse.reg == 0.05
    assert PruneConfig.from_dict({"sparse": {"reg": "auto"}}).sparse == SparseTraining()
    for bad, match in (("max", "sparse.reg must be a number >= 0 or 'auto'"),
                       (-1.0, r"sparse.reg must be in \[0"), (True, "finite number")):  # fmt: skip
        with pytest.raises(ConfigError, match=match):
            SparseTraining(reg=bad)
    with pytest.raises(ConfigError, match="auto_grid must not be empty"):
        SparseTraining(auto_grid=())
    with pytest.raises(ConfigError, match="search_fraction"):
        SparseTraining(search_fraction=2.0)
    assert SparseTraining().search_fraction is None  # auto: challengers from ~2.8x (sparse.py)
    assert PruneConfig.from_dict({"sparse": {"search_fraction": None}}).sparse.search_fraction is None
    with pytest.raises(ConfigError, match=r"sparse.step_down must be in \[0"):
        SparseTraining(step_down=-1.0)
    assert SparseTraining(step_down=2).step_down == 2.0
    with pytest.raises(ConfigError, match=r"sparse.growing_ramp must be in \[0"):
        SparseTraining(growing_ramp=1.5)
    with pytest.raises(ConfigError, match=r"sparse.growing_ceiling must be in \[0"):
        SparseTraining(growing_ceiling=-1.0)
    assert SparseTraining(growing_ceiling=3, growing_ramp=0).growing_ceiling == 3.0
    # the retired pre-pruning tolerance of version-1 data is dropped, not an error
    old = PruneConfig.from_dict({"version": 1, "sparse": {"reg": "auto", "auto_tolerance": 0.02}})
    assert old.sparse == SparseTraining()
    with pytest.raises(ConfigError, match="auto_tolerance"):  # version 2 has no such key
        PruneConfig.from_dict({"sparse": {"auto_tolerance": 0.02}})


def test_partial_nested_dict_keeps_other_defaults():
    config = PruneConfig.from_dict({"target": {"value": 4}, "pruning": {"steps": 10}})
    assert config.target == Target("macs", 4.0)
    assert config.pruning == PruningOptions(steps=10)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"methd": "random"}, "unknown key(s) 'methd'"),
        ({"pruning": {"stepz": 3}}, "unknown key(s) 'pruning.stepz'"),
        ({"target": 3}, "target must be a mapping"),
        ({"version": 3}, "version must be 2 (found 3)"),
    ],
)
def test_from_dict_rejects_bad_structure(data, expected):
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        PruneConfig.from_dict(data)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"method": "metanett"}, "did you mean 'metanet'"),
        ({"target": {"kind": "flops"}}, "target.kind must be one of 'macs', 'params', 'latency'"),
        ({"target": {"value": 0.5}}, "target.value must be in [1.0, inf] (found 0.5)"),
        ({"before_pruning": {"epochs": -1}}, "before_pruning: epochs must be an int >= 0"),
        ({"after_pruning": {"schedule": "linear"}}, "after_pruning: schedule must be one of"),
        ({"pruning": {"max_layer_ratio": 1.0}}, "pruning.max_layer_ratio must be < 1"),
        ({"batch_size": True}, "batch_size must be an int (found True)"),
        ({"device": "gpu7"}, "device 'gpu7' cannot run a job (expected 'cpu', 'cuda[:N]'"),
        ({"seed": 10**20}, f"seed must be an int <= {2**32 - 1} (found 100000000000000000000)"),
        ({"data_seed": -1}, "data_seed must be an int >= 0 (found -1)"),
        ({"metanet": ""}, "metanet must be a non-empty string"),
    ],
)
def test_invalid_values_name_the_option(data, expected):
    with pytest.raises(ConfigError) as info:
        PruneConfig.from_dict(data)
    assert expected in str(info.value)


def test_nested_objects_must_have_the_right_type():
    with pytest.raises(ConfigError, match="target must be a Target"):
        PruneConfig(target={"kind": "macs"})  # type: ignore[arg-type]


def test_the_data_split_seed_is_not_the_job_seed() -> None:
    # a job seed must never re-draw the split the model was trained on (test leakage)
    config = PruneConfig(seed=3)
    assert config.data_seed == 0
    assert PruneConfig.from_dict(PruneConfig(data_seed=2).to_dict()).data_seed == 2
    with pytest.raises(ConfigError, match="data_seed"):
        PruneConfig(data_seed=-1)


def test_lr_alternatives_are_checked_and_the_default_fine_tune_tries_two_rates():
    assert PruneConfig().after_pruning.lr_alternatives == (0.05,)
    assert PruneConfig().before_pruning.lr_alternatives == ()
    config = PruneConfig(after_pruning=FinetuneBudget(epochs=4, lr_alternatives=[0.1, 0.2]))
    assert config.after_pruning.lr_alternatives == (0.1, 0.2)
    assert PruneConfig.from_dict(config.to_dict()) == config
    for bad, match in (("0.1", "lr_alternatives must be a list"), ([-1.0], r"lr_alternatives\[\]"),
                       ([0.1] * 17, "lr_alternatives has 17 entries")):  # fmt: skip
        with pytest.raises(ConfigError, match=match):
            FinetuneBudget(lr_alternatives=bad)
