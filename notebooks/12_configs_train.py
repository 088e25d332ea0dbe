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
# (accelerate: the same loop runs on CPU, one GPU or several processes); the U-Net is `afcore.config_unet`, the
# diffusion process `afcore.ddpm`, the stage's steps `afcore.stages.configs_train`. Batches and noise are drawn on
# the device from seeded generators. Checkpoints are written every `ckpt_every` steps; an interrupted run resumes
# where it stopped when the stage is re-run with the same parameters.
#
# **One pair per stage, every training seed.** The DVC stage `configs_train` is a matrix over `config_datasets` x
# `configs`: each (data set, config) pair is its own stage (`dvc repro configs_train@mnist-D-1N`), so runs resume and
# re-run independently. This notebook trains the pair given by `dataset` and `config` once per training seed
# (`config_seeds` of them: `seed`, `seed + 1000`, ...). The seed, not the image, is the unit of replication: two
# trainings that differ only in their seed end up with networks whose shift equivariance differs by more than the
# error over images of either one, so notebook 13 compares configs seed by seed. Within a seed every config starts
# from the same generator state (the same initial weights wherever the shapes agree) and draws the same batches and
# noise: the comparison between configs uses common random numbers.
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
config_datasets = ["mnist"]
configs = ["A", "B-1N", "D-1N"]
config_seeds = 5
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
rotation_protocol = "ddim"
rotation_angles = [-90.0, 0.0, 90.0]
rotation_seeds = 4
rotation_boundary = "zeros"

# %%
import matplotlib.pyplot as plt

from afcore.stages import configs_train as stage

cfg = stage.Config.from_mapping(globals())  # fails early on an unknown config, naming the allowed ones
dev = stage.setup(cfg, cfg.device)

# %% [markdown]
# ## Training
# A checkpoint left by other settings (a different fingerprint: data set, config, widths, steps, ...) is deleted
# rather than resumed. The initial weights come from the seed alone; each step's batch is drawn from a generator
# seeded by `(seed, step)` and its timesteps and noise from one seeded by the batch's seed, so a resumed run sees
# exactly the draws of an uninterrupted one. The sampling weights (the EMA when `ema_decay` > 0) go to
# `checkpoints/configs/<dataset>/<config>/unet.pt` for the base seed and `.../<config>/seed<seed>/unet.pt` for the
# others. The fingerprint that decides whether a checkpoint is resumed records the seed, the thread count and the code
# path (compiled CPU kernel, Triton, torch.compile), because only runs that agree on all three agree bit for bit.

# %%
train_x = stage.load_inputs(cfg, ".")
summary, histories = stage.train_seeds(cfg, dev, ".", train_x)

# %% [markdown]
# ## Loss and cost
# Training seconds are summed from the per-step history, so they survive a resume (a wall clock around the call
# would not); the median step time skips the first steps, which warm up. The figure overlays every seed's smoothed
# loss: their spread is the run-to-run noise the comparisons of notebook 13 have to beat.

# %%
fig = stage.figure_loss(cfg, histories)
stage.write_outputs(cfg, summary, histories, ".", fig)
plt.show()
{k: v for k, v in summary.items() if k != "seeds"}
