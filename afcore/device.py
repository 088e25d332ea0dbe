"""Devices: which one a stage runs on, how its backends are set, and seeded generators that live on it.

``resolve_device`` only names the device (and fails clearly when it is not there); ``configure_backends`` sets the
process-wide switches (TF32 and cuDNN on CUDA, the smoke pipeline's guard); ``pick_device`` does both, once, at the
start of a stage.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

_AFCORE = Path(__file__).resolve().parent

DEVICES = ("auto", "cpu", "cuda", "cuda:N")


def resolve_device(device: str = "auto") -> torch.device:
    """Resolve ``base.device``: 'auto' takes CUDA when present, else the CPU; 'cpu', 'cuda' and 'cuda:N' are taken
    literally and fail clearly when that device is not there (no silent fall-back to the CPU). Inside
    ``afcore.devcheck.DeviceCheck`` a CPU run resolves to its simulated accelerator. No side effects."""
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
    from afcore import devcheck

    if devcheck.active() and device == "cpu":
        return devcheck.SIMULATED  # the CPU run stands in for an accelerator: see afcore.devcheck
    return torch.device(device)


def configure_backends(device: torch.device, deterministic: bool = True) -> torch.device:
    """Process-wide switches for a stage on ``device``; returns ``device``.

    On CUDA: TF32 for matmuls and convolutions (about 8x the fp32 throughput of tensor cores, at float32's range
    with a 10-bit mantissa: well inside what training and our metrics need); cuDNN deterministic with autotuning off
    when ``deterministic`` (``base.deterministic``: reruns repeat exactly), else autotuned (faster, not bit-exact;
    the gpu profile's choice). With ``AFCORE_DEVICE_GUARD=1`` (the smoke pipeline) the DeviceGuard is installed."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = bool(deterministic)
    if os.environ.get("AFCORE_DEVICE_GUARD") == "1" and not isinstance(
            torch.overrides._get_current_function_mode(), DeviceGuard):  # the smoke pipeline's check, see DeviceGuard
        DeviceGuard().__enter__()
    return device


def pick_device(device: str = "auto", deterministic: bool = True) -> torch.device:
    """A stage's one call at its start: ``configure_backends(resolve_device(device), deterministic)``."""
    return configure_backends(resolve_device(device), deterministic)


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
        self.roots = tuple(str(r) for r in (roots or (_AFCORE,)))

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


