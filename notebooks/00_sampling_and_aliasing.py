# %% [markdown]
# # 00 · Sampling and aliasing
#
# A digital image is a grid of samples of a continuous scene. Everything in this workbook — why diffusion U-Nets
# "stick" textures to the pixel grid, why alias-free layers fix it — follows from one fact: **a grid with spacing
# $T$ can only represent frequencies below the Nyquist frequency $f_N = 1/(2T)$**. A component at a higher
# frequency does not disappear when it is sampled; it *aliases*: it shows up as a lower frequency that was never
# there.
#
# This notebook shows aliasing in 1-D (sinusoids), in 2-D (a zone plate, moiré on a photograph) and at edges
# (staircases). Change the parameters in the next cell and re-run to explore.

# %% tags=["parameters"]
profile = "cpu"
seed = 0
device = "cpu"
sample_rate = 10.0
frequencies = [2.0, 4.0, 6.0, 8.0, 12.0]
zone_plate_size = 256
decimation = 4
image = "astronaut"

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch
import skimage.data
import skimage.color
import skimage.transform

from afcore import signal
from afcore.utils import save_figure, save_json, seed_everything

seed_everything(seed)
FIG = "figures/00_sampling_and_aliasing"
metrics = {"profile": profile}

# %% [markdown]
# ## 1. Sampling a sinusoid
#
# Sample $x(t) = \cos(2\pi f t)$ at rate $f_s$ (samples per unit time). Below Nyquist ($f < f_s/2$) the samples
# determine the sinusoid. Above it, the samples are *identical* to those of a sinusoid at the alias frequency
# $$f_a = |f - k f_s|, \quad k = \operatorname{round}(f / f_s),$$
# folded into $[0, f_s/2]$. The plot draws the continuous signal, its samples, and the alias that the samples
# actually describe.

# %%
def alias_frequency(f, fs):
    return abs(f - round(f / fs) * fs)


t = np.linspace(0, 1, 2000)
n = np.arange(0, 1, 1 / sample_rate)
fig, axes = plt.subplots(len(frequencies), 1, figsize=(9, 1.7 * len(frequencies)), sharex=True)
rows = []
for ax, f in zip(np.atleast_1d(axes), frequencies):
    fa = alias_frequency(f, sample_rate)
    ax.plot(t, np.cos(2 * np.pi * f * t), lw=0.8, label=f"signal {f:g}")
    ax.plot(t, np.cos(2 * np.pi * fa * t), "--", lw=1.2, label=f"what the samples show: {fa:g}")
    ax.plot(n, np.cos(2 * np.pi * f * n), "ko", ms=4)
    ax.set_ylabel(f"f={f:g}")
    ax.legend(loc="upper right", fontsize=7)
    # the samples of f and of its alias agree exactly: aliasing loses information irreversibly
    max_gap = float(np.abs(np.cos(2 * np.pi * f * n) - np.cos(2 * np.pi * fa * n)).max())
    rows.append({"frequency": f, "alias": fa, "aliased": bool(f > sample_rate / 2), "sample_gap": max_gap})
axes[-1].set_xlabel(f"time (sampling rate {sample_rate:g}, Nyquist {sample_rate / 2:g})")
fig.suptitle("Sinusoids above Nyquist masquerade as lower frequencies")
save_figure(fig, f"{FIG}/sinusoid_aliasing.png")
plt.show()
metrics["sinusoids"] = rows

# %% [markdown]
# **What to notice.** For every frequency above $f_s/2$ the dashed alias passes through exactly the same black
# samples (`sample_gap` in the metrics is zero up to rounding): from the samples alone, the two are
# indistinguishable. A network that sees only samples cannot tell them apart either.
#
# ## 2. Aliasing in 2-D: the zone plate
#
# A zone plate $\cos(\pi f_{max} r^2 / R)$ has a local frequency that grows linearly with the radius, reaching
# `max_freq` cycles/sample at the edge. Rendered with enough samples it is a clean set of rings. Sub-sample it by
# `decimation` (keep every k-th pixel) and the outer rings, now above the new Nyquist, fold back into phantom ring
# centres: the textbook picture of 2-D aliasing. Low-pass filtering *before* sub-sampling (here the ideal FFT
# filter) removes what cannot be represented, leaving a blur instead of phantoms.

# %%
zp = signal.zone_plate(zone_plate_size, zone_plate_size, max_freq=0.5)
naive = zp[::decimation, ::decimation]
filtered = signal.ideal_lowpass(zp, 1.0 / decimation)[::decimation, ::decimation]
fig, axes = plt.subplots(1, 3, figsize=(12, 4))
for ax, img, title in zip(axes, [zp, naive, filtered],
                          ["zone plate (full rate)", f"every {decimation}th sample: aliasing",
                           f"low-pass, then every {decimation}th"]):
    ax.imshow(img, cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
    ax.set_title(title)
    ax.axis("off")
save_figure(fig, f"{FIG}/zone_plate.png")
plt.show()

# %% [markdown]
# We can measure aliasing: the energy that the naive sub-sampling puts at frequencies that the low-passed version
# does not have (all of it is folded energy).

# %%
def energy(x):
    return float((x - x.mean()).pow(2).mean())


alias_energy = energy(naive - filtered)
metrics["zone_plate"] = {
    "decimation": decimation,
    "aliased_energy_fraction": alias_energy / energy(naive),
}
print(f"fraction of the naively sub-sampled zone plate's energy that is aliasing: "
      f"{metrics['zone_plate']['aliased_energy_fraction']:.3f}")

# %% [markdown]
# ## 3. Moiré on a photograph
#
# Real images contain fine periodic texture (fabric, hair, brick). Sub-sampling a photo without a low-pass filter
# turns that texture into moiré: large-scale stripes that are not in the scene. The spectra (log power, centre =
# zero frequency) show why: naive sub-sampling folds the outer spectrum back onto the centre.

# %%
photo = getattr(skimage.data, image)()
gray = skimage.color.rgb2gray(photo) if photo.ndim == 3 else photo / 255.0
gray = torch.tensor(skimage.transform.resize(gray, (zone_plate_size, zone_plate_size), anti_aliasing=True),
                    dtype=torch.float32) * 2 - 1
photo_naive = gray[::decimation, ::decimation]
photo_filtered = signal.downsample(gray, decimation, method="ideal")


def log_spectrum(x):
    return torch.log10(torch.fft.fftshift(torch.fft.fft2(x - x.mean())).abs() ** 2 + 1e-6)


fig, axes = plt.subplots(2, 3, figsize=(12, 8))
for col, (img, title) in enumerate([(gray, "photo"), (photo_naive, f"naive 1/{decimation}"),
                                    (photo_filtered, f"alias-free 1/{decimation}")]):
    axes[0, col].imshow(img, cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
    axes[0, col].set_title(title)
    axes[1, col].imshow(log_spectrum(img), cmap="magma")
    axes[1, col].set_title("log power spectrum")
    for ax in axes[:, col]:
        ax.axis("off")
save_figure(fig, f"{FIG}/moire_photo.png")
plt.show()
metrics["photo"] = {"image": image,
                    "aliased_energy_fraction": energy(photo_naive - photo_filtered) / energy(photo_naive)}

# %% [markdown]
# ## 4. Staircase edges
#
# A sharp, slanted edge contains all frequencies. Point-sampling it gives the familiar staircase ("jaggies"), whose
# steps lock to the pixel grid: move the edge by a fraction of a pixel and the steps jump rather than glide. This is
# exactly the *texture sticking* that alias-free networks remove: detail attached to pixel coordinates instead of to
# the content. Pre-filtering (rendering the edge band-limited) gives a smooth edge that moves continuously.

# %%
def edge(size, offset, supersample):
    """A slanted half-plane rendered by averaging supersample^2 point samples per pixel (1 = point sampling)."""
    s = supersample
    y, x = np.mgrid[0:size * s, 0:size * s] / s
    img = (x - 0.3 * y + offset > size / 2).astype(np.float64)
    return img.reshape(size, s, size, s).mean(axis=(1, 3))


size = 24
offsets = [0.0, 0.25, 0.5, 0.75]
fig, axes = plt.subplots(2, len(offsets), figsize=(2.6 * len(offsets), 5.4))
for j, off in enumerate(offsets):
    axes[0, j].imshow(edge(size, off, 1), cmap="gray", interpolation="nearest")
    axes[0, j].set_title(f"point-sampled, shift {off}")
    axes[1, j].imshow(edge(size, off, 16), cmap="gray", interpolation="nearest")
    axes[1, j].set_title(f"pre-filtered, shift {off}")
    for ax in axes[:, j]:
        ax.axis("off")
save_figure(fig, f"{FIG}/staircase_edges.png")
plt.show()
jumps_point = [float(np.abs(edge(size, o, 1) - edge(size, 0, 1)).sum()) for o in offsets]
jumps_filtered = [float(np.abs(edge(size, o, 16) - edge(size, 0, 16)).sum()) for o in offsets]
metrics["staircase"] = {"offsets": offsets, "change_point_sampled": jumps_point, "change_prefiltered": jumps_filtered}

# %% [markdown]
# **What to notice.** The point-sampled edge changes in discrete jumps (some sub-pixel shifts change nothing at all,
# others flip whole pixels), while the pre-filtered edge changes in proportion to the shift (see `staircase` in the
# metrics).

# %%
save_json(metrics, "metrics/00_sampling_and_aliasing.json")
metrics["zone_plate"], metrics["photo"]

# %% [markdown]
# ## Exercises
#
# **1.** With `sample_rate = 10`, which frequency does a 17-cycle sinusoid alias to? Check it numerically by
# comparing samples.

# %% tags=["solution"]
f, fs = 17.0, 10.0
fa = alias_frequency(f, fs)
n = np.arange(0, 1, 1 / fs)
print(fa, np.abs(np.cos(2 * np.pi * f * n) - np.cos(2 * np.pi * fa * n)).max())  # 3.0, ~0

# %% [markdown]
# **2.** Sub-sample the zone plate by 2 instead of `decimation`. Up to which radius (as a fraction of R) are the rings
# still alias-free? (Hint: the local frequency at radius r is `max_freq * r / R`; the new Nyquist is 0.25.)

# %% tags=["solution"]
ratio = 0.25 / 0.5  # rings stay clean up to half the radius
zp2 = zp[::2, ::2]
print(f"alias-free up to r/R = {ratio}")
plt.imshow(zp2, cmap="gray"); plt.title("every 2nd sample: phantoms start at r = R/2"); plt.show()

# %% [markdown]
# **3.** Why does the pre-filtered edge in section 4 move smoothly? Compute the total intensity of each pre-filtered
# frame and explain how it depends on the offset.

# %% tags=["solution"]
totals = [edge(size, o, 16).sum() for o in offsets]
print(np.diff(totals))  # equal steps: area coverage grows linearly with the sub-pixel offset
