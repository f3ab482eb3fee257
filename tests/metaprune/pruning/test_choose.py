"""Tests for metaprune/pruning/choose.py: choices by the proxy, the noise model."""

from __future__ import annotations

import pytest
from torch import nn

from metaprune.pruning.choose import (
    Candidate,
    choose_criterion,
    criterion_candidates,
    proxy_images,
    within_noise,
)


def test_candidates_of_a_job():
    norms = ("sum", "mean", "max")
    auto = criterion_candidates("group-l2", "auto", norms, ("group-l2-macs", "taylor", "hessian"))
    assert [c.label for c in auto] == ["group-l2[sum]", "group-l2[mean]", "group-l2[max]",
                                       "group-l2-macs[sum]", "taylor[mean]", "hessian[mean]"]  # fmt: skip
    fixed = criterion_candidates("group-l2", "max", norms, ("taylor", "group-l2-macs"))
    assert [c.label for c in fixed] == ["group-l2[max]", "taylor[max]", "group-l2-macs[max]"]
    assert criterion_candidates("taylor", "sum", norms, ("taylor",)) == [Candidate("taylor", "sum")]


def test_choose_criterion_keeps_the_best_first_on_ties():
    model = nn.Linear(2, 2)
    scores = {"group-l2[sum]": 0.5, "group-l2[mean]": 0.7, "taylor[mean]": 0.7}
    seen = []

    def proxy(m, cand):
        assert m is model
        seen.append(cand.label)
        return scores[cand.label]

    cands = [Candidate("group-l2", "sum"), Candidate("group-l2", "mean"), Candidate("taylor", "mean")]
    chosen, record = choose_criterion(model, cands, proxy)
    assert chosen == cands[1] and record["chosen"] == "group-l2[mean]"
    assert seen == list(scores) and [t["val_accuracy"] for t in record["trials"]] == [0.5, 0.7, 0.7]
    assert record["seconds"] >= 0
    with pytest.raises(ValueError, match="at least one"):
        choose_criterion(model, [], proxy)


def test_a_second_round_scores_the_finalists_again_and_picks_among_them():
    model = nn.Linear(2, 2)
    cands = [Candidate("group-l2", n) for n in ("sum", "mean", "max")] + [Candidate("taylor", "mean")]
    first = {"group-l2[sum]": 0.5, "group-l2[mean]": 0.75, "group-l2[max]": 0.5, "taylor[mean]": 0.25}
    second = {"group-l2[mean]": 0.5, "group-l2[sum]": 0.625}
    finals = []

    def final(cand):
        finals.append(cand.label)
        return second[cand.label]

    chosen, record = choose_criterion(model, cands, lambda m, c: first[c.label], final=final, finalists=2)
    # the best two by the first round (ties: the earlier), in candidate order, then the
    # best by the second score, which overrides the first
    assert finals == ["group-l2[sum]", "group-l2[mean]"]
    assert chosen == cands[0] and record["chosen"] == "group-l2[sum]"
    assert [t.get("final_accuracy") for t in record["trials"]] == [0.625, 0.5, None, None]
    assert [t["val_accuracy"] for t in record["trials"]] == list(first.values())
    # ties in the second round: the earlier candidate
    second["group-l2[mean]"] = 0.625
    assert choose_criterion(model, cands, lambda m, c: first[c.label], final=final)[0] == cands[0]
    # as many finalists as candidates: one round, ``final`` never called
    finals.clear()
    chosen, record = choose_criterion(model, cands[:2], lambda m, c: first[c.label], final=final)
    assert chosen == cands[1] and finals == [] and "final_accuracy" not in record["trials"][0]


def test_within_noise_is_one_standard_error_of_the_difference():
    # 0.55 vs 0.50 on 180 images: the standard error of the difference is 5.2 points
    assert within_noise(0.55, 0.50, 180) and not within_noise(0.55, 0.50, 180, z=0.9)
    assert not within_noise(0.58, 0.50, 180) and within_noise(0.58, 0.50, 64)  # 8.8 points at 64
    assert within_noise(0.5, 0.7, 10)  # a better "other" is always within noise
    assert within_noise(1.0, 1.0, 50) and not within_noise(1.0, 0.98, 50)  # half an image
    assert within_noise(1.0, 0.99, 50)
    with pytest.raises(ValueError, match="images must be >= 1"):
        within_noise(0.5, 0.5, 0)
    with pytest.raises(ValueError, match=r"other must be an accuracy in \[0, 1\] \(found 3"):
        within_noise(0.5, 3.0, 10)


def test_the_proxy_scores_a_small_validation_split_whole():
    assert proxy_images(180, 64) == 180 and proxy_images(512, 64) == 512
    assert proxy_images(513, 64) == 64 and proxy_images(50_000, 64) == 64
