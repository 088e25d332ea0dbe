# %% [markdown]
# # 30 · AF-LDM: an alias-free latent diffusion model (AF-LDM Table 3, Figures 5 and 6)
#
# Notebook 20 gave us two autoencoders: a vanilla VAE and the AF-VAE. Here a latent diffusion model (LDM) is trained
# in each latent space and we ask the question of Zhou et al.'s Table 3: **if the initial noise is shifted by a
# fraction of a latent pixel, is the generated image shifted by the same amount, and nothing else?**
#
# Three ingredients make the U-Net shift-equivariant:
#
# 1. **alias-free layers**, as in the VAE: ideal down/up-samplers and filtered SiLU
#    (`afcore.surgery.make_alias_free`);
# 2. **equivariant attention** (cross-frame attention, CFA): self-attention compares every pixel with every other, so
#    a shift changes which pixels sit next to the image border and with them the whole attention map. CFA runs the
#    unshifted sample first, stores every self-attention layer's input per step, and lets the shifted run take its
#    keys and values from there: the queries move with the content, the keys/values do not change
#    (`afcore.attention.EquivariantAttention`);
# 3. the **U-Net equivariance loss**: the same noisy latent, shifted circularly by a multiple of 1/8 latent pixel,
#    must give the shifted noise prediction, on the valid (non-wrapped) region, with the shifted pass using CFA
#    anchored on the unshifted pass (`afcore.ldm.ldm_loss`). As in the reference trainer, gradients flow through
#    both passes (`ldm_stop_grad="none"`); `"shifted"` is the reference's stop-gradient option (the shifted prediction
#    is detached), `"target"` detaches the shifted unshifted-pass target instead.
#
# The noise schedule is AF-LDM's (scaled-linear betas 0.0015..0.0195 over 1,000 steps, `ldm_schedule="af-ldm"`);
# Stable Diffusion's 0.00085..0.012 is the option `"sd"`. The equations are collected in `docs/af-ldm.md`.
#
# **Measuring it.** *Latent SPSNR* compares the final latent of the shifted run with the shifted final latent of the
# unshifted run; *image SPSNR* decodes both and compares the images (image shift = $f \times$ the latent shift). The
# shift of each group of initial latents is drawn like the training shifts: multiples of 1/8 latent pixel, up to
# 0.375 of the latent size per axis; the initial noise is shifted circularly (a circular shift of white noise is
# still white noise) and outputs are compared on the non-wrapped region. Latent peak = each target latent's dynamic
# range inside that region (this workbook's convention; the reference takes max − min over both masked latents:
# `ldm_spsnr_protocol = "reference"`), image peak 2 (images in $[-1, 1]$); PSNRs are per
# sample, averaged in dB over samples; tables give mean ± standard error over the initial latents, and two rows are
# compared by the mean ± standard error of their per-latent difference (the same latents and shifts enter every row).
#
# **Scale.** The paper trains a 5-level U-Net on FFHQ 256 px in SD-VAE latents (32x32x4) for hundreds of thousands
# of steps and evaluates 50,000 samples. The cpu profile trains a 2-level U-Net on `natural32` (32 px crops of the
# embedded photographs, the distribution the VAEs were trained on) in our factor-4 VAE latents (8x8x4) for about a
# thousand steps: read the *differences* between rows, not the values. Texture is what "texture sticking" is about,
# so photo crops suit the question; they are not faces (the paper's FFHQ).

# %% tags=["parameters"]
profile = "cpu"
seed = 0
device = "auto"
deterministic = True
ldm_dataset = "natural32"
ldm_image_size = 32
ldm_channels = [32, 64]
ldm_layers_per_block = 1
ldm_schedule = "af-ldm"
ldm_train_steps = 600
ldm_finetune_steps = 200
ldm_batch = 32
ldm_lr = 0.001
ldm_ema_decay = 0.995
ldm_ckpt_every = 200
ldm_eq_weight = 1.0
ldm_stop_grad = "none"
ldm_cfa_detach = True
ldm_spsnr_protocol = "workbook"
ldm_sample_steps = 20
ldm_fid_samples = 200
ldm_spsnr_latents = 64
ldm_spsnr_groups = 8
ldm_sweep_latents = 8
ldm_sweep_eighths = 16
ldm_timing_batch = 16
ldm_seeds = 3
ldm_models = ["ldm_vanilla_vae", "filtered_nonlinearity", "eq_loss_no_cfa", "af_ldm", "filtered_nonlinearity_continued"]

# %% [markdown]
# The stage's steps live in `afcore.stages.af_ldm` (`run` calls them all, in the order of this notebook, and is
# what the tests run); the notebook calls them one by one, shows their results and draws the figures.

# %%
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from IPython.display import Markdown, display

from afcore.stages import af_ldm

ROOT = Path(".")  # the repository root: data/ and checkpoints/ are read, metrics/ and figures/ written here
cfg = af_ldm.Config.from_mapping(globals())  # range checks: a bad value stops here, naming its key
dev = af_ldm.setup(cfg, cfg.device)  # seeds everything; models, latents, noise, sampling and metrics live on dev
inputs = af_ldm.load_inputs(cfg, dev, ROOT)  # images, FID features, both VAEs, training latents (unit variance)
figures = {}  # file name under figures/30_af_ldm -> figure, written with the metrics at the end
print(f"{len(inputs.train_images)} training images -> latents {inputs.latent_shape}, factor {inputs.factor}, "
      f"scales {inputs.scales}, device {dev}")

# %% [markdown]
# ## The rows of Table 3
#
# The U-Nets of `ldm_models` are trained (the gpu profile trains all nine; the cpu profile the chain from the plain
# LDM to AF-LDM that the headline needs, and its control). The rows without the equivariance loss are trained from
# scratch for `ldm_train_steps`; the rows with it continue from their base row (same architecture, the EMA weights)
# for `ldm_finetune_steps` more with the loss added, weight `ldm_eq_weight`. The paper trains every row from scratch;
# fine-tuning keeps the cpu profile inside its time budget (the equivariance loss doubles the cost of a step).
#
# **The control.** A row that continues training gets more steps than its base, so "the loss helps" could be "more
# steps help". Each continued base therefore also gets a control: the same base continued for the same
# `ldm_finetune_steps` with the plain diffusion loss (`filtered_nonlinearity_continued`, `ldm_af_vae_continued`).
# The loss's own effect is the loss row minus its control.
#
# "+ CFA in inference" reuses the model of the row above it; every later row samples with CFA, as in the paper.
# With CFA in the loss, the keys and values stored from the unshifted pass are detached (`ldm_cfa_detach`, as in the
# reference code): the shifted pass learns to match them, they are not pulled towards it.

# %%
for key, (vae_key, resample, nonlin, eq, cfa_loss, start) in ((k, af_ldm.MODELS[k]) for k in cfg.ldm_models):
    print(f"{key:22s} VAE {vae_key:8s} ideal sampling {resample!s:5s} filtered nonlinearity {nonlin!s:5s} "
          f"eq. loss {eq!s:5s} CFA in loss {cfa_loss!s:5s}" + (f" continues {start}" if start else ""))
models = af_ldm.train_rows(cfg, inputs, ROOT)  # resumes checkpoints/ldm/<model> when its settings match
trained = models["trained"]

# %%
curves = af_ldm.loss_curves(cfg, models["histories"])
fig, ax = plt.subplots(figsize=(8, 3.6))
for key in models["histories"]:
    pts = [c for c in curves if c["model"] == key]
    loss = torch.tensor([p["diffusion"] for p in pts], device="cpu")
    k = max(1, len(loss) // 20)
    smooth = torch.nn.functional.avg_pool1d(loss[None, None], k, 1)[0, 0] if len(loss) > k else loss
    ax.plot([p["step"] for p in pts][:len(smooth)], smooth, label=key)
ax.set_yscale("log")
ax.set_xlabel("step")
ax.set_title("diffusion (epsilon) loss, moving average")
ax.legend(fontsize=7)
figures["loss.png"] = fig
plt.show()

# %% [markdown]
# ## Samples and FID
#
# FID uses the feature network the classifier stage made for this data set (for `natural32`: a frozen random CNN
# with calibrated batch statistics, `rand-natural32`; for `mnist_m`: the trained digit classifier), not Inception:
# no Inception weights offline. `ldm_fid_samples` samples (DDIM, `ldm_sample_steps` steps) against the test images.
# Its uncertainty is a bootstrap: samples and test images resampled with replacement, the same resamples for every
# model (all models start from the same initial noise, so differences between them are paired). The VAE
# reconstruction FID of each autoencoder (test images encoded and decoded) is printed beside it: how far the
# autoencoder alone moves the feature statistics. It is not a bound on an LDM's FID (an LDM's samples need not
# resemble reconstructions). CFA does not change unshifted samples, so a "+ CFA" row shares its model's FID (as in
# the paper).

# %%
quality = af_ldm.fid_eval(cfg, inputs, trained)
fid_name = quality["fid_name"]
print({k: f"{v[fid_name]:.2f} ± {float(quality['fid_boot'][k].std()):.2f}" for k, v in quality["fid"].items()},
      "VAE reconstruction FID:", quality["reconstruction_fid"])

sampled = list(quality["samples"])  # the models of ldm_models, in Table 3's order
fig, axes = plt.subplots(1, len(sampled), figsize=(2.4 * len(sampled), 2.8), squeeze=False)
axes = axes[0]
side = int(min(16, cfg.ldm_fid_samples) ** 0.5)
for ax, key in zip(axes, sampled):
    samples = quality["samples"][key]
    h, w = samples.shape[-2:]
    grid = samples[:side * side].reshape(side, side, 3, h, w).permute(0, 3, 1, 4, 2)
    ax.imshow(((grid.reshape(side * h, side * w, 3) + 1) / 2).cpu().numpy())
    ax.set_title(key, fontsize=7)
    ax.axis("off")
figures["samples.png"] = fig
plt.show()

# %% [markdown]
# ## Table 3 at our scale
#
# `ldm_spsnr_latents` random initial latents in `ldm_spsnr_groups` groups; each group gets one random shift
# (multiples of 1/8 latent pixel, |d| <= 0.375 of the latent size per axis, zero shift redrawn) and is sampled twice,
# unshifted and shifted (with CFA where the row says so). The same latents and shifts for every row. The standard
# errors are over the latents; latents of one group share their shift, so they are not fully independent (for the
# paired differences between rows the shared shift enters both sides).

# %%
spsnr = af_ldm.spsnr_eval(cfg, inputs, trained)
consistency = spsnr["consistency"]
table = af_ldm.make_table(quality, consistency)
rows, comparisons = table["rows"], table["comparisons"]


def pm(mean, se, digits=2):
    return "–" if mean is None else f"{mean:.{digits}f} ± {se:.{digits}f}"


md = ("| row | CFA at inference | " + fid_name + " | latent SPSNR | image SPSNR | paper: FID / latent / image |\n"
      "|---|---|---|---|---|---|\n")
for r in rows:
    paper = " / ".join("–" if r[k] is None else f"{r[k]:.2f}"
                       for k in ("paper_FID", "paper_latent_spsnr", "paper_image_spsnr"))
    md += (f"| {r['row']} | {'on' if r['cfa_inference'] else 'off'} | {pm(r[fid_name], r['fid_boot_se'], 1)} | "
           f"{pm(r['latent_spsnr_db'], r['latent_spsnr_se_db'])} | {pm(r['image_spsnr_db'], r['image_spsnr_se_db'])}"
           f" | {paper} |\n")
recon = quality["reconstruction_fid"]
display(Markdown(
    f"**Scale:** {cfg.ldm_dataset}, latents {inputs.latent_shape} (VAE factor {inputs.factor}), U-Net "
    f"{list(cfg.ldm_channels)}, {cfg.ldm_train_steps} steps from scratch (+{cfg.ldm_finetune_steps} with the "
    f"equivariance loss), batch {cfg.ldm_batch}; DDIM {cfg.ldm_sample_steps} steps, schedule {cfg.ldm_schedule}. "
    f"FID: {cfg.ldm_fid_samples} samples vs {len(inputs.test_images)} test images, {fid_name} features, ± bootstrap "
    f"standard error ({af_ldm.N_BOOT} resamples) (VAE reconstruction FID: vanilla {recon['vanilla']:.1f}, AF-VAE "
    f"{recon['af_vae']:.1f}). SPSNR: {cfg.ldm_spsnr_latents} initial latents, {cfg.ldm_spsnr_groups} random "
    f"shifts (1/8-pixel grid, |d| <= 0.375 size, circular shift of the noise), per latent on the non-wrapped "
    f"region, latent peak = the target's range there, image peak 2; mean ± standard error over latents. "
    f"`paper`: Zhou et al.'s Table 3 (FFHQ 256, Inception FID, 50k samples, 10k latents), for orientation only: "
    f"absolute values are not comparable across models, sizes and conventions.\n\n" + md))

# %% [markdown]
# Differences between rows (row minus baseline, paired; mean ± standard error; FID ± bootstrap standard error). A
# difference smaller than about twice its standard error is not resolved by this run.

# %%
md = "| row − baseline | latent SPSNR (dB) | image SPSNR (dB) | FID | FID ratio |\n|---|---|---|---|---|\n"
for c in comparisons.values():
    md += (f"| {c['row']} ({c['row_key']}) − {c['baseline']} ({c['baseline_key']}) | "
           f"{pm(c['latent_spsnr_delta_db'], c['latent_spsnr_delta_se_db'])} | "
           f"{pm(c['image_spsnr_delta_db'], c['image_spsnr_delta_se_db'])} | "
           f"{pm(c.get('fid_delta'), c.get('fid_delta_boot_se'), 1)} | "
           f"{pm(c.get('fid_ratio'), c.get('fid_ratio_boot_se'))} |\n")
display(Markdown(md))

# %% [markdown]
# ## Figure 5: SPSNR at every denoising step
#
# The latent SPSNR of the intermediate latents $x_t$, step by step, for the standard LDM (vanilla VAE, plain U-Net,
# CFA in inference) and AF-LDM (mean ± standard error over latents), and below it their paired difference. Early
# on both runs are mostly the (exactly shifted) noise; what matters is how much equivariance survives the sampling
# chain.

# %%
step_rows, per_step_gap = af_ldm.per_step(consistency)
figures["spsnr_per_step.png"] = af_ldm.figure_per_step(step_rows)
plt.show()
per_step_gap

# %% [markdown]
# ## Figure 6: SPSNR against a horizontal shift in 1/8-latent-pixel steps
#
# Left: the VAE decoder alone, on latents of test images (decoder SPSNR, image shift $f d$). Right: the whole LDM
# (image SPSNR of the sample from the shifted noise). Baselines are consistent at whole-pixel shifts, where a shift
# of the latent grid is just a relabelling, and dip in between; an alias-free model should be flat. Error bars:
# standard error over the latents.

# %%
sweep = af_ldm.sweep_eval(cfg, inputs, trained)  # decoder alone, then the whole LDM (with CFA)
fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
for ax, part, title in zip(axes, ("decoder", "ldm"), ("VAE decoder", "whole LDM (image SPSNR)")):
    for label in dict.fromkeys(r["model"] for r in sweep["rows"] if r["part"] == part):
        pts = [r for r in sweep["rows"] if r["part"] == part and r["model"] == label]
        ax.errorbar([r["latent_shift"] for r in pts], [r["spsnr_db"] for r in pts], yerr=[r["se_db"] for r in pts],
                    fmt="o-", capsize=2, label=label)
    ax.set_xlabel("horizontal latent shift (latent pixels)")
    ax.set_ylabel("SPSNR (dB)")
    ax.set_title(title)
    ax.legend()
figures["spsnr_vs_shift.png"] = fig
plt.show()

# %% [markdown]
# ## A slow sub-pixel pan
#
# One initial latent, shifted right by 1/8 latent pixel per frame ($f/8$ image pixels), sampled with CFA anchored on
# the unshifted run. Top row: the generated frames, standard LDM left, AF-LDM right. Bottom row: the same frames
# shifted back by the pan (Fourier shift): for a perfectly equivariant model the bottom row stands still, while
# texture that sticks to the pixel grid or "bounces" between whole-pixel shifts shows up as motion there.

# %%
pan = sweep["pan"]
frames = af_ldm.pan_frames(cfg, inputs, pan)  # written as figures/30_af_ldm/pan.gif with the metrics
fig, axes = plt.subplots(2, 1, figsize=(12, 4))
for ax, label in zip(axes, pan):
    strip = torch.cat([pan[label]["reference"][:1]] + [pan[label]["frames"][i, :1]
                                                       for i in range(0, cfg.ldm_sweep_eighths, 2)])
    ax.imshow(((torch.cat(list(strip), dim=-1) + 1) / 2).permute(1, 2, 0).clamp(0, 1).cpu().numpy())
    ax.set_title(f"{label}: frames at shifts 0, 1/8, 3/8, ... latent px", fontsize=9)
    ax.axis("off")
figures["pan_frames.png"] = fig
plt.show()

# %% [markdown]
# ## Sampling cost
#
# Seconds per image for one DDIM chain on this machine: the plain U-Net against the alias-free one, without CFA and
# with it (the CFA figure is the anchored run alone; the reference run it needs costs one plain chain, and is shared
# by every frame anchored on it).

# %%
timing = af_ldm.time_sampling(cfg, inputs, trained)
timing

# %% [markdown]
# ## Replication over training seeds
#
# Everything above is one training run per model, and its error bars count initial latents: they say how precisely
# *these* networks were measured. Re-running the stage with another seed moves the differences between rows by more
# than those bars, so each model is trained once more for every further training seed (`ldm_seeds`), seed k in the
# latent space of notebook 20's seed k (a replicate repeats the whole chain, the VAE fine-tuning included), and
# every seed is evaluated on the same initial latents and shifts. Each comparison is computed within its seed
# (paired over latents) to give one number per seed, and those numbers are summarised as mean ± standard error over
# seeds with a t test. Named before running, the primary contrasts are AF-LDM against the LDM in the vanilla VAE's
# latents with CFA (the paper's headline; image and latent SPSNR) and AF-LDM against its no-loss control (image
# SPSNR); their p values are Holm-adjusted together, all other contrasts are exploratory.

# %%
level = af_ldm.seed_level(cfg, af_ldm.replicate(cfg, inputs, ROOT, table))
display(Markdown(af_ldm.seed_markdown(level)))

# %%
summary = af_ldm.summarise(cfg, inputs, models, quality, spsnr, table, per_step_gap, timing, level)
af_ldm.write_outputs(ROOT, summary, curves, step_rows, sweep["rows"], frames, figures)
{k: c["verdict"] for k, c in level["contrasts"].items() if c["primary"]}

# %% [markdown]
# ## Reading the results
#
# The verdicts that count are the seed-level ones above. The cell below repeats, for the base seed alone, whether
# that one run separates each pair (|difference| more than twice its standard error over latents): a statement about
# two trained networks, not about the rows' designs; the README quotes the committed cpu run's numbers from
# `metrics/30_af_ldm.json`. The goal check compares AF-LDM with the paper's baseline, the LDM in the vanilla VAE's
# latents sampled with CFA (goal: image SPSNR +5 dB, FID at most 1.3 times). Things to keep in mind at this scale:
#
# * The image SPSNR cannot exceed what the decoder preserves: notebook 20's AF-VAE decoder is only a few dB more
#   equivariant than the vanilla one.
# * On small latents the wrapped strip of a circular shift and the zero-padded border reach every pixel through the
#   U-Net's receptive field.
# * The U-Nets train a few hundred steps, and the equivariance-loss rows add the loss only for the last couple of
#   hundred (the paper trains every row from scratch, far longer); the control row separates the loss from the
#   extra steps.
# * The random-weights row shows the architecture's own equivariance before training.
# * Absolute values are not comparable with the paper's (FFHQ 256 px, Inception FID, another U-Net).

# %%
lines = {}
for v in af_ldm.verdicts(comparisons):
    c = comparisons[v["comparison"]]
    digits, unit = (1, "") if v["metric"] == "FID" else (2, " dB")
    lines.setdefault(v["comparison"], f"* **{c['row']} ({c['row_key']}) − {c['baseline']} ({c['baseline_key']})**: ")
    lines[v["comparison"]] += f"{v['metric']} {v['delta']:+.{digits}f} ± {v['se']:.{digits}f}{unit} ({v['verdict']}); "
display(Markdown("\n".join(line.rstrip("; ") for line in lines.values())))
