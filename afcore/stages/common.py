"""What every stage shares: its config base class, seeded generators and batches on the device, timers, mean +-
standard error with paired differences and verdicts, and small image helpers for figures."""
from __future__ import annotations

import dataclasses
import math
import time
import types
import typing
from pathlib import Path

import numpy as np
import torch

from afcore.metrics import mean_sem
from afcore.train import batch_sampler
from afcore.device import make_generator, pick_device

__all__ = ["StageConfig", "ConfigError", "make_generator", "batch_sampler", "pick_device", "sync", "Timer",
           "mean_sem", "paired_mean_sem", "verdict", "to01", "out_path"]


class ConfigError(ValueError):
    """A stage config value is missing, unknown or of the wrong type: the message names the key."""


def _type_ok(value, annotation) -> bool:
    origin = typing.get_origin(annotation)
    if annotation is typing.Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin in (list, tuple):
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        return isinstance(value, (list, tuple)) and all(_type_ok(v, args[0]) for v in value) if args else \
            isinstance(value, (list, tuple))
    if origin is dict:
        return isinstance(value, dict)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


@dataclasses.dataclass(frozen=True)
class StageConfig:
    """Base class of every stage's config: a frozen dataclass whose fields are the keys of its ``params.yaml``
    sections (``SECTIONS``), flattened (a key ``seed`` of ``base`` becomes ``cfg.seed``).

    Build it with ``Config.from_params(params)`` (the whole validated params dict, e.g. ``workbook.params.load()``)
    or ``Config.from_mapping(globals())`` in a notebook whose parameters cell holds the same names. Every field is
    type-checked on construction; ``check()`` adds a stage's own range checks.
    """

    SECTIONS: typing.ClassVar[tuple[str, ...]] = ("base",)
    # the base section, which every stage receives
    profile: str = "cpu"
    seed: int = 0
    device: str = "auto"
    deterministic: bool = True

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not _type_ok(value, hints[f.name]):
                raise ConfigError(f"{type(self).__module__}: {f.name}: expected {hints[f.name]}, got {value!r}")
            if isinstance(value, list):  # frozen and hashable: lists become tuples
                object.__setattr__(self, f.name, tuple(value))
        self.check()

    def check(self) -> None:
        """Range checks of a stage (raise ConfigError naming the key); the base class has none."""

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_mapping(cls, mapping: typing.Mapping, **overrides):
        """Pick this config's fields from ``mapping`` (a notebook's ``globals()``, say); missing fields keep their
        defaults, ``overrides`` win."""
        values = {k: mapping[k] for k in cls.field_names() if k in mapping}
        values.update(overrides)
        unknown = set(overrides) - set(cls.field_names())
        if unknown:
            raise ConfigError(f"{cls.__module__}: unknown keys {sorted(unknown)}; allowed: {cls.field_names()}")
        return cls(**values)

    @classmethod
    def from_params(cls, params: typing.Mapping, **overrides):
        """From a full params dict (``params.yaml`` loaded): the stage's sections, flattened, plus ``overrides``
        (the item of a DVC foreach/matrix stage, e.g. ``dataset="mnist"``)."""
        flat = {}
        for section in cls.SECTIONS:
            if section not in params:
                raise ConfigError(f"{cls.__module__}: params lack the section {section!r}")
            flat.update(params[section])
        return cls.from_mapping(flat, **overrides)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


def sync(device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously: timing without it measures the launch only)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timer:
    """Wall-clock seconds of a block, synchronised with the device: ``with Timer(dev) as t: ...; t.seconds``."""

    def __init__(self, device="cpu"):
        self.device = torch.device(device)
        self.seconds = float("nan")

    def __enter__(self):
        sync(self.device)
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        sync(self.device)
        self.seconds = time.perf_counter() - self._t0
        return False


def paired_mean_sem(a, b) -> tuple[float, float]:
    """Mean +- standard error of the per-unit differences ``a - b`` (same units, same order: a paired comparison).
    Extra trailing axes (shifts, say) are averaged per unit first."""
    a = torch.as_tensor(a, dtype=torch.float64)
    b = torch.as_tensor(b, dtype=torch.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired_mean_sem: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    d = a - b
    if d.ndim > 1:
        d = d.reshape(d.shape[0], -1).mean(1)
    return mean_sem(d)


def verdict(delta: float | None, se: float, k: float = 2.0) -> str:
    """'higher' / 'lower' when the difference exceeds ``k`` standard errors, else 'not resolved' ('' for None)."""
    if delta is None:
        return ""
    if not math.isfinite(delta) or not math.isfinite(se):
        return "not resolved"
    return "not resolved" if abs(delta) <= k * se else ("higher" if delta > 0 else "lower")


def to01(x: torch.Tensor) -> np.ndarray:
    """An image tensor in [-1, 1], (C, H, W) or (H, W), as a [0, 1] array for matplotlib ((H, W, C) or (H, W))."""
    x = ((x.detach().float().clamp(-1, 1) + 1) / 2).cpu()
    if x.ndim == 3:
        x = x.squeeze(0) if x.shape[0] == 1 else x.permute(1, 2, 0)
    return x.numpy()


def out_path(out_dir, *parts) -> Path:
    """``out_dir/parts...`` with its parent folder created."""
    p = Path(out_dir).joinpath(*parts)
    p.parent.mkdir(parents=True, exist_ok=True)
    return p
