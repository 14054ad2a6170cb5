r"""The optional compiled path of the Adam-family optimizers: fused sweeps over each tensor.

The loop and ``torch._foreach_*`` paths of an optimizer run its update as a sequence of
operations on whole tensors; each reads and writes full tensors and most allocate a temporary,
so a step moves several times the bytes it must. Here the same equations are written once more
as *per-tensor kernels*: plain functions of one parameter's tensors and a few numbers that
``torch.compile`` (inductor: vectorized C++ on CPU, Triton on GPU) turns into one loop over the
elements, reading each tensor once and writing each result once. Counted in sweeps over tensors
of the parameters' size (a read or a write of one tensor), a step takes:

* Schedule-Free AdamW (:mod:`.schedule_free`): one kernel, read y g z v, write y z v: 7, as
  torch's fused AdamW.
* Prodigy (:mod:`.dadapt`): the statistics read x g x0 s and write s, reducing both sums
  (:math:`\langle \hat g, x_0 - x \rangle`, :math:`\lVert s \rVert_1`) in the same loop; the
  update, which needs the new ``d``, reads x g m v and writes x m v (the moments use the old
  ``d`` and wait for it): 12.
* D-Adapt Adam (:mod:`.dadapt`): one kernel, since its update needs nothing of this step's
  sums, but two loops: the numerator :math:`\langle \hat g, s / (\sqrt v + \epsilon) \rangle`
  reads g s v (and x with coupled decay) before the second loop overwrites them (inductor does
  not fuse a sum with a later overwrite of what it reads, and in torch 2.13 its outer-loop
  fusion of per-row sums with the rows' writes fails to compile, a ``KeyError`` inside
  inductor's C++ code generation): 12,
  or 14 with decoupled weight decay, whose factor depends on whether the step made progress
  (two kernels).

Tests prove every kernel equal to the loop path of its optimizer (float32 to rounding over 100+
steps, float64 to 1e-12). :mod:`.base` holds the plumbing below.

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

from lrkit.optim._compiled.base import (
    _PROBE_NUMEL,
    _RECOMPILE_LIMIT,
    MIN_NUMEL,
    SUPPORTED_DEVICE_TYPES,
    CompiledKernel,
    Lists,
    _concat,
    _flatten,
    _on,
    _stacked,
    _subset,
    check_fused,
    pack,
    scalar,
)
from lrkit.optim._compiled.dadapt import (
    ADAM_UPDATE,
    DADAPT_ADAM,
    DUAL_ADAM_STATS,
    PRODIGY_STATS,
    PRODIGY_UPDATE,
    adam_stats_fused,
    adam_update_fused,
    adam_update_kernel,
    dadapt_adam_fused,
    dadapt_adam_kernel,
    dual_adam_stats_kernel,
    prodigy_stats_fused,
    prodigy_stats_kernel,
    prodigy_update_fused,
    prodigy_update_kernel,
)
from lrkit.optim._compiled.schedule_free import (
    SCHEDULE_FREE,
    schedule_free_fused,
    schedule_free_kernel,
)

__all__ = [
    "ADAM_UPDATE",
    "DADAPT_ADAM",
    "DUAL_ADAM_STATS",
    "KERNELS",
    "MIN_NUMEL",
    "PRODIGY_STATS",
    "PRODIGY_UPDATE",
    "SCHEDULE_FREE",
    "SUPPORTED_DEVICE_TYPES",
    "_PROBE_NUMEL",
    "_RECOMPILE_LIMIT",
    "CompiledKernel",
    "Lists",
    "_concat",
    "_flatten",
    "_on",
    "_stacked",
    "_subset",
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

KERNELS = (
    SCHEDULE_FREE,
    PRODIGY_STATS,
    PRODIGY_UPDATE,
    DUAL_ADAM_STATS,
    DADAPT_ADAM,
    ADAM_UPDATE,
)
"""Every kernel of the compiled path."""
