"""Pictures of the theory course and the few readable computations behind them.

Taught by notebooks 00_sampling_and_aliasing (replica diagram of sampling, the input-vs-apparent-frequency
sawtooth), 02_resampling_and_nonlinearity (replica diagrams of decimation and expansion, the staged spectrum of one
filtered activation) and 03_equivariance (frame-averaged texture sticking). Everything here is plain NumPy / PyTorch
written to be read: no fast paths. Frequencies are in cycles/sample (Nyquist 0.5) unless a function says otherwise.
"""
from __future__ import annotations

import numpy as np
import torch

from afcore import course, signal


# ----------------------------------------------------------------------------------------------- apparent frequency
def apparent_frequency(f, fs: float = 1.0):
    """The frequency in ``[0, fs/2]`` that samples of ``cos(2 pi f t)`` taken at rate ``fs`` show (``course.fold``)."""
    return course.fold(f, fs)


def plot_sawtooth(ax, fs: float = 1.0, f_max: float = 2.0, marks=(), n: int = 2001):
    """Draw the apparent frequency against the input frequency on ``ax``: a sawtooth (a triangle wave) that rises
    with slope 1 up to ``fs/2``, falls back to 0 at ``fs``, and repeats; the Nyquist intervals where the slope is -1
    (the spectrum is mirrored: aliases move backwards) are shaded. ``marks``: input frequencies to mark with their
    alias. Returns ``(f, apparent)``, the plotted curve."""
    f = np.linspace(0.0, f_max, n)
    fa = apparent_frequency(f, fs)
    for k in range(int(np.ceil(f_max / fs)) + 1):  # the mirrored (falling) halves: (k + 1/2) fs .. (k + 1) fs
        lo, hi = (k + 0.5) * fs, min((k + 1) * fs, f_max)
        if lo < f_max:
            ax.axvspan(lo, hi, color="0.9", lw=0)
    ax.plot(f, fa, color="C0", lw=1.5, label="apparent frequency fold(f)")
    ax.plot(f, f, color="0.5", ls=":", lw=1, label="f (no aliasing)")
    ax.axhline(fs / 2, color="r", ls="--", lw=1, label="Nyquist fs/2")
    for fm in marks:
        fam = float(apparent_frequency(fm, fs))
        ax.plot([fm, fm], [0, fam], color="k", lw=0.6)
        ax.plot([fm], [fam], "ko", ms=4)
        ax.annotate(f"{fm:g} → {fam:g}", (fm, fam), textcoords="offset points", xytext=(3, 5), fontsize=7)
    ax.set_xlim(0, f_max)
    ax.set_ylim(0, max(f_max, fs / 2) * 1.02 if f_max < fs else fs * 0.62)
    ax.set_xlabel("input frequency f")
    ax.set_ylabel("apparent frequency")
    return f, fa


# ----------------------------------------------------------------------------------------------- replicas
def triangle(f, band: float):
    """A triangular spectrum of half-width ``band``: ``max(0, 1 - |f| / band)``; its inverse transform is the
    real, even signal ``band * sinc(band t)**2``."""
    return np.maximum(0.0, 1.0 - np.abs(np.asarray(f, dtype=np.float64)) / band)


def replica_sum(f, band: float, centres, height: float = 1.0):
    """Sum of triangles of half-width ``band`` and peak ``height`` centred on ``centres``: the magnitude spectrum
    of a sampled (or decimated, or expanded) zero-phase triangle-spectrum signal, overlaps added."""
    f = np.asarray(f, dtype=np.float64)
    return sum(height * triangle(f - c, band) for c in centres)


def replica_centres(period: float, f_lo: float, f_hi: float, band: float):
    """Multiples ``k * period`` whose replica (half-width ``band``) reaches into ``[f_lo, f_hi]``."""
    k0 = int(np.floor((f_lo - band) / period))
    k1 = int(np.ceil((f_hi + band) / period))
    return [k * period for k in range(k0, k1 + 1)]


def draw_replicas(ax, band: float, period: float, nyquist: float, height: float = 1.0, f_span: float | None = None,
                  lowpass: float | None = None, title: str = ""):
    """A textbook replica diagram on ``ax``: the baseband triangle (half-width ``band``) and its copies at every
    multiple of ``period``, each with its positive-frequency half in blue and its negative half in orange so a
    mirrored copy can be told apart; the band ``|f| <= nyquist`` the samples can hold is the white strip, and where
    two copies overlap inside it (aliasing) the sum is hatched red. ``lowpass``: an ideal filter edge drawn dashed.
    Returns the area the other copies add where they overlap the baseband inside ``[0, nyquist]`` (aliasing), as a
    fraction of the baseband's area there; an image that lies beside the baseband (expansion) adds nothing to it."""
    f_span = f_span if f_span is not None else 2.5 * period
    f = np.linspace(-f_span, f_span, 4001)
    ax.axvspan(-f_span, -nyquist, color="0.92", lw=0)
    ax.axvspan(nyquist, f_span, color="0.92", lw=0)
    centres = replica_centres(period, -f_span, f_span, band)
    for c in centres:
        pos = (f >= c) & (f <= c + band)
        neg = (f <= c) & (f >= c - band)
        alpha = 0.55 if abs(c) < 1e-12 else 0.3
        ax.fill_between(f[pos], 0, height * triangle(f[pos] - c, band), color="C0", alpha=alpha, lw=0)
        ax.fill_between(f[neg], 0, height * triangle(f[neg] - c, band), color="C1", alpha=alpha, lw=0)
    total = replica_sum(f, band, centres, height)
    base = height * triangle(f, band)
    overlap = (total - base > 1e-12) & (base > 1e-12) & (np.abs(f) <= nyquist)
    ax.plot(f, total, color="k", lw=1, label="sum of the copies (what the samples hold)")
    if overlap.any():
        ax.fill_between(f, base, total, where=overlap, facecolor="none", edgecolor="r", hatch="////", lw=0,
                        label="overlap: aliasing")
    for s in (-nyquist, nyquist):
        ax.axvline(s, color="r", ls="--", lw=1)
    if lowpass is not None:
        ax.plot([-f_span, -lowpass, -lowpass, lowpass, lowpass, f_span], [0, 0, height, height, 0, 0], color="g",
                ls="--", lw=1.2, label=f"ideal low-pass, cutoff {lowpass:g}")
    ax.set_xlim(-f_span, f_span)
    ax.set_ylim(0, 1.25 * max(height, float(total.max())))
    ax.set_title(title, fontsize=9)
    fp = (f >= 0) & (f <= nyquist)
    base_area = float(base[fp].sum())
    return float(((total - base) * overlap)[fp].sum() / base_area) if base_area > 0 else 0.0


# ----------------------------------------------------------------------------------------------- filtered activation
def zero_insert(x: torch.Tensor, factor: int, dim: int = -1) -> torch.Tensor:
    """``out[factor * i] = x[i]`` along ``dim``, zeros in between."""
    shape = list(x.shape)
    shape[dim] *= factor
    out = x.new_zeros(shape)
    index = [slice(None)] * x.ndim
    index[dim] = slice(None, None, factor)
    out[tuple(index)] = x
    return out


def circular_fir(x: torch.Tensor, taps: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Centred FIR filter (odd ``taps``) along ``dim``, circular: ``out[i] = sum_j taps[j] x[i - (j - half)]``."""
    half = taps.numel() // 2
    return sum(taps[j].to(x.dtype) * torch.roll(x, shifts=j - half, dims=dim) for j in range(taps.numel()))


def keep_every(x: torch.Tensor, factor: int, dim: int = -1) -> torch.Tensor:
    index = [slice(None)] * x.ndim
    index[dim] = slice(None, None, factor)
    return x[tuple(index)]


def filtered_activation_stages(x: torch.Tensor, act, up: int, taps: torch.Tensor, dims=(-1,)) -> dict:
    """A filtered activation written out stage by stage (the reference the fast ``layers.FilteredActivation`` with
    ``method="kaiser"`` must agree with): zero insertion by ``up`` along each axis of ``dims``, the low-pass
    ``taps`` with gain ``up`` per axis (up-sampled), the activation on the ``up``-times finer grid, the same low-pass
    (anti-aliasing), and every ``up``-th sample kept. Returns every stage: ``input``, ``zero_inserted``,
    ``upsampled``, ``activated``, ``lowpassed`` (all on the fine grid but the first) and ``output``."""
    stages = {"input": x}
    z = x
    for d in dims:
        z = zero_insert(z, up, d)
    stages["zero_inserted"] = z
    u = z
    for d in dims:
        u = circular_fir(u, taps, d) * up
    stages["upsampled"] = u
    a = act(u)
    stages["activated"] = a
    low = a
    for d in dims:
        low = circular_fir(low, taps, d)
    stages["lowpassed"] = low
    y = low
    for d in dims:
        y = keep_every(y, up, d)
    stages["output"] = y
    return stages


def power_spectrum(x: torch.Tensor, rate: float = 1.0):
    """One-sided power spectrum of a 1-D signal (``rfft``) and its frequencies in cycles per *input* sample for a
    signal with ``rate`` samples per input sample (so a 2x grid's spectrum runs to 1.0, its Nyquist)."""
    x = x.detach().to(torch.float64).cpu()
    spec = (torch.fft.rfft(x).abs() ** 2 / x.numel() ** 2).numpy()
    return np.fft.rfftfreq(x.numel()) * rate, spec


# ----------------------------------------------------------------------------------------------- texture sticking
def frame_average(op, x: torch.Tensor, shifts, dim: int = -1):
    """Frame-averaged output of ``op`` over a pan: ``op`` is run on ``x`` Fourier-shifted by each of ``shifts``
    pixels along ``dim`` and the outputs are averaged *as they appear on the screen* (no shifting back), as
    StyleGAN3 averages a video's frames. Returns ``(average, moving)``: ``moving`` is what an equivariant ``op``
    would give, the same average of ``op(x)`` shifted by each amount (content that moves with the input blurs
    along the pan); detail that sticks to the pixel grid stays sharp in ``average`` and not in ``moving``."""
    def along(d):
        return (0.0, d) if dim in (-1, x.ndim - 1) else (d, 0.0)

    y0 = op(x)
    average = sum(op(signal.fourier_shift(x, along(s))) for s in shifts) / len(shifts)
    moving = sum(signal.fourier_shift(y0, along(s)) for s in shifts) / len(shifts)
    return average, moving


__all__ = ["apparent_frequency", "plot_sawtooth", "triangle", "replica_sum", "replica_centres", "draw_replicas",
           "zero_insert", "circular_fir", "keep_every", "filtered_activation_stages", "power_spectrum",
           "frame_average"]
