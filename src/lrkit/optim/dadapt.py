"""D-Adaptation: SGD and Adam whose step size is a lower bound on the distance to the solution."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor

from lrkit._validate import check_bool, check_float, check_probability
from lrkit.optim._compiled import adam_stats_fused, adam_update_fused, dadapt_adam_fused
from lrkit.optim._dadapt_core import (
    DAdaptOptimizer,
    adam_stats_foreach,
    adam_stats_single,
    adam_update_foreach,
    adam_update_single,
    bias_correction,
    check_growth_rate,
    nonnegative,
    positive,
    py_max,
    py_min,
    stack_scalars,
)
from lrkit.optim._foreach import group_by_device_and_dtype

__all__ = [
    "DAdaptAdam",
    "DAdaptSGD",
    "sgd_stats_foreach",
    "sgd_stats_single",
    "sgd_update_foreach",
    "sgd_update_single",
]


def _check_betas(betas: object) -> tuple[float, float]:
    if not isinstance(betas, tuple | list) or len(betas) != 2:
        raise TypeError(f"betas must be a pair of floats, got {betas!r}")
    return check_probability("betas[0]", betas[0]), check_probability("betas[1]", betas[1])


class DAdaptAdam(DAdaptOptimizer):
    r"""D-Adapt Adam (Defazio & Mishchenko): Adam with a D-adapted step size; leave ``lr=1``.

    At step :math:`k`, with :math:`d_k` the current estimate, :math:`\eta` the largest ``lr`` of
    the param groups and :math:`r = \eta_g / \eta` a group's share of it, step size
    :math:`\alpha_k = d_k \eta \rho_k` (:math:`\rho_k = \sqrt{1-\beta_2^{k+1}}/(1-\beta_1^{k+1})`
    with ``use_bias_correction``, else 1), every parameter tensor :math:`x` does

    .. math::

        \hat g &= g + \lambda x \quad\text{(only if not decouple)} \\
        n &= r \alpha_k \langle \hat g, s / (\sqrt{v} + \epsilon) \rangle
            \quad\text{(with } s, v \text{ before this step)} \\
        m &\leftarrow \beta_1 m + (1-\beta_1)\, r \alpha_k \hat g, \qquad
        v \leftarrow \beta_2 v + (1-\beta_2)\, \hat g^2 \\
        s &\leftarrow \sqrt{\beta_2}\, s + (1-\sqrt{\beta_2})\, \alpha_k \hat g

    and, summed over all parameters (all groups, and all ranks when sharded),

    .. math::

        N_{k+1} &= \sqrt{\beta_2} N_k + (1 - \sqrt{\beta_2}) \textstyle\sum n, \qquad
        \hat d_{k+1} = \frac{N_{k+1}}{(1 - \sqrt{\beta_2}) \sum r \lVert s \rVert_1} \\
        d_{k+1} &= \max\bigl(d_k, \min(\hat d_{k+1}, d_k \gamma)\bigr)

    then :math:`x \leftarrow x - \lambda r \alpha_k x` (only if decouple) and
    :math:`x \leftarrow x - m / (\sqrt{v} + \epsilon)` (the step size is inside :math:`m`).

    Symbols: ``lr`` is :math:`\eta_g`, ``betas`` :math:`(\beta_1, \beta_2)`, ``eps``
    :math:`\epsilon`, ``weight_decay`` :math:`\lambda`, ``d0`` :math:`d_0`, ``growth_rate``
    :math:`\gamma`. ``d``, :math:`N` and :math:`k` are global 0-dim tensors (one ``d`` for all
    groups, as in the reference).

    This follows the reference package ``dadaptation`` (``DAdaptAdam``, version 3.2), the paper's
    Adam variant with its growth limit, bias correction and weight decay options; tested against
    it at every step. Deviations, each tested:

    * A group's ``lr`` relative to the largest is the reference's ``layer_scale``
      (:math:`r`): ``lr=0.5`` in one group and ``lr=1`` in another is the reference with
      ``layer_scale=0.5`` on the first; there is no separate ``layer_scale``. Decoupled decay
      is scaled by :math:`r` too, as a group's lr scales it in ``torch.optim.AdamW`` (the
      reference leaves it out).
    * A group with ``lr=0`` is frozen: no statistics, no moment update, no move. (The reference
      keeps applying its stale first moment and decoupled decay.)
    * ``p.grad`` is never modified (the reference adds coupled weight decay to it in place);
      with :math:`\beta_1 = 0` no first moment is stored.
    * Like the reference, a step where :math:`\sum \lVert s \rVert_1 = 0` (no gradient yet)
      changes neither ``d``, :math:`k` nor the parameters.
    * A step whose sums are not finite (a NaN or inf gradient) leaves ``d``, :math:`N` and the
      last :math:`\hat d` unchanged and adds 1 to ``info()["nonfinite_steps"]``; the moments and
      parameters take the bad gradient as in the reference (skip such steps, as
      ``torch.amp.GradScaler`` does).

    Distributed: under DDP nothing is reduced. With ``sharded=True`` the two per-step sums are
    all-reduced over ``process_group`` in one call.

    Args:
        params: Parameters or param groups. Per group: ``lr``, ``weight_decay``, ``eps``.
        lr: :math:`\eta`, a factor on the learned step size (default 1).
        betas: :math:`(\beta_1, \beta_2)`, each in [0, 1).
        eps: :math:`\epsilon > 0`.
        weight_decay: :math:`\lambda \ge 0`.
        decouple: Decoupled (AdamW) decay if ``True``, else added to the gradient (default).
        use_bias_correction: Adam's bias correction, folded into the step size.
        d0: :math:`d_0 > 0`, the initial estimate.
        growth_rate: :math:`\gamma \ge 1`, the most ``d`` may grow per step (``inf``: no limit).
        foreach: Multi-tensor path; ``None`` follows torch.optim (multi-tensor on CUDA-like
            devices, the per-tensor loop on the CPU).
        fused: ``True``: on the CPU, fused kernels, one for the whole step, or with decoupled
            weight decay one for the statistics and one for the update: native C++ for float32
            and float64 tensors (built once, in seconds), ``torch.compile`` kernels for other
            dtypes' tensors of 64K elements or more (see :mod:`lrkit.optim._compiled`), the
            ``foreach`` choice for the rest and wherever compiling fails (with a warning).
            ``None`` (default) or ``False``: the ``foreach`` choice.
        process_group: The data-parallel process group this optimizer runs in.
        sharded: Parameters are sharded over ``process_group``: all-reduce the sums.

    Raises:
        ValueError: An argument is out of range or not finite, or a shared hyperparameter
            (all but ``lr``, ``weight_decay``, ``eps``) differs between param groups.
        TypeError: An argument has the wrong type; at ``step()``, a sparse or complex gradient.

    Examples:
        >>> model = torch.nn.Linear(4, 1)
        >>> opt = DAdaptAdam(model.parameters(), decouple=True, weight_decay=0.01)
        >>> model(torch.ones(2, 4)).sum().backward()
        >>> opt.step()
        >>> opt.info()["step"]
        1.0

    References:
        Aaron Defazio, Konstantin Mishchenko. Learning-Rate-Free Learning by D-Adaptation.
        ICML 2023. https://arxiv.org/abs/2301.07733
    """

    shared_hparams = ("betas", "d0", "growth_rate", "decouple", "use_bias_correction")
    group_hparams: ClassVar[dict[str, Callable[[str, object], object]]] = {
        "lr": nonnegative,
        "weight_decay": nonnegative,
        "eps": positive,
    }
    display_name = "DAdaptAdam"

    def __init__(
        self,
        params: Any,
        lr: float = 1.0,
        *,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decouple: bool = False,
        use_bias_correction: bool = False,
        d0: float = 1e-6,
        growth_rate: float = math.inf,
        foreach: bool | None = None,
        fused: bool | None = None,
        process_group: Any | None = None,
        sharded: bool = False,
    ) -> None:
        defaults = {
            "lr": check_float("lr", lr, min=0.0),
            "betas": _check_betas(betas),
            "eps": check_float("eps", eps, min=0.0, min_open=True),
            "weight_decay": check_float("weight_decay", weight_decay, min=0.0),
            "decouple": check_bool("decouple", decouple),
            "use_bias_correction": check_bool("use_bias_correction", use_bias_correction),
            "d0": check_float("d0", d0, min=0.0, min_open=True),
            "growth_rate": check_growth_rate(growth_rate),
        }
        super().__init__(
            params,
            defaults,
            foreach=foreach,
            process_group=process_group,
            sharded=sharded,
            fused=fused,
        )

    def _initial_scalars(self) -> dict[str, float]:
        return {
            "d": float(self.defaults["d0"]),
            "d_hat": 0.0,
            "numerator": 0.0,
            "denominator": 0.0,
            "step": 0.0,
            "nonfinite_steps": 0.0,
        }

    @staticmethod
    def _init_state(p: Tensor, *, first_moment: bool) -> dict[str, Tensor]:
        state = {
            "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
            "s": torch.zeros_like(p, memory_format=torch.preserve_format),
        }
        if first_moment:
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    def _step(self) -> None:
        hp = self.hparams
        lr = max(float(g["lr"]) for g in self.param_groups)
        if lr == 0.0:
            return
        groups = [g for g in self.param_groups if g["lr"] > 0.0]
        beta1, beta2 = hp["betas"]
        sqrt_beta2 = math.sqrt(beta2)
        decouple = hp["decouple"]
        glob = self.global_state
        d, k = glob["d"], glob["step"]
        rho = bias_correction(k, beta1, beta2) if hp["use_bias_correction"] else torch.ones_like(d)
        dlr = d * lr * rho  # α_k
        foreach = self._use_foreach()
        plain_stats = adam_stats_foreach if foreach else adam_stats_single
        plain_update = adam_update_foreach if foreach else adam_update_single
        stats: Callable[..., tuple[Tensor, Tensor]] = plain_stats
        update: Callable[..., None] = plain_update
        if self.fused:
            stats = functools.partial(adam_stats_fused, fallback=plain_stats)
            update = functools.partial(adam_update_fused, fallback=plain_update)
        names = ("exp_avg_sq", "s", "exp_avg") if beta1 > 0.0 else ("exp_avg_sq", "s")

        # Statistics: this step's numerator terms (before the updates), moments, s, ||s||_1.
        gathered = []
        numerator = torch.zeros_like(d)
        denominator = torch.zeros_like(d)
        for group in groups:
            t = self._gather(group, names, lambda p: self._init_state(p, first_moment=beta1 > 0))
            r = group["lr"] / lr
            lists = (t.params, t.grads, t.get("exp_avg"), t.buffers["exp_avg_sq"], t.buffers["s"])
            args: dict[str, Any] = {
                "weight_decay": 0.0 if decouple else group["weight_decay"],
                "beta1": beta1,
                "beta2": beta2,
                "beta_s": sqrt_beta2,
                "m_scale": r * dlr,
                "s_scale": (1.0 - sqrt_beta2) * dlr,
                "eps": group["eps"],
                "out": d,
            }
            if self.fused and not (decouple and group["weight_decay"]):
                # The update needs none of this step's sums: the compiled path takes the whole
                # step of the group at once, one kernel per tensor.
                dots, norms = dadapt_adam_fused(
                    *lists, **args, fallback_stats=plain_stats, fallback_update=plain_update
                )
            else:
                dots, norms = stats(*lists, None, direction="dual", scaled_v=False, **args)
                gathered.append((t, r))
            numerator = numerator + r * dlr * dots.sum()
            denominator = denominator + r * norms.sum()
        self._all_reduce([numerator, denominator])

        # The new estimate; a step without progress or with non-finite sums keeps the old one.
        progress = denominator != 0.0
        finite = torch.isfinite(numerator) & torch.isfinite(denominator)
        keep = progress & finite
        n_new = sqrt_beta2 * glob["numerator"] + (1.0 - sqrt_beta2) * numerator
        d_hat = n_new / ((1.0 - sqrt_beta2) * denominator)
        d_new = py_max(d, py_min(d_hat, d * hp["growth_rate"]))
        glob["numerator"] = torch.where(keep, n_new, glob["numerator"])
        glob["denominator"] = torch.where(keep, denominator, glob["denominator"])
        glob["d_hat"] = torch.where(keep, d_hat, glob["d_hat"])
        glob["d"] = torch.where(keep, d_new, d)
        glob["nonfinite_steps"] = glob["nonfinite_steps"] + (progress & ~finite).to(d.dtype)
        glob["step"] = k + progress.to(d.dtype)

        # The update: the step size is already inside m.
        moved = progress.to(d.dtype)
        for t, r in gathered:
            group = t.group
            wd = group["weight_decay"]
            update(
                t.params,
                t.grads,
                t.get("exp_avg"),
                t.buffers["exp_avg_sq"],
                weight_decay=0.0 if decouple else wd,
                m_scale=r * dlr,
                decay=wd * r * dlr * moved if decouple and wd else None,
                step=1.0,  # the step size is inside m, which is 0 until a step makes progress
                eps=group["eps"],
            )

    def info(self) -> dict[str, float]:
        r"""``group{i}/lr``, ``group{i}/effective_lr`` (:math:`d \eta_g \rho`) and the scalars.

        Scalars: ``d``, ``d_hat`` (the last estimate), ``numerator`` (:math:`N`),
        ``denominator`` (:math:`\sum r \lVert s \rVert_1`), ``step`` (:math:`k`) and
        ``nonfinite_steps``. The effective learning rate is the step size the next step takes.
        """
        scalars = self._scalars_info(
            ("d", "d_hat", "numerator", "denominator", "step", "nonfinite_steps")
        )
        beta1, beta2 = self.hparams["betas"]
        k = scalars["step"]
        rho = 1.0
        if self.hparams["use_bias_correction"]:
            rho = math.sqrt(1.0 - beta2 ** (k + 1.0)) / (1.0 - beta1 ** (k + 1.0))
        out: dict[str, float] = {}
        for i, group in enumerate(self.param_groups):
            out[f"group{i}/lr"] = float(group["lr"])
            out[f"group{i}/effective_lr"] = scalars["d"] * float(group["lr"]) * rho
        out.update(scalars)
        return out


# -- D-Adapt SGD ----------------------------------------------------------------------------------
def sgd_stats_single(
    params: list[Tensor],
    grads: list[Tensor],
    sums: list[Tensor],
    *,
    weight_decay: float,
    s_scale: Tensor,
    out: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """D-Adapt SGD's statistics and ``s`` update, tensor by tensor.

    For each tensor: ``ĝ = g + λ x``, ``n = <ĝ, s>`` (``s`` before the step), then
    ``s ← s + c ĝ``.

    Args:
        params: Parameters ``x`` (read only).
        grads: Gradients ``g`` (read only).
        sums: Gradient sums ``s`` (updated).
        weight_decay: ``λ``.
        s_scale: ``c``.
        out: A 0-dim tensor whose dtype and device the results take.

    Returns:
        Per tensor: ``n``, ``||s||_2`` after the update, and ``||ĝ||_2``.
    """
    numerators: list[Tensor] = []
    s_norms: list[Tensor] = []
    g_norms: list[Tensor] = []
    for x, g, s in zip(params, grads, sums, strict=True):
        g_hat = g if weight_decay == 0.0 else g.add(x, alpha=weight_decay)  # ĝ = g + λ x
        numerators.append(torch.dot(g_hat.flatten(), s.flatten()))  # <ĝ, s>
        g_norms.append(torch.linalg.vector_norm(g_hat))
        s.addcmul_(g_hat, s_scale)  # s ← s + c ĝ
        s_norms.append(torch.linalg.vector_norm(s))
    return stack_scalars(numerators, out), stack_scalars(s_norms, out), stack_scalars(g_norms, out)


def sgd_stats_foreach(
    params: list[Tensor],
    grads: list[Tensor],
    sums: list[Tensor],
    *,
    weight_decay: float,
    s_scale: Tensor,
    out: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`sgd_stats_single` on lists of tensors (``torch._foreach_*``), same arguments."""
    numerators: list[Tensor] = []
    s_norms: list[Tensor] = []
    g_norms: list[Tensor] = []
    for x, g, s in group_by_device_and_dtype([params, grads, sums]):
        g_hat = g if weight_decay == 0.0 else torch._foreach_add(g, x, alpha=weight_decay)
        numerators += [torch.dot(a.flatten(), b.flatten()) for a, b in zip(g_hat, s, strict=True)]
        g_norms += torch._foreach_norm(g_hat)
        torch._foreach_add_(s, torch._foreach_mul(g_hat, s_scale.to(x[0].device)))
        s_norms += torch._foreach_norm(s)
    return stack_scalars(numerators, out), stack_scalars(s_norms, out), stack_scalars(g_norms, out)


def sgd_update_single(
    params: list[Tensor],
    sums: list[Tensor],
    inits: list[Tensor],
    *,
    s_factor: Tensor,
    weight: Tensor,
) -> None:
    """``z = x0 - f s`` and ``x ← x + w (z - x)`` (momentum as averaging), tensor by tensor.

    Args:
        params: Parameters ``x`` (updated).
        sums: Gradient sums ``s``.
        inits: Initial points ``x0``.
        s_factor: ``f``, the factor that turns ``s`` into a displacement.
        weight: ``w = 1 - μ`` (0 for a step that must not move).
    """
    neg_factor = -s_factor
    for x, s, x0 in zip(params, sums, inits, strict=True):
        z = torch.addcmul(x0, s, neg_factor)  # z = x0 - f s, the dual-averaging point
        x.lerp_(z, weight)  # x ← μ x + (1 - μ) z


def sgd_update_foreach(
    params: list[Tensor],
    sums: list[Tensor],
    inits: list[Tensor],
    *,
    s_factor: Tensor,
    weight: Tensor,
) -> None:
    """:func:`sgd_update_single` on lists of tensors (``torch._foreach_*``), same arguments."""
    for x, s, x0 in group_by_device_and_dtype([params, sums, inits]):
        dev = x[0].device
        z = torch._foreach_mul(s, (-s_factor).to(dev))
        torch._foreach_add_(z, x0)
        torch._foreach_lerp_(x, z, [weight.to(dev)] * len(x))


class DAdaptSGD(DAdaptOptimizer):
    r"""D-Adapt SGD (Defazio & Mishchenko): dual averaging with a D-adapted step size.

    At step :math:`k`, with :math:`d_k` the current estimate, :math:`\eta` a group's ``lr`` and
    :math:`G = \lVert \hat g_0 \rVert` the norm of the first nonzero gradient over all
    parameters, step size :math:`\alpha_k = d_k \eta / G`, every parameter tensor :math:`x`
    (initial value :math:`x_0`) does

    .. math::

        \hat g &= g + \lambda x, \qquad n = \alpha_k \langle \hat g, s \rangle
            \quad\text{(with } s \text{ before this step)} \\
        s &\leftarrow s + \alpha_k \hat g

    and, summed over all parameters (all groups, and all ranks when sharded),

    .. math::

        N_{k+1} &= N_k + \textstyle\sum n, \qquad
        \hat d_{k+1} = \frac{2 N_{k+1}}{\lVert s \rVert_2}, \qquad
        d_{k+1} = \max\bigl(d_k, \min(\hat d_{k+1}, d_k \gamma)\bigr)

    then :math:`z = x_0 - s` and :math:`x \leftarrow \mu x + (1 - \mu) z`.

    Symbols: ``lr`` is :math:`\eta`, ``momentum`` :math:`\mu`, ``weight_decay``
    :math:`\lambda`, ``d0`` :math:`d_0`, ``growth_rate`` :math:`\gamma`. ``d``, :math:`N`,
    :math:`G` and :math:`k` are global 0-dim tensors (one ``d`` for all groups).

    This follows the reference package ``dadaptation`` (``DAdaptSGD``, version 3.2), the paper's
    dual-averaging SGD with momentum as primal averaging and a growth limit; tested against it at
    every step. Implementation: :math:`s` is stored multiplied by :math:`G` (and :math:`N` by
    :math:`G^2`), so that :math:`G` enters only after the step's one all-reduce, and :math:`z`
    is not stored (it is recomputed from :math:`x_0` and :math:`s`). Deviations, each tested:

    * :math:`G` includes weight decay, :math:`\lVert g_0 + \lambda x_0 \rVert`, as the
      paper's gradient of the regularized loss (the reference means to add the decay but does
      not, ``grad.add`` without ``_``); it is taken at the first step whose gradient is not zero
      (the reference divides by zero when the first gradient is zero).
    * ``weight_decay`` is per group (the reference applies the first group's to all).
    * Param groups may have different ``lr``: a group's step size is :math:`d_k \eta_g / G`, in
      its update and its share of both sums (the reference refuses different values). A group
      with ``lr=0`` is frozen.
    * ``p.grad`` is never modified (the reference adds weight decay to it in place).
    * Like the reference, a step where :math:`\lVert s \rVert = 0` changes neither ``d``,
      :math:`k` nor the parameters.
    * A step whose sums are not finite leaves ``d``, :math:`N`, :math:`G` and the last
      :math:`\hat d` unchanged and adds 1 to ``info()["nonfinite_steps"]``; ``s`` and the
      parameters take the bad gradient as in the reference.

    Distributed: under DDP nothing is reduced. With ``sharded=True`` the three per-step sums
    (:math:`\sum n`, :math:`\lVert s \rVert^2`, :math:`\lVert \hat g \rVert^2`) are all-reduced
    over ``process_group`` in one call.

    Args:
        params: Parameters or param groups. Per group: ``lr``, ``weight_decay``.
        lr: :math:`\eta`, a factor on the learned step size (default 1).
        momentum: :math:`\mu` in [0, 1).
        weight_decay: :math:`\lambda \ge 0` (added to the gradient).
        d0: :math:`d_0 > 0`, the initial estimate.
        growth_rate: :math:`\gamma \ge 1`, the most ``d`` may grow per step (``inf``: no limit).
        foreach: Multi-tensor path; ``None`` follows torch.optim (multi-tensor on CUDA-like
            devices, the per-tensor loop on the CPU).
        process_group: The data-parallel process group this optimizer runs in.
        sharded: Parameters are sharded over ``process_group``: all-reduce the sums.

    Raises:
        ValueError: An argument is out of range or not finite, or a shared hyperparameter
            (``momentum``, ``d0``, ``growth_rate``) differs between param groups.
        TypeError: An argument has the wrong type; at ``step()``, a sparse or complex gradient.

    Examples:
        >>> model = torch.nn.Linear(4, 1)
        >>> opt = DAdaptSGD(model.parameters(), momentum=0.9)
        >>> model(torch.ones(2, 4)).sum().backward()
        >>> opt.step()
        >>> opt.info()["g0_norm"] > 0
        True

    References:
        Aaron Defazio, Konstantin Mishchenko. Learning-Rate-Free Learning by D-Adaptation.
        ICML 2023. https://arxiv.org/abs/2301.07733
    """

    shared_hparams = ("momentum", "d0", "growth_rate")
    group_hparams: ClassVar[dict[str, Callable[[str, object], object]]] = {
        "lr": nonnegative,
        "weight_decay": nonnegative,
    }
    display_name = "DAdaptSGD"

    def __init__(
        self,
        params: Any,
        lr: float = 1.0,
        *,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        d0: float = 1e-6,
        growth_rate: float = math.inf,
        foreach: bool | None = None,
        process_group: Any | None = None,
        sharded: bool = False,
    ) -> None:
        defaults = {
            "lr": check_float("lr", lr, min=0.0),
            "momentum": check_probability("momentum", momentum),
            "weight_decay": check_float("weight_decay", weight_decay, min=0.0),
            "d0": check_float("d0", d0, min=0.0, min_open=True),
            "growth_rate": check_growth_rate(growth_rate),
        }
        super().__init__(
            params, defaults, foreach=foreach, process_group=process_group, sharded=sharded
        )

    def _initial_scalars(self) -> dict[str, float]:
        return {
            "d": float(self.defaults["d0"]),
            "d_hat": 0.0,
            "g0_norm": 0.0,
            "numerator": 0.0,  # N G^2
            "s_norm": 0.0,  # ||s|| G
            "step": 0.0,
            "nonfinite_steps": 0.0,
        }

    @staticmethod
    def _init_state(p: Tensor) -> dict[str, Tensor]:
        return {
            "s": torch.zeros_like(p, memory_format=torch.preserve_format),
            "x0": p.detach().clone(memory_format=torch.preserve_format),
        }

    def _step(self) -> None:
        hp = self.hparams
        groups = [g for g in self.param_groups if g["lr"] > 0.0]
        if not groups:
            return
        glob = self.global_state
        d, k, g0 = glob["d"], glob["step"], glob["g0_norm"]
        foreach = self._use_foreach()
        stats = sgd_stats_foreach if foreach else sgd_stats_single

        # Statistics, in units of G: s is stored as G s, so its increment is d η ĝ.
        gathered = []
        numerator = torch.zeros_like(d)
        s_sq = torch.zeros_like(d)
        g_sq = torch.zeros_like(d)
        for group in groups:
            t = self._gather(group, ("s", "x0"), self._init_state)
            c = d * group["lr"]
            dots, s_norms, g_norms = stats(
                t.params,
                t.grads,
                t.buffers["s"],
                weight_decay=group["weight_decay"],
                s_scale=c,
                out=d,
            )
            numerator = numerator + c * dots.sum()
            s_sq = s_sq + (s_norms * s_norms).sum()
            g_sq = g_sq + (g_norms * g_norms).sum()
            gathered.append(t)
        self._all_reduce([numerator, s_sq, g_sq])

        # G is the first nonzero gradient norm; d_hat = 2 N / ||s|| in the reference's units.
        g0_new = torch.where(g0 > 0.0, g0, torch.sqrt(g_sq))
        n_new = glob["numerator"] + numerator
        s_norm = torch.sqrt(s_sq)
        d_hat = 2.0 * n_new / (g0_new * s_norm)
        d_new = py_max(d, py_min(d_hat, d * hp["growth_rate"]))
        progress = (s_sq != 0.0) & (g0_new > 0.0)
        finite = torch.isfinite(numerator) & torch.isfinite(s_sq) & torch.isfinite(g_sq)
        keep = progress & finite
        glob["g0_norm"] = g0_kept = torch.where(keep, g0_new, g0)
        glob["numerator"] = torch.where(keep, n_new, glob["numerator"])
        glob["s_norm"] = torch.where(keep, s_norm, glob["s_norm"])
        glob["d_hat"] = torch.where(keep, d_hat, glob["d_hat"])
        glob["d"] = torch.where(keep, d_new, d)
        glob["nonfinite_steps"] = glob["nonfinite_steps"] + (progress & ~finite).to(d.dtype)
        glob["step"] = k + progress.to(d.dtype)

        # The update: z = x0 - s (reference units), x ← μ x + (1 - μ) z.
        update = sgd_update_foreach if foreach else sgd_update_single
        s_factor = torch.where(g0_kept > 0.0, 1.0 / g0_kept, torch.zeros_like(d))
        weight = (1.0 - hp["momentum"]) * progress.to(d.dtype)
        for t in gathered:
            update(t.params, t.buffers["s"], t.buffers["x0"], s_factor=s_factor, weight=weight)

    def info(self) -> dict[str, float]:
        r"""``group{i}/lr``, ``group{i}/effective_lr`` (:math:`d \eta / G`) and the scalars.

        Scalars, in the reference's units: ``d``, ``d_hat`` (the last estimate), ``numerator``
        (:math:`N`), ``s_norm`` (:math:`\lVert s \rVert`), ``g0_norm`` (:math:`G`, 0 until a
        nonzero gradient was seen), ``step`` (:math:`k`) and ``nonfinite_steps``. The effective
        learning rate is the step size the next step takes, 0 while :math:`G` is unknown.
        """
        names = ("d", "d_hat", "g0_norm", "numerator", "s_norm", "step", "nonfinite_steps")
        scalars = self._scalars_info(names)
        g0 = scalars["g0_norm"]
        if g0 > 0.0:
            scalars["numerator"] /= g0 * g0
            scalars["s_norm"] /= g0
        out: dict[str, float] = {}
        for i, group in enumerate(self.param_groups):
            out[f"group{i}/lr"] = float(group["lr"])
            out[f"group{i}/effective_lr"] = (
                scalars["d"] * float(group["lr"]) / g0 if g0 > 0.0 else 0.0
            )
        out.update(scalars)
        return out
