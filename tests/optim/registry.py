"""The test-side registry of optimizers that the contract and distributed suites run over.

Each :class:`Entry` says how to build an optimizer (``make(params, **overrides)``), how to call
its ``step`` (with a gradient already in ``p.grad``, or with a closure), which contract properties
it promises (the meaning of several param groups, whether ``lr=0`` freezes a group), which
hyperparameters make it reduce the test problems, and which bad arguments it must refuse.

Two entries, ``torch.SGD`` and ``torch.AdamW``, are ``self_check`` entries: torch's own optimizers
run through the same harness to show that the harness itself is right. They take no part in the
lrkit-only items (``info()``, the generated bad-argument cases, ``process_group``).

A new lrkit optimizer is added here once; every contract and distributed test then covers it.
Optimizers with a fused path are added a second time with ``fused=True`` (``<name>-fused``),
where its native kernels can be built.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch

Params = Iterable[Any]
Closure = Callable[[], torch.Tensor]

# How the param groups of an optimizer relate to each other:
# "independent": each group evolves exactly as a separate optimizer over that group's params.
# "shared": groups share global state (one step size, one d estimate); splitting a group in two
#           with identical hyperparameters changes nothing.
GroupSemantics = Literal["independent", "shared"]


@dataclass(frozen=True)
class BadArg:
    """One constructor call that must fail: ``make(params, **kwargs)`` raises ``error``.

    ``match`` is a regular expression that the message must contain (it names the argument).
    """

    kwargs: dict[str, Any]
    error: type[Exception]
    match: str

    @property
    def id(self) -> str:
        return ",".join(f"{k}={v!r}" for k, v in self.kwargs.items())


@dataclass(frozen=True)
class Fit:
    """How an entry is run on a convergence problem and what it must reach.

    After ``steps`` full-batch steps with ``overrides`` on top of the entry's ``defaults``, the
    suboptimality ``f(x) - f*`` must be at most ``ratio`` times the initial one.
    """

    steps: int
    ratio: float
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Entry:
    """One optimizer under test.

    Attributes:
        name: Id used in test ids and ``--only`` style filters.
        cls: The optimizer class.
        defaults: Keyword arguments used by every test, on top of the class defaults.
        step_mode: ``"grad"``: gradients are computed first, then ``opt.step()``;
            ``"closure"``: ``opt.step(closure)``, the optimizer evaluates the loss itself.
        self_check: A torch optimizer that checks the harness, not an lrkit optimizer.
        groups: How param groups relate (see ``GroupSemantics``).
        lr_zero_freezes: ``lr=0`` in a group leaves that group's params unchanged.
        decay_kwarg: Name of the weight-decay argument, or ``None``.
        none_grad: What a tensor whose ``grad`` is ``None`` means to the others: ``"ignored"``,
            they step exactly as without it; ``"as_zero"`` (documented by the optimizer), as
            if its gradient were zero (it still counts in global state, e.g. DoG's ``‖x_0‖``).
            Either way it is not updated.
        quadratic: Convergence requirement on the ill-conditioned quadratic.
        logistic: Convergence requirement on the logistic regression.
        bad_args: Constructor calls that must be refused, besides the generated ones.
        generated_bad_args: Generate the standard cases from the signature (lrkit entries).
        info: The optimizer has lrkit's ``info()``.
        distributed: The optimizer takes ``process_group`` and ``sharded``.
        sharded_reductions: ``torch.distributed.all_reduce`` calls per ``step()`` with
            ``sharded=True`` (the global sums in one call), ``None`` when not fixed (loss-based).
        reference: Factory of the published reference implementation, ``None`` when none
            exists; it takes ``(params, **defaults)`` with this entry's ``defaults``.
        reference_second_group: Hyperparameters of the second of two param groups in the
            comparison with the reference (a per-group setting the reference honours).
    """

    name: str
    cls: type[torch.optim.Optimizer]
    defaults: dict[str, Any] = field(default_factory=dict)
    step_mode: Literal["grad", "closure"] = "grad"
    self_check: bool = False
    groups: GroupSemantics = "independent"
    lr_zero_freezes: bool = True
    decay_kwarg: str | None = "weight_decay"
    none_grad: Literal["ignored", "as_zero"] = "ignored"
    quadratic: Fit = Fit(steps=200, ratio=1e-2)
    logistic: Fit = Fit(steps=200, ratio=5e-2)
    bad_args: tuple[BadArg, ...] = ()
    generated_bad_args: bool = True
    info: bool = True
    distributed: bool = True
    sharded_reductions: int | None = 1
    reference: Callable[..., torch.optim.Optimizer] | None = None
    reference_second_group: dict[str, Any] = field(default_factory=lambda: {"weight_decay": 0.1})

    def make(self, params: Params, **overrides: Any) -> torch.optim.Optimizer:
        """Build the optimizer over ``params`` with ``defaults`` updated by ``overrides``."""
        return self.cls(params, **{**self.defaults, **overrides})

    def step(self, opt: torch.optim.Optimizer, closure: Closure) -> torch.Tensor:
        """One optimization step the way this optimizer is driven; returns the loss.

        ``closure`` zeroes the gradients, evaluates the loss and, when gradients are enabled,
        back-propagates it (the ``torch.optim.LBFGS`` convention).
        """
        if self.step_mode == "closure":
            loss = opt.step(closure)
            if not isinstance(loss, torch.Tensor):
                raise TypeError(f"{self.name}.step(closure) must return the loss tensor")
            return loss
        loss = closure()
        opt.step()
        return loss

    @property
    def has_foreach(self) -> bool:
        return "foreach" in inspect.signature(self.cls).parameters

    def all_bad_args(self) -> list[BadArg]:
        """The explicit bad-argument cases plus, for lrkit entries, the generated ones."""
        cases = list(self.bad_args)
        if self.generated_bad_args:
            cases += generated_bad_args(self.cls)
        return cases


def generated_bad_args(cls: type) -> list[BadArg]:
    """Standard refusals derived from the constructor's signature.

    * every float argument: NaN, -inf, +inf (unless +inf is its default: an unbounded cap)
      and a string;
    * ``lr`` and ``weight_decay``: -1.0;
    * a tuple of floats (``betas``): each element set to 1.0, -0.1 and NaN;
    * an int argument: 1.5; a bool argument: the string ``"yes"``.
    """
    out: list[BadArg] = []
    for name, param in inspect.signature(cls).parameters.items():
        default = param.default
        if name == "params" or default is inspect.Parameter.empty:
            continue
        word = rf"\b{name}\b"
        if isinstance(default, bool):
            out.append(BadArg({name: "yes"}, TypeError, word))
        elif isinstance(default, int):
            out.append(BadArg({name: 1.5}, TypeError, word))
        elif isinstance(default, float):
            bad = [math.nan, -math.inf] + ([] if default == math.inf else [math.inf])
            out += [BadArg({name: v}, ValueError, word) for v in bad]
            out.append(BadArg({name: "0.1"}, TypeError, word))
            if name in ("lr", "weight_decay"):
                out.append(BadArg({name: -1.0}, ValueError, word))
        elif isinstance(default, tuple) and default and all(isinstance(v, float) for v in default):
            for i in range(len(default)):
                for v in (1.0, -0.1, math.nan):
                    value = tuple(v if j == i else d for j, d in enumerate(default))
                    out.append(BadArg({name: value}, ValueError, word))
    return out


# --------------------------------------------------------------------------------------------
# torch's own optimizers: harness self-checks
# --------------------------------------------------------------------------------------------
TORCH_BAD_LR = BadArg({"lr": -1.0}, ValueError, "learning rate")

ENTRIES: list[Entry] = [
    Entry(
        name="torch.SGD",
        cls=torch.optim.SGD,
        defaults={"lr": 0.05, "momentum": 0.9},
        self_check=True,
        quadratic=Fit(steps=200, ratio=1e-6),
        logistic=Fit(steps=300, ratio=1e-3, overrides={"lr": 0.5}),
        bad_args=(TORCH_BAD_LR, BadArg({"momentum": -0.5}, ValueError, "momentum")),
        generated_bad_args=False,
        info=False,
        distributed=False,
        sharded_reductions=0,
    ),
    Entry(
        name="torch.AdamW",
        cls=torch.optim.AdamW,
        defaults={"lr": 0.05, "weight_decay": 0.0},
        self_check=True,
        quadratic=Fit(steps=300, ratio=1e-3),
        logistic=Fit(steps=300, ratio=1e-3),
        bad_args=(
            TORCH_BAD_LR,
            BadArg({"betas": (1.0, 0.999)}, ValueError, "beta parameter at index 0"),
            BadArg({"betas": (0.9, -0.1)}, ValueError, "beta parameter at index 1"),
        ),
        generated_bad_args=False,
        info=False,
        distributed=False,
        sharded_reductions=0,
    ),
]


# --------------------------------------------------------------------------------------------
# lrkit
# --------------------------------------------------------------------------------------------
def _reference(module: str, cls: str, *, train: bool = False) -> Callable[..., Any]:
    """Factory of a reference package's optimizer, imported when first called."""

    def make(params: Params, **kwargs: Any) -> torch.optim.Optimizer:
        import importlib

        opt: torch.optim.Optimizer = getattr(importlib.import_module(module), cls)(params, **kwargs)
        if train:
            opt.train()  # type: ignore[attr-defined]
        return opt

    return make


def _lrkit_entries() -> list[Entry]:
    from lrkit import optim

    entries = []
    if hasattr(optim, "ScheduleFreeSGD"):
        entries += [
            Entry(
                name="ScheduleFreeSGD",
                cls=optim.ScheduleFreeSGD,
                defaults={"lr": 0.1},
                quadratic=Fit(steps=200, ratio=1e-4),
                logistic=Fit(steps=200, ratio=1e-3, overrides={"lr": 2.0}),
                sharded_reductions=0,
                reference=_reference("schedulefree", "SGDScheduleFree", train=True),
            ),
            Entry(
                name="ScheduleFreeAdamW",
                cls=optim.ScheduleFreeAdamW,
                defaults={"lr": 0.05},
                quadratic=Fit(steps=300, ratio=1e-6, overrides={"lr": 0.2}),
                logistic=Fit(steps=300, ratio=1e-3),
                sharded_reductions=0,
                reference=_reference("schedulefree", "AdamWScheduleFree", train=True),
            ),
        ]
    if hasattr(optim, "Prodigy"):
        entries.append(
            Entry(
                name="Prodigy",
                cls=optim.Prodigy,
                groups="shared",
                quadratic=Fit(steps=200, ratio=1e-7),
                logistic=Fit(steps=200, ratio=1e-7),
                reference=_reference("prodigyopt", "Prodigy"),
            )
        )
    if hasattr(optim, "DAdaptSGD"):
        entries += [
            Entry(
                name="DAdaptSGD",
                cls=optim.DAdaptSGD,
                groups="shared",
                # lr = 1 overshoots on this quadratic (d / ||g_0|| > 2 / L), as the reference does
                quadratic=Fit(steps=200, ratio=1e-10, overrides={"lr": 0.5}),
                logistic=Fit(steps=200, ratio=1e-10),
                reference=_reference("dadaptation", "DAdaptSGD"),
                # the reference applies the first group's weight decay to every group (lrkit's
                # is per group, a documented deviation): compare two groups without decay
                reference_second_group={},
            ),
            Entry(
                name="DAdaptAdam",
                cls=optim.DAdaptAdam,
                groups="shared",
                quadratic=Fit(steps=200, ratio=1e-6),
                logistic=Fit(steps=200, ratio=1e-7),
                reference=_reference("dadaptation", "DAdaptAdam"),
            ),
        ]
    if hasattr(optim, "DoG"):
        entries += [
            Entry(
                name=name,
                cls=getattr(optim, name),
                quadratic=Fit(steps=200, ratio=ratio),
                logistic=Fit(steps=200, ratio=1e-4),
                # x_0 of every tensor of a group enters r_eps = reps_rel (1 + ||x_0||), as in
                # the reference package (documented in lrkit.optim.dog)
                none_grad="as_zero",
                reference=_reference("dog", name),
            )
            for name, ratio in (("DoG", 5e-4), ("LDoG", 1e-6))
        ]
    if hasattr(optim, "Polyak"):
        entries.append(
            Entry(
                name="Polyak",
                cls=optim.Polyak,
                step_mode="closure",
                groups="shared",
                quadratic=Fit(steps=200, ratio=1e-12),
                logistic=Fit(steps=200, ratio=1e-8),
            )
        )
    if hasattr(optim, "Armijo"):
        entries.append(
            Entry(
                name="Armijo",
                cls=optim.Armijo,
                step_mode="closure",
                groups="shared",
                quadratic=Fit(steps=200, ratio=1e-12),
                logistic=Fit(steps=200, ratio=1e-8),
                sharded_reductions=None,
            )
        )
    return entries


def _fused(entry: Entry) -> Entry:
    """``entry`` with ``fused=True``: every contract, reference and distributed test then runs
    the fused kernels too (the native ones where they can be built)."""
    reference = entry.reference

    def without_fused(params: Params, **kwargs: Any) -> torch.optim.Optimizer:
        assert reference is not None
        kwargs.pop("fused", None)
        return reference(params, **kwargs)

    return replace(
        entry,
        name=f"{entry.name}-fused",
        defaults={**entry.defaults, "fused": True},
        reference=None if reference is None else without_fused,
    )


ENTRIES += _lrkit_entries()


def _native_kernels_build() -> bool:
    """Whether the fused path's native kernels can be built here (a C++ compiler is found)."""
    from lrkit.optim._compiled import native

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return native.library.get() is not None


if _native_kernels_build():
    ENTRIES += [
        _fused(e)
        for e in ENTRIES
        if not e.self_check and "fused" in inspect.signature(e.cls).parameters
    ]

BY_NAME: dict[str, Entry] = {e.name: e for e in ENTRIES}
LRKIT: list[Entry] = [e for e in ENTRIES if not e.self_check]
