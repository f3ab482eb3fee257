"""``Augmenter`` on zoo members, and meta-training with augmentations on a snapshot zoo."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import LambdaCallback

from graph_encoding import decode
from metanet.augment import AugmentConfig, Augmenter
from metanet.training import MetaPruneModule, ZooDataModule
from metanet.zoo import Zoo, build_zoo, tiny_zoo_config
from metaprune.pruning.config import FinetuneBudget

pytestmark = pytest.mark.slow  # builds a zoo (about 15 s idle) and meta-trains 3 steps


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> ZooDataModule:
    root = tmp_path_factory.mktemp("zoo")
    config = tiny_zoo_config(size=3, snapshots=2, train=FinetuneBudget(epochs=2, lr=0.05))
    build_zoo(config, root, progress=False)
    dm = ZooDataModule(str(root), batch_size=16, batches_per_member=1)
    dm.setup("fit")
    return dm


def test_datamodule_splits_runs_and_picks_snapshots(data: ZooDataModule) -> None:
    zoo = Zoo.open(data.zoo_dirs[0])
    train = [m.name for m in data.train_members]
    val = [m.name for m in data.val_members]
    assert train == zoo.meta_train and len(train) == 4  # 2 runs x (snapshot + final)
    assert val == [zoo.run_of(n) for n in val] and len(val) == 1  # finals only
    assert not {zoo.run_of(n) for n in train} & set(val)
    finals = ZooDataModule(str(data.zoo_dirs[0]), train_snapshots=1)
    finals.setup("fit")
    assert [m.name for m in finals.train_members] == [n for n in train if "." not in n]


def test_augmenter_is_seeded_and_scaling_keeps_the_decoded_function(data: ZooDataModule) -> None:
    member = data.train_members[0]
    inputs = torch.randn(8, *data.example_inputs.shape[1:])
    aug = Augmenter(AugmentConfig(scale=0.5), data.example_inputs)
    g1 = aug(member, generator=torch.Generator().manual_seed(0))
    g2 = aug(member, generator=torch.Generator().manual_seed(0))
    g3 = aug(member, generator=torch.Generator().manual_seed(1))
    assert torch.equal(g1.x, g2.x) and torch.equal(g1.edge_flat, g2.edge_flat)
    assert not torch.equal(g1.edge_flat, g3.edge_flat)
    assert not torch.equal(g1.x, member.graph.x) and not torch.equal(
        g1.edge_flat, member.graph.edge_flat
    )
    assert aug.prepare(member).scalable  # some groups are scaled
    model = copy.deepcopy(member.model)
    model.load_state_dict(decode(g1, model))
    with torch.no_grad():
        assert torch.allclose(member.model(inputs), model(inputs), rtol=1e-4, atol=1e-4)

    # the others are small, and MixUp finds a partner (a wider, unpruned snapshot)
    mixed = Augmenter(AugmentConfig(mixup=1.0, mixup_min=0.9), data.example_inputs)
    final = next(m for m in data.train_members if "." not in m.name)
    assert mixed.partners(final, data.train_members)
    g = mixed(final, data.train_members, torch.Generator().manual_seed(0))
    assert g.edge_flat.shape == final.graph.edge_flat.shape
    assert not torch.equal(g.edge_flat, final.graph.edge_flat)
    noisy = Augmenter(AugmentConfig(noise=0.02, edge_dropout=0.05), data.example_inputs)
    g = noisy(member, generator=torch.Generator().manual_seed(0))
    rel = float((g.edge_flat - member.graph.edge_flat).norm() / member.graph.edge_flat.norm())
    assert 0.0 < rel < 0.4
    with pytest.raises(ValueError, match=r"AugmentConfig.noise must be in \[0.0, 0.5\]"):
        AugmentConfig(noise=1.0)


def test_meta_training_with_every_augmentation(data: ZooDataModule) -> None:
    L.seed_everything(0)
    start: dict[str, torch.Tensor] = {}
    module = MetaPruneModule(num_layers=1, hidden=8, reg=0.0, prune_weight=1.0, batch_stats=True,
                             val_max_speedup=1.5, val_prune_steps=4, val_recalibrate_batches=1,
                             aug_scale=0.5, aug_noise=0.02, aug_edge_dropout=0.02, aug_mixup=0.5)  # fmt: skip
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=3,
                        limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[LambdaCallback(on_train_start=lambda t, m: start.update(
                            {k: v.clone() for k, v in m.metanet.state_dict().items()}))])  # fmt: skip
    dm = ZooDataModule(str(data.zoo_dirs[0]), batch_size=16, batches_per_member=1)
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 3
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert module.hparams.aug_mixup == 0.5 and module.augment.enabled
    after = module.metanet.state_dict()
    assert start and any(not torch.equal(start[k], after[k]) for k in start)  # it trained
    assert module._augmenter is not None and module._augmenter._prepared
