"""The compiled fast path (``fused=True``) of the Adam-family optimizers.

Every kernel of :mod:`lrkit.optim._compiled` must give the results of its optimizer's loop path.
Most tests run the kernels through ``torch.compile``'s ``"eager"`` backend, which traces and
guards as inductor's does but generates no code: they check the kernels' equations (float64,
to 1e-12) and the plumbing (flattening, probes, routing, fallback, checkpoints, recompiles)
in seconds. The tests that compile with inductor skip when it cannot compile here; all but one
are marked slow (each compile takes seconds, tens of seconds with an empty inductor cache).
The test models are tiny, so the kernels are told to take tensors of any size (in use they
leave tensors under 64K elements to the optimizer's own path).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from lrkit.optim import DAdaptAdam, DAdaptSGD, Prodigy, ScheduleFreeAdamW, ScheduleFreeSGD
from lrkit.optim import _compiled as fast

Config = tuple[type[torch.optim.Optimizer], dict[str, Any], tuple[fast.CompiledKernel, ...]]

# name -> (class, keyword arguments, the kernels a fused step runs)
CONFIGS: dict[str, Config] = {
    "sf-adamw": (
        ScheduleFreeAdamW,
        {"lr": 0.01, "weight_decay": 0.1, "warmup_steps": 5},
        (fast.SCHEDULE_FREE,),
    ),
    "sf-sgd": (ScheduleFreeSGD, {"lr": 0.01, "weight_decay": 0.1}, (fast.SCHEDULE_FREE,)),
    "prodigy": (Prodigy, {}, (fast.PRODIGY_STATS, fast.PRODIGY_UPDATE)),
    "prodigy-decoupled": (
        Prodigy,
        {"weight_decay": 0.1, "use_bias_correction": True},
        (fast.PRODIGY_STATS, fast.PRODIGY_UPDATE),
    ),
    "prodigy-coupled-beta1=0": (
        Prodigy,
        {"weight_decay": 0.1, "decouple": False, "betas": (0.0, 0.99)},
        (fast.PRODIGY_STATS, fast.PRODIGY_UPDATE),
    ),
    "dadapt-adam": (DAdaptAdam, {}, (fast.DADAPT_ADAM,)),
    "dadapt-adam-coupled": (DAdaptAdam, {"weight_decay": 0.1}, (fast.DADAPT_ADAM,)),
    "dadapt-adam-decoupled": (
        DAdaptAdam,
        {"weight_decay": 0.1, "decouple": True},
        (fast.DUAL_ADAM_STATS, fast.ADAM_UPDATE),
    ),
    "dadapt-adam-beta1=0-bias-correction": (
        DAdaptAdam,
        {"betas": (0.0, 0.999), "use_bias_correction": True},
        (fast.DADAPT_ADAM,),
    ),
}
NAMES = list(CONFIGS)

# Sizes 0 and 1 take the optimizer's own path, the others the compiled kernel.
SHAPES = [(7, 5), (5,), (33, 7), (1,), (0, 3), (3, 4, 5)]


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _fresh_kernels(
    monkeypatch: pytest.MonkeyPatch, *, backend: str | None, native: bool
) -> Iterator[None]:
    """Every kernel reset, for tensors of any size, with ``backend`` (``None``: inductor) behind
    the native kernels (or instead of them, ``native=False``); reset again afterwards."""
    torch._dynamo.reset()
    for kernel in fast.KERNELS:
        if backend is not None:
            monkeypatch.setattr(kernel, "backend", backend)
        monkeypatch.setattr(kernel, "min_numel", 2)
        monkeypatch.setattr(kernel.native, "enabled", native)
        kernel.reset()
    yield
    for kernel in fast.KERNELS:
        kernel.reset()
    torch._dynamo.reset()


@pytest.fixture
def eager_kernels(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every kernel compiled from scratch by the ``"eager"`` backend, for tensors of any size."""
    yield from _fresh_kernels(monkeypatch, backend="eager", native=False)


@pytest.fixture
def inductor_kernels(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every kernel compiled from scratch by inductor (its on-disk cache still serves), for
    tensors of any size."""
    yield from _fresh_kernels(monkeypatch, backend=None, native=False)


@pytest.fixture
def native_kernels(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The native kernels, skipped where they cannot be built; behind them the kernels compiled
    by the ``"eager"`` backend, for tensors of any size."""
    if fast.native.library.get() is None:
        pytest.skip(f"the native kernels cannot be built here: {fast.native.library.failure}")
    yield from _fresh_kernels(monkeypatch, backend="eager", native=True)


def make_params(
    dtype: torch.dtype, shapes: list[tuple[int, ...]] | None = None
) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [
        torch.nn.Parameter(torch.randn(s, generator=gen, dtype=dtype)) for s in shapes or SHAPES
    ]


def build(name: str, params: list[torch.Tensor], **overrides: Any) -> torch.optim.Optimizer:
    """The configured optimizer over two param groups, the second at half the group lr."""
    cls, kwargs, _ = CONFIGS[name]
    kwargs = {**kwargs, **overrides}
    lr = kwargs.pop("lr", 1.0)
    cut = len(params) // 2
    param_groups = [{"params": params[:cut]}, {"params": params[cut:], "lr": lr / 2}]
    return cls(param_groups, lr=lr, **kwargs)


def train(opt: torch.optim.Optimizer, params: list[torch.Tensor], steps: int) -> None:
    """``steps`` steps on gradients ``p + noise`` (a noisy quadratic), alike on every path."""
    train_from(opt, params, start=0, stop=steps)


def train_from(
    opt: torch.optim.Optimizer, params: list[torch.Tensor], *, start: int, stop: int
) -> None:
    """Steps ``start`` to ``stop - 1`` of :func:`train`'s sequence of gradients."""
    gen = torch.Generator().manual_seed(1)
    for step in range(stop):
        for p in params:
            noise = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            if step >= start:
                p.grad = p.detach() + noise
        if step >= start:
            opt.step()


def rel_err(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """The largest ``max|a - b| / max|b|`` over the tensors (empty tensors count 0)."""
    out = 0.0
    for x, y in zip(a, b, strict=True):
        if y.numel():
            diff = (x.detach() - y.detach()).abs().max() / y.detach().abs().max()
            out = max(out, float(diff))
    return out


def run_paths(
    name: str, dtype: torch.dtype, steps: int, **paths: dict[str, Any]
) -> dict[str, list[torch.Tensor]]:
    """The params after ``steps`` steps on each path (keyword: name -> optimizer arguments)."""
    out = {}
    for path, flags in paths.items():
        params = make_params(dtype)
        train(build(name, params, **flags), params, steps)
        out[path] = params
    return out


def float32_errors(name: str) -> tuple[float, float]:
    """The fused and the foreach paths' distance to the loop path after 120 float32 steps."""
    out = run_paths(
        name,
        torch.float32,
        120,
        fused={"fused": True},
        loop={"foreach": False},
        foreach={"foreach": True},
    )
    return rel_err(out["fused"], out["loop"]), rel_err(out["foreach"], out["loop"])


def skip_if_not_compiled(record: list[warnings.WarningMessage]) -> None:
    """Skip when an optimizer reported that inductor cannot compile here."""
    for w in record:
        if issubclass(w.category, RuntimeWarning) and "unavailable" in str(w.message):
            pytest.skip(f"inductor cannot compile here: {w.message}")


# --------------------------------------------------------------------------------------------
# the kernels' equations and the plumbing, with the "eager" backend
# --------------------------------------------------------------------------------------------
@pytest.mark.usefixtures("eager_kernels")
@pytest.mark.parametrize("name", NAMES)
def test_fused_path_equals_the_loop_path_in_float64(name: str):
    out = run_paths(name, torch.float64, 25, fused={"fused": True}, loop={"foreach": False})
    assert rel_err(out["fused"], out["loop"]) < 1e-12
    # the step ran the kernels it should, and only those: D-Adapt Adam without decoupled
    # decay takes one kernel for the whole step
    used = {k.name for k in fast.KERNELS if k.graphs}
    assert used == {k.name for k in CONFIGS[name][2]}


@pytest.mark.usefixtures("eager_kernels")
@pytest.mark.parametrize("name", ["sf-adamw", "prodigy", "dadapt-adam"])
def test_a_checkpoint_resumes_on_the_other_path(name: str):
    straight = make_params(torch.float64)
    train(build(name, straight, foreach=False), straight, 12)
    for first, second in (({"fused": True}, {"foreach": False}), ({}, {"fused": True})):
        params = make_params(torch.float64)
        opt = build(name, params, **first)
        train(opt, params, 6)
        saved = opt.state_dict()
        resumed = build(name, params, **second)
        resumed.load_state_dict(saved)
        train_from(resumed, params, start=6, stop=12)
        assert rel_err(params, straight) < 1e-12, (first, second)


@pytest.mark.usefixtures("eager_kernels")
@pytest.mark.parametrize("name", ["sf-adamw", "prodigy", "dadapt-adam"])
def test_the_flag_leaves_no_trace_in_the_state_dict(name: str):
    fused_params, loop_params = make_params(torch.float32), make_params(torch.float32)
    fused_opt = build(name, fused_params, fused=True)
    loop_opt = build(name, loop_params)
    train(fused_opt, fused_params, 2)
    train(loop_opt, loop_params, 2)
    fused_sd, loop_sd = fused_opt.state_dict(), loop_opt.state_dict()
    assert fused_sd["param_groups"] == loop_sd["param_groups"]
    assert fused_sd["state"].keys() == loop_sd["state"].keys()
    for key, state in fused_sd["state"].items():
        assert state.keys() == loop_sd["state"][key].keys()
    assert fused_opt.fused is True
    assert loop_opt.fused is False


@pytest.mark.usefixtures("eager_kernels")
@pytest.mark.parametrize("name", ["sf-adamw", "prodigy", "dadapt-adam"])
def test_new_scalar_values_and_many_sizes_compile_nothing_new(name: str):
    # 25 different sizes; then the learning rate and weight decay of a group change
    shapes = [(n, 3) for n in range(2, 27)]
    params = make_params(torch.float32, shapes)
    opt = build(name, params, fused=True)
    train(opt, params, 1)
    kernels = CONFIGS[name][2]
    after_first = [k.graphs for k in kernels]
    assert after_first == [2] * len(kernels)  # one call per group: 12 tensors, then 13
    for group in opt.param_groups:
        group["lr"] *= 0.3
        group["weight_decay"] = 0.05
    train(opt, params, 3)
    if name == "dadapt-adam":  # coupled decay reads x: a new variant of its kernel per group
        assert [k.graphs for k in kernels] == [4]
    else:
        assert [k.graphs for k in kernels] == after_first


class CountCalls:
    """Stands in for a kernel's compiled function and counts the calls and their tensors."""

    def __init__(self, kernel: fast.CompiledKernel) -> None:
        assert kernel._compiled is not None
        self.compiled = kernel._compiled
        self.sizes: list[int] = []

    def __call__(self, rows: list[Any], *args: Any, **kwargs: Any) -> Any:
        self.sizes.append(len(rows))
        return self.compiled(rows, *args, **kwargs)


@pytest.mark.usefixtures("eager_kernels")
@pytest.mark.parametrize("name", ["sf-adamw", "prodigy", "dadapt-adam-decoupled"])
def test_one_compiled_call_per_group_and_at_most_max_tensors_a_call(
    name: str, monkeypatch: pytest.MonkeyPatch
):
    kernels = CONFIGS[name][2]
    for kernel in kernels:
        monkeypatch.setattr(kernel, "max_tensors", 4)
    # one group of 10 tensors (calls of 4, 4 and 2), one of 3
    shapes = [(n + 2, 3) for n in range(13)]
    params = make_params(torch.float64, shapes)
    cls, kwargs, _ = CONFIGS[name]
    opt = cls([{"params": params[:10]}, {"params": params[10:]}], **kwargs, fused=True)
    train(opt, params, 1)
    assert [k.graphs for k in kernels] == [3] * len(kernels)  # lists of 4, 2 and 3 tensors
    counters = [CountCalls(k) for k in kernels]
    for kernel, counter in zip(kernels, counters, strict=True):
        kernel._compiled = counter
    train_from(opt, params, start=1, stop=4)
    for counter in counters:
        assert counter.sizes == [4, 4, 2, 3] * 3
    assert [k.graphs for k in kernels] == [3] * len(kernels)  # nothing new after the first step
    # a second optimizer, other sizes: its call of 4 tensors reuses a graph, its call of 1
    # compiles once more, then no more
    more = make_params(torch.float64, [(n + 2, 5) for n in range(5)])
    train(cls(more, **kwargs, fused=True), more, 3)
    assert [k.graphs for k in kernels] == [4] * len(kernels)
    loop = make_params(torch.float64, shapes)
    train(cls([{"params": loop[:10]}, {"params": loop[10:]}], **kwargs, foreach=False), loop, 4)
    assert rel_err(params, loop) < 1e-12


@pytest.mark.usefixtures("eager_kernels")
def test_many_variants_of_a_kernel_stay_compiled():
    # one variant per number of tensors: 9 optimizers, beyond the compiler's default limit (8)
    for count in range(1, 10):
        params = make_params(torch.float64, [(n + 2,) for n in range(count)])
        train(ScheduleFreeAdamW(params, lr=0.01, fused=True), params, 1)
    assert fast.SCHEDULE_FREE.failure is None
    assert fast.SCHEDULE_FREE.graphs == 9


@pytest.mark.usefixtures("eager_kernels")
def test_views_into_one_buffer_never_share_a_compiled_call():
    # the compiler would merge inputs of one storage into one input, copied whole
    buffer = torch.randn(60, dtype=torch.float64)
    params = [torch.nn.Parameter(buffer[i : i + 20]) for i in (0, 20, 40)]
    params.append(torch.nn.Parameter(torch.randn(7, dtype=torch.float64)))
    loop = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt = ScheduleFreeAdamW(params, lr=0.01, fused=True)
    train(opt, params, 1)
    counter = CountCalls(fast.SCHEDULE_FREE)
    fast.SCHEDULE_FREE._compiled = counter
    train_from(opt, params, start=1, stop=5)
    assert counter.sizes == [1, 1, 2] * 4  # the last view with the separate tensor
    train(ScheduleFreeAdamW(loop, lr=0.01, foreach=False), loop, 5)
    assert rel_err(params, loop) < 1e-12


def test_flatten_gives_one_dimensional_aliases_of_dense_layouts():
    base = torch.randn(4, 3, 5, 5)
    channels_last = base.to(memory_format=torch.channels_last)
    flat = fast._flatten([channels_last, torch.empty_like(channels_last), None], 2)
    assert flat is not None
    assert flat[2] is None
    for view, source in zip(flat[:2], (channels_last,), strict=False):
        assert view.shape == (source.numel(),)
        assert view.data_ptr() == source.data_ptr()
        assert view._base is None  # not a view: compiled guards ignore the source's shape
    flat[0][0] = 42.0  # memory order: the first element of channels-last storage
    assert channels_last[0, 0, 0, 0] == 42.0
    transposed = torch.randn(6, 4).t()
    out = fast._flatten([transposed, torch.randn(6, 4).t()], 2)
    assert out is not None
    assert out[0] is not None
    assert torch.equal(out[0], transposed.t().reshape(-1))
    # a view into a larger buffer keeps its offset
    buffer = torch.arange(20.0)
    out = fast._flatten([buffer[5:15].view(2, 5)], 2)
    assert out is not None
    assert out[0] is not None
    assert out[0][0] == 5.0


def test_flatten_refuses_small_tensors_and_what_has_no_dense_common_layout():
    a = torch.randn(6, 4)
    assert fast._flatten([a, a], 24) is not None
    assert fast._flatten([a, a], 25) is None  # below the size asked for
    assert fast._flatten([torch.randn(1), torch.randn(1)], 0) is None  # 1 would compile anew
    assert fast._flatten([a, a.t().contiguous().t()], 2) is None  # strides differ
    assert fast._flatten([a, a.double()], 2) is None
    assert fast._flatten([torch.randn(8, 8)[:, ::2]], 2) is None  # not dense


@pytest.mark.usefixtures("eager_kernels")
@pytest.mark.parametrize("name", ["sf-adamw", "prodigy", "dadapt-adam-decoupled"])
def test_params_of_any_layout_give_the_loop_results(name: str):
    def params() -> list[torch.Tensor]:
        gen = torch.Generator().manual_seed(0)
        conv = torch.randn(4, 3, 3, 3, generator=gen, dtype=torch.float64)
        buffer = torch.randn(50, generator=gen, dtype=torch.float64)
        return [
            torch.nn.Parameter(conv.to(memory_format=torch.channels_last)),
            torch.nn.Parameter(torch.randn(5, 7, generator=gen, dtype=torch.float64).t()),
            torch.nn.Parameter(buffer[3:23].view(4, 5)),  # a view into a flat buffer
            torch.nn.Parameter(buffer[30:]),
            torch.nn.Parameter(torch.randn(1, generator=gen, dtype=torch.float64)),
        ]

    fused_params, loop_params = params(), params()
    train(build(name, fused_params, fused=True), fused_params, 10)
    train(build(name, loop_params, foreach=False), loop_params, 10)
    assert rel_err(fused_params, loop_params) < 1e-12
    assert fused_params[0].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.usefixtures("eager_kernels")
def test_a_compile_failure_warns_once_per_kernel_and_takes_the_foreach_choice(
    monkeypatch: pytest.MonkeyPatch,
):
    def no_compiler(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(torch, "compile", no_compiler)
    for name in ("sf-adamw", "prodigy"):
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            out = run_paths(name, torch.float32, 5, fused={"fused": True}, plain={})
        messages = [str(w.message) for w in record if issubclass(w.category, RuntimeWarning)]
        # once per kernel tried, not once per step (Prodigy's update kernel is only tried on
        # the tensors its statistics kernel took: here none)
        kernels = [k for k in CONFIGS[name][2] if k.failure is not None]
        assert kernels == list(CONFIGS[name][2][:1])
        assert len(messages) == len(kernels)
        for kernel, message in zip(kernels, messages, strict=True):
            assert kernel.name in message
            assert "no C++ compiler found" in message
            assert "falls back" in message
        # the fallback is the path foreach=None takes: the same results to the bit
        for a, b in zip(out["fused"], out["plain"], strict=True):
            assert torch.equal(a, b)


@pytest.mark.usefixtures("eager_kernels")
@pytest.mark.parametrize("name", ["sf-adamw", "prodigy", "dadapt-adam", "dadapt-adam-decoupled"])
def test_small_tensors_take_the_optimizers_own_path(name: str, monkeypatch: pytest.MonkeyPatch):
    for kernel in fast.KERNELS:
        monkeypatch.setattr(kernel, "min_numel", 30)  # (7, 5) and (33, 7) compiled, not (5,)
    out = run_paths(name, torch.float64, 10, fused={"fused": True}, loop={"foreach": False})
    assert rel_err(out["fused"], out["loop"]) < 1e-12
    assert all(k.graphs == 2 for k in CONFIGS[name][2])  # a call of 2 tensors, one of 1
    for kernel in fast.KERNELS:
        monkeypatch.setattr(kernel, "min_numel", fast.MIN_NUMEL)
        kernel.reset()
    # at the default size none of these tensors is compiled: the loop path, to the bit
    out = run_paths(name, torch.float64, 10, fused={"fused": True}, loop={"foreach": False})
    assert all(torch.equal(a, b) for a, b in zip(out["fused"], out["loop"], strict=True))
    assert all(k.graphs == 0 for k in fast.KERNELS)


@pytest.mark.usefixtures("eager_kernels")
def test_a_compile_failing_within_a_step_finishes_the_step_uncompiled():
    # a compile after the first step (a new thread count, say) fails half-way through a step:
    # at the second group's call
    fused_params, loop_params = make_params(torch.float64), make_params(torch.float64)
    opt = build("sf-adamw", fused_params, fused=True)
    train(opt, fused_params, 1)
    calls = []

    def fails_on_the_second_call(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("compiler crashed")
        return fast.SCHEDULE_FREE.each(*args, **kwargs)

    fast.SCHEDULE_FREE._compiled = fails_on_the_second_call
    with pytest.warns(RuntimeWarning, match="compiler crashed"):
        train_from(opt, fused_params, start=1, stop=4)
    assert len(calls) == 2  # the kernel is not tried again after it failed
    train(build("sf-adamw", loop_params, foreach=False), loop_params, 4)
    assert rel_err(fused_params, loop_params) < 1e-12


@pytest.mark.usefixtures("eager_kernels")
@pytest.mark.parametrize("name", ["prodigy", "prodigy-coupled-beta1=0"])
def test_prodigy_update_failing_still_updates_the_moments_the_statistics_left(name: str):
    # Prodigy's statistics kernel leaves the moments of its tensors to the update kernel: when
    # that one fails half-way through a step (at the second group's call), the rest run its
    # equations uncompiled
    fused_params, loop_params = make_params(torch.float64), make_params(torch.float64)
    opt = build(name, fused_params, fused=True)
    train(opt, fused_params, 1)
    calls = []

    def fails_on_the_second_call(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("compiler crashed")
        return fast.PRODIGY_UPDATE.each(*args, **kwargs)

    fast.PRODIGY_UPDATE._compiled = fails_on_the_second_call
    with pytest.warns(RuntimeWarning, match="compiler crashed"):
        train_from(opt, fused_params, start=1, stop=6)
    assert len(calls) == 2
    assert fast.PRODIGY_STATS.failure is None  # the statistics stay compiled
    train(build(name, loop_params, foreach=False), loop_params, 6)
    assert rel_err(fused_params, loop_params) < 1e-12


@pytest.mark.usefixtures("eager_kernels")
def test_a_compiled_training_step_traces_the_kernels_inline():
    fused_params, loop_params = make_params(torch.float64), make_params(torch.float64)
    opt = build("sf-adamw", fused_params, fused=True)
    opt.step = torch.compile(opt.step, backend="eager")  # type: ignore[method-assign]
    train(opt, fused_params, 5)
    train(build("sf-adamw", loop_params, foreach=False), loop_params, 5)
    assert rel_err(fused_params, loop_params) < 1e-12
    assert fast.SCHEDULE_FREE.graphs == 0  # no compile of its own inside the traced step


def test_fused_is_checked_at_construction():
    p = torch.nn.Parameter(torch.zeros(3))
    for cls in (ScheduleFreeAdamW, ScheduleFreeSGD, Prodigy, DAdaptAdam):
        with pytest.raises(TypeError, match=r"\bfused\b"):
            cls([p], fused="yes")
        assert cls([p]).fused is False  # type: ignore[attr-defined]
        assert cls([p], fused=None).fused is False  # type: ignore[attr-defined]
        meta = torch.nn.Parameter(torch.zeros(3, device="meta"))
        with pytest.raises(ValueError, match=r"fused=True needs parameters on cpu, got .* meta"):
            cls([meta], fused=True)
    assert "fused" not in DAdaptSGD.__init__.__code__.co_varnames  # no kernel: no flag


# --------------------------------------------------------------------------------------------
# the native kernels
# --------------------------------------------------------------------------------------------
@pytest.mark.usefixtures("native_kernels")
@pytest.mark.parametrize("name", NAMES)
def test_native_float64_equals_the_loop_to_1e_12(name: str):
    out = run_paths(name, torch.float64, 100, fused={"fused": True}, loop={"foreach": False})
    assert rel_err(out["fused"], out["loop"]) < 1e-12
    assert all(k.graphs == 0 for k in fast.KERNELS)  # the native kernels took every tensor


@pytest.mark.usefixtures("native_kernels")
@pytest.mark.parametrize("name", NAMES)
def test_native_float32_agrees_with_the_loop_over_120_steps(name: str):
    # as close to the loop as the foreach path is (measured: 1e-8 to 1e-7)
    fused, foreach = float32_errors(name)
    assert fused <= max(2e-6, 2 * foreach)


@pytest.mark.usefixtures("native_kernels")
@pytest.mark.parametrize("name", ["sf-adamw", "prodigy", "dadapt-adam", "dadapt-adam-decoupled"])
def test_native_results_do_not_depend_on_the_number_of_threads(name: str):
    # tensors of several chunks (16K elements each), summed in the same order on any thread count
    shapes = [(300, 200), (70_000,), (5,)]
    out = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            params = make_params(torch.float32, shapes)
            train(build(name, params, fused=True), params, 5)
            out.append(params)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(*out, strict=True))


@pytest.mark.usefixtures("native_kernels")
@pytest.mark.parametrize("name", ["sf-adamw", "prodigy", "dadapt-adam-decoupled"])
def test_native_checkpoint_resumes_bit_for_bit(name: str):
    whole = make_params(torch.float32)
    train(build(name, whole, fused=True), whole, 12)
    first = make_params(torch.float32)
    opt = build(name, first, fused=True)
    train_from(opt, first, start=0, stop=5)
    state = copy.deepcopy(opt.state_dict())
    resumed = [torch.nn.Parameter(p.detach().clone()) for p in first]
    opt = build(name, resumed, fused=True)
    opt.load_state_dict(state)
    train_from(opt, resumed, start=5, stop=12)
    assert all(torch.equal(a, b) for a, b in zip(whole, resumed, strict=True))


@pytest.mark.usefixtures("native_kernels")
@pytest.mark.parametrize("name", NAMES)
def test_native_steps_bump_the_autograd_version_of_what_they_write(name: str):
    # as an in-place op would: autograd then refuses a graph that saved a parameter before
    # the step, instead of computing with the overwritten values
    params = make_params(torch.float64, [(6, 5), (7,)])
    opt = build(name, params, fused=True)
    train(opt, params, 1)
    saved = params[0] * params[0]  # saves params[0] for the backward pass
    train_from(opt, params, start=1, stop=2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        saved.sum().backward()


@pytest.mark.usefixtures("native_kernels")
@pytest.mark.parametrize("name", ["sf-adamw", "prodigy", "dadapt-adam"])
def test_native_kernels_take_views_and_dense_layouts(name: str):
    # views into one buffer (as DDP's buckets) and a channels-last weight
    def params() -> list[torch.Tensor]:
        gen = torch.Generator().manual_seed(0)
        buffer = torch.randn(400, generator=gen, dtype=torch.float64)
        conv = torch.randn(4, 3, 5, 5, generator=gen, dtype=torch.float64)
        return [
            torch.nn.Parameter(buffer[:150]),
            torch.nn.Parameter(buffer[150:].view(10, 25)),
            torch.nn.Parameter(conv.to(memory_format=torch.channels_last)),
        ]

    fused_params, loop_params = params(), params()
    train(build(name, fused_params, fused=True), fused_params, 10)
    train(build(name, loop_params, foreach=False), loop_params, 10)
    assert rel_err(fused_params, loop_params) < 1e-12
    assert all(k.graphs == 0 for k in fast.KERNELS)


@pytest.mark.usefixtures("native_kernels")
@pytest.mark.parametrize("name", ["sf-adamw", "prodigy", "dadapt-adam"])
def test_native_kernels_leave_other_dtypes_to_the_compiled_kernels(name: str):
    params = make_params(torch.bfloat16)
    train(build(name, params, fused=True), params, 3)
    assert all(k.graphs >= 1 for k in CONFIGS[name][2])  # bfloat16: the torch.compile kernels
    assert all(torch.isfinite(p.float()).all() for p in params)


@pytest.mark.usefixtures("native_kernels")
@pytest.mark.parametrize("name", ["sf-adamw", "prodigy", "dadapt-adam-decoupled"])
def test_native_kernels_mix_dtypes_and_leave_strided_gradients_to_the_others(name: str):
    # float32 and float64 parameters in one group (one native call per dtype), and a gradient
    # whose layout differs from its parameter's (left to the other paths)
    def params() -> list[torch.Tensor]:
        gen = torch.Generator().manual_seed(0)
        return [
            torch.nn.Parameter(torch.randn(6, 5, generator=gen, dtype=torch.float64)),
            torch.nn.Parameter(torch.randn(40, generator=gen, dtype=torch.float32)),
            torch.nn.Parameter(torch.randn(4, 7, generator=gen, dtype=torch.float64)),
        ]

    out = {}
    for path, flags in (("fused", {"fused": True}), ("loop", {"foreach": False})):
        ps = params()
        opt = build(name, ps, **flags)
        gen = torch.Generator().manual_seed(1)
        for _ in range(8):
            for p in ps:
                p.grad = p.detach() + torch.randn(p.shape, generator=gen, dtype=p.dtype)
            ps[2].grad = ps[2].grad.t().contiguous().t()  # column-major
            opt.step()
        out[path] = ps
    # the float32 tensor's sums enter the global d in float32 rounding, on either path
    for a, b in zip(out["fused"], out["loop"], strict=True):
        assert rel_err([a], [b]) < (1e-9 if a.dtype == torch.float64 else 1e-5)
    strided = out["fused"][2]
    assert fast.native._pointers([strided, strided.grad]) is None  # went on to the others
    assert fast.native._pointers([strided, strided.detach().clone()]) is not None


def test_native_rows_are_dense_float_cpu_tensors_of_one_layout():
    x, y = torch.randn(4, 3, 5, 5), torch.randn(4, 3, 5, 5)
    last = x.to(memory_format=torch.channels_last)
    pointers = fast.native._pointers
    assert pointers([x, y, None]) == [x.data_ptr(), y.data_ptr(), 0]
    other = torch.zeros_like(last)  # channels-last too
    assert pointers([last, other]) == [last.data_ptr(), other.data_ptr()]
    reversed_dims = [x.permute(3, 2, 1, 0), y.permute(3, 2, 1, 0)]  # transposed, dense
    assert pointers(reversed_dims) == [x.data_ptr(), y.data_ptr()]
    for bad in (
        [x, last],  # two layouts
        [x[:, :, ::2], torch.zeros(4, 3, 3, 5)],  # not dense
        [torch.zeros(1, 5).expand(4, 5), torch.zeros(4, 5)],  # overlapping
        [x.half(), x.half()],  # other dtypes
        [torch.zeros(1), torch.zeros(1)],  # under MIN_NUMEL
        [x, torch.randn(4, 3, 5, 5, dtype=torch.float64)],  # mixed dtypes
    ):
        assert pointers(bad) is None


@pytest.mark.usefixtures("native_kernels")
def test_native_build_failure_warns_once_and_takes_the_compiled_kernels(
    monkeypatch: pytest.MonkeyPatch,
):
    from torch._inductor import codecache

    def no_compiler(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(fast.native.library, "lib", None)
    monkeypatch.setattr(fast.native.library, "failure", None)
    monkeypatch.setattr(codecache.CppCodeCache, "load", no_compiler)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        out = run_paths("dadapt-adam", torch.float64, 5, fused={"fused": True}, loop={})
    messages = [str(w.message) for w in record if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1
    assert "native CPU kernels are unavailable" in messages[0]
    assert "no C++ compiler found" in messages[0]
    assert fast.DADAPT_ADAM.graphs >= 1
    assert rel_err(out["fused"], out["loop"]) < 1e-12


# --------------------------------------------------------------------------------------------
# inductor
# --------------------------------------------------------------------------------------------
@pytest.mark.usefixtures("inductor_kernels")
def test_inductor_schedule_free_adamw_equals_the_loop_on_a_tiny_model():
    # the one compile of the default run: Schedule-Free AdamW, float32
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        out = run_paths("sf-adamw", torch.float32, 30, fused={"fused": True}, loop={})
    skip_if_not_compiled(record)
    assert fast.SCHEDULE_FREE.graphs >= 1
    assert rel_err(out["fused"], out["loop"]) < 1e-6


@pytest.mark.slow
@pytest.mark.usefixtures("inductor_kernels")
@pytest.mark.parametrize("name", NAMES)
def test_inductor_float32_agrees_with_the_loop_over_120_steps(name: str):
    # float32 rounding differs between any two ways of computing a step; the fused path must
    # stay as close to the loop as the foreach path is (measured: 1e-7 to 5e-6)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        fused, foreach = float32_errors(name)
    skip_if_not_compiled(record)
    assert fused <= max(2e-6, 2 * foreach)


@pytest.mark.slow
@pytest.mark.usefixtures("inductor_kernels")
@pytest.mark.parametrize("name", NAMES)
def test_inductor_float64_agrees_with_the_loop_to_1e_12(name: str):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        out = run_paths(name, torch.float64, 100, fused={"fused": True}, loop={"foreach": False})
    skip_if_not_compiled(record)
    assert rel_err(out["fused"], out["loop"]) < 1e-12


@pytest.mark.slow
@pytest.mark.usefixtures("inductor_kernels")
@pytest.mark.parametrize("name", ["sf-adamw", "prodigy", "dadapt-adam"])
@pytest.mark.parametrize("views", [True, False], ids=["views", "tensors"])
def test_inductor_compiles_during_the_first_step_only(name: str, views: bool):
    # 50 tensors of different sizes, as in a small transformer, in two groups; sizes on both
    # sides of inductor's 4096-element threshold. Either all views into one buffer (as DDP's
    # gradient buckets are: one compiled call per tensor) or tensors of their own (one per group)
    sizes = [3 + 37 * i * i for i in range(50)]
    params: list[torch.Tensor] = []
    if views:
        buffer, start = torch.randn(sum(sizes)), 0
        for n in sizes:
            params.append(torch.nn.Parameter(buffer[start : start + n]))
            start += n
    else:
        params = [torch.nn.Parameter(torch.randn(n)) for n in sizes]
    opt = build(name, params, fused=True)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        train(opt, params, 1)
    skip_if_not_compiled(record)
    kernels = CONFIGS[name][2]
    after_first = [k.graphs for k in kernels]
    if views:  # one call per tensor: a few variants, where inductor specializes on the size
        assert all(1 <= n <= 4 for n in after_first), after_first
    else:  # one call per group; the two groups' lists are as long and may share a graph
        assert all(1 <= n <= 2 for n in after_first), after_first
    train(opt, params, 3)
    assert [k.graphs for k in kernels] == after_first
