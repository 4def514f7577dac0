"""The stage SDK's parameter declarations: ranges checked in ``Param.coerce``, declared by every stage."""
import math

import pytest

from winnow.stages import registry
from winnow.stages.base import Param
from winnow.stages.errors import WinnowError
from winnow.stages.filter.basic import BasicFilter

# numeric parameters where every int64 is meaningful (a seed is hashed, never counted)
UNBOUNDED = {("recaption", "sample_seed")}


@pytest.mark.torture
@pytest.mark.timeout(30)
@pytest.mark.parametrize("params, needles", [
    ({"max_chars": -5}, ["'max_chars'", ">= 0", "-5"]),
    ({"max_aspect_ratio": -1}, ["'max_aspect_ratio'", ">= 0", "-1"]),
    ({"min_lang_score": 1.5}, ["'min_lang_score'", "in [0, 1]", "1.5"]),
    ({"min_lang_score": math.nan}, ["'min_lang_score'", "in [0, 1]", "nan"]),
    ({"min_words": 10**30}, ["'min_words'", "64 bits", str(10**30)]),
    ({"max_aspect_ratio": 10**400}, ["'max_aspect_ratio'", "too large"]),
])
def test_out_of_range_values_are_one_line_errors(params, needles):
    with pytest.raises(WinnowError) as info:
        BasicFilter(instance_name="basic", **params)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("stage 'basic' (basic_filter): parameter")
    for needle in needles:
        assert needle in msg, (needle, msg)


@pytest.mark.timeout(30)
def test_bounds_open_closed_and_none():
    eps = Param("eps", float, 0.05, "", min=0.0, max=2.0, open_min=True, open_max=True)
    assert eps.range_text() == "in (0, 2)"
    for bad in (0.0, 2.0, -1.0):
        with pytest.raises(WinnowError, match=r"'eps' must be in \(0, 2\), got"):
            eps.coerce(bad, "here")
    assert eps.coerce(1, "here") == 1.0 and eps.coerce(1.999, "here") == 1.999
    optional = Param("t", float, None, "", min=0.0, open_min=True)
    assert optional.coerce(None, "here") is None and optional.range_text() == "> 0"
    assert Param("n", int, 1, "", min=-1, max=20).coerce(-1, "here") == -1


@pytest.mark.timeout(30)
def test_every_stage_bounds_its_numbers():
    """A count, size, fraction or ratio with no declared range lets a typo like -5 run silently."""
    missing = [(name, p.name) for name, cls in registry().items() for p in cls.params
               if p.type in (int, float) and p.min is None and p.max is None and (name, p.name) not in UNBOUNDED]
    assert not missing, missing
    for name, cls in registry().items():  # every default sits inside its own range
        for p in cls.params:
            if p.type in (int, float) and p.default is not None:
                assert p.in_range(p.default), (name, p.name, p.default, p.range_text())


@pytest.mark.timeout(30)
def test_validate_keeps_the_cross_value_rule():
    with pytest.raises(WinnowError, match="'max_aspect_ratio' must be 0 \\(off\\) or >= 1, got 0.5"):
        BasicFilter(max_aspect_ratio=0.5)
    assert BasicFilter(max_aspect_ratio=0).max_aspect_ratio == 0.0
