r"""The optional compiled path of the Adam-family optimizers: one fused sweep per tensor.

The loop and ``torch._foreach_*`` paths of an optimizer run its update as a sequence of
operations on whole tensors; each reads and writes full tensors and most allocate a temporary,
so a step moves several times the bytes it must. Here the same equations are written once more
as *per-tensor kernels*: plain functions of one parameter's tensors and a few numbers that
``torch.compile`` (inductor: vectorized C++ on CPU, Triton on GPU) turns into one loop over the
elements, reading each tensor once and writing each result once. Prodigy's sums
(:math:`\langle \hat g, x_0 - x \rangle`, :math:`\lVert s \rVert_1`) are reduced in that same
loop; D-Adapt Adam's numerator :math:`\langle \hat g, s / (\sqrt v + \epsilon) \rangle`, which
reads :math:`s` and :math:`v` before the loop overwrites them, gets a reading loop of its own
(inductor does not fuse a sum with a later overwrite of what it reads). Tests prove every
kernel equal to the loop path of its optimizer (float32 to rounding over 100+ steps, float64 to
1e-12).

How the kernels are compiled and called (:class:`CompiledKernel`):

* Every number, hyperparameters included, reaches a kernel inside one 1-D float64 tensor
  (:func:`pack`): a new ``d``, a scheduled ``lr`` or another group's ``weight_decay`` never
  recompiles, and the compiled call checks one argument instead of seven.
* Tensors are passed flattened to 1-D with dynamic sizes (``torch.compile(dynamic=True)``), so
  one compiled kernel serves every tensor size of a dtype and device. A compiled call costs
  about 45 us of host time, so tensors under :data:`MIN_NUMEL` (64K) elements take the
  optimizer's own path (loop or foreach), which is faster for them; so do tensor subclasses and
  layouts that do not flatten to a dense 1-D view. The kernels' per-tensor results and the
  fallback's are simply concatenated.
* The first use on a dtype and device compiles the kernel on stand-in tensors of zeros (a
  probe), before any tensor of the step is touched. If compiling fails (no C++ compiler, an
  unsupported Python or platform), a warning is issued once and the optimizer takes its
  ``foreach`` choice (loop or foreach path) for this and every later step, with the same
  results. A compile that the probe did not foresee (after ``torch.set_num_threads``, say)
  happens during a step; if it fails, the tensors not yet updated take the fallback, and so
  does every later step.
* Inside a graph that ``torch.compile`` is already tracing (a compiled training step), the
  kernel function is called as is and traced with it.

Choosing the path: the optimizers take ``fused: bool | None = None``. ``None`` (the default) and
``False`` run the foreach or loop path; ``True`` runs the compiled kernels, for CPU parameters
(see :data:`SUPPORTED_DEVICE_TYPES`). The default is off because compiling costs more than a
short run saves. Measured on a shared 2-core CPU with ~10M parameters in 50 tensors: the first
step takes 12-13 s with an empty inductor cache (27-36 s when the machine is busy) and about
3 s with a warm one (the cache is on disk, so later processes start warm), one compile per
kernel and dtype; a later step saves 7-12 ms over the default path. A fused run breaks even
after roughly 1000-1800 steps on a cold cache, 250-450 on a warm one (``docs/benchmarks.md``).
``fused`` is an attribute of the optimizer, not a hyperparameter of a param group, so a
``state_dict`` does not record it: a checkpoint saved on one path resumes on the other.

Memory: the kernels write their results into the state tensors and the parameters and return
only 0-dim sums, so a step allocates no temporaries of the parameters' size and nothing beyond
the optimizer's documented state is kept. The probe's stand-ins (2^20 elements per tensor
argument) live only while it compiles.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from lrkit._validate import check_bool

__all__ = [
    "ADAM_UPDATE",
    "DADAPT_ADAM",
    "DUAL_ADAM_STATS",
    "KERNELS",
    "PRODIGY_STATS",
    "PRODIGY_UPDATE",
    "SCHEDULE_FREE",
    "SUPPORTED_DEVICE_TYPES",
    "CompiledKernel",
    "adam_stats_fused",
    "adam_update_fused",
    "adam_update_kernel",
    "check_fused",
    "dadapt_adam_fused",
    "dadapt_adam_kernel",
    "dual_adam_stats_kernel",
    "pack",
    "prodigy_stats_fused",
    "prodigy_stats_kernel",
    "prodigy_update_fused",
    "prodigy_update_kernel",
    "scalar",
    "schedule_free_fused",
    "schedule_free_kernel",
]

SUPPORTED_DEVICE_TYPES = ("cpu",)
"""Device types the compiled path is for. Inductor also compiles for CUDA (Triton), but there
one call per tensor is bound by the host (about 45 us each, against microseconds of GPU work),
where the foreach path's multi-tensor kernels take a whole list per launch; the CUDA path would
need one compiled graph over all tensors, which is not measured here."""


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
# The plumbing: compile once per variant, call per large tensor, leave the rest to the fallback
# --------------------------------------------------------------------------------------------
Lists = Sequence[Sequence[Tensor] | None]

_RECOMPILE_LIMIT = 64
"""Variants of one kernel the compiler may keep (see :meth:`CompiledKernel._probe`)."""

MIN_NUMEL = 1 << 16
"""Tensors with fewer elements take the optimizer's own path. A compiled call costs 25-45 us of
host time: on a 2-core CPU (one thread, 20 tensors of each size) the loop path was faster up to
4K elements, and at 16K for two of the three optimizers; at 64K the compiled kernels were
1.4-1.8x faster."""

_PROBE_NUMEL = 1 << 20
"""Size of the stand-in tensors a kernel is first compiled on. Inductor takes the size it
compiles for as the typical one: at 2^20 elements it splits loops across threads, and sums
float32 in chunks of 4096 (more accurately), a choice it guards on the size."""


class CompiledKernel:
    """A per-tensor kernel function, compiled on first use and called once per large tensor.

    The function takes the tensors of one parameter (``None`` for an absent optional tensor),
    then its numbers packed in one 1-D tensor (:func:`pack`), then keyword flags; it writes its
    results into its tensor arguments and may return 0-dim tensors (per-tensor sums).

    Args:
        fn: The kernel function.
        backend: The ``torch.compile`` backend, ``"inductor"`` (the only one that fuses);
            tests use ``"eager"`` to check the plumbing without a C++ compiler.
        min_numel: Tensors with fewer elements are left to the optimizer's own path.
    """

    def __init__(
        self, fn: Callable[..., Any], *, backend: str = "inductor", min_numel: int = MIN_NUMEL
    ) -> None:
        self.fn = fn
        self.name = fn.__name__
        self.backend = backend
        self.min_numel = min_numel
        self.reset()

    def reset(self) -> None:
        """Forget the compiled kernel, the probes and any failure (the next use compiles)."""
        self._compiled: Callable[..., Any] | None = None
        self._probed: set[tuple[torch.device, torch.dtype, tuple[tuple[str, bool], ...]]] = set()
        self.graphs = 0
        """How many graphs the compiler has been given for this kernel: one per variant
        (dtype, device, flags and, where inductor specializes on the size, small or large)."""
        self.failure: str | None = None
        """Why compiling failed (then the fallback takes every tensor), or ``None``."""

    def __repr__(self) -> str:
        return f"CompiledKernel({self.name}, backend={self.backend!r})"

    def apply(
        self, lists: Lists, scalars: Tensor, **static: bool
    ) -> tuple[list[Any], list[int]] | None:
        """Run the kernel on every tensor it takes: ``fn(lists[0][i], ..., scalars, **static)``.

        It takes the plain tensors of at least :attr:`min_numel` elements whose tensors share a
        dense layout (see :func:`_flatten`), as 1-D aliases; the caller's own path runs the
        others. Inside a graph that ``torch.compile`` is tracing, it takes every tensor and
        calls the function as is, to be traced with the caller.

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
        flats = [_flatten(row, self.min_numel) for row in rows]
        if not self._ready(flats, scalars, static):
            return None
        results: list[Any] = []
        rest = [i for i, flat in enumerate(flats) if flat is None]
        by_device: dict[torch.device, Tensor] = {}
        for i, flat in enumerate(flats):
            if flat is None:
                continue
            if self._compiled is None:  # failed earlier in this call
                rest.append(i)
                continue
            device = next(t for t in flat if t is not None).device
            numbers = by_device.get(device)
            if numbers is None:
                numbers = by_device[device] = scalars.to(device)
            try:
                results.append(self._compiled(*flat, numbers, **static))
            except Exception as exc:  # a compile the probe could not foresee failed; compiling
                self._fail(exc)  # comes before running, so this tensor is still untouched
                rest.append(i)
        return results, sorted(rest)

    def _ready(
        self,
        flats: list[list[Tensor | None] | None],
        scalars: Tensor,
        static: dict[str, bool],
    ) -> bool:
        """Compile for each (device, dtype, flags) among ``flats``; ``False`` if that fails."""
        if self.failure is not None:
            return False
        for flat in flats:
            if flat is None:
                continue
            first = next(t for t in flat if t is not None)
            key = (first.device, first.dtype, tuple(sorted(static.items())))
            if key in self._probed:
                continue
            try:
                self._probe(flat, scalars.to(first.device), static)
            except Exception as exc:  # any compiler failure means: take the fallback path
                self._fail(exc)
                return False
            self._probed.add(key)
        return True

    def _probe(self, flat: list[Tensor | None], scalars: Tensor, static: dict[str, bool]) -> None:
        """Compile by running the kernel on zeros shaped like one parameter's flat tensors.

        First at 2^20 elements, then at :attr:`min_numel`: the second compiles the variant for
        smaller tensors where inductor made the first one for large tensors only, so that no
        compile is left for the middle of a step.
        """
        if self._compiled is None:
            self._compiled = torch.compile(
                self.fn, backend=self._count_graphs, dynamic=True, fullgraph=True
            )
        # Every variant is one entry in the compiler's cache of this function, whose default
        # limit (8) a process using several variants would reach; all compiling happens here,
        # so the limit is raised here only.
        limit = max(torch._dynamo.config.recompile_limit, _RECOMPILE_LIMIT)
        with torch._dynamo.config.patch(recompile_limit=limit):
            for numel in (_PROBE_NUMEL, self.min_numel):
                stand_ins = [
                    None if t is None else torch.zeros(numel, dtype=t.dtype, device=t.device)
                    for t in flat
                ]
                with torch.no_grad():
                    self._compiled(*stand_ins, scalars, **static)

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


# --------------------------------------------------------------------------------------------
# The kernels: each optimizer's equations on one tensor, for the compiler. The numbers come
# packed in one 1-D float64 tensor ``scalars``, in the order each kernel documents.
# --------------------------------------------------------------------------------------------
def schedule_free_kernel(
    y: Tensor, grad: Tensor, z: Tensor, exp_avg_sq: Tensor | None, scalars: Tensor
) -> None:
    r"""One Schedule-Free step of one tensor, in one sweep (``exp_avg_sq=None``: the SGD step).

    The equations of :func:`lrkit.optim.schedule_free.schedule_free_single_tensor` (Defazio et
    al. 2024, "The Road Less Scheduled", https://arxiv.org/abs/2405.15682):

    .. math::

        v &\leftarrow \beta_2 v + (1 - \beta_2)\, g^2, \qquad
        \hat d = \frac{g}{\sqrt{v / (1 - \beta_2^t)} + \epsilon} + \lambda y
        \quad(\text{SGD: } \hat d = g + \lambda y) \\
        z &\leftarrow z - \gamma_t \hat d, \qquad
        y \leftarrow \operatorname{lerp}\bigl(y - (1 - \beta)\gamma_t \hat d,\ z,\ c_{t+1}\bigr)

    Args:
        y: The parameter (holding :math:`y`), updated.
        grad: Its gradient :math:`g`, read only.
        z: The state :math:`z`, updated.
        exp_avg_sq: The second moment :math:`v`, updated; ``None`` for Schedule-Free SGD.
        scalars: :math:`(\gamma_t, c_{t+1}, 1 - \beta_2^t, \beta, \beta_2, \epsilon, \lambda)`;
            the third, fifth and sixth are unused for SGD.
    """
    lr, c, bias_correction2, beta, beta2, eps, weight_decay = scalars
    if exp_avg_sq is None:
        d = grad + weight_decay * y
    else:
        v = exp_avg_sq * beta2 + grad * grad * (1 - beta2)
        # one division per element: 1 / (1 - β2^t) is a number
        d = grad / (torch.sqrt(v * (1 / bias_correction2)) + eps) + weight_decay * y
        exp_avg_sq.copy_(v)
    step = d * lr
    z_new = z - step
    y.copy_(torch.lerp(y - step * (1 - beta), z_new, c))
    z.copy_(z_new)


def _adam_moments(
    g_hat: Tensor,
    exp_avg: Tensor | None,
    exp_avg_sq: Tensor,
    s: Tensor,
    scalars: Tensor,
    *,
    scaled_v: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    r"""The moment and ``s`` updates of the D-adapted Adam, written back; returns new m, v, s.

    :math:`m \leftarrow \operatorname{lerp}(m, a \hat g, 1 - \beta_1)`,
    :math:`v \leftarrow \beta_2 v + (1 - \beta_2)(b \hat g)^2`,
    :math:`s \leftarrow \beta_s s + c \hat g`, with ``scalars`` starting
    :math:`(\lambda_c, \beta_1, \beta_2, \beta_s, a, c)`. With ``exp_avg=None``
    (:math:`\beta_1 = 0`) :math:`m = a \hat g` is returned, not stored. :math:`b = a` if
    ``scaled_v`` (Prodigy), else :math:`b = 1` (D-Adapt Adam).
    """
    beta1, beta2, beta_s, m_scale, s_scale = scalars[1:6]
    g_a = g_hat * m_scale
    if exp_avg is None:
        m = g_a
    else:
        m = torch.lerp(exp_avg, g_a, 1 - beta1)
        exp_avg.copy_(m)
    g_b = g_a if scaled_v else g_hat
    v = exp_avg_sq * beta2 + g_b * g_b * (1 - beta2)
    s_new = s * beta_s + g_hat * s_scale
    exp_avg_sq.copy_(v)
    s.copy_(s_new)
    return m, v, s_new


def prodigy_stats_kernel(
    x: Tensor, grad: Tensor, s: Tensor, x0: Tensor, scalars: Tensor
) -> tuple[Tensor, Tensor]:
    r"""Prodigy's statistics of one tensor in one sweep: ``s`` and the two sums.

    The ``s`` update and sums of :func:`lrkit.optim._dadapt_core.adam_stats_single` with
    ``direction="distance"`` (Mishchenko & Defazio, "Prodigy: An Expeditiously Adaptive
    Parameter-Free Learner", ICML 2024, https://arxiv.org/abs/2306.06101); the moments, which
    this step's sums do not need, are left to :func:`prodigy_update_kernel`:

    .. math::

        \hat g = g + \lambda_c x, \quad n = \langle \hat g, x_0 - x \rangle, \quad
        s \leftarrow \beta_3 s + c\, \hat g, \quad \ell = \lVert s \rVert_1

    Args:
        x: The parameter, read only.
        grad: Its gradient, read only.
        s: :math:`s`, updated.
        x0: The initial point :math:`x_0`.
        scalars: :math:`(\lambda_c, \beta_3, c)`.

    Returns:
        ``(n, ℓ)`` as 0-dim tensors in the tensors' dtype.
    """
    weight_decay, beta3, s_scale = scalars
    g_hat = grad + weight_decay * x
    n = (g_hat * (x0 - x)).sum()
    s_new = s * beta3 + g_hat * s_scale
    s.copy_(s_new)
    return n, s_new.abs().sum()


def prodigy_update_kernel(
    x: Tensor,
    grad: Tensor,
    exp_avg: Tensor | None,
    exp_avg_sq: Tensor,
    scalars: Tensor,
) -> None:
    r"""Prodigy's moments and update of one tensor in one sweep, once the new ``d`` is known.

    The moment updates of :func:`lrkit.optim._dadapt_core.adam_stats_single` with
    ``scaled_v=True`` (with the step's old :math:`d_k`, so they could have run with the
    statistics: moving them here reads :math:`m` and :math:`v` once per step), then the update
    of :func:`lrkit.optim._dadapt_core.adam_update_single` (Mishchenko & Defazio 2024,
    https://arxiv.org/abs/2306.06101):

    .. math::

        \hat g = g + \lambda_c x, \quad
        m \leftarrow \operatorname{lerp}(m, d_k \hat g, 1 - \beta_1), \quad
        v \leftarrow \beta_2 v + (1 - \beta_2) (d_k \hat g)^2, \\
        x \leftarrow x (1 - \lambda_d \alpha) - \alpha\, m / (\sqrt{v} + e)

    With ``exp_avg=None`` (:math:`\beta_1 = 0`) nothing is stored and :math:`m = a' \hat g`
    (:math:`a' = d_{k+1}`, as the reference does).

    Args:
        x: The parameter, updated.
        grad: Its gradient, read only.
        exp_avg: :math:`m`, updated, or ``None``.
        exp_avg_sq: :math:`v`, updated.
        scalars: :math:`(\lambda_c, \beta_1, \beta_2, d_k, a', \lambda_d \alpha, \alpha, e)`.
    """
    weight_decay, beta1, beta2, m_scale, m_next, decay, step, eps = scalars
    g_hat = grad + weight_decay * x
    g_a = g_hat * m_scale
    if exp_avg is None:
        m = g_hat * m_next
    else:
        m = torch.lerp(exp_avg, g_a, 1 - beta1)
        exp_avg.copy_(m)
    v = exp_avg_sq * beta2 + g_a * g_a * (1 - beta2)
    exp_avg_sq.copy_(v)
    x.copy_(x * (1 - decay) - step * m / (torch.sqrt(v) + eps))


def dual_adam_stats_kernel(
    x: Tensor,
    grad: Tensor,
    exp_avg: Tensor | None,
    exp_avg_sq: Tensor,
    s: Tensor,
    scalars: Tensor,
    *,
    coupled: bool,
) -> tuple[Tensor, Tensor]:
    r"""D-Adapt Adam's statistics of one tensor (its update comes later, in another kernel).

    The equations of :func:`lrkit.optim._dadapt_core.adam_stats_single` with
    ``direction="dual"`` and ``scaled_v=False`` (Defazio & Mishchenko, "Learning-Rate-Free
    Learning by D-Adaptation", ICML 2023, https://arxiv.org/abs/2301.07733), with :math:`s`
    and :math:`v` read before their update:

    .. math::

        \hat g = g + \lambda_c x, \quad
        n = \langle \hat g, s / (\sqrt{v} + \epsilon) \rangle, \quad
        m \leftarrow \operatorname{lerp}(m, a \hat g, 1 - \beta_1), \quad
        v \leftarrow \beta_2 v + (1 - \beta_2) \hat g^2, \quad
        s \leftarrow \beta_s s + c\, \hat g, \quad \ell = \lVert s \rVert_1

    Args:
        x: The parameter, read only (and only if ``coupled``).
        grad: Its gradient, read only.
        exp_avg: :math:`m`, updated, or ``None`` (:math:`\beta_1 = 0`).
        exp_avg_sq: :math:`v`, updated.
        s: :math:`s`, updated.
        scalars: :math:`(\lambda_c, \beta_1, \beta_2, \beta_s, a, c, \epsilon)`.
        coupled: Whether :math:`\lambda_c x` enters :math:`\hat g` (``False`` skips the read of
            :math:`x`; :math:`\lambda_c` is then 0).

    Returns:
        ``(n, ℓ)`` as 0-dim tensors in the tensors' dtype. Inductor computes :math:`n` in a
        loop of its own: it does not fuse a sum that reads :math:`s` and :math:`v` with the
        loop that overwrites them.
    """
    g_hat = grad + scalars[0] * x if coupled else grad
    n = (g_hat * (s / (torch.sqrt(exp_avg_sq) + scalars[6]))).sum()
    _, _, s_new = _adam_moments(g_hat, exp_avg, exp_avg_sq, s, scalars, scaled_v=False)
    return n, s_new.abs().sum()


def dadapt_adam_kernel(
    x: Tensor,
    grad: Tensor,
    exp_avg: Tensor | None,
    exp_avg_sq: Tensor,
    s: Tensor,
    scalars: Tensor,
    *,
    coupled: bool,
) -> tuple[Tensor, Tensor]:
    r"""A whole D-Adapt Adam step of one tensor: statistics, then the update.

    :func:`dual_adam_stats_kernel` (same arguments) followed by
    :math:`x \leftarrow x - m / (\sqrt{v} + \epsilon)` with the new :math:`m` and :math:`v`
    (the update of :func:`lrkit.optim._dadapt_core.adam_update_single` with ``step=1``). D-Adapt
    Adam's update needs nothing of this step's sums (its step size, inside :math:`m`, uses the
    previous ``d``) except when decoupled weight decay is on, whose factor depends on whether
    the step made progress: then the statistics and the update are two kernels.

    Returns:
        ``(n, ℓ)`` as 0-dim tensors in the tensors' dtype.
    """
    eps = scalars[6]
    g_hat = grad + scalars[0] * x if coupled else grad
    n = (g_hat * (s / (torch.sqrt(exp_avg_sq) + eps))).sum()
    m, v, s_new = _adam_moments(g_hat, exp_avg, exp_avg_sq, s, scalars, scaled_v=False)
    x.copy_(x - m / (torch.sqrt(v) + eps))
    return n, s_new.abs().sum()


def adam_update_kernel(
    x: Tensor,
    grad: Tensor | None,
    exp_avg: Tensor | None,
    exp_avg_sq: Tensor,
    scalars: Tensor,
) -> None:
    r"""The D-adapted Adam update of one tensor in one sweep.

    The equations of :func:`lrkit.optim._dadapt_core.adam_update_single`:
    :math:`x \leftarrow x (1 - \lambda_d \alpha) - \alpha\, m / (\sqrt{v} + e)`, with
    :math:`m = a (g + \lambda_c x)` when no first moment is stored (``exp_avg=None``; then
    ``grad`` is given).

    Args:
        x: The parameter, updated.
        grad: Its gradient (read only when ``exp_avg`` is ``None``), or ``None``.
        exp_avg: The first moment :math:`m`, or ``None``.
        exp_avg_sq: The second moment :math:`v`.
        scalars: :math:`(\lambda_c, a, \lambda_d \alpha, \alpha, e)`.
    """
    weight_decay, m_scale, decay, step, eps = scalars
    if exp_avg is None:
        assert grad is not None  # the driver passes the grads exactly when no m is stored
        m = (grad + weight_decay * x) * m_scale
    else:
        m = exp_avg
    x.copy_(x * (1 - decay) - step * m / (torch.sqrt(exp_avg_sq) + eps))


# --------------------------------------------------------------------------------------------
# The drivers: the foreach functions' signatures, plus the path to take when compiling fails
# --------------------------------------------------------------------------------------------
SCHEDULE_FREE = CompiledKernel(schedule_free_kernel)
PRODIGY_STATS = CompiledKernel(prodigy_stats_kernel)
PRODIGY_UPDATE = CompiledKernel(prodigy_update_kernel)
DUAL_ADAM_STATS = CompiledKernel(dual_adam_stats_kernel)
DADAPT_ADAM = CompiledKernel(dadapt_adam_kernel)
ADAM_UPDATE = CompiledKernel(adam_update_kernel)
KERNELS = (SCHEDULE_FREE, PRODIGY_STATS, PRODIGY_UPDATE, DUAL_ADAM_STATS, DADAPT_ADAM, ADAM_UPDATE)
"""Every kernel of the compiled path."""


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


def _stacked(values: list[tuple[Tensor, Tensor]], like: Tensor) -> tuple[Tensor, Tensor]:
    """Per-tensor ``(n, ℓ)`` pairs as two 1-D tensors in ``like``'s dtype and device."""
    if not values:
        return like.new_zeros(0), like.new_zeros(0)
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


def schedule_free_fused(
    ys: Sequence[Tensor],
    grads: Sequence[Tensor],
    zs: Sequence[Tensor],
    exp_avg_sqs: Sequence[Tensor] | None,
    *,
    lr: Tensor,
    c: Tensor,
    bias_correction2: Tensor | None,
    beta: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    fallback: Callable[..., None],
) -> None:
    """:func:`~lrkit.optim.schedule_free.schedule_free_multi_tensor` with :data:`SCHEDULE_FREE`.

    Same arguments, plus ``fallback``: the function (same signature) that runs on the tensors
    the kernel leaves (:meth:`CompiledKernel.apply`), or on all when it cannot be compiled.
    """
    scalars = pack(
        lr.device,
        lr=lr,
        c=c,
        bias_correction2=1.0 if bias_correction2 is None else bias_correction2,
        beta=beta,
        beta2=beta2,
        eps=eps,
        weight_decay=weight_decay,
    )
    lists = [ys, grads, zs, exp_avg_sqs]
    done = SCHEDULE_FREE.apply(lists, scalars)
    rest = list(range(len(ys))) if done is None else done[1]
    if rest:
        fallback(
            *_subset(lists, rest),
            lr=lr,
            c=c,
            bias_correction2=bias_correction2,
            beta=beta,
            beta2=beta2,
            eps=eps,
            weight_decay=weight_decay,
        )


def adam_stats_fused(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor] | None,
    exp_avg_sqs: list[Tensor],
    sums: list[Tensor],
    inits: list[Tensor] | None,
    *,
    direction: str,
    weight_decay: float,
    beta1: float,
    beta2: float,
    beta_s: float,
    m_scale: Tensor,
    scaled_v: bool,
    s_scale: Tensor,
    eps: float,
    out: Tensor,
    fallback: Callable[..., tuple[Tensor, Tensor]],
) -> tuple[Tensor, Tensor]:
    """:func:`~lrkit.optim._dadapt_core.adam_stats_foreach` with a compiled kernel.

    Same arguments and result, plus ``fallback`` (the function that runs on the tensors the
    kernel leaves, or on all when it cannot be compiled; its sums come after the kernel's).
    D-Adapt Adam's setting (``direction="dual"``, ``scaled_v=False``) runs
    :data:`DUAL_ADAM_STATS`; any other runs ``fallback`` (Prodigy has its own drivers,
    :func:`prodigy_stats_fused` and :func:`prodigy_update_fused`).
    """
    scalars = pack(
        out.device,
        weight_decay=weight_decay,
        beta1=beta1,
        beta2=beta2,
        beta_s=beta_s,
        m_scale=m_scale,
        s_scale=s_scale,
        eps=eps,
    )
    lists = [params, grads, exp_avgs, exp_avg_sqs, sums, inits]
    done = None
    if direction == "dual" and not scaled_v:
        done = DUAL_ADAM_STATS.apply(lists[:5], scalars, coupled=weight_decay != 0.0)
    results, rest = ([], list(range(len(params)))) if done is None else done
    sums_out = _stacked(results, out)
    if rest:
        more = fallback(
            *_subset(lists, rest),
            direction=direction,
            weight_decay=weight_decay,
            beta1=beta1,
            beta2=beta2,
            beta_s=beta_s,
            m_scale=m_scale,
            scaled_v=scaled_v,
            s_scale=s_scale,
            eps=eps,
            out=out,
        )
        sums_out = _concat(sums_out, more)
    return sums_out


def adam_update_fused(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor] | None,
    exp_avg_sqs: list[Tensor],
    *,
    weight_decay: float,
    m_scale: Tensor,
    decay: Tensor | None,
    step: Tensor | float,
    eps: Tensor | float,
    fallback: Callable[..., None],
) -> None:
    """:func:`~lrkit.optim._dadapt_core.adam_update_foreach` with :data:`ADAM_UPDATE`.

    Same arguments, plus ``fallback`` (the function that runs on the tensors the kernel leaves,
    or on all when it cannot be compiled).
    """
    scalars = pack(
        m_scale.device,
        weight_decay=weight_decay,
        m_scale=m_scale,
        decay=0.0 if decay is None else decay,
        step=step,
        eps=eps,
    )
    kernel_lists = [params, grads if exp_avgs is None else None, exp_avgs, exp_avg_sqs]
    done = ADAM_UPDATE.apply(kernel_lists, scalars)
    rest = list(range(len(params))) if done is None else done[1]
    if rest:
        fallback(
            *_subset([params, grads, exp_avgs, exp_avg_sqs], rest),
            weight_decay=weight_decay,
            m_scale=m_scale,
            decay=decay,
            step=step,
            eps=eps,
        )


def dadapt_adam_fused(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor] | None,
    exp_avg_sqs: list[Tensor],
    sums: list[Tensor],
    *,
    weight_decay: float,
    beta1: float,
    beta2: float,
    beta_s: float,
    m_scale: Tensor,
    s_scale: Tensor,
    eps: float,
    out: Tensor,
    fallback_stats: Callable[..., tuple[Tensor, Tensor]],
    fallback_update: Callable[..., None],
) -> tuple[Tensor, Tensor]:
    """A whole D-Adapt Adam step of a param group with :data:`DADAPT_ADAM`.

    Arguments as :func:`adam_stats_fused` (``direction="dual"``, ``scaled_v=False``). Valid
    only when the update takes no decoupled weight decay (see :func:`dadapt_adam_kernel`): the
    tensors the kernel leaves (or all, when it cannot be compiled) then take
    ``fallback_stats`` (:func:`~lrkit.optim._dadapt_core.adam_stats_foreach`'s signature) and
    at once ``fallback_update`` (:func:`~lrkit.optim._dadapt_core.adam_update_foreach`'s).

    Returns:
        The per-tensor ``(n, ℓ)`` as two 1-D tensors.
    """
    scalars = pack(
        out.device,
        weight_decay=weight_decay,
        beta1=beta1,
        beta2=beta2,
        beta_s=beta_s,
        m_scale=m_scale,
        s_scale=s_scale,
        eps=eps,
    )
    lists = [params, grads, exp_avgs, exp_avg_sqs, sums]
    done = DADAPT_ADAM.apply(lists, scalars, coupled=weight_decay != 0.0)
    results, rest = ([], list(range(len(params)))) if done is None else done
    sums_out = _stacked(results, out)
    if rest:
        x, g, m, v, s = _subset(lists, rest)
        more = fallback_stats(
            x,
            g,
            m,
            v,
            s,
            None,
            direction="dual",
            weight_decay=weight_decay,
            beta1=beta1,
            beta2=beta2,
            beta_s=beta_s,
            m_scale=m_scale,
            scaled_v=False,
            s_scale=s_scale,
            eps=eps,
            out=out,
        )
        fallback_update(
            x, g, m, v, weight_decay=weight_decay, m_scale=m_scale, decay=None, step=1.0, eps=eps
        )
        sums_out = _concat(sums_out, more)
    return sums_out


def prodigy_stats_fused(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor] | None,
    exp_avg_sqs: list[Tensor],
    sums: list[Tensor],
    inits: list[Tensor],
    *,
    weight_decay: float,
    beta1: float,
    beta2: float,
    beta_s: float,
    m_scale: Tensor,
    s_scale: Tensor,
    out: Tensor,
    fallback: Callable[..., tuple[Tensor, Tensor]],
) -> tuple[Tensor, Tensor, list[int]]:
    """Prodigy's statistics of a param group with :data:`PRODIGY_STATS`.

    Arguments as :func:`~lrkit.optim._dadapt_core.adam_stats_foreach` with
    ``direction="distance"`` and ``scaled_v=True``, plus ``fallback`` (that function, for the
    tensors the kernel leaves, or all when it cannot be compiled). The kernel updates ``s`` and
    takes the sums only; the moments of its tensors are updated by
    :func:`prodigy_update_fused`, which must be given the indices returned here. ``fallback``
    updates the moments of the others at once.

    Returns:
        The per-tensor ``(n, ℓ)`` as two 1-D tensors, and the indices of the tensors the kernel
        took.
    """
    scalars = pack(out.device, weight_decay=weight_decay, beta_s=beta_s, s_scale=s_scale)
    done = PRODIGY_STATS.apply([params, grads, sums, inits], scalars)
    results, rest = ([], list(range(len(params)))) if done is None else done
    sums_out = _stacked(results, out)
    left = set(rest)
    taken = [i for i in range(len(params)) if i not in left]
    if rest:
        lists = [params, grads, exp_avgs, exp_avg_sqs, sums, inits]
        more = fallback(
            *_subset(lists, rest),
            direction="distance",
            weight_decay=weight_decay,
            beta1=beta1,
            beta2=beta2,
            beta_s=beta_s,
            m_scale=m_scale,
            scaled_v=True,
            s_scale=s_scale,
            eps=0.0,
            out=out,
        )
        sums_out = _concat(sums_out, more)
    return sums_out[0], sums_out[1], taken


def prodigy_update_fused(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor] | None,
    exp_avg_sqs: list[Tensor],
    *,
    taken: list[int],
    weight_decay: float,
    beta1: float,
    beta2: float,
    m_scale: Tensor,
    m_next: Tensor,
    decay: Tensor | None,
    step: Tensor,
    eps: Tensor,
    fallback: Callable[..., None],
) -> None:
    r"""Prodigy's update of a param group after :func:`prodigy_stats_fused`.

    The tensors ``taken`` by the statistics kernel still need their moment updates (with the
    old ``d``, ``m_scale``): :data:`PRODIGY_UPDATE` does both in one sweep, and runs uncompiled
    on any of them it cannot take (the same equations). The other tensors, whose moments the
    fallback statistics updated, take ``fallback``.

    Args:
        params: Parameters ``x`` (updated).
        grads: Their gradients (read only).
        exp_avgs: First moments ``m``, or ``None`` when ``β1 = 0``.
        exp_avg_sqs: Second moments ``v``.
        taken: Indices returned by :func:`prodigy_stats_fused`.
        weight_decay: Coupled decay ``λ_c`` (0 for none or decoupled).
        beta1: ``β1``.
        beta2: ``β2``.
        m_scale: :math:`d_k`, the scale of the gradient in the moments.
        m_next: :math:`d_{k+1}`: :math:`m = d_{k+1} \hat g` when :math:`\beta_1 = 0`.
        decay: ``λ_d α`` for decoupled weight decay, or ``None``.
        step: ``α``.
        eps: ``e``, the denominator's :math:`d_{k+1} \epsilon`.
        fallback: :func:`~lrkit.optim._dadapt_core.adam_update_foreach` or its loop twin, called
            with ``m_scale=m_next``.
    """
    lists = [params, grads, exp_avgs, exp_avg_sqs]
    if taken:
        scalars = pack(
            step.device,
            weight_decay=weight_decay,
            beta1=beta1,
            beta2=beta2,
            m_scale=m_scale,
            m_next=m_next,
            decay=0.0 if decay is None else decay,
            step=step,
            eps=eps,
        )
        mine = _subset(lists, taken)
        done = PRODIGY_UPDATE.apply(mine, scalars)
        left = list(range(len(taken))) if done is None else done[1]
        for i in (taken[j] for j in left):  # the same equations, uncompiled
            m = None if exp_avgs is None else exp_avgs[i]
            x = params[i]
            prodigy_update_kernel(x, grads[i], m, exp_avg_sqs[i], scalars.to(x.device))
    taken_set = set(taken)
    rest = [i for i in range(len(params)) if i not in taken_set]
    if rest:
        fallback(
            *_subset(lists, rest),
            weight_decay=weight_decay,
            m_scale=m_next,
            decay=decay,
            step=step,
            eps=eps,
        )
