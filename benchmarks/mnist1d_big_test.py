r"""The MNIST-1D CNN workload judged on 10,000 more test signals: a less noisy accuracy.

The built-in ``mnist1d_cnn`` is judged on the data set's 1,000 test signals: two equally good
models disagree on 44-57 of them, so one run's accuracy carries about ±0.7 point of noise from
the test set alone. This workload trains exactly as ``mnist1d_cnn`` (same model, data, batches
and budget: the same run for the same seed) and reports its accuracy on 10,000 signals drawn by
the same generator with another seed (``accuracy``), beside the built-in test set's
(``accuracy_1k``). Use it through ``--workload``::

    PYTHONPATH=benchmarks lrkit bench --suite full --workload mnist1d_big_test:workload \\
        --seeds 0 1 2 --strategies "auto()" --store /tmp/big.sqlite

The signals are generated offline by the ``mnist1d`` package (a few seconds, once per process).

Run as a script, it measures that noise: it trains the built-in CNN with one strategy and rate
on several seeds (its own loop, not the bench's runner) and prints, for each pair of runs, the
built-in test signals on which their predictions differ and how many of those each gets right::

    python benchmarks/mnist1d_big_test.py --seeds 0 1 2 3 --lr 0.03162
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lrkit.bench.strategies import parse_strategy
from lrkit.bench.workloads import Workload
from lrkit.bench.workloads.base import classification_metrics, seeded
from lrkit.bench.workloads.mnist1d import mnist1d_cnn, mnist1d_data

SIGNALS = 10_000
"""Test signals generated."""

SEED = 7
"""The generator's seed (the built-in data set uses 42)."""


@functools.lru_cache(maxsize=4)
def held_out(signals: int, seed: int) -> tuple[Tensor, Tensor]:
    """``signals`` MNIST-1D test signals ``(n, 40)`` and labels from ``mnist1d``'s generator.

    The generator's global ``random``/``numpy`` seeding is undone afterwards.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = 5 * signals // 4
    args.train_split = 0.2  # the fraction of the signals the generator puts in its training split
    args.seed = seed
    np_state, py_state = np.random.get_state(), random.getstate()  # noqa: NPY002
    try:
        data: dict[str, Any] = make_dataset(args)
    finally:
        np.random.set_state(np_state)  # noqa: NPY002
        random.setstate(py_state)
    x = torch.as_tensor(np.asarray(data["x_test"], dtype=np.float32))
    y = torch.as_tensor(np.asarray(data["y_test"], dtype=np.int64))
    return x, y


def evaluate(model: nn.Module) -> dict[str, float]:
    """Accuracy and loss on :func:`held_out`, and on the built-in 1,000 (``*_1k``)."""
    x, y = held_out(SIGNALS, SEED)
    out = dict(classification_metrics(model, x, y))
    _, _, x_1k, y_1k = mnist1d_data()
    for key, value in classification_metrics(model, x_1k, y_1k).items():
        out[f"{key}_1k"] = value
    return out


def workload() -> Workload:
    """``mnist1d_cnn`` with :func:`evaluate`."""
    return dataclasses.replace(
        mnist1d_cnn(),
        name="mnist1d_cnn_big_test",
        evaluate=evaluate,
        description="MNIST-1D, 3-layer CNN, accuracy on 10,000 more test signals",
    )


def disagreement(a: Tensor, b: Tensor, labels: Tensor) -> tuple[int, int, int]:
    """Signals on which predictions ``a`` and ``b`` differ, and of those, how many each gets right.

    Raises:
        ValueError: The three are not 1-D tensors of one length.
    """
    if not (a.dim() == b.dim() == labels.dim() == 1 and len(a) == len(b) == len(labels)):
        raise ValueError(
            "a, b and labels must be 1-D tensors of one length, got shapes "
            f"{tuple(a.shape)}, {tuple(b.shape)} and {tuple(labels.shape)}"
        )
    differ = a != b
    return (
        int(differ.sum()),
        int((differ & (a == labels)).sum()),
        int((differ & (b == labels)).sum()),
    )


def predictions(spec: str, lr: float, seed: int, steps: int | None = None) -> Tensor:
    """The built-in CNN trained with strategy ``spec`` at ``lr``; its built-in test predictions."""
    workload = mnist1d_cnn()
    budget = workload.budget(steps)
    torch.set_num_threads(1)
    with seeded(seed):
        model = workload.model(seed)
        stream = workload.batches(seed, workload.batch_size)
        setup = parse_strategy(spec).build(model, lr=lr, steps=budget)
        model.train()
        for _ in range(budget):
            setup.optimizer.zero_grad(set_to_none=True)
            workload.loss(model, next(stream)).backward()  # type: ignore[no-untyped-call]
            setup.optimizer.step()
            if setup.scheduler is not None:
                setup.scheduler.step()
    model.eval()
    _, _, x, _ = mnist1d_data()
    with torch.no_grad():
        out: Tensor = model(x).argmax(-1)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Print each run's accuracy and each pair's disagreement on the built-in test signals."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--strategy", default="adamw(schedule='cosine', warmup=0.05)")
    parser.add_argument("--lr", type=float, default=0.03162)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--steps", type=int, default=None, help="updates (default: the budget)")
    args = parser.parse_args(argv)
    _, _, _, labels = mnist1d_data()
    preds = {seed: predictions(args.strategy, args.lr, seed, args.steps) for seed in args.seeds}
    for seed, pred in preds.items():
        print(f"seed {seed}: accuracy {(pred == labels).float().mean().item():.4f}")
    for (i, a), (j, b) in itertools.combinations(preds.items(), 2):
        differ, right_a, right_b = disagreement(a, b, labels)
        print(f"seeds {i} and {j}: differ on {differ}, right: {right_a} and {right_b}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
