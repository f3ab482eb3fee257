"""Zoo snapshots (issue 21): K members per training run, the meta split drawn over runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from metanet.zoo import INDEX_NAME, Zoo, ZooConfig, build_zoo, tiny_zoo_config
from metaprune.checkpoint import read_spec
from metaprune.pruning.config import FinetuneBudget


def _config(size: int = 3, snapshots: int = 3) -> ZooConfig:
    return tiny_zoo_config(
        size=size, snapshots=snapshots, train=FinetuneBudget(epochs=2, lr=0.05),
        finetune=FinetuneBudget(epochs=2, lr=0.01),
    )  # fmt: skip


def test_names_epochs_and_bounds() -> None:
    config = _config()
    assert config.run_names() == ["0000", "0001", "0002"]
    assert config.run_members("0001") == ["0001.1", "0001.2", "0001"]
    assert len(config.member_names()) == 9
    assert config.snapshot_epochs() == [1, 3]  # of 4: one in training, one in the fine-tune
    assert ZooConfig.from_dict(config.to_dict()) == config
    one = tiny_zoo_config(size=2)
    assert "snapshots" not in one.to_dict() and one.member_names() == ["0000", "0001"]
    with pytest.raises(ValueError, match="snapshots must be at most the run's epochs"):
        tiny_zoo_config(snapshots=3)  # 1 + 1 epochs
    with pytest.raises(ValueError, match="snapshots must be an int >= 1"):
        tiny_zoo_config(snapshots=0)
    for k in range(1, 29):
        epochs = ZooConfig(snapshots=k).snapshot_epochs()  # 20 + 8 epochs
        assert len(set(epochs)) == k - 1 and all(1 <= e < 28 for e in epochs)
        assert epochs == sorted(epochs)


def test_split_by_run_never_straddles() -> None:
    for seed in range(20):
        config = ZooConfig(size=10, snapshots=4, split_seed=seed, meta_val_fraction=0.3)
        zoo = Zoo(Path("."), config, *_split(config))
        train_runs = {zoo.run_of(m) for m in zoo.meta_train}
        val_runs = {zoo.run_of(m) for m in zoo.meta_val}
        assert not train_runs & val_runs
        assert len(val_runs) == 3 and len(train_runs) == 7
        assert sorted(zoo.meta_train + zoo.meta_val) == sorted(config.member_names())


def _split(config: ZooConfig) -> tuple[list[str], list[str]]:
    from metanet.zoo.index import meta_split

    tr, va = meta_split(config.run_names(), config.meta_val_fraction, config.split_seed)
    return (
        [m for r in tr for m in config.run_members(r)],
        [m for r in va for m in config.run_members(r)],
    )


@pytest.mark.slow
def test_build_writes_snapshots_and_resumes(tmp_path: Path) -> None:
    config = _config(size=2)
    zoo = build_zoo(config, tmp_path, progress=False)
    index = json.loads((tmp_path / INDEX_NAME).read_text())
    assert index["complete"] is True
    assert [m["name"] for m in index["members"]] == [
        "0000.1",
        "0000.2",
        "0000",
        "0001.1",
        "0001.2",
        "0001",
    ]
    assert [m["run"] for m in index["members"]] == ["0000"] * 3 + ["0001"] * 3
    assert [m["seed"] for m in index["members"]] == [0] * 3 + [1] * 3
    split = index["split"]
    assert {zoo.run_of(m) for m in split["meta_train"]}.isdisjoint(
        {zoo.run_of(m) for m in split["meta_val"]}
    )
    assert len(split["meta_train"]) == 3 and len(split["meta_val"]) == 3
    for run in zoo.runs:
        early, mid, final = (zoo.metrics(m) for m in config.run_members(run))
        assert early["snapshot_epoch"] == 1 and mid["snapshot_epoch"] == 3
        assert early["macs_speedup"] == pytest.approx(1.0)  # taken during training: unpruned
        assert mid["macs"] == final["macs"] and final["macs_speedup"] >= 1.3  # fine-tune: pruned
        assert not read_spec(zoo.paths(f"{run}.1")[0]).channel_plan
        assert read_spec(zoo.paths(f"{run}.2")[0]).channel_plan
        models = [zoo.load_member(m)[0] for m in config.run_members(run)]
        w = [m.state_dict()["fc.weight"] for m in models]
        assert w[0].shape != w[1].shape or not w[0].equal(w[1])
        assert not w[1].equal(w[2]) or w[1].shape != w[2].shape
    # resume: a run with a missing snapshot metrics file is rebuilt as a whole
    zoo.paths("0001.1")[1].unlink()
    assert zoo.finished_runs() == ["0000"]
    built: list[str] = []
    build_zoo(config, tmp_path, progress=False, on_member=lambda m: built.append(m["name"]))
    assert built == ["0001"] and Zoo.open(tmp_path).finished_runs() == ["0000", "0001"]


def test_snapshot_dtype_bounds_and_default_left_out() -> None:
    assert "snapshot_dtype" not in _config().to_dict()
    half = tiny_zoo_config(size=1, snapshot_dtype="float16")
    assert half.to_dict()["snapshot_dtype"] == "float16" and ZooConfig.from_dict(half.to_dict()) == half
    with pytest.raises(ValueError, match=r"snapshot_dtype must be one of \['float16', 'float32'\] \(found 'int8'\)"):
        tiny_zoo_config(snapshot_dtype="int8")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_float16_snapshots_are_stored_half_and_load_as_float32(tmp_path: Path) -> None:
    import dataclasses

    import torch
    from safetensors import safe_open

    from metanet.zoo.member import task_splits
    from metaprune.data import make_loaders
    from metaprune.pruning.finetune import evaluate

    config = dataclasses.replace(_config(size=1, snapshots=2), snapshot_dtype="float16")
    zoo = build_zoo(config, tmp_path, progress=False)
    snapshot, final = zoo.paths("0000.1")[0], zoo.paths("0000")[0]
    for path, dtype in ((snapshot, "F16"), (final, "F32")):
        with safe_open(str(path), "pt") as f:
            kinds = {f.get_slice(k).get_dtype() for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
        assert dtype in kinds and kinds <= {dtype, "I64"}  # num_batches_tracked stays int
    model, _ = zoo.load_member("0000.1")
    params = [p for p in model.state_dict().values() if p.is_floating_point()]
    assert params and all(p.dtype == torch.float32 for p in params)
    assert all(p.equal(p.half().float()) for p in params)  # exactly the stored halves
    # the snapshot's recorded test accuracy is that of the stored weights
    _, _, test = make_loaders(task_splits(config), config.batch_size, seed=config.seed)
    assert zoo.metrics("0000.1")["test_accuracy"] == evaluate(model.eval(), test)


def test_the_distinct_run_recipe_takes_late_members_and_unused_seeds() -> None:
    """Issue 21's fourth pass: chunks of distinct runs whose latest 3 members all come after
    the light prune (what a metanetwork meets), with seeds no other zoo or held-out model has."""
    import yaml

    root = Path(__file__).resolve().parents[2] / "metanet" / "configs"
    data = yaml.safe_load((root / "zoo_resnet20_digits_distinct.yaml").read_text())
    config = ZooConfig.from_dict(data)
    base = ZooConfig.from_dict(yaml.safe_load((root / "zoo_resnet20_digits.yaml").read_text()))
    assert config.train == base.train and config.finetune == base.finetune  # the zoo recipe
    assert config.snapshot_epochs() == [2, 4, 6, 8, 10, 12, 14, 16, 18]
    late = dict(zip(config.run_members("0000")[:-1], config.snapshot_epochs()))
    assert [late[m] for m in config.run_members("0000")[-3:-1]] == [16, 18]
    assert all(e > config.train.epochs for e in (16, 18))  # in the fine-tune, after the prune
    assert config.snapshot_dtype == "float16" and config.size == 8
    chunks = {config.seed + 8 * c + i for c in range(16) for i in range(config.size)}
    used = set(range(0, 40)) | set(range(100, 140)) | set(range(1000, 1012)) | set(range(2000, 2040))
    assert min(chunks) == 3000 and not chunks & used  # shipped zoos, held-out models (100+)
