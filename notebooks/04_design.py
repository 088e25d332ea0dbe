# %% [markdown]
# # 04 · Designing an alias-free layer: the continuous view, StyleGAN3's filter schedule, polyphase, sinc vs jinc
#
# Notebooks 00–03 showed what aliases and how to measure it. This one gathers the design rules of Alias-Free GAN
# (StyleGAN3, Karras et al. 2021). **The continuous view**: a feature map is the set of samples of a band-limited
# continuous signal; a layer is alias-free when it equals "reconstruct the continuous signal, apply a continuous
# operation, band-limit the result, sample it again". Convolutions and ideal resampling already satisfy this;
# pointwise nonlinearities do not (they widen the band) and need the up / act / low-pass / down recipe (notebook 02).
# What remains is how to choose each layer's band: its **cutoff** $f_c$, its **stop-band** $f_t$ (transition band
# from $f_c$ to $f_t$) and its **sampling rate** $s$. Every filter in notebooks 01–03 is half-band: $-6$ dB exactly at
# the new Nyquist, so its transition straddles Nyquist. StyleGAN3 keeps the stop-band at or below Nyquist instead.
# Helpers: `afcore.course`.

# %% tags=["parameters"]
profile = "cpu"
seed = 0
device = "cpu"
img_resolution = 256
num_layers = 14
size = 64
numtaps = 13

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
import torch

from afcore import course, signal
from afcore.utils import save_figure, save_json, seed_everything

seed_everything(seed)
FIG = "figures/04_design"
metrics = {"profile": profile}

# %% [markdown]
# ## 1. StyleGAN3's per-layer schedule
#
# Cutoff and stop-band grow geometrically from the first layer to the last non-critical one; the sampling rate is
# the smallest power of two with $s \geq 2 f_t$ (capped at the image size); the last layers are critically sampled
# ($f_c = s/2$) to reach the image's full detail. Frequencies in cycles per image.

# %%
sched = course.stylegan3_schedule(img_resolution, num_layers)
layers_ = [r["layer"] for r in sched]
fig, ax = plt.subplots(figsize=(8, 4))
ax.semilogy(layers_, [r["cutoff"] for r in sched], "o-", label="cutoff f_c")
ax.semilogy(layers_, [r["stopband"] for r in sched], "s-", label="stop-band f_t")
ax.semilogy(layers_, [r["sampling_rate"] / 2 for r in sched], "k--", label="Nyquist s/2")
ax.set_xlabel("layer")
ax.set_ylabel("frequency (cycles per image)")
ax.set_title(f"StyleGAN3 (config T) schedule, {img_resolution} px, {num_layers} layers")
ax.legend()
save_figure(fig, f"{FIG}/stylegan3_schedule.png")
plt.show()
metrics["stylegan3_schedule"] = sched
noncrit = [r for r in sched if not r["critically_sampled"]]
assert all(r["stopband"] <= r["sampling_rate"] / 2 + 1e-9 for r in noncrit)
assert all(r["cutoff"] < r["sampling_rate"] / 2 for r in noncrit)
assert all(abs(r["cutoff"] - r["sampling_rate"] / 2) < 1e-9 for r in sched if r["critically_sampled"])
print(f"non-critical layers: f_t <= s/2 in all {len(noncrit)}; f_c / (s/2) ranges "
      f"{min(r['cutoff'] / (r['sampling_rate'] / 2) for r in noncrit):.2f}..."
      f"{max(r['cutoff'] / (r['sampling_rate'] / 2) for r in noncrit):.2f}")

# %% [markdown]
# **What to notice.** In every non-critical layer the stop-band starts at or below Nyquist ($f_t \leq s/2$) and the
# cutoff is well below it: what a down-sampling filter leaves above $s/2$ is already in its stop-band. Only the
# last, critically sampled layers accept a transition across Nyquist.
#
# ## 2. What a transition band below Nyquist buys
#
# Down-sampling by 2: fraction of white noise's power that a filter leaves above the new Nyquist (it folds). A 13-tap
# half-band filter (cutoff at the new Nyquist) against 13-tap filters whose cutoff is lowered so the transition ends
# near it (StyleGAN3's design: beta from the Kaiser formula for the given width).

# %%
rows = []
for fc_frac in (1.0, 0.75, 0.5):
    cutoff = 0.5 * fc_frac  # fs = 2 units: 0.5 is the half-band cutoff of a 2x resampler
    width = 2 * (0.5 - cutoff) if fc_frac < 1 else 0.5
    taps = course.stylegan3_filter(numtaps, cutoff, width, 2.0) if fc_frac < 1 else \
        signal.lowpass_filter(numtaps, 0.5, beta=8.0, dtype=torch.float64)
    rows.append({"cutoff_fraction_of_new_nyquist": fc_frac, "aliased_fraction": course.aliased_fraction(taps, 2),
                 "gain_at_new_nyquist_db": float(20 * np.log10(course.dtft(taps, np.array([0.25]))[0]))})
metrics["transition_below_nyquist"] = rows
print(rows)
af = [r["aliased_fraction"] for r in rows]
assert af[0] > 50 * af[1] > 50 * af[2]

# %% [markdown]
# **What to notice.** Lowering the cutoff so the transition ends at the new Nyquist cuts the folded power by about two orders of magnitude
# (`aliased_fraction`), at the price of band: the layer represents less detail than its grid could. StyleGAN3 pays
# this in every non-critical layer and recovers detail by growing the cutoffs from layer to layer.
#
# ## 3. Polyphase up-sampling
#
# Zero insertion followed by an FIR filter multiplies most taps by inserted zeros. Polyphase evaluation splits the
# taps into `factor` phases and runs each on the low-rate signal: the same result with `numtaps / factor` taps per
# output sample instead of `numtaps` (`afcore.course.polyphase_upsample`; `afcore.layers` does the same with a
# transposed convolution).

# %%
g = torch.Generator().manual_seed(seed)
img = torch.randn(8, size, size, generator=g, dtype=torch.float64)
taps = signal.lowpass_filter(numtaps, 0.5, beta=8.0, dtype=torch.float64)
ref = signal.upsample(img, 2, method="kaiser", numtaps=numtaps, beta=8.0)
poly = course.polyphase_upsample(course.polyphase_upsample(img, taps, 2, -1), taps, 2, -2)
t0 = time.perf_counter()
for _ in range(5):
    signal.upsample(img, 2, method="kaiser", numtaps=numtaps, beta=8.0)
t_zero = (time.perf_counter() - t0) / 5
t0 = time.perf_counter()
for _ in range(5):
    course.polyphase_upsample(course.polyphase_upsample(img, taps, 2, -1), taps, 2, -2)
t_poly = (time.perf_counter() - t0) / 5
metrics["polyphase"] = {"max_abs_difference": float((poly - ref).abs().max()),
                        "macs_per_output_zero_insertion": 2 * numtaps,
                        "macs_per_output_polyphase": 2 * numtaps / 2,
                        "seconds_zero_insertion": t_zero, "seconds_polyphase": t_poly}
print(metrics["polyphase"])
assert metrics["polyphase"]["max_abs_difference"] < 1e-6  # signal.upsample uses float32 taps

# %% [markdown]
# **What to notice.** Polyphase and zero insertion agree to round-off; polyphase does half the multiply-adds per
# output sample at factor 2 (a quarter for a 2-D kernel applied directly). The timings (this CPU, this small input)
# are printed only for orientation: our polyphase loop is plain Python over the taps.
#
# ## 4. Separable sinc vs radial jinc: cost and rotation
#
# A separable $N$-tap filter costs $2N$ multiply-adds per pixel, a radial $N \times N$ jinc $N^2$. What the jinc buys
# is direction-independence: we measure how well each filter commutes with a band-limited rotation by 30° and 45°
# (`afcore.course.rotation_psnr`) on disk-band-limited noise.

# %%
noise = signal.ideal_lowpass(torch.randn(size, size, generator=g, dtype=torch.float64), 0.9, radial=True)
noise = noise / noise.abs().max()
sinc = signal.lowpass_filter(numtaps, 0.5, beta=8.0, dtype=torch.float64)
jinc = signal.lowpass_filter(numtaps, 0.5, beta=8.0, radial=True, dtype=torch.float64)
rows = []
for angle in (30.0, 45.0):
    rows.append({"angle": angle,
                 "sinc_separable_db": course.rotation_psnr(lambda t: signal.fir_filter(t, sinc), noise, angle),
                 "jinc_radial_db": course.rotation_psnr(lambda t: signal.fir_filter(t, jinc), noise, angle)})
metrics["sinc_vs_jinc"] = {"macs_separable": 2 * numtaps, "macs_radial": numtaps**2, "rotation": rows,
                           "anisotropy_at_cutoff_db": {"sinc": course.anisotropy_db(torch.outer(sinc, sinc), 0.25),
                                                       "jinc": course.anisotropy_db(jinc, 0.25)}}
print(metrics["sinc_vs_jinc"])
for r in rows:
    assert r["jinc_radial_db"] > r["sinc_separable_db"] + 5

# %% [markdown]
# **What to notice.** The jinc commutes with rotation far better than the separable sinc (5 dB or more at 30° and
# 45°), at $N^2 / 2N$ times the cost ($169$ against $26$ multiply-adds at 13 taps). StyleGAN3-R uses radial
# filters only for its down-sampling filters and pairs them with 1x1 convolutions (notebook 03).
#
# Not covered here yet: padding and borders (circular vs zero padding, error against the distance from the border;
# `afcore.course.error_by_border_distance` is the helper) and StyleGAN3's 10-pixel margin.

# %%
save_json(metrics, "metrics/04_design.json")
