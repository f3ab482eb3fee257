"""Class 6 of issue 9: friendly where it is safe.

``metaprune.save`` accepts the plain JSON form of a spec the docs describe (validated the
same way as an ``ArchSpec``), and ``metaprune.load`` accepts the output directory of
``metaprune prune`` when it holds exactly one checkpoint (else it says which to pass).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import metaprune
from metaprune.cli import main
from metaprune.errors import InvalidInputError
from metaprune.models import ArchSpec
from metaprune.testing.untrusted import check_error, files_under, generated, raises


@generated(12)
@given(
    classes=st.integers(2, 12),
    width=st.sampled_from([0.125, 0.25]),
    form=st.sampled_from(["dict", "text", "versioned"]),
)
def test_save_accepts_the_plain_json_spec(tmp_path_factory, classes, width, form) -> None:
    kwargs = {"num_classes": classes, "width": width, "in_channels": 1}
    spec = ArchSpec("cifar_resnet20", kwargs)
    model = spec.build()
    plain = {"name": "cifar_resnet20", "kwargs": kwargs}
    given_spec = {
        "dict": plain,
        "text": json.dumps(plain),
        "versioned": {**plain, "format_version": 1},
    }[form]
    path = metaprune.save(model, given_spec, tmp_path_factory.mktemp("s") / "m.safetensors")
    loaded, loaded_spec = metaprune.load(path)
    assert loaded_spec == spec
    for a, b in zip(loaded.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("spec", "error", "words"),
    [
        ({"name": "no_such_model", "kwargs": {}}, "NotFoundError", "unknown model"),
        ({"name": "cifar_resnet20", "kwargs": [1]}, "SpecError", "kwargs must be a mapping"),
        ({"name": "cifar_resnet20", "extra": 1}, "SpecError", "unknown key"),
        ({"kwargs": {}}, "SpecError", "no 'name'"),
        ({"name": "cifar_resnet20", "format_version": 2}, "SpecError", "format_version"),
        ("{not json", "SpecError", "not valid JSON"),
    ],
)
def test_plain_specs_are_validated_the_same_way(tmp_path: Path, spec, error, words) -> None:
    model = ArchSpec("cifar_resnet20").build()
    err = raises(lambda: metaprune.save(model, spec, tmp_path / "m.safetensors"))
    check_error(err, InvalidInputError, words)
    assert error in [c.__name__ for c in type(err).__mro__]
    assert files_under(tmp_path) == []


def test_load_accepts_a_prune_output_directory(tmp_path: Path, capsys) -> None:
    spec = ArchSpec("cifar_resnet20", {"width": 0.25, "in_channels": 1})
    out = tmp_path / "out"
    metaprune.save(spec.build(), spec, out / "model.safetensors")
    (out / "report.json").write_text("{}")
    (out / "curve.png").write_bytes(b"")
    _, loaded = metaprune.load(out)
    assert loaded == spec
    assert main(["info", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["architecture"] == "cifar_resnet20"
    metaprune.save(spec.build(), spec, out / "copy.safetensors")
    err = raises(lambda: metaprune.load(out))
    check_error(err, InvalidInputError, "'copy.safetensors', 'model.safetensors'", "pass one")
