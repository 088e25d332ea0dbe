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
# low-pass) times the outer product of two 1-D Kaiser windows. Here $f_c$ is in cycles/sample; `afcore.signal.lowpass_filter` takes
# `cutoff` in units of `fs` like `scipy.signal.firwin` (with `fs = 2`, `cutoff = 0.5` is half of Nyquist: the
# cutoff of a 2x resampler).
#
# Trade-offs you will see (each one measured and asserted below): the cutoff is the middle of a transition band
# whose width shrinks as the taps grow; $\beta$ lowers the side-lobes but widens the transition; a sharp cutoff
# rings at edges whatever the window; normalisation fixes the DC gain to 1 without changing the response's shape.

# %% tags=["parameters"]
profile = "cpu"
seed = 0
device = "auto"
deterministic = True
numtaps_list = [3, 7, 13, 25]
betas = [0.0, 1.0, 2.0, 4.0, 8.0]
cutoff = 0.5
response_points = 512
image = "camera"

# %%
import matplotlib.pyplot as plt
import numpy as np
import scipy.optimize
import scipy.signal
import skimage.transform
import torch

from afcore import course, signal
from afcore.utils import save_figure, save_json, seed_everything
from afcore.device import pick_device

seed_everything(seed)
# the filtered signals and images live on this device; the filters' taps, analysed in numpy (responses, steps), stay
# on the CPU, and plots get CPU copies
dev = pick_device(device, deterministic)
FIG = "figures/01_filters"
metrics = {"profile": profile, "cutoff_fs2": cutoff}
f_c = cutoff / 2.0  # cycles/sample


def db(x):
    return 20 * np.log10(np.maximum(np.asarray(x), 1e-8))


# %% [markdown]
# ## 1. Frequency response against the number of taps
#
# The ideal response is 1 below $f_c$ and 0 above. A windowed sinc replaces the jump by a **transition band**
# centred on $f_c$: with enough taps the gain *at* the cutoff is $-6$ dB (half amplitude), so "cutoff" names the
# middle of the transition, not the start of the stop-band. More taps make the transition narrower. We measure, for
# $\beta = 8$, the gain at $f_c$, the transition width (from 90% to 10% amplitude) and the worst gain from
# $1.5 f_c$ upward. All gains are relative to the filter's DC gain.

# %%
FREQS = np.linspace(0, 0.5, 4 * response_points + 1)  # evaluation grid of every 1-D response


def gain(taps, f=FREQS):
    """|H(f)| relative to the DC gain, at frequencies f (cycles/sample)."""
    return course.dtft(taps, f) / abs(float(taps.sum()))


def filter_stats(taps):
    g = gain(taps)
    below10 = np.nonzero(g < 0.1)[0]
    return {"gain_at_cutoff_db": float(db(gain(taps, np.array([f_c]))[0])),
            "transition_width": float(FREQS[below10[0]] - FREQS[np.argmax(g < 0.9)]) if below10.size else None,
            "stopband_db": float(-db(g[FREQS >= 1.5 * f_c].max()))}


fig, axes = plt.subplots(1, 2, figsize=(12, 4))
rows = []
for numtaps in numtaps_list:
    taps = signal.lowpass_filter(numtaps, cutoff, beta=8.0, dtype=torch.float64)
    axes[0].plot(FREQS, gain(taps), label=f"{numtaps} taps")
    axes[1].plot(FREQS, db(gain(taps)), label=f"{numtaps} taps")
    rows.append({"numtaps": numtaps, "beta": 8.0, **filter_stats(taps)})
for ax in axes:
    ax.axvline(f_c, color="k", ls=":", lw=1, label="cutoff f_c")
    ax.axvline(1.5 * f_c, color="grey", ls="--", lw=1, label="1.5 f_c")
    ax.set_xlabel("frequency (cycles/sample; Nyquist = 0.5)")
    ax.legend(fontsize=8)
axes[0].set_ylabel("gain (relative to DC)")
axes[1].set_ylabel("gain (dB)")
axes[0].set_title("Kaiser sinc, beta = 8")
axes[1].set_title("the same in dB")
axes[1].set_ylim(-120, 5)
save_figure(fig, f"{FIG}/response_vs_numtaps.png")
plt.show()
metrics["numtaps_sweep"] = rows
by_taps = {r["numtaps"]: r for r in rows}
rows

# %% [markdown]
# **What to notice.** From 13 taps on, every filter is $-6.0$ dB at $f_c$ (`gain_at_cutoff_db`). Doubling the taps
# from 13 to 25 halves the transition width (0.19 to 0.095 cycles/sample) and moves the stop-band from the middle of
# the transition to past its end (`stopband_db` from $1.5 f_c$: 27 dB to 80 dB). With 3 taps and $\beta = 8$ the
# window leaves almost a single tap (its end weights are $1/I_0(8) \approx 0.002$): it hardly filters at all.

# %%
if 13 in by_taps and 25 in by_taps:
    assert all(abs(by_taps[n]["gain_at_cutoff_db"] + 6.02) < 0.1 for n in (13, 25))
    assert abs(by_taps[13]["transition_width"] / by_taps[25]["transition_width"] - 2) < 0.2
    assert by_taps[25]["stopband_db"] > by_taps[13]["stopband_db"] + 40
if 3 in by_taps:
    assert by_taps[3]["stopband_db"] < 1

# %% [markdown]
# ## 2. The Kaiser window's $\beta$: side-lobes against transition width
#
# $\beta = 0$ is a plain truncated sinc (rectangular window): the narrowest transition but high side-lobes (about
# $-21$ dB). Larger $\beta$ tapers the sinc: the side-lobes drop, **and the transition widens**. Kaiser's design
# formula makes the trade explicit: a window reaching attenuation $A$ dB (which fixes $\beta$) needs a transition
# $\Delta f \approx (A - 7.95) / (14.36 (N - 1))$ cycles/sample for $N$ taps. So at a fixed $N$ there is no free
# lunch: the stop-band measured from a *fixed* frequency (here $1.5 f_c$) first deepens with $\beta$ and then gets
# worse again, once the widening transition reaches that frequency. We measure, for 13 taps: the predicted $A$ and
# $\Delta f$, the attenuation actually reached beyond the predicted stop-band edge $f_c + \Delta f / 2$, the
# stop-band from $1.5 f_c$, and the overshoot of the step response (ringing next to an edge), with the ideal
# filter's overshoot for comparison.

# %%
def attenuation_for_beta(beta):
    """Invert scipy's Kaiser beta formula: the design attenuation A (dB) that gives this beta."""
    if beta <= 0:
        return 21.0  # the formula returns beta = 0 for every A <= 21 dB: the rectangular window's side-lobes
    return float(scipy.optimize.brentq(lambda a: scipy.signal.kaiser_beta(a) - beta, 21.0, 500.0))


numtaps = 13
step = np.r_[np.zeros(60), np.ones(60)]
long_step = torch.tensor(np.r_[np.zeros(256), np.ones(256)], device=dev)[None]
ideal_step = signal.ideal_lowpass(long_step, cutoff)[0].cpu().numpy()
ideal_overshoot = float(ideal_step.max() - 1.0)
fig, axes = plt.subplots(1, 2, figsize=(12, 4))
rows = []
for beta in betas:
    taps = signal.lowpass_filter(numtaps, cutoff, beta=beta, dtype=torch.float64)
    axes[0].plot(FREQS, db(gain(taps)), label=f"beta={beta:g}")
    response = np.convolve(step, taps.numpy(), mode="same")
    axes[1].plot(np.arange(-10, 10), response[50:70], marker=".", label=f"beta={beta:g}")
    a_db = attenuation_for_beta(beta)
    width = (a_db - 7.95) / (14.36 * (numtaps - 1))
    edge = f_c + width / 2
    g = gain(taps)
    rows.append({"numtaps": numtaps, "beta": beta, "design_attenuation_db": a_db, "predicted_transition": width,
                 "predicted_stopband_edge": edge,
                 "attenuation_beyond_edge_db": float(-db(g[FREQS >= edge].max())) if edge < 0.5 else None,
                 "stopband_db": filter_stats(taps)["stopband_db"],
                 "step_overshoot": float(response[60:100].max() - 1.0)})
axes[1].plot(np.arange(-10, 10), ideal_step[246:266], "k--", lw=1, label="ideal (FFT)")
axes[0].set_ylim(-100, 5)
axes[0].axvline(f_c, color="k", ls=":", lw=1)
axes[0].axvline(1.5 * f_c, color="grey", ls="--", lw=1)
axes[0].set_xlabel("frequency (cycles/sample)")
axes[0].set_ylabel("gain (dB, relative to DC)")
axes[0].set_title(f"{numtaps} taps: gain against beta (dotted f_c, dashed 1.5 f_c)")
axes[1].set_xlabel("sample (step at 0)")
axes[1].set_ylabel("filtered step")
axes[1].set_title("step response: overshoot = ringing")
for ax in axes:
    ax.legend(fontsize=8)
save_figure(fig, f"{FIG}/response_vs_beta.png")
plt.show()
metrics["beta_sweep"] = rows
metrics["ideal_step_overshoot"] = ideal_overshoot
rows

# %% [markdown]
# **What to notice.** The predicted transition widens with $\beta$, from 0.08 cycles/sample at $\beta = 0$ to
# 0.43 at $\beta = 8$: at 13 taps, $\beta = 8$ (designed for about 81 dB) has its stop-band start at 0.46, next to
# Nyquist. Beyond each predicted edge the filter does reach (within 3 dB) its design attenuation. Measured from the
# fixed frequency $1.5 f_c$ the stop-band is *not* monotonic in $\beta$ (see `stopband_db`): it peaks at an
# intermediate $\beta$ and falls back for $\beta = 8$. The step overshoot barely depends on $\beta$ at this
# length (3.5–5.5%), and every 13-tap Kaiser filter rings less than the ideal (untapered, infinitely long) sinc
# (`ideal_step_overshoot`): ringing comes from the sharp cutoff, not from the window.

# %%
widths = [r["predicted_transition"] for r in rows]
assert all(b > a for a, b in zip(widths, widths[1:]))
assert all(r["attenuation_beyond_edge_db"] >= r["design_attenuation_db"] - 3
           for r in rows if r["attenuation_beyond_edge_db"] is not None)
stop = [r["stopband_db"] for r in rows]
assert max(stop) > stop[-1] + 3, "the stop-band from 1.5 f_c should peak at an intermediate beta"
assert all(r["step_overshoot"] < ideal_overshoot for r in rows)
assert max(r["step_overshoot"] for r in rows) - min(r["step_overshoot"] for r in rows) < 0.02

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
assert metrics["max_abs_difference_vs_firwin"] < 1e-12

# %% [markdown]
# ## 4. 2-D: separable sinc versus radial jinc, and the 3x3 kernels of Config A–D
#
# A separable filter (1-D sinc along rows, then columns) passes a *square* of frequencies; a jinc passes a *disk*,
# the same in every direction — what rotation equivariance needs. Our jinc (like StyleGAN3's) is windowed by the
# **outer product of two 1-D Kaiser windows**, which is itself separable, not radial: the window tapers the kernel's
# corners more than its edges, so the windowed jinc is only approximately radial. Anjum et al.'s Config B–D use a
# tiny 3x3 jinc, $w_c J_1(w_c r)/(2\pi r)$ with $w_c = \pi/2$ (exactly our `lowpass_filter(3, 0.5, radial=True)`),
# windowed by Kaiser $\beta \in \{0, 1, 2\}$ and optionally normalised to sum 1 (the "N" configs).
#
# Kernels with different DC gains must be compared *relative to their DC gain* (a kernel with DC gain 0.5 is not
# "6 dB better" at suppressing high frequencies; it attenuates everything). So all 2-D gains below are
# $|H(f)| / |H(0)|$, and the DC gain is reported separately. We also measure the anisotropy: the spread (dB) of the
# gain around the cutoff circle, 0 for a perfectly radial filter (`afcore.course.anisotropy_db`).

# %%
kernels = {
    "sinc 13 (separable)": torch.outer(signal.lowpass_filter(13, cutoff, beta=8.0, dtype=torch.float64),
                                       signal.lowpass_filter(13, cutoff, beta=8.0, dtype=torch.float64)),
    "jinc 13 (radial)": signal.lowpass_filter(13, cutoff, beta=8.0, radial=True, dtype=torch.float64),
}
for beta in (0.0, 1.0, 2.0):
    for normalize in (False, True):
        name = f"3x3 jinc beta={beta:g}{' N' if normalize else ''}"
        kernels[name] = signal.lowpass_filter(3, 0.5, beta=beta, radial=True, normalize=normalize,
                                              dtype=torch.float64)
n2 = 128
fq = np.fft.fftshift(np.fft.fftfreq(n2))
fy, fx = np.meshgrid(fq, fq, indexing="ij")
r = np.hypot(fy, fx)
shown = [name for name in kernels if not (name.startswith("3x3") and not name.endswith(" N"))]
fig, axes = plt.subplots(1, len(shown), figsize=(3.6 * len(shown) + 1, 3.9), gridspec_kw={"wspace": 0.4})
axes_for = dict(zip(shown, axes))
rows = []
for name, k in kernels.items():
    rel = course.dtft(k, fy, fx) / abs(float(k.sum()))
    rows.append({"kernel": name, "dc_gain": float(k.sum()),
                 "gain_at_cutoff_axis_diagonal_db": [float(db(v)) for v in course.response_on_circle(k, f_c)[1][[0, 45]]],
                 "anisotropy_at_cutoff_db": course.anisotropy_db(k, f_c),
                 "max_rel_gain_above_1.5fc_db": float(db(rel[r >= 1.5 * f_c].max())),
                 "rel_gain_at_nyquist_diagonal_db": float(db(course.dtft(k, np.array(0.5), np.array(0.5)))
                                                          - db(abs(float(k.sum()))))})
    if name not in axes_for:
        continue  # the plain 3x3 kernels have the same relative response as their "N" twins
    ax = axes_for[name]
    im = ax.imshow(db(rel), extent=[fq[0], fq[-1], fq[-1], fq[0]], vmin=-60, vmax=3, cmap="viridis")
    ax.add_patch(plt.Circle((0, 0), f_c, fill=False, color="w", ls="--"))
    ax.add_patch(plt.Circle((0, 0), 1.5 * f_c, fill=False, color="w", ls=":"))
    ax.set_title(name, fontsize=9)
    ax.set_xlabel("f_x (cycles/sample)")
    ax.set_ylabel("f_y (cycles/sample)")
fig.colorbar(im, ax=list(axes), fraction=0.02, label="gain relative to DC (dB)")
fig.suptitle("2-D gain relative to DC (dashed: cutoff radius f_c, dotted: 1.5 f_c); plain 3x3 kernels: same shape",
             y=1.03)
save_figure(fig, f"{FIG}/responses_2d.png")
plt.show()
metrics["kernels_2d"] = rows
k2d = {row["kernel"]: row for row in rows}
rows

# %% [markdown]
# **What to notice.** On its cutoff circle the 13-tap jinc is about $-7$ dB (a little below the 1-D filter's
# $-6$ dB) and the same in every direction to within a fraction of a dB (`anisotropy_at_cutoff_db`). The separable
# sinc is $-6$ dB where the circle meets the axes but only about $-3$ dB on the diagonal, where its square pass-band
# reaches further out: an anisotropy of about 3 dB at the cutoff, growing beyond it. Beyond $1.5 f_c$ the jinc
# stays at least 25 dB down; the separable sinc leaks through the corners of its square pass-band. The 3x3 kernels
# pass frequencies beyond $1.5 f_c$ at only $-9$ to $-16$ dB relative to DC: they reduce aliasing, they cannot remove
# it. Without normalisation their DC gain is not 1 ($\beta = 0$: 1.15, $\beta = 1$: 0.89, $\beta = 2$: 0.52),
# so every filtering step rescales the features, which is why the "N" variants exist. Normalising divides every tap
# by the same number, so it leaves $|H(f)|/|H(0)|$ unchanged: "N" and plain rows agree in every relative column
# (the issue with the un-normalised kernels is the gain, not the shape).

# %%
jinc, sinc2 = k2d["jinc 13 (radial)"], k2d["sinc 13 (separable)"]
assert all(-8 < g < -6 for g in jinc["gain_at_cutoff_axis_diagonal_db"]) and jinc["anisotropy_at_cutoff_db"] < 0.5
assert abs(sinc2["gain_at_cutoff_axis_diagonal_db"][0] + 6.02) < 0.1 and -4 < sinc2["gain_at_cutoff_axis_diagonal_db"][1] < -2.5
assert sinc2["anisotropy_at_cutoff_db"] > 2.0
assert jinc["max_rel_gain_above_1.5fc_db"] < -25 and sinc2["max_rel_gain_above_1.5fc_db"] > jinc["max_rel_gain_above_1.5fc_db"]
small = [row for name, row in k2d.items() if name.startswith("3x3")]
assert all(-17 < row["max_rel_gain_above_1.5fc_db"] < -8 for row in small)
for beta in (0, 1, 2):
    plain, normed = k2d[f"3x3 jinc beta={beta}"], k2d[f"3x3 jinc beta={beta} N"]
    assert abs(plain["max_rel_gain_above_1.5fc_db"] - normed["max_rel_gain_above_1.5fc_db"]) < 1e-6
    assert abs(normed["dc_gain"] - 1) < 1e-9
assert [round(k2d[f"3x3 jinc beta={b}"]["dc_gain"], 2) for b in (0, 1, 2)] == [1.15, 0.89, 0.52]

# %% [markdown]
# ## 5. Filtering an image
#
# Ideal (FFT) versus Kaiser low-pass on a photograph, at the cutoff of a 2x resampler, and the normalised 3x3 jinc of
# Config B-1N. Every filter here blurs, but by different amounts, and the amount is something we can measure rather
# than judge by eye. A low-pass filter should leave the **pass-band** (frequencies well below $f_c$) untouched, so
# we probe each filter with a grating at `PASS_F` = 0.15 cycles/sample (60% of $f_c$): its gain there is how much
# fine-but-wanted detail survives (1 = none lost). The **leak** is the other side: the RMS gain the filter applies
# to the photograph's own spectrum beyond $1.5 f_c$ (0 = nothing passes). The ringing metric is the step overshoot
# of each filter (a 1-D step filtered along rows). The right panel is one image row across an edge.

# %%
img = torch.tensor(skimage.transform.resize(course.gray_photo(image), (128, 128),
                                            anti_aliasing=True), dtype=torch.float32, device=dev) * 2 - 1
filters = {
    "ideal (FFT) low-pass": lambda t: signal.ideal_lowpass(t, cutoff),
    "Kaiser sinc 13, beta 8": lambda t: signal.fir_filter(t, signal.lowpass_filter(13, cutoff, beta=8.0,
                                                                                   dtype=t.dtype)),
    "3x3 jinc beta 1 N": lambda t: signal.fir_filter(t, signal.lowpass_filter(3, 0.5, beta=1.0, radial=True,
                                                                              dtype=t.dtype)),
}
outs = {"original": img, **{name: f(img) for name, f in filters.items()}}
step2d = torch.tensor(np.r_[np.zeros(32), np.ones(32)], dtype=torch.float64, device=dev)[None].repeat(64, 1)
overshoot = {name: float(f(step2d)[32, 20:44].max() - 1.0) for name, f in filters.items()}

# pass-band gain: a vertical grating cos(2 pi PASS_F x) on a grid where PASS_F is an exact DFT bin (6 cycles in 40
# samples), so that circular filtering scales it by exactly the filter's gain at PASS_F
PASS_F, n_grating = 0.15, 40
grating = torch.cos(2 * np.pi * PASS_F * torch.arange(n_grating, dtype=torch.float64, device=dev))[None]
grating = grating.repeat(n_grating, 1)
passband_gain = {name: float((f(grating) * grating).sum() / grating.pow(2).sum()) for name, f in filters.items()}
# the same numbers straight from the taps (DTFT), for the two FIR filters
taps_1d = signal.lowpass_filter(13, cutoff, beta=8.0, dtype=torch.float64)
jinc3 = signal.lowpass_filter(3, 0.5, beta=1.0, radial=True, dtype=torch.float64)
dtft_gain = {"Kaiser sinc 13, beta 8": float(gain(taps_1d, np.array([PASS_F]))[0]),
             "3x3 jinc beta 1 N": float(course.dtft(jinc3, np.array(0.0), np.array(PASS_F)) / float(jinc3.sum()))}
assert all(abs(passband_gain[name] - g) < 1e-9 for name, g in dtft_gain.items())
# the jinc is (nearly) radial: its gain on the whole circle of radius PASS_F, not only on the axis
jinc3_circle = course.response_on_circle(jinc3, PASS_F)[1]

# leak: RMS gain on the photograph's spectrum beyond 1.5 f_c (radius, cycles/sample)
fr = torch.fft.fftfreq(img.shape[-1], dtype=torch.float64, device=dev)
beyond = torch.hypot(fr[:, None], fr[None, :]) > 1.5 * f_c


def stopband_rms_gain(out):
    spec_in, spec_out = torch.fft.fft2(img.double()), torch.fft.fft2(out.double())
    return float((spec_out[beyond].abs().pow(2).sum() / spec_in[beyond].abs().pow(2).sum()).sqrt())


leak = {name: stopband_rms_gain(outs[name]) for name in filters}
fig, axes = plt.subplots(1, 5, figsize=(19, 3.8), gridspec_kw={"width_ratios": [1, 1, 1, 1, 1.6], "wspace": 0.4})
row_idx = 60
for ax, (name, out) in zip(axes, outs.items()):
    ax.imshow(out[32:96, 32:96].cpu(), cmap="gray", vmin=-1, vmax=1, interpolation="nearest",
              extent=[32, 96, 96, 32])
    ax.axhline(row_idx, color="r", lw=0.6)
    ax.set_title(name if name == "original" else
                 f"{name}\n(gain at {PASS_F:g} c/s: {passband_gain[name]:.2f}, overshoot {overshoot[name]:.1%})",
                 fontsize=9)
    ax.set_xlabel("x (pixels)")
axes[0].set_ylabel("y (pixels)")
for name, out in outs.items():
    axes[4].plot(np.arange(32, 96), out[row_idx, 32:96].cpu(), lw=1, label=name)
axes[4].set_xlabel("x (pixels)")
axes[4].set_ylabel("intensity")
axes[4].set_title(f"row {row_idx} (red line)")
axes[4].legend(fontsize=7)
save_figure(fig, f"{FIG}/filtered_image.png")
plt.show()
metrics["image_step_overshoot"] = overshoot
metrics["passband_probe_frequency"] = PASS_F
metrics["image_filters"] = [{"filter": name, "passband_gain_at_probe": passband_gain[name],
                             "stopband_rms_gain": leak[name], "step_overshoot": overshoot[name]}
                            for name in filters]
metrics["jinc3_passband_gain_on_circle_range"] = [float(jinc3_circle.min()), float(jinc3_circle.max())]
metrics["image_filters"]

# %% [markdown]
# **What to notice.** The ideal filter keeps the 0.15 cycles/sample grating intact (gain 1) and passes nothing
# beyond $1.5 f_c$, but rings most. The 13-tap Kaiser sinc costs a little pass-band (gain about 0.91 at 0.15: its
# transition band is wide, §1 above, so it starts rolling off well before $f_c$) and leaks a few percent.
# The normalised 3x3 jinc **blurs most**: at 0.15 cycles/sample its gain is only about 0.78, in every direction
# (`jinc3_passband_gain_on_circle_range`), so even detail the grid could keep is softened; and it also **leaks
# most** beyond $1.5 f_c$ (`stopband_rms_gain`). Three taps cannot make a sharp transition, so the response
# sags early and still has not reached the stop-band far above the cutoff: both errors at once. Its one virtue is
# that it is too smooth to ring (no overshoot). Sharpness, suppression and ringing pull against each other; only
# more taps improve the first two together.

# %%
image_rows = {r["filter"]: r for r in metrics["image_filters"]}
ideal_row, kaiser_row, jinc_row = (image_rows[k] for k in ("ideal (FFT) low-pass", "Kaiser sinc 13, beta 8",
                                                           "3x3 jinc beta 1 N"))
assert overshoot["ideal (FFT) low-pass"] > overshoot["Kaiser sinc 13, beta 8"] > overshoot["3x3 jinc beta 1 N"]
# blur: the pass-band gain at 0.15 c/s orders ideal > Kaiser > 3x3 jinc (the jinc blurs MOST, not least)
assert abs(ideal_row["passband_gain_at_probe"] - 1) < 1e-9
assert ideal_row["passband_gain_at_probe"] > kaiser_row["passband_gain_at_probe"] > jinc_row["passband_gain_at_probe"]
assert abs(kaiser_row["passband_gain_at_probe"] - 0.91) < 0.01 and abs(jinc_row["passband_gain_at_probe"] - 0.78) < 0.01
assert max(metrics["jinc3_passband_gain_on_circle_range"]) < 0.8  # not only along the axis
# leak: ideal (round-off only: the image is float32) < Kaiser < 3x3 jinc
assert ideal_row["stopband_rms_gain"] < 1e-5 < kaiser_row["stopband_rms_gain"] < jinc_row["stopband_rms_gain"]
assert 0.01 < kaiser_row["stopband_rms_gain"] < 0.05  # "a few percent"

# %% [markdown]
# ### The code behind `fir_filter`
#
# `signal.fir_filter` with 1-D taps filters the rows, then the columns, each with one `conv1d` (its fast path).
# Written out, a centred FIR filter with circular borders is a weighted sum of rolled copies of the image:
# $y[i] = \sum_j h[j]\, x[i - (j - c)]$ with $c$ the centre tap. That loop, and the library's own reference path
# (`impl="ref"`), must give the Kaiser-filtered photograph above to float32 round-off (tolerance $10^{-5}$).

# %%
def fir_readable(t, taps):
    """Centred FIR filter, circular borders: rows, then columns, as a sum of rolled copies."""
    c = taps.numel() // 2
    for axis in (-2, -1):
        t = sum(taps[j] * torch.roll(t, shifts=j - c, dims=axis) for j in range(taps.numel()))
    return t


k13 = signal.lowpass_filter(13, cutoff, beta=8.0, dtype=img.dtype).to(dev)
fast_k13 = signal.fir_filter(img, k13)
metrics["reference_path"] = {"readable_vs_fast": float((fir_readable(img, k13) - fast_k13).abs().max()),
                             "ref_vs_fast": float((signal.fir_filter(img, k13, impl="ref") - fast_k13).abs().max())}
print(metrics["reference_path"])
assert max(metrics["reference_path"].values()) < 1e-5

# %%
save_json(metrics, "metrics/01_filters.json")

# %% [markdown]
# ## Exercises
#
# **1.** How many taps does a Kaiser sinc with $\beta = 8$ need for at least 60 dB stop-band attenuation from
# $1.5 f_c$ upward? Search over odd `numtaps`, and compare with Kaiser's formula for the $A$ that $\beta = 8$ stands
# for, with the stop-band edge at $1.5 f_c$ (the cutoff is the *middle* of the transition, so $\Delta f = f_c$).

# %% tags=["solution"]
found = next(nt for nt in range(3, 61, 2)
             if filter_stats(signal.lowpass_filter(nt, cutoff, beta=8.0, dtype=torch.float64))["stopband_db"] >= 60)
# beta = 8 means A ~ 81 dB; a stop-band edge at 1.5 f_c means a transition of 2 * 0.5 f_c centred on f_c
a8 = attenuation_for_beta(8.0)
predicted = (a8 - 7.95) / (14.36 * (2 * 0.5 * f_c)) + 1
print(f"numtaps = {found}; Kaiser's formula for A = {a8:.0f} dB and width {f_c:.3f}: {predicted:.1f}")
assert filter_stats(signal.lowpass_filter(found - 2, cutoff, beta=8.0, dtype=torch.float64))["stopband_db"] < 60
assert abs(found - predicted) <= 4

# %% [markdown]
# **2.** StyleGAN3 picks $\beta$ from the Kaiser attenuation formula given the number of taps and the transition
# width. Use `signal.kaiser_beta(numtaps, width)` for 13 taps and a transition width of 0.25 (units of fs = 2, i.e.
# 0.125 cycles/sample) and check that the filter reaches the designed attenuation beyond $f_c$ + half the width.

# %% tags=["solution"]
width_fs2 = 0.25
beta_formula = signal.kaiser_beta(13, width_fs2)
designed = float(scipy.signal.kaiser_atten(13, width_fs2 / 1.0))
taps = signal.lowpass_filter(13, cutoff, beta=beta_formula, dtype=torch.float64)
edge = f_c + width_fs2 / 2 / 2  # half the width, converted to cycles/sample
reached = float(-db(gain(taps)[FREQS >= edge].max()))
print(f"beta = {beta_formula:.2f}, designed {designed:.1f} dB, reached {reached:.1f} dB beyond {edge:.4f}")
assert reached >= designed - 1.5

# %% [markdown]
# **3.** Show that a normalised 3x3 jinc applied twice attenuates more above $1.5 f_c$ than once, and what it costs
# in the pass-band (gain at $f_c / 2$).

# %% tags=["solution"]
k = signal.lowpass_filter(3, 0.5, beta=1.0, radial=True, dtype=torch.float64)
k2 = torch.tensor(scipy.signal.convolve2d(k.numpy(), k.numpy()))
res = {}
for name, kk in (("once", k), ("twice", k2)):
    rel = course.dtft(kk, fy, fx) / float(kk.sum())
    res[name] = (float(db(rel[r >= 1.5 * f_c].max())), float(db(course.dtft(kk, np.array(0.0), np.array(f_c / 2)))))
    print(name, "max gain above 1.5 f_c: %.1f dB, gain at f_c/2: %.2f dB" % res[name])
# the response of the kernel applied twice is the square of the response once: every dB value doubles
assert abs(res["twice"][0] - 2 * res["once"][0]) < 1e-6 and abs(res["twice"][1] - 2 * res["once"][1]) < 1e-6
