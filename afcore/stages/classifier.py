"""Stage ``classifier`` (notebook 11_classifier): the feature extractors behind IS / FID / KID.

A small CNN (``evaluation.DigitClassifier``) is trained on each labelled set (``classifier_datasets``); each unlabelled
set (``random_feature_datasets``) gets a frozen seeded random CNN of the same architecture. Each is saved to
``checkpoints/classifier/<name>.pt``; a sanity table compares held-out test images with a second half of them, the
same half noisy, blurred, and pure noise, in each extractor's feature space.

Steps, in the order ``run`` calls them: ``setup``, ``train_classifier`` (per labelled set), ``random_extractor``
(per unlabelled set), ``figure_loss``, ``sanity_rows``, ``write_outputs``.
"""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import torch
from tqdm.auto import tqdm

from afcore import data as afdata
from afcore import evaluation
from afcore.stages.common import ConfigError, StageConfig, batch_sampler, make_generator, out_path, pick_device
from afcore.train import train_loop
from afcore.utils import save_figure, save_json, seed_everything

FIG = Path("figures/11_classifier")
METRICS = Path("metrics/11_classifier.json")
SANITY = (("other test images", "other"), ("other + noise 0.2", "noisy"), ("other blurred 3x3", "blurred"),
          ("pure noise images", "pure_noise"))


@dataclasses.dataclass(frozen=True)
class Config(StageConfig):
    SECTIONS = ("base", "classifier")

    profile: str = "cpu"
    seed: int = 0
    device: str = "auto"
    classifier_datasets: tuple[str, ...] = ("mnist", "mnist_m")
    random_feature_datasets: tuple[str, ...] = ("natural32",)
    classifier_steps: int = 600
    classifier_batch: int = 64
    classifier_lr: float = 0.002
    sanity_images: int = 500

    def check(self) -> None:
        for key in ("classifier_datasets", "random_feature_datasets"):
            for name in getattr(self, key):
                if name not in afdata.DATASETS:
                    raise ConfigError(f"classifier.{key}: unknown {name!r}; allowed: {list(afdata.DATASETS)}")
        if self.classifier_steps < 1:
            raise ConfigError(f"classifier.classifier_steps: {self.classifier_steps}; allowed: >= 1")
        if self.classifier_batch < 2:
            raise ConfigError(f"classifier.classifier_batch: {self.classifier_batch}; allowed: >= 2 (BatchNorm)")
        if not self.classifier_lr > 0:
            raise ConfigError(f"classifier.classifier_lr: {self.classifier_lr}; allowed: > 0")
        if self.sanity_images < 2:
            raise ConfigError(f"classifier.sanity_images: {self.sanity_images}; allowed: >= 2 (FID and KID need 2)")


def setup(cfg: Config, device: str) -> torch.device:
    """Seed everything and resolve ``device``. On the CPU the stage runs on one thread (a small CNN: one thread is
    as fast and immune to core contention; the thread count also fixes the order of float sums)."""
    seed_everything(cfg.seed)
    dev = pick_device(device, cfg.deterministic)
    if dev.type == "cpu":
        torch.set_num_threads(1)
    return dev


def classifier_path(root, name: str) -> Path:
    return Path(root) / "checkpoints" / "classifier" / f"{name}.pt"


def train_classifier(cfg: Config, name: str, dev, root) -> tuple[dict, list[dict]]:
    """Train the CNN on data set ``name`` from scratch (seeded batches on the device), recompute its BatchNorm
    statistics, save it; returns its metrics entry (test accuracy) and the training history."""
    prepared = afdata.load_prepared(name, root=str(Path(root) / "data"))
    if prepared["train_labels"] is None:
        raise ConfigError(f"classifier.classifier_datasets: {name!r} has no labels; "
                          "allowed: labelled sets (mnist, mnist_m)")
    train_x, train_y = prepared["train"], prepared["train_labels"]
    sampler = batch_sampler(train_x, train_y, batch_size=cfg.classifier_batch, seed=cfg.seed, device=dev)

    def get_batch(step):
        images, labels, _ = sampler(step)
        return images, labels

    ckpt_dir = Path(root) / "checkpoints" / "classifier" / f"{name}_run"
    shutil.rmtree(ckpt_dir, ignore_errors=True)  # a stage run trains from scratch; resume is for interruptions
    model, _, history = train_loop(evaluation.DigitClassifier(train_x.shape[1]), evaluation.classifier_loss,
                                   get_batch, steps=cfg.classifier_steps, lr=cfg.classifier_lr, ckpt_dir=ckpt_dir,
                                   device=str(dev), desc=f"classifier {name}")
    # a short run's momentum-averaged BatchNorm statistics lag behind the weights: recompute them exactly
    model = evaluation.calibrate_batchnorm(model, train_x.to(dev))
    evaluation.save_classifier(model.cpu(), classifier_path(root, name))
    acc = evaluation.accuracy(model.to(dev), prepared["test"].to(dev), prepared["test_labels"].to(dev))
    return {"test_accuracy": acc, "test_images": int(len(prepared["test"]))}, history


def random_extractor(cfg: Config, name: str, dev, root) -> dict:
    """Save the frozen seeded random CNN of data set ``name`` (BatchNorm calibrated on its training images)."""
    if not (Path(root) / "data" / f"{name}.pt").exists():
        raise ConfigError(f"classifier.random_feature_datasets: data/{name}.pt missing; "
                          f"run the data stage with {name!r}")
    prepared = afdata.load_prepared(name, root=str(Path(root) / "data"))
    features = evaluation.random_features(prepared["train"].shape[1], cfg.seed, calibrate=prepared["train"].to(dev))
    evaluation.save_classifier(features.cpu(), classifier_path(root, name))
    return {"features": f"rand-{name}", "note": "frozen seeded random CNN (no labels)"}


def figure_loss(histories: dict):
    """Training cross-entropy per step, one line per labelled set; ``histories``: name -> (history, accuracy)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, (history, acc) in histories.items():
        ax.plot([h["step"] for h in history], [h["loss"] for h in history], label=f"{name} (test acc {acc:.3f})")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy")
    ax.legend()
    return fig


def sanity_rows(cfg: Config, dev, root) -> list[dict]:
    """For each data set, its first test half against the second half: as is, + Gaussian noise of std 0.2, blurred
    3x3, and pure noise images; FID, KID x100 (+- its std over subsets) and IS (classifiers only) per pair."""
    rows = []
    for name in tqdm(list(cfg.classifier_datasets) + list(cfg.random_feature_datasets), desc="sanity table"):
        prepared = afdata.load_prepared(name, root=str(Path(root) / "data"))
        feats = evaluation.load_classifier(classifier_path(root, name))
        n = min(cfg.sanity_images, len(prepared["test"]), len(prepared["train"]))
        half = min(n, len(prepared["test"]) // 2)
        test, other = prepared["test"][:half].to(dev), prepared["test"][half:2 * half].to(dev)
        fakes = {
            "other": other,
            "noisy": (other + 0.2 * torch.randn(other.shape, generator=make_generator(cfg.seed, dev),
                                                device=dev)).clamp(-1, 1),
            "blurred": torch.nn.functional.avg_pool2d(other, 3, stride=1, padding=1, count_include_pad=False),
            "pure_noise": torch.randn(other.shape, generator=make_generator(cfg.seed + 1, dev),
                                      device=dev).clamp(-1, 1),
        }
        key = f"{feats.feature_kind}-{name}"
        for label, which in SANITY:
            m = evaluation.fid_kid_is(test, fakes[which], feats, tag=name, kid_subset=min(100, n), device=dev)
            rows.append({"dataset": name, "features": key, "compared": label, "images": half,
                         "FID": m[f"FID[{key}]"], "KIDx100": m[f"KIDx100[{key}]"],
                         "KIDx100_std": m[f"KIDx100_std[{key}]"],
                         "IS": m[f"IS[{key}]"] if feats.feature_kind == "clf" else float("nan")})
    return rows


def write_outputs(results: dict, out_dir, fig=None) -> None:
    """``metrics/11_classifier.json`` and, when given, the loss figure ``figures/11_classifier/loss.png``."""
    if fig is not None:
        save_figure(fig, out_path(out_dir, FIG, "loss.png"))
    save_json(results, out_path(out_dir, METRICS))


def run(cfg: Config, device: str, out_dir) -> dict:
    """The whole stage under ``out_dir`` (reads ``data/``, writes ``checkpoints/classifier/``, metrics, figure);
    returns the metrics dict. The CPU thread count is restored afterwards."""
    import matplotlib.pyplot as plt

    threads = torch.get_num_threads()
    try:
        dev = setup(cfg, device)
        results = {"profile": cfg.profile, "steps": cfg.classifier_steps, "batch": cfg.classifier_batch}
        histories = {}
        for name in cfg.classifier_datasets:
            results[name], history = train_classifier(cfg, name, dev, out_dir)
            histories[name] = (history, results[name]["test_accuracy"])
        for name in cfg.random_feature_datasets:
            results[name] = random_extractor(cfg, name, dev, out_dir)
        fig = figure_loss(histories)
        results["sanity"] = sanity_rows(cfg, dev, out_dir)
        write_outputs(results, out_dir, fig)
        plt.close(fig)
        return results
    finally:
        torch.set_num_threads(threads)
