r"""The compiled path's native CPU kernels: hand-written C++ with ATen's SIMD type.

``kernels.cpp`` (beside this file) holds the per-tensor kernels of :mod:`.dadapt` and
:mod:`.schedule_free` once more, written with ``at::vec::Vectorized``: one loop over the
elements per tensor, every tensor read once and every result written once, vectorized for the
CPU's widest instruction set, its sums cut into fixed chunks so that they do not depend on the
number of threads. Where inductor makes two loops of D-Adapt Adam's kernel (its sum reads
:math:`s` and :math:`v` before the kernel overwrites them), the native kernel makes one, 9
sweeps instead of 12; and it runs at the speed of torch's own fused AdamW kernel, which is
written the same way.

The source is compiled at the first ``fused=True`` step on the CPU by inductor's C++ toolchain
(``torch._inductor.codecache.CppCodeCache``: the compiler, flags and instruction set inductor
uses for its own CPU code), in a few seconds, not the tens of seconds that ``torch.compile``
takes for the Python kernels; inductor's on-disk cache keeps the library, so later processes
only load it (about 2 s on a 2-core CPU, most of it importing inductor). One call of a kernel
sweeps a whole list of tensors (every chunk of every tensor is one item of one OpenMP loop),
through ``ctypes``, which releases the GIL.

A kernel takes the rows whose tensors are float32 or float64 CPU tensors with a dense common
layout (:func:`_pointers`), of any size from 2 elements; the others go on to the
``torch.compile`` kernels and from there to the optimizer's own path. If the
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
"""Tensors with fewer elements go on to the other paths. A tensor costs a native call about
2 microseconds of host time (checking its layout, reading its address), so small tensors are
taken too."""


class _Library:
    """The compiled ``kernels.cpp``, built at first use; ``None`` once building has failed."""

    def __init__(self) -> None:
        self.lib: ctypes.CDLL | None = None
        self.failure: str | None = None

    def get(self) -> ctypes.CDLL | None:
        """The library, built or loaded at the first call; ``None`` once that has failed."""
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


library = _Library()
"""The shared library of every native kernel (:meth:`_Library.get` builds or loads it)."""


class NativeKernel:
    """One kernel of ``kernels.cpp``, called once per list of tensors of one dtype.

    Args:
        name: The kernel's name in ``kernels.cpp`` (its entry points are
            ``lrkit_<name>_f32`` and ``lrkit_<name>_f64``).
        writes: The positions in a row of the tensors the kernel writes (their autograd
            version counters are bumped, as an in-place op of PyTorch would).
        sums: How many per-tensor sums it returns (0 or 2).
        flags: The names of the static flags it takes, bit 0 first.
    """

    def __init__(
        self, name: str, *, writes: Sequence[int], sums: int = 0, flags: Sequence[str] = ()
    ) -> None:
        self.name = name
        self.writes = tuple(writes)
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
        if not self.enabled:
            return {}
        by_dtype: dict[torch.dtype, tuple[list[int], list[int], list[int]]] = {}
        for i, row in enumerate(rows):
            pointers = _pointers(row)
            if pointers is None:
                continue
            dtype = row[0].dtype  # type: ignore[union-attr]  # _pointers checked it
            taken = by_dtype.get(dtype)
            if taken is None:
                taken = by_dtype[dtype] = ([], [], [])
            taken[0].append(i)
            taken[1].extend(pointers)
            taken[2].append(row[0].numel())  # type: ignore[union-attr]
        if not by_dtype:
            return {}
        lib = library.get()
        if lib is None:
            return {}
        numbers = scalars.detach().to(device="cpu", dtype=torch.float64).contiguous()
        bits = sum(1 << k for k, flag in enumerate(self.flags) if static.get(flag, False))
        threads = torch.get_num_threads()
        done: dict[int, Any] = {}
        for dtype, (indices, pointers, numels) in by_dtype.items():
            n = len(indices)
            out = torch.zeros(n, max(self.sums, 1), dtype=torch.float64)
            entry = getattr(lib, f"lrkit_{self.name}_{DTYPES[dtype]}")
            entry(
                ctypes.c_int64(n),
                (ctypes.c_void_p * len(pointers))(*pointers),
                (ctypes.c_int64 * n)(*numels),
                ctypes.c_void_p(numbers.data_ptr()),
                ctypes.c_int64(bits),
                ctypes.c_void_p(out.data_ptr()),
                ctypes.c_int64(threads),
            )
            written = [rows[i][k] for i in indices for k in self.writes]
            torch.autograd.graph.increment_version([t for t in written if t is not None])
            if self.sums:
                sums = out.to(dtype)
                done.update(zip(indices, sums, strict=True))
            else:
                done.update(dict.fromkeys(indices))
        return done


_PLAIN = (Tensor, torch.nn.Parameter)


def _pointers(row: Sequence[Tensor | None]) -> list[int] | None:
    """The data pointers of one row's tensors (0 for ``None``), or ``None`` if not native.

    A row is native when its tensors are plain float32 or float64 CPU tensors of at least
    :data:`MIN_NUMEL` elements with one shape, all contiguous or all laid out alike and densely
    (channels-last, transposed): then the element at the lowest address of each is its
    ``data_ptr`` and the kernel can walk all of them in memory order, as
    :func:`~lrkit.optim._compiled.base._flatten` does for the ``torch.compile`` kernels.
    """
    first = row[0]
    if first is None or first.device.type != "cpu" or first.dtype not in DTYPES:
        return None
    if first.numel() < MIN_NUMEL:
        return None
    shape, dtype = first.shape, first.dtype
    contiguous = first.is_contiguous()
    strides = None if contiguous else first.stride()
    if strides is not None and not _dense(shape, strides):
        return None
    pointers = []
    for t in row:
        if t is None:
            pointers.append(0)
            continue
        if type(t) not in _PLAIN or t.dtype != dtype or t.shape != shape or t.is_cpu is False:
            return None
        if contiguous:
            if not t.is_contiguous():
                return None
        elif t.stride() != strides:
            return None
        pointers.append(t.data_ptr())
    return pointers


def _dense(shape: Sequence[int], strides: Sequence[int]) -> bool:
    """Whether ``strides`` lay out ``shape`` densely in some order of the dimensions."""
    expected = 1
    for size, stride in sorted(zip(shape, strides, strict=True), key=lambda d: (d[1], d[0])):
        if size != 1 and stride != expected:
            return False
        expected *= size
    return True
