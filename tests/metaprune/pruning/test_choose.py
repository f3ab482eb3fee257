"""Tests for metaprune/pruning/choose.py: choices by the proxy, successive halving in budget."""

from __future__ import annotations

import itertools

import pytest
from torch import nn

from metaprune.pruning.choose import (
    Candidate,
    choose_criterion,
    criterion_candidates,
    halving_plan,
    successive_halving,
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


@pytest.mark.parametrize(("arms", "total"), itertools.product([1, 2, 3, 5, 6, 9], [0, 1, 7, 20, 100, 1000]))
def test_plan_never_exceeds_the_budget(arms, total):
    plan = halving_plan(arms, total, 0.5, min_round_iters=2)
    assert 1 <= plan.arms <= arms and plan.total == total
    assert plan.explore_iters <= 0.5 * total
    assert all(a > b for a, b in zip(plan.survivors, plan.survivors[1:]))
    # the iterations every arm trains add up to the budget exactly
    losers = plan.explore_iters - plan.round_iters * plan.rounds
    assert losers + plan.winner_iters == total
    if plan.arms > 1:
        assert plan.round_iters >= 2 and plan.rounds == len(plan.survivors)
        assert plan.survivors[0] == plan.arms and plan.survivors[-1] == 2  # the last duel
    else:
        assert plan.rounds == 0 and plan.winner_iters == total


def test_plan_shrinks_the_field_when_the_budget_is_short():
    assert halving_plan(6, 1000, 0.5).arms == 6
    short = halving_plan(6, 20, 0.5, min_round_iters=2)  # 10 iterations to explore
    assert short.arms == 3 and short.survivors == [3, 2] and short.round_iters == 2
    assert halving_plan(6, 20, 0.5).survivors == [5, 3, 2]  # 6 arms need 11 round slots


def test_successive_halving_follows_the_scores():
    """Arm quality grows with training for the good arms only; the best one wins."""

    class Arm:
        def __init__(self, name, slope):
            self.name, self.slope, self.trained = name, slope, 0

    arms = [Arm(n, s) for n, s in [("a", 0.1), ("b", 0.5), ("c", 0.3), ("d", 0.0), ("e", 0.5)]]
    plan = halving_plan(5, 200, 0.5)
    winner, rounds = successive_halving(
        arms, plan, lambda a, n: setattr(a, "trained", a.trained + n),
        lambda a: a.slope * a.trained, name=lambda a: a.name,
    )  # fmt: skip
    assert winner.name == "b"  # ties go to the earlier arm
    assert [len(r["arms"]) for r in rounds] == plan.survivors == [5, 3, 2]
    assert [a["arm"] for a in rounds[1]["arms"]] == ["b", "c", "e"]
    assert sum(a.trained for a in arms) == plan.explore_iters
    assert winner.trained == plan.round_iters * plan.rounds
    with pytest.raises(ValueError, match="plan is for 5 arms"):
        successive_halving(arms[:2], plan, lambda a, n: None, lambda a: 0.0)
