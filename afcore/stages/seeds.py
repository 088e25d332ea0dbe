"""Training seeds as the unit of replication: which seeds a stage trains, where their checkpoints live, and the
seed-level statistics every headline comparison is reported with.

Why seeds. Two runs of the same stage that differ only in the training seed move a difference between two model rows
by more than its error over images and shifts (run-to-run SD of about 0.4-0.7 dB at cpu scale). An error bar over the
images of one training run therefore says how well *that pair of trained networks* was measured, not whether the
architecture or loss makes a difference. The replicate is the training seed: within one seed, rows share their
random numbers (initial weights where the shapes allow, batches, noise, evaluation noises and shifts), a contrast is
computed paired within the seed (one number per seed), and the seed-level numbers are summarised as mean +- standard
error over seeds with a t test on n - 1 degrees of freedom.

Multiple comparisons. Each stage names a few *primary* contrasts before it runs (its ``PRIMARY`` list). Their p
values are adjusted together with Holm's step-down method (family-wise error 0.05); every other contrast is reported
with its unadjusted p value and is exploratory. A primary contrast is "resolved" when its Holm-adjusted p < 0.05.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

ALPHA = 0.05
SEED_STRIDE = 1000  # replicate k trains with base seed + 1000 k: far from the small offsets stages add to a seed
MULTIPLE_COMPARISONS = ("Holm step-down over each stage's primary contrasts (family-wise error 0.05); other "
                        "contrasts exploratory, unadjusted")


def training_seeds(base_seed: int, n: int) -> list[int]:
    """The ``n`` training seeds of a stage: ``base_seed``, ``base_seed + 1000``, ... (replicate 0 is the base seed,
    so a one-seed run is today's single run)."""
    if n < 1:
        raise ValueError(f"the number of training seeds must be >= 1, got {n}")
    return [base_seed + SEED_STRIDE * k for k in range(n)]


def seed_path(path, seed: int, base_seed: int) -> Path:
    """Where a seed's checkpoints live: ``path`` itself for the base seed (downstream stages read it), else
    ``path/seed<seed>``, inside the folder DVC tracks for the stage. When ``path`` is a resumable run folder, its
    base seed must be prepared first: a change of settings wipes the folder, the other seeds' runs with it, and they
    are retrained under the new settings, as they must be."""
    path = Path(path)
    return path if seed == base_seed else path / f"seed{seed}"


def t_two_sided_p(t: float, dof: int) -> float:
    """Two-sided p value of Student's t with ``dof`` degrees of freedom."""
    from scipy import stats

    return float(2 * stats.t.sf(abs(t), dof))


def seed_summary(per_seed) -> dict:
    """Mean +- standard error over seeds of one number per seed, with the t test of "mean = 0" and how many seeds
    agree in sign with the mean. One seed gives ``se = None``: no error over seeds can be claimed."""
    v = np.asarray([float(x) for x in per_seed], dtype=np.float64)
    n = len(v)
    if n == 0:
        raise ValueError("seed_summary: no values")
    mean = float(v.mean())
    out = {"mean": mean, "se": None, "n_seeds": n, "per_seed": v.tolist(),
           "seeds_agreeing": int((np.sign(v) == np.sign(mean)).sum()) if mean != 0 else 0, "t": None, "p": None}
    if n >= 2:
        se = float(v.std(ddof=1) / math.sqrt(n))
        out["se"] = se
        if se > 0:
            out["t"] = mean / se
            out["p"] = t_two_sided_p(mean / se, n - 1)
        else:
            out["p"] = 0.0 if mean != 0 else 1.0
    return out


def holm(pvalues: dict) -> dict:
    """Holm's step-down adjustment of ``{name: p}`` (``None`` stays ``None``): adjusted p_(i) = max over j <= i of
    min(1, (m - j + 1) p_(j)), with p sorted ascending."""
    named = sorted(((p, k) for k, p in pvalues.items() if p is not None))
    m, running, out = len(named), 0.0, {k: None for k, p in pvalues.items() if p is None}
    for i, (p, k) in enumerate(named):
        running = max(running, min(1.0, (m - i) * p))
        out[k] = running
    return out


def seed_verdict(summary: dict, adjusted_p: float | None = None, primary: bool = False) -> str:
    """A sentence-sized verdict: direction, how many seeds agree, and whether the (Holm-adjusted, for a primary
    contrast) p value resolves it. One seed is never called resolved."""
    n, agree = summary["n_seeds"], summary["seeds_agreeing"]
    direction = "higher" if summary["mean"] > 0 else "lower" if summary["mean"] < 0 else "no difference"
    if n < 2 or summary["p"] is None:
        return f"{direction} (1 seed: not resolved)" if n < 2 else "not resolved"
    p = adjusted_p if primary else summary["p"]
    if p is None or p >= ALPHA:
        return f"not resolved ({agree} of {n} seeds {direction})"
    return f"{direction}, resolved ({agree} of {n} seeds agree{'' if primary else '; exploratory'})"


def contrast_table(per_seed: dict, primary: list[str]) -> dict:
    """``{name: per-seed values}`` -> ``{name: seed_summary + primary flag, Holm-adjusted p, verdict}``. Only names in
    ``primary`` enter the Holm family."""
    out = {name: seed_summary(vals) for name, vals in per_seed.items()}
    unknown = [k for k in primary if k not in out]
    if unknown:
        raise ValueError(f"primary contrasts {unknown} were not computed; computed: {sorted(out)}")
    adjusted = holm({k: out[k]["p"] for k in primary})
    for name, s in out.items():
        s["primary"] = name in primary
        s["p_holm"] = adjusted.get(name)
        s["verdict"] = seed_verdict(s, s["p_holm"], s["primary"])
    return out


def contrast_markdown(contrasts: dict) -> str:
    """``contrast_table``'s output as a Markdown table: mean +- SE over seeds, the per-seed values, p (Holm-adjusted
    for a primary contrast) and the verdict."""
    md = "| comparison: metric | mean ± SE over seeds | per seed | p (Holm for primary) | verdict |\n|---|---|---|---|---|\n"
    for name, c in contrasts.items():
        p = c["p_holm"] if c["primary"] else c["p"]
        se = "–" if c["se"] is None else f"{c['se']:.2f}"
        md += (f"| {name}{' (primary)' if c['primary'] else ''} | {c['mean']:+.2f} ± {se} | "
               f"{', '.join(f'{v:+.2f}' for v in c['per_seed'])} | {'–' if p is None else f'{p:.3f}'} | "
               f"{c['verdict']} |\n")
    return md
