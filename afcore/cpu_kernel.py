"""The compiled CPU kernel of the Kaiser (FIR) resamplers and the fused filtered activation.

``afcore/csrc/filtered_act.cpp`` evaluates, one feature-map plane at a time, the polyphase FIR up-sampler, the
FIR down-sampler and ``down(act(up(x)))`` with its input gradient, keeping the ``factor**2``-sized intermediate in a
per-thread buffer that stays in cache. It does only the banded work, skipping taps that vanish (a half-band filter's
even taps), with its sums held in registers and float32 activations vectorised (the source's header says how), instead
of the dense resampling matrices of the PyTorch fast path (numbers in ``metrics/bench_signal.json``).

A 2-D kernel is passed as a sum of separable terms: one term for the separable Kaiser sinc, the singular value
decomposition of the kernel for radial (jinc) ones (for a 3x3 jinc, 2 terms), so one code path serves both.

Build: at first use, with the C++ compiler on PATH (``$CXX``, else ``g++``/``c++``), into a cache folder keyed by
the source, the flags, the CPU and the torch version (``$AFCORE_KERNEL_CACHE``, default ``~/.cache/afcore``), written
under a temporary name and renamed, so nothing half-built is ever loaded. It is linked against libtorch to split its
planes over PyTorch's own thread pool; if that build fails, it is built with threads of its own (one warning). No
compiler, or no build at all: one warning, and ``afcore.fastops`` keeps its PyTorch path (same results).
``AFCORE_CPU_KERNEL=0`` switches the kernel off.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from afcore import filters

SOURCE = Path(__file__).with_name("csrc") / "filtered_act.cpp"
FLAGS = ("-O3", "-march=native", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math",
         "-fno-tree-loop-distribute-patterns", "-std=c++17", "-fPIC", "-shared", "-pthread")
MODES = {"up": 0, "down": 1, "fused": 2, "fused_grad": 3}
_STATE: dict = {}

# Elementwise activations the kernel knows: module types and functions -> (code, parameter)
ACT_CODES = {nn.Identity: 0, nn.ReLU: 1, nn.LeakyReLU: 2, nn.SiLU: 3, nn.GELU: 4, nn.Tanh: 6, nn.Sigmoid: 7}
FN_CODES = {torch.relu: 1, torch.nn.functional.relu: 1, torch.nn.functional.silu: 3, torch.nn.functional.gelu: 4,
            torch.tanh: 6, torch.sigmoid: 7}


def activation_code(act) -> tuple[int, float] | None:
    """(code, parameter) of an activation the kernel evaluates itself, or None (the caller then falls back)."""
    if type(act) in ACT_CODES:
        code = ACT_CODES[type(act)]
        if isinstance(act, nn.GELU):
            return (5, 0.0) if act.approximate == "tanh" else (4, 0.0)
        if isinstance(act, nn.LeakyReLU):
            return code, float(act.negative_slope)
        return code, 0.0
    try:
        return (FN_CODES[act], 0.0) if act in FN_CODES else None
    except TypeError:  # unhashable callables
        return None


def _cpu_id() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        keep = [ln for ln in lines if ln.startswith(("model name", "flags"))][:2]
        return "\n".join(keep)
    except OSError:
        return platform.processor()


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _aten_flags() -> tuple[str, ...]:
    """Compile and link flags that let the kernel split its planes over PyTorch's own intra-op thread pool
    (``at::parallel_for``). With threads of its own, the kernel would compete on a small machine with PyTorch's
    OpenMP workers, which spin for a while after every PyTorch op: on 2 cores that made 2 threads no faster than 1."""
    from torch.utils import cpp_extension

    lib_dirs = cpp_extension.library_paths()
    return (*(f"-I{p}" for p in cpp_extension.include_paths()), "-DAFK_ATEN=1", "-fopenmp",
            f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
            *(f"-L{p}" for p in lib_dirs), *(f"-Wl,-rpath,{p}" for p in lib_dirs), "-lc10", "-ltorch_cpu")


def build(cache: Path | None = None, aten: bool = True) -> Path:
    """Compile the kernel (or find it already compiled) and return the shared library's path.

    ``aten``: link against PyTorch to use its thread pool (the default); without, the kernel starts threads of its
    own (the fallback when that build fails)."""
    cxx = _compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found (set CXX, or install g++)")
    cache = Path(cache or os.environ.get("AFCORE_KERNEL_CACHE", Path.home() / ".cache" / "afcore"))
    flags = FLAGS + (_aten_flags() if aten else ())
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join(flags).encode() + cxx.encode() + _cpu_id().encode()
                         + torch.__version__.encode())
    lib = cache / f"filtered_act-{key.hexdigest()[:16]}.so"
    if lib.exists():
        return lib
    cache.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache)
    os.close(fd)
    try:
        # the source first, the libraries after it: the linker resolves left to right
        proc = subprocess.run([cxx, str(SOURCE), *flags, "-o", tmp], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{cxx} failed: {proc.stderr.strip()[-2000:]}")
        os.replace(tmp, lib)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return lib


def _load() -> ctypes.CDLL:
    """The library linked against PyTorch's thread pool, else (that build failed) the one with its own threads."""
    try:
        return ctypes.CDLL(str(build()))
    except (RuntimeError, OSError) as err:
        first = err
    try:
        lib = ctypes.CDLL(str(build(aten=False)))
    except (RuntimeError, OSError):
        raise first from None
    warnings.warn(f"afcore.cpu_kernel: built without PyTorch's thread pool ({first}); the kernel starts its own "
                  "threads", RuntimeWarning, stacklevel=3)
    return lib


def library():
    """The loaded kernel, or None (switched off, no compiler, or the build failed: warned once)."""
    if os.environ.get("AFCORE_CPU_KERNEL", "1") == "0":
        return None
    if "lib" not in _STATE:
        try:
            lib = _load()
            lib.afk_run.restype = ctypes.c_int
            lib.afk_run.argtypes = ([ctypes.c_int] * 2 + [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 3
                                    + ([ctypes.c_int] * 4 + [ctypes.c_void_p] * 2) * 3
                                    + [ctypes.c_int, ctypes.c_int, ctypes.c_double, ctypes.c_int])
            _STATE["lib"] = lib
        except (RuntimeError, OSError) as err:
            warnings.warn(f"afcore.cpu_kernel: the CPU kernel is not available ({err}); using the PyTorch fast path",
                          RuntimeWarning, stacklevel=2)
            _STATE["lib"] = None
    return _STATE["lib"]


def available() -> bool:
    return library() is not None


@functools.lru_cache(maxsize=64)
def _terms(spec, role: str) -> tuple[np.ndarray, np.ndarray]:
    """Separable terms (a_r, b_r), float64 (rank, n), of one resampler of ``spec`` with its gain included.

    role: "up" (gain factor**2, split factor per axis), "down" (gain 1), and their adjoints: "up_adj" is the up-
    sampler's adjoint written as a down-sampler (flipped kernel times factor**2), "down_adj" the down-sampler's
    adjoint written as an up-sampler (the flipped kernel, gain 1). With odd ``numtaps`` the centre offset stays
    ``numtaps // 2``."""
    taps = filters.taps_array(spec)
    f = spec.factor
    if role.endswith("_adj"):
        taps = taps[::-1, ::-1] if taps.ndim == 2 else taps[::-1]
    gain = {"up": f * f, "down": 1.0, "up_adj": f * f, "down_adj": 1.0}[role]
    if taps.ndim == 1:
        a = b = taps * np.sqrt(gain)
        return np.ascontiguousarray(a[None]), np.ascontiguousarray(b[None])
    u, s, vt = np.linalg.svd(taps * gain)
    keep = s > s[0] * 1e-13
    a = u[:, keep] * np.sqrt(s[keep])
    b = vt[keep].T * np.sqrt(s[keep])
    return np.ascontiguousarray(a.T), np.ascontiguousarray(b.T)


def _filter_args(spec, role: str) -> list:
    a, b = _terms(spec, role)
    return [a.shape[0], spec.numtaps, spec.numtaps // 2, spec.factor, a.ctypes.data, b.ctypes.data]


def run(mode: str, x: torch.Tensor, spec, padding: str, act=None, grad: torch.Tensor | None = None,
        threads: int | None = None, adjoint: bool = False) -> torch.Tensor:
    """One kernel call on the planes of x (..., H, W), float32 or float64, CPU.

    mode "up": (..., fH, fW); "down": (..., H/f, W/f); "fused": down(act(up x)); "fused_grad": the input gradient
    of "fused" for the output gradient ``grad``. ``act`` must be one ``activation_code`` knows. ``adjoint`` (modes
    "up" and "down"): the adjoint of the other resampler instead, i.e. the gradient of ``down`` (an up-sampling) or
    of ``up`` (a down-sampling)."""
    lib = library()
    if lib is None:
        raise RuntimeError("the CPU kernel is not available")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {tuple(MODES)}, got {mode!r}")
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"x must be a float32/float64 CPU tensor, got {x.dtype} on {x.device}")
    f = spec.factor
    h, w = x.shape[-2:]
    if mode == "down":
        if h % f or w % f:
            raise ValueError(f"input size {(h, w)} must be divisible by factor={f}")
        h, w = h // f, w // f
    out_hw = (f * h, f * w) if mode == "up" else (h, w)
    code, param = (0, 0.0)
    if mode.startswith("fused"):
        found = activation_code(act)
        if found is None:
            raise ValueError(f"activation {act!r} is not one the CPU kernel knows ({sorted(t.__name__ for t in ACT_CODES)})")
        code, param = found
    xc = x.detach().contiguous()
    gc = None
    if mode == "fused_grad":
        if grad is None or grad.shape != x.shape:
            raise ValueError("mode 'fused_grad' needs grad of x's shape")
        gc = grad.detach().to(x.dtype).contiguous()
    planes = xc.numel() // (xc.shape[-1] * xc.shape[-2]) if xc.numel() else 0
    out = torch.empty(*x.shape[:-2], *out_hw, dtype=x.dtype, device=x.device)
    if planes == 0:
        return out
    if adjoint and mode not in ("up", "down"):
        raise ValueError(f"adjoint applies to modes 'up' and 'down', got mode {mode!r}")
    up_a = _filter_args(spec, "down_adj" if adjoint else "up")
    up_b = _filter_args(spec, "down_adj")
    down = _filter_args(spec, "up_adj" if mode == "fused_grad" or adjoint else "down")
    threads = threads or torch.get_num_threads()
    rc = lib.afk_run(0 if x.dtype == torch.float32 else 1, MODES[mode], xc.data_ptr(),
                     gc.data_ptr() if gc is not None else None, out.data_ptr(), planes, h, w,
                     *up_a, *up_b, *down, int(padding == "circular"), code, param, int(threads))
    if rc != 0:
        raise RuntimeError(f"afk_run returned {rc}")
    return out
