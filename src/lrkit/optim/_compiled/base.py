"""The plumbing of the compiled path: choosing it, packing numbers, compiling and calling kernels.

See :mod:`lrkit.optim._compiled` for how the kernels are compiled and called.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from lrkit._validate import check_bool
from lrkit.optim._compiled.native import NativeKernel

__all__ = [
    "MIN_NUMEL",
    "SUPPORTED_DEVICE_TYPES",
    "CompiledKernel",
    "Lists",
    "check_fused",
    "pack",
    "scalar",
]

SUPPORTED_DEVICE_TYPES = ("cpu",)
"""Device types the compiled path is for. Inductor also compiles for CUDA (Triton), where one
compiled call over a list of tensors would compete with the foreach path's multi-tensor kernels
(a whole list per launch); that is not measured here."""


# --------------------------------------------------------------------------------------------
# Choosing the path
# --------------------------------------------------------------------------------------------
def check_fused(value: object, params: Iterable[Any]) -> bool:
    """Return the path asked for by ``fused``: ``True`` for the compiled kernels.

    Args:
        value: ``None`` (the default: off, see the module docstring), ``True`` or ``False``.
        params: The parameters or param groups given to the optimizer.

    Raises:
        TypeError: ``value`` is neither ``None`` nor a bool.
        ValueError: ``value`` is ``True`` and a parameter lives on a device type that inductor
            does not serve (see :data:`SUPPORTED_DEVICE_TYPES`).
    """
    if value is None:
        return False
    fused = check_bool("fused", value)
    if fused:
        for p in _iter_params(params):
            if p.device.type not in SUPPORTED_DEVICE_TYPES:
                raise ValueError(
                    f"fused=True needs parameters on {' or '.join(SUPPORTED_DEVICE_TYPES)}, "
                    f"got a parameter on {p.device.type}"
                )
    return fused


def _iter_params(params: Iterable[Any]) -> Iterable[Tensor]:
    for item in params:
        if isinstance(item, dict):
            yield from _iter_params(item.get("params", ()))
        elif isinstance(item, Tensor):
            yield item


_SCALARS: dict[tuple[str, float, torch.device], Tensor] = {}
_SCALARS_MAX = 256


def scalar(name: str, value: float, device: torch.device) -> Tensor:
    """``value`` as a 0-dim float64 tensor on ``device``, made once per argument, value and device.

    :func:`pack` builds a kernel's numbers from these, so that a number seen before costs no
    transfer from the host.
    """
    key = (name, value, device)
    out = _SCALARS.get(key)
    if out is None:
        if len(_SCALARS) >= _SCALARS_MAX:
            _SCALARS.clear()
        out = _SCALARS[key] = torch.tensor(value, dtype=torch.float64, device=device)
    return out


# --------------------------------------------------------------------------------------------
# The plumbing: compile once per variant, call per list of large tensors, the rest to the fallback
# --------------------------------------------------------------------------------------------
Lists = Sequence[Sequence[Tensor] | None]

_RECOMPILE_LIMIT = 64
"""Variants of one kernel the compiler may keep: one per dtype, device, flags and list of
tensors (and equalities among their sizes) it is called with (see
:meth:`CompiledKernel.apply`)."""

MIN_NUMEL = 1 << 16
"""Tensors with fewer elements take the optimizer's own path. Chosen when each tensor took a
compiled call of its own (25-45 us of host time): on a 2-core CPU (one thread, 20 tensors of
each size) the loop path was faster up to 4K elements, and at 16K for two of the three
optimizers; at 64K the compiled kernels were 1.4-1.8x faster. In a call over a list a small
tensor costs little host time, but each tensor adds a loop to the generated code and to the
time it takes to compile (see :mod:`lrkit.optim._compiled`)."""

MAX_TENSORS = 64
"""Most tensors one compiled call takes; a longer list is cut into calls of this many (a graph
over more tensors takes longer to compile and adds no speed)."""


def _each(fn: Callable[..., Any]) -> Callable[..., list[Any]]:
    """``fn`` run on each row of a list, as a function whose code object is its own.

    The compiler keeps its compiled variants on the code object, so every kernel needs its own
    (else all kernels would share one cache and its limit).
    """

    def each(rows: Sequence[Sequence[Tensor | None]], scalars: Tensor, **static: bool) -> list[Any]:
        return [fn(*row, scalars, **static) for row in rows]

    name = f"{fn.__name__}_each"
    each.__code__ = each.__code__.replace(co_name=name, co_qualname=name)
    each.__name__ = each.__qualname__ = name
    return each


class CompiledKernel:
    """A per-tensor kernel function, compiled on first use and called once per list of tensors.

    The function takes the tensors of one parameter (``None`` for an absent optional tensor),
    then its numbers packed in one 1-D tensor (:func:`pack`), then keyword flags; it writes its
    results into its tensor arguments and may return 0-dim tensors (per-tensor sums). What is
    compiled is :attr:`each`, the function run on each row of a list of such tensors: one call
    sweeps up to :data:`MAX_TENSORS` tensors, each in its own fused loop.

    Args:
        fn: The kernel function.
        backend: The ``torch.compile`` backend, ``"inductor"`` (the only one that fuses);
            tests use ``"eager"`` to check the plumbing without a C++ compiler.
        min_numel: Tensors with fewer elements are left to the optimizer's own path.
        max_tensors: Most tensors one compiled call takes.
        native: The same kernel in C++ (:mod:`.native`), which takes the float32 and float64
            CPU tensors first, or ``None``.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        backend: str = "inductor",
        min_numel: int = MIN_NUMEL,
        max_tensors: int = MAX_TENSORS,
        native: NativeKernel | None = None,
    ) -> None:
        self.fn = fn
        self.native = native
        self.each = _each(fn)
        self.name = fn.__name__
        self.backend = backend
        self.min_numel = min_numel
        self.max_tensors = max_tensors
        self.reset()

    def reset(self) -> None:
        """Forget the compiled kernel and any failure (the next use compiles)."""
        self._compiled: Callable[..., list[Any]] | None = None
        self.graphs = 0
        """How many graphs the compiler has been given for this kernel: one per variant
        (dtype, device, flags and the number and sizes of the tensors of a call)."""
        self.failure: str | None = None
        """Why compiling failed (then the fallback takes every tensor), or ``None``."""

    def __repr__(self) -> str:
        return f"CompiledKernel({self.name}, backend={self.backend!r})"

    def apply(
        self, lists: Lists, scalars: Tensor, **static: bool
    ) -> tuple[list[Any], list[int]] | None:
        """Run the kernel on every tensor it takes: ``fn(lists[0][i], ..., scalars, **static)``.

        The :attr:`native` kernel, if any, takes the float32 and float64 CPU tensors with a
        dense common layout (:mod:`.native`). The compiled function takes the remaining plain
        tensors of at least :attr:`min_numel` elements whose tensors share a dense layout (see
        :func:`_flatten`), as 1-D aliases, in one compiled call per device and dtype (or more:
        at most :attr:`max_tensors` tensors a call, and no two of a call in one storage); the
        caller's own path runs the others. Inside a graph that ``torch.compile`` is tracing,
        it takes every tensor and calls the function as is, to be traced with the caller.

        Args:
            lists: Parallel lists of tensors, one entry per parameter; ``None`` for an
                optional tensor the optimizer does not keep.
            scalars: The kernel's numbers as one 1-D float64 tensor (:func:`pack`), moved to
                each parameter's device.
            static: Flags that select a variant of the kernel (each value compiles its own).

        Returns:
            The kernel's results for the tensors it ran on, in order, and the indices of the
            tensors left to the caller; or ``None`` when the kernel cannot be compiled here,
            and then no tensor has been touched.
        """
        present = [lst for lst in lists if lst is not None]
        n = len(present[0]) if present else 0
        rows = [[None if lst is None else lst[i] for lst in lists] for i in range(n)]
        if torch.compiler.is_compiling():
            return [self.fn(*row, _on(scalars, row), **static) for row in rows], []
        results: dict[int, Any] = {}
        if self.native is not None:
            results = self.native.apply(rows, scalars, static)
        todo = [i for i in range(n) if i not in results]
        rest = self._apply_compiled(rows, todo, scalars, static, results)
        if rest is None:
            if not results:
                return None
            rest = todo
        return [results[i] for i in sorted(results)], sorted(rest)

    def _apply_compiled(
        self,
        rows: list[list[Tensor | None]],
        todo: list[int],
        scalars: Tensor,
        static: dict[str, bool],
        results: dict[int, Any],
    ) -> list[int] | None:
        """:meth:`apply`'s ``torch.compile`` part, on the rows ``todo``: results into ``results``.

        Returns the indices left to the caller, or ``None`` when nothing could be compiled.
        """
        if not todo:
            return []
        if self.failure is not None:
            return None
        flats: dict[int, list[Tensor | None] | None] = {
            i: _flatten(rows[i], self.min_numel) for i in todo
        }
        calls = self._calls(flats)
        if calls and self._compiled is None:
            try:
                # every variant is one entry in the compiler's cache of this kernel, whose
                # default limit (8) a process using several variants would reach
                limit = max(torch._dynamo.config.recompile_limit, _RECOMPILE_LIMIT)
                self._compiled = torch.compile(  # type: ignore[call-overload]  # not in the stubs
                    self.each,
                    backend=self._count_graphs,
                    dynamic=True,
                    fullgraph=True,
                    recompile_limit=limit,
                )
            except Exception as exc:  # any compiler failure means: take the fallback path
                self._fail(exc)
                return None
        rest = [i for i, flat in flats.items() if flat is None]
        ran = False
        by_device: dict[torch.device, Tensor] = {}
        for device, indices in calls:
            if self._compiled is None:  # failed earlier in this step
                rest.extend(indices)
                continue
            numbers = by_device.get(device)
            if numbers is None:
                numbers = by_device[device] = scalars.to(device)
            try:
                out = self._compiled([flats[i] for i in indices], numbers, **static)
            except Exception as exc:  # compiling comes before running: the call's tensors
                self._fail(exc)  # are untouched, and the fallback takes them
                rest.extend(indices)
                continue
            ran = True
            results.update(zip(indices, out, strict=True))
        if not ran and self._compiled is None:
            return None
        return rest

    def _calls(
        self, flats: dict[int, list[Tensor | None] | None]
    ) -> list[tuple[torch.device, list[int]]]:
        """The compiled calls for ``flats``: the indices of each, with its device.

        One call per device and dtype, cut at :attr:`max_tensors` tensors and wherever a
        tensor shares its storage with one already in the call (views into one buffer): the
        compiler would merge those into one input and copy it whole.
        """
        calls: list[tuple[torch.device, list[int]]] = []
        open_calls: dict[tuple[torch.device, torch.dtype], tuple[list[int], set[int]]] = {}
        for i, flat in flats.items():
            if flat is None:
                continue
            tensors = [t for t in flat if t is not None]
            key = (tensors[0].device, tensors[0].dtype)
            storages = {t.untyped_storage().data_ptr() for t in tensors}
            current = open_calls.get(key)
            if current is None or len(current[0]) >= self.max_tensors or storages & current[1]:
                current = open_calls[key] = ([], set())
                calls.append((key[0], current[0]))
            current[0].append(i)
            current[1].update(storages)
        return calls

    def _count_graphs(self, gm: torch.fx.GraphModule, example_inputs: list[Tensor]) -> Any:
        """The configured backend, counting the graphs it is given."""
        self.graphs += 1
        return torch._dynamo.lookup_backend(self.backend)(gm, example_inputs)

    def _fail(self, exc: Exception) -> None:
        """Record why compiling failed and warn, once: from now on the fallback runs."""
        self._compiled = None
        self.failure = f"{type(exc).__name__}: {exc}".split("\n", 1)[0]
        warnings.warn(
            f"lrkit: the compiled kernel {self.name} is unavailable here ({self.failure}); "
            "fused=True falls back to the foreach choice",
            RuntimeWarning,
            stacklevel=2,
        )


def _on(scalars: Tensor, row: list[Tensor | None]) -> Tensor:
    """``scalars`` on the device of the first tensor of ``row``."""
    return scalars.to(next(t for t in row if t is not None).device)


def _flatten(row: list[Tensor | None], min_numel: int) -> list[Tensor | None] | None:
    """1-D aliases of one parameter's tensors in memory order, or ``None`` if not possible.

    Possible when the tensors have at least ``min_numel`` (and 2) elements, are plain tensors
    on one device with one dtype and shape, and are all contiguous or all laid out alike and
    densely (channels-last, transposed). The aliases are not views (``_base`` is ``None``), so
    a compiled kernel's guards do not depend on the shape of the tensor they alias.
    """
    tensors = [t for t in row if t is not None]
    first = tensors[0]
    if first.numel() < max(min_numel, 2):
        return None
    for t in tensors:
        if type(t) not in (Tensor, torch.nn.Parameter):
            return None
        if t.device != first.device or t.dtype != first.dtype or t.shape != first.shape:
            return None
    if not all(t.is_contiguous() for t in tensors):
        strides = first.stride()
        if any(t.stride() != strides for t in tensors):
            return None
        order = sorted(range(first.dim()), key=lambda dim: -strides[dim])
        tensors = [t.permute(order) for t in tensors]
        if not all(t.is_contiguous() for t in tensors):
            return None
    it = iter([t.view(-1).detach() for t in tensors])
    return [None if t is None else next(it) for t in row]


def pack(device: torch.device, **values: Tensor | float) -> Tensor:
    """The ``values``, in order, as one 1-D float64 tensor on ``device`` (a kernel's scalars).

    Numbers become cached 0-dim tensors first (:func:`scalar`), so packing moves no data from
    the host once a value has been seen.
    """
    parts = [
        value.to(device=device, dtype=torch.float64)
        if isinstance(value, Tensor)
        else scalar(name, value, device)
        for name, value in values.items()
    ]
    return torch.stack(parts)


def _stacked(values: list[tuple[Tensor, Tensor] | Tensor], like: Tensor) -> tuple[Tensor, Tensor]:
    """Per-tensor ``(n, ℓ)`` pairs (or 1-D tensors of them) as two 1-D tensors like ``like``."""
    if not values:
        return like.new_zeros(0), like.new_zeros(0)
    if any(isinstance(v, Tensor) for v in values):  # a native kernel's rows (1-D tensors)
        rows = [v if isinstance(v, Tensor) else torch.stack([*v]) for v in values]
        if any(r.device != like.device for r in rows):
            rows = [r.to(like.device) for r in rows]
        matrix = torch.stack(rows).to(like.dtype)
        return matrix[:, 0], matrix[:, 1]
    out = []
    for column in zip(*values, strict=True):
        if all(v.device == like.device for v in column):
            out.append(torch.stack(column).to(like.dtype))
        else:
            out.append(torch.stack([v.to(device=like.device, dtype=like.dtype) for v in column]))
    return out[0], out[1]


def _subset(lists: Lists, indices: list[int]) -> list[list[Tensor] | None]:
    """The entries ``indices`` of each of ``lists`` (``None`` stays ``None``)."""
    return [None if lst is None else [lst[i] for i in indices] for lst in lists]


def _concat(first: tuple[Tensor, Tensor], second: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    return torch.cat([first[0], second[0]]), torch.cat([first[1], second[1]])
