"""DoG, layer-wise DoG (L-DoG) and DoWG: a step size from the distance travelled over the gradients.

One algorithm, two switches. The parameters are cut into *blocks*; each block keeps the largest
distance from its starting point seen so far and a running sum of squared gradient norms, and
steps with their ratio. For a block ``x`` (with gradient ``g``), step ``t`` does::

    r̄_t = max(r̄_{t−1}, ‖x_t − x_0‖)
    G_t = G_{t−1} + w_t ‖g_t‖²
    η_t = c · r̄_t · √w_t / √G_t
    x_{t+1} = x_t − η_t g_t

with ``G_{−1} = ε`` and ``r̄_{−1} = r_ε = reps_rel · (1 + ‖x_0‖)``.

* :class:`DoG`: one block per param group (all its tensors as one vector); :class:`LDoG`: one
  block per tensor.
* ``weighted=False``: ``w_t = 1``, DoG (Ivgi, Hinder & Carmon 2023). ``weighted=True``:
  ``w_t = r̄_t²``, so ``η_t = c · r̄_t² / √(ε + Σ_{i≤t} r̄_i² ‖g_i‖²)``, DoWG (Khaled, Mishchenko &
  Jin 2023).

The block scalars (``r̄``, ``G``, the last ``η``, counts) are tensors in
``optimizer.global_state``, one entry per block: a step never synchronizes with the device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch

from lrkit._validate import check_bool, check_float
from lrkit.errors import StateError
from lrkit.optim._base import LRKitOptimizer, params_with_grad
from lrkit.optim._dist import all_reduce_sum_, check_sharding
from lrkit.optim._foreach import group_by_device_and_dtype, resolve_foreach
from lrkit.optim._loop import Scratch, host_readable

__all__ = ["DoG", "LDoG"]

Tensor = torch.Tensor


# --------------------------------------------------------------------------------------------
# the math: per-tensor statistics and the update, as a loop and as foreach calls
# --------------------------------------------------------------------------------------------
def dog_statistics_single(
    params: Sequence[Tensor],
    x0s: Sequence[Tensor],
    trained: Sequence[Tensor],
    grads: Sequence[Tensor],
    weight_decay: float,
) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """Per-tensor statistics of one param group, one tensor at a time.

    Returns ``‖x − x_0‖`` for every tensor of the group (``params``, ``x0s``), and for the
    tensors that have a gradient (``trained``, ``grads``) the direction ``d = g + λx`` and its
    norm ``‖d‖``. ``d`` is ``g`` itself when ``λ = 0`` (never written to).
    """
    scratch = Scratch(params)  # x − x0 of one tensor at a time, in one reused buffer
    dists = [
        torch.linalg.vector_norm(torch.sub(p, x0, out=scratch.like(p)))
        for p, x0 in zip(params, x0s, strict=True)
    ]
    dirs = [
        g.add(p, alpha=weight_decay) if weight_decay else g
        for p, g in zip(trained, grads, strict=True)
    ]
    grad_norms = [torch.linalg.vector_norm(d) for d in dirs]
    return dists, dirs, grad_norms


def dog_statistics_foreach(
    params: Sequence[Tensor],
    x0s: Sequence[Tensor],
    trained: Sequence[Tensor],
    grads: Sequence[Tensor],
    weight_decay: float,
) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """:func:`dog_statistics_single` with ``torch._foreach_*`` calls per device and dtype."""
    dist_of: dict[int, Tensor] = {}
    for ps, x0 in group_by_device_and_dtype([params, x0s]):
        norms = torch._foreach_norm(torch._foreach_sub(ps, x0))
        dist_of.update((id(p), n) for p, n in zip(ps, norms, strict=True))
    dir_of: dict[int, Tensor] = {}
    norm_of: dict[int, Tensor] = {}
    for ps, gs in group_by_device_and_dtype([trained, grads]):
        ds = torch._foreach_add(gs, ps, alpha=weight_decay) if weight_decay else list(gs)
        dir_of.update((id(p), d) for p, d in zip(ps, ds, strict=True))
        norms = torch._foreach_norm(ds)
        norm_of.update((id(p), n) for p, n in zip(ps, norms, strict=True))
    return (
        [dist_of[id(p)] for p in params],
        [dir_of[id(p)] for p in trained],
        [norm_of[id(p)] for p in trained],
    )


def dog_update_single(
    params: Sequence[Tensor], dirs: Sequence[Tensor], etas: Sequence[Tensor], ok: Tensor
) -> None:
    """``x ← x − η d`` for each tensor, or nothing where ``ok`` (a 0-dim bool) is false.

    Where ``ok`` can be read without a device synchronization (a CPU tensor, outside
    ``torch.compile``), a false ``ok`` skips the loop and each tensor takes one
    ``addcmul_``; elsewhere the step ``η d`` is zeroed where ``ok`` is false (a non-finite
    ``d`` must not reach ``x`` as ``0 · inf``).
    """
    if host_readable(ok):
        if bool(ok):
            for p, d, eta in zip(params, dirs, etas, strict=True):
                p.addcmul_(d, eta, value=-1.0)
        return
    skip = ~ok
    for p, d, eta in zip(params, dirs, etas, strict=True):
        u = d * eta
        u.masked_fill_(skip, 0.0)
        p.sub_(u)


def dog_update_foreach(
    params: Sequence[Tensor], dirs: Sequence[Tensor], etas: Sequence[Tensor], ok: Tensor
) -> None:
    """:func:`dog_update_single` with ``torch._foreach_*`` calls per device and dtype."""
    if host_readable(ok):
        if bool(ok):
            for ps, ds, es in group_by_device_and_dtype([params, dirs, etas]):
                torch._foreach_addcmul_(ps, ds, es, value=-1.0)
        return
    skip = ~ok
    for ps, ds, es in group_by_device_and_dtype([params, dirs, etas]):
        us = torch._foreach_mul(ds, es)
        for u in us:
            u.masked_fill_(skip, 0.0)
        torch._foreach_sub_(ps, us)


# --------------------------------------------------------------------------------------------
# the optimizer
# --------------------------------------------------------------------------------------------
class DoG(LRKitOptimizer):
    """DoG ("Distance over Gradients"): SGD whose step size needs no tuning.

    For each param group (one block: all its tensors as one vector ``x``), step ``t`` does::

        g_t = ∇f(x_t) + λ x_t
        r̄_t = max(r̄_{t−1}, ‖x_t − x_0‖),        r̄_{−1} = r_ε = reps_rel · (1 + ‖x_0‖)
        G_t = G_{t−1} + w_t ‖g_t‖²,               G_{−1} = ε
        η_t = c · r̄_t · √w_t / √G_t
        x_{t+1} = x_t − η_t g_t

    with ``w_t = 1`` (DoG) or ``w_t = r̄_t²`` (``weighted=True``: DoWG, whose step is
    ``η_t = c · r̄_t² / √G_t``). DoG has no decaying schedule: average the iterates
    (:class:`lrkit.optim.PolynomialDecayAverager`) and evaluate the average, as the paper does.

    Symbols: ``lr`` is ``c`` (keep 1.0), ``reps_rel`` sets ``r_ε``, ``eps`` is ``ε``,
    ``weight_decay`` is ``λ``, ``init_eta`` replaces ``η_0``.

    Args:
        params: Parameters or param groups. Each group is its own DoG (own ``r̄`` and ``G``).
        lr: ``c``, a factor on the step size (default 1.0; the paper's analysis uses 1). A
            schedule attached with :class:`lrkit.Scheduler` scales ``c``.
        reps_rel: Relative size of the first step: ``r_ε = reps_rel·(1 + ‖x_0‖)``, so
            ``η_0 = c · r_ε / √(‖g_0‖² + ε)``. 1e-6 by default; the paper suggests 1e-4 for
            models with batch normalization.
        weight_decay: ``λ``, an L2 penalty added to the gradient (``g + λx``), also inside
            ``G``, as in the reference package.
        eps: ``ε``, the initial value of ``G`` (keeps ``η`` finite when the first gradients are
            zero).
        init_eta: If given, the first step size of each block is exactly this value and
            ``reps_rel`` is ignored (``r̄`` starts at 0).
        weighted: ``True`` gives DoWG, ``w_t = r̄_t²``.
        foreach: Multi-tensor (``True``) or per-tensor (``False``) math; ``None`` follows
            torch.optim: multi-tensor on CUDA-like devices, per-tensor on the CPU.
        process_group: The data-parallel group this optimizer runs in.
        sharded: Each rank of ``process_group`` holds a different part of the parameters:
            ``‖x − x_0‖²``, ``‖g‖²`` and ``‖x_0‖²`` are summed over the ranks (one
            ``all_reduce`` per step). Under plain data parallelism (replicated parameters,
            averaged gradients) leave it ``False``: nothing needs reducing.

    Raises:
        TypeError: An argument has the wrong type; a gradient is sparse or complex (at step).
        ValueError: ``lr``, ``reps_rel``, ``init_eta``, ``weight_decay`` or ``eps`` is negative,
            zero where that is refused, or not finite.

    Behaviour beyond the paper:
        * A non-finite gradient (``‖g‖²`` over all groups is inf or NaN) skips the whole step:
          parameters, ``r̄``, ``G`` and the step counts stay as they were; ``info()["skipped"]``
          counts such steps. The reference package lets NaN into its state and the parameters.
        * Tensors without a gradient are skipped (not updated, not in ``G``), but they count in
          ``‖x − x_0‖``; ``x_0`` is taken at the first ``step()`` for every tensor of the group,
          as in the reference package. ``init_eta`` applies to each block's first step with a
          gradient.
        * ``step()`` does not write the weight decay into ``p.grad`` (the reference package
          does).

    Examples:
        >>> import torch
        >>> from lrkit.optim import DoG
        >>> w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
        >>> opt = DoG([w])
        >>> for _ in range(3):
        ...     opt.zero_grad()
        ...     (w**2).sum().backward()
        ...     _ = opt.step()
        >>> opt.info()["step"]
        3.0

    References:
        Ivgi, Hinder & Carmon, "DoG is SGD's Best Friend: A Parameter-Free Dynamic Step Size
        Schedule", ICML 2023 (arXiv:2302.12022); reference package ``dog-optimizer``
        (``dog.DoG``, ``dog.LDoG``), matched at every step by the tests.
        Khaled, Mishchenko & Jin, "DoWG Unleashed: An Efficient Universal Parameter-Free
        Gradient Descent Method", NeurIPS 2023 (arXiv:2305.16284).
    """

    layerwise: bool = False
    """One block per tensor (L-DoG) instead of one per param group."""

    def __init__(
        self,
        params: Any,
        lr: float = 1.0,
        *,
        reps_rel: float = 1e-6,
        weight_decay: float = 0.0,
        eps: float = 1e-8,
        init_eta: float | None = None,
        weighted: bool = False,
        foreach: bool | None = None,
        process_group: Any | None = None,
        sharded: bool = False,
    ) -> None:
        check_float("lr", lr, min=0.0)
        check_float("reps_rel", reps_rel, min=0.0, min_open=True)
        check_float("eps", eps, min=0.0)
        if init_eta is not None:
            check_float("init_eta", init_eta, min=0.0, min_open=True)
        self.weighted = check_bool("weighted", weighted)
        if foreach is not None:
            check_bool("foreach", foreach)
        self.sharded = check_sharding(process_group, sharded)
        self.process_group = process_group
        defaults = {
            "lr": lr,
            "reps_rel": reps_rel,
            "weight_decay": weight_decay,
            "eps": eps,
            "init_eta": init_eta,
            "foreach": foreach,
        }
        super().__init__(params, defaults)

    # -- state ------------------------------------------------------------------------------
    def _blocks(self, group: dict[str, Any]) -> int:
        return len(group["params"]) if self.layerwise else 1

    def _stat_dtype(self) -> torch.dtype:
        dtypes = {p.dtype for g in self.param_groups for p in g["params"]}
        return torch.float64 if torch.float64 in dtypes else torch.float32

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load as ``torch.optim.Optimizer`` does, refusing a state of another block layout.

        Raises:
            StateError: The state has a different number of blocks per group (a DoG state
                loaded into an L-DoG or the reverse).
        """
        super().load_state_dict(state_dict)
        glob = self.global_state
        for i, group in enumerate(self.param_groups):
            rbar = glob.get(f"group{i}/rbar")
            if rbar is not None and rbar.numel() != self._blocks(group):
                kind = type(self).__name__
                raise StateError(
                    f"state_dict has {rbar.numel()} blocks in group {i}, a {kind} over this "
                    f"group has {self._blocks(group)}: it comes from another DoG variant"
                )

    # -- step -------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One DoG step over every param group.

        Args:
            closure: Optional; re-evaluates the model and returns the loss (called with
                gradients enabled).

        Returns:
            The closure's loss, or ``None``.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        name = type(self).__name__
        glob = self.global_state
        device = self._device()
        dtype = self._stat_dtype()
        zero = torch.zeros((), dtype=dtype, device=device)

        # 1. per-tensor statistics of every group, aggregated per block
        work: list[_GroupWork] = []
        reduce: list[Tensor] = []
        for i, group in enumerate(self.param_groups):
            params: list[Tensor] = list(group["params"])
            trained = params_with_grad(params, name)
            grads = [p.grad for p in trained if p.grad is not None]
            first = f"group{i}/rbar" not in glob
            if first:
                for p in params:
                    self.state[p]["x0"] = p.detach().clone()
            x0s = [self.state[p]["x0"] for p in params]
            foreach = resolve_foreach(group["foreach"], params)
            stats = dog_statistics_foreach if foreach else dog_statistics_single
            dists, dirs, grad_norms = stats(params, x0s, trained, grads, group["weight_decay"])

            norm_of = {id(p): n for p, n in zip(trained, grad_norms, strict=True)}
            dist_sq = _stack([d.to(dtype) for d in dists], device, dtype).square()
            per_tensor = [norm_of[id(p)].to(dtype) if id(p) in norm_of else zero for p in params]
            grad_sq = _stack(per_tensor, device, dtype).square()
            has_grad = torch.tensor([id(p) in norm_of for p in params], device=device)
            x0_sq = None
            if first:
                x0_norms = [torch.linalg.vector_norm(x).to(dtype) for x in x0s]
                x0_sq = _stack(x0_norms, device, dtype).square()
            if not self.layerwise:
                dist_sq, grad_sq = dist_sq.sum().reshape(1), grad_sq.sum().reshape(1)
                has_grad = has_grad.any().reshape(1)
                x0_sq = None if x0_sq is None else x0_sq.sum().reshape(1)
                if self.sharded:  # one block over the shards of every rank
                    reduce += [dist_sq, grad_sq] + ([] if x0_sq is None else [x0_sq])
            work.append(
                _GroupWork(group, trained, dirs, dist_sq, grad_sq, has_grad, x0_sq, foreach)
            )

        # 2. one all-reduce when sharded; a non-finite gradient anywhere skips the whole step
        if self.sharded and self.layerwise:  # blocks are whole tensors: only the check is global
            reduce.append(_grad_total(work, zero))
        all_reduce_sum_(reduce, self.process_group if self.sharded else None)
        ok = torch.isfinite(
            reduce[-1] if self.sharded and self.layerwise else _grad_total(work, zero)
        )

        # 3. per-block step sizes, committed only when the step is finite, and the update
        for i, w in enumerate(work):
            group, key = w.group, f"group{i}/"
            if w.x0_sq is not None:
                n = w.dist_sq.numel()
                if group["init_eta"] is None:
                    glob[key + "rbar"] = group["reps_rel"] * (1.0 + w.x0_sq.sqrt())
                else:
                    glob[key + "rbar"] = torch.zeros(n, dtype=dtype, device=device)
                glob[key + "G"] = torch.full((n,), group["eps"], dtype=dtype, device=device)
                glob[key + "eta"] = torch.zeros(n, dtype=dtype, device=device)
                glob[key + "steps"] = torch.zeros(n, dtype=torch.int64, device=device)
            rbar, G, steps = glob[key + "rbar"], glob[key + "G"], glob[key + "steps"]

            rbar_new = torch.maximum(rbar, w.dist_sq.sqrt())
            if self.weighted:
                G_new = G + rbar_new.square() * w.grad_sq
                eta = group["lr"] * rbar_new.square() / G_new.sqrt()
            else:
                G_new = G + w.grad_sq
                eta = group["lr"] * rbar_new / G_new.sqrt()
            eta = torch.where(G_new > 0, eta, 0.0)
            if group["init_eta"] is not None:
                eta = torch.where(steps == 0, group["init_eta"], eta)

            stepped = ok & w.has_grad
            glob[key + "rbar"] = torch.where(ok, rbar_new, rbar)
            glob[key + "G"] = torch.where(ok, G_new, G)
            glob[key + "eta"] = torch.where(stepped, eta, glob[key + "eta"])
            glob[key + "steps"] = steps + stepped.long()

            if w.trained:
                index = {id(p): j for j, p in enumerate(group["params"])}
                blocks = eta.unbind(0)
                etas = [blocks[index[id(p)] if self.layerwise else 0] for p in w.trained]
                update = dog_update_foreach if w.foreach else dog_update_single
                update(w.trained, w.dirs, etas, ok)

        count = torch.zeros((), dtype=torch.int64, device=device)
        glob["step"] = glob.get("step", count) + ok
        glob["skipped"] = glob.get("skipped", count) + ~ok
        return loss

    # -- observability ----------------------------------------------------------------------
    def info(self) -> dict[str, float]:
        """Each group's ``lr`` (``c``) and ``effective_lr`` (the last ``η``), plus counts.

        Keys: ``group{i}/lr``, ``group{i}/effective_lr`` (0.0 before the group's first step;
        for :class:`LDoG` the mean over the group's tensors, with ``group{i}/effective_lr_min``
        and ``group{i}/effective_lr_max``), for :class:`DoG` also ``group{i}/rbar`` and
        ``group{i}/G``; ``step`` (steps taken) and ``skipped`` (steps skipped because a
        gradient was not finite).
        """
        out = super().info()
        glob = self.global_state
        for i in range(len(self.param_groups)):
            key = f"group{i}/"
            eta = glob.get(key + "eta")
            if eta is None or eta.numel() == 0:
                out[key + "effective_lr"] = 0.0
                if self.layerwise:
                    out[key + "effective_lr_min"] = out[key + "effective_lr_max"] = 0.0
                continue
            if self.layerwise:
                out[key + "effective_lr"] = float(eta.mean())
                out[key + "effective_lr_min"] = float(eta.min())
                out[key + "effective_lr_max"] = float(eta.max())
            else:
                out[key + "effective_lr"] = float(eta[0])
                out[key + "rbar"] = float(glob[key + "rbar"][0])
                out[key + "G"] = float(glob[key + "G"][0])
        out["step"] = float(glob["step"]) if "step" in glob else 0.0
        out["skipped"] = float(glob["skipped"]) if "skipped" in glob else 0.0
        return out


class LDoG(DoG):
    """Layer-wise DoG (L-DoG): :class:`DoG` with one block per tensor.

    Every tensor ``x^j`` keeps its own distance and gradient sum::

        r̄^j_t = max(r̄^j_{t−1}, ‖x^j_t − x^j_0‖),   r̄^j_{−1} = reps_rel · (1 + ‖x^j_0‖)
        G^j_t = G^j_{t−1} + ‖g^j_t‖²,              G^j_{−1} = ε
        x^j_{t+1} = x^j_t − c · r̄^j_t / √G^j_t · g^j_t

    The arguments are those of :class:`DoG` (``weighted=True`` gives a layer-wise DoWG). Under
    ``sharded=True`` every tensor lives whole on one rank, so only the finiteness check is
    reduced over the ranks.

    References:
        Ivgi, Hinder & Carmon, "DoG is SGD's Best Friend: A Parameter-Free Dynamic Step Size
        Schedule", ICML 2023, Section 4 (L-DoG); reference package ``dog-optimizer``
        (``dog.LDoG``).
    """

    layerwise = True


class _GroupWork(NamedTuple):
    """What a step computes for one param group before the step sizes."""

    group: dict[str, Any]
    trained: list[Tensor]  # the tensors with a gradient
    dirs: list[Tensor]  # g + λx for each of them
    dist_sq: Tensor  # ‖x − x_0‖² per block
    grad_sq: Tensor  # ‖g + λx‖² per block
    has_grad: Tensor  # per block: some tensor has a gradient
    x0_sq: Tensor | None  # ‖x_0‖² per block, at the group's first step only
    foreach: bool


def _grad_total(work: list[_GroupWork], zero: Tensor) -> Tensor:
    if not work:
        return zero
    return torch.stack([w.grad_sq.sum() for w in work]).sum()


def _stack(values: list[Tensor], device: torch.device, dtype: torch.dtype) -> Tensor:
    if not values:
        return torch.zeros(0, dtype=dtype, device=device)
    return torch.stack(values)
