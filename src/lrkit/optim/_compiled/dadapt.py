r"""Prodigy's and D-Adapt Adam's compiled kernels and the drivers that call them.

Prodigy (two kernels, 12 sweeps): :data:`PRODIGY_STATS` reads :math:`x, g, x_0, s` and writes
:math:`s`, reducing both sums in the same loop; once the new ``d`` is known,
:data:`PRODIGY_UPDATE` reads :math:`x, g, m, v` and writes :math:`x, m, v` (the moments use
the old ``d``, so they wait for the update's sweep instead of taking one of their own).

D-Adapt Adam (one kernel): :data:`DADAPT_ADAM` runs the statistics and the update, which needs
nothing of this step's sums, in one loop in its native version (9 sweeps); inductor makes two
loops of it (12: the numerator reads :math:`s` and :math:`v` before the step overwrites them).
With decoupled weight decay, whose factor depends on whether the step made progress,
:data:`DUAL_ADAM_STATS` and :data:`ADAM_UPDATE` take the statistics and the update (14 sweeps).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from lrkit.optim._compiled.base import CompiledKernel, _concat, _stacked, _subset, pack
from lrkit.optim._compiled.native import NativeKernel

__all__ = [
    "ADAM_UPDATE",
    "DADAPT_ADAM",
    "DUAL_ADAM_STATS",
    "PRODIGY_STATS",
    "PRODIGY_UPDATE",
    "adam_stats_fused",
    "adam_update_fused",
    "adam_update_kernel",
    "dadapt_adam_fused",
    "dadapt_adam_kernel",
    "dual_adam_stats_kernel",
    "prodigy_stats_fused",
    "prodigy_stats_kernel",
    "prodigy_update_fused",
    "prodigy_update_kernel",
]


def _adam_moments(
    g_hat: Tensor,
    exp_avg: Tensor | None,
    exp_avg_sq: Tensor,
    s: Tensor,
    scalars: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    r"""D-Adapt Adam's moment and ``s`` updates, written back; returns the new m, v, s.

    :math:`m \leftarrow \operatorname{lerp}(m, a \hat g, 1 - \beta_1)`,
    :math:`v \leftarrow \beta_2 v + (1 - \beta_2) \hat g^2`,
    :math:`s \leftarrow \beta_s s + c \hat g`, with ``scalars`` starting
    :math:`(\lambda_c, \beta_1, \beta_2, \beta_s, a, c)`. With ``exp_avg=None``
    (:math:`\beta_1 = 0`) :math:`m = a \hat g` is returned, not stored.
    """
    beta1, beta2, beta_s, m_scale, s_scale = scalars[1:6]
    g_a = g_hat * m_scale
    if exp_avg is None:
        m = g_a
    else:
        m = torch.lerp(exp_avg, g_a, 1 - beta1)
        exp_avg.copy_(m)
    v = exp_avg_sq * beta2 + g_hat * g_hat * (1 - beta2)
    s_new = s * beta_s + g_hat * s_scale
    exp_avg_sq.copy_(v)
    s.copy_(s_new)
    return m, v, s_new


def prodigy_stats_kernel(
    x: Tensor, grad: Tensor, s: Tensor, x0: Tensor, scalars: Tensor
) -> tuple[Tensor, Tensor]:
    r"""Prodigy's statistics of one tensor in one sweep: ``s`` and the two sums.

    The ``s`` update and sums of :func:`lrkit.optim._dadapt_core.adam_stats_single` with
    ``direction="distance"`` (Mishchenko & Defazio, "Prodigy: An Expeditiously Adaptive
    Parameter-Free Learner", ICML 2024, https://arxiv.org/abs/2306.06101); the moments, which
    this step's sums do not need, are left to :func:`prodigy_update_kernel`:

    .. math::

        \hat g = g + \lambda_c x, \quad n = \langle \hat g, x_0 - x \rangle, \quad
        s \leftarrow \beta_3 s + c\, \hat g, \quad \ell = \lVert s \rVert_1

    Args:
        x: The parameter, read only.
        grad: Its gradient, read only.
        s: :math:`s`, updated.
        x0: The initial point :math:`x_0`.
        scalars: :math:`(\lambda_c, \beta_3, c)`.

    Returns:
        ``(n, ℓ)`` as 0-dim tensors in the tensors' dtype.
    """
    weight_decay, beta3, s_scale = scalars
    g_hat = grad + weight_decay * x
    n = (g_hat * (x0 - x)).sum()
    s_new = s * beta3 + g_hat * s_scale
    s.copy_(s_new)
    return n, s_new.abs().sum()


def prodigy_update_kernel(
    x: Tensor,
    grad: Tensor,
    exp_avg: Tensor | None,
    exp_avg_sq: Tensor,
    scalars: Tensor,
) -> None:
    r"""Prodigy's moments and update of one tensor in one sweep, once the new ``d`` is known.

    The moment updates of :func:`lrkit.optim._dadapt_core.adam_stats_single` with
    ``scaled_v=True`` (with the step's old :math:`d_k`, so they could have run with the
    statistics: moving them here reads :math:`m` and :math:`v` once per step), then the update
    of :func:`lrkit.optim._dadapt_core.adam_update_single` (Mishchenko & Defazio 2024,
    https://arxiv.org/abs/2306.06101):

    .. math::

        \hat g = g + \lambda_c x, \quad
        m \leftarrow \operatorname{lerp}(m, d_k \hat g, 1 - \beta_1), \quad
        v \leftarrow \beta_2 v + (1 - \beta_2) (d_k \hat g)^2, \\
        x \leftarrow x (1 - \lambda_d \alpha) - \alpha\, m / (\sqrt{v} + e)

    With ``exp_avg=None`` (:math:`\beta_1 = 0`) nothing is stored and :math:`m = a' \hat g`
    (:math:`a' = d_{k+1}`, as the reference does).

    Args:
        x: The parameter, updated.
        grad: Its gradient, read only.
        exp_avg: :math:`m`, updated, or ``None``.
        exp_avg_sq: :math:`v`, updated.
        scalars: :math:`(\lambda_c, \beta_1, \beta_2, d_k, a', \lambda_d \alpha, \alpha, e)`.
    """
    weight_decay, beta1, beta2, m_scale, m_next, decay, step, eps = scalars
    g_hat = grad + weight_decay * x
    g_a = g_hat * m_scale
    if exp_avg is None:
        m = g_hat * m_next
    else:
        m = torch.lerp(exp_avg, g_a, 1 - beta1)
        exp_avg.copy_(m)
    v = exp_avg_sq * beta2 + g_a * g_a * (1 - beta2)
    exp_avg_sq.copy_(v)
    x.copy_(x * (1 - decay) - step * m / (torch.sqrt(v) + eps))


def dual_adam_stats_kernel(
    x: Tensor,
    grad: Tensor,
    exp_avg: Tensor | None,
    exp_avg_sq: Tensor,
    s: Tensor,
    scalars: Tensor,
    *,
    coupled: bool,
) -> tuple[Tensor, Tensor]:
    r"""D-Adapt Adam's statistics of one tensor (its update comes later, in another kernel).

    The equations of :func:`lrkit.optim._dadapt_core.adam_stats_single` with
    ``direction="dual"`` and ``scaled_v=False`` (Defazio & Mishchenko, "Learning-Rate-Free
    Learning by D-Adaptation", ICML 2023, https://arxiv.org/abs/2301.07733), with :math:`s`
    and :math:`v` read before their update:

    .. math::

        \hat g = g + \lambda_c x, \quad
        n = \langle \hat g, s / (\sqrt{v} + \epsilon) \rangle, \quad
        m \leftarrow \operatorname{lerp}(m, a \hat g, 1 - \beta_1), \quad
        v \leftarrow \beta_2 v + (1 - \beta_2) \hat g^2, \quad
        s \leftarrow \beta_s s + c\, \hat g, \quad \ell = \lVert s \rVert_1

    Args:
        x: The parameter, read only (and only if ``coupled``).
        grad: Its gradient, read only.
        exp_avg: :math:`m`, updated, or ``None`` (:math:`\beta_1 = 0`).
        exp_avg_sq: :math:`v`, updated.
        s: :math:`s`, updated.
        scalars: :math:`(\lambda_c, \beta_1, \beta_2, \beta_s, a, c, \epsilon)`.
        coupled: Whether :math:`\lambda_c x` enters :math:`\hat g` (``False`` skips the read of
            :math:`x`; :math:`\lambda_c` is then 0).

    Returns:
        ``(n, ℓ)`` as 0-dim tensors in the tensors' dtype. Inductor computes :math:`n` in a
        loop of its own: it does not fuse a sum that reads :math:`s` and :math:`v` with the
        loop that overwrites them.
    """
    g_hat = grad + scalars[0] * x if coupled else grad
    n = (g_hat * (s / (torch.sqrt(exp_avg_sq) + scalars[6]))).sum()
    _, _, s_new = _adam_moments(g_hat, exp_avg, exp_avg_sq, s, scalars)
    return n, s_new.abs().sum()


def dadapt_adam_kernel(
    x: Tensor,
    grad: Tensor,
    exp_avg: Tensor | None,
    exp_avg_sq: Tensor,
    s: Tensor,
    scalars: Tensor,
    *,
    coupled: bool,
) -> tuple[Tensor, Tensor]:
    r"""A whole D-Adapt Adam step of one tensor: statistics, then the update.

    :func:`dual_adam_stats_kernel` (same arguments) followed by
    :math:`x \leftarrow x - m / (\sqrt{v} + \epsilon)` with the new :math:`m` and :math:`v`
    (the update of :func:`lrkit.optim._dadapt_core.adam_update_single` with ``step=1``). D-Adapt
    Adam's update needs nothing of this step's sums (its step size, inside :math:`m`, uses the
    previous ``d``) except when decoupled weight decay is on, whose factor depends on whether
    the step made progress: then the statistics and the update are two kernels.

    Returns:
        ``(n, ℓ)`` as 0-dim tensors in the tensors' dtype.
    """
    eps = scalars[6]
    g_hat = grad + scalars[0] * x if coupled else grad
    n = (g_hat * (s / (torch.sqrt(exp_avg_sq) + eps))).sum()
    m, v, s_new = _adam_moments(g_hat, exp_avg, exp_avg_sq, s, scalars)
    x.copy_(x - m / (torch.sqrt(v) + eps))
    return n, s_new.abs().sum()


def adam_update_kernel(
    x: Tensor,
    grad: Tensor | None,
    exp_avg: Tensor | None,
    exp_avg_sq: Tensor,
    scalars: Tensor,
) -> None:
    r"""The D-adapted Adam update of one tensor in one sweep.

    The equations of :func:`lrkit.optim._dadapt_core.adam_update_single`:
    :math:`x \leftarrow x (1 - \lambda_d \alpha) - \alpha\, m / (\sqrt{v} + e)`, with
    :math:`m = a (g + \lambda_c x)` when no first moment is stored (``exp_avg=None``; then
    ``grad`` is given).

    Args:
        x: The parameter, updated.
        grad: Its gradient (read only when ``exp_avg`` is ``None``), or ``None``.
        exp_avg: The first moment :math:`m`, or ``None``.
        exp_avg_sq: The second moment :math:`v`.
        scalars: :math:`(\lambda_c, a, \lambda_d \alpha, \alpha, e)`.
    """
    weight_decay, m_scale, decay, step, eps = scalars
    if exp_avg is None:
        assert grad is not None  # the driver passes the grads exactly when no m is stored
        m = (grad + weight_decay * x) * m_scale
    else:
        m = exp_avg
    x.copy_(x * (1 - decay) - step * m / (torch.sqrt(exp_avg_sq) + eps))


PRODIGY_STATS = CompiledKernel(
    prodigy_stats_kernel, native=NativeKernel("prodigy_stats", writes=(2,), sums=2)
)
PRODIGY_UPDATE = CompiledKernel(
    prodigy_update_kernel, native=NativeKernel("prodigy_update", writes=(0, 2, 3))
)
DUAL_ADAM_STATS = CompiledKernel(
    dual_adam_stats_kernel,
    native=NativeKernel("dual_adam_stats", writes=(2, 3, 4), sums=2, flags=("coupled",)),
)
DADAPT_ADAM = CompiledKernel(
    dadapt_adam_kernel,
    native=NativeKernel("dadapt_adam", writes=(0, 2, 3, 4), sums=2, flags=("coupled",)),
)
ADAM_UPDATE = CompiledKernel(adam_update_kernel, native=NativeKernel("adam_update", writes=(0,)))


def adam_stats_fused(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor] | None,
    exp_avg_sqs: list[Tensor],
    sums: list[Tensor],
    inits: list[Tensor] | None,
    *,
    direction: str,
    weight_decay: float,
    beta1: float,
    beta2: float,
    beta_s: float,
    m_scale: Tensor,
    scaled_v: bool,
    s_scale: Tensor,
    eps: float,
    out: Tensor,
    fallback: Callable[..., tuple[Tensor, Tensor]],
) -> tuple[Tensor, Tensor]:
    """:func:`~lrkit.optim._dadapt_core.adam_stats_foreach` with a compiled kernel.

    Same arguments and result, plus ``fallback`` (the function that runs on the tensors the
    kernel leaves, or on all when it cannot be compiled; its sums come after the kernel's).
    D-Adapt Adam's setting (``direction="dual"``, ``scaled_v=False``) runs
    :data:`DUAL_ADAM_STATS`; any other runs ``fallback`` (Prodigy has its own drivers,
    :func:`prodigy_stats_fused` and :func:`prodigy_update_fused`).
    """
    scalars = pack(
        out.device,
        weight_decay=weight_decay,
        beta1=beta1,
        beta2=beta2,
        beta_s=beta_s,
        m_scale=m_scale,
        s_scale=s_scale,
        eps=eps,
    )
    lists = [params, grads, exp_avgs, exp_avg_sqs, sums, inits]
    done = None
    if direction == "dual" and not scaled_v:
        done = DUAL_ADAM_STATS.apply(lists[:5], scalars, coupled=weight_decay != 0.0)
    results, rest = ([], list(range(len(params)))) if done is None else done
    sums_out = _stacked(results, out)
    if rest:
        more = fallback(
            *_subset(lists, rest),
            direction=direction,
            weight_decay=weight_decay,
            beta1=beta1,
            beta2=beta2,
            beta_s=beta_s,
            m_scale=m_scale,
            scaled_v=scaled_v,
            s_scale=s_scale,
            eps=eps,
            out=out,
        )
        sums_out = _concat(sums_out, more)
    return sums_out


def adam_update_fused(
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
    fallback: Callable[..., None],
) -> None:
    """:func:`~lrkit.optim._dadapt_core.adam_update_foreach` with :data:`ADAM_UPDATE`.

    Same arguments, plus ``fallback`` (the function that runs on the tensors the kernel leaves,
    or on all when it cannot be compiled).
    """
    scalars = pack(
        m_scale.device,
        weight_decay=weight_decay,
        m_scale=m_scale,
        decay=0.0 if decay is None else decay,
        step=step,
        eps=eps,
    )
    kernel_lists = [params, grads if exp_avgs is None else None, exp_avgs, exp_avg_sqs]
    done = ADAM_UPDATE.apply(kernel_lists, scalars)
    rest = list(range(len(params))) if done is None else done[1]
    if rest:
        fallback(
            *_subset([params, grads, exp_avgs, exp_avg_sqs], rest),
            weight_decay=weight_decay,
            m_scale=m_scale,
            decay=decay,
            step=step,
            eps=eps,
        )


def dadapt_adam_fused(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor] | None,
    exp_avg_sqs: list[Tensor],
    sums: list[Tensor],
    *,
    weight_decay: float,
    beta1: float,
    beta2: float,
    beta_s: float,
    m_scale: Tensor,
    s_scale: Tensor,
    eps: float,
    out: Tensor,
    fallback_stats: Callable[..., tuple[Tensor, Tensor]],
    fallback_update: Callable[..., None],
) -> tuple[Tensor, Tensor]:
    """A whole D-Adapt Adam step of a param group with :data:`DADAPT_ADAM`.

    Arguments as :func:`adam_stats_fused` (``direction="dual"``, ``scaled_v=False``). Valid
    only when the update takes no decoupled weight decay (see :func:`dadapt_adam_kernel`): the
    tensors the kernel leaves (or all, when it cannot be compiled) then take
    ``fallback_stats`` (:func:`~lrkit.optim._dadapt_core.adam_stats_foreach`'s signature) and
    at once ``fallback_update`` (:func:`~lrkit.optim._dadapt_core.adam_update_foreach`'s).

    Returns:
        The per-tensor ``(n, ℓ)`` as two 1-D tensors.
    """
    scalars = pack(
        out.device,
        weight_decay=weight_decay,
        beta1=beta1,
        beta2=beta2,
        beta_s=beta_s,
        m_scale=m_scale,
        s_scale=s_scale,
        eps=eps,
    )
    lists = [params, grads, exp_avgs, exp_avg_sqs, sums]
    done = DADAPT_ADAM.apply(lists, scalars, coupled=weight_decay != 0.0)
    results, rest = ([], list(range(len(params)))) if done is None else done
    sums_out = _stacked(results, out)
    if rest:
        x, g, m, v, s = _subset(lists, rest)
        more = fallback_stats(
            x,
            g,
            m,
            v,
            s,
            None,
            direction="dual",
            weight_decay=weight_decay,
            beta1=beta1,
            beta2=beta2,
            beta_s=beta_s,
            m_scale=m_scale,
            scaled_v=False,
            s_scale=s_scale,
            eps=eps,
            out=out,
        )
        fallback_update(
            x, g, m, v, weight_decay=weight_decay, m_scale=m_scale, decay=None, step=1.0, eps=eps
        )
        sums_out = _concat(sums_out, more)
    return sums_out


def prodigy_stats_fused(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor] | None,
    exp_avg_sqs: list[Tensor],
    sums: list[Tensor],
    inits: list[Tensor],
    *,
    weight_decay: float,
    beta1: float,
    beta2: float,
    beta_s: float,
    m_scale: Tensor,
    s_scale: Tensor,
    out: Tensor,
    fallback: Callable[..., tuple[Tensor, Tensor]],
) -> tuple[Tensor, Tensor, list[int]]:
    """Prodigy's statistics of a param group with :data:`PRODIGY_STATS`.

    Arguments as :func:`~lrkit.optim._dadapt_core.adam_stats_foreach` with
    ``direction="distance"`` and ``scaled_v=True``, plus ``fallback`` (that function, for the
    tensors the kernel leaves, or all when it cannot be compiled). The kernel updates ``s`` and
    takes the sums only; the moments of its tensors are updated by
    :func:`prodigy_update_fused`, which must be given the indices returned here. ``fallback``
    updates the moments of the others at once.

    Returns:
        The per-tensor ``(n, ℓ)`` as two 1-D tensors, and the indices of the tensors the kernel
        took.
    """
    scalars = pack(out.device, weight_decay=weight_decay, beta_s=beta_s, s_scale=s_scale)
    done = PRODIGY_STATS.apply([params, grads, sums, inits], scalars)
    results, rest = ([], list(range(len(params)))) if done is None else done
    sums_out = _stacked(results, out)
    left = set(rest)
    taken = [i for i in range(len(params)) if i not in left]
    if rest:
        lists = [params, grads, exp_avgs, exp_avg_sqs, sums, inits]
        more = fallback(
            *_subset(lists, rest),
            direction="distance",
            weight_decay=weight_decay,
            beta1=beta1,
            beta2=beta2,
            beta_s=beta_s,
            m_scale=m_scale,
            scaled_v=True,
            s_scale=s_scale,
            eps=0.0,
            out=out,
        )
        sums_out = _concat(sums_out, more)
    return sums_out[0], sums_out[1], taken


def prodigy_update_fused(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor] | None,
    exp_avg_sqs: list[Tensor],
    *,
    taken: list[int],
    weight_decay: float,
    beta1: float,
    beta2: float,
    m_scale: Tensor,
    m_next: Tensor,
    decay: Tensor | None,
    step: Tensor,
    eps: Tensor,
    fallback: Callable[..., None],
) -> None:
    r"""Prodigy's update of a param group after :func:`prodigy_stats_fused`.

    The tensors ``taken`` by the statistics kernel still need their moment updates (with the
    old ``d``, ``m_scale``): :data:`PRODIGY_UPDATE` does both in one sweep, and runs uncompiled
    on any of them it cannot take (the same equations). The other tensors, whose moments the
    fallback statistics updated, take ``fallback``.

    Args:
        params: Parameters ``x`` (updated).
        grads: Their gradients (read only).
        exp_avgs: First moments ``m``, or ``None`` when ``β1 = 0``.
        exp_avg_sqs: Second moments ``v``.
        taken: Indices returned by :func:`prodigy_stats_fused`.
        weight_decay: Coupled decay ``λ_c`` (0 for none or decoupled).
        beta1: ``β1``.
        beta2: ``β2``.
        m_scale: :math:`d_k`, the scale of the gradient in the moments.
        m_next: :math:`d_{k+1}`: :math:`m = d_{k+1} \hat g` when :math:`\beta_1 = 0`.
        decay: ``λ_d α`` for decoupled weight decay, or ``None``.
        step: ``α``.
        eps: ``e``, the denominator's :math:`d_{k+1} \epsilon`.
        fallback: :func:`~lrkit.optim._dadapt_core.adam_update_foreach` or its loop twin, called
            with ``m_scale=m_next``.
    """
    lists = [params, grads, exp_avgs, exp_avg_sqs]
    if taken:
        scalars = pack(
            step.device,
            weight_decay=weight_decay,
            beta1=beta1,
            beta2=beta2,
            m_scale=m_scale,
            m_next=m_next,
            decay=0.0 if decay is None else decay,
            step=step,
            eps=eps,
        )
        mine = _subset(lists, taken)
        done = PRODIGY_UPDATE.apply(mine, scalars)
        left = list(range(len(taken))) if done is None else done[1]
        for i in (taken[j] for j in left):  # the same equations, uncompiled
            m = None if exp_avgs is None else exp_avgs[i]
            x = params[i]
            prodigy_update_kernel(x, grads[i], m, exp_avg_sqs[i], scalars.to(x.device))
    taken_set = set(taken)
    rest = [i for i in range(len(params)) if i not in taken_set]
    if rest:
        fallback(
            *_subset(lists, rest),
            weight_decay=weight_decay,
            m_scale=m_next,
            decay=decay,
            step=step,
            eps=eps,
        )
