"""service/policy.py: metanetwork names in job configs, including ``"auto"``; spec sizes
remembered."""

from __future__ import annotations

import pytest

from metanet.export import list_pretrained
from metaprune.errors import InvalidInputError, NotFoundError
from metaprune.limits import DEFAULT_LIMITS
from metaprune.pruning import PruneConfig, Target
from service.policy import check_job


def _config(**kwargs) -> PruneConfig:
    return PruneConfig(target=Target("macs", 2.0), **kwargs)


def test_auto_metanet_is_accepted_when_the_server_offers_every_registered_one() -> None:
    offered = tuple(list_pretrained())
    assert "resnet20-digits" in offered
    for metanet in ("auto", None):
        check_job(_config(method="metanet", metanet=metanet), DEFAULT_LIMITS, offered)
    check_job(_config(method="metanet", metanet="resnet20-digits"), DEFAULT_LIMITS, offered)


def test_auto_metanet_is_refused_when_the_server_offers_only_some() -> None:
    with pytest.raises(InvalidInputError, match="metanet 'auto' chooses among every registered"):
        check_job(_config(method="metanet", metanet="auto"), DEFAULT_LIMITS, ())
    with pytest.raises(NotFoundError, match="unknown metanetwork 'other'"):
        check_job(_config(method="metanet", metanet="other"), DEFAULT_LIMITS, ("resnet20-digits",))


def test_spec_sizes_that_passed_are_remembered_refusals_are_not(monkeypatch) -> None:
    import dataclasses

    from metaprune.errors import LimitExceededError
    from metaprune.models import ArchSpec
    from service import policy

    calls = []
    real = policy.check_spec
    monkeypatch.setattr(policy, "check_spec", lambda *a: calls.append(a) or real(*a))
    spec = ArchSpec("cifar_resnet20", {"in_channels": 3, "num_classes": 7})
    first = policy.spec_size(spec, DEFAULT_LIMITS, None)
    assert policy.spec_size(spec, DEFAULT_LIMITS, None) == first > 200_000
    assert len(calls) == 1  # the second answer came from the cache
    policy.spec_size(spec, DEFAULT_LIMITS, (3, 8, 8))  # another shape is sized again
    assert len(calls) == 2
    small = dataclasses.replace(DEFAULT_LIMITS, max_params=1000)
    for _ in range(2):  # a refusal is computed (and raised) every time
        with pytest.raises(LimitExceededError, match="max_params"):
            policy.spec_size(spec, small, None)
    assert len(calls) == 4
