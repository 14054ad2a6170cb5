r"""The MNIST-1D CNN workload judged on 10,000 more test signals: a less noisy accuracy.

The built-in ``mnist1d_cnn`` is judged on the data set's 1,000 test signals: two equally good
models disagree on 40-50 of them, so one run's accuracy carries about ±0.7 point of noise from
the test set alone. This workload trains exactly as ``mnist1d_cnn`` (same model, data, batches
and budget: the same run for the same seed) and reports its accuracy on 10,000 signals drawn by
the same generator with another seed (``accuracy``), beside the built-in test set's
(``accuracy_1k``). Use it through ``--workload``::

    PYTHONPATH=benchmarks lrkit bench --suite full --workload mnist1d_big_test:workload \\
        --seeds 0 1 2 --strategies "auto()" --store /tmp/big.sqlite

The signals are generated offline by the ``mnist1d`` package (a few seconds, once per process).
"""

from __future__ import annotations

import dataclasses
import functools
import random
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lrkit.bench.workloads import Workload
from lrkit.bench.workloads.base import classification_metrics
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
