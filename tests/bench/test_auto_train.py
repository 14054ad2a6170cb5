"""The probing ``auto()`` strategy in the trainer: the probe is counted in the budget."""

from __future__ import annotations

import dataclasses
import math
import sys
import textwrap

import pytest
import torch

from lrkit.auto_mode import auto_schedule
from lrkit.bench.config import RunConfig
from lrkit.bench.strategies import Strategy, parse_strategy
from lrkit.bench.train import train
from lrkit.bench.workloads import get_workload
from testkit import one_thread_fixture, same_result

TOY = """
import torch
from torch import nn
from lrkit.bench.workloads import Workload, seeded

SEEN = []


def _model(seed):
    with seeded(seed):
        return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def _batches(seed, batch_size):
    gen = torch.Generator().manual_seed(seed)
    centers = 2.0 * torch.randn(4, 8, generator=torch.Generator().manual_seed(99))
    k = 0
    while True:
        y = torch.randint(0, 4, (batch_size,), generator=gen)
        yield k, centers[y] + torch.randn(batch_size, 8, generator=gen), y
        k += 1


def _loss(model, batch):
    SEEN.append(batch[0])
    return nn.functional.cross_entropy(model(batch[1]), batch[2])


def _evaluate(model):
    SEEN.append("evaluate")
    x, y = next(_batches(1234, 256))[1:]
    return {"accuracy": float((model(x).argmax(1) == y).float().mean())}


def blobs():
    return Workload(
        name="blobs", model=_model, batches=_batches, loss=_loss, evaluate=_evaluate,
        metric="accuracy", higher_is_better=True, steps=200, batch_size=64, eval_every=25,
    )
"""


_one_thread = one_thread_fixture()


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    folder = tmp_path_factory.mktemp("toy_auto")
    (folder / "lrkit_toy_auto.py").write_text(textwrap.dedent(TOY))
    sys.path.insert(0, str(folder))
    import lrkit_toy_auto

    yield lrkit_toy_auto
    sys.path.remove(str(folder))


def test_the_probe_draws_from_the_run_stream_and_counts_in_the_budget(toy):
    toy.SEEN.clear()
    result = train(RunConfig("lrkit_toy_auto:blobs", "auto()", None, seed=0))
    assert result.status == "ok", result.error
    assert result.steps_done == 200
    batches = [b for b in toy.SEEN if b != "evaluate"]
    # probe and training together draw the budget's batches from the one stream, in order
    assert batches == list(range(200))
    # the curve's step numbers include the probe: before an evaluation at step s, exactly s
    # batches were drawn
    steps = [int(entry["step"]) for entry in result.curve]
    marks = [i for i, b in enumerate(toy.SEEN) if b == "evaluate"]
    assert [m - j for j, m in enumerate(marks)] == steps
    # the evaluations fall on the same updates as any strategy's, after the probe
    toy.SEEN.clear()
    other = train(RunConfig("lrkit_toy_auto:blobs", "auto(method='prodigy')", None, seed=0))
    assert other.status == "ok", other.error
    assert [b for b in toy.SEEN if b != "evaluate"] == list(range(200))  # no probe
    every = [int(entry["step"]) for entry in other.curve]
    assert every == list(range(25, 201, 25))
    assert steps == every[len(every) - len(steps) :]
    assert result.final["accuracy"] > 0.9
    assert result.wall_time > 0.0


def test_training_after_the_probe_follows_warmup_cosine_at_the_found_rate(toy):
    """The logged rates are those of auto's schedule over what the probe left."""
    workload = get_workload("lrkit_toy_auto:blobs")
    # the probe as the trainer runs it (same model, stream and seeding)
    torch.manual_seed(0)
    setup = Strategy("auto").build(
        workload.model(0), steps=200, loss=workload.loss, batches=workload.batches(0, 64)
    )
    probe = setup.probe_steps
    assert 0 < probe <= 20
    assert setup.schedule == auto_schedule(200 - probe, warmup_fraction=0.05)
    peak = setup.scheduler.base_lrs[0] if setup.scheduler is not None else math.nan
    result = train(RunConfig("lrkit_toy_auto:blobs", "auto()", None, seed=0))
    assert result.status == "ok", result.error
    assert [int(e["step"]) for e in result.curve] == list(range(25 * (probe // 25 + 1), 201, 25))
    assert setup.schedule is not None
    for entry in result.curve:
        k = int(entry["step"]) - 1 - probe  # the training update before the evaluation
        assert entry["lr"] == pytest.approx(peak * setup.schedule(k), rel=1e-12, abs=0.0)
    # the factor of the strategy multiplies the found rate
    half = train(RunConfig("lrkit_toy_auto:blobs", "auto()", 0.5, seed=0))
    assert half.status == "ok", half.error
    assert half.curve[-2]["lr"] == pytest.approx(0.5 * result.curve[-2]["lr"], rel=1e-12)


def test_auto_runs_are_deterministic_per_seed(toy):
    config = RunConfig("lrkit_toy_auto:blobs", "auto()", None, seed=1, steps=120)
    first = train(config)
    second = train(config)
    assert first.status == "ok", first.error
    assert same_result(first, second)
    other = train(dataclasses.replace(config, seed=2))
    assert other.curve != first.curve


@pytest.mark.parametrize("workload", ["digits_mlp", "logreg"])
def test_auto_on_builtin_workloads_is_deterministic(workload):
    config = RunConfig(workload, "auto()", None, seed=0, steps=120)
    first = train(config)
    assert first.status == "ok", first.error
    assert first.steps_done == 120
    assert same_result(first, train(config))


def test_auto_prodigy_method_is_the_old_auto():
    """auto(method='prodigy') is Prodigy with the cosine factor, as auto() was before."""
    a = train(RunConfig("digits_mlp", "auto(method='prodigy')", None, seed=0, steps=60))
    b = train(RunConfig("digits_mlp", "prodigy(schedule='cosine')", None, seed=0, steps=60))
    assert a.status == "ok", a.error
    assert same_result(a, b)


def test_a_probing_strategy_needs_data_and_room():
    model = torch.nn.Linear(3, 2)
    with pytest.raises(TypeError, match="probes the data before training"):
        parse_strategy("auto()").build(model, steps=100)
    with pytest.raises(ValueError, match="give steps >= 40"):
        parse_strategy("auto()").build(model, steps=39, loss=lambda m, b: b, batches=iter([]))
    assert not Strategy("adamw").probes
    assert Strategy("auto").probes
    assert not Strategy("auto", method="prodigy").probes


def test_a_failing_probe_fails_the_run_without_raising(toy):
    result = train(RunConfig("lrkit_toy_auto:blobs", "auto()", None, seed=0, steps=30))
    assert result.status == "failed"
    assert result.error is not None
    assert "give steps >= 40" in result.error
