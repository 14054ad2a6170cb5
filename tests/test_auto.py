from __future__ import annotations

import copy
import importlib
import io
import math
import random
import sys
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import lrkit
from docexamples import page_blocks, run_example
from lrkit.auto_mode import (
    PROBE_STEPS,
    SCALE,
    Auto,
    auto,
    auto_optimizer,
    auto_schedule,
    probe_steps_for,
)
from lrkit.bench.config import RunConfig
from lrkit.bench.strategies import KINDS, Strategy, parse_strategy
from lrkit.bench.train import train
from lrkit.errors import SpecError, StateError
from lrkit.finder import RangeTest, suggest
from lrkit.optim import Prodigy
from testkit import one_thread_fixture

_one_thread = one_thread_fixture()


def _factor(k: int, steps: int, warmup: float = 0.0, final: float = 0.0) -> float:
    """The auto factor schedule written out from its formula (module docstring)."""
    w = round(warmup * steps)
    if k < w:
        return k / w
    t = min(k - w, steps - w)
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * t / max(1, steps - w)))


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))


def _cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv1d(1, 4, 3, padding=1),
        nn.BatchNorm1d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(24, 3),
    )


class _CharModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.rnn = nn.GRU(8, 8, batch_first=True)
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.embed(x))
        return self.head(out)


def _batch(model: nn.Module, gen: torch.Generator) -> torch.Tensor:
    if isinstance(model, _CharModel):
        x = torch.randint(0, 10, (4, 5), generator=gen)
        return model(x).logsumexp(-1).mean()
    if isinstance(model, nn.Sequential) and isinstance(model[0], nn.Conv1d):
        return model(torch.randn(4, 1, 6, generator=gen)).pow(2).mean()
    return model(torch.randn(4, 6, generator=gen)).pow(2).mean()


# --------------------------------------------------------------------------------------------
# the schedule
# --------------------------------------------------------------------------------------------
def test_default_schedule_at_named_steps():
    s = auto_schedule(100)  # no warmup: 100 updates of cosine decay
    assert s(0) == 1.0
    assert s(1) == pytest.approx(0.5 * (1 + math.cos(math.pi / 100)), abs=1e-15)
    assert s(50) == pytest.approx(0.5, abs=1e-15)
    assert s(99) == pytest.approx(0.5 * (1 + math.cos(math.pi * 99 / 100)), abs=1e-15)
    assert s(100) == 0.0
    assert s(1000) == 0.0
    for k in range(0, 130, 7):
        assert s(k) == pytest.approx(_factor(k, 100), abs=1e-12), k


def test_schedule_with_warmup_at_named_steps():
    s = auto_schedule(100, warmup_fraction=0.05)  # W = 5 warmup updates, then 95 of decay
    assert s(0) == 0.0
    assert s(1) == pytest.approx(0.2, abs=1e-15)
    assert s(4) == pytest.approx(0.8, abs=1e-15)
    assert s(5) == 1.0
    assert s(99) == pytest.approx(0.5 * (1 + math.cos(math.pi * 94 / 95)), abs=1e-15)
    assert s(100) == 0.0
    assert s(1000) == 0.0
    for k in range(0, 130, 7):
        assert s(k) == pytest.approx(_factor(k, 100, warmup=0.05), abs=1e-12), k


def test_schedule_options():
    s = auto_schedule(40, warmup_fraction=0.0, final=0.1)
    assert s(0) == 1.0
    assert s(20) == pytest.approx(0.1 + 0.9 * 0.5, abs=1e-15)
    assert s(40) == pytest.approx(0.1, abs=1e-15)
    tiny = auto_schedule(1, warmup_fraction=0.4)  # round(0.4) = 0 warmup updates
    assert tiny(0) == 1.0
    assert tiny(1) == 0.0


# --------------------------------------------------------------------------------------------
# building
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [lambda: nn.Linear(6, 3), _mlp, _cnn, _CharModel])
def test_builds_and_steps_for_several_model_types(make):
    torch.manual_seed(0)
    model = make()
    run = auto(model, steps=20)
    assert isinstance(run, Auto)
    assert isinstance(run.optimizer, Prodigy)
    assert isinstance(run.scheduler, lrkit.Scheduler)
    ids = {id(p) for g in run.optimizer.param_groups for p in g["params"]}
    assert ids == {id(p) for p in model.parameters()}
    group = run.optimizer.param_groups[0]
    assert group["weight_decay"] == 0.0
    assert group["decouple"] is True
    assert group["lr"] == 1.0  # no warmup: update 0 has the full factor
    before = [p.detach().clone() for p in model.parameters()]
    gen = torch.Generator().manual_seed(1)
    for k in range(5):
        assert run.optimizer.param_groups[0]["lr"] == pytest.approx(_factor(k, 20), abs=1e-15)
        run.zero_grad()
        _batch(model, gen).backward()
        run.step()
    assert run.steps_done == 5
    moved = [not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True)]
    assert any(moved)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_accepts_param_groups_and_the_factor():
    model = _mlp()
    groups = [
        {"params": model[0].parameters()},
        {"params": model[2].parameters(), "weight_decay": 0.0},
    ]
    run = auto(groups, steps=10, lr=0.5, warmup_fraction=0.0, weight_decay=0.1)
    assert [g["weight_decay"] for g in run.optimizer.param_groups] == [0.1, 0.0]
    assert [g["lr"] for g in run.optimizer.param_groups] == [0.5, 0.5]
    run.scheduler.step()
    expected = 0.5 * _factor(1, 10, warmup=0.0)
    assert run.optimizer.param_groups[1]["lr"] == pytest.approx(expected, abs=1e-15)


def test_equals_prodigy_with_the_formula_set_by_hand():
    """The same updates as Prodigy whose lr is set from the written-out formula each step."""
    torch.manual_seed(3)
    model_a = _mlp()
    model_b = copy.deepcopy(model_a)
    steps = 40
    run = auto(model_a, steps=steps)
    ref = Prodigy(model_b.parameters())  # the published defaults
    gen_a = torch.Generator().manual_seed(5)
    gen_b = torch.Generator().manual_seed(5)
    for k in range(steps):
        run.zero_grad()
        _batch(model_a, gen_a).backward()
        run.step()
        for group in ref.param_groups:
            group["lr"] = _factor(k, steps)
        ref.zero_grad()
        _batch(model_b, gen_b).backward()
        ref.step()
    for a, b in zip(model_a.parameters(), model_b.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert run.optimizer.info()["d"] > 1e-6  # the estimate grew from d0


def test_lrkit_auto_is_the_entry_point():
    model = nn.Linear(2, 1)
    run = lrkit.auto(model, steps=5)
    assert isinstance(run, Auto)
    assert run.steps == 5
    assert repr(run) == "Auto(steps=5, schedule=cosine(lr=1.0, steps=5))"


def test_lrkit_auto_before_the_module_is_imported(monkeypatch):
    """Through lrkit's lazy export; importing the module does not shadow the function."""
    monkeypatch.delitem(sys.modules, "lrkit.auto_mode")
    monkeypatch.delattr(lrkit, "auto")
    run = lrkit.auto(nn.Linear(2, 1), steps=3)
    assert type(run).__name__ == "Auto"
    assert run.steps == 3
    importlib.import_module("lrkit.auto_mode")
    assert lrkit.auto(nn.Linear(2, 1), steps=4).steps == 4


# --------------------------------------------------------------------------------------------
# argument checks
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"steps": 0}, ValueError, "steps must be an int >= 1, got 0"),
        ({"steps": 10.0}, TypeError, "steps must be an int, got 10.0"),
        ({"steps": True}, TypeError, "steps must be an int, got True"),
        ({"steps": 10, "lr": 0.0}, ValueError, "lr must be > 0"),
        ({"steps": 10, "warmup_fraction": 1.0}, ValueError, "warmup_fraction must be"),
        ({"steps": 10, "warmup_fraction": "0.1"}, TypeError, "warmup_fraction must be a real"),
        ({"steps": 10, "final": 1.5}, ValueError, "final must be"),
        ({"steps": 10, "weight_decay": -0.1}, ValueError, "weight_decay must be"),
        ({"steps": 10, "growth_rate": 0.5}, ValueError, "growth_rate"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, message):
    with pytest.raises(error, match=f"^{message}".replace("(", r"\(").replace(")", r"\)")):
        auto(nn.Linear(2, 1), **kwargs)


def test_steps_is_required_and_may_be_positional():
    with pytest.raises(TypeError):
        auto(nn.Linear(2, 1))  # type: ignore[call-arg]  # the budget is required
    assert auto(nn.Linear(2, 1), 10).steps == 10
    assert auto(nn.Linear(2, 1), steps=10).steps == 10


def test_no_parameters_is_refused():
    with pytest.raises(ValueError, match="empty parameter list"):
        auto_optimizer([])


# --------------------------------------------------------------------------------------------
# state
# --------------------------------------------------------------------------------------------
def _train(model: nn.Module, run: Auto, gen: torch.Generator, n: int) -> None:
    for _ in range(n):
        run.zero_grad()
        _batch(model, gen).backward()
        run.step()


def test_state_dict_round_trip_resumes_exactly():
    torch.manual_seed(7)
    steps = 30
    model = _mlp()
    start = copy.deepcopy(model)
    whole = auto(model, steps=steps)
    gen = torch.Generator().manual_seed(9)
    _train(model, whole, gen, steps)

    model_a = copy.deepcopy(start)
    first = auto(model_a, steps=steps)
    gen_a = torch.Generator().manual_seed(9)
    _train(model_a, first, gen_a, 13)
    buffer = io.BytesIO()
    torch.save({"model": model_a.state_dict(), "auto": first.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    model_b = copy.deepcopy(start)
    second = auto(model_b, steps=steps)
    model_b.load_state_dict(saved["model"])
    second.load_state_dict(saved["auto"])
    assert second.steps_done == 13
    assert second.optimizer.param_groups[0]["lr"] == pytest.approx(_factor(13, steps), abs=1e-15)
    _train(model_b, second, gen_a, steps - 13)
    for a, b in zip(model.parameters(), model_b.parameters(), strict=True):
        assert torch.equal(a, b)
    assert second.optimizer.info()["d"] == whole.optimizer.info()["d"]


def test_foreign_or_mismatched_state_is_refused():
    run = auto(nn.Linear(2, 1), steps=10)
    with pytest.raises(StateError, match=r"not from lrkit\.Auto"):
        run.load_state_dict(run.optimizer.state_dict())
    other = auto(nn.Linear(2, 1), steps=20).state_dict()
    with pytest.raises(StateError, match="steps=20, this Auto has steps=10"):
        run.load_state_dict(other)
    stale = dict(run.state_dict(), version=0)
    with pytest.raises(StateError, match="version 0"):
        run.load_state_dict(stale)


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------
def test_a_small_real_training_converges():
    """Softmax regression on separable blobs: no rate given, it fits the training set."""
    gen = torch.Generator().manual_seed(0)
    centers = 3.0 * torch.randn(4, 10, generator=gen)
    y = torch.arange(4).repeat(64)
    x = centers[y] + torch.randn(256, 10, generator=gen)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 4))
    loss_fn = nn.CrossEntropyLoss()
    steps = 150
    run = auto(model, steps=steps)
    with torch.no_grad():
        first = float(loss_fn(model(x), y))
    for _ in range(steps):
        idx = torch.randint(0, 256, (32,), generator=gen)
        run.zero_grad()
        loss_fn(model(x[idx]), y[idx]).backward()
        run.step()
    with torch.no_grad():
        final = float(loss_fn(model(x), y))
        accuracy = float((model(x).argmax(1) == y).float().mean())
    assert first > 1.0
    assert final < 0.05 * first
    assert accuracy == 1.0


# --------------------------------------------------------------------------------------------
# the bench strategy
# --------------------------------------------------------------------------------------------
def test_strategy_spec():
    assert "auto" in KINDS
    prodigy = parse_strategy(
        "auto(method='prodigy', warmup=0.0, weight_decay=0, growth_rate=1e999)"
    )
    assert repr(prodigy) == "auto(method='prodigy')"
    assert not prodigy.probes
    probing = parse_strategy("auto(warmup=0.05, weight_decay=0.01, method='range_test')")
    assert repr(probing) == "auto()"
    assert probing == Strategy("auto")
    assert probing.probes
    assert probing.options["weight_decay"] == 0.01
    assert probing.options["warmup"] == 0.05
    for strategy in (prodigy, probing):
        assert strategy.lr_is_factor
        assert strategy.default_lr == 1.0
    # an option at the other method's default is not a default here
    assert repr(Strategy("auto", method="prodigy", weight_decay=0.01)) == (
        "auto(method='prodigy', weight_decay=0.01)"
    )
    assert repr(Strategy("auto", warmup=0.0)) == "auto(warmup=0.0)"
    assert parse_strategy("auto(method='prodigy', final=0.1)") == Strategy(
        "auto", method="prodigy", final=0.1
    )
    assert repr(Strategy("auto", final=0.1)) == "auto(final=0.1)"
    assert prodigy.schedule(100) == auto_schedule(100)
    assert Strategy("auto", method="prodigy", warmup=0.1, final=0.2).schedule(50) == (
        auto_schedule(50, warmup_fraction=0.1, final=0.2)
    )
    # the probing method's schedule is laid out on what a full probe leaves (20 of 100)
    assert probing.schedule(100) == auto_schedule(80, warmup_fraction=0.05)
    with pytest.raises(ValueError, match="give steps >= 40"):
        probing.schedule(39)
    with pytest.raises(SpecError, match="auto takes no schedule"):
        parse_strategy("auto(schedule='cosine')")
    with pytest.raises(SpecError, match="weight_decay must be"):
        parse_strategy("auto(weight_decay=-1)")
    with pytest.raises(SpecError, match="method must be one of"):
        parse_strategy("auto(method='sgd')")


def test_strategy_builds_what_auto_builds():
    model = _mlp()
    setup = parse_strategy("auto(method='prodigy')").build(model, steps=60)
    run = auto(_mlp(), steps=60)
    assert isinstance(setup.optimizer, Prodigy)
    assert setup.scheduler is not None
    assert setup.schedule == run.schedule
    assert setup.averager is None
    mine = {k: v for k, v in setup.optimizer.defaults.items() if k != "params"}
    theirs = {k: v for k, v in run.optimizer.defaults.items() if k != "params"}
    assert mine == theirs


def test_strategy_runs_through_train():
    steps = 40
    result = train(RunConfig("logreg", "auto(method='prodigy')", lr=None, seed=0, steps=steps))
    assert result.status == "ok", result.error
    assert result.steps_done == steps
    assert result.curve[-1]["step"] == steps
    # the lr logged with an evaluation is the factor of the last update before it
    for entry in result.curve:
        k = int(entry["step"]) - 1
        assert entry["lr"] == pytest.approx(_factor(k, steps), abs=1e-12)
    assert result.curve[-1]["suboptimality"] < result.curve[0]["suboptimality"]


# --------------------------------------------------------------------------------------------
# the range-test method (with data)
# --------------------------------------------------------------------------------------------
def _blobs_model() -> nn.Module:
    torch.manual_seed(11)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 4))


def _blobs(n: int) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    """``n`` numbered batches ``(index, x, y)`` of four Gaussian blobs (a clean range test)."""
    gen = torch.Generator().manual_seed(4)
    centers = 2.0 * torch.randn(4, 8, generator=gen)
    out = []
    for k in range(n):
        y = torch.randint(0, 4, (64,), generator=gen)
        out.append((k, centers[y] + torch.randn(64, 8, generator=gen), y))
    return out


def _ce(model: nn.Module, batch: tuple[int, torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return nn.functional.cross_entropy(model(batch[1]), batch[2])


def _fit(model: nn.Module, step: Any, zero: Any, batches: Any, n: int) -> None:
    for _ in range(n):
        zero()
        _ce(model, next(batches)).backward()
        step()


def test_probe_steps_default():
    assert [probe_steps_for(t) for t in (1, 100, 200, 399, 500, 999, 1000, 6000)] == [
        20,
        20,
        20,
        39,
        50,
        99,
        100,
        100,
    ]
    assert probe_steps_for(10**6) == PROBE_STEPS


def test_range_test_method_picks_a_finite_rate_and_counts_the_probe():
    model = _blobs_model()
    batches = iter(_blobs(400))
    run = auto(model, 200, loss=_ce, batches=batches)
    assert run.method == "range_test"
    assert run.reason is None
    assert isinstance(run.probe, RangeTest)
    assert run.probe.steps == 20  # probe_steps_for(200)
    assert run.probe.start_lr == 1e-7
    assert run.probe.end_lr == 10.0
    assert run.probe.mode == "exp"
    assert run.probe_steps == len(run.probe) + (run.probe.stop_reason == "nonfinite")
    assert 0 < run.probe_steps <= 20
    assert run.steps == 200 - run.probe_steps
    assert run.budget == 200
    # the probe drew exactly its updates' batches; training goes on with the next one
    assert next(batches)[0] == run.probe_steps
    # the peak rate is the rule's suggestion on the probe, times SCALE (and the factor, 1)
    assert math.isfinite(run.lr)
    assert run.lr > 0
    assert run.lr == suggest.default(run.probe).lr * SCALE
    assert 1e-7 <= run.lr <= 10.0
    assert repr(run).startswith("Auto(method='range_test', lr=")


def test_range_test_method_builds_the_benchmark_adamw():
    """AdamW with the exact settings of adamw(schedule='cosine', warmup=0.05) at the peak rate."""
    model = _blobs_model()
    run = auto(model, 200, loss=_ce, batches=iter(_blobs(400)))
    assert type(run.optimizer) is torch.optim.AdamW
    bench = Strategy("adamw", schedule="cosine", warmup=0.05).build(
        _blobs_model(), lr=run.lr, steps=run.steps
    )
    mine = {k: v for k, v in run.optimizer.defaults.items() if k != "lr"}
    theirs = {k: v for k, v in bench.optimizer.defaults.items() if k != "lr"}
    assert mine == theirs
    assert run.optimizer.param_groups[0]["lr"] == 0.0  # update 0 of the warmup
    assert run.schedule == bench.schedule


def test_range_test_method_lr_sequence_is_warmup_cosine_over_the_rest():
    model = _blobs_model()
    batches = iter(_blobs(400))
    run = auto(model, 300, loss=_ce, batches=batches)
    rest = run.steps
    assert rest == 300 - run.probe_steps
    seen = []
    for _ in range(rest + 1):
        seen.append(run.optimizer.param_groups[0]["lr"])
        run.scheduler.step()
    expected = [run.lr * _factor(k, rest, warmup=0.05) for k in range(rest + 1)]
    assert seen == pytest.approx(expected, rel=1e-12, abs=1e-18)
    w = round(0.05 * rest)
    assert seen[0] == 0.0
    assert seen[w] == pytest.approx(run.lr, rel=1e-15)  # the peak after the warmup
    assert seen[rest] == 0.0


def test_the_probe_leaves_model_optimizer_and_generators_untouched():
    model = nn.Sequential(
        nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 4)
    )
    model.eval()  # a mode the probe must restore
    model[0].weight.grad = torch.ones_like(model[0].weight)
    values = {k: v.clone() for k, v in model.state_dict().items()}
    rng = (torch.get_rng_state(), np.random.get_state(), random.getstate())  # noqa: NPY002
    run = auto(model, 200, loss=_ce, batches=iter(_blobs(100)))
    assert run.method == "range_test"
    for key, value in model.state_dict().items():
        assert torch.equal(value, values[key]), key  # BatchNorm statistics included
    assert torch.equal(model[0].weight.grad, torch.ones_like(model[0].weight))
    assert model[0].bias.grad is None
    assert not any(m.training for m in model.modules())
    assert run.optimizer.state == {} or all(not s for s in run.optimizer.state.values())
    assert torch.equal(torch.get_rng_state(), rng[0])
    np_state = np.random.get_state()  # noqa: NPY002
    assert np_state[0] == rng[1][0]
    assert np.array_equal(np_state[1], rng[1][1])
    assert random.getstate() == rng[2]


def test_auto_trains_like_the_benchmark_adamw_from_the_same_start():
    """After the probe, auto's run is AdamW warmup+cosine at its rate, bit for bit."""
    data = _blobs(400)
    model_a = _blobs_model()
    model_b = copy.deepcopy(model_a)
    batches = iter(data)
    torch.manual_seed(21)  # the dropout masks of both runs start from here
    run = auto(model_a, 150, loss=_ce, batches=batches)
    _fit(model_a, run.step, run.zero_grad, batches, run.steps)

    strategy = Strategy("adamw", schedule="cosine", warmup=0.05)  # draws from torch's RNG
    torch.manual_seed(21)
    bench = strategy.build(model_b, lr=run.lr, steps=run.steps)
    assert bench.scheduler is not None
    sched = bench.scheduler

    def step() -> None:
        bench.optimizer.step()
        sched.step()

    _fit(model_b, step, bench.optimizer.zero_grad, iter(data[run.probe_steps :]), run.steps)
    for a, b in zip(model_a.parameters(), model_b.parameters(), strict=True):
        assert torch.equal(a, b)
    first = _ce(model_a.eval(), data[0]).item()
    assert first < _ce(_blobs_model().eval(), data[0]).item()  # it learned


def test_range_test_method_with_a_closure_and_a_factor():
    model = _blobs_model()
    batches = iter(_blobs(400))

    def closure() -> torch.Tensor:
        return _ce(model, next(batches))

    run = auto(model, 200, closure=closure)
    again = auto(_blobs_model(), 200, loss=_ce, batches=iter(_blobs(400)))
    assert run.method == "range_test"
    assert run.lr == again.lr  # the same curve either way
    half = auto(_blobs_model(), 200, loss=_ce, batches=iter(_blobs(400)), lr=0.5)
    assert half.lr == pytest.approx(0.5 * again.lr, rel=1e-15)
    small = auto(
        _blobs_model(),
        200,
        loss=_ce,
        batches=iter(_blobs(400)),
        probe_steps=30,
        weight_decay=0.0,
        warmup_fraction=0.0,
    )
    assert small.probe is not None
    assert small.probe.steps == 30
    assert small.optimizer.param_groups[0]["weight_decay"] == 0.0
    assert small.optimizer.param_groups[0]["lr"] == small.lr  # no warmup


def test_a_probe_without_a_usable_rate_falls_back_to_prodigy():
    model = _blobs_model()

    def nan_loss(m: nn.Module, batch: Any) -> torch.Tensor:
        return _ce(m, batch) * math.nan

    with pytest.warns(RuntimeWarning, match="no usable learning rate"):
        run = auto(model, 200, loss=nan_loss, batches=iter(_blobs(50)))
    assert run.method == "prodigy"
    assert isinstance(run.optimizer, Prodigy)
    assert run.reason is not None
    assert "not finite" in run.reason
    assert run.probe is not None
    assert run.probe.stop_reason == "nonfinite"
    assert run.probe_steps == 1  # the update whose loss was not finite
    assert run.steps == 199
    assert run.schedule == auto_schedule(199)
    assert run.optimizer.param_groups[0]["weight_decay"] == 0.0  # Prodigy's default

    def flat(m: nn.Module, batch: Any) -> torch.Tensor:
        return m(batch[1]).sum() * 0.0 + 1.0

    with pytest.warns(RuntimeWarning, match="never decreases"):
        run = auto(
            _blobs_model(),
            200,
            loss=flat,
            batches=iter(_blobs(50)),
            weight_decay=0.05,
        )
    assert run.method == "prodigy"
    assert run.reason is not None
    assert "never decreases" in run.reason
    assert run.probe_steps == 20
    assert run.optimizer.param_groups[0]["weight_decay"] == 0.05  # given, so kept


def test_a_probe_that_runs_out_of_batches_falls_back():
    with pytest.warns(RuntimeWarning, match="ran out"):
        run = auto(_blobs_model(), 200, loss=_ce, batches=iter(_blobs(3)))
    assert run.method == "prodigy"
    assert run.probe_steps == 3


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"loss": _ce}, TypeError, "loss and batches go together: batches is missing"),
        ({"batches": [1]}, TypeError, "loss and batches go together: loss is missing"),
        (
            {"loss": _ce, "batches": [1], "closure": lambda: torch.zeros(())},
            TypeError,
            "give either loss and batches, or closure, not both",
        ),
        ({"closure": 3}, TypeError, "closure must be callable"),
        ({"loss": 3, "batches": [1]}, TypeError, "loss must be callable"),
        ({"loss": _ce, "batches": 3}, TypeError, "batches must be an iterable"),
        ({"method": "range_test"}, TypeError, "method='range_test' needs data"),
        ({"method": "sgd"}, ValueError, "method must be one of"),
        ({"probe_steps": 30}, TypeError, "probe_steps needs data"),
        ({"loss": _ce, "batches": [1], "method": "prodigy"}, TypeError, "method='prodigy'"),
        ({"loss": _ce, "batches": [1], "probe_steps": 5}, ValueError, "probe_steps must be"),
        ({"loss": _ce, "batches": [1], "probe_steps": 2.0}, TypeError, "probe_steps must be"),
        ({"loss": _ce, "batches": [1], "growth_rate": 0.5}, ValueError, "growth_rate must be"),
        ({"loss": _ce, "batches": [1], "weight_decay": -1.0}, ValueError, "weight_decay must"),
    ],
)
def test_bad_data_arguments_are_named(kwargs, error, message):
    with pytest.raises(error, match=f"^{message}".replace("(", r"\(")):
        auto(_blobs_model(), 100, **kwargs)


def test_too_small_a_budget_to_probe_and_train_is_refused():
    with pytest.raises(ValueError, match=r"steps=39 is too small .* give steps >= 40"):
        auto(_blobs_model(), 39, loss=_ce, batches=_blobs(5))
    with pytest.raises(ValueError, match=r"give steps >= 60"):
        auto(_blobs_model(), 50, loss=_ce, batches=_blobs(5), probe_steps=30)


def test_data_needs_the_model_itself():
    model = _blobs_model()
    with pytest.raises(TypeError, match=r"pass the torch\.nn\.Module, got list"):
        auto(list(model.parameters()), 100, loss=_ce, batches=[1])


def test_range_test_state_resumes_exactly_without_probing_again():
    data = _blobs(400)
    budget = 160

    def whole_run(model: nn.Module) -> Auto:
        batches = iter(data)
        torch.manual_seed(2)
        run = auto(model, budget, loss=_ce, batches=batches)
        _fit(model, run.step, run.zero_grad, batches, run.steps)
        return run

    model_w = _blobs_model()
    whole = whole_run(model_w)

    model_a = _blobs_model()
    batches = iter(data)
    torch.manual_seed(2)
    first = auto(model_a, budget, loss=_ce, batches=batches)
    _fit(model_a, first.step, first.zero_grad, batches, 13)
    buffer = io.BytesIO()
    torch.save({"model": model_a.state_dict(), "auto": first.state_dict(), "rng": None}, buffer)
    rng = torch.get_rng_state()
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    model_b = _blobs_model()
    model_b.load_state_dict(saved["model"])
    second = Auto.from_state_dict(model_b, saved["auto"])
    assert (second.method, second.lr, second.steps) == ("range_test", first.lr, first.steps)
    assert second.probe_steps == first.probe_steps
    assert second.probe is None
    assert second.steps_done == 13
    assert second.optimizer.param_groups[0]["lr"] == first.optimizer.param_groups[0]["lr"]
    torch.set_rng_state(rng)
    _fit(model_b, second.step, second.zero_grad, batches, whole.steps - 13)
    for a, b in zip(model_w.parameters(), model_b.parameters(), strict=True):
        assert torch.equal(a, b)
    # loading into a run built the same way works too, and refuses another method
    third = Auto.from_state_dict(_blobs_model(), saved["auto"])
    third.load_state_dict(second.state_dict())
    assert third.steps_done == whole.steps
    with pytest.raises(StateError, match="method='range_test', this Auto has method='prodigy'"):
        auto(nn.Linear(8, 4), first.steps).load_state_dict(saved["auto"])


def test_prodigy_state_resumes_through_from_state_dict_and_reads_version_1():
    torch.manual_seed(7)
    steps = 30
    model = _mlp()
    start = copy.deepcopy(model)
    whole = auto(model, steps=steps)
    gen = torch.Generator().manual_seed(9)
    _train(model, whole, gen, steps)

    for version in (2, 1):
        model_a = copy.deepcopy(start)
        first = auto(model_a, steps=steps)
        gen_a = torch.Generator().manual_seed(9)
        _train(model_a, first, gen_a, 13)
        state = first.state_dict()
        if version == 1:  # what lrkit wrote before the range-test method existed
            state = {key: state[key] for key in ("format", "steps", "optimizer", "scheduler")} | {
                "version": 1
            }
        model_b = copy.deepcopy(start)
        model_b.load_state_dict(model_a.state_dict())
        second = Auto.from_state_dict(model_b, state)
        assert (second.method, second.lr, second.steps) == ("prodigy", 1.0, steps)
        _train(model_b, second, gen_a, steps - 13)
        for a, b in zip(model.parameters(), model_b.parameters(), strict=True):
            assert torch.equal(a, b)


def test_malformed_state_is_refused():
    with pytest.raises(StateError, match="version 7"):
        Auto.from_state_dict(nn.Linear(2, 1), {"format": "lrkit.Auto", "version": 7})
    state = auto(nn.Linear(2, 1), 10).state_dict()
    with pytest.raises(StateError, match="method 'sgd'"):
        Auto.from_state_dict(nn.Linear(2, 1), state | {"method": "sgd"})
    with pytest.raises(StateError, match="lr must be > 0"):
        Auto.from_state_dict(nn.Linear(2, 1), state | {"lr": -1.0})
    with pytest.raises(StateError, match="malformed"):
        Auto.from_state_dict(nn.Linear(2, 1), state | {"scheduler": {}})


# --------------------------------------------------------------------------------------------
# the docs
# --------------------------------------------------------------------------------------------
def test_module_doctests_pass():
    import doctest

    # the module in sys.modules (a test above imports it afresh)
    result = doctest.testmod(importlib.import_module("lrkit.auto_mode"))
    assert result.attempted >= 4
    assert result.failed == 0


DOC_BLOCKS = page_blocks("docs/auto.md")


def test_the_auto_docs_have_runnable_examples():
    assert len(DOC_BLOCKS) >= 2
    assert any("loss=loss, batches=stream" in block for block in DOC_BLOCKS)


@pytest.mark.parametrize("code", DOC_BLOCKS, ids=[f"auto.md[{i}]" for i in range(len(DOC_BLOCKS))])
def test_doc_example_runs_without_warnings(code, tmp_path, capsys):
    run_example(code, tmp_path)
    out = capsys.readouterr().out
    if "range_test" in code:
        assert out.startswith("range_test peak lr ")  # no fallback
        assert " 40 360\n" in out


def test_readme_quickstart_runs(tmp_path):
    from docexamples import page_blocks, run_example

    blocks = [b for b in page_blocks("README.md") if "lrkit.auto(" in b]
    assert len(blocks) == 1
    run_example(blocks[0], tmp_path)
