# %% [markdown]
# # 14 · Config A–E: the results in one place
#
# Notebooks 12 and 13 run once per (data set, config) and once per data set; this one gathers their metrics into the
# paper-format table, the loss curves, the cost of the alias-free layers and the Config E summary, and writes
# `metrics/14_configs_report.json`, the file README quotes.
#
# **Reading the table.** IS / FID / KID x100 use classifier features (`clf-<dataset>`, notebook 11), so only rows of
# the same data set are comparable, and never with the paper's Inception-based columns, which are shown for
# orientation. KID's ± is the standard deviation over its random subsets; SPSNR's ± is the standard error over images
# and shifts. A difference between two configs counts only when it is larger than about twice the combined error.

# %% tags=["parameters"]
profile = "cpu"
seed = 0
device = "auto"
deterministic = True
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
import json
import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from afcore.utils import save_figure, save_json

train = {(d, c): json.loads(Path(f"metrics/configs_train/{d}-{c}.json").read_text())
         for d in config_datasets for c in configs}
evals = {d: json.loads(Path(f"metrics/configs_eval/{d}.json").read_text()) for d in config_datasets}
rows = [r for d in config_datasets for r in evals[d]["table"]]
for r in rows:
    r["trainable_parameters"] = train[(r["dataset"], r["config"])]["trainable_parameters"]
    r["train_step_relative_to_A"] = evals[r["dataset"]]["train_step_time_relative_to_A"][r["config"]]


def gap(dataset, config, key):
    """Difference to Config A on the same data set, with the standard error of the difference."""
    a = next(r for r in rows if r["dataset"] == dataset and r["config"] == configs[0])
    b = next(r for r in rows if r["dataset"] == dataset and r["config"] == config)
    sem = math.hypot(a[key.replace("_db", "_sem")], b[key.replace("_db", "_sem")])
    return {"diff_db": b[key] - a[key], "sem_db": sem, "significant": abs(b[key] - a[key]) > 2 * sem}


gaps = {f"{d}/{c}": {k: gap(d, c, k) for k in ("denoiser_spsnr_db", "sample_spsnr_db")}
        for d in config_datasets for c in configs[1:]}

# %%
from IPython.display import Markdown, display


def f(v, digits=2):
    return "–" if v is None else f"{v:.{digits}f}"


display(Markdown("| data set | config | IS | FID | KID x100 | denoiser SPSNR | sample SPSNR | step time vs A | paper IS / FID / KID x100 |\n"
                 "|---|---|---|---|---|---|---|---|---|\n" + "".join(
                     f"| {r['dataset']} | {r['config']} | {f(r['IS'])} | {f(r['FID'], 1)} | {f(r['KIDx100'])} ± "
                     f"{f(r['KIDx100_std'])} | {f(r['denoiser_spsnr_db'], 1)} ± {f(r['denoiser_spsnr_sem'], 1)} | "
                     f"{f(r['sample_spsnr_db'], 1)} ± {f(r['sample_spsnr_sem'], 1)} | "
                     f"{f(r['train_step_relative_to_A'])}x | {f(r.get('paper_IS'))} / {f(r.get('paper_FID'))} / "
                     f"{f(r.get('paper_KIDx100'))} |\n" for r in rows)))

# %%
fig, axes = plt.subplots(1, len(config_datasets), figsize=(6 * len(config_datasets), 3.6), squeeze=False)
for ax, d in zip(axes[0], config_datasets):
    for c in configs:
        lines = Path(f"metrics/configs_train/{d}-{c}_loss.csv").read_text().split()[1:]
        steps, losses = np.array([[float(v) for v in line.split(",")] for line in lines]).T
        k = max(1, len(losses) // 20)
        smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1:], smooth, label=c)
    ax.set(title=f"{d}: training loss (moving average)", xlabel="step", ylabel="epsilon MSE", yscale="log")
    ax.legend()
save_figure(fig, "figures/14_configs_report/loss.png")
plt.show()

fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
x = np.arange(len(rows))
labels = [f"{r['dataset']}\n{r['config']}" for r in rows]
for ax, key, title in ((axes[0], "denoiser_spsnr", "denoiser (t = 500), cropped shifts"),
                       (axes[1], "sample_spsnr", "whole samples, circularly shifted noise")):
    ax.bar(x, [r[f"{key}_db"] for r in rows], yerr=[2 * r[f"{key}_sem"] for r in rows], capsize=3,
           color=["C0" if r["config"] == configs[0] else "C1" for r in rows])
    lo = min(r[f"{key}_db"] - 3 * r[f"{key}_sem"] for r in rows)
    ax.set_ylim(max(0.0, lo - 2), None)
    ax.set_xticks(x, labels, fontsize=7)
    ax.set(title=title, ylabel="SPSNR (dB), ± 2 standard errors")
save_figure(fig, "figures/14_configs_report/spsnr.png")
plt.show()

# %%
fig, ax = plt.subplots(figsize=(6, 3.6))
for d in config_datasets:
    rot = [r for r in evals[d]["rotation"] if r["angle"] != 0]
    for c in sorted({r["config"] for r in rot}, key=configs.index):
        pts = [r for r in rot if r["config"] == c]
        ax.errorbar([p["angle"] for p in pts], [p["psnr_db"] for p in pts], yerr=[p["psnr_sem"] for p in pts],
                    fmt="o-", capsize=3, label=f"{d} {c}")
ax.set(title=f"Config E rotation consistency ({rotation_protocol} protocol, {rotation_seeds} seeds)",
       xlabel="phi (degrees)", ylabel="PSNR in inscribed circle (dB)")
ax.legend(fontsize=8)
save_figure(fig, "figures/14_configs_report/rotation_consistency.png")
plt.show()

# %%
rotation_summary = {}
for d in config_datasets:
    for c, mean in evals[d]["rotation_consistency_mean_db"].items():
        vals = [r for r in evals[d]["rotation"] if r["config"] == c and r["angle"] != 0]
        sem = math.sqrt(sum(r["psnr_sem"] ** 2 for r in vals)) / len(vals) if vals else None
        rotation_summary[f"{d}/{c}"] = {"psnr_db": mean, "sem_db": sem}
report = {"profile": profile, "devices": sorted({e["device"] for e in evals.values()}),
          "scale": {"train_steps": train_steps, "batch_size": batch_size, "base_channels": base_channels,
                    "levels": levels, "samples": n_samples, "sample_steps": sample_steps,
                    "rotation_protocol": rotation_protocol, "rotation_seeds": rotation_seeds},
          "conventions": evals[config_datasets[0]]["conventions"],
          "table": rows, "rows": {f"{r['dataset']}/{r['config']}": r for r in rows},
          "spsnr_gap_to_A": gaps, "rotation_consistency": rotation_summary}
save_json(report, "metrics/14_configs_report.json")
{k: (round(v["sample_spsnr_db"]["diff_db"], 2), round(v["sample_spsnr_db"]["sem_db"], 2)) for k, v in gaps.items()}
