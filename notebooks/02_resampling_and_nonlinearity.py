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
device = "cpu"
size = 128
image = "astronaut"
signal_cutoff = 0.6
activations = ["relu", "gelu", "silu"]
kaiser_numtaps = 13
kaiser_beta = 8.0

# %%
import matplotlib.pyplot as plt
import numpy as np
import skimage.color
import skimage.data
import skimage.transform
import torch
import torch.nn.functional as F

from afcore import layers, signal
from afcore.metrics import spsnr
from afcore.utils import save_figure, save_json, seed_everything

seed_everything(seed)
FIG = "figures/02_resampling_and_nonlinearity"
metrics = {"profile": profile, "size": size}
ACTS = {"relu": torch.nn.ReLU(), "gelu": torch.nn.GELU(), "silu": torch.nn.SiLU()}
for a in activations:
    if a not in ACTS:
        raise ValueError(f"activations: unknown {a!r}; allowed: {sorted(ACTS)}")
kaiser = dict(method="kaiser", numtaps=kaiser_numtaps, beta=kaiser_beta)

photo = getattr(skimage.data, image)()
gray = skimage.color.rgb2gray(photo) if photo.ndim == 3 else photo / 255.0
x = torch.tensor(skimage.transform.resize(gray, (size, size), anti_aliasing=True), dtype=torch.float32) * 2 - 1


def log_spec(t):
    return torch.log10(torch.fft.fftshift(torch.fft.fft2(t - t.mean())).abs() ** 2 + 1e-6)


def high_band_fraction(t, band=0.25):
    """Fraction of (non-DC) energy at frequencies above `band` cycles/sample in either axis."""
    p = torch.fft.fft2(t - t.mean()).abs() ** 2
    fy = torch.fft.fftfreq(t.shape[-2]).abs()[:, None]
    fx = torch.fft.fftfreq(t.shape[-1]).abs()[None, :]
    high = (fy > band) | (fx > band)
    return float(p[..., high].sum() / p.sum())

# %% [markdown]
# ## 1. Down-sampling by 2
#
# Compare plain sub-sampling (what a stride-2 convolution does after its taps), 2x2 max-pooling, 2x2 average
# pooling, and the alias-free versions (ideal FFT low-pass or Kaiser FIR, then sub-sample). We measure aliasing
# directly as the energy of the difference from the ideal result, relative to the output's energy.

# %%
x4 = x[None, None]
down = {
    "stride 2 (sub-sample)": x[::2, ::2],
    "max-pool 2x2": F.max_pool2d(x4, 2)[0, 0],
    "avg-pool 2x2": F.avg_pool2d(x4, 2)[0, 0],
    "Kaiser low-pass + stride": signal.downsample(x, 2, **kaiser),
    "ideal low-pass + stride": signal.downsample(x, 2, method="ideal"),
}
ideal = down["ideal low-pass + stride"]
fig, axes = plt.subplots(2, len(down), figsize=(3.2 * len(down), 6.6))
rows = []
for j, (name, out) in enumerate(down.items()):
    axes[0, j].imshow(out, cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
    axes[0, j].set_title(name, fontsize=9)
    axes[1, j].imshow(log_spec(out), cmap="magma")
    for ax in axes[:, j]:
        ax.axis("off")
    # max-pool also shifts by half a pixel and changes the mean; compare shapes after removing the mean
    diff = (out - out.mean()) - (ideal - ideal.mean())
    rows.append({"method": name, "relative_error_vs_ideal": float(diff.pow(2).sum() / (ideal - ideal.mean()).pow(2).sum())})
save_figure(fig, f"{FIG}/downsampling.png")
plt.show()
metrics["downsampling"] = rows
rows

# %% [markdown]
# ## 2. Up-sampling by 2
#
# Nearest and bilinear interpolation leave spectral images (bright copies in the outer half of the spectrum); the
# ideal and Kaiser reconstructions leave that band (almost) empty. We report the fraction of energy above the old
# Nyquist (0.25 cycles/sample on the new grid): anything there is an artefact of the grid, not of the content.

# %%
small = signal.downsample(x, 2, method="ideal")
s4 = small[None, None]
up = {
    "nearest": F.interpolate(s4, scale_factor=2, mode="nearest")[0, 0],
    "bilinear": F.interpolate(s4, scale_factor=2, mode="bilinear", align_corners=False)[0, 0],
    "Kaiser (zero-insert + FIR)": signal.upsample(small, 2, **kaiser),
    "ideal (FFT)": signal.upsample(small, 2, method="ideal"),
}
fig, axes = plt.subplots(2, len(up), figsize=(3.2 * len(up), 6.6))
rows = []
for j, (name, out) in enumerate(up.items()):
    axes[0, j].imshow(out[size // 4: size // 2, size // 4: size // 2], cmap="gray", vmin=-1, vmax=1,
                      interpolation="nearest")
    axes[0, j].set_title(name, fontsize=9)
    axes[1, j].imshow(log_spec(out), cmap="magma")
    for ax in axes[:, j]:
        ax.axis("off")
    rows.append({"method": name, "energy_above_old_nyquist": high_band_fraction(out)})
save_figure(fig, f"{FIG}/upsampling.png")
plt.show()
metrics["upsampling"] = rows
rows

# %% [markdown]
# ## 3. Nonlinearities create frequencies
#
# Take a band-limited signal (here a 1-D sum of sinusoids below `signal_cutoff` of Nyquist) and apply ReLU, GELU,
# SiLU. The output spectrum extends far beyond the input band. On the same grid, everything above Nyquist folds
# back (aliasing). The filtered nonlinearity evaluates the activation on a 2x up-sampled signal, where the new
# harmonics have room, low-passes back to the original band and returns to the original grid.

# %%
n = 256
g = torch.Generator().manual_seed(seed)
k = torch.randint(1, int(signal_cutoff * n / 2), (6,), generator=g)
t = torch.arange(n, dtype=torch.float64)
line = sum(torch.cos(2 * np.pi * kk * t / n + 2 * np.pi * torch.rand(1, generator=g, dtype=torch.float64))
           for kk in k) / 3
fine = signal.upsample(line[None], 8, method="ideal")[0]  # a proxy for the continuous signal
fig, axes = plt.subplots(1, len(activations), figsize=(5 * len(activations), 3.6), sharey=True)
rows = []
for ax, name in zip(np.atleast_1d(axes), activations):
    act = ACTS[name]
    cont = act(fine)
    spec = torch.fft.rfft(cont).abs() ** 2
    freqs = torch.fft.rfftfreq(cont.numel()) * 8  # in cycles per original sample
    ax.semilogy(freqs, spec + 1e-12, lw=0.8)
    ax.axvline(0.5, color="r", ls="--", lw=1, label="Nyquist of the grid")
    ax.axvline(signal_cutoff / 2, color="k", ls=":", lw=1, label="input band")
    ax.set_title(f"{name}(band-limited signal)")
    ax.set_xlabel("cycles / sample")
    ax.set_xlim(0, 2)
    above = float(spec[freqs > 0.5].sum() / spec[1:].sum())
    rows.append({"activation": name, "energy_above_nyquist": above})
np.atleast_1d(axes)[0].legend(fontsize=8)
save_figure(fig, f"{FIG}/nonlinearity_spectra.png")
plt.show()
metrics["nonlinearity_energy_above_nyquist"] = rows
rows

# %% [markdown]
# ## 4. The filtered nonlinearity fixes it
#
# On a 2-D band-limited image we compare `act(x)` with `FilteredActivation(act)(x)` (ideal and Kaiser filters) by
# their equivariance to a half-pixel shift: SPSNR (peak 2, circular Fourier shift by (0.5, 0.5)) between
# `f(shift(x))` and `shift(f(x))`. An aliasing operation cannot commute with sub-pixel shifts.

# %%
img = signal.ideal_lowpass(x, signal_cutoff)
scale = 2.0 / (img.max() - img.min())
img = (img - img.mean()) * scale  # roughly in [-1, 1], so the nonlinearity's bend matters
rows = []
for name in activations:
    act = ACTS[name]
    row = {"activation": name, "spsnr_plain_db": float(spsnr(act, img, (0.5, 0.5), mode="circular"))}
    row["spsnr_filtered_ideal_db"] = float(spsnr(layers.FilteredActivation(act, method="ideal"), img, (0.5, 0.5),
                                                 mode="circular"))
    row["spsnr_filtered_kaiser_db"] = float(spsnr(layers.FilteredActivation(act, **kaiser), img, (0.5, 0.5),
                                                  mode="circular"))
    rows.append(row)
metrics["filtered_activation_spsnr"] = rows
fig, ax = plt.subplots(figsize=(7, 3.5))
w = 0.25
for i, key in enumerate(["spsnr_plain_db", "spsnr_filtered_kaiser_db", "spsnr_filtered_ideal_db"]):
    ax.bar(np.arange(len(rows)) + (i - 1) * w, [r[key] for r in rows], w, label=key.replace("spsnr_", "").replace("_db", ""))
ax.set_xticks(range(len(rows)), [r["activation"] for r in rows])
ax.set_ylabel("SPSNR (dB), half-pixel shift")
ax.legend()
save_figure(fig, f"{FIG}/filtered_activation_spsnr.png")
plt.show()
rows

# %%
save_json(metrics, "metrics/02_resampling_and_nonlinearity.json")

# %% [markdown]
# **What to notice.** Every activation puts energy above Nyquist; the filtered version raises the shift-consistency
# (SPSNR) by well over 10 dB. The ideal filter gets closest to exact; the 13-tap Kaiser filter is a practical
# compromise (see notebook 01 for its stop-band). `make bench` measures what this costs in time.
#
# ## Exercises
#
# **1.** Max-pooling is not even shift-equivariant for integer shifts. Show that `max_pool2d(roll(x, 1))` differs
# from any roll of `max_pool2d(x)`.

# %% tags=["solution"]
mp = lambda t: F.max_pool2d(t[None, None], 2)[0, 0]
shifted = mp(torch.roll(x, 1, dims=-1))
best = min(float((shifted - torch.roll(mp(x), s, dims=-1)).abs().mean()) for s in (0, 1))
print("smallest mean difference over candidate rolls:", best)

# %% [markdown]
# **2.** How does the SPSNR of the plain GELU change when the input occupies only 30% of the band instead of
# `signal_cutoff`? Explain with the harmonics' frequencies.

# %% tags=["solution"]
narrow = signal.ideal_lowpass(x, 0.3)
narrow = (narrow - narrow.mean()) * 2.0 / (narrow.max() - narrow.min())
print(float(spsnr(ACTS["gelu"], narrow, (0.5, 0.5), mode="circular")))  # higher: harmonics stay below Nyquist

# %% [markdown]
# **3.** Use the filtered activation with up-sampling factor 4 instead of 2. Does SPSNR improve further? Why might
# StyleGAN3 still choose 2?

# %% tags=["solution"]
print(float(spsnr(layers.FilteredActivation(ACTS["gelu"], up=4, method="ideal"), img, (0.5, 0.5), mode="circular")))
