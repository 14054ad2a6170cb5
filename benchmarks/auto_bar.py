r"""Auto mode against its bar, read from a results store of ``lrkit bench``.

The bar (``docs/benchmarks.md``, section "Auto mode"): on every workload, ``auto()``'s final
metric, mean over the seeds, is

* within 1 point of accuracy (absolute), or 2% (relative) for a loss-like metric, of the best
  grid-tuned ``adamw(schedule='cosine', warmup=0.05)``: the rate of the grid whose mean over the
  same seeds is best, with no seed diverged (:func:`lrkit.bench.sweep.score_points`); for the
  logistic regression the relative goal is judged on the objective :math:`F`, since its metric
  :math:`F - F^\star` is a difference whose relative size says nothing of the loss;
* and at least as good as each learning-rate-free optimizer at its published defaults:
  ``prodigy()``, ``dadapt_adam()``, ``dog()`` (factor 1) and ``schedule_free_adamw()`` at its
  default rate 0.0025.

Nothing is trained here: every number comes from the store, so the table can be checked
against the runs it summarizes::

    lrkit bench --suite full --seeds 0 1 2 --store out/full.sqlite   # (or the subsets it needs)
    python benchmarks/auto_bar.py --store out/full.sqlite            # the table, in Markdown
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

sys.path.insert(0, str(Path(__file__).resolve().parent))

from finder_quality import (
    gap,
    judged_key,
    within_goal,
)
from lrkit.bench.store import Store, StoredRun
from lrkit.bench.workloads import get_workload

AUTO: Final = "auto()"
TUNED: Final = "adamw(schedule='cosine', warmup=0.05)"
DEFAULTS: Final = (
    ("prodigy()", 1.0),
    ("dadapt_adam()", 1.0),
    ("dog()", 1.0),
    ("schedule_free_adamw()", 0.0025),
)
"""The learning-rate-free optimizers at their published defaults: (spec, lr or factor)."""

WORKLOADS: Final = ("mnist1d_cnn", "mnist1d_mlp", "digits_mlp", "logreg", "char_lm")


@dataclasses.dataclass(frozen=True)
class Cell:
    """The mean over the seeds of one (workload, strategy, lr), or why there is none."""

    value: float | None
    judged: float | None
    seeds: int
    diverged: int

    def text(self, metric: str) -> str:
        """The mean as the report writes it, or why there is none."""
        if self.value is None:
            return f"diverged ({self.diverged}/{self.seeds})" if self.diverged else "-"
        return _fmt(self.value, metric)


def _fmt(value: float, metric: str) -> str:
    return f"{100 * value:.2f}%" if metric == "accuracy" else f"{value:.4g}"


def _cell(runs: Sequence[StoredRun], metric: str, seeds: Sequence[int]) -> Cell:
    by_seed = {r.config.seed: r for r in runs if r.config.seed in seeds}
    key = judged_key(metric)
    if len(by_seed) < len(seeds):
        return Cell(None, None, len(by_seed), 0)
    diverged = sum(r.result.status != "ok" for r in by_seed.values())
    if diverged:
        return Cell(None, None, len(seeds), diverged)
    values = [r.result.final[metric] for r in by_seed.values()]
    judged = [r.result.final[key] for r in by_seed.values()]
    return Cell(sum(values) / len(values), sum(judged) / len(judged), len(seeds), 0)


@dataclasses.dataclass(frozen=True)
class Row:
    """One workload: auto, the tuned AdamW at its best rate, the defaults, and the verdicts."""

    workload: str
    metric: str
    higher_is_better: bool
    auto: Cell
    tuned: Cell
    tuned_lr: float | None
    defaults: Mapping[str, Cell]

    @property
    def gap(self) -> float | None:
        """Auto's gap to the tuned AdamW (positive: worse), as :func:`finder_quality.gap`."""
        if self.auto.judged is None or self.tuned.judged is None:
            return None
        return gap(
            self.auto.judged,
            self.tuned.judged,
            higher_is_better=self.higher_is_better,
            metric=self.metric,
        )

    @property
    def near_tuned(self) -> bool:
        """Whether the gap to the tuned AdamW meets the bar."""
        return within_goal(self.gap, self.metric)

    def beats(self, spec: str) -> bool | None:
        """Whether auto is at least as good as ``spec`` (``None``: not measured)."""
        other = self.defaults.get(spec)
        if other is None or self.auto.value is None:
            return None
        if other.value is None:  # the default diverged (or is missing): auto beats a divergence
            return True if other.diverged else None
        if self.higher_is_better:
            return self.auto.value >= other.value
        return self.auto.value <= other.value


def table(store: Store, seeds: Sequence[int], workloads: Sequence[str] = WORKLOADS) -> list[Row]:
    """Every workload's row from the store's runs."""
    runs = list(store.iter_runs())
    rows: list[Row] = []
    for name in workloads:
        workload = get_workload(name)
        metric, hib = workload.metric, workload.higher_is_better
        mine = [r for r in runs if r.config.workload == name and r.config.steps is None]

        def at(spec: str, lr: float, mine: list[StoredRun] = mine, metric: str = metric) -> Cell:
            chosen = [r for r in mine if r.config.strategy == spec and _same(r.config.lr, lr)]
            return _cell(chosen, metric, seeds)

        rates = sorted({r.config.lr for r in mine if r.config.strategy == TUNED and r.config.lr})
        tuned = [(lr, at(TUNED, lr)) for lr in rates]
        scored = [(lr, c) for lr, c in tuned if c.value is not None]
        best_lr: float | None = None
        best = Cell(None, None, len(seeds), 0)
        if scored:
            pick = max if hib else min
            best_lr, best = pick(scored, key=lambda item: item[1].value or 0.0)
        rows.append(
            Row(
                workload=name,
                metric=metric,
                higher_is_better=hib,
                auto=at(AUTO, 1.0),
                tuned=best,
                tuned_lr=best_lr,
                defaults={spec: at(spec, lr) for spec, lr in DEFAULTS},
            )
        )
    return rows


def _same(a: float | None, b: float) -> bool:
    return a is not None and math.isclose(a, b, rel_tol=1e-9)


def markdown(rows: Sequence[Row]) -> str:
    """The bar as a Markdown table, one workload a row."""
    head = ["workload", "metric", "auto()", "tuned AdamW (best lr)", "gap", "within"]
    head += [spec for spec, _ in DEFAULTS] + ["beats all defaults"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        g = row.gap
        gap_text = (
            "-"
            if g is None
            else (f"{100 * g:+.2f} pt" if row.metric == "accuracy" else f"{100 * g:+.2f}%")
        )
        tuned = row.tuned.text(row.metric) + (f" ({row.tuned_lr:.4g})" if row.tuned_lr else "")
        verdicts = [row.beats(spec) for spec, _ in DEFAULTS]
        cells = [
            row.workload,
            row.metric,
            row.auto.text(row.metric),
            tuned,
            gap_text,
            "yes" if row.near_tuned else "no",
            *(row.defaults[spec].text(row.metric) for spec, _ in DEFAULTS),
            "-" if None in verdicts else ("yes" if all(verdicts) else "no"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--store", default="out/full.sqlite", help="results store")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--workload", nargs="+", default=list(WORKLOADS))
    args = parser.parse_args(argv)
    if not Path(args.store).exists():
        parser.error(f"--store: no such file: {args.store}")
    store = Store(args.store)
    try:
        print(markdown(table(store, args.seeds, args.workload)))
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
