"""AMP: a step the GradScaler skips leaves every lrkit optimizer as it was, without a warning;
bf16 parameters train with every lrkit optimizer, global statistics stay in float32/64; Polyak
and Armijo train with bf16 autocast inside their closure, without a scaler."""

import copy
import math
import warnings

import pytest
import torch

import lrkit
from lrkit import optim
from lrkit.optim._base import GLOBAL

GRAD_OPTIMIZERS = {
    "ScheduleFreeSGD": lambda p: optim.ScheduleFreeSGD(p, lr=0.1),
    "ScheduleFreeAdamW": lambda p: optim.ScheduleFreeAdamW(p, lr=0.02),
    "Prodigy": optim.Prodigy,
    "DAdaptSGD": optim.DAdaptSGD,
    "DAdaptAdam": optim.DAdaptAdam,
    "DoG": optim.DoG,
    "LDoG": optim.LDoG,
}
CLOSURE_OPTIMIZERS = {"Polyak": optim.Polyak, "Armijo": optim.Armijo}


def _problem(dtype=torch.float32):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    model = model.to(dtype)
    x = torch.randn(64, 8).to(dtype)
    y = (x.float() @ torch.randn(8, 1)).to(dtype)
    return model, x, y


def _loss(model, x, y):
    return torch.nn.functional.mse_loss(model(x).float(), y.float())


def _same(a, b):
    """Equal nested state (tensors bit for bit, NaN equal to NaN)."""
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b) or bool(torch.isnan(a).all() and torch.isnan(b).all())
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(u, v) for u, v in zip(a, b, strict=True))
    return a == b


# Polyak takes the loss as step(loss=...), which GradScaler.step forwards (it refuses only a
# closure): the scaled loss goes to backward(), the unscaled one to the step.
SCALER_OPTIMIZERS = {**GRAD_OPTIMIZERS, "Polyak": lambda p: optim.Polyak(p, lr=0.5)}


def _scaler_step(scaler, opt, loss):
    scaler.scale(loss).backward()
    if isinstance(opt, optim.Polyak):
        scaler.step(opt, loss=loss.detach())
    else:
        scaler.step(opt)


@pytest.mark.parametrize("name", sorted(SCALER_OPTIMIZERS))
def test_a_step_skipped_by_the_grad_scaler_changes_nothing(name):
    model, x, y = _problem()
    opt = SCALER_OPTIMIZERS[name](model.parameters())
    sched = lrkit.Scheduler(opt, "cosine(lr=1.0, steps=10)", mode="factor")
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3):
            opt.zero_grad()
            _scaler_step(scaler, opt, _loss(model, x, y))
            scaler.update()
            sched.step()
        state = copy.deepcopy(opt.state_dict())
        params = [p.detach().clone() for p in model.parameters()]
        info = opt.info()
        # an overflow: the scaled loss is inf, every gradient inf or NaN
        opt.zero_grad()
        _scaler_step(scaler, opt, _loss(model, x, y) * float("inf"))
        scaler.update()
        sched.step()
    assert scaler.get_scale() == 2.0**7  # the scaler saw the overflow and skipped the step
    assert _same(opt.state_dict()["state"], state["state"])
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), params, strict=True))
    after = opt.info()
    assert {k: v for k, v in after.items() if "lr" not in k} == {
        k: v for k, v in info.items() if "lr" not in k
    }
    assert sched.steps_done == 4  # the schedule follows the step count, as torch's do
    # the next finite step trains on from the same state
    opt.zero_grad()
    _scaler_step(scaler, opt, _loss(model, x, y))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not all(torch.equal(p, q) for p, q in zip(model.parameters(), params, strict=True))


def _train(make, closure, dtype, steps=30):
    model, x, y = _problem(dtype)
    opt = make(model.parameters())
    losses = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(steps):
            opt.zero_grad()
            loss = _loss(model, x, y)
            loss.backward()
            losses.append(loss.item())
            if closure:
                opt.step(lambda: _loss(model, x, y))
            else:
                opt.step()
    return opt, model, losses


# With bf16 storage a weight moves only by more than half its ulp (2^-8 relative): the first
# steps of DoG (size reps_rel·(1+‖x_0‖)/‖g_0‖) and of Prodigy (size ≈ d0) are ~1e-6 with the
# defaults and round away, so ‖x_t − x_0‖ and Prodigy's numerator stay 0 and the step size
# never grows. A larger first step fixes it.
BF16_SETTINGS = {
    "Prodigy": lambda p: optim.Prodigy(p, d0=1e-3),
    "DoG": lambda p: optim.DoG(p, reps_rel=1e-2),
    "LDoG": lambda p: optim.LDoG(p, reps_rel=1e-2),
}


@pytest.mark.parametrize("name", sorted({**GRAD_OPTIMIZERS, **CLOSURE_OPTIMIZERS}))
def test_bf16_parameters_train_and_statistics_stay_wide(name):
    make = BF16_SETTINGS.get(name) or {**GRAD_OPTIMIZERS, **CLOSURE_OPTIMIZERS}[name]
    opt, model, losses = _train(make, name in CLOSURE_OPTIMIZERS, torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 and torch.isfinite(p).all() for p in model.parameters())
    assert losses[-1] < 0.5 * losses[0]
    glob = opt.state_dict()["state"][GLOBAL]
    wide = {torch.float32, torch.float64, torch.int64}
    assert all(v.dtype in wide for v in glob.values() if isinstance(v, torch.Tensor))


@pytest.mark.parametrize("name", sorted(BF16_SETTINGS))
def test_bf16_with_default_first_step_does_not_move(name):
    """Documents the failure above: with the defaults the bf16 weights never leave x_0."""
    _, _, losses = _train(GRAD_OPTIMIZERS[name], False, torch.bfloat16)
    assert losses[-1] > 0.99 * losses[0]


@pytest.mark.parametrize("name", sorted(GRAD_OPTIMIZERS))
def test_autocast_bf16_with_float32_parameters(name):
    model, x, y = _problem()
    opt = BF16_SETTINGS.get(name, GRAD_OPTIMIZERS[name])(model.parameters())
    first = None
    for _ in range(30):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = _loss(model, x, y)
        loss.backward()
        first = loss.item() if first is None else first
        opt.step()
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
    assert loss.item() < 0.5 * first


# --------------------------------------------------------------------------------------------
# Polyak and Armijo: autocast inside the closure (GradScaler.step refuses closures)
# --------------------------------------------------------------------------------------------
CLOSURE_SETTINGS = {
    "Polyak": lambda p: optim.Polyak(p, lr=0.5),
    "Armijo": lambda p: optim.Armijo(p, lr=1.0),
}


def _autocast_closure(opt, model, x, y):
    def closure():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = _loss(model, x, y)
        if torch.is_grad_enabled():  # Armijo evaluates its trial points under no_grad
            opt.zero_grad()
            loss.backward()
        return loss

    return closure


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", sorted(CLOSURE_SETTINGS))
def test_closure_optimizers_train_with_bf16_autocast_in_the_closure(name, dtype):
    model, x, y = _problem(dtype)
    opt = CLOSURE_SETTINGS[name](model.parameters())
    # min_lr: see test_armijo_step_too_small_for_bf16_fails_safely
    sched = lrkit.Scheduler(opt, "cosine(lr=1.0, steps=15, min_lr=0.1)", mode="factor")
    closure = _autocast_closure(opt, model, x, y)
    losses = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(15):
            loss = opt.step(closure)
            assert loss.dtype == torch.float32  # mse_loss runs in float32 under autocast
            losses.append(loss.item())
            sched.step()
    assert all(p.dtype == dtype and torch.isfinite(p).all() for p in model.parameters())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.5 * losses[0], losses
    info = opt.info()
    assert info["skipped"] == 0.0
    assert info.get("failed", 0.0) == 0.0
    assert all(math.isfinite(v) for v in info.values())
    glob = opt.state_dict()["state"][GLOBAL]
    assert all(v.dtype in {torch.float64, torch.int64} for v in glob.values())


@pytest.mark.parametrize("name", sorted(CLOSURE_SETTINGS))
def test_an_overflowing_closure_leaves_the_closure_optimizers_as_they_were(name):
    """An inf loss (and so inf/NaN gradients) at x_k: no update, the state kept, the next finite
    step trains on."""
    model, x, y = _problem()
    opt = CLOSURE_SETTINGS[name](model.parameters())
    closure = _autocast_closure(opt, model, x, y)
    for _ in range(3):
        opt.step(closure)
    state = copy.deepcopy(opt.state_dict()["state"][GLOBAL])
    params = [p.detach().clone() for p in model.parameters()]

    def overflow():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = _loss(model, x, y) * float("inf")
        opt.zero_grad()
        loss.backward()
        return loss

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step(overflow)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), params, strict=True))
    after = opt.state_dict()["state"][GLOBAL]
    counters = {"skipped", "evaluations"}
    assert _same(
        {k: v for k, v in after.items() if k not in counters},
        {k: v for k, v in state.items() if k not in counters},
    )
    assert opt.info()["skipped"] == 1.0
    opt.step(closure)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not all(torch.equal(p, q) for p, q in zip(model.parameters(), params, strict=True))


def test_armijo_rejects_a_trial_point_whose_loss_is_not_finite():
    """A trial step that overflows (inf or NaN loss) fails the Armijo condition like a loss that
    is too high: the search backtracks to a finite point; parameters and state stay finite."""
    w = torch.nn.Parameter(torch.tensor([3.0, -4.0]))
    opt = optim.Armijo([w], lr=4.0, c=0.5, beta=0.5)
    values = []

    def closure():
        loss = 0.5 * (w**2).sum()
        if torch.is_grad_enabled():
            opt.zero_grad()
            loss.backward()
        elif w.abs().max() > 1.0:  # the trial points η = 4 and 2 overflow
            loss = loss * (float("nan") if w.abs().max() > 10.0 else float("inf"))
        values.append(float(loss.detach()))
        return loss

    opt.step(closure)  # tries η = 4 (NaN), 2 (inf), 1: accepted, w = 0
    assert values[1:3] == [pytest.approx(math.nan, nan_ok=True), math.inf]
    assert w.tolist() == [0.0, 0.0]
    info = opt.info()
    assert (info["backtracks"], info["failed"], info["skipped"]) == (2.0, 0.0, 0.0)
    assert info["group0/effective_lr"] == 1.0
    assert all(math.isfinite(v) for v in info.values())


def test_armijo_step_too_small_for_bf16_fails_safely():
    """Under bf16 autocast the loss carries bf16 rounding, so a decrease far below it cannot be
    seen: the search runs to max_backtracks and rejects the step, parameters untouched. The same
    step size in float32 is accepted. (A schedule that takes η_max to 0 meets this at its end.)"""
    outcomes = {}
    for autocast in (True, False):
        model, x, y = _problem()
        opt = optim.Armijo(model.parameters(), lr=1e-5, max_backtracks=3)
        before = [p.detach().clone() for p in model.parameters()]
        make_closure = _autocast_closure if autocast else _plain
        opt.step(make_closure(opt, model, x, y))
        moved = not all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))
        info = opt.info()
        assert all(math.isfinite(v) for v in info.values())
        outcomes[autocast] = (info["failed"], info["backtracks"], moved)
    assert outcomes == {True: (1.0, 3.0, False), False: (0.0, 0.0, True)}


def _plain(opt, model, x, y):
    def closure():
        loss = _loss(model, x, y)
        if torch.is_grad_enabled():
            opt.zero_grad()
            loss.backward()
        return loss

    return closure
