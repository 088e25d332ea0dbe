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
# empty. We report the fraction of energy outside the old Nyquist square ($|f_x|$ or $|f_y| > 0.25$ cycles/sample on
# the new grid, dashed): anything there is an artefact of the grid, not content.

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
    axes[1, j].set_xlabel("f_x (cycles/sample)")
    axes[1, j].set_ylabel("f_y (cycles/sample)")
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
# ## 3. Nonlinearities create frequencies, and where they fold
#
# Take a band-limited signal (a 1-D sum of sinusoids below `signal_cutoff` of Nyquist, i.e. below
# `signal_cutoff / 2` cycles/sample) and apply ReLU, GELU, SiLU. A proxy for the continuous signal is the same line
# up-sampled 8x; its output spectrum extends far beyond the input band. The filtered nonlinearity evaluates the
# activation at **twice** the rate, so harmonics up to twice the old Nyquist (1 cycle per original sample) are
# represented; it then low-passes at the **grid's** Nyquist (0.5), not at the input band, and drops every second
# sample. Where does each part of the output spectrum go?
#
# * below 0.5: kept — including the new harmonics between the input band and 0.5, which the grid can represent;
# * 0.5 to 1.5: on the 2x grid these sit (or fold) above 0.5 and are removed by the low-pass;
# * above 1.5: they fold on the 2x grid (rate 2) to $2 - f$, i.e. *into* the kept band: residual aliasing of the 2x
#   filtered nonlinearity. With 4x up-sampling only the part above 3.5 folds back.
#
# We measure each part's share of the output energy (DC excluded).

# %%
n = 256
g = torch.Generator().manual_seed(seed)  # host-side draws (the same numbers on every device), then moved
k = torch.randint(1, int(signal_cutoff * n / 2), (6,), generator=g, device="cpu").to(dev)
t = torch.arange(n, dtype=torch.float64, device=dev)
line = sum(torch.cos(2 * np.pi * kk * t / n
                     + 2 * np.pi * torch.rand(1, generator=g, dtype=torch.float64, device="cpu").to(dev))
           for kk in k) / 3
fine = signal.upsample(line[None], 8, method="ideal")[0]  # a proxy for the continuous signal
fig, axes = plt.subplots(1, len(activations), figsize=(5 * len(activations), 3.6), sharey=True)
rows = []
for ax, name in zip(np.atleast_1d(axes), activations):
    act = ACTS[name]
    cont = act(fine)
    spec = torch.fft.rfft(cont).abs() ** 2
    freqs = torch.fft.rfftfreq(cont.numel(), device=cont.device) * 8  # in cycles per original sample
    ax.semilogy(freqs.cpu(), (spec + 1e-12).cpu(), lw=0.8)
    ax.axvline(signal_cutoff / 2, color="k", ls=":", lw=1, label="input band")
    ax.axvline(0.5, color="r", ls="--", lw=1, label="Nyquist of the grid")
    ax.axvspan(1.5, 2.0, color="orange", alpha=0.2, label="folds back at 2x (> 1.5)")
    ax.set_title(f"{name}(band-limited signal)")
    ax.set_xlabel("frequency (cycles per original sample)")
    ax.set_xlim(0, 2)
    total = spec[1:].sum()
    share = lambda lo, hi: float(spec[(freqs > lo) & (freqs <= hi)].sum() / total)
    rows.append({"activation": name, "input_band": share(0, signal_cutoff / 2),
                 "new_in_band": share(signal_cutoff / 2, 0.5),
                 "energy_above_nyquist": share(0.5, 4.0), "removed_at_2x": share(0.5, 1.5),
                 "folds_at_2x": share(1.5, 4.0), "folds_at_4x": share(3.5, 4.0)})
np.atleast_1d(axes)[0].set_ylabel("power")
np.atleast_1d(axes)[0].legend(fontsize=7)
save_figure(fig, f"{FIG}/nonlinearity_spectra.png")
plt.show()
metrics["nonlinearity_energy_above_nyquist"] = rows
for r in rows:
    assert r["energy_above_nyquist"] > r["folds_at_2x"] > r["folds_at_4x"] and r["new_in_band"] > 0
rows

# %% [markdown]
# **What to notice.** Every activation puts energy above the grid's Nyquist (ReLU, with its kink, the most; the
# smooth GELU and SiLU orders of magnitude less), and a smaller part above 1.5, which even the 2x filtered version
# folds back; 4x leaves less still (`folds_at_4x`), at four times the cost of the activation and filters (notebook
# 04). Energy between the input band and 0.5 (`new_in_band`) is kept on purpose: it is representable.
#
# ## 4. The filtered nonlinearity, measured
#
# On a 2-D band-limited image (float64) we compare `act(x)` with `FilteredActivation(act)(x)` by their equivariance
# to a sub-pixel shift: SPSNR (peak 2, circular Fourier shift) between `f(shift(x))` and `shift(f(x))`. The shift is
# 0.3 pixel in both axes on purpose: a shift of 1/2 (or 1/4) pixel is an *integer* shift on the 2x (4x) grid where
# the activation runs, which would hide its aliasing. Rows: plain; 13-tap Kaiser filters; ideal filters at 2x and
# 4x; and the ideal ones followed by a low-pass at 0.9 of the grid's Nyquist.
#
# Why the last two? The filtered nonlinearity's low-pass sits exactly at the grid's Nyquist, so its output has
# energy right at Nyquist, and a component at exactly Nyquist cannot be moved by a fractional shift (its phase is
# ambiguous: `afcore.signal` keeps only $\cos(\pi d)$ of it). A cutoff *below* the output Nyquist (a transition band
# that ends before it, as StyleGAN3 designs its filters; notebook 04) removes that error source, leaving the folding.

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
ax.legend(fontsize=7, ncol=2)
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

# %%
save_json(metrics, "metrics/02_resampling_and_nonlinearity.json")

# %% [markdown]
# **What to notice.** The ideal filtered nonlinearity raises the shift consistency by more than 10 dB for every
# activation (`gain_ideal_db`); with the 13-tap Kaiser filters the gain is smaller (`gain_kaiser_db`, about 7–10 dB):
# their transition band straddles the grid's Nyquist (notebook 01), so some aliasing passes. For the ideal version
# two error sources remain, and the rows separate them. For GELU and SiLU, 4x is no better than 2x, but a cutoff
# below the grid's Nyquist takes SPSNR above 120 dB: the whole error was the Nyquist term. For ReLU, whose kink
# has strong harmonics above 1.5, 4x clearly beats 2x once the Nyquist term is gone: that error was folding.
# `make bench` measures the time.
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
# 4x buys ReLU about 16 dB here at four times the activation work (and longer filters); StyleGAN3 stays at 2x, and its
# cutoffs below each layer's Nyquist (notebook 04) remove the Nyquist term that dominates for smooth activations.
