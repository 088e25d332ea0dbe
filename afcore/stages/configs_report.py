"""Stage ``configs_report`` (notebook 14_configs_report): the metrics of every ``configs_train`` and ``configs_eval``
run gathered into the paper-format table (means over training seeds), the seed-level contrasts to Config A, the cost
of the alias-free layers and the Config E summary, written to ``metrics/14_configs_report.json`` (the file README quotes) with its figures.

The config is ``configs_train.Config`` (its ``dataset`` / ``config`` item fields are unused here).

Steps, in the order ``run`` calls them: ``load_inputs``, ``table_rows``, ``gather_contrasts``, ``figure_loss``,
``figure_spsnr``, ``figure_rotation``, ``rotation_summary``, ``summarise``, ``write_outputs``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from afcore.stages.common import out_path, pick_device
from afcore.stages.configs_eval import rotation_by_angle, rotation_configs
from afcore.stages.configs_train import Config  # the configs section, shared with configs_train and configs_eval
from afcore.utils import save_figure, save_json

FIG = Path("figures/14_configs_report")
METRICS = Path("metrics/14_configs_report.json")


def load_inputs(cfg: Config, root) -> tuple[dict, dict]:
    """``(train, evals)``: the metrics of each training run, keyed ``(dataset, config)``, and of each evaluation,
    keyed by data set (``metrics/configs_train/`` and ``metrics/configs_eval/`` under ``root``)."""
    metrics = Path(root) / "metrics"

    def read(path: Path) -> dict:
        if not path.exists():
            stage = "configs_train" if "configs_train" in path.parts else "configs_eval"
            raise FileNotFoundError(f"{path} not found: run the {stage} stage first (`dvc repro {stage}`)")
        return json.loads(path.read_text())

    train = {(d, c): read(metrics / "configs_train" / f"{d}-{c}.json")
             for d in cfg.config_datasets for c in cfg.configs}
    evals = {d: read(metrics / "configs_eval" / f"{d}.json") for d in cfg.config_datasets}
    return train, evals


def table_rows(cfg: Config, train: dict, evals: dict) -> list[dict]:
    """The evaluation table of every data set, each row with its trainable parameters and step time relative to A."""
    rows = [r for d in cfg.config_datasets for r in evals[d]["table"]]
    for r in rows:
        r["trainable_parameters"] = train[(r["dataset"], r["config"])]["trainable_parameters"]
        r["train_step_relative_to_A"] = evals[r["dataset"]]["train_step_time_relative_to_A"][r["config"]]
    return rows


def gather_contrasts(cfg: Config, evals: dict) -> dict:
    """``{"<dataset>/<metric>: <config> - <A>": seed-level contrast}``: every data set's contrasts (configs_eval:
    paired within each training seed, mean +- standard error over seeds, Holm over its primary contrasts)."""
    return {f"{d}/{name}": c for d in cfg.config_datasets for name, c in evals[d]["contrasts"].items()}


def rotation_summary(cfg: Config, evals: dict) -> dict:
    """Config E per data set and config: the mean consistency over the non-zero angles, mean +- standard error over
    training seeds."""
    return {f"{d}/{c}": {"psnr_db": v["mean"], "se_db": v["se"], "n_seeds": v["n_seeds"]}
            for d in cfg.config_datasets for c, v in evals[d]["rotation_consistency_mean_db"].items()}


def summarise(cfg: Config, evals: dict, rows: list[dict], contrasts: dict, rotation: dict) -> dict:
    """The report: profile, devices, scale, seeds, conventions, the table (also keyed by ``<dataset>/<config>``),
    the seed-level contrasts to A and the rotation consistency."""
    return {"profile": cfg.profile, "devices": sorted({e["device"] for e in evals.values()}),
            "scale": {"train_steps": cfg.train_steps, "batch_size": cfg.batch_size,
                      "base_channels": cfg.base_channels, "levels": cfg.levels, "samples": cfg.n_samples,
                      "sample_steps": cfg.sample_steps, "rotation_protocol": cfg.rotation_protocol,
                      "rotation_seeds": cfg.rotation_seeds, "training_seeds": cfg.seeds},
            "conventions": evals[cfg.config_datasets[0]]["conventions"],
            "table": rows, "rows": {f"{r['dataset']}/{r['config']}": r for r in rows},
            "contrasts": contrasts, "rotation_consistency": rotation}


def figure_loss(cfg: Config, root):
    """Training loss (moving average over a twentieth of each run, averaged over training seeds) per data set, one
    line per config."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(cfg.config_datasets), figsize=(6 * len(cfg.config_datasets), 3.6),
                             squeeze=False)
    for ax, d in zip(axes[0], cfg.config_datasets):
        for c in cfg.configs:
            lines = (Path(root) / "metrics" / "configs_train" / f"{d}-{c}_loss.csv").read_text().split()[1:]
            step_seed_loss = np.array([[float(v) for v in line.split(",")] for line in lines])
            steps = np.unique(step_seed_loss[:, 0])
            losses = np.array([step_seed_loss[step_seed_loss[:, 0] == st, 2].mean() for st in steps])
            k = max(1, len(losses) // 20)
            smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
            ax.plot(steps[k - 1:], smooth, label=c)
        ax.set(title=f"{d}: training loss (moving average)", xlabel="step", ylabel="epsilon MSE", yscale="log")
        ax.legend()
    return fig


def figure_spsnr(cfg: Config, rows: list[dict]):
    """Denoiser and sample SPSNR of every row (mean over training seeds, +- 2 standard errors over seeds, the
    seeds as dots); the baseline in another colour."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    x = np.arange(len(rows))
    labels = [f"{r['dataset']}\n{r['config']}" for r in rows]
    for ax, key, title in ((axes[0], "denoiser_spsnr", "denoiser (t = 500), cropped shifts"),
                           (axes[1], "sample_spsnr", "whole samples, circularly shifted noise")):
        se = [2 * (r[f"{key}_db_se"] or 0.0) for r in rows]
        ax.bar(x, [r[f"{key}_db"] for r in rows], yerr=se, capsize=3,
               color=["C0" if r["config"] == cfg.configs[0] else "C1" for r in rows])
        for xi, r in zip(x, rows):
            ax.plot([xi] * len(r[f"{key}_db_per_seed"]), r[f"{key}_db_per_seed"], "k.", ms=3)
        lo = min(min(r[f"{key}_db_per_seed"]) for r in rows)
        ax.set_ylim(max(0.0, lo - 2), None)
        ax.set_xticks(x, labels, fontsize=7)
        ax.set(title=title, ylabel="SPSNR (dB), ± 2 SE over seeds")
    return fig


def figure_rotation(cfg: Config, evals: dict):
    """Config E rotation consistency against the angle (mean +- standard error over training seeds), one line per
    data set and config (README's figure)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for d in cfg.config_datasets:
        for c in rotation_configs(cfg):
            pts = rotation_by_angle(cfg, evals[d]["rotation"], c)
            ax.errorbar([a for a, _ in pts], [v["mean"] for _, v in pts], yerr=[v["se"] or 0.0 for _, v in pts],
                        fmt="o-", capsize=3, label=f"{d} {c}")
    ax.set(title=f"Config E rotation consistency ({cfg.rotation_protocol} protocol, {len(cfg.seeds)} training seeds "
                 f"x {cfg.rotation_seeds} noises)", xlabel="phi (degrees)", ylabel="PSNR in inscribed circle (dB)")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8)
    return fig


def write_outputs(report: dict, out_dir, figures: dict | None = None) -> None:
    """``metrics/14_configs_report.json`` and the figures given as ``{name: fig}`` (``figures/14_configs_report/
    <name>.png``)."""
    for name, fig in (figures or {}).items():
        save_figure(fig, out_path(out_dir, FIG, f"{name}.png"))
    save_json(report, out_path(out_dir, METRICS))


def run(cfg: Config, device: str, out_dir) -> dict:
    """Gather the configs_train and configs_eval metrics under ``out_dir`` into the report; returns it. ``device``
    is checked but unused (nothing is computed on a device)."""
    import matplotlib.pyplot as plt

    pick_device(device, cfg.deterministic)
    train, evals = load_inputs(cfg, out_dir)
    rows = table_rows(cfg, train, evals)
    contrasts = gather_contrasts(cfg, evals)
    figures = {"loss": figure_loss(cfg, out_dir), "spsnr": figure_spsnr(cfg, rows),
               "rotation_consistency": figure_rotation(cfg, evals)}
    report = summarise(cfg, evals, rows, contrasts, rotation_summary(cfg, evals))
    write_outputs(report, out_dir, figures)
    for fig in figures.values():
        plt.close(fig)
    return report
