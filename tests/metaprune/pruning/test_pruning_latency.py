"""Tests for metaprune/pruning/latency.py."""

from __future__ import annotations

import pytest
import torch

from metaprune.pruning import ConfigError, measure_latency


def test_positive_median_and_state_restored(model):
    threads = torch.get_num_threads()
    model.train()
    seconds = measure_latency(model, (1, 8, 8), batch_size=4, threads=1, repeats=3, warmup=1)
    assert 0 < seconds < 10
    assert model.training and torch.get_num_threads() == threads


def test_rejects_bad_options(model):
    with pytest.raises(ConfigError, match="repeats must be an int >= 1"):
        measure_latency(model, (1, 8, 8), repeats=0)
