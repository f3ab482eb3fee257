"""``MetaPruneModule``: meta-training of a :class:`~metanet.MetaNetwork` with Lightning.

Lightning wraps the model, it never becomes it: the metanetwork is a plain ``nn.Module``
(``self.metanet``) that :func:`metanet.export.export` writes out on its own.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from metaprune.pruning.config import FinetuneBudget
from metaprune.pruning.finetune import finetune

from ..apply import transformed_tensors
from ..augment import AugmentConfig, Augmenter
from ..network import MetaNetwork, edge_types_of
from ..prune_mask import ChannelMask
from ..sparsity import GroupSparsity
from .data import Member, ZooDataModule
from .selection import curve_auc, pruning_curve

__all__ = ["MetaPruneModule"]


class MetaPruneModule(L.LightningModule):
    """Meta-training step and checkpoint-selection signal (METHOD.md section 4).

    Training step: one zoo member and one task minibatch; the metanetwork rewrites the
    member's weights, the rewritten network runs with ``functional_call`` (BatchNorm in
    eval mode, running statistics of the member), and the loss is its cross-entropy plus
    the group-sparsity term (:class:`~metanet.sparsity.GroupSparsity`, gamma under
    stop-gradient).

    Validation: every meta-val member is rewritten, optionally fine-tuned, then pruned
    progressively to ``val_max_speedup`` with BatchNorm recalibration after each step;
    ``val/auc`` is the mean accuracy over the speed-up range on the validation split
    (:func:`~metanet.training.selection.curve_auc`), averaged over members.
    ``val/auc_base`` is the same for the members as they are (no metanetwork), the
    number a useful metanetwork must beat.

    Args:
        num_layers, hidden, node_ratio, edge_ratio: the :class:`MetaNetwork`.
        edge_types: its edge types; ``None`` reads them from the zoo in :meth:`setup`.
        lr, weight_decay: AdamW.
        lr_step_epochs, lr_gamma: StepLR (decay by ``lr_gamma`` every ``lr_step_epochs``).
        reg, alpha: the sparsity term. ``reg`` multiplies a term added to the *mean*
            cross-entropy of one minibatch. METHOD.md's ``reg = 10`` goes with the original
            code's loss summed over the whole training set per step, a far larger scale;
            the shipped ``resnet20-digits`` used ``1e-3`` (the default).
        val_max_speedup, val_prune_steps, val_recalibrate_batches: the selection curve.
        val_finetune_epochs, val_finetune_lr: optional fine-tune after the metanetwork (the
            reference ``val/auc_base`` gets the same fine-tune, so the gain compares equal budgets).
        val_normalizer: group-L2 normaliser of the selection curve's pruning (``"max"``, the
            shipped network's; ``"sum"`` is what the pipeline's jobs mostly pick).
        prune_weight: weight of the prune-aware term (:class:`~metanet.prune_mask.ChannelMask`):
            the cross-entropy of the rewritten network with its globally weakest channels
            masked, for a keep ratio drawn uniformly from ``[keep_min, keep_max]`` per step
            (0 disables it).
        mask_normalizer, mask_temperature: the mask's ranking and soft-mask temperature.
        batch_stats: run the rewritten networks with BatchNorm on batch statistics (what
            recalibration gives after pruning) instead of the member's running statistics.
            Always on for the masked network.
        reg_warmup_epochs: ramp ``reg`` linearly from 0 over these epochs (a strong sparsity
            term from the first step zeroes the networks before the metanetwork learns).
        grad_clip: clip the metanetwork's gradient norm to this value (0: off).
        edge_encoding, max_kernel: the :class:`MetaNetwork`'s edge encoding; ``"canonical"``
            gives a general metanetwork that runs on every kernel size and edge kind.
        zero_init_decoders: start the decoders' last layers at zero, so the metanetwork
            starts as the identity whatever the residual ratios (then a ratio of 1 lets
            it make large edits without destroying the networks in the first steps).
        aug_scale, aug_noise, aug_edge_dropout, aug_mixup, aug_mixup_min: weight-space
            augmentations of each training member (:class:`~metanet.augment.AugmentConfig`;
            all off by default): function-preserving positive channel scaling
            (``exp(U(-a, a))``), relative weight noise, edge dropout, and MixUp with an
            aligned partner (probability ``aug_mixup``, ``lam ~ U(aug_mixup_min, 1)``).
    """

    def __init__(
        self,
        num_layers: int = 8,
        hidden: int = 64,
        node_ratio: float = 0.01,
        edge_ratio: float = 0.01,
        edge_types: list[str] | None = None,
        lr: float = 1e-3,
        weight_decay: float = 5e-4,
        lr_step_epochs: int = 15,
        lr_gamma: float = 0.1,
        reg: float = 1e-3,
        alpha: float = 16.0,
        val_max_speedup: float = 3.0,
        val_prune_steps: int = 40,
        val_recalibrate_batches: int = 2,
        val_finetune_epochs: int = 0,
        val_finetune_lr: float = 0.01,
        val_normalizer: str = "max",
        prune_weight: float = 0.0,
        keep_min: float = 0.5,
        keep_max: float = 0.9,
        mask_normalizer: str = "sum",
        mask_temperature: float = 0.5,
        batch_stats: bool = False,
        reg_warmup_epochs: int = 0,
        grad_clip: float = 0.0,
        zero_init_decoders: bool = False,
        edge_encoding: str = "per-type",
        max_kernel: int = 7,
        aug_scale: float = 0.0,
        aug_noise: float = 0.0,
        aug_edge_dropout: float = 0.0,
        aug_mixup: float = 0.0,
        aug_mixup_min: float = 0.7,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.augment = AugmentConfig(scale=aug_scale, noise=aug_noise, edge_dropout=aug_edge_dropout,
                                     mixup=aug_mixup, mixup_min=aug_mixup_min)  # fmt: skip
        self._augmenter: Augmenter | None = None
        self.metanet: MetaNetwork | None = None
        self._base_auc: dict[str, float] = {}
        self._masks: dict[str, ChannelMask] = {}
        if edge_types is not None:
            self._build(edge_types)

    def _build(self, edge_types: list[str]) -> None:
        hp = self.hparams
        options = {"edge_encoding": hp.edge_encoding}
        if hp.edge_encoding == "canonical":
            options["max_kernel"] = hp.max_kernel
        self.metanet = MetaNetwork(hp.num_layers, hp.hidden, edge_types=edge_types,
                                   node_ratio=hp.node_ratio, edge_ratio=hp.edge_ratio,
                                   **options)  # fmt: skip
        self.hparams["edge_types"] = sorted(set(edge_types))  # stored in checkpoints
        if hp.zero_init_decoders:
            net = self.metanet
            edge = (
                [net.edges.decoder]
                if hp.edge_encoding == "canonical"
                else net.edge_decoders.values()
            )
            decoders = [net.node_decoder, *edge]
            for decoder in decoders:
                torch.nn.init.zeros_(decoder[-1].weight)
                torch.nn.init.zeros_(decoder[-1].bias)

    def setup(self, stage: str) -> None:
        dm = self._datamodule()
        dm.setup(stage)
        if self.metanet is None:
            self._build(edge_types_of(dm.graphs()))

    def _datamodule(self) -> ZooDataModule:
        try:
            dm = self.trainer.datamodule
        except RuntimeError:  # not attached to a Trainer
            dm = None
        if not isinstance(dm, ZooDataModule):
            raise TypeError(f"MetaPruneModule needs a ZooDataModule (found {type(dm).__name__})")
        return dm

    # ------------------------------------------------------------------ training
    def sparsity(self, member: Member) -> GroupSparsity:
        """The sparsity term of ``member`` with this module's ``reg`` (after its warm-up)
        and ``alpha``."""
        hp = self.hparams
        ramp = (
            min(1.0, (self.current_epoch + 1) / hp.reg_warmup_epochs)
            if hp.reg_warmup_epochs
            else 1.0
        )
        return GroupSparsity(member.groups, reg=hp.reg * ramp, alpha=hp.alpha)

    def mask(self, member: Member) -> ChannelMask:
        if member.name not in self._masks:
            hp = self.hparams
            self._masks[member.name] = ChannelMask(
                member.groups, normalizer=hp.mask_normalizer, temperature=hp.mask_temperature
            )
        return self._masks[member.name]

    def forward(self, member: Member, images: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Logits of ``member`` rewritten by the metanetwork, and its rewritten tensors."""
        tensors = transformed_tensors(self.metanet, member.to(self.device).graph)
        return _run(member, tensors, images, self.hparams.batch_stats), tensors

    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> Tensor:
        hp = self.hparams
        index, images, labels = batch
        dm = self._datamodule()
        member = dm.train_members[int(index)]
        if self.augment.enabled:
            if self._augmenter is None:
                self._augmenter = Augmenter(self.augment, dm.example_inputs)
            graph = self._augmenter(member.to(self.device), dm.train_members)
            member = dataclasses.replace(member, graph=graph)
        logits, tensors = self(member, images)
        ce = F.cross_entropy(logits, labels)
        sparsity = self.sparsity(member)(tensors).to(ce.dtype)
        loss = ce + sparsity
        n = len(labels)
        if hp.prune_weight > 0:
            keep = hp.keep_min + (hp.keep_max - hp.keep_min) * float(torch.rand(()))
            masked = _run(member, self.mask(member)(tensors, keep), images, batch_stats=True)
            pruned_ce = F.cross_entropy(masked, labels)
            loss = loss + hp.prune_weight * pruned_ce
            self.log("train/pruned_ce", pruned_ce, batch_size=n)
            self.log("train/pruned_acc", (masked.argmax(1) == labels).float().mean(), batch_size=n)
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log("train/ce", ce, batch_size=n)
        self.log("train/sparsity", sparsity, batch_size=n)
        self.log(
            "train/acc", (logits.argmax(1) == labels).float().mean(), prog_bar=True, batch_size=n
        )
        return loss

    # ------------------------------------------------------------------ selection
    def _auc(self, member: Member, rewrite: bool) -> float:
        # Lightning validates under inference mode; Torch-Pruning traces with autograd
        with torch.inference_mode(False), torch.enable_grad():
            return self._auc_impl(member, rewrite)

    def _auc_impl(self, member: Member, rewrite: bool) -> float:
        hp = self.hparams
        dm = self._datamodule()
        model = copy.deepcopy(member.model).to(self.device)
        if rewrite:
            with torch.no_grad():
                tensors = transformed_tensors(self.metanet, member.to(self.device).graph)
            model.load_state_dict(
                {k: tensors[k].detach().to(v.dtype) for k, v in model.state_dict().items()}
            )
        train, val = dm.task_loaders()
        if hp.val_finetune_epochs > 0:
            budget = FinetuneBudget(epochs=hp.val_finetune_epochs, lr=hp.val_finetune_lr)
            finetune(model, dm.task_loaders(dm.batch_size)[0], val, budget, device=self.device)
        model.eval()
        points = pruning_curve(
            model, dm.example_inputs.to(self.device), train, val, max_speedup=hp.val_max_speedup,
            steps=hp.val_prune_steps, recalibrate_batches=hp.val_recalibrate_batches,
            normalizer=hp.val_normalizer,
        )  # fmt: skip
        return curve_auc(points, hp.val_max_speedup)

    def validation_step(self, index: Tensor, batch_idx: int) -> None:
        member = self._datamodule().val_members[int(index)]
        if member.name not in self._base_auc:  # the metanetwork-free reference, computed once
            self._base_auc[member.name] = self._auc(member, rewrite=False)
        auc = self._auc(member, rewrite=True)
        self.log("val/auc", auc, batch_size=1, sync_dist=True, prog_bar=True)
        self.log("val/auc_base", self._base_auc[member.name], batch_size=1, sync_dist=True)
        self.log("val/auc_gain", auc - self._base_auc[member.name], batch_size=1, sync_dist=True)

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        optimizer = torch.optim.AdamW(
            self.metanet.parameters(), lr=hp.lr, weight_decay=hp.weight_decay
        )
        scheduler = torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=max(1, hp.lr_step_epochs), gamma=hp.lr_gamma
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"},
        }

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ) -> None:
        if self.hparams.grad_clip > 0:
            self.clip_gradients(optimizer, gradient_clip_val=self.hparams.grad_clip,
                                gradient_clip_algorithm="norm")  # fmt: skip

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # plain data only, so export can read the file with torch.load(weights_only=True)
        checkpoint["metanet_config"] = self.metanet.config if self.metanet is not None else None


def _run(member: Member, tensors: dict[str, Tensor], images: Tensor, batch_stats: bool) -> Tensor:
    """``member``'s network on ``tensors``; with ``batch_stats`` BatchNorm normalises with
    the batch's statistics (its running-statistics update lands on clones, never on the
    member's graph)."""
    if not batch_stats:
        return functional_call(member.model, tensors, (images,))
    stats = ("running_mean", "running_var", "num_batches_tracked")
    tensors = {k: v.clone() if k.endswith(stats) else v for k, v in tensors.items()}
    member.model.train()
    try:
        return functional_call(member.model, tensors, (images,))
    finally:
        member.model.eval()
