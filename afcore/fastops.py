"""Fast paths of the alias-free resamplers and the filtered nonlinearity (``impl="fast"``).

Same results as the readable definitions in ``afcore.signal`` (``impl="ref"``), computed with less work:

- Separable resamplers (ideal, and Kaiser-windowed sinc) are two small matrix products per image, ``M_h x M_w^T``,
  with the 1-D resampling matrices built once per (size, filter, device, dtype) and cached. The matrix holds the
  whole operation: zero insertion, filter (circular or zero padding), gain, every-f-th sample. For the feature-map
  sizes of these models (up to a few hundred pixels) BLAS does this far faster than FFTs or depthwise convolutions
  on a CPU, and on a GPU it is a batched GEMM (run with TF32 off, so the filters stay fp32-exact). Axes longer than
  ``MATMUL_MAX`` fall back to real FFTs (ideal: zero-padded or cropped half-spectra) or strided convolutions (FIR).
- Radially symmetric (jinc) kernels are not separable: they run as one depthwise (transposed) convolution in
  channels-last layout, where oneDNN's depthwise kernels are several times faster than in NCHW.
- The filtered nonlinearity (up-sample, activation, low-pass, down-sample) is one autograd function that keeps only
  its input for the backward pass and recomputes the up-sampled activation there (activation checkpointing): the
  4x-sized intermediates never outlive one call.
- On a CPU, the filtered nonlinearity with a Kaiser filter (separable sinc or radial jinc) on planes of
  ``backend.KERNEL_MIN_SIDE`` px or more, and the lone separable resamplers from
  ``backend.KERNEL_MIN_SIDE_RESAMPLER``, run in the compiled kernel of ``afcore.cpu_kernel`` (banded polyphase
  filters, one plane at a time in cache), forward and backward; without a C++ compiler they stay on the PyTorch
  path below, with the same results.

Which of these engines runs a call (compiled CPU kernel, Triton kernel, ``torch.compile``, eager PyTorch) is decided
by ``afcore.backend`` from the tensor, the filter and the environment switches; this module only computes.

Precision: the filters run in float32 (float64 inputs stay float64) with autocast off; bf16/fp16 inputs are cast to
float32 inside and the result is cast back, so a bf16 model gets fp32 filters.

CUDA: with ``AFCORE_TRITON=1``, the forward pass of ``filtered_activation`` with a separable factor-2 Kaiser filter
runs in the hand-written Triton kernel of ``afcore.triton_kernel`` (one pass, the 4x-sized activation kept in on-chip
scratch; the backward stays eager). With ``AFCORE_COMPILE=1``, ``filtered_activation`` on a CUDA tensor runs through
``torch.compile`` (inductor, Triton kernels) if Triton can be imported. Either one that fails warns once and falls
back to the eager fast path. Both are opt-in because neither has been verified on a GPU yet (the Triton kernel is
checked against the reference in Triton's CPU interpreter).
"""
from __future__ import annotations

import contextlib
import functools

import numpy as np
import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from afcore import backend, filters
from afcore.filters import FirSpec

NYQUIST = ("zero", "half")
MATMUL_MAX = 1024  # longest axis (input or output) resampled by matrix product; longer ones use FFT / convolution


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@contextlib.contextmanager
def _exact(device: torch.device):
    """Autocast off, and on CUDA TF32 off for the filter products (10-bit mantissas would make them approximate)."""
    with torch.autocast(device.type, enabled=False):
        if device.type != "cuda":
            yield
            return
        old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


# ----------------------------------------------------------------------------------------------- 1-D matrices
def _ideal_impulse(n: int, cutoff: float, edge: str) -> np.ndarray:
    return np.fft.ifft(filters.ideal_mask_1d(n, cutoff, edge=edge).numpy()).real


def up_matrix(n: int, f: int, spec: FirSpec | None = None, padding: str = "circular") -> np.ndarray:
    """(f n, n) float64 matrix of 1-D up-sampling by f with gain f: zero insertion z[f j] = x[j], then the ideal
    low-pass (spec None; circular) or the centred Kaiser FIR ``spec`` (``padding`` circular or zeros)."""
    m = f * n
    k, j = np.arange(m)[:, None], np.arange(n)[None, :]
    if spec is None:
        return f * _ideal_impulse(m, 1.0 / f, "half")[(k - f * j) % m]
    taps = filters.taps_array(spec)
    mat = np.zeros((m, n))
    half = len(taps) // 2
    for t, tap in enumerate(taps):  # out[k] += taps[t] z[k - (t - half)]  ->  k = f j + t - half
        rows = f * np.arange(n) + t - half
        keep = slice(None) if padding == "circular" else (rows >= 0) & (rows < m)
        np.add.at(mat, (rows[keep] % m, np.arange(n)[keep]), f * tap)
    return mat


def down_matrix(n: int, f: int, spec: FirSpec | None = None, padding: str = "circular",
                nyquist: str = "zero") -> np.ndarray:
    """(n / f, n) float64 matrix of 1-D down-sampling by f: the ideal low-pass (edge bin ``nyquist``) or the Kaiser
    FIR ``spec``, then every f-th sample."""
    m = n // f
    i, j = np.arange(m)[:, None], np.arange(n)[None, :]
    if spec is None:
        return _ideal_impulse(n, 1.0 / f, nyquist)[(f * i - j) % n]
    taps = filters.taps_array(spec)
    mat = np.zeros((m, n))
    half = len(taps) // 2
    for t, tap in enumerate(taps):  # out[i] += taps[t] x[f i - (t - half)]
        cols = f * np.arange(m) - t + half
        keep = slice(None) if padding == "circular" else (cols >= 0) & (cols < n)
        np.add.at(mat, (np.arange(m)[keep], cols[keep] % n), tap)
    return mat


@functools.lru_cache(maxsize=256)
def _matrix(kind: str, n: int, f: int, spec, padding: str, nyquist: str, device, dtype) -> torch.Tensor:
    mat = up_matrix(n, f, spec, padding) if kind == "up" else down_matrix(n, f, spec, padding, nyquist)
    return torch.tensor(mat, dtype=dtype, device=device)


def _separable(x: torch.Tensor, kind: str, f: int, spec, padding: str, nyquist: str) -> torch.Tensor:
    """``M_h x M_w^T`` on every image of x (..., H, W), in the compute dtype."""
    xc = x.to(compute_dtype(x.dtype))
    h, w = x.shape[-2:]
    mh = _matrix(kind, h, f, spec, padding, nyquist, xc.device, xc.dtype)
    mw = _matrix(kind, w, f, spec, padding, nyquist, xc.device, xc.dtype)
    with _exact(xc.device):
        return torch.matmul(mh, torch.matmul(xc, mw.T))


def _use_matmul(h: int, w: int, f: int) -> bool:
    return max(h, w) * f <= MATMUL_MAX


# ----------------------------------------------------------------------------------------------- radial FIR
@functools.lru_cache(maxsize=64)
def _radial_kernel(spec: FirSpec, device, dtype) -> torch.Tensor:
    return torch.tensor(np.ascontiguousarray(filters.taps_array(spec)), dtype=dtype, device=device)


def _wrap(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Circular padding by ``pad`` on both sides of H and W, as often around as needed."""
    if pad <= min(x.shape[-2:]):
        return F.pad(x, (pad,) * 4, mode="circular")
    h, w = x.shape[-2:]
    iy = torch.arange(-pad, h + pad, device=x.device) % h
    ix = torch.arange(-pad, w + pad, device=x.device) % w
    return x.index_select(-2, iy).index_select(-1, ix)


def _pad_axis(x: torch.Tensor, lo: int, hi: int, dim: int, padding: str) -> torch.Tensor:
    """Pad one of the last two axes of a 4-D tensor (circular: as often around as needed; or zeros)."""
    pad = [0, 0, 0, 0]
    pad[(-1 - dim) * 2:(-1 - dim) * 2 + 2] = [lo, hi]
    if padding != "circular":
        return F.pad(x, pad)
    n = x.shape[dim]
    if max(lo, hi) <= n:
        return F.pad(x, pad, mode="circular")
    return x.index_select(dim, torch.arange(-lo, n + hi, device=x.device) % n)


def _radial_up_cl(flat: torch.Tensor, spec: FirSpec, padding: str, channels_last: bool = True) -> torch.Tensor:
    """(1, N, H, W) -> (1, N, fH, fW); channels-last in and out inside the fused activation (whose blocks stay in
    cache), plain layout for a lone up-sampler (whose output would otherwise need a second full-size copy)."""
    f, n = spec.factor, spec.numtaps
    half = n // 2
    h, w = flat.shape[-2:]
    k = _radial_kernel(spec, flat.device, flat.dtype) * f**2
    m = -(-half // f)  # input samples to wrap so the scattered taps cover the borders
    if padding == "circular":
        flat = _wrap(flat, m)
    if channels_last:
        flat = flat.contiguous(memory_format=torch.channels_last)
    weight = k.expand(flat.shape[1], 1, n, n)
    with _exact(flat.device):
        if padding == "circular":
            out = F.conv_transpose2d(flat, weight, stride=f, groups=flat.shape[1])
            start = m * f + half
            return out[..., start:start + h * f, start:start + w * f]
        out = F.conv_transpose2d(flat, weight, stride=f, padding=half, groups=flat.shape[1],
                                 output_padding=f - 1 - (n - 1 - 2 * half))
        return out[..., :h * f, :w * f]


def _radial_down_cl(flat: torch.Tensor, spec: FirSpec, padding: str, channels_last: bool = True) -> torch.Tensor:
    """(1, N, H, W) -> (1, N, H/f, W/f) by one strided depthwise convolution (channels-last inside the fused op)."""
    f, n = spec.factor, spec.numtaps
    half = n // 2
    k = _radial_kernel(spec, flat.device, flat.dtype).flip(0, 1)  # conv2d correlates
    if padding == "circular":
        flat = _wrap(flat, half)
    if channels_last:
        flat = flat.contiguous(memory_format=torch.channels_last)
    weight = k.expand(flat.shape[1], 1, n, n)
    with _exact(flat.device):
        return F.conv2d(flat, weight, stride=f, padding=0 if padding == "circular" else half, groups=flat.shape[1])


def _images(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(1, -1, *x.shape[-2:]).to(compute_dtype(x.dtype))


def _radial_up(x: torch.Tensor, spec: FirSpec, padding: str) -> torch.Tensor:
    out = _radial_up_cl(_images(x), spec, padding, channels_last=False)
    return out.contiguous().reshape(*x.shape[:-2], *out.shape[-2:])


def _radial_down(x: torch.Tensor, spec: FirSpec, padding: str) -> torch.Tensor:
    out = _radial_down_cl(_images(x), spec, padding, channels_last=False)
    return out.contiguous().reshape(*x.shape[:-2], *out.shape[-2:])


# ----------------------------------------------------------------------------------------------- FIR dispatch
class _KernelResample(torch.autograd.Function):
    """Up- or down-sampling in the compiled CPU kernel; the gradient is the other resampler's adjoint (also there)."""

    @staticmethod
    def forward(ctx, x, spec, padding, mode):
        from afcore import cpu_kernel

        ctx.args = (spec, padding, mode)
        flat = x.reshape(-1, *x.shape[-2:]).to(compute_dtype(x.dtype))
        out = cpu_kernel.run(mode, flat, spec, padding)
        return out.reshape(*x.shape[:-2], *out.shape[-2:]).to(x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        from afcore import cpu_kernel

        spec, padding, mode = ctx.args
        flat = grad.reshape(-1, *grad.shape[-2:]).to(compute_dtype(grad.dtype))
        gx = cpu_kernel.run("down" if mode == "up" else "up", flat, spec, padding, adjoint=True)
        return gx.reshape(*grad.shape[:-2], *gx.shape[-2:]).to(grad.dtype), None, None, None


def fir_up(x: torch.Tensor, spec: FirSpec, padding: str = "circular") -> torch.Tensor:
    """Kaiser up-sampling (zero insertion, filter, gain factor**2) without the zero-inserted tensor."""
    if spec.factor == 1:
        return x
    h, w = x.shape[-2:]
    if backend.use_kernel_resampler(x, spec, "up"):
        return _KernelResample.apply(x, spec, padding, "up")
    if spec.radial:
        out = _radial_up(x, spec, padding)
    elif _use_matmul(h, w, spec.factor):
        out = _separable(x, "up", spec.factor, spec, padding, "zero")
    else:
        out = _separable_conv_up(x, spec, padding)
    return out.to(x.dtype)


def fir_down(x: torch.Tensor, spec: FirSpec, padding: str = "circular") -> torch.Tensor:
    """Kaiser down-sampling (filter, keep every factor-th sample)."""
    if spec.factor == 1:
        return x
    h, w = x.shape[-2:]
    if backend.use_kernel_resampler(x, spec, "down"):
        return _KernelResample.apply(x, spec, padding, "down")
    if spec.radial:
        out = _radial_down(x, spec, padding)
    elif _use_matmul(h, w, 1):
        out = _separable(x, "down", spec.factor, spec, padding, "zero")
    else:
        out = _separable_conv_down(x, spec, padding)
    return out.to(x.dtype)


def _separable_conv_up(x, spec, padding):
    """Large images: per axis, a transposed depthwise convolution of the 1-D taps (no zero-inserted tensor)."""
    f, n = spec.factor, spec.numtaps
    half, m = n // 2, -(-(n // 2) // f)
    taps = torch.tensor(filters.taps_array(spec) * f, dtype=compute_dtype(x.dtype), device=x.device)
    h, w = x.shape[-2:]
    out = x.reshape(1, -1, h, w).to(taps.dtype)
    c = out.shape[1]
    with _exact(x.device):
        for dim, size in ((-2, h), (-1, w)):
            shape = (c, 1, n, 1) if dim == -2 else (c, 1, 1, n)
            stride = (f, 1) if dim == -2 else (1, f)
            if padding == "circular":
                out = _pad_axis(out, m, m, dim, padding)
            full = F.conv_transpose2d(out, taps.view(1, 1, *shape[2:]).expand(shape), stride=stride, groups=c)
            start = m * f + half if padding == "circular" else half
            if full.shape[dim] < start + size * f:  # zero padding: a short filter may not reach the end
                pad = [0, 0, 0, 0]
                pad[(-1 - dim) * 2 + 1] = start + size * f - full.shape[dim]
                full = F.pad(full, pad)
            out = full.narrow(dim, start, size * f)
    return out.reshape(*x.shape[:-2], h * f, w * f)


def _separable_conv_down(x, spec, padding):
    """Large images: per axis, a strided depthwise convolution of the 1-D taps."""
    f, n = spec.factor, spec.numtaps
    half = n // 2
    taps = torch.tensor(filters.taps_array(spec)[::-1].copy(), dtype=compute_dtype(x.dtype), device=x.device)
    out = x.reshape(1, -1, *x.shape[-2:]).to(taps.dtype)
    c = out.shape[1]
    with _exact(x.device):
        for dim in (-2, -1):
            shape = (c, 1, n, 1) if dim == -2 else (c, 1, 1, n)
            stride = (f, 1) if dim == -2 else (1, f)
            out = _pad_axis(out, half, half, dim, padding)
            out = F.conv2d(out, taps.view(1, 1, *shape[2:]).expand(shape), stride=stride, groups=c)
    return out.reshape(*x.shape[:-2], *out.shape[-2:])


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
    """Ideal up-sampling (``scipy.signal.resample`` per axis): matrix products, or real FFTs for long axes."""
    if factor == 1:
        return x
    if _use_matmul(*x.shape[-2:], factor):
        return _separable(x, "up", factor, None, "circular", "zero").to(x.dtype)
    xc = x.to(compute_dtype(x.dtype))
    h, w = x.shape[-2:]
    with _exact(x.device):
        spec = torch.fft.rfft2(xc)
        if w % 2 == 0:  # the old Nyquist column is split between +w/2 and -w/2 (the latter implied by symmetry)
            spec = torch.cat([spec[..., :-1], 0.5 * spec[..., -1:]], dim=-1)
        spec = F.pad(spec, (0, factor * w // 2 + 1 - spec.shape[-1]))
        spec = _spectrum_pad(spec, factor * h, -2)
        out = torch.fft.irfft2(spec, s=(factor * h, factor * w)) * factor**2
    return out.to(x.dtype)


def ideal_down(x: torch.Tensor, factor: int, nyquist: str = "zero") -> torch.Tensor:
    """Ideal low-pass at 1/factor of Nyquist then every factor-th sample: matrix products, or real FFTs."""
    if factor == 1:
        return x
    if _use_matmul(*x.shape[-2:], 1):
        return _separable(x, "down", factor, None, "circular", nyquist).to(x.dtype)
    xc = x.to(compute_dtype(x.dtype))
    h, w = x.shape[-2:]
    mh, mw = h // factor, w // factor
    with _exact(x.device):
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
    my = filters.ideal_mask_1d(h, cutoff, edge=edge)
    mx = filters.ideal_mask_1d(w, cutoff, edge=edge)[:w // 2 + 1]
    return (my[:, None] * mx[None, :]).to(device=device, dtype=dtype)


def ideal_lowpass(x: torch.Tensor, cutoff: float, edge: str = "half") -> torch.Tensor:
    """Square ideal low-pass through the real FFT with a cached half-spectrum mask."""
    xc = x.to(compute_dtype(x.dtype))
    h, w = x.shape[-2:]
    with _exact(x.device):
        mask = _rfft_lowpass_mask(h, w, float(cutoff), edge, x.device, xc.dtype)
        out = torch.fft.irfft2(torch.fft.rfft2(xc) * mask, s=(h, w))
    return out.to(x.dtype)


# ----------------------------------------------------------------------------------------------- filtered act
def _resamplers(up: int, method: str, spec: FirSpec | None, padding: str, nyquist: str):
    if method == "ideal":
        return (lambda t: ideal_up(t, up)), (lambda t: ideal_down(t, up, nyquist))
    return (lambda t: fir_up(t, spec, padding)), (lambda t: fir_down(t, spec, padding))


CPU_BLOCK = 1 << 18  # elements of the up-sampled activation per block on CPU (1 MiB in fp32: stays in cache)


def _blocks(n: int, per_image: int, device: torch.device) -> list[slice]:
    """Image blocks of the fused op. On a CPU, memory bandwidth (not arithmetic) bounds it: blocks small enough that
    the up-sampled activation stays in cache make the 4x intermediate nearly free. A GPU gets one block."""
    if device.type != "cpu":
        return [slice(0, n)]
    step = max(1, CPU_BLOCK // max(per_image, 1))
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def _filtered_block(flat, act, up, method, spec, padding, nyquist):
    """(b, H, W) -> (b, H, W) in the compute dtype: down(act(up(.)))."""
    if spec is not None and spec.radial:  # stay channels-last from the up- to the down-sampler
        return _radial_down_cl(act(_radial_up_cl(flat[None], spec, padding)), spec, padding)[0]  # copied once by
        # the caller into its output
    up_fn, down_fn = _resamplers(up, method, spec, padding, nyquist)
    return down_fn(act(up_fn(flat)))


def _act_grad(act, u: torch.Tensor, grad_a: torch.Tensor) -> torch.Tensor:
    """act'(u) * grad_a, by autograd through the elementwise activation only."""
    with torch.enable_grad():
        leaf = u.detach().requires_grad_(True)
        (gu,) = torch.autograd.grad(act(leaf), leaf, grad_a)
    return gu


def _filtered_block_grad(flat, g, act, up, method, spec, padding, nyquist):
    """Input gradient of one block, written out: up^T(act'(u) * down^T(g)) with u = up(x) recomputed.

    The Kaiser kernels are symmetric, so a FIR up-sampler's adjoint is factor**2 times the FIR down-sampler with the
    same padding and the down-sampler's adjoint the up-sampler over factor**2; the separable ones use the
    transposed matrices. Other cases (long axes) go through autograd on the recomputed block."""
    h, w = flat.shape[-2:]
    if spec is not None and spec.radial:
        f2 = spec.factor**2
        u = _radial_up_cl(flat[None], spec, padding)
        gu = _act_grad(act, u, _radial_up_cl(g[None], spec, padding) / f2)
        return _radial_down_cl(gu, spec, padding)[0] * f2
    if _use_matmul(h, w, up):
        args = (up, spec, padding, nyquist, flat.device, flat.dtype)
        uh, uw = _matrix("up", h, *args), _matrix("up", w, *args)
        dh, dw = _matrix("down", up * h, *args), _matrix("down", up * w, *args)
        with _exact(flat.device):
            u = torch.matmul(uh, torch.matmul(flat, uw.T))
            gu = _act_grad(act, u, torch.matmul(dh.T, torch.matmul(g, dw)))
            return torch.matmul(uh.T, torch.matmul(gu, uw))
    with torch.enable_grad():
        leaf = flat.detach().requires_grad_(True)
        (gx,) = torch.autograd.grad(_filtered_block(leaf, act, up, method, spec, padding, nyquist), leaf, g)
    return gx


def _filtered_triton(x, act, spec, padding):
    """The Triton forward, or None after it failed (one warning; the caller takes the eager path)."""
    found = backend.use_triton(x, act, spec)
    if found is None:
        return None
    from afcore import triton_kernel

    try:
        return triton_kernel.filtered_activation(x, spec, padding, *found)
    except Exception as err:  # noqa: BLE001 -- any compiler or launch failure: fall back, say so once
        backend.triton_failed(err, stacklevel=3)
        return None


def _filtered_eager(x, act, up, method, spec, padding, nyquist, grad=None):
    """The fused op, blockwise; with ``grad``, the input gradient instead (recomputing each block's activation)."""
    if grad is None and up == 2 and method == "kaiser":
        out = _filtered_triton(x, act, spec, padding)
        if out is not None:
            return out
    h, w = x.shape[-2:]
    flat = x.reshape(-1, h, w).to(compute_dtype(x.dtype))
    g = None if grad is None else grad.reshape(-1, h, w).to(flat.dtype)
    if backend.use_kernel(flat, act, spec):
        from afcore import cpu_kernel

        mode = "fused" if g is None else "fused_grad"
        return cpu_kernel.run(mode, flat, spec, padding, act, grad=g).reshape(x.shape)
    out = torch.empty_like(flat)
    with torch.autocast(x.device.type, enabled=False):
        for sl in _blocks(flat.shape[0], h * w * up * up, x.device):
            if g is None:
                out[sl] = _filtered_block(flat[sl], act, up, method, spec, padding, nyquist)
            else:
                out[sl] = _filtered_block_grad(flat[sl], g[sl], act, up, method, spec, padding, nyquist)
    return out.reshape(x.shape)


class _FilteredActivation(torch.autograd.Function):
    """y = down(act(up(x))); saves only x and recomputes up(x) and act in backward (once differentiable)."""

    @staticmethod
    def forward(ctx, x, act, up, method, spec, padding, nyquist, fn):
        ctx.save_for_backward(x)
        ctx.args = (act, up, method, spec, padding, nyquist)
        return fn(x, act, up, method, spec, padding, nyquist).to(x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        gx = _filtered_eager(x, *ctx.args, grad=grad)
        return gx.to(x.dtype), None, None, None, None, None, None, None


def filtered_activation(x: torch.Tensor, act, up: int = 2, method: str = "ideal", spec: FirSpec | None = None,
                        padding: str = "circular", nyquist: str = "zero") -> torch.Tensor:
    """Fused ``down(act(up(x)))``: the fast resamplers, input-only saved state, optional compiled path on CUDA.

    ``act`` is a parameter-free elementwise callable (an ``nn.Module`` with parameters would get no gradient here:
    callers route those through the unfused path).
    """
    fn = _filtered_eager
    compiled = backend.compiled(_filtered_eager) if x.is_cuda else None
    if compiled is not None:
        fn = _guarded(compiled)
    if torch.is_grad_enabled() and x.requires_grad:
        return _FilteredActivation.apply(x, act, up, method, spec, padding, nyquist, fn)
    with torch.no_grad():
        return fn(x, act, up, method, spec, padding, nyquist).to(x.dtype)


def _guarded(compiled):
    """The compiled function, falling back (with one warning) to the eager path if compilation fails."""
    def call(*args):
        if backend.compile_has_failed():
            return _filtered_eager(*args)
        try:
            return compiled(*args)
        except Exception as err:  # noqa: BLE001 -- any compiler failure: fall back, say so once
            backend.compile_failed(err, stacklevel=3)
            return _filtered_eager(*args)
    return call
