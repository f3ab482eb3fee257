"""Tests for metaprune/pruning/pipeline.py: the end-to-end job, its outputs, cancellation."""

from __future__ import annotations

import dataclasses
import importlib
import json
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file

import metanet  # registers the "metanet" method, as the entry points do
import metaprune.pruning
from metaprune import checkpoint
from metaprune.pruning import (
    CANCEL,
    CancelToken,
    ConfigError,
    FinetuneBudget,
    ImportanceOptions,
    PruneCancelled,
    Target,
    list_methods,
    measure_cost,
    prune,
)

STAGES = ["checks", "evaluate_base", "before_pruning", "prune", "recalibrate_bn", "after_pruning", "evaluate"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, spec, splits, fast_config):
    """One group-l2 job from a checkpoint file, with every progress event recorded."""
    torch.manual_seed(0)
    path = checkpoint.save(spec.build(), spec, tmp_path_factory.mktemp("in") / "base.safetensors")
    events = []
    result = prune(path, splits, fast_config, progress=events.append)
    return result, events


def test_reaches_the_target_and_keeps_the_classifier(run, spec):
    result, _ = run
    report = result.report
    assert report["target_reached"] and report["speedup"]["macs"] >= 2.0
    assert result.model.fc.out_features == 4
    assert result.spec.channel_plan and result.spec.name == spec.name
    cost = measure_cost(result.model, torch.zeros(1, 1, 8, 8))
    assert (cost.macs, cost.params) == (report["final"]["macs"], report["final"]["params"])


def test_report_contents(run, fast_config):
    result, _ = run
    report = json.loads(json.dumps(result.report))  # plain JSON
    assert report["report_version"] == 1 and report["method"] == "group-l2"
    assert report["config"] == fast_config.to_dict()
    assert list(report["stage_seconds"]) == STAGES
    for part in ("base", "final"):
        assert set(report[part]) == {
            "val_accuracy",
            "test_accuracy",
            "macs",
            "params",
            "latency_ms",
        }
        assert 0 <= report[part]["val_accuracy"] <= 1 and report[part]["latency_ms"] > 0
    assert report["speedup"]["latency"] == pytest.approx(
        report["base"]["latency_ms"] / report["final"]["latency_ms"]
    )
    widths = report["layer_widths"]
    assert widths["fc"] == [4, 4] and all(after <= before for before, after in widths.values())
    assert any(after < before for before, after in widths.values())
    curve = report["curve"]
    assert curve[0]["step"] == 0 and curve[0]["macs_speedup"] == 1.0
    assert curve[-1]["step"] == report["chosen_step"] == report["pruned"]["step"]
    assert curve[-1]["val_accuracy"] is not None  # the chosen point is always evaluated
    evaluated = [c["step"] for c in curve if c["val_accuracy"] is not None]
    # curve_points=2: besides both ends, the first steps past 2 ** (1/3) and 2 ** (2/3)
    milestones = [2.0 ** (1 / 3), 2.0 ** (2 / 3)]
    firsts = {next(c["step"] for c in curve if c["macs_speedup"] >= m) for m in milestones}
    assert evaluated == sorted({0, curve[-1]["step"], *firsts})
    assert curve[-1]["val_accuracy"] == report["pruned"]["val_accuracy"]
    assert report["work"]["curve_points_evaluated"] == len(evaluated)
    assert report["work"]["calibration_images"] == 64 and report["work"]["curve_images"] == [32, 32]
    for stage in ("evaluate_base", "evaluate"):  # latency: what was used is reported
        lat = report["work"]["latency"][stage]
        assert lat["batch_size"] == 8 and 1 <= lat["repeats"] <= 2 and lat["warmup"] == 1
    assert report["spec"] == result.spec.to_json()


def test_progress_events_cover_every_stage_in_order(run):
    _, events = run
    stages = list(dict.fromkeys(e.stage for e in events))
    assert stages == STAGES
    prune = [e for e in events if e.stage == "prune"]
    assert prune[0].step == 0 and prune[-1].step == prune[-1].total  # announced, finished
    assert [e.step for e in prune] == sorted(e.step for e in prune)  # units of work done
    pruning_steps = [e.metrics["step"] for e in prune if "speedup" in e.metrics]
    assert pruning_steps and pruning_steps == sorted(set(pruning_steps))  # one per visited step
    curve_work = [e for e in prune if e.metrics.get("task") == "curve point"]
    assert curve_work and {e.metrics["step"] for e in curve_work} < {0, *pruning_steps}


def test_save_writes_checkpoint_report_and_plot(run, tmp_path):
    result, _ = run
    paths = result.save(tmp_path / "out")
    assert sorted(p.name for p in paths.values()) == [
        "curve.png",
        "model.safetensors",
        "report.json",
    ]
    assert json.loads(paths["report"].read_text())["chosen_step"] == result.report["chosen_step"]
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert checkpoint.read_spec(paths["checkpoint"]) == result.spec


def test_reloaded_in_a_fresh_process_gives_equal_outputs(run, tmp_path):
    result, _ = run
    path = result.save(tmp_path)["checkpoint"]
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    save_file({"x": x}, str(tmp_path / "x.safetensors"))
    script = textwrap.dedent(f"""
        import torch
        from safetensors.torch import load_file, save_file
        from metaprune.checkpoint import load
        torch.set_num_threads(1)
        model, spec = load({str(path)!r})
        model.eval()
        with torch.no_grad():
            y = model(load_file({str(tmp_path / "x.safetensors")!r})["x"])
        save_file({{"y": y}}, {str(tmp_path / "y.safetensors")!r})
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300)
    result.model.eval()
    with torch.no_grad():
        expected = result.model(x)
    assert torch.equal(load_file(str(tmp_path / "y.safetensors"))["y"], expected)


@pytest.mark.parametrize("method", sorted(set(list_methods()) - {"metanet", "group-l2"}))
def test_other_methods_run_under_the_same_budget(method, model, spec, splits, fast_config):
    config = dataclasses.replace(fast_config, method=method, target=Target("params", 1.5))
    result = prune(model, splits, config, spec=spec)
    assert result.report["method"] == method and result.report["target_reached"]
    assert result.report["speedup"]["params"] >= 1.5
    info = result.report["stages"]["before_pruning"]
    assert info["best_epoch"] == info["kept_epoch"] == info["epochs"] == 1  # the last epoch kept
    # what the method spent: the budget, a reg search's trials included (never more)
    assert info["epochs_trained"] == 1 and info["seconds"] > 0
    assert result.report["epochs_trained"] == {"before_pruning": 1, "after_pruning": 1}


def test_latency_target_is_measured_at_every_step(model, splits, fast_config):
    config = dataclasses.replace(
        fast_config, target=Target("latency", 1.1), after_pruning=FinetuneBudget(epochs=0)
    )
    result = prune(model, splits, config)
    assert all(isinstance(c["latency_speedup"], float) for c in result.curve)
    assert result.report["target_reached"] == (result.curve[-1]["latency_speedup"] >= 1.1)


def test_metanet_method_with_a_fresh_metanetwork(model, spec, splits, example, fast_config):
    from graph_encoding import encode

    net = metanet.MetaNetwork(
        num_layers=1, hidden=8, edge_types=metanet.edge_types_of([encode(model, example)])
    )
    config = dataclasses.replace(fast_config, method="metanet")
    stages = []
    result = prune(
        model, splits, config, progress=lambda e: stages.append(e.stage), spec=spec, metanetwork=net
    )
    assert result.report["target_reached"] and "metanet" in stages
    assert stages.index("metanet") < stages.index("prune")


def test_metanet_method_loads_the_shipped_metanetwork_by_name(model, spec, splits, fast_config):
    config = dataclasses.replace(fast_config, method="metanet", metanet="resnet20-digits")
    stages = []
    result = prune(model, splits, config, progress=lambda e: stages.append(e.stage), spec=spec)
    assert result.report["target_reached"] and "metanet" in stages
    assert result.report["method"] == "metanet"


@pytest.fixture
def recorded(tmp_path, monkeypatch):
    """The shipped metanetworks, copied into a registry of their own, each with a winning
    held-out record on ``cifar_resnet20`` (what ``metanet auto`` requires, issue 21)."""
    from metanet.export import PRETRAINED_DIR
    from metanet.record import attach_record

    registry = importlib.import_module("metanet.export")  # `metanet.export` is the function
    monkeypatch.setattr(registry, "PRETRAINED_DIR", tmp_path / "none")
    for name in ("general-digits", "resnet20-digits"):
        for path in PRETRAINED_DIR.glob(f"{name}.*"):  # weights, document, zoo configs
            (tmp_path / path.name).write_bytes(path.read_bytes())
        attach_record(tmp_path / name, {"cifar_resnet20": {"verdict": "wins", "targets": {}}})
    monkeypatch.setenv("METAPRUNE_METANET_PATH", str(tmp_path))
    return tmp_path


def test_metanet_auto_chooses_by_the_graph_and_reports_it(model, spec, splits, fast_config, recorded):
    config = dataclasses.replace(fast_config, method="metanet", metanet="auto")
    report = prune(model, splits, config, spec=spec).report
    chosen = report["stages"]["before_pruning"]["metanet"]
    assert report["method"] == "metanet" and report["method_choice"]["requested"] == "metanet"
    # both have a winning record on the family; a quarter-width ResNet-20: the general net
    # (ResNet-20/32 zoo, widths 27-36) is closer than resnet20-digits (width 64 only)
    assert chosen["name"] == "general-digits" and chosen["auto"] is True
    assert chosen["record"] == "wins"
    assert chosen["reason"].startswith("general-digits: general metanetwork")
    assert [c["name"] for c in chosen["candidates"]][:2] == ["general-digits", "resnet20-digits"]
    assert "metanet    auto -> general-digits" in metaprune.pruning.format_report(report)
    check = chosen["accuracy_check"]
    assert {"val_accuracy_input", "val_accuracy_rewritten", "tolerance", "discarded"} <= set(check)


def test_auto_at_zero_epochs_runs_a_metanetwork_with_a_winning_record(
    model, spec, splits, fast_config, recorded
):
    config = dataclasses.replace(fast_config, method="auto", before_pruning=FinetuneBudget(epochs=0),
                                 after_pruning=FinetuneBudget(epochs=0))  # fmt: skip
    report = prune(model, splits, config, spec=spec).report
    choice = report["method_choice"]
    # the metanet method searches the baseline's criteria too (Method.data_aware)
    assert report["method"] == "metanet" and (choice["requested"], choice["data_aware"]) == ("auto", True)
    assert "winning held-out record on cifar_resnet20 at 0 epochs (general-digits: " in choice["reason"]
    assert report["stages"]["before_pruning"]["metanet"]["record"] == "wins"
    assert "method     auto -> metanet: a registered metanetwork" in metaprune.pruning.format_report(report)
    # another family: no evidence there, so the rule's baseline
    other = dataclasses.replace(spec, name="cifar_resnet32")
    assert prune(other.build(), splits, config, spec=other).report["method"] == "group-l2"


def test_metanet_auto_without_a_winning_record_runs_the_strongest_baseline(
    model, spec, splits, fast_config, tmp_path, monkeypatch
):
    """None registered (or none with a winning record on the model's family, issue 21):
    the job runs what ``auto`` would, with its data-aware criterion search, and says why."""
    registry = importlib.import_module("metanet.export")  # `metanet.export` is the function
    monkeypatch.setattr(registry, "PRETRAINED_DIR", tmp_path)
    monkeypatch.delenv("METAPRUNE_METANET_PATH", raising=False)
    config = dataclasses.replace(
        fast_config, method="metanet", importance=ImportanceOptions(normalizer="auto"),
        before_pruning=FinetuneBudget(epochs=0), after_pruning=FinetuneBudget(epochs=0),
    )  # fmt: skip
    stages = []
    report = prune(model, splits, config, lambda e: stages.append(e.stage), spec=spec).report
    assert report["method"] == "group-l2" and "metanet" not in stages
    choice = report["method_choice"]
    assert (choice["requested"], choice["data_aware"]) == ("metanet", True)
    assert choice["reason"].startswith(
        "no registered metanetwork has a winning held-out record on cifar_resnet20 (none is registered)"
    )
    trials = report["stages"]["prune"]["criterion_search"]["trials"]
    assert {"taylor", "hessian", "group-l2-macs"} <= {t["criterion"] for t in trials}
    assert "method     metanet -> group-l2: no registered" in metaprune.pruning.format_report(report)
    assert report["config"]["method"] == "metanet"  # as requested


@pytest.mark.slow
def test_a_reference_model_is_pruned_instead_unless_the_prepared_one_is_clearly_better(
    monkeypatch,
):
    """``MethodContext.reference`` (the metanet method's input beside its rewrite, issue
    21): the criterion search scores both models with every candidate; the prepared one is
    pruned only when its best validation accuracy at the target is higher beyond noise."""
    import copy

    from metaprune.data import get_dataset, make_loaders
    from metaprune.models import ArchSpec
    from metaprune.pruning import PruneConfig, PruningOptions, finetune, methods

    splits = get_dataset("digits", seed=0)
    spec = ArchSpec("cifar_resnet20", {"width": 0.5, "in_channels": 1, "num_classes": 10})
    trained = spec.build()
    finetune(trained, *make_loaders(splits, 64, seed=0)[:2], FinetuneBudget(epochs=2, lr=0.1))
    wrecked = copy.deepcopy(trained)
    with torch.no_grad():
        wrecked.fc.weight.zero_()  # constant outputs: chance accuracy at any width
    config = PruneConfig(
        importance=ImportanceOptions(normalizer="mean"), pruning=PruningOptions(steps=6, curve_points=0),
        before_pruning=FinetuneBudget(epochs=0), after_pruning=FinetuneBudget(epochs=0),
        target=Target("macs", 1.5), bn_recalibration_images=64,
    )  # fmt: skip
    baseline = prune(trained, splits, config, spec=spec).report
    for prepared, reference, kept in ((trained, wrecked, "prepared"), (wrecked, trained, "reference")):

        def prepare(model, ctx, prepared=prepared, reference=reference):
            ctx.reference = copy.deepcopy(reference)
            return methods.plain_finetune(copy.deepcopy(prepared), ctx)

        # a method that sets a reference, in place of group-l2 (config names are checked)
        monkeypatch.setitem(methods._REGISTRY, "group-l2",
                            methods.Method("group-l2", "group-l2", prepare))  # fmt: skip
        report = prune(trained, splits, dataclasses.replace(config, method="group-l2"),
                       spec=spec).report  # fmt: skip
        found = report["stages"]["prune"]["reference"]
        assert found["kept"] == kept, found
        assert found["prepared" if kept == "prepared" else "reference"] > 0.5
        assert found["reference" if kept == "prepared" else "prepared"] < 0.2
        assert found["other_search"]["chosen"] == "group-l2[mean]"
        # the trained model is pruned either way: the baseline's job exactly
        assert report["final"]["test_accuracy"] == baseline["final"]["test_accuracy"]
        assert report["layer_widths"] == baseline["layer_widths"]
        # step 0 of the curve: the model pruned, on the whole validation split
        step0 = report["curve"][0]["val_accuracy"]
        prepared_val = report["stages"]["before_pruning"]["val_accuracy"]
        if kept == "prepared":
            assert step0 == prepared_val > 0.5
        else:
            assert step0 == baseline["curve"][0]["val_accuracy"] > 0.5 > prepared_val


@pytest.mark.parametrize("how", ["callback", "token"])
def test_cancellation_stops_between_steps(how, model, splits, fast_config):
    token = CancelToken()
    seen = []

    def progress(event):
        seen.append((event.stage, event.step))
        if event.stage == "prune" and event.step == 2:
            if how == "token":
                token.cancel()
                return None
            return CANCEL
        return None

    with pytest.raises(PruneCancelled, match="prune"):
        prune(model, splits, fast_config, progress, cancel=token)
    assert seen[-1] == ("prune", 2) and token.cancelled


def test_input_model_is_not_modified(model, splits, fast_config):
    state = {k: v.clone() for k, v in model.state_dict().items()}
    prune(model, splits, dataclasses.replace(fast_config, target=Target("macs", 1.2)))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_bad_inputs_are_clear_errors(model, spec, splits, fast_config):
    with pytest.raises(ConfigError, match="classifier has 4 outputs but dataset 'digits' has 10"):
        prune(model, "digits", fast_config)
    with pytest.raises(ConfigError, match="does not accept inputs of shape"):
        prune(spec.build(), "synthetic", fast_config)  # 3-channel images, 1-channel model
    with pytest.raises(ConfigError, match="must be an nn.Module or a checkpoint path"):
        prune(42, splits, fast_config)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="config must be a PruneConfig"):
        prune(model, splits, {"method": "random"})  # type: ignore[arg-type]
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="'cuda' is not available"):
            prune(model, splits, dataclasses.replace(fast_config, device="cuda"))
    with pytest.raises(checkpoint.CheckpointError, match="does not exist"):
        prune("/nonexistent/model.safetensors", splits, fast_config)


def test_save_needs_a_spec(model, splits, fast_config, tmp_path):
    result = prune(model, splits, dataclasses.replace(fast_config, target=Target("macs", 1.2)))
    assert result.spec is None and result.report["spec"] is None
    with pytest.raises(ValueError, match="no architecture spec"):
        result.save(tmp_path)


@pytest.mark.timeout(300)
def test_torchvision_vit_prunes_without_crashing_at_other_batch_sizes(fast_config):
    """torchvision's ViT reshapes its input to ``hidden_dim``: the residual stream may be
    pruned (``hidden_dim`` follows ``conv_proj``) and the pruned model runs on any batch
    size (the scale benchmark's ViT-B/16 failure was its own baseline's)."""
    from torchvision.models import VisionTransformer

    from metaprune.data import get_dataset

    torch.manual_seed(0)
    vit = VisionTransformer(image_size=32, patch_size=16, num_layers=1, num_heads=2,
                            hidden_dim=16, mlp_dim=256, num_classes=4)  # fmt: skip
    splits = get_dataset("synthetic", seed=0, num_classes=4, in_channels=3, image_size=32,
                         n_train=32, n_val=16, n_test=16)  # fmt: skip
    config = dataclasses.replace(
        fast_config, target=Target("macs", 1.2), before_pruning=FinetuneBudget(epochs=0),
        after_pruning=FinetuneBudget(epochs=0), bn_recalibration_images=16,
    )  # fmt: skip
    result = prune(vit, splits, config)
    report = result.report
    assert report["target_reached"] and report["speedup"]["macs"] >= 1.2
    frozen = {m for g in report["structure"]["frozen"] for m in g["modules"]}
    assert "conv_proj" not in frozen  # the residual stream is prunable
    model = result.model
    assert model.hidden_dim == model.conv_proj.out_channels <= 16
    assert model.encoder.layers[0].mlp[0].out_features < 256  # the MLP was pruned
    with torch.no_grad():
        assert model(torch.randn(5, 3, 32, 32)).shape == (5, 4)


def test_default_image_budgets_shrink_at_a_large_input_and_explicit_ones_do_not():
    from metaprune.pruning import pipeline

    large, cifar, digits = 3 * 224 * 224, 3 * 32 * 32, 8 * 8
    for key, (default, floor, _) in pipeline._DEFAULT_BUDGETS.items():
        assert pipeline._default_budget(key, default, digits) == default, key
        assert pipeline._default_budget(key, default, cifar) == default, key
        at_224 = pipeline._default_budget(key, default, large)
        assert floor <= at_224 < default, key
        assert pipeline._default_budget(key, default + 1, large) == default + 1  # as given
    assert pipeline._default_budget("bn_recalibration_images", 1024, large) == 128
    assert pipeline._default_budget("bn_recalibration_images", 1024, 3 * 64 * 64) == 341
    assert pipeline._default_budget("importance.search_images", 64, large) == 32
    # the proxy takes a small validation split whole only where it fits the budget
    assert pipeline._search_images(180, 64, digits) == 180
    assert pipeline._search_images(180, 64, large) == 64  # then shrunk by _default_budget
    assert pipeline._default_budget("importance.search_images",
                                    pipeline._search_images(180, 64, large), large) == 32  # fmt: skip
    assert pipeline._search_images(10_000, 64, digits) == 64
    # gradients cost ~3 forwards an image: their floor (32) at 224 px, 64 below
    assert pipeline._default_budget("importance.calibration_images", 64, large) == 32
    assert pipeline._default_budget("importance.calibration_images", 64, 3 * 128 * 128) == 32
    assert pipeline._default_budget("importance.calibration_images", 64, 3 * 64 * 64) == 64
    assert pipeline._default_budget("pruning.curve_images", 32, large) == 27


def test_at_a_large_input_batches_grow_and_the_curve_and_search_shrink():
    from metaprune.data import get_dataset
    from metaprune.pruning import pipeline

    large, cifar, digits = 3 * 224 * 224, 3 * 32 * 32, 8 * 8
    sizes = {224: 27, 32: 128, 8: 128}  # evaluation batches: at most 2**22 input values
    for size, batch in sizes.items():
        splits = get_dataset("synthetic", seed=0, num_classes=2, in_channels=3, image_size=size,
                             n_train=4, n_val=4, n_test=4)  # fmt: skip
        assert pipeline._eval_batch_size(128, splits) == batch
    assert pipeline._eval_batch_size(16, splits) == 16  # smaller batches as given
    # the curve: 3 points below 224 px, 1 at it (27 + 27 images each), as given if set
    assert pipeline._curve_points(3, 2 * 32, digits) == pipeline._curve_points(3, 2 * 32, cifar) == 3
    assert pipeline._curve_points(3, 2 * 27, large) == 1
    assert pipeline._curve_points(3, 2 * 32, 3 * 128 * 128) == 2
    assert pipeline._curve_points(3, 10**6, large) == 1  # never below one
    assert pipeline._curve_points(5, 2 * 27, large) == 5 and pipeline._curve_points(0, 54, large) == 0
    # two rounds in the criterion search only where a proxy pass is a large input's work
    assert pipeline._second_round(32, large, 6) and pipeline._second_round(32, large, 3)
    assert not pipeline._second_round(32, large, 2)  # no more candidates than finalists
    assert not pipeline._second_round(180, digits, 6) and not pipeline._second_round(64, cifar, 6)
    assert not pipeline._second_round(1, 1 << 23, 6)  # one image has no halves
    # adaptive candidates only where asked for, and never with the steps set
    assert not pipeline._quick_search(ImportanceOptions())
    assert pipeline._quick_search(ImportanceOptions(adaptive_search=True))
    assert not pipeline._quick_search(ImportanceOptions(adaptive_search=True, search_steps=20))
    with pytest.raises(ConfigError, match=r"importance\.adaptive_search must be true or false"):
        ImportanceOptions(adaptive_search="yes")  # type: ignore[arg-type]


def test_halves_split_a_fixed_subset_in_two():
    from metaprune.pruning import pipeline
    from metaprune.pruning.bn import calibration_subset

    data = torch.utils.data.TensorDataset(torch.arange(20.0), torch.arange(20))
    loader = calibration_subset(data, 11, 4, seed=0)
    a, b = pipeline._halves(loader)
    got = [torch.cat([y for _, y in part]).tolist() for part in (a, b)]
    whole = torch.cat([y for _, y in loader]).tolist()
    assert got[0] + got[1] == whole and [len(g) for g in got] == [6, 5]
    assert a.batch_size == b.batch_size == 4


def test_pruning_steps_run_on_one_thread_and_restore_the_count():
    from metaprune.pruning import pipeline

    before = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="inside"), pipeline._one_thread():
        assert torch.get_num_threads() == 1
        raise RuntimeError("inside")
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("large", [False, True])
def test_single_image_checks_and_the_gradient_pass_run_on_one_thread(
    model, spec, splits, fast_config, monkeypatch, large
):
    """The checks, the taylor / hessian gradients and the rebuild check run on one thread
    (a second one mostly spins there; at a large input, the budget made tiny here, too);
    image passes keep the caller's threads. The gradient pass runs before the search
    copies the model (its peak memory alone)."""
    from metaprune.pruning import pipeline, search_pool
    from metaprune.pruning.gradients import GradientCache

    seen: dict[str, list[int]] = {}
    order: list[str] = []

    def spy(name, fn, owner=pipeline):
        def wrapped(*args, **kwargs):
            seen.setdefault(name, []).append(torch.get_num_threads())
            order.append(name)
            return fn(*args, **kwargs)

        monkeypatch.setattr(owner, name, wrapped)

    for name in ("check_prunable", "check_rebuild", "evaluate"):
        spy(name, getattr(pipeline, name))
    spy("make_importance", search_pool.make_importance, search_pool)
    spy("gather", GradientCache.gather, GradientCache)
    if large:
        monkeypatch.setattr(pipeline, "_LARGE_INPUT_VALUES", 1024)  # 16 images of 1x8x8
    config = dataclasses.replace(
        fast_config, method="taylor", before_pruning=FinetuneBudget(epochs=0),
        after_pruning=FinetuneBudget(epochs=0),
        importance=ImportanceOptions(normalizer="auto", search_workers=1),  # all in this process
    )  # fmt: skip
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        prune(model, splits, config, spec=spec)
        assert torch.get_num_threads() == 2  # restored
    finally:
        torch.set_num_threads(before)
    assert seen["check_prunable"] == seen["check_rebuild"] == [1]
    assert seen["make_importance"] and set(seen["make_importance"]) == {1}
    # one pass, before the first of the 3 candidates (taylor x 3 normalisers) is copied
    assert seen["gather"][0] == 1
    assert order.index("gather") < order.index("make_importance")
    # 3 candidates (taylor x 3 normalisers), each pruned once on the full schedule (at a
    # large input the 2 finalists' prunes are reused: the adaptive round is opt-in)
    assert seen["make_importance"] == [1] * 3
    assert set(seen["evaluate"]) == {2}
