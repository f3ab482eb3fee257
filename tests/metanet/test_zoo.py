"""Model zoos: build, index, resume, rebuild of interrupted members, meta split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from metanet.cli import main
from metanet.zoo import (
    INDEX_NAME,
    Zoo,
    ZooConfig,
    ZooError,
    build_zoo,
    meta_split,
    task_splits,
    tiny_zoo_config,
)
from metaprune.checkpoint import read_spec
from metaprune.data import make_loaders
from metaprune.pruning.finetune import evaluate


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("zoo")
    build_zoo(tiny_zoo_config(size=2), root, progress=False)
    return root


def test_zoo_layout_index_and_metrics(zoo_dir: Path) -> None:
    index = json.loads((zoo_dir / INDEX_NAME).read_text())
    assert index["format_version"] == 1 and index["complete"] is True
    assert [m["name"] for m in index["members"]] == ["0000", "0001"]
    assert [m["seed"] for m in index["members"]] == [0, 1]
    assert all(m["finished"] for m in index["members"])
    split = index["split"]
    assert len(split["meta_val"]) == 1 and len(split["meta_train"]) == 1
    assert sorted(split["meta_train"] + split["meta_val"]) == ["0000", "0001"]
    assert ZooConfig.from_dict(index["config"]) == tiny_zoo_config(size=2)

    zoo = Zoo.open(zoo_dir)
    for name in zoo.members:
        ckpt, metrics_path = zoo.paths(name)
        assert ckpt == zoo_dir / "members" / f"{name}.safetensors" and metrics_path.exists()
        metrics = zoo.metrics(name)
        for key in (
            "val_accuracy",
            "test_accuracy",
            "macs",
            "params",
            "macs_speedup",
            "seed",
            "recipe",
        ):
            assert key in metrics, key
        assert metrics["macs_speedup"] >= 1.3 and metrics["macs"] < metrics["base_macs"]
        assert metrics["params"] < metrics["base_params"]
        assert read_spec(ckpt).channel_plan  # pruned: the plan is in the checkpoint
        model, spec = zoo.load_member(name)
        assert spec.name == "cifar_resnet20" and not model.training
        _, val, _ = make_loaders(task_splits(zoo.config), 64, seed=0)
        assert evaluate(model, val) == pytest.approx(metrics["val_accuracy"])


def test_resume_skips_finished_and_rebuilds_interrupted_members(zoo_dir: Path) -> None:
    zoo = Zoo.open(zoo_dir)
    before = {n: zoo.metrics(n) for n in zoo.members}
    stamps = {n: zoo.paths(n)[0].stat().st_mtime_ns for n in zoo.members}
    built: list[str] = []
    build_zoo(zoo.config, zoo_dir, progress=False, on_member=lambda m: built.append(m["name"]))
    assert built == []
    assert {n: zoo.paths(n)[0].stat().st_mtime_ns for n in zoo.members} == stamps

    # an interrupted member: checkpoint written, metrics (written last) missing
    zoo.paths("0001")[1].unlink()
    assert zoo.finished() == ["0000"]
    zoo.write_index()
    assert json.loads((zoo_dir / INDEX_NAME).read_text())["complete"] is False
    build_zoo(zoo.config, zoo_dir, progress=False, on_member=lambda m: built.append(m["name"]))
    assert built == ["0001"]
    assert zoo.finished() == ["0000", "0001"]
    rebuilt = zoo.metrics("0001")
    assert rebuilt["val_accuracy"] == before["0001"]["val_accuracy"]  # seeded: same member again
    assert rebuilt["macs"] == before["0001"]["macs"]
    assert json.loads((zoo_dir / INDEX_NAME).read_text())["complete"] is True


def test_cli_resumes_a_finished_zoo(
    zoo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "zoo.yaml"
    config.write_text(yaml.safe_dump(tiny_zoo_config(size=2).to_dict()))
    assert (
        main(["zoo", "build", "--root", str(zoo_dir), "--config", str(config), "--no-progress"])
        == 0
    )
    out = capsys.readouterr().out
    assert "2 members" in out and "meta-train 1, meta-val 1" in out


def test_other_configuration_in_the_same_directory_is_refused(zoo_dir: Path) -> None:
    with pytest.raises(ZooError, match=r"differs in \['size'\]"):
        build_zoo(tiny_zoo_config(size=3), zoo_dir, progress=False)


def test_unfinished_member_cannot_be_loaded(tmp_path: Path) -> None:
    zoo = Zoo.create(tmp_path, tiny_zoo_config(size=2))
    assert zoo.finished() == []
    with pytest.raises(ZooError, match="'0000' is not finished"):
        zoo.load_member("0000")
    with pytest.raises(ZooError, match="cannot read zoo index"):
        Zoo.open(tmp_path / "nowhere")


def test_meta_split_is_seeded_disjoint_and_sized() -> None:
    names = [f"{i:04d}" for i in range(20)]
    train, val = meta_split(names, 0.2, seed=0)
    assert len(val) == 4 and len(train) == 16
    assert set(train).isdisjoint(val) and sorted(train + val) == names
    assert meta_split(names, 0.2, seed=0) == (train, val)
    assert meta_split(names, 0.2, seed=1) != (train, val)
    assert meta_split(names[:2], 0.2, seed=0)[1] != []  # at least one meta-val member
    assert meta_split(names[:1], 0.2, seed=0) == (names[:1], [])
    assert meta_split(names, 0.0, seed=0) == (names, [])


def test_config_round_trip_and_errors() -> None:
    config = ZooConfig()
    assert ZooConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert config.arch == "cifar_resnet20" and config.dataset == "digits"
    with pytest.raises(ValueError, match="unknown key"):
        ZooConfig.from_dict({"sise": 3})
    with pytest.raises(ValueError, match="size must be an int >= 1"):
        ZooConfig(size=0)
    with pytest.raises(ValueError, match="initial_speedup must be >= 1"):
        ZooConfig(initial_speedup=0.5)
    with pytest.raises(ValueError, match="workers must be an int >= 1"):
        build_zoo(tiny_zoo_config(), "unused", workers=0)


@pytest.mark.slow
def test_worker_processes_build_the_same_members(tmp_path: Path, zoo_dir: Path) -> None:
    zoo = build_zoo(tiny_zoo_config(size=2), tmp_path, workers=2, progress=False)
    reference = Zoo.open(zoo_dir)
    for name in zoo.members:
        assert zoo.metrics(name)["macs"] == reference.metrics(name)["macs"]
        a, _ = zoo.load_member(name)
        b, _ = reference.load_member(name)
        x = torch.randn(4, 1, 8, 8)
        # one torch thread in workers vs the default here: equal up to float reassociation
        torch.testing.assert_close(a(x), b(x), rtol=1e-3, atol=1e-3)
