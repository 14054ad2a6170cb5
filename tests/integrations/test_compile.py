"""torch.compile: a compiled training step with lrkit's Scheduler does not recompile as the rate
changes, and computes what the eager step computes.

The step compiles once, then once more when the optimizer state is created (step 1); the frame
count then stays fixed over steps 2..9 while the cosine schedule sets a new ``lr`` each step.
``zero_grad(set_to_none=False)`` keeps the ``.grad`` tensors alive (with ``set_to_none=True`` the
guards on the freed gradients fail at every step, whatever the optimizer).
"""

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

import lrkit
from lrkit import optim

STEPS = 10
OPTIMIZERS = {
    "Prodigy": optim.Prodigy,
    "DAdaptSGD": optim.DAdaptSGD,
    "DAdaptAdam": optim.DAdaptAdam,
    "DoG": optim.DoG,
    "LDoG": optim.LDoG,
    "torch.SGD(lr=tensor)": lambda p: torch.optim.SGD(p, lr=torch.tensor(0.1)),
    "Polyak(loss=)": lambda p: optim.Polyak(p, lr=5.0),
}
# Recompiles at every change of lr: dynamo specializes the Python float lr where it cannot turn
# it into a tensor (torch's SGD: add_(alpha=-lr)); a tensor lr, which lrkit.Scheduler fills in
# place, avoids it.
RECOMPILES = {
    "torch.SGD(lr=float)": lambda p: torch.optim.SGD(p, lr=0.1),
}
# torch 2.13 drops the in-place update of a 0-dim float64 CPU tensor inside a compiled function
# (``s.add_(1)`` leaves ``s`` unchanged; float32 or shape (1,) are kept), so Schedule-Free keeps
# its step count, lr_max and weight sum as shape-(1,) float64 tensors. Without warmup its lr is
# ``lr * ones_like(t)`` (``full_like(t, lr)`` would specialize lr and recompile at each rate).
SCHEDULE_FREE = {
    "ScheduleFreeSGD": lambda p: optim.ScheduleFreeSGD(p, lr=0.1, warmup_steps=2),
    "ScheduleFreeAdamW": lambda p: optim.ScheduleFreeAdamW(p, lr=0.02, warmup_steps=2),
    "ScheduleFreeSGD(warmup_steps=0)": lambda p: optim.ScheduleFreeSGD(p, lr=0.1),
}


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()  # each test starts from empty caches and recompile limits
    yield
    torch._dynamo.reset()


def _run(make, backend):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    x, y = torch.randn(32, 6), torch.randn(32, 1)
    opt = make(model.parameters())
    sched = lrkit.Scheduler(opt, f"cosine(lr=1.0, steps={STEPS})", mode="factor")

    def loss_fn():
        return torch.nn.functional.mse_loss(model(x), y)

    def step():
        opt.zero_grad(set_to_none=False)
        loss = loss_fn()
        loss.backward()
        opt.step(**({"loss": loss} if isinstance(opt, optim.Polyak) else {}))
        return loss

    counter = None
    if backend is not None:
        counter = CompileCounterWithBackend(backend)
        step = torch.compile(step, backend=counter)
    frames, lrs = [], []
    for _ in range(STEPS):
        lrs.append(float(opt.param_groups[0]["lr"]))
        step()
        sched.step()
        frames.append(None if counter is None else counter.frame_count)
    return model, frames, lrs


def _check(make, backend, rtol):
    model, frames, lrs = _run(make, backend)
    eager, _, eager_lrs = _run(make, None)
    assert len(set(lrs)) == STEPS  # every step had its own rate
    assert lrs == eager_lrs
    assert frames[2:] == [frames[1]] * (STEPS - 2), frames  # no recompile after step 1
    for p, q in zip(model.parameters(), eager.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=rtol, atol=rtol)
    return frames


def test_dog_compiled_step_does_not_recompile_as_lr_changes():
    frames = _check(OPTIMIZERS["DoG"], "aot_eager", 1e-6)
    assert frames[1] <= 8


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(OPTIMIZERS) - {"DoG"}))
def test_compiled_step_does_not_recompile_as_lr_changes(name):
    _check(OPTIMIZERS[name], "aot_eager", 1e-6)


@pytest.mark.slow
def test_inductor_matches_eager():
    _check(OPTIMIZERS["DAdaptAdam"], "inductor", 1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SCHEDULE_FREE))
def test_schedule_free_compiled_matches_eager(name):
    _check(SCHEDULE_FREE[name], "aot_eager", 1e-6)


def test_schedule_free_compiled_steps_advance_the_group_scalars():
    """Ten compiled steps leave the step count, lr_max and weight sum where ten eager steps do."""
    infos, weights = [], []
    for backend in ("aot_eager", None):
        torch._dynamo.reset()
        w = torch.nn.Parameter(torch.linspace(-1.0, 1.0, 4))
        opt = optim.ScheduleFreeSGD([w], lr=0.1, warmup_steps=4)

        def step(w=w, opt=opt):
            opt.zero_grad(set_to_none=False)
            (w**2).sum().backward()
            opt.step()

        if backend is not None:
            step = torch.compile(step, backend=backend)
        for _ in range(STEPS):
            step()
        infos.append(opt.info())
        weights.append(w.detach().clone())
    compiled, eager = infos
    # γ_t = 0.025, 0.05, 0.075, then 0.1 for seven steps; w_t = γ_max² (r = 0, p = 2)
    assert compiled["group0/step"] == 10.0
    assert compiled["group0/lr_max"] == 0.1
    assert compiled["group0/weight_sum"] == pytest.approx(
        0.025**2 + 0.05**2 + 0.075**2 + 7 * 0.1**2, rel=1e-12
    )
    assert compiled == pytest.approx(eager, rel=1e-12)
    torch.testing.assert_close(weights[0], weights[1], rtol=1e-6, atol=1e-6)


def test_torch_keeps_no_in_place_update_of_a_0dim_float64_cpu_tensor():
    """The torch behaviour that makes Schedule-Free keep its scalars in shape (1,), not ()."""
    kept = {}
    for dtype in (torch.float64, torch.float32):
        torch._dynamo.reset()
        count = torch.zeros((), dtype=dtype)

        def bump(x, count=count):
            count.add_(1)
            return x * 2

        compiled = torch.compile(bump, backend="aot_eager")
        for _ in range(3):
            compiled(torch.ones(2))
        kept[dtype] = float(count)
    assert kept == {torch.float64: 0.0, torch.float32: 3.0}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(RECOMPILES))
def test_float_lr_specialization_recompiles(name):
    _, frames, _ = _run(RECOMPILES[name], "aot_eager")
    assert frames[5] - frames[1] >= 4, frames  # a new frame for each new rate


# --------------------------------------------------------------------------------------------
# Polyak and Armijo: step(closure) called eagerly, the closure calls compiled code
# --------------------------------------------------------------------------------------------
# lr = 20 with Polyak: the capped and the uncapped ratio both occur. Armijo starts each search
# from twice the last step size (reset 2 with n/b = 1, γ = 2) and c = 0.5, β = 0.5: it
# backtracks in several steps, by different amounts.
CLOSURE_OPTIMIZERS = {
    "Polyak": lambda p: optim.Polyak(p, lr=20.0),
    "Armijo": lambda p: optim.Armijo(p, lr=4.0, c=0.5, beta=0.5, n_batches_per_epoch=1),
}


def _run_closure(make, backend, compiled):
    """Ten ``opt.step(closure)`` with a cosine schedule; ``compiled`` names what is compiled:
    ``"loss"`` (the forward and the loss), ``"closure"`` (forward, loss and backward) or
    ``"step"`` (the whole ``opt.step(closure)``)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    x, y = torch.randn(32, 6), torch.randn(32, 1)
    opt = make(model.parameters())
    sched = lrkit.Scheduler(opt, f"cosine(lr=1.0, steps={STEPS})", mode="factor")
    counter = None if backend is None else CompileCounterWithBackend(backend)

    def loss_fn():
        return torch.nn.functional.mse_loss(model(x), y)

    if counter is not None and compiled == "loss":
        loss_fn = torch.compile(loss_fn, backend=counter)

    def closure():
        loss = loss_fn()
        if torch.is_grad_enabled():  # Armijo's trial points are evaluated under no_grad
            opt.zero_grad()
            loss.backward()
        return loss

    if counter is not None and compiled == "closure":
        closure = torch.compile(closure, backend=counter)

    def step():
        return opt.step(closure)

    if counter is not None and compiled == "step":
        step = torch.compile(step, backend=counter)
    frames, infos = [], []
    for _ in range(STEPS):
        step()
        sched.step()
        frames.append(None if counter is None else counter.frame_count)
        infos.append(opt.info())
    return model, frames, infos


def _check_closure(name, compiled):
    model, frames, infos = _run_closure(CLOSURE_OPTIMIZERS[name], "aot_eager", compiled)
    eager, _, eager_infos = _run_closure(CLOSURE_OPTIMIZERS[name], None, compiled)
    assert len({i["group0/lr"] for i in infos}) == STEPS  # a new rate at every step
    sizes = [i["group0/effective_lr"] for i in infos]
    assert len(set(sizes)) >= STEPS - 2  # and the step size moves
    for info, eager_info in zip(infos, eager_infos, strict=True):
        assert info == pytest.approx(eager_info, rel=1e-6)
    for p, q in zip(model.parameters(), eager.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6)
    return frames, infos


@pytest.mark.parametrize("name", sorted(CLOSURE_OPTIMIZERS))
def test_closure_optimizer_with_a_compiled_loss_does_not_recompile(name):
    frames, infos = _check_closure(name, "loss")
    # one frame with gradients; Armijo adds one for its trial points (run under no_grad)
    assert frames == [1 if name == "Polyak" else 2] * STEPS, frames
    if name == "Polyak":
        ratios = [i["polyak_step"] for i in infos]
        caps = [i["group0/lr"] for i in [{"group0/lr": 20.0}, *infos[:-1]]]
        assert any(r < c for r, c in zip(ratios, caps, strict=True))  # uncapped steps
        assert any(r > c for r, c in zip(ratios, caps, strict=True))  # capped steps
    else:
        backtracks = [i["backtracks"] for i in infos]
        assert len(set(backtracks)) >= 3, backtracks
        assert sum(backtracks) >= 5, backtracks
        assert infos[-1]["failed"] == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CLOSURE_OPTIMIZERS))
def test_closure_optimizer_with_a_compiled_closure_does_not_recompile(name):
    """Forward, loss and backward compiled together in the closure; the step stays eager."""
    frames, _ = _check_closure(name, "closure")
    assert frames == [1 if name == "Polyak" else 2] * STEPS, frames


def test_polyak_compiled_whole_step_with_a_closure_does_not_recompile():
    """``torch.compile(lambda: opt.step(closure))``: one more frame when the state is created
    (step 1), then none while the cap changes at every step: the cap enters the graph as
    ``ones * lr``, a tensor input (``clamp(max=lr)`` made dynamo specialize on each value)."""
    frames, _ = _check_closure("Polyak", "step")
    assert frames[1:] == [frames[1]] * (STEPS - 1), frames
    assert frames[1] <= 4


@pytest.mark.slow
def test_armijo_compiled_whole_step_recompiles_with_the_step_size():
    """Why Armijo's ``opt.step`` stays eager: its line search reads each trial loss on the host
    (a graph break) and the trial step size ``φ · lr`` is a Python float dynamo specializes on,
    so new step sizes keep compiling new frames. The numbers still equal the eager run."""
    frames, _ = _check_closure("Armijo", "step")
    assert frames[5] - frames[1] >= 8, frames
