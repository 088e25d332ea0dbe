# %% [markdown]
# # 13 · Evaluating Config A–D, and Config E: rotation-controlled sampling
#
# For every trained U-Net (notebook 12) we measure:
#
# 1. **Sample quality**: IS, FID and KID (x100, as the paper reports KID) of `n_samples` DDIM samples against the
#    held-out test images, with the *classifier features* of notebook 11 (names say `clf-<dataset>`). The paper's
#    numbers (Inception features, 2,000 samples, converged models) are shown beside ours for orientation only.
# 2. **Shift equivariance** (beyond the paper): SPSNR of the denoiser's $\epsilon$-prediction at a mid timestep
#    under fractional shifts of its input, and SPSNR of full samples generated from a shifted initial noise
#    (deterministic DDIM, $\eta = 0$). Shifts are Fourier shifts with zero fill and a valid mask (cropped), peak 2.
# 3. **Cost**: training-step time (forward + backward) of each config relative to A on the same batch.
# 4. **Config E**: after every reverse step, rotate $x_t$ by $\varphi / \text{steps}$ (band-limited Fourier
#    rotation) so the sample ends rotated by $\varphi$. The paper judged it by eye; we quantify rotation consistency:
#    PSNR inside the inscribed circle between the sample generated with rotation $\varphi$ and the $\varphi$-rotated
#    sample generated without rotation, from the same noise, averaged over seeds.

# %% tags=["parameters"]
profile = "cpu"
seed = 0
device = "cpu"
config_datasets = ["mnist", "mnist_m"]
configs = ["A", "B-1N", "C-1N", "D-1N"]
base_channels = 16
levels = 2
attention = True
filter_method = "kaiser"
train_steps = 250
batch_size = 16
lr = 0.001
ema_decay = 0.995
ckpt_every = 100
n_samples = 200
sample_steps = 25
spsnr_shifts = [0.125, 0.25, 0.5]
rotation_angles = [-90.0, -45.0, 0.0, 45.0, 90.0]
rotation_seeds = 8
rotation_boundary = "zeros"

# %%
import statistics
import time
import warnings

import matplotlib.pyplot as plt
import numpy as np
import torch

from afcore import data, ddpm, evaluation, metrics, signal
from afcore.utils import save_csv, save_figure, save_gif, save_json, seed_everything

warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
seed_everything(seed)
torch.set_grad_enabled(False)
PAPER = {  # Anjum et al., Inception features, 2,000 samples, single runs: (IS, FID, KID x100)
    ("mnist_m", "A"): (3.76, 85.00, 6.23), ("mnist_m", "D-2N"): (3.99, 82.46, 5.35),
    ("mnist", "A"): (1.98, 9.61, 0.47),
    ("cifar10", "A"): (4.54, 98.77, 5.97), ("cifar10", "D-1N"): (4.51, 90.21, 5.54),
}


def unet(dataset, config):
    return ddpm.load_unet(f"checkpoints/configs/{dataset}/{config}/unet.pt")


def noise(n, shape, s):
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(s))

# %% [markdown]
# ## 1. Sample quality and shift equivariance

# %%
rows, spsnr_rows, sample_grids = [], [], {}
for dataset in config_datasets:
    prepared = data.load_prepared(dataset)
    real = prepared["test"]
    clf_path = f"checkpoints/classifier/{dataset}.pt"
    classifier = evaluation.load_classifier(clf_path)
    shape = tuple(real.shape[1:])
    z = noise(n_samples, shape, seed + 1)
    for config in configs:
        model = unet(dataset, config)
        fake = ddpm.sample(model, z, steps=sample_steps)
        sample_grids[(dataset, config)] = fake[:16]
        row = {"dataset": dataset, "config": config, "samples": n_samples, "real_test_images": int(len(real)),
               **evaluation.quality_metrics(real, fake, classifier, dataset)}
        paper = PAPER.get((dataset, config))
        row.update({"paper_IS": paper[0], "paper_FID": paper[1], "paper_KIDx100": paper[2]} if paper else {})
        # denoiser equivariance at a mid timestep, and of whole samples from shifted noise
        x_t = ddpm.make_scheduler().add_noise(real[:16], noise(16, shape, seed + 2), torch.full((16,), 500))
        t = torch.full((16,), 500)
        z_small = noise(8, shape, seed + 3)
        base_samples = ddpm.sample(model, z_small, steps=sample_steps)
        for d in spsnr_shifts:
            den = float(metrics.spsnr(lambda x: model(x, t), x_t, (0.0, d)))
            smp = float(metrics.spsnr(lambda x: ddpm.sample(model, x, steps=sample_steps), z_small, (0.0, d),
                                      fx=base_samples))
            spsnr_rows.append({"dataset": dataset, "config": config, "shift": d, "denoiser_spsnr_db": den,
                               "sample_spsnr_db": smp})
        row["denoiser_spsnr_db_mean"] = statistics.mean(r["denoiser_spsnr_db"] for r in spsnr_rows
                                                        if r["dataset"] == dataset and r["config"] == config)
        row["sample_spsnr_db_mean"] = statistics.mean(r["sample_spsnr_db"] for r in spsnr_rows
                                                      if r["dataset"] == dataset and r["config"] == config)
        rows.append(row)
save_csv(spsnr_rows, "metrics/13_configs_spsnr.csv")

# %%
def table_markdown(rows):
    keys = [k for k in rows[0] if k not in ("dataset", "config")]
    head = "| dataset | config | " + " | ".join(keys) + " |\n|" + "---|" * (len(keys) + 2) + "\n"
    body = "".join(f"| {r['dataset']} | {r['config']} | " + " | ".join(
        f"{r.get(k, ''):.3g}" if isinstance(r.get(k), float) else str(r.get(k, "")) for k in keys) + " |\n"
        for r in rows)
    return head + body


from IPython.display import Markdown, display

display(Markdown(f"**Scale:** {n_samples} DDIM samples ({sample_steps} steps) per config against the test split; "
                 f"U-Nets with base {base_channels}, {levels} levels, trained {train_steps} steps at batch "
                 f"{batch_size} (profile `{profile}`). IS/FID/KID use classifier features (`clf-<dataset>`), "
                 "so they are not comparable with the paper's Inception numbers (`paper_*` columns). SPSNR: peak 2, "
                 f"horizontal shifts {spsnr_shifts} px, cropped.\n\n" + table_markdown(rows)))

# %%
fig, axes = plt.subplots(len(config_datasets), len(configs), figsize=(2.6 * len(configs), 2.8 * len(config_datasets)),
                         squeeze=False)
for i, dataset in enumerate(config_datasets):
    for j, config in enumerate(configs):
        g = sample_grids[(dataset, config)]
        k = int(np.sqrt(len(g)))
        grid = g[:k * k].view(k, k, *g.shape[1:]).permute(0, 3, 1, 4, 2).reshape(k * g.shape[-2], k * g.shape[-1], -1)
        axes[i, j].imshow(((grid + 1) / 2).clamp(0, 1).squeeze(-1), cmap="gray")
        axes[i, j].set_title(f"{dataset} {config}", fontsize=9)
        axes[i, j].axis("off")
save_figure(fig, "figures/13_configs_eval/samples.png")
plt.show()

fig, ax = plt.subplots(figsize=(7, 3.6))
labels = [f"{r['dataset']}\n{r['config']}" for r in rows]
ax.bar(np.arange(len(rows)) - 0.2, [r["denoiser_spsnr_db_mean"] for r in rows], 0.4, label="denoiser (t=500)")
ax.bar(np.arange(len(rows)) + 0.2, [r["sample_spsnr_db_mean"] for r in rows], 0.4, label="full samples")
ax.set_xticks(range(len(rows)), labels, fontsize=7)
ax.set_ylabel("SPSNR (dB), fractional shifts")
ax.legend()
save_figure(fig, "figures/13_configs_eval/spsnr.png")
plt.show()

# %% [markdown]
# ## 2. The cost of alias-free layers
#
# Median time of one training step (forward + backward) on the same batch, relative to Config A.

# %%
torch.set_grad_enabled(True)
cost = {}
x0 = data.load_prepared(config_datasets[0])["train"][:batch_size]
for config in configs:
    model = unet(config_datasets[0], config).train()
    times = []
    for rep in range(4):
        t0 = time.perf_counter()
        loss = ddpm.ddpm_loss(model, x0, ddpm.make_scheduler(), torch.Generator().manual_seed(rep))
        loss.backward()
        times.append(time.perf_counter() - t0)
    cost[config] = statistics.median(times[1:])
torch.set_grad_enabled(False)
cost_rel = {c: cost[c] / cost[configs[0]] for c in configs}
cost_rel

# %% [markdown]
# ## 3. Config E: progressive rotation
#
# The sweep rotates the same initial noise by each angle in `rotation_angles`; the GIF shows A and the last D
# config side by side. `rotation_angles` containing 0 doubles as a check: rotation by 0 is exactly the plain sampler.

# %%
d_configs = [c for c in configs if c.startswith("D")]
compare = [configs[0]] + (d_configs[-1:] if d_configs else configs[-1:])
mask = signal.inscribed_circle_mask(32, 32, margin=1.0)
rot_rows = []
for dataset in config_datasets:
    shape = tuple(data.load_prepared(dataset)["test"].shape[1:])
    z = noise(rotation_seeds, shape, seed + 4)
    frames = {}
    for config in compare:
        model = unet(dataset, config)
        plain = ddpm.sample(model, z, steps=sample_steps)
        for phi in rotation_angles:
            rotated = ddpm.sample(model, z, steps=sample_steps, rotate_to=phi, boundary=rotation_boundary)
            target = signal.rotate(plain, phi, boundary=rotation_boundary)
            value = float(metrics.psnr(rotated * mask, target * mask, mask))
            rot_rows.append({"dataset": dataset, "config": config, "angle": phi, "psnr_db": min(value, 100.0)})
            frames.setdefault(phi, []).append(rotated[0])
    gif = [((torch.cat(frames[phi], dim=-1).permute(1, 2, 0) + 1) / 2).clamp(0, 1).squeeze(-1).numpy()
           for phi in rotation_angles]
    gif = [np.kron(f, np.ones((4, 4) + ((1,) if f.ndim == 3 else ()))) for f in gif]
    save_gif(gif + gif[::-1], f"figures/13_configs_eval/rotation_{dataset}.gif", fps=3)
save_csv(rot_rows, "metrics/13_configs_rotation.csv")

fig, axes = plt.subplots(1, len(config_datasets), figsize=(6 * len(config_datasets), 3.6), squeeze=False)
for ax, dataset in zip(axes[0], config_datasets):
    for config in compare:
        pts = [r for r in rot_rows if r["dataset"] == dataset and r["config"] == config and r["angle"] != 0]
        ax.plot([p["angle"] for p in pts], [p["psnr_db"] for p in pts], "o-", label=config)
    ax.set_title(f"{dataset}: rotation consistency ({rotation_seeds} seeds)")
    ax.set_xlabel("phi (degrees)")
    ax.set_ylabel("PSNR in inscribed circle (dB)")
    ax.legend()
save_figure(fig, "figures/13_configs_eval/rotation_consistency.png")
plt.show()

# %%
save_json({"profile": profile, "scale": {"samples": n_samples, "sample_steps": sample_steps,
                                         "train_steps": train_steps, "base_channels": base_channels},
           "conventions": "IS/FID/KIDx100 with classifier features (clf-<dataset>), not Inception; "
                          "SPSNR peak 2, cropped Fourier shifts; rotation PSNR peak 2 in the inscribed circle",
           "gpu_results": "pending: no GPU was available when these were produced",
           "table": rows, "train_step_time_relative_to_A": cost_rel, "rotation": rot_rows},
          "metrics/13_configs_eval.json")

# %% [markdown]
# **Reading the results.** At the cpu scale the models are undertrained, so absolute quality is low and differences
# between configs are within run-to-run noise; the table's value is the method, not the ranking. The SPSNR columns
# are where alias-free layers should show even at this scale. The gpu profile (all 13 configs, three data sets,
# reference width, 2,000 samples) is pending a GPU run; its numbers will replace these with their provenance.
