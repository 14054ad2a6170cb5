r"""The optional compiled path of the Adam-family optimizers: fused sweeps over each tensor.

The loop and ``torch._foreach_*`` paths of an optimizer run its update as a sequence of
operations on whole tensors; each reads and writes full tensors and most allocate a temporary,
so a step moves several times the bytes it must. Here the same equations are written once more
as *per-tensor kernels*: one loop over the elements that reads each tensor once and writes each
result once. Each kernel exists twice:

* in C++ (:mod:`.native`, ``kernels.cpp``), vectorized by hand with ATen's SIMD type like
  torch's own fused AdamW, for float32 and float64 CPU tensors of any size: built once per
  machine in seconds, one call per list of tensors;
* as a plain Python function of one parameter's tensors, which ``torch.compile`` (inductor:
  vectorized C++ on CPU, Triton on GPU) turns into a loop, for the tensors of other dtypes
  (bfloat16, float16) of 64K elements or more; its first step compiles for tens of seconds.

Tensors neither takes run on the optimizer's own path. Counted in sweeps over tensors of the
parameters' size (a read or a write of one tensor), a step takes:

* Schedule-Free AdamW (:mod:`.schedule_free`): one kernel, read y g z v, write y z v: 7, as
  torch's fused AdamW.
* Prodigy (:mod:`.dadapt`): the statistics read x g x0 s and write s, reducing both sums
  (:math:`\langle \hat g, x_0 - x \rangle`, :math:`\lVert s \rVert_1`) in the same loop; the
  update, which needs the new ``d``, reads x g m v and writes x m v (the moments use the old
  ``d`` and wait for it): 12.
* D-Adapt Adam (:mod:`.dadapt`): one kernel, since its update needs nothing of this step's
  sums: read x g m v s, write x m v s, 9 in the native kernel. Inductor makes two loops of it,
  12 sweeps: the numerator :math:`\langle \hat g, s / (\sqrt v + \epsilon) \rangle` reads g s
  v (and x with coupled decay) before the second loop overwrites them (inductor does not fuse a
  sum with a later overwrite of what it reads, and in torch 2.13 its outer-loop fusion of
  per-row sums with the rows' writes fails to compile, a ``KeyError`` inside inductor's C++
  code generation). With decoupled weight decay, whose factor depends on whether the step made
  progress, two kernels: 14 sweeps.

Tests prove every kernel, on both paths, equal to the loop path of its optimizer (float32 to
rounding over 100+ steps, float64 to 1e-12); the native kernels' results do not depend on the
number of threads. :mod:`.base` holds the plumbing below.

How the kernels are compiled and called (:class:`CompiledKernel`):

* The native kernels come first (:meth:`CompiledKernel.apply` calls its kernel's
  :class:`~lrkit.optim._compiled.native.NativeKernel`); the tensors they leave go on to the
  ``torch.compile`` kernels as follows.
* Every number, hyperparameters included, reaches a kernel inside one 1-D float64 tensor
  (:func:`pack`): a new ``d``, a scheduled ``lr`` or another group's ``weight_decay`` never
  recompiles, and the compiled call checks one argument instead of seven.
* What is compiled is the kernel run over a list of parameters' tensors
  (:attr:`CompiledKernel.each`; the compiler unrolls the list and inductor emits the loops of
  all its tensors in one graph, on CPU in one generated function). A step makes one call per
  param group, device and dtype, cut into calls of at most :data:`MAX_TENSORS` (64) tensors,
  and wherever a tensor shares its storage with one already in the call (views into one
  buffer: the compiler would merge them into one input and copy it whole). A compiled call
  costs tens of microseconds of host time (its guards check every tensor, then one call into
  the generated code), once per call instead of once per tensor.
* Tensors are passed flattened to 1-D with dynamic sizes (``torch.compile(dynamic=True)``),
  so a new size compiles nothing new by itself; a graph is specific to the number of tensors
  of a call and the equalities among their sizes, which are fixed for an optimizer: the first
  step compiles at most once per group (a list of the same length reuses the graph), and a
  later optimizer with other lists compiles once more, never per step. Tensors under
  :data:`MIN_NUMEL` (64K) elements take the optimizer's own path (loop or foreach): including
  them would save a fraction of a millisecond per step and compile several times longer. So
  do tensor subclasses and layouts that do not flatten to a dense 1-D view. The kernels'
  per-tensor results and the fallback's are simply concatenated.
* Compiling happens at a call's first run, on the call's own tensors, and finishes before any
  of them is touched. If it fails (no C++ compiler, an unsupported Python or platform), a
  warning is issued once and the tensors of that call and of every later one take the
  optimizer's ``foreach`` choice (loop or foreach path), with the same results; calls of the
  step that ran compiled before the failure keep their results.
* Inside a graph that ``torch.compile`` is already tracing (a compiled training step), the
  kernel function is called as is and traced with it.

Choosing the path: the optimizers take ``fused: bool | None = None``. ``None`` (the default) and
``False`` run the foreach or loop path; ``True`` runs the fused kernels, for CPU parameters
(see :data:`SUPPORTED_DEVICE_TYPES`). The default is off because the kernels must be built
first (the native library in 3-4 s on a 2-core CPU, once per machine: it is cached on disk;
``torch.compile``'s kernels in tens of seconds) and because a fused step's float32 rounding
differs from the default path's, which would change every stored result of a run. Measured on
a shared 2-core CPU with ~10M float32 parameters in 50 tensors, a fused step of Schedule-Free
AdamW, Prodigy or D-Adapt Adam takes 1.0-1.9x the time of torch's fused AdamW, against 4.7-5.2x for
the default paths (``docs/benchmarks.md``).
``fused`` is an attribute of the optimizer, not a hyperparameter of a param group, so a
``state_dict`` does not record it: a checkpoint saved on one path resumes on the other.

Memory: the kernels write their results into the state tensors and the parameters and return
only 0-dim sums, so a step allocates no temporaries of the parameters' size and nothing beyond
the optimizer's documented state is kept.
"""

from __future__ import annotations

from lrkit.optim._compiled.base import (
    _RECOMPILE_LIMIT,
    MAX_TENSORS,
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
    "MAX_TENSORS",
    "MIN_NUMEL",
    "PRODIGY_STATS",
    "PRODIGY_UPDATE",
    "SCHEDULE_FREE",
    "SUPPORTED_DEVICE_TYPES",
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
