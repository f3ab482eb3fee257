"""Tests for metaprune/pruning/latency.py."""

from __future__ import annotations

import pytest
import torch

from metaprune.pruning import ConfigError, measure_latency
from metaprune.pruning.latency import auto_batch_size, time_forward


def test_positive_median_and_state_restored(model):
    threads = torch.get_num_threads()
    model.train()
    seconds = measure_latency(model, (1, 8, 8), batch_size=4, threads=1, repeats=3, warmup=1)
    assert 0 < seconds < 10
    assert model.training and torch.get_num_threads() == threads


def test_rejects_bad_options(model):
    with pytest.raises(ConfigError, match="repeats must be an int >= 1"):
        measure_latency(model, (1, 8, 8), repeats=0)


def test_batch_size_follows_the_input_size():
    assert auto_batch_size((1, 8, 8)) == auto_batch_size((3, 32, 32)) == 64
    assert auto_batch_size((3, 64, 64)) == 16 and auto_batch_size((3, 224, 224)) == 1
    assert auto_batch_size((3, 2000, 2000)) == 1 and auto_batch_size((3, 8, 8), largest=8) == 8


def test_timing_stops_at_the_count_or_the_time_budget(model):
    passes = []
    run = time_forward(model, (1, 8, 8), batch_size=2, repeats=4, warmup=2,
                       on_pass=lambda done, total: passes.append((done, total)))  # fmt: skip
    assert run.repeats == 4 and run.warmup == 2 and run.batch_size == 2
    assert passes == [(i, 6) for i in range(1, 7)] and run.seconds >= run.median > 0
    # any budget is spent after the first timed pass: one pass, whatever the count
    short = time_forward(model, (1, 8, 8), repeats=1000, warmup=0, seconds=1e-9)
    assert short.repeats == 1 and short.batch_size == 64  # auto: 64 at 8x8
    assert short.to_dict()["median"] == short.median
    with pytest.raises(ConfigError, match="seconds must be a number > 0"):
        time_forward(model, (1, 8, 8), seconds=0)
