"""The whole pipeline on the smoke profile, in a temporary copy of the repository (never the user's params.yaml).

    python -m workbook.smoke                  # CPU (what the test suite runs)
    python -m workbook.smoke --device cuda    # every stage's code path on a GPU (make smoke-gpu): minutes, not hours

The copy gets its own params.yaml (``python -m workbook.params use smoke`` with ``base.device`` overridden), an empty
``dvc.lock`` so every stage really runs, offline hub settings, and ``AFCORE_DEVICE_GUARD=1`` so that a tensor factory
called without ``device=`` in the workbook's own code fails the run (``afcore.device_mod.DeviceGuard``). A CUDA run that
finds no GPU stops at once with the reason, instead of quietly running on the CPU.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from afcore.utils import REPO_ROOT
from afcore.device import pick_device


def run_checked(cmd, cwd, env, timeout=3000):
    """Run ``cmd``; on failure raise with the tail of its output (the tests use it too)."""
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout[-6000:]}\n{out.stderr[-6000:]}")
    return out


def prepare(root: Path, device: str = "cpu") -> dict:
    """Copy the tracked and untracked-not-ignored files to ``root``; return the environment to run stages in."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO_ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\n")
    for rel in filter(None, files):
        src = REPO_ROOT / rel
        if src.is_file():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, root / rel)
    (root / "dvc.lock").unlink(missing_ok=True)  # stage outputs start absent, as on a fresh clone
    env = dict(os.environ)
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}", PYTHONPATH=str(root),
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", MPLBACKEND="Agg", AFCORE_DEVICE_GUARD="1")
    run_checked(["git", "init", "-q"], root, env)
    run_checked([sys.executable, "-m", "workbook.params", "use", "smoke"], root, env)
    if device != "cpu":
        params = yaml.safe_load((root / "params.yaml").read_text())
        params["base"]["device"] = device
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return env


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workbook.smoke", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="base.device for every stage: cpu, cuda or cuda:N")
    parser.add_argument("--keep", action="store_true", help="keep the temporary copy (its path is printed)")
    parser.add_argument("targets", nargs="*", help="dvc repro targets (default: the whole pipeline)")
    args = parser.parse_args(argv)
    pick_device(args.device)  # fails here, with the reason, when the device is not there
    root = Path(tempfile.mkdtemp(prefix="afcore-smoke-"))
    try:
        env = prepare(root, args.device)
        t0 = time.perf_counter()
        out = run_checked(["dvc", "repro", *args.targets], root, env)
        stages = [line.split("'")[1] for line in out.stdout.splitlines() if line.startswith("Running stage")]
        print(f"smoke pipeline on {args.device}: {len(stages)} stages ran in {time.perf_counter() - t0:.0f} s")
        print("\n".join(f"  {s}" for s in stages))
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
