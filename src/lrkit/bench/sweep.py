r"""Sweeps: workloads × strategies × learning rates × seeds, with a grid that grows past its edge.

A :class:`Suite` is data: the workloads, the strategy specs, the learning-rate grid, the factor
grid of the learning-rate-free strategies, the seeds and the step budget. :func:`run_sweep` runs
it into a results store; :func:`run_bench` is the whole ``lrkit bench`` job (store, sweep,
report).

Grid. A strategy whose ``lr`` is a true rate runs at every rate of the grid (default
:data:`DEFAULT_LRS`, :math:`10^{-4} \ldots 1` at two points per decade); one whose ``lr`` is a
factor on a step size it finds itself (:attr:`~lrkit.bench.strategies.Strategy.lr_is_factor`:
Prodigy, D-Adaptation, DoG, ...) runs at the factors (default ``(1.0,)``, the published setting).

Scoring a rate. For a (workload, strategy) pair, a rate :math:`\eta` scores the mean of the
workload's metric over the seeds that ended ``ok``; it is *diverged* when any seed diverged (a rate
that sometimes blows up is not a candidate), and unknown when every seed failed. The best rate has
the best score (the larger for ``higher_is_better`` metrics, else the smaller; a tie goes to the
smaller rate).

Growing the grid. The best rate must not sit at an edge of the rates tried, or the grid has not
bracketed it. After each stage, for every pair whose best rate is strictly better than every other
rate tried and is the largest (smallest) of the rates with a known outcome, the next rate past that
edge is added, with the grid's own spacing at that edge: with edge points :math:`g_{n-2} < g_{n-1}`
of the base grid and :math:`k` rates already added above it,

.. math:: \eta_{\mathrm{new}} = g_{n-1}\, (g_{n-1} / g_{n-2})^{k+1}

(mirrored below :math:`g_0`), rounded to 4 significant digits. A rate past the edge that diverged
stops the growth on that side by itself: the best rate is then no longer the outermost known one.
At most ``max_extend`` rates are added on each side. The added rates are a pure function of the
stored results, so a sweep that is stopped and restarted adds the same rates.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Literal

from lrkit._validate import check_bool, check_float, check_int
from lrkit.bench.config import RunConfig
from lrkit.bench.runner import Executor, Pool, RunEvent, RunSummary, open_pool, run_configs
from lrkit.bench.store import Store, StoredRun

if TYPE_CHECKING:
    from lrkit.bench.strategies import Strategy

__all__ = [
    "DEFAULT_LRS",
    "DEFAULT_OUT",
    "DEFAULT_STORE",
    "SUITES",
    "BenchResult",
    "Group",
    "GroupResult",
    "Point",
    "Suite",
    "SweepResult",
    "log_grid",
    "next_rate",
    "plan",
    "run_bench",
    "run_sweep",
    "score_points",
]


def log_grid(lo: float, hi: float, per_decade: int) -> tuple[float, ...]:
    r"""Log-spaced rates from ``lo`` to ``hi``: :math:`\mathrm{lo} \cdot 10^{i/p}`, 4 digits.

    Args:
        lo: The smallest rate (> 0).
        hi: The largest rate (>= ``lo``); included when it lies on the grid.
        per_decade: Points per factor of 10, :math:`p` (>= 1).

    Example:
        >>> log_grid(1e-3, 1.0, 2)
        (0.001, 0.003162, 0.01, 0.03162, 0.1, 0.3162, 1.0)
    """
    lo = check_float("lo", lo, min=0.0, min_open=True)
    hi = check_float("hi", hi, min=lo)
    per_decade = check_int("per_decade", per_decade, min=1)
    count = math.floor(per_decade * math.log10(hi / lo) + 1e-9) + 1
    return tuple(_round(lo * 10 ** (i / per_decade)) for i in range(count))


def _round(x: float) -> float:
    return float(f"{x:.4g}")


DEFAULT_LRS: Final = log_grid(1e-4, 1.0, 2)
"""The default rate grid, ``1e-4 ... 1`` at two points per decade (9 rates)."""


def _tuple(name: str, values: object, check: Callable[[str, Any], Any]) -> tuple[Any, ...]:
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise TypeError(f"{name} must be a sequence, got {type(values).__name__}")
    if not values:
        raise ValueError(f"{name} must not be empty")
    out = tuple(check(f"{name}[{i}]", v) for i, v in enumerate(values))
    if len(set(out)) != len(out):
        raise ValueError(f"{name} must not repeat a value, got {list(out)}")
    return out


def _name(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise TypeError(f"{name} must be a non-empty str, got {value!r}")
    return value.strip()


def _rate(name: str, value: Any) -> float:
    return check_float(name, value, min=0.0, min_open=True)


def _seed(name: str, value: Any) -> int:
    return check_int(name, value, min=0)


@dataclasses.dataclass(frozen=True)
class Suite:
    """What a sweep runs.

    Args:
        name: For messages and reports.
        workloads: Built-in workload names or ``"module:function"``.
        strategies: Strategy specs (see :mod:`lrkit.bench.strategies`).
        lrs: The rate grid of strategies whose ``lr`` is a true rate (sorted here).
        factors: The factor grid of learning-rate-free strategies (1.0: the published default).
        seeds: The seeds of every (workload, strategy, rate).
        steps: The budget of every run: ``None`` each workload's full budget, ``"quick"`` each
            workload's quick budget, an int the same number of updates for all.
        max_extend: Rates added at most past each edge of ``lrs`` (0: never grow the grid).

    Raises:
        TypeError: A field has the wrong type.
        ValueError: An empty or repeating list, a rate or factor that is not positive and finite,
            a negative seed, ``steps < 1`` or ``max_extend < 0``.
    """

    name: str
    workloads: tuple[str, ...]
    strategies: tuple[str, ...]
    lrs: tuple[float, ...] = DEFAULT_LRS
    factors: tuple[float, ...] = (1.0,)
    seeds: tuple[int, ...] = (0,)
    steps: int | Literal["quick"] | None = None
    max_extend: int = 4

    def __post_init__(self) -> None:
        _name("name", self.name)
        fix = object.__setattr__
        fix(self, "workloads", _tuple("workloads", self.workloads, _name))
        fix(self, "strategies", _tuple("strategies", self.strategies, _name))
        fix(self, "lrs", tuple(sorted(_tuple("lrs", self.lrs, _rate))))
        fix(self, "factors", tuple(sorted(_tuple("factors", self.factors, _rate))))
        fix(self, "seeds", _tuple("seeds", self.seeds, _seed))
        if self.steps is not None and self.steps != "quick":
            check_int("steps", self.steps, min=1)
        check_int("max_extend", self.max_extend, min=0)

    def replace(self, **changes: Any) -> Suite:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


_BUILTIN_WORKLOADS: Final = ("mnist1d_cnn", "mnist1d_mlp", "digits_mlp", "logreg", "char_lm")

_QUICK_STRATEGIES: Final = (
    "adamw(schedule='cosine', warmup=0.05)",
    "sgd(momentum=0.9, nesterov=True, schedule='cosine', warmup=0.05)",
    "schedule_free_adamw(warmup=0.05)",
    "prodigy()",
    "dog()",
    "auto()",
)

SUITES: Final[dict[str, Suite]] = {
    "quick": Suite(
        name="quick",
        workloads=_BUILTIN_WORKLOADS,
        strategies=_QUICK_STRATEGIES,
        lrs=log_grid(1e-4, 1.0, 1),
        seeds=(0,),
        steps="quick",
        max_extend=2,
    ),
    "full": Suite(
        name="full",
        workloads=_BUILTIN_WORKLOADS,
        strategies=(*_QUICK_STRATEGIES, "dadapt_adam()"),
        lrs=DEFAULT_LRS,
        factors=(1.0,),
        seeds=(0, 1, 2),
        steps=None,
        max_extend=4,
    ),
    "all": Suite(
        name="all",
        workloads=_BUILTIN_WORKLOADS,
        strategies=(
            *_QUICK_STRATEGIES,
            "dadapt_adam()",
            "adamw()",
            "adamw(schedule='step')",
            "adamw(schedule='onecycle')",
            "sgd(momentum=0.9, nesterov=True, schedule='step')",
            "sgd(momentum=0.9, nesterov=True, schedule='onecycle')",
            "adagrad()",
            "rmsprop()",
            "adadelta()",
            "schedule_free_sgd(warmup=0.05)",
            "dadapt_sgd()",
            "ldog()",
            "polyak()",
            "armijo()",
        ),
        lrs=DEFAULT_LRS,
        factors=(0.3, 1.0, 3.0),
        seeds=(0, 1, 2),
        steps=None,
        max_extend=4,
    ),
}
"""The built-in suites, each a superset of the one before.

``quick``: every built-in workload at its quick budget, the headline strategies, one seed and
one point per decade (minutes on 2 cores). ``full``: the same strategies and D-Adapt Adam at
the full budgets, three seeds, two points per decade (about 2 CPU-hours; the published
comparison). ``all``: every registered kind of strategy (constant, step and one-cycle
schedules, Adagrad, RMSprop, Adadelta, Schedule-Free SGD, D-Adapt SGD, L-DoG, Polyak, Armijo)
and the learning-rate-free ones at factors 0.3, 1 and 3 (tens of CPU-hours: for a cluster,
``--backend ray``)."""


# -- planning -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Group:
    """One (workload, strategy) pair of a sweep: the rates or factors it runs at and how to rank.

    Attributes:
        workload: The workload name, as given.
        strategy: The canonical strategy spec (what the store keys on).
        lr_is_factor: Whether ``base`` are factors (a learning-rate-free strategy); the grid of
            such a group never grows.
        base: The suite's rates (or factors) for this group, ascending.
        metric: The workload's metric.
        higher_is_better: Its direction.
        steps: ``RunConfig.steps`` of the group's runs (``None``: the workload's full budget).
    """

    workload: str
    strategy: str
    lr_is_factor: bool
    base: tuple[float, ...]
    metric: str
    higher_is_better: bool
    steps: int | None

    def configs(self, lrs: Sequence[float], seeds: Sequence[int]) -> list[RunConfig]:
        """The runs of ``lrs`` × ``seeds``, rate-major."""
        return [
            RunConfig(self.workload, self.strategy, lr, seed=seed, steps=self.steps)
            for lr in lrs
            for seed in seeds
        ]


def plan(suite: Suite) -> list[Group]:
    """Resolve every workload and strategy of ``suite`` before anything runs.

    Each workload is loaded (a user's ``module:function`` is imported and called once) and each
    strategy spec parsed; each strategy's schedule is laid out on each workload's budget, so a
    combination that cannot run is refused here rather than failing in every run.

    Returns:
        The groups, workload-major, in the suite's order; strategies that are equal once
        canonical appear once.

    Raises:
        TypeError, ValueError: A workload that is unknown, cannot be imported, raises or returns
            something other than a ``Workload``; a schedule that cannot be laid out on a budget.
        SpecError: A strategy spec that is not valid.
    """
    if not isinstance(suite, Suite):
        raise TypeError(f"suite must be a Suite, got {type(suite).__name__}")
    from lrkit.bench.strategies import parse_strategy
    from lrkit.bench.workloads import get_workload

    strategies: dict[str, Strategy] = {}
    for spec in suite.strategies:
        strategy = parse_strategy(spec)
        strategies.setdefault(repr(strategy), strategy)
    groups = []
    for name in dict.fromkeys(suite.workloads):
        workload = get_workload(name)
        if suite.steps == "quick":
            steps: int | None = workload.quick_steps
        else:
            steps = suite.steps
        budget = workload.budget(steps)
        for canonical, strategy in strategies.items():
            try:
                strategy.schedule(budget)
            except ValueError as exc:
                raise ValueError(
                    f"strategy {canonical} cannot run {budget} steps of workload {name!r}: {exc}"
                ) from None
            factor = strategy.lr_is_factor
            groups.append(
                Group(
                    workload=name,
                    strategy=canonical,
                    lr_is_factor=factor,
                    base=suite.factors if factor else suite.lrs,
                    metric=workload.metric,
                    higher_is_better=workload.higher_is_better,
                    steps=steps,
                )
            )
    return groups


# -- scoring and growing the grid ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Point:
    """The outcome of one rate (or factor) of a group, over its seeds.

    Attributes:
        lr: The rate.
        score: The mean metric over the ``ok`` seeds, or ``None`` when there is none.
        ok: Seeds that ended ``ok`` with a finite metric.
        diverged: Seeds that diverged (or reported a non-finite metric).
        failed: Seeds that failed.
        missing: Seeds not in the store (not run yet, or the sweep was stopped).
    """

    lr: float
    score: float | None
    ok: int
    diverged: int
    failed: int
    missing: int

    @property
    def known(self) -> bool:
        """Whether a seed ended ``ok`` or diverged (what places the point on the curve)."""
        return self.ok > 0 or self.diverged > 0

    @property
    def candidate(self) -> bool:
        """Whether the rate may be the best: some seed ``ok`` and none diverged."""
        return self.ok > 0 and self.diverged == 0


def score_points(
    runs: Store | Mapping[str, StoredRun],
    group: Group,
    lrs: Sequence[float],
    seeds: Sequence[int],
) -> list[Point]:
    """Score each rate of ``lrs`` (ascending) from the stored runs.

    Args:
        runs: A store, or stored runs by key.
        group: The (workload, strategy) pair.
        lrs: The rates to score.
        seeds: The seeds each rate ran with.
    """
    points = []
    for lr in sorted(lrs):
        values: list[float] = []
        diverged = failed = missing = 0
        for config in group.configs([lr], seeds):
            run = runs.get(config.key())
            if run is None:
                missing += 1
            elif run.result.status == "diverged":
                diverged += 1
            elif run.result.status == "failed":
                failed += 1
            else:
                value = run.result.final.get(group.metric)
                if isinstance(value, int | float) and math.isfinite(value):
                    values.append(float(value))
                elif value is None:
                    failed += 1
                else:
                    diverged += 1
        score = math.fsum(values) / len(values) if values else None
        points.append(Point(lr, score, len(values), diverged, failed, missing))
    return points


def best_point(points: Sequence[Point], *, higher_is_better: bool) -> Point | None:
    """The candidate with the best score (a tie goes to the smaller rate), or ``None``."""
    best: Point | None = None
    for point in points:
        if not point.candidate or point.score is None:
            continue
        if (
            best is None
            or best.score is None
            or (point.score > best.score if higher_is_better else point.score < best.score)
        ):
            best = point
    return best


def next_rate(
    points: Sequence[Point],
    base: Sequence[float],
    *,
    higher_is_better: bool,
    max_extend: int,
) -> float | None:
    """The rate to add past an edge of the grid, or ``None`` (see the module docstring).

    Args:
        points: The scored rates tried so far (base and added ones), any order.
        base: The base grid, ascending, at least 2 rates (else nothing is ever added).
        higher_is_better: The metric's direction.
        max_extend: Rates that may be added past each edge of ``base``.

    Example:
        >>> u = [Point(lr, (lr - 0.5) ** 2, 1, 0, 0, 0) for lr in (0.01, 0.1, 1.0)]
        >>> next_rate(u, (0.01, 0.1, 1.0), higher_is_better=False, max_extend=3)
        10.0
    """
    base = sorted(base)
    if len(base) < 2:
        return None
    known = sorted((p for p in points if p.known), key=lambda p: p.lr)
    best = best_point(known, higher_is_better=higher_is_better)
    if best is None or len(known) < 2:
        return None
    others = [p.score for p in known if p is not best and p.candidate and p.score is not None]
    if best.score is None or best.score in others:
        return None  # a tie is a plateau, not an edge
    if best is known[-1]:
        added = sum(p.lr > base[-1] for p in points)
        ratio = base[-1] / base[-2]
        edge = base[-1]
    elif best is known[0]:
        added = sum(p.lr < base[0] for p in points)
        ratio = base[0] / base[1]
        edge = base[0]
    else:
        return None
    if added >= max_extend:
        return None
    return _round(edge * ratio ** (added + 1))


# -- running --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GroupResult:
    """A group after the sweep.

    Attributes:
        group: The pair and its grid.
        points: Every rate tried, ascending, scored.
        best: The best rate, or ``None`` when no rate has an ``ok`` seed.
        added: The rates added past the base grid's edges.
        at_edge: Whether the best true rate is still the outermost known one (the growth limit
            was reached, or fewer than two rates are known): the optimum may lie further out.
            Always ``False`` for factor groups.
    """

    group: Group
    points: tuple[Point, ...]
    best: Point | None
    added: tuple[float, ...]
    at_edge: bool


@dataclasses.dataclass(frozen=True)
class SweepResult:
    """What :func:`run_sweep` did.

    Attributes:
        suite: The suite that ran.
        groups: One result per (workload, strategy).
        stages: One runner summary per stage (the base grid, then each round of added rates).
    """

    suite: Suite
    groups: tuple[GroupResult, ...]
    stages: tuple[RunSummary, ...]


def run_sweep(
    suite: Suite,
    store: Store,
    *,
    executor: Executor | None = None,
    backend: str = "local",
    workers: int | None = None,
    ray_address: str | None = None,
    retry_failed: bool = False,
    on_result: Callable[[RunEvent], None] | None = None,
    on_stage: Callable[[int, int], None] | None = None,
) -> SweepResult:
    """Run ``suite`` into ``store``: the base grid, then rates past the edges while needed.

    Runs already in the store are not run again, so calling this again (after an interruption,
    or with a larger suite) only runs what is missing.

    Args:
        suite: What to run.
        store: Where results go (open for writing).
        executor: ``(RunConfig) -> RunResult``; default :func:`lrkit.bench.train.train`.
        backend: ``"local"``, ``"ray"`` or ``"inline"`` (see :mod:`lrkit.bench.runner`).
        workers: Runs at once (default: the cores, or the Ray cluster's CPUs).
        ray_address: The Ray cluster to use with ``backend="ray"``.
        retry_failed: Run again the runs stored as ``"failed"``.
        on_result: Called after each run is stored.
        on_stage: Called before each stage with its number (0 for the base grid) and the number
            of configs it holds (some may already be stored).

    Returns:
        The scored groups and the per-stage summaries.

    Raises:
        TypeError, ValueError, SpecError: From :func:`plan`, before anything runs.
    """
    groups = plan(suite)
    with open_pool(
        executor=executor, backend=backend, workers=workers, ray_address=ray_address
    ) as pool:
        return _sweep(suite, groups, store, pool, retry_failed, on_result, on_stage)


def _sweep(
    suite: Suite,
    groups: list[Group],
    store: Store,
    pool: Pool,
    retry_failed: bool,
    on_result: Callable[[RunEvent], None] | None,
    on_stage: Callable[[int, int], None] | None,
) -> SweepResult:
    seeds = suite.seeds
    lrs: list[list[float]] = [list(g.base) for g in groups]
    stages: list[RunSummary] = []
    configs = [c for g, rates in zip(groups, lrs, strict=True) for c in g.configs(rates, seeds)]
    while configs:
        if on_stage is not None:
            on_stage(len(stages), len(configs))
        stages.append(
            run_configs(configs, store, pool=pool, retry_failed=retry_failed, on_result=on_result)
        )
        configs = []
        for group, rates in zip(groups, lrs, strict=True):
            if group.lr_is_factor:
                continue
            points = score_points(store, group, rates, seeds)
            new = next_rate(
                points,
                group.base,
                higher_is_better=group.higher_is_better,
                max_extend=suite.max_extend,
            )
            if new is not None and new not in rates:
                rates.append(new)
                configs.extend(group.configs([new], seeds))
    results = []
    for group, rates in zip(groups, lrs, strict=True):
        points = score_points(store, group, rates, seeds)
        best = best_point(points, higher_is_better=group.higher_is_better)
        known = [p for p in points if p.known]
        at_edge = (
            best is not None
            and not group.lr_is_factor
            and (len(known) < 2 or best is known[0] or best is known[-1])
        )
        added = tuple(sorted(r for r in rates if r not in group.base))
        results.append(GroupResult(group, tuple(points), best, added, at_edge))
    return SweepResult(suite, tuple(results), tuple(stages))


DEFAULT_STORE: Final = os.path.join("out", "bench.sqlite")
"""Where ``lrkit bench`` keeps its results unless told otherwise."""

DEFAULT_OUT: Final = os.path.join("out", "bench")
"""Where ``lrkit bench`` writes its report unless told otherwise."""

# -- the whole job --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BenchResult:
    """What :func:`run_bench` did.

    Attributes:
        sweep: The sweep's result.
        store: The store's path.
        out: The report folder, or ``None`` when no report was asked for.
        report: What the report writer returned (its main file), or ``None``.
        note: Why no report was written, or ``None``.
    """

    sweep: SweepResult
    store: str
    out: str | None
    report: str | None
    note: str | None


def run_bench(
    suite: Suite,
    *,
    store: str | os.PathLike[str] = DEFAULT_STORE,
    out: str | os.PathLike[str] | None = DEFAULT_OUT,
    executor: Executor | None = None,
    backend: str = "local",
    workers: int | None = None,
    ray_address: str | None = None,
    retry_failed: bool = False,
    on_result: Callable[[RunEvent], None] | None = None,
    on_stage: Callable[[int, int], None] | None = None,
) -> BenchResult:
    """The ``lrkit bench`` job: check everything, sweep into the store, write the report.

    Every input is checked before the first run: the suite is planned (:func:`plan`), the
    report folder is created and probed for writing, the store is opened (created with its
    folder when missing; a foreign or other-version store is refused untouched). The report is
    written by ``lrkit.bench.report.write_report(store, out)`` when that module is installed;
    otherwise :attr:`BenchResult.note` says it was skipped.

    Args:
        suite: What to run.
        store: The results store (SQLite file).
        out: The report folder; ``None`` writes no report.
        executor: ``(RunConfig) -> RunResult``; default :func:`lrkit.bench.train.train`.
        backend: ``"local"``, ``"ray"`` or ``"inline"`` (see :mod:`lrkit.bench.runner`).
        workers: Runs at once (default: the cores, or the Ray cluster's CPUs).
        ray_address: The Ray cluster to use with ``backend="ray"``.
        retry_failed: Run again the runs stored as ``"failed"``.
        on_result: Called after each run is stored.
        on_stage: Called before each stage (see :func:`run_sweep`).

    Raises:
        TypeError, ValueError, SpecError: A bad suite or argument.
        OSError: The report or store folder cannot be created or written.
        StateError: The store is not an lrkit store or has another format version.
        ImportError: ``backend="ray"`` without Ray.
    """
    check_bool("retry_failed", retry_failed)
    for name, value in (("store", store), ("out", out)):
        if value is not None and not isinstance(value, str | os.PathLike):
            raise TypeError(f"{name} must be a str or path-like, got {type(value).__name__}")
    store_path = os.fspath(store)
    out_path = None if out is None else os.fspath(out)
    groups = plan(suite)
    with open_pool(  # checks its arguments now, starts workers on the first run
        executor=executor, backend=backend, workers=workers, ray_address=ray_address
    ) as pool:
        if out_path is not None:
            _writable_folder("report folder", out_path)
        _writable_folder("store folder", os.path.dirname(os.path.abspath(store_path)))
        with Store(store_path) as db:
            result = _sweep(suite, groups, db, pool, retry_failed, on_result, on_stage)
    report: str | None = None
    note: str | None = None
    if out_path is not None:
        try:
            module = importlib.import_module("lrkit.bench.report")
        except ModuleNotFoundError as exc:
            if exc.name not in ("lrkit.bench.report", "lrkit.bench"):
                raise
            note = "report skipped: lrkit.bench.report is not available in this lrkit"
        else:
            written = module.write_report(store_path, out_path)
            report = None if written is None else os.fspath(written)
    return BenchResult(result, store_path, out_path, report, note)


def _writable_folder(what: str, path: str) -> None:
    """Create ``path`` if needed and prove a file can be written in it."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise OSError(f"{what} {path!r} is not writable: {reason}") from None
