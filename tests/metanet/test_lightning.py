"""Meta-training with Lightning on a tiny zoo: a step's loss, a fit, selection, the CLI."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint

from metanet import apply_metanetwork, edge_types_of
from metanet.cli import make_cli
from metanet.export import read_fit_checkpoint
from metanet.training import CurvePoint, MetaPruneModule, ZooDataModule, accuracy_at, curve_auc
from metanet.zoo import ZooError, build_zoo, tiny_zoo_config

CONFIGS = Path(__file__).resolve().parents[2] / "metanet" / "configs"


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("zoo")
    build_zoo(tiny_zoo_config(size=2), root, progress=False)
    return root


def _trainer(**kwargs: object) -> L.Trainer:
    defaults = dict(
        accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=2, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0,
    )  # fmt: skip
    defaults.update(kwargs)
    return L.Trainer(**defaults)


def _module(**kwargs: object) -> MetaPruneModule:
    defaults = dict(
        num_layers=1,
        hidden=8,
        reg=1e-3,
        val_max_speedup=1.5,
        val_prune_steps=8,
        val_recalibrate_batches=1,
    )
    defaults.update(kwargs)
    return MetaPruneModule(**defaults)


def test_fit_logs_val_auc_and_trains_the_metanetwork(zoo_dir: Path) -> None:
    L.seed_everything(0)
    module, data = _module(), ZooDataModule(str(zoo_dir), batch_size=16, batches_per_member=2)
    trainer = _trainer()
    trainer.fit(module, datamodule=data)
    metrics = trainer.callback_metrics
    for key in (
        "val/auc",
        "val/auc_base",
        "val/auc_gain",
        "train/loss",
        "train/ce",
        "train/sparsity",
    ):
        assert key in metrics, key
    assert 0.0 <= float(metrics["val/auc"]) <= 1.0
    assert float(metrics["val/auc_gain"]) == pytest.approx(
        float(metrics["val/auc"]) - float(metrics["val/auc_base"]), abs=1e-6
    )
    assert float(metrics["train/loss"]) == pytest.approx(
        float(metrics["train/ce"]) + float(metrics["train/sparsity"]), rel=1e-5
    )
    assert float(metrics["train/sparsity"]) > 0
    assert trainer.global_step == 2
    assert module.hparams.edge_types == module.metanet.edge_types  # read from the zoo in setup
    assert module.metanet.edge_types == ["CONV:9", "IDENTITY:1", "LINEAR:1", "PROJECTION:1"]


def test_training_step_runs_the_rewritten_network_in_eval_mode(zoo_dir: Path) -> None:
    L.seed_everything(0)
    data = ZooDataModule(str(zoo_dir))
    data.setup("fit")
    module = _module(edge_types=edge_types_of(data.graphs()))
    member = data.train_members[0]
    images = torch.randn(5, 1, 8, 8)
    logits, tensors = module(member, images)
    expected = apply_metanetwork(module.metanet, member.model, data.example_inputs).eval()(images)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    loss = F.cross_entropy(logits, torch.zeros(5, dtype=torch.long)) + module.sparsity(member)(
        tensors
    )
    loss.backward()
    assert all(p.grad is not None for p in module.metanet.parameters() if p.requires_grad)


@pytest.mark.parametrize("finetune_epochs", [0, 1])
def test_an_identity_metanetwork_scores_exactly_the_base_auc(
    zoo_dir: Path, finetune_epochs: int
) -> None:
    # the reference gets the same (seeded) fine-tune, so an identity metanetwork gains exactly 0
    L.seed_everything(0)
    module = _module(node_ratio=0.0, edge_ratio=0.0, val_finetune_epochs=finetune_epochs)
    (metrics,) = _trainer().validate(module, datamodule=ZooDataModule(str(zoo_dir)), verbose=False)
    assert metrics["val/auc"] == metrics["val/auc_base"] and metrics["val/auc_gain"] == 0.0
    assert 0.0 < metrics["val/auc"] <= 1.0


def test_checkpoint_selection_and_export_from_ckpt(zoo_dir: Path, tmp_path: Path) -> None:
    L.seed_everything(0)
    module = _module()
    checkpoint = ModelCheckpoint(dirpath=tmp_path, monitor="val/auc", mode="max", filename="best")
    trainer = _trainer(enable_checkpointing=True, callbacks=[checkpoint])
    trainer.fit(module, datamodule=ZooDataModule(str(zoo_dir), batches_per_member=2))
    best = Path(checkpoint.best_model_path)
    assert best.name == "best.ckpt" and checkpoint.best_model_score is not None
    restored = read_fit_checkpoint(best)  # torch.load(weights_only=True) on our own file
    assert restored.config == module.metanet.config
    selected = MetaPruneModule.load_from_checkpoint(best, weights_only=True)
    for (name, a), b in zip(selected.metanet.state_dict().items(), restored.state_dict().values()):
        assert torch.equal(a, b), name


def test_curve_auc() -> None:
    flat = [CurvePoint(1.0, 0.9), CurvePoint(2.0, 0.9), CurvePoint(3.5, 0.9)]
    assert curve_auc(flat, 3.0) == pytest.approx(0.9)
    line = [CurvePoint(1.0, 1.0), CurvePoint(3.0, 0.0)]
    assert curve_auc(line, 3.0) == pytest.approx(0.5)
    assert curve_auc(line, 2.0) == pytest.approx(0.75)  # cut at 2x by interpolation
    assert curve_auc([CurvePoint(1.0, 0.8), CurvePoint(1.5, 0.6)], 3.0) == pytest.approx(
        (0.5 * 0.7 + 1.5 * 0.6) / 2
    )
    with pytest.raises(ValueError, match="no points"):
        curve_auc([], 2.0)
    assert accuracy_at(line, 2.0) == pytest.approx(0.5)
    assert accuracy_at(line, 0.5) == 1.0 and accuracy_at(line, 9.0) == 0.0


@pytest.mark.parametrize(
    "name, needles",
    [
        ("metanet_resnet20_digits", ["zoo: runs/zoo-resnet20-digits"]),
        ("metanet_general_digits", ["- runs/zoo-resnet20-digits", "- runs/zoo-resnet32w075-digits", "- runs/zoo-resnet20-digits-40",
                                    "edge_encoding: canonical", "prune_weight: 1.0"]),
    ],
)  # fmt: skip
def test_print_config_of_the_shipped_yamls(
    name: str, needles: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        make_cli(["fit", "--config", str(CONFIGS / f"{name}.yaml"), "--print_config"])
    assert exit_info.value.code in (0, None)
    out = capsys.readouterr().out
    for needle in ("model:", "data:", "trainer:", "checkpoint:", "monitor: val/auc", "mode: max",
                   *needles):  # fmt: skip
        assert needle in out, needle


def test_several_zoos_train_together_and_must_share_the_task(zoo_dir: Path, tmp_path: Path) -> None:
    import shutil

    second = tmp_path / "second"
    shutil.copytree(zoo_dir, second)
    data = ZooDataModule([str(zoo_dir), str(second)])
    data.setup("fit")
    single = ZooDataModule(str(zoo_dir))
    single.setup("fit")
    assert len(data.train_members) == 2 * len(single.train_members)
    assert len(data.val_members) == 2 * len(single.val_members)
    names = [m.name for m in data.train_members + data.val_members]
    assert len(set(names)) == len(names)
    assert {n.split("/")[0] for n in names} == {zoo_dir.name, "second"}
    other = tmp_path / "other"
    build_zoo(tiny_zoo_config(size=2, data_seed=1), other, progress=False)
    with pytest.raises(ZooError, match="different tasks"):
        ZooDataModule([str(zoo_dir), str(other)]).setup("fit")
    with pytest.raises(ZooError, match="at least one zoo"):
        ZooDataModule([])


@pytest.mark.parametrize("edge_encoding", ["per-type", "canonical"])
def test_prune_aware_fit_with_zero_initialised_decoders(zoo_dir: Path, edge_encoding: str) -> None:
    L.seed_everything(0)
    module = _module(edge_encoding=edge_encoding, prune_weight=1.0, reg=0.0, node_ratio=1.0, edge_ratio=1.0,
                     zero_init_decoders=True, batch_stats=True, grad_clip=1.0)  # fmt: skip
    data = ZooDataModule(str(zoo_dir), batch_size=16, batches_per_member=2)
    data.setup("fit")
    module._build(edge_types_of(data.graphs()))
    member = data.train_members[0]
    with torch.no_grad():  # zero-initialised decoders: the identity, whatever the ratios
        x, flat = module.metanet(member.graph)
    assert torch.equal(flat, member.graph.edge_flat) and torch.equal(x, member.graph.x)
    before = {k: v.clone() for k, v in module.metanet.state_dict().items()}
    trainer = _trainer()
    trainer.fit(module, datamodule=data)
    metrics = trainer.callback_metrics
    assert {"train/pruned_ce", "train/pruned_acc", "val/auc"} <= set(metrics)
    assert torch.isfinite(metrics["train/pruned_ce"]) and 0.0 <= float(metrics["val/auc"]) <= 1.0
    changed = [k for k, v in module.metanet.state_dict().items() if not torch.equal(v, before[k])]
    assert any(("edge_decoders" in k or "edges.decoder" in k) for k in changed)
    assert module.metanet.edge_encoding == edge_encoding
