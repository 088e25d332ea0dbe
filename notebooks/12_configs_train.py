# %% [markdown]
# # 12 · Training the Config A–D DDPM U-Nets
#
# Anjum et al. compare a baseline DDPM U-Net (Config A) with three alias-free variants that change only fixed
# filters, never the number of trainable parameters:
#
# | config | down-sampling | up-sampling | nonlinearity |
# | --- | --- | --- | --- |
# | A | max-pool 2x2 | bilinear x2 | GELU |
# | B | 3x3 jinc low-pass + stride 2 | zero insertion + 3x3 jinc (gain 4) | GELU |
# | C | max-pool 2x2 | bilinear x2 | x2 up / GELU / low-pass + down |
# | D | as B | as B | as C |
#
# The digit after the letter is the Kaiser $\beta$ of the 3x3 jinc window and `N` means the kernel is normalised to
# sum 1 (notebook 01 shows why that matters). One difference from the reference code: our zero-insertion
# up-sampler multiplies by 4 so the signal keeps its amplitude; the reference omits it.
#
# Training is DDPM (Ho et al. Algorithm 1): linear betas $10^{-4}$..$0.02$, $T = 1000$, $\epsilon$-prediction MSE,
# diffusers' `DDPMScheduler`, AdamW, EMA of the weights, through `afcore.train.train_loop` (accelerate: the same
# loop runs on CPU, one GPU or several processes). Checkpoints are written every `ckpt_every` steps; an interrupted
# run resumes where it stopped when the stage is re-run with the same parameters.
#
# **Scale.** The cpu profile trains tiny U-Nets (`base_channels`, `levels`) for a few hundred steps: enough to
# compare configs against each other at equal budget, far from the paper's converged models.

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
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from afcore import data, ddpm
from afcore.train import prepare_run_dir, train_loop
from afcore.utils import pick_device, save_csv, save_figure, save_json, seed_everything

seed_everything(seed)
dev = pick_device(device)
for c in configs:
    ddpm.parse_config(c)  # fails early, naming the allowed configs
scheduler = ddpm.make_scheduler("ddpm")
CKPT = Path("checkpoints/configs")

# %%
def train_one(dataset: str, config: str):
    prepared = data.load_prepared(dataset)
    train_x = prepared["train"]
    fingerprint = dict(dataset=dataset, config=config, base=base_channels, levels=levels, attention=attention,
                       filter_method=filter_method,
                       steps=train_steps, batch=batch_size, lr=lr, ema=ema_decay, seed=seed,
                       n_train=int(len(train_x)))
    run_dir = prepare_run_dir(CKPT / dataset / config, fingerprint)  # other settings' checkpoint is not resumed
    seed_everything(seed)
    model = ddpm.ConfigUNet(config, in_channels=train_x.shape[1], base=base_channels, levels=levels,
                            attention=attention, filter_method=filter_method)

    def get_batch(step):
        g = torch.Generator().manual_seed(seed * 100003 + step)
        return train_x[torch.randint(0, len(train_x), (batch_size,), generator=g)], g.initial_seed()

    def loss_fn(m, batch, step):
        x0, batch_seed = batch
        return ddpm.ddpm_loss(m, x0, scheduler, torch.Generator().manual_seed(int(batch_seed) + 1)), {}

    model, ema, history = train_loop(model, loss_fn, get_batch, steps=train_steps, lr=lr, ckpt_dir=run_dir,
                                     ckpt_every=ckpt_every, ema_decay=ema_decay, device=str(dev),
                                     desc=f"{dataset}/{config}")
    ddpm.save_unet((ema or model).cpu(), run_dir / "unet.pt")
    return history, sum(h["seconds"] for h in history)  # survives resume, unlike a wall clock around the call


summary, curves = {"profile": profile, "steps": train_steps, "batch_size": batch_size,
                   "base_channels": base_channels, "levels": levels, "runs": {}}, []
for dataset in config_datasets:
    for config in configs:
        history, seconds = train_one(dataset, config)
        n_params = sum(p.numel() for p in ddpm.load_unet(CKPT / dataset / config / "unet.pt").parameters())
        tail = history[-max(1, len(history) // 5):]
        summary["runs"][f"{dataset}/{config}"] = {
            "final_loss_mean_last_20pct": sum(h["loss"] for h in tail) / len(tail),
            "trainable_parameters": n_params, "wall_seconds": seconds}
        curves += [{"run": f"{dataset}/{config}", "step": h["step"], "loss": h["loss"]} for h in history]
save_csv(curves, "metrics/12_configs_train_loss.csv")
save_json(summary, "metrics/12_configs_train.json")

# %%
fig, axes = plt.subplots(1, len(config_datasets), figsize=(6 * len(config_datasets), 3.6), squeeze=False)
for ax, dataset in zip(axes[0], config_datasets):
    for config in configs:
        pts = [c for c in curves if c["run"] == f"{dataset}/{config}"]
        steps = [p["step"] for p in pts]
        losses = torch.tensor([p["loss"] for p in pts])
        k = max(1, len(losses) // 20)
        smooth = torch.nn.functional.avg_pool1d(losses[None, None], k, 1)[0, 0] if len(losses) > k else losses
        ax.plot(steps[:len(smooth)], smooth, label=config)
    ax.set_title(f"{dataset}: training loss (moving average)")
    ax.set_xlabel("step")
    ax.set_yscale("log")
    ax.legend()
save_figure(fig, "figures/12_configs_train/loss.png")
plt.show()
summary["runs"]
