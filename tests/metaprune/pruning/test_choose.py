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
    proxy_images,
    successive_halving,
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


def test_successive_halving_gives_near_ties_to_the_prior():
    """Tied arms (within noise of the round's best) rank by the prior, the rest by score."""

    class Arm:
        def __init__(self, name, score):
            self.name, self.score = name, score

    def run(arms, tied, prior=None):
        plan = halving_plan(len(arms), 100, 0.5)
        return successive_halving(arms, plan, lambda a, n: None, lambda a: a.score,
                                  name=lambda a: a.name, tied=tied, prior=prior)  # fmt: skip

    arms = [Arm("strong", 0.44), Arm("middle", 0.48), Arm("weak", 0.50)]
    prior = {"middle": 0, "strong": 1, "weak": 2}
    winner, rounds = run(arms, None)
    assert winner.name == "weak"  # no noise model: the best score, however slight
    winner, rounds = run(arms, lambda b, s: b - s <= 0.03, lambda a: prior[a.name])
    assert winner.name == "middle"  # 0.48 is within 0.03 of 0.50
    assert [a["within_noise_of_best"] for a in rounds[0]["arms"]] == [False, True, True]
    assert [a["survived"] for a in rounds[0]["arms"]] == [False, True, True]
    # a wide noise band: everything is tied, the prior decides every round
    winner, rounds = run(arms, lambda b, s: True, lambda a: prior[a.name])
    assert winner.name == "middle" and [a["arm"] for a in rounds[1]["arms"]] == ["strong", "middle"]
    # without a prior, tied arms keep their order (the earlier first)
    winner, _ = run(arms, lambda b, s: True)
    assert winner.name == "strong"
    # an arm clearly behind never wins on the prior
    arms = [Arm("middle", 0.30), Arm("weak", 0.50)]
    winner, _ = run(arms, lambda b, s: b - s <= 0.03, lambda a: prior[a.name])
    assert winner.name == "weak"
