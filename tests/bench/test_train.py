from __future__ import annotations

import dataclasses
import math
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from lrkit.bench.config import RunConfig
from lrkit.bench.strategies import Strategy
from lrkit.bench.train import SMOOTHING, train
from lrkit.bench.workloads import BUILTIN, get_workload
from testkit import one_thread_fixture, same_result

TOY = """
import torch
from torch import nn
from lrkit.bench.workloads import Workload, seeded

SEEN = []


class Scalar(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))


def _workload(loss, batches, *, steps=10, eval_every=1, model=None, evaluate=None, metric="w"):
    def make_model(seed):
        m = Scalar() if model is None else model(seed)
        SEEN.append(("model", m))
        return m

    def default_evaluate(m):
        SEEN.append(("evaluate", m))
        return {"w": float(m.w)}

    return Workload(
        name="toy", model=make_model, batches=lambda seed, bs: batches(), loss=loss,
        evaluate=default_evaluate if evaluate is None else evaluate, metric=metric,
        higher_is_better=False, steps=steps, batch_size=1, eval_every=eval_every,
    )


def _counting():
    k = 0
    while True:
        yield k
        k += 1


def _ones():
    while True:
        yield 1.0


def counter():
    # the loss of update k is k (the parameter gets no gradient): exact windows
    return _workload(lambda m, b: m.w * 0.0 + b, _counting, steps=10, eval_every=5)


def exploding():
    # (w - 1)^2 from w = 0 with SGD lr 1.5: w - 1 doubles and flips sign, the loss is 4^k
    return _workload(lambda m, b: (m.w - b) ** 2, _ones, steps=50)


def nan_at_two():
    def batches():
        yield from (1.0, 1.0, float("nan"))
        yield from _ones()
    return _workload(lambda m, b: (m.w - b) ** 2, batches)


def quadratic():
    return _workload(lambda m, b: (m.w - b) ** 2, _ones, steps=8)


def raising():
    def loss(m, b):
        if b == 3:
            raise RuntimeError("boom")
        return (m.w - 1.0) ** 2
    return _workload(loss, _counting)


def interrupting():
    def loss(m, b):
        if b == 1:
            raise KeyboardInterrupt
        return m.w ** 2
    return _workload(loss, _counting)


def vector_loss():
    return _workload(lambda m, b: torch.stack([m.w, m.w]), _ones)


def no_metric():
    return _workload(lambda m, b: m.w ** 2, _ones, evaluate=lambda m: {"other": 1.0})


def _bn_model(seed):
    with seeded(seed):
        return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))


def _bn_workload(eval_every):
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    y = x.sum(1, keepdim=True)

    def batches():
        g = torch.Generator().manual_seed(1)
        while True:
            idx = torch.randint(0, 64, (16,), generator=g)
            yield x[idx], y[idx]

    def loss(m, b):
        return ((m(b[0]) - b[1]) ** 2).mean()

    def evaluate(m):
        return {"mse": float(((m(x) - y) ** 2).mean()), "r": float(m[1].running_mean.sum())}

    return _workload(loss, batches, steps=12, eval_every=eval_every, model=_bn_model,
                     evaluate=evaluate, metric="mse")


def bn_every_step():
    return _bn_workload(1)


def bn_at_the_end():
    return _bn_workload(12)
"""


_one_thread = one_thread_fixture()


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    folder = tmp_path_factory.mktemp("toy")
    (folder / "lrkit_toy_workloads.py").write_text(textwrap.dedent(TOY))
    sys.path.insert(0, str(folder))
    import lrkit_toy_workloads

    yield lrkit_toy_workloads
    sys.path.remove(str(folder))


# --------------------------------------------------------------------------------------------
# every built-in workload, a few steps
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(BUILTIN))
def test_builtin_workload_trains_and_evaluates(name):
    result = train(RunConfig(name, "adamw(schedule='warmup_cosine')", 1e-3, steps=6))
    assert result.status == "ok", result.error
    assert result.steps_done == 6
    assert [e["step"] for e in result.curve] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    metric = BUILTIN[name]().metric
    assert metric in result.final
    assert "train_loss" in result.final
    assert result.final == {
        k: v for k, v in result.curve[-1].items() if k not in ("step", "lr", "effective_lr")
    }
    assert result.error is None
    assert result.wall_time > 0.0


def test_evaluations_follow_the_scaled_interval():
    result = train(RunConfig("logreg", "sgd()", 0.1, steps=300))
    assert [e["step"] for e in result.curve] == [15.0 * i for i in range(1, 21)]


def test_train_loss_is_the_mean_since_the_last_evaluation(toy):
    result = train(RunConfig("lrkit_toy_workloads:counter", "sgd()", 0.1))
    assert result.status == "ok"
    assert [(e["step"], e["train_loss"]) for e in result.curve] == [(5.0, 2.0), (10.0, 7.0)]
    assert result.final == {"train_loss": 7.0, "w": 0.0}


def test_curve_reports_the_lr_of_the_last_update():
    result = train(RunConfig("logreg", "sgd(schedule='linear')", 0.5, steps=4))
    # linear decay to 0 over 4 updates: the updates use 0.5, 0.375, 0.25, 0.125
    assert [e["lr"] for e in result.curve] == [0.5, 0.375, 0.25, 0.125]


def test_lr_free_optimizers_report_their_effective_lr():
    result = train(RunConfig("logreg", "prodigy()", None, steps=4))
    assert result.status == "ok"
    assert all(e["lr"] == 1.0 for e in result.curve)
    assert all(e["effective_lr"] > 0.0 for e in result.curve)


# --------------------------------------------------------------------------------------------
# determinism and isolation
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("workload", "strategy"),
    [
        ("digits_mlp", "adamw(schedule='warmup_cosine')"),
        ("logreg", "armijo()"),
        ("digits_mlp", "schedule_free_adamw()"),
        ("digits_mlp", "dog()"),
    ],
)
def test_the_same_config_gives_bit_identical_results(workload, strategy):
    config = RunConfig(workload, strategy, None, seed=3, steps=30)
    first, second = train(config), train(config)
    assert first.status == "ok"
    assert same_result(first, second)
    other = train(dataclasses.replace(config, seed=4))
    assert other.curve != first.curve


def test_results_are_identical_in_a_fresh_process():
    config = RunConfig("char_lm", "adamw()", 3e-3, seed=1, steps=5)
    here = train(config)
    code = (
        "from lrkit.bench.config import RunConfig\n"
        "from lrkit.bench.train import train\n"
        f"r = train(RunConfig(**{config.to_dict()!r}))\n"
        "print(repr((r.status, r.curve, r.final, r.steps_done)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == repr((here.status, here.curve, here.final, here.steps_done))


def _seed_globals(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - the legacy global is what train() must restore
    random.seed(seed)


def _draw_globals() -> tuple[list[float], float, float]:
    return torch.rand(2).tolist(), np.random.rand(), random.random()  # noqa: NPY002 - as above


def test_caller_random_state_and_threads_are_restored():
    _seed_globals(123)
    expected = _draw_globals()
    _seed_globals(123)
    threads = torch.get_num_threads()
    train(RunConfig("logreg", "sgd()", 0.1, steps=3), threads=2)
    assert _draw_globals() == expected
    assert torch.get_num_threads() == threads


def test_the_run_uses_one_thread_by_default():
    seen = []
    train(
        RunConfig("logreg", "sgd()", 0.1, steps=2),
        on_eval=lambda e: seen.append(torch.get_num_threads()),
    )
    assert seen == [1, 1]


# --------------------------------------------------------------------------------------------
# divergence
# --------------------------------------------------------------------------------------------
def test_absurd_lr_diverges_without_raising():
    result = train(RunConfig("digits_mlp", "sgd()", 1e6, steps=100))
    assert result.status == "diverged"
    assert result.steps_done < 100
    assert result.final == {}
    assert "training loss" in (result.error or "")


def test_non_finite_loss_stops_before_the_update(toy):
    result = train(RunConfig("lrkit_toy_workloads:nan_at_two", "sgd()", 0.1))
    assert result.status == "diverged"
    assert result.error == "the training loss is nan at step 2"
    assert result.steps_done == 2
    assert [e["step"] for e in result.curve] == [1.0, 2.0]


def test_explosion_is_detected_at_the_first_step_the_smoothed_loss_passes_the_factor(toy):
    # independent: losses 4^k, bias-corrected moving average against 10 x the first loss
    average, expected = 0.0, None
    for k in range(50):
        average = SMOOTHING * average + (1 - SMOOTHING) * 4.0**k
        if average / (1 - SMOOTHING ** (k + 1)) > 10.0:
            expected = k
            break
    assert expected == 3
    result = train(RunConfig("lrkit_toy_workloads:exploding", "sgd()", 1.5))
    assert result.status == "diverged"
    assert result.error is not None
    assert result.error.endswith(f"x the first loss 1 at step {expected}")
    assert "exceeds 10 x" in result.error
    assert result.steps_done == expected + 1
    assert [e["train_loss"] for e in result.curve] == [4.0**k for k in range(expected)]


# --------------------------------------------------------------------------------------------
# failures
# --------------------------------------------------------------------------------------------
def test_an_exception_fails_the_run_and_keeps_what_was_done(toy):
    result = train(RunConfig("lrkit_toy_workloads:raising", "sgd()", 0.1))
    assert result.status == "failed"
    assert result.error is not None
    assert result.error.startswith("RuntimeError: boom (at lrkit_toy_workloads.py:")
    assert result.steps_done == 3
    assert len(result.curve) == 3
    assert result.final == {}


@pytest.mark.parametrize(
    ("workload", "strategy", "start"),
    [
        ("no_such_workload", "sgd()", "ValueError: unknown workload 'no_such_workload'"),
        ("logreg", "sgd(momentum=2)", "SpecError: sgd(): momentum must be in [0, 1)"),
        ("lrkit_toy_workloads:vector_loss", "sgd()", "TypeError: loss(model, batch) must return"),
        ("lrkit_toy_workloads:no_metric", "sgd()", "ValueError: evaluate(model) returned no 'w'"),
        ("logreg", "sgd(schedule='onecycle')", "ValueError: warmup"),
    ],
)
def test_setup_errors_fail_the_run(toy, workload, strategy, start):
    steps = 2 if "onecycle" in strategy else None
    result = train(RunConfig(workload, strategy, 0.1, steps=steps))
    assert result.status == "failed"
    assert (result.error or "").startswith(start), result.error
    assert "\n" not in (result.error or "")


def test_keyboard_interrupt_goes_through(toy):
    with pytest.raises(KeyboardInterrupt):
        train(RunConfig("lrkit_toy_workloads:interrupting", "sgd()", 0.1))


def test_an_on_eval_error_fails_the_run():
    def stop(entry: dict[str, float]) -> None:
        raise ValueError("enough")

    result = train(RunConfig("logreg", "sgd()", 0.1, steps=3), on_eval=stop)
    assert result.status == "failed"
    assert (result.error or "").startswith("ValueError: enough")
    assert result.steps_done == 1


def test_on_eval_sees_each_entry():
    seen: list[dict[str, float]] = []
    result = train(RunConfig("logreg", "sgd()", 0.1, steps=40), on_eval=seen.append)
    assert seen == result.curve
    assert len(seen) == 20


def test_on_update_sees_every_update_after_its_scheduler_step():
    seen: list[tuple[int, float]] = []

    def record(step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        assert isinstance(model, torch.nn.Module)
        seen.append((step, optimizer.param_groups[0]["lr"]))

    config = RunConfig("logreg", "sgd(schedule='cosine')", 0.1, steps=12)
    result = train(config, on_update=record)
    assert result.status == "ok"
    assert [step for step, _ in seen] == list(range(1, 13))
    assert seen[-1][1] == pytest.approx(0.0, abs=1e-12)  # the rate after the last decay step


def test_a_measuring_on_update_leaves_the_run_unchanged():
    from lrkit.curvature import EdgeOfStability

    config = RunConfig("mnist1d_mlp", "sgd(momentum=0.9, schedule='cosine')", 0.1, steps=30)
    workload = get_workload("mnist1d_mlp")
    fixed = [next(workload.batches(0, 16))]
    trackers: list[EdgeOfStability] = []

    def measure(step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        if not trackers:
            trackers.append(EdgeOfStability(model, workload.loss, fixed, optimizer, every=10))
        trackers[0](step)

    plain, measured = train(config), train(config, on_update=measure)
    assert [r.step for r in trackers[0].history] == [10, 20, 30]
    assert measured.final == plain.final
    assert measured.curve == plain.curve


def test_an_on_update_error_fails_the_run():
    def stop(step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        if step == 2:
            raise RuntimeError("measured enough")

    result = train(RunConfig("logreg", "sgd()", 0.1, steps=5), on_update=stop)
    assert result.status == "failed"
    assert (result.error or "").startswith("RuntimeError: measured enough")
    assert result.steps_done == 2


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        (("logreg",), {}, TypeError, "config must be a RunConfig, got str"),
        ((RunConfig("logreg", "sgd()", 0.1),), {"on_update": 1}, TypeError, "on_update must be"),
        ((RunConfig("logreg", "sgd()", 0.1),), {"on_eval": 3}, TypeError, "on_eval must be"),
        ((RunConfig("logreg", "sgd()", 0.1),), {"threads": 0}, ValueError, "threads must be"),
    ],
)
def test_train_checks_its_own_arguments(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        train(*args, **kwargs)


# --------------------------------------------------------------------------------------------
# what is evaluated
# --------------------------------------------------------------------------------------------
def test_closure_optimizers_train(toy):
    # Polyak: γ = (f - f*) / (c ‖g‖²) = 1 / (0.5 · 4) = 0.5 takes w = 0 to the minimizer 1
    polyak = train(RunConfig("lrkit_toy_workloads:quadratic", "polyak()", None))
    assert polyak.status == "ok", polyak.error
    assert polyak.curve[0]["w"] == 1.0
    # Armijo with c = 0.5: η = 0.9^j until (2η - 1)² <= 1 - 2η, i.e. η <= 0.5: j = 7
    armijo = train(RunConfig("lrkit_toy_workloads:quadratic", "armijo(c=0.5)", None))
    assert armijo.status == "ok", armijo.error
    assert armijo.curve[0]["w"] == pytest.approx(2 * 0.9**7, rel=1e-6)
    assert abs(armijo.curve[-1]["w"] - 1.0) < abs(armijo.curve[0]["w"] - 1.0)


def test_schedule_free_is_evaluated_at_its_average(toy):
    strategy = Strategy("schedule_free_sgd")
    result = train(RunConfig("lrkit_toy_workloads:quadratic", repr(strategy), 0.1))
    # the same run by hand: y is trained, x = opt.eval() is evaluated
    model = toy.Scalar()
    setup = strategy.build(model, lr=0.1, steps=8)
    xs, ys = [], []
    for _ in range(8):
        setup.optimizer.zero_grad()
        ((model.w - 1.0) ** 2).backward()
        setup.optimizer.step()
        ys.append(float(model.w.detach()))
        setup.optimizer.eval()
        xs.append(float(model.w.detach()))
        setup.optimizer.train()
    assert [e["w"] for e in result.curve] == pytest.approx(xs, rel=1e-6)
    assert xs != pytest.approx(ys, rel=1e-3)


def test_dog_is_evaluated_at_its_average_model(toy):
    toy.SEEN.clear()
    train(RunConfig("lrkit_toy_workloads:quadratic", "dog()", None))
    trained = [m for kind, m in toy.SEEN if kind == "model"]
    evaluated = {id(m) for kind, m in toy.SEEN if kind == "evaluate"}
    assert len(trained) == 1
    assert len(evaluated) == 1
    assert id(trained[0]) not in evaluated
    toy.SEEN.clear()
    train(RunConfig("lrkit_toy_workloads:quadratic", "dog(average=None)", None))
    assert {id(m) for _, m in toy.SEEN} == {id(toy.SEEN[0][1])}


@pytest.mark.parametrize(
    ("strategy", "lr"),
    [("schedule_free_adamw()", None), ("schedule_free_sgd()", 0.05), ("dog()", None)],
)
def test_evaluating_does_not_change_the_trajectory(toy, strategy, lr):
    often = train(RunConfig("lrkit_toy_workloads:bn_every_step", strategy, lr, steps=12))
    once = train(RunConfig("lrkit_toy_workloads:bn_at_the_end", strategy, lr, steps=12))
    assert often.status == once.status == "ok"
    assert len(often.curve) == 12
    assert len(once.curve) == 1
    last = {k: v for k, v in often.curve[-1].items() if k != "train_loss"}
    assert last == {k: v for k, v in once.curve[0].items() if k != "train_loss"}
    assert math.isfinite(last["mse"])


def test_schedule_free_recomputes_batchnorm_statistics_at_the_average(toy):
    strategy = Strategy("schedule_free_sgd")
    result = train(RunConfig("lrkit_toy_workloads:bn_at_the_end", repr(strategy), 0.05, seed=2))
    assert result.status == "ok"
    # by hand: 12 training steps, then the BatchNorm input's mean over 50 batches at x
    workload = toy.bn_at_the_end()
    model = workload.model(2)
    setup = strategy.build(model, lr=0.05, steps=12)
    stream = workload.batches(2, 1)
    for _ in range(12):
        setup.optimizer.zero_grad()
        workload.loss(model, next(stream)).backward()
        setup.optimizer.step()
    setup.optimizer.eval()
    fresh = workload.batches(2, 1)
    with torch.no_grad():
        means = [model[0](next(fresh)[0]).mean(0) for _ in range(50)]
    expected = float(torch.stack(means).mean(0).sum())
    assert result.curve[-1]["r"] == pytest.approx(expected, rel=1e-5)
    assert result.curve[-1]["r"] != pytest.approx(float(model[1].running_mean.sum()), rel=1e-3)


# --------------------------------------------------------------------------------------------
# the published accuracies (full budget, minutes of CPU)
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize(
    ("workload", "strategy", "lr"),
    [
        ("mnist1d_cnn", "adamw(schedule='cosine', warmup=0.05)", 3e-2),
        # the MLP overfits 4000 examples: more weight decay is the tuning it needs
        ("mnist1d_mlp", "adamw(schedule='cosine', warmup=0.05, weight_decay=0.1)", 3e-2),
    ],
)
def test_tuned_adamw_cosine_reaches_the_paper_accuracy(workload, strategy, lr):
    result = train(RunConfig(workload, strategy, lr))
    assert result.status == "ok", result.error
    assert result.steps_done == 6000
    reference = BUILTIN[workload]().reference
    assert reference is not None
    assert result.final["accuracy"] >= reference, result.final
