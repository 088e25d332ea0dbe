# %% [markdown]
# # 12 · Training one Config A–D DDPM U-Net
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
# The network is the reference's (width $b$ at full resolution, $2b$, $4b$, $4b$ below; decoder
# $8b \to 2b$, $4b \to b$, $2b \to b$; self-attention after every down and up block, the full-resolution one
# included; the cpu profile sets `attention = "below_full"`, dropping the full-resolution attention whose 1024-token
# softmax costs about five times the rest of a CPU training step). Training is DDPM (Ho et al. Algorithm 1): linear betas $10^{-4}$..$0.02$, $T = 1000$, timesteps drawn
# from $1..T-1$ as the reference does, $\epsilon$-prediction MSE, AdamW, through `afcore.train.train_loop`
# (accelerate: the same loop runs on CPU, one GPU or several processes). Batches and noise are drawn on the device
# from seeded generators. Checkpoints are written every `ckpt_every` steps; an interrupted run resumes where it
# stopped when the stage is re-run with the same parameters.
#
# **One run per stage.** The DVC stage `configs_train` is a matrix over `config_datasets` x `configs`: each
# (data set, config) pair is its own stage (`dvc repro configs_train@mnist-D-1N`), so runs resume and re-run
# independently. This notebook trains the pair given by `dataset` and `config`.
#
# **Scale.** The cpu profile trains small U-Nets (`base_channels`, `levels`) for a few hundred steps: enough to
# compare configs against each other at equal budget, far from the paper's converged models. Differences from the
# reference code's training: the optimiser steps are counted instead of epochs, gradients are clipped at norm 1, and
# an EMA of the weights is kept (`ema_decay`; the reference keeps none; 0 turns it off) because short runs sample
# better from the average.

# %% tags=["parameters"]
profile = "cpu"
seed = 0
device = "auto"
deterministic = True
dataset = "mnist"
config = "A"
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
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from afcore import data, ddpm
from afcore.train import batch_sampler, prepare_run_dir, train_loop
from afcore.utils import make_generator, pick_device, save_csv, save_figure, save_json, seed_everything

seed_everything(seed)
dev = pick_device(device, deterministic)
ddpm.parse_config(config, filter_method)  # fails early, naming the allowed configs
scheduler = ddpm.make_scheduler("ddpm")
run_name = f"{dataset}-{config}"
CKPT = Path("checkpoints/configs") / dataset / config

# %%
prepared = data.load_prepared(dataset)
train_x = prepared["train"]
fingerprint = dict(dataset=dataset, config=config, base=base_channels, levels=levels, attention=attention,
                   filter_method=filter_method, steps=train_steps, batch=batch_size, lr=lr, ema=ema_decay,
                   seed=seed, n_train=int(len(train_x)), amp=amp, architecture="reference-widths-v2")
run_dir = prepare_run_dir(CKPT, fingerprint)  # a checkpoint of other settings is not resumed
seed_everything(seed)
model = ddpm.ConfigUNet(config, in_channels=train_x.shape[1], base=base_channels, levels=levels,
                        attention=attention, filter_method=filter_method)
get_batch = batch_sampler(train_x, batch_size=batch_size, seed=seed, device=dev)


def loss_fn(m, batch, step):
    x0, batch_seed = batch
    return ddpm.ddpm_loss(m, x0, scheduler, make_generator(batch_seed + 1, x0.device)), {}


model, ema, history = train_loop(model, loss_fn, get_batch, steps=train_steps, lr=lr, ckpt_dir=run_dir,
                                 ckpt_every=ckpt_every, ema_decay=ema_decay or None, device=str(dev),
                                 amp=amp, compile=compile, desc=run_name)
ddpm.save_unet((ema or model).cpu(), run_dir / "unet.pt")

# %%
seconds = sum(h["seconds"] for h in history)  # survives resume, unlike a wall clock around the call
tail = history[-max(1, len(history) // 5):]
step_times = sorted(h["seconds"] for h in history[min(5, len(history) - 1):])  # the first steps warm up
summary = {"profile": profile, "dataset": dataset, "config": config, "device": str(dev),
           "steps": train_steps, "batch_size": batch_size, "base_channels": base_channels, "levels": levels,
           "trainable_parameters": sum(p.numel() for p in model.parameters()),
           "final_loss_mean_last_20pct": sum(h["loss"] for h in tail) / len(tail),
           "train_seconds": seconds, "median_step_seconds": step_times[len(step_times) // 2]}
Path("metrics/configs_train").mkdir(parents=True, exist_ok=True)
save_csv([{"step": h["step"], "loss": h["loss"]} for h in history], f"metrics/configs_train/{run_name}_loss.csv")
save_json(summary, f"metrics/configs_train/{run_name}.json")

losses = torch.tensor([h["loss"] for h in history], device="cpu")
k = max(1, len(losses) // 20)
smooth = torch.nn.functional.avg_pool1d(losses[None, None], k, 1)[0, 0] if len(losses) > k else losses
fig, ax = plt.subplots(figsize=(6, 3.4))
ax.plot([h["step"] for h in history], losses, alpha=0.3, label="per step")
ax.plot([h["step"] for h in history][k - 1:][:len(smooth)], smooth, label=f"moving average ({k} steps)")
ax.set(title=f"{dataset} / {config}: training loss", xlabel="step", ylabel="epsilon MSE", yscale="log")
ax.legend()
save_figure(fig, f"figures/12_configs_train/{run_name}.png")
plt.show()
summary
