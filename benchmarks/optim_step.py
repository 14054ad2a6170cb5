"""Time ``optimizer.step()`` against the memory-bandwidth roofline.

Every optimizer steps its own copy of ~10M float32 parameters laid out like a small transformer
(an embedding, then per layer a LayerNorm weight, QKV weight and bias, output projection, a
second LayerNorm weight and the two MLP matrices with the first one's bias), with the same fixed
gradients. Rounds are interleaved: each round steps every optimizer once (starting from a
different one each round) and measures the memory bandwidth with a large tensor copy and add, so
that a busy neighbour slows all of them alike; the table reports medians over the rounds.

The roofline: an optimizer step must read and write at least a known number of tensors of the
parameters' size (params, grads and its state; see ``MIN_TRAFFIC``), so
``min_bytes / bandwidth`` is the least time a step can take, and ``roofline = that / time``.
The model counts one sweep over each tensor; an algorithm whose update needs a global sum of the
same step (D-Adaptation, Prodigy, DoG, Polyak) cannot finish in one sweep, so its attainable
fraction is below 100%.

Run ``python benchmarks/optim_step.py`` (``--help`` for the flags); ``--only`` takes names or
prefixes (``--only torch.AdamW lrkit.Prodigy``).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

# (reads, writes) per parameter element in one step, in units of one element of the params'
# dtype. p: params, g: grads; the rest are the algorithm's state tensors of the params' size.
MIN_TRAFFIC: dict[str, tuple[int, int, str]] = {
    "sgd_momentum": (3, 2, "read p g m, write p m"),
    "adamw": (4, 3, "read p g m v, write p m v"),
    "sf_sgd": (3, 2, "read y g z, write y z"),
    "sf_adamw": (4, 3, "read y g z v, write y z v"),
    "prodigy": (6, 4, "read p g p0 s m v, write p s m v"),
    "dadapt_sgd": (4, 2, "read p g s x0, write p s"),
    "dadapt_adam": (5, 4, "read p g s m v, write p s m v"),
    "dog": (3, 1, "read p g x0, write p"),
    "polyak": (2, 1, "read p g, write p"),
    "armijo": (2, 1, "read p g, write p (one accepted trial)"),
}


@dataclass(frozen=True)
class Candidate:
    """One optimizer configuration to time.

    ``module``/``cls`` are imported lazily; a missing package or class is reported, not fatal.
    ``reference`` names the candidate this one should be compared with (its published package).
    ``closure``: the step takes a closure (loss-based optimizers); the benchmark passes one that
    returns a constant, so only the optimizer's own work is timed (see :func:`cheap_closure`).
    """

    name: str
    module: str
    cls: str
    algorithm: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    kind: str = "lrkit"
    reference: str | None = None
    train_mode: bool = False
    closure: bool = False

    def build(self, params: list[torch.Tensor]) -> torch.optim.Optimizer:
        """The optimizer over ``params``, in train mode where it has one."""
        cls = getattr(importlib.import_module(self.module), self.cls)
        opt: torch.optim.Optimizer = cls(params, **self.kwargs)
        if self.train_mode:
            opt.train()  # type: ignore[attr-defined]
        return opt


def _torch(name: str, cls: str, algorithm: str, **kwargs: Any) -> list[Candidate]:
    return [
        Candidate(
            f"torch.{name} ({impl})",
            "torch.optim",
            cls,
            algorithm,
            {**kwargs, **flags},
            kind="torch",
        )
        for impl, flags in (
            ("for-loop", {"foreach": False}),
            ("foreach", {"foreach": True}),
            ("fused", {"fused": True}),
        )
    ]


CANDIDATES: list[Candidate] = [
    *_torch("SGD", "SGD", "sgd_momentum", lr=1e-3, momentum=0.9),
    *_torch("AdamW", "AdamW", "adamw", lr=1e-3),
    Candidate(
        "lrkit.ScheduleFreeSGD",
        "lrkit.optim",
        "ScheduleFreeSGD",
        "sf_sgd",
        reference="schedulefree.SGDScheduleFree",
        train_mode=True,
    ),
    Candidate(
        "lrkit.ScheduleFreeSGD (fused)",
        "lrkit.optim",
        "ScheduleFreeSGD",
        "sf_sgd",
        {"fused": True},
        reference="schedulefree.SGDScheduleFree",
        train_mode=True,
    ),
    Candidate(
        "schedulefree.SGDScheduleFree",
        "schedulefree",
        "SGDScheduleFree",
        "sf_sgd",
        kind="reference",
        train_mode=True,
    ),
    Candidate(
        "lrkit.ScheduleFreeAdamW",
        "lrkit.optim",
        "ScheduleFreeAdamW",
        "sf_adamw",
        reference="schedulefree.AdamWScheduleFree",
        train_mode=True,
    ),
    Candidate(
        "lrkit.ScheduleFreeAdamW (fused)",
        "lrkit.optim",
        "ScheduleFreeAdamW",
        "sf_adamw",
        {"fused": True},
        reference="schedulefree.AdamWScheduleFree",
        train_mode=True,
    ),
    Candidate(
        "schedulefree.AdamWScheduleFree",
        "schedulefree",
        "AdamWScheduleFree",
        "sf_adamw",
        kind="reference",
        train_mode=True,
    ),
    Candidate("lrkit.Prodigy", "lrkit.optim", "Prodigy", "prodigy", reference="prodigyopt.Prodigy"),
    Candidate(
        "lrkit.Prodigy (fused)",
        "lrkit.optim",
        "Prodigy",
        "prodigy",
        {"fused": True},
        reference="prodigyopt.Prodigy",
    ),
    Candidate("prodigyopt.Prodigy", "prodigyopt", "Prodigy", "prodigy", kind="reference"),
    Candidate(
        "lrkit.DAdaptSGD",
        "lrkit.optim",
        "DAdaptSGD",
        "dadapt_sgd",
        reference="dadaptation.DAdaptSGD",
    ),
    Candidate("dadaptation.DAdaptSGD", "dadaptation", "DAdaptSGD", "dadapt_sgd", kind="reference"),
    Candidate(
        "lrkit.DAdaptAdam",
        "lrkit.optim",
        "DAdaptAdam",
        "dadapt_adam",
        reference="dadaptation.DAdaptAdam",
    ),
    Candidate(
        "lrkit.DAdaptAdam (fused)",
        "lrkit.optim",
        "DAdaptAdam",
        "dadapt_adam",
        {"fused": True},
        reference="dadaptation.DAdaptAdam",
    ),
    Candidate(
        "dadaptation.DAdaptAdam", "dadaptation", "DAdaptAdam", "dadapt_adam", kind="reference"
    ),
    Candidate("lrkit.DoG", "lrkit.optim", "DoG", "dog", reference="dog.DoG"),
    Candidate("dog.DoG", "dog", "DoG", "dog", kind="reference"),
    Candidate("lrkit.LDoG", "lrkit.optim", "LDoG", "dog", reference="dog.LDoG"),
    Candidate("dog.LDoG", "dog", "LDoG", "dog", kind="reference"),
    Candidate("lrkit.Polyak (closure)", "lrkit.optim", "Polyak", "polyak", closure=True),
    Candidate("lrkit.Armijo (closure, 1 trial)", "lrkit.optim", "Armijo", "armijo", closure=True),
]
"""Every configuration the benchmark knows, in table order."""

FUSED_ADAMW = "torch.AdamW (fused)"


# --------------------------------------------------------------------------------------------
# parameters
# --------------------------------------------------------------------------------------------
def transformer_shapes(n_params: int, n_tensors: int) -> list[tuple[int, ...]]:
    """Shapes of a small transformer with about ``n_params`` parameters in ``n_tensors`` tensors.

    ``L = (n_tensors - 2) // 8`` layers of 8 tensors (LayerNorm weight ``d``, QKV ``(3d, d)`` and
    bias ``3d``, projection ``(d, d)``, LayerNorm weight ``d``, MLP ``(4d, d)`` and bias ``4d``,
    MLP ``(d, 4d)``) plus an embedding ``(4d, d)`` and a final LayerNorm weight: ``d`` solves
    ``L (12 d² + 9 d) + 4 d² + d = n_params``.
    """
    layers = max(1, (n_tensors - 2) // 8)
    a, b = 12 * layers + 4, 9 * layers + 1
    d = max(1, round((-b + math.sqrt(b * b + 4 * a * n_params)) / (2 * a)))
    shapes: list[tuple[int, ...]] = [(4 * d, d)]
    for _ in range(layers):
        shapes += [(d,), (3 * d, d), (3 * d,), (d, d), (d,), (4 * d, d), (4 * d,), (d, 4 * d)]
    shapes.append((d,))
    return shapes


def make_params(
    shapes: Iterable[tuple[int, ...]], grads: list[torch.Tensor], device: torch.device
) -> list[torch.Tensor]:
    """Fresh parameters of ``shapes`` whose ``.grad`` are the shared ``grads``."""
    gen = torch.Generator().manual_seed(0)
    params = []
    for shape, grad in zip(shapes, grads, strict=True):
        p = torch.nn.Parameter((0.02 * torch.randn(shape, generator=gen)).to(device))
        p.grad = grad
        params.append(p)
    return params


def cheap_closure(device: torch.device) -> Callable[[], torch.Tensor]:
    """A closure that leaves the fixed gradients in place and costs nothing.

    With gradients enabled (the evaluation at ``x_k``) it returns 1.0; without (a line-search
    trial) it returns -1e30, so an Armijo search accepts its first trial. Polyak's step is then
    ``min(1 / (c ||g||²), lr)``.
    """
    at_x = torch.tensor(1.0, device=device)
    trial = torch.tensor(-1e30, device=device)

    def closure() -> torch.Tensor:
        return at_x if torch.is_grad_enabled() else trial

    return closure


# --------------------------------------------------------------------------------------------
# measurements
# --------------------------------------------------------------------------------------------
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds that ``fn()`` takes, with the device synchronized before and after."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


class Bandwidth:
    """Memory bandwidth from a copy (``dst = src``) and an add (``c = a + b``).

    Bytes counted: 2 and 3 buffers of ``size`` elements (reads plus writes); the roofline uses
    the higher of the two medians, the bandwidth a well-written streaming kernel reaches.
    """

    def __init__(self, n_elements: int, device: torch.device) -> None:
        self.a = torch.rand(n_elements, device=device)
        self.b = torch.rand(n_elements, device=device)
        self.c = torch.empty_like(self.a)
        self.nbytes = self.a.numel() * self.a.element_size()
        self.copy: list[float] = []
        self.add: list[float] = []

    def measure(self, device: torch.device) -> None:
        """One copy and one add, appended to :attr:`copy` and :attr:`add` in bytes/s."""
        a, b, c = self.a, self.b, self.c
        self.copy.append(2 * self.nbytes / timed(lambda: c.copy_(a), device))
        self.add.append(3 * self.nbytes / timed(lambda: torch.add(a, b, out=c), device))

    def best(self) -> float:
        """The higher of the median copy and add bandwidths, in bytes/s."""
        return max(statistics.median(self.copy), statistics.median(self.add))


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _tensors(value)
    elif isinstance(obj, list | tuple):
        for value in obj:
            yield from _tensors(value)


def state_bytes(opt: torch.optim.Optimizer) -> int:
    """Bytes held by the optimizer's state and group entries (params excluded).

    Each storage is counted once, so a tensor shared between entries is not counted twice.
    """
    params = {p.untyped_storage().data_ptr() for g in opt.param_groups for p in g["params"]}
    seen: dict[int, int] = {}
    groups = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    for t in _tensors([list(opt.state.values()), groups]):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


# --------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------
def select(only: list[str] | None) -> list[Candidate]:
    if not only:
        return list(CANDIDATES)
    chosen = [c for c in CANDIDATES if any(c.name.startswith(o) for o in only)]
    if not chosen:
        names = ", ".join(c.name for c in CANDIDATES)
        raise SystemExit(f"--only {' '.join(only)} matches none of: {names}")
    return chosen


def _build(cand: Candidate, params: list[torch.Tensor]) -> torch.optim.Optimizer | str:
    """The optimizer, or why it cannot be built here (package or class missing)."""
    try:
        return cand.build(params)
    except (ImportError, AttributeError, RuntimeError, TypeError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.no_native:  # the fused rows then run the torch.compile kernels
        from lrkit.optim import _compiled

        for kernel in _compiled.KERNELS:
            if kernel.native is not None:
                kernel.native.enabled = False
    shapes = transformer_shapes(args.params, args.tensors)
    n = sum(math.prod(s) for s in shapes)
    gen = torch.Generator().manual_seed(1)
    grads = [(1e-2 * torch.randn(s, generator=gen)).to(device) for s in shapes]

    built: dict[str, torch.optim.Optimizer] = {}
    steps: dict[str, Callable[[], object]] = {}
    skipped: dict[str, str] = {}
    for cand in select(args.only):
        opt = _build(cand, make_params(shapes, grads, device))
        if isinstance(opt, str):
            skipped[cand.name] = opt
            continue
        built[cand.name] = opt
        steps[cand.name] = (
            functools.partial(opt.step, cheap_closure(device)) if cand.closure else opt.step
        )

    bandwidth = Bandwidth(max(n, args.bandwidth_elements), device)
    times: dict[str, list[float]] = {name: [] for name in built}
    names = list(built)
    for round_ in range(args.warmup + args.rounds):
        bandwidth.measure(device)
        offset = round_ % max(1, len(names))
        for name in names[offset:] + names[:offset]:
            elapsed = timed(steps[name], device)
            if round_ >= args.warmup:
                times[name].append(elapsed)

    bw = bandwidth.best()
    rows = []
    by_name = {c.name: c for c in CANDIDATES}
    for name in names:
        cand = by_name[name]
        reads, writes, _ = MIN_TRAFFIC[cand.algorithm]
        min_bytes = (reads + writes) * n * 4
        median = statistics.median(times[name])
        rows.append(
            {
                "name": name,
                "kind": cand.kind,
                "reference": cand.reference,
                "ms": 1e3 * median,
                "min_bytes": min_bytes,
                "roofline": min_bytes / bw / median,
                "state_bytes_per_param": state_bytes(built[name]) / n,
            }
        )
    return {
        "device": str(device),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "params": n,
        "tensors": len(shapes),
        "rounds": args.rounds,
        "bandwidth_copy": statistics.median(bandwidth.copy),
        "bandwidth_add": statistics.median(bandwidth.add),
        "bandwidth": bw,
        "rows": rows,
        "skipped": skipped,
    }


def markdown(result: dict[str, Any]) -> str:
    """The result as the markdown table recorded in ``docs/benchmarks.md``."""
    rows = {r["name"]: r for r in result["rows"]}
    fused = rows.get(FUSED_ADAMW)
    lines = [
        f"{result['params'] / 1e6:.2f}M float32 params in {result['tensors']} tensors, "
        f"{result['device']} ({result['cpu']}, {result['threads']} threads), torch "
        f"{result['torch']}, median of {result['rounds']} interleaved rounds; bandwidth "
        f"{result['bandwidth'] / 1e9:.1f} GB/s (copy {result['bandwidth_copy'] / 1e9:.1f}, "
        f"add {result['bandwidth_add'] / 1e9:.1f}).",
        "",
        "| optimizer | ms/step | min bytes/param | roofline | state bytes/param "
        "| speedup vs reference | time / fused AdamW |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        ref = rows.get(r["reference"] or "")
        speedup = f"{ref['ms'] / r['ms']:.2f}x" if ref else ""
        state_ratio = ""
        if ref and ref["state_bytes_per_param"]:
            state_ratio = f" ({r['state_bytes_per_param'] / ref['state_bytes_per_param']:.2f}x)"
        vs_fused = f"{r['ms'] / fused['ms']:.2f}" if fused else ""
        lines.append(
            f"| {r['name']} | {r['ms']:.2f} | {r['min_bytes'] / result['params']:.0f} "
            f"| {100 * r['roofline']:.0f}% | {r['state_bytes_per_param']:.1f}{state_ratio} "
            f"| {speedup} | {vs_fused} |"
        )
    if result["skipped"]:
        lines.append("")
    lines += [f"- not run: {name} ({why})" for name, why in result["skipped"].items()]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=int, default=10_000_000, help="about this many")
    parser.add_argument("--tensors", type=int, default=50, help="about this many")
    parser.add_argument("--rounds", type=int, default=30, help="timed rounds (median)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="names or name prefixes")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's)")
    parser.add_argument(
        "--bandwidth-elements",
        type=int,
        default=64 * 2**20,
        help="size of the copy/add buffers (at least the parameter count)",
    )
    parser.add_argument(
        "--no-native",
        action="store_true",
        help="fused rows: the torch.compile kernels instead of the native ones",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the raw result here")
    parser.add_argument("--list", action="store_true", help="list the optimizers and exit")
    args = parser.parse_args(argv)
    for flag in ("params", "tensors", "rounds"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    if args.warmup < 0:
        parser.error(f"--warmup must be >= 0, got {args.warmup}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for c in CANDIDATES:
            sys.stdout.write(f"{c.name}\t{MIN_TRAFFIC[c.algorithm][2]}\n")
        return 0
    result = run(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    sys.stdout.write(markdown(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
