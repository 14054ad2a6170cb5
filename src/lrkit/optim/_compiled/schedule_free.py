"""Schedule-Free AdamW's and SGD's compiled kernel: one sweep per tensor."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from lrkit.optim._compiled.base import CompiledKernel, _subset, pack
from lrkit.optim._compiled.native import NativeKernel

__all__ = ["SCHEDULE_FREE", "schedule_free_fused", "schedule_free_kernel"]


def schedule_free_kernel(
    y: Tensor, grad: Tensor, z: Tensor, exp_avg_sq: Tensor | None, scalars: Tensor
) -> None:
    r"""One Schedule-Free step of one tensor, in one sweep (``exp_avg_sq=None``: the SGD step).

    The equations of :func:`lrkit.optim.schedule_free.schedule_free_single_tensor` (Defazio et
    al. 2024, "The Road Less Scheduled", https://arxiv.org/abs/2405.15682):

    .. math::

        v &\leftarrow \beta_2 v + (1 - \beta_2)\, g^2, \qquad
        \hat d = \frac{g}{\sqrt{v / (1 - \beta_2^t)} + \epsilon} + \lambda y
        \quad(\text{SGD: } \hat d = g + \lambda y) \\
        z &\leftarrow z - \gamma_t \hat d, \qquad
        y \leftarrow \operatorname{lerp}\bigl(y - (1 - \beta)\gamma_t \hat d,\ z,\ c_{t+1}\bigr)

    Args:
        y: The parameter (holding :math:`y`), updated.
        grad: Its gradient :math:`g`, read only.
        z: The state :math:`z`, updated.
        exp_avg_sq: The second moment :math:`v`, updated; ``None`` for Schedule-Free SGD.
        scalars: :math:`(\gamma_t, c_{t+1}, 1 - \beta_2^t, \beta, \beta_2, \epsilon, \lambda)`;
            the third, fifth and sixth are unused for SGD.
    """
    lr, c, bias_correction2, beta, beta2, eps, weight_decay = scalars
    if exp_avg_sq is None:
        d = grad + weight_decay * y
    else:
        v = exp_avg_sq * beta2 + grad * grad * (1 - beta2)
        # one division per element: 1 / (1 - β2^t) is a number
        d = grad / (torch.sqrt(v * (1 / bias_correction2)) + eps) + weight_decay * y
        exp_avg_sq.copy_(v)
    step = d * lr
    z_new = z - step
    y.copy_(torch.lerp(y - step * (1 - beta), z_new, c))
    z.copy_(z_new)


SCHEDULE_FREE = CompiledKernel(
    schedule_free_kernel, native=NativeKernel("schedule_free", writes=(0, 2, 3))
)


def schedule_free_fused(
    ys: Sequence[Tensor],
    grads: Sequence[Tensor],
    zs: Sequence[Tensor],
    exp_avg_sqs: Sequence[Tensor] | None,
    *,
    lr: Tensor,
    c: Tensor,
    bias_correction2: Tensor | None,
    beta: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    fallback: Callable[..., None],
) -> None:
    """:func:`~lrkit.optim.schedule_free.schedule_free_multi_tensor` with :data:`SCHEDULE_FREE`.

    Same arguments, plus ``fallback``: the function (same signature) that runs on the tensors
    the kernel leaves (:meth:`CompiledKernel.apply`), or on all when it cannot be compiled.
    """
    scalars = pack(
        lr.device,
        lr=lr,
        c=c,
        bias_correction2=1.0 if bias_correction2 is None else bias_correction2,
        beta=beta,
        beta2=beta2,
        eps=eps,
        weight_decay=weight_decay,
    )
    lists = [ys, grads, zs, exp_avg_sqs]
    done = SCHEDULE_FREE.apply(lists, scalars)
    rest = list(range(len(ys))) if done is None else done[1]
    if rest:
        fallback(
            *_subset(lists, rest),
            lr=lr,
            c=c,
            bias_correction2=bias_correction2,
            beta=beta,
            beta2=beta2,
            eps=eps,
            weight_decay=weight_decay,
        )
