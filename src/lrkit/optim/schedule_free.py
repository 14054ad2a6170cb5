r"""Schedule-Free SGD and Schedule-Free AdamW (Defazio et al. 2024, "The Road Less Scheduled").

Schedule-Free learning replaces both momentum and the learning-rate schedule by an interpolation
and an online average of three sequences. With a base step :math:`d_t` (the gradient for SGD, the
Adam-normalized gradient for AdamW) and :math:`t = 1, 2, \dots` the 1-based step:

.. math::

    y_t &= (1 - \beta)\, z_t + \beta\, x_t
        \qquad \text{(the gradient is taken here: } g_t = \nabla f(y_t)\text{)} \\
    \gamma_t &= \gamma \min(1,\ t / T_{\mathrm{warmup}}) \\
    z_{t+1} &= z_t - \gamma_t\, (d_t + \lambda\, y_t) \\
    w_t &= t^{\,r}\, (\max_{i \le t} \gamma_i)^{p}, \qquad
        c_{t+1} = w_t \Big/ \sum_{i=1}^{t} w_i \\
    x_{t+1} &= (1 - c_{t+1})\, x_t + c_{t+1}\, z_{t+1}

Symbols and arguments: :math:`\gamma` is ``lr``, :math:`\beta` is ``momentum`` (SGD) or
``betas[0]`` (AdamW), :math:`\lambda` is ``weight_decay``, :math:`T_{\mathrm{warmup}}` is
``warmup_steps`` (no warmup when 0), :math:`r` is ``r``, :math:`p` is ``weight_lr_power``. The
averaging weight :math:`c_{t+1}` is 0 while :math:`\sum w_i = 0` (``lr = 0`` with ``p > 0``).
For AdamW, with :math:`\beta_2` = ``betas[1]`` and :math:`\epsilon` = ``eps``:

.. math::

    v_t = \beta_2 v_{t-1} + (1 - \beta_2)\, g_t^2, \qquad
    d_t = \frac{g_t}{\sqrt{v_t / (1 - \beta_2^{\,t})} + \epsilon};
    \qquad \text{for SGD } d_t = g_t.

Only :math:`z` (and :math:`v`) are stored; the parameters hold :math:`y` in train mode and
:math:`x` in eval mode. One step updates them in place, without forming :math:`x`:

.. math::

    z \leftarrow z - \gamma_t\, \hat d, \qquad
    y \leftarrow y - (1 - \beta)\, \gamma_t\, \hat d, \qquad
    y \leftarrow y + c_{t+1}\, (z - y)

with :math:`\hat d = d_t + \lambda y_t`: the base step moves :math:`z`, :math:`y` follows with its
weight :math:`1 - \beta` on :math:`z`, and the averaging pulls :math:`y` toward the new :math:`z`
by :math:`c_{t+1}` (because :math:`y - z = \beta (x - z)`). :meth:`ScheduleFree.eval` sets the
parameters to :math:`x = y + (1 - 1/\beta)(z - y)` and :meth:`ScheduleFree.train` back to
:math:`y = x + (1 - \beta)(z - x)`.

Deviations, and whom lrkit follows: lrkit follows the ``schedulefree`` package (``SGDScheduleFree``,
``AdamWScheduleFree``, v1.4), and its tests compare with it step by step.

* AdamW bias correction: the paper's Algorithm 1 (and the package's ``AdamWScheduleFreePaper``)
  folds :math:`\sqrt{1 - \beta_2^t}` into :math:`\gamma_t`, so it also scales the weight decay and
  the averaging weights, and adds :math:`\epsilon` to :math:`\sqrt{v_t}`; the package's default
  version, followed here, divides :math:`v_t` by :math:`1 - \beta_2^t` inside the root and keeps
  :math:`\gamma_t` free of it (the package notes that the paper form can be unstable).
* Averaging weights: the paper's Algorithm 1 uses :math:`c_{t+1} = \gamma_t^2 / \sum \gamma_i^2`;
  the package, followed here, uses :math:`t^r (\max_{i \le t}\gamma_i)^p`, which is the paper's
  rule for ``r = 0, weight_lr_power = 2`` while :math:`\gamma_t` does not decrease, and stays a
  proper average when ``lr`` is lowered by a schedule.
* Weight decay is taken at :math:`y_t` and added to :math:`d_t` (after the Adam normalization), as
  in the paper and the package; for SGD it is an L2 penalty on :math:`y`.
* Mode: the package starts in eval mode and keeps a flag per param group; lrkit starts in train
  mode, like ``torch.nn.Module``, and keeps one flag for the optimizer (at the start
  :math:`x = y = z`, so no parameter changes). The flag is part of ``state_dict()``.
* ``p.grad`` is left untouched (the package writes the weight decay and the Adam normalization
  into it), and stepping in eval mode raises :class:`~lrkit.errors.StateError` (the package raises
  a bare ``Exception``).
* The interpolation weight must be in :math:`(0, 1)`: at :math:`\beta = 0` the parameters would be
  :math:`z` and :math:`x` could not be recovered by :meth:`ScheduleFree.eval`.

State: each parameter with a gradient has ``"z"`` (and ``"exp_avg_sq"`` for AdamW) in
``optimizer.state[p]``; the mode and the averaging scalars of each group are in
:attr:`~lrkit.optim._base.LRKitOptimizer.global_state`: ``"train_mode"`` (a bool) and, as
float64 tensors of shape ``(1,)`` on the parameters' device, ``"group{i}/step"`` (:math:`t` of the
last step), ``"group{i}/lr_max"`` (:math:`\max_i \gamma_i`) and ``"group{i}/weight_sum"``
(:math:`\sum_i w_i`). No value reaches the host during ``step()``. The shape is ``(1,)`` and not
``()`` because ``torch.compile`` (torch 2.13, CPU) drops in-place updates of 0-dim float64 CPU
tensors, which would freeze the step count in a compiled training step.

Checkpoints: save the model and the optimizer together, in either mode; the model's parameters
then hold :math:`y` (train mode) or :math:`x` (eval mode) and the optimizer's ``state_dict`` says
which. After loading both, call :meth:`ScheduleFree.train` before the next step (a no-op when the
checkpoint was taken in train mode); a step without it raises :class:`~lrkit.errors.StateError`
instead of training from the wrong point. An eval-mode checkpoint has the averaged weights ready
for inference.

Non-finite gradients are not filtered (filtering would need a host sync or a masked copy of
every state tensor per step): a NaN or infinite gradient element propagates into :math:`z`,
:math:`y` and :math:`v` of that element, as in the reference package. Under mixed precision,
``torch.amp.GradScaler`` skips ``step()`` when it finds one, which leaves all state, the step count
included, unchanged.

Distributed: every quantity above is elementwise or depends only on the step count and ``lr``, so
neither DDP (``process_group``) nor sharded parameters (``sharded=True``) need a reduction; both
arguments are accepted for the common optimizer interface and nothing is communicated.

References:
    Aaron Defazio, Xingyu Alice Yang, Harsh Mehta, Konstantin Mishchenko, Ahmed Khaled, Ashok
    Cutkosky. "The Road Less Scheduled." NeurIPS 2024. https://arxiv.org/abs/2405.15682

    Reference implementation: https://github.com/facebookresearch/schedule_free
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from lrkit._validate import check_bool, check_float, check_int, check_probability
from lrkit.errors import StateError
from lrkit.optim._base import GLOBAL, LRKitOptimizer, params_with_grad
from lrkit.optim._compiled import check_fused, schedule_free_fused
from lrkit.optim._dist import check_sharding
from lrkit.optim._foreach import group_by_device_and_dtype, resolve_foreach

__all__ = [
    "ScheduleFree",
    "ScheduleFreeAdamW",
    "ScheduleFreeSGD",
    "averaging_coefficients",
    "schedule_free_multi_tensor",
    "schedule_free_single_tensor",
]

_MODE = "train_mode"


def _check_foreach(value: object) -> bool | None:
    return None if value is None else check_bool("foreach", value)


def _check_betas(value: object) -> tuple[float, float]:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"betas must be a pair (beta1, beta2), got {value!r}")
    beta1 = check_float("betas[0]", value[0], min=0.0, max=1.0, min_open=True, max_open=True)
    return beta1, check_probability("betas[1]", value[1])


_Checks = Mapping[str, Callable[[Any], Any]]

_COMMON_CHECKS: _Checks = {
    "lr": functools.partial(check_float, "lr", min=0.0),
    "weight_decay": functools.partial(check_float, "weight_decay", min=0.0),
    "warmup_steps": functools.partial(check_int, "warmup_steps", min=0),
    "r": functools.partial(check_float, "r", min=0.0),
    "weight_lr_power": functools.partial(check_float, "weight_lr_power", min=0.0),
    "foreach": _check_foreach,
}


# --------------------------------------------------------------------------------------------
# The math: the averaging scalars of one step, then the update of (y, z) written twice.
# --------------------------------------------------------------------------------------------
def averaging_coefficients(
    step: Tensor,
    lr_max: Tensor,
    weight_sum: Tensor,
    *,
    lr: float,
    warmup_steps: int,
    r: float,
    weight_lr_power: float,
) -> tuple[Tensor, Tensor]:
    r"""Advance the averaging scalars of one param group by one step; return ``(γ_t, c_{t+1})``.

    With :math:`t` = ``step + 1`` (the 1-based index of the step being taken):

    .. math::

        \gamma_t = \gamma \min(1, t / T_{\mathrm{warmup}}), \quad
        \gamma_{\max} \leftarrow \max(\gamma_{\max}, \gamma_t), \quad
        w_t = t^{\,r} \gamma_{\max}^{\,p}, \quad
        W \leftarrow W + w_t, \quad
        c_{t+1} = w_t / W \ (0 \text{ when } W = 0).

    Args:
        step: One-element tensor, steps already taken; incremented in place.
        lr_max: One-element tensor :math:`\gamma_{\max}`; updated in place.
        weight_sum: One-element tensor :math:`W`; updated in place.
        lr: The group's learning rate :math:`\gamma`.
        warmup_steps: :math:`T_{\mathrm{warmup}}`; 0 disables the warmup.
        r: Power :math:`r` of the step in the averaging weight.
        weight_lr_power: Power :math:`p` of :math:`\gamma_{\max}` in the averaging weight.

    Returns:
        The scheduled learning rate :math:`\gamma_t` and the averaging weight :math:`c_{t+1}`,
        tensors with the shape, dtype and device of ``step``.
    """
    t = step + 1
    if warmup_steps > 0:
        lr_t = lr * torch.clamp(t / warmup_steps, max=1.0)
    else:
        lr_t = lr * torch.ones_like(t)  # not full_like: a compiled step would recompile per lr
    torch.maximum(lr_max, lr_t, out=lr_max)
    weight = torch.pow(t, r) * torch.pow(lr_max, weight_lr_power)
    weight_sum.add_(weight)
    c = torch.where(weight_sum > 0, weight / weight_sum, torch.zeros_like(weight))
    step.add_(1)
    return lr_t, c


def schedule_free_single_tensor(
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
) -> None:
    r"""One Schedule-Free step, one tensor at a time (the readable form of the update).

    ``ys`` are the parameters (holding :math:`y`), updated in place with ``zs``; ``exp_avg_sqs``
    is ``None`` for the SGD base step and the second moments :math:`v` for the AdamW one
    (``bias_correction2`` is then :math:`1 - \beta_2^t`). ``grads`` are read, never written.
    ``lr`` is :math:`\gamma_t` and ``c`` is :math:`c_{t+1}` from :func:`averaging_coefficients`.
    """
    for i, y in enumerate(ys):
        grad, z = grads[i], zs[i]
        if exp_avg_sqs is None:
            # SGD: d = g + λ y
            d = grad.add(y, alpha=weight_decay) if weight_decay != 0 else grad
        else:
            # AdamW: v ← β2 v + (1 - β2) g², d = g / (sqrt(v / (1 - β2^t)) + ε) + λ y
            assert bias_correction2 is not None
            v = exp_avg_sqs[i]
            v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = v.div(bias_correction2).sqrt_().add_(eps)
            d = grad.div(denom)
            if weight_decay != 0:
                d.add_(y, alpha=weight_decay)
        # z ← z - γ_t d;  y ← y - (1 - β) γ_t d;  y ← y + c (z - y)
        step = d.mul(lr)
        z.sub_(step)
        y.sub_(step, alpha=1 - beta)
        y.lerp_(z, c)


def schedule_free_multi_tensor(
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
) -> None:
    """The same step as :func:`schedule_free_single_tensor` with ``torch._foreach_*`` calls.

    Tensors are bucketed by device and dtype; the scalar tensors are moved to each bucket's
    device (a no-op when the parameters live on one device).
    """
    lists = [list(ys), list(grads), list(zs)]
    if exp_avg_sqs is not None:
        lists.append(list(exp_avg_sqs))
    for bucket in group_by_device_and_dtype(lists):
        b_ys, b_grads, b_zs = bucket[0], bucket[1], bucket[2]
        device = b_ys[0].device
        b_lr, b_c = lr.to(device), c.to(device)
        if exp_avg_sqs is None:
            # SGD: d = g + λ y
            ds = torch._foreach_add(b_grads, b_ys, alpha=weight_decay) if weight_decay else b_grads
            steps = torch._foreach_mul(ds, b_lr)
        else:
            # AdamW: v ← β2 v + (1 - β2) g², d = g / (sqrt(v / (1 - β2^t)) + ε) + λ y
            assert bias_correction2 is not None
            b_vs = bucket[3]
            torch._foreach_mul_(b_vs, beta2)
            torch._foreach_addcmul_(b_vs, b_grads, b_grads, value=1 - beta2)
            denom = torch._foreach_div(b_vs, bias_correction2.to(device))
            torch._foreach_sqrt_(denom)
            torch._foreach_add_(denom, eps)
            steps = torch._foreach_div(b_grads, denom)
            del denom
            if weight_decay != 0:
                torch._foreach_add_(steps, b_ys, alpha=weight_decay)
            torch._foreach_mul_(steps, b_lr)
        # z ← z - γ_t d;  y ← y - (1 - β) γ_t d;  y ← y + c (z - y)
        torch._foreach_sub_(b_zs, steps)
        torch._foreach_sub_(b_ys, steps, alpha=1 - beta)
        torch._foreach_lerp_(b_ys, b_zs, [b_c] * len(b_ys))


def _interpolate(params: list[Tensor], zs: list[Tensor], weight: float, foreach: bool) -> None:
    """``p ← p + weight (z - p)`` for every pair: the switch between ``y`` and ``x``."""
    if not foreach:
        for p, z in zip(params, zs, strict=True):
            p.lerp_(z, weight)
        return
    for b_params, b_zs in group_by_device_and_dtype([params, zs]):
        torch._foreach_lerp_(b_params, b_zs, weight)


# --------------------------------------------------------------------------------------------
# The plumbing: one optimizer class for both base steps.
# --------------------------------------------------------------------------------------------
class ScheduleFree(LRKitOptimizer):
    r"""The Schedule-Free averaging around a base step: the common part of both optimizers.

    Use :class:`ScheduleFreeSGD` or :class:`ScheduleFreeAdamW`; they differ only in the base step
    :math:`d_t` (plain gradient or Adam-normalized gradient) and in the names of their
    hyperparameters (``momentum`` or ``betas``). This class owns the averaging, the train/eval
    switch, the state and :meth:`info`; the math is in :func:`averaging_coefficients`,
    :func:`schedule_free_single_tensor` and :func:`schedule_free_multi_tensor` (see the module
    docstring for the formulas and the deviations from the paper).

    Call :meth:`train` before training steps and :meth:`eval` before evaluating or saving averaged
    weights; the optimizer starts in train mode.
    """

    _checks: ClassVar[_Checks] = _COMMON_CHECKS
    """The check of each hyperparameter, applied to the defaults and to every param group."""

    def __init__(
        self,
        params: Any,
        defaults: dict[str, Any],
        *,
        process_group: Any | None,
        sharded: bool,
        fused: bool | None = None,
    ) -> None:
        defaults = self._validated(defaults)
        self.process_group = process_group
        self.sharded = check_sharding(process_group, sharded)
        super().__init__(params, defaults)
        self.fused = check_fused(fused, self.param_groups)
        """Whether steps run the compiled kernel (:mod:`lrkit.optim._compiled`)."""
        self.global_state[_MODE] = True

    def _validated(self, hyper: Mapping[str, Any]) -> dict[str, Any]:
        return {k: self._checks[k](v) if k in self._checks else v for k, v in hyper.items()}

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group; the hyperparameters it sets are checked as the constructor's are.

        Raises:
            TypeError: A hyperparameter of the group has the wrong type.
            ValueError: A hyperparameter of the group is out of range or not finite.
        """
        super().add_param_group(self._validated(param_group))

    # -- what a variant defines ---------------------------------------------------------------
    def _betas(self, group: dict[str, Any]) -> tuple[float, float]:
        """``(β, β2)`` of a group; ``β2`` is ignored by the SGD base step."""
        raise NotImplementedError

    _adam: bool = False
    """Whether the base step is Adam-normalized (keeps ``exp_avg_sq``)."""

    # -- train / eval --------------------------------------------------------------------------
    @property
    def training(self) -> bool:
        """``True`` in train mode (parameters hold ``y``), ``False`` in eval mode (``x``)."""
        return bool(self.global_state[_MODE])

    @torch.no_grad()
    def train(self, mode: bool = True) -> None:
        r"""Put the parameters at the gradient point :math:`y` (``mode=False``: as :meth:`eval`).

        :math:`y = x + (1 - \beta)(z - x)`. Nothing changes when already in that mode, or for
        parameters that have not been stepped yet (there :math:`x = y = z`).

        Raises:
            TypeError: ``mode`` is not a bool.
        """
        check_bool("mode", mode)
        if mode == self.training:
            return
        for group in self.param_groups:
            beta, _ = self._betas(group)
            params, zs = [], []
            for p in group["params"]:
                state = self.state.get(p)
                if state and "z" in state:
                    params.append(p)
                    zs.append(state["z"])
            if not params:
                continue
            # train: y = lerp(x, z, 1 - β);  eval: x = lerp(y, z, 1 - 1/β)
            weight = 1 - beta if mode else 1 - 1 / beta
            _interpolate(params, zs, weight, resolve_foreach(group["foreach"], params))
        self.global_state[_MODE] = mode

    def eval(self) -> None:
        r"""Put the parameters at the average :math:`x = y + (1 - 1/\beta)(z - y)`.

        Evaluate, save inference weights or recompute BatchNorm statistics
        (:func:`lrkit.optim.bn.recompute_bn_stats`) in this mode; :meth:`train` goes back.
        """
        self.train(False)

    # -- the step -------------------------------------------------------------------------------
    def _group_scalars(self, i: int) -> tuple[Tensor, Tensor, Tensor]:
        glob = self.global_state
        keys = (f"group{i}/step", f"group{i}/lr_max", f"group{i}/weight_sum")
        if keys[0] not in glob:
            device = self._device()
            for key in keys:
                glob[key] = torch.zeros(1, dtype=torch.float64, device=device)
        return glob[keys[0]], glob[keys[1]], glob[keys[2]]

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Take one step; ``closure`` (optional) re-evaluates the loss at ``y`` and is returned.

        Raises:
            StateError: The optimizer is in eval mode (the parameters hold ``x``, not ``y``).
            TypeError: A gradient is sparse or complex.
        """
        name = type(self).__name__
        if not self.training:
            raise StateError(
                f"{name}.step() called in eval mode: the parameters hold the average x, not "
                "the training point y; call optimizer.train() before training steps (also after "
                "loading a checkpoint that was saved in eval mode)"
            )
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for i, group in enumerate(self.param_groups):
            params = params_with_grad(group["params"], name)
            beta, beta2 = self._betas(group)
            step, lr_max, weight_sum = self._group_scalars(i)
            bias_correction2 = (1 - torch.pow(beta2, step + 1)).reshape(()) if self._adam else None
            lr_t, c = averaging_coefficients(
                step,
                lr_max,
                weight_sum,
                lr=group["lr"],
                warmup_steps=group["warmup_steps"],
                r=group["r"],
                weight_lr_power=group["weight_lr_power"],
            )
            lr_t, c = lr_t.reshape(()), c.reshape(())  # 0-dim: a parameter keeps its shape
            if not params:
                continue
            grads: list[Tensor] = []
            zs: list[Tensor] = []
            vs: list[Tensor] = []
            for p in params:
                state = self.state[p]
                if "z" not in state:
                    state["z"] = p.detach().clone(memory_format=torch.preserve_format)
                    if self._adam:
                        state["exp_avg_sq"] = torch.zeros_like(
                            p, memory_format=torch.preserve_format
                        )
                grads.append(p.grad)  # type: ignore[arg-type]  # params_with_grad kept p.grad set
                zs.append(state["z"])
                if self._adam:
                    vs.append(state["exp_avg_sq"])
            update: Callable[..., None] = (
                schedule_free_multi_tensor
                if resolve_foreach(group["foreach"], params)
                else schedule_free_single_tensor
            )
            if self.fused:
                update = functools.partial(schedule_free_fused, fallback=update)
            update(
                params,
                grads,
                zs,
                vs if self._adam else None,
                lr=lr_t,
                c=c,
                bias_correction2=bias_correction2,
                beta=beta,
                beta2=beta2,
                eps=group.get("eps", 0.0),
                weight_decay=group["weight_decay"],
            )
        return loss

    # -- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """``torch.optim.Optimizer.state_dict`` with the mode captured at this moment.

        The global entry is copied (its tensors are shared, as torch shares every state tensor),
        so a later :meth:`train`/:meth:`eval` does not change the mode of a state dict held in
        memory.
        """
        out = super().state_dict()
        out["state"] = {**out["state"], GLOBAL: dict(out["state"][GLOBAL])}
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict saved by the same class; the mode saved in it becomes the mode.

        Raises:
            StateError: ``state_dict`` was not saved by this optimizer class (no mode, missing
                hyperparameters or per-parameter state).
        """
        self._check_foreign(state_dict)
        super().load_state_dict(state_dict)
        glob = self.state[GLOBAL]  # type: ignore[index]  # str key by design
        self.state[GLOBAL] = {  # type: ignore[index]  # str key by design
            k: v.clone() if isinstance(v, Tensor) else v for k, v in glob.items()
        }

    def _check_foreign(self, state_dict: dict[str, Any]) -> None:
        name = type(self).__name__
        state = state_dict.get("state", {})
        glob = state.get(GLOBAL)
        if not isinstance(glob, dict) or not isinstance(glob.get(_MODE), bool):
            raise StateError(f"state_dict was not saved by {name}: it has no train/eval mode")
        for group in state_dict.get("param_groups", []):
            missing = sorted(set(self.defaults) - set(group))
            if missing:
                raise StateError(
                    f"state_dict was not saved by {name}: its param groups lack {missing}"
                )
        needed = {"z", "exp_avg_sq"} if self._adam else {"z"}
        for key, value in state.items():
            if key != GLOBAL and value and not needed <= set(value):
                raise StateError(
                    f"state_dict was not saved by {name}: parameter {key} has state "
                    f"{sorted(value)}, expected {sorted(needed)}"
                )

    # -- observability --------------------------------------------------------------------------
    def info(self) -> dict[str, float]:
        r"""The learning rates, the averaging scalars and the mode, as floats for logging.

        Per group ``i``: ``group{i}/lr``, ``group{i}/effective_lr`` (:math:`\gamma_t` of the
        next step, after warmup), ``group{i}/step``, ``group{i}/lr_max``,
        ``group{i}/weight_sum`` and ``group{i}/c`` (the averaging weight of the last step);
        ``train_mode`` is 1.0 in train mode and 0.0 in eval mode.
        """
        out = super().info()
        for i, group in enumerate(self.param_groups):
            step_t, lr_max_t, weight_sum_t = self._group_scalars(i)
            step, lr_max, weight_sum = float(step_t), float(lr_max_t), float(weight_sum_t)
            warmup = group["warmup_steps"]
            factor = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
            last_weight = step ** group["r"] * lr_max ** group["weight_lr_power"]
            out[f"group{i}/effective_lr"] = group["lr"] * factor
            out[f"group{i}/step"] = step
            out[f"group{i}/lr_max"] = lr_max
            out[f"group{i}/weight_sum"] = weight_sum
            out[f"group{i}/c"] = last_weight / weight_sum if weight_sum > 0 and step > 0 else 0.0
        out["train_mode"] = 1.0 if self.training else 0.0
        return out


class ScheduleFreeSGD(ScheduleFree):
    r"""Schedule-Free SGD: the Schedule-Free averaging around the plain gradient step.

    Base step :math:`d_t = g_t + \lambda y_t`; the update, the averaging weights and the
    train/eval switch are in the module docstring of :mod:`lrkit.optim.schedule_free`. It matches
    ``schedulefree.SGDScheduleFree`` step by step (tests compare them at every step).

    Args:
        params: Parameters or param groups.
        lr: :math:`\gamma`, default 1.0 (the reference package's default; Schedule-Free SGD
            takes larger steps than SGD with momentum, the paper suggests 10-50x larger).
        momentum: Interpolation :math:`\beta \in (0, 1)` between ``z`` and ``x``, default 0.9.
        weight_decay: :math:`\lambda`, an L2 penalty evaluated at ``y``, default 0.
        warmup_steps: Linear warmup :math:`T_{\mathrm{warmup}}` of ``lr``, default 0 (none).
        r: Power :math:`r` of the step in the averaging weights, default 0.
        weight_lr_power: Power :math:`p` of the largest ``lr`` so far in the averaging weights,
            default 2.
        foreach: ``True``: multi-tensor path; ``False``: one tensor at a time; ``None``
            (default) follows torch.optim: multi-tensor on CUDA-like devices, loop on the CPU.
        fused: ``True``: on the CPU, one fused kernel per step: native C++ for float32 and
            float64 tensors (built once, in seconds), a ``torch.compile`` kernel for other
            dtypes' tensors of 64K elements or more (see :mod:`lrkit.optim._compiled`), the
            ``foreach`` choice for the rest and wherever compiling fails (with a warning).
            ``None`` (default) or ``False``: the ``foreach`` choice.
        process_group: The data-parallel group; accepted for the common interface, nothing is
            reduced (see the module docstring).
        sharded: Whether parameters are sharded across ``process_group``; nothing is reduced.

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: An argument is out of range or not finite.

    Examples:
        >>> import torch
        >>> from lrkit.optim import ScheduleFreeSGD
        >>> w = torch.nn.Parameter(torch.tensor([1.0]))
        >>> opt = ScheduleFreeSGD([w], lr=0.5)
        >>> (w**2).sum().backward()
        >>> opt.step()
        >>> w.data  # z = 1 - 0.5 * 2 = 0, c = 1 so x = z, y = 0.1 z + 0.9 x
        tensor([0.])
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1.0,
        *,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        r: float = 0.0,
        weight_lr_power: float = 2.0,
        foreach: bool | None = None,
        fused: bool | None = None,
        process_group: Any | None = None,
        sharded: bool = False,
    ) -> None:
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "warmup_steps": warmup_steps,
            "r": r,
            "weight_lr_power": weight_lr_power,
            "foreach": foreach,
        }
        super().__init__(
            params, defaults, process_group=process_group, sharded=sharded, fused=fused
        )

    _checks: ClassVar[_Checks] = {
        **_COMMON_CHECKS,
        "momentum": functools.partial(
            check_float, "momentum", min=0.0, max=1.0, min_open=True, max_open=True
        ),
    }

    def _betas(self, group: dict[str, Any]) -> tuple[float, float]:
        return group["momentum"], 0.0


class ScheduleFreeAdamW(ScheduleFree):
    r"""Schedule-Free AdamW: the Schedule-Free averaging around the Adam-normalized step.

    Base step :math:`d_t = g_t / (\sqrt{v_t / (1 - \beta_2^t)} + \epsilon) + \lambda y_t` with
    :math:`v_t = \beta_2 v_{t-1} + (1 - \beta_2) g_t^2`; there is no first moment, the
    interpolation :math:`\beta_1` takes its place. The update, the averaging weights and the
    train/eval switch are in the module docstring of :mod:`lrkit.optim.schedule_free`. It matches
    ``schedulefree.AdamWScheduleFree`` step by step (tests compare them at every step).

    Args:
        params: Parameters or param groups.
        lr: :math:`\gamma`, default 0.0025 (the reference package's default; the paper suggests
            1-10x the AdamW learning rate).
        betas: :math:`(\beta_1, \beta_2)`: the interpolation :math:`\beta_1 \in (0, 1)` and the
            second-moment decay :math:`\beta_2 \in [0, 1)`, default ``(0.9, 0.999)``.
        eps: :math:`\epsilon`, added to the bias-corrected root, default 1e-8.
        weight_decay: :math:`\lambda`, decoupled weight decay evaluated at ``y``, default 0.
        warmup_steps: Linear warmup :math:`T_{\mathrm{warmup}}` of ``lr``, default 0 (none).
        r: Power :math:`r` of the step in the averaging weights, default 0.
        weight_lr_power: Power :math:`p` of the largest ``lr`` so far in the averaging weights,
            default 2.
        foreach: ``True``: multi-tensor path; ``False``: one tensor at a time; ``None``
            (default) follows torch.optim: multi-tensor on CUDA-like devices, loop on the CPU.
        fused: ``True``: on the CPU, one fused kernel per step: native C++ for float32 and
            float64 tensors (built once, in seconds), a ``torch.compile`` kernel for other
            dtypes' tensors of 64K elements or more (see :mod:`lrkit.optim._compiled`), the
            ``foreach`` choice for the rest and wherever compiling fails (with a warning).
            ``None`` (default) or ``False``: the ``foreach`` choice.
        process_group: The data-parallel group; accepted for the common interface, nothing is
            reduced (see the module docstring).
        sharded: Whether parameters are sharded across ``process_group``; nothing is reduced.

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: An argument is out of range or not finite.
    """

    _adam = True
    _checks: ClassVar[_Checks] = {
        **_COMMON_CHECKS,
        "betas": _check_betas,
        "eps": functools.partial(check_float, "eps", min=0.0),
    }

    def __init__(
        self,
        params: Any,
        lr: float = 0.0025,
        *,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        r: float = 0.0,
        weight_lr_power: float = 2.0,
        foreach: bool | None = None,
        fused: bool | None = None,
        process_group: Any | None = None,
        sharded: bool = False,
    ) -> None:
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "warmup_steps": warmup_steps,
            "r": r,
            "weight_lr_power": weight_lr_power,
            "foreach": foreach,
        }
        super().__init__(
            params, defaults, process_group=process_group, sharded=sharded, fused=fused
        )

    def _betas(self, group: dict[str, Any]) -> tuple[float, float]:
        beta1, beta2 = group["betas"]
        return beta1, beta2
