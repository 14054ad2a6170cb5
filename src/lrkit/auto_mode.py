r"""Auto mode: an optimizer and a schedule from the step budget alone, no learning rate to tune.

:func:`auto` has two methods. Both lay a schedule on the budget; they differ in where the peak
step size comes from.

**With data** (``loss`` and ``batches``, or ``closure``): ``"range_test"``. A short learning-rate
range test (Smith 2017; :func:`lrkit.finder.range_test`) runs AdamW on the model with the rate
growing geometrically from :math:`10^{-7}` to :math:`10` over :math:`N` updates,

.. math::

    \eta_j = 10^{-7} \left(10^{8}\right)^{j/(N-1)}, \qquad j = 0, \dots, N-1,

and stops early when the smoothed loss diverges; it uses :math:`M \le N` updates and puts the
model, the optimizer and the random generators back exactly. Its updates are part of the budget:
with :math:`T` the budget (``steps``), :math:`R = T - M` updates remain for training. A rule
(:data:`RULE`, by default :func:`lrkit.finder.suggest.default`: one third of the way from the
steepest descent to the loss minimum in :math:`\log\eta`, see ``docs/finder.md``) reads the
suggested rate :math:`\eta^\star` off the curve, and the peak rate is

.. math::

    \eta = c\, \sigma\, \eta^\star,

with :math:`c` the ``lr`` argument (a factor, 1 by default) and :math:`\sigma` = :data:`SCALE`.
Training then uses AdamW (Loshchilov & Hutter 2019; ``torch.optim.AdamW`` with
:math:`\beta = (0.9, 0.999)`, :math:`\epsilon = 10^{-8}`, decoupled weight decay
:math:`\lambda = 0.01`: the defaults of the benchmark strategy
``adamw(schedule='cosine', warmup=0.05)``) at the rate :math:`\eta\, s_R(k)` for update
:math:`k = 0, \dots, R - 1` after the probe, where :math:`s_R` is a linear warmup over
:math:`W = \operatorname{round}(w R)` updates (:math:`w` = :data:`WARMUP_FRACTION`) followed by
a cosine decay to :math:`f` (``final``, 0 by default) over the other :math:`R - W` (SGDR,
Loshchilov & Hutter 2017):

.. math::

    s_R(k) = \begin{cases}
        k / W & k < W \\
        f + (1 - f)\,\tfrac{1}{2}\left(1 + \cos\left(\pi\,
            \tfrac{\min(k - W,\, R - W)}{\max(1,\, R - W)}\right)\right) & k \ge W
    \end{cases}

(:func:`auto_schedule`). The probe takes :math:`N` = :data:`PROBE_STEPS` updates, at most a
tenth of the budget (:data:`PROBE_MAX_FRACTION`) but at least :data:`PROBE_MIN_STEPS`; at least
as many updates as the probe plans must remain for training. When the curve gives no usable
rate (too few points for the rule, a smoothed loss that never falls :data:`MIN_DROP` below its
first value, non-finite losses from the start), auto mode warns, records why in
:attr:`Auto.reason` and falls back to the method without data over the :math:`R` remaining
updates.

**Without data**: ``"prodigy"``. Prodigy (:class:`lrkit.optim.Prodigy`, Mishchenko & Defazio
2024) at its published defaults estimates its own step size :math:`d_k`; its ``lr`` factor
follows :math:`c\, s_T(k)` over the budget (no warmup by default: :math:`w = 0`), so update
:math:`k` steps by :math:`\alpha_k = d_k\, c\, s_T(k)` (see :class:`~lrkit.optim.Prodigy` for
:math:`d_k`). It needs no probe, so the run costs its :math:`T` updates and nothing else. Its
cosine decay is the one the Prodigy paper recommends (section 6); Defazio et al. (2023) show that
the decay, more than the peak, is what a constant rate misses. A warmup of the factor slowed the
growth of :math:`d_k` (which starts at :math:`d_0 = 10^{-6}` and is already a warmup) and cost
accuracy in the benchmark; decoupled weight decay is off (Prodigy's default).

Why the range test is the method with data: on the MNIST-1D workloads the grid-tuned AdamW with
warmup and cosine decay was 2.5 to 3.9 points of accuracy above Prodigy with its decay, more
than the bar of auto mode allows; a range test counted in the budget reaches the tuned rate's
neighbourhood for a few percent of the updates (measurements in ``docs/benchmarks.md``, section
"Auto mode").

Safeguards: the probe handles non-finite losses (it stops; the fallback takes over if nothing
usable was recorded); for Prodigy, ``growth_rate`` bounds how fast :math:`d_k` may grow per step
(``inf`` by default, as published) and a non-finite gradient leaves the estimate of :math:`d`
unchanged; for loss spikes during training, give the returned optimizer and scheduler to a
divergence guard.

Resuming: :meth:`Auto.state_dict` holds the method, the peak rate, the budget and both states;
:meth:`Auto.from_state_dict` rebuilds the run from it without probing again.

References:
    L. N. Smith. "Cyclical Learning Rates for Training Neural Networks." WACV 2017.
    arXiv:1506.01186 (the range test). I. Loshchilov and F. Hutter. "Decoupled Weight Decay
    Regularization." ICLR 2019 (AdamW). I. Loshchilov and F. Hutter. "SGDR: Stochastic Gradient
    Descent with Warm Restarts." ICLR 2017 (the cosine decay). K. Mishchenko and A. Defazio.
    "Prodigy: An Expeditiously Adaptive Parameter-Free Learner." ICML 2024.
    https://arxiv.org/abs/2306.06101. A. Defazio, A. Cutkosky, H. Mehta and K. Mishchenko.
    "When, Why and How Much? Adaptive Learning Rate Scheduling by Refinement."
    arXiv:2310.07831, 2023.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, Literal

import torch
from torch import Tensor, nn

from lrkit._validate import check_choice, check_float, check_int
from lrkit.errors import StateError
from lrkit.finder import suggest
from lrkit.finder.range_test import RangeTest, range_test
from lrkit.finder.suggest import Suggestion
from lrkit.optim._dadapt_core import check_growth_rate
from lrkit.optim.prodigy import Prodigy
from lrkit.scheduler import Scheduler
from lrkit.schedules import Schedule, cosine, warmup
from lrkit.schedules.base import from_config

__all__ = [
    "METHODS",
    "MIN_DROP",
    "PROBE_DIVERGE",
    "PROBE_END_LR",
    "PROBE_MAX_FRACTION",
    "PROBE_MIN_STEPS",
    "PROBE_SMOOTHING",
    "PROBE_START_LR",
    "PROBE_STEPS",
    "RULE",
    "SCALE",
    "WARMUP_FRACTION",
    "Auto",
    "Method",
    "auto",
    "auto_adamw",
    "auto_optimizer",
    "auto_schedule",
    "probe_steps_for",
]

logger = logging.getLogger(__name__)

Method = Literal["range_test", "prodigy"]
METHODS: Final[tuple[Method, ...]] = ("range_test", "prodigy")
"""The methods of :func:`auto`: a range test then AdamW (with data), or Prodigy (without)."""

LossFn = Callable[[nn.Module, Any], Tensor]

# -- the range-test method ----------------------------------------------------------------------
PROBE_STEPS: Final = 100
"""Updates the range test plans by default, before the cap and the floor below."""

PROBE_MAX_FRACTION: Final = 0.1
"""The default probe takes at most this share of the budget (``floor(fraction * steps)``)..."""

PROBE_MIN_STEPS: Final = 20
"""...but at least this many updates (fewer leave too few points for a suggestion)."""

PROBE_LEAST: Final = 10
"""The fewest updates an explicit ``probe_steps`` may ask for."""

PROBE_START_LR: Final = 1e-7
"""The first rate of the range test's exponential sweep."""

PROBE_END_LR: Final = 10.0
"""The last rate of the range test's exponential sweep."""

PROBE_SMOOTHING: Final = 0.98
""":math:`\beta` of the range test's smoothed loss (the range test's own default)."""

PROBE_DIVERGE: Final = 4.0
"""The range test stops when its smoothed loss exceeds this factor times its minimum."""

MIN_DROP: Final = 0.01
"""The smoothed loss of the probe must fall at least this fraction below its first value for
its suggestion to be used (a flat or rising curve carries no rate)."""

RULE: Callable[[RangeTest], Suggestion] = suggest.default
"""The rule that reads the suggested rate :math:`\\eta^\\star` off the range test."""

SCALE: Final = 1.0
"""The factor :math:`\\sigma` between the suggested rate and the peak rate of training."""

WARMUP_FRACTION: Final = 0.05
"""Linear warmup of the AdamW schedule, as a fraction of the updates left after the probe."""

ADAMW_BETAS: Final = (0.9, 0.999)
"""AdamW's :math:`(\\beta_1, \\beta_2)` (torch's and the benchmark ``adamw()``'s defaults)."""

ADAMW_EPS: Final = 1e-8
"""AdamW's :math:`\\epsilon` (torch's and the benchmark ``adamw()``'s default)."""

ADAMW_WEIGHT_DECAY: Final = 0.01
"""AdamW's decoupled weight decay :math:`\\lambda` (torch's and the benchmark ``adamw()``'s)."""

# -- the Prodigy method -------------------------------------------------------------------------
WARMUP: Final = 0.0
"""Default warmup of the Prodigy method, as a fraction of the budget."""

WEIGHT_DECAY: Final = 0.0
"""Default decoupled weight decay :math:`\\lambda` of the Prodigy method (its published one)."""

_FORMAT: Final = "lrkit.Auto"
_VERSION: Final = 2
_READS: Final = (1, 2)


def auto_schedule(steps: int, *, warmup_fraction: float = WARMUP, final: float = 0.0) -> Schedule:
    r"""The factor schedule :math:`s_T(k)` of auto mode for a budget of ``steps`` updates.

    A linear warmup over :math:`W = \operatorname{round}(w T)` updates, then a cosine decay to
    ``final`` over the remaining :math:`T - W` (at least 1) updates; see :mod:`lrkit.auto_mode`.

    Args:
        steps: :math:`T`, the number of updates of the run, an int >= 1.
        warmup_fraction: :math:`w` in [0, 1).
        final: :math:`f` in [0, 1], the factor reached at the end.

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: An argument is out of range.

    Examples:
        >>> s = auto_schedule(100)
        >>> s(0), s(50), round(s(99), 6), s(100)
        (1.0, 0.5, 0.000247, 0.0)
        >>> w = auto_schedule(100, warmup_fraction=0.05)
        >>> w(0), w(1), w(5), round(w(99), 6)
        (0.0, 0.2, 1.0, 0.000273)
    """
    steps = check_int("steps", steps, min=1)
    w = check_float("warmup_fraction", warmup_fraction, min=0.0, max=1.0, max_open=True)
    final = check_float("final", final, min=0.0, max=1.0)
    n_warmup = round(w * steps)
    decay = cosine(lr=1.0, steps=max(1, steps - n_warmup), min_lr=final)
    return decay if n_warmup == 0 else warmup(decay, steps=n_warmup)


def auto_optimizer(
    params: nn.Module | Iterable[Any],
    *,
    lr: float = 1.0,
    weight_decay: float = WEIGHT_DECAY,
    growth_rate: float = math.inf,
) -> Prodigy:
    r"""The optimizer of the Prodigy method: Prodigy at its published defaults.

    Args:
        params: A model, or parameters or param groups as ``torch.optim`` takes them.
        lr: :math:`c`, a factor on Prodigy's step size (1: as published).
        weight_decay: :math:`\lambda \ge 0`, decoupled (applied as :math:`x \leftarrow x -
            \lambda \alpha_k x`).
        growth_rate: :math:`\gamma \ge 1`, the most :math:`d_k` may grow per step.

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: An argument is out of range, or there are no parameters.
    """
    if isinstance(params, nn.Module):
        params = params.parameters()
    return Prodigy(
        params,
        lr=check_float("lr", lr, min=0.0, min_open=True),
        weight_decay=weight_decay,
        decouple=True,
        growth_rate=growth_rate,
    )


def auto_adamw(
    params: nn.Module | Iterable[Any], lr: float, weight_decay: float = ADAMW_WEIGHT_DECAY
) -> torch.optim.AdamW:
    r"""The optimizer of the range-test method: ``torch.optim.AdamW`` at rate ``lr``.

    :math:`\beta` = :data:`ADAMW_BETAS`, :math:`\epsilon` = :data:`ADAMW_EPS`, no AMSGrad:
    the settings of the benchmark strategy ``adamw(schedule='cosine', warmup=0.05)``
    (Loshchilov & Hutter 2019).
    """
    if isinstance(params, nn.Module):
        params = params.parameters()
    return torch.optim.AdamW(
        params, lr=lr, betas=ADAMW_BETAS, eps=ADAMW_EPS, weight_decay=weight_decay, amsgrad=False
    )


def probe_steps_for(steps: int) -> int:
    r"""The default number of range-test updates for a budget of ``steps``.

    :math:`\max(` :data:`PROBE_MIN_STEPS` :math:`, \min(` :data:`PROBE_STEPS` :math:`,
    \lfloor` :data:`PROBE_MAX_FRACTION` :math:`\cdot T \rfloor))`.

    Examples:
        >>> probe_steps_for(100), probe_steps_for(500), probe_steps_for(6000)
        (20, 50, 100)
    """
    steps = check_int("steps", steps, min=1)
    share = math.floor(PROBE_MAX_FRACTION * steps + 1e-9)
    return max(PROBE_MIN_STEPS, min(PROBE_STEPS, share))


class Auto:
    """What :func:`auto` returns: the optimizer, its scheduler and the budget, stepped together.

    Use :meth:`step` after each backward pass (it steps the optimizer, then the scheduler), or
    step :attr:`optimizer` and :attr:`scheduler` yourself. :meth:`state_dict` saves the run;
    :meth:`from_state_dict` (or :meth:`load_state_dict` on an :class:`Auto` built the same way)
    resumes it.

    Attributes:
        optimizer: ``torch.optim.AdamW`` (method ``"range_test"``) or
            :class:`~lrkit.optim.Prodigy` (method ``"prodigy"``).
        scheduler: The :class:`lrkit.Scheduler` (``mode="factor"``) applying :attr:`schedule`.
        schedule: The factor schedule over :attr:`steps` (see :func:`auto_schedule`).
        steps: The updates left to run after the probe (the whole budget without one).
        lr: The peak rate of AdamW (``"range_test"``), or the factor on Prodigy's step size.
        method: ``"range_test"`` or ``"prodigy"``.
        probe: The :class:`~lrkit.finder.RangeTest` of the probe, or ``None`` (no probe, or a
            resumed run).
        probe_steps: The updates the probe used (0 without one); they count in the budget.
        reason: Why the range test's result was not used (the Prodigy fallback), else ``None``.
    """

    __slots__ = (
        "lr",
        "method",
        "optimizer",
        "probe",
        "probe_steps",
        "reason",
        "schedule",
        "scheduler",
        "steps",
    )

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        scheduler: Scheduler,
        schedule: Schedule,
        steps: int,
        *,
        lr: float = 1.0,
        method: Method = "prodigy",
        probe: RangeTest | None = None,
        probe_steps: int = 0,
        reason: str | None = None,
    ) -> None:
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.schedule = schedule
        self.steps = steps
        self.lr = lr
        self.method: Method = method
        self.probe = probe
        self.probe_steps = probe_steps
        self.reason = reason

    @property
    def budget(self) -> int:
        """The whole budget: the probe's updates and :attr:`steps`."""
        return self.probe_steps + self.steps

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One update, then the schedule's value for the next; returns the closure's loss."""
        loss = self.optimizer.step(closure)
        self.scheduler.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients of the optimized parameters (``optimizer.zero_grad``)."""
        self.optimizer.zero_grad(set_to_none=set_to_none)

    @property
    def steps_done(self) -> int:
        """The number of training updates applied so far (the scheduler's count)."""
        return self.scheduler.steps_done

    def state_dict(self) -> dict[str, Any]:
        """The method, peak rate and budget, and the optimizer's and the scheduler's state.

        Plain types and tensors only (loadable with ``torch.load(..., weights_only=True)``).
        """
        return {
            "format": _FORMAT,
            "version": _VERSION,
            "method": self.method,
            "lr": self.lr,
            "steps": self.steps,
            "probe_steps": self.probe_steps,
            "reason": self.reason,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Resume from :meth:`state_dict` into this run (built with the same method and budget).

        To resume a run whose rate came from a probe, use :meth:`from_state_dict` instead of
        building it again: that does not probe.

        Raises:
            StateError: ``state_dict`` is not from :class:`Auto`, or was saved with another
                method or budget (the schedule would differ).
        """
        saved = _read_state(state_dict)
        if saved["method"] != self.method:
            raise StateError(
                f"state_dict was saved with method={saved['method']!r}, "
                f"this Auto has method={self.method!r}"
            )
        if saved["steps"] != self.steps:
            raise StateError(
                f"state_dict was saved with steps={saved['steps']!r}, "
                f"this Auto has steps={self.steps}"
            )
        self.optimizer.load_state_dict(dict(state_dict["optimizer"]))
        self.scheduler.load_state_dict(dict(state_dict["scheduler"]))
        self.lr = saved["lr"]
        self.probe_steps = saved["probe_steps"]
        self.reason = saved["reason"]

    @classmethod
    def from_state_dict(
        cls, params: nn.Module | Iterable[Any], state_dict: Mapping[str, Any]
    ) -> Auto:
        """Rebuild a run from :meth:`state_dict` over ``params``, without probing again.

        The optimizer (its class from the saved method), the schedule (from the scheduler's
        saved config), the peak rate and the budget all come from ``state_dict``; load the
        model's own state separately. The run continues bit for bit.

        Args:
            params: The model (or its parameters or param groups, as when it was built).
            state_dict: What :meth:`state_dict` returned.

        Raises:
            StateError: ``state_dict`` is not from :class:`Auto`, or malformed.
            ValueError: ``params`` is empty.
        """
        saved = _read_state(state_dict)
        try:
            sched_state = dict(state_dict["scheduler"])
            config = sched_state["groups"][0]["schedules"]["lr"]
            schedule = from_config(config)
            opt_state = dict(state_dict["optimizer"])
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise StateError(f"state_dict of lrkit.Auto is malformed: {exc!r}") from None
        if isinstance(params, nn.Module):
            params = params.parameters()
        optimizer: torch.optim.Optimizer
        if saved["method"] == "range_test":
            optimizer = auto_adamw(params, saved["lr"], ADAMW_WEIGHT_DECAY)
        else:
            optimizer = auto_optimizer(params, lr=saved["lr"])
        optimizer.load_state_dict(opt_state)
        scheduler = Scheduler(optimizer, schedule, mode="factor")
        scheduler.load_state_dict(sched_state)
        return cls(
            optimizer,
            scheduler,
            schedule,
            saved["steps"],
            lr=saved["lr"],
            method=saved["method"],
            probe_steps=saved["probe_steps"],
            reason=saved["reason"],
        )

    def __repr__(self) -> str:
        if self.method == "prodigy" and self.probe_steps == 0:
            return f"Auto(steps={self.steps}, schedule={self.schedule!r})"
        return (
            f"Auto(method={self.method!r}, lr={self.lr:.4g}, probe_steps={self.probe_steps}, "
            f"steps={self.steps}, schedule={self.schedule!r})"
        )


def _read_state(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """The checked header of an :class:`Auto` state (version 1: the Prodigy method only)."""
    if not isinstance(state_dict, Mapping) or state_dict.get("format") != _FORMAT:
        raise StateError("state_dict is not from lrkit.Auto")
    version = state_dict.get("version")
    if version not in _READS:
        raise StateError(f"state_dict has version {version!r}, this lrkit reads {list(_READS)}")
    if "optimizer" not in state_dict or "scheduler" not in state_dict:
        raise StateError("state_dict of lrkit.Auto has no optimizer or scheduler state")
    if version == 1:
        try:
            lr = float(state_dict["scheduler"]["groups"][0]["base"]["lr"])
        except (KeyError, IndexError, TypeError, ValueError):
            raise StateError("state_dict of lrkit.Auto has no base rate") from None
        out = {"method": "prodigy", "lr": lr, "probe_steps": 0, "reason": None}
        out["steps"] = state_dict.get("steps")
        return out
    out = {key: state_dict.get(key) for key in ("method", "lr", "steps", "probe_steps", "reason")}
    if out["method"] not in METHODS:
        raise StateError(f"state_dict has method {out['method']!r}, expected one of {METHODS}")
    try:
        out["lr"] = check_float("lr", out["lr"], min=0.0, min_open=True)
        out["steps"] = check_int("steps", out["steps"], min=1)
        out["probe_steps"] = check_int("probe_steps", out["probe_steps"], min=0)
    except (TypeError, ValueError) as exc:
        raise StateError(f"invalid state_dict: {exc}") from None
    return out


def _materialize(params: nn.Module | Iterable[Any]) -> list[Any]:
    """The parameters or param groups as a list that can be iterated more than once."""
    if isinstance(params, nn.Module):
        return list(params.parameters())
    if isinstance(params, Tensor):
        raise TypeError(
            "params must be a model or an iterable of tensors or param groups, got a Tensor"
        )
    out: list[Any] = []
    for item in params:
        if isinstance(item, Mapping):
            group = dict(item)
            inner = group.get("params")
            if inner is not None and not isinstance(inner, Tensor):
                group["params"] = list(inner)
            out.append(group)
        else:
            out.append(item)
    return out


def _method(value: object) -> Method:
    check_choice("method", value, METHODS)
    return "range_test" if value == "range_test" else "prodigy"


def _check_data(params: object, loss: object, batches: object, closure: object) -> nn.Module | None:
    """The model to probe if data was given, else ``None``.

    Raises for a partial or contradictory set of data arguments, or data without a model.
    """
    if closure is not None:
        if loss is not None or batches is not None:
            raise TypeError("give either loss and batches, or closure, not both")
        if not callable(closure):
            raise TypeError(f"closure must be callable, got {closure!r}")
    elif loss is not None or batches is not None:
        if loss is None or batches is None:
            missing = "batches" if batches is None else "loss"
            raise TypeError(f"loss and batches go together: {missing} is missing")
        if not callable(loss):
            raise TypeError(f"loss must be callable as loss(model, batch), got {loss!r}")
        if not isinstance(batches, Iterable):
            raise TypeError(f"batches must be an iterable of batches, got {type(batches).__name__}")
    else:
        return None
    if not isinstance(params, nn.Module):
        raise TypeError(
            "with data, auto runs a range test on the model: pass the torch.nn.Module, "
            f"got {type(params).__name__}"
        )
    return params


def _suggested(
    result: RangeTest, rule: Callable[[RangeTest], Suggestion]
) -> tuple[float, str | None]:
    """The suggested rate and ``None``, or NaN and why the curve gives no usable rate."""
    if len(result) == 0:
        return math.nan, f"the probe recorded no loss ({result.message})"
    try:
        rate = rule(result).lr
    except ValueError as exc:
        return math.nan, f"{exc} ({result.message})"
    curve = result.smoothed
    first, low = float(curve[0]), float(curve.min())
    if not low < first - MIN_DROP * abs(first):
        return math.nan, (
            f"the smoothed loss never decreases by {MIN_DROP:.0%} (from {first:.4g} to at "
            f"least {low:.4g}; {result.message})"
        )
    if not (math.isfinite(rate) and rate > 0.0):
        return math.nan, f"the rule suggested lr {rate!r} ({result.message})"
    return rate, None


def auto(
    params: nn.Module | Iterable[Any],
    steps: int,
    *,
    loss: LossFn | None = None,
    batches: Iterable[Any] | None = None,
    closure: Callable[[], Tensor] | None = None,
    probe_steps: int | None = None,
    method: Method | None = None,
    lr: float = 1.0,
    warmup_fraction: float | None = None,
    final: float = 0.0,
    weight_decay: float | None = None,
    growth_rate: float = math.inf,
) -> Auto:
    r"""Build the optimizer and the schedule of a run of ``steps`` updates; no rate to choose.

    With data (``loss`` and ``batches``, or ``closure``, as :func:`lrkit.finder.range_test`
    takes them), a short range test on the model picks the peak rate of AdamW with warmup and
    cosine decay over the updates left (method ``"range_test"``); the probe's updates count in
    ``steps``. Without data, Prodigy with a cosine decay of its factor over ``steps`` (method
    ``"prodigy"``). Formulas and reasons in :mod:`lrkit.auto_mode`.

    The probe draws its batches from ``batches`` (a one-shot iterator continues where it left
    off, so training goes on with the next batches) and leaves the model, the optimizer and the
    random generators exactly as they were.

    Args:
        params: The model (required with data), or its parameters or param groups.
        steps: :math:`T`, the total number of optimizer updates of the run, probe included.
        loss: ``loss(model, batch)``, the scalar loss of a batch (with ``batches``).
        batches: Training batches (with ``loss``); an iterable, restarted when it ends if it can
            be (a list, a ``DataLoader``).
        closure: Instead of ``loss``/``batches``: returns the loss of the next batch (never call
            ``backward()`` inside).
        probe_steps: :math:`N`, the range test's planned updates, an int >= 10; default
            :func:`probe_steps_for` (``steps``). At least as many updates must remain.
        method: ``"range_test"`` (needs data) or ``"prodigy"`` (takes none); ``None`` chooses
            by whether data was given.
        lr: :math:`c > 0`, a factor on the rate auto finds (the suggestion, or Prodigy's
            estimate); leave it at 1.
        warmup_fraction: :math:`w` in [0, 1), the linear warmup's share of the updates it
            schedules; default :data:`WARMUP_FRACTION` (range test) or 0 (Prodigy).
        final: :math:`f` in [0, 1], the factor reached at the end of the decay.
        weight_decay: :math:`\lambda \ge 0`, decoupled weight decay; default 0.01 (AdamW) or 0
            (Prodigy).
        growth_rate: :math:`\gamma \ge 1`, the most Prodigy's step size estimate may grow per
            step (``inf``: no limit).

    Returns:
        An :class:`Auto` with the optimizer and the scheduler, the scheduler already applied at
        its step 0, and the probe's record (:attr:`~Auto.probe`, :attr:`~Auto.probe_steps`,
        :attr:`~Auto.lr`, :attr:`~Auto.method`, :attr:`~Auto.reason`).

    Raises:
        TypeError: An argument has the wrong type (``steps`` must be an int), data given
            partly, data with a ``params`` that is not a model, or a ``method`` that does not fit
            the data.
        ValueError: An argument is out of range (``steps must be an int >= 1, got 0``), ``steps``
            too small to probe and train, or there are no parameters.

    Warns:
        RuntimeWarning: The range test gave no usable rate; the run falls back to Prodigy.

    Examples:
        >>> import torch
        >>> model = torch.nn.Linear(4, 1)
        >>> run = auto(model, steps=100)
        >>> for _ in range(3):
        ...     run.zero_grad()
        ...     model(torch.ones(2, 4)).pow(2).mean().backward()
        ...     run.step()
        >>> run.steps_done, run.method
        (3, 'prodigy')
    """
    steps = check_int("steps", steps, min=1)
    lr = check_float("lr", lr, min=0.0, min_open=True)
    if warmup_fraction is not None:
        check_float("warmup_fraction", warmup_fraction, min=0.0, max=1.0, max_open=True)
    check_float("final", final, min=0.0, max=1.0)
    if weight_decay is not None:
        check_float("weight_decay", weight_decay, min=0.0)
    check_growth_rate(growth_rate)
    model = _check_data(params, loss, batches, closure)
    if method is None:
        method = "prodigy" if model is None else "range_test"
    method = _method(method)
    if method == "range_test" and model is None:
        raise TypeError("method='range_test' needs data to probe: loss and batches, or closure")
    if method == "prodigy" and model is not None:
        raise TypeError("method='prodigy' takes no data (it does not probe)")
    if model is None:
        if probe_steps is not None:
            raise TypeError("probe_steps needs data (loss and batches, or closure)")
        return _prodigy(params, steps, lr, warmup_fraction, final, weight_decay, growth_rate)

    planned = (
        probe_steps_for(steps)
        if probe_steps is None
        else check_int("probe_steps", probe_steps, min=PROBE_LEAST)
    )
    if steps - planned < planned:
        raise ValueError(
            f"steps={steps} is too small to probe and train: the range test plans {planned} "
            f"updates and at least as many must remain; give steps >= {2 * planned}, a smaller "
            f"probe_steps (>= {PROBE_LEAST}), or no data (method 'prodigy', no probe)"
        )
    wd = ADAMW_WEIGHT_DECAY if weight_decay is None else weight_decay
    groups = _materialize(model)
    optimizer = auto_adamw(groups, 1.0, wd)
    result = range_test(
        model,
        optimizer,
        loss,
        batches,
        closure=closure,
        start_lr=PROBE_START_LR,
        end_lr=PROBE_END_LR,
        steps=planned,
        mode="exp",
        smoothing=PROBE_SMOOTHING,
        diverge=PROBE_DIVERGE,
    )
    used = len(result) + (1 if result.stop_reason == "nonfinite" else 0)
    remaining = steps - used
    suggested, reason = _suggested(result, RULE)
    if reason is not None:
        warnings.warn(
            f"lrkit.auto: the range test gave no usable learning rate: {reason}; "
            f"using Prodigy over the {remaining} updates left",
            RuntimeWarning,
            stacklevel=2,
        )
        fallback = _prodigy(
            groups, remaining, lr, warmup_fraction, final, weight_decay, growth_rate
        )
        fallback.probe, fallback.probe_steps, fallback.reason = result, used, reason
        return fallback
    peak = lr * SCALE * suggested
    for group in optimizer.param_groups:
        group["lr"] = peak
    w = WARMUP_FRACTION if warmup_fraction is None else warmup_fraction
    schedule = auto_schedule(remaining, warmup_fraction=w, final=final)
    scheduler = Scheduler(optimizer, schedule, mode="factor")
    logger.info(
        "auto: range test %s; suggested lr %.4g, peak lr %.4g over %d updates",
        result.message,
        suggested,
        peak,
        remaining,
    )
    return Auto(
        optimizer,
        scheduler,
        schedule,
        remaining,
        lr=peak,
        method="range_test",
        probe=result,
        probe_steps=used,
    )


def _prodigy(
    params: nn.Module | Iterable[Any],
    steps: int,
    lr: float,
    warmup_fraction: float | None,
    final: float,
    weight_decay: float | None,
    growth_rate: float,
) -> Auto:
    """The Prodigy method over ``steps`` updates."""
    w = WARMUP if warmup_fraction is None else warmup_fraction
    schedule = auto_schedule(steps, warmup_fraction=w, final=final)
    optimizer = auto_optimizer(
        params,
        lr=lr,
        weight_decay=WEIGHT_DECAY if weight_decay is None else weight_decay,
        growth_rate=growth_rate,
    )
    scheduler = Scheduler(optimizer, schedule, mode="factor")
    return Auto(optimizer, scheduler, schedule, steps, lr=lr, method="prodigy")
