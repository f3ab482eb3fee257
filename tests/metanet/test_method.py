"""``metanet/method.py``: the ``metanet`` method is registered from above, never imported
from below (the pipeline does not know the package)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import metanet
from metaprune.pruning import PruneConfig
from metaprune.pruning.methods import (
    MetanetUnavailable,
    UnknownMetanetError,
    get_method,
    list_methods,
)


def test_the_pipeline_does_not_import_metanet_and_importing_it_registers_the_method() -> None:
    code = textwrap.dedent(
        """
        import sys
        import metaprune.pruning
        from metaprune.pruning import prune
        from metaprune.pruning.methods import ConfigError, get_method, list_methods
        assert "metanet" not in sys.modules, "the pipeline imported metanet"
        assert "metanet" not in list_methods(), list_methods()
        try:
            get_method("metanet")
        except ConfigError as err:
            assert "import metanet" in str(err), str(err)
        else:
            raise AssertionError("metanet was registered without importing metanet")
        import metanet
        assert get_method("metanet").load is not None
        print("ok")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ok"


def test_importing_metanet_registered_the_method_with_its_loader() -> None:
    method = get_method("metanet")
    assert "metanet" in list_methods()
    assert method.load is metanet.method.load_for_job
    assert method.importance == "group-l2"


def test_load_for_job_resolves_the_shipped_name_and_refuses_paths_when_asked(tmp_path) -> None:
    net = metanet.method.load_for_job(PruneConfig(method="metanet", metanet="resnet20-digits"))
    assert isinstance(net, metanet.MetaNetwork)
    # no name or "auto": chosen by the model's graph when the method runs
    assert metanet.method.load_for_job(PruneConfig(method="metanet")) is None
    assert metanet.method.load_for_job(PruneConfig(method="metanet", metanet="auto")) is None
    with pytest.raises(UnknownMetanetError):
        metanet.method.load_for_job(PruneConfig(method="metanet", metanet="no-such-metanet"))
    path = str(tmp_path / "x.safetensors")
    with pytest.raises(MetanetUnavailable):
        metanet.method.load_for_job(PruneConfig(method="metanet", metanet=path), allow_paths=False)
