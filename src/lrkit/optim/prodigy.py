"""Prodigy: Adam whose step size is a running estimate of the distance to the solution."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor

from lrkit._validate import check_bool, check_float, check_probability
from lrkit.optim._compiled import prodigy_stats_fused, prodigy_update_fused
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
)

__all__ = ["Prodigy"]


class Prodigy(DAdaptOptimizer):
    r"""Prodigy (Mishchenko & Defazio): Adam with a learned step size ``d``; leave ``lr=1``.

    At step :math:`k` (0-based), with :math:`d_k` the current estimate, :math:`\eta` a group's
    ``lr``, :math:`\rho_k = \sqrt{1-\beta_2^{k+1}}/(1-\beta_1^{k+1})` when
    ``use_bias_correction`` (else 1), step size :math:`\alpha_k = d_k \eta \rho_k` and
    :math:`w_k = d_k / d_0`, every parameter tensor :math:`x` (initial value :math:`x_0`) does

    .. math::

        \hat g &= g + \lambda x \quad\text{(only if not decouple)} \\
        m &\leftarrow \beta_1 m + (1-\beta_1)\, d_k \hat g \\
        v &\leftarrow \beta_2 v + (1-\beta_2)\, d_k^2 \hat g^2 \\
        s &\leftarrow \beta_3 s + w_k \alpha_k \hat g
            \quad(\text{with safeguard\_warmup: } w_k d_k \hat g)

    and, summed over all parameters (all groups, and all ranks when sharded),

    .. math::

        r_{k+1} &= \beta_3 r_k + w_k \alpha_k \langle \hat g, x_0 - x_k \rangle, \qquad
        \hat d_{k+1} = c \, \frac{r_{k+1}}{\lVert s \rVert_1} \\
        d' &= \max(d_k, \hat d_{k+1}) \text{ if } d_k = d_0 \text{ else } d_k, \quad
        d_{\max} \leftarrow \max(d_{\max}, \hat d_{k+1}), \quad
        d_{k+1} = \min(d_{\max},\, d' \gamma)

    then :math:`x \leftarrow x - \lambda \alpha_k x` (only if decouple) and
    :math:`x \leftarrow x - \alpha_k\, m / (\sqrt{v} + d_{k+1} \epsilon)`. With
    :math:`\beta_1 = 0` no :math:`m` is stored and the update uses :math:`m = d_{k+1} \hat g`
    (the new estimate, as the reference does).

    Symbols: ``lr`` is :math:`\eta`, ``betas`` :math:`(\beta_1, \beta_2)`, ``beta3``
    :math:`\beta_3` (``None``: :math:`\sqrt{\beta_2}`), ``eps`` :math:`\epsilon`,
    ``weight_decay`` :math:`\lambda`, ``d0`` :math:`d_0`, ``d_coef`` :math:`c`,
    ``growth_rate`` :math:`\gamma`. ``d``, :math:`d_{\max}`, :math:`r` and the step count
    :math:`k` are global 0-dim tensors (one ``d`` for all groups, as in the reference); ``s``,
    ``m``, ``v``, :math:`x_0` are per-parameter state.

    This follows the reference package ``prodigyopt`` (``Prodigy``, version 1.1), which adds to the
    paper's Algorithm (Adam version) the ``d_coef`` factor, the :math:`w_k = d_k/d_0` scaling of
    both sums (it cancels in :math:`\hat d`), the growth limit (the first rise above
    :math:`d_0` is not limited, as in the reference), bias correction, decoupled weight decay and
    the safeguard. Tested against it at every step. Deviations, each tested:

    * Param groups may have different ``lr``: a group's step size is :math:`d_k \eta \rho_k`
      with its own :math:`\eta`, in its update and in its share of both sums (the reference
      refuses different values). With one ``lr`` this is the reference.
    * A group with ``lr=0`` is frozen: no statistics, no moment update, no move. (The reference
      skips its statistics but still applies the other groups' step size to its stale moments
      and decoupled decay.)
    * ``p.grad`` is never modified (the reference adds coupled weight decay to it in place).
    * :math:`x_0` is stored for every tensor (the reference stores a scalar for an all-zero
      tensor to save memory); ``slice_p`` is not offered.
    * Like the reference, a step where :math:`\lVert s \rVert_1 = 0` (no gradient yet) changes
      neither ``d``, :math:`k` nor the parameters.
    * A step whose sums are not finite (a NaN or inf gradient) leaves ``d``,
      :math:`d_{\max}`, :math:`r` and the last :math:`\hat d` unchanged and adds 1 to
      ``info()["nonfinite_steps"]``. The moments absorb the bad gradient and the parameters
      become non-finite, as in the reference and ``torch.optim.Adam``: skip such steps (as
      ``torch.amp.GradScaler`` does, which then leaves every statistic untouched).

    Distributed: under DDP nothing is reduced. With ``sharded=True`` (each rank holds different
    parameters) the two per-step sums are all-reduced over ``process_group`` in one call.

    Args:
        params: Parameters or param groups. Per group: ``lr``, ``weight_decay``, ``eps``.
        lr: :math:`\eta`, a factor on the learned step size (default 1).
        betas: :math:`(\beta_1, \beta_2)`, each in [0, 1).
        beta3: :math:`\beta_3` in [0, 1) for the sums, or ``None`` for :math:`\sqrt{\beta_2}`.
        eps: :math:`\epsilon > 0`, scaled by ``d`` in the denominator.
        weight_decay: :math:`\lambda \ge 0`.
        decouple: Decoupled (AdamW) decay if ``True``, else added to the gradient.
        use_bias_correction: Adam's bias correction, folded into the step size.
        safeguard_warmup: Leave ``lr`` out of the ``s`` update (helps with warmup schedules).
        d0: :math:`d_0 > 0`, the initial estimate.
        d_coef: :math:`c > 0`, multiplies the estimate.
        growth_rate: :math:`\gamma \ge 1`, the most ``d`` may grow per step (``inf``: no limit).
        foreach: Multi-tensor path; ``None`` follows torch.optim (multi-tensor on CUDA-like
            devices, the per-tensor loop on the CPU).
        fused: ``True``: on the CPU, fused kernels, one sweep for ``s`` and the sums and one
            for the moments and the update: native C++ for float32 and float64 tensors (built
            once, in seconds), ``torch.compile`` kernels for other dtypes' tensors of 64K
            elements or more (see :mod:`lrkit.optim._compiled`), the ``foreach`` choice for
            the rest and wherever compiling fails (with a warning). ``None`` (default) or
            ``False``: the ``foreach`` choice.
        process_group: The data-parallel process group this optimizer runs in.
        sharded: Parameters are sharded over ``process_group``: all-reduce the sums.

    Raises:
        ValueError: An argument is out of range or not finite, or a shared hyperparameter
            (all but ``lr``, ``weight_decay``, ``eps``) differs between param groups.
        TypeError: An argument has the wrong type; at ``step()``, a sparse or complex gradient.

    Examples:
        >>> model = torch.nn.Linear(4, 1)
        >>> opt = Prodigy(model.parameters(), weight_decay=0.01)
        >>> model(torch.ones(2, 4)).sum().backward()
        >>> opt.step()
        >>> sorted(k for k in opt.info() if not k.startswith("group"))
        ['d', 'd_hat', 'd_max', 'denominator', 'nonfinite_steps', 'numerator', 'step']

    References:
        Konstantin Mishchenko, Aaron Defazio. Prodigy: An Expeditiously Adaptive Parameter-Free
        Learner. ICML 2024. https://arxiv.org/abs/2306.06101
    """

    shared_hparams = (
        "betas",
        "beta3",
        "d0",
        "d_coef",
        "growth_rate",
        "decouple",
        "use_bias_correction",
        "safeguard_warmup",
    )
    group_hparams: ClassVar[dict[str, Callable[[str, object], object]]] = {
        "lr": nonnegative,
        "weight_decay": nonnegative,
        "eps": positive,
    }
    display_name = "Prodigy"

    def __init__(
        self,
        params: Any,
        lr: float = 1.0,
        *,
        betas: tuple[float, float] = (0.9, 0.999),
        beta3: float | None = None,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decouple: bool = True,
        use_bias_correction: bool = False,
        safeguard_warmup: bool = False,
        d0: float = 1e-6,
        d_coef: float = 1.0,
        growth_rate: float = math.inf,
        foreach: bool | None = None,
        fused: bool | None = None,
        process_group: Any | None = None,
        sharded: bool = False,
    ) -> None:
        if not isinstance(betas, tuple | list) or len(betas) != 2:
            raise TypeError(f"betas must be a pair of floats, got {betas!r}")
        defaults = {
            "lr": check_float("lr", lr, min=0.0),
            "betas": (
                check_probability("betas[0]", betas[0]),
                check_probability("betas[1]", betas[1]),
            ),
            "beta3": None if beta3 is None else check_probability("beta3", beta3),
            "eps": check_float("eps", eps, min=0.0, min_open=True),
            "weight_decay": check_float("weight_decay", weight_decay, min=0.0),
            "decouple": check_bool("decouple", decouple),
            "use_bias_correction": check_bool("use_bias_correction", use_bias_correction),
            "safeguard_warmup": check_bool("safeguard_warmup", safeguard_warmup),
            "d0": check_float("d0", d0, min=0.0, min_open=True),
            "d_coef": check_float("d_coef", d_coef, min=0.0, min_open=True),
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
        d0 = float(self.defaults["d0"])
        return {
            "d": d0,
            "d_max": d0,
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
            "x0": p.detach().clone(memory_format=torch.preserve_format),
        }
        if first_moment:
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    def _step(self) -> None:
        hp = self.hparams
        groups = [g for g in self.param_groups if g["lr"] > 0.0]
        if not groups:
            return
        beta1, beta2 = hp["betas"]
        beta3 = math.sqrt(beta2) if hp["beta3"] is None else hp["beta3"]
        d0, decouple = hp["d0"], hp["decouple"]
        glob = self.global_state
        d, k = glob["d"], glob["step"]
        rho = bias_correction(k, beta1, beta2) if hp["use_bias_correction"] else torch.ones_like(d)
        w = d / d0
        foreach = self._use_foreach()
        stats: Callable[..., tuple[Tensor, Tensor]] = (
            adam_stats_foreach if foreach else adam_stats_single
        )
        update: Callable[..., None] = adam_update_foreach if foreach else adam_update_single
        names = ("exp_avg_sq", "s", "x0", "exp_avg") if beta1 > 0.0 else ("exp_avg_sq", "s", "x0")

        # Statistics: moments, s, and this step's shares of the two sums.
        gathered = []
        numerator = torch.zeros_like(d)
        denominator = torch.zeros_like(d)
        for group in groups:
            t = self._gather(group, names, lambda p: self._init_state(p, first_moment=beta1 > 0))
            dlr = d * group["lr"] * rho  # α_k for this group
            lists = (
                t.params,
                t.grads,
                t.get("exp_avg"),
                t.buffers["exp_avg_sq"],
                t.buffers["s"],
                t.buffers["x0"],
            )
            args: dict[str, Any] = {
                "weight_decay": 0.0 if decouple else group["weight_decay"],
                "beta1": beta1,
                "beta2": beta2,
                "beta_s": beta3,
                "m_scale": d,
                "s_scale": w * (d if hp["safeguard_warmup"] else dlr),
                "out": d,
            }
            taken: list[int] = []
            if self.fused:
                # The compiled path updates s and takes the sums here, and leaves the moments
                # of the tensors it took to its update kernel (one sweep fewer).
                dots, norms, taken = prodigy_stats_fused(*lists, **args, fallback=stats)
            else:
                dots, norms = stats(*lists, direction="distance", scaled_v=True, eps=0.0, **args)
            numerator = numerator + w * dlr * dots.sum()
            denominator = denominator + norms.sum()
            gathered.append((t, dlr, taken))
        self._all_reduce([numerator, denominator])

        # The new estimate; a step without progress or with non-finite sums keeps the old one.
        progress = denominator != 0.0
        finite = torch.isfinite(numerator) & torch.isfinite(denominator)
        keep = progress & finite
        r = beta3 * glob["numerator"] + numerator
        d_hat = hp["d_coef"] * r / denominator
        d_new = torch.where(d == d0, py_max(d, d_hat), d)
        d_max = py_max(glob["d_max"], d_hat)
        d_new = py_min(d_max, d_new * hp["growth_rate"])
        glob["numerator"] = torch.where(keep, r, glob["numerator"])
        glob["denominator"] = torch.where(keep, denominator, glob["denominator"])
        glob["d_hat"] = torch.where(keep, d_hat, glob["d_hat"])
        glob["d_max"] = torch.where(keep, d_max, glob["d_max"])
        glob["d"] = d_next = torch.where(keep, d_new, d)
        glob["nonfinite_steps"] = glob["nonfinite_steps"] + (progress & ~finite).to(d.dtype)
        glob["step"] = k + progress.to(d.dtype)

        # The update, with the step size of this step and the new d in the denominator.
        moved = progress.to(d.dtype)
        for t, dlr, taken in gathered:
            group = t.group
            alpha = dlr * moved
            decay = group["weight_decay"] * alpha if decouple and group["weight_decay"] else None
            tensors = (t.params, t.grads, t.get("exp_avg"), t.buffers["exp_avg_sq"])
            wd = 0.0 if decouple else group["weight_decay"]
            eps = d_next * group["eps"]
            if self.fused:
                prodigy_update_fused(
                    *tensors,
                    taken=taken,
                    weight_decay=wd,
                    beta1=beta1,
                    beta2=beta2,
                    m_scale=d,
                    m_next=d_next,
                    decay=decay,
                    step=alpha,
                    eps=eps,
                    fallback=update,
                )
                continue
            update(
                *tensors,
                weight_decay=wd,
                m_scale=d_next,  # β1 = 0: m = d_{k+1} ĝ, as in the reference
                decay=decay,
                step=alpha,
                eps=eps,
            )

    def info(self) -> dict[str, float]:
        r"""``group{i}/lr``, ``group{i}/effective_lr`` (:math:`d \eta \rho`) and the scalars.

        Scalars: ``d``, ``d_max``, ``d_hat`` (the last estimate), ``numerator`` (:math:`r`),
        ``denominator`` (:math:`\lVert s \rVert_1`), ``step`` (:math:`k`, steps that moved the
        parameters) and ``nonfinite_steps``. The effective learning rate is the step size the
        next step takes.
        """
        names = ("d", "d_max", "d_hat", "numerator", "denominator", "step", "nonfinite_steps")
        scalars = self._scalars_info(names)
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
