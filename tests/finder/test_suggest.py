import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lrkit.finder import (
    RULES,
    RangeTest,
    Suggestion,
    default,
    minimum,
    steepest,
    suggest_all,
    valley,
)


def curve(losses, lo=1e-5, hi=1.0):
    """A range test whose smoothed curve is exactly ``losses`` (no smoothing, no stop)."""
    lrs = np.geomspace(lo, hi, len(losses))
    return RangeTest.from_losses(lrs, losses, smoothing=0.0, diverge=None)


def fastai_valley(lrs, losses):
    """fastai's ``valley`` (fastai/callback/schedule.py), transcribed literally."""
    n = len(losses)
    max_start, max_end = 0, 0
    lds = [1] * n
    for i in range(1, n):
        for j in range(0, i):
            if (losses[i] < losses[j]) and (lds[i] < lds[j] + 1):
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    idx = max_start + int(sections) + int(sections / 2)
    return float(lrs[idx])


# a loss that falls from 2 to 1 between 1e-4 and 1e-2, flat, then rises after 1e-1
def shaped(n=101):
    x = np.linspace(-5, 0, n)  # log10(lr)
    fall = 1.0 + 1.0 / (1.0 + np.exp(4.0 * (x + 3.0)))  # steepest at x = -3
    rise = np.where(x > -1, 10 * (x + 1) ** 2, 0.0)
    return fall + rise


def test_steepest_is_the_largest_descent_per_unit_of_log_lr():
    r = curve(shaped())
    s = steepest(r, skip_start=0, skip_end=0)
    assert s.index == 40  # x = -5 + 40 * 0.05 = -3
    assert s.lr == pytest.approx(1e-3, rel=1e-12)
    lo, hi = s.interval
    # where the logistic's slope is at least half its maximum: |x + 3| <= acosh(sqrt 2)/2 ≈ 0.44
    assert lo == pytest.approx(10**-3.4, rel=1e-9)
    assert hi == pytest.approx(10**-2.6, rel=1e-9)


def test_minimum_is_a_tenth_of_the_rate_at_the_lowest_smoothed_loss():
    losses = [3.0, 2.0, 1.5, 1.0, 1.2, 4.0]
    r = curve(losses, lo=1e-4, hi=10.0)  # rates 1e-4, 1e-3, ..., 10
    s = minimum(r, skip_start=0, skip_end=0)
    assert s.lr == pytest.approx(1e-1 / 10, rel=1e-12)
    assert s.index == 2  # the sample at 1e-2
    assert s.interval is None


def test_default_is_a_third_of_the_way_capped_half_a_decade_below_the_minimum():
    r = curve(shaped())
    s = default(r, skip_start=0, skip_end=0)
    k_min = int(np.argmin(r.smoothed))
    lr_min = float(r.lrs[k_min])
    lr_steep = steepest(r, skip_start=0, skip_end=0).lr
    expected = min(lr_steep ** (2 / 3) * lr_min ** (1 / 3), lr_min / math.sqrt(10))
    assert s.lr == pytest.approx(expected, rel=1e-9)
    assert lr_min / 30 < s.lr <= lr_min / math.sqrt(10)
    assert s.interval == (pytest.approx(lr_min / 30), pytest.approx(lr_min))
    assert s.index == int(np.argmin(np.abs(np.log(r.lrs) - math.log(s.lr))))


def test_default_never_goes_below_a_thirtieth_of_the_minimum():
    # steep point at the very start, minimum three decades later
    losses = np.concatenate([[10.0, 2.0], np.linspace(2.0, 1.0, 60), [1.5, 3.0]])
    r = curve(losses, lo=1e-5, hi=1e-1)
    s = default(r, skip_start=0, skip_end=0)
    lr_min = float(r.lrs[int(np.argmin(r.smoothed))])
    assert s.lr == pytest.approx(lr_min / 30, rel=1e-12)


def test_default_between_the_cap_and_the_floor_weighs_the_steep_point_two_thirds():
    # steep point two decades below the minimum: a third of the way is 10**(-4/3) of it
    lrs = np.geomspace(1e-5, 1.0, 101)
    x = np.log10(lrs)
    losses = 2.0 - 1.0 / (1.0 + np.exp(-4.0 * (x + 3.0))) + np.where(x > -1, 10 * (x + 1) ** 2, 0.0)
    r = RangeTest.from_losses(lrs, losses, smoothing=0.0, diverge=None)
    lr_steep = steepest(r, skip_start=0, skip_end=0).lr
    lr_min = float(r.lrs[int(np.argmin(r.smoothed))])
    s = default(r, skip_start=0, skip_end=0)
    assert lr_min / 30 < s.lr < lr_min / math.sqrt(10)
    assert s.lr == pytest.approx(lr_steep ** (2 / 3) * lr_min ** (1 / 3), rel=1e-12)


def test_default_without_a_descent_is_half_a_decade_below_the_minimum():
    r = curve([1.0, 2.0, 3.0, 4.0])
    with pytest.raises(ValueError, match="never decreases before its minimum"):
        steepest(r, skip_start=0, skip_end=0)
    s = default(r, skip_start=0, skip_end=0)
    assert s.lr == pytest.approx(1e-5 / math.sqrt(10), rel=1e-12)


def test_valley_matches_fastai_on_a_shaped_curve():
    r = curve(shaped())
    s = valley(r, skip_start=0, skip_end=0)
    assert s.lr == fastai_valley(r.lrs, r.smoothed)
    assert s.interval is not None


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.0, 10.0, allow_nan=False), min_size=3, max_size=40))
def test_valley_matches_fastai_on_any_curve(losses):
    r = curve(losses)
    assert valley(r, skip_start=0, skip_end=0).lr == fastai_valley(r.lrs, r.smoothed)


def test_the_default_skips_are_fastais():
    losses = shaped(100)
    r = RangeTest.from_losses(np.geomspace(1e-5, 1.0, 100), losses, smoothing=0.0, diverge=None)
    lrs, smoothed = r.lrs[10:-5], r.smoothed[10:-5]
    assert valley(r).lr == fastai_valley(lrs, smoothed)
    assert minimum(r).lr == pytest.approx(lrs[int(np.argmin(smoothed))] / 10)


def test_suggest_all_evaluates_every_rule_and_marks_impossible_ones():
    r = curve(shaped())
    out = suggest_all(r)
    assert list(out) == ["default", "steepest", "valley", "minimum"] == list(RULES)
    assert all(isinstance(s, Suggestion) for s in out.values())
    assert out["steepest"] == steepest(r)
    rising = curve([1.0, 2.0, 3.0, 4.0, 5.0])
    some = suggest_all(rising, ["steepest", "minimum"], skip_start=0, skip_end=0)
    assert some["steepest"] is None
    assert some["minimum"].lr == pytest.approx(1e-6)


def test_too_short_curves_and_bad_arguments():
    r = curve([1.0, 0.5, 2.0, 3.0, 4.0, 5.0, 6.0])
    with pytest.raises(ValueError, match="fewer than 3 remain"):
        minimum(r)  # 7 points, skip 0 + 5
    assert minimum(r, skip_end=2).lr == pytest.approx(r.lrs[1] / 10)
    with pytest.raises(TypeError, match="result must be a RangeTest, got dict"):
        default({})
    with pytest.raises(ValueError, match=r"unknown rule\(s\) \['slide'\]"):
        suggest_all(r, ["slide"])
    with pytest.raises(ValueError, match="skip_end must be an int >= 0, got -1"):
        valley(r, skip_end=-1)


def test_suggestion_to_dict():
    s = Suggestion("steepest", 0.01, 3, (0.005, 0.02))
    assert s.to_dict() == {"rule": "steepest", "lr": 0.01, "index": 3, "interval": [0.005, 0.02]}
