"""Stage ``configs_train`` (notebook 12_configs_train): one Config A-D DDPM U-Net trained on one data set.

The DVC stage is a matrix over ``configs.config_datasets`` x ``configs.configs`` (``ITEMS``); each member trains the
pair given by ``dataset`` and ``config`` once per training seed (``config_seeds`` of them, ``afcore.stages.seeds``):
DDPM (Ho et al. Algorithm 1, ``afcore.ddpm``) on the U-Net of ``afcore.config_unet``, through
``afcore.train.train_loop`` with resumable checkpoints in ``checkpoints/configs/<dataset>/<config>`` for the base seed
and ``.../<config>/seed<seed>`` for the others (trained after the base seed, whose folder they live in) (``unet.pt``: the EMA weights when ``ema_decay`` > 0). Within a seed
every config starts from the same generator state, draws the same batches and the same noise: the configs' common
random numbers.

This module also holds the ``Config`` of the whole ``configs`` section, which ``configs_eval`` and ``configs_report``
reuse: every key of ``base`` and ``configs`` plus the matrix item (``dataset``, ``config``).

Steps, in the order ``run`` calls them: ``setup``, ``load_inputs``, ``train``, ``summarise``, ``figure_loss``,
``write_outputs``.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from afcore import config_unet, ddpm, signal
from afcore.backend import code_path
from afcore import data as afdata
from afcore.stages.common import ConfigError, StageConfig, batch_sampler, make_generator, out_path, pick_device
from afcore.stages.seeds import seed_path, training_seeds
from afcore.train import prepare_run_dir, train_loop
from afcore.utils import save_csv, save_figure, save_json, seed_everything

QUALITY_SAMPLERS = ("ddim", "ancestral")
WEIGHT_DECAY = 0.01  # AdamW's, as in the reference code (torch's default)
ROTATION_PROTOCOLS = ("reference", "ddim")


@dataclasses.dataclass(frozen=True)
class Config(StageConfig):
    """The ``configs`` section (stages configs_train, configs_eval, configs_report) and the item of the matrix /
    foreach stages: ``dataset`` (configs_train, configs_eval) and ``config`` (configs_train)."""

    SECTIONS = ("base", "configs")

    profile: str = "cpu"
    seed: int = 0
    device: str = "auto"
    config_datasets: tuple[str, ...] = ("mnist",)
    configs: tuple[str, ...] = ("A", "B-1N", "D-1N")
    config_seeds: int = 5
    base_channels: int = 16
    levels: int = 2
    attention: str = "below_full"
    filter_method: str = "kaiser"
    train_steps: int = 250
    batch_size: int = 16
    lr: float = 0.001
    ema_decay: float = 0.995
    ckpt_every: int = 100
    amp: bool = False
    compile: bool = False
    n_samples: int = 200
    quality_sampler: str = "ddim"
    sample_steps: int = 25
    spsnr_shifts: tuple[float, ...] = (0.125, 0.25, 0.5)
    spsnr_images: int = 16
    rotation_protocol: str = "ddim"
    rotation_angles: tuple[float, ...] = (-90.0, 0.0, 90.0)
    rotation_seeds: int = 4
    rotation_boundary: str = "zeros"
    dataset: str = "mnist"  # the item of the configs_train matrix and the configs_eval foreach
    config: str = "A"       # the item of the configs_train matrix

    def check(self) -> None:
        def need(ok, key, allowed):
            if not ok:
                raise ConfigError(f"configs.{key}: {getattr(self, key)!r}; allowed: {allowed}")

        need(self.dataset in afdata.DATASETS, "dataset", list(afdata.DATASETS))
        need(self.config_datasets and all(d in afdata.DATASETS for d in self.config_datasets), "config_datasets",
             f"a non-empty list of {list(afdata.DATASETS)}")
        need(self.filter_method in config_unet.FILTERS, "filter_method", list(config_unet.FILTERS))
        for key, names in (("config", [self.config]), ("configs", self.configs)):
            for name in names:
                try:
                    config_unet.parse_config(name, self.filter_method)
                except ValueError:
                    raise ConfigError(f"configs.{key}: {name!r}; allowed: {list(config_unet.PAPER_CONFIGS)} "
                                      "(or B/C/D-<beta 0|1|2>[N])") from None
        need(len(self.configs) > 0, "configs", "a non-empty list, its first entry the baseline (A)")
        need(self.attention in config_unet.ATTENTION, "attention", list(config_unet.ATTENTION))
        need(self.quality_sampler in QUALITY_SAMPLERS, "quality_sampler", list(QUALITY_SAMPLERS))
        need(self.rotation_protocol in ROTATION_PROTOCOLS, "rotation_protocol", list(ROTATION_PROTOCOLS))
        need(self.rotation_boundary in signal.ROTATE_BOUNDARIES, "rotation_boundary", list(signal.ROTATE_BOUNDARIES))
        for key in ("base_channels", "levels", "batch_size", "sample_steps", "spsnr_images",
                    "rotation_seeds", "config_seeds"):
            need(getattr(self, key) >= 1, key, ">= 1")
        need(self.n_samples >= 2, "n_samples", ">= 2 (FID and KID need 2 samples)")
        need(self.train_steps >= 0, "train_steps", ">= 0")
        need(self.ckpt_every >= 0, "ckpt_every", ">= 0 (0: a checkpoint at the end only)")
        need(self.lr > 0, "lr", "> 0")
        need(0 <= self.ema_decay < 1, "ema_decay", "0 <= ema_decay < 1 (0: no EMA)")
        need(len(self.spsnr_shifts) > 0, "spsnr_shifts", "a non-empty list of shifts in pixels")
        need(len(self.rotation_angles) > 0, "rotation_angles", "a non-empty list of angles in degrees")

    @property
    def run_name(self) -> str:
        return f"{self.dataset}-{self.config}"

    @property
    def seeds(self) -> list[int]:
        """The training seeds: ``seed``, ``seed + 1000``, ... (``config_seeds`` of them)."""
        return training_seeds(self.seed, self.config_seeds)


def ITEMS(params) -> list[dict]:
    """The members of the DVC matrix: every data set of ``configs.config_datasets`` x every config, in dvc.yaml's
    order."""
    section = params["configs"]
    return [{"dataset": d, "config": c} for d in section["config_datasets"] for c in section["configs"]]


def checkpoint_dir(cfg: Config, root, seed: int | None = None, config: str | None = None) -> Path:
    """The run folder of ``config`` (default ``cfg.config``) trained with ``seed`` (default the base seed)."""
    seed = cfg.seed if seed is None else seed
    return seed_path(Path(root) / "checkpoints" / "configs" / cfg.dataset / (config or cfg.config), seed, cfg.seed)


def setup(cfg: Config, device: str) -> torch.device:
    """Seed everything and resolve ``device``."""
    seed_everything(cfg.seed)
    return pick_device(device, cfg.deterministic)


def load_inputs(cfg: Config, root) -> torch.Tensor:
    """The training images of ``cfg.dataset`` (``data/<dataset>.pt`` under ``root``)."""
    return afdata.load_prepared(cfg.dataset, root=str(Path(root) / "data"))["train"]


def train(cfg: Config, dev, root, train_x: torch.Tensor, seed: int | None = None):
    """Train the U-Net of ``cfg.config`` with training seed ``seed`` (default the base seed), resuming a checkpoint
    of the same settings, and save the sampling weights (EMA when kept) to ``unet.pt``; returns ``(model, ema or None,
    history)``."""
    seed = cfg.seed if seed is None else seed
    scheduler = ddpm.make_scheduler("ddpm")
    fingerprint = dict(dataset=cfg.dataset, config=cfg.config, base=cfg.base_channels, levels=cfg.levels,
                       attention=cfg.attention, filter_method=cfg.filter_method, steps=cfg.train_steps,
                       batch=cfg.batch_size, lr=cfg.lr, ema=cfg.ema_decay, seed=seed, n_train=int(len(train_x)),
                       data=afdata.checksum(train_x), weight_decay=WEIGHT_DECAY, code_path=code_path(),
                       amp=cfg.amp, architecture="reference-widths-v2")
    run_dir = prepare_run_dir(checkpoint_dir(cfg, root, seed), fingerprint)  # other settings: not resumed
    seed_everything(seed)  # the initial weights depend on the seed alone, not on what ran before
    model = config_unet.ConfigUNet(cfg.config, in_channels=train_x.shape[1], base=cfg.base_channels,
                                   levels=cfg.levels, attention=cfg.attention, filter_method=cfg.filter_method)
    get_batch = batch_sampler(train_x, batch_size=cfg.batch_size, seed=seed, device=dev)

    def loss_fn(m, batch, step):
        x0, batch_seed = batch
        return ddpm.ddpm_loss(m, x0, scheduler, make_generator(batch_seed + 1, x0.device)), {}

    model, ema, history = train_loop(model, loss_fn, get_batch, steps=cfg.train_steps, lr=cfg.lr, ckpt_dir=run_dir,
                                     ckpt_every=cfg.ckpt_every, ema_decay=cfg.ema_decay or None, device=str(dev),
                                     amp=cfg.amp, compile=cfg.compile, desc=f"{cfg.run_name} seed {seed}",
                                     weight_decay=WEIGHT_DECAY)
    config_unet.save_unet((ema or model).cpu(), run_dir / "unet.pt")
    return model, ema, history


def summarise(cfg: Config, dev, model, history: list[dict], seed: int | None = None) -> dict:
    """The metrics of one run: size, final loss (mean of the last 20 % of steps) and time (summed from the history,
    so it survives a resume; the median step skips the first 5 steps, which warm up)."""
    seconds = sum(h["seconds"] for h in history)
    tail = history[-max(1, len(history) // 5):]
    step_times = sorted(h["seconds"] for h in history[min(5, len(history) - 1):])
    return {"profile": cfg.profile, "dataset": cfg.dataset, "config": cfg.config, "device": str(dev),
            "seed": cfg.seed if seed is None else seed, "code_path": code_path(),
            "steps": cfg.train_steps, "batch_size": cfg.batch_size, "base_channels": cfg.base_channels,
            "levels": cfg.levels, "trainable_parameters": sum(p.numel() for p in model.parameters()),
            "final_loss_mean_last_20pct": sum(h["loss"] for h in tail) / len(tail),
            "train_seconds": seconds, "median_step_seconds": step_times[len(step_times) // 2]}


def train_seeds(cfg: Config, dev, root, train_x: torch.Tensor) -> tuple[dict, dict]:
    """Train (or resume) the pair once per training seed. Returns ``(summary, {seed: history})``: the summary holds
    the base seed's run at the top level (what downstream stages read) and every seed's run under ``"seeds"``."""
    runs, histories = [], {}
    for seed in cfg.seeds:
        model, _, histories[seed] = train(cfg, dev, root, train_x, seed)
        runs.append(summarise(cfg, dev, model, histories[seed], seed))
    summary = dict(runs[0], seeds=runs, n_seeds=len(runs),
                   train_seconds_all_seeds=sum(r["train_seconds"] for r in runs))
    return summary, histories


def _smooth(losses: torch.Tensor) -> tuple[torch.Tensor, int]:
    k = max(1, len(losses) // 20)
    return (torch.nn.functional.avg_pool1d(losses[None, None], k, 1)[0, 0] if len(losses) > k else losses), k


def figure_loss(cfg: Config, histories: dict):
    """The training loss per step of the base seed and the moving average over a twentieth of the run of every
    seed, log scale: the spread between seeds is the run-to-run noise every comparison has to beat."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.4))
    for i, (seed, history) in enumerate(histories.items()):
        steps = [h["step"] for h in history]
        losses = torch.tensor([h["loss"] for h in history], device="cpu")
        smooth, k = _smooth(losses)
        if i == 0:
            ax.plot(steps, losses, alpha=0.25, color="C0", label=f"seed {seed}, per step")
        ax.plot(steps[k - 1:][:len(smooth)], smooth, color=f"C{i}", label=f"seed {seed}, moving average ({k})")
    ax.set(title=f"{cfg.dataset} / {cfg.config}: training loss", xlabel="step", ylabel="epsilon MSE", yscale="log")
    ax.legend(fontsize=7)
    return fig


def write_outputs(cfg: Config, summary: dict, histories: dict, out_dir, fig=None) -> None:
    """``metrics/configs_train/<dataset>-<config>.json`` and ``..._loss.csv`` (step, seed, loss), and the loss figure
    when given."""
    save_csv([{"step": h["step"], "seed": seed, "loss": h["loss"]} for seed, hist in histories.items() for h in hist],
             out_path(out_dir, "metrics", "configs_train", f"{cfg.run_name}_loss.csv"))
    save_json(summary, out_path(out_dir, "metrics", "configs_train", f"{cfg.run_name}.json"))
    if fig is not None:
        save_figure(fig, out_path(out_dir, "figures", "12_configs_train", f"{cfg.run_name}.png"))


def run(cfg: Config, device: str, out_dir) -> dict:
    """Train (or resume) one (data set, config) pair under ``out_dir``, every training seed; returns its metrics."""
    import matplotlib.pyplot as plt

    dev = setup(cfg, device)
    train_x = load_inputs(cfg, out_dir)
    summary, histories = train_seeds(cfg, dev, out_dir, train_x)
    fig = figure_loss(cfg, histories)
    write_outputs(cfg, summary, histories, out_dir, fig)
    plt.close(fig)
    return summary
