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
#    anchored on the unshifted pass (`afcore.ldm.ldm_loss`).
#
# **Measuring it.** *Latent SPSNR* compares the final latent of the shifted run with the shifted final latent of the
# unshifted run; *image SPSNR* decodes both and compares the images (image shift = $f \times$ the latent shift). The
# shift of each group of initial latents is drawn like the training shifts: multiples of 1/8 latent pixel, up to
# 0.375 of the latent size per axis. Latent peak = per-sample dynamic range (AF-LDM's convention), image peak 2
# (images in $[-1, 1]$); PSNRs are per sample, averaged in dB over samples.
#
# **Scale.** The paper trains a 5-level U-Net on FFHQ 256 px in SD-VAE latents (32x32x4) for hundreds of thousands
# of steps and evaluates 50,000 samples. The cpu profile trains a 2-level U-Net on `natural32` (32 px crops of the
# embedded photographs, the distribution the VAEs were trained on) in our factor-4 VAE latents (8x8x4) for about a
# thousand steps: read the *differences* between rows, not the values. Texture is what "texture sticking" is about,
# so photo crops suit the question; they are not faces (the paper's FFHQ).

# %% tags=["parameters"]
profile = "cpu"
seed = 0
device = "cpu"
ldm_dataset = "natural32"
ldm_channels = [32, 64]
ldm_train_steps = 1200
ldm_finetune_steps = 400
ldm_batch = 32
ldm_lr = 0.001
ldm_ema_decay = 0.995
ldm_ckpt_every = 200
ldm_eq_weight = 1.0
ldm_stop_grad = True
ldm_sample_steps = 20
ldm_fid_samples = 400
ldm_spsnr_latents = 64
ldm_spsnr_groups = 8
ldm_sweep_latents = 8
ldm_sweep_eighths = 16
ldm_timing_batch = 16

# %%
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from diffusers import AutoencoderKL, UNet2DModel
from IPython.display import Markdown, display

from afcore import data, evaluation, ldm, signal, vae as V
from afcore.attention import EquivariantAttention
from afcore.surgery import load_alias_free, make_alias_free, save_alias_free
from afcore.train import prepare_run_dir, train_loop
from afcore.utils import pick_device, save_csv, save_figure, save_gif, save_json, seed_everything

seed_everything(seed)
dev = pick_device(device)
if ldm_spsnr_latents % ldm_spsnr_groups:
    raise ValueError(f"ldm_spsnr_latents ({ldm_spsnr_latents}) must be a multiple of ldm_spsnr_groups "
                     f"({ldm_spsnr_groups})")
if ldm_dataset in ("natural32", "mnist_m"):  # data-stage sets, with the classifier stage's FID features
    prepared = data.load_prepared(ldm_dataset)
    classifier = evaluation.load_classifier(f"checkpoints/classifier/{ldm_dataset}.pt")
elif ldm_dataset == "lfw" or ldm_dataset.startswith("hub:"):  # faces: scikit-image's LFW subset, or FFHQ & co.
    images = data.lfw_faces(32) if ldm_dataset == "lfw" else data.hub_images(ldm_dataset[4:], 32)
    prepared = data.split(images, None, test_fraction=0.2, seed=seed)
    classifier = evaluation.random_features(3, seed=seed, calibrate=prepared["train"])
else:
    raise ValueError(f"ldm_dataset must be 'natural32', 'mnist_m', 'lfw' or 'hub:<datasets name or folder>', "
                     f"got {ldm_dataset!r}")
vaes = {k: load_alias_free(AutoencoderKL, f"checkpoints/vae/{k}").eval() for k in ("vanilla", "af_vae")}
f = V.factor(vaes["vanilla"])
latents, scales = {}, {}
for k, vae in vaes.items():
    z = ldm.encode_latents(vae, prepared["train"])
    scales[k] = float(1 / z.std())  # unit-variance latents, the role of SD's 0.18215
    latents[k] = z * scales[k]
latent_shape = tuple(latents["vanilla"].shape[1:])


@torch.no_grad()
def decoder(vae_key):
    vae, s = vaes[vae_key], scales[vae_key]
    return lambda z: torch.cat([vae.decode(z[i:i + 200] / s).sample for i in range(0, len(z), 200)]).clamp(-1, 1)


print(f"{len(prepared['train'])} training images -> latents {latent_shape}, factor {f}, scales {scales}")

# %% [markdown]
# ## The rows of Table 3
#
# Seven U-Nets are trained. The rows without the equivariance loss are trained from scratch for
# `ldm_train_steps`; the rows with it continue from their base row (same architecture, the EMA weights) for
# `ldm_finetune_steps` more with the loss added, weight `ldm_eq_weight`. The paper trains every row from scratch;
# fine-tuning keeps the cpu profile inside its time budget (the equivariance loss doubles the cost of a step).
# "+ CFA in inference" reuses the model of the row above it; every later row samples with CFA, as in the paper.

# %%
MODELS = {  # key: (VAE, ideal sampling, filtered nonlinearity, equivariance loss, CFA in the loss, continues from)
    "ldm_vanilla_vae": ("vanilla", False, False, False, False, None),
    "ldm_af_vae": ("af_vae", False, False, False, False, None),
    "ideal_sampling": ("af_vae", True, False, False, False, None),
    "filtered_nonlinearity": ("af_vae", True, True, False, False, None),
    "eq_loss_no_cfa": ("af_vae", True, True, True, False, "filtered_nonlinearity"),
    "af_ldm": ("af_vae", True, True, True, True, "filtered_nonlinearity"),
    "plain_unet_eq_loss": ("af_vae", False, False, True, True, "ldm_af_vae"),
}
ROWS = [  # (Table 3 row, model, CFA at inference, paper's (FID, latent SPSNR, image SPSNR))
    ("LDM w/ vanilla VAE", "ldm_vanilla_vae", False, (14.91, 27.47, 12.38)),
    ("+ CFA in inference", "ldm_vanilla_vae", True, (14.91, 38.22, 21.69)),
    ("LDM w/ AF-VAE", "ldm_af_vae", False, (15.27, 22.87, 12.18)),
    ("+ CFA in inference ", "ldm_af_vae", True, (15.27, 23.58, 13.09)),
    ("+ ideal sampling", "ideal_sampling", True, (17.03, 24.44, 14.03)),
    ("+ filtered nonlinearity", "filtered_nonlinearity", True, (14.28, 24.53, 14.15)),
    ("+ equivariance loss w/o CFA", "eq_loss_no_cfa", True, (16.90, 28.57, 17.65)),
    ("+ CFA in equivariance loss (AF-LDM)", "af_ldm", True, (19.05, 40.94, 28.06)),
    ("LDM w/ AF-VAE + equivariance loss", "plain_unet_eq_loss", True, (39.14, 37.63, 25.99)),
    ("AF-LDM random weights", "random", True, (None, 39.84, 29.68)),
]
CKPT = Path("checkpoints/ldm")


def build(resample, nonlin):
    seed_everything(seed)
    unet = ldm.latent_unet(tuple(ldm_channels), latent_channels=latent_shape[0], sample_size=latent_shape[-1])
    if resample or nonlin:
        make_alias_free(unet, resample=resample, nonlinearity=nonlin)
    return unet


def train_model(key):
    vae_key, resample, nonlin, eq, cfa_loss, start = MODELS[key]
    steps = ldm_finetune_steps if start else ldm_train_steps
    fingerprint = dict(model=MODELS[key], channels=ldm_channels, steps=steps, start_steps=ldm_train_steps,
                       batch=ldm_batch, lr=ldm_lr, ema=ldm_ema_decay, eq_weight=ldm_eq_weight,
                       stop_grad=ldm_stop_grad, seed=seed, vae_scale=scales[vae_key], dataset=ldm_dataset)
    run_dir = prepare_run_dir(CKPT / key, fingerprint)
    unet = build(resample, nonlin)
    if start:
        unet.load_state_dict(trained[start].state_dict())
    z0 = latents[vae_key]
    scheduler = ldm.make_scheduler("ddpm")

    def get_batch(step):
        g = torch.Generator().manual_seed(seed * 100003 + step)
        return z0[torch.randint(0, len(z0), (ldm_batch,), generator=g)], g.initial_seed()

    def loss_fn(m, batch, step):
        z, batch_seed = batch
        return ldm.ldm_loss(m, z, scheduler, torch.Generator().manual_seed(int(batch_seed) + 1),
                            eq_weight=ldm_eq_weight if eq else 0.0, cfa=cfa_loss, stop_grad=ldm_stop_grad)

    unet, ema, history = train_loop(unet, loss_fn, get_batch, steps=steps, lr=ldm_lr, ckpt_dir=run_dir,
                                    ckpt_every=ldm_ckpt_every, ema_decay=ldm_ema_decay, device=str(dev),
                                    desc=key, log_csv=run_dir / "loss.csv")
    seconds = sum(h["seconds"] for h in history)  # per-step rows survive a resume, a wall clock would not
    model = (ema or unet).cpu().eval()
    save_alias_free(model, run_dir / "unet")
    return model, history, seconds


trained, histories, train_seconds = {}, {}, {}
for key in MODELS:
    trained[key], histories[key], train_seconds[key] = train_model(key)
trained["random"] = build(True, True).eval()
MODEL_VAE = {k: v[0] for k, v in MODELS.items()} | {"random": "af_vae"}

# %%
fig, ax = plt.subplots(figsize=(8, 3.6))
curves = []
for key, hist in histories.items():
    offset = ldm_train_steps if MODELS[key][5] else 0
    for h in hist:
        curves.append({"model": key, "step": offset + h["step"], "diffusion": h.get("diffusion", h["loss"]),
                       "equivariance": h.get("equivariance", float("nan"))})
    pts = [c for c in curves if c["model"] == key]
    loss = torch.tensor([p["diffusion"] for p in pts])
    k = max(1, len(loss) // 20)
    smooth = torch.nn.functional.avg_pool1d(loss[None, None], k, 1)[0, 0] if len(loss) > k else loss
    ax.plot([p["step"] for p in pts][:len(smooth)], smooth, label=key)
ax.set_yscale("log")
ax.set_xlabel("step")
ax.set_title("diffusion (epsilon) loss, moving average")
ax.legend(fontsize=7)
save_figure(fig, "figures/30_af_ldm/loss.png")
plt.show()
save_csv(curves, "metrics/30_af_ldm_loss.csv")

# %% [markdown]
# ## Samples and FID
#
# FID uses the feature network the classifier stage made for this data set (for `natural32`: a frozen random CNN
# with calibrated batch statistics, `rand-natural32`; for `mnist_m`: the trained digit classifier), not Inception:
# no Inception weights offline. `ldm_fid_samples` samples (DDIM, `ldm_sample_steps` steps) against the 1,000 test
# images. The VAE reconstruction FID of each autoencoder is the
# floor no LDM in its latent space can beat. CFA does not change unshifted samples, so a "+ CFA" row shares its
# model's FID (as in the paper).

# %%
torch.set_grad_enabled(False)
fid_noise = torch.randn((ldm_fid_samples,) + latent_shape, generator=torch.Generator().manual_seed(seed + 11))
test_images = prepared["test"]
fid, samples = {}, {}
for key in [k for k in MODELS]:
    z = torch.cat([ldm.sample(trained[key], fid_noise[i:i + 200], ldm_sample_steps)
                   for i in range(0, ldm_fid_samples, 200)])
    samples[key] = decoder(MODEL_VAE[key])(z)
    fid[key] = evaluation.quality_metrics(test_images, samples[key], classifier, tag=ldm_dataset)
fid_name = next(k for k in fid[key] if k.startswith("FID["))
reconstruction_fid = {}
for k in vaes:
    recon = decoder(k)(ldm.encode_latents(vaes[k], test_images) * scales[k])
    reconstruction_fid[k] = evaluation.quality_metrics(test_images, recon, classifier, tag=ldm_dataset)[fid_name]
print({k: round(v[fid_name], 2) for k, v in fid.items()}, "VAE reconstruction FID:", reconstruction_fid)

fig, axes = plt.subplots(1, len(MODELS), figsize=(2.4 * len(MODELS), 2.8))
side = int(min(16, ldm_fid_samples) ** 0.5)
for ax, key in zip(axes, MODELS):
    h, w = samples[key].shape[-2:]
    grid = samples[key][:side * side].reshape(side, side, 3, h, w).permute(0, 3, 1, 4, 2)
    ax.imshow((grid.reshape(side * h, side * w, 3) + 1) / 2)
    ax.set_title(key, fontsize=7)
    ax.axis("off")
save_figure(fig, "figures/30_af_ldm/samples.png")
plt.show()

# %% [markdown]
# ## Table 3 at our scale
#
# `ldm_spsnr_latents` random initial latents in `ldm_spsnr_groups` groups; each group gets one random shift
# (multiples of 1/8 latent pixel, |d| <= 0.375 of the latent size per axis, zero shift redrawn) and is sampled twice,
# unshifted and shifted (with CFA where the row says so). The same latents and shifts for every row.

# %%
shift_gen = torch.Generator().manual_seed(seed + 23)
groups = []
for _ in range(ldm_spsnr_groups):
    d = (0.0, 0.0)
    while d == (0.0, 0.0):
        d = ldm.sample_latent_shift(latent_shape[-2:], shift_gen)
    groups.append(d)
spsnr_noise = torch.randn((ldm_spsnr_latents,) + latent_shape, generator=torch.Generator().manual_seed(seed + 29))
per_group = ldm_spsnr_latents // ldm_spsnr_groups

consistency = {}
for name, key, cfa, _ in ROWS:
    latent_db, image_db, step_db = [], [], []
    for g, d in enumerate(groups):
        r = ldm.shift_consistency(trained[key], spsnr_noise[g * per_group:(g + 1) * per_group], [d],
                                  steps=ldm_sample_steps, cfa=cfa, decode=decoder(MODEL_VAE[key]), factor=f)
        latent_db.append(r["latent"][0])
        image_db.append(r["image"][0])
        step_db.append(r["per_step"][0])
    consistency[name] = {"latent": torch.cat(latent_db), "image": torch.cat(image_db),
                         "per_step": torch.cat(step_db, dim=1)}

rows = []
for name, key, cfa, paper in ROWS:
    c = consistency[name]
    rows.append({"row": name.strip(), "model": key, "cfa_inference": cfa,
                 fid_name: None if key == "random" else fid[key][fid_name],
                 "latent_spsnr_db": float(c["latent"].mean()), "image_spsnr_db": float(c["image"].mean()),
                 "image_spsnr_std_db": float(c["image"].std()),
                 "paper_FID": paper[0], "paper_latent_spsnr": paper[1], "paper_image_spsnr": paper[2]})


def fmt(v):
    return "–" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v)


keys = list(rows[0])
table = "| " + " | ".join(keys) + " |\n|" + "---|" * len(keys) + "\n" + "".join(
    "| " + " | ".join(fmt(r[k]) for k in keys) + " |\n" for r in rows)
display(Markdown(
    f"**Scale:** {ldm_dataset}, latents {latent_shape} (VAE factor {f}), U-Net {ldm_channels}, "
    f"{ldm_train_steps} steps from scratch (+{ldm_finetune_steps} with the equivariance loss), batch {ldm_batch}; "
    f"DDIM {ldm_sample_steps} steps. FID: {ldm_fid_samples} samples vs {len(test_images)} test images, {fid_name} "
    f"features (VAE reconstruction FID: vanilla {reconstruction_fid['vanilla']:.1f}, AF-VAE "
    f"{reconstruction_fid['af_vae']:.1f}). SPSNR: {ldm_spsnr_latents} initial latents, {ldm_spsnr_groups} random "
    f"shifts (1/8-pixel grid, |d| <= 0.375 size), latent peak = per-sample range, image peak 2, valid region only. "
    f"`paper_*`: Zhou et al.'s Table 3 (FFHQ 256, Inception FID, 50k samples, 10k latents).\n\n" + table))

# %% [markdown]
# ## Figure 5: SPSNR at every denoising step
#
# The latent SPSNR of the intermediate latents $x_t$, step by step, for the standard LDM (vanilla VAE, plain U-Net,
# CFA in inference) and AF-LDM. Early on both runs are mostly the (exactly shifted) noise; what matters is how much
# equivariance survives the sampling chain.

# %%
fig, ax = plt.subplots(figsize=(7, 3.6))
per_step_rows = []
for name, label in (("+ CFA in inference", "standard LDM (+ CFA)"),
                    ("+ CFA in equivariance loss (AF-LDM)", "AF-LDM")):
    ps = consistency[name]["per_step"]
    mean, std = ps.mean(1).numpy(), ps.std(1).numpy()
    steps_axis = np.arange(1, len(mean) + 1)
    ax.plot(steps_axis, mean, "o-", label=label)
    ax.fill_between(steps_axis, mean - std, mean + std, alpha=0.2)
    per_step_rows += [{"model": label, "step": int(s), "latent_spsnr_db": float(m), "std": float(sd)}
                      for s, m, sd in zip(steps_axis, mean, std)]
ax.set_xlabel("DDIM step")
ax.set_ylabel("latent SPSNR (dB)")
ax.legend()
save_figure(fig, "figures/30_af_ldm/spsnr_per_step.png")
plt.show()
save_csv(per_step_rows, "metrics/30_af_ldm_per_step.csv")

# %% [markdown]
# ## Figure 6: SPSNR against a horizontal shift in 1/8-latent-pixel steps
#
# Left: the VAE decoder alone, on latents of test images (decoder SPSNR, image shift $f d$). Right: the whole LDM
# (image SPSNR of the sample from the shifted noise). Baselines are consistent at whole-pixel shifts, where a shift
# of the latent grid is just a relabelling, and dip in between; an alias-free model should be flat.

# %%
sweep = [(0.0, k / 8) for k in range(1, ldm_sweep_eighths + 1)]
xs = np.array([d[1] for d in sweep])
sweep_noise = torch.randn((ldm_sweep_latents,) + latent_shape, generator=torch.Generator().manual_seed(seed + 31))
fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
fig6_rows = []
for vae_key, label in (("vanilla", "vanilla VAE"), ("af_vae", "AF-VAE")):
    z = ldm.encode_latents(vaes[vae_key], test_images[:ldm_sweep_latents]) * scales[vae_key]
    dec = decoder(vae_key)
    ref = dec(z)
    per = []
    for d in sweep:
        di = (0.0, d[1] * f)
        mask = signal.valid_mask(ref.shape[-2:], di)
        per.append(ldm.image_psnr(dec(signal.fourier_shift(z, d)), signal.fourier_shift(ref, di), mask))
    per = torch.stack(per)
    mean, std = per.mean(1).numpy(), per.std(1).numpy()
    axes[0].plot(xs, mean, "o-", label=label)
    axes[0].fill_between(xs, mean - std, mean + std, alpha=0.2)
    fig6_rows += [{"part": "decoder", "model": label, "latent_shift": float(x), "spsnr_db": float(m),
                   "std": float(s)} for x, m, s in zip(xs, mean, std)]
pan = {}
for name, key, label in (("+ CFA in inference", "ldm_vanilla_vae", "standard LDM (+ CFA)"),
                         ("+ CFA in equivariance loss (AF-LDM)", "af_ldm", "AF-LDM")):
    r = ldm.shift_consistency(trained[key], sweep_noise, sweep, steps=ldm_sample_steps, cfa=True,
                              decode=decoder(MODEL_VAE[key]), factor=f)
    pan[label] = r
    mean, std = r["image"].mean(1).numpy(), r["image"].std(1).numpy()
    axes[1].plot(xs, mean, "o-", label=label)
    axes[1].fill_between(xs, mean - std, mean + std, alpha=0.2)
    fig6_rows += [{"part": "ldm", "model": label, "latent_shift": float(x), "spsnr_db": float(m), "std": float(s)}
                  for x, m, s in zip(xs, mean, std)]
for ax, title in zip(axes, ("VAE decoder", "whole LDM (image SPSNR)")):
    ax.set_xlabel("horizontal latent shift (latent pixels)")
    ax.set_ylabel("SPSNR (dB)")
    ax.set_title(title)
    ax.legend()
save_figure(fig, "figures/30_af_ldm/spsnr_vs_shift.png")
plt.show()
save_csv(fig6_rows, "metrics/30_af_ldm_spsnr_vs_shift.csv")

# %% [markdown]
# ## A slow sub-pixel pan
#
# One initial latent, shifted right by 1/8 latent pixel per frame ($f/8$ image pixels), sampled with CFA anchored on
# the unshifted run. Top row: the generated frames, standard LDM left, AF-LDM right. Bottom row: the same frames
# shifted back by the pan (Fourier shift): for a perfectly equivariant model the bottom row stands still, while
# texture that sticks to the pixel grid or "bounces" between whole-pixel shifts shows up as motion there.

# %%
def upscale(x, k=4):
    return x.repeat_interleave(k, -2).repeat_interleave(k, -1)


frames = []
for i, d in enumerate([(0.0, 0.0)] + sweep):
    tiles = []
    for label in pan:
        frame = pan[label]["reference"][:1] if i == 0 else pan[label]["frames"][i - 1, :1]
        back = signal.fourier_shift(frame, (0.0, -d[1] * f))
        tiles.append(torch.cat([frame, back], dim=-2))
    tile = torch.cat([tiles[0], torch.ones_like(tiles[0][..., :2]), tiles[1]], dim=-1)
    frames.append(((upscale(tile[0]).clamp(-1, 1) + 1) * 127.5).permute(1, 2, 0).to(torch.uint8).numpy())
save_gif(frames, "figures/30_af_ldm/pan.gif", fps=6)
fig, axes = plt.subplots(2, 1, figsize=(12, 4))
for ax, label in zip(axes, pan):
    strip = torch.cat([pan[label]["reference"][:1]] + [pan[label]["frames"][i, :1] for i in range(0, len(sweep), 2)])
    ax.imshow(((torch.cat(list(strip), dim=-1) + 1) / 2).permute(1, 2, 0).clamp(0, 1))
    ax.set_title(f"{label}: frames at shifts 0, 1/8, 3/8, ... latent px", fontsize=9)
    ax.axis("off")
save_figure(fig, "figures/30_af_ldm/pan_frames.png")
plt.show()

# %% [markdown]
# ## Sampling cost
#
# Seconds per image for one DDIM chain on this machine: the plain U-Net against the alias-free one, without CFA and
# with it (the CFA figure is the anchored run alone; the reference run it needs costs one plain chain, and is shared
# by every frame anchored on it).

# %%
def time_sampling(unet, cfa, repeats=2):
    noise = torch.randn((ldm_timing_batch,) + latent_shape, generator=torch.Generator().manual_seed(seed + 37))
    best = float("inf")
    for _ in range(repeats):
        if cfa:
            with EquivariantAttention(unet) as eq:
                eq.record()
                ldm.sample(unet, noise, ldm_sample_steps)
                eq.use()
                t0 = time.perf_counter()
                ldm.sample(unet, noise, ldm_sample_steps)
                best = min(best, time.perf_counter() - t0)
        else:
            t0 = time.perf_counter()
            ldm.sample(unet, noise, ldm_sample_steps)
            best = min(best, time.perf_counter() - t0)
    return best / ldm_timing_batch


timing = {f"{key}{' + CFA' if cfa else ''}": time_sampling(trained[key], cfa)
          for key in ("ldm_vanilla_vae", "af_ldm") for cfa in (False, True)}
timing

# %%
baselines = [r for r in rows if r["model"] in ("ldm_vanilla_vae", "ldm_af_vae") and r["cfa_inference"]]
best = max(baselines, key=lambda r: r["image_spsnr_db"])
af = next(r for r in rows if r["model"] == "af_ldm")
summary = {
    "profile": profile,
    "scale": {"dataset": ldm_dataset, "latent_shape": list(latent_shape), "vae_factor": f, "unet": ldm_channels,
              "train_steps": ldm_train_steps, "finetune_steps": ldm_finetune_steps, "batch": ldm_batch,
              "ddim_steps": ldm_sample_steps, "fid_samples": ldm_fid_samples, "spsnr_latents": ldm_spsnr_latents,
              "spsnr_shifts": [list(d) for d in groups]},
    "conventions": f"{fid_name}: FID with the classifier stage's features for {ldm_dataset}; latent SPSNR peak = per-sample dynamic range, image SPSNR "
                   "peak 2, per-sample PSNR on the valid region averaged in dB; shifts on the 1/8 latent-pixel grid",
    "table": rows,
    "vae_reconstruction_fid": reconstruction_fid,
    "goal": "AF-LDM image SPSNR >= best baseline with CFA + 5 dB, FID <= 1.3 x (paper: 28.06 vs 21.69 dB, "
            "FID 19.05 vs 14.91)",
    "af_ldm_vs_best_baseline": {"baseline": f"{best['row']} ({best['model']})",  # two rows share a name
                                "image_spsnr_gain_db": af["image_spsnr_db"] - best["image_spsnr_db"],
                                "fid_ratio": af[fid_name] / best[fid_name]},
    "train_seconds": train_seconds,
    "sampling_seconds_per_image": timing,
}
save_json(summary, "metrics/30_af_ldm.json")
summary["af_ldm_vs_best_baseline"]

# %% [markdown]
# **Reading the results.** `af_ldm_vs_best_baseline` is the goal check: AF-LDM's image SPSNR against the
# better of the two standard LDMs sampled with CFA, and the FID ratio between them (goal: +5 dB, ratio <= 1.3). The
# README records the committed cpu-profile run. There the equivariance loss is what moves the *latent* SPSNR (about
# +2.5 dB over the rows without it, CFA in the loss or not), alias-free layers alone do little, and the *image*
# SPSNR barely moves: every row lands within about 1 dB of the others, so the goal is not met at this scale. The
# image SPSNR cannot exceed what the decoder preserves, and notebook 20's AF-VAE decoder is only a few dB more
# equivariant than the vanilla one; on an 8x8 latent, the wrapped strip of a circular shift and the zero-padded
# border reach every pixel through a 2-level U-Net; and the U-Nets are trained for about a thousand steps, with the
# equivariance loss added only for the last 400. The random-weights row shows the architecture's own equivariance
# (highest latent SPSNR), which training erodes, as the paper also observes. The gpu profile (4-level U-Net, 100k
# steps) is where the paper's claim should be tested; it has not been run here.
