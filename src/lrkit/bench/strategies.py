r"""Benchmark strategies: an optimizer, a learning-rate schedule and their hyperparameters.

A strategy is named by a spec in the safe call syntax of :mod:`lrkit._spec` (parsed with
:mod:`ast`, never ``eval``), for example::

    adamw(schedule='cosine', warmup=0.05, weight_decay=0.01)
    sgd(momentum=0.9, nesterov=True, schedule='onecycle')
    prodigy()
    schedule_free_adamw(warmup=0.05)

The learning rate is not part of the spec: a sweep varies it, and
:meth:`Strategy.build` takes it with the total number of updates. For the torch optimizers the
rate is the peak value the schedule multiplies; for the learning-rate-free ones
(:attr:`Strategy.lr_is_factor`) it is the factor their ``lr`` argument already is, 1.0 being the
published default (:attr:`Strategy.default_lr`).

Schedules are relative to the run, so one spec serves every budget. With :math:`T` updates,
:math:`W = \operatorname{round}(w T)` warmup updates (``warmup`` :math:`= w`), peak rate
:math:`\eta` and the optimizer's ``lr`` set to :math:`\eta`, the rate of update :math:`k` is
:math:`\eta\, s(k)` with the factor

=============== ================================================================================
``schedule``    :math:`s(k)` (after a linear warmup from 0 over the first :math:`W` updates)
=============== ================================================================================
``constant``    :math:`1`
``cosine``      :math:`f + (1 - f)\,(1 + \cos(\pi\, t / (T - W)))/2`, :math:`t = k - W`,
                ``final`` :math:`= f` (Loshchilov & Hutter 2017)
``linear``      :math:`1 - (1 - f)\, t / (T - W)`, ``final`` :math:`= f`
``step``        :math:`\gamma^{\#\{i:\ k \ge \operatorname{round}(m_i T)\}}`, ``decay``
                :math:`= \gamma`, ``milestones`` :math:`= (m_i)` (fractions of :math:`T`)
``onecycle``    the one-cycle policy rising over :math:`w T` updates (Smith & Topin 2019;
                :class:`lrkit.schedules.OneCycle` with ``max_lr=1``, no extra warmup)
=============== ================================================================================

``warmup_cosine`` is ``cosine`` with ``warmup=0.05`` unless given; the canonical spec says
``schedule='cosine', warmup=0.05``. The schedule is attached with :class:`lrkit.Scheduler` in
``mode="factor"``. Schedule-Free optimizers take no schedule (that is their point) but a
``warmup`` fraction, passed as their own ``warmup_steps``.

Each strategy has a canonical spec, its ``repr``: options in registry order, defaults left out,
``warmup_cosine`` spelled out, numbers normalized (``weight_decay=0`` is ``0.0``). Equal
strategies compare and hash equal and print the same spec, and ``parse_strategy(repr(s)) == s``;
:func:`canonical_spec` gives the spec a results store should key on.

The registry (:data:`KINDS`), with the defaults of each optimizer's own constructor:

* torch: ``sgd``, ``adam``, ``adamw``, ``adagrad``, ``rmsprop``, ``adadelta`` (its ``lr`` is a
  factor on the Adadelta step, default 1.0; Zeiler 2012);
* Schedule-Free (Defazio et al. 2024): ``schedule_free_sgd``, ``schedule_free_adamw``;
* learning-rate-free: ``prodigy`` (Mishchenko & Defazio 2024), ``dadapt_sgd``, ``dadapt_adam``
  (Defazio & Mishchenko 2023), ``dog``, ``ldog`` (Ivgi et al. 2023; ``weighted=True`` is DoWG,
  Khaled et al. 2023), evaluated at their polynomial-decay average (``average`` :math:`= \gamma`,
  8 as in the DoG paper; ``None`` evaluates the last iterate);
* auto mode: ``auto`` (:func:`lrkit.auto`; it lays out its own schedule, so it takes no
  ``schedule``). By default (``method='range_test'``) it runs a short range test on the run's
  model and batches, counted in the run's budget, then AdamW with warmup and cosine decay at the
  suggested rate times ``lr``; ``method='prodigy'`` is Prodigy with a cosine decay of its
  factor, ``lr`` the factor on its step size. ``weight_decay`` and ``warmup`` default to the
  method's own (0.01 and 0.05 for the range test, 0 and 0 for Prodigy);
* loss-based, stepped with a closure: ``polyak`` (SPS_max, Loizou et al. 2021; ``lr`` is the cap
  :math:`\gamma_b`), ``armijo`` (Vaswani et al. 2019; ``lr`` is :math:`\eta_{\max}`).

References:
    I. Loshchilov and F. Hutter. "SGDR: Stochastic Gradient Descent with Warm Restarts." ICLR
    2017. L. N. Smith and N. Topin. "Super-Convergence." arXiv:1708.07120, 2019. M. D. Zeiler.
    "ADADELTA: An Adaptive Learning Rate Method." arXiv:1212.5701, 2012. The learning-rate-free
    methods: see their classes in :mod:`lrkit.optim`.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, Literal

import torch
from torch import nn

from lrkit._spec import Call, parse_call, suggest
from lrkit._validate import check_bool, check_choice, check_float, check_int, check_probability
from lrkit.auto_mode import (
    ADAMW_WEIGHT_DECAY,
    METHODS,
    WARMUP,
    WARMUP_FRACTION,
    WEIGHT_DECAY,
    auto,
    auto_adamw,
    auto_optimizer,
    auto_schedule,
    probe_steps_for,
)
from lrkit.errors import SpecError
from lrkit.scheduler import Scheduler
from lrkit.schedules import Schedule, constant, cosine, linear, multistep, onecycle, warmup

if TYPE_CHECKING:
    from lrkit.optim.averaging import PolynomialDecayAverager

__all__ = [
    "KINDS",
    "SCHEDULES",
    "Kind",
    "Setup",
    "StepKind",
    "Strategy",
    "canonical_spec",
    "parse_strategy",
]

StepKind = Literal["plain", "closure"]
"""How the trainer steps: ``"plain"`` (``backward()`` then ``step()``) or ``"closure"``
(``step(closure)``, the closure computing the loss and, with gradients enabled, its gradient)."""

SCHEDULES: Final = ("constant", "cosine", "warmup_cosine", "linear", "step", "onecycle")
"""The ``schedule`` names a strategy accepts."""

Checker = Callable[[str, Any], Any]
Params = Iterable[nn.Parameter]
Maker = Callable[[Params, float, Mapping[str, Any], int], torch.optim.Optimizer]
LossFn = Callable[[nn.Module, Any], torch.Tensor]
Builder = Callable[
    [nn.Module, float, Mapping[str, Any], int, LossFn | None, Iterator[Any] | None], "Setup"
]


# --------------------------------------------------------------------------------------------
# option checks: each returns the normalized value or raises naming the option
# --------------------------------------------------------------------------------------------
def _real(min: float | None = None, max: float | None = None, *, min_open: bool = False) -> Checker:
    def check(name: str, value: Any) -> float:
        return check_float(name, value, min=min, max=max, min_open=min_open)

    return check


def _growth(name: str, value: Any) -> float:
    """A growth limit ``>= 1``; ``inf`` (no limit, written ``1e999`` in a spec) is allowed."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    out = float(value)
    if math.isnan(out) or out < 1.0:
        raise ValueError(f"{name} must be >= 1, got {out!r}")
    return out


def _probability(name: str, value: Any) -> float:
    return check_probability(name, value)


def _boolean(name: str, value: Any) -> bool:
    return check_bool(name, value)


def _integer(min: int) -> Checker:
    def check(name: str, value: Any) -> int:
        return check_int(name, value, min=min)

    return check


def _betas(name: str, value: Any) -> tuple[float, float]:
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise TypeError(f"{name} must be a pair [beta1, beta2], got {value!r}")
    return (check_probability(f"{name}[0]", value[0]), check_probability(f"{name}[1]", value[1]))


def _optional(check: Checker) -> Checker:
    def optional(name: str, value: Any) -> Any:
        return None if value is None else check(name, value)

    return optional


def _fraction(name: str, value: Any) -> float:
    return check_float(name, value, min=0.0, max=1.0, max_open=True)


def _milestones(name: str, value: Any) -> tuple[float, ...]:
    if not isinstance(value, list | tuple) or not value:
        raise TypeError(f"{name} must be a non-empty list of fractions of the run, got {value!r}")
    out = tuple(
        check_float(f"{name}[{i}]", v, min=0.0, max=1.0, min_open=True, max_open=True)
        for i, v in enumerate(value)
    )
    if any(b <= a for a, b in itertools.pairwise(out)):
        raise ValueError(f"{name} must increase strictly, got {list(out)}")
    return out


def _schedule_name(name: str, value: Any) -> str:
    return check_choice(name, value, SCHEDULES)


@dataclasses.dataclass(frozen=True)
class Option:
    """One keyword of a strategy spec: its default and its check."""

    default: Any
    check: Checker


_SCHEDULE_OPTIONS: Final = ("schedule", "warmup", "final", "decay", "milestones")
_SCHEDULE_DEFAULTS: Final[Mapping[str, Mapping[str, Any]]] = {
    "constant": {"warmup": 0.0},
    "cosine": {"warmup": 0.0, "final": 0.0},
    "linear": {"warmup": 0.0, "final": 0.0},
    "step": {"warmup": 0.0, "decay": 0.1, "milestones": (0.5, 0.75)},
    "onecycle": {"warmup": 0.3},
}
_SCHEDULE_CHECKS: Final[Mapping[str, Checker]] = {
    "schedule": _schedule_name,
    "warmup": _fraction,
    "final": _real(0.0, 1.0),
    "decay": _real(0.0, 1.0, min_open=True),
    "milestones": _milestones,
}


@dataclasses.dataclass(frozen=True)
class Kind:
    """A family of strategies: one optimizer class and what the trainer must know about it.

    Attributes:
        name: The call name in specs (``"adamw"``).
        summary: One line for listings.
        default_lr: The learning rate (or factor) used when a run gives none.
        lr_is_factor: Whether ``lr`` multiplies a step size the optimizer finds itself.
        step_kind: ``"plain"`` or ``"closure"`` (see :data:`StepKind`).
        options: The optimizer's keywords with their defaults, in canonical order.
        schedulable: Whether the schedule keywords (``schedule``, ``warmup``, ``final``,
            ``decay``, ``milestones``) apply.
        make: ``make(params, lr, options, steps)`` builds the optimizer.
        own_schedule: For a family that lays out its own schedule (``auto``),
            ``own_schedule(options, steps)`` gives its factor schedule; else ``None``.
        variants: Defaults that depend on the option ``method``: ``variants[method]`` overrides
            the options' own defaults (``auto``); else ``None``.
        builder: For a family that builds its run itself, possibly probing the data first
            (``auto``): ``builder(model, lr, options, steps, loss, batches)`` returns the
            :class:`Setup`; else ``None`` (the optimizer from :attr:`make`).
        probes: ``probes(options)``: whether the run probes the data before training (it then
            needs ``loss`` and ``batches`` in :meth:`Strategy.build`); ``None``: never.
    """

    name: str
    summary: str
    default_lr: float
    lr_is_factor: bool
    step_kind: StepKind
    options: Mapping[str, Option]
    schedulable: bool
    make: Maker
    own_schedule: Callable[[Mapping[str, Any], int], Schedule] | None = None
    variants: Mapping[str, Mapping[str, Any]] | None = None
    builder: Builder | None = None
    probes: Callable[[Mapping[str, Any]], bool] | None = None


# --------------------------------------------------------------------------------------------
# the optimizers
# --------------------------------------------------------------------------------------------
def _torch(cls: Callable[..., torch.optim.Optimizer]) -> Maker:
    def make(params: Params, lr: float, options: Mapping[str, Any], steps: int) -> Any:
        return cls(params, lr=lr, **options)

    return make


def _schedule_free(adam: bool) -> Maker:
    def make(params: Params, lr: float, options: Mapping[str, Any], steps: int) -> Any:
        from lrkit.optim.schedule_free import ScheduleFreeAdamW, ScheduleFreeSGD

        kwargs = dict(options)
        kwargs["warmup_steps"] = round(kwargs.pop("warmup") * steps)
        cls = ScheduleFreeAdamW if adam else ScheduleFreeSGD
        return cls(params, lr=lr, **kwargs)

    return make


def _lrkit(module: str, cls_name: str, **fixed: Any) -> Maker:
    def make(params: Params, lr: float, options: Mapping[str, Any], steps: int) -> Any:
        import importlib

        cls = getattr(importlib.import_module(f"lrkit.optim.{module}"), cls_name)
        kwargs = {k: v for k, v in options.items() if k != "average"}
        return cls(params, lr=lr, **kwargs, **fixed)

    return make


def _auto_make(params: Params, lr: float, options: Mapping[str, Any], steps: int) -> Any:
    """The optimizer of ``auto`` without its probe (used to check the options)."""
    if options["method"] == "range_test":
        return auto_adamw(params, lr, options["weight_decay"])
    return auto_optimizer(
        params, lr=lr, weight_decay=options["weight_decay"], growth_rate=options["growth_rate"]
    )


def _auto_schedule(options: Mapping[str, Any], steps: int) -> Schedule:
    """``auto``'s factor schedule over the run, or over what a probe using all it plans leaves.

    (A probe that stops early leaves more updates; the run's own schedule is then longer.)
    """
    if options["method"] == "range_test":
        probe = probe_steps_for(steps)
        if steps - probe < probe:
            raise ValueError(
                f"auto probes {probe} updates and needs at least as many left to train: "
                f"give steps >= {2 * probe}"
            )
        steps -= probe
    return auto_schedule(steps, warmup_fraction=options["warmup"], final=options["final"])


def _auto_build(
    model: nn.Module,
    lr: float,
    options: Mapping[str, Any],
    steps: int,
    loss: LossFn | None,
    batches: Iterator[Any] | None,
) -> Setup:
    """Run :func:`lrkit.auto` (its probe included, with data) and wrap what it returns."""
    method = options["method"]
    if method == "range_test" and (loss is None or batches is None):
        raise TypeError(
            "auto(method='range_test') probes the data before training: build it with loss and "
            "batches (lrkit bench does), or use auto(method='prodigy')"
        )
    defaults = _AUTO_VARIANTS[method]
    # options left at the method's defaults go as None, so lrkit.auto picks the defaults of the
    # method it ends up using (its Prodigy fallback has its own)
    given = {
        key: None if _same(options[key], defaults[key]) else options[key]
        for key in ("weight_decay", "warmup")
    }
    probing = method == "range_test"
    run = auto(
        model,
        steps,
        loss=loss if probing else None,
        batches=batches if probing else None,
        lr=lr,
        warmup_fraction=given["warmup"],
        final=options["final"],
        weight_decay=given["weight_decay"],
        growth_rate=options["growth_rate"],
    )
    return Setup(run.optimizer, run.scheduler, run.schedule, "plain", None, run.probe_steps)


def _options(**specs: tuple[Any, Checker]) -> Mapping[str, Option]:
    return MappingProxyType({k: Option(d, c) for k, (d, c) in specs.items()})


_NONNEG = _real(0.0)
_AUTO_VARIANTS: Final[Mapping[str, Mapping[str, Any]]] = MappingProxyType(
    {
        "range_test": {"weight_decay": ADAMW_WEIGHT_DECAY, "warmup": WARMUP_FRACTION},
        "prodigy": {"weight_decay": WEIGHT_DECAY, "warmup": WARMUP},
    }
)


def _auto_method(name: str, value: Any) -> str:
    return check_choice(name, value, METHODS)


_POS = _real(0.0, min_open=True)
_BETAS = ((0.9, 0.999), _betas)


def _kind(
    name: str,
    summary: str,
    make: Maker,
    default_lr: float,
    *,
    factor: bool = False,
    closure: bool = False,
    schedulable: bool = True,
    **options: tuple[Any, Checker],
) -> Kind:
    step: StepKind = "closure" if closure else "plain"
    return Kind(name, summary, default_lr, factor, step, _options(**options), schedulable, make)


_DOG = _kind(
    "dog",
    "DoG (learning-rate-free SGD), evaluated at its iterate average",
    _lrkit("dog", "DoG"),
    1.0,
    factor=True,
    reps_rel=(1e-6, _POS),
    weight_decay=(0.0, _NONNEG),
    eps=(1e-8, _NONNEG),
    init_eta=(None, _optional(_POS)),
    weighted=(False, _boolean),
    average=(8.0, _optional(_NONNEG)),
)

_KIND_LIST: tuple[Kind, ...] = (
    _kind(
        "sgd",
        "torch SGD (momentum, Nesterov)",
        _torch(torch.optim.SGD),
        1e-3,
        momentum=(0.0, _probability),
        dampening=(0.0, _real(0.0, 1.0)),
        nesterov=(False, _boolean),
        weight_decay=(0.0, _NONNEG),
    ),
    _kind(
        "adam",
        "torch Adam (L2 weight decay)",
        _torch(torch.optim.Adam),
        1e-3,
        betas=_BETAS,
        eps=(1e-8, _NONNEG),
        weight_decay=(0.0, _NONNEG),
        amsgrad=(False, _boolean),
    ),
    _kind(
        "adamw",
        "torch AdamW (decoupled weight decay)",
        _torch(torch.optim.AdamW),
        1e-3,
        betas=_BETAS,
        eps=(1e-8, _NONNEG),
        weight_decay=(0.01, _NONNEG),
        amsgrad=(False, _boolean),
    ),
    _kind(
        "adagrad",
        "torch Adagrad",
        _torch(torch.optim.Adagrad),
        1e-2,
        lr_decay=(0.0, _NONNEG),
        weight_decay=(0.0, _NONNEG),
        initial_accumulator_value=(0.0, _NONNEG),
        eps=(1e-10, _NONNEG),
    ),
    _kind(
        "rmsprop",
        "torch RMSprop",
        _torch(torch.optim.RMSprop),
        1e-2,
        alpha=(0.99, _probability),
        eps=(1e-8, _NONNEG),
        weight_decay=(0.0, _NONNEG),
        momentum=(0.0, _probability),
        centered=(False, _boolean),
    ),
    _kind(
        "adadelta",
        "torch Adadelta (lr is a factor on its step)",
        _torch(torch.optim.Adadelta),
        1.0,
        factor=True,
        rho=(0.9, _probability),
        eps=(1e-6, _NONNEG),
        weight_decay=(0.0, _NONNEG),
    ),
    _kind(
        "schedule_free_sgd",
        "Schedule-Free SGD (lrkit.optim.ScheduleFreeSGD)",
        _schedule_free(adam=False),
        1.0,
        schedulable=False,
        momentum=(0.9, _real(0.0, 1.0, min_open=True)),
        weight_decay=(0.0, _NONNEG),
        warmup=(0.0, _fraction),
        r=(0.0, _NONNEG),
        weight_lr_power=(2.0, _NONNEG),
    ),
    _kind(
        "schedule_free_adamw",
        "Schedule-Free AdamW (lrkit.optim.ScheduleFreeAdamW)",
        _schedule_free(adam=True),
        0.0025,
        schedulable=False,
        betas=_BETAS,
        eps=(1e-8, _NONNEG),
        weight_decay=(0.0, _NONNEG),
        warmup=(0.0, _fraction),
        r=(0.0, _NONNEG),
        weight_lr_power=(2.0, _NONNEG),
    ),
    _kind(
        "prodigy",
        "Prodigy (learning-rate-free Adam)",
        _lrkit("prodigy", "Prodigy"),
        1.0,
        factor=True,
        betas=_BETAS,
        beta3=(None, _optional(_probability)),
        eps=(1e-8, _POS),
        weight_decay=(0.0, _NONNEG),
        decouple=(True, _boolean),
        use_bias_correction=(False, _boolean),
        safeguard_warmup=(False, _boolean),
        d0=(1e-6, _POS),
        d_coef=(1.0, _POS),
        growth_rate=(math.inf, _growth),
    ),
    _kind(
        "dadapt_adam",
        "D-Adapt Adam (learning-rate-free)",
        _lrkit("dadapt", "DAdaptAdam"),
        1.0,
        factor=True,
        betas=_BETAS,
        eps=(1e-8, _POS),
        weight_decay=(0.0, _NONNEG),
        decouple=(False, _boolean),
        use_bias_correction=(False, _boolean),
        d0=(1e-6, _POS),
        growth_rate=(math.inf, _growth),
    ),
    _kind(
        "dadapt_sgd",
        "D-Adapt SGD (learning-rate-free)",
        _lrkit("dadapt", "DAdaptSGD"),
        1.0,
        factor=True,
        momentum=(0.0, _probability),
        weight_decay=(0.0, _NONNEG),
        d0=(1e-6, _POS),
        growth_rate=(math.inf, _growth),
    ),
    _DOG,
    dataclasses.replace(
        _DOG,
        name="ldog",
        summary="layer-wise DoG, evaluated at its iterate average",
        make=_lrkit("dog", "LDoG"),
    ),
    _kind(
        "polyak",
        "SGD with the stochastic Polyak step SPS_max (lr is the cap)",
        _lrkit("polyak", "Polyak"),
        1.0,
        closure=True,
        c=(0.5, _POS),
        f_star=(0.0, _real()),
        weight_decay=(0.0, _NONNEG),
    ),
    _kind(
        "armijo",
        "SGD with a stochastic Armijo line search (lr is the first trial step)",
        _lrkit("armijo", "Armijo"),
        1.0,
        closure=True,
        c=(0.1, _real(0.0, 1.0, min_open=True)),
        beta=(0.9, _real(0.0, 1.0, min_open=True)),
        gamma=(2.0, _real(1.0)),
        reset=(2, _integer(0)),
        n_batches_per_epoch=(500, _integer(1)),
        max_backtracks=(100, _integer(0)),
        weight_decay=(0.0, _NONNEG),
    ),
    dataclasses.replace(
        _kind(
            "auto",
            "lrkit.auto: a range test in the budget, then AdamW with warmup+cosine "
            "(method='prodigy': Prodigy with a cosine decay)",
            _auto_make,
            1.0,
            factor=True,
            schedulable=False,
            method=("range_test", _auto_method),
            weight_decay=(_AUTO_VARIANTS["range_test"]["weight_decay"], _NONNEG),
            warmup=(_AUTO_VARIANTS["range_test"]["warmup"], _fraction),
            final=(0.0, _real(0.0, 1.0)),
            growth_rate=(math.inf, _growth),
        ),
        own_schedule=_auto_schedule,
        variants=_AUTO_VARIANTS,
        builder=_auto_build,
        probes=lambda options: options["method"] == "range_test",
    ),
)

KINDS: Final[Mapping[str, Kind]] = MappingProxyType({k.name: k for k in _KIND_LIST})
"""Every strategy family by its spec name."""


# --------------------------------------------------------------------------------------------
# the strategy
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Setup:
    """What :meth:`Strategy.build` returns for one run.

    Attributes:
        optimizer: The optimizer over the model's parameters, ``lr`` set to the run's rate.
        scheduler: The :class:`lrkit.Scheduler` (``mode="factor"``) to step after each update,
            or ``None`` for a constant rate.
        schedule: The factor schedule the scheduler applies, or ``None``.
        step_kind: ``"plain"`` or ``"closure"``.
        averager: For ``dog``/``ldog`` with ``average``, the iterate average to step after each
            update and to evaluate; else ``None``.
        probe_steps: The updates a probe spent before training (``auto``'s range test): they
            count in the run's budget, which has that many fewer updates left to train.
    """

    optimizer: torch.optim.Optimizer
    scheduler: Scheduler | None
    schedule: Schedule | None
    step_kind: StepKind
    averager: PolynomialDecayAverager | None
    probe_steps: int = 0


class Strategy:
    """An optimizer family with resolved options; its ``repr`` is its canonical spec.

    Args:
        name: A family of :data:`KINDS` (``"adamw"``).
        **options: Its keywords (see the module docstring); defaults fill the rest.

    Raises:
        ValueError: An unknown family (with a "did you mean"), or an option out of range, or a
            schedule keyword that the chosen schedule does not use.
        TypeError: An unknown keyword (with a "did you mean") or a value of the wrong type.

    Example:
        >>> s = Strategy("adamw", schedule="warmup_cosine")
        >>> s
        adamw(schedule='cosine', warmup=0.05)
        >>> s == parse_strategy("adamw(warmup=5e-2, schedule='cosine', weight_decay=0.01)")
        True
    """

    __slots__ = ("_items", "_kind")

    def __init__(self, name: str, **options: Any) -> None:
        if not isinstance(name, str):
            raise TypeError(f"strategy name must be a str, got {type(name).__name__}")
        kind = KINDS.get(name)
        if kind is None:
            raise ValueError(f"unknown strategy {name!r}{suggest(name, KINDS)}")
        self._kind = kind
        self._items = tuple(_resolve(kind, options).items())
        _probe(self)

    # -- identity ------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """The family name (``"adamw"``)."""
        return self._kind.name

    @property
    def kind(self) -> Kind:
        """The family: defaults, step kind, whether ``lr`` is a factor."""
        return self._kind

    @property
    def options(self) -> dict[str, Any]:
        """Every option, resolved (defaults included), in canonical order."""
        return dict(self._items)

    @property
    def default_lr(self) -> float:
        """The rate (or factor, see :attr:`lr_is_factor`) a run without ``lr`` uses."""
        return self._kind.default_lr

    @property
    def lr_is_factor(self) -> bool:
        """Whether ``lr`` multiplies a step size the optimizer estimates (1.0: as published)."""
        return self._kind.lr_is_factor

    @property
    def step_kind(self) -> StepKind:
        """``"closure"`` for the loss-based optimizers (Polyak, Armijo), else ``"plain"``."""
        return self._kind.step_kind

    @property
    def probes(self) -> bool:
        """Whether a run probes the data before training (:meth:`build` then needs it)."""
        probes = self._kind.probes
        return probes is not None and probes(self.options)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Strategy):
            return NotImplemented
        return self._kind.name == other._kind.name and self._items == other._items

    def __hash__(self) -> int:
        return hash((self._kind.name, self._items))

    def __repr__(self) -> str:
        defaults = _defaults(self._kind, self.options)
        parts = [
            f"{key}={_spec_value(value)}"
            for key, value in self._items
            if not _same(value, defaults.get(key))
        ]
        return f"{self._kind.name}({', '.join(parts)})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (parse_strategy, (repr(self),))

    # -- building ------------------------------------------------------------------------------
    def schedule(self, steps: int) -> Schedule | None:
        """The factor schedule for a run of ``steps`` updates, or ``None`` for a constant rate.

        Raises:
            TypeError, ValueError: ``steps`` is not an int >= 1, or the schedule cannot be laid
                out on that many updates (``onecycle`` needs a rising phase of more than one
                update; ``step`` milestones must fall after the warmup on distinct updates).
        """
        steps = check_int("steps", steps, min=1)
        if not self._kind.schedulable:
            own = self._kind.own_schedule
            return None if own is None else own(self.options, steps)
        return _schedule(self.options, steps)

    def build(
        self,
        model: nn.Module,
        *,
        lr: float | None = None,
        steps: int,
        loss: LossFn | None = None,
        batches: Iterator[Any] | None = None,
    ) -> Setup:
        """The optimizer, scheduler and averager of one run.

        A strategy that :attr:`probes` runs its probe here, on ``model`` with ``loss`` and
        batches drawn from ``batches`` (the run then continues with the next ones), and reports
        the updates it spent in :attr:`Setup.probe_steps`.

        Args:
            model: The model whose parameters are optimized (one param group).
            lr: The peak rate, or the factor when :attr:`lr_is_factor`; ``None`` uses
                :attr:`default_lr`.
            steps: The number of updates of the run, a probe's included (schedules are laid out
                on it, or on what the probe leaves).
            loss: ``loss(model, batch)``, for a strategy that probes.
            batches: The run's training batches, for a strategy that probes.

        Raises:
            TypeError: ``model`` is not a ``torch.nn.Module``, ``lr`` or ``steps`` not a number,
                or a strategy that probes got no data.
            ValueError: ``lr`` is not positive and finite, ``steps < 1``, or the schedule cannot
                be laid out on ``steps`` (see :meth:`schedule`).
        """
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        rate = self.default_lr if lr is None else check_float("lr", lr, min=0.0, min_open=True)
        steps = check_int("steps", steps, min=1)
        if self._kind.builder is not None:
            self.schedule(steps)  # refuse a budget too small before any probing
            return self._kind.builder(model, rate, self.options, steps, loss, batches)
        schedule = self.schedule(steps)
        options = _optimizer_options(self)
        optimizer = self._kind.make(model.parameters(), rate, options, steps)
        scheduler = None if schedule is None else Scheduler(optimizer, schedule, mode="factor")
        averager = None
        if options.get("average") is not None:
            from lrkit.optim.averaging import PolynomialDecayAverager

            averager = PolynomialDecayAverager(model, gamma=options["average"])
        return Setup(optimizer, scheduler, schedule, self._kind.step_kind, averager)


# --------------------------------------------------------------------------------------------
# resolution, canonical form, schedules
# --------------------------------------------------------------------------------------------
def _allowed(kind: Kind) -> tuple[str, ...]:
    return tuple(kind.options) + (_SCHEDULE_OPTIONS if kind.schedulable else ())


def _resolve(kind: Kind, given: Mapping[str, Any]) -> dict[str, Any]:
    allowed = _allowed(kind)
    for key in given:
        if key == "lr":
            raise TypeError(
                "lr is not part of a strategy: the run gives it (RunConfig.lr, or --lr in a sweep)"
            )
        if key not in allowed:
            if key in _SCHEDULE_OPTIONS:
                why = "it lays out its own" if kind.own_schedule else "Schedule-Free replaces it"
                own = ", ".join(k for k in _SCHEDULE_OPTIONS if k in kind.options)
                raise TypeError(f"{kind.name} takes no schedule ({why}); its own keywords: {own}")
            raise TypeError(f"unknown argument {key!r}{suggest(key, allowed)}")
    out: dict[str, Any] = {}
    defaults = {key: option.default for key, option in kind.options.items()}
    if kind.variants is not None:
        method = kind.options["method"]
        name = method.check("method", given["method"]) if "method" in given else method.default
        defaults.update(kind.variants[name])
    for key, option in kind.options.items():
        out[key] = option.check(key, given[key]) if key in given else defaults[key]
    if not kind.schedulable:
        return out
    checked = {k: _SCHEDULE_CHECKS[k](k, v) for k, v in given.items() if k in _SCHEDULE_CHECKS}
    name = checked.get("schedule", "constant")
    if name == "warmup_cosine":
        name = "cosine"
        checked.setdefault("warmup", 0.05)
    uses = _SCHEDULE_DEFAULTS[name]
    for key in _SCHEDULE_OPTIONS[1:]:
        if key in checked and key not in uses:
            users = [s for s, d in _SCHEDULE_DEFAULTS.items() if key in d]
            raise ValueError(
                f"{key} applies to schedule {' or '.join(map(repr, users))}, not {name!r}"
            )
    out["schedule"] = name
    for key in _SCHEDULE_OPTIONS[1:]:
        out[key] = checked.get(key, uses.get(key))
    return out


def _defaults(kind: Kind, options: Mapping[str, Any]) -> dict[str, Any]:
    out = {key: option.default for key, option in kind.options.items()}
    if kind.variants is not None:
        out.update(kind.variants[options["method"]])
    schedule = options.get("schedule")
    if kind.schedulable and schedule is not None:
        out["schedule"] = "constant"
        out.update({key: None for key in _SCHEDULE_OPTIONS[1:]})
        out.update(_SCHEDULE_DEFAULTS[schedule])
    return out


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def _spec_value(value: Any) -> str:
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_spec_value(v) for v in value) + "]"
    if isinstance(value, float) and math.isinf(value):
        return "1e999" if value > 0 else "-1e999"
    return repr(value)


def _optimizer_options(strategy: Strategy) -> dict[str, Any]:
    """The options that belong to the optimizer (not the schedule keywords)."""
    return {k: v for k, v in strategy._items if k in strategy.kind.options}


def _probe(strategy: Strategy) -> None:
    """Build the optimizer once on a dummy parameter: its own checks name any bad option."""
    dummy = nn.Linear(1, 1)
    strategy.kind.make(dummy.parameters(), strategy.default_lr, _optimizer_options(strategy), 1)


def _schedule(options: Mapping[str, Any], steps: int) -> Schedule | None:
    name = options["schedule"]
    w = round(options["warmup"] * steps) if name != "onecycle" else 0
    rest = max(1, steps - w)
    inner: Schedule
    if name == "onecycle":
        return onecycle(max_lr=1.0, steps=steps, warmup=options["warmup"] * steps)
    if name == "constant":
        if w == 0:
            return None
        inner = constant(lr=1.0)
    elif name == "cosine":
        inner = cosine(lr=1.0, steps=rest, min_lr=options["final"])
    elif name == "linear":
        inner = linear(lr=1.0, steps=rest, end_factor=options["final"])
    else:  # step
        marks = [round(m * steps) - w for m in options["milestones"]]
        if marks[0] < 1 or any(b <= a for a, b in itertools.pairwise(marks)):
            raise ValueError(
                f"milestones {list(options['milestones'])} do not fall on distinct updates "
                f"after the warmup in a run of {steps} steps"
            )
        inner = multistep(lr=1.0, gamma=options["decay"], milestones=tuple(marks))
    return inner if w == 0 else warmup(inner, steps=w)


def _from_call(call: Call) -> Strategy:
    if call.args:
        raise TypeError("strategy arguments are keywords only, e.g. adamw(weight_decay=0.1)")
    return Strategy(call.name, **call.kwargs)


def parse_strategy(spec: str) -> Strategy:
    """Build a strategy from its spec, e.g. ``"sgd(momentum=0.9, schedule='cosine')"``.

    Raises:
        TypeError: ``spec`` is not a str.
        SpecError: Malformed text, an unknown family or keyword (with "did you mean"), or a bad
            value (the message names the keyword and the column).
    """
    builders: dict[str, Callable[[Call], Any]] = {name: _from_call for name in KINDS}
    result = parse_call(spec, builders, kind="strategy")
    if not isinstance(result, Strategy):  # pragma: no cover - every builder makes a Strategy
        raise SpecError("spec did not build a strategy", spec=spec)
    return result


def canonical_spec(spec: str) -> str:
    """The canonical spec of ``spec``: equal strategies give the same text.

    Raises:
        TypeError: ``spec`` is not a str.
        SpecError: ``spec`` is not a valid strategy spec.
    """
    return repr(parse_strategy(spec))
