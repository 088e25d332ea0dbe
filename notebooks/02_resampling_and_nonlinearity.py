# %% [markdown]
# # 02 · Resampling and nonlinearities: where a U-Net aliases
#
# A U-Net changes resolution (down on the way in, up on the way out) and applies pointwise nonlinearities
# everywhere. Both create aliasing:
#
# * **Down-sampling** by strided convolution, max-pooling or plain sub-sampling keeps every 2nd sample without
#   first removing the top half of the spectrum, so it folds back (notebook 00).
# * **Up-sampling** by nearest or bilinear interpolation leaves *images* of the spectrum (copies around the old
#   sampling frequency) in the new top half band: high-frequency junk locked to the old grid.
# * **Nonlinearities** such as ReLU, GELU and SiLU create new frequencies (a product of sinusoids contains sums of
#   their frequencies). Anything above Nyquist folds back.
#
# The alias-free versions (StyleGAN3, AF-LDM, Anjum et al.) low-pass before discarding samples, interpolate with a
# proper reconstruction filter, and evaluate nonlinearities at twice the rate, low-pass, and come back. Here we look
# at the spectra before and after each.

# %% tags=["parameters"]
profile = "cpu"
seed = 0
device = "auto"
deterministic = True
size = 128
image = "astronaut"
signal_cutoff = 0.6
activations = ["relu", "gelu", "silu"]
kaiser_numtaps = 13
kaiser_beta = 8.0

# %%
import matplotlib.pyplot as plt
import numpy as np
import skimage.transform
import torch
import torch.nn.functional as F

from afcore import course, layers, signal
from afcore.metrics import spsnr
from afcore.utils import save_figure, save_json, seed_everything
from afcore.device import pick_device

seed_everything(seed)
dev = pick_device(device, deterministic)  # every image, signal and layer lives here; plots get CPU copies
FIG = "figures/02_resampling_and_nonlinearity"
metrics = {"profile": profile, "size": size}
ACTS = {"relu": torch.nn.ReLU(), "gelu": torch.nn.GELU(), "silu": torch.nn.SiLU()}
for a in activations:
    if a not in ACTS:
        raise ValueError(f"activations: unknown {a!r}; allowed: {sorted(ACTS)}")
kaiser = dict(method="kaiser", numtaps=kaiser_numtaps, beta=kaiser_beta)

gray = course.gray_photo(image, min_side=size)  # grey in [0, 1], colour photos through rgb2gray
# a crop at native resolution: an anti-aliased resize first would remove the very content that aliases
s0 = (gray.shape[0] - size) // 2
x = torch.tensor(gray[s0:s0 + size, s0:s0 + size], dtype=torch.float32, device=dev) * 2 - 1


def log_spec(t):
    """log10 power with a Hann window (no bright cross from the jump between opposite borders)."""
    hann = torch.outer(torch.hann_window(t.shape[-2], periodic=False, device=t.device),
                       torch.hann_window(t.shape[-1], periodic=False, device=t.device))
    return torch.log10(torch.fft.fftshift(torch.fft.fft2((t - t.mean()) * hann)).abs() ** 2 + 1e-6).cpu()  # to plot


SPEC_EXTENT = [-0.5, 0.5, 0.5, -0.5]


def high_band_fraction(t, band=0.25):
    """Fraction of (non-DC) energy at frequencies above `band` cycles/sample in either axis."""
    p = torch.fft.fft2(t - t.mean()).abs() ** 2
    fy = torch.fft.fftfreq(t.shape[-2], device=t.device).abs()[:, None]
    fx = torch.fft.fftfreq(t.shape[-1], device=t.device).abs()[None, :]
    high = (fy > band) | (fx > band)
    return float(p[..., high].sum() / p.sum())

# %% [markdown]
# ## 1. Down-sampling by 2
#
# Compare plain sub-sampling (what a stride-2 convolution does after its taps), 2x2 max-pooling, 2x2 average
# pooling, and the alias-free versions (ideal FFT low-pass or 13-tap Kaiser FIR, then sub-sample) against the ideal
# result: relative error energy (mean removed). Pooling has a catch: output pixel $i$ summarises input pixels $2i$
# and $2i+1$, so it sits at $2i + 0.5$, half an input pixel off the grid that sub-sampling keeps. Comparing it with
# the ideal result on the wrong grid mixes that offset into the error; we report both, and the aligned error uses the
# ideal down-sampling of the input shifted by half a pixel. (A 2x2 average is area sampling, notebook 00: better than
# nothing, not band-limiting.)

# %%
x4 = x[None, None]
ideal = signal.downsample(x, 2, method="ideal")
ideal_half = signal.downsample(signal.fourier_shift(x, (-0.5, -0.5)), 2, method="ideal")  # grid at 2i + 0.5
down = {
    "stride 2 (sub-sample)": (x[::2, ::2], ideal),
    "max-pool 2x2": (F.max_pool2d(x4, 2)[0, 0], ideal_half),
    "avg-pool 2x2": (F.avg_pool2d(x4, 2)[0, 0], ideal_half),
    "Kaiser 13 low-pass + stride": (signal.downsample(x, 2, **kaiser), ideal),
    "ideal low-pass + stride": (ideal, ideal),
}


def rel_err(out, ref):
    diff = (out - out.mean()) - (ref - ref.mean())
    return float(diff.pow(2).sum() / (ref - ref.mean()).pow(2).sum())


fig, axes = plt.subplots(2, len(down), figsize=(3.6 * len(down), 7), gridspec_kw={"wspace": 0.35})
rows = []
for j, (name, (out, ref)) in enumerate(down.items()):
    axes[0, j].imshow(out.cpu(), cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
    axes[0, j].set_title(name, fontsize=9)
    im = axes[1, j].imshow((out - ref).cpu(), cmap="RdBu", vmin=-0.5, vmax=0.5, interpolation="nearest")
    axes[1, j].set_title(f"minus ideal{' (aligned)' if ref is ideal_half else ''}: {rel_err(out, ref):.4f}",
                         fontsize=9)
    for ax in axes[:, j]:
        ax.set_xlabel("x (pixels)")
    axes[0, j].set_ylabel("y (pixels)")
    rows.append({"method": name, "relative_error_vs_ideal": rel_err(out, ref),
                 "relative_error_unaligned": rel_err(out, ideal)})
fig.colorbar(im, ax=list(axes[1]), fraction=0.015, label="error")
save_figure(fig, f"{FIG}/downsampling.png")
plt.show()
metrics["downsampling"] = rows
dn = {r["method"]: r for r in rows}
rows

# %% [markdown]
# **What to notice.** Aligned, the 2x2 average is within about 1% of the ideal result (its error drops several-fold
# when the half-pixel offset is taken into account); plain sub-sampling and max-pooling are several times worse, and
# the error maps show where: fine texture and edges. The 13-tap Kaiser filter gets within a fraction of a percent.

# %%
assert dn["ideal low-pass + stride"]["relative_error_vs_ideal"] < 1e-10
assert dn["avg-pool 2x2"]["relative_error_vs_ideal"] < dn["avg-pool 2x2"]["relative_error_unaligned"] / 3
assert dn["Kaiser 13 low-pass + stride"]["relative_error_vs_ideal"] < dn["avg-pool 2x2"]["relative_error_vs_ideal"]
assert dn["avg-pool 2x2"]["relative_error_vs_ideal"] < dn["stride 2 (sub-sample)"]["relative_error_vs_ideal"]
assert dn["max-pool 2x2"]["relative_error_vs_ideal"] > dn["stride 2 (sub-sample)"]["relative_error_vs_ideal"]

# %% [markdown]
# ## 2. Up-sampling by 2
#
# Nearest and bilinear interpolation leave spectral images (copies of the spectrum around the old sampling
# frequency) in the outer part of the new spectrum; the ideal and Kaiser reconstructions leave that band (almost)
# empty. All spectra here are of the up-sampled (fine) images, so their axes are in cycles per sample of the 2x
# grid: the old Nyquist (0.5 cycles per *input* sample) sits at 0.25. We report the fraction of energy outside the
# old Nyquist square ($|f_x|$ or $|f_y| > 0.25$ cycles per 2x-grid sample, dashed): anything there is an artefact of
# the grid, not content.

# %%
small = signal.downsample(x, 2, method="ideal")
s4 = small[None, None]
up = {
    "nearest": F.interpolate(s4, scale_factor=2, mode="nearest")[0, 0],
    "bilinear": F.interpolate(s4, scale_factor=2, mode="bilinear", align_corners=False)[0, 0],
    "Kaiser 13 (zero-insert + FIR)": signal.upsample(small, 2, **kaiser),
    "ideal (FFT)": signal.upsample(small, 2, method="ideal"),
}
fig, axes = plt.subplots(2, len(up), figsize=(3.8 * len(up), 7.4), gridspec_kw={"wspace": 0.4})
rows = []
for j, (name, out) in enumerate(up.items()):
    qy, qx = slice(size // 2, 3 * size // 4), slice(0, size // 4)  # a textured quarter (helmet rim)
    axes[0, j].imshow(out[qy, qx].cpu(), cmap="gray", vmin=-1, vmax=1, interpolation="nearest",
                      extent=[qx.start, qx.stop, qy.stop, qy.start])
    axes[0, j].set_title(f"{name} (detail)", fontsize=9)
    axes[0, j].set_xlabel("x (pixels)")
    axes[0, j].set_ylabel("y (pixels)")
    im = axes[1, j].imshow(log_spec(out), cmap="magma", extent=SPEC_EXTENT, vmin=-3, vmax=5)
    axes[1, j].add_patch(plt.Rectangle((-0.25, -0.25), 0.5, 0.5, fill=False, color="c", ls="--"))
    axes[1, j].set_xlabel("f_x (cycles per 2x-grid sample)")
    if j == 0:
        axes[1, j].set_ylabel("f_y (cycles per 2x-grid sample)")
    rows.append({"method": name, "energy_above_old_nyquist": high_band_fraction(out)})
    axes[1, j].set_title(f"log10 power; outside square: {rows[-1]['energy_above_old_nyquist']:.4f}", fontsize=9)
fig.colorbar(im, ax=list(axes[1]), fraction=0.015, label="log10 power")
save_figure(fig, f"{FIG}/upsampling.png")
plt.show()
metrics["upsampling"] = rows
e_up = [r["energy_above_old_nyquist"] for r in rows]
assert e_up[0] > e_up[1] > e_up[2] > e_up[3] and e_up[3] < 1e-10
rows

# %% [markdown]
# **What to notice.** Nearest leaves the most energy outside the old band, bilinear several times less, the 13-tap
# Kaiser reconstruction less again, the ideal one none (round-off).

# %% [markdown]
# ### Decimation and expansion as replica diagrams
#
# Both results follow from one picture (`afcore.course_figures.draw_replicas`; blue: positive-frequency half,
# orange: negative half). **Decimation** by 2 (keep every 2nd sample) stretches the spectrum by 2, halves it, and
# repeats it at every whole cycle per *new* sample: a band of half-width $B$ cycles/sample becomes $2B$, and if
# $2B > 0.5$ neighbouring copies overlap (hatched) — unless a low-pass at the new Nyquist cut the band to
# $B \le 0.25$ first. **Expansion** by 2 (zero insertion) squeezes the spectrum by 2 and leaves a copy (an *image*)
# centred on 0.5 cycles per new sample; the reconstruction low-pass (dashed green, cutoff 0.25) must remove it —
# nearest and bilinear interpolation only attenuate it, which is the energy outside the square above. Each diagram
# is checked against the DFT of a real signal whose spectrum is the triangle (tolerance $10^{-12}$).

# %%
from afcore import course_figures as cf

n_tri = 480
tri_freq = np.fft.fftfreq(n_tri)
cases = [("decimate by 2, B = 0.35", 0.35, "down"), ("low-pass to B = 0.25, then decimate by 2", 0.25, "down"),
         ("expand by 2 (zero insertion), B = 0.4", 0.4, "up")]
fig, axes = plt.subplots(1, 3, figsize=(15, 3.4), sharey=True)
replica_rows = {}
for ax, (title, band, kind) in zip(axes, cases):
    tri = np.real(np.fft.ifft(cf.triangle(tri_freq, band)))  # a real signal whose spectrum is the triangle
    if kind == "down":
        out, width, period, height = tri[::2], 2 * band, 1.0, 0.5
        overlap = cf.draw_replicas(ax, band=width, period=period, nyquist=0.5, height=height, f_span=1.6, title=title)
    else:
        out = np.zeros(2 * n_tri)
        out[::2] = tri
        width, period, height = band / 2, 0.5, 1.0
        overlap = cf.draw_replicas(ax, band=width, period=period, nyquist=0.5, height=height, f_span=1.6,
                                   lowpass=0.25, title=title)
    f_out = np.fft.fftfreq(out.size)
    predicted = cf.replica_sum(f_out, width, cf.replica_centres(period, -0.5, 0.5, width), height)
    replica_rows[title] = {"aliased_fraction_of_baseband": overlap,
                           "dft_vs_replica_sum": float(np.abs(np.abs(np.fft.fft(out)) - predicted).max())}
    ax.set_xlabel("frequency (cycles per new sample)")
axes[0].set_ylabel("magnitude")
axes[2].legend(fontsize=7, loc="upper right")
save_figure(fig, f"{FIG}/resampling_replicas.png")
plt.show()
metrics["resampling_replicas"] = replica_rows
print(replica_rows)
assert all(r["dft_vs_replica_sum"] < 1e-12 for r in replica_rows.values())
assert replica_rows[cases[0][0]]["aliased_fraction_of_baseband"] > 0.05
assert replica_rows[cases[1][0]]["aliased_fraction_of_baseband"] == 0.0
assert replica_rows[cases[2][0]]["aliased_fraction_of_baseband"] == 0.0  # images sit outside |f| < 0.25

# %% [markdown]
# **What to notice.** Left: the stretched band (0.7) overlaps its neighbours inside the new band (hatched), so the
# decimated samples are aliased; middle: after the low-pass the copies just touch at ±0.5 and nothing overlaps.
# Right: expansion adds no overlap, but the image centred on ±0.5 fills the outer half of the new band, and only
# the low-pass (green) separates it from the baseband. In every panel the DFT of the actual signal equals the
# drawn sum of copies (`dft_vs_replica_sum`).

# %% [markdown]
# ## 3. Nonlinearities create frequencies, and where they fold
#
# Take a band-limited signal (a 1-D sum of sinusoids below `signal_cutoff` of Nyquist, i.e. below
# `signal_cutoff / 2` cycles/sample) and apply ReLU, GELU, SiLU. All frequencies in this section are in **cycles per
# original sample** (the grid's Nyquist is 0.5). To see the spectrum of the *continuous* activation output we need
# a proxy: the same line up-sampled `PROXY` = 32 times (ideal interpolation), with the activation applied there. A
# proxy only shows frequencies up to its own Nyquist, `PROXY / 2` cycles per original sample, and what the
# activation creates above that folds *inside the proxy* and lands near the top of its spectrum. So the proxy must
# be fine enough that every band we measure lies well below `PROXY / 2`: an 8x proxy (Nyquist 4) would be
# useless for the 4x question below, whose first folding band is 3.5 to 4.5. We check the proxy by repeating the
# measurement on a proxy twice as fine (`proxy_check`).
#
# Where does each part of the output spectrum go? The filtered nonlinearity evaluates the activation on a grid with
# `R` samples per original sample (R = 2 or 4), low-passes at the **original grid's** Nyquist (0.5, not the input
# band) and drops samples. On that grid a frequency $f$ shows up at its alias $\operatorname{fold}(f, R)$, the
# distance from $f$ to the nearest multiple of $R$ (`afcore.course.fold`):
#
# * below 0.5: kept — including the new harmonics between the input band and 0.5, which the grid can represent;
# * above 0.5 with $\operatorname{fold}(f, R) > 0.5$: removed by the low-pass (`removed_at_2x`);
# * above 0.5 with $\operatorname{fold}(f, R) \le 0.5$, i.e. within 0.5 of a multiple of $R$: these land *in* the
#   kept band and pass the low-pass: residual aliasing. At 2x that is 1.5–2.5, 3.5–4.5, …; at 4x 3.5–4.5,
#   7.5–8.5, … (shaded). The plain activation (R = 1) folds everything above 0.5.
#
# We measure each part's share of the output energy (DC excluded).

# %%
n = 256
PROXY = 32  # samples of the proxy per original sample: it resolves the output up to PROXY / 2 = 16
g = torch.Generator().manual_seed(seed)  # host-side draws (the same numbers on every device), then moved
k = torch.randint(1, int(signal_cutoff * n / 2), (6,), generator=g, device="cpu").to(dev)
t = torch.arange(n, dtype=torch.float64, device=dev)
line = sum(torch.cos(2 * np.pi * kk * t / n
                     + 2 * np.pi * torch.rand(1, generator=g, dtype=torch.float64, device="cpu").to(dev))
           for kk in k) / 3


def output_spectrum(act, proxy):
    """Power spectrum of act(line) on a `proxy`x grid (a proxy for the continuous output), with its frequencies in
    cycles per original sample (0 to proxy / 2)."""
    out = act(signal.upsample(line[None], proxy, method="ideal")[0])
    spec = (torch.fft.rfft(out).abs() ** 2).cpu().numpy()
    return torch.fft.rfftfreq(out.numel()).numpy() * proxy, spec


def band_shares(act, proxy):
    freqs, spec = output_spectrum(act, proxy)
    total = spec[1:].sum()
    share = lambda mask: float(spec[mask].sum() / total)
    above = freqs > 0.5
    folds = lambda rate: above & (course.fold(freqs, rate) <= 0.5)  # aliases into the kept band on that grid
    return {"input_band": share((freqs > 0) & (freqs <= signal_cutoff / 2)),
            "new_in_band": share((freqs > signal_cutoff / 2) & (freqs <= 0.5)),
            "energy_above_nyquist": share(above), "removed_at_2x": share(above & ~folds(2)),
            "folds_at_2x": share(folds(2)), "folds_at_4x": share(folds(4))}


def fold_bands(rate, f_max):
    """The intervals [k rate - 0.5, k rate + 0.5] (k >= 1) below f_max: what folds into the kept band at `rate`."""
    return [(m * rate - 0.5, m * rate + 0.5) for m in range(1, int(f_max / rate) + 1)]


F_SHOW = 5.0
fig, axes = plt.subplots(1, len(activations), figsize=(5 * len(activations), 3.8), sharey=True)
rows = []
for ax, name in zip(np.atleast_1d(axes), activations):
    freqs, spec = output_spectrum(ACTS[name], PROXY)
    ax.semilogy(freqs, spec + 1e-12, lw=0.8)
    ax.axvline(signal_cutoff / 2, color="k", ls=":", lw=1, label="input band")
    ax.axvline(0.5, color="r", ls="--", lw=1, label="Nyquist of the grid")
    for i, (lo, hi) in enumerate(fold_bands(2, F_SHOW)):
        ax.axvspan(lo, hi, color="orange", alpha=0.25, label="folds back at 2x" if i == 0 else None)
    for i, (lo, hi) in enumerate(fold_bands(4, F_SHOW)):
        ax.axvspan(lo, hi, fill=False, hatch="//", edgecolor="purple", lw=0, label="folds back at 4x" if i == 0 else None)
    ax.set_title(f"{name}(band-limited signal), {PROXY}x proxy")
    ax.set_xlabel("frequency (cycles per original sample)")
    ax.set_xlim(0, F_SHOW)
    shares = band_shares(ACTS[name], PROXY)
    finer = band_shares(ACTS[name], 2 * PROXY)
    coarse8 = band_shares(ACTS[name], 8)
    rows.append({"activation": name, **shares, "proxy": PROXY,
                 # the largest relative change of a share when the proxy is twice as fine (shares above 1e-20)
                 "proxy_check": max(abs(finer[key] - v) / v for key, v in shares.items() if v > 1e-20),
                 "folds_at_4x_8x_proxy": coarse8["folds_at_4x"]})
np.atleast_1d(axes)[0].set_ylabel("power")
fig.legend(*np.atleast_1d(axes)[0].get_legend_handles_labels(), fontsize=8, ncol=4, loc="upper center",
           bbox_to_anchor=(0.5, 0.0))  # below the panels, clear of the spectra
save_figure(fig, f"{FIG}/nonlinearity_spectra.png")
plt.show()
metrics["nonlinearity_energy_above_nyquist"] = rows
nl = {r["activation"]: r for r in rows}
for r in rows:
    assert r["energy_above_nyquist"] > r["folds_at_2x"] > r["folds_at_4x"] and r["new_in_band"] > 0
    assert abs(r["energy_above_nyquist"] - r["removed_at_2x"] - r["folds_at_2x"]) < 1e-12
    assert r["proxy_check"] < 0.05, "the proxy does not resolve the bands: make PROXY larger"
if "relu" in nl:  # the kink: the most energy above Nyquist, by orders of magnitude over the smooth activations
    assert all(nl["relu"]["energy_above_nyquist"] > 10 * nl[s]["energy_above_nyquist"] for s in nl if s != "relu")
    # an 8x proxy sees only 3.5-4 of the 4x folding band, and that part is polluted by its own folding
    assert abs(nl["relu"]["folds_at_4x_8x_proxy"] / nl["relu"]["folds_at_4x"] - 1) > 0.1
rows

# %% [markdown]
# **What to notice.** Every activation puts energy above the grid's Nyquist (ReLU, with its kink, the most; the
# smooth GELU and SiLU orders of magnitude less). Most of it is removed by the 2x filtered version
# (`removed_at_2x`); the part within 0.5 of 2, 4, … (`folds_at_2x`) folds back even there, and 4x leaves less still
# (`folds_at_4x`, only the bands around 4, 8, …), at four times the cost of the activation and filters (notebook
# 04). Energy between the input band and 0.5 (`new_in_band`) is kept on purpose: it is representable. The proxy
# matters: a twice finer proxy changes no share by more than a few percent (`proxy_check`), while an 8x proxy
# misjudges ReLU's 4x folding (`folds_at_4x_8x_proxy`), because it can see only half of the band 3.5–4.5, and
# what it shows there includes harmonics above 4 folded inside the proxy itself.
#
# ## 4. The filtered nonlinearity, measured
#
# On a 2-D band-limited image (float64) we compare `act(x)` with `FilteredActivation(act)(x)` by their equivariance
# to a sub-pixel shift: SPSNR (peak 2, circular Fourier shift) between `f(shift(x))` and `shift(f(x))`. The shift is
# 0.3 pixel in both axes on purpose: a shift of 1/2 (or 1/4) pixel is an *integer* shift on the 2x (4x) grid where
# the activation runs, which would hide its aliasing. Rows: plain; 13-tap Kaiser filters; ideal filters at 2x and
# 4x; and the ideal ones followed by a low-pass at 0.9 of the grid's Nyquist.
#
# Why the last two? They are a diagnostic for the *ideal* (FFT) filters only, and they separate two error sources.
# Besides folding, the ideal rows carry a bookkeeping artefact of the DFT: with the split-Nyquist convention
# (`nyquist="half"`) the low-pass keeps the grid's Nyquist bin at half weight, and a component at exactly Nyquist
# cannot be moved by a fractional shift (its phase is ambiguous: `afcore.signal` keeps only $\cos(\pi d)$ of it).
# Removing that one bin (a cutoff at 0.9 of Nyquist, or `nyquist="zero"` as the models use) removes the artefact and
# leaves the folding. This artefact is a property of FFT filters on a finite grid; it is **not** why StyleGAN3 puts
# its cutoffs below Nyquist. That reason is about FIR filters, and the second half of this section measures it.

# %%
img = signal.ideal_lowpass(x.double(), signal_cutoff)
scale = 2.0 / (img.max() - img.min())
img = (img - img.mean()) * scale  # roughly in [-1, 1], so the nonlinearity's bend matters
d_test = (0.3, 0.3)
rows = []
for name in activations:
    act = ACTS[name]
    variants = {
        "plain": act,
        "kaiser_2x": layers.FilteredActivation(act, **kaiser).to(dev),
        # the split-Nyquist convention (half weight at the edge) keeps the grid-Nyquist term this section measures;
        # the models use nyquist="zero" (the AF-LDM reference), which removes that term
        "ideal_2x": layers.FilteredActivation(act, up=2, method="ideal", nyquist="half").to(dev),
        "ideal_4x": layers.FilteredActivation(act, up=4, method="ideal", nyquist="half").to(dev),
    }
    variants["ideal_2x_below_nyquist"] = lambda t, f=variants["ideal_2x"]: signal.ideal_lowpass(f(t), 0.9)
    variants["ideal_4x_below_nyquist"] = lambda t, f=variants["ideal_4x"]: signal.ideal_lowpass(f(t), 0.9)
    row = {"activation": name}
    for key, f in variants.items():
        row[f"spsnr_{key}_db"] = min(float(spsnr(f, img, d_test, mode="circular")), 200.0)
    row["gain_ideal_db"] = row["spsnr_ideal_2x_db"] - row["spsnr_plain_db"]
    row["gain_kaiser_db"] = row["spsnr_kaiser_2x_db"] - row["spsnr_plain_db"]
    rows.append(row)
metrics["filtered_activation_spsnr"] = rows
metrics["filtered_activation_shift"] = list(d_test)
keys = [k for k in rows[0] if k.startswith("spsnr_")]
fig, ax = plt.subplots(figsize=(10, 3.8))
w = 0.8 / len(keys)
for i, key in enumerate(keys):
    ax.bar(np.arange(len(rows)) + (i - len(keys) / 2 + 0.5) * w, [r[key] for r in rows], w,
           label=key.replace("spsnr_", "").replace("_db", "").replace("_", " "))
ax.set_xticks(range(len(rows)), [r["activation"] for r in rows])
ax.set_ylabel(f"SPSNR (dB, peak 2), shift {d_test}")
ax.set_xlabel("activation")
ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))  # outside the axes: never over a bar
save_figure(fig, f"{FIG}/filtered_activation_spsnr.png")
plt.show()
fa = {r["activation"]: r for r in rows}
for r in rows:
    assert r["gain_ideal_db"] > 10 and 3 < r["gain_kaiser_db"] < r["gain_ideal_db"]
    assert r["spsnr_ideal_4x_below_nyquist_db"] > r["spsnr_ideal_4x_db"] + 5
if "relu" in fa:  # ReLU's kink folds at 2x: 4x helps, most of all once the Nyquist term is gone
    assert fa["relu"]["spsnr_ideal_4x_below_nyquist_db"] > fa["relu"]["spsnr_ideal_2x_below_nyquist_db"] + 10
for smooth in ("gelu", "silu"):  # smooth activations barely fold at 2x: the Nyquist term is the whole error
    if smooth in fa:
        assert fa[smooth]["spsnr_ideal_2x_below_nyquist_db"] > 120
        assert abs(fa[smooth]["spsnr_ideal_4x_db"] - fa[smooth]["spsnr_ideal_2x_db"]) < 1
rows

# %% [markdown]
# **What to notice.** The ideal filtered nonlinearity raises the shift consistency by more than 10 dB for every
# activation (`gain_ideal_db`); with the 13-tap Kaiser filters the gain is smaller (`gain_kaiser_db`, about 7–10 dB):
# their transition band straddles the grid's Nyquist (notebook 01), so some aliasing passes — the next cell shows
# why, and what fixes it. For the ideal version the two error sources separate. For GELU and SiLU, 4x is no better
# than 2x, but removing the Nyquist bin takes SPSNR above 120 dB: their whole error was that DFT artefact, not
# folding. For ReLU, whose kink has strong harmonics in the folding bands of §3, 4x clearly beats 2x once the
# Nyquist bin is gone: that error was folding. `make bench` measures the time.
#
# ### One filtered activation, stage by stage
#
# What does the filtered nonlinearity do to a spectrum (StyleGAN3, Fig. 3)? `course_figures.filtered_activation_stages`
# writes it out in plain lines — zero insertion, the 13-tap Kaiser low-pass with gain 2 (up-sampling), the
# activation on the 2x grid, the same low-pass, every 2nd sample kept. First we check that these readable lines
# compute what the fast layer computes (`layers.FilteredActivation(..., method="kaiser")`, fused polyphase code) on
# the 2-D image, to $10^{-10}$ in float64; the library's own reference path (`impl="ref"`) must agree too.
#
# Then a 1-D line of two sinusoids (0.133 and 0.367 cycles/sample, on DFT bins) goes through ReLU. All frequencies
# are in **cycles per input sample**: the 2x grid reaches 1.0. Each panel overlays the filter's response (green,
# right axis). Look at the activated spectrum: ReLU's harmonics fill the whole 2x band, and those above 0.5 would
# fold on the input grid; the low-pass removes what lies in its stop-band, and what survives above 0.5 (its
# transition band straddles 0.5) folds when every 2nd sample is dropped.

# %%
fa_taps = signal.kaiser_taps(2, kaiser_numtaps, kaiser_beta, False, True).to(torch.float64).to(dev)
stages2d = cf.filtered_activation_stages(img, ACTS["relu"], 2, fa_taps, dims=(-2, -1))
fa_layer = layers.FilteredActivation(ACTS["relu"], **kaiser, impl="fast").to(dev)
stage_check = {"readable_vs_fast": float((stages2d["output"] - fa_layer(img)).abs().max()),
               "ref_vs_fast": float((layers.FilteredActivation(ACTS["relu"], **kaiser, impl="ref").to(dev)(img)
                                     - fa_layer(img)).abs().max())}
assert max(stage_check.values()) < 1e-10, stage_check

n_line = 256
tt = torch.arange(n_line, dtype=torch.float64, device=dev)
tones = (34, 94)  # DFT bins: 34/256 = 0.133, 94/256 = 0.367 cycles/sample
line2 = 0.8 * torch.cos(2 * np.pi * tones[0] * tt / n_line) + 0.6 * torch.cos(2 * np.pi * tones[1] * tt / n_line + 1)
st = cf.filtered_activation_stages(line2, ACTS["relu"], 2, fa_taps)
panels = [("input (1x grid)", st["input"], 1), ("up-sampled (2x grid)", st["upsampled"], 2),
          ("ReLU on the 2x grid", st["activated"], 2), ("low-passed (2x grid)", st["lowpassed"], 2),
          ("output: every 2nd sample (1x grid)", st["output"], 1)]
plain_f, plain_p = cf.power_spectrum(ACTS["relu"](line2), 1)
resp_f = np.linspace(0, 1.0, 801)
response = course.dtft(fa_taps, resp_f / 2)  # the taps live on the 2x grid: f input cycles = f/2 there
fig, axes = plt.subplots(len(panels), 1, figsize=(10, 2.0 * len(panels)), sharex=True)
stage_energy = {}
for ax, (title, sig, rate) in zip(axes, panels):
    fq, pw = cf.power_spectrum(sig, rate)
    ax.semilogy(fq[1:], pw[1:] + 1e-16, lw=0.9, color="C0")
    if title.startswith("output"):
        ax.semilogy(plain_f[1:], plain_p[1:] + 1e-16, lw=0.7, color="C3", alpha=0.7, label="plain ReLU (no filter)")
        ax.legend(fontsize=7, loc="upper right")
    ax.axvline(0.5, color="r", ls="--", lw=1)
    ax.set_ylim(1e-12, 1)
    ax.set_ylabel("power")
    ax.set_title(title, fontsize=9, loc="left")
    ax2 = ax.twinx()
    ax2.plot(resp_f, response, color="g", lw=1, alpha=0.8)
    ax2.set_ylim(0, 1.15)
    ax2.set_ylabel("filter gain", color="g", fontsize=8)
    total = pw[1:].sum()
    stage_energy[title] = float(pw[1:][fq[1:] > 0.5 + 1e-9].sum() / total) if total > 0 else 0.0
axes[-1].set_xlim(0, 1.0)
axes[-1].set_xlabel("frequency (cycles per input sample; red: input Nyquist 0.5, the 2x grid ends at 1.0)")
save_figure(fig, f"{FIG}/filtered_activation_stages.png")
plt.show()
plain_alias = cf.power_spectrum(ACTS["relu"](line2), 1)
metrics["filtered_activation_stages"] = {
    "check": stage_check, "tones": [t / n_line for t in tones],
    "energy_above_input_nyquist": {"activated": stage_energy["ReLU on the 2x grid"],
                                   "lowpassed": stage_energy["low-passed (2x grid)"]},
    "filter_gain_at_input_nyquist": float(course.dtft(fa_taps, np.array([0.25]))[0])}
fs_ = metrics["filtered_activation_stages"]
print(fs_)
assert fs_["energy_above_input_nyquist"]["activated"] > 30 * fs_["energy_above_input_nyquist"]["lowpassed"]
assert abs(fs_["filter_gain_at_input_nyquist"] - 0.5) < 0.02

# %% [markdown]
# **What to notice.** The readable stages and the fast layer agree to round-off (`filtered_activation_stages.check`).
# In the spectra, the up-sampler leaves the two tones alone and (almost) nothing above 0.5. ReLU puts a comb of
# harmonics and intermodulation products over the whole 2x band (`energy_above_input_nyquist.activated`); after
# the low-pass less than a thirtieth of that share is left above 0.5 (`.lowpassed`). The filter's gain at 0.5 is
# one half (`filter_gain_at_input_nyquist`): the lines just above 0.5 pass at half amplitude and fold into the
# output. In the last panel most lines of the filtered output (blue) and of the plain ReLU (red) coincide: they are
# harmonics below 0.5, representable and kept on purpose; the two differ only by what folded. The next cell shows
# why moving the transition band below 0.5 cuts the folded part.
#
# ### Why alias-free filters put the cutoff below Nyquist
#
# A short FIR filter cannot jump from pass to stop: its gain falls over a **transition band** whose width shrinks
# only as the taps grow (notebook 01), and the cutoff names the *middle* of that band, where the gain is one half
# ($-6$ dB). Down-sampling the 2x grid (rate $2s$) to the output grid (rate $s$) folds everything above the output
# Nyquist $s/2$ back into the output. So a filter that suppresses everything that would alias must already be in its
# stop-band **at** $s/2$, and then its cutoff, half a transition width lower, must sit **below** $s/2$. The
# half-band filter used so far puts the cutoff *at* $s/2$: it is $-6$ dB there whatever its length, so a component
# just above $s/2$ passes at half amplitude and folds to just below $s/2$. Longer half-band filters only make that
# unprotected slice narrower. StyleGAN3 follows the rule in every layer that is not critically sampled: the
# stop-band starts at or below $s/2$ and the cutoff sits well below it (notebook 04 measures its whole schedule);
# only its last, critically sampled layers put the cutoff at $s/2$ and accept some aliasing to keep the images'
# finest detail.
#
# We compare, at 13, 25 and 49 taps on the 2x grid (frequencies in cycles per **2x-grid** sample, so $s/2$ = 0.25):
# the half-band Kaiser filter ($\beta$ = `kaiser_beta`) with a filter designed the StyleGAN3 way — transition width
# from Kaiser's formula for `ATTEN_DB` = 40 dB, cutoff lowered so that cutoff + half the transition = $s/2$, $\beta$
# from the same formula (`course.stylegan3_filter`). For each: its gain at $s/2$, its worst gain anywhere in the band
# that folds ($\geq s/2$), the fraction of white noise's power that folds (`course.aliased_fraction`), and what
# the lowered cutoff costs: the gain at the top of the test image's band (`signal_cutoff / 4` per 2x-grid sample).
# Then the proof in use: the SPSNR of the Kaiser filtered nonlinearity (the library's 13-tap up-sampler) with each
# down-sampling filter.

# %%
ATTEN_DB = 40.0
nyq_out = 0.25  # the output Nyquist s/2, in cycles per 2x-grid sample
ff = np.linspace(0, 0.5, 4001)
folding = ff >= nyq_out  # all of this folds into the output when every 2nd sample is kept
top_of_band = signal_cutoff / 4  # the test image's top frequency, in cycles per 2x-grid sample


def gain_db(taps, f):
    return 20 * np.log10(np.maximum(course.dtft(taps, np.asarray(f, dtype=np.float64)), 1e-12))


down_filters, rows = {}, []
for numtaps in (13, 25, 49):
    width = (ATTEN_DB - 7.95) / (14.36 * (numtaps - 1))  # Kaiser's formula, cycles per 2x-grid sample
    designs = {"half-band": (signal.lowpass_filter(numtaps, nyq_out, fs=1.0, beta=kaiser_beta, dtype=torch.float64),
                             nyq_out),
               "below Nyquist": (course.stylegan3_filter(numtaps, nyq_out - width / 2, width, 1.0),
                                 nyq_out - width / 2)}
    for design, (taps, fc) in designs.items():
        down_filters[(design, numtaps)] = taps
        rows.append({"design": design, "numtaps": numtaps, "cutoff": fc,
                     "stopband_edge": fc + width / 2 if design == "below Nyquist" else None,
                     "gain_at_output_nyquist_db": float(gain_db(taps, [nyq_out])[0]),
                     "worst_gain_in_folding_band_db": float(gain_db(taps, ff[folding]).max()),
                     "aliased_fraction": course.aliased_fraction(taps, 2),
                     "gain_at_top_of_signal_band": float(course.dtft(taps, np.array([top_of_band]))[0])})
metrics["cutoff_below_nyquist"] = rows
cb = {(r["design"], r["numtaps"]): r for r in rows}

# the filtered nonlinearity by hand: the library's 13-tap Kaiser up-sampler, the activation, then a chosen
# down-sampling filter and every 2nd sample
def filtered_act(act, down_taps):
    def f(t):
        u = signal.upsample(t, 2, method="kaiser", numtaps=kaiser_numtaps, beta=kaiser_beta)
        return signal.fir_filter(act(u), down_taps.to(t.dtype))[..., ::2, ::2]
    return f


spsnr_rows = []
for name in activations:
    row = {"activation": name}
    for (design, numtaps), taps in down_filters.items():
        if numtaps <= 25:  # 49 taps only for the responses: the image test needs no more to make the point
            row[f"{design} {numtaps}"] = float(spsnr(filtered_act(ACTS[name], taps), img, d_test, mode="circular"))
    spsnr_rows.append(row)
metrics["cutoff_below_nyquist_spsnr_db"] = spsnr_rows

fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 4), gridspec_kw={"width_ratios": [1.3, 1]})
for (design, numtaps), taps in down_filters.items():
    ax.plot(ff, gain_db(taps, ff), ls="-" if design == "half-band" else "--", lw=1,
            color={13: "C0", 25: "C1", 49: "C2"}[numtaps], label=f"{design}, {numtaps} taps")
ax.axvspan(nyq_out, 0.5, color="red", alpha=0.08, label="folds when every 2nd sample is kept")
ax.axvline(nyq_out, color="k", ls=":", lw=1)
ax.axhline(-ATTEN_DB, color="grey", lw=0.8)
ax.set_ylim(-100, 5)
ax.set_xlabel("frequency (cycles per 2x-grid sample; output Nyquist s/2 = 0.25)")
ax.set_ylabel("gain (dB)")
ax.set_title("down-sampling filters: half-band (solid) vs cutoff below s/2 (dashed)")
ax.legend(fontsize=7, loc="lower left")
cols = [c for c in spsnr_rows[0] if c != "activation"]
w = 0.8 / len(cols)
for i, c in enumerate(cols):
    bx.bar(np.arange(len(spsnr_rows)) + (i - len(cols) / 2 + 0.5) * w, [r[c] for r in spsnr_rows], w, label=c,
           color={13: "C0", 25: "C1"}[int(c.split()[-1])], hatch="" if c.startswith("half") else "//",
           edgecolor="w")
bx.set_xticks(range(len(spsnr_rows)), [r["activation"] for r in spsnr_rows])
bx.set_xlabel("activation")
bx.set_ylabel(f"SPSNR (dB), shift {d_test}")
bx.set_title("Kaiser filtered nonlinearity, by down-filter")
bx.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2)
save_figure(fig, f"{FIG}/cutoff_below_nyquist.png")
plt.show()
for numtaps in (13, 25, 49):
    hb, lo = cb[("half-band", numtaps)], cb[("below Nyquist", numtaps)]
    assert abs(hb["gain_at_output_nyquist_db"] + 6.02) < 0.1  # -6 dB at s/2, whatever the length
    assert abs(hb["worst_gain_in_folding_band_db"] - hb["gain_at_output_nyquist_db"]) < 0.1  # the worst is at s/2
    assert abs(lo["stopband_edge"] - nyq_out) < 1e-12 and lo["cutoff"] < nyq_out
    assert lo["worst_gain_in_folding_band_db"] < -ATTEN_DB + 3  # the design attenuation, within 3 dB
    assert lo["aliased_fraction"] < hb["aliased_fraction"] / 1000
hb_alias = [cb[("half-band", n)]["aliased_fraction"] for n in (13, 25, 49)]
assert hb_alias[0] > hb_alias[1] > hb_alias[2] > 1e-3  # longer half-band filters alias less, but never little
assert 0.4 < cb[("below Nyquist", 13)]["gain_at_top_of_signal_band"] < 0.7  # the price: 13 taps eat into the signal band
assert all(cb[("below Nyquist", n)]["gain_at_top_of_signal_band"] > 0.99 for n in (25, 49))
assert cb[("below Nyquist", 13)]["cutoff"] < cb[("below Nyquist", 25)]["cutoff"] < cb[("below Nyquist", 49)]["cutoff"]
assert abs(cb[("below Nyquist", 13)]["cutoff"] - 0.16) < 0.01 and abs(cb[("below Nyquist", 25)]["cutoff"] - 0.2) < 0.01
sched = course.stylegan3_schedule()  # 256 px, 14 layers (notebook 04)
assert all(r["stopband"] <= r["sampling_rate"] / 2 + 1e-9 and r["cutoff"] < r["sampling_rate"] / 2
           for r in sched if not r["critically_sampled"])
assert all(abs(r["cutoff"] - r["sampling_rate"] / 2) < 1e-9 for r in sched if r["critically_sampled"])
for r in spsnr_rows:
    # the hand-built half-band version is the library's kaiser_2x row
    assert abs(r["half-band 13"] - fa[r["activation"]]["spsnr_kaiser_2x_db"]) < 0.1
    assert abs(r["half-band 25"] - r["half-band 13"]) < 3  # a longer half-band filter barely helps
    assert r["below Nyquist 13"] > r["half-band 13"] + 10 and r["below Nyquist 25"] > r["half-band 25"] + 5
    if r["activation"] in ("gelu", "silu"):
        assert r["below Nyquist 25"] > r["half-band 25"] + 20
spsnr_rows

# %%
save_json(metrics, "metrics/02_resampling_and_nonlinearity.json")

# %% [markdown]
# **What to notice.** Every half-band filter is $-6$ dB at $s/2$ (`gain_at_output_nyquist_db`), at 13 taps as at
# 49, and that is its worst gain over the whole folding band: more taps shrink the slice of frequencies that leaks
# (`aliased_fraction` falls), but never close it. With the transition band moved below $s/2$ the folding band is
# attenuated by about the designed 40 dB (`worst_gain_in_folding_band_db`) and the folded noise power drops by more
# than three orders of magnitude. The price is bandwidth: with 13 taps the transition is so wide that the cutoff
# drops to about 0.16 cycles per 2x-grid sample and the filter nearly halves the top of the test image's band
# (`gain_at_top_of_signal_band`); at 25 taps the cutoff rises to about 0.2 and the band is untouched. That is why
# StyleGAN3 runs its layers at a sampling rate comfortably above twice their cutoff. On the image the effect is
# large: with the down-sampling filter's transition below $s/2$ the filtered nonlinearity gains more than 10 dB of
# SPSNR at 13 taps (tens of dB for the smooth activations), while a half-band filter of twice the length gains
# almost nothing. The 13-tap score is somewhat flattered, since that filter also cuts into the image's own band;
# the 25-tap filter, which leaves the band intact, is the fair comparison and still gains more than 5 dB for ReLU
# and over 20 dB for GELU and SiLU. What remains for ReLU is folding that happens on the 2x grid itself (§3),
# which no down-sampling filter can undo.
#
# ## Exercises
#
# **1.** Max-pooling is not even shift-equivariant for integer shifts. Show that `max_pool2d(roll(x, 1))` differs
# from every roll of `max_pool2d(x)`.

# %% tags=["solution"]
mp = lambda t: F.max_pool2d(t[None, None], 2)[0, 0]
shifted = mp(torch.roll(x, 1, dims=-1))
best = min(float((shifted - torch.roll(mp(x), s, dims=-1)).abs().mean()) for s in (-1, 0, 1))
print("smallest mean difference over candidate rolls:", best)
assert best > 0.01  # the pooling windows pair different pixels after an odd shift

# %% [markdown]
# **2.** How does the SPSNR of the plain GELU change when the input occupies only 30% of the band instead of
# `signal_cutoff`? Explain with the harmonics' frequencies.

# %% tags=["solution"]
narrow = signal.ideal_lowpass(x, 0.3)
narrow = (narrow - narrow.mean()) * 2.0 / (narrow.max() - narrow.min())
narrow = narrow.double()
narrow_db = float(spsnr(ACTS["gelu"], narrow, d_test, mode="circular"))
wide_db = float(spsnr(ACTS["gelu"], img, d_test, mode="circular"))
wide_db = metrics["filtered_activation_spsnr"][activations.index("gelu")]["spsnr_plain_db"] if "gelu" in activations \
    else float(spsnr(ACTS["gelu"], img, (0.5, 0.5), mode="circular"))
# input below 0.15 cycles/sample: the 2nd and 3rd harmonics stay below 0.45 < Nyquist, little folds
print(f"GELU SPSNR: band 30% {narrow_db:.1f} dB, band {signal_cutoff:.0%} {wide_db:.1f} dB")
assert narrow_db > wide_db

# %% [markdown]
# **3.** Use the filtered ReLU with up-sampling factor 4 instead of 2, with the output band-limited below Nyquist.
# Does SPSNR improve? What does it cost? Why might StyleGAN3 still choose 2 (for its leaky ReLU)?

# %% tags=["solution"]
def relu_below_nyquist(up):
    fa_up = layers.FilteredActivation(ACTS["relu"], up=up, method="ideal", nyquist="half").to(dev)
    return lambda t: signal.ideal_lowpass(fa_up(t), 0.9)


x2_db = float(spsnr(relu_below_nyquist(2), img, d_test, mode="circular"))
x4_db = float(spsnr(relu_below_nyquist(4), img, d_test, mode="circular"))
# the activation runs on up**2 samples per pixel (4 at 2x, 16 at 4x), and the FIR filters' taps grow with up
print(f"ReLU, ideal filters, output below Nyquist: 2x {x2_db:.1f} dB, 4x {x4_db:.1f} dB; "
      "activation evaluations per pixel 4 vs 16")
assert x4_db > x2_db + 10
# 4x buys ReLU about 16 dB here at four times the activation work (and longer filters). StyleGAN3 stays at 2x and
# accepts the residual folding for a quarter of the cost. (Its cutoffs below each layer's Nyquist have another job:
# they let its short down-sampling filters reach their stop-band by s/2, section 4.)
