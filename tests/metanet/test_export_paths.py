"""A ``--metanet`` path that is not a metanetwork export is named as such (not as a
missing ``.safetensors`` beside it), in the library and in ``metaprune prune``."""

from __future__ import annotations

from pathlib import Path

import pytest

from metanet.export import ExportError, MetanetNotFoundError, load
from metaprune import ArchSpec, save
from metaprune.cli import main


def test_an_existing_file_that_is_not_an_export_is_named_as_such(tmp_path: Path) -> None:
    other = tmp_path / "passwd"
    other.write_text("root:x:0:0::/root:/bin/sh\n")
    with pytest.raises(ExportError) as info:
        load(other)
    message = str(info.value)
    assert not isinstance(info.value, MetanetNotFoundError)
    assert message.startswith(f"'{other}' is not a metanetwork export")
    assert "NAME.safetensors with 'metanet.config' metadata beside NAME.json" in message
    assert "passwd.safetensors" not in message
    with pytest.raises(MetanetNotFoundError, match=r"missing\.safetensors' does not exist \(an"):
        load(tmp_path / "missing")  # nothing there: what an export would be called


def test_the_cli_says_so_with_exit_status_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    spec = ArchSpec("cifar_resnet20", {"in_channels": 1, "width": 0.25})
    model = save(spec.build(), spec, tmp_path / "m.safetensors")
    status = main(["prune", str(model), "--dataset", "digits", "-o",
                   str(tmp_path / "out"), "--metanet", str(other)])  # fmt: skip
    err = capsys.readouterr().err
    assert status == 2, err
    assert f"'{other}' is not a metanetwork export" in err
