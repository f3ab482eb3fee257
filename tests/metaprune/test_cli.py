"""Tests for metaprune/cli.py: one-line errors with exit status 2, a happy path, plugins."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import save_file

from metaprune import checkpoint, cli
from metaprune.cli import main
from metaprune.models import ArchSpec


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """An untrained 1-channel, 10-class ResNet-20 at width 0.25 (a digits model)."""
    spec = ArchSpec("cifar_resnet20", {"width": 0.25, "in_channels": 1})
    torch.manual_seed(0)
    return str(
        checkpoint.save(spec.build(), spec, tmp_path_factory.mktemp("ckpt") / "r20.safetensors")
    )


def _error(capsys, argv):
    status = main(argv)
    out, err = capsys.readouterr()
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_missing_checkpoint(capsys, tmp_path):
    line = _error(capsys, ["info", str(tmp_path / "nope.safetensors")])
    assert line.startswith("metaprune: error: checkpoint file") and "does not exist" in line
    line = _error(
        capsys,
        ["prune", str(tmp_path / "nope.safetensors"), "--dataset", "digits", "-o", str(tmp_path)],
    )
    assert "does not exist" in line


def test_unknown_dataset(capsys, ckpt):
    line = _error(capsys, ["eval", ckpt, "--dataset", "digitz"])
    assert "unknown dataset 'digitz'" in line and "did you mean 'digits'" in line


def test_unknown_model_in_checkpoint(capsys, tmp_path):
    spec = {"format_version": 1, "name": "resnet_9000", "kwargs": {}}
    path = tmp_path / "bad.safetensors"
    save_file({"w": torch.zeros(1)}, str(path),
              metadata={"metaprune.format_version": "1", "metaprune.spec": json.dumps(spec)})  # fmt: skip
    assert "unknown model 'resnet_9000'" in _error(capsys, ["info", str(path)])


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], "the following arguments are required: COMMAND"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["prune", "X", "--dataset", "digits"], "required: -o/--out"),
        (
            ["prune", "X", "--dataset", "digits", "-o", "o", "--target-speedup", "abc"],
            "expected a number > 0, found 'abc'",
        ),
        (
            ["prune", "X", "--dataset", "digits", "-o", "o", "--method", "magic"],
            "invalid choice: 'magic'",
        ),
        (
            ["prune", "X", "--dataset", "digits", "-o", "o", "--target-speedup", "0.5"],
            "target.value must be in [1.0, inf]",
        ),
        (
            ["prune", "X", "--dataset", "digits", "-o", "o", "--reg", "strong"],
            "must be a number >= 0 or 'auto' (found 'strong')",
        ),
        (["info", "X", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_arguments(capsys, argv, expected):
    assert expected in _error(capsys, argv)


def test_bad_config_file(capsys, ckpt, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"pruning": {"stepz": 3}}))
    line = _error(
        capsys, ["prune", ckpt, "--dataset", "digits", "-o", str(tmp_path), "--config", str(path)]
    )
    assert "unknown key(s) 'pruning.stepz'" in line
    line = _error(
        capsys,
        ["prune", ckpt, "--dataset", "digits", "-o", "o", "--config", str(tmp_path / "none.yaml")],
    )
    assert "cannot read config" in line


def test_help_exits_zero(capsys):
    assert main(["--help"]) == 0
    assert "prune" in capsys.readouterr().out


def test_prune_eval_info_happy_path(capsys, ckpt, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump({"latency": {"batch_size": 8, "repeats": 2}, "pruning": {"curve_every": 5}})
    )
    out = tmp_path / "out"
    status = main([
        "prune", ckpt, "--dataset", "digits", "--target-speedup", "1.5", "--method", "group-l2",
        "--before-epochs", "0", "--epochs", "1", "--steps", "20", "--bn-images", "64",
        "--config", str(config), "--threads", "1", "-o", str(out),
    ])  # fmt: skip
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "target macs 1.5x reached" in captured.out
    assert "after_pruning" in captured.err  # the progress bar, on stderr
    assert {p.name for p in out.iterdir()} == {"model.safetensors", "report.json", "curve.png"}
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["latency"]["batch_size"] == 8  # from the file
    assert report["config"]["after_pruning"]["epochs"] == 1  # from the flags
    assert report["speedup"]["macs"] >= 1.5

    assert main(["eval", str(out / "model.safetensors"), "--dataset", "digits", "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["test_accuracy"] == pytest.approx(report["final"]["test_accuracy"])
    assert evaluated["macs"] == report["final"]["macs"]

    assert main(["info", str(out / "model.safetensors"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["architecture"] == "cifar_resnet20" and info["pruned_modules"] > 0
    assert info["macs"] == report["final"]["macs"] and info["graph"]["nodes"] > 0


def test_prune_method_metanet_without_a_name_follows_the_evidence(capsys, ckpt, tmp_path):
    out = tmp_path / "out"
    status = main([
        "prune", ckpt, "--dataset", "digits", "--target-speedup", "1.3", "--method", "metanet",
        "--before-epochs", "0", "--epochs", "0", "--steps", "10", "--bn-images", "32",
        "--threads", "1", "--quiet", "-o", str(out),
    ])  # fmt: skip
    captured = capsys.readouterr()
    assert status == 0, captured.err
    # no shipped metanetwork has a winning held-out record on cifar_resnet20 (issue 21):
    # the strongest baseline runs instead, and the summary says why
    assert "method     metanet -> group-l2: no registered metanetwork has a winning" in captured.out
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == "group-l2" and report["method_choice"]["requested"] == "metanet"
    assert "general-digits" in report["method_choice"]["reason"]
    assert "metanet" not in report["stages"]["before_pruning"]


def test_info_text(capsys, ckpt):
    assert main(["info", ckpt]) == 0
    out = capsys.readouterr().out
    assert "cifar_resnet20" in out and "MACs" in out and "nodes" in out


def test_plugins_register_subcommands(capsys, monkeypatch):
    monkeypatch.setattr(cli, "_SUBCOMMANDS", dict(cli._SUBCOMMANDS))
    calls = []

    def configure(parser):
        parser.add_argument("--n", type=int, required=True)

    cli.add_subcommand("hello", configure, lambda args: calls.append(args.n) or 3, help="say hi")
    assert main(["hello", "--n", "7"]) == 3 and calls == [7]
    assert "hello: error: the following arguments are required: --n" in _error(capsys, ["hello"])


def test_dataset_kwargs_on_prune_and_eval(capsys, ckpt, tmp_path):
    # the digits model (1 channel, 10 classes) on a synthetic task at 16x16
    options = json.dumps({"image_size": 16, "num_classes": 10, "in_channels": 1})
    out = tmp_path / "out"
    status = main([
        "prune", ckpt, "--dataset", "synthetic", "--dataset-kwargs", options,
        "--target-speedup", "1.5", "--method", "group-l2", "--before-epochs", "0",
        "--epochs", "0", "--steps", "5", "--threads", "1", "--quiet", "-o", str(out),
    ])  # fmt: skip
    captured = capsys.readouterr()
    assert status == 0, captured.err
    report = json.loads((out / "report.json").read_text())
    assert report["dataset"] == "synthetic"
    assert report["dataset_kwargs"] == {"image_size": 16, "num_classes": 10, "in_channels": 1}
    assert report["base"]["macs"] > 4 * 11_000  # 16x16 costs 4x the 8x8 default
    argv = ["eval", str(out / "model.safetensors"), "--dataset", "synthetic", "--json"]
    assert main([*argv, "--dataset-kwargs", options]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["test_accuracy"] == pytest.approx(report["final"]["test_accuracy"])
    assert evaluated["macs"] == report["final"]["macs"]
    assert "to have 1 channels, but got 3" in _error(capsys, argv)  # the default: 3 channels
    assert main(["info", str(out / "model.safetensors"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["input_shape"] == [1, 16, 16]  # as pruned


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ('{"imagesize": 64}', "has no option 'imagesize' (did you mean 'image_size'?)"),
        ('{"image_size": 4096}', "max_image_size is 1,024 but 4,096 was requested"),
        ('{"image_size": "big"}', "image_size must be an int >= 1 (found 'big')"),
        ("[64]", "expected a JSON object"),
        ("{image_size: 64", "is not valid JSON"),
    ],
)
def test_dataset_kwargs_errors(capsys, ckpt, tmp_path, options, expected):
    for command in (["eval", ckpt], ["prune", ckpt, "-o", str(tmp_path / "o")]):
        line = _error(capsys, [*command, "--dataset", "synthetic", "--dataset-kwargs", options])
        assert expected in line, line
    assert not (tmp_path / "o").exists()
