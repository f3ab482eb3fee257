"""timm, one small model per family: exact, or refused naming the module and the op."""

import re

import pytest
import timm  # noqa: F401 - dev extra: the sweep must run, never silently skip

from metaprune.testing.timm_sweep import FAMILIES, check

# families the encoder refuses, and the module and op each refusal must name
REFUSED = {
    "resnet (eca)": r"^layer1\.0\.se\.conv: a convolution across the channel axis",
    "edgenext": r"^stages\.1\.blocks\.1\.xca: normalize .*spread over several axes",
    "mobilevit": r"^ByobNet: torch\.fx cannot trace this model",
}


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_timm_family(family: str) -> None:
    outcome = check(family)
    if family in REFUSED:
        assert not outcome.exact and outcome.coverage == 0.0, outcome
        assert re.search(REFUSED[family], outcome.reason), outcome.reason
    else:
        assert outcome.exact, outcome.reason
        assert outcome.coverage >= 0.99, outcome.coverage
