"""Stage ``configs_eval`` (notebook 13_configs_eval): every trained Config U-Net of one data set, evaluated.

A foreach over ``configs.config_datasets`` (``ITEMS``); the config is ``configs_train.Config`` with ``dataset`` set.
For each config: sample quality (IS / FID / KID x100 with the classifier features of stage ``classifier``), shift
equivariance of the denoiser and of whole samples (SPSNR per image and shift, mean +- standard error), the training
step's cost relative to the first config (measured side by side, configs interleaved), and Config E: progressive
rotation during sampling with a rotation-consistency PSNR per seed.

Steps, in the order ``run`` calls them: ``setup``, ``load_inputs``, ``quality_and_spsnr``, ``figure_samples``,
``training_cost``, ``rotation``, ``rotation_frames``, ``figure_rotation``, ``summarise``, ``write_outputs``.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from afcore import config_unet, ddpm, evaluation, metrics, signal
from afcore import data as afdata
from afcore.stages.common import Timer, make_generator, mean_sem, out_path, pick_device
from afcore.stages.configs_train import Config  # the configs section + dataset, shared with configs_train
from afcore.utils import save_csv, save_figure, save_gif, save_json, seed_everything

FIG = Path("figures/13_configs_eval")
OUT = Path("metrics/configs_eval")
COST_REPEATS = 6  # training steps timed per config; the first is dropped (warm-up)
CONVENTIONS = ("IS/FID/KIDx100 with classifier features (clf-{dataset}), not Inception; KIDx100_std = standard "
               "deviation over KID subsets; SPSNR peak 2, per image and shift, mean +- standard error; denoiser: "
               "cropped shifts of x_t; samples: circular shifts of the initial noise, non-wrapped pixels; rotation "
               "PSNR peak 2 in the inscribed circle, mean +- standard error over seeds")


def ITEMS(params) -> list[dict]:
    """The members of the DVC foreach: one per data set of ``configs.config_datasets``."""
    return [{"dataset": d} for d in params["configs"]["config_datasets"]]


def setup(cfg: Config, device: str) -> torch.device:
    """Seed everything and resolve ``device``."""
    warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
    seed_everything(cfg.seed)
    return pick_device(device, cfg.deterministic)


def load_unet(cfg: Config, config: str, dev, root):
    """The trained U-Net of ``config`` on ``cfg.dataset`` (stage configs_train), in eval mode on ``dev``."""
    return config_unet.load_unet(Path(root) / "checkpoints" / "configs" / cfg.dataset / config / "unet.pt").to(dev)


def noise(n: int, shape, seed: int, dev) -> torch.Tensor:
    """``n`` standard normal images of ``shape``, drawn on ``dev`` from a generator seeded by ``seed``."""
    return torch.randn(n, *shape, generator=make_generator(seed, dev), device=dev)


def load_inputs(cfg: Config, dev, root) -> dict:
    """The data set (``prepared``), its test images (``real``), their ``shape`` and the feature ``classifier``."""
    prepared = afdata.load_prepared(cfg.dataset, root=str(Path(root) / "data"))
    real = prepared["test"]
    classifier = evaluation.load_classifier(Path(root) / "checkpoints" / "classifier" / f"{cfg.dataset}.pt")
    return {"prepared": prepared, "real": real, "shape": tuple(real.shape[1:]), "classifier": classifier}


@torch.no_grad()
def quality_and_spsnr(cfg: Config, dev, root, inputs: dict) -> tuple[list[dict], list[dict], dict]:
    """Per config: IS / FID / KID x100 of ``n_samples`` samples (the paper's numbers beside them when it has the
    row), the denoiser's SPSNR at t = 500 under cropped shifts and the samples' SPSNR under circular shifts of the
    initial noise. Returns ``(table rows, per-shift rows, {config: first 16 samples})``."""
    real, shape = inputs["real"], inputs["shape"]
    rows, spsnr_rows, sample_grids = [], [], {}
    z = noise(cfg.n_samples, shape, cfg.seed + 1, dev)
    x_t_clean = real[:cfg.spsnr_images].to(dev)
    t_mid = torch.full((cfg.spsnr_images,), 500, device=dev)
    x_t = ddpm.make_scheduler().add_noise(x_t_clean, noise(cfg.spsnr_images, shape, cfg.seed + 2, dev), t_mid)
    z_small = noise(min(8, cfg.spsnr_images), shape, cfg.seed + 3, dev)
    for config in tqdm(cfg.configs, desc=f"{cfg.dataset}: quality and SPSNR"):
        model = load_unet(cfg, config, dev, root)
        if cfg.quality_sampler == "ancestral":  # the reference's 999-step sampler, as the paper's table was made
            fake = torch.cat([ddpm.ancestral_sample(model, z[i:i + 500], make_generator(cfg.seed + 6 + i, dev))
                              for i in range(0, cfg.n_samples, 500)])
        else:
            fake = torch.cat([ddpm.sample(model, z[i:i + 500], steps=cfg.sample_steps)
                              for i in range(0, cfg.n_samples, 500)])
        sample_grids[config] = fake[:16].cpu()
        quality = evaluation.quality_metrics(real, fake, inputs["classifier"], cfg.dataset, device=dev)
        row = {"dataset": cfg.dataset, "config": config, "samples": cfg.n_samples, "real_test_images": int(len(real)),
               **{k.split("[")[0]: v for k, v in quality.items()}, "features": f"clf-{cfg.dataset}"}
        paper = config_unet.PAPER_TABLE.get(config_unet.PAPER_DATASET.get(cfg.dataset, ""), {}).get(config)
        row.update({"paper_IS": paper[0], "paper_FID": paper[1], "paper_KIDx100": paper[2]} if paper else {})
        base_samples = ddpm.sample(model, z_small, steps=cfg.sample_steps)
        den, smp = [], []
        for d in cfg.spsnr_shifts:
            den_d = metrics.spsnr(lambda x: model(x, t_mid), x_t, (0.0, d), per_sample=True).tolist()
            smp_d = metrics.spsnr(lambda x: ddpm.sample(model, x, steps=cfg.sample_steps), z_small, (0.0, d),
                                  mode="circular-valid", fx=base_samples, per_sample=True).tolist()
            den += den_d
            smp += smp_d
            spsnr_rows.append({"dataset": cfg.dataset, "config": config, "shift": d,
                               "denoiser_spsnr_db": float(np.mean(den_d)), "sample_spsnr_db": float(np.mean(smp_d))})
        row["denoiser_spsnr_db"], row["denoiser_spsnr_sem"] = mean_sem(den)
        row["sample_spsnr_db"], row["sample_spsnr_sem"] = mean_sem(smp)
        rows.append(row)
    return rows, spsnr_rows, sample_grids


def figure_samples(cfg: Config, sample_grids: dict):
    """The first samples of each config as a square grid, one panel per config."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(cfg.configs), figsize=(2.6 * len(cfg.configs), 2.9), squeeze=False)
    for ax, config in zip(axes[0], cfg.configs):
        g = sample_grids[config]
        k = int(np.sqrt(len(g)))
        grid = g[:k * k].view(k, k, *g.shape[1:]).permute(0, 3, 1, 4, 2).reshape(k * g.shape[-2], k * g.shape[-1], -1)
        ax.imshow(((grid + 1) / 2).clamp(0, 1).squeeze(-1).numpy(), cmap="gray")
        ax.set_title(f"{cfg.dataset} {config}", fontsize=9)
        ax.axis("off")
    return fig


def training_cost(cfg: Config, dev, root, inputs: dict) -> tuple[dict, dict]:
    """Seconds of one training step (DDPM loss, forward + backward) per config on the same batch of ``batch_size``
    training images, configs interleaved over ``COST_REPEATS`` rounds so drifts in machine load hit all alike;
    median without the first round. Returns ``(step seconds, relative to the first config)``."""
    x0 = inputs["prepared"]["train"][:cfg.batch_size].to(dev)
    models = {c: load_unet(cfg, c, dev, root).train() for c in cfg.configs}
    times = {c: [] for c in cfg.configs}
    scheduler = ddpm.make_scheduler()
    with torch.enable_grad():
        for rep in tqdm(range(COST_REPEATS), desc=f"{cfg.dataset}: step cost"):
            for c in cfg.configs:
                with Timer(dev) as timer:
                    ddpm.ddpm_loss(models[c], x0, scheduler, make_generator(rep, dev)).backward()
                times[c].append(timer.seconds)
    step_seconds = {c: float(np.median(times[c][1:])) for c in cfg.configs}
    cost_rel = {c: step_seconds[c] / step_seconds[cfg.configs[0]] for c in cfg.configs}
    return step_seconds, cost_rel


def rotation_configs(cfg: Config) -> list[str]:
    """Config E is run for the first config (the baseline) and the last D config (else the last config)."""
    d_configs = [c for c in cfg.configs if c.startswith("D")]
    return [cfg.configs[0]] + (d_configs[-1:] if d_configs else list(cfg.configs[-1:]))


@torch.no_grad()
def rotation(cfg: Config, dev, root, shape) -> tuple[list[dict], dict]:
    """Config E: for each of ``rotation_configs`` and angle phi, sample with progressive rotation from the same noise
    and compare (PSNR in the inscribed circle, per seed) with the plain sample rotated afterwards by the same total
    angle. Returns ``(rows, {phi: [first rotated sample per config]})``."""
    rot = "spline-wrap" if cfg.rotation_protocol == "reference" else "fourier"
    mask = signal.inscribed_circle_mask(*shape[-2:], margin=1.0, device=dev)
    z_rot = noise(cfg.rotation_seeds, shape, cfg.seed + 4, dev)

    def generate(model, phi):
        if cfg.rotation_protocol == "reference":
            return ddpm.ancestral_sample(model, z_rot, make_generator(cfg.seed + 5, dev), rotate_to=phi, rotation=rot)
        return ddpm.sample(model, z_rot, steps=cfg.sample_steps, rotate_to=phi, rotation=rot,
                           boundary=cfg.rotation_boundary)

    rows, frames = [], {}
    for config in tqdm(rotation_configs(cfg), desc=f"{cfg.dataset}: Config E rotation"):
        model = load_unet(cfg, config, dev, root)
        plain = generate(model, 0.0)
        for phi in cfg.rotation_angles:
            rotated = generate(model, phi) if phi else plain
            total = ddpm.applied_rotation(phi, cfg.rotation_protocol, cfg.sample_steps)
            target = ddpm.rotate_step(plain, total, rot, cfg.rotation_boundary)
            per_seed = metrics.psnr(rotated * mask, target * mask, mask, per_sample=True).clamp(max=100.0)
            mean, sem = mean_sem(per_seed)
            rows.append({"dataset": cfg.dataset, "config": config, "angle": phi, "psnr_db": mean, "psnr_sem": sem})
            frames.setdefault(phi, []).append(rotated[0].cpu())
    return rows, frames


def rotation_frames(cfg: Config, frames: dict) -> list[np.ndarray]:
    """GIF frames: the configs side by side at each angle, 4x enlarged, there and back."""
    gif = [((torch.cat(frames[phi], dim=-1).permute(1, 2, 0) + 1) / 2).clamp(0, 1).squeeze(-1).numpy()
           for phi in cfg.rotation_angles]
    gif = [np.kron(f, np.ones((4, 4) + ((1,) if f.ndim == 3 else ()))) for f in gif]
    return gif + gif[::-1]


def figure_rotation(cfg: Config, rot_rows: list[dict]):
    """Rotation consistency (PSNR, +- standard error over seeds) against the angle, one line per config."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for config in rotation_configs(cfg):
        pts = [r for r in rot_rows if r["config"] == config and r["angle"] != 0]
        ax.errorbar([p["angle"] for p in pts], [p["psnr_db"] for p in pts], yerr=[p["psnr_sem"] for p in pts],
                    fmt="o-", capsize=3, label=config)
    ax.set_title(f"{cfg.dataset}: rotation consistency ({cfg.rotation_seeds} seeds, {cfg.rotation_protocol} protocol)")
    ax.set_xlabel("phi (degrees)")
    ax.set_ylabel("PSNR in inscribed circle (dB)")
    ax.legend()
    return fig


def summarise(cfg: Config, dev, rows: list[dict], step_seconds: dict, cost_rel: dict, rot_rows: list[dict]) -> dict:
    """The stage's metrics: scale, conventions, the table, the cost and Config E (mean consistency over the non-zero
    angles per config)."""
    consistency = {}
    for config in rotation_configs(cfg):
        vals = [r["psnr_db"] for r in rot_rows if r["config"] == config and r["angle"] != 0]
        consistency[config] = float(np.mean(vals)) if vals else None
    return {"profile": cfg.profile, "dataset": cfg.dataset, "device": str(dev),
            "scale": {"samples": cfg.n_samples, "sample_steps": cfg.sample_steps, "train_steps": cfg.train_steps,
                      "batch_size": cfg.batch_size, "base_channels": cfg.base_channels, "levels": cfg.levels},
            "conventions": CONVENTIONS.format(dataset=cfg.dataset),
            "rotation_protocol": cfg.rotation_protocol, "table": rows,
            "train_step_seconds": step_seconds, "train_step_time_relative_to_A": cost_rel,
            "rotation": rot_rows, "rotation_consistency_mean_db": consistency}


def write_outputs(cfg: Config, out_dir, summary: dict, spsnr_rows: list[dict], rot_rows: list[dict],
                  gif=None, fig_samples=None, fig_rotation=None) -> None:
    """``metrics/configs_eval/<dataset>.json``, ``..._spsnr.csv``, ``..._rotation.csv`` and, when given, the
    figures ``figures/13_configs_eval/<dataset>_samples.png``, ``_rotation.gif``, ``_rotation_consistency.png``."""
    save_csv(spsnr_rows, out_path(out_dir, OUT, f"{cfg.dataset}_spsnr.csv"))
    save_csv(rot_rows, out_path(out_dir, OUT, f"{cfg.dataset}_rotation.csv"))
    if fig_samples is not None:
        save_figure(fig_samples, out_path(out_dir, FIG, f"{cfg.dataset}_samples.png"))
    if gif is not None:
        save_gif(gif, out_path(out_dir, FIG, f"{cfg.dataset}_rotation.gif"), fps=3)
    if fig_rotation is not None:
        save_figure(fig_rotation, out_path(out_dir, FIG, f"{cfg.dataset}_rotation_consistency.png"))
    save_json(summary, out_path(out_dir, OUT, f"{cfg.dataset}.json"))


def run(cfg: Config, device: str, out_dir) -> dict:
    """Evaluate every config of ``cfg.dataset`` under ``out_dir``; returns the metrics."""
    import matplotlib.pyplot as plt

    dev = setup(cfg, device)
    inputs = load_inputs(cfg, dev, out_dir)
    rows, spsnr_rows, sample_grids = quality_and_spsnr(cfg, dev, out_dir, inputs)
    fig_samples = figure_samples(cfg, sample_grids)
    step_seconds, cost_rel = training_cost(cfg, dev, out_dir, inputs)
    rot_rows, frames = rotation(cfg, dev, out_dir, inputs["shape"])
    gif = rotation_frames(cfg, frames)
    fig_rotation = figure_rotation(cfg, rot_rows)
    summary = summarise(cfg, dev, rows, step_seconds, cost_rel, rot_rows)
    write_outputs(cfg, out_dir, summary, spsnr_rows, rot_rows, gif, fig_samples, fig_rotation)
    plt.close(fig_samples)
    plt.close(fig_rotation)
    return summary
