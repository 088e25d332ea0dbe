"""Design helpers of the theory course: StyleGAN3's per-layer filter schedule, polyphase up-sampling, aliasing and
rotation checks of filters, error against the distance from the border.

Taught by notebook 04_design (and used by 00-03 and ``tests/test_theory_claims.py``). Everything here is built on the
public API of ``afcore.signal`` and ``afcore.metrics``; frequencies are in cycles/sample (Nyquist 0.5) unless a
function says otherwise.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from afcore import metrics, signal


# ----------------------------------------------------------------------------------------------- photographs
# scikit-image's bundled photographs that load without a network: the choices of the notebooks' ``image`` parameter
PHOTOS = ("astronaut", "brick", "camera", "cat", "chelsea", "coffee", "coins", "grass", "gravel", "moon", "page",
          "rocket", "text")


def gray_photo(name: str, min_side: int = 0) -> np.ndarray:
    """``skimage.data.<name>()`` as a float64 grey image in [0, 1]: colour photographs through ``rgb2gray``, 8-bit
    grey ones divided by 255 (a colour photo must not reach a 2-D filter as a 3-D array). ``min_side``: the crop the
    caller takes; a smaller photograph is refused with the ones that are large enough."""
    import skimage.color
    import skimage.data

    if name not in PHOTOS:
        raise ValueError(f"image: unknown photograph {name!r}; allowed: {list(PHOTOS)}")
    photo = getattr(skimage.data, name)()
    if min(photo.shape[:2]) < min_side:
        big = [n for n in PHOTOS if min(getattr(skimage.data, n)().shape[:2]) >= min_side]
        raise ValueError(f"image: {name!r} is {photo.shape[0]}x{photo.shape[1]} pixels, smaller than the {min_side}-pixel "
                         f"crop taken here; photographs large enough: {big}")
    if photo.ndim == 3:
        return skimage.color.rgb2gray(photo[..., :3]).astype(np.float64)
    return photo / 255.0


# ----------------------------------------------------------------------------------------------- display
def pixel_grid(rows: int, cols: int, panel_px: int, dpi: int = 110, left: int = 70, right: int = 95,
               bottom: int = 60, top: int = 50, wgap: int = 150, hgap: int = 95):
    """A matplotlib figure of ``rows x cols`` square axes that are each exactly ``panel_px`` device pixels wide and
    high at ``dpi``, at whole-pixel offsets (margins and gaps in pixels, room for labels and a colour bar).

    An image of ``n`` pixels shown in such a panel with ``interpolation="nearest"`` is enlarged by the integer
    ``panel_px / n`` when that divides: every image pixel becomes the same block of screen pixels. At a
    non-integer scale the display itself resamples the image and adds a moiré of its own, which a lesson on
    aliasing cannot afford. Save the figure with the same ``dpi``. Returns ``(fig, axes)``, axes as a 2-D array."""
    import matplotlib.pyplot as plt

    width = left + cols * panel_px + (cols - 1) * wgap + right
    height = bottom + rows * panel_px + (rows - 1) * hgap + top
    fig = plt.figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    axes = np.empty((rows, cols), dtype=object)
    for r in range(rows):
        for c in range(cols):
            x0 = left + c * (panel_px + wgap)
            y0 = bottom + (rows - 1 - r) * (panel_px + hgap)
            axes[r, c] = fig.add_axes((x0 / width, y0 / height, panel_px / width, panel_px / height))
    return fig, axes


def colorbar_beside(fig, ax, mappable, gap_px: int = 8, width_px: int = 12):
    """A colour bar ``width_px`` wide, ``gap_px`` to the right of ``ax`` and as high as it (``pixel_grid`` panels
    keep their exact size; ``fig.colorbar(ax=...)`` would shrink them)."""
    fw, fh = fig.get_size_inches() * fig.dpi
    b = ax.get_position()
    cax = fig.add_axes((b.x1 + gap_px / fw, b.y0, width_px / fw, b.height))
    return fig.colorbar(mappable, cax=cax)


# ----------------------------------------------------------------------------------------------- comparisons
def _energy(x: torch.Tensor) -> float:
    x = x.to(torch.float64)
    return float((x - x.mean()).pow(2).mean())


def match_reference(x: torch.Tensor, ref: torch.Tensor) -> dict:
    """How well ``x`` reproduces a reference image: ``error_fraction`` = energy of ``x - ref`` over the energy of
    ``ref`` (energies about the mean) and ``correlation`` = Pearson correlation of ``x`` with ``ref`` (0 when
    either is constant).

    Neither number alone is a fair score of an attempt to remove aliasing: a flat grey image has error fraction
    exactly 1 (it loses the reference's whole energy but adds none), and a filter that blurs everything away drifts
    towards that value from above. ``recovers`` therefore asks for both a small error and a high correlation."""
    x64, ref64 = x.to(torch.float64), ref.to(torch.float64)
    xd, rd = x64 - x64.mean(), ref64 - ref64.mean()
    ref_energy = float(rd.pow(2).mean())
    if ref_energy <= 1e-24 * float(ref64.pow(2).mean()):  # constant up to rounding
        raise ValueError("the reference is constant: there is nothing to match")
    flat = float(xd.pow(2).mean()) <= 1e-24 * ref_energy  # constant up to the rounding of its mean
    denom = float(xd.pow(2).sum().sqrt() * rd.pow(2).sum().sqrt())
    return {"error_fraction": _energy(x64 - ref64) / ref_energy,
            "correlation": 0.0 if flat else float((xd * rd).sum()) / denom}


def recovers(x: torch.Tensor, ref: torch.Tensor, max_error_fraction: float = 0.25,
             min_correlation: float = 0.9) -> bool:
    """True when ``x`` matches the reference closely (``match_reference``): error fraction at most
    ``max_error_fraction`` AND correlation at least ``min_correlation``. A flat image (error 1, correlation 0)
    always fails."""
    m = match_reference(x, ref)
    return m["error_fraction"] <= max_error_fraction and m["correlation"] >= min_correlation


# ----------------------------------------------------------------------------------------------- folding
def fold(f, fs: float = 1.0):
    """Alias of frequency ``f`` sampled at rate ``fs``: the frequency in ``[0, fs/2]`` the samples show."""
    f = np.abs(np.asarray(f, dtype=np.float64))
    r = np.mod(f, fs)
    return np.minimum(r, fs - r)


# ----------------------------------------------------------------------------------------------- StyleGAN3
def stylegan3_schedule(img_resolution: int = 256, num_layers: int = 14, num_critical: int = 2,
                       first_cutoff: float = 2.0, first_stopband: float = 2**2.1,
                       last_stopband_rel: float = 2**0.3, margin_size: int = 10, filter_size: int = 6,
                       lrelu_upsampling: int = 2) -> list[dict]:
    """StyleGAN3's per-layer cutoff / stop-band / sampling-rate schedule (Karras et al. 2021, Sec. 3.2 and Fig. 4).

    Frequencies and rates are in *cycles (samples) per image*, as in the paper: cutoff ``f_c`` and minimum stop-band
    ``f_t`` grow geometrically from the first layer to layer ``num_layers - num_critical`` and stay at
    ``f_c = img_resolution / 2`` (critical sampling) in the last ``num_critical`` layers; the sampling rate ``s``
    is the smallest power of two with ``s >= 2 f_t`` (capped at the image resolution), so the stop-band starts at
    or below the Nyquist frequency ``s / 2``; half-width ``f_h = max(f_t, s/2) - f_c``. Returns one dict per layer
    ``0..num_layers`` (0 is the input, ``num_layers`` the toRGB layer), with the up/down factors and tap counts
    of the filters around that layer's nonlinearity (evaluated at ``lrelu_upsampling`` times the higher of the
    two rates; ``filter_size`` taps per factor; toRGB has no filters).
    """
    for name, value in (("img_resolution", img_resolution), ("num_layers", num_layers)):
        if not isinstance(value, int) or value < 2:
            raise ValueError(f"{name} must be an int >= 2, got {value!r}")
    if not isinstance(num_critical, int) or not 0 <= num_critical < num_layers:
        raise ValueError(f"num_critical must be an int in [0, num_layers), got {num_critical!r}")
    last_cutoff = img_resolution / 2
    last_stopband = last_cutoff * last_stopband_rel
    exponents = np.minimum(np.arange(num_layers + 1) / (num_layers - num_critical), 1)
    cutoffs = first_cutoff * (last_cutoff / first_cutoff) ** exponents
    stopbands = first_stopband * (last_stopband / first_stopband) ** exponents
    rates = np.exp2(np.ceil(np.log2(np.minimum(stopbands * 2, img_resolution))))
    half_widths = np.maximum(stopbands, rates / 2) - cutoffs
    sizes = rates + 2 * margin_size
    sizes[-2:] = img_resolution
    rows = []
    for i in range(num_layers + 1):
        prev = max(i - 1, 0)
        torgb = i == num_layers
        tmp_rate = max(rates[prev], rates[i]) * (1 if torgb else lrelu_upsampling)
        up = int(np.rint(tmp_rate / rates[prev]))
        down = int(np.rint(tmp_rate / rates[i]))
        rows.append({
            "layer": i, "cutoff": float(cutoffs[i]), "stopband": float(stopbands[i]),
            "sampling_rate": float(rates[i]), "half_width": float(half_widths[i]), "size": int(sizes[i]),
            "critically_sampled": bool(i >= num_layers - num_critical), "torgb": torgb,
            "nonlinearity_rate": float(tmp_rate), "up_factor": up, "down_factor": down,
            "up_taps": filter_size * up if up > 1 and not torgb else 1,
            "down_taps": filter_size * down if down > 1 and not torgb else 1,
        })
    return rows


def stylegan3_filter(numtaps: int, cutoff: float, width: float, fs: float, radial: bool = False) -> torch.Tensor:
    """StyleGAN3's filter design: Kaiser-windowed sinc (or jinc, ``radial``) whose beta comes from the Kaiser
    attenuation formula for ``numtaps`` and transition ``width`` (units of ``fs``, like ``scipy.signal.firwin``).

    Equals ``scipy.signal.firwin(numtaps, cutoff, width=width, fs=fs)`` for ``radial=False``; the jinc is
    normalised to unit DC gain and windowed by the outer product of two 1-D Kaiser windows, as in StyleGAN3.
    """
    beta = signal.kaiser_beta(numtaps, width, fs)
    return signal.lowpass_filter(numtaps, cutoff, fs=fs, beta=beta, radial=radial, normalize=True,
                                 dtype=torch.float64)


# ----------------------------------------------------------------------------------------------- filters
def dtft(taps: torch.Tensor, fy, fx=None) -> np.ndarray:
    """Magnitude of a centred 1-D (``fy`` only) or 2-D filter's frequency response at arbitrary frequencies."""
    h = taps.detach().to(torch.float64).cpu().numpy()
    if h.ndim == 1:
        m = np.arange(h.size) - (h.size - 1) / 2
        f = np.asarray(fy, dtype=np.float64)
        return np.abs(np.exp(-2j * np.pi * f[..., None] * m) @ h)
    m = np.arange(h.shape[0]) - (h.shape[0] - 1) / 2
    fy, fx = np.broadcast_arrays(np.asarray(fy, np.float64), np.asarray(fx, np.float64))
    ey = np.exp(-2j * np.pi * fy[..., None] * m)  # (..., k)
    ex = np.exp(-2j * np.pi * fx[..., None] * m)
    return np.abs(np.einsum("...a,ab,...b->...", ey, h, ex))


def aliased_fraction(taps: torch.Tensor, factor: int, n: int = 4096) -> float:
    """Fraction of white noise's power that a 1-D filter passes *above* the post-decimation Nyquist ``0.5/factor``:
    the power that folds back when every ``factor``-th sample is kept."""
    if not isinstance(factor, int) or factor < 1:
        raise ValueError(f"factor must be a positive int, got {factor!r}")
    f = np.linspace(0, 0.5, n)
    p = dtft(taps, f) ** 2
    return float(p[f > 0.5 / factor].sum() / p.sum())


def response_on_circle(kernel: torch.Tensor, radius: float, n_angles: int = 91):
    """Gain of a 2-D kernel (relative to its DC gain) on a circle of ``radius`` cycles/sample, angles 0..90 deg."""
    theta = np.linspace(0, np.pi / 2, n_angles)
    gain = dtft(kernel, radius * np.sin(theta), radius * np.cos(theta)) / abs(float(kernel.sum()))
    return np.degrees(theta), gain


def anisotropy_db(kernel: torch.Tensor, radius: float, n_angles: int = 91) -> float:
    """Spread (max - min, dB) of a 2-D kernel's gain over directions at one radius: 0 for a radial response."""
    _, gain = response_on_circle(kernel, radius, n_angles)
    g = 20 * np.log10(np.maximum(gain, 1e-12))
    return float(g.max() - g.min())


def rotation_psnr(op, x: torch.Tensor, angle: float, peak: float = metrics.PEAK) -> float:
    """PSNR (dB) between ``op(rotate(x))`` and ``rotate(op(x))`` inside the inscribed circle (1 px margin):
    how well an operation commutes with a band-limited (Fourier) rotation by ``angle`` degrees."""
    a, b, mask = rotation_pair(op, x, angle)
    return float(metrics.psnr(a * mask, b * mask, mask, peak))


def rotation_pair(op, x: torch.Tensor, angle: float):
    """``(op(rotate(x)), rotate(op(x)), mask)``: the two sides ``rotation_psnr`` compares and the inscribed-circle
    mask (1 px margin), all on x's device, the mask in x's dtype."""
    a = op(signal.rotate(x, angle))
    b = signal.rotate(op(x), angle)
    mask = signal.inscribed_circle_mask(*x.shape[-2:], margin=1.0, device=x.device).to(x.dtype)
    return a, b, mask


# ----------------------------------------------------------------------------------------------- polyphase
def polyphase_upsample(x: torch.Tensor, taps: torch.Tensor, factor: int, dim: int = -1) -> torch.Tensor:
    """Up-sample along ``dim`` by zero insertion and a centred FIR filter (circular), computed polyphase:
    output phase ``p`` is a short filter of the taps ``h[c + p - factor j]`` run on the low-rate signal, so no
    multiplication by an inserted zero is ever done (``numtaps / factor`` taps per output instead of ``numtaps``).
    Gain ``factor`` (one axis of ``signal.upsample``'s ``factor**2``)."""
    if not isinstance(factor, int) or factor < 1:
        raise ValueError(f"factor must be a positive int, got {factor!r}")
    if taps.ndim != 1 or taps.numel() % 2 == 0:
        raise ValueError(f"taps must be 1-D with an odd length, got shape {tuple(taps.shape)}")
    xt = x.movedim(dim, -1)
    n = xt.shape[-1]
    half = taps.numel() // 2
    h = taps.to(dtype=x.dtype, device=x.device)
    phases = []
    for p in range(factor):
        # y[f i + p] = sum_m h[half + f i + p - f m] x[m] = sum_j h[half + p + f j] x[i - j]
        js = [j for j in range(-(half + p) // factor - 1, (half - p) // factor + 2)
              if 0 <= half + p + factor * j < taps.numel()]
        acc = torch.zeros_like(xt)
        for j in js:
            acc = acc + h[half + p + factor * j] * torch.roll(xt, shifts=j, dims=-1)
        phases.append(acc)
    out = torch.stack(phases, dim=-1).reshape(*xt.shape[:-1], n * factor) * factor
    return out.movedim(-1, dim)


# ----------------------------------------------------------------------------------------------- cost
def phase_taps(numtaps: int, factor: int) -> list[int]:
    """Up-sampling by zero insertion: how many of a ``numtaps`` filter's taps meet a real (not inserted-zero) sample
    for each of the ``factor`` output phases, counted tap by tap. Only those taps cost a multiply-add (polyphase);
    the phases together use every tap once."""
    if not isinstance(factor, int) or factor < 1 or not isinstance(numtaps, int) or numtaps < 1:
        raise ValueError(f"numtaps and factor must be positive ints, got {numtaps!r}, {factor!r}")
    centre = numtaps // 2
    # output i = sum_k h[k] z[i + centre - k]; z is non-zero only at multiples of factor
    return [sum(1 for k in range(numtaps) if (p + centre - k) % factor == 0) for p in range(factor)]


def alias_free_layer_macs(factor: int, numtaps: int, radial: bool = False) -> dict:
    """Work per output pixel of a filtered nonlinearity that keeps the sampling rate (up-sample by ``factor``,
    activation at the high rate, low-pass and keep every ``factor``-th sample), with ``numtaps`` filters used
    separably (rows then columns) or as one radial ``numtaps x numtaps`` kernel, computing only what is needed:
    up-sampling polyphase (no multiplications by inserted zeros) and down-sampling only at the kept samples.

    Counted from the phases (``phase_taps``): up, separable: the row pass makes ``factor`` outputs per input pixel,
    the column pass ``factor**2``; down, separable: the row pass is needed on ``factor`` high-rate rows per kept
    output, the column pass once. Returns ``up_macs``, ``activations``, ``down_macs``, ``total_macs``."""
    per_phase = phase_taps(numtaps, factor)
    one_output_each_phase = sum(per_phase)  # taps used by one output of every phase
    if radial:
        up = sum(a * b for a in per_phase for b in per_phase)  # factor**2 output phases, 2-D taps each
        down = numtaps * numtaps  # one kept output, the whole kernel
    else:
        up = one_output_each_phase + factor * one_output_each_phase  # rows: factor outputs; columns: factor**2
        down = factor * numtaps + numtaps  # rows: factor high-rate rows per kept output; columns: one
    return {"factor": factor, "numtaps": numtaps, "filter": "radial" if radial else "separable", "up_macs": up,
            "activations": factor * factor, "down_macs": down, "total_macs": up + down}


# ----------------------------------------------------------------------------------------------- borders
def error_by_border_distance(err: torch.Tensor, mask: torch.Tensor | None = None):
    """Mean of a per-pixel error map (``(..., H, W)``, averaged over leading dims) against the distance (pixels)
    of the pixel from the nearest image border: returns ``(distances, mean_error)`` for distances 0..min(H,W)//2-1,
    counting only pixels inside ``mask``."""
    sums, counts = border_distance_sums(err, mask)
    return np.arange(sums.numel()), (sums / counts.clamp(min=1)).cpu().numpy()


def border_distance_sums(err: torch.Tensor, mask: torch.Tensor | None = None):
    """Per distance from the nearest border (0..min(H,W)//2-1): the sum of the masked error (averaged over leading
    dims) and the mask's sum, as float64 tensors on err's device (``error_by_border_distance`` divides them)."""
    h, w = err.shape[-2:]
    dev = err.device
    e = err.to(torch.float64).reshape(-1, h, w).mean(0)
    m = torch.ones(h, w, dtype=torch.float64, device=dev) if mask is None else \
        mask.to(device=dev, dtype=torch.float64).reshape(-1, h, w)[0]
    iy = torch.arange(h, device=dev)[:, None]
    ix = torch.arange(w, device=dev)[None, :]
    dist = torch.minimum(torch.minimum(iy, h - 1 - iy), torch.minimum(ix, w - 1 - ix))
    n = min(h, w) // 2
    sums = torch.zeros(n, dtype=torch.float64, device=dev).index_add_(0, dist.flatten(), (e * m).flatten())
    counts = torch.zeros(n, dtype=torch.float64, device=dev).index_add_(0, dist.flatten(), m.flatten())
    return sums, counts


def db_from_mse(mse, peak: float = metrics.PEAK):
    """PSNR in dB from a mean squared error (array or float), with ``peak`` (2 for images in [-1, 1])."""
    return 20 * math.log10(peak) - 10 * np.log10(np.maximum(np.asarray(mse, dtype=np.float64), 1e-20))


__all__ = ["pixel_grid", "colorbar_beside", "match_reference", "recovers", "fold", "stylegan3_schedule",
           "stylegan3_filter", "dtft", "aliased_fraction", "response_on_circle", "anisotropy_db", "rotation_psnr",
           "rotation_pair", "polyphase_upsample", "phase_taps", "alias_free_layer_macs", "error_by_border_distance",
           "border_distance_sums", "db_from_mse"]
