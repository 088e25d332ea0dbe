"""Sampling, filtering, resampling, shifting and rotating images: the signal core of the workbook.

Taught by notebooks 00_sampling_and_aliasing, 01_filters, 02_resampling_and_nonlinearity and 03_equivariance.

Conventions (written out with the equations in docs/signal.md): images and features are ``(..., H, W)`` tensors;
shifts are ``(dy, dx)`` in pixels and a positive shift moves content toward larger indices (``scipy.ndimage.shift``);
frequencies are in cycles per sample (Nyquist = 0.5) unless a function says otherwise. Every fast path keeps a plain, readable ``impl="ref"`` path that
the tests compare against.

Nyquist convention. For an even size N the frequency N/2 is both +1/2 and -1/2 cycles/sample; a real signal's
component there is ``c cos(pi n)``. We treat it as split equally between +1/2 and -1/2 (as ``scipy.signal.resample``
does): a shift by d multiplies it by ``cos(pi d)``, which is exactly ``(-1)**d`` for integer d (so integer Fourier
shifts equal ``torch.roll``), and ideal filters whose edge falls on a bin keep that bin at half weight. Fractional
shifts compose exactly for signals with no energy at Nyquist (band-limited signals). One exception, by default: the
ideal *down*-sampler zeroes the new Nyquist bin (``nyquist="zero"``), as the AF-LDM reference code does; see
``downsample``.

``impl="fast"`` (the default) runs the resamplers through ``afcore.fastops`` (polyphase separable FIR, real-FFT ideal
filters); ``impl="ref"`` is the plain definition (zero insertion, explicit circulant matrices or rolled copies).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from afcore import fastops
from afcore.filters import (FirSpec, fir_spec, frequency_response, ideal_mask_1d, kaiser_beta,  # noqa: F401
                            kaiser_taps, lowpass_filter)  # re-exported: signal is the namespace the notebooks teach with

IMPLS = ("fast", "ref")
NYQUIST = ("zero", "half")
RESAMPLE_METHODS = ("ideal", "kaiser")
PADDINGS = ("circular", "zeros")


# ----------------------------------------------------------------------------------------------- checks
def _check_image(x, name: str = "x") -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (..., H, W), got {type(x).__name__}")
    if x.ndim < 2:
        raise ValueError(f"{name} must have shape (..., H, W) with at least 2 dims, got shape {tuple(x.shape)}")
    return x


def _check_shift(shift) -> tuple[float, float]:
    if isinstance(shift, torch.Tensor):
        shift = shift.tolist()
    if not isinstance(shift, Sequence) or len(shift) != 2:
        raise ValueError(f"shift must be a pair (dy, dx) in pixels, got {shift!r}")
    return float(shift[0]), float(shift[1])


def _check_choice(value, allowed, name):
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


def _check_factor(factor) -> int:
    if not isinstance(factor, int) or factor < 1:
        raise ValueError(f"factor must be a positive int, got {factor!r}")
    return factor


# ----------------------------------------------------------------------------------------------- shifts
def _shift_phase(n: int, d: torch.Tensor, dtype=torch.complex128) -> torch.Tensor:
    """Per-frequency multiplier of a shift by d (shape (..., 1)) along an axis of n samples: (..., n)."""
    k = torch.fft.fftfreq(n, dtype=torch.float64, device=d.device)
    phase = torch.exp(-2j * math.pi * k * d.to(torch.float64))
    if n % 2 == 0:
        phase[..., n // 2] = torch.cos(math.pi * d.to(torch.float64))[..., 0]
    return phase.to(dtype)


def _fourier_shift_axis(x: torch.Tensor, d, dim: int) -> torch.Tensor:
    """Circular fractional shift along one axis; d is a float or a tensor broadcastable against the other axes."""
    n = x.shape[dim]
    d = torch.as_tensor(d, dtype=torch.float64, device=x.device)
    xt = x.movedim(dim, -1)
    phase = _shift_phase(n, d.reshape(*d.shape, 1) if d.ndim else d.reshape(1))
    cdtype = torch.complex64 if x.dtype in (torch.float32, torch.float16, torch.bfloat16) else torch.complex128
    out = torch.fft.ifft(torch.fft.fft(xt.to(cdtype)) * phase.to(cdtype))
    out = out if x.is_complex() else out.real.to(x.dtype)
    return out.movedim(-1, dim)


def _dirichlet(t: torch.Tensor, n: int) -> torch.Tensor:
    """Periodic sinc of n samples (band-limited interpolation kernel, Nyquist split for even n)."""
    t = t.to(torch.float64)
    near = torch.isclose(torch.remainder(t, n), torch.zeros_like(t), atol=1e-12) | torch.isclose(
        torch.remainder(t, n), torch.full_like(t, float(n)), atol=1e-12)
    denom = n * (torch.tan(math.pi * t / n) if n % 2 == 0 else torch.sin(math.pi * t / n))
    val = torch.sin(math.pi * t) / torch.where(near, torch.ones_like(denom), denom)
    return torch.where(near, torch.ones_like(val), val)


def fourier_shift(x: torch.Tensor, shift, impl: str = "fast") -> torch.Tensor:
    """Circular fractional shift by a phase ramp: content moves by (dy, dx) pixels, wrapping around.

    ``impl="ref"`` builds the same operator as an explicit interpolation matrix from the periodic sinc kernel.
    """
    x = _check_image(x)
    dy, dx = _check_shift(shift)
    _check_choice(impl, IMPLS, "impl")
    if impl == "fast":
        return _fourier_shift_axis(_fourier_shift_axis(x, dy, -2), dx, -1)
    h, w = x.shape[-2:]
    # out[i] = sum_m x[m] D(i - d - m): the band-limited interpolant evaluated at i - d.
    ar = lambda n: torch.arange(n, device=x.device)  # noqa: E731
    my = _dirichlet(ar(h)[:, None] - dy - ar(h)[None, :], h).to(x.dtype)
    mx = _dirichlet(ar(w)[:, None] - dx - ar(w)[None, :], w).to(x.dtype)
    return my @ x @ mx.T


def valid_mask(size, shift, device=None) -> torch.Tensor:
    """(H, W) float mask of the output pixels whose source position i - d lies inside the frame."""
    h, w = size
    dy, dx = _check_shift(shift)
    iy = torch.arange(h, dtype=torch.float64, device=device) - dy
    ix = torch.arange(w, dtype=torch.float64, device=device) - dx
    eps = 1e-9
    my = (iy >= -eps) & (iy <= h - 1 + eps)
    mx = (ix >= -eps) & (ix <= w - 1 + eps)
    return (my[:, None] & mx[None, :]).float()


CROP_SEAMS = ("keep", "zero")


def _inside_frame(size, shift, device=None) -> torch.Tensor:
    """(H, W) float mask of the output pixels whose source position i - d lies in the half-open frame [0, N)."""
    h, w = size
    dy, dx = _check_shift(shift)
    iy = torch.arange(h, dtype=torch.float64, device=device) - dy
    ix = torch.arange(w, dtype=torch.float64, device=device) - dx
    eps = 1e-9
    my = (iy >= -eps) & (iy < h - eps)
    mx = (ix >= -eps) & (ix < w - eps)
    return (my[:, None] & mx[None, :]).float()


def shift(x: torch.Tensor, shift, mode: str = "circular", impl: str = "fast", seam: str = "keep"):
    """Shift by (dy, dx) pixels; returns ``(shifted, valid_mask)``.

    ``mode="circular"`` wraps around (mask all ones); ``mode="crop"`` fills with zeros the pixels whose source lies
    outside the frame and the mask marks the pixels whose source lies inside it, [0, N-1] (StyleGAN3's cropped
    shift; AF-LDM's ``ideal_crop``).

    ``seam`` (crop only) decides the pixels whose source lies between the last sample and the wrap-around, in
    (N-1, N): after a negative fractional shift, the last row / column. ``"keep"`` (default) keeps their band-limited
    (circular) value, interpolated across the wrap seam, as the AF-LDM reference's ``ideal_crop`` does (it rolls an
    ideally up-sampled copy and zeroes the up-sampled rows whose source lies outside [0, N), then subsamples); the
    mask still marks them invalid. ``"zero"`` zero-fills every pixel outside the mask (this workbook's earlier
    behaviour). Positive and integer shifts give the same result either way.
    """
    x = _check_image(x)
    _check_choice(mode, ("circular", "crop"), "mode")
    _check_choice(seam, CROP_SEAMS, "seam")
    d = _check_shift(shift)
    out = fourier_shift(x, d, impl=impl)
    if mode == "circular":
        return out, torch.ones(x.shape[-2:], dtype=x.dtype, device=x.device)
    mask = valid_mask(x.shape[-2:], d, device=x.device).to(x.dtype)
    fill = mask if seam == "zero" else _inside_frame(x.shape[-2:], d, device=x.device).to(x.dtype)
    return out * fill, mask


def lanczos_shift(x: torch.Tensor, shift, a: int = 3, normalize: bool = True) -> torch.Tensor:
    """Circular shift by Lanczos-a interpolation (StyleGAN3's EQ-T_frac target uses a=3).

    ``normalize=True`` (StyleGAN3's definition) divides the 2a taps of each fractional phase by their sum, so the
    interpolator has unit DC gain and a constant image shifts to itself; the raw windowed-sinc taps sum to less than
    one between samples (0.994 at a half-pixel shift for a=3), which biases the target and caps the metric.
    """
    x = _check_image(x)
    dy, dx = _check_shift(shift)
    if not isinstance(a, int) or a < 1:
        raise ValueError(f"a must be a positive int, got {a!r}")
    out = x
    for dim, d in ((-2, dy), (-1, dx)):
        base = math.floor(d)
        frac = d - base
        # out[i] = sum_m x[m] L(i - d - m), m = i - base - j for j in (-a, a]
        taps = {j: float(np.sinc(j - frac) * np.sinc((j - frac) / a)) if abs(j - frac) < a else 0.0
                for j in range(-a + 1, a + 1)}
        if normalize:
            total = sum(taps.values())
            taps = {j: w / total for j, w in taps.items()}
        acc = torch.zeros_like(out)
        for j, weight in taps.items():
            acc = acc + weight * torch.roll(out, shifts=base + j, dims=dim)
        out = acc
    return out


# ----------------------------------------------------------------------------------------------- filters
# Filter design (Kaiser sinc/jinc taps, ideal masks, the FirSpec the fast paths cache by) lives in afcore.filters,
# which both this module and afcore.fastops import; the old private names stay for the notebooks that use them.
_ideal_mask_1d = ideal_mask_1d
_kaiser_taps = kaiser_taps


def ideal_lowpass(x: torch.Tensor, cutoff: float, radial: bool = False, impl: str = "fast",
                  edge: str = "half") -> torch.Tensor:
    """FFT-domain rectangular low-pass (circular): ``cutoff`` is a fraction of Nyquist (1.0 keeps everything).

    ``radial=False`` keeps the square ``|k_y|, |k_x| <= N cutoff / 2`` (separable, what alias-free resampling
    needs); ``radial=True`` keeps the disk ``|k| <= cutoff / 2`` cycles/sample (rotation-friendly). Bins exactly on
    the edge keep half weight (``edge="half"``, the split-Nyquist convention of this module) or are removed
    (``edge="zero"``). ``impl="ref"`` applies the same filter as an explicit circulant matrix per axis (square region
    only); ``impl="fast"`` uses the real FFT with a cached mask (square region).
    """
    x = _check_image(x)
    if not 0 < cutoff <= 1:
        raise ValueError(f"cutoff must be in (0, 1] (fraction of Nyquist), got {cutoff!r}")
    _check_choice(impl, IMPLS, "impl")
    _check_choice(edge, NYQUIST, "edge")
    if impl == "fast" and not radial and not x.is_complex():
        return fastops.ideal_lowpass(x, cutoff, edge)
    h, w = x.shape[-2:]
    if radial:
        if impl == "ref":
            raise ValueError("impl='ref' is only available for radial=False")
        fy = torch.fft.fftfreq(h, dtype=torch.float64, device=x.device)[:, None]
        fx = torch.fft.fftfreq(w, dtype=torch.float64, device=x.device)[None, :]
        r = torch.sqrt(fy**2 + fx**2)
        on_edge = 0.5 if edge == "half" else 0.0
        mask = (r < cutoff / 2 - 1e-9).double() + on_edge * ((r - cutoff / 2).abs() < 1e-9).double()
    else:
        mask = _ideal_mask_1d(h, cutoff, x.device, edge)[:, None] * _ideal_mask_1d(w, cutoff, x.device, edge)[None, :]
    if impl == "ref":
        def circulant(n):
            # row i holds the filter's impulse response centred on i: h[(i - m) mod n]
            impulse = torch.fft.ifft(_ideal_mask_1d(n, cutoff, x.device, edge).to(torch.complex128)).real
            idx = (torch.arange(n, device=x.device)[:, None] - torch.arange(n, device=x.device)[None, :]) % n
            return impulse[idx].to(x.dtype)
        return circulant(h) @ x @ circulant(w).T
    cdtype = torch.complex64 if x.dtype != torch.float64 else torch.complex128
    out = torch.fft.ifft2(torch.fft.fft2(x.to(cdtype)) * mask.to(cdtype))
    return out.real.to(x.dtype)


def _fir_axis(x: torch.Tensor, taps: torch.Tensor, dim: int, padding: str, impl: str) -> torch.Tensor:
    """Centred 1-D FIR filter along one axis (odd taps), circular or zero padding."""
    n = taps.numel()
    half = n // 2
    if impl == "ref":
        out = torch.zeros_like(x)
        length = x.shape[dim]
        for j in range(n):
            offset = j - half  # out[i] += taps[j] * x[i - offset]
            rolled = torch.roll(x, shifts=offset, dims=dim)
            if padding == "zeros" and offset != 0:
                idx = torch.arange(length, device=x.device)
                keep = ((idx - offset) >= 0) & ((idx - offset) < length)
                shape = [1] * x.ndim
                shape[dim] = length
                rolled = rolled * keep.view(shape).to(x.dtype)
            out = out + taps[j].to(x.dtype) * rolled
        return out
    xt = x.movedim(dim, -1)
    lead = xt.shape[:-1]
    flat = xt.reshape(-1, 1, xt.shape[-1])
    pad_mode = "circular" if padding == "circular" else "constant"
    flat = F.pad(flat, (half, half), mode=pad_mode)
    kernel = taps.flip(0).to(dtype=x.dtype, device=x.device).view(1, 1, n)  # conv1d is correlation
    out = F.conv1d(flat, kernel)
    return out.reshape(*lead, -1).movedim(-1, dim)


def fir_filter(x: torch.Tensor, taps: torch.Tensor, padding: str = "circular", impl: str = "fast") -> torch.Tensor:
    """Apply a centred FIR filter: 1-D taps separably along H and W, or a 2-D (k x k) kernel directly."""
    x = _check_image(x)
    _check_choice(padding, PADDINGS, "padding")
    _check_choice(impl, IMPLS, "impl")
    if taps.ndim == 1:
        if taps.numel() % 2 == 0:
            raise ValueError(f"numtaps must be odd so the filter is centred on a sample, got {taps.numel()}")
        return _fir_axis(_fir_axis(x, taps, -2, padding, impl), taps, -1, padding, impl)
    k = taps.shape[-1]
    if taps.ndim != 2 or taps.shape[0] != k or k % 2 == 0:
        raise ValueError(f"a 2-D kernel must be square with an odd size, got shape {tuple(taps.shape)}")
    half = k // 2
    if impl == "ref":
        out = torch.zeros_like(x)
        for a in range(k):
            for b in range(k):
                rolled = torch.roll(x, shifts=(a - half, b - half), dims=(-2, -1))
                if padding == "zeros":
                    rolled = rolled * valid_mask(x.shape[-2:], (a - half, b - half), x.device).to(x.dtype)
                out = out + taps[a, b].to(x.dtype) * rolled
        return out
    lead = x.shape[:-2]
    flat = x.reshape(-1, 1, *x.shape[-2:])
    flat = F.pad(flat, (half,) * 4, mode="circular" if padding == "circular" else "constant")
    out = F.conv2d(flat, taps.flip(0, 1).to(dtype=x.dtype, device=x.device)[None, None])
    return out.reshape(*lead, *x.shape[-2:])


# ----------------------------------------------------------------------------------------------- resampling
def upsample(x: torch.Tensor, factor: int = 2, method: str = "ideal", numtaps: int | None = None,
             beta: float = 8.0, radial: bool = False, normalize: bool = True, padding: str = "circular",
             impl: str = "fast") -> torch.Tensor:
    """Alias-free up-sampling by an integer factor, keeping the signal's amplitude.

    Zero insertion (``out[f*i] = x[i]``), then a reconstruction low-pass at ``1/factor`` of the new Nyquist, with
    gain ``factor**2`` (the zeros diluted the signal). ``method="ideal"`` does it in the FFT domain and equals
    ``scipy.signal.resample`` along each axis (the input's Nyquist bin, for even sizes, is split in half between
    +N/2 and -N/2); ``method="kaiser"`` uses a Kaiser-windowed sinc (separable) or jinc (``radial=True``) FIR filter
    with ``numtaps`` (odd, default ``6*factor+1``) and ``beta``. ``impl="ref"`` is that definition literally;
    ``impl="fast"`` (``afcore.fastops``) gives the same values without the zero-inserted tensor.

    A short FIR filter need not give every output phase the same DC gain: Anjum et al.'s 3x3 jinc (``numtaps=3,
    radial=True``, w_c = pi/2) turns a constant c into a checkerboard ``c * 4 * (h[1,1], 2 h[1,0], 4 h[0,0])`` on
    the (even, even), (even, odd) and (odd, odd) output pixels, about 0.88-1.10 c for beta 1, normalised. That is the
    paper's filter, reproduced: a 3x3 kernel *can* have equal phase gains (the bilinear tent [1, 2, 1] / 4 does),
    but the windowed jinc is not designed as such a (Nyquist) filter; a longer Kaiser filter brings the ripple
    down (below 1e-4 at 13 taps, beta 8). Their code also omits the gain factor**2, which this function keeps.
    """
    x = _check_image(x)
    factor = _check_factor(factor)
    _check_choice(method, RESAMPLE_METHODS, "method")
    _check_choice(padding, PADDINGS, "padding")
    _check_choice(impl, IMPLS, "impl")
    if factor == 1:
        return x
    if impl == "fast":
        if method == "ideal":
            return fastops.ideal_up(x, factor)
        return fastops.fir_up(x, fir_spec(factor, numtaps, beta, radial, normalize), padding)
    h, w = x.shape[-2:]
    z = x.new_zeros(*x.shape[:-2], h * factor, w * factor)
    z[..., ::factor, ::factor] = x
    if method == "ideal":
        return ideal_lowpass(z, 1.0 / factor, impl=impl) * factor**2
    taps = _kaiser_taps(factor, numtaps, beta, radial, normalize)
    return fir_filter(z, taps, padding=padding, impl=impl) * factor**2


def downsample(x: torch.Tensor, factor: int = 2, method: str = "ideal", numtaps: int | None = None,
               beta: float = 8.0, radial: bool = False, normalize: bool = True, padding: str = "circular",
               impl: str = "fast", nyquist: str = "zero") -> torch.Tensor:
    """Alias-free down-sampling: low-pass at ``1/factor`` of Nyquist, then keep every ``factor``-th sample.

    On a signal already band-limited below the new Nyquist, the ideal version is exactly shift-equivariant:
    ``downsample(T_d x) == T_{d/factor} downsample(x)`` for any fractional d.

    ``nyquist`` (ideal method, even output sizes): what happens to the new Nyquist frequency ``1/(2 factor)``
    cycles/sample of the input, the edge of the ideal low-pass. ``"zero"`` (default) removes it, as the AF-LDM
    reference code's ideal low-pass does: the output is then strictly band-limited below its own Nyquist, so any
    fractional shift of it is unambiguous. ``"half"`` keeps it at half weight (this module's split-Nyquist
    convention): the down-sampler is then exactly the adjoint of the ideal up-sampler divided by ``factor**2``
    (each is the other's gradient), and it matches a low-pass that treats the bin as half in, half out.
    """
    x = _check_image(x)
    factor = _check_factor(factor)
    _check_choice(method, RESAMPLE_METHODS, "method")
    _check_choice(padding, PADDINGS, "padding")
    _check_choice(impl, IMPLS, "impl")
    _check_choice(nyquist, NYQUIST, "nyquist")
    h, w = x.shape[-2:]
    if h % factor or w % factor:
        raise ValueError(f"x's size {(h, w)} must be divisible by factor={factor}")
    if factor == 1:
        return x
    if impl == "fast":
        if method == "ideal":
            return fastops.ideal_down(x, factor, nyquist)
        return fastops.fir_down(x, fir_spec(factor, numtaps, beta, radial, normalize), padding)
    if method == "ideal":
        y = ideal_lowpass(x, 1.0 / factor, impl=impl, edge=nyquist)
    else:
        y = fir_filter(x, _kaiser_taps(factor, numtaps, beta, radial, normalize), padding=padding, impl=impl)
    return y[..., ::factor, ::factor]


# ----------------------------------------------------------------------------------------------- analysis
def radial_power_spectrum(x: torch.Tensor, n_bins: int | None = None):
    """Azimuthally averaged power spectrum ``|FFT|^2`` (mean over all leading dims).

    Returns ``(freqs, power)``: bin centres in cycles/sample from 0 to 0.5 (the Nyquist radius) and mean power per
    bin. The corners beyond radius 0.5 are left out.
    """
    x = _check_image(x)
    h, w = x.shape[-2:]
    n_bins = n_bins or min(h, w) // 2
    power = torch.fft.fft2(x.to(torch.float64)).abs().pow(2).reshape(-1, h, w).mean(0) / (h * w)
    fy = torch.fft.fftfreq(h, dtype=torch.float64, device=x.device)[:, None]
    fx = torch.fft.fftfreq(w, dtype=torch.float64, device=x.device)[None, :]
    r = torch.sqrt(fy**2 + fx**2).flatten()
    edges = torch.linspace(0, 0.5, n_bins + 1, dtype=torch.float64, device=x.device)
    idx = torch.bucketize(r, edges, right=False).clamp(min=1) - 1
    keep = r <= 0.5
    sums = torch.zeros(n_bins, dtype=torch.float64, device=x.device).index_add_(0, idx[keep], power.flatten()[keep])
    counts = torch.zeros(n_bins, dtype=torch.float64, device=x.device).index_add_(0, idx[keep], torch.ones_like(r[keep]))
    centres = (edges[:-1] + edges[1:]) / 2
    return centres, sums / counts.clamp(min=1)


def zone_plate(h: int, w: int | None = None, max_freq: float = 0.5, device="cpu") -> torch.Tensor:
    """Circular zone plate ``cos(pi max_freq r^2 / R)``: local frequency grows linearly from 0 at the centre to
    ``max_freq`` cycles/sample at radius R (the half-diagonal's shorter side), a classic aliasing test pattern,
    built on ``device``."""
    w = w or h
    y = torch.arange(h, dtype=torch.float64, device=device) - (h - 1) / 2
    x = torch.arange(w, dtype=torch.float64, device=device) - (w - 1) / 2
    r2 = y[:, None] ** 2 + x[None, :] ** 2
    big_r = min(h, w) / 2
    return torch.cos(math.pi * max_freq * r2 / big_r).float()


# ----------------------------------------------------------------------------------------------- rotation
ROTATE_METHODS = ("fourier", "bilinear")
ROTATE_BOUNDARIES = ("zeros", "circular", "reflect")


def _fourier_shift_lines(x: torch.Tensor, d: torch.Tensor, dim: int) -> torch.Tensor:
    """Shift along ``dim`` with a different amount per line of the other image axis."""
    n = x.shape[dim]
    xt = x.transpose(-2, -1) if dim == -2 else x  # (..., lines, n): line j is row j or column j
    phase = _shift_phase(n, d.view(-1, 1))  # (lines, n)
    cdtype = torch.complex64 if x.dtype != torch.float64 else torch.complex128
    out = torch.fft.ifft(torch.fft.fft(xt.to(cdtype)) * phase.to(cdtype)).real.to(x.dtype)
    return out.transpose(-2, -1) if dim == -2 else out


def rotate(x: torch.Tensor, angle: float, method: str = "fourier", boundary: str = "zeros",
           pad: float = 0.5) -> torch.Tensor:
    """Rotate by ``angle`` degrees counter-clockwise (as displayed, row 0 at the top) about the image centre.

    ``method="fourier"``: band-limited rotation by three Fourier shears (x, y, x), after exact quarter turns
    (``torch.rot90``) so the shears only see angles in [-45, 45] degrees; rotation by 0 is the identity and four
    rotations by 90 degrees return the input exactly. The image is padded by ``pad`` of its size on every side
    (``boundary``: zeros, circular = no padding, reflect) so the shears do not wrap. ``method="bilinear"``:
    ``grid_sample`` with zero fill, the usual (aliasing) baseline. Square images rotate without loss of frame;
    non-square ones keep their frame.
    """
    x = _check_image(x)
    _check_choice(method, ROTATE_METHODS, "method")
    _check_choice(boundary, ROTATE_BOUNDARIES, "boundary")
    angle = float(angle)
    if method == "bilinear":
        return _rotate_bilinear(x, angle)
    quarter = int(round(angle / 90.0))
    rest = angle - 90.0 * quarter
    h, w = x.shape[-2:]
    if quarter % 4 and (h == w):
        x = torch.rot90(x, k=quarter % 4, dims=(-2, -1))
    elif quarter % 4:
        rest = angle  # a quarter turn would change a non-square frame: shear the whole angle
        rest = ((rest + 180.0) % 360.0) - 180.0
        if abs(rest) > 90:
            x = torch.rot90(x, k=2, dims=(-2, -1))
            rest = rest - 180.0 * math.copysign(1, rest)
    if abs(rest) < 1e-12:
        return x.clone()
    py = int(round(pad * h)) if boundary != "circular" else 0
    px = int(round(pad * w)) if boundary != "circular" else 0
    lead = x.shape[:-2]
    flat = x.reshape(-1, h, w)
    if py or px:
        flat = F.pad(flat[:, None], (px, px, py, py), mode="constant" if boundary == "zeros" else "reflect")[:, 0]
    theta = math.radians(rest)
    a, b = -math.tan(theta / 2), math.sin(theta)
    cy, cx = (flat.shape[-2] - 1) / 2, (flat.shape[-1] - 1) / 2
    # counter-clockwise as displayed: x' = x cos + y sin, y' = -x sin + y cos (y pointing down)
    rows = torch.arange(flat.shape[-2], dtype=torch.float64, device=x.device) - cy
    cols = torch.arange(flat.shape[-1], dtype=torch.float64, device=x.device) - cx
    out = _fourier_shift_lines(flat, -a * rows, -1)
    out = _fourier_shift_lines(out, -b * cols, -2)
    out = _fourier_shift_lines(out, -a * rows, -1)
    out = out[:, py:py + h, px:px + w]
    return out.reshape(*lead, h, w)


def _rotate_bilinear(x: torch.Tensor, angle: float) -> torch.Tensor:
    h, w = x.shape[-2:]
    lead = x.shape[:-2]
    flat = x.reshape(-1, 1, h, w)
    t = math.radians(angle)
    # grid_sample maps output coords to input coords: inverse rotation, in normalised (x right, y down) units
    aspect = w / h
    theta = torch.tensor([[math.cos(t), -math.sin(t) * (1 / aspect), 0.0],
                          [math.sin(t) * aspect, math.cos(t), 0.0]], dtype=x.dtype, device=x.device)
    grid = F.affine_grid(theta[None].expand(flat.shape[0], 2, 3), flat.shape, align_corners=False)
    out = F.grid_sample(flat, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.reshape(*lead, h, w)


def inscribed_circle_mask(h: int, w: int | None = None, margin: float = 0.0, device="cpu") -> torch.Tensor:
    """(H, W) float mask of the disk inscribed in the frame (minus ``margin`` pixels): what survives any rotation."""
    w = w or h
    y = torch.arange(h, dtype=torch.float64, device=device) - (h - 1) / 2
    x = torch.arange(w, dtype=torch.float64, device=device) - (w - 1) / 2
    r = torch.sqrt(y[:, None] ** 2 + x[None, :] ** 2)
    return (r <= min(h, w) / 2 - margin).float()
