"""Helpers shared by the test modules (``tests`` is on pytest's ``pythonpath``)."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def one_thread_fixture() -> Callable[..., Any]:
    """A module-scoped autouse fixture that runs the module's tests on one torch thread.

    Tiny models run fastest (and steadiest on a shared machine) on one thread. Use it as
    ``_one_thread = one_thread_fixture()`` at the top of a test module.
    """

    @pytest.fixture(scope="module", autouse=True)
    def _one_thread() -> Iterator[None]:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        yield
        torch.set_num_threads(threads)

    return _one_thread


def same_result(a: Any, b: Any) -> bool:
    """Whether two ``RunResult`` are equal but for their wall time."""
    return bool(dataclasses.replace(a, wall_time=0.0) == dataclasses.replace(b, wall_time=0.0))


def load_script(name: str) -> ModuleType:
    """Import ``benchmarks/<name>.py`` as module ``name``."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
