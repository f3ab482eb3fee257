"""Manifest validation: every problem in one message, before any work; tasks and digests."""

import pytest

from metaprune.batch import ManifestError, load_manifest, parse_manifest
from metaprune.cli import main
from metaprune.testing.batch import TINY_CONFIG, TINY_DATASET, make_tiny_models, write_manifest


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return make_tiny_models(tmp_path_factory.mktemp("zoo") / "models", n=2)


def test_a_valid_manifest_gives_one_task_per_model_and_target(models, tmp_path):
    zoo = models[0].parent
    path = write_manifest(
        zoo.parent / "m.yaml",
        [
            {"path": "models/*.safetensors"},
            {"path": "models/m0.safetensors", "name": "m0-long", "targets": [{"kind": "params", "value": 3}],
             "config": {"after_pruning": {"epochs": 2}}},
        ],
    )  # fmt: skip
    m = load_manifest(path)
    assert [t.key for t in m.tasks] == [
        "m0/macs-1.5x", "m0/macs-2x", "m1/macs-1.5x", "m1/macs-2x", "m0-long/params-3x",
    ]  # fmt: skip
    assert m.max_attempts == 2 and m.resources == {}
    t0, long = m.tasks[0], m.tasks[-1]
    assert t0.checkpoint == str(models[0]) and t0.dataset == {**TINY_DATASET, "root": None}
    assert t0.config["target"] == {"kind": "macs", "value": 1.5}
    assert t0.config["after_pruning"]["epochs"] == 1 and t0.config["pruning"]["steps"] == 20
    assert long.config["after_pruning"]["epochs"] == 2  # merged over the top-level config
    assert long.config["after_pruning"]["lr"] == t0.config["after_pruning"]["lr"]
    assert long.config["batch_size"] == TINY_CONFIG["batch_size"]
    # the digest is stable for equal inputs and changes with any of them
    assert load_manifest(path).tasks[0].digest == t0.digest
    assert len({t.digest for t in m.tasks}) == len(m.tasks)
    args = t0.args(tmp_path)
    assert args["out_dir"] == str(tmp_path / "m0" / "macs-1.5x") and args["digest"] == t0.digest


def test_every_problem_is_listed_in_one_error(models):
    zoo = models[0].parent.parent
    data = {
        "version": 2,
        "dataset": "imagenet-but-not-registered",
        "targets": [0.5, 2.0, 2.0, {"kind": "flops", "value": 2}],
        "config": {"method": "magic", "target": {"value": 3}},
        "max_attempts": 0,
        "resources": {"num_cpus": -1},
        "limits": {"max_epochs": 5, "max_widgets": 1},
        "surprise": True,
        "models": [
            {"path": "models/missing.safetensors"},
            {"path": "nothing/*.safetensors"},
            {"path": "models/*.safetensors", "name": "one", "extra": 1},
            {"path": "models/m0.safetensors", "config": {"batch_size": 0}},
            "not-a-mapping",
        ],
    }
    with pytest.raises(ManifestError) as info:
        parse_manifest(data, base=zoo, source="'m.yaml'")
    text, problems = str(info.value), info.value.problems
    listed = "\n".join(problems)  # the message itself is capped (errors.MAX_MESSAGE_BYTES)
    expected = [
        "unknown key 'surprise'", "version must be 1 (found 2)", "max_attempts must be an int >= 1",
        "resources: Resources.num_cpus", "config.target is not allowed",
        "limits: limits: unknown key(s) ['max_widgets']",
        "unknown dataset 'imagenet-but-not-registered'", "targets[0]: target.value",
        "targets[2]: target macs-2x is listed twice", "targets[3]: target.kind",
        "models[0].path 'models/missing.safetensors' does not exist",
        "models[1].path 'nothing/*.safetensors' matches no file",
        "unknown key 'models[2].extra'", "models[2].name is only allowed for a single file",
        "models[4] must be a mapping",
    ]  # fmt: skip
    for fragment in expected:
        assert fragment in listed, fragment
    assert len(text) <= 4096 and "unknown key 'surprise'" in text
    assert text.startswith(f"manifest 'm.yaml': {len(problems)} problems: (1) ")
    assert len(problems) >= len(expected)
    assert isinstance(info.value, ValueError)  # an InvalidInputError: CLI exit 2


def test_config_and_name_problems(models):
    zoo = models[0].parent.parent
    data = {
        "dataset": TINY_DATASET,
        "targets": [2],
        "models": [
            {"path": "models/m0.safetensors", "config": {"pruning": {"stepz": 3}}},
            {"path": "models/m1.safetensors", "config": {"method": "metanet"}},
            {"path": "models/m1.safetensors", "name": "m0"},
            {"path": "models/m1.safetensors", "name": "../escape"},
            {
                "path": "models/m1.safetensors",
                "name": "m3",
                "config": {"after_pruning": {"epochs": 30}},
            },
        ],
        "limits": {"max_epochs": 25},
    }
    with pytest.raises(ManifestError) as info:
        parse_manifest(data, base=zoo)
    problems = info.value.problems
    assert any("models[0].config" in p and "pruning.stepz" in p for p in problems), problems
    assert any("method 'metanet' needs 'metanet'" in p for p in problems), problems
    assert any("model name 'm0' is also used by models[0]" in p for p in problems), problems
    assert any("model name '../escape' must be" in p for p in problems), problems
    assert any(
        "models[4].config: PruneConfig.after_pruning.epochs: max_epochs is 25 but 30" in p
        for p in problems
    ), problems
    assert len(problems) == 5


def test_unreadable_manifests(tmp_path):
    with pytest.raises(ManifestError, match="cannot be read"):
        load_manifest(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [unclosed\n")
    with pytest.raises(ManifestError, match="not valid YAML"):
        load_manifest(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ManifestError, match="must be a mapping"):
        load_manifest(bad)


def test_the_cli_reports_manifest_problems_and_missing_batches(models, tmp_path, capsys):
    manifest = write_manifest(tmp_path / "m.yaml", [{"path": "nope/*.safetensors"}], targets=[0.5])
    out = tmp_path / "out"
    assert main(["batch", "run", str(manifest), "-o", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("metaprune: error: manifest ") and "2 problems" in err
    assert "matches no file" in err and "targets[0]" in err
    assert not out.exists()  # nothing was started
    assert main(["batch", "status", str(tmp_path)]) == 2
    assert "holds no batch (no batch.json)" in capsys.readouterr().err
    assert main(["batch", "run", str(manifest), "-o", str(out), "--ray-address", "x:1"]) == 2
    assert "--ray-address needs --backend ray" in capsys.readouterr().err


def test_dataset_kwargs_are_checked_like_the_cli_and_the_service(models):
    zoo = models[0].parent.parent
    data = {
        "dataset": {"name": "synthetic", "kwargs": {"imagesize": 64}},
        "limits": {"max_image_size": 32},
        "models": [
            {"path": "models/m0.safetensors", "dataset": {"name": "synthetic", "kwargs": {"image_size": 64}}},
            {"path": "models/m1.safetensors"},
        ],
    }  # fmt: skip
    with pytest.raises(ManifestError) as info:
        parse_manifest(data, base=zoo)
    text = "\n".join(info.value.problems)
    assert "models[0].dataset.kwargs: dataset 'synthetic' image_size: max_image_size is 32" in text
    assert "dataset.kwargs: dataset 'synthetic' has no option 'imagesize'" in text
