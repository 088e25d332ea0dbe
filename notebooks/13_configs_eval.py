# %% [markdown]
# # 13 · Evaluating Config A–D on one data set, and Config E: rotation-controlled sampling
#
# For every trained U-Net of one data set (`dataset`; the DVC stage `configs_eval` runs this notebook once per
# entry of `config_datasets`) we measure:
#
# 1. **Sample quality**: IS, FID and KID (x100, as the paper reports KID, with its standard deviation over subsets) of
#    `n_samples` samples (`quality_sampler`: `ddim` with `sample_steps` steps in the cpu and gpu profiles for time,
#    `ancestral` = the reference's 999-step sampler in the paper profile) against the held-out test images, with the *classifier features* of notebook 11 (names
#    say `clf-<dataset>`). The paper's numbers (Inception features, 2,000 samples of its 999-step sampler, converged
#    models) are shown beside ours for orientation only: the two are not on the same scale.
# 2. **Shift equivariance** (beyond the paper), one SPSNR per image and shift, reported as mean ± standard error:
#    - *denoiser*: PSNR between $\epsilon_\theta(T_d x_t, t)$ and $T_d\,\epsilon_\theta(x_t, t)$ at $t = 500$ for
#      `spsnr_images` noisy test images, cropped Fourier shifts (zero fill, valid mask), peak 2;
#    - *samples*: PSNR between the DDIM sample from $T_d z$ and $T_d$ of the sample from $z$, where the initial
#      noise $z$ is shifted *circularly* (a circularly shifted white noise is still a valid white noise; a zero-filled
#      one is not) and only the pixels that did not wrap around are compared, peak 2.
# 3. **Cost**: training-step time (forward + backward) of each config relative to A, measured side by side here on
#    the same batch and device, alternating configs so drifts in machine load hit all of them alike.
# 4. **Config E**: after every reverse step, rotate $x_t$ by $\varphi / T$ so the sample ends rotated by about
#    $\varphi$. `rotation_protocol = "reference"` is the paper code's protocol: the 999-step ancestral DDPM sampler
#    and a cubic-spline rotation that wraps around the grid after each step. `"ddim"` is ours: `sample_steps` DDIM
#    steps and a band-limited Fourier rotation with `rotation_boundary` padding (zero padding writes zeros into the
#    corners of $x_t$ at every step). The paper judged the result by eye; we quantify rotation consistency: PSNR inside
#    the inscribed circle between the sample generated with rotation $\varphi$ and the plain sample (same noise) rotated
#    afterwards by the same total angle with the same rotation, one value per seed, mean ± standard error.

# %% tags=["parameters"]
profile = "cpu"
seed = 0
device = "auto"
deterministic = True
dataset = "mnist"
config_datasets = ["mnist", "mnist_m"]
configs = ["A", "B-1N", "C-1N", "D-1N"]
base_channels = 16
levels = 2
attention = "below_full"
filter_method = "kaiser"
train_steps = 250
batch_size = 16
lr = 0.001
ema_decay = 0.995
ckpt_every = 100
amp = False
compile = False
n_samples = 200
quality_sampler = "ddim"
sample_steps = 25
spsnr_shifts = [0.125, 0.25, 0.5]
spsnr_images = 16
rotation_protocol = "reference"
rotation_angles = [-90.0, 0.0, 90.0]
rotation_seeds = 4
rotation_boundary = "zeros"

# %%
import time
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from afcore import data, ddpm, evaluation, metrics, signal
from afcore.utils import make_generator, pick_device, save_csv, save_figure, save_gif, save_json, seed_everything

warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
seed_everything(seed)
dev = pick_device(device, deterministic)
torch.set_grad_enabled(False)
for c in configs:
    ddpm.parse_config(c, filter_method)
if quality_sampler not in ("ddim", "ancestral"):
    raise ValueError(f"quality_sampler must be 'ddim' or 'ancestral', got {quality_sampler!r}")
if rotation_protocol not in ("reference", "ddim"):
    raise ValueError(f"rotation_protocol must be 'reference' or 'ddim', got {rotation_protocol!r}")
FIG = Path("figures/13_configs_eval")
OUT = Path("metrics/configs_eval")
OUT.mkdir(parents=True, exist_ok=True)


def unet(config):
    return ddpm.load_unet(f"checkpoints/configs/{dataset}/{config}/unet.pt").to(dev)


def noise(n, shape, s):
    return torch.randn(n, *shape, generator=make_generator(s, dev), device=dev)


prepared = data.load_prepared(dataset)
real = prepared["test"]
shape = tuple(real.shape[1:])
classifier = evaluation.load_classifier(f"checkpoints/classifier/{dataset}.pt")

# %% [markdown]
# ## 1. Sample quality and shift equivariance

# %%
rows, spsnr_rows, sample_grids = [], [], {}
z = noise(n_samples, shape, seed + 1)
x_t_clean = real[:spsnr_images].to(dev)
t_mid = torch.full((spsnr_images,), 500, device=dev)
x_t = ddpm.make_scheduler().add_noise(x_t_clean, noise(spsnr_images, shape, seed + 2), t_mid)
z_small = noise(min(8, spsnr_images), shape, seed + 3)
for config in configs:
    model = unet(config)
    if quality_sampler == "ancestral":  # the reference's 999-step sampler, as the paper's table was made
        fake = torch.cat([ddpm.ancestral_sample(model, z[i:i + 500], make_generator(seed + 6 + i, dev))
                          for i in range(0, n_samples, 500)])
    else:
        fake = torch.cat([ddpm.sample(model, z[i:i + 500], steps=sample_steps) for i in range(0, n_samples, 500)])
    sample_grids[config] = fake[:16].cpu()
    quality = evaluation.quality_metrics(real, fake, classifier, dataset, device=dev)
    row = {"dataset": dataset, "config": config, "samples": n_samples, "real_test_images": int(len(real)),
           **{k.split("[")[0]: v for k, v in quality.items()}, "features": f"clf-{dataset}"}
    paper = ddpm.PAPER_TABLE.get(ddpm.PAPER_DATASET.get(dataset, ""), {}).get(config)
    row.update({"paper_IS": paper[0], "paper_FID": paper[1], "paper_KIDx100": paper[2]} if paper else {})
    base_samples = ddpm.sample(model, z_small, steps=sample_steps)
    den, smp = [], []
    for d in spsnr_shifts:
        den_d = metrics.spsnr(lambda x: model(x, t_mid), x_t, (0.0, d), per_sample=True).tolist()
        smp_d = metrics.spsnr(lambda x: ddpm.sample(model, x, steps=sample_steps), z_small, (0.0, d),
                              mode="circular-valid", fx=base_samples, per_sample=True).tolist()
        den += den_d
        smp += smp_d
        spsnr_rows.append({"dataset": dataset, "config": config, "shift": d,
                           "denoiser_spsnr_db": float(np.mean(den_d)), "sample_spsnr_db": float(np.mean(smp_d))})
    row["denoiser_spsnr_db"], row["denoiser_spsnr_sem"] = metrics.mean_sem(den)
    row["sample_spsnr_db"], row["sample_spsnr_sem"] = metrics.mean_sem(smp)
    rows.append(row)
save_csv(spsnr_rows, OUT / f"{dataset}_spsnr.csv")

# %%
from IPython.display import Markdown, display


def fmt(r, key, digits=2):
    v = r.get(key)
    return "–" if v is None else f"{v:.{digits}f}"


table = ("| config | IS | FID | KID x100 (± sd) | denoiser SPSNR (dB) | sample SPSNR (dB) | paper IS / FID / KID x100 |\n"
         "|---|---|---|---|---|---|---|\n" + "".join(
             f"| {r['config']} | {fmt(r, 'IS')} | {fmt(r, 'FID', 1)} | {fmt(r, 'KIDx100')} ± {fmt(r, 'KIDx100_std')} "
             f"| {fmt(r, 'denoiser_spsnr_db', 1)} ± {fmt(r, 'denoiser_spsnr_sem', 1)} "
             f"| {fmt(r, 'sample_spsnr_db', 1)} ± {fmt(r, 'sample_spsnr_sem', 1)} "
             f"| {fmt(r, 'paper_IS')} / {fmt(r, 'paper_FID')} / {fmt(r, 'paper_KIDx100')} |\n" for r in rows))
display(Markdown(f"**{dataset}, profile `{profile}`:** {n_samples} samples ({quality_sampler}, {sample_steps} DDIM steps "
                 "if ddim) per config "
                 f"against {len(real)} test images; U-Nets with base {base_channels}, {levels} levels, trained "
                 f"{train_steps} steps at batch {batch_size}. IS/FID/KID use classifier features (`clf-{dataset}`), "
                 "not Inception, so they are not comparable with the paper's columns. SPSNR: peak 2, horizontal "
                 f"shifts {spsnr_shifts} px, mean ± standard error over images and shifts.\n\n" + table))

# %%
fig, axes = plt.subplots(1, len(configs), figsize=(2.6 * len(configs), 2.9), squeeze=False)
for ax, config in zip(axes[0], configs):
    g = sample_grids[config]
    k = int(np.sqrt(len(g)))
    grid = g[:k * k].view(k, k, *g.shape[1:]).permute(0, 3, 1, 4, 2).reshape(k * g.shape[-2], k * g.shape[-1], -1)
    ax.imshow(((grid + 1) / 2).clamp(0, 1).squeeze(-1).numpy(), cmap="gray")
    ax.set_title(f"{dataset} {config}", fontsize=9)
    ax.axis("off")
save_figure(fig, FIG / f"{dataset}_samples.png")
plt.show()

# %% [markdown]
# ## 2. The cost of alias-free layers
#
# Median time of one training step (forward + backward) on the same batch, relative to Config A, measured in this
# process with the configs interleaved.

# %%
torch.set_grad_enabled(True)
x0 = prepared["train"][:batch_size].to(dev)
models = {c: unet(c).train() for c in configs}
times = {c: [] for c in configs}
scheduler = ddpm.make_scheduler()


def sync():
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


for rep in range(6):
    for c in configs:
        sync()
        t0 = time.perf_counter()
        ddpm.ddpm_loss(models[c], x0, scheduler, make_generator(rep, dev)).backward()
        sync()
        times[c].append(time.perf_counter() - t0)
torch.set_grad_enabled(False)
step_seconds = {c: float(np.median(times[c][1:])) for c in configs}
cost_rel = {c: step_seconds[c] / step_seconds[configs[0]] for c in configs}
del models
cost_rel

# %% [markdown]
# ## 3. Config E: progressive rotation
#
# The sweep rotates the same initial noise (and, for the ancestral sampler, the same per-step noise) by each angle in
# `rotation_angles`; the GIF shows A and the last D config side by side. An angle of 0 reproduces the plain sampler
# exactly (tested).

# %%
d_configs = [c for c in configs if c.startswith("D")]
compare = [configs[0]] + (d_configs[-1:] if d_configs else configs[-1:])
rotation = "spline-wrap" if rotation_protocol == "reference" else "fourier"
mask = signal.inscribed_circle_mask(*shape[-2:], margin=1.0, device=dev)
z_rot = noise(rotation_seeds, shape, seed + 4)


def generate(model, phi):
    if rotation_protocol == "reference":
        return ddpm.ancestral_sample(model, z_rot, make_generator(seed + 5, dev), rotate_to=phi, rotation=rotation)
    return ddpm.sample(model, z_rot, steps=sample_steps, rotate_to=phi, rotation=rotation, boundary=rotation_boundary)


rot_rows, frames = [], {}
for config in compare:
    model = unet(config)
    plain = generate(model, 0.0)
    for phi in rotation_angles:
        rotated = generate(model, phi) if phi else plain
        total = ddpm.applied_rotation(phi, rotation_protocol, sample_steps)
        target = ddpm.rotate_step(plain, total, rotation, rotation_boundary)
        per_seed = metrics.psnr(rotated * mask, target * mask, mask, per_sample=True).clamp(max=100.0)
        mean, sem = metrics.mean_sem(per_seed)
        rot_rows.append({"dataset": dataset, "config": config, "angle": phi, "psnr_db": mean, "psnr_sem": sem})
        frames.setdefault(phi, []).append(rotated[0].cpu())
save_csv(rot_rows, OUT / f"{dataset}_rotation.csv")
gif = [((torch.cat(frames[phi], dim=-1).permute(1, 2, 0) + 1) / 2).clamp(0, 1).squeeze(-1).numpy()
       for phi in rotation_angles]
gif = [np.kron(f, np.ones((4, 4) + ((1,) if f.ndim == 3 else ()))) for f in gif]
save_gif(gif + gif[::-1], FIG / f"{dataset}_rotation.gif", fps=3)

fig, ax = plt.subplots(figsize=(6, 3.6))
for config in compare:
    pts = [r for r in rot_rows if r["config"] == config and r["angle"] != 0]
    ax.errorbar([p["angle"] for p in pts], [p["psnr_db"] for p in pts], yerr=[p["psnr_sem"] for p in pts],
                fmt="o-", capsize=3, label=config)
ax.set_title(f"{dataset}: rotation consistency ({rotation_seeds} seeds, {rotation_protocol} protocol)")
ax.set_xlabel("phi (degrees)")
ax.set_ylabel("PSNR in inscribed circle (dB)")
ax.legend()
save_figure(fig, FIG / f"{dataset}_rotation_consistency.png")
plt.show()

# %%
consistency = {}
for config in compare:
    vals = [r["psnr_db"] for r in rot_rows if r["config"] == config and r["angle"] != 0]
    consistency[config] = float(np.mean(vals)) if vals else None
save_json({"profile": profile, "dataset": dataset, "device": str(dev),
           "scale": {"samples": n_samples, "sample_steps": sample_steps, "train_steps": train_steps,
                     "batch_size": batch_size, "base_channels": base_channels, "levels": levels},
           "conventions": f"IS/FID/KIDx100 with classifier features (clf-{dataset}), not Inception; KIDx100_std = "
                          "standard deviation over KID subsets; SPSNR peak 2, per image and shift, mean +- standard "
                          "error; denoiser: cropped shifts of x_t; samples: circular shifts of the initial noise, "
                          "non-wrapped pixels; rotation PSNR peak 2 in the inscribed circle, mean +- standard error "
                          "over seeds",
           "rotation_protocol": rotation_protocol, "table": rows,
           "train_step_seconds": step_seconds, "train_step_time_relative_to_A": cost_rel,
           "rotation": rot_rows, "rotation_consistency_mean_db": consistency},
          OUT / f"{dataset}.json")
