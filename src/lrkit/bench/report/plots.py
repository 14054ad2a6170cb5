"""The report's figures, drawn from :mod:`lrkit.bench.report.analysis` data; nothing computed here.

Two figures per section:

* :func:`plot_sensitivity`: the final metric against the learning rate (log axis), one line per
  strategy through the mean over seeds, a band from the smallest to the largest seed, a star at
  the best rate; rates where a run diverged or failed are marked on the axis edge of the bad
  side. Learning-rate-free strategies, whose rates are factors, get their own panel on the right
  with the same metric axis.
* :func:`plot_curves`: each strategy at its best rate over the updates: the metric on the left,
  the training loss on the right, the same mean line and min–max band over seeds.

matplotlib is imported inside the functions, without pyplot (no GUI backend, no global figure
state); each function returns a ``matplotlib.figure.Figure`` to save.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Literal

from lrkit.bench.report.analysis import Band, Section, StrategySummary

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "PALETTE",
    "metric_label",
    "plot_curves",
    "plot_sensitivity",
    "strategy_colors",
    "strategy_label",
]

PALETTE: Final = (
    *("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"),
    *("#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"),
    *("#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5"),
    *("#c49c94", "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5"),
)
"""Strategy colors: matplotlib's ``tab10``, then the light half of ``tab20``."""

_WIDTH: Final = 9.0
_LOG_SPAN: Final = 30.0
"""A positive quantity whose largest value is more than this times its smallest gets a log axis."""
_EDGE: Final = 0.025
"""Axes fraction between the edge and the first row of diverged/failed marks, and between rows."""
_FONT: Final = {"family": "monospace", "size": 8}


def _figure_class() -> type[Figure]:
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - matplotlib is a test dependency
        raise ImportError("the report needs matplotlib: pip install 'lrkit[plot]'") from exc
    return Figure


def strategy_colors(strategies: Iterable[str]) -> dict[str, str]:
    """A fixed color per strategy, the same in every figure and table of a report.

    Strategies are sorted and take the colors of :data:`PALETTE` in turn (cycling after 20).
    """
    names = sorted(set(strategies))
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}


def strategy_label(summary: StrategySummary, *, with_rate: bool = False) -> str:
    """The legend text of a strategy: its spec, marked when learning-rate-free.

    With ``with_rate``, the best rate is appended (``@ lr=0.1``, ``@ factor 1``).
    """
    text = summary.strategy
    if summary.lr_is_factor:
        text += "  [lr-free]"
    if with_rate and summary.best is not None:
        rate = f"factor {summary.best.lr:g}" if summary.lr_is_factor else f"lr={summary.best.lr:g}"
        text += f"  @ {rate}"
    return text


def metric_label(section: Section) -> str:
    """``"accuracy (higher is better)"``."""
    if section.metric is None:
        return "metric"
    way = "higher" if section.metric.higher_is_better else "lower"
    return f"{section.metric.name} ({way} is better)"


def _dash(summary: StrategySummary) -> Literal["-", "--"]:
    """Dashed for the learning-rate-free strategies, solid for the others."""
    return "--" if summary.lr_is_factor else "-"


def _plain(text: str) -> str:
    """``text`` drawn as it is: a ``$`` from the store must not start matplotlib's mathtext."""
    return text.replace("$", r"\$")


def _budget(section: Section) -> str:
    return "" if section.budget is None else f", {section.budget:,} updates per run"


def _use_log(values: Iterable[float]) -> bool:
    finite = [v for v in values if math.isfinite(v)]
    if not finite or min(finite) <= 0.0:
        return False
    return max(finite) > _LOG_SPAN * min(finite)


def _style(ax: Axes) -> None:
    ax.tick_params(labelsize=8.5)
    ax.grid(True, which="major", color="0.88", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _legend(fig: Figure, handles: Sequence[Any], labels: Sequence[str]) -> None:
    ncols = 1 if len(labels) <= 6 else 2
    fig.legend(
        handles,
        labels,
        loc="outside lower center",
        ncols=ncols,
        frameon=False,
        prop=_FONT,
        handlelength=2.2,
    )


def _height(entries: int) -> float:
    rows = entries if entries <= 6 else math.ceil(entries / 2)
    return 3.9 + 0.19 * rows


# -- sensitivity ------------------------------------------------------------------------------


def plot_sensitivity(section: Section, colors: Mapping[str, str]) -> Figure:
    """The final metric against the learning rate, one line per strategy (see the module).

    Args:
        section: A section where some run ended ``ok`` with a finite metric.
        colors: The color of each strategy (:func:`strategy_colors`).

    Raises:
        ImportError: matplotlib is not installed.
        ValueError: No run of the section ended ``ok`` with a finite metric.
    """
    if section.metric is None or not any(p.ok for s in section.strategies for p in s.points):
        raise ValueError(f"section {section.workload!r} has no run that ended ok")
    figure_class = _figure_class()
    rates = [s for s in section.strategies if s.points and not s.lr_is_factor]
    factors = [s for s in section.strategies if s.points and s.lr_is_factor]
    values = [v for s in section.strategies for p in s.points for v in p.values]
    points = [p for s in section.strategies for p in s.points]
    entries = len(rates) + len(factors) + 2 + any(p.diverged for p in points)
    entries += any(p.failed for p in points)
    fig = figure_class(figsize=(_WIDTH, _height(entries)), layout="constrained")
    panels: list[tuple[Axes, list[StrategySummary], str]] = []
    if rates and factors:
        grid = fig.add_gridspec(1, 2, width_ratios=(3.2, 1.0))
        left = fig.add_subplot(grid[0, 0])
        right = fig.add_subplot(grid[0, 1], sharey=left)
        right.tick_params(labelleft=False)
        panels = [(left, rates, "rate"), (right, factors, "factor")]
    else:
        ax = fig.add_subplot()
        panels = [(ax, rates or factors, "rate" if rates else "factor")]
    log_y = _use_log(values)
    for ax, group, kind in panels:
        for i, summary in enumerate(group):
            # learning-rate-free strategies mostly share the factors: dodge them apart a little
            shift = _DODGE ** (i - (len(group) - 1) / 2) if kind == "factor" else 1.0
            _draw_rates(ax, summary, colors[summary.strategy], shift=shift)
        ax.set_xscale("log")
        _rate_axis(ax, [p.lr for s in group for p in s.points], ticks_at_data=kind == "factor")
        if kind == "rate":
            ax.set_xlabel("peak learning rate (log scale)", fontsize=9.5)
        else:
            ax.set_xlabel(
                "factor on the estimated step size\n(log scale; 1 = published)", fontsize=9
            )
            if len(panels) == 2:
                ax.set_title("learning-rate-free", fontsize=9.5)
        _style(ax)
    first = panels[0][0]
    if log_y:
        first.set_yscale("log")
    rows = max(sum(any(p.diverged or p.failed for p in s.points) for s in g) for _, g, _ in panels)
    _pad_y(first, values, log=log_y, higher_is_better=section.metric.higher_is_better, rows=rows)
    first.set_ylabel(_plain(f"final {metric_label(section)}"), fontsize=9.5)
    for ax, group, _ in panels:
        _edge_marks(ax, group, colors, higher_is_better=section.metric.higher_is_better)
    fig.suptitle(
        _plain(f"{section.workload}: final {section.metric.name} vs learning rate")
        + _budget(section),
        fontsize=11,
    )
    handles, labels = _sensitivity_legend(section, colors)
    _legend(fig, handles, labels)
    return fig


_DODGE = 10**0.07
"""Horizontal offset factor between neighbouring strategies in the learning-rate-free panel."""


def _draw_rates(ax: Axes, summary: StrategySummary, color: str, *, shift: float = 1.0) -> None:
    placed = [p for p in summary.points if p.ok]
    xs = [p.lr * shift for p in placed]
    if not xs:
        return
    means = [math.fsum(p.values) / len(p.values) for p in placed]
    lows = [min(p.values) for p in placed]
    highs = [max(p.values) for p in placed]
    ax.fill_between(xs, lows, highs, color=color, alpha=0.18, lw=0)
    if len(xs) == 1:  # a band of one point is invisible: draw the seeds' range as a bar
        ax.vlines(xs, lows, highs, color=color, alpha=0.6, linewidth=2.5)
    ax.plot(xs, means, _dash(summary), color=color, linewidth=1.6, marker="o", markersize=4)
    best = summary.best
    if best is not None and best.mean is not None:
        ax.plot(
            [best.lr * shift],
            [best.mean],
            marker="*",
            markersize=13,
            color=color,
            markeredgecolor="black",
            markeredgewidth=0.7,
            linestyle="none",
            zorder=5,
        )


def _edge_marks(
    ax: Axes,
    group: Sequence[StrategySummary],
    colors: Mapping[str, str],
    *,
    higher_is_better: bool,
) -> None:
    """Diverged (x) and failed (hollow square) rates, stacked one row per strategy at the edge.

    The edge is the bad side of the metric: the bottom when higher is better, else the top.
    """
    from matplotlib.transforms import blended_transform_factory

    transform = blended_transform_factory(ax.transData, ax.transAxes)
    row = 0
    for summary in group:
        diverged = [p.lr for p in summary.points if p.diverged]
        failed = [p.lr for p in summary.points if p.failed]
        if not diverged and not failed:
            continue
        offset = _EDGE * (row + 1)
        y = offset if higher_is_better else 1.0 - offset
        color = colors[summary.strategy]
        if diverged:
            ax.plot(
                diverged,
                [y] * len(diverged),
                "x",
                color=color,
                markersize=7,
                markeredgewidth=2.0,
                transform=transform,
                clip_on=False,
                zorder=6,
            )
        if failed:
            ax.plot(
                failed,
                [y] * len(failed),
                "s",
                markerfacecolor="none",
                markeredgecolor=color,
                markersize=7,
                markeredgewidth=1.6,
                transform=transform,
                clip_on=False,
                zorder=6,
            )
        row += 1


def _sensitivity_legend(section: Section, colors: Mapping[str, str]) -> tuple[list[Any], list[str]]:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles: list[Any] = []
    labels: list[str] = []
    for summary in section.strategies:
        if not summary.points:
            continue
        color = colors[summary.strategy]
        handles.append(
            Line2D([], [], color=color, linestyle=_dash(summary), marker="o", markersize=4)
        )
        labels.append(_plain(strategy_label(summary)))
    handles.append(Patch(color="0.5", alpha=0.3, linewidth=0))
    labels.append("line: mean over seeds; band: min–max over seeds")
    handles.append(
        Line2D(
            [], [], marker="*", markersize=11, color="0.6", markeredgecolor="k", linestyle="none"
        )
    )
    labels.append("best rate (no seed diverged there)")
    bad = "bottom" if section.metric is not None and section.metric.higher_is_better else "top"
    points = [p for s in section.strategies for p in s.points]
    if any(p.diverged for p in points):
        handles.append(Line2D([], [], marker="x", color="0.3", markeredgewidth=2, linestyle="none"))
        labels.append(f"a run diverged at that rate (drawn at the {bad} edge)")
    if any(p.failed for p in points):
        handles.append(
            Line2D([], [], marker="s", color="0.3", markerfacecolor="none", linestyle="none")
        )
        labels.append(f"a run failed at that rate (drawn at the {bad} edge)")
    return handles, labels


def _rate_axis(ax: Axes, xs: Sequence[float], *, ticks_at_data: bool) -> None:
    """Limits around the rates; ticks at the rates themselves when asked or within a decade."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    lo, hi = min(xs), max(xs)
    pad = 3.0 if lo == hi else (hi / lo) ** 0.06
    ax.set_xlim(lo / pad, hi * pad)
    if ticks_at_data or hi < 10.0 * lo:
        ax.xaxis.set_major_locator(FixedLocator(sorted(set(xs))))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
        ax.xaxis.set_minor_locator(NullLocator())


def _pad_y(
    ax: Axes, values: Sequence[float], *, log: bool, higher_is_better: bool, rows: int
) -> None:
    r"""A little room on the good side; on the bad side, room for ``rows`` rows of edge marks.

    The bad-side padding :math:`b` (in units of the data span) is chosen so that the marks,
    which take the axes fraction :math:`f`, stay clear of the data:
    :math:`b / (1 + g + b) \ge f`, i.e. :math:`b = f (1 + g) / (1 - f)`.
    """
    finite = [v for v in values if math.isfinite(v)]
    lo, hi = min(finite), max(finite)
    good = 0.06
    fraction = min(_EDGE * (rows + 1.5), 0.5)
    bad = max(0.12, fraction * (1.0 + good) / (1.0 - fraction))
    below, above = (bad, good) if higher_is_better else (good, bad)
    if log:
        span = math.log10(hi / lo) if hi > lo else 1.0
        ax.set_ylim(lo / 10 ** (below * span), hi * 10 ** (above * span))
    else:
        span = hi - lo if hi > lo else max(abs(hi), 1.0) * 0.1
        ax.set_ylim(lo - below * span, hi + above * span)


# -- training curves --------------------------------------------------------------------------


def plot_curves(section: Section, colors: Mapping[str, str]) -> Figure:
    """Each strategy at its best rate: the metric and the training loss over the updates.

    Args:
        section: A section where some strategy has a best rate.
        colors: The color of each strategy.

    Raises:
        ImportError: matplotlib is not installed.
        ValueError: No strategy of the section has a best rate with a curve.
    """
    shown = [s for s in section.strategies if s.metric_curve is not None]
    if section.metric is None or not shown:
        raise ValueError(f"section {section.workload!r} has no best rate with a curve")
    figure_class = _figure_class()
    fig = figure_class(figsize=(_WIDTH, _height(len(shown) + 1)), layout="constrained")
    left, right = fig.subplots(1, 2)
    metric_values: list[float] = []
    loss_values: list[float] = []
    handles = []
    for summary in shown:
        color = colors[summary.strategy]
        style = _dash(summary)
        if summary.metric_curve is not None:
            handles.append(_draw_band(left, summary.metric_curve, color, style))
            metric_values += summary.metric_curve.low + summary.metric_curve.high
        if summary.loss_curve is not None:
            _draw_band(right, summary.loss_curve, color, style)
            loss_values += summary.loss_curve.low + summary.loss_curve.high
    if _use_log(metric_values):
        left.set_yscale("log")
    if _use_log(loss_values):
        right.set_yscale("log")
    left.set_ylabel(_plain(metric_label(section)), fontsize=9.5)
    left.set_title(_plain(f"held-out {section.metric.name}"), fontsize=9.5)
    right.set_ylabel("training loss (mean since the last evaluation)", fontsize=9)
    right.set_title("training loss", fontsize=9.5)
    for ax in (left, right):
        ax.set_xlabel("step (updates applied)", fontsize=9.5)
        ax.set_xlim(left=0)
        _style(ax)
    fig.suptitle(
        _plain(f"{section.workload}: each strategy at its best rate") + _budget(section),
        fontsize=11,
    )
    from matplotlib.patches import Patch

    labels = [_plain(strategy_label(s, with_rate=True)) for s in shown]
    _legend(
        fig,
        [*handles, Patch(color="0.5", alpha=0.3, linewidth=0)],
        [*labels, "line: mean over seeds; band: min–max over seeds"],
    )
    return fig


def _draw_band(ax: Axes, curve: Band, color: str, style: str) -> Any:
    if len(curve.steps) > 1:
        ax.fill_between(curve.steps, curve.low, curve.high, color=color, alpha=0.18, lw=0)
    marker = "o" if len(curve.steps) == 1 else None
    (line,) = ax.plot(curve.steps, curve.mean, style, color=color, linewidth=1.5, marker=marker)
    return line
