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


def test_a_rewrite_that_costs_validation_accuracy_is_discarded(caplog) -> None:
    import torch

    from metaprune.data import get_dataset, make_loaders
    from metaprune.models import create_model
    from metaprune.pruning import FinetuneBudget, finetune
    from metaprune.pruning.methods import MethodContext

    splits = get_dataset("digits", seed=0)
    train, val, _ = make_loaders(splits, 64, seed=0)
    torch.manual_seed(0)
    model = create_model("cifar_resnet20", in_channels=1, num_classes=10, width=0.25)
    finetune(model, train, val, FinetuneBudget(epochs=2, lr=0.1))
    config = PruneConfig(method="metanet", bn_recalibration_images=64)
    ctx = MethodContext(config, train, val, torch.device("cpu"), torch.zeros(1, 1, 8, 8))

    def net(ratio: float) -> metanet.MetaNetwork:
        torch.manual_seed(1)
        return metanet.MetaNetwork(2, 8, edge_encoding="canonical", node_ratio=ratio,
                                   edge_ratio=ratio)  # fmt: skip

    kept, check = metanet.method.guarded_rewrite(model, net(0.0), ctx)
    assert check["discarded"] is False and "warning" not in check
    assert check["val_accuracy_input"] == check["val_accuracy_rewritten"] > 0.5
    assert check["tolerance"] >= metanet.method.MAX_ACCURACY_DROP
    assert all(p.requires_grad for p in kept.parameters())

    with caplog.at_level("WARNING", logger="metanet.method"):
        restored, check = metanet.method.guarded_rewrite(model, net(50.0), ctx)
    assert check["discarded"] is True
    assert check["val_accuracy_rewritten"] < check["val_accuracy_input"] - check["tolerance"]
    assert "rewrite was discarded" in check["warning"] and "rewrite was discarded" in caplog.text
    assert restored is not model and all(p.requires_grad for p in restored.parameters())
    for (key, a), b in zip(model.state_dict().items(), restored.state_dict().values()):
        assert torch.equal(a, b), key  # the input's weights, untouched by the probe


def test_a_rewrite_that_does_not_prune_better_at_the_target_is_discarded(caplog) -> None:
    import torch

    from metaprune.data import get_dataset, make_loaders
    from metaprune.models import create_model
    from metaprune.pruning.methods import MethodContext

    splits = get_dataset("digits", seed=0)
    train, val, _ = make_loaders(splits, 64, seed=0)
    torch.manual_seed(0)
    model = create_model("cifar_resnet20", in_channels=1, num_classes=10, width=0.25).eval()
    config = PruneConfig(method="metanet", bn_recalibration_images=64)
    torch.manual_seed(1)  # ratio 0: the rewrite equals the input, so the accuracy guard passes
    net = metanet.MetaNetwork(2, 8, edge_encoding="canonical", node_ratio=0.0, edge_ratio=0.0)
    seen: list[bool] = []

    def proxy_for(input_score: float, rewrite_score: float):
        def proxy(m: torch.nn.Module) -> float:
            is_input = m is model
            seen.append(is_input)
            assert all(p.requires_grad for p in m.parameters())  # Torch-Pruning traces grads
            return input_score if is_input else rewrite_score

        return proxy

    for scores, discarded in (((0.5, 0.4), True), ((0.5, 0.5), True), ((0.5, 0.6), False)):
        ctx = MethodContext(config, train, val, torch.device("cpu"), torch.zeros(1, 1, 8, 8),
                            proxy=proxy_for(*scores))  # fmt: skip
        seen.clear()
        with caplog.at_level("WARNING", logger="metanet.method"):
            out, check = metanet.method.guarded_rewrite(model, net, ctx)
        assert seen == [True, False]
        assert check["discarded"] is discarded
        assert (check["proxy_input"], check["proxy_rewritten"]) == scores
        assert out is not model and all(p.requires_grad for p in out.parameters())
        if discarded:
            assert "did not improve the validation accuracy at the target" in check["warning"]
            for (key, a), b in zip(model.state_dict().items(), out.state_dict().values()):
                assert torch.equal(a, b), key
        else:
            assert "warning" not in check



@pytest.fixture(scope="module")
def trained():
    """A half-width ResNet-20 trained briefly on digits (so a wrecking rewrite shows)."""
    import torch

    from metaprune.data import get_dataset, make_loaders
    from metaprune.models import ArchSpec
    from metaprune.pruning import FinetuneBudget, finetune

    splits = get_dataset("digits", seed=0)
    train, val, _ = make_loaders(splits, 64, seed=0)
    spec = ArchSpec("cifar_resnet20", {"width": 0.5, "in_channels": 1, "num_classes": 10})
    torch.manual_seed(0)
    model = spec.build()
    finetune(model, train, val, FinetuneBudget(epochs=2, lr=0.1))
    return model.eval(), spec, splits


def _zero_epoch_job(trained, net=None, **options):
    """A 0-epoch job to 1.5x MACs on a short schedule (the default criterion search)."""
    from metaprune.pruning import FinetuneBudget, PruningOptions, Target, prune

    model, spec, splits = trained
    config = PruneConfig(
        target=Target("macs", 1.5), before_pruning=FinetuneBudget(epochs=0),
        after_pruning=FinetuneBudget(epochs=0), pruning=PruningOptions(steps=6, curve_points=0),
        bn_recalibration_images=64, **options,
    )  # fmt: skip
    return prune(model, splits, config, spec=spec, metanetwork=net).report


def _trials(report) -> list[dict]:
    return [{k: v for k, v in t.items() if k != "seconds"}
            for t in report["stages"]["prune"]["criterion_search"]["trials"]]  # fmt: skip


@pytest.mark.slow
def test_a_guarded_metanet_job_is_never_below_the_default(trained) -> None:
    """Issue 21: the metanet method searches the default's criteria (group-L2 with each
    normaliser, per MAC, taylor, hessian) and, at 0 epochs, prunes the input instead of the
    rewrite unless the rewrite is clearly better at the target. A rewrite the guard
    discards, and one no better at the target, give exactly the default's job."""
    import torch

    default = _zero_epoch_job(trained)
    assert default["method"] == "group-l2" and default["method_choice"]["data_aware"] is True
    trials = _trials(default)
    assert {"group-l2", "group-l2-macs", "taylor", "hessian"} == {t["criterion"] for t in trials}
    best = max(t["val_accuracy"] for t in trials)
    for ratio, discarded in ((50.0, True), (0.0, False)):
        torch.manual_seed(1)  # ratio 0: the rewrite has the input's weights; 50 wrecks it
        net = metanet.MetaNetwork(2, 8, edge_encoding="canonical", node_ratio=ratio,
                                  edge_ratio=ratio)  # fmt: skip
        report = _zero_epoch_job(trained, net, method="metanet")
        check = report["stages"]["before_pruning"]["metanet"]["accuracy_check"]
        assert check["discarded"] is discarded, check
        assert report["method"] == "metanet" and report["method_choice"]["data_aware"] is True
        assert _trials(report) == trials
        assert report["method_choice"]["criterion"] == default["method_choice"]["criterion"]
        assert report["layer_widths"] == default["layer_widths"]
        assert report["final"]["test_accuracy"] == default["final"]["test_accuracy"]
        assert report["pruned"]["val_accuracy"] == default["pruned"]["val_accuracy"]
        reference = report["stages"]["prune"].get("reference")
        if discarded:  # nothing to compare: the input is the prepared model
            assert reference is None and "at_target" not in check
        else:  # the same weights, recalibrated: not clearly better, so the input is pruned
            assert check["at_target"].endswith("stages.prune.reference")
            assert reference["reference"] == best and reference["kept"] == "reference"
            other = [t["val_accuracy"] for t in reference["other_search"]["trials"]]
            assert reference["prepared"] == max(other) and len(other) == len(trials)
