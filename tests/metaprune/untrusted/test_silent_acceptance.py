"""Class 4 of issue 9: bad data is no longer accepted silently.

Non-finite weights (generated: which tensors, which values) are refused at load unless
explicitly allowed, and ``prune`` never reports success for a model with non-finite
outputs; an unreachable target exits 3 with ``target_reached: false``; ``eval`` checks the
class count; ``--metanet`` implies ``--method metanet`` and conflicts with any other.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from metaprune import checkpoint
from metaprune.cli import EXIT_TARGET_NOT_REACHED, main
from metaprune.errors import InvalidInputError
from metaprune.models import ArchSpec
from metaprune.pruning import PruneConfig, prune
from metaprune.testing.untrusted import check_error, files_under, generated, raises

SPEC = ArchSpec("cifar_resnet20", {"width": 0.25, "in_channels": 1})
_FAST = [
    "--epochs", "0", "--before-epochs", "0", "--steps", "4", "--bn-images", "32", "--quiet",
]  # fmt: skip


@pytest.fixture(scope="module")
def model_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return SPEC.build().state_dict()


@pytest.fixture(scope="module")
def good(tmp_path_factory, model_state) -> Path:
    return checkpoint.save(model_state, SPEC, tmp_path_factory.mktemp("good") / "m.safetensors")


@generated(20)
@given(
    poison=st.lists(
        st.tuples(st.integers(0, 10_000), st.sampled_from([math.nan, math.inf, -math.inf])),
        min_size=1,
        max_size=4,
    ),
    dtype=st.sampled_from([torch.float32, torch.float16]),
)
def test_non_finite_weights_are_refused_at_load(tmp_path_factory, model_state, poison, dtype):
    state = {k: v.clone().to(dtype) if v.is_floating_point() else v for k, v in model_state.items()}
    floating = [k for k, v in state.items() if v.is_floating_point()]
    poisoned = set()
    for index, value in poison:
        key = floating[index % len(floating)]
        state[key].view(-1)[index % state[key].numel()] = value
        poisoned.add(key)
    path = checkpoint.save(state, SPEC, tmp_path_factory.mktemp("nan") / "m.safetensors")
    err = raises(lambda: checkpoint.load(path))
    message = check_error(err, checkpoint.CheckpointError, "NaN or Inf", "allow_non_finite=True")
    assert f"{len(poisoned)} tensor(s)" in message
    assert all(repr(k) in message for k in sorted(poisoned)[:8])
    loaded, _ = checkpoint.load(path, allow_non_finite=True)  # the explicit option
    values = loaded.state_dict()
    assert all(not torch.isfinite(values[k]).all() for k in poisoned)


def test_prune_refuses_non_finite_models(model_state, tmp_path: Path, capsys) -> None:
    state = {k: v.clone() for k, v in model_state.items()}
    state["fc.weight"][0, 0] = math.nan
    bad = checkpoint.save(state, SPEC, tmp_path / "nan.safetensors")
    out = tmp_path / "out"
    assert main(["prune", str(bad), "--dataset", "digits", "-o", str(out), *_FAST]) == 2
    assert "NaN or Inf" in capsys.readouterr().err and not out.exists()
    model = SPEC.build()
    model.load_state_dict(state)
    err = raises(lambda: prune(model, "digits", PruneConfig()))
    check_error(err, InvalidInputError, "NaN or Inf", "fc.weight")
    # finite weights whose outputs overflow: refused too, never "target reached"
    huge = {k: v.clone() for k, v in model_state.items()}
    huge["fc.weight"].fill_(3e38)
    model.load_state_dict(huge)
    err = raises(lambda: prune(model, "digits", PruneConfig()))
    check_error(err, InvalidInputError, "outputs are NaN or Inf")


def test_exit_codes_say_whether_the_target_was_reached(good: Path, tmp_path: Path, capsys):
    reached, missed = tmp_path / "reached", tmp_path / "missed"
    argv = ["prune", str(good), "--dataset", "digits", *_FAST]
    assert main([*argv, "-o", str(reached), "--target-speedup", "1.2"]) == 0
    assert json.loads((reached / "report.json").read_text())["target_reached"] is True
    status = main([*argv, "-o", str(missed), "--target-speedup", "1000"])
    assert status == EXIT_TARGET_NOT_REACHED == 3
    report = json.loads((missed / "report.json").read_text())
    assert report["target_reached"] is False and report["outputs_finite"] is True
    assert (missed / "model.safetensors").is_file()  # the outputs are still written
    capsys.readouterr()
    assert main(["prune", "--help"]) == 0
    assert "3 prune did not reach its target" in " ".join(capsys.readouterr().out.split())


def test_eval_checks_the_class_count(tmp_path: Path, capsys) -> None:
    spec = ArchSpec("cifar_resnet20", {"width": 0.25, "in_channels": 1, "num_classes": 4})
    path = checkpoint.save(spec.build(), spec, tmp_path / "four.safetensors")
    assert main(["eval", str(path), "--dataset", "digits"]) == 2
    err = capsys.readouterr().err
    assert "classifier has 4 outputs but dataset 'digits' has 10 classes" in err
    assert len(err.strip().splitlines()) == 1


def test_metanet_flag_implies_the_method_and_conflicts_with_others(good: Path, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["prune", str(good), "--dataset", "digits", "-o", str(out), *_FAST]
    assert main([*argv, "--metanet", "resnet20-digits", "--method", "group-l2"]) == 2
    assert "--metanet needs --method metanet" in capsys.readouterr().err
    # implied: the name is looked up (and refused) before any work
    assert main([*argv, "--metanet", "no-such-metanet"]) == 2
    assert "'no-such-metanet' is not registered" in capsys.readouterr().err
    config = tmp_path / "c.yaml"
    config.write_text("method: group-l2\nmetanet: resnet20-digits\n")
    assert main([*argv, "--config", str(config)]) == 2
    assert "does not use it" in capsys.readouterr().err
    assert files_under(tmp_path) == ["c.yaml"]
    assert main(["prune", "--help"]) == 0
    assert "implies --method metanet" in " ".join(capsys.readouterr().out.split())
