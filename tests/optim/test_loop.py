"""The single-tensor loops' helpers: the scratch buffer, and both branches of a host-readable flag.

Where a 0-dim flag or step size is readable on the host (CPU, eager), DoG, Prodigy and D-Adapt
Adam branch on it or pass it as an op's scalar; elsewhere (a device tensor, ``torch.compile``)
they keep to tensor arithmetic. Both branches must compute the same steps; the second is forced
here by patching :func:`lrkit.optim._loop.host_readable` where the optimizers look it up.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

import lrkit.optim._dadapt_core
import lrkit.optim.dog
from lrkit.optim import DAdaptAdam, DoG, LDoG, Prodigy
from lrkit.optim._loop import Scratch, host_readable


# --------------------------------------------------------------------------------------------
# Scratch
# --------------------------------------------------------------------------------------------
def test_scratch_lends_views_of_one_buffer_per_device_and_dtype() -> None:
    a, b = torch.zeros(3, 4), torch.zeros(5)
    c = torch.zeros(2, dtype=torch.float64)
    scratch = Scratch([a, b, c])
    va, vb, vc = scratch.like(a), scratch.like(b), scratch.like(c)
    assert (va.shape, vb.shape, vc.shape) == ((3, 4), (5,), (2,))
    assert (va.dtype, vc.dtype) == (torch.float32, torch.float64)
    assert va.data_ptr() == vb.data_ptr()  # the same float32 buffer, reused
    assert va.untyped_storage().nbytes() == 12 * 4  # sized to the largest float32 tensor
    assert vc.data_ptr() != va.data_ptr()
    torch.sub(a + 1.0, a, out=va)
    assert torch.equal(va, torch.ones(3, 4))


def test_scratch_falls_back_to_a_fresh_tensor_for_other_layouts_and_sizes() -> None:
    base = torch.zeros(4, 3)
    transposed = base.t()  # not contiguous: a fresh tensor with its layout
    scratch = Scratch([base])
    fresh = scratch.like(transposed)
    assert fresh.stride() == transposed.stride()
    big = torch.zeros(100)  # larger than any tensor given
    assert scratch.like(big).shape == (100,)
    assert scratch.like(torch.zeros(2, dtype=torch.float16)).dtype == torch.float16


def test_host_readable_on_the_cpu_only_outside_compile() -> None:
    flag = torch.tensor(True)
    assert host_readable(flag)
    assert not host_readable(torch.empty((), device="meta"))

    seen = []

    def f(x: torch.Tensor) -> torch.Tensor:
        seen.append(host_readable(x))
        return x + 1

    torch._dynamo.reset()
    torch.compile(f, backend="eager")(torch.ones(2))
    torch._dynamo.reset()
    assert seen == [False]


# --------------------------------------------------------------------------------------------
# both branches compute the same steps
# --------------------------------------------------------------------------------------------
def _params() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    shapes = [(7, 5), (5,), (3, 7), (1,)]
    return [torch.randn(s, generator=gen, dtype=torch.float64).requires_grad_() for s in shapes]


def _run(
    make: Any, *, skips: bool, tensor_branch: bool, monkeypatch: pytest.MonkeyPatch
) -> tuple[list[torch.Tensor], dict[str, float]]:
    if tensor_branch:
        for module in (lrkit.optim.dog, lrkit.optim._dadapt_core):
            monkeypatch.setattr(module, "host_readable", lambda t: False)
    params = _params()
    opt = make(params)
    gen = torch.Generator().manual_seed(1)
    for k in range(12):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)
        if skips and k == 5:  # a non-finite gradient: DoG skips the step
            grad = params[2].grad
            assert grad is not None
            grad[0, 0] = math.inf
        opt.step()
    monkeypatch.undo()
    return [p.detach().clone() for p in params], opt.info()


OPTIMIZERS = [
    pytest.param(lambda p, f: DoG(p, reps_rel=1e-3, foreach=f), True, id="DoG"),
    pytest.param(lambda p, f: LDoG(p, reps_rel=1e-3, weight_decay=0.1, foreach=f), True, id="LDoG"),
    pytest.param(lambda p, f: Prodigy(p, weight_decay=0.1, foreach=f), False, id="Prodigy"),
    pytest.param(
        lambda p, f: Prodigy(p, betas=(0.0, 0.99), foreach=f), False, id="Prodigy-beta1=0"
    ),
    pytest.param(lambda p, f: DAdaptAdam(p, weight_decay=0.1, foreach=f), False, id="DAdaptAdam"),
]


@pytest.mark.parametrize("foreach", [False, True], ids=["loop", "foreach"])
@pytest.mark.parametrize(("make", "skips"), OPTIMIZERS)
def test_host_and_tensor_branches_take_the_same_steps(
    make: Any, skips: bool, foreach: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = [
        _run(lambda p: make(p, foreach), skips=skips, tensor_branch=t, monkeypatch=monkeypatch)
        for t in (False, True)
    ]
    (host, host_info), (tensor, tensor_info) = runs
    start = _params()
    for a, b, x0 in zip(host, tensor, start, strict=True):
        assert a.isfinite().all()
        assert not torch.equal(a, x0.detach())  # every tensor moved
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)
    assert host_info == pytest.approx(tensor_info, rel=1e-12)
    if skips:
        assert host_info["skipped"] == tensor_info["skipped"] == 1.0
