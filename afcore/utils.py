"""Small helpers every notebook uses: seeding, device choice, atomic writes of metrics and figures."""
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


def seed_everything(seed: int, deterministic: bool = True) -> torch.Generator:
    """Seed python, numpy and torch (and cudnn), so CPU reruns with the same params give the same numbers."""
    if not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    return torch.Generator().manual_seed(seed)


DEVICES = ("auto", "cpu", "cuda", "cuda:N")


def pick_device(device: str = "auto") -> torch.device:
    """Resolve ``base.device``: 'auto' takes CUDA when present, else the CPU; 'cpu', 'cuda' and 'cuda:N' are taken
    literally and fail clearly when that device is not there (no silent fall-back to the CPU).

    On CUDA this also allows TF32 for matmuls and convolutions (about 8x the fp32 throughput of tensor cores, at
    float32's range with a 10-bit mantissa: well inside what training and our metrics need)."""
    if not isinstance(device, str) or (device not in DEVICES[:3] and not device.startswith("cuda:")):
        raise ValueError(f"base.device must be one of {list(DEVICES)}, got {device!r}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"base.device={device!r} but torch sees no CUDA device on this machine; "
                             "use 'cpu' or 'auto'")
        index = device.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise ValueError(f"base.device={device!r}: this machine has CUDA devices 0..{torch.cuda.device_count() - 1}")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    from afcore import devcheck

    if devcheck.active() and device == "cpu":
        return devcheck.SIMULATED  # the CPU run stands in for an accelerator: see afcore.devcheck
    if os.environ.get("AFCORE_DEVICE_GUARD") == "1" and not isinstance(
            torch.overrides._get_current_function_mode(), DeviceGuard):  # the smoke pipeline's check, see DeviceGuard
        DeviceGuard().__enter__()
    return torch.device(device)


FACTORIES = frozenset({"randn", "rand", "randint", "randperm", "normal", "zeros", "ones", "full", "empty", "arange",
                       "linspace", "logspace", "eye"})


class DeviceGuardError(RuntimeError):
    """A tensor factory in the workbook's own code was called without naming its device."""


class DeviceGuard(torch.overrides.TorchFunctionMode):
    """Fail when the workbook's code (``afcore/`` or a notebook cell) calls a tensor factory (``torch.randn``,
    ``zeros``, ``arange``, ...) without an explicit ``device=``.

    On a CPU-only machine a forgotten device is invisible: the tensor lands on the CPU, where everything else is too.
    On a GPU it means a CPU tensor in a hot loop (slow) or a device-mismatch crash. Naming the device at every
    factory call, ``device="cpu"`` included for host-side bookkeeping, makes the omission testable here: the smoke
    pipeline runs with ``AFCORE_DEVICE_GUARD=1``, which makes ``pick_device`` install this guard for the whole stage.
    Library code (torch, diffusers, torchmetrics) is not checked.
    """

    def __init__(self, roots=None):
        super().__init__()
        self.roots = tuple(str(r) for r in (roots or (REPO_ROOT / "afcore",)))

    def _ours(self, filename: str) -> bool:
        return filename.startswith(self.roots) or "ipykernel_" in filename or filename.startswith("<ipython-input")

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") in FACTORIES and "device" not in kwargs:
            import sys

            frame = sys._getframe(1)
            while frame is not None and "/torch/" in frame.f_code.co_filename:
                frame = frame.f_back
            if frame is not None and self._ours(frame.f_code.co_filename):
                raise DeviceGuardError(f"torch.{func.__name__}(...) without device= at "
                                       f"{frame.f_code.co_filename}:{frame.f_lineno}: name the device it belongs on")
        return func(*args, **kwargs)


def make_generator(seed: int, device="cpu") -> torch.Generator:
    """A seeded ``torch.Generator`` on ``device``: random tensors are drawn where they are used (no CPU draw and
    copy in a hot loop), and a seeded run repeats exactly on the same device (CPU and CUDA streams differ)."""
    return torch.Generator(device=torch.device(device)).manual_seed(int(seed))


def _atomic_write(path: Path, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


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
        with open(tmp, "w") as fh:
            fh.write(",".join(columns) + "\n")
            for row in rows:
                fh.write(",".join(str(_jsonable(row[c])) for c in columns) + "\n")

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
