from __future__ import annotations

import dataclasses
import math
import random
import re
import socket
import subprocess
import sys
import textwrap
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional

from lrkit.bench.workloads import (
    BUILTIN,
    Workload,
    builtin_workloads,
    charlm,
    classification_loss,
    classification_metrics,
    convex,
    digits,
    get_workload,
    mnist1d,
    seeded,
    tensor_batches,
)
from testkit import one_thread_fixture

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "my_workload.py"


_one_thread = one_thread_fixture()


@pytest.fixture(scope="module")
def mnist1d_offline() -> tuple[torch.Tensor, ...]:
    """Generate MNIST-1D once, with every network connection refused and seeded globals."""
    mnist1d.mnist1d_data.cache_clear()
    patch = pytest.MonkeyPatch()

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("MNIST-1D generation tried to reach the network")

    patch.setattr(socket.socket, "connect", refuse)
    _seed_globals(7)
    try:
        data = mnist1d.mnist1d_data()
        after = _draw_globals()
    finally:
        patch.undo()
    _seed_globals(7)
    assert after == _draw_globals(), "global random state was changed"
    return data


def _seed_globals(seed: int) -> None:
    """Seed the legacy global generators that mnist1d's make_dataset reseeds."""
    np.random.seed(seed)  # noqa: NPY002 - the legacy global is what is under test
    random.seed(seed)


def _draw_globals() -> tuple[float, float]:
    return np.random.rand(), random.random()  # noqa: NPY002 - the legacy global under test


# --------------------------------------------------------------------------------------------
# every built-in workload
# --------------------------------------------------------------------------------------------
def test_builtin_names_are_the_documented_five():
    assert builtin_workloads() == ("mnist1d_cnn", "mnist1d_mlp", "digits_mlp", "logreg", "char_lm")


@pytest.mark.parametrize("name", list(BUILTIN))
def test_builtin_workload_builds_trains_a_few_steps_and_evaluates(name, mnist1d_offline):
    workload = get_workload(name)
    assert isinstance(workload, Workload)
    assert workload.name == name
    assert workload.quick_steps is not None
    assert 1 <= workload.quick_steps < workload.steps

    model = workload.model(0)
    stream = workload.batches(0, workload.batch_size)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(3):
        opt.zero_grad()
        loss = workload.loss(model, next(stream))
        assert loss.ndim == 0
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(math.isfinite(v) for v in losses)
    model.eval()
    with torch.no_grad():
        metrics = workload.evaluate(model)
    assert workload.metric in metrics
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())


@pytest.mark.parametrize("name", list(BUILTIN))
def test_model_and_batches_depend_only_on_the_seed(name, mnist1d_offline):
    workload = get_workload(name)
    a, b, c = workload.model(3), workload.model(3), workload.model(4)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key])
    assert any(not torch.equal(v, c.state_dict()[k]) for k, v in a.state_dict().items())
    first = list(islice(workload.batches(5, workload.batch_size), 3))
    again = list(islice(workload.batches(5, workload.batch_size), 3))
    other = next(workload.batches(6, workload.batch_size))
    for x, y in zip(first, again, strict=True):
        assert all(torch.equal(u, v) for u, v in zip(x, y, strict=True))
    assert not torch.equal(first[0][0], other[0])
    assert len(first[0][0]) == workload.batch_size


def test_model_factories_leave_the_global_generator_alone():
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    get_workload("digits_mlp").model(0)
    assert torch.equal(torch.rand(3), expected)


def test_import_loads_no_data_package():
    code = (
        "import sys, lrkit.bench.workloads, lrkit.bench.strategies, lrkit.bench.train\n"
        "print(','.join(m for m in ('mnist1d', 'sklearn', 'matplotlib') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == ""


# --------------------------------------------------------------------------------------------
# MNIST-1D
# --------------------------------------------------------------------------------------------
def test_mnist1d_data_is_the_default_split_of_the_generator(mnist1d_offline):
    x, y, x_test, y_test = mnist1d_offline
    assert x.shape == (4000, 40)
    assert x_test.shape == (1000, 40)
    assert x.dtype == torch.float32
    assert y.dtype == torch.int64
    # make_dataset draws num_samples // 10 = 500 signals per digit before splitting
    counts = torch.bincount(torch.cat([y, y_test]), minlength=10)
    assert counts.tolist() == [500] * 10
    # the generator standardizes the whole set
    everything = torch.cat([x, x_test]).double()
    assert abs(float(everything.mean())) < 1e-6
    assert float(everything.std(unbiased=False)) == pytest.approx(1.0, abs=1e-6)


def test_mnist1d_cnn_is_the_repository_convbase():
    model = mnist1d.MNIST1DConvNet()
    c = 25
    expected = (1 * 5 * c + c) + 2 * (c * c * 3 + c) + (c * 5 * 10 + 10)
    assert sum(p.numel() for p in model.parameters()) == expected == 5210
    lengths = []
    for conv in (model.conv1, model.conv2, model.conv3):
        conv.register_forward_hook(lambda m, i, o: lengths.append(o.shape[-1]))
    assert model(torch.zeros(7, 40)).shape == (7, 10)
    assert lengths == [19, 10, 5]


def test_mnist1d_mlp_is_the_repository_mlpbase():
    model = mnist1d.MNIST1DMLP()
    assert sum(p.numel() for p in model.parameters()) == (40 * 100 + 100) + (100 * 100 + 100) + (
        100 * 10 + 10
    )
    x = torch.randn(4, 40)
    h = model.linear1(x).relu()
    expected = model.linear3(h + model.linear2(h).relu())
    assert torch.equal(model(x), expected)


def test_mnist1d_references_are_the_paper_figures():
    assert get_workload("mnist1d_cnn").reference == 0.94
    assert get_workload("mnist1d_mlp").reference == 0.68


# --------------------------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------------------------
def test_digits_split_is_a_fixed_partition_of_all_images():
    from sklearn.datasets import load_digits

    x, y, x_test, y_test = digits.digits_data()
    assert (len(x), len(x_test)) == (1437, 360)
    bunch = load_digits()
    joined = torch.cat([x, x_test]) * 16
    assert torch.equal(joined, joined.round())
    rows = sorted(map(tuple, joined.long().tolist()))
    assert rows == sorted(map(tuple, bunch.data.astype(int).tolist()))
    assert torch.bincount(torch.cat([y, y_test])).tolist() == np.bincount(bunch.target).tolist()


def test_a_missing_data_package_says_how_to_install_it(monkeypatch):
    digits.digits_data.cache_clear()
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ModuleNotFoundError, match=re.escape("pip install 'lrkit[bench]'")):
        digits.digits_data()
    monkeypatch.undo()
    digits.digits_data.cache_clear()
    assert len(digits.digits_data()[0]) == 1437


# --------------------------------------------------------------------------------------------
# logistic regression
# --------------------------------------------------------------------------------------------
def test_logreg_optimum_agrees_with_scikit_learn():
    from sklearn.linear_model import LogisticRegression

    x, y = convex.logistic_data()
    n = len(y)
    best, theta = convex.logistic_optimum()
    reference = LogisticRegression(
        C=1.0 / (n * convex.LAMBDA), tol=1e-14, max_iter=1000, solver="newton-cholesky"
    ).fit(x.numpy(), y.numpy())
    w = torch.tensor(reference.coef_[0])
    b = torch.tensor(reference.intercept_)
    assert float((w - theta[:-1]).abs().max()) < 1e-12
    assert float(b - theta[-1]) == pytest.approx(0.0, abs=1e-12)
    assert float(convex.logistic_objective(w, b, x, y)) - best == pytest.approx(0.0, abs=1e-15)


def test_logreg_optimum_has_zero_gradient_and_is_a_minimum():
    x, y = convex.logistic_data()
    best, theta = convex.logistic_optimum()
    t = theta.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(convex.logistic_objective(t[:-1], t[-1], x, y), t)
    assert float(grad.norm()) < 1e-13
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        moved = theta + 1e-4 * torch.randn(theta.shape, generator=gen, dtype=torch.float64)
        assert float(convex.logistic_objective(moved[:-1], moved[-1], x, y)) > best


def test_logreg_suboptimality_is_exactly_zero_at_the_optimum():
    workload = get_workload("logreg")
    _, theta = convex.logistic_optimum()
    model = workload.model(0)
    assert isinstance(model, nn.Linear)
    with torch.no_grad():
        model.weight.copy_(theta[:-1].reshape(1, -1))
        model.bias.copy_(theta[-1:])
        metrics = workload.evaluate(model)
    assert metrics["suboptimality"] == 0.0
    assert metrics["accuracy"] == pytest.approx(562 / 569)


def test_logreg_batch_loss_is_the_objective_on_the_batch():
    workload = get_workload("logreg")
    model = workload.model(1)
    xb, yb = next(workload.batches(0, 32))
    z = (xb @ model.weight.reshape(-1) + model.bias).detach()
    expected = torch.mean(torch.log1p(torch.exp(z)) - yb * z) + 0.5e-3 * model.weight.pow(2).sum()
    loss = workload.loss(model, (xb, yb)).detach()
    assert float(loss) == pytest.approx(float(expected.detach()), rel=1e-14)


# --------------------------------------------------------------------------------------------
# character language model
# --------------------------------------------------------------------------------------------
def test_char_vocabulary_and_encoding():
    assert len(charlm.VOCAB) == 96
    ids = charlm.encode("a\n é~\t")
    assert ids.tolist() == [
        charlm.VOCAB.index("a"),
        0,
        charlm.VOCAB.index(" "),
        96,
        charlm.VOCAB.index("~"),
        96,
    ]


def test_char_data_split_and_batches_predict_the_next_character():
    from pydoc_data.topics import topics

    train, valid = charlm.text_data()
    text = "".join(topics[k] for k in sorted(topics))
    assert len(train) == int(0.9 * len(text))
    assert len(train) + len(valid) == len(text)
    assert torch.equal(train[:50], charlm.encode(text[:50]))
    inputs, targets = next(get_workload("char_lm").batches(0, 4))
    assert inputs.shape == targets.shape == (4, 64)
    assert torch.equal(inputs[:, 1:], targets[:, :-1])


def test_char_transformer_is_causal():
    model = get_workload("char_lm").model(0).eval()
    ids = torch.randint(0, 97, (2, 20), generator=torch.Generator().manual_seed(0))
    changed = ids.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % 97
    with torch.no_grad():
        assert torch.equal(model(ids)[:, :10], model(changed)[:, :10])
        assert not torch.equal(model(ids)[:, 10:], model(changed)[:, 10:])


def test_char_bpc_is_the_loss_in_bits():
    workload = get_workload("char_lm")
    with torch.no_grad():
        metrics = workload.evaluate(workload.model(0).eval())
    assert metrics["bpc"] == metrics["loss"] / math.log(2.0)
    assert metrics["loss"] == pytest.approx(math.log(97), rel=0.1)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def test_tensor_batches_visit_each_example_once_per_epoch():
    x = torch.arange(12)
    y = -torch.arange(12)
    stream = tensor_batches(x, y, batch_size=4, seed=0)
    epochs = [[next(stream) for _ in range(3)] for _ in range(2)]
    for epoch in epochs:
        seen = torch.cat([xb for xb, _ in epoch])
        assert sorted(seen.tolist()) == list(range(12))
        assert all(torch.equal(yb, -xb) for xb, yb in epoch)
    assert not torch.equal(epochs[0][0][0], epochs[1][0][0])
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(epochs[0][0][0], torch.randperm(12, generator=gen)[:4])


def test_tensor_batches_leave_out_the_remainder_of_an_epoch():
    stream = tensor_batches(torch.arange(10), batch_size=4, seed=1)
    gen = torch.Generator().manual_seed(1)
    first, second = torch.randperm(10, generator=gen), torch.randperm(10, generator=gen)
    batches = [next(stream)[0] for _ in range(3)]
    assert torch.equal(batches[0], first[:4])
    assert torch.equal(batches[1], first[4:8])
    assert torch.equal(batches[2], second[:4])


@pytest.mark.parametrize(
    ("tensors", "batch_size", "error", "match"),
    [
        ((), 1, ValueError, "at least one tensor"),
        ((torch.zeros(3), torch.zeros(4)), 1, ValueError, "same length"),
        ((torch.zeros(3),), 4, ValueError, "batch_size must be <= the number of examples 3"),
        ((torch.zeros(3),), 0, ValueError, "batch_size must be an int >= 1, got 0"),
        ((torch.zeros(3),), 2.0, TypeError, "batch_size must be an int"),
    ],
)
def test_tensor_batches_refuse(tensors, batch_size, error, match):
    with pytest.raises(error, match=match):
        tensor_batches(*tensors, batch_size=batch_size, seed=0)


def test_classification_helpers_match_a_direct_computation():
    model = nn.Linear(3, 4)
    x = torch.randn(10, 3, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 0, 1])
    with torch.no_grad():
        logits = model(x)
        metrics = classification_metrics(model, x, y, chunk=3)
    assert metrics["accuracy"] == (logits.argmax(1) == y).sum().item() / 10
    assert metrics["loss"] == pytest.approx(float(functional.cross_entropy(logits, y)), rel=1e-6)
    loss = classification_loss(model, (x, y)).detach()
    assert float(loss) == pytest.approx(float(functional.cross_entropy(logits, y)), rel=1e-6)


def test_seeded_gives_the_same_weights_and_restores_the_stream():
    torch.manual_seed(5)
    expected = torch.rand(2)
    torch.manual_seed(5)
    with seeded(9):
        a = nn.Linear(2, 2).weight.detach().clone()
    assert torch.equal(torch.rand(2), expected)
    with seeded(9):
        assert torch.equal(nn.Linear(2, 2).weight, a)


# --------------------------------------------------------------------------------------------
# the Workload record
# --------------------------------------------------------------------------------------------
def _workload(**overrides: object) -> Workload:
    fields: dict[str, object] = {
        "name": "w",
        "model": lambda seed: nn.Linear(1, 1),
        "batches": lambda seed, bs: iter(()),
        "loss": lambda model, batch: torch.zeros(()),
        "evaluate": lambda model: {"m": 0.0},
        "metric": "m",
        "higher_is_better": False,
        "steps": 100,
        "batch_size": 8,
    }
    fields.update(overrides)
    return Workload(**fields)  # type: ignore[arg-type]


def test_workload_defaults_and_budgets():
    w = _workload(steps=1000)
    assert (w.quick_steps, w.eval_every, w.explode_factor) == (50, 50, 10.0)
    assert _workload(steps=7).quick_steps == 1
    assert w.budget() == 1000
    assert w.budget(30) == 30
    cnn = get_workload("mnist1d_cnn")
    assert cnn.eval_interval(6000) == 250
    assert cnn.eval_interval(400) == 17  # round(250 * 400 / 6000) = round(16.67)
    assert cnn.eval_interval(6) == 1
    assert cnn.eval_interval(12000) == 500


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        ({"name": ""}, TypeError, "name must be a non-empty str"),
        ({"metric": None}, TypeError, "metric must be a non-empty str"),
        ({"model": 3}, TypeError, "model must be callable"),
        ({"higher_is_better": 1}, TypeError, "higher_is_better must be a bool"),
        ({"steps": 0}, ValueError, "steps must be an int >= 1, got 0"),
        ({"batch_size": 2.5}, TypeError, "batch_size must be an int"),
        ({"quick_steps": 101}, ValueError, "quick_steps must be <= steps = 100, got 101"),
        ({"eval_every": 0}, ValueError, "eval_every must be an int >= 1, got 0"),
        ({"explode_factor": 1.0}, ValueError, "explode_factor must be > 1"),
        ({"reference": "high"}, TypeError, "reference must be a real number"),
        ({"description": None}, TypeError, "description must be a str"),
    ],
)
def test_workload_refuses(overrides, error, match):
    with pytest.raises(error, match=re.escape(match)):
        _workload(**overrides)


def test_workload_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        _workload().steps = 3  # type: ignore[misc]


# --------------------------------------------------------------------------------------------
# loading user workloads
# --------------------------------------------------------------------------------------------
def test_unknown_builtin_suggests_the_closest():
    with pytest.raises(
        ValueError, match=r"unknown workload 'mnist1d_cn'; did you mean 'mnist1d_cnn'\?"
    ):
        get_workload("mnist1d_cn")


def test_name_must_be_a_str():
    with pytest.raises(TypeError, match="workload must be a str, got int"):
        get_workload(3)  # type: ignore[arg-type]


def test_example_file_loads_by_path_and_by_module(monkeypatch):
    by_path = get_workload(f"{EXAMPLE}:sine_regression")
    assert by_path.name == "sine_regression"
    monkeypatch.syspath_prepend(str(EXAMPLE.parent))
    by_module = get_workload("my_workload:sine_regression")
    assert (by_module.metric, by_module.higher_is_better, by_module.steps) == ("mse", False, 2000)


def test_example_is_embedded_verbatim_in_the_docs():
    doc = (ROOT / "docs" / "workloads.md").read_text()
    assert f"```python\n{EXAMPLE.read_text()}```" in doc


def _module(tmp_path: Path, name: str, body: str) -> None:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))


@pytest.fixture
def user_modules(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    _module(
        tmp_path,
        "wl_user_ok",
        """
        from lrkit.bench.workloads import get_workload
        def make():
            return get_workload("digits_mlp")
        def boom():
            raise ZeroDivisionError("no\\nway")
        def wrong():
            return {"name": "x"}
        NOT_CALLABLE = 3
        """,
    )
    _module(tmp_path, "wl_user_broken", "import a_module_that_is_not_there_xyz\n")
    _module(tmp_path, "wl_user_raises", "raise RuntimeError('at import')\n")
    return tmp_path


def test_user_function_is_called(user_modules):
    assert get_workload("wl_user_ok:make").name == "digits_mlp"


@pytest.mark.parametrize(
    ("name", "error", "match"),
    [
        ("no_such_module_abc:make", ValueError, "workload module 'no_such_module_abc' not found"),
        ("wl_user_ok:mkae", ValueError, "has no function 'mkae'; did you mean 'make'?"),
        (
            "wl_user_ok:NOT_CALLABLE",
            TypeError,
            "workload 'wl_user_ok:NOT_CALLABLE' is not callable",
        ),
        ("wl_user_ok:boom", ValueError, "'wl_user_ok:boom' raised ZeroDivisionError: no way"),
        ("wl_user_ok:wrong", TypeError, "must return an lrkit.bench.workloads.Workload, got dict"),
        (
            "wl_user_broken:make",
            ValueError,
            "importing workload module 'wl_user_broken' failed: ModuleNotFoundError",
        ),
        ("wl_user_raises:make", ValueError, "failed: RuntimeError: at import"),
        ("wl_user_ok:", ValueError, "must have the form 'module:function'"),
        (":make", ValueError, "must have the form 'module:function'"),
        ("a-b:make", ValueError, "is not a dotted module name"),
        ("missing_file.py:make", ValueError, "workload file 'missing_file.py' not found"),
    ],
)
def test_user_workload_errors_are_one_line_and_name_the_thing(user_modules, name, error, match):
    with pytest.raises(error, match=re.escape(match)) as info:
        get_workload(name)
    assert "\n" not in str(info.value)


def test_a_raising_function_chains_its_exception(user_modules):
    with pytest.raises(ValueError, match="raised") as info:
        get_workload("wl_user_ok:boom")
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_a_file_that_fails_to_import_can_be_fixed_and_loaded(tmp_path):
    path = tmp_path / "fixable.py"
    path.write_text("raise RuntimeError('not yet')\n")
    with pytest.raises(ValueError, match=r"importing workload file .* failed: RuntimeError"):
        get_workload(f"{path}:make")
    path.write_text(
        "from lrkit.bench.workloads import get_workload\n"
        "def make():\n    return get_workload('logreg')\n"
    )
    assert get_workload(f"{path}:make").name == "logreg"
