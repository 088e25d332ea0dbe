"""Make diffusers models alias-free in place, without adding parameters (AF-LDM's module surgery).

Used by the AF-VAE and AF-LDM work (issue 4/5 notebooks, not in the pipeline yet). Three switchable parts:

- ``resample``: every ``Downsample2D`` becomes "conv with stride 1, ideal low-pass at 1/2, every 2nd sample"; every
  ``Upsample2D`` becomes "ideal x2 up-sampling, then its conv" (instead of nearest + conv);
- ``nonlinearity``: every ``ResnetBlock2D``'s nonlinearity becomes the filtered one (x2 up, activation, low-pass,
  down); with ``keep_full_resolution`` the blocks at full image resolution (first down block, last up block) keep
  the plain one, as the AF-LDM reference does in its VAE.

Patched modules keep their class's attributes and parameter names (the class is swapped for a subclass and the
nonlinearity is wrapped by a parameter-free module), so state dicts are unchanged. The patch is recorded in
``model.config["alias_free"]``-like metadata by ``save_alias_free`` and re-applied by ``load_alias_free``.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from afcore import layers, signal

PATCH_FILE = "alias_free.json"


def _downsample_cls():
    from diffusers.models.downsampling import Downsample2D

    class AliasFreeDownsample2D(Downsample2D):
        """Conv at stride 1 (same weights), ideal low-pass at half Nyquist, keep every 2nd sample."""

        def forward(self, hidden_states, *args, **kwargs):
            if self.norm is not None:
                hidden_states = self.norm(hidden_states.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            if self.use_conv:
                conv = self.conv
                hidden_states = F.conv2d(hidden_states, conv.weight, conv.bias, stride=1,
                                         padding=conv.kernel_size[0] // 2)
            return signal.downsample(hidden_states, 2, method="ideal")

    return Downsample2D, AliasFreeDownsample2D


def _upsample_cls():
    from diffusers.models.upsampling import Upsample2D

    class AliasFreeUpsample2D(Upsample2D):
        """Ideal x2 up-sampling (gain 4, scipy.signal.resample convention), then the block's conv."""

        def forward(self, hidden_states, output_size=None, *args, **kwargs):
            if self.norm is not None:
                hidden_states = self.norm(hidden_states.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            if self.use_conv_transpose:
                raise ValueError("make_alias_free: transposed-conv up-samplers are not supported")
            if output_size is not None and tuple(output_size) != tuple(2 * s for s in hidden_states.shape[-2:]):
                raise ValueError(f"make_alias_free: output_size {output_size} is not twice the input size")
            hidden_states = signal.upsample(hidden_states, 2, method="ideal")
            if self.use_conv:
                hidden_states = self.conv(hidden_states) if self.name == "conv" else self.Conv2d_0(hidden_states)
            return hidden_states

    return Upsample2D, AliasFreeUpsample2D


def _full_resolution_blocks(model: nn.Module) -> set[int]:
    """ids of the ResnetBlock2D modules that run at full image resolution (first down, last up block)."""
    blocks = set()
    for owner in (model, getattr(model, "encoder", None), getattr(model, "decoder", None)):
        if owner is None:
            continue
        for name, index in (("down_blocks", 0), ("up_blocks", -1)):
            seq = getattr(owner, name, None)
            if seq is not None and len(seq):
                blocks |= {id(m) for m in seq[index].modules()}
    return blocks


def make_alias_free(model: nn.Module, resample: bool = True, nonlinearity: bool = True,
                    keep_full_resolution: bool | None = None) -> nn.Module:
    """Patch ``model`` in place (see the module docstring); returns it. ``keep_full_resolution`` defaults to True
    for ``AutoencoderKL`` and False otherwise."""
    from diffusers import AutoencoderKL
    from diffusers.models.resnet import ResnetBlock2D

    if getattr(model, "_alias_free_patch", None):
        raise ValueError("make_alias_free: this model is already patched")
    if keep_full_resolution is None:
        keep_full_resolution = isinstance(model, AutoencoderKL)
    down_base, down_af = _downsample_cls()
    up_base, up_af = _upsample_cls()
    skip = _full_resolution_blocks(model) if keep_full_resolution else set()
    for module in model.modules():
        if resample and type(module) is down_base:
            module.__class__ = down_af
        elif resample and type(module) is up_base:
            module.__class__ = up_af
        elif nonlinearity and isinstance(module, ResnetBlock2D) and id(module) not in skip:
            if not isinstance(module.nonlinearity, layers.FilteredActivation):
                module.nonlinearity = layers.FilteredActivation(module.nonlinearity, up=2, method="ideal")
    model._alias_free_patch = {"resample": resample, "nonlinearity": nonlinearity,
                               "keep_full_resolution": keep_full_resolution}
    return model


def save_alias_free(model: nn.Module, path: str | Path) -> Path:
    """``save_pretrained`` plus the recorded patch (``alias_free.json``) so the load function can re-apply it."""
    path = Path(path)
    model.save_pretrained(path)
    patch = getattr(model, "_alias_free_patch", None) or {"resample": False, "nonlinearity": False,
                                                          "keep_full_resolution": False}
    (path / PATCH_FILE).write_text(json.dumps(patch))
    return path


def load_alias_free(model_cls, path: str | Path) -> nn.Module:
    """Load a diffusers model saved by ``save_alias_free`` (or any ``from_pretrained`` path) and re-apply its patch."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found")
    model = model_cls.from_pretrained(path)
    patch_file = path / PATCH_FILE
    if patch_file.exists():
        patch = json.loads(patch_file.read_text())
        if patch["resample"] or patch["nonlinearity"]:
            make_alias_free(model, **patch)
    return model.eval()
