"""A stage's cost at two revisions of the code, measured side by side (``python -m workbook.stage_ab``).

What a speed-up of the layers saves a real pipeline stage is only known by running the stage with both versions of
the code on the same machine, one after the other: this checks out each revision into a temporary git worktree
(sharing the DVC-tracked inputs of this checkout by symbolic link), runs the same stage command in each, in
alternating order (old, new, new, old, ...: a drift of the machine's speed affects both alike), and writes the wall
time of every run and the metric the stage itself records (``train_seconds``, ``median_step_seconds`` for the Config
training stage) to ``metrics/stage_ab.json``.

    python -m workbook.stage_ab --old d76e320 --new HEAD --dataset mnist --config D-1N --repeats 2
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from afcore.utils import REPO_ROOT, save_json

TRAIN_KEYS = ("train_seconds", "median_step_seconds")


def _worktree(rev: str, where: Path) -> Path:
    subprocess.run(["git", "-C", str(REPO_ROOT), "worktree", "add", "--detach", "-q", str(where), rev], check=True)
    for data in (REPO_ROOT / "data").glob("*.pt"):  # DVC outputs, not in git: shared read-only
        (where / "data" / data.name).symlink_to(data)
    return where


def _run_stage(tree: Path, dataset: str, config: str) -> dict:
    cmd = [sys.executable, "-m", "workbook.run", "notebooks/12_configs_train.py", "--params", "base,configs", "--set",
           f"dataset={dataset}", f"config={config}", "--output", str(tree / "reports" / "ab.ipynb")]
    env = {**os.environ, "PYTHONPATH": str(tree)}  # the worktree's afcore, not this checkout's
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"stage failed in {tree}:\n{proc.stderr[-3000:]}")
    metrics = json.loads((tree / "metrics" / "configs_train" / f"{dataset}-{config}.json").read_text())
    # a second run must train again, not resume from the first run's checkpoint
    shutil.rmtree(tree / "checkpoints", ignore_errors=True)
    return {"wall_s": wall, **{k: metrics[k] for k in TRAIN_KEYS}}


def compare(old: str, new: str, dataset: str, config: str, repeats: int) -> dict:
    revs = {name: subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", rev], check=True,
                                 capture_output=True, text=True).stdout.strip() for name, rev in
            (("old", old), ("new", new))}
    runs = {"old": [], "new": []}
    with tempfile.TemporaryDirectory(prefix="stage_ab_") as tmp:
        trees = {name: _worktree(rev, Path(tmp) / name) for name, rev in revs.items()}
        try:
            order = [("old", "new"), ("new", "old")]
            for i in range(repeats):
                for name in order[i % 2]:
                    runs[name].append(_run_stage(trees[name], dataset, config))
                    print(f"{name} ({revs[name]}): {runs[name][-1]}", flush=True)
        finally:
            for tree in trees.values():
                subprocess.run(["git", "-C", str(REPO_ROOT), "worktree", "remove", "--force", str(tree)])
    summary = {name: {k: statistics.median(r[k] for r in rs) for k in ("wall_s", *TRAIN_KEYS)}
               for name, rs in runs.items()}
    return {"what": "configs_train stage (notebook 12) at two revisions, same machine, alternating order; medians",
            "stage": f"configs_train@{dataset}-{config}", "revisions": revs, "repeats": repeats, "runs": runs,
            "median": summary, "threads": os.cpu_count(),
            "saving": {k: 1 - summary["new"][k] / summary["old"][k] for k in ("wall_s", *TRAIN_KEYS)},
            "speedup_train_seconds": summary["old"]["train_seconds"] / summary["new"]["train_seconds"]}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m workbook.stage_ab", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", required=True, help="git revision of the code before")
    parser.add_argument("--new", default="HEAD", help="git revision of the code after (default HEAD)")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--config", default="D-1N")
    parser.add_argument("--repeats", type=int, default=2, help="runs per revision (alternating order)")
    parser.add_argument("--out", default=str(REPO_ROOT / "metrics" / "stage_ab.json"))
    args = parser.parse_args(argv)
    if not list((REPO_ROOT / "data").glob(f"{args.dataset}.pt")):
        raise SystemExit(f"data/{args.dataset}.pt is missing: run `dvc repro data` first")
    report = compare(args.old, args.new, args.dataset, args.config, args.repeats)
    save_json(report, args.out)
    print(json.dumps(report["median"], indent=1), "\nsaving", report["saving"])


if __name__ == "__main__":
    main()
