r"""The sharpness along a benchmark run: why a probe at initialization misses SGD's best rate.

The range test and the curvature bound look at the network before it trains. This script shows
what happens to the curvature afterwards: it trains the bench's own run (:func:`lrkit.bench.train`
with the workload, strategy, peak rate and seed given: the same run, to the last bit, as the
grid's) and, every ``--every`` updates, measures on fixed batches (the stream's first
``--batches``) with :class:`lrkit.curvature.EdgeOfStability`

.. math::

    \lambda_{\max}(H), \qquad S/\tau, \qquad \tau/\lambda_{\max},

the top Hessian eigenvalue, the stability ratio (1 is the edge of stability, Cohen et al. 2021;
:math:`S = \lambda_{\max}(D^{1/2} H D^{1/2})` with :math:`D` the optimizer's per-parameter
rates, :math:`\tau` its momentum rule's threshold) and, for SGD, the largest stable rate of the
quadratic model at that point, the curvature bound :math:`2/\lambda_{\max}` generalized to
momentum. The first measurement follows update 1, at warmup's first, tiny rate: practically the
initial point, where ``benchmarks/finder_quality.py`` measures its bound. The summary table gives
that and the largest sharpness measured while the rate is at least half its peak, where stability
binds.

Usage::

    python benchmarks/sharpening.py --workload mnist1d_cnn --lrs 0.1 0.3162
    python benchmarks/sharpening.py --workload char_lm --lrs 1.0 0.3162 --every 300
    python benchmarks/sharpening.py --workload logreg --lrs 0.3 --steps 40 --every 10  # seconds

References:
    Jeremy M. Cohen, Simran Kaur, Yuanzhi Li, J. Zico Kolter, Ameet Talwalkar. "Gradient Descent
    on Neural Networks Typically Occurs at the Edge of Stability." ICLR 2021.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from lrkit._validate import check_float, check_int
from lrkit.bench.config import RunConfig, RunResult
from lrkit.bench.train import train
from lrkit.bench.workloads import get_workload
from lrkit.curvature import EdgeOfStability, EoSRecord

SGD: str = "sgd(momentum=0.9, nesterov=True, schedule='cosine', warmup=0.05)"
"""The study's SGD strategy (``benchmarks/finder_quality.py``), the default here."""


@dataclasses.dataclass(frozen=True)
class Trajectory:
    """One run and the measurements taken along it.

    Attributes:
        config: The run.
        result: Its result (status, final metrics), as the bench reports it.
        records: The measurements, in order.
        error: Why measuring stopped early (the run went on), or ``None``.
    """

    config: RunConfig
    result: RunResult
    records: tuple[EoSRecord, ...]
    error: str | None = None

    def peak(self) -> EoSRecord | None:
        r"""The largest :math:`\lambda_{\max}` measured while the rate was at least half its peak.

        That is where stability binds: once the rate has decayed, the sharpness may grow without
        harm. ``None`` when no measurement qualifies.
        """
        top = max((r.lr for r in self.records), default=0.0)
        high = [r for r in self.records if r.lr >= 0.5 * top]
        return max(high, key=lambda r: r.sharpness, default=None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the run, its status and final metrics, every record."""
        return {
            "workload": self.config.workload,
            "strategy": self.config.strategy,
            "lr": self.config.lr,
            "seed": self.config.seed,
            "steps": self.config.steps,
            "status": self.result.status,
            "final": dict(self.result.final),
            "error": self.result.error or self.error,
            "records": [dataclasses.asdict(r) for r in self.records],
        }


def trajectory(
    config: RunConfig,
    *,
    every: int,
    batches: int = 2,
    max_iter: int = 30,
    tol: float = 1e-2,
) -> Trajectory:
    """Train ``config`` as the bench does, measuring after update 1 and every ``every`` updates.

    Attention runs in PyTorch's math kernel during a measurement: the fused CPU kernels have no
    double backward. A measurement that fails (e.g. a model without a double backward) ends the
    measuring, not the run; its error is returned.

    Raises:
        TypeError, ValueError: A bad ``every``, ``batches``, ``max_iter`` or ``tol``, before any
            training.
    """
    every = check_int("every", every, min=1)
    batches = check_int("batches", batches, min=1)
    max_iter = check_int("max_iter", max_iter, min=1)
    tol = check_float("tol", tol, min=0.0, max=1.0, min_open=True, max_open=True)
    workload = get_workload(config.workload)
    with torch.random.fork_rng(devices=[]):
        stream = workload.batches(config.seed, workload.batch_size)
        fixed = [next(stream) for _ in range(batches)]
    tracker: list[EdgeOfStability] = []
    errors: list[str] = []

    def measure(step: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        if errors or (step != 1 and step % every):
            return
        if not tracker:
            tracker.append(
                EdgeOfStability(
                    model,
                    workload.loss,
                    fixed,
                    optimizer,
                    max_iter=max_iter,
                    tol=tol,
                    seed=config.seed,
                )
            )
        try:
            with sdpa_kernel([SDPBackend.MATH]):
                tracker[0].measure(step)
        except RuntimeError as exc:
            errors.append(f"{type(exc).__name__}: {exc}")

    result = train(config, on_update=measure)
    records = tracker[0].history if tracker else ()
    return Trajectory(config, result, records, errors[0] if errors else None)


def _g(value: float) -> str:
    return f"{value:.3g}" if math.isfinite(value) else str(value)


def markdown(runs: Sequence[Trajectory], metric: str | None = None) -> str:
    """A summary table of the runs, then each run's measurements."""
    lines = [
        "| workload | peak lr | seed | status | final | λ_max after update 1 | τ/λ_max then "
        "| largest λ_max at lr ≥ peak/2 (update) | τ/λ_max there | largest S/τ |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        key = metric or get_workload(run.config.workload).metric
        final = run.result.final.get(key)
        first, peak = (run.records[0], run.peak()) if run.records else (None, None)
        cells = [
            run.config.workload,
            _g(run.config.lr or math.nan),
            str(run.config.seed),
            run.result.status,
            "-" if final is None else f"{key} {final:.4g}",
            "-" if first is None else _g(first.sharpness),
            "-" if first is None else _g(first.threshold / first.sharpness),
            "-" if peak is None else f"{_g(peak.sharpness)} ({peak.step})",
            "-" if peak is None else _g(peak.threshold / peak.sharpness),
            "-" if not run.records else _g(max(r.ratio for r in run.records)),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    for run in runs:
        lines += [
            "",
            f"{run.config.workload}, {run.config.strategy}, peak lr {run.config.lr}, "
            f"seed {run.config.seed}: {run.result.status}"
            + (f" ({run.result.error or run.error})" if run.result.error or run.error else ""),
            "",
            "| update | lr | loss | λ_max | S/τ | τ/λ_max |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r.step} | {_g(r.lr)} | {r.loss:.4g} | {_g(r.sharpness)} | {r.ratio:.2f} "
            f"| {_g(r.threshold / r.sharpness)} |"
            for r in run.records
        ]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--workload", default="mnist1d_cnn")
    parser.add_argument("--strategy", default=SGD)
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.1, 0.3162])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--steps", type=int, default=None, help="updates (default: the budget)")
    parser.add_argument("--every", type=int, default=250, help="updates between measurements")
    parser.add_argument("--batches", type=int, default=2, help="fixed batches of the Hessian")
    parser.add_argument("--max-iter", type=int, default=30, help="products per eigenvalue")
    parser.add_argument("--out", help="also write the tables (Markdown) here")
    parser.add_argument("--json", help="also write every record (JSON) here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Train each (rate, seed), print the tables; 0 unless a run failed."""
    args = parse_args(argv)
    get_workload(args.workload)  # an unknown name fails here, before any training
    runs = [
        trajectory(
            RunConfig(args.workload, args.strategy, lr, seed, steps=args.steps),
            every=args.every,
            batches=args.batches,
            max_iter=args.max_iter,
        )
        for lr in args.lrs
        for seed in args.seeds
    ]
    text = markdown(runs)
    print(text, end="")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump([run.to_dict() for run in runs], f, indent=1)
    return 1 if any(run.result.status == "failed" for run in runs) else 0


if __name__ == "__main__":
    raise SystemExit(main())
