"""The MNIST-1D CNN workload judged on a larger test set (benchmarks/mnist1d_big_test.py)."""

import pytest
import torch

from lrkit.bench.workloads import get_workload
from testkit import load_script

pytest.importorskip("mnist1d")
big = load_script("mnist1d_big_test")


def test_the_test_set_is_new_balanced_signals_of_the_data_sets_shape():
    x, y = big.held_out(400, big.SEED)
    assert x.shape == (400, 40)
    assert y.shape == (400,)
    assert x.dtype == torch.float32
    assert y.dtype == torch.int64
    assert set(y.tolist()) == set(range(10))
    counts = torch.bincount(y, minlength=10)
    assert counts.min() >= 20  # all ten classes, roughly balanced
    _, _, x_1k, _ = big.mnist1d_data()
    assert not any(torch.equal(row, x_1k[0]) for row in x)  # not the built-in test set


def test_the_workload_trains_as_the_built_in_cnn_and_reports_both_accuracies(monkeypatch):
    monkeypatch.setattr(big, "SIGNALS", 400)
    built_in, workload = get_workload("mnist1d_cnn"), big.workload()
    assert workload.name == "mnist1d_cnn_big_test"
    assert (workload.steps, workload.batch_size) == (built_in.steps, built_in.batch_size)
    a, b = workload.model(3), built_in.model(3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    first = next(workload.batches(3, 8))
    assert all(torch.equal(u, v) for u, v in zip(first, next(built_in.batches(3, 8)), strict=True))
    a.eval()
    with torch.no_grad():
        metrics = workload.evaluate(a)
        expected = built_in.evaluate(a)
        x, y = big.held_out(400, big.SEED)
        accuracy = (a(x).argmax(-1) == y).float().mean().item()
    assert metrics["accuracy_1k"] == expected["accuracy"]
    assert metrics["loss_1k"] == expected["loss"]
    assert metrics["accuracy"] == pytest.approx(accuracy)


def test_disagreement_counts_the_differing_signals_and_who_is_right():
    labels = torch.tensor([0, 1, 2, 3, 4])
    a = torch.tensor([0, 1, 9, 3, 9])
    b = torch.tensor([0, 9, 2, 3, 8])
    assert big.disagreement(a, b, labels) == (3, 1, 1)
    assert big.disagreement(a, a, labels) == (0, 0, 0)
    with pytest.raises(ValueError, match="1-D tensors of one length"):
        big.disagreement(a, b[:4], labels)


def test_the_script_trains_each_seed_and_prints_every_pair(capsys):
    assert big.main(["--seeds", "0", "1", "--steps", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("seed 0: accuracy ")
    assert lines[1].startswith("seed 1: accuracy ")
    assert lines[2].startswith("seeds 0 and 1: differ on ")
    a = big.predictions("adamw(schedule='cosine', warmup=0.05)", 0.03162, 0, steps=3)
    b = big.predictions("adamw(schedule='cosine', warmup=0.05)", 0.03162, 0, steps=3)
    assert torch.equal(a, b)  # seeded: the same run twice
