r"""The compiled path's native CPU kernels: hand-written C++ with ATen's SIMD type.

``kernels.cpp`` (beside this file) holds the per-tensor kernels of :mod:`.dadapt` and
:mod:`.schedule_free` once more, written with ``at::vec::Vectorized``: one loop over the
elements per tensor, every tensor read once and every result written once, vectorized for the
CPU's widest instruction set, its sums cut into fixed chunks so that they do not depend on the
number of threads. Where inductor makes two loops of D-Adapt Adam's kernel (its sum reads
:math:`s` and :math:`v` before the kernel overwrites them), the native kernel makes one, 9
sweeps instead of 12; and it runs at the speed of torch's own fused AdamW kernel, which is
written the same way.

The source is compiled once per process, at the first ``fused=True`` step on the CPU, by
inductor's C++ toolchain (``torch._inductor.codecache.CppCodeCache``: the compiler, flags and
instruction set inductor uses for its own CPU code, and its on-disk cache, so later processes
load the library without compiling), in a few seconds, not the tens of seconds that
``torch.compile`` takes for the Python kernels. One call of a kernel sweeps a whole list of
tensors (every chunk of every tensor is one item of one OpenMP loop), through ``ctypes``, which
releases the GIL.

A kernel takes the rows whose tensors are float32 or float64 CPU tensors with a dense common
layout (:func:`~lrkit.optim._compiled.base._flatten`), of any size from 2 elements; the others
go on to the ``torch.compile`` kernels and from there to the optimizer's own path. If the
library cannot be built or loaded (no C++ compiler, a platform inductor does not serve), a
warning says so once and every row goes on to the ``torch.compile`` kernels.
"""

from __future__ import annotations

import ctypes
import warnings
from collections.abc import Sequence
from importlib import resources
from typing import Any

import torch
from torch import Tensor

__all__ = ["DTYPES", "NativeKernel", "library"]

DTYPES = {torch.float32: "f32", torch.float64: "f64"}
"""The dtypes the native kernels are written for, with their entry points' suffixes."""

MIN_NUMEL = 2
"""Tensors with fewer elements go on to the other paths (a native kernel costs a few
nanoseconds per tensor, so it takes small tensors too)."""


class _Library:
    """The compiled ``kernels.cpp``, built at first use; ``None`` once building has failed."""

    def __init__(self) -> None:
        self.lib: ctypes.CDLL | None = None
        self.failure: str | None = None

    def get(self) -> ctypes.CDLL | None:
        if self.lib is None and self.failure is None:
            try:
                from torch._inductor.codecache import CppCodeCache

                source = resources.files(__package__).joinpath("kernels.cpp").read_text()
                self.lib = CppCodeCache.load(source)
            except Exception as exc:  # no compiler, no inductor: the other paths run
                self.failure = f"{type(exc).__name__}: {exc}".split("\n", 1)[0]
                warnings.warn(
                    f"lrkit: the native CPU kernels are unavailable here ({self.failure}); "
                    "fused=True uses the torch.compile kernels",
                    RuntimeWarning,
                    stacklevel=4,
                )
        return self.lib

    def reset(self) -> None:
        self.lib = None
        self.failure = None


library = _Library()
"""The shared library of every native kernel (:meth:`_Library.get` builds or loads it)."""


class NativeKernel:
    """One kernel of ``kernels.cpp``, called once per list of tensors of one dtype.

    Args:
        name: The kernel's name in ``kernels.cpp`` (its entry points are
            ``lrkit_<name>_f32`` and ``lrkit_<name>_f64``).
        sums: How many per-tensor sums it returns (0 or 2).
        flags: The names of the static flags it takes, bit 0 first.
    """

    def __init__(self, name: str, *, sums: int = 0, flags: Sequence[str] = ()) -> None:
        self.name = name
        self.sums = sums
        self.flags = tuple(flags)
        self.enabled = True
        """Whether the compiled path calls this kernel (tests switch it off to reach the
        ``torch.compile`` kernels)."""

    def __repr__(self) -> str:
        return f"NativeKernel({self.name})"

    def apply(
        self, rows: Sequence[Sequence[Tensor | None]], scalars: Tensor, static: dict[str, bool]
    ) -> dict[int, Any]:
        """Run the kernel on every row it takes; return ``{row index: result}``.

        A result is ``None``, or for a kernel with sums a 1-D tensor of them in the row's
        dtype. Rows it does not take (see the module docstring), or all when the library is
        unavailable, are absent from the result and untouched.
        """
        from lrkit.optim._compiled.base import _flatten

        if not self.enabled:
            return {}
        by_dtype: dict[torch.dtype, list[tuple[int, list[Tensor | None], int]]] = {}
        for i, row in enumerate(rows):
            flat = _flatten(list(row), MIN_NUMEL)
            if flat is None:
                continue
            first = next(t for t in flat if t is not None)
            if first.device.type == "cpu" and first.dtype in DTYPES:
                by_dtype.setdefault(first.dtype, []).append((i, flat, first.numel()))
        if not by_dtype:
            return {}
        lib = library.get()
        if lib is None:
            return {}
        numbers = scalars.detach().to(device="cpu", dtype=torch.float64).contiguous()
        bits = sum(1 << k for k, flag in enumerate(self.flags) if static.get(flag, False))
        threads = torch.get_num_threads()
        done: dict[int, Any] = {}
        for dtype, taken in by_dtype.items():
            n = len(taken)
            arity = len(taken[0][1])
            pointers = (ctypes.c_void_p * (n * arity))(
                *[0 if t is None else t.data_ptr() for _, flat, _ in taken for t in flat]
            )
            numels = (ctypes.c_int64 * n)(*[numel for _, _, numel in taken])
            out = torch.zeros(n, max(self.sums, 1), dtype=torch.float64)
            entry = getattr(lib, f"lrkit_{self.name}_{DTYPES[dtype]}")
            entry(
                ctypes.c_int64(n),
                pointers,
                numels,
                ctypes.c_void_p(numbers.data_ptr()),
                ctypes.c_int64(bits),
                ctypes.c_void_p(out.data_ptr()),
                ctypes.c_int64(threads),
            )
            if self.sums:
                sums = out.to(dtype)
                done.update((i, sums[k]) for k, (i, _, _) in enumerate(taken))
            else:
                done.update((i, None) for i, _, _ in taken)
        return done
