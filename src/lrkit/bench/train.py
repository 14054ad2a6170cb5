r"""One benchmark run: resolve a :class:`~lrkit.bench.config.RunConfig`, train, evaluate, report.

:func:`train` is what a worker of the runner executes. It never raises for anything the run
itself does: a non-finite or exploding loss ends the run with status ``"diverged"``, an exception
with status ``"failed"`` and its text (``KeyboardInterrupt`` and ``SystemExit`` go through).

Determinism: the model (``workload.model(seed)``), the batch order (``workload.batches(seed,
batch_size)``) and torch's, NumPy's and Python's global generators are seeded from
``config.seed``, and torch runs on one intra-op thread, so the same config gives bit-identical
curves and metrics in any process. The caller's generator states and thread count are restored
afterwards. One thread per run is also what a pool of parallel workers wants; pass ``threads`` to
use more in a single process (results may then differ in the last bits from a 1-thread run).

Divergence: with :math:`\ell_k` the training loss of update :math:`k` and
:math:`\bar\ell_k = m_k / (1 - \beta^{k+1})`, :math:`m_k = \beta m_{k-1} + (1 - \beta)\ell_k`
(:math:`\beta = 0.98`, the bias-corrected moving average of the learning-rate range test,
Smith 2017), the run stops before update :math:`k` is applied when :math:`\ell_k` is not finite,
and after it when :math:`\bar\ell_k > c\,\ell_0` for :math:`\ell_0 > 0`, where :math:`c` is the
workload's ``explode_factor`` (10 by default).

Probing: a strategy that probes before training (``auto()``, whose range test runs on the run's
model and takes its batches from the run's stream) spends :math:`M` of the budget's :math:`T`
updates on it; the run then trains updates :math:`M, \dots, T-1` on the following batches, and
the probe's time counts in the wall time. The divergence test starts with the first training
update.

Evaluation, every :meth:`~lrkit.bench.workloads.Workload.eval_interval` updates (the probe's
included) and after the last one, runs ``workload.evaluate`` in eval mode under
``torch.no_grad()`` on

* the parameters as they are, for most optimizers;
* the Schedule-Free average :math:`x` (``optimizer.eval()``; BatchNorm statistics, if the model
  has any, recomputed at :math:`x` from 50 training batches), after which the model and the
  optimizer return exactly (bit for bit) to the training point :math:`y`;
* the polynomial-decay average of the iterates for ``dog``/``ldog`` with ``average``.

Evaluation does not touch the training random stream (it runs under a forked generator), so
evaluating more or less often does not change the trajectory.

References:
    L. N. Smith. "Cyclical Learning Rates for Training Neural Networks." WACV 2017 (the
    smoothed loss and the divergence rule of the range test).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import random
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from lrkit._validate import check_int
from lrkit.bench.config import RunConfig, RunResult, Status
from lrkit.bench.strategies import Setup, parse_strategy
from lrkit.bench.workloads import Workload, get_workload
from lrkit.optim.schedule_free import ScheduleFree

__all__ = ["SMOOTHING", "EvalCallback", "UpdateCallback", "train"]

logger = logging.getLogger(__name__)

SMOOTHING = 0.98
"""β of the bias-corrected moving average of the training loss used by the divergence test."""

_BN_BATCHES = 50

EvalCallback = Callable[[dict[str, float]], None]
UpdateCallback = Callable[[int, nn.Module, torch.optim.Optimizer], None]


class _DivergedError(Exception):
    """Raised inside the loop to end a run as diverged; never leaves :func:`train`."""


@dataclasses.dataclass
class _Progress:
    curve: list[dict[str, float]] = dataclasses.field(default_factory=list)
    steps_done: int = 0
    started: float | None = None

    def elapsed(self) -> float:
        return 0.0 if self.started is None else time.perf_counter() - self.started


def train(
    config: RunConfig,
    *,
    on_eval: EvalCallback | None = None,
    on_update: UpdateCallback | None = None,
    threads: int = 1,
) -> RunResult:
    """Train and evaluate one run; never raises for what happens inside the run.

    Args:
        config: Workload, strategy spec, learning rate (``None``: the strategy's default),
            seed and an optional step budget (``None``: the workload's full budget).
        on_eval: Called after each evaluation with a copy of the curve entry (``step``,
            ``train_loss``, ``lr``, the workload's metrics, and ``effective_lr`` for optimizers
            that report one). An exception it raises fails the run.
        on_update: Called after each training update (and its scheduler step) with the number
            of updates done, the model and the optimizer, to measure along the run (e.g.
            :class:`lrkit.curvature.EdgeOfStability`). It must leave the model, the optimizer
            and the random stream as it found them, or the run is no longer the benchmark's.
            It is not called for the update that ends a run as diverged; its time counts in
            ``wall_time``. An exception it raises fails the run.
        threads: torch intra-op threads for the run (restored afterwards).

    Returns:
        The :class:`~lrkit.bench.config.RunResult`. ``curve`` has one entry per evaluation;
        ``train_loss`` there is the mean training loss of the updates since the previous one.
        ``final`` is the last entry's metrics and ``train_loss`` (empty unless ``"ok"``).
        ``wall_time`` counts the training loop and its evaluations, not the one-time
        preparation of the data and the model. A strategy that probes (``auto()``'s range
        test) probes on the run's model and batch stream inside the budget: its time is in
        ``wall_time``, its updates in ``steps_done`` and in the curve's step numbers, and the
        run trains the updates left. ``error`` says why a run diverged or failed.

    Raises:
        TypeError: ``config`` is not a ``RunConfig``, ``on_eval`` not callable, ``threads`` not
            an int.
        ValueError: ``threads < 1``.
    """
    if not isinstance(config, RunConfig):
        raise TypeError(f"config must be a RunConfig, got {type(config).__name__}")
    if on_eval is not None and not callable(on_eval):
        raise TypeError(f"on_eval must be callable or None, got {type(on_eval).__name__}")
    if on_update is not None and not callable(on_update):
        raise TypeError(f"on_update must be callable or None, got {type(on_update).__name__}")
    threads = check_int("threads", threads, min=1)
    progress = _Progress()
    try:
        with _isolated(config.seed, threads):
            final = _run(config, on_eval, on_update, progress)
    except _DivergedError as exc:
        return _result("diverged", progress, error=str(exc))
    except Exception as exc:
        logger.debug("run %s failed", config, exc_info=True)
        return _result("failed", progress, error=_describe(exc))
    return _result("ok", progress, final=final)


def _result(
    status: Status,
    progress: _Progress,
    *,
    final: dict[str, float] | None = None,
    error: str | None = None,
) -> RunResult:
    return RunResult(
        status=status,
        final=final or {},
        curve=progress.curve,
        wall_time=progress.elapsed(),
        steps_done=progress.steps_done,
        error=error,
    )


def _run(
    config: RunConfig,
    on_eval: EvalCallback | None,
    on_update: UpdateCallback | None,
    progress: _Progress,
) -> dict[str, float]:
    workload = get_workload(config.workload)
    strategy = parse_strategy(config.strategy)
    steps = workload.budget(config.steps)
    every = workload.eval_interval(steps)
    model = workload.model(config.seed)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model(seed) must return a torch.nn.Module, got {type(model).__name__}")
    stream = workload.batches(config.seed, workload.batch_size)
    if strategy.probes:
        # the probe is part of the run: its time and updates count, its batches come from the
        # run's stream (training continues with the next ones)
        progress.started = time.perf_counter()
        setup = strategy.build(model, lr=config.lr, steps=steps, loss=workload.loss, batches=stream)
    else:
        setup = strategy.build(model, lr=config.lr, steps=steps)
    model.train()
    loop = _Loop(workload, model, setup, stream, config.seed)
    if progress.started is None:
        progress.started = time.perf_counter()
    progress.steps_done = setup.probe_steps
    window: list[float] = []
    entry: dict[str, float] = {}
    for step in range(setup.probe_steps, steps):
        value = loop.update(step)
        progress.steps_done = step + 1
        loop.check_explosion(value, step)
        if on_update is not None:
            on_update(progress.steps_done, model, setup.optimizer)
        window.append(value)
        if progress.steps_done % every == 0 or progress.steps_done == steps:
            lr = loop.last_lr
            entry = {"step": float(progress.steps_done), "train_loss": _mean(window), "lr": lr}
            entry.update(_effective_lr(setup.optimizer))
            entry.update(loop.evaluate())
            window.clear()
            progress.curve.append(entry)
            if on_eval is not None:
                on_eval(dict(entry))
    return {k: v for k, v in entry.items() if k not in ("step", "lr", "effective_lr")}


class _Loop:
    """The update and the evaluation of one run, with the divergence test."""

    def __init__(
        self,
        workload: Workload,
        model: nn.Module,
        setup: Setup,
        stream: Iterator[Any],
        seed: int,
    ) -> None:
        self.workload = workload
        self.model = model
        self.setup = setup
        self.stream = stream
        self.seed = seed
        self.first: float | None = None
        self.average = 0.0
        self.count = 0
        self.last_lr = float(setup.optimizer.param_groups[0]["lr"])

    # -- one update ---------------------------------------------------------------------------
    def update(self, step: int) -> float:
        """Apply update ``step`` (0-based) and return its training loss.

        Raises:
            _DivergedError: The loss is not finite (the update is not applied).
        """
        opt = self.setup.optimizer
        batch = next(self.stream)
        self.last_lr = float(opt.param_groups[0]["lr"])
        if self.setup.step_kind == "closure":

            def closure() -> Any:
                opt.zero_grad(set_to_none=True)
                loss = self._loss(batch)
                if torch.is_grad_enabled():
                    torch.autograd.backward(loss)
                return loss

            value = self._value(opt.step(closure), step)
        else:
            opt.zero_grad(set_to_none=True)
            loss = self._loss(batch)
            value = self._value(loss, step)
            torch.autograd.backward(loss)
            opt.step()
        if self.setup.scheduler is not None:
            self.setup.scheduler.step()
        if self.setup.averager is not None:
            self.setup.averager.step()
        return value

    def _loss(self, batch: Any) -> torch.Tensor:
        loss = self.workload.loss(self.model, batch)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            got = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise TypeError(f"loss(model, batch) must return a one-element tensor, got {got}")
        return loss

    def _value(self, loss: Any, step: int) -> float:
        value = float(loss.detach() if isinstance(loss, torch.Tensor) else loss)
        if not math.isfinite(value):
            raise _DivergedError(f"the training loss is {value} at step {step}")
        return value

    def check_explosion(self, value: float, step: int) -> None:
        """Update the smoothed loss with update ``step``'s loss; raise if it exploded.

        Raises:
            _DivergedError: The smoothed loss exceeds ``explode_factor`` times the first loss.
        """
        if self.first is None:
            self.first = value
        self.average = SMOOTHING * self.average + (1.0 - SMOOTHING) * value
        self.count += 1
        smoothed = self.average / (1.0 - SMOOTHING**self.count)
        factor = self.workload.explode_factor
        if self.first > 0.0 and smoothed > factor * self.first:
            raise _DivergedError(
                f"the smoothed training loss {smoothed:.4g} exceeds {factor:g} x the first "
                f"loss {self.first:.4g} at step {step}"
            )

    # -- evaluation ---------------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """The workload's metrics at the point the strategy is evaluated at (see the module)."""
        opt = self.setup.optimizer
        with torch.random.fork_rng(devices=[]):
            if isinstance(opt, ScheduleFree):
                return self._evaluate_schedule_free(opt)
            if self.setup.averager is not None:
                return self._metrics(self.setup.averager.averaged_model)
            return self._metrics(self.model)

    def _evaluate_schedule_free(self, opt: ScheduleFree) -> dict[str, float]:
        saved = {k: v.clone() for k, v in self.model.state_dict().items()}
        try:
            opt.eval()
            if any(isinstance(m, _BatchNorm) for m in self.model.modules()):
                from lrkit.optim.bn import recompute_bn_stats

                batches = self.workload.batches(self.seed, self.workload.batch_size)
                recompute_bn_stats(self.model, batches, _BN_BATCHES)
            return self._metrics(self.model)
        finally:
            opt.train()
            self.model.load_state_dict(saved)

    def _metrics(self, model: nn.Module) -> dict[str, float]:
        flags = [(m, m.training) for m in model.modules()]
        model.eval()
        try:
            with torch.no_grad():
                metrics = self.workload.evaluate(model)
        finally:
            for module, training in flags:
                module.training = training
        return _check_metrics(metrics, self.workload.metric)


def _check_metrics(metrics: object, metric: str) -> dict[str, float]:
    if not isinstance(metrics, Mapping):
        raise TypeError(f"evaluate(model) must return a mapping, got {type(metrics).__name__}")
    if metric not in metrics:
        raise ValueError(
            f"evaluate(model) returned no {metric!r} (the workload's metric); "
            f"got {sorted(map(str, metrics))}"
        )
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if not isinstance(key, str) or key in ("step", "train_loss", "lr", "effective_lr"):
            raise ValueError(f"evaluate(model) returned a reserved or non-str key {key!r}")
        try:
            out[key] = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"evaluate(model) must return numbers, got {key}={value!r}") from None
    return out


def _effective_lr(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """``{"effective_lr": ...}`` for optimizers whose ``info()`` reports the step size taken."""
    info = getattr(optimizer, "info", None)
    if info is None:
        return {}
    value = info().get("group0/effective_lr")
    return {} if value is None else {"effective_lr": float(value)}


def _mean(values: list[float]) -> float:
    return math.fsum(values) / len(values)


@contextlib.contextmanager
def _isolated(seed: int, threads: int) -> Iterator[None]:
    """Seed every global generator and set the thread count; restore both afterwards."""
    np_state = np.random.get_state()  # noqa: NPY002 - the legacy global is what user code reads
    py_state = random.getstate()
    old_threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        try:
            torch.set_num_threads(threads)
            torch.manual_seed(seed)
            np.random.seed(seed)  # noqa: NPY002 - seeds user code that uses the legacy global
            random.seed(seed)
            yield
        finally:
            torch.set_num_threads(old_threads)
            np.random.set_state(np_state)  # noqa: NPY002 - restores the caller's state
            random.setstate(py_state)


def _describe(exc: BaseException) -> str:
    """``"Type: message (at file.py:line in function)"`` on one line."""
    text = " ".join(str(exc).split())
    out = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        last = frames[-1]
        out += f" (at {os.path.basename(last.filename)}:{last.lineno} in {last.name})"
    return out
