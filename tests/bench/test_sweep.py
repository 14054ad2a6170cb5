import dataclasses
import math
import os
import sqlite3
import stat
import subprocess
import sys
import types

import pytest
import torch
from torch import nn

from lrkit import SpecError, StateError
from lrkit.bench.config import RunConfig, RunResult
from lrkit.bench.store import Store
from lrkit.bench.strategies import canonical_spec
from lrkit.bench.sweep import (
    DEFAULT_LRS,
    SUITES,
    Point,
    Suite,
    log_grid,
    next_rate,
    plan,
    run_bench,
    run_sweep,
)
from lrkit.bench.workloads import Workload, get_workload

ADAMW = "adamw(schedule='cosine', warmup=0.05)"


# -- a fake workload and executor with a known U-curve -----------------------------------------


def _workload(name: str) -> Workload:
    def batches(seed, batch_size):
        while True:
            yield torch.zeros(batch_size, 1)

    return Workload(
        name=name,
        model=lambda seed: nn.Linear(1, 1),
        batches=batches,
        loss=lambda model, batch: model(batch).pow(2).mean(),
        evaluate=lambda model: {"loss": 0.0},
        metric="loss",
        higher_is_better=False,
        steps=100,
        batch_size=4,
        quick_steps=10,
    )


def u_high():
    """Best rate 2.0 (above a 1e-3..1e-1 grid), diverges above 5."""
    return _workload("u_high")


def u_low():
    """Best rate 1e-6, far below the grid."""
    return _workload("u_low")


def acc_mid():
    """Accuracy, best at 1e-2; used with higher_is_better."""
    return dataclasses.replace(_workload("acc_mid"), metric="accuracy", higher_is_better=True)


def not_a_workload():
    return {"model": None}


def raising_workload():
    raise RuntimeError("no data here")


_CURVES = {
    "test_sweep:u_high": (2.0, 5.0),
    "test_sweep:u_low": (1e-6, math.inf),
    "test_sweep:acc_mid": (1e-2, math.inf),
}


def u_loss(workload: str, lr: float, seed: int) -> float:
    best, _ = _CURVES[workload]
    return (math.log10(lr) - math.log10(best)) ** 2 + 0.125 * seed


def fake_train(config: RunConfig) -> RunResult:
    _, blowup = _CURVES[config.workload]
    if config.lr > blowup:
        return RunResult("diverged", {}, [], 0.0, 3, error="loss exploded")
    value = u_loss(config.workload, config.lr, config.seed)
    if config.workload.endswith("acc_mid"):
        return RunResult("ok", {"accuracy": 1.0 - value / 100}, [], 0.0, 10)
    return RunResult("ok", {"loss": value}, [], 0.0, 10)


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "bench.sqlite") as s:
        yield s


# -- the grid -------------------------------------------------------------------------------------


def test_log_grid_has_four_digit_log_spaced_rates():
    assert log_grid(1e-3, 1.0, 2) == (0.001, 0.003162, 0.01, 0.03162, 0.1, 0.3162, 1.0)
    assert log_grid(1e-4, 1.0, 1) == (1e-4, 1e-3, 1e-2, 0.1, 1.0)
    assert log_grid(0.5, 0.5, 3) == (0.5,)
    assert log_grid(1e-3, 5e-2, 1) == (1e-3, 1e-2)
    assert log_grid(1e-4, 1.0, 2) == DEFAULT_LRS
    assert len(DEFAULT_LRS) == 9
    with pytest.raises(ValueError, match=r"hi must be >= 0\.01, got 0\.001"):
        log_grid(1e-2, 1e-3, 2)
    with pytest.raises(ValueError, match="per_decade must be an int >= 1, got 0"):
        log_grid(1e-3, 1.0, 0)


def _points(pairs, diverged=()):
    out = [Point(lr, score, 1, 0, 0, 0) for lr, score in pairs]
    out += [Point(lr, None, 0, 1, 0, 0) for lr in diverged]
    return out


BASE = (1e-3, 1e-2, 1e-1)


def test_next_rate_grows_past_the_upper_edge_with_the_grid_spacing():
    pts = _points([(1e-3, 3.0), (1e-2, 2.0), (1e-1, 1.0)])
    assert next_rate(pts, BASE, higher_is_better=False, max_extend=3) == 1.0
    pts += _points([(1.0, 0.5)])
    assert next_rate(pts, BASE, higher_is_better=False, max_extend=3) == 10.0
    pts += _points([(10.0, 0.25)])
    assert next_rate(pts, BASE, higher_is_better=False, max_extend=3) == 100.0
    pts += _points([(100.0, 0.125)])
    assert next_rate(pts, BASE, higher_is_better=False, max_extend=3) is None


def test_next_rate_grows_below_the_lower_edge_and_follows_the_metric_direction():
    acc = _points([(1e-3, 0.9), (1e-2, 0.8), (1e-1, 0.1)])
    assert next_rate(acc, BASE, higher_is_better=True, max_extend=2) == 1e-4
    assert next_rate(acc, BASE, higher_is_better=False, max_extend=2) == 1.0
    acc += _points([(1e-4, 0.95)])
    assert next_rate(acc, BASE, higher_is_better=True, max_extend=2) == 1e-5
    acc += _points([(1e-5, 0.97)])
    assert next_rate(acc, BASE, higher_is_better=True, max_extend=2) is None


def test_next_rate_uses_the_spacing_at_that_edge_rounded_to_four_digits():
    base = (1e-3, 0.003162, 0.01)
    pts = _points([(1e-3, 3.0), (0.003162, 2.0), (0.01, 1.0)])
    assert next_rate(pts, base, higher_is_better=False, max_extend=2) == 0.03163
    pts += _points([(0.03163, 0.5)])
    assert next_rate(pts, base, higher_is_better=False, max_extend=2) == 0.1
    low = _points([(1e-3, 1.0), (0.003162, 2.0), (0.01, 3.0)])
    assert next_rate(low, base, higher_is_better=False, max_extend=2) == 0.0003163


def test_an_interior_best_a_diverged_neighbour_a_tie_or_one_rate_adds_nothing():
    interior = _points([(1e-3, 3.0), (1e-2, 1.0), (1e-1, 2.0)])
    assert next_rate(interior, BASE, higher_is_better=False, max_extend=3) is None
    stable_edge = _points([(1e-3, 3.0), (1e-2, 2.0), (1e-1, 1.0)], diverged=[1.0])
    assert next_rate(stable_edge, BASE, higher_is_better=False, max_extend=3) is None
    plateau = _points([(1e-3, 3.0), (1e-2, 1.0), (1e-1, 1.0)])
    assert next_rate(plateau, BASE, higher_is_better=False, max_extend=3) is None
    assert next_rate(_points([(0.1, 1.0)]), (0.1,), higher_is_better=False, max_extend=3) is None
    never = _points([(1e-3, 3.0), (1e-2, 2.0), (1e-1, 1.0)])
    assert next_rate(never, BASE, higher_is_better=False, max_extend=0) is None


def test_a_rate_with_a_diverged_seed_is_not_a_candidate():
    pts = [
        Point(1e-3, 3.0, 2, 0, 0, 0),
        Point(1e-2, 2.0, 2, 0, 0, 0),
        Point(1e-1, 0.1, 1, 1, 0, 0),  # the best mean, but one seed blew up
    ]
    assert next_rate(pts, BASE, higher_is_better=False, max_extend=3) is None


# -- suites and planning ------------------------------------------------------------------------


def test_suite_validates_and_normalizes_its_fields():
    suite = Suite("s", ["w"], ["sgd()"], lrs=[0.1, 0.01], seeds=[1, 0], steps="quick")
    assert suite.lrs == (0.01, 0.1)
    assert suite.seeds == (1, 0)
    assert suite.workloads == ("w",)
    with pytest.raises(ValueError, match="lrs must not be empty"):
        Suite("s", ("w",), ("sgd()",), lrs=())
    with pytest.raises(ValueError, match=r"lrs\[1\] must be > 0, got -0.1"):
        Suite("s", ("w",), ("sgd()",), lrs=(0.1, -0.1))
    with pytest.raises(ValueError, match=r"seeds must not repeat a value, got \[0, 0\]"):
        Suite("s", ("w",), ("sgd()",), seeds=(0, 0))
    with pytest.raises(ValueError, match="steps must be an int >= 1, got 0"):
        Suite("s", ("w",), ("sgd()",), steps=0)
    with pytest.raises(TypeError, match="steps must be an int, got 'fast'"):
        Suite("s", ("w",), ("sgd()",), steps="fast")
    with pytest.raises(TypeError, match="workloads must be a sequence, got str"):
        Suite("s", "w", ("sgd()",))
    with pytest.raises(TypeError, match=r"strategies\[0\] must be a non-empty str, got ''"):
        Suite("s", ("w",), ("",))
    with pytest.raises(ValueError, match="max_extend must be an int >= 0, got -1"):
        Suite("s", ("w",), ("sgd()",), max_extend=-1)
    assert suite.replace(seeds=(3,)).seeds == (3,)


def test_builtin_suites_plan_on_the_builtin_workloads_and_strategies():
    for name, suite in SUITES.items():
        groups = plan(suite)
        assert suite.name == name
        assert len(groups) == len(suite.workloads) * len(suite.strategies)
        for group in groups:
            assert group.strategy == canonical_spec(group.strategy)
            workload = get_workload(group.workload)
            assert group.metric == workload.metric
            expected = workload.quick_steps if suite.steps == "quick" else suite.steps
            assert group.steps == expected
    assert SUITES["full"].seeds == (0, 1, 2)
    assert set(SUITES["quick"].workloads) <= set(SUITES["full"].workloads)
    assert set(SUITES["quick"].strategies) <= set(SUITES["full"].strategies)
    assert set(SUITES["full"].strategies) <= set(SUITES["all"].strategies)
    assert SUITES["all"].seeds == SUITES["full"].seeds
    assert SUITES["all"].lrs == SUITES["full"].lrs
    # the full suite runs the learning-rate-free optimizers at their published setting only
    assert SUITES["full"].factors == (1.0,)
    assert 1.0 in SUITES["all"].factors


def test_plan_canonicalizes_and_dedupes_strategies_and_splits_rates_from_factors():
    suite = Suite(
        "s",
        ("test_sweep:u_high",),
        ("adamw(schedule='warmup_cosine')", ADAMW, "prodigy()"),
        lrs=BASE,
        factors=(0.5, 1.0),
        steps="quick",
    )
    groups = plan(suite)
    assert [(g.strategy, g.lr_is_factor, g.base) for g in groups] == [
        (ADAMW, False, BASE),
        ("prodigy()", True, (0.5, 1.0)),
    ]
    assert {(g.metric, g.higher_is_better, g.steps) for g in groups} == {("loss", False, 10)}


@pytest.mark.parametrize(
    ("workload", "error", "message"),
    [
        ("mnist1d_cnx", ValueError, "unknown workload 'mnist1d_cnx'; did you mean 'mnist1d_cnn'"),
        ("test_sweep:nope", ValueError, "has no function 'nope'"),
        ("no_such_module_x:f", ValueError, "workload module 'no_such_module_x' not found"),
        ("test_sweep:raising_workload", ValueError, "raised RuntimeError: no data here"),
        ("test_sweep:not_a_workload", TypeError, "must return an lrkit.bench.workloads.Workload"),
    ],
)
def test_plan_refuses_bad_workloads_by_name(workload, error, message):
    with pytest.raises(error, match=message):
        plan(Suite("s", (workload,), (ADAMW,)))


def test_plan_refuses_bad_strategies_and_budgets_it_cannot_lay_out():
    with pytest.raises(SpecError, match="unknown strategy 'adamx'; did you mean 'adam'"):
        plan(Suite("s", ("test_sweep:u_high",), ("adamx()",)))
    with pytest.raises(ValueError, match=r"strategy sgd\(schedule='onecycle'\) cannot run 1 steps"):
        plan(Suite("s", ("test_sweep:u_high",), ("sgd(schedule='onecycle')",), steps=1))


# -- sweeping -------------------------------------------------------------------------------------


def test_the_grid_grows_until_the_best_rate_is_bracketed_by_a_diverged_rate(store):
    suite = Suite("s", ("test_sweep:u_high",), (ADAMW,), lrs=BASE, steps=10, max_extend=4)
    stages = []
    result = run_sweep(
        suite,
        store,
        executor=fake_train,
        backend="inline",
        on_stage=lambda i, n: stages.append((i, n)),
    )
    assert stages == [(0, 3), (1, 1), (2, 1)]
    (group,) = result.groups
    assert group.added == (1.0, 10.0)
    assert [(p.lr, p.ok, p.diverged) for p in group.points] == [
        (1e-3, 1, 0),
        (1e-2, 1, 0),
        (1e-1, 1, 0),
        (1.0, 1, 0),
        (10.0, 0, 1),
    ]
    assert group.best.lr == 1.0
    assert group.best.score == u_loss("test_sweep:u_high", 1.0, 0)
    assert group.at_edge is False
    assert [s.executed for s in result.stages] == [3, 1, 1]
    assert {r.config.steps for r in store.runs()} == {10}


def test_the_grid_growth_stops_at_max_extend_and_reports_the_edge(store):
    suite = Suite("s", ("test_sweep:u_low",), (ADAMW,), lrs=BASE, max_extend=2)
    result = run_sweep(suite, store, executor=fake_train, backend="inline")
    (group,) = result.groups
    assert group.added == (1e-5, 1e-4)
    assert group.best.lr == 1e-5
    assert group.at_edge is True
    assert len(store) == 5


def test_a_higher_is_better_metric_in_the_interior_needs_no_growth(store):
    suite = Suite("s", ("test_sweep:acc_mid",), (ADAMW,), lrs=(1e-4, 1e-3, 1e-2, 0.1))
    result = run_sweep(suite, store, executor=fake_train, backend="inline")
    (group,) = result.groups
    assert group.added == ()
    assert group.best.lr == 1e-2
    assert group.best.score == 1.0
    assert len(result.stages) == 1


def test_scores_are_means_over_seeds_and_lr_free_strategies_run_only_their_factors(store):
    suite = Suite(
        "s",
        ("test_sweep:u_high",),
        ("prodigy()", ADAMW),
        lrs=(0.1, 1.0, 3.0),
        factors=(1.0,),
        seeds=(0, 1),
        max_extend=3,
    )
    result = run_sweep(suite, store, executor=fake_train, backend="inline")
    prodigy, adamw = result.groups
    assert [p.lr for p in prodigy.points] == [1.0]
    assert prodigy.added == ()
    assert prodigy.at_edge is False
    seeds = [u_loss("test_sweep:u_high", 1.0, seed) for seed in (0, 1)]
    assert prodigy.best.score == (seeds[0] + seeds[1]) / 2
    assert adamw.best.lr == 3.0
    assert adamw.added == (9.0,)  # diverged: 3.0 is bracketed
    assert adamw.points[-1].diverged == 2
    assert len(store.runs(strategy="prodigy()")) == 2
    assert {r.config.lr for r in store.runs(strategy="prodigy()")} == {1.0}


def test_a_second_sweep_runs_nothing_and_finds_the_same_result(store):
    suite = Suite("s", ("test_sweep:u_high",), (ADAMW,), lrs=BASE, max_extend=4)
    first = run_sweep(suite, store, executor=fake_train, backend="inline")
    second = run_sweep(suite, store, executor=fake_train, backend="inline")
    assert second.groups == first.groups
    assert [s.executed for s in second.stages] == [0, 0, 0]
    assert [s.skipped for s in second.stages] == [3, 1, 1]


def test_a_sweep_in_worker_processes_matches_the_inline_one(tmp_path):
    suite = Suite("s", ("test_sweep:u_high",), (ADAMW,), lrs=BASE, seeds=(0, 1))
    with Store(tmp_path / "a.sqlite") as a, Store(tmp_path / "b.sqlite") as b:
        inline = run_sweep(suite, a, executor=fake_train, backend="inline")
        local = run_sweep(suite, b, executor=fake_train, workers=2)
    assert local.groups == inline.groups


# -- the whole job ------------------------------------------------------------------------------


def _suite():
    return Suite("s", ("test_sweep:u_high",), (ADAMW,), lrs=BASE, max_extend=0)


def test_run_bench_creates_folders_and_notes_a_missing_report_module(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "lrkit.bench.report", None)  # as if absent
    db = tmp_path / "deep" / "bench.sqlite"
    out = tmp_path / "report"
    result = run_bench(_suite(), store=db, out=out, executor=fake_train, backend="inline")
    assert result.note == "report skipped: lrkit.bench.report is not available in this lrkit"
    assert result.report is None
    assert os.path.isdir(out)
    assert result.store == str(db)
    with Store(db, readonly=True) as s:
        assert len(s) == 3


def test_run_bench_calls_the_report_writer_with_the_store_and_folder(tmp_path, monkeypatch):
    calls = []

    def write_report(store_path, out_dir):
        calls.append((store_path, out_dir))
        with Store(store_path, readonly=True) as s:
            assert len(s) == 3
        return os.path.join(out_dir, "index.html")

    module = types.ModuleType("lrkit.bench.report")
    module.write_report = write_report
    monkeypatch.setitem(sys.modules, "lrkit.bench.report", module)
    db, out = str(tmp_path / "b.sqlite"), str(tmp_path / "r")
    result = run_bench(_suite(), store=db, out=out, executor=fake_train, backend="inline")
    assert calls == [(db, out)]
    assert result.report == os.path.join(out, "index.html")
    assert result.note is None
    no_report = run_bench(_suite(), store=db, out=None, executor=fake_train, backend="inline")
    assert (no_report.report, no_report.note, len(calls)) == (None, None, 1)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_an_unwritable_report_folder_is_refused_before_anything_runs(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    db = tmp_path / "b.sqlite"
    try:
        with pytest.raises(OSError, match=r"report folder .* is not writable: Permission denied"):
            run_bench(_suite(), store=db, out=locked / "r", executor=fake_train)
    finally:
        locked.chmod(stat.S_IRWXU)
    assert not db.exists()


def test_a_report_folder_that_is_a_file_is_refused_before_anything_runs(tmp_path):
    blocker = tmp_path / "report.txt"
    blocker.write_text("x")
    db = tmp_path / "b.sqlite"
    with pytest.raises(OSError, match=r"report folder '.*report.txt' is not writable: File exists"):
        run_bench(_suite(), store=db, out=blocker, executor=fake_train)
    assert not db.exists()


def test_a_store_of_another_version_is_refused_and_left_untouched(tmp_path):
    db = tmp_path / "b.sqlite"
    run_bench(_suite(), store=db, out=None, executor=fake_train, backend="inline")
    conn = sqlite3.connect(db)
    conn.execute("UPDATE meta SET value = '0' WHERE name = 'format_version'")
    conn.commit()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    before = db.read_bytes()
    with pytest.raises(StateError, match="written with format version 0"):
        run_bench(_suite(), store=db, out=None, executor=fake_train, backend="inline")
    assert db.read_bytes() == before


def test_bad_inputs_fail_before_the_store_is_created(tmp_path):
    db = tmp_path / "b.sqlite"
    with pytest.raises(ValueError, match="unknown workload 'nope'"):
        run_bench(Suite("s", ("nope",), (ADAMW,)), store=db, out=None)
    with pytest.raises(TypeError, match="store must be a str or path-like, got int"):
        run_bench(_suite(), store=3, out=None)
    with pytest.raises(TypeError, match="retry_failed must be a bool, got 1"):
        run_bench(_suite(), store=db, out=None, retry_failed=1)
    assert not db.exists()


def test_the_sweep_driver_and_the_cli_load_no_optional_package_until_used():
    code = (
        "import sys, lrkit.bench.sweep, lrkit.bench.runner, lrkit.bench.store\n"
        "from lrkit.cli import build_parser\n"
        "build_parser()\n"
        "heavy = ('ray', 'tqdm', 'mnist1d', 'sklearn', 'matplotlib', 'lrkit.bench.train')\n"
        "print(','.join(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == ""
