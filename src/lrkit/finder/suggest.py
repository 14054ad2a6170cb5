r"""Learning-rate suggestions: pure functions of a range test's data.

Every rule has one signature, ``rule(result, *, skip_start=None, skip_end=5) -> Suggestion``, and
reads only the :class:`~lrkit.finder.range_test.RangeTest` it is given, so stored curves can be
evaluated in batch (:func:`suggest_all`, :data:`RULES`). Like fastai's ``lr_find``, the rules
look at the curve without its first ``steps // 10`` points (``skip_start=None``; the loss has not
moved there) and its last 5 (``skip_end``; the divergence). A :class:`Suggestion` gives the rate,
the index of the sampled rate it is or is nearest to (in :math:`\log\eta`), and an interval where
the curve allows one.

With :math:`\eta_k` the rates, :math:`\bar\ell_k` the smoothed loss of the kept points and
:math:`k^* = \arg\min_k \bar\ell_k`:

* :func:`steepest`: the rate where the smoothed loss falls fastest per unit of :math:`\log\eta`,
  :math:`\arg\min_{k \le k^*} \partial\bar\ell / \partial\log\eta` (central differences,
  ``numpy.gradient``), before the minimum; the interval is the contiguous run around it where
  the slope is at least half as steep (Smith 2017 reads the rate off the steepest descent).
* :func:`valley`: fastai's longest-valley rule (developed by ESRI, fastai's default since 2.4):
  the longest decreasing subsequence of :math:`\bar\ell`, from index :math:`a` to :math:`b`;
  the rate at :math:`a + \lfloor (b-a)/3 \rfloor + \lfloor (b-a)/6 \rfloor`, about halfway; the
  interval is the middle third of the valley.
* :func:`minimum`: :math:`\eta_{k^*}/10`, one decade below the minimum (fastai's ``minimum``).
* :func:`default`: the combined rule below.

The default. On the range test, the loss falls once the rate is large enough to make progress,
reaches its minimum where single steps start to destabilize training, and then explodes. The
best peak rate of a full run (warmup, then a decay) lies between the two: above the
steepest-descent point, because a run with warmup and a decaying schedule tolerates a higher
peak than the constant rate of a short test, and below the minimum, because that rate is
already at the edge of divergence. Each end alone is a biased estimate: the steepest point is
noisy (the slope of a noisy curve) and often several times too low, while the minimum, which
the smoothing lags toward the explosion, is several times too high. The default is therefore

.. math::

    \eta^\star = \min\Big(\eta_{\text{steep}}^{2/3}\,\eta_{\min}^{1/3},\
        \eta_{\min}/\sqrt{10}\Big)
    \quad\text{clipped from below at}\ \eta_{\min}/30,

one third of the way from the steep point to the minimum in :math:`\log\eta`, never closer to
the minimum than half a decade (:math:`10^{-1/2} \approx 0.32`) and never further below it than
:math:`\eta_{\min}/30` (1.5 decades). Without a decreasing part before the minimum it is
:math:`\eta_{\min}/\sqrt{10}`. Its interval is :math:`[\eta_{\min}/30, \eta_{\min}]`.

Why a third and not half of the way: measured on lrkit's five built-in workloads at their full
budgets, with AdamW and warmup + cosine (``docs/benchmarks.md``, section "Range-test quality"),
the grid-searched best peak rate sits about a third of the way: the geometric middle landed
2.5-3x above it on the character-level transformer (whose loss descends over 2.5 decades of
the sweep) and cost 3-7% bits per character, while a third of the way stays inside the
within-1-point window of the MNIST-1D CNN and MLP. The cap and the floor bound what a noisy
steep point can do.

References:
    Leslie N. Smith. "Cyclical Learning Rates for Training Neural Networks." WACV 2017.
    fastai ``fastai/callback/schedule.py``: ``valley``, ``steep``, ``minimum``, ``lr_find``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any

import numpy as np
from numpy.typing import NDArray

from lrkit._validate import check_int
from lrkit.finder.range_test import RangeTest

__all__ = [
    "RULES",
    "Suggestion",
    "default",
    "minimum",
    "steepest",
    "suggest_all",
    "valley",
]

MIN_POINTS = 3
"""A curve needs at least this many points (after the skips) for a suggestion."""

DEFAULT_WEIGHT = 1.0 / 3.0
"""How far the default goes from the steep point toward the minimum, in :math:`\\log\\eta`."""

DEFAULT_FLOOR = 30.0
"""The default never goes below :math:`\\eta_{\\min}` divided by this."""


@dataclasses.dataclass(frozen=True)
class Suggestion:
    r"""A suggested learning rate.

    Attributes:
        rule: The rule's name (``"steepest"``, ``"valley"``, ``"minimum"``, ``"default"``).
        lr: The suggested rate.
        index: The index into ``result.lrs`` of the sampled rate it is, or is nearest to in
            :math:`\log\eta`.
        interval: ``(low, high)`` rates the rule considers about as good, or ``None``.
    """

    rule: str
    lr: float
    index: int
    interval: tuple[float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "rule": self.rule,
            "lr": self.lr,
            "index": self.index,
            "interval": None if self.interval is None else list(self.interval),
        }


def _window(result: RangeTest, skip_start: int | None, skip_end: int) -> tuple[int, int]:
    """The kept index range ``[lo, hi)`` of the curve."""
    if not isinstance(result, RangeTest):
        raise TypeError(f"result must be a RangeTest, got {type(result).__name__}")
    lo = result.steps // 10 if skip_start is None else check_int("skip_start", skip_start, min=0)
    hi = len(result) - check_int("skip_end", skip_end, min=0)
    if hi - lo < MIN_POINTS:
        raise ValueError(
            f"the range test has {len(result)} points; after skipping {lo} at the start and "
            f"{skip_end} at the end fewer than {MIN_POINTS} remain (run more steps, or lower "
            "skip_start/skip_end)"
        )
    return lo, hi


def _nearest(lrs: NDArray[np.float64], lr: float) -> int:
    return int(np.argmin(np.abs(np.log(lrs) - math.log(lr))))


def _slopes(result: RangeTest, lo: int, hi: int) -> tuple[NDArray[np.float64], int]:
    r"""The slopes of the kept smoothed curve against :math:`\log\eta`, and its argmin (local)."""
    y = result.smoothed[lo:hi]
    x = np.log(result.lrs[lo:hi])
    return np.gradient(y, x), int(np.argmin(y))


def steepest(result: RangeTest, *, skip_start: int | None = None, skip_end: int = 5) -> Suggestion:
    r"""The rate where the smoothed loss falls fastest against :math:`\log\eta` (see module).

    Raises:
        TypeError: ``result`` is not a :class:`RangeTest`.
        ValueError: Too few points, or the smoothed loss never decreases before its minimum.
    """
    lo, hi = _window(result, skip_start, skip_end)
    slopes, k_min = _slopes(result, lo, hi)
    before = slopes[: k_min + 1]
    k = int(np.argmin(before))
    if not before[k] < 0.0:
        raise ValueError(
            "the smoothed loss never decreases before its minimum: start the sweep at a lower rate"
        )
    left = k
    while left > 0 and before[left - 1] <= 0.5 * before[k]:
        left -= 1
    right = k
    while right < len(before) - 1 and before[right + 1] <= 0.5 * before[k]:
        right += 1
    lrs = result.lrs
    return Suggestion(
        "steepest", float(lrs[lo + k]), lo + k, (float(lrs[lo + left]), float(lrs[lo + right]))
    )


def _longest_valley(losses: NDArray[np.float64]) -> tuple[int, int]:
    """The search of fastai's ``valley``: ``(max_start, max_end)`` of the longest decreasing run.

    ``lds[i]`` is the length of the longest strictly decreasing subsequence ending at ``i``;
    the bookkeeping of ``max_start``/``max_end`` follows fastai exactly (including its update
    inside the inner loop, which makes ``max_start`` one before the subsequence's first index).
    """
    n = len(losses)
    lds = np.ones(n, dtype=np.int64)
    max_start, max_end = 0, 0
    for i in range(1, n):
        higher = losses[:i] > losses[i]
        if higher.any():
            lds[i] = max(int(lds[i]), int(lds[:i][higher].max()) + 1)
        if lds[max_end] < lds[i]:
            max_end = i
            max_start = max_end - int(lds[max_end])
    return max_start, max_end


def valley(result: RangeTest, *, skip_start: int | None = None, skip_end: int = 5) -> Suggestion:
    """The longest-valley rule of fastai, on the smoothed loss (see module).

    Raises:
        TypeError: ``result`` is not a :class:`RangeTest`.
        ValueError: Too few points.
    """
    lo, hi = _window(result, skip_start, skip_end)
    start, end = _longest_valley(result.smoothed[lo:hi])
    sections = (end - start) / 3
    idx = start + int(sections) + int(sections / 2)
    lrs = result.lrs[lo:hi]
    interval = None
    if end - start >= 3:
        a, b = start + int(sections), start + int(2 * sections)
        interval = (float(lrs[max(a, 0)]), float(lrs[max(b, 0)]))
    # fastai indexes lrs[idx] with Python semantics: idx = -1 is the last point.
    k = idx % len(lrs)
    return Suggestion("valley", float(lrs[k]), lo + k, interval)


def minimum(result: RangeTest, *, skip_start: int | None = None, skip_end: int = 5) -> Suggestion:
    """One tenth of the rate at the smoothed loss's minimum (fastai's ``minimum``).

    Raises:
        TypeError: ``result`` is not a :class:`RangeTest`.
        ValueError: Too few points.
    """
    lo, hi = _window(result, skip_start, skip_end)
    k_min = lo + int(np.argmin(result.smoothed[lo:hi]))
    lr = float(result.lrs[k_min]) / 10.0
    return Suggestion("minimum", lr, _nearest(result.lrs, lr))


def default(result: RangeTest, *, skip_start: int | None = None, skip_end: int = 5) -> Suggestion:
    r"""The combined rule (module docstring): between the steep point and the minimum.

    Without a decreasing part before the minimum it is :math:`\eta_{\min}/\sqrt{10}`.

    Raises:
        TypeError: ``result`` is not a :class:`RangeTest`.
        ValueError: Too few points.
    """
    lo, hi = _window(result, skip_start, skip_end)
    k_min = lo + int(np.argmin(result.smoothed[lo:hi]))
    lr_min = float(result.lrs[k_min])
    upper = lr_min / math.sqrt(10.0)
    lower = lr_min / DEFAULT_FLOOR
    try:
        lr_steep = steepest(result, skip_start=lo, skip_end=skip_end).lr
        lr = min(lr_steep ** (1.0 - DEFAULT_WEIGHT) * lr_min**DEFAULT_WEIGHT, upper)
    except ValueError:
        lr = upper
    lr = max(lr, lower)
    return Suggestion("default", lr, _nearest(result.lrs, lr), (lower, lr_min))


Rule = Callable[..., Suggestion]

RULES: Mapping[str, Rule] = MappingProxyType(
    {"default": default, "steepest": steepest, "valley": valley, "minimum": minimum}
)
"""Every suggestion rule by name, the default first."""


def suggest_all(
    result: RangeTest,
    rules: Iterable[str] | None = None,
    *,
    skip_start: int | None = None,
    skip_end: int = 5,
) -> dict[str, Suggestion | None]:
    """Every rule's suggestion (``None`` for a rule the curve does not allow).

    Args:
        result: The range test.
        rules: Names from :data:`RULES` (default: all, in its order).
        skip_start: As for each rule.
        skip_end: As for each rule.

    Raises:
        TypeError: ``result`` is not a :class:`RangeTest`.
        ValueError: An unknown rule name.
    """
    if not isinstance(result, RangeTest):
        raise TypeError(f"result must be a RangeTest, got {type(result).__name__}")
    names = list(RULES) if rules is None else list(rules)
    unknown = [n for n in names if n not in RULES]
    if unknown:
        raise ValueError(f"unknown rule(s) {unknown}; rules are {', '.join(RULES)}")
    return {name: _try(RULES[name], result, skip_start, skip_end) for name in names}


def _try(rule: Rule, result: RangeTest, skip_start: int | None, skip_end: int) -> Suggestion | None:
    try:
        return rule(result, skip_start=skip_start, skip_end=skip_end)
    except ValueError:
        return None
