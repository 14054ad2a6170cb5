"""Helpers of the optimizers' single-tensor loops: a reusable scratch buffer, host reads of flags.

:class:`Scratch`: a loop step that writes ``x0 - x`` or ``sqrt(v) + eps`` into a fresh tensor
for every parameter allocates (and, for large tensors, page-faults in) memory of the parameters'
size on every step. :class:`Scratch` keeps one buffer per device and dtype, as large as the
largest tensor it serves, and hands out views of it shaped like each tensor in turn: the
temporaries of one tensor stay in the cache for the op that reads them next, and a step
allocates one buffer per device and dtype.

:func:`host_readable`: whether a 0-dim tensor (a skip flag, a step size) can be read as a Python
value for free. On the CPU outside ``torch.compile`` it can, and a loop may then branch on it or
pass it as an op's ``alpha``/``value`` instead of a tensor, saving an op per tensor; elsewhere
reading it would wait for the device (or break the compiled graph), so the loop keeps to tensor
arithmetic.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

__all__ = ["Scratch", "host_readable"]


class Scratch:
    """One buffer per device and dtype, lent out as views shaped like the tensors it serves.

    A view is valid until the next :meth:`like` call for the same device and dtype: use it for
    the temporaries of one tensor, then ask again for the next tensor.

    Args:
        tensors: The tensors whose temporaries the buffer holds; it is sized to the largest of
            each device and dtype, and allocated at the first :meth:`like` call for that pair.
    """

    __slots__ = ("_buffers", "_sizes", "_views")

    def __init__(self, tensors: Iterable[torch.Tensor]) -> None:
        sizes: dict[tuple[torch.device, torch.dtype], int] = {}
        for t in tensors:
            key = (t.device, t.dtype)
            n = t.numel()
            if n > sizes.get(key, 0):
                sizes[key] = n
        self._sizes = sizes
        self._buffers: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
        self._views: dict[tuple[torch.device, torch.dtype, torch.Size], torch.Tensor] = {}

    def like(self, t: torch.Tensor) -> torch.Tensor:
        """An uninitialized tensor of ``t``'s shape, dtype and device.

        A view of the shared buffer when ``t`` is contiguous; otherwise, and for a tensor larger
        than the ones given at construction, ``torch.empty_like(t)`` (which keeps ``t``'s
        layout, so results match the out-of-place op's exactly).
        """
        view_key = (t.device, t.dtype, t.shape)
        view = self._views.get(view_key)
        if view is not None and t.is_contiguous():
            return view
        key = (t.device, t.dtype)
        n = t.numel()
        size = self._sizes.get(key, 0)
        if not t.is_contiguous() or n > size:
            return torch.empty_like(t)
        buf = self._buffers.get(key)
        if buf is None:
            buf = self._buffers[key] = torch.empty(size, dtype=t.dtype, device=t.device)
        view = self._views[view_key] = buf[:n].view(t.shape)
        return view


def host_readable(t: torch.Tensor) -> bool:
    """Whether reading ``t`` on the host costs no device synchronization and no graph break."""
    return t.device.type == "cpu" and not torch.compiler.is_compiling()
