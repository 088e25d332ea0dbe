"""Small helpers every notebook uses: seeding and atomic writes of metrics and figures (devices: afcore.device)."""
from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch, so CPU reruns with the same params give the same numbers (the cuDNN
    determinism switches are the device's: ``afcore.device.configure_backends``)."""
    if not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    return torch.Generator().manual_seed(seed)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_write(path: Path, write, suffix: str = ".tmp") -> Path:
    """Write ``path`` through a temporary file in its folder (``write(tmp)``), then rename: a crash, or an exception
    raised by ``write``, never leaves a half-written file. The file gets the usual mode (0666 less the umask), not
    ``mkstemp``'s private 0600. ``suffix`` ends the temporary name (for writers that go by the extension)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def save_torch(obj, path: str | Path) -> Path:
    """``torch.save`` with identical bytes for identical content: torch names the archive's inner folder after the
    file it writes to, so saving to a random temporary name would change the md5 (and DVC's view) at every run."""
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return _atomic_write(path, lambda tmp: Path(tmp).write_bytes(buffer.getvalue()))


def state_checksum(state_dict: dict) -> str:
    """sha256 over a state dict's names and tensor bytes (CPU, contiguous): stored beside the weights so a damaged
    file is refused instead of loaded."""
    import hashlib

    h = hashlib.sha256()
    for name in sorted(state_dict):
        h.update(name.encode())
        h.update(state_dict[name].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """``save_torch`` of ``state`` (holding a ``state_dict``) with its ``sha256`` added."""
    return save_torch(dict(state, sha256=state_checksum(state["state_dict"])), path)


def load_checkpoint(path: str | Path, what: str, stage: str) -> dict:
    """Read a file written by ``save_checkpoint``; a missing, unreadable, damaged or altered file raises an error
    naming the file, ``what`` it should hold and the DVC ``stage`` that re-creates it."""
    fix = f"re-create it with `dvc repro {stage}`"
    if not Path(path).exists():
        raise FileNotFoundError(f"{path} not found: run the {stage} stage first (`dvc repro {stage}`)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
        stored, actual = state.get("sha256"), state_checksum(state["state_dict"])
    except Exception as exc:  # torch / pickle / zip errors of a damaged file, or another kind of file
        raise ValueError(f"{path} cannot be read as {what} ({type(exc).__name__}: {exc}); {fix}") from exc
    if stored is None:
        raise ValueError(f"{path} holds {what} without a checksum (written by an older version); {fix}")
    if stored != actual:
        raise ValueError(f"{path}: the weights do not match their recorded sha256 (the file was damaged); {fix}")
    return state


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _jsonable(value.detach().cpu().tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    return value


def save_json(data: dict, path: str | Path) -> Path:
    """Write metrics as JSON atomically (temporary file, then rename), numbers rounded for readable diffs."""
    text = json.dumps(_jsonable(data), indent=2, sort_keys=False) + "\n"

    def write(tmp):
        Path(tmp).write_text(text)

    return _atomic_write(Path(path), write)


def save_csv(rows: list[dict], path: str | Path) -> Path:
    """Write a list of flat dicts as CSV atomically (DVC plots read these)."""
    if not rows:
        raise ValueError(f"save_csv({path}): no rows to write")
    columns = list(rows[0].keys())

    def write(tmp):
        import csv

        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")  # quotes only fields holding commas, quotes or newlines
            writer.writerow(columns)
            for row in rows:
                writer.writerow([str(_jsonable(row[c])) for c in columns])

    return _atomic_write(Path(path), write)


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Save a matplotlib figure atomically (PNG) without closing it, so the notebook still shows it inline."""
    path = Path(path)

    def write(tmp):
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")

    return _atomic_write(path, write)


def save_gif(frames, path: str | Path, fps: int = 8) -> Path:
    """Save a list of HxW or HxWx3 arrays in [0, 1] (or uint8) as a looping GIF, atomically."""
    import imageio.v2 as imageio

    arrays = []
    for f in frames:
        a = np.asarray(f)
        if a.dtype != np.uint8:
            a = (np.clip(a, 0.0, 1.0) * 255).round().astype(np.uint8)
        arrays.append(a)

    def write(tmp):
        imageio.mimsave(tmp, arrays, format="GIF", duration=1.0 / fps, loop=0)

    return _atomic_write(Path(path), write)
