"""Stage ``data`` (notebook 10_data): the 32x32 data sets of the Config A-E study, split into train/test and saved to
``data/<name>.pt``, with sha256 checksums of every split in ``metrics/10_data.json`` so a rerun can be checked byte
for byte.

Steps, in the order ``run`` calls them: ``setup`` (seeds, device check), ``build`` (the images, labels and a
description per data set), ``save_splits`` (seeded train/test split, ``data/<name>.pt``, the summary),
``figure_samples`` (a 6x6 grid per set) and ``write_outputs`` (the metrics JSON and the figure).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from afcore import data as afdata
from afcore.stages.common import ConfigError, StageConfig, out_path, pick_device
from afcore.utils import save_figure, save_json, save_torch, seed_everything

FIG = Path("figures/10_data")
METRICS = Path("metrics/10_data.json")


@dataclasses.dataclass(frozen=True)
class Config(StageConfig):
    SECTIONS = ("base", "data")

    profile: str = "cpu"
    seed: int = 0
    device: str = "auto"
    datasets: tuple[str, ...] = ("mnist", "mnist_m", "natural32")
    source: str = "embedded"
    n_images: int = 5000
    test_fraction: float = 0.2

    def check(self) -> None:
        for name in self.datasets:
            if name not in afdata.DATASETS:
                raise ConfigError(f"data.datasets: unknown {name!r}; allowed: {list(afdata.DATASETS)}")
        if not self.datasets:
            raise ConfigError(f"data.datasets: empty; allowed: a list of {list(afdata.DATASETS)}")
        if self.source not in afdata.SOURCES:
            raise ConfigError(f"data.source: {self.source!r}; allowed: {list(afdata.SOURCES)}")
        if self.n_images < 2:
            raise ConfigError(f"data.n_images: {self.n_images}; allowed: >= 2 (a train and a test image)")
        if not 0 < self.test_fraction < 1:
            raise ConfigError(f"data.test_fraction: {self.test_fraction}; allowed: 0 < test_fraction < 1")


def setup(cfg: Config, device: str) -> torch.device:
    """Seed everything (``cfg.seed``) and resolve ``device`` (checked, though the data sets are built on the CPU)."""
    dev = pick_device(device, cfg.deterministic)
    seed_everything(cfg.seed)
    return dev


def build(cfg: Config) -> dict:
    """``{name: (images, labels or None, description)}`` for every data set of ``cfg.datasets`` (images (N, C, 32, 32)
    in [-1, 1]). MNIST-M is built from the same digits, so it shares their labels."""
    digits, digit_labels = afdata.mnist(source=cfg.source, n=cfg.n_images)
    built = {}
    for name in cfg.datasets:
        if name == "mnist":
            built[name] = (digits, digit_labels, f"MNIST ({cfg.source})")
        elif name == "mnist_m":
            built[name] = (afdata.mnist_m(digits, seed=cfg.seed), digit_labels,
                           "MNIST-M built from the MNIST digits + photo patches")
        elif name == "natural32":
            built[name] = (afdata.natural32(cfg.n_images, seed=cfg.seed), None,
                           "natural32: scikit-image photo crops (CIFAR-10 stand-in)")
        else:
            images, labels = afdata.cifar10(source=cfg.source)
            built[name] = (images[:cfg.n_images], labels[:cfg.n_images], "CIFAR-10 via datasets")
    return built


def save_splits(cfg: Config, built: dict, out_dir) -> dict:
    """Split each set (seeded), write ``data/<name>.pt`` under ``out_dir`` and return the summary (sizes, shapes,
    sha256 of each split): the content of ``metrics/10_data.json``."""
    summary = {"profile": cfg.profile, "source": cfg.source, "datasets": {}}
    for name, (images, labels, description) in built.items():
        parts = afdata.split(images, labels, cfg.test_fraction, cfg.seed)
        sums = {split: afdata.checksum(parts[split]) for split in ("train", "test")}
        parts.update(name=name, description=description, sha256=sums)  # load_prepared verifies them
        save_torch(parts, out_path(out_dir, "data", f"{name}.pt"))
        summary["datasets"][name] = {
            "description": description, "train": int(parts["train"].shape[0]), "test": int(parts["test"].shape[0]),
            "shape": list(images.shape[1:]), "labelled": labels is not None,
            "sha256_train": sums["train"], "sha256_test": sums["test"],
        }
    return summary


def figure_samples(built: dict):
    """The first 36 images of each set as a 6x6 grid, one panel per set."""
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, len(built), figsize=(4 * len(built), 4.2))
    for ax, (name, (images, _, _)) in zip(np.atleast_1d(axes), built.items()):
        grid = images[:36]
        k = int(len(grid) ** 0.5)
        grid = grid[:k * k].view(k, k, *grid.shape[1:]).permute(0, 3, 1, 4, 2).reshape(
            k * grid.shape[-2], k * grid.shape[-1], grid.shape[1])
        ax.imshow(((grid + 1) / 2).clamp(0, 1).squeeze(-1).numpy(), cmap="gray" if grid.shape[-1] == 1 else None)
        ax.set_title(name)
        ax.axis("off")
    return fig


def write_outputs(summary: dict, out_dir, fig=None) -> None:
    """``metrics/10_data.json`` and, when given, the sample figure ``figures/10_data/samples.png``."""
    if fig is not None:
        save_figure(fig, out_path(out_dir, FIG, "samples.png"))
    save_json(summary, out_path(out_dir, METRICS))


def run(cfg: Config, device: str, out_dir) -> dict:
    """The whole stage: data files, metrics and figure under ``out_dir``; returns the summary."""
    import matplotlib.pyplot as plt

    setup(cfg, device)
    built = build(cfg)
    summary = save_splits(cfg, built, out_dir)
    fig = figure_samples(built)
    write_outputs(summary, out_dir, fig)
    plt.close(fig)
    return summary
