# %% [markdown]
# # 50 · Latent I2SB x4 super-resolution: LDM vs AF-LDM under input shifts (AF-LDM Sec. 4.3, Fig. 9)
#
# Zhou et al. fine-tune their alias-free LDM into a **latent I2SB** super-resolution model and show, in a qualitative
# figure, that the standard latent I2SB "flickers" when its input shifts while the alias-free one follows the shift.
# The paper gives no number; this notebook defines and measures them (definitions also in `docs/sr.md`).
#
# **I2SB** (Liu et al. 2023, *Image-to-Image Schrödinger Bridge*) is a diffusion between two *data* distributions:
# $x_0$ = the clean latent and $x_1$ = the degraded image's latent. With betas $\beta_n$ ($n = 0..N-1$, $N = 1000$),
# $\sigma_f^2(n) = \sum_{m \le n} \beta_m$ and $\sigma_b^2(n) = \sum_{m \ge n} \beta_m$, the bridge's marginal is
#
# $$x_n = \mu_0 x_0 + \mu_1 x_1 + \sigma_{sb}\,\epsilon,\quad \mu_0 = \frac{\sigma_b^2}{\sigma_f^2+\sigma_b^2},\;
# \mu_1 = \frac{\sigma_f^2}{\sigma_f^2+\sigma_b^2},\; \sigma_{sb}^2 = \frac{\sigma_f^2\sigma_b^2}{\sigma_f^2+\sigma_b^2}.$$
#
# The network sees only $x_n$ and the index $n$ (as its timestep) and regresses $(x_n - x_0)/\sigma_f(n)$, so
# $\hat x_0 = x_n - \sigma_f(n)\,\mathrm{net}(x_n, n)$. Sampling starts at $x_1$ and steps $n \to m < n$ with the
# Gaussian product $x_m = \frac{\sigma_\Delta^2}{\sigma_f^2(n)}\hat x_0 + \frac{\sigma_f^2(m)}{\sigma_f^2(n)} x_n
# \,(+ \sqrt{\sigma_f^2(m)\sigma_\Delta^2/\sigma_f^2(n)}\,\epsilon)$, $\sigma_\Delta^2 = \sigma_f^2(n)-\sigma_f^2(m)$.
# The `sr_nfe` + 1 indices from $N-1$ down to 0 are built as NVlabs/I2SB builds them: a float position advanced
# by the stride $(N-1)/\mathrm{nfe}$ and rounded at each step (`i2sb.space_indices`; rounding $i \cdot$ stride
# instead moves index 499.5 to 500 at NFE 20).
#
# **Defaults and options.** I2SB's symmetric betas are the default (`sr_betas: symmetric`; the AF-LDM code's
# scaled-linear LDM betas are the option `ldm`). The bridge is I2SB's stochastic one (`sr_ot_ode: false`) or the
# deterministic OT-ODE (no $\epsilon$ term; `sr_ot_ode: true`), which I2SB also reports and the AF-LDM code uses; the
# cpu profile takes the OT-ODE (see "The controls" below for why). The degradation is I2SB's sr4x (bicubic down x4,
# nearest up x4, also the AF-LDM code's; `sr_degradation: bicubic_nearest`) or an ideal FFT down/up (`ideal`).
#
# **The controls.** A latent SR model cannot output anything its VAE cannot decode, and it starts from the degraded
# latent. So every table carries, per VAE, the **VAE ceiling** (its reconstruction of the clean image) and the
# **identity SR** (the degraded image encoded and decoded unchanged: what a latent model that does nothing outputs),
# beside the image-space inputs (the degraded image itself and the bicubic up-sampling of the bicubic LR image). A
# model has learned SR only where it beats its identity SR; a model can beat bicubic in PSNR only where its VAE's
# ceiling is above bicubic. The identity and ceiling rows also go through the shift protocols, so that a model's
# shift consistency is read against what its input and its VAE give without it: a blurrier input or a more
# equivariant VAE raises SPSNR by itself.
#
# **Models.** Both start from the af_ldm stage's unconditional U-Nets: **LDM-I2SB** from the standard U-Net in the
# vanilla VAE's latents (no equivariance loss; CFA at inference only as an extra row), **AF-I2SB** from AF-LDM in the
# AF-VAE's latents, fine-tuned with the equivariance loss (weight `sr_eq_weight`, cross-frame attention, no
# stop-gradient, as the reference). With `sr_zero_out: true` (the cpu profile; not the paper's choice) the U-Net's last
# convolution is zeroed before fine-tuning: the net then outputs 0, $\hat x_0 = x_n$, and the OT-ODE sampler returns
# its input, so training starts from the identity SR rather than from an unconditional noise predictor whose outputs
# mean nothing to the bridge (the rest of the U-Net keeps the af_ldm stage's weights).

# %% tags=["parameters"]
profile = "cpu"
seed = 0
device = "auto"
deterministic = True
sr_dataset = "natural32"
sr_image_size = 32
sr_train_images = 2000
sr_betas = "symmetric"
sr_ot_ode = False
sr_degradation = "bicubic_nearest"
sr_steps = 300
sr_batch = 32
sr_lr = 0.0005
sr_ema_decay = 0.99
sr_eq_weight = 1.0
sr_cfa_detach = True
sr_zero_out = False
sr_nfe = 10
sr_eval_images = 64
sr_fid_images = 400
sr_shift_eighths = 16
sr_image_shifts = 8

# %%
import time

import matplotlib.pyplot as plt
from IPython.display import Markdown, display

from afcore import i2sb
from afcore.stages import latent_sr
from afcore.stages.common import pick_device, to01
from afcore.utils import save_figure, seed_everything

cfg = latent_sr.Config.from_mapping(globals())
seed_everything(seed)
dev = pick_device(device, deterministic)
cpu0 = time.process_time()
data_ = latent_sr.load_data(cfg, dev, ".")

# %% [markdown]
# ## The bridge schedules
#
# The symmetric schedule keeps the bridge's noise small (I2SB's total variance $\sum\beta = $ 0.14, so
# $\sigma_{sb} \le 0.19$ on unit-variance latents) and equal at both ends; the LDM's scaled-linear betas sum to
# about 8.5, so the bridge wanders far from the straight line between $x_0$ and $x_1$ in the middle, and its
# $\sigma_f$ is larger near $x_1$ than near $x_0$.

# %%
fig, axes = plt.subplots(1, 2, figsize=(9, 3))
for ax, kind in zip(axes, i2sb.BETAS):
    s = i2sb.bridge_schedule(kind)
    for key in ("std_fwd", "std_bwd", "std_sb"):
        ax.plot(s[key].numpy(), label=key)
    ax.plot(s["mu_x1"].numpy(), "k--", lw=0.8, label="mu_x1")
    ax.set_title(f"betas = {kind}" + (" (this run)" if kind == sr_betas else ""), fontsize=9)
    ax.set_xlabel("bridge index n")
    ax.legend(fontsize=7)
fig.tight_layout()
save_figure(fig, "figures/50_latent_sr/schedules.png")
plt.show()

# %% [markdown]
# ## Data, degradation and latents
#
# HR = the test/train photo crops; LR = `degrade_sr4(HR)` at the HR size (the reference's bicubic down + nearest
# up, or the ideal one). $x_0$ = encode(HR), $x_1$ = encode(LR) (posterior means), both times the latent scale
# 1 / std of the training latents' posterior means (as the video stage computes it).

# %%
models = latent_sr.load_models(cfg, dev, ".", data_["train"])
f = models["factor"]
print({k: round(models[k]["codec"].scale, 4) for k in latent_sr.MODELS}, "factor", f,
      "latents", tuple(models["AF-I2SB"]["x0"].shape[1:]))

# %% [markdown]
# ## Fine-tuning
#
# `sr_steps` steps at batch `sr_batch` (AdamW through the workbook's resumable loop, EMA `sr_ema_decay`, gradient
# clip 1). Bridge indices uniform in 0..N-1. AF-I2SB adds the equivariance loss on $x_n$: one random shift per batch
# (multiples of 1/8 latent pixel, at most 0.375 of the size), the shifted pass anchored on the unshifted one by CFA,
# masked MSE against the shifted unshifted prediction.

# %%
trained = latent_sr.finetune_all(cfg, models, dev, ".")
fig, ax = plt.subplots(figsize=(6, 3))
for name, h in trained["histories"].items():
    ax.plot([r["step"] for r in h], [r.get("bridge", r["loss"]) for r in h], label=f"{name} bridge MSE", lw=0.8)
    if "equivariance" in h[0]:
        ax.plot([r["step"] for r in h], [r["equivariance"] for r in h], label=f"{name} equivariance", lw=0.8)
ax.set_xlabel("fine-tuning step")
ax.set_yscale("log")
ax.legend(fontsize=8)
save_figure(fig, "figures/50_latent_sr/loss.png")
plt.show()
trained["train_seconds"]

# %% [markdown]
# ## SR quality
#
# PSNR (peak 2, images in [-1, 1]) and SSIM (Gaussian window 11, sigma 1.5, data range 2; torchmetrics) of the
# decoded SR against HR, per image, mean ± standard error over `sr_eval_images` test crops, beside the control rows
# (above): each VAE's ceiling and identity SR, the degraded input, bicubic. FID[rand-natural32] (random-CNN features calibrated on the training crops, the af_ldm stage's convention;
# not Inception, so not comparable with any published FID) of `sr_fid_images` SR outputs against all test crops.

# %%
quality = latent_sr.sr_quality(cfg, data_, models, dev)
quality_rows, fid_name = quality["rows"], quality["fid_name"]
display(Markdown(f"| output | SR PSNR (dB) | SSIM | {fid_name} |\n|---|---|---|---|\n" + "\n".join(
    f"| {k} | {v['psnr_db'][0]:.2f} ± {v['psnr_db'][1]:.2f} | {v['ssim'][0]:.3f} ± {v['ssim'][1]:.3f} | "
    f"{v[fid_name]:.2f} |" for k, v in quality_rows.items())))
outputs = quality["outputs"]
cols = [("HR", quality["hr"]), ("degraded", outputs[latent_sr.DEGRADED]), ("bicubic", outputs[latent_sr.BICUBIC])]
for n in latent_sr.MODELS:
    cols += [(latent_sr.identity_row(n).replace("identity SR, ", "identity\n"), outputs[latent_sr.identity_row(n)]),
             (n, outputs[n])]
fig, axes = plt.subplots(4, len(cols), figsize=(1.6 * len(cols), 6.6))
for c, (title, y) in enumerate(cols):
    for r in range(4):
        axes[r, c].imshow(to01(y[r % len(y)]))
        axes[r, c].axis("off")
    axes[0, c].set_title(title, fontsize=8)
fig.tight_layout()
save_figure(fig, "figures/50_latent_sr/samples.png")
plt.show()

# %% [markdown]
# ## Shift consistency: the reference's latent shift test
#
# For k = 1..`sr_shift_eighths`, the input latent is shifted by $d = (0, k/8)$ latent pixels with a cropped shift
# (Fourier shift, zero-filled border) and super-resolved; the output is compared with the unshifted output shifted
# the same way, where nothing was filled: **latent SPSNR** (peak = the target's per-sample dynamic range) and, after
# decoding, **image SPSNR** (image shift $f d$, peak 2). The stochastic sampler's per-step noises are drawn once for
# the unshifted run and shifted *circularly* by $d$ for each shifted run (a circular shift of white noise is white
# noise), so fresh noise does not break equivariance by construction. CFA rows anchor every shifted run's attention
# on the unshifted run. Per model: the mean over images and shifts (± s.e.m. over images of their shift-average),
# the **spread** (standard deviation over k of the per-k mean) and the **minimum over k** of the per-k mean (± its
# s.e.m. over images): a model that "bounces" between whole latent pixels dips at fractional k. The **bounce** is
# measured directly: per image, the mean SPSNR at whole-pixel shifts (k = 8, 16) minus the mean at the fractional
# ones. (With 8x8 latents a cropped shift past a whole pixel zero-fills one more column, 1/8 of the width, so every
# row may also step down right after k = 8: a border effect, not aliasing.)
#
# **Identity and ceiling rows**: `i2sb.ZeroNet` (always outputs 0) through the OT-ODE sampler returns its input
# unchanged, so the same protocol on the degraded latent measures $\mathrm{dec}(T_d x_1)$ against
# $T_{fd}\,\mathrm{dec}(x_1)$: the shift consistency of the input and the decoder alone; on the clean latent it
# measures the ceiling's. These rows are dashed in the figure.
#
# **Positive control**: `i2sb.PointwiseLinear` (a 1x1 convolution scaled by a function of n: linear and pointwise,
# so exactly equivariant to Fourier shifts) run through the same sampler and protocol on the degraded *images*
# (identity encoder and decoder, factor 1). It must score at the metric's ceiling, set by the arithmetic's
# rounding: near 150 dB in float32; TF32 matmuls (CUDA's default here, see `pick_device`) keep only 10 mantissa
# bits and put that out of reach. The pass mark is stated once, in `latent_sr.control_threshold_db`:
# 20 log10(1/u) - 20 dB for the unit roundoff u of the precision in use (`latent_sr.matmul_precision`), i.e.
# 124.5 dB for float32 and 46.2 dB for TF32 (a protocol that forgot to shift the noises would score under 30).

# %%
sweep = latent_sr.latent_sweep(cfg)
shift_res = latent_sr.latent_shift_test(cfg, data_, models, dev)
shift_rows = latent_sr.summarise_shift_rows(shift_res, sweep)
latent_sr.figure_spsnr_vs_shift(shift_res, sweep)
plt.show()

# %% [markdown]
# The reference's GIF of this test, one frame per shift k/8 (k = 0..`sr_shift_eighths`), one row per model:
# input (the degraded image shifted by $f d$) | output (SR of the shifted latent) | shifted reference (the unshifted
# SR shifted by $f d$) | |difference| x 4 on the valid region.

# %%
eval_lr = i2sb.degrade_sr4(data_["eval"], sr_degradation)
gif = latent_sr.shift_test_frames(shift_res, eval_lr, sweep, f)
plt.figure(figsize=(4, 3))
plt.imshow(gif[len(gif) // 2])
plt.axis("off")
plt.title("rows: LDM-I2SB, + CFA, AF-I2SB + CFA", fontsize=8)
plt.show()

# %% [markdown]
# ### The same test at matched bandwidth
#
# A blurry output has little high-frequency content, so it has little to get wrong when shifted: its image SPSNR
# can be high without any equivariance. The AF-VAE's reconstructions are blurrier than the vanilla VAE's (compare
# the two ceilings' PSNR), so the raw comparison favours it for a reason that has nothing to do with the network.
# `i2sb.matched_band_spsnr` therefore recomputes the image SPSNR after one Kaiser low-pass (9 taps, separable,
# wrap-around) applied to both sides, at two cutoffs in units of the image Nyquist: 0.25, the x4 input's own band,
# and 0.5, half the image band. Every row is then scored on the same band. The filter and the Fourier shift are both
# circular convolutions and commute, so filtering the shifted reference equals shifting the filtered one; the valid
# mask is eroded by the filter's 4 px radius so that no compared pixel reads the cropped-away border.

# %%
display(Markdown(latent_sr.matched_band_markdown(shift_rows)))

# %% [markdown]
# ## Flicker under integer image shifts of the clean image
#
# The clean image is rolled by $\delta$ = 1..`sr_image_shifts` image pixels (horizontally) *before* degradation,
# then degraded, encoded and super-resolved (noises shifted by $\delta/f$ latent pixels, CFA on the unshifted run
# where the row has it). **Image-protocol SPSNR**: the output against the unshifted output rolled by $\delta$, peak
# 2, on the non-wrapped region. **Flicker**: per image, the standard deviation over $\delta$ of the PSNR of the SR
# output rolled back by $-\delta$ against HR, on the pixels that no $\delta$ wrapped around (a fixed region, so an
# exactly equivariant model has flicker 0); mean ± s.e.m. over images. Only $\delta \equiv 0 \bmod 4$ moves the
# reference degradation's nearest-neighbour blocks by whole blocks, so even an ideal model flickers at the other
# shifts with `bicubic_nearest`. The identity rows (as above) give the input's and the VAE's own flicker. The positive control (pointwise linear net, identity codec) runs with the ideal
# degradation, which commutes with every integer roll, and must reach the ceiling.

# %%
image_res = latent_sr.image_shift_test(cfg, data_, models, dev)
flicker_rows = latent_sr.flicker_rows(image_res, latent_sr.image_deltas(cfg))
flicker_rows

# %% [markdown]
# ## The table
#
# Scale: the cpu profile is tiny (see the parameters: 32 px crops, 8x8x4 latents, a few hundred fine-tuning steps
# from the af_ldm stage's U-Nets, `sr_nfe` network calls per SR); the AF-LDM paper reports no numbers for this task,
# so there is nothing to put beside ours. All ± are standard errors over the evaluation images (each image's value
# averaged over the shifts first). Per VAE: its ceiling, its identity SR, its model(s). Differences are paired over
# the same images and shifts and called resolved when they exceed twice their standard error. The comparison that
# controls for blur and for the two VAEs is **AF minus LDM beyond their identity SR**: per image (AF-I2SB + CFA minus
# the AF-VAE's identity SR) minus (LDM-I2SB + CFA minus the vanilla VAE's identity SR), i.e. what the SR networks
# add to the consistency their inputs already have.

# %%
diffs = latent_sr.differences(shift_res, quality_rows)
summary = latent_sr.summarise(cfg, models, quality, shift_rows, flicker_rows, diffs, trained["train_seconds"],
                              time.process_time() - cpu0)
display(Markdown(latent_sr.table_markdown(summary) + "\n\n" +
                 "\n".join(f"- {line}" for line in latent_sr.difference_lines(diffs))))

# %% [markdown]
# What the numbers say is computed, not written in advance: the lines above call a difference resolved only beyond
# twice its standard error. The positive control's SPSNR sits at the ceiling of the arithmetic's rounding in both
# protocols (checked below), which validates the protocol (shifted noises included); the models' numbers are then
# properties of the models.

# %%
precision = latent_sr.matmul_precision(dev)
mark = latent_sr.check_controls(latent_sr.control_values(shift_res, image_res), precision)
print(f"positive control: every SPSNR >= {mark:.1f} dB, the pass mark for {precision} arithmetic")
latent_sr.write_outputs(".", summary, latent_sr.shift_curve_rows(shift_res, sweep), shift_res, eval_lr, sweep, f)
{k: summary[k] for k in ("differences", "stage_cpu_seconds")}
