"""Stage ``configs_eval`` (notebook 13_configs_eval): every trained Config U-Net of one data set, evaluated.

A foreach over ``configs.config_datasets`` (``ITEMS``); the config is ``configs_train.Config`` with ``dataset`` set.
For each config and training seed: sample quality (IS / FID / KID x100 with the classifier features of stage
``classifier``), shift equivariance of the denoiser and of whole samples (SPSNR per image and shift) and Config E:
progressive rotation during sampling with a rotation-consistency PSNR. Every seed sees the same evaluation noises,
images and shifts. Contrasts to the first config (A) are computed per seed, paired over the evaluation noises (shifts
averaged per noise first), and summarised over seeds (``afcore.stages.seeds``); the primary contrasts are the sample
SPSNR gains of every other config over A. The training step's cost relative to A is measured side by side, configs
interleaved, on the base seed's models.

Steps, in the order ``run`` calls them: ``setup``, ``load_inputs``, ``evaluate_seeds`` (``quality_and_spsnr`` and
``rotation`` per seed), ``seed_table``, ``contrasts``, ``figure_samples``, ``training_cost``, ``rotation_frames``,
``figure_rotation``, ``summarise``, ``write_outputs``.
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
from afcore.stages.configs_train import Config, checkpoint_dir  # the configs section + dataset
from afcore.stages.seeds import MULTIPLE_COMPARISONS, contrast_table, seed_summary
from afcore.utils import save_csv, save_figure, save_gif, save_json, seed_everything

FIG = Path("figures/13_configs_eval")
OUT = Path("metrics/configs_eval")
COST_REPEATS = 6  # training steps timed per config; the first is dropped (warm-up)
CONVENTIONS = ("IS/FID/KIDx100 with classifier features (clf-{dataset}), not Inception; KIDx100_std = standard "
               "deviation over KID subsets; SPSNR peak 2, per image (or noise) and shift, shifts averaged per image; "
               "denoiser: cropped shifts of x_t; samples: circular shifts of the initial noise, non-wrapped pixels; "
               "rotation PSNR peak 2 in the inscribed circle; every value and contrast: mean +- standard error over "
               "training seeds (a contrast: paired within each seed over the shared evaluation noises); "
               "multiple comparisons: " + MULTIPLE_COMPARISONS)


def ITEMS(params) -> list[dict]:
    """The members of the DVC foreach: one per data set of ``configs.config_datasets``."""
    return [{"dataset": d} for d in params["configs"]["config_datasets"]]


def setup(cfg: Config, device: str) -> torch.device:
    """Seed everything and resolve ``device``."""
    warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
    seed_everything(cfg.seed)
    return pick_device(device, cfg.deterministic)


def load_unet(cfg: Config, config: str, dev, root, seed: int | None = None):
    """The trained U-Net of ``config`` on ``cfg.dataset`` with training seed ``seed`` (default the base seed; stage
    configs_train), in eval mode on ``dev``."""
    path = checkpoint_dir(cfg, root, seed, config) / "unet.pt"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run the configs_train stage first (`dvc repro configs_train`)")
    return config_unet.load_unet(path).to(dev)


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
def quality_and_spsnr(cfg: Config, dev, root, inputs: dict, seed: int | None = None):
    """Per config, for the models of training seed ``seed`` (default the base seed): IS / FID / KID x100 of
    ``n_samples`` samples (the paper's numbers beside them when it has the row), the denoiser's SPSNR at t = 500 under
    cropped shifts and the samples' SPSNR under circular shifts of the initial noise. The evaluation noises and images
    do not depend on ``seed``. Returns ``(table rows, per-shift rows, {config: first 16 samples}, {config: {"denoiser":
    [image, shift] dB, "sample": [noise, shift] dB}})``."""
    seed = cfg.seed if seed is None else seed
    real, shape = inputs["real"], inputs["shape"]
    rows, spsnr_rows, sample_grids, per_sample = [], [], {}, {}
    z = noise(cfg.n_samples, shape, cfg.seed + 1, dev)
    x_t_clean = real[:cfg.spsnr_images].to(dev)
    t_mid = torch.full((cfg.spsnr_images,), 500, device=dev)
    x_t = ddpm.make_scheduler().add_noise(x_t_clean, noise(cfg.spsnr_images, shape, cfg.seed + 2, dev), t_mid)
    z_small = noise(min(8, cfg.spsnr_images), shape, cfg.seed + 3, dev)
    for config in tqdm(cfg.configs, desc=f"{cfg.dataset}: quality and SPSNR"):
        model = load_unet(cfg, config, dev, root, seed)
        if cfg.quality_sampler == "ancestral":  # the reference's 999-step sampler, as the paper's table was made
            fake = torch.cat([ddpm.ancestral_sample(model, z[i:i + 500], make_generator(cfg.seed + 6 + i, dev))
                              for i in range(0, cfg.n_samples, 500)])
        else:
            fake = torch.cat([ddpm.sample(model, z[i:i + 500], steps=cfg.sample_steps)
                              for i in range(0, cfg.n_samples, 500)])
        sample_grids[config] = fake[:16].cpu()
        quality = evaluation.quality_metrics(real, fake, inputs["classifier"], cfg.dataset, device=dev)
        row = {"dataset": cfg.dataset, "config": config, "seed": seed, "samples": cfg.n_samples, "real_test_images": int(len(real)),
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
            spsnr_rows.append({"dataset": cfg.dataset, "config": config, "seed": seed, "shift": d,
                               "denoiser_spsnr_db": float(np.mean(den_d)), "sample_spsnr_db": float(np.mean(smp_d))})
        n_shift = len(cfg.spsnr_shifts)  # den / smp were filled shift by shift: [shift, unit] -> [unit, shift]
        per_sample[config] = {"denoiser": torch.tensor(den, dtype=torch.float64).view(n_shift, -1).T,
                              "sample": torch.tensor(smp, dtype=torch.float64).view(n_shift, -1).T}
        for key in ("denoiser", "sample"):  # within this seed: SE over images (shifts averaged per image)
            row[f"{key}_spsnr_db"], row[f"{key}_spsnr_within_seed_se"] = mean_sem(per_sample[config][key].mean(1))
        rows.append(row)
    return rows, spsnr_rows, sample_grids, per_sample


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
def rotation(cfg: Config, dev, root, shape, seed: int | None = None) -> tuple[list[dict], dict]:
    """Config E for the models of training seed ``seed`` (default the base seed): for each of ``rotation_configs``
    and angle phi, sample with progressive rotation from the same noise and compare (PSNR in the inscribed circle,
    per noise: ``rotation_seeds`` of them) with the plain sample rotated afterwards by the same total angle. Returns
    ``(rows, {phi: [first rotated sample per config]})``."""
    seed = cfg.seed if seed is None else seed
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
        model = load_unet(cfg, config, dev, root, seed)
        plain = generate(model, 0.0)
        for phi in cfg.rotation_angles:
            rotated = generate(model, phi) if phi else plain
            total = ddpm.applied_rotation(phi, cfg.rotation_protocol, cfg.sample_steps)
            target = ddpm.rotate_step(plain, total, rot, cfg.rotation_boundary)
            per_seed = metrics.psnr(rotated * mask, target * mask, mask, per_sample=True).clamp(max=100.0)
            mean, sem = mean_sem(per_seed)
            rows.append({"dataset": cfg.dataset, "config": config, "seed": seed, "angle": phi, "psnr_db": mean,
                         "psnr_sem": sem})
            frames.setdefault(phi, []).append(rotated[0].cpu())
    return rows, frames


def rotation_frames(cfg: Config, frames: dict) -> list[np.ndarray]:
    """GIF frames: the configs side by side at each angle, 4x enlarged, there and back."""
    gif = [((torch.cat(frames[phi], dim=-1).permute(1, 2, 0) + 1) / 2).clamp(0, 1).squeeze(-1).numpy()
           for phi in cfg.rotation_angles]
    gif = [np.kron(f, np.ones((4, 4) + ((1,) if f.ndim == 3 else ()))) for f in gif]
    return gif + gif[::-1]


def rotation_by_angle(cfg: Config, rot_rows: list[dict], config: str) -> list[tuple[float, dict]]:
    """``[(angle, seed_summary over training seeds of the rotation PSNR)]`` of one config, non-zero angles."""
    angles = sorted({r["angle"] for r in rot_rows if r["config"] == config and r["angle"] != 0})
    return [(a, seed_summary([r["psnr_db"] for r in rot_rows if r["config"] == config and r["angle"] == a]))
            for a in angles]


def figure_rotation(cfg: Config, rot_rows: list[dict]):
    """Rotation consistency (PSNR, mean +- standard error over training seeds; one seed: over noises) against the
    angle, one line per config."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for config in rotation_configs(cfg):
        pts = rotation_by_angle(cfg, rot_rows, config)
        err = [s["se"] if s["se"] is not None else
               next(r["psnr_sem"] for r in rot_rows if r["config"] == config and r["angle"] == a) for a, s in pts]
        ax.errorbar([a for a, _ in pts], [s["mean"] for _, s in pts], yerr=err, fmt="o-", capsize=3, label=config)
    ax.set_title(f"{cfg.dataset}: rotation consistency ({len(cfg.seeds)} training seeds x {cfg.rotation_seeds} "
                 f"noises, {cfg.rotation_protocol} protocol)", fontsize=9)
    ax.set_xlabel("phi (degrees)")
    ax.set_ylabel("PSNR in inscribed circle (dB)")
    ax.legend()
    return fig


def evaluate_seeds(cfg: Config, dev, root, inputs: dict) -> dict:
    """``quality_and_spsnr`` and ``rotation`` for every training seed. Returns ``{"rows", "spsnr_rows", "rot_rows"}``
    (every seed's rows, each with its ``seed``), ``"per_sample"`` ({seed: {config: ...}}) and the base seed's
    ``"sample_grids"`` and rotation ``"frames"``."""
    out = {"rows": [], "spsnr_rows": [], "rot_rows": [], "per_sample": {}}
    for seed in cfg.seeds:
        rows, spsnr_rows, grids, per_sample = quality_and_spsnr(cfg, dev, root, inputs, seed)
        rot_rows, frames = rotation(cfg, dev, root, inputs["shape"], seed)
        out["rows"] += rows
        out["spsnr_rows"] += spsnr_rows
        out["rot_rows"] += rot_rows
        out["per_sample"][seed] = per_sample
        if seed == cfg.seed:
            out["sample_grids"], out["frames"] = grids, frames
    return out


SEED_KEYS = ("IS", "FID", "KIDx100", "denoiser_spsnr_db", "sample_spsnr_db")


def seed_table(cfg: Config, rows: list[dict]) -> list[dict]:
    """One row per config: every metric of ``SEED_KEYS`` as mean over training seeds with ``<key>_se`` its standard
    error over seeds (``None`` for one seed), the paper's numbers and the per-seed values."""
    table = []
    for config in cfg.configs:
        mine = [r for r in rows if r["config"] == config]
        row = {k: mine[0][k] for k in ("dataset", "config", "samples", "real_test_images", "features")}
        row["n_seeds"] = len(mine)
        for key in SEED_KEYS:
            summary = seed_summary([r[key] for r in mine])
            row[key], row[f"{key}_se"], row[f"{key}_per_seed"] = summary["mean"], summary["se"], summary["per_seed"]
        row.update({k: v for k, v in mine[0].items() if k.startswith("paper_")})
        table.append(row)
    return table


def rotation_consistency(rot_rows: list[dict], config: str, seed: int) -> float | None:
    """Config E of one model: mean rotation PSNR over the non-zero angles."""
    vals = [r["psnr_db"] for r in rot_rows if r["config"] == config and r["seed"] == seed and r["angle"] != 0]
    return float(np.mean(vals)) if vals else None


def contrasts(cfg: Config, evaluated: dict) -> dict:
    """Every config minus the first (A), per training seed and summarised over seeds (``seeds.contrast_table``):
    SPSNR of denoiser and samples paired over the shared evaluation images / noises (shifts averaged per unit
    first), FID, and Config E's rotation consistency where both were rotated. Primary (Holm family): the sample SPSNR
    gain of every other config over A. Keys ``"<metric>: <config> - <A>"``."""
    base, per_seed = cfg.configs[0], {}
    for seed, per_sample in evaluated["per_sample"].items():
        rows = {r["config"]: r for r in evaluated["rows"] if r["seed"] == seed}
        for config in cfg.configs[1:]:
            for key in ("sample", "denoiser"):
                diff = per_sample[config][key].mean(1) - per_sample[base][key].mean(1)
                per_seed.setdefault(f"{key}_spsnr_db: {config} - {base}", []).append(float(diff.mean()))
            per_seed.setdefault(f"FID: {config} - {base}", []).append(rows[config]["FID"] - rows[base]["FID"])
            if config in rotation_configs(cfg) and base in rotation_configs(cfg):
                a = rotation_consistency(evaluated["rot_rows"], config, seed)
                b = rotation_consistency(evaluated["rot_rows"], base, seed)
                if a is not None and b is not None:
                    per_seed.setdefault(f"rotation_psnr_db: {config} - {base}", []).append(a - b)
    primary = [f"sample_spsnr_db: {c} - {base}" for c in cfg.configs[1:]]
    return contrast_table(per_seed, primary)


def summarise(cfg: Config, dev, table: list[dict], contrast: dict, evaluated: dict, step_seconds: dict,
              cost_rel: dict) -> dict:
    """The stage's metrics: scale, seeds, conventions, the seed-level table and contrasts, every seed's rows, the
    cost and Config E (mean consistency over the non-zero angles per config and seed)."""
    consistency = {c: seed_summary([rotation_consistency(evaluated["rot_rows"], c, s) for s in cfg.seeds])
                   for c in rotation_configs(cfg)
                   if all(rotation_consistency(evaluated["rot_rows"], c, s) is not None for s in cfg.seeds)}
    return {"profile": cfg.profile, "dataset": cfg.dataset, "device": str(dev),
            "scale": {"samples": cfg.n_samples, "sample_steps": cfg.sample_steps, "train_steps": cfg.train_steps,
                      "batch_size": cfg.batch_size, "base_channels": cfg.base_channels, "levels": cfg.levels,
                      "spsnr_images": cfg.spsnr_images, "sample_spsnr_noises": min(8, cfg.spsnr_images),
                      "spsnr_shifts": list(cfg.spsnr_shifts)},
            "training_seeds": cfg.seeds, "n_seeds": len(cfg.seeds),
            "conventions": CONVENTIONS.format(dataset=cfg.dataset),
            "rotation_protocol": cfg.rotation_protocol, "table": table, "contrasts": contrast,
            "table_per_seed": evaluated["rows"],
            "train_step_seconds": step_seconds, "train_step_time_relative_to_A": cost_rel,
            "rotation": evaluated["rot_rows"], "rotation_consistency_mean_db": consistency}


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
    """Evaluate every config and training seed of ``cfg.dataset`` under ``out_dir``; returns the metrics."""
    import matplotlib.pyplot as plt

    dev = setup(cfg, device)
    inputs = load_inputs(cfg, dev, out_dir)
    evaluated = evaluate_seeds(cfg, dev, out_dir, inputs)
    table = seed_table(cfg, evaluated["rows"])
    contrast = contrasts(cfg, evaluated)
    fig_samples = figure_samples(cfg, evaluated["sample_grids"])
    step_seconds, cost_rel = training_cost(cfg, dev, out_dir, inputs)
    gif = rotation_frames(cfg, evaluated["frames"])
    fig_rotation = figure_rotation(cfg, evaluated["rot_rows"])
    summary = summarise(cfg, dev, table, contrast, evaluated, step_seconds, cost_rel)
    write_outputs(cfg, out_dir, summary, evaluated["spsnr_rows"], evaluated["rot_rows"], gif, fig_samples,
                  fig_rotation)
    plt.close(fig_samples)
    plt.close(fig_rotation)
    return summary
