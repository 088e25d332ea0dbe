"""Fast paths of the alias-free resamplers and the filtered nonlinearity (``impl="fast"``).

Same results as the readable definitions in ``afcore.signal`` (``impl="ref"``), computed with less work:

- Kaiser FIR resampling is polyphase and separable: down-sampling filters each axis with a strided 1-D convolution,
  up-sampling splits the filter into ``factor`` phases per axis and interleaves them with ``pixel_shuffle``, so no
  zero-inserted tensor exists and a 13-tap filter costs 13/2 + 13 multiply-adds per output, not 169. Radially
  symmetric (jinc) kernels are not separable: they get the 2-D polyphase version of the same idea.
- Ideal resampling works on real FFTs of the input: up-sampling zero-pads its half-spectrum, down-sampling crops and
  folds it (the aliases of the kept band), so no full-size complex spectrum or mask multiply at the big size.
- The filtered nonlinearity (up-sample, activation, low-pass, down-sample) is one autograd function that keeps only
  its input for the backward pass and recomputes the up-sampled activation there (activation checkpointing): the
  4x-sized intermediates never outlive one call.

Precision: the filters run in float32 (float64 inputs stay float64) with autocast off; bf16/fp16 inputs are cast to
float32 inside and the result is cast back, so a bf16 model gets fp32 filters.

CUDA: ``filtered_activation`` may run through ``torch.compile`` (inductor, Triton kernels) when the tensor is on a
CUDA device, Triton can be imported and ``AFCORE_COMPILE`` is not ``0``. If compilation fails (no compiler, no
Triton), it warns once and falls back to the eager fast path below. The compiled path has not been verified on a GPU.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

NYQUIST = ("zero", "half")


class FirSpec(NamedTuple):
    """A Kaiser low-pass at ``1/factor`` of Nyquist, as ``afcore.signal._kaiser_taps`` designs it (hashable)."""
    factor: int
    numtaps: int
    beta: float
    radial: bool
    normalize: bool


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# ----------------------------------------------------------------------------------------------- padding
def _pad(x: torch.Tensor, lo: int, hi: int, dim: int, padding: str) -> torch.Tensor:
    """Pad ``lo`` / ``hi`` samples before / after along ``dim`` (circular wraps as often as needed, or zeros)."""
    if lo == 0 and hi == 0:
        return x
    n = x.shape[dim]
    if padding == "circular":
        idx = torch.arange(-lo, n + hi, device=x.device) % n
        return x.index_select(dim, idx)
    pad = [0, 0, 0, 0]
    pad[(-1 - dim) * 2:(-1 - dim) * 2 + 2] = [lo, hi]  # F.pad lists the last dim first
    return F.pad(x, pad)


# ----------------------------------------------------------------------------------------------- FIR kernels
def _phase_range(n: int, f: int) -> tuple[int, int]:
    """Smallest and largest s with 0 <= f*s + p + n//2 <= n-1 for some phase p in [0, f)."""
    half = n // 2
    return -((f - 1 + half) // f), (n - 1 - half) // f


def _phase_matrix(taps, f: int):
    """(f, K) correlation weights: phase p of the up-sampled output is ``sum_t xpad[i + t] w[p, t]``.

    Up-sampling by zero insertion then the centred filter ``taps`` gives out[f i + p] = sum_s x[i - s] taps[f s + p +
    half]; with the input padded by ``s_hi`` before and ``-s_lo`` after, the tap for offset t is s = s_hi - t.
    """
    import numpy as np

    n = len(taps)
    s_lo, s_hi = _phase_range(n, f)
    k = s_hi - s_lo + 1
    w = np.zeros((f, k))
    for p in range(f):
        for t in range(k):
            j = f * (s_hi - t) + p + n // 2
            if 0 <= j < n:
                w[p, t] = taps[j]
    return w


@functools.lru_cache(maxsize=64)
def _fir_weights(spec: FirSpec, device: torch.device, dtype: torch.dtype) -> dict:
    """Convolution weights of the fast Kaiser resamplers, built once per (filter, device, dtype)."""
    import numpy as np

    from afcore import signal

    taps = signal._kaiser_taps(spec.factor, spec.numtaps, spec.beta, spec.radial, spec.normalize)
    taps = taps.to(torch.float64).numpy()
    f = spec.factor
    n = taps.shape[-1]
    s_lo, s_hi = _phase_range(n, f)
    out = {"n": n, "up_pad": (s_hi, -s_lo), "half": n // 2}

    def tensor(a):
        return torch.tensor(np.ascontiguousarray(a), dtype=dtype, device=device)

    if taps.ndim == 1:
        phases = _phase_matrix(taps * f, f)  # gain f per axis (f**2 in all) folded into the taps
        k = phases.shape[1]
        out["up_h"] = tensor(phases.reshape(f, 1, k, 1))
        # W pass: grouped over the f H-phases, each with the same f W-phases -> channel py*f + px (pixel_shuffle)
        out["up_w"] = tensor(np.tile(phases, (f, 1)).reshape(f * f, 1, 1, k))
        flipped = taps[::-1]  # conv2d correlates
        out["down_h"] = tensor(flipped.reshape(1, 1, n, 1))
        out["down_w"] = tensor(flipped.reshape(1, 1, 1, n))
    else:
        # the 1-D phase map applied to tap indices (+1; 0 = no tap) places kernel row a / column b per (p, t)
        py_map = _phase_matrix(np.arange(1, n + 1, dtype=float), f)
        k = py_map.shape[1]
        w = np.zeros((f, f, k, k))
        for py in range(f):
            for px in range(f):
                for ty in range(k):
                    for tx in range(k):
                        a, b = int(py_map[py, ty]) - 1, int(py_map[px, tx]) - 1
                        if a >= 0 and b >= 0:
                            w[py, px, ty, tx] = taps[a, b] * f * f
        out["up_2d"] = tensor(w.reshape(f * f, 1, k, k))
        out["down_2d"] = tensor(taps[::-1, ::-1].reshape(1, 1, n, n))
    return out


def _as_images(x: torch.Tensor):
    """(..., H, W) -> (N, 1, H, W) in the compute dtype, plus what is needed to undo it."""
    lead, (h, w) = x.shape[:-2], x.shape[-2:]
    return x.reshape(-1, 1, h, w).to(compute_dtype(x.dtype)), lead


def fir_up(x: torch.Tensor, spec: FirSpec, padding: str = "circular") -> torch.Tensor:
    """Kaiser up-sampling (zero insertion, filter, gain factor**2) without the zero-inserted tensor."""
    f = spec.factor
    if f == 1:
        return x
    flat, lead = _as_images(x)
    h, w = flat.shape[-2:]
    wts = _fir_weights(spec, flat.device, flat.dtype)
    lo, hi = wts["up_pad"]
    with torch.autocast(flat.device.type, enabled=False):
        if "up_h" in wts:
            y = F.conv2d(_pad(flat, lo, hi, -2, padding), wts["up_h"])  # (N, f, H, W): the H phases
            y = F.conv2d(_pad(y, lo, hi, -1, padding), wts["up_w"], groups=f)  # (N, f*f, H, W)
        else:
            y = F.conv2d(_pad(_pad(flat, lo, hi, -2, padding), lo, hi, -1, padding), wts["up_2d"])
        y = F.pixel_shuffle(y, f)
    return y.reshape(*lead, h * f, w * f).to(x.dtype)


def fir_down(x: torch.Tensor, spec: FirSpec, padding: str = "circular") -> torch.Tensor:
    """Kaiser down-sampling (filter, keep every factor-th sample) as strided convolutions."""
    f = spec.factor
    if f == 1:
        return x
    flat, lead = _as_images(x)
    wts = _fir_weights(spec, flat.device, flat.dtype)
    half = wts["half"]
    with torch.autocast(flat.device.type, enabled=False):
        if "down_h" in wts:
            y = F.conv2d(_pad(flat, half, half, -2, padding), wts["down_h"], stride=(f, 1))
            y = F.conv2d(_pad(y, half, half, -1, padding), wts["down_w"], stride=(1, f))
        else:
            y = F.conv2d(_pad(_pad(flat, half, half, -2, padding), half, half, -1, padding), wts["down_2d"],
                         stride=f)
    return y.reshape(*lead, *y.shape[-2:]).to(x.dtype)


# ----------------------------------------------------------------------------------------------- ideal (FFT)
def _spectrum_pad(s: torch.Tensor, m: int, dim: int) -> torch.Tensor:
    """Full-FFT axis of n bins -> m > n bins: frequencies kept, zeros between, the Nyquist bin split in two."""
    n = s.shape[dim]
    s = s.movedim(dim, 0)
    zeros = s.new_zeros(m - n - (1 if n % 2 == 0 else 0), *s.shape[1:])
    if n % 2:
        out = torch.cat([s[:(n + 1) // 2], zeros, s[(n + 1) // 2:]])
    else:
        nyq = 0.5 * s[n // 2:n // 2 + 1]
        out = torch.cat([s[:n // 2], nyq, zeros, nyq, s[n // 2 + 1:]])
    return out.movedim(0, dim)


def _spectrum_crop(s: torch.Tensor, m: int, dim: int, nyquist: str) -> torch.Tensor:
    """Full-FFT axis of n bins -> m < n bins: the band |k| < m/2, and the new Nyquist bin (even m) zeroed or the
    sum of its two half-weighted aliases +m/2 and -m/2 (what low-pass then subsample leaves there)."""
    n = s.shape[dim]
    s = s.movedim(dim, 0)
    if m % 2:
        out = torch.cat([s[:(m + 1) // 2], s[n - (m - 1) // 2:]]) if m > 1 else s[:1]
    else:
        nyq = s[m // 2:m // 2 + 1]
        nyq = 0.5 * (nyq + s[n - m // 2:n - m // 2 + 1]) if nyquist == "half" else torch.zeros_like(nyq)
        out = torch.cat([s[:m // 2], nyq, s[n - m // 2 + 1:]])
    return out.movedim(0, dim)


def ideal_up(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Ideal up-sampling (``scipy.signal.resample`` per axis) from the input's real FFT."""
    if factor == 1:
        return x
    xc = x.to(compute_dtype(x.dtype))
    h, w = x.shape[-2:]
    with torch.autocast(x.device.type, enabled=False):
        spec = torch.fft.rfft2(xc)
        if w % 2 == 0:  # the old Nyquist column is split between +w/2 and -w/2 (the latter implied by symmetry)
            spec = torch.cat([spec[..., :-1], 0.5 * spec[..., -1:]], dim=-1)
        spec = F.pad(spec, (0, factor * w // 2 + 1 - spec.shape[-1]))
        spec = _spectrum_pad(spec, factor * h, -2)
        out = torch.fft.irfft2(spec, s=(factor * h, factor * w)) * factor**2
    return out.to(x.dtype)


def ideal_down(x: torch.Tensor, factor: int, nyquist: str = "zero") -> torch.Tensor:
    """Ideal low-pass at 1/factor of Nyquist then every factor-th sample, from the input's real FFT."""
    if factor == 1:
        return x
    xc = x.to(compute_dtype(x.dtype))
    h, w = x.shape[-2:]
    mh, mw = h // factor, w // factor
    with torch.autocast(x.device.type, enabled=False):
        spec = torch.fft.rfft2(xc)
        cols = spec[..., :mw // 2 + 1]
        if mw % 2 == 0:
            nyq = cols[..., -1:]
            if nyquist == "half":
                # the -mw/2 alias of row ky is the conjugate of +mw/2 at row -ky (Hermitian symmetry)
                partner = nyq.index_select(-2, (-torch.arange(h, device=x.device)) % h).conj()
                nyq = 0.5 * (nyq + partner)
            else:
                nyq = torch.zeros_like(nyq)
            cols = torch.cat([cols[..., :-1], nyq], dim=-1)
        spec = _spectrum_crop(cols, mh, -2, nyquist)
        out = torch.fft.irfft2(spec, s=(mh, mw)) / factor**2
    return out.to(x.dtype)


@functools.lru_cache(maxsize=64)
def _rfft_lowpass_mask(h: int, w: int, cutoff: float, edge: str, device: torch.device, dtype: torch.dtype):
    from afcore import signal

    my = signal._ideal_mask_1d(h, cutoff, edge=edge)
    mx = signal._ideal_mask_1d(w, cutoff, edge=edge)[:w // 2 + 1]
    return (my[:, None] * mx[None, :]).to(device=device, dtype=dtype)


def ideal_lowpass(x: torch.Tensor, cutoff: float, edge: str = "half") -> torch.Tensor:
    """Square ideal low-pass through the real FFT with a cached half-spectrum mask."""
    xc = x.to(compute_dtype(x.dtype))
    h, w = x.shape[-2:]
    with torch.autocast(x.device.type, enabled=False):
        mask = _rfft_lowpass_mask(h, w, float(cutoff), edge, x.device, xc.dtype)
        out = torch.fft.irfft2(torch.fft.rfft2(xc) * mask, s=(h, w))
    return out.to(x.dtype)


# ----------------------------------------------------------------------------------------------- filtered act
def _resamplers(up: int, method: str, spec: FirSpec | None, padding: str, nyquist: str):
    if method == "ideal":
        return (lambda t: ideal_up(t, up)), (lambda t: ideal_down(t, up, nyquist))
    return (lambda t: fir_up(t, spec, padding)), (lambda t: fir_down(t, spec, padding))


def _filtered_eager(x, act, up, method, spec, padding, nyquist):
    up_fn, down_fn = _resamplers(up, method, spec, padding, nyquist)
    xc = x.to(compute_dtype(x.dtype))
    with torch.autocast(x.device.type, enabled=False):
        return down_fn(act(up_fn(xc)))


class _FilteredActivation(torch.autograd.Function):
    """y = down(act(up(x))); saves only x and recomputes up(x) and act in backward (once differentiable)."""

    @staticmethod
    def forward(ctx, x, act, up, method, spec, padding, nyquist, fn):
        ctx.save_for_backward(x)
        ctx.args = (act, up, method, spec, padding, nyquist, fn)
        return fn(x, act, up, method, spec, padding, nyquist).to(x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        act, up, method, spec, padding, nyquist, fn = ctx.args
        with torch.enable_grad():
            leaf = x.detach().to(compute_dtype(x.dtype)).requires_grad_(True)
            y = fn(leaf, act, up, method, spec, padding, nyquist)
            (gx,) = torch.autograd.grad(y, leaf, grad.to(y.dtype))
        return gx.to(x.dtype), None, None, None, None, None, None, None


_COMPILED: dict = {}
_COMPILE_FAILED: list = []


def _compiled_fn():
    """``torch.compile`` of the eager filtered activation (CUDA only); None when unavailable or disabled."""
    if _COMPILE_FAILED or os.environ.get("AFCORE_COMPILE", "1") == "0":
        return None
    if importlib.util.find_spec("triton") is None:
        return None
    if "fn" not in _COMPILED:
        _COMPILED["fn"] = torch.compile(_filtered_eager, dynamic=False)
    return _COMPILED["fn"]


def filtered_activation(x: torch.Tensor, act, up: int = 2, method: str = "ideal", spec: FirSpec | None = None,
                        padding: str = "circular", nyquist: str = "zero") -> torch.Tensor:
    """Fused ``down(act(up(x)))``: the fast resamplers, input-only saved state, optional compiled path on CUDA.

    ``act`` is a parameter-free elementwise callable (an ``nn.Module`` with parameters would get no gradient here:
    callers route those through the unfused path).
    """
    fn = _filtered_eager
    if x.is_cuda and _compiled_fn() is not None:
        fn = _guarded(_compiled_fn())
    if torch.is_grad_enabled() and x.requires_grad:
        return _FilteredActivation.apply(x, act, up, method, spec, padding, nyquist, fn)
    with torch.no_grad():
        return fn(x, act, up, method, spec, padding, nyquist).to(x.dtype)


def _guarded(compiled):
    """The compiled function, falling back (with one warning) to the eager path if compilation fails."""
    def call(*args):
        if _COMPILE_FAILED:
            return _filtered_eager(*args)
        try:
            return compiled(*args)
        except Exception as err:  # noqa: BLE001 -- any compiler failure: fall back, say so once
            warnings.warn(f"afcore.fastops: torch.compile failed ({type(err).__name__}: {err}); "
                          "using the eager fast path", RuntimeWarning, stacklevel=3)
            _COMPILE_FAILED.append(True)
            return _filtered_eager(*args)
    return call
