"""service/policy.py: metanetwork names in job configs, including ``"auto"``."""

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
