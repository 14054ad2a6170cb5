"""The stochastic Polyak step size, SPS_max (Loizou, Vaswani, Laradji & Lacoste-Julien 2021).

SGD whose step size comes from how far the mini-batch loss is above its optimal value::

    γ_k = min( (f_i(x_k) − f_i*) / (c ‖∇f_i(x_k)‖²),  γ_b )
    x_{k+1} = x_k − γ_k ∇f_i(x_k)

The step needs the loss of the batch whose gradient it uses: :meth:`Polyak.step` takes it from a
closure or as ``step(loss=...)``. The ratio is global (one loss, one gradient norm over all
parameters); each param group's ``lr`` is its cap ``γ_b``.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any

import torch

from lrkit._validate import check_bool, check_float
from lrkit.optim._base import LRKitOptimizer, params_with_grad
from lrkit.optim._dist import all_reduce_sum_, check_sharding
from lrkit.optim._foreach import group_by_device_and_dtype, resolve_foreach

__all__ = ["Polyak"]

Tensor = torch.Tensor


# --------------------------------------------------------------------------------------------
# the math, as a loop and as foreach calls
# --------------------------------------------------------------------------------------------
def polyak_statistics_single(
    params: Sequence[Tensor], grads: Sequence[Tensor], weight_decay: float
) -> tuple[list[Tensor], Tensor, Tensor]:
    """Directions ``d = g + λx``, ``Σ ‖d‖²`` and ``Σ ‖x‖²`` of one group, tensor by tensor.

    ``d`` is ``g`` itself when ``λ = 0`` (never written to); the sums are 0-dim tensors in
    float64.
    """
    dirs = [
        g.add(p, alpha=weight_decay) if weight_decay else g
        for p, g in zip(params, grads, strict=True)
    ]
    grad_sq = sum_of_squares([torch.linalg.vector_norm(d) for d in dirs])
    param_sq = sum_of_squares([torch.linalg.vector_norm(p) for p in params] if weight_decay else [])
    return dirs, grad_sq, param_sq


def polyak_statistics_foreach(
    params: Sequence[Tensor], grads: Sequence[Tensor], weight_decay: float
) -> tuple[list[Tensor], Tensor, Tensor]:
    """:func:`polyak_statistics_single` with ``torch._foreach_*`` calls per device and dtype."""
    dir_of: dict[int, Tensor] = {}
    grad_norms: list[Tensor] = []
    param_norms: list[Tensor] = []
    for ps, gs in group_by_device_and_dtype([params, grads]):
        ds = torch._foreach_add(gs, ps, alpha=weight_decay) if weight_decay else list(gs)
        dir_of.update((id(p), d) for p, d in zip(ps, ds, strict=True))
        grad_norms += torch._foreach_norm(ds)
        if weight_decay:
            param_norms += torch._foreach_norm(ps)
    return [dir_of[id(p)] for p in params], sum_of_squares(grad_norms), sum_of_squares(param_norms)


def polyak_update_single(
    params: Sequence[Tensor], dirs: Sequence[Tensor], step_size: Tensor, ok: Tensor
) -> None:
    """``x ← x − γ d`` for each tensor, or nothing where ``ok`` (a 0-dim bool) is false."""
    skip = ~ok
    for p, d in zip(params, dirs, strict=True):
        u = d * step_size
        u.masked_fill_(skip, 0.0)
        p.sub_(u)


def polyak_update_foreach(
    params: Sequence[Tensor], dirs: Sequence[Tensor], step_size: Tensor, ok: Tensor
) -> None:
    """:func:`polyak_update_single` with ``torch._foreach_*`` calls per device and dtype."""
    skip = ~ok
    for ps, ds in group_by_device_and_dtype([params, dirs]):
        us = torch._foreach_mul(ds, step_size)
        for u in us:
            u.masked_fill_(skip, 0.0)
        torch._foreach_sub_(ps, us)


def sum_of_squares(norms: list[Tensor]) -> Tensor:
    """``Σ n²`` over 0-dim norms, in float64 on the first norm's device (0 when empty)."""
    if not norms:
        return torch.zeros((), dtype=torch.float64)
    device = norms[0].device
    return torch.stack([n.to(device=device, dtype=torch.float64) for n in norms]).square().sum()


def loss_tensor(loss: object, device: torch.device) -> Tensor:
    """``loss`` (a number or a one-element tensor) as a detached 0-dim float64 tensor.

    Raises:
        TypeError: ``loss`` is neither a real number nor a tensor.
        ValueError: ``loss`` is a tensor with more than one element.
    """
    if isinstance(loss, Tensor):
        if loss.numel() != 1:
            raise ValueError(f"loss must be a scalar, got a tensor of shape {tuple(loss.shape)}")
        return loss.detach().reshape(()).to(device=device, dtype=torch.float64)
    if isinstance(loss, bool) or not isinstance(loss, numbers.Real):
        raise TypeError(f"loss must be a real number or a scalar tensor, got {loss!r}")
    return torch.tensor(float(loss), dtype=torch.float64, device=device)


# --------------------------------------------------------------------------------------------
# the optimizer
# --------------------------------------------------------------------------------------------
class Polyak(LRKitOptimizer):
    """SGD with the stochastic Polyak step size, capped: SPS_max.

    With the loss ``f_i(x_k)`` of the current batch and its gradient, step ``k`` does::

        F = f_i(x_k) + Σ_groups λ/2 ‖x‖²           (the objective, with L2 weight decay λ)
        d = ∇f_i(x_k) + λ x_k
        ρ_k = (F − f*) / (c ‖d‖²)                   (over all parameters)
        γ_k = min(ρ_k, γ_b)                          (per group, γ_b = the group's lr)
        x_{k+1} = x_k − γ_k d

    Symbols: ``lr`` is ``γ_b``, ``c`` is ``c``, ``f_star`` is ``f_i*`` (the same lower bound for
    every batch; 0 suits non-negative losses that can be driven to 0, the interpolation regime
    of the paper's theory), ``weight_decay`` is ``λ``.

    How the loss comes in (exactly one of the two):

    * ``step(closure)``: the closure zeroes the gradients, computes the loss, calls
      ``loss.backward()`` and returns the loss (torch's closure convention; Lightning's
      automatic optimization passes such a closure);
    * ``step(loss=loss)`` after your own ``loss.backward()``: ``loss`` is the same batch's loss,
      a scalar tensor or a float.

    One ``ρ_k`` for all parameters: several param groups share the ratio, each capped by its
    own ``lr``; ``lr = 0`` freezes a group. Attaching an lrkit schedule with
    :class:`lrkit.Scheduler` schedules the cap ``γ_b``.

    A step with no update: when the loss or ``‖d‖²`` is not finite, when ``‖d‖² = 0`` or when the
    loss is below ``f*`` (``f*`` was not a lower bound), the parameters and the state are left
    as they were and ``info()["skipped"]`` counts the step. This decision is taken on the device
    (no synchronization).

    ``torch.compile``: the cap enters the step as ``ones * lr`` (a tensor input), not as
    ``clamp(max=lr)``, whose Python float dynamo specializes on; so a compiled step, or a
    compiled ``opt.step(closure)``, does not recompile when a scheduler changes ``lr``.

    Args:
        params: Parameters or param groups.
        lr: ``γ_b``, the largest step size (default 1.0), per group.
        c: ``c > 0`` (default 0.5: the paper's theory for SPS_max uses ``c = 1/2``; its deep
            learning experiments use 0.2).
        f_star: ``f*``, a lower bound of every batch loss (default 0.0).
        weight_decay: ``λ``: an L2 penalty ``λ/2 ‖x‖²`` that enters both the objective ``F`` and
            the gradient, so the step stays a Polyak step of the regularized problem.
        foreach: Multi-tensor (``True``) or per-tensor (``False``) math; ``None`` follows
            torch.optim: multi-tensor on CUDA-like devices, per-tensor on the CPU.
        process_group: The data-parallel group this optimizer runs in. When given, the loss
            is averaged over its ranks, so every rank takes the same step.
        sharded: Each rank holds a different part of the parameters: ``‖d‖²`` and ``‖x‖²`` are
            summed over ``process_group`` too (in the same single ``all_reduce`` as the loss).

    Raises:
        TypeError: An argument has the wrong type; a gradient is sparse or complex (at step).
        ValueError: ``lr``, ``c`` or ``weight_decay`` out of range or not finite; ``f_star`` not
            finite.

    Examples:
        >>> import torch
        >>> from lrkit.optim import Polyak
        >>> w = torch.nn.Parameter(torch.tensor([3.0, -4.0]))
        >>> opt = Polyak([w], lr=10.0, c=0.5)
        >>> opt.zero_grad()
        >>> loss = 0.5 * (w**2).sum()  # f* = 0 at w = 0
        >>> loss.backward()
        >>> _ = opt.step(loss=loss)  # γ = f / (c‖g‖²) = 12.5 / 12.5 = 1: straight to 0
        >>> w.tolist()
        [0.0, 0.0]

    References:
        Loizou, Vaswani, Laradji & Lacoste-Julien, "Stochastic Polyak Step-size for SGD: An
        Adaptive Learning Rate for Fast Convergence", AISTATS 2021 (arXiv:2002.10542), SPS_max,
        eq. (5). No maintained package exists; the tests compare with a literal transcription of
        the formula.
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1.0,
        *,
        c: float = 0.5,
        f_star: float = 0.0,
        weight_decay: float = 0.0,
        foreach: bool | None = None,
        process_group: Any | None = None,
        sharded: bool = False,
    ) -> None:
        check_float("lr", lr, min=0.0)
        self.c = check_float("c", c, min=0.0, min_open=True)
        self.f_star = check_float("f_star", f_star)
        if foreach is not None:
            check_bool("foreach", foreach)
        self.sharded = check_sharding(process_group, sharded)
        self.process_group = process_group
        defaults = {"lr": lr, "weight_decay": weight_decay, "foreach": foreach}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None, *, loss: Any = None) -> Any:
        """One SPS_max step.

        Args:
            closure: Zeroes the gradients, computes the loss, back-propagates it and returns it
                (called with gradients enabled).
            loss: The loss of the batch whose gradients are in ``p.grad``, when no closure is
                given.

        Returns:
            The loss (the closure's, or ``loss``).

        Raises:
            TypeError: Neither or both of ``closure`` and ``loss`` are given, or ``loss`` is not
                a number or a tensor.
            ValueError: ``loss`` has more than one element.
        """
        if (closure is None) == (loss is None):
            raise TypeError(
                "Polyak.step needs the loss: call step(closure) with a closure that returns "
                "it after backward(), or step(loss=loss) after loss.backward() (exactly one)"
            )
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        device = self._device()
        f = loss_tensor(loss, device)
        name = type(self).__name__

        work = []
        grad_sq = torch.zeros((), dtype=torch.float64, device=device)
        reg = torch.zeros((), dtype=torch.float64, device=device)
        for group in self.param_groups:
            params = params_with_grad(group["params"], name)
            grads = [p.grad for p in params if p.grad is not None]
            foreach = resolve_foreach(group["foreach"], params)
            stats = polyak_statistics_foreach if foreach else polyak_statistics_single
            wd = group["weight_decay"]
            dirs, g_sq, p_sq = stats(params, grads, wd)
            grad_sq = grad_sq + g_sq.to(device)
            reg = reg + 0.5 * wd * p_sq.to(device)
            work.append((group, params, dirs, foreach))

        f, grad_sq, reg = average_loss(f, grad_sq, reg, self.process_group, self.sharded)
        objective = f + reg
        ratio = (objective - self.f_star) / (self.c * grad_sq)
        ok = torch.isfinite(objective) & torch.isfinite(grad_sq) & (grad_sq > 0)
        ok &= objective >= self.f_star

        glob = self.global_state
        for i, (group, params, dirs, foreach) in enumerate(work):
            cap = ratio.new_ones(()) * group["lr"]  # a tensor: see "torch.compile" above
            step_size = torch.where(ok, torch.minimum(ratio, cap), 0.0)
            key = f"group{i}/effective_lr"
            glob[key] = torch.where(ok, step_size, glob.get(key, torch.zeros_like(ratio)))
            if params:
                update = polyak_update_foreach if foreach else polyak_update_single
                update(params, dirs, step_size, ok)

        count = torch.zeros((), dtype=torch.int64, device=device)
        glob["polyak_step"] = torch.where(ok, ratio, glob.get("polyak_step", ratio.new_zeros(())))
        glob["step"] = glob.get("step", count) + ok
        glob["skipped"] = glob.get("skipped", count) + ~ok
        return loss

    def info(self) -> dict[str, float]:
        """Each group's ``lr`` (its cap ``γ_b``) and ``effective_lr`` (its last ``γ_k``).

        Also ``polyak_step`` (the last uncapped ratio ``ρ_k``), ``step`` (steps taken) and
        ``skipped`` (steps without update: non-finite loss or gradient, zero gradient, loss
        below ``f*``). Before the first step the step sizes read 0.0.
        """
        out = super().info()
        glob = self.global_state
        for i in range(len(self.param_groups)):
            key = f"group{i}/effective_lr"
            out[key] = float(glob[key]) if key in glob else 0.0
        for key in ("polyak_step", "step", "skipped"):
            out[key] = float(glob[key]) if key in glob else 0.0
        return out


def average_loss(
    loss: Tensor, grad_sq: Tensor, reg: Tensor, process_group: Any | None, sharded: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """The loss averaged over ``process_group``; ``‖d‖²`` and ``Σ λ/2 ‖x‖²`` summed if sharded.

    One ``all_reduce`` of ``[loss, 1, ‖d‖², reg]`` (the 1 counts the ranks). Without a group
    (or outside ``torch.distributed``) the values come back unchanged.
    """
    if process_group is None:
        return loss, grad_sq, reg
    values = [loss.clone(), torch.ones_like(loss)]
    if sharded:
        values += [grad_sq.clone(), reg.clone()]
    all_reduce_sum_(values, process_group)
    mean = values[0] / values[1]
    return (mean, values[2], values[3]) if sharded else (mean, grad_sq, reg)
