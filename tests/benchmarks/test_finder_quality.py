"""The range-test quality study: its arithmetic on hand-built data, and a tiny run end to end."""

import json
import math

import pytest

from lrkit.bench.config import RunConfig, RunResult
from lrkit.bench.store import Store, StoredRun
from lrkit.bench.strategies import parse_strategy
from lrkit.bench.workloads import get_workload
from lrkit.finder import range_test, suggest_all
from testkit import load_script

fq = load_script("finder_quality")

ADAMW = "adamw(schedule='cosine', warmup=0.05)"


def _run(lr, seed, status="ok", **final):
    config = RunConfig("w", ADAMW, lr, seed=seed, steps=10)
    result = RunResult(status=status, final=final, curve=[], wall_time=0.0, steps_done=10)
    return StoredRun(config.key(), config, result, 0.0, 0.0, "test")


def _runs(*runs):
    return {r.key: r for r in runs}


# -- the arithmetic ---------------------------------------------------------------------------
def test_ratio_median_spread_and_rounding_are_exact():
    assert fq.ratio(0.003, 0.01) == pytest.approx(0.3, rel=1e-15)
    assert fq.ratio(0.1, 0.1) == 1.0
    assert fq.ratio(None, 0.1) is None
    assert fq.ratio(0.1, None) is None
    assert fq.median([0.01, None, 0.04]) == pytest.approx(0.025)
    assert fq.median([0.01, 0.02, 0.09]) == 0.02
    assert fq.median([None, None]) is None
    assert fq.spread([0.01, 0.027, None]) == pytest.approx(2.7)
    assert fq.spread([None]) is None
    assert fq.round_lr(0.0123456) == 0.01235
    assert fq.round_lr(2.0 / 3.0) == 0.6667


def test_grid_best_is_the_best_mean_over_seeds_without_a_diverged_seed():
    runs = _runs(
        _run(0.01, 0, accuracy=0.80),
        _run(0.01, 1, accuracy=0.84),  # mean 0.82
        _run(0.1, 0, accuracy=0.90),
        _run(0.1, 1, accuracy=0.86),  # mean 0.88: the best candidate
        _run(1.0, 0, accuracy=0.95),
        _run(1.0, 1, status="diverged"),  # better seed, but a diverged one: not a candidate
    )
    best = fq.grid_best(
        runs, "w", ADAMW, [0.01, 0.1, 1.0], [0, 1], metric="accuracy", higher_is_better=True,
        steps=10,
    )  # fmt: skip
    assert best.lr == 0.1
    assert best.score == pytest.approx(0.88)
    assert (best.ok, best.diverged, best.missing) == (2, 0, 0)


def test_grid_best_of_a_metric_to_minimize_and_a_tie_goes_to_the_smaller_rate():
    runs = _runs(_run(0.01, 0, bpc=2.5), _run(0.1, 0, bpc=2.0), _run(1.0, 0, bpc=2.0))
    best = fq.grid_best(
        runs, "w", ADAMW, [0.01, 0.1, 1.0], [0], metric="bpc", higher_is_better=False, steps=10
    )
    assert best.lr == 0.1
    assert best.score == 2.0
    nothing = fq.grid_best(
        {}, "w", ADAMW, [0.1], [0], metric="bpc", higher_is_better=False, steps=10
    )
    assert nothing is None


def test_gap_is_absolute_for_accuracy_and_relative_otherwise():
    assert fq.gap(0.949, 0.959, higher_is_better=True, metric="accuracy") == 0.01
    assert fq.gap(0.97, 0.959, higher_is_better=True, metric="accuracy") == -0.011
    assert fq.gap(1.02, 1.0, higher_is_better=False, metric="bpc") == 0.02
    assert fq.gap(0.9, 1.2, higher_is_better=False, metric="objective") == -0.25
    assert fq.gap(0.8, 1.0, higher_is_better=True, metric="f1") == 0.2
    assert fq.within_goal(0.01, "accuracy")
    assert not fq.within_goal(0.0101, "accuracy")
    assert fq.within_goal(0.02, "bpc")
    assert not fq.within_goal(0.0201, "bpc")
    assert not fq.within_goal(None, "bpc")
    assert fq.judged_key("suboptimality") == "objective"
    assert fq.judged_key("bpc") == "bpc"


def test_mean_final_needs_every_seed():
    assert fq.mean_final([{"a": 1.0}, {"a": 2.0}], "a") == (1.5, True)
    assert fq.mean_final([{"a": 1.0}, None], "a") == (None, False)
    assert fq.mean_final([{"a": 1.0}, {"b": 2.0}], "a") == (None, False)
    assert fq.mean_final([{"a": math.nan}], "a") == (None, False)


def _summary(metric, higher, best_final, finals_by_rule, lrs_by_rule=None, best_lr=0.01):
    rows = []
    for rule in fq.COLUMNS:
        finals = finals_by_rule.get(rule, (None,))
        lrs = (lrs_by_rule or {}).get(rule, (None,) * len(finals))
        rows.append(fq.RuleRow(rule, tuple(lrs), tuple(finals)))
    return fq.PairSummary("w", ADAMW, metric, higher, best_lr, best_final, False, tuple(rows))


def test_the_goal_needs_the_tolerance_and_no_worse_than_steepest():
    acc = [{"accuracy": 0.95}, {"accuracy": 0.96}]  # mean 0.955: 0.4 points below 0.959
    worse = [{"accuracy": 0.93}, {"accuracy": 0.94}]  # mean 0.935: 2.4 points below
    better = [{"accuracy": 0.96}, {"accuracy": 0.96}]
    best = {"accuracy": 0.959}
    s = _summary("accuracy", True, best, {"default": acc, "steepest": worse})
    assert s.gap("default") == pytest.approx(0.004)
    assert s.gap("steepest") == pytest.approx(0.024)
    assert s.passes()
    assert not _summary("accuracy", True, best, {"default": acc, "steepest": better}).passes()
    assert not _summary("accuracy", True, best, {"default": worse, "steepest": worse}).passes()
    diverged = [{"accuracy": 0.96}, None]
    assert not _summary("accuracy", True, best, {"default": diverged}).passes()
    # steepest without a suggestion or diverged: the default only needs the tolerance
    assert _summary("accuracy", True, best, {"default": acc, "steepest": [None, None]}).passes()


def test_a_suboptimality_is_judged_on_the_objective():
    best = {"suboptimality": 0.010, "objective": 0.100}
    ours = [{"suboptimality": 0.0115, "objective": 0.1015}]  # +15% suboptimality, +1.5% objective
    theirs = [{"suboptimality": 0.020, "objective": 0.110}]
    s = _summary("suboptimality", False, best, {"default": ours, "steepest": theirs})
    assert s.gap("default") == pytest.approx(0.015)
    assert s.gap("steepest") == pytest.approx(0.10)
    assert s.value("default") == 0.0115
    assert s.passes()
    text = fq.markdown([s], title="T")
    assert "| w | AdamW | suboptimality | 0.01 | 0.01 | 0.0115" in text
    assert "| 0.0115 | 0.02 | +1.5% | +10.0% | pass |" in text


def test_suggested_lrs_rounds_each_rule_and_takes_the_bound():
    record = {
        "suggestions": {"default": 0.0123456, "steepest": None, "valley": 1e-3, "minimum": 0.2},
        "bound": 0.987654,
    }
    assert fq.suggested_lrs(record) == {
        "default": 0.01235,
        "steepest": None,
        "valley": 1e-3,
        "minimum": 0.2,
        "bound": 0.9877,
    }


def test_markdown_rows_carry_median_ratio_spread_and_metric():
    s = _summary(
        "accuracy",
        True,
        {"accuracy": 0.9},
        {"default": [{"accuracy": 0.89}, {"accuracy": 0.9}], "steepest": [None, None]},
        {"default": (0.02, 0.04), "steepest": (0.001, 0.002)},
        best_lr=0.01,
    )
    text = fq.markdown([s], title="T")
    assert "| w | AdamW | default | 0.03 | 3.00 | 2.00 | 0.895 |" in text
    assert "| w | AdamW | steepest | 0.0015 | 0.15 | 2.00 | diverged (2/2) |" in text
    assert (
        "| w | AdamW | accuracy | 0.01 | 0.9 | 0.895 | diverged (2/2) | +0.5 pt | - | pass |"
        in text
    )


# -- a tiny run end to end ---------------------------------------------------------------------
def test_a_tiny_study_runs_resumes_and_matches_an_independent_range_test(tmp_path, capsys):
    store_path = tmp_path / "s.sqlite"
    out_json = tmp_path / "r.json"
    argv = [
        "--workload", "logreg", "--lrs", "0.03", "0.3", "--steps", "20", "--max-extend", "0",
        "--finder-steps", "30", "--seeds", "0", "--workers", "0", "--quiet",
        "--store", str(store_path), "--json", str(out_json),
    ]  # fmt: skip
    assert fq.main(argv) == 0
    table = capsys.readouterr().out
    assert "Range-test quality, 20 updates per run, seeds [0]" in table
    data = json.loads(out_json.read_text())
    assert [d["strategy"] for d in data] == list(fq.STRATEGIES)
    probes = json.loads((tmp_path / "s.finder.json").read_text())
    assert len(probes) == 2

    # the suggestions are those of a range test run here on the same model, batches and optimizer
    workload = get_workload("logreg")
    for entry in data:
        model = workload.model(0)
        strategy = parse_strategy(entry["strategy"])
        optimizer = strategy.build(model, lr=1e-7, steps=20).optimizer
        with fq._seeded(0):
            result = range_test(
                model, optimizer, workload.loss, workload.batches(0, workload.batch_size),
                start_lr=1e-7, end_lr=10.0, steps=30,
            )  # fmt: skip
        expected = {
            k: None if v is None else fq.round_lr(v.lr) for k, v in suggest_all(result).items()
        }
        got = {rule: entry["rules"][rule]["lrs"][0] for rule in expected}
        assert got == expected
        assert entry["rules"]["bound"]["lrs"][0] > 0.0

        # grid-best and every final metric come from the store's runs of exactly those rates
        with Store(store_path, readonly=True) as store:
            for lr in (0.03, 0.3):
                assert RunConfig("logreg", entry["strategy"], lr, 0, 20).key() in store
            best = store.get(RunConfig("logreg", entry["strategy"], entry["best_lr"], 0, 20).key())
            assert best.result.final["suboptimality"] == entry["best_final"]["suboptimality"]
            for rule, row in entry["rules"].items():
                run = store.get(RunConfig("logreg", entry["strategy"], row["lrs"][0], 0, 20).key())
                final = None if run.result.status != "ok" else run.result.final
                assert row["finals"][0] == final, rule

    # a second call runs nothing new and gives the same numbers
    with Store(store_path, readonly=True) as store:
        stored = len(store)
    assert fq.main(argv) == 0
    with Store(store_path, readonly=True) as store:
        assert len(store) == stored
    assert json.loads(out_json.read_text()) == data


def test_the_bound_is_none_with_the_error_when_the_hessian_cannot_be_computed():
    import torch

    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def loss(m, batch):
        raise RuntimeError("no double backward")

    batches = [torch.zeros(1, 2)]
    got = fq._bound(loss, model, optimizer, batches, fq.ProbeSettings(), 0)
    assert got == (None, None, None, "RuntimeError: no double backward")


def test_the_bound_of_sgd_is_two_over_lambda_max():
    import torch

    model = torch.nn.Linear(2, 1, bias=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    x = torch.tensor([[3.0, 0.0], [0.0, 1.0]])

    def loss(m, batch):  # 0.5 * mean((w . x_i)^2): H = x^T x / 2 = diag(4.5, 0.5)
        return 0.5 * (m(batch) ** 2).mean()

    bound, lam, _, error = fq._bound(loss, model, optimizer, [x], fq.ProbeSettings(), 0)
    assert error is None
    assert lam == pytest.approx(4.5, rel=1e-6)
    assert bound == pytest.approx(2.0 / 4.5, rel=1e-6)
