"""The sharpness along a benchmark run (benchmarks/sharpening.py)."""

import json

import pytest
import torch

from lrkit.bench.config import RunConfig
from lrkit.bench.train import train
from lrkit.bench.workloads import get_workload
from lrkit.curvature import top_eigenvalue
from lrkit.curvature.hvp import HessianOperator
from testkit import load_script

sharpening = load_script("sharpening")


def test_the_measured_run_is_the_bench_run_and_its_first_record_is_lambda_max_there():
    config = RunConfig("logreg", sharpening.SGD, 0.3, 0, steps=30)
    run = sharpening.trajectory(config, every=10, batches=2)
    plain = train(config)
    assert run.result.final == plain.final
    assert run.result.curve == plain.curve
    assert [r.step for r in run.records] == [1, 10, 20, 30]
    assert run.error is None

    # the first record is λ_max of the mean loss of the stream's first two batches after update 1
    workload = get_workload("logreg")
    stream = workload.batches(0, workload.batch_size)
    fixed = [next(stream) for _ in range(2)]
    exact: list[float] = []

    def solve(step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        if step == 1:
            operator = HessianOperator(model, workload.loss, fixed)
            exact.append(top_eigenvalue(operator, max_iter=200, tol=1e-8).value)

    train(config, on_update=solve)
    first = run.records[0]
    assert first.sharpness == pytest.approx(exact[0], rel=1e-2)
    assert first.lr == pytest.approx(0.3 * 1 / 2)  # warmup: update 2 of 30 runs at 1/2 the peak


def test_the_peak_is_the_sharpest_record_while_the_rate_is_at_least_half_its_peak():
    from lrkit.curvature import EoSRecord

    def record(step: int, lr: float, sharpness: float) -> EoSRecord:
        return EoSRecord(step, lr, sharpness, 0.0, lr * sharpness, 2.0, 1.0, 3, True)

    config = RunConfig("logreg", sharpening.SGD, 1.0, 0, steps=4)
    result = train(config)
    records = (record(1, 0.1, 1.0), record(2, 1.0, 3.0), record(3, 0.5, 4.0), record(4, 0.4, 9.0))
    assert sharpening.Trajectory(config, result, records).peak() == records[2]
    assert sharpening.Trajectory(config, result, ()).peak() is None


def test_a_failing_measurement_ends_the_measuring_not_the_run(monkeypatch):
    from lrkit.curvature import EdgeOfStability

    calls: list[int] = []

    def broken(self: EdgeOfStability, step: int, **kwargs: object) -> None:
        calls.append(step)
        raise RuntimeError("no double backward")

    monkeypatch.setattr(EdgeOfStability, "measure", broken)
    config = RunConfig("logreg", sharpening.SGD, 0.3, 0, steps=20)
    run = sharpening.trajectory(config, every=5)
    assert calls == [1]
    assert run.result.status == "ok"
    assert run.result.final == train(config).final
    assert run.records == ()
    assert run.error == "RuntimeError: no double backward"
    assert "(RuntimeError: no double backward)" in sharpening.markdown([run])


def test_a_diverging_run_keeps_the_records_taken_before(tmp_path):
    config = RunConfig("mnist1d_mlp", sharpening.SGD, 1e4, 0, steps=40)
    run = sharpening.trajectory(config, every=1, batches=1, max_iter=5)
    assert run.result.status == "diverged"
    # every update but the one the divergence test stopped at was measured
    assert 1 <= len(run.records) == run.result.steps_done - 1
    text = sharpening.markdown([run])
    assert "| mnist1d_mlp | 1e+04 | 0 | diverged | - |" in text


def test_the_script_prints_and_writes_the_tables_and_records(tmp_path, capsys):
    out, js = tmp_path / "s.md", tmp_path / "s.json"
    argv = ["--workload", "logreg", "--lrs", "0.3", "--steps", "20", "--every", "10"]
    assert sharpening.main([*argv, "--out", str(out), "--json", str(js)]) == 0
    printed = capsys.readouterr().out
    assert printed == out.read_text()
    assert printed.startswith("| workload | peak lr | seed | status | final |")
    assert "| logreg | 0.3 | 0 | ok | suboptimality " in printed
    (record,) = json.loads(js.read_text())
    assert record["status"] == "ok"
    assert [r["step"] for r in record["records"]] == [1, 10, 20]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"every": 0}, ValueError, "every"),
        ({"batches": 0}, ValueError, "batches"),
        ({"max_iter": 0}, ValueError, "max_iter"),
        ({"tol": 1.0}, ValueError, "tol"),
        ({"every": 2.5}, TypeError, "every"),
    ],
)
def test_bad_arguments_are_refused_before_training(kwargs, error, match, monkeypatch):
    monkeypatch.setattr(sharpening, "train", None)  # training would call it and fail differently
    config = RunConfig("logreg", sharpening.SGD, 0.3, 0, steps=5)
    with pytest.raises(error, match=match):
        sharpening.trajectory(config, **{"every": 5, **kwargs})


def test_an_unknown_workload_fails_before_any_training():
    with pytest.raises(Exception, match="no_such"):
        sharpening.main(["--workload", "no_such", "--lrs", "0.1"])
