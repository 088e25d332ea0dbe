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
# We train each row of the ablation from scratch on random crops of scikit-image's photographs and measure
# reconstruction PSNR, rFID, and the **Enc / Dec SPSNR**: encoder with integer image shifts (latent shift $d/f$,
# peak = the latent's dynamic range), decoder with fractional latent shifts in 1/f steps (image peak 2), both cropped.
#
# **Scale.** The paper fine-tunes SD's VAE (factor 8, 256 px, 100k+ steps). The cpu profile trains a 3-level VAE
# (factor 4) on 32 px crops for a few hundred steps: the *differences* between rows are the point, not the values.

# %% tags=["parameters"]
profile = "cpu"
seed = 0
device = "cpu"
vae_channels = [16, 32, 32]
crop_size = 32
n_train = 2000
n_test = 200
vae_steps = 300
vae_batch = 16
vae_lr = 0.001
kl_weight = 0.000001
eq_weight = 1.0
spsnr_images = 32

# %%
import shutil
import time

import matplotlib.pyplot as plt
import numpy as np
import torch

from afcore import data, evaluation, metrics, signal, vae as V
from afcore.surgery import make_alias_free, save_alias_free
from afcore.train import train_loop
from afcore.utils import pick_device, save_csv, save_figure, save_json, seed_everything

seed_everything(seed)
dev = pick_device(device)
train_x = data.random_crops(n_train, crop_size, seed=seed)
test_x = data.random_crops(n_test, crop_size, seed=seed + 1)
ROWS = {  # name: (resample, filtered nonlinearity, equivariance loss, train)
    "vanilla VAE": (False, False, False, True),
    "+ ideal sampling": (True, False, False, True),
    "+ filtered nonlinearity": (True, True, False, True),
    "+ equivariance loss (AF-VAE)": (True, True, True, True),
    "vanilla + equivariance loss": (False, False, True, True),
    "AF-VAE, random weights": (True, True, False, False),
}
PAPER = {"vanilla VAE": (26.16, 0.63, 11.41, 14.92), "+ ideal sampling": (25.81, 0.73, 12.58, 17.41),
         "+ filtered nonlinearity": (25.74, 0.71, 13.39, 18.27),
         "+ equivariance loss (AF-VAE)": (24.77, 1.25, 31.44, 26.49),
         "vanilla + equivariance loss": (25.56, 0.90, 23.04, 20.64), "AF-VAE, random weights": (None, None, 35.12, 31.01)}

# %%
def build(resample, nonlin):
    seed_everything(seed)
    model = V.small_vae(tuple(vae_channels))
    if resample or nonlin:
        make_alias_free(model, resample=resample, nonlinearity=nonlin)
    return model


trained, histories, step_time = {}, {}, {}
for name, (resample, nonlin, eq, train) in ROWS.items():
    model = build(resample, nonlin)
    if train:
        def get_batch(step):
            g = torch.Generator().manual_seed(seed * 7919 + step)
            return train_x[torch.randint(0, n_train, (vae_batch,), generator=g)], step

        def loss_fn(m, batch, step, eq=eq):
            x, s = batch
            return V.vae_loss(m, x, torch.Generator().manual_seed(int(s)), kl_weight=kl_weight,
                              eq_weight=eq_weight if eq else 0.0)

        run_dir = f"checkpoints/vae/{len(trained)}_run"
        shutil.rmtree(run_dir, ignore_errors=True)
        t0 = time.perf_counter()
        model, _, hist = train_loop(model, loss_fn, get_batch, steps=vae_steps, lr=vae_lr, ckpt_dir=run_dir,
                                    device=str(dev), desc=name)
        step_time[name] = (time.perf_counter() - t0) / max(vae_steps, 1)
        histories[name] = hist
    trained[name] = model.cpu().eval()
save_alias_free(trained["vanilla VAE"], "checkpoints/vae/vanilla")
save_alias_free(trained["+ equivariance loss (AF-VAE)"], "checkpoints/vae/af_vae")

# %% [markdown]
# ## Table 2 at our scale

# %%
torch.set_grad_enabled(False)
features = evaluation.random_features(3, seed=seed, calibrate=train_x[:500])
eval_x = test_x[:spsnr_images]
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
display(Markdown(f"**Scale:** {vae_steps} steps, batch {vae_batch}, {crop_size} px crops, factor "
                 f"{V.factor(trained['vanilla VAE'])}, {n_test} test crops. Recon PSNR peak 2. rFID with calibrated "
                 "random-CNN features (not Inception). SPSNR: horizontal shifts of 1..f image pixels (latent 1/f..1), "
                 f"cropped, over {spsnr_images} images. `paper_*`: Zhou et al.'s Table 2 (SD-VAE, Inception rFID).\n\n"
                 + md))

# %% [markdown]
# ## Figure 2: the latent's spectrum, and Figure 6 (VAE part): SPSNR against the shift

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 4))
for name in ("vanilla VAE", "+ equivariance loss (AF-VAE)"):
    z = V.encode(trained[name], test_x[:64])
    freqs, power = signal.radial_power_spectrum(z - z.mean(dim=(-2, -1), keepdim=True))
    axes[0].semilogy(freqs, power / power.sum(), "o-", label=name)
axes[0].set_xlabel("latent frequency (cycles/sample)")
axes[0].set_title("latent radial power spectrum (normalised)")
axes[0].legend()
curve = []
f = V.factor(trained["vanilla VAE"])
for name in ("vanilla VAE", "+ equivariance loss (AF-VAE)"):
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

# %%
vanilla = next(r for r in rows if r["row"] == "vanilla VAE")
af = next(r for r in rows if r["row"] == "+ equivariance loss (AF-VAE)")
summary = {
    "profile": profile, "scale": {"steps": vae_steps, "batch": vae_batch, "crop": crop_size, "test_crops": n_test},
    "conventions": "recon PSNR peak 2; Enc SPSNR peak = latent range; Dec SPSNR peak 2; cropped shifts 1..f px; "
                   "rFID with calibrated random-CNN features",
    "table": rows,
    "af_minus_vanilla": {"enc_spsnr_db": af["enc_spsnr_db"] - vanilla["enc_spsnr_db"],
                         "dec_spsnr_db": af["dec_spsnr_db"] - vanilla["dec_spsnr_db"],
                         "recon_psnr_db": af["recon_psnr_db"] - vanilla["recon_psnr_db"]},
    "goal": "Enc +15 dB, Dec +8 dB, recon within -1.5 dB (paper: +20, +11.6, -1.4)",
    "train_step_seconds": step_time,
}
save_json(summary, "metrics/20_af_vae.json")
summary["af_minus_vanilla"]

# %% [markdown]
# **Reading the results honestly.** The goal at our scale is AF-VAE Enc SPSNR at least 15 dB and Dec SPSNR
# at least 8 dB above the vanilla VAE, with reconstruction PSNR no more than 1.5 dB below (the paper: +20, +11.6,
# -1.4 dB). `af_minus_vanilla` above shows what this run measured; on the cpu profile (300 steps) it falls far
# short: the equivariance loss costs several dB of reconstruction before the VAE has learned to reconstruct at all,
# and the SPSNR gains are a few dB. Likely causes, in order: far too little training (the paper fine-tunes a
# converged SD-VAE), a factor-4 VAE whose latent at 32 px is only 8x8 (cropped-shift borders dominate), zero padding
# in every convolution, and no perceptual/GAN terms (not implemented yet). The gpu profile (SD-VAE architecture,
# 256 px) is the configuration in which to check the paper's claim.
