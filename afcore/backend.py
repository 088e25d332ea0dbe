"""Which engine runs a fast alias-free op: the compiled CPU kernel, the Triton kernel, ``torch.compile`` or eager
PyTorch. ``afcore.fastops`` computes; this module decides, per call, from the tensor, the filter and the switches:

- **compiled CPU kernel** (``afcore.cpu_kernel``): a CPU tensor, a Kaiser filter (separable sinc or radial jinc),
  planes of at least ``KERNEL_MIN_SIDE`` px (the lone separable resamplers: ``KERNEL_MIN_SIDE_RESAMPLER``), an
  activation the kernel knows, and the kernel built (``AFCORE_CPU_KERNEL=0``, read by ``cpu_kernel.library``,
  switches it off for every caller). ``no_cpu_kernel()`` switches it off for a block of code (benchmarks, tests).
- **Triton kernel** (``afcore.triton_kernel``), forward of the filtered activation only: ``AFCORE_TRITON=1``, a CUDA
  tensor (or ``TRITON_INTERPRET=1``, Triton's CPU interpreter, as in the tests), a separable factor-2 Kaiser filter
  and an activation it knows. After one failure (``triton_failed``: one warning) it is not tried again.
- **torch.compile** of the eager filtered activation: ``AFCORE_COMPILE=1``, a CUDA tensor (the caller checks) and
  Triton importable. After one failure (``compile_failed``: one warning) it is not tried again.
- otherwise the **eager** PyTorch fast path.

The switches are read at every call, so a test or a benchmark can set them with ``monkeypatch.setenv`` or around a
block of code. This module imports the kernels only inside the functions that need them (no import at start-up, and
no import cycle: the kernels never import it).
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import warnings

import torch

from afcore.filters import FirSpec

KERNEL_MIN_SIDE = 16  # planes (low-rate side) from which the compiled CPU kernel beat the PyTorch path (bench)
# lone resamplers (low-rate side): the kernel beat the matrix products for separable filters from these sizes on
# (at 16 px the two were within the run-to-run noise for up-sampling: notebook 05's routes, bench's kernel_vs_torch);
# for radial 3x3 kernels PyTorch's depthwise convolutions were as fast or faster at every size (bench:
# goals.kernel_vs_torch), so those stay on the PyTorch path (inside the fused activation the kernel wins)
KERNEL_MIN_SIDE_RESAMPLER = {"up": 32, "down": 32}


def env_flag(name: str) -> bool:
    """Whether the switch ``name`` is on (set to exactly ``1``; unset or anything else is off)."""
    return os.environ.get(name, "0") == "1"


# ----------------------------------------------------------------------------------------------- CPU kernel
_KERNEL_OFF: list = []


@contextlib.contextmanager
def no_cpu_kernel():
    """Run the block on the PyTorch fast path even where the compiled kernel would be taken (benchmarks, tests)."""
    _KERNEL_OFF.append(True)
    try:
        yield
    finally:
        _KERNEL_OFF.pop()


def use_kernel(x: torch.Tensor, act, spec: FirSpec | None, side: int | None = None) -> bool:
    """The compiled CPU kernel (``afcore.cpu_kernel``) for a Kaiser filter (separable sinc or radial jinc) on a CPU
    tensor whose low-rate planes have ``side`` >= ``KERNEL_MIN_SIDE`` px (default: x's larger side); ``act`` None
    for a lone resampler, else an activation the kernel knows."""
    side = max(x.shape[-2:]) if side is None else side
    if _KERNEL_OFF or spec is None or x.device.type != "cpu" or side < KERNEL_MIN_SIDE:
        return False
    from afcore import cpu_kernel

    if act is not None and cpu_kernel.activation_code(act) is None:
        return False
    return cpu_kernel.available()


def use_kernel_resampler(x: torch.Tensor, spec: FirSpec, kind: str) -> bool:
    """The compiled kernel for a lone up- or down-sampler (``kind``): separable Kaiser filters, large enough planes."""
    side = max(x.shape[-2:]) // (spec.factor if kind == "down" else 1)
    return (not spec.radial and side >= KERNEL_MIN_SIDE_RESAMPLER[kind]
            and use_kernel(x, None, spec, side=side))


# ----------------------------------------------------------------------------------------------- Triton
_TRITON_FAILED: list = []


def use_triton(x: torch.Tensor, act, spec: FirSpec | None) -> tuple[int, float] | None:
    """(activation code, parameter) when the forward pass should run in the Triton kernel (``afcore.triton_kernel``):
    asked for with ``AFCORE_TRITON=1`` (it has not been verified on a GPU yet), a CUDA tensor (or Triton's CPU
    interpreter, as in the tests), a separable factor-2 Kaiser filter and an activation it knows; else None."""
    if not env_flag("AFCORE_TRITON") or _TRITON_FAILED or spec is None:
        return None
    from afcore import cpu_kernel, triton_kernel

    found = cpu_kernel.activation_code(act)
    on_device = x.is_cuda or env_flag("TRITON_INTERPRET")
    if found is None or not on_device or not triton_kernel.available() or not triton_kernel.supports(spec, found[0]):
        return None
    return found


def triton_failed(err: Exception, stacklevel: int = 2) -> None:
    """Record a failure of the Triton kernel (it is not tried again) and say so, once."""
    warnings.warn(f"afcore.fastops: the Triton kernel failed ({type(err).__name__}: {err}); using the eager "
                  "fast path", RuntimeWarning, stacklevel=stacklevel + 1)
    _TRITON_FAILED.append(True)


# ----------------------------------------------------------------------------------------------- torch.compile
_COMPILED: dict = {}
_COMPILE_FAILED: list = []


def compile_has_failed() -> bool:
    return bool(_COMPILE_FAILED)


def compiled(fn):
    """``torch.compile`` of ``fn`` (the eager filtered activation; CUDA, opt-in with ``AFCORE_COMPILE=1``), built
    once; None when not asked for, Triton is missing, or compiling failed before."""
    if _COMPILE_FAILED or not env_flag("AFCORE_COMPILE"):
        return None
    if importlib.util.find_spec("triton") is None:
        return None
    if fn not in _COMPILED:
        _COMPILED[fn] = torch.compile(fn, dynamic=False)
    return _COMPILED[fn]


def compile_failed(err: Exception, stacklevel: int = 2) -> None:
    """Record a failure of ``torch.compile`` (the eager path from now on) and say so, once."""
    warnings.warn(f"afcore.fastops: torch.compile failed ({type(err).__name__}: {err}); "
                  "using the eager fast path", RuntimeWarning, stacklevel=stacklevel + 1)
    _COMPILE_FAILED.append(True)


__all__ = ["KERNEL_MIN_SIDE", "KERNEL_MIN_SIDE_RESAMPLER", "env_flag", "no_cpu_kernel", "use_kernel",
           "use_kernel_resampler", "use_triton", "triton_failed", "compiled", "compile_has_failed", "compile_failed"]


def code_path() -> dict:
    """Which engines this process would take, for run fingerprints and metrics: the compiled CPU kernel (built and
    switched on), the Triton and torch.compile switches, and the thread count. Two runs agree bit for bit only when
    these agree too (the kernels sum in another order than PyTorch)."""
    from afcore import cpu_kernel

    return {"cpu_kernel": bool(not _KERNEL_OFF and cpu_kernel.available()), "triton": env_flag("AFCORE_TRITON"),
            "compile": env_flag("AFCORE_COMPILE"), "threads": torch.get_num_threads()}
