"""Filter design shared by the reference and the fast paths: Kaiser-windowed sinc/jinc low-pass taps, the ideal
(rectangular) frequency masks, and ``FirSpec``, the hashable filter description the fast paths cache by.

Taught by notebook 01_filters. ``afcore.signal`` (the readable definitions), ``afcore.fastops`` (fast paths) and
``afcore.cpu_kernel`` (the compiled CPU kernel) all import this module, and it imports none of them.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
import torch


class FirSpec(NamedTuple):
    """A Kaiser low-pass at ``1/factor`` of Nyquist, as ``kaiser_taps`` designs it (hashable)."""
    factor: int
    numtaps: int
    beta: float
    radial: bool
    normalize: bool


def kaiser_beta(numtaps: int, transition_width: float, fs: float = 2.0) -> float:
    """Kaiser beta from the attenuation formula (as StyleGAN3 designs its filters): width in the units of fs."""
    import scipy.signal

    atten = scipy.signal.kaiser_atten(numtaps, transition_width / (0.5 * fs))
    return float(scipy.signal.kaiser_beta(atten))


def lowpass_filter(numtaps: int, cutoff: float, fs: float = 2.0, beta: float = 8.0, radial: bool = False,
                   normalize: bool = True, dtype=torch.float32) -> torch.Tensor:
    """Kaiser-windowed low-pass FIR filter.

    ``radial=False``: 1-D windowed sinc of ``numtaps`` taps (use it separably), equal to
    ``scipy.signal.firwin(numtaps, cutoff, window=("kaiser", beta), fs=fs)`` when ``normalize`` (unit DC gain).
    ``radial=True``: ``numtaps x numtaps`` windowed jinc, the ideal radially symmetric low-pass
    ``f_c J1(2 pi f_c r) / r`` (centre ``pi f_c**2``) with ``f_c = cutoff / fs`` cycles/sample, times the outer
    product of two Kaiser windows; ``normalize`` scales the taps to sum 1. Anjum et al.'s kernel
    ``w_c J1(w_c r) / (2 pi r)`` with ``w_c = pi/2`` is this filter with ``cutoff=0.5, fs=2``.
    """
    import scipy.special

    if not isinstance(numtaps, int) or numtaps < 1:
        raise ValueError(f"numtaps must be a positive int, got {numtaps!r}")
    if not 0 < cutoff < fs / 2:
        raise ValueError(f"cutoff must be in (0, fs/2) = (0, {fs / 2}), got {cutoff!r}")
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta!r}")
    f_c = cutoff / fs
    m = np.arange(numtaps) - (numtaps - 1) / 2
    window = np.kaiser(numtaps, beta)
    if not radial:
        h = 2 * f_c * np.sinc(2 * f_c * m) * window
        if normalize:
            h = h / h.sum()
        return torch.tensor(h, dtype=dtype)
    r = np.hypot(m[:, None], m[None, :])
    with np.errstate(invalid="ignore", divide="ignore"):
        h = np.where(r > 0, f_c * scipy.special.j1(2 * np.pi * f_c * r) / np.where(r > 0, r, 1.0), np.pi * f_c**2)
    h = h * np.outer(window, window)
    if normalize:
        h = h / h.sum()
    return torch.tensor(h, dtype=dtype)


def frequency_response(taps: torch.Tensor, n: int = 512):
    """Magnitude response of a 1-D filter (freqs in cycles/sample 0..0.5) or a 2-D one (n x n, fftshifted)."""
    taps = taps.to(torch.float64)
    if taps.ndim == 1:
        resp = torch.fft.rfft(taps, n=n).abs()
        return torch.fft.rfftfreq(n, dtype=torch.float64), resp
    resp = torch.fft.fftshift(torch.fft.fft2(taps, s=(n, n)).abs())
    return torch.fft.fftshift(torch.fft.fftfreq(n, dtype=torch.float64)), resp


def ideal_mask_1d(n: int, cutoff: float, device=None, edge: str = "half") -> torch.Tensor:
    """Keep |k| < n*cutoff/2; a bin exactly at the edge gets half weight (``edge="half"``, Nyquist split) or none
    (``edge="zero"``); zero beyond."""
    edge_k = n * cutoff / 2
    k = torch.fft.fftfreq(n, d=1.0 / n, dtype=torch.float64, device=device).abs()
    mask = (k < edge_k - 1e-9).double()
    mask[(k - edge_k).abs() < 1e-9] = 0.5 if edge == "half" else 0.0
    return mask


def kaiser_taps(factor: int, numtaps: int | None, beta: float, radial: bool, normalize: bool, cutoff=None):
    """The Kaiser low-pass at ``1/factor`` of Nyquist (or ``cutoff``) that the alias-free resamplers use."""
    numtaps = numtaps if numtaps is not None else 6 * factor + 1
    cutoff = cutoff if cutoff is not None else 1.0 / factor
    return lowpass_filter(numtaps, cutoff, fs=2.0, beta=beta, radial=radial, normalize=normalize)


def fir_spec(factor: int, numtaps: int | None = None, beta: float = 8.0, radial: bool = False,
             normalize: bool = True):
    """The hashable description of ``kaiser_taps``'s filter that the fast paths cache their weights by."""
    numtaps = numtaps if numtaps is not None else 6 * factor + 1
    if not isinstance(numtaps, int) or numtaps < 1 or numtaps % 2 == 0:
        raise ValueError(f"numtaps must be a positive odd int so the filter is centred on a sample, got {numtaps!r}")
    return FirSpec(factor, numtaps, float(beta), bool(radial), bool(normalize))


@functools.lru_cache(maxsize=16)
def taps_array(spec: FirSpec) -> np.ndarray:
    """The taps of ``spec`` as a float64 array (1-D separable, or 2-D radial), cached."""
    return kaiser_taps(spec.factor, spec.numtaps, spec.beta, spec.radial, spec.normalize).to(torch.float64).numpy()
