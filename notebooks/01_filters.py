# %% [markdown]
# # 01 · Low-pass filters: ideal, Kaiser-windowed sinc and jinc
#
# Notebook 00 showed that content above Nyquist must be removed *before* sampling. The tool is a low-pass filter.
# The **ideal** low-pass keeps every frequency below the cutoff and nothing above: a rectangle in the frequency
# domain, an infinitely long $\operatorname{sinc}$ in space. Real networks use short FIR filters instead: a sinc
# truncated to `numtaps` taps and tapered by a **Kaiser window** with shape parameter $\beta$.
#
# $$h[n] = 2 f_c \operatorname{sinc}(2 f_c m) \, w_\beta[n], \qquad m = n - \tfrac{N-1}{2}$$
#
# In 2-D the rotation-friendly choice is the radial **jinc** $h(r) = f_c J_1(2\pi f_c r) / r$ (the ideal *disk*
# low-pass) times a 2-D Kaiser window. Here $f_c$ is in cycles/sample; `afcore.signal.lowpass_filter` takes
# `cutoff` in units of `fs` like `scipy.signal.firwin` (with `fs = 2`, `cutoff = 0.5` is half of Nyquist: the
# cutoff of a 2x resampler).
#
# Trade-offs you will see: short filters leak (stop-band not zero), long ones ring (Gibbs ripples), $\beta$ trades
# a wider transition band for less leakage, and normalisation fixes the DC gain to 1.

# %% tags=["parameters"]
profile = "cpu"
seed = 0
device = "cpu"
numtaps_list = [3, 7, 13, 25]
betas = [0.0, 1.0, 2.0, 8.0]
cutoff = 0.5
response_points = 512
image = "camera"

# %%
import matplotlib.pyplot as plt
import numpy as np
import scipy.signal
import skimage.data
import skimage.transform
import torch

from afcore import signal
from afcore.utils import save_figure, save_json, seed_everything

seed_everything(seed)
FIG = "figures/01_filters"
metrics = {"profile": profile, "cutoff_fs2": cutoff}
f_c = cutoff / 2.0  # cycles/sample


def db(x):
    return 20 * np.log10(np.maximum(np.asarray(x), 1e-8))


def stopband_attenuation(taps, start):
    freqs, resp = signal.frequency_response(taps, response_points)
    return float(-db(resp[freqs >= start].max()))

# %% [markdown]
# ## 1. Frequency response against the number of taps
#
# The ideal response is 1 below $f_c$ and 0 above. With few taps the transition is wide and the stop-band leaks;
# more taps sharpen it. We report the worst stop-band gain from $1.5 f_c$ upward (how much of the frequencies that
# would alias survive).

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 4))
rows = []
for numtaps in numtaps_list:
    taps = signal.lowpass_filter(numtaps, cutoff, beta=8.0)
    freqs, resp = signal.frequency_response(taps, response_points)
    axes[0].plot(freqs, resp, label=f"{numtaps} taps")
    axes[1].plot(freqs, db(resp), label=f"{numtaps} taps")
    rows.append({"numtaps": numtaps, "beta": 8.0, "stopband_db": stopband_attenuation(taps, 1.5 * f_c)})
for ax in axes:
    ax.axvline(f_c, color="k", ls=":", lw=1)
    ax.set_xlabel("frequency (cycles/sample; Nyquist = 0.5)")
    ax.legend()
axes[0].set_title("Kaiser sinc, beta = 8: gain")
axes[1].set_title("gain (dB)")
axes[1].set_ylim(-120, 5)
save_figure(fig, f"{FIG}/response_vs_numtaps.png")
plt.show()
metrics["numtaps_sweep"] = rows

# %% [markdown]
# ## 2. The Kaiser window's $\beta$: ringing versus leakage
#
# $\beta = 0$ is a plain truncated sinc (rectangular window): the sharpest transition but strong ripples in both
# bands (Gibbs). Larger $\beta$ tapers the sinc: ripples shrink and the stop-band deepens, at the cost of a wider
# transition. The right panel shows the step response — the ringing you would see next to an edge in an image.

# %%
numtaps = 13
fig, axes = plt.subplots(1, 2, figsize=(12, 4))
rows = []
step = np.r_[np.zeros(40), np.ones(40)]
for beta in betas:
    taps = signal.lowpass_filter(numtaps, cutoff, beta=beta)
    freqs, resp = signal.frequency_response(taps, response_points)
    axes[0].plot(freqs, db(resp), label=f"beta={beta:g}")
    response = np.convolve(step, taps.numpy(), mode="same")
    axes[1].plot(response[30:50], marker=".", label=f"beta={beta:g}")
    rows.append({"numtaps": numtaps, "beta": beta, "stopband_db": stopband_attenuation(taps, 1.5 * f_c),
                 "step_overshoot": float(response[40:70].max() - 1.0)})
axes[0].set_ylim(-100, 5)
axes[0].axvline(f_c, color="k", ls=":", lw=1)
axes[0].set_title(f"{numtaps} taps: gain (dB) against beta")
axes[1].set_title("step response: overshoot = ringing")
for ax in axes:
    ax.legend()
save_figure(fig, f"{FIG}/response_vs_beta.png")
plt.show()
metrics["beta_sweep"] = rows
rows

# %% [markdown]
# ## 3. Agreement with `scipy.signal.firwin`
#
# Our 1-D filter is the textbook design; with `normalize=True` it matches SciPy to float precision (the tests check
# this on several settings).

# %%
ours = signal.lowpass_filter(13, cutoff, beta=2.0, dtype=torch.float64).numpy()
scipys = scipy.signal.firwin(13, cutoff, window=("kaiser", 2.0), fs=2.0)
metrics["max_abs_difference_vs_firwin"] = float(np.abs(ours - scipys).max())
print("max |ours - firwin| =", metrics["max_abs_difference_vs_firwin"])

# %% [markdown]
# ## 4. 2-D: separable sinc versus radial jinc, and the 3x3 kernels of Config A–D
#
# A separable filter (1-D sinc along rows, then columns) passes a *square* of frequencies; a jinc passes a *disk*,
# the same in every direction — what rotation equivariance needs. Anjum et al.'s Config B–D use a tiny 3x3 jinc,
# $w_c J_1(w_c r)/(2\pi r)$ with $w_c = \pi/2$ (exactly our `lowpass_filter(3, 0.5, radial=True)`), windowed by
# Kaiser $\beta \in \{0, 1, 2\}$ and optionally normalised to sum 1 (the "N" configs). A 3x3 kernel cannot be a
# good low-pass: look at how much passes above the cutoff, and how far the un-normalised kernels are from DC gain 1.

# %%
kernels = {
    "sinc 13 (separable)": torch.outer(signal.lowpass_filter(13, cutoff, beta=8.0),
                                       signal.lowpass_filter(13, cutoff, beta=8.0)),
    "jinc 13 (radial)": signal.lowpass_filter(13, cutoff, beta=8.0, radial=True),
}
for beta in (0.0, 1.0, 2.0):
    for normalize in (False, True):
        name = f"3x3 jinc beta={beta:g}{' N' if normalize else ''}"
        kernels[name] = signal.lowpass_filter(3, 0.5, beta=beta, radial=True, normalize=normalize)
n2 = 128
fig, axes = plt.subplots(2, 4, figsize=(14, 7))
rows = []
for ax, (name, k) in zip(axes.flat, kernels.items()):
    freqs, resp = signal.frequency_response(k, n2)
    ax.imshow(db(resp), extent=[-0.5, 0.5, -0.5, 0.5], vmin=-60, vmax=3, cmap="viridis")
    ax.add_patch(plt.Circle((0, 0), f_c, fill=False, color="w", ls="--"))
    ax.set_title(name, fontsize=9)
    fy, fx = np.meshgrid(freqs, freqs, indexing="ij")
    r = np.hypot(fy, fx)
    rows.append({"kernel": name, "dc_gain": float(k.sum()),
                 "max_gain_above_1.5fc_db": float(db(resp[r >= 1.5 * f_c].max())),
                 "gain_at_nyquist_diagonal_db": float(db(resp[-1, -1]))})
axes.flat[-1].axis("off")
fig.suptitle("2-D gain in dB (dashed: cutoff radius); 3x3 kernels leak far above the cutoff")
save_figure(fig, f"{FIG}/responses_2d.png")
plt.show()
metrics["kernels_2d"] = rows
rows

# %% [markdown]
# **What to notice.** The 13-tap jinc stays about 30 dB down everywhere outside its cutoff disk; the separable
# sinc's square pass-band lets diagonal-ish frequencies through that the disk blocks. The 3x3 kernels attenuate
# frequencies beyond $1.5 f_c$ by only about 10-16 dB (see `kernels_2d` in the metrics): they reduce aliasing but
# cannot remove it. Without normalisation their DC gain is not 1 ($\beta = 0$: 1.15, $\beta = 1$: 0.89,
# $\beta = 2$: 0.52), so every filtering step rescales the features — which is why the "N" variants exist.
#
# ## 5. Filtering an image
#
# Ideal (FFT) versus Kaiser low-pass on a photograph: both blur, the ideal one rings visibly around edges (its
# impulse response is an untapered sinc), the Kaiser one less so.

# %%
img = torch.tensor(skimage.transform.resize(getattr(skimage.data, image)() / 255.0, (128, 128),
                                            anti_aliasing=True), dtype=torch.float32) * 2 - 1
outs = {
    "original": img,
    "ideal (FFT) low-pass": signal.ideal_lowpass(img, cutoff),
    "Kaiser sinc 13, beta 8": signal.fir_filter(img, signal.lowpass_filter(13, cutoff, beta=8.0)),
    "3x3 jinc beta 1 N": signal.fir_filter(img, signal.lowpass_filter(3, 0.5, beta=1.0, radial=True)),
}
fig, axes = plt.subplots(1, 4, figsize=(14, 3.8))
for ax, (name, out) in zip(axes, outs.items()):
    ax.imshow(out[32:96, 32:96], cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
    ax.set_title(name, fontsize=9)
    ax.axis("off")
save_figure(fig, f"{FIG}/filtered_image.png")
plt.show()

# %%
save_json(metrics, "metrics/01_filters.json")

# %% [markdown]
# ## Exercises
#
# **1.** How many taps does a Kaiser sinc with $\beta = 8$ need for at least 60 dB stop-band attenuation from
# $1.5 f_c$ upward? Search over odd `numtaps`.

# %% tags=["solution"]
for nt in range(3, 61, 2):
    if stopband_attenuation(signal.lowpass_filter(nt, cutoff, beta=8.0), 1.5 * f_c) >= 60:
        print("numtaps =", nt)
        break

# %% [markdown]
# **2.** StyleGAN3 picks $\beta$ from the Kaiser attenuation formula given the number of taps and the transition
# width. Use `signal.kaiser_beta(numtaps, width)` for 13 taps and a transition width of 0.25 (units of fs = 2) and
# compare its stop-band with $\beta = 8$.

# %% tags=["solution"]
beta_formula = signal.kaiser_beta(13, 0.25)
print(beta_formula, stopband_attenuation(signal.lowpass_filter(13, cutoff, beta=beta_formula), 1.5 * f_c))

# %% [markdown]
# **3.** Show that a normalised 3x3 jinc applied twice is closer to the ideal low-pass than once (compare the maximum
# gain above $1.5 f_c$).

# %% tags=["solution"]
k = signal.lowpass_filter(3, 0.5, beta=1.0, radial=True)
k2 = torch.tensor(scipy.signal.convolve2d(k.numpy(), k.numpy()))
for name, kk in (("once", k), ("twice", k2)):
    freqs, resp = signal.frequency_response(kk, 64)
    fy, fx = np.meshgrid(freqs, freqs, indexing="ij")
    print(name, float(db(resp[np.hypot(fy, fx) >= 1.5 * f_c].max())))
