# %% [markdown]
# # 20 · AF-VAE: an alias-free autoencoder (AF-LDM Table 2, Figures 2 and 6)
#
# A latent diffusion model can only be shift-equivariant if its autoencoder is: shifting the image by $d$ should shift
# the latent by $d/f$ (encoder) and shifting the latent by $d/f$ should shift the decoded image by $d$ (decoder), where
# $f$ is the down-sampling factor. Zhou et al. make the VAE alias-free in three steps and measure each:
#
# 1. **ideal sampling**: down-samplers become "conv at stride 1, ideal low-pass, every 2nd sample", up-samplers "ideal
#    x2, then conv" (`afcore.surgery.make_alias_free(resample=True)`);
# 2. **filtered nonlinearity**: SiLU evaluated at twice the rate and low-passed (full-resolution levels keep plain
#    SiLU, as in the reference);
# 3. **equivariance loss**: $\|E(T_d x) - T_{d/f}\,\mathrm{sg}(E(x))\|^2_M + \|D(T_{d/f} z) - T_d\,\mathrm{sg}(D(z))\|^2_M$
#    over the valid masks $M$, one integer image shift $d \sim U\{-0.375H..0.375H\}$ per batch.
#
# The paper does not train these rows from scratch: it takes Stable Diffusion's pretrained VAE, applies each row's
# modification, and fine-tunes. We do the same at small scale: a vanilla VAE is **pre-trained** first (our stand-in
# for SD's VAE, or SD's VAE itself when `vae_pretrained` names a local copy or a cached hub id), then every row starts
# from its weights, gets its surgery, and is **fine-tuned** for the same number of steps (with the equivariance loss
# where the row says so). The loss is MSE + KL + the equivariance terms, and optionally a perceptual term (an offline
# LPIPS stand-in: fixed random-feature distances) and a hinge-GAN term with a patch discriminator that is made
# alias-free along with the VAE (`gan_weight`, adaptive weight as in VQGAN).
#
# We measure reconstruction PSNR and rFID on held-out crops and the **Enc / Dec SPSNR**: encoder with integer image
# shifts $d = 1..f$ px (latent shift $d/f$, peak = the latent's dynamic range), decoder with the matching fractional
# latent shifts (image peak 2), both cropped (zero fill, valid mask), on larger crops (`spsnr_crop`) than the
# training ones: the VAE is fully convolutional, and on 32 px crops an 8x8 latent is mostly border.
#
# **Scale.** The paper fine-tunes SD's VAE (factor 8) at 256 px on ImageNet. The cpu profile pre-trains a 3-level VAE
# (factor 4) on 32 px crops of scikit-image's photographs for a little over a thousand steps and fine-tunes each row
# for a few hundred: the *differences* between rows are the point, not the values.

# %% tags=["parameters"]
profile = "cpu"
seed = 0
device = "cpu"
vae_dataset = "natural"
vae_pretrained = ""
vae_channels = [16, 32, 32]
crop_size = 32
n_train = 2000
n_test = 200
vae_pretrain_steps = 1500
vae_finetune_steps = 600
vae_batch = 16
vae_lr = 0.001
vae_finetune_lr = 0.0003
vae_ema_decay = 0.0
kl_weight = 0.000001
eq_weight = 1.0
perceptual_weight = 0.0
gan_weight = 0.0
gan_start = 0
disc_channels = [32, 64]
spsnr_images = 32
spsnr_crop = 64

# %%
import copy
import re
import time

import matplotlib.pyplot as plt
import numpy as np
import torch

from afcore import data, evaluation, metrics, signal, vae as V
from afcore.surgery import make_alias_free, save_alias_free
from afcore.train import prepare_run_dir, train_loop
from afcore.utils import pick_device, save_csv, save_figure, save_json, seed_everything

seed_everything(seed)
dev = pick_device(device)
if vae_dataset == "natural":
    train_x = data.random_crops(n_train, crop_size, seed=seed)
    test_x = data.random_crops(n_test, crop_size, seed=seed + 1)
    spsnr_x = data.random_crops(spsnr_images, spsnr_crop, seed=seed + 2)
elif vae_dataset.startswith("hub:"):
    images = data.hub_images(vae_dataset[4:], max(crop_size, spsnr_crop), n=n_train + n_test)
    resize = lambda x, s: torch.nn.functional.interpolate(x, size=(s, s), mode="area") if s != x.shape[-1] else x
    train_x, test_x = resize(images[:n_train], crop_size), resize(images[n_train:], crop_size)
    spsnr_x = resize(images[n_train:n_train + spsnr_images], spsnr_crop)
else:
    raise ValueError(f"vae_dataset must be 'natural' or 'hub:<datasets name or local path>', got {vae_dataset!r}")
ROWS = {  # name: (ideal sampling, filtered nonlinearity, equivariance loss, fine-tuned)
    "vanilla VAE (pre-trained)": (False, False, False, False),
    "vanilla VAE (fine-tuned)": (False, False, False, True),
    "+ ideal sampling": (True, False, False, True),
    "+ filtered nonlinearity": (True, True, False, True),
    "+ equivariance loss (AF-VAE)": (True, True, True, True),
    "vanilla + equivariance loss": (False, False, True, True),
    "AF-VAE, random weights": (True, True, False, False),
}
# Zhou et al., Table 2 (SD-VAE on ImageNet 256 px; rFID with Inception features): recon PSNR, rFID, Enc, Dec SPSNR.
# Its two "SD VAE" rows are the released VAE and the VAE retrained like the other rows.
PAPER = {"vanilla VAE (pre-trained)": (26.94, 0.69, 25.07, 22.31),
         "vanilla VAE (fine-tuned)": (26.45, 0.63, 19.71, 21.36),
         "+ ideal sampling": (25.76, 1.01, 21.51, 21.75), "+ filtered nonlinearity": (25.42, 0.86, 29.49, 24.61),
         "+ equivariance loss (AF-VAE)": (25.53, 1.00, 45.10, 33.88),
         "vanilla + equivariance loss": (24.59, 4.18, 41.46, 30.74),
         "AF-VAE, random weights": (None, None, 29.43, 29.02)}

# %%
def get_batch(step):
    g = torch.Generator().manual_seed(seed * 7919 + step)
    return train_x[torch.randint(0, n_train, (vae_batch,), generator=g)], g.initial_seed()


def train(model, name, steps, lr, eq, alias_free_disc):
    """Train ``model`` (an AutoencoderKL) for ``steps``; returns (trained VAE, history, seconds per step)."""
    perceptual = V.PerceptualFeatures() if perceptual_weight > 0 else None
    disc = V.PatchDiscriminator(channels=tuple(disc_channels), alias_free=alias_free_disc) if gan_weight > 0 else None
    wrapped = V.VAEWithDiscriminator(model, disc) if disc is not None else model

    def loss_fn(m, batch, step):
        x, batch_seed = batch
        return V.vae_loss(m, x, torch.Generator().manual_seed(int(batch_seed) + 1), kl_weight=kl_weight,
                          eq_weight=eq_weight if eq else 0.0, perceptual_weight=perceptual_weight,
                          perceptual=perceptual, gan_weight=gan_weight, gan_start=gan_start, step=step)

    fingerprint = dict(row=name, channels=vae_channels, steps=steps, eq=eq, batch=vae_batch, lr=lr,
                       ema=vae_ema_decay, kl=kl_weight, eq_weight=eq_weight, perceptual=perceptual_weight,
                       gan=gan_weight, gan_start=gan_start, disc=disc_channels, seed=seed, crop=crop_size,
                       n_train=n_train, dataset=vae_dataset, pretrained=vae_pretrained,
                       pretrain_steps=vae_pretrain_steps)
    slug = re.sub("[^a-z0-9]+", "_", name.lower()).strip("_")
    run_dir = prepare_run_dir(f"checkpoints/vae/runs/{slug}", fingerprint)
    wrapped, ema, history = train_loop(wrapped, loss_fn, get_batch, steps=steps, lr=lr, ckpt_dir=run_dir,
                                       ema_decay=vae_ema_decay or None, ckpt_every=max(steps // 4, 1),
                                       device=str(dev), desc=name, log_csv=f"{run_dir}/loss.csv")
    final = ema if ema is not None else wrapped
    final = final.vae if isinstance(final, V.VAEWithDiscriminator) else final
    step_seconds = sum(h["seconds"] for h in history) / max(len(history), 1)  # per-step rows survive a resume
    return final.cpu().eval(), history, step_seconds


seed_everything(seed)
if vae_pretrained:
    pretrained = V.load_pretrained_vae(vae_pretrained)
    pretrain_history, pretrain_step = [], None
else:
    pretrained, pretrain_history, pretrain_step = train(V.small_vae(tuple(vae_channels)), "pre-training",
                                                        vae_pretrain_steps, vae_lr, eq=False, alias_free_disc=False)
trained, histories, step_time = {}, {"pre-training": pretrain_history}, {"pre-training": pretrain_step}
for name, (resample, nonlin, eq, finetune) in ROWS.items():
    if name == "AF-VAE, random weights":
        seed_everything(seed)
        model = V.small_vae(tuple(vae_channels)) if not vae_pretrained else copy.deepcopy(pretrained)
        if vae_pretrained:  # random weights in SD's architecture
            for module in model.modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
    else:
        model = copy.deepcopy(pretrained)
    if resample or nonlin:
        make_alias_free(model, resample=resample, nonlinearity=nonlin)
    if finetune:
        model, histories[name], step_time[name] = train(model, name, vae_finetune_steps, vae_finetune_lr, eq,
                                                        alias_free_disc=resample or nonlin)
    trained[name] = model.eval()
save_alias_free(trained["vanilla VAE (pre-trained)"], "checkpoints/vae/vanilla")
save_alias_free(trained["+ equivariance loss (AF-VAE)"], "checkpoints/vae/af_vae")

# %%
fig, ax = plt.subplots(figsize=(8, 3.5))
loss_rows = []
for name, hist in histories.items():
    offset = 0 if name == "pre-training" else vae_pretrain_steps
    for h in hist:
        loss_rows.append({"run": name, "step": offset + h["step"], "mse": h["mse"],
                          "eq": h.get("eq_enc", 0.0) + h.get("eq_dec", 0.0)})
    if hist:
        mse = torch.tensor([h["mse"] for h in hist])
        k = max(1, len(mse) // 20)
        smooth = torch.nn.functional.avg_pool1d(mse[None, None], k, 1)[0, 0] if len(mse) > k else mse
        ax.plot(offset + np.arange(1, len(smooth) + 1), smooth, label=name)
ax.set_yscale("log")
ax.set_xlabel("step")
ax.set_title("reconstruction MSE (moving average): pre-training, then each row's fine-tuning")
ax.legend(fontsize=7)
save_figure(fig, "figures/20_af_vae/loss.png")
plt.show()
save_csv(loss_rows, "metrics/20_af_vae_loss.csv")

# %% [markdown]
# ## Table 2 at our scale

# %%
torch.set_grad_enabled(False)
features = evaluation.random_features(3, seed=seed, calibrate=train_x[:500])
eval_x = spsnr_x
rows = []
for name, model in trained.items():
    recon = torch.cat([V.decode(model, V.encode(model, test_x[i:i + 50])).clamp(-1, 1)
                       for i in range(0, n_test, 50)])
    row = {"row": name, "recon_psnr_db": float(metrics.psnr(recon, test_x))}
    fid = evaluation.fid_kid_is(test_x, recon, features=features, tag="natural")
    row["rFID[rand-natural]"] = fid["FID[rand-natural]"]
    f = V.factor(model)
    enc, dec = [], []
    for k in range(1, f + 1):  # integer image shifts 1..f px = latent shifts 1/f..1 (Fig. 6 grid)
        e, d = V.enc_dec_spsnr(model, eval_x, (0.0, float(k)))
        enc.append(e)
        dec.append(d)
    row["enc_spsnr_db"], row["dec_spsnr_db"] = float(np.mean(enc)), float(np.mean(dec))
    paper = PAPER[name]
    row.update(paper_psnr=paper[0], paper_rFID=paper[1], paper_enc_spsnr=paper[2], paper_dec_spsnr=paper[3])
    rows.append(row)
rows

# %%
from IPython.display import Markdown, display

keys = list(rows[0])
md = "| " + " | ".join(keys) + " |\n|" + "---|" * len(keys) + "\n" + "".join(
    "| " + " | ".join(f"{r[k]:.2f}" if isinstance(r[k], float) else str(r[k]) for k in keys) + " |\n" for r in rows)
source = vae_pretrained or f"pre-trained here for {vae_pretrain_steps} steps"
display(Markdown(f"**Scale:** vanilla VAE {source}; each row fine-tuned {vae_finetune_steps} steps, batch "
                 f"{vae_batch}, {crop_size} px crops ({vae_dataset}), factor {V.factor(pretrained)}; {n_test} test "
                 "crops. Recon PSNR peak 2. rFID with calibrated random-CNN features (not Inception). SPSNR: "
                 f"horizontal shifts of 1..f image pixels (latent 1/f..1), cropped, over {spsnr_images} crops of "
                 f"{spsnr_crop} px. `paper_*`: Zhou et al.'s Table 2 (SD-VAE, ImageNet 256 px, Inception rFID).\n\n"
                 + md))

# %% [markdown]
# ## Figure 2: the latent's spectrum, and Figure 6 (VAE part): SPSNR against the shift

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 4))
COMPARE = ("vanilla VAE (fine-tuned)", "+ equivariance loss (AF-VAE)")
for name in COMPARE:
    z = V.encode(trained[name], eval_x)
    freqs, power = signal.radial_power_spectrum(z - z.mean(dim=(-2, -1), keepdim=True))
    axes[0].semilogy(freqs, power / power.sum(), "o-", label=name)
axes[0].set_xlabel("latent frequency (cycles/sample)")
axes[0].set_title("latent radial power spectrum (normalised)")
axes[0].legend()
curve = []
f = V.factor(pretrained)
for name in COMPARE:
    model = trained[name]
    z = V.encode(model, eval_x)
    means, spreads = [], []
    for k in range(0, 2 * f + 1):
        per = [float(metrics.spsnr(lambda t: V.decode(model, t), z[i:i + 1], (0.0, k / f), scale=float(f)))
               for i in range(len(z))]
        per = [min(p, 100.0) for p in per]
        means.append(np.mean(per))
        spreads.append(np.std(per))
        curve.append({"model": name, "latent_shift": k / f, "dec_spsnr_db": means[-1], "std": spreads[-1]})
    xs = np.arange(0, 2 * f + 1) / f
    axes[1].plot(xs, means, "o-", label=name)
    axes[1].fill_between(xs, np.array(means) - spreads, np.array(means) + spreads, alpha=0.2)
axes[1].set_xlabel("horizontal latent shift (latent pixels)")
axes[1].set_ylabel("decoder SPSNR (dB)")
axes[1].legend()
save_figure(fig, "figures/20_af_vae/spectrum_and_spsnr.png")
plt.show()
save_csv(curve, "metrics/20_af_vae_spsnr.csv")

# %% [markdown]
# ## Faces under a sub-pixel pan
#
# Texture sticking is easiest to see on faces. scikit-image's LFW faces (never seen in training) are encoded, their
# latent is shifted by $k/f$ of a latent pixel, decoded, and shifted back by the matching image shift. A perfectly
# equivariant decoder gives the same face in every column, and the bottom row of each model (|difference| from the
# unshifted decode, amplified 8x) stays black. The vanilla decoder's error comes and goes with the sub-pixel phase;
# the AF-VAE's stays small at every phase.

# %%
faces = data.lfw_faces(spsnr_crop, flips=False)[:spsnr_images]
f = V.factor(pretrained)
face_shifts = [k / f for k in range(0, f + 1)]
fig, axes = plt.subplots(4, len(face_shifts), figsize=(1.8 * len(face_shifts), 7.6))
face_spsnr = {}


def short_name(row):
    return "AF-VAE" if "AF-VAE" in row else row.split(" (")[0]


for r, name in enumerate(COMPARE):
    model = trained[name]
    z = V.encode(model, faces)
    reference = V.decode(model, z)
    face_spsnr[name] = [float(metrics.spsnr(lambda t: V.decode(model, t), z, (0.0, s), scale=float(f)))
                        for s in face_shifts[1:]]
    for c, s in enumerate(face_shifts):
        shifted_z, _ = signal.shift(z[:1], (0.0, s), mode="crop")
        back, mask = signal.shift(V.decode(model, shifted_z), (0.0, -s * f), mode="crop")
        error = ((back - reference[:1]).abs() * mask).mean(1)[0]
        axes[2 * r, c].imshow(((back[0] * mask + 1) / 2).clamp(0, 1).permute(1, 2, 0).numpy())
        axes[2 * r + 1, c].imshow((8 * error / 2).clamp(0, 1).numpy(), cmap="magma", vmin=0, vmax=1)
        axes[2 * r, c].set_title(f"shift {s:.2f} latent px", fontsize=8)
        for a in (axes[2 * r, c], axes[2 * r + 1, c]):
            a.set_xticks([])
            a.set_yticks([])
    axes[2 * r, 0].set_ylabel(short_name(name), fontsize=8)
    axes[2 * r + 1, 0].set_ylabel("|error| x8", fontsize=8)
fig.suptitle(f"decoded LFW faces shifted back ({spsnr_crop} px); mean decoder SPSNR on faces: "
             + ", ".join(f"{short_name(n)} {np.mean(v):.1f} dB" for n, v in face_spsnr.items()), fontsize=9)
save_figure(fig, "figures/20_af_vae/faces_pan.png")
plt.show()

# %%
def timed(fn, x, repeats=3):
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(x)
        best = min(best, time.perf_counter() - t0)
    return best


timing = {}
for name in COMPARE:
    model = trained[name]
    z = V.encode(model, eval_x)
    timing[name] = {"encode_s": timed(lambda x: V.encode(model, x), eval_x),
                    "decode_s": timed(lambda t: V.decode(model, t), z)}
base_time = timing[COMPARE[0]]
timing["af_vae_relative"] = {"encode": timing[COMPARE[1]]["encode_s"] / base_time["encode_s"],
                             "decode": timing[COMPARE[1]]["decode_s"] / base_time["decode_s"],
                             "train_step": step_time["+ equivariance loss (AF-VAE)"] / step_time[COMPARE[0]]}
timing["batch"] = f"{spsnr_images} crops of {spsnr_crop} px, best of 3, {torch.get_num_threads()} threads"


def delta(a, b):
    return {k: a[k] - b[k] for k in ("enc_spsnr_db", "dec_spsnr_db", "recon_psnr_db")}


by_name = {r["row"]: r for r in rows}
af = by_name["+ equivariance loss (AF-VAE)"]
summary = {
    "profile": profile,
    "scale": {"pretrained": vae_pretrained or None, "pretrain_steps": None if vae_pretrained else vae_pretrain_steps,
              "finetune_steps": vae_finetune_steps, "batch": vae_batch, "crop": crop_size,
              "dataset": vae_dataset, "test_crops": n_test, "spsnr_crops": spsnr_images, "spsnr_crop": spsnr_crop},
    "conventions": "recon PSNR peak 2; Enc SPSNR peak = latent range; Dec SPSNR peak 2; cropped shifts 1..f px; "
                   "rFID with calibrated random-CNN features",
    "losses": {"kl": kl_weight, "eq": eq_weight, "perceptual": perceptual_weight, "gan": gan_weight,
               "ema_decay": vae_ema_decay},
    "table": rows,
    "af_minus_vanilla_pretrained": delta(af, by_name["vanilla VAE (pre-trained)"]),
    "af_minus_vanilla_finetuned": delta(af, by_name["vanilla VAE (fine-tuned)"]),
    "goal": "Enc +15 dB, Dec +8 dB, recon within -1.5 dB (paper, against the released SD VAE: +20, +11.6, -1.4)",
    "train_step_seconds": step_time,
    "timing": timing,
    "faces_dec_spsnr_db": {name: {"shifts_latent_px": face_shifts[1:], "spsnr_db": v,
                                  "faces": f"{len(faces)} LFW faces, {spsnr_crop} px, never trained on"}
                           for name, v in face_spsnr.items()},
}
save_json(summary, "metrics/20_af_vae.json")
{k: summary[k] for k in ("af_minus_vanilla_pretrained", "af_minus_vanilla_finetuned")} | {"timing": timing}

# %% [markdown]
# **Reading the results honestly.** The goal at our scale is AF-VAE Enc SPSNR at least 15 dB and Dec SPSNR at
# least 8 dB above the vanilla VAE, with reconstruction PSNR no more than 1.5 dB below it (the paper, against the
# released SD VAE: +20, +11.6, -1.4 dB). The deltas above are this run's; the committed cpu run (README) gets about
# +12 dB Enc, +4 dB Dec and -3.4 dB reconstruction, so the *direction* of every step of the paper's ablation
# reproduces (ideal sampling and the filtered nonlinearity raise Enc SPSNR at a small reconstruction cost, the
# equivariance loss raises both SPSNRs and costs reconstruction, the loss alone on the vanilla VAE does nearly as
# well on SPSNR) but the sizes do not. What limits it here, as far as these runs show:
#
# * **Our vanilla VAE is already far more equivariant than SD's.** The gap is measured against a baseline, and ours
#   starts at about 31 dB Enc / 27 dB Dec SPSNR where the paper's SD VAE starts at 25 / 22: a small VAE trained
#   briefly on smooth photo crops has little high-frequency content in its latent to alias. The AF-VAE's own values
#   (about 43 / 31 dB) are within 2-3 dB of the paper's (45.1 / 33.9), so most of the shortfall in the *gap* is the
#   better baseline, not a weaker alias-free model.
# * **Decoder SPSNR saturates near 31 dB** for every trained row, alias-free or not. The decoder's full-resolution
#   level keeps plain SiLU (as the reference does) and every convolution zero-pads; with cropped shifts the zero-filled
#   border also changes the GroupNorm statistics of the whole map. On 64 px crops these are a larger share of the
#   image than on the paper's 256 px (at 32 px the gap between rows is smaller still).
# * **The equivariance loss costs reconstruction** because the cpu fine-tuning is short: 600 steps at a lower learning
#   rate (3e-4) cost 3-4 dB, while the paper fine-tunes SD's VAE for far longer, with LPIPS and GAN terms that keep
#   the decoder sharp. Those terms are implemented (`perceptual_weight`,
#   `gan_weight`) but off in the cpu profile; the perceptual term is an offline random-feature stand-in for LPIPS,
#   not LPIPS.
# * The rFID here uses calibrated random-CNN features on 200 crops: it ranks the rows, it is not comparable with the
#   paper's Inception rFID.
#
# The gpu profile (SD-VAE architecture at 256 px, 20k + 10k steps, perceptual and GAN terms on, or SD's VAE itself via
# `vae_pretrained`) is the configuration in which to test the paper's claim; it has not been run in this repository.
