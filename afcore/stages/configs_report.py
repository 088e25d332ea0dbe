"""Stage ``configs_report`` (notebook 14_configs_report): the metrics of every ``configs_train`` and ``configs_eval``
run gathered into the paper-format table, SPSNR gaps to Config A, the cost of the alias-free layers and the Config E
summary, written to ``metrics/14_configs_report.json`` (the file README quotes) with its figures.

The config is ``configs_train.Config`` (its ``dataset`` / ``config`` item fields are unused here).

Steps, in the order ``run`` calls them: ``load_inputs``, ``table_rows``, ``spsnr_gaps``, ``figure_loss``,
``figure_spsnr``, ``figure_rotation``, ``rotation_summary``, ``summarise``, ``write_outputs``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from afcore.stages.common import out_path, pick_device, verdict
from afcore.stages.configs_train import Config  # the configs section, shared with configs_train and configs_eval
from afcore.utils import save_figure, save_json

FIG = Path("figures/14_configs_report")
METRICS = Path("metrics/14_configs_report.json")
GAP_KEYS = ("denoiser_spsnr_db", "sample_spsnr_db")


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


def gap(cfg: Config, rows: list[dict], dataset: str, config: str, key: str) -> dict:
    """Difference of ``key`` to the first config (A) on the same data set, with the standard error of the difference
    (the two errors combined) and whether it exceeds twice that error."""
    a = next(r for r in rows if r["dataset"] == dataset and r["config"] == cfg.configs[0])
    b = next(r for r in rows if r["dataset"] == dataset and r["config"] == config)
    sem = math.hypot(a[key.replace("_db", "_sem")], b[key.replace("_db", "_sem")])
    diff = b[key] - a[key]
    return {"diff_db": diff, "sem_db": sem, "significant": verdict(diff, sem) != "not resolved"}


def spsnr_gaps(cfg: Config, rows: list[dict]) -> dict:
    """``{"<dataset>/<config>": {key: gap}}`` for every config after the first and both SPSNR keys."""
    return {f"{d}/{c}": {k: gap(cfg, rows, d, c, k) for k in GAP_KEYS}
            for d in cfg.config_datasets for c in cfg.configs[1:]}


def rotation_summary(cfg: Config, evals: dict) -> dict:
    """Config E per data set and config: the mean consistency over the non-zero angles and its standard error."""
    out = {}
    for d in cfg.config_datasets:
        for c, mean in evals[d]["rotation_consistency_mean_db"].items():
            vals = [r for r in evals[d]["rotation"] if r["config"] == c and r["angle"] != 0]
            sem = math.sqrt(sum(r["psnr_sem"] ** 2 for r in vals)) / len(vals) if vals else None
            out[f"{d}/{c}"] = {"psnr_db": mean, "sem_db": sem}
    return out


def summarise(cfg: Config, evals: dict, rows: list[dict], gaps: dict, rotation: dict) -> dict:
    """The report: profile, devices, scale, conventions, the table (also keyed by ``<dataset>/<config>``), the SPSNR
    gaps to A and the rotation consistency."""
    return {"profile": cfg.profile, "devices": sorted({e["device"] for e in evals.values()}),
            "scale": {"train_steps": cfg.train_steps, "batch_size": cfg.batch_size,
                      "base_channels": cfg.base_channels, "levels": cfg.levels, "samples": cfg.n_samples,
                      "sample_steps": cfg.sample_steps, "rotation_protocol": cfg.rotation_protocol,
                      "rotation_seeds": cfg.rotation_seeds},
            "conventions": evals[cfg.config_datasets[0]]["conventions"],
            "table": rows, "rows": {f"{r['dataset']}/{r['config']}": r for r in rows},
            "spsnr_gap_to_A": gaps, "rotation_consistency": rotation}


def figure_loss(cfg: Config, root):
    """Training loss (moving average over a twentieth of each run) per data set, one line per config."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(cfg.config_datasets), figsize=(6 * len(cfg.config_datasets), 3.6),
                             squeeze=False)
    for ax, d in zip(axes[0], cfg.config_datasets):
        for c in cfg.configs:
            lines = (Path(root) / "metrics" / "configs_train" / f"{d}-{c}_loss.csv").read_text().split()[1:]
            steps, losses = np.array([[float(v) for v in line.split(",")] for line in lines]).T
            k = max(1, len(losses) // 20)
            smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
            ax.plot(steps[k - 1:], smooth, label=c)
        ax.set(title=f"{d}: training loss (moving average)", xlabel="step", ylabel="epsilon MSE", yscale="log")
        ax.legend()
    return fig


def figure_spsnr(cfg: Config, rows: list[dict]):
    """Denoiser and sample SPSNR of every row, +- 2 standard errors; the baseline in another colour."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    x = np.arange(len(rows))
    labels = [f"{r['dataset']}\n{r['config']}" for r in rows]
    for ax, key, title in ((axes[0], "denoiser_spsnr", "denoiser (t = 500), cropped shifts"),
                           (axes[1], "sample_spsnr", "whole samples, circularly shifted noise")):
        ax.bar(x, [r[f"{key}_db"] for r in rows], yerr=[2 * r[f"{key}_sem"] for r in rows], capsize=3,
               color=["C0" if r["config"] == cfg.configs[0] else "C1" for r in rows])
        lo = min(r[f"{key}_db"] - 3 * r[f"{key}_sem"] for r in rows)
        ax.set_ylim(max(0.0, lo - 2), None)
        ax.set_xticks(x, labels, fontsize=7)
        ax.set(title=title, ylabel="SPSNR (dB), ± 2 standard errors")
    return fig


def figure_rotation(cfg: Config, evals: dict):
    """Config E rotation consistency against the angle, one line per data set and config (README's figure)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for d in cfg.config_datasets:
        rot = [r for r in evals[d]["rotation"] if r["angle"] != 0]
        for c in sorted({r["config"] for r in rot}, key=cfg.configs.index):
            pts = [r for r in rot if r["config"] == c]
            ax.errorbar([p["angle"] for p in pts], [p["psnr_db"] for p in pts], yerr=[p["psnr_sem"] for p in pts],
                        fmt="o-", capsize=3, label=f"{d} {c}")
    ax.set(title=f"Config E rotation consistency ({cfg.rotation_protocol} protocol, {cfg.rotation_seeds} seeds)",
           xlabel="phi (degrees)", ylabel="PSNR in inscribed circle (dB)")
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
    gaps = spsnr_gaps(cfg, rows)
    figures = {"loss": figure_loss(cfg, out_dir), "spsnr": figure_spsnr(cfg, rows),
               "rotation_consistency": figure_rotation(cfg, evals)}
    report = summarise(cfg, evals, rows, gaps, rotation_summary(cfg, evals))
    write_outputs(report, out_dir, figures)
    for fig in figures.values():
        plt.close(fig)
    return report
