r"""The D-Adaptation family's shared core: its plumbing, and one general D-adapted Adam.

Prodigy (:mod:`lrkit.optim.prodigy`), D-Adapt Adam and D-Adapt SGD (:mod:`lrkit.optim.dadapt`)
estimate one number, the distance ``d`` from the initial point to a solution, from two sums over
all parameters, and use it as the step size. What they share lives here:

* :class:`DAdaptOptimizer`: hyperparameters that drive the one ``d`` must agree across param
  groups (checked when a group is added), per-group ``lr``/``weight_decay``/``eps`` are validated
  per group, the global 0-dim scalars (``d``, the step count ``k``, the running numerator, ...)
  live in :attr:`~lrkit.optim._base.LRKitOptimizer.global_state`, and under sharding the per-step
  sums are all-reduced in one call.
* :func:`py_max`, :func:`py_min`: Python's ``max``/``min`` on 0-dim tensors, so that a step whose
  estimate is NaN keeps ``d`` exactly as the reference packages (which use Python floats) do.
* The general D-adapted Adam that Prodigy and D-Adapt Adam are two settings of, for one parameter
  tensor ``x`` with gradient ``g``:

  .. math::

      \hat g &= g + \lambda_c x                  && \text{(coupled weight decay)} \\
      n &= \langle \hat g, u \rangle,\quad
          u = x_0 - x \;\text{(distance)} \text{ or } u = s / (\sqrt{v} + \epsilon)
          \;\text{(dual)}                        && \text{(before the updates below)} \\
      m &\leftarrow \beta_1 m + (1 - \beta_1)\, a \hat g \\
      v &\leftarrow \beta_2 v + (1 - \beta_2)\, (b \hat g)^2 \\
      s &\leftarrow \beta_s s + c \hat g,\qquad \ell = \lVert s \rVert_1

  and, once the new ``d`` is known, the update

  .. math::

      x \leftarrow x (1 - \lambda_d \alpha) - \alpha \frac{m}{\sqrt{v} + e}.

  Prodigy is the distance variant with ``a = b = d``, ``c = (d/d_0) d \eta``,
  ``\alpha = d \eta`` and ``e = d \epsilon``; D-Adapt Adam the dual variant with
  ``a = d \eta``, ``b = 1``, ``c = (1 - \sqrt{\beta_2}) d \eta``, ``\alpha = 1``,
  ``e = \epsilon``. With ``\beta_1 = 0`` no ``m`` is stored: ``m = a \hat g``.

Each piece of math is written twice, as a readable loop over tensors (``*_single``) and as the same
equations on lists of tensors (``*_foreach``); the two agree to rounding (the loop fuses a
multiply-add that the foreach path splits to keep to ``torch._foreach_*``'s fast kernels).
Per-tensor sums come back as a 1-D tensor in the scalar dtype, one entry per tensor, so the caller
adds them in one fixed order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Literal, overload

import torch
from torch import Tensor

from lrkit._validate import check_bool, check_float
from lrkit.errors import StateError
from lrkit.optim._base import GLOBAL, LRKitOptimizer, check_grad
from lrkit.optim._compiled import check_fused
from lrkit.optim._dist import all_reduce_sum_, check_sharding
from lrkit.optim._foreach import group_by_device_and_dtype, resolve_foreach
from lrkit.optim._loop import Scratch, host_readable

__all__ = [
    "DAdaptOptimizer",
    "GroupTensors",
    "adam_stats_foreach",
    "adam_stats_single",
    "adam_update_foreach",
    "adam_update_single",
    "bias_correction",
    "check_growth_rate",
    "nonnegative",
    "positive",
    "py_max",
    "py_min",
    "scalar_dtype",
    "stack_scalars",
]

Direction = Literal["distance", "dual"]


# -- scalar helpers ---------------------------------------------------------------------------
def scalar_dtype(device: torch.device) -> torch.dtype:
    """The dtype of the global scalars: float64 (as the references' Python floats), float32 on MPS.

    MPS has no float64; everywhere else the scalars are float64 so that ``d``, which spans many
    orders of magnitude, and the running sums keep the precision of the reference packages.
    """
    return torch.float32 if device.type == "mps" else torch.float64


def py_max(a: Tensor, b: Tensor) -> Tensor:
    """``max(a, b)`` as Python computes it: ``b`` only if ``b > a`` (a NaN ``b`` gives ``a``)."""
    return torch.where(b > a, b, a)


def py_min(a: Tensor, b: Tensor) -> Tensor:
    """``min(a, b)`` as Python computes it: ``b`` only if ``b < a`` (a NaN ``b`` gives ``a``)."""
    return torch.where(b < a, b, a)


def bias_correction(k: Tensor, beta1: float, beta2: float) -> Tensor:
    """Adam's bias correction folded into the step size: ``sqrt(1 - β2^(k+1)) / (1 - β1^(k+1))``."""
    return torch.sqrt(1.0 - beta2 ** (k + 1.0)) / (1.0 - beta1 ** (k + 1.0))


def check_growth_rate(value: object) -> float:
    """Return ``growth_rate`` as a float ``>= 1``; ``inf`` (no limit) is allowed.

    Raises:
        TypeError: ``value`` is not a real number.
        ValueError: ``value`` is NaN or below 1.
    """
    if isinstance(value, float) and value == math.inf:
        return value
    return check_float("growth_rate", value, min=1.0)


def nonnegative(name: str, value: object) -> float:
    """A finite float ``>= 0`` (a per-group ``lr`` or ``weight_decay``)."""
    return check_float(name, value, min=0.0)


def positive(name: str, value: object) -> float:
    """A finite float ``> 0`` (a per-group ``eps``)."""
    return check_float(name, value, min=0.0, min_open=True)


def stack_scalars(values: list[Tensor], like: Tensor) -> Tensor:
    """The 0-dim ``values`` as one 1-D tensor in ``like``'s dtype and device (empty if none)."""
    if not values:
        return like.new_zeros(0)
    try:  # one stack and one cast (stack promotes mixed dtypes exactly: floats widen)
        return torch.stack(values).to(device=like.device, dtype=like.dtype)
    except RuntimeError:  # values on several devices
        return torch.stack([v.to(device=like.device, dtype=like.dtype) for v in values])


def _operand(scalar: Tensor, like: Tensor) -> Tensor:
    """``scalar`` in ``like``'s dtype when that is float32, else ``scalar`` itself.

    A float64 0-dim tensor in an op on float32 tensors is cast to float32 inside every op; casting
    it once per loop gives the same values and saves one small copy per op. Other dtypes keep
    the float64 scalar (cast by each op, once, to the op's own compute precision).
    """
    if like.dtype == torch.float32 and scalar.dtype != torch.float32:
        return scalar.to(dtype=like.dtype)
    return scalar


def _l1_norm(t: Tensor, buf: Tensor) -> Tensor:
    """``||t||_1`` as ``sum(|t|)``, with ``|t|`` written into ``buf`` (a tensor like ``t``).

    ``torch.linalg.vector_norm(t, 1)`` gives the same value but its CPU kernel takes several
    times as long as an ``abs`` and a ``sum`` (measured in ``benchmarks/optim_step.py``).
    """
    return torch.abs(t, out=buf).sum()


def _decayed(grads: list[Tensor], params: list[Tensor], weight_decay: float) -> list[Tensor]:
    """``ĝ = g + λ x`` as new tensors (``p.grad`` is never written), or the grads themselves."""
    if weight_decay == 0.0:
        return grads
    return list(torch._foreach_add(grads, params, alpha=weight_decay))


# -- the general D-adapted Adam: statistics -----------------------------------------------------
def adam_stats_single(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor] | None,
    exp_avg_sqs: list[Tensor],
    sums: list[Tensor],
    inits: list[Tensor] | None,
    *,
    direction: Direction,
    weight_decay: float,
    beta1: float,
    beta2: float,
    beta_s: float,
    m_scale: Tensor,
    scaled_v: bool,
    s_scale: Tensor,
    eps: float,
    out: Tensor,
) -> tuple[Tensor, Tensor]:
    """One step of the moment and ``s`` updates, tensor by tensor; returns ``(n, ℓ)`` per tensor.

    Args:
        params: Parameters ``x`` (read only).
        grads: Their gradients ``g`` (read only).
        exp_avgs: First moments ``m`` (updated), or ``None`` when ``β1 = 0``.
        exp_avg_sqs: Second moments ``v`` (updated).
        sums: The weighted gradient sums ``s`` (updated).
        inits: Initial points ``x0`` (``direction="distance"``), else ``None``.
        direction: ``"distance"``: ``n = <ĝ, x0 - x>`` (Prodigy); ``"dual"``:
            ``n = <ĝ, s / (sqrt(v) + ε)>`` with the ``s`` and ``v`` before this step (D-Adapt).
        weight_decay: Coupled decay ``λ_c`` (0 for none or decoupled).
        beta1: ``β1``.
        beta2: ``β2``.
        beta_s: ``β_s``, the decay of ``s``.
        m_scale: ``a``.
        scaled_v: ``b = a`` if ``True`` (Prodigy), ``b = 1`` if ``False`` (D-Adapt).
        s_scale: ``c``.
        eps: ``ε`` of the dual numerator.
        out: A 0-dim tensor whose dtype and device the results take.

    Returns:
        ``n`` and ``ℓ = ||s||_1`` (after the update), one entry per tensor.
    """
    numerators: list[Tensor] = []
    norms: list[Tensor] = []
    scratch = Scratch(params)  # u, then a ĝ, then |s|, of one tensor at a time
    cast: dict[torch.dtype, tuple[Tensor, Tensor]] = {}
    # Where a and c are readable on the host for free, they become the ops' scalars (alpha,
    # value) and a ĝ is never written out; elsewhere they stay 0-dim tensors.
    host = host_readable(m_scale) and host_readable(s_scale)
    a_host, c_host = (float(m_scale), float(s_scale)) if host else (0.0, 0.0)
    for i, (x, g, v, s) in enumerate(zip(params, grads, exp_avg_sqs, sums, strict=True)):
        g_hat = g if weight_decay == 0.0 else g.add(x, alpha=weight_decay)  # ĝ = g + λ_c x
        buf = scratch.like(x)
        if direction == "distance":
            assert inits is not None
            u = torch.sub(inits[i], x, out=buf)  # x0 - x
        else:
            u = torch.div(s, torch.sqrt(v, out=buf).add_(eps), out=buf)  # s / (sqrt(v) + ε)
        numerators.append(torch.dot(g_hat.flatten(), u.flatten()))
        del u
        if host:
            if exp_avgs is not None:  # m ← β1 m + (1 - β1) a ĝ
                exp_avgs[i].mul_(beta1).add_(g_hat, alpha=(1.0 - beta1) * a_host)
            b_sq = a_host * a_host if scaled_v else 1.0  # v ← β2 v + (1 - β2) b² ĝ²
            v.mul_(beta2).addcmul_(g_hat, g_hat, value=(1.0 - beta2) * b_sq)
            s.mul_(beta_s).add_(g_hat, alpha=c_host)  # s ← β_s s + c ĝ
        else:
            if x.dtype not in cast:
                cast[x.dtype] = (_operand(m_scale, x), _operand(s_scale, x))
            a, c = cast[x.dtype]
            g_a = torch.mul(g_hat, a, out=buf)  # a ĝ
            if exp_avgs is not None:
                exp_avgs[i].lerp_(g_a, 1.0 - beta1)  # m ← β1 m + (1 - β1) a ĝ
            g_b = g_a if scaled_v else g_hat
            v.mul_(beta2).addcmul_(g_b, g_b, value=1.0 - beta2)  # v ← β2 v + (1 - β2) (b ĝ)²
            del g_a, g_b
            s.mul_(beta_s).addcmul_(g_hat, c)  # s ← β_s s + c ĝ
        norms.append(_l1_norm(s, buf))  # ℓ = ||s||_1
    return stack_scalars(numerators, out), stack_scalars(norms, out)


def adam_stats_foreach(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor] | None,
    exp_avg_sqs: list[Tensor],
    sums: list[Tensor],
    inits: list[Tensor] | None,
    *,
    direction: Direction,
    weight_decay: float,
    beta1: float,
    beta2: float,
    beta_s: float,
    m_scale: Tensor,
    scaled_v: bool,
    s_scale: Tensor,
    eps: float,
    out: Tensor,
) -> tuple[Tensor, Tensor]:
    """:func:`adam_stats_single` on lists of tensors (``torch._foreach_*``), same arguments."""
    numerators: list[Tensor] = []
    norms: list[Tensor] = []
    optional = [t for t in (exp_avgs, inits) if t is not None]
    for bucket in group_by_device_and_dtype([params, grads, exp_avg_sqs, sums, *optional]):
        x, g, v, s = bucket[:4]
        rest = iter(bucket[4:])
        m = next(rest) if exp_avgs is not None else None
        x0 = next(rest) if inits is not None else None
        dev = x[0].device
        g_hat = _decayed(g, x, weight_decay)  # ĝ = g + λ_c x
        if direction == "distance":
            assert x0 is not None
            u = torch._foreach_sub(x0, x)  # x0 - x
        else:
            u = torch._foreach_sqrt(v)
            torch._foreach_add_(u, eps)
            u = torch._foreach_div(s, u)  # s / (sqrt(v) + ε)
        numerators += [torch.dot(a.flatten(), b.flatten()) for a, b in zip(g_hat, u, strict=True)]
        del u
        g_a = torch._foreach_mul(g_hat, m_scale.to(dev))
        if m is not None:
            torch._foreach_lerp_(m, g_a, 1.0 - beta1)
        g_b = g_a if scaled_v else g_hat
        torch._foreach_mul_(v, beta2)
        torch._foreach_addcmul_(v, g_b, g_b, value=1.0 - beta2)
        del g_a, g_b
        torch._foreach_mul_(s, beta_s)
        torch._foreach_add_(s, torch._foreach_mul(g_hat, s_scale.to(dev)))
        if dev.type == "cpu":  # no multi-tensor kernel there, and the norm's is slow
            norms += [si.abs().sum() for si in s]
        else:
            norms += torch._foreach_norm(s, 1)
    return stack_scalars(numerators, out), stack_scalars(norms, out)


# -- the general D-adapted Adam: the update ----------------------------------------------------
def adam_update_single(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor] | None,
    exp_avg_sqs: list[Tensor],
    *,
    weight_decay: float,
    m_scale: Tensor,
    decay: Tensor | None,
    step: Tensor | float,
    eps: Tensor | float,
) -> None:
    """``x ← x (1 - λ_d α) - α m / (sqrt(v) + e)``, tensor by tensor.

    Args:
        params: Parameters ``x`` (updated).
        grads: Gradients, used only when ``exp_avgs`` is ``None`` (``m = a ĝ``).
        exp_avgs: First moments ``m``, or ``None`` when ``β1 = 0``.
        exp_avg_sqs: Second moments ``v``.
        weight_decay: Coupled decay ``λ_c`` in ``ĝ`` when ``exp_avgs`` is ``None``.
        m_scale: ``a`` in ``m = a ĝ`` when ``exp_avgs`` is ``None``.
        decay: ``λ_d α`` for decoupled weight decay, or ``None``.
        step: ``α``, a tensor (Prodigy) or a number (D-Adapt Adam: 1).
        eps: ``e``.
    """
    neg_step: Tensor | float = -step
    if isinstance(neg_step, Tensor) and host_readable(neg_step):
        neg_step = float(neg_step)  # addcdiv_'s value: no division of sqrt(v) + e by -α
    scalars = {"keep": None if decay is None else 1.0 - decay, "neg_step": neg_step, "eps": eps}
    cast: dict[torch.dtype, dict[str, Any]] = {}
    scratch = Scratch(params)  # sqrt(v) + e of one tensor at a time
    for i, (x, v) in enumerate(zip(params, exp_avg_sqs, strict=True)):
        if x.dtype not in cast:  # the 0-dim scalars in the op's dtype, cast once
            cast[x.dtype] = {
                k: _operand(c, x) if isinstance(c, Tensor) else c for k, c in scalars.items()
            }
        keep, neg_step, e = cast[x.dtype]["keep"], cast[x.dtype]["neg_step"], cast[x.dtype]["eps"]
        if exp_avgs is not None:
            m = exp_avgs[i]
        else:
            g = grads[i]
            g_hat = g if weight_decay == 0.0 else g.add(x, alpha=weight_decay)
            m = g_hat * m_scale
        denom = torch.sqrt(v, out=scratch.like(v)).add_(e)  # sqrt(v) + e
        if keep is not None:
            x.mul_(keep)  # x ← x (1 - λ_d α)
        if isinstance(neg_step, Tensor):
            x.addcdiv_(m, denom.div_(neg_step))  # x ← x + m / ((sqrt(v) + e) / -α)
        else:
            x.addcdiv_(m, denom, value=neg_step)  # x ← x - α m / (sqrt(v) + e)


def adam_update_foreach(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor] | None,
    exp_avg_sqs: list[Tensor],
    *,
    weight_decay: float,
    m_scale: Tensor,
    decay: Tensor | None,
    step: Tensor | float,
    eps: Tensor | float,
) -> None:
    """:func:`adam_update_single` on lists of tensors (``torch._foreach_*``), same arguments."""
    lists = [params, exp_avg_sqs, exp_avgs if exp_avgs is not None else grads]
    for x, v, m_or_g in group_by_device_and_dtype(lists):
        dev = x[0].device
        if exp_avgs is not None:
            m = m_or_g
        else:
            m = list(torch._foreach_mul(_decayed(m_or_g, x, weight_decay), m_scale.to(dev)))
        denom = torch._foreach_sqrt(v)
        torch._foreach_add_(denom, eps.to(dev) if isinstance(eps, Tensor) else eps)
        if decay is not None:
            torch._foreach_mul_(x, (1.0 - decay).to(dev))
        if isinstance(step, Tensor) and not host_readable(step):
            torch._foreach_div_(denom, (-step).to(dev))
            torch._foreach_addcdiv_(x, m, denom)
        else:  # as the loop: -α as addcdiv_'s value
            torch._foreach_addcdiv_(x, m, denom, value=-float(step))


# -- the optimizer plumbing -----------------------------------------------------------------------
class GroupTensors:
    """The tensors of one param group that take part in a step: params with a gradient, and state.

    Attributes:
        group: The param group.
        params: Its params that have a gradient, in group order.
        grads: Their gradients.
        buffers: State tensors by name, parallel to ``params``.
    """

    __slots__ = ("buffers", "grads", "group", "params")

    def __init__(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        buffers: dict[str, list[Tensor]],
    ) -> None:
        self.group = group
        self.params = params
        self.grads = grads
        self.buffers = buffers

    def get(self, name: str) -> list[Tensor] | None:
        """The buffers called ``name``, or ``None`` if this optimizer keeps none of that name."""
        return self.buffers.get(name)


class DAdaptOptimizer(LRKitOptimizer):
    """Base of the D-Adaptation family: shared hyperparameters, global scalars, one all-reduce.

    Subclasses set :attr:`shared_hparams` (hyperparameters that drive the one ``d`` and so must
    be the same in every param group), :attr:`group_hparams` (checked per group), and implement
    :meth:`_initial_scalars` and ``step``.
    """

    shared_hparams: ClassVar[tuple[str, ...]] = ()
    group_hparams: ClassVar[dict[str, Callable[[str, object], object]]] = {}
    display_name: ClassVar[str] = "optimizer"

    def __init__(
        self,
        params: Any,
        defaults: dict[str, Any],
        *,
        foreach: bool | None,
        process_group: Any | None,
        sharded: bool,
        fused: bool | None = None,
    ) -> None:
        if foreach is not None:
            check_bool("foreach", foreach)
        check_sharding(process_group, sharded)
        self.foreach = foreach
        self.process_group = process_group
        self.sharded = sharded
        super().__init__(params, defaults)
        self.fused = check_fused(fused, self.param_groups)
        """Whether steps run the compiled kernels (:mod:`lrkit.optim._compiled`)."""
        device = self._device()
        dtype = scalar_dtype(device)
        for key, value in self._initial_scalars().items():
            self.global_state[key] = torch.tensor(value, dtype=dtype, device=device)

    def _initial_scalars(self) -> dict[str, float]:
        """The global scalars and their values before the first step."""
        raise NotImplementedError

    def _step(self) -> None:
        """One step of the algorithm, with gradients in ``p.grad`` (under ``torch.no_grad``)."""
        raise NotImplementedError

    @overload
    def step(self, closure: None = None) -> None: ...

    @overload
    def step(self, closure: Callable[[], float]) -> float: ...

    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Take one step; ``closure``, if given, recomputes the loss (and gradients) first.

        Args:
            closure: A callable that clears the gradients, computes the loss, calls
                ``backward()`` and returns the loss.

        Returns:
            The closure's loss, or ``None``.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with torch.no_grad():
            self._step()
        return loss

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group; its per-group values are checked, shared ones must match.

        Raises:
            ValueError: A per-group value is out of range, or a shared hyperparameter differs
                from the optimizer's.
            TypeError: A per-group value has the wrong type.
        """
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        index = len(self.param_groups) - 1
        for name, check in self.group_hparams.items():
            group[name] = check(f"{name} in param group {index}", group[name])
        for name in self.shared_hparams:
            value = group[name]
            if isinstance(value, list):
                value = group[name] = tuple(value)
            if value != self.defaults[name]:
                raise ValueError(
                    f"{name} is shared by all param groups (it drives the one d estimate): set it "
                    f"on the optimizer; got {value!r} in param group {index} and "
                    f"{self.defaults[name]!r} on the optimizer"
                )

    # -- helpers for step() ---------------------------------------------------------------------
    @property
    def hparams(self) -> dict[str, Any]:
        """The shared hyperparameters (from the first param group, equal in all)."""
        return self.param_groups[0]

    def _use_foreach(self) -> bool:
        params = [p for g in self.param_groups for p in g["params"]]
        return resolve_foreach(self.foreach, params)

    def _gather(
        self,
        group: dict[str, Any],
        names: Sequence[str],
        init: Callable[[Tensor], dict[str, Tensor]],
    ) -> GroupTensors:
        """The params of ``group`` with a gradient, their grads and the state named ``names``.

        State is created by ``init(p)`` on a parameter's first step.
        """
        params: list[Tensor] = []
        grads: list[Tensor] = []
        buffers: dict[str, list[Tensor]] = {name: [] for name in names}
        for p in group["params"]:
            if p.grad is None:
                continue
            grads.append(check_grad(p, self.display_name))
            params.append(p)
            state = self.state[p]
            if not state:
                state.update(init(p))
            for name in names:
                buffers[name].append(state[name])
        return GroupTensors(group, params, grads, buffers)

    def _all_reduce(self, sums: list[Tensor]) -> None:
        """Sum the per-step ``sums`` over ``process_group`` in place, in one call, when sharded."""
        if self.sharded:
            all_reduce_sum_(sums, self.process_group)

    def _scalars_info(self, names: Sequence[str]) -> dict[str, float]:
        """The global scalars ``names`` as Python floats, read in one transfer."""
        glob = self.global_state
        values = torch.stack([glob[name].to(torch.float64) for name in names]).tolist()
        return dict(zip(names, values, strict=True))

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load as ``torch.optim.Optimizer`` does, once its global scalars are known to be ours.

        Raises:
            StateError: ``state_dict`` has other global scalars (another optimizer's state).
        """
        saved = set(state_dict.get("state", {}).get(GLOBAL, {}))
        expected = set(self._initial_scalars())
        if saved != expected:
            raise StateError(
                f"state_dict is not a {type(self).__name__} state: its global scalars are "
                f"{sorted(saved)}, expected {sorted(expected)}"
            )
        super().load_state_dict(state_dict)
