# %% [markdown]
# # 00 · Sampling and aliasing
#
# A digital image is a grid of samples of a continuous scene. Everything in this workbook — why diffusion U-Nets
# "stick" textures to the pixel grid, why alias-free layers fix it — follows from one fact: **a grid with spacing
# $T$ can only represent frequencies below the Nyquist frequency $f_N = 1/(2T)$**. A component at a higher
# frequency does not disappear when it is sampled; it *aliases*: its samples are exactly those of a lower frequency
# that was never there.
#
# This notebook shows aliasing in 1-D (sinusoids, and how an alias moves when the signal moves), in 2-D (a zone
# plate, moiré on a texture) and at edges (staircases). Every "what to notice" below is checked by an assertion in
# the notebook and, from `metrics/00_sampling_and_aliasing.json`, by `tests/test_theory_claims.py`.

# %% tags=["parameters"]
profile = "cpu"
seed = 0
device = "auto"
deterministic = True
sample_rate = 10.0
frequencies = [2.0, 4.0, 6.0, 8.0, 12.0]
zone_plate_size = 256
zone_plate_max_freq = 0.35
decimation = 4
image = "brick"

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch

from afcore import course, signal
from afcore.utils import save_figure, save_json, seed_everything
from afcore.device import pick_device

seed_everything(seed)
dev = pick_device(device, deterministic)  # the images and their filters live here; the 1-D sinusoids are numpy, plots on the CPU
FIG = "figures/00_sampling_and_aliasing"
# The text states numbers measured on the cpu/gpu sizes; the smoke profile (a 64-pixel zone plate) only checks that
# the code runs, so the size-dependent thresholds below are asserted only when CLAIMS is true.
CLAIMS = profile != "smoke"
metrics = {"profile": profile}

# %% [markdown]
# ## 1. Sampling a sinusoid
#
# Sample $x(t) = \cos(2\pi f t)$ at rate $f_s$. Below Nyquist ($f < f_s/2$) the samples determine the sinusoid.
# Above it, the samples are *identical* to those of a sinusoid at the alias frequency
# $$f_a = |f - k f_s|, \quad k = \operatorname{round}(f / f_s),$$
# folded into $[0, f_s/2]$ (`afcore.course.fold`). The plot draws the continuous signal, its samples, and the alias
# that the samples actually describe.

# %%
t = np.linspace(0, 1, 2000)
n = np.arange(0, 1, 1 / sample_rate)
fig, axes = plt.subplots(len(frequencies), 1, figsize=(9, 1.7 * len(frequencies)), sharex=True)
rows = []
for ax, f in zip(np.atleast_1d(axes), frequencies):
    fa = float(course.fold(f, sample_rate))
    ax.plot(t, np.cos(2 * np.pi * f * t), lw=0.8, label=f"signal, f = {f:g}")
    ax.plot(t, np.cos(2 * np.pi * fa * t), "--", lw=1.2, label=f"what the samples show: f = {fa:g}")
    ax.plot(n, np.cos(2 * np.pi * f * n), "ko", ms=4)
    ax.set_ylabel("amplitude")
    ax.legend(loc="upper right", fontsize=7)
    # the samples of f and of its alias agree exactly: aliasing loses information irreversibly
    max_gap = float(np.abs(np.cos(2 * np.pi * f * n) - np.cos(2 * np.pi * fa * n)).max())
    rows.append({"frequency": f, "alias": fa, "aliased": bool(f > sample_rate / 2), "sample_gap": max_gap})
np.atleast_1d(axes)[-1].set_xlabel(f"time (sampling rate {sample_rate:g}, Nyquist {sample_rate / 2:g})")
fig.suptitle("Sinusoids above Nyquist masquerade as lower frequencies")
save_figure(fig, f"{FIG}/sinusoid_aliasing.png")
plt.show()
metrics["sinusoids"] = rows
assert all(r["sample_gap"] < 1e-9 for r in rows)
assert all((r["alias"] == r["frequency"]) == (not r["aliased"]) for r in rows)

# %% [markdown]
# **What to notice.** For every frequency above $f_s/2$ the dashed alias passes through exactly the same black
# samples (`sample_gap` is below $10^{-9}$): from the samples alone the two are indistinguishable, and so they are
# for a network that sees only samples.
#
# ### An alias moves at the wrong speed, in the wrong direction
#
# Aliases are not frozen to the grid; they move *wrongly*. Delay $\cos(2\pi f t)$ by $d$: its samples
# $\cos(2\pi f (n - d))$ equal those of the alias delayed by $d_a = d f / f_a$, with the sign flipped when the
# spectrum folded over (for $f$ between $f_s/2$ and $f_s$). For $f = 0.7 f_s$ the alias ($0.3 f_s$) moves
# $0.7/0.3 = 2.33$ times as far as the content, backwards. A sub-pixel motion of the scene becomes a faster,
# reversed motion of the aliased pattern: the crawling textures of notebook 03.

# %%
f_hi, d = 0.7, 0.2  # cycles/sample (fs = 1), delay in samples
f_lo = float(course.fold(f_hi))
nn_ = np.arange(32)
moved = np.cos(2 * np.pi * f_hi * (nn_ - d))
d_alias = -d * f_hi / f_lo
alias_moved = np.cos(2 * np.pi * f_lo * (nn_ - d_alias))
metrics["moving_alias"] = {"frequency": f_hi, "alias": f_lo, "content_shift": d, "alias_shift": d_alias,
                           "sample_gap": float(np.abs(moved - alias_moved).max())}
assert metrics["moving_alias"]["sample_gap"] < 1e-9 and d_alias < -2 * d
print(f"content moves {d:+.2f} samples, its alias moves {d_alias:+.3f} samples")

# %% [markdown]
# ### The whole picture: apparent frequency against input frequency
#
# Sweep the input frequency from 0 to a little over twice the sampling rate and plot the frequency the samples show
# (`afcore.course_figures.plot_sawtooth`, which draws `course.fold`). The curve is a sawtooth — strictly a triangle
# wave: it rises with slope +1 up to $f_s/2$, falls with slope −1 back to 0 at $f_s$, and repeats with period $f_s$.
# The frequencies of the plot above are marked. On the falling (shaded) stretches the spectrum is mirrored, which is
# why an alias there moves backwards; on the rising stretches above $f_s$ (e.g. $f_s$ to $1.5 f_s$) it moves
# forwards, still at the wrong speed.
#
# The curve is a formula; to check it independently we take 4000 samples of each marked cosine and find the largest
# bin of their DFT, a measurement with no folding formula in it.

# %%
from afcore import course_figures as cf

fig, ax = plt.subplots(figsize=(9, 3.6))
f_curve, fa_curve = cf.plot_sawtooth(ax, fs=sample_rate, f_max=2.3 * sample_rate, marks=frequencies)
ax.set_xlabel(f"input frequency (sampling rate {sample_rate:g})")
ax.set_title("Apparent frequency of a sampled sinusoid: a triangle wave of period fs (shaded: mirrored)")
ax.legend(fontsize=8, loc="upper right")
save_figure(fig, f"{FIG}/apparent_frequency.png")
plt.show()


def dft_peak(f, fs, n=4000):
    """Frequency of the largest DFT bin of n samples of cos(2 pi f t) taken at rate fs."""
    spec = np.abs(np.fft.rfft(np.cos(2 * np.pi * f * np.arange(n) / fs)))
    return float(np.fft.rfftfreq(n, 1 / fs)[np.argmax(spec)])


sweep = [0.13, 0.37, 0.62, 0.88, 1.21, 1.74, 2.05]  # multiples of fs, off the DC / Nyquist points
saw = [{"frequency": r * sample_rate, "apparent": float(cf.apparent_frequency(r * sample_rate, sample_rate)),
        "dft_peak": dft_peak(r * sample_rate, sample_rate)} for r in sweep]
metrics["apparent_frequency"] = {"curve_max": float(fa_curve.max()), "checks": saw,
                                 "largest_gap": max(abs(c["apparent"] - c["dft_peak"]) for c in saw)}
print(metrics["apparent_frequency"])
assert metrics["apparent_frequency"]["largest_gap"] <= sample_rate / 4000  # one DFT bin
assert metrics["apparent_frequency"]["curve_max"] <= sample_rate / 2 + 1e-12  # never above Nyquist

# %% [markdown]
# **What to notice.** The DFT peak of every test cosine lies on the curve, to within one DFT bin
# (`apparent_frequency.largest_gap`), and the curve never rises above $f_s/2$. A network that sees only samples sees
# only the vertical axis of this plot: every input frequency on a horizontal line through the curve looks the same.
#
# ### The same fact in the frequency domain: replicas
#
# Sampling multiplies the signal by a comb of impulses, so its spectrum becomes the sum of copies (replicas) of the
# original spectrum centred on every multiple of $f_s$. Below we draw a signal whose spectrum is a triangle of
# half-width $B$, with its positive-frequency half blue and its negative half orange so that a copy's orientation
# can be read (`course_figures.draw_replicas`). The samples hold one period of the sum, the white strip
# $|f| \le f_s/2$. If $B < f_s/2$ the copies do not touch and the baseband can be cut out again (sampling theorem).
# If $B > f_s/2$ the orange half of the copy at $f_s$ reaches into the strip: the part of the spectrum above
# $f_s/2$ reappears mirrored below it (hatched), the same folding as the sawtooth's falling stretch.
#
# The diagram is computed, not sketched: a signal on a grid 8 times finer than the sample grid stands in for the
# continuous one (its spectrum, a triangle of half-width $B/8$ cycles per fine sample, is exactly the triangle), and
# keeping every 8th fine sample must give exactly the sum of replicas the diagram draws.

# %%
FINE = 8
fig, axes = plt.subplots(1, 2, figsize=(12, 3.4), sharey=True)
replicas = {}
for ax, band in zip(axes, (0.35, 0.7)):
    overlap = cf.draw_replicas(ax, band=band, period=1.0, nyquist=0.5, f_span=2.2,
                               title=f"sampling a spectrum of half-width B = {band:g} fs")
    ax.set_xlabel("frequency (cycles per sample, fs = 1)")
    n_fine = 8 * 60 * FINE
    fine = np.real(np.fft.ifft(cf.triangle(np.fft.fftfreq(n_fine), band / FINE)))  # spectrum: the triangle, exactly
    samples = fine[::FINE]
    f_s = np.fft.fftfreq(samples.size)
    predicted = cf.replica_sum(f_s, band, cf.replica_centres(1.0, -0.5, 0.5, band), height=1 / FINE)
    replicas[f"B={band:g}"] = {"aliased_fraction_of_baseband": overlap,
                               "dft_vs_replica_sum": float(np.abs(np.abs(np.fft.fft(samples)) - predicted).max())}
axes[0].set_ylabel("magnitude")
axes[1].legend(fontsize=8, loc="upper right")
save_figure(fig, f"{FIG}/sampling_replicas.png")
plt.show()
metrics["sampling_replicas"] = replicas
print(replicas)
assert all(r["dft_vs_replica_sum"] < 1e-12 for r in replicas.values())
assert replicas["B=0.35"]["aliased_fraction_of_baseband"] == 0.0
assert 0.08 < replicas["B=0.7"]["aliased_fraction_of_baseband"] < 0.10  # "about 9%" below

# %% [markdown]
# **What to notice.** On the left the copies leave a gap around $\pm f_s/2$: nothing is lost. On the right the
# copy centred on $f_s$ overlaps the baseband from $f_s - B = 0.3$ up to Nyquist; the overlap adds
# `sampling_replicas["B=0.7"].aliased_fraction_of_baseband` (about 9%) to the baseband's area in $[0, f_s/2]$,
# and once added it cannot be told apart from the baseband. In both cases the DFT of the actual samples equals the
# drawn sum of copies to round-off (`dft_vs_replica_sum` below $10^{-12}$).

# %% [markdown]
# ## 2. Aliasing in 2-D: the zone plate
#
# A zone plate $\cos(\pi f_{max} r^2 / R)$ has a local frequency $f_{max} r / R$ that grows linearly with the
# radius. We take $f_{max}$ = `zone_plate_max_freq` so that even the corners ($r = \sqrt 2 R$) stay below the
# full-rate Nyquist frequency 0.5 — otherwise the reference image would already be aliased. Sub-sampled by
# `decimation` (every k-th pixel), everything with local frequency above the new Nyquist $0.5/k$ folds into
# phantom ring centres. Low-pass filtering *before* sub-sampling (the ideal FFT filter at $1/k$ of Nyquist) removes
# what cannot be represented, leaving a flat grey where the rings were too fine.
#
# Where exactly is the sub-sampled plate still correct? The local frequency is a *vector*,
# $f_{max}(x, y)/R$, and keeping every k-th pixel in x and in y folds a component as soon as **either** of its
# coordinates exceeds $0.5/k$: the band a square grid can hold is a square, $|f_x|, |f_y| < 0.5/k$, not a disk.
# So the clean region of the image is the square $|x|, |y| < R\,(0.5/k)/f_{max}$ (dashed in the last panel), and
# the separable ideal low-pass keeps rings in exactly that square too.
#
# A figure about aliasing must not alias on its own. Every panel is drawn at an integer scale (the full-rate plate
# pixel for pixel, the sub-sampled ones enlarged 4x by repeating pixels): a display that resamples the image by a
# non-integer factor adds a moiré of its own. Near the plate's corners, where the local frequency approaches 0.5,
# neighbouring samples nearly alternate in sign and their envelope varies slowly (a beat at $0.5 - f$): those faint
# corner patterns are in the samples themselves, the price of a reference that goes almost up to Nyquist.

# %%
zp = signal.zone_plate(zone_plate_size, zone_plate_size, max_freq=zone_plate_max_freq, device=dev)
corner_freq = zone_plate_max_freq * np.sqrt(2)
naive = zp[::decimation, ::decimation]
filtered = signal.ideal_lowpass(zp, 1.0 / decimation)[::decimation, ::decimation]
err = naive - filtered
clean_half_side = (0.5 / decimation) / zone_plate_max_freq  # half-side of the clean square, in units of R
m_coarse = naive.shape[-1]
c = (m_coarse - 1) / 2
iy, ix = torch.meshgrid(torch.arange(m_coarse, device=dev) - c, torch.arange(m_coarse, device=dev) - c,
                        indexing="ij")
cheb = torch.maximum(iy.abs(), ix.abs()) / (m_coarse / 2)  # max(|x|, |y|) / R: its level sets are squares
fig, axes = course.pixel_grid(2, 2, zone_plate_size)
for ax, img, title in zip(axes.flat, [zp, naive, filtered],
                          [f"zone plate, full rate, 1:1 pixels\n(corner {corner_freq:.2f} cycles/sample)",
                           f"every {decimation}th sample: phantom centres\n(each pixel drawn as "
                           f"{zone_plate_size // m_coarse}x{zone_plate_size // m_coarse})",
                           f"ideal low-pass, then every {decimation}th"]):
    ax.imshow(img.cpu(), cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("x (pixels)")
    ax.set_ylabel("y (pixels)")
im = axes[1, 1].imshow(err.cpu(), cmap="RdBu", vmin=-2, vmax=2, interpolation="nearest")
half_px = clean_half_side * m_coarse / 2
axes[1, 1].add_patch(plt.Rectangle((c - half_px, c - half_px), 2 * half_px, 2 * half_px, fill=False, color="k",
                                   ls="--"))
axes[1, 1].set_title("aliasing = naive - filtered\n(dashed: square where |f_x|, |f_y| < new Nyquist)", fontsize=9)
axes[1, 1].set_xlabel("x (pixels)")
course.colorbar_beside(fig, axes[1, 1], im)
save_figure(fig, f"{FIG}/zone_plate.png", dpi=fig.dpi)
plt.show()

# %% [markdown]
# ### The code behind the ideal low-pass
#
# `signal.ideal_lowpass` runs on the real FFT with a cached mask (its fast path). What it computes fits in four
# lines: take the 2-D DFT, keep the bins with $|f_y|, |f_x| < $ `cutoff`/2 cycles/sample, give bins exactly on the
# edge half weight (for an even size the edge bin is shared between $+f$ and $-f$: the split-Nyquist convention of
# `docs/signal.md`), and transform back. The library also keeps a plain reference path, `impl="ref"`: the same
# filter as an explicit circulant matrix per axis. All three must agree on the zone plate to float32 round-off
# (tolerance $10^{-5}$ on values in [−1, 1]).

# %%
def ideal_lowpass_readable(img, cutoff):
    """Square ideal low-pass at `cutoff` (fraction of Nyquist), edge bins at half weight."""
    def mask_1d(n):
        f = torch.fft.fftfreq(n, dtype=torch.float64).abs()
        return (f < cutoff / 2 - 1e-9).double() + 0.5 * ((f - cutoff / 2).abs() < 1e-9).double()
    spectrum = torch.fft.fft2(img.double().cpu())
    return torch.fft.ifft2(spectrum * mask_1d(img.shape[-2])[:, None] * mask_1d(img.shape[-1])[None, :]).real


low_fast = signal.ideal_lowpass(zp, 1.0 / decimation).double().cpu()
reference_gaps = {"readable_vs_fast": float((ideal_lowpass_readable(zp, 1.0 / decimation) - low_fast).abs().max()),
                  "ref_vs_fast": float((signal.ideal_lowpass(zp, 1.0 / decimation, impl="ref").double().cpu()
                                        - low_fast).abs().max())}
metrics["reference_path"] = reference_gaps
print(reference_gaps)
assert max(reference_gaps.values()) < 1e-5


# %% [markdown]
# How much of the naive result is aliasing, and can it be removed *after* sampling? The aliases are folded onto
# frequencies *inside* the new band — the same frequencies where the correct image has its rings — so no filter
# applied after sampling separates them.
#
# Scoring an attempt needs care. The natural score, the error's energy as a fraction of the correct image's
# energy, is exactly 1 for a flat grey image: it removes the aliasing by removing everything. A low-pass with a
# tiny cutoff *is* nearly such a flat image, so "the best post-filter scores about 1" would say nothing. We call
# an image a **recovery** of the band-limited reference only when it passes two tests at once (`course.recovers`):
# error fraction at most `RECOVERY["max_error_fraction"]` *and* correlation with the reference at least
# `RECOVERY["min_correlation"]`. A flat image fails the second test whatever its error. As a positive control, a
# practical pre-filter — a Kaiser low-pass (`6 * decimation + 1` taps, 25 here) before the sub-sampling, not
# the ideal one that defines the reference — must pass. Then we sweep ideal low-passes applied *after* the naive
# sub-sampling, from cutoff 0.05 to 1 (fractions of the new Nyquist).

# %%
def energy(x):
    return float((x - x.mean()).pow(2).mean())


RECOVERY = {"max_error_fraction": 0.25, "min_correlation": 0.9}
post = [{"cutoff": float(c_), **course.match_reference(signal.ideal_lowpass(naive, float(c_)), filtered)}
        for c_ in np.round(np.linspace(0.05, 1.0, 20), 2)]
for r in post:  # course.recovers, from the scores already computed
    r["recovers"] = (r["error_fraction"] <= RECOVERY["max_error_fraction"]
                     and r["correlation"] >= RECOVERY["min_correlation"])
prefiltered = signal.downsample(zp, decimation, method="kaiser", numtaps=6 * decimation + 1, beta=8.0)
flat = torch.zeros_like(filtered)
pre_score = course.match_reference(prefiltered, filtered)
cut = [r["cutoff"] for r in post]
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
for ax, key, limit, label, flat_value in (
        (axes[0], "error_fraction", RECOVERY["max_error_fraction"], "error fraction (log scale)", 1.0),
        (axes[1], "correlation", RECOVERY["min_correlation"], "correlation with the reference", 0.0)):
    ax.plot(cut, [r[key] for r in post], "o-", label="low-pass after naive sub-sampling")
    ax.plot([1.0], [pre_score[key]], "*", ms=14, color="C2", label=f"Kaiser pre-filter ({6 * decimation + 1} taps)")
    ax.axhline(flat_value, color="gray", lw=1, ls="-.", label="flat grey image")
    ax.axhline(limit, color="k", ls=":", lw=1, label="recovery threshold")
    ax.set_xlabel("post-filter cutoff (fraction of the new Nyquist)")
    ax.set_ylabel(label)
axes[0].set_yscale("log")
axes[0].set_title("error: recovery needs it below the threshold", fontsize=10)
axes[1].set_ylim(-0.05, 1.05)
axes[1].set_title("correlation: recovery needs it above the threshold", fontsize=10)
axes[1].legend(fontsize=8, loc="center right")
save_figure(fig, f"{FIG}/post_filter.png")
plt.show()
metrics["zone_plate"] = {
    "max_freq": zone_plate_max_freq, "corner_frequency": float(corner_freq), "decimation": decimation,
    "aliased_energy_fraction": energy(err) / energy(naive),
    "recovery_criterion": RECOVERY,
    "post_filter": post,
    "best_post_filter_correlation": max(r["correlation"] for r in post),
    "best_post_filter_error_fraction": min(r["error_fraction"] for r in post),
    "kaiser_prefilter": course.match_reference(prefiltered, filtered),
    "flat_image": course.match_reference(flat, filtered),
    "clean_square_half_side": clean_half_side,
    "alias_mse_inside_clean_square": float(err[cheb < clean_half_side * 0.9].pow(2).mean()),
    "alias_mse_outside_clean_square": float(err[cheb > clean_half_side].pow(2).mean()),
}
zpm = metrics["zone_plate"]
print({k: v for k, v in zpm.items() if k != "post_filter"})
assert corner_freq < 0.5
assert zpm["aliased_energy_fraction"] > 0.5
assert not any(r["recovers"] for r in post)  # no cutoff passes both tests
assert zpm["best_post_filter_correlation"] < 0.5 and zpm["best_post_filter_error_fraction"] > 1.0 - 1e-9
assert course.recovers(prefiltered, filtered, **RECOVERY)  # the practical pre-filter passes
assert not course.recovers(flat, filtered, **RECOVERY) and zpm["flat_image"]["correlation"] == 0.0
assert not CLAIMS or zpm["alias_mse_inside_clean_square"] < 0.1 * zpm["alias_mse_outside_clean_square"]

# %% [markdown]
# **What to notice.** The full-rate zone plate is clean everywhere (corner frequency below 0.5). After naive
# sub-sampling, more than half of the image's energy is aliasing (`aliased_energy_fraction`), almost all of it
# outside the dashed square where a component of the local frequency exceeds the new Nyquist (inside the square the
# mean squared error is less than a tenth of the outside's; what remains there is the ideal filter's ringing).
#
# Filtering *after* sampling does not help. No cutoff recovers the reference: the best correlation over the sweep
# stays below 0.5 (`best_post_filter_correlation`), and no cutoff's error is below 1, the flat grey image's
# (`best_post_filter_error_fraction`): the post-filter keeps aliases and removes true rings in the same
# proportion, because they sit at the same frequencies. The Kaiser pre-filter, by contrast, passes both
# tests (`kaiser_prefilter`): once folded, aliases are indistinguishable from content, so the low-pass has to come
# *before* the sampling.
#
# ## 3. Moiré and jaggies on a texture
#
# Fine periodic texture (brick, fabric, hair) sub-sampled without a low-pass becomes moiré and jaggies: patterns
# that are not in the scene. The input is a crop of `skimage.data.<image>` at its native resolution (no
# anti-aliased resize first, which would already have removed what we want to see).
#
# We compare the naive sub-sample with a *properly* filtered one: a Kaiser-windowed sinc low-pass
# (`6 * decimation + 1` taps, 25 here, beta 8, cutoff at the new Nyquist) before keeping every
# `decimation`-th pixel. We do not use the ideal FFT low-pass for this picture: its impulse response is an
# untapered sinc, and next to the sharp mortar lines it rings across whole bricks (Gibbs, notebook 01), which would
# hide what we want to show. The tapered Kaiser filter barely rings.
#
# How much energy folds? Sub-sampling keeps the spectrum inside the new-Nyquist square (dashed on the full-rate
# spectrum) and folds everything outside it back in. So the energy that aliases is exactly the energy the image
# *entering the sub-sampler* has outside that square: the raw texture's for the naive route, the low-passed
# texture's for the filtered route (`folded_energy`, as a fraction of the texture's energy; Parseval).
# Spectra are log power with a Hann window (without it, the jump between opposite image borders draws a bright
# cross through the spectrum). The difference map is drawn on its own symmetric colour scale (the 99th percentile
# of its magnitude): on the images' full ±1 scale it would look white.

# %%
gray = course.gray_photo(image, min_side=zone_plate_size)  # grey in [0, 1], colour photos through rgb2gray
s0 = (gray.shape[0] - zone_plate_size) // 2
gray = torch.tensor(gray[s0:s0 + zone_plate_size, s0:s0 + zone_plate_size], dtype=torch.float32, device=dev) * 2 - 1
texture_taps = 6 * decimation + 1
photo_naive = gray[::decimation, ::decimation]
photo_prefiltered = signal.fir_filter(gray, signal.lowpass_filter(texture_taps, 1.0 / decimation, beta=8.0).to(dev))
photo_filtered = photo_prefiltered[::decimation, ::decimation]
assert torch.allclose(photo_filtered, signal.downsample(gray, decimation, method="kaiser", numtaps=texture_taps,
                                                        beta=8.0), atol=1e-5)  # the library's Kaiser down-sampler
photo_ideal = signal.downsample(gray, decimation, method="ideal", nyquist="half")  # split-Nyquist: Parseval below


def log_spectrum(x):
    hann = torch.outer(torch.hann_window(x.shape[0], periodic=False, device=x.device),
                       torch.hann_window(x.shape[1], periodic=False, device=x.device))
    return torch.log10(torch.fft.fftshift(torch.fft.fft2((x - x.mean()) * hann)).abs() ** 2 + 1e-6).cpu()  # to plot


def outside_square_fraction(x, half):
    p = torch.fft.fft2(x - x.mean()).abs() ** 2
    fy = torch.fft.fftfreq(x.shape[0], device=x.device).abs()[:, None]
    fx = torch.fft.fftfreq(x.shape[1], device=x.device).abs()[None, :]
    return float(p[(fy > half) | (fx > half)].sum() / p.sum())


h = 0.5 / decimation
diff = photo_naive - photo_filtered
diff_scale = float(torch.quantile(diff.abs().flatten().double(), 0.99))
fig, axes = course.pixel_grid(2, 4, zone_plate_size, wgap=165)
spec_ext = [-0.5, 0.5, 0.5, -0.5]
panels = [(gray, "texture, full rate (1:1 pixels)"), (photo_naive, f"naive 1/{decimation}: broken, jagged mortar"),
          (photo_filtered, f"{texture_taps}-tap Kaiser low-pass, then 1/{decimation}")]
for col, (img, title) in enumerate(panels):
    axes[0, col].imshow(img.cpu(), cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
    axes[0, col].set_title(title, fontsize=9)
    axes[0, col].set_xlabel("x (pixels)")
    axes[0, col].set_ylabel("y (pixels)")
    im = axes[1, col].imshow(log_spectrum(img), cmap="magma", extent=spec_ext, vmin=-2, vmax=6,
                             interpolation="nearest")
    axes[1, col].set_title("log10 power (Hann window)", fontsize=9)
    axes[1, col].set_xlabel("f_x (cycles/sample)")
    axes[1, col].set_ylabel("f_y (cycles/sample)")
    course.colorbar_beside(fig, axes[1, col], im)
axes[1, 0].add_patch(plt.Rectangle((-h, -h), 2 * h, 2 * h, fill=False, color="c", ls="--", lw=1.5))
im = axes[0, 3].imshow(diff.cpu(), cmap="RdBu", vmin=-diff_scale, vmax=diff_scale, interpolation="nearest")
axes[0, 3].set_title(f"naive - filtered\n(colour scale ±{diff_scale:.2f}: 99th percentile)", fontsize=9)
axes[0, 3].set_xlabel("x (pixels)")
course.colorbar_beside(fig, axes[0, 3], im)
im = axes[1, 3].imshow(log_spectrum(diff), cmap="magma", extent=spec_ext, vmin=-2, vmax=6, interpolation="nearest")
axes[1, 3].set_title("log10 power of naive - filtered", fontsize=9)
axes[1, 3].set_xlabel("f_x (cycles/sample)")
course.colorbar_beside(fig, axes[1, 3], im)
save_figure(fig, f"{FIG}/moire_photo.png", dpi=fig.dpi)
plt.show()
folded = {"naive": outside_square_fraction(gray, h),
          "kaiser": outside_square_fraction(photo_prefiltered, h) * energy(photo_prefiltered) / energy(gray)}
metrics["photo"] = {"image": image, "kaiser_numtaps": texture_taps,
                    "energy_outside_new_nyquist": folded["naive"],
                    "folded_energy": folded,
                    "aliased_energy_fraction": energy(photo_naive - photo_ideal) / energy(photo_naive),
                    "naive_vs_filtered": course.match_reference(photo_naive, photo_filtered),
                    "difference_colour_scale": diff_scale}
print(metrics["photo"])
# Parseval: what folds in the naive route is the energy outside the new-Nyquist square (up to its +-Nyquist split)
assert abs(metrics["photo"]["aliased_energy_fraction"] * energy(photo_naive) / energy(gray) - folded["naive"]) < 0.02
assert folded["naive"] > 0.05 and folded["kaiser"] < folded["naive"] / 5
assert metrics["photo"]["naive_vs_filtered"]["error_fraction"] > 0.05
assert diff_scale < 0.5  # the +-1 image scale would have washed the difference out

# %% [markdown]
# **What to notice.** The naive sub-sample looks *sharper* than the filtered one, and that sharpness is the
# problem: the thin mortar lines break up, jump between one and two pixels wide from brick to brick, and the
# slanted ones turn into staircases. The filtered image shows every mortar line as a soft line of the same width
# everywhere, which is what a band-limited picture of lines thinner than a pixel must look like.
#
# The numbers behind it: the texture has a sizeable share of its energy outside the new-Nyquist square
# (`folded_energy.naive`, above 5%), and all of it folds in the naive route; it reappears as the aliasing of the
# naive result (`aliased_energy_fraction`, its difference from the exactly band-limited ideal result; Parseval: the
# two agree to 0.02). The Kaiser pre-filter lets less than a fifth of that fold (`folded_energy.kaiser`; some still
# does, because this filter's transition band straddles the new Nyquist — notebook 04 moves it below). The
# difference map (top right, on its own colour scale) traces the mortar lines: that is where the fine texture is.
# Its spectrum (bottom right) spreads over the whole small band, low frequencies included: folded fine texture
# becomes coarse patterns.
#
# ## 4. Staircase edges: point, area and band-limited sampling
#
# A sharp slanted bar contains all frequencies. Three ways to turn it into pixels:
#
# * **point sampling** (one sample per pixel): the familiar staircase; as the bar moves by a fraction of a pixel,
#   whole pixels flip or nothing changes;
# * **area sampling** (average of 16x16 sub-samples, a box pre-filter): edges get grey levels proportional to
#   coverage, so the bar's *position* is kept — but a box is not a band-limiting filter: its response
#   $\operatorname{sinc}(f)$ is still 64% ($2/\pi$) at Nyquist and has side-lobes above it, which alias;
# * **band-limited sampling** (ideal low-pass at 0.9 of Nyquist, then point sampling): what a sampling theorem asks
#   for. It rings next to the edge (Gibbs), but its samples describe one band-limited continuous image.
#
# The test that separates them is the one that matters for equivariance: does the rendering of the moved bar equal
# the band-limited (Fourier) shift of the rendering of the unmoved one? We report that PSNR (peak 1, images in
# [0, 1]) for sub-pixel offsets.

# %%
SUPER = 16


def bar_supersampled(size, offset):
    """Slanted bar, point-sampled SUPER times per pixel in each axis; offset moves it left by `offset` pixels."""
    y, x = np.mgrid[0:size * SUPER, 0:size * SUPER] / SUPER
    centre = 0.35 * size + 0.3 * y - offset
    return (np.abs(x - centre) < 3.0).astype(np.float64)


def render(size, offset, how):
    fine = bar_supersampled(size, offset)
    if how == "point":
        return torch.tensor(fine[::SUPER, ::SUPER], device=dev)
    if how == "area":
        return torch.tensor(fine.reshape(size, SUPER, size, SUPER).mean(axis=(1, 3)), device=dev)
    return signal.ideal_lowpass(torch.tensor(fine, device=dev), 0.9 / SUPER)[::SUPER, ::SUPER]


size = 24
offsets = [0.0, 0.25, 0.5, 0.75]
kinds = ["point", "area", "band-limited"]
fig, axes = plt.subplots(3, len(offsets) + 1, figsize=(2.7 * (len(offsets) + 1), 8.4))
consistency = {}
for r, how in enumerate(kinds):
    base_img = render(size, 0.0, how)
    vals = []
    for j, off in enumerate(offsets):
        img = render(size, off, how)
        axes[r, j].imshow(img.cpu(), cmap="gray", vmin=-0.1, vmax=1.1, interpolation="nearest")
        axes[r, j].set_title(f"{how}, offset {off}", fontsize=9)
        axes[r, j].set_xticks([])
        axes[r, j].set_yticks([])
        if off > 0:
            moved = signal.fourier_shift(base_img, (0.0, -off))
            vals.append(float(course.db_from_mse(float((img - moved).pow(2).mean()), peak=1.0)))
            if off == 0.5:
                im = axes[r, -1].imshow((img - moved).cpu(), cmap="RdBu", vmin=-0.5, vmax=0.5, interpolation="nearest")
                axes[r, -1].set_title(f"offset 0.5 minus shifted offset 0\n({vals[-1]:.1f} dB)", fontsize=9)
                axes[r, -1].set_xticks([])
                axes[r, -1].set_yticks([])
                fig.colorbar(im, ax=axes[r, -1], fraction=0.046)
    consistency[how] = float(np.mean(vals))
fig.suptitle("Moving a slanted bar by sub-pixel offsets: is the result a shift of the unmoved rendering?")
save_figure(fig, f"{FIG}/staircase_edges.png")
plt.show()
box = torch.ones(SUPER, dtype=torch.float64, device="cpu") / SUPER  # a filter analysed in numpy: host side
box = torch.cat([box, torch.zeros(1, dtype=torch.float64, device="cpu")])  # centre it on a fine sample (odd length)
box_nyquist = float(course.dtft(box, np.array([0.5 / SUPER]))[0])
sidelobe = float(course.dtft(box, np.linspace(1.0, 2.0, 201) / SUPER).max())  # first side-lobe
metrics["staircase"] = {"offsets": offsets[1:], "shift_consistency_psnr_db": consistency,
                        "box_gain_at_nyquist": box_nyquist, "box_first_sidelobe_gain": sidelobe}
print(metrics["staircase"])
assert consistency["band-limited"] > 100 > consistency["area"] + 40
assert consistency["area"] > consistency["point"] + 5
assert abs(box_nyquist - 2 / np.pi) < 0.02 and 0.2 < sidelobe < 0.23

# %% [markdown]
# **What to notice.** Only the band-limited rendering moves exactly: its PSNR against the Fourier-shifted unmoved
# rendering is at round-off level, above 100 dB. Area sampling is much better than point sampling (it keeps the
# bar's sub-pixel position in the grey levels), but it is not a shift of one band-limited image: the box passes
# 64% of its DC gain at Nyquist, and its first side-lobe, between 1 and 2 cycles/pixel, still passes about 22%
# (-13 dB; `box_gain_at_nyquist`, `box_first_sidelobe_gain`); all of that aliases. Alias-free networks need the
# third kind of sampling.

# %%
save_json(metrics, "metrics/00_sampling_and_aliasing.json")

# %% [markdown]
# ## Exercises
#
# **1.** With `sample_rate = 10`, which frequency does a 17-cycle sinusoid alias to? Check it by comparing samples.
# If the 17-cycle signal is delayed by 0.01 time units, how far and in which direction does its alias move?

# %% tags=["solution"]
f, fs = 17.0, 10.0
fa = float(course.fold(f, fs))
ts = np.arange(0, 1, 1 / fs)
gap = np.abs(np.cos(2 * np.pi * f * ts) - np.cos(2 * np.pi * fa * ts)).max()
# 17 = 2 * 10 - 3: the spectrum folded (odd number of reflections), so the alias moves backwards, 17/3 as far
delay = 0.01
alias_delay = -delay * f / fa
moved_gap = np.abs(np.cos(2 * np.pi * f * (ts - delay)) - np.cos(2 * np.pi * fa * (ts - alias_delay))).max()
print(f"alias {fa:g}, sample gap {gap:.1e}; alias delay {alias_delay:+.4f}, gap {moved_gap:.1e}")
assert fa == 3.0 and gap < 1e-9 and moved_gap < 1e-9

# %% [markdown]
# **2.** Sub-sample the zone plate by 2 instead of `decimation`. Up to which radius (as a fraction of R) are the rings
# still alias-free? Predict it from the local frequency `max_freq * r / R` and the new Nyquist 0.25, then measure
# the radius where the aliasing error first becomes visible.

# %% tags=["solution"]
predicted = 0.25 / zone_plate_max_freq
err2 = zp[::2, ::2] - signal.ideal_lowpass(zp, 0.5)[::2, ::2]
m2 = err2.shape[-1]
rr = torch.hypot(*torch.meshgrid(torch.arange(m2, device=dev) - (m2 - 1) / 2,
                                 torch.arange(m2, device=dev) - (m2 - 1) / 2, indexing="ij")) / (m2 / 2)
ring = 2.0 / m2  # one pixel wide rings
radii = np.arange(0.05, 1.4, ring)
rms = [float(err2[(rr >= a) & (rr < a + ring)].pow(2).mean().sqrt()) for a in radii]
measured = float(radii[np.argmax(np.array(rms) > 0.2)])
print(f"predicted r/R = {predicted:.3f}, measured onset {measured:.3f} (ring width {ring:.3f})")
assert abs(measured - predicted) < max(0.08, 3 * ring)

# %% [markdown]
# **3.** Why does the area-sampled bar keep its position? Compute each row's intensity centroid
# $\sum_k k I_k / \sum_k I_k$ for every offset: for area sampling it moves by exactly the offset (the bar's width is
# a whole number of pixels, so the box averages lose no position), for point sampling it moves in jumps.

# %% tags=["solution"]
def centroids(how, off):
    img = render(size, off, how).cpu().numpy()
    return (img * np.arange(size)).sum(-1) / img.sum(-1)


moves = {how: [centroids(how, o) - centroids(how, 0.0) for o in offsets] for how in ("area", "point")}
for how, mv in moves.items():
    print(how, "mean centroid move per offset:", [round(float(m.mean()), 3) for m in mv],
          "largest row error:", round(max(float(np.abs(m + o).max()) for m, o in zip(mv, offsets)), 3))
assert all(np.allclose(m, -o, atol=1e-9) for m, o in zip(moves["area"], offsets))
assert max(float(np.abs(m + o).max()) for m, o in zip(moves["point"], offsets)) > 0.2
