"""The auto-mode bar: its verdicts on a hand-built store (nothing is trained)."""

import pytest

from lrkit.bench.config import RunConfig, RunResult
from lrkit.bench.store import Store
from testkit import load_script

ab = load_script("auto_bar")


def _add(store, workload, strategy, lr, seed, status="ok", **final):
    config = RunConfig(workload, strategy, lr, seed=seed)
    result = RunResult(status=status, final=final, curve=[], wall_time=0.0, steps_done=1)
    store.add(config, result, finished_at=1.0)


@pytest.fixture
def store(tmp_path):
    s = Store(str(tmp_path / "bar.sqlite"))
    yield s
    s.close()


def _accuracy_workload(store, auto, tuned_by_lr, defaults):
    for seed in (0, 1, 2):
        _add(store, "mnist1d_cnn", ab.AUTO, 1.0, seed, accuracy=auto[seed])
        for lr, values in tuned_by_lr.items():
            _add(store, "mnist1d_cnn", ab.TUNED, lr, seed, accuracy=values[seed])
        for spec, lr in ab.DEFAULTS:
            _add(store, "mnist1d_cnn", spec, lr, seed, accuracy=defaults[spec][seed])


def test_accuracy_within_one_point_of_the_best_rate_and_above_every_default(store):
    defaults = {spec: (0.90, 0.90, 0.90) for spec, _ in ab.DEFAULTS}
    tuned = {0.01: (0.92, 0.92, 0.92), 0.03: (0.96, 0.97, 0.98), 0.1: (0.5, 0.5, 0.5)}
    _accuracy_workload(store, (0.96, 0.96, 0.96), tuned, defaults)
    (row,) = ab.table(store, (0, 1, 2), ["mnist1d_cnn"])
    assert row.tuned_lr == 0.03
    assert row.tuned.value == pytest.approx(0.97)
    assert row.gap == pytest.approx(0.01)  # exactly one point: still within
    assert row.near_tuned
    assert all(row.beats(spec) for spec, _ in ab.DEFAULTS)
    assert "| mnist1d_cnn | accuracy | 96.00% | 97.00% (0.03) | +1.00 pt | yes |" in ab.markdown(
        [row]
    )


def test_more_than_a_point_below_or_below_a_default_fails(store):
    defaults = {spec: (0.90, 0.90, 0.90) for spec, _ in ab.DEFAULTS}
    defaults["dog()"] = (0.96, 0.96, 0.96)
    tuned = {0.03: (0.98, 0.98, 0.98)}
    _accuracy_workload(store, (0.95, 0.96, 0.96), tuned, defaults)
    (row,) = ab.table(store, (0, 1, 2), ["mnist1d_cnn"])
    assert row.gap == pytest.approx(0.0233333, abs=1e-6)
    assert not row.near_tuned
    assert row.beats("dog()") is False
    assert row.beats("prodigy()") is True
    assert ab.markdown([row]).rstrip().endswith("| no |")


def test_a_rate_with_a_diverged_seed_is_no_candidate_and_missing_runs_show_as_dashes(store):
    for seed in (0, 1, 2):
        _add(store, "char_lm", ab.TUNED, 0.01, seed, bpc=2.0)
        status = "diverged" if seed == 1 else "ok"
        _add(store, "char_lm", ab.TUNED, 0.1, seed, status=status, bpc=1.0)
        _add(store, "char_lm", ab.AUTO, 1.0, seed, bpc=2.03)
    (row,) = ab.table(store, (0, 1, 2), ["char_lm"])
    assert row.tuned_lr == 0.01  # 0.1 is better on its ok seeds but one diverged
    assert row.gap == pytest.approx(0.015)
    assert row.near_tuned  # 1.5% above, inside 2% relative
    assert row.beats("prodigy()") is None  # not measured
    line = ab.markdown([row]).splitlines()[-1]
    assert "| 2.03 | 2 (0.01) | +1.50% | yes | - | - | - | - | - |" in line


def test_logistic_regression_is_judged_on_the_objective(store):
    for seed in (0, 1, 2):
        _add(store, "logreg", ab.TUNED, 0.3, seed, suboptimality=1e-5, objective=0.06)
        _add(store, "logreg", ab.AUTO, 1.0, seed, suboptimality=5e-5, objective=0.06004)
    (row,) = ab.table(store, (0, 1, 2), ["logreg"])
    assert row.gap == pytest.approx(0.04 / 60)  # 5x the suboptimality, 0.07% of the objective
    assert row.near_tuned


def test_main_prints_the_table_and_rejects_a_missing_store(store, tmp_path, capsys):
    _add(store, "digits_mlp", ab.AUTO, 1.0, 0, accuracy=0.99)
    assert ab.main(["--store", store.path, "--seeds", "0", "--workload", "digits_mlp"]) == 0
    assert "| digits_mlp | accuracy | 99.00% | - |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        ab.main(["--store", str(tmp_path / "nope.sqlite")])
