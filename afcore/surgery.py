"""Make diffusers models alias-free in place, without adding parameters (AF-LDM's module surgery).

Taught by notebook 20_af_vae (VAE) and used by 30_af_ldm (U-Net); later notebooks use it on ``UNet2DConditionModel``
(AF-SD) and ``ControlNetModel`` (AF-YOSO). Works on ``AutoencoderKL``, ``UNet2DModel``, ``UNet2DConditionModel`` and
``ControlNetModel`` (diffusers 0.42). Three switchable parts:

- ``resample``: every ``Downsample2D`` becomes "conv with stride 1, ideal low-pass at 1/2, every 2nd sample" (the
  new Nyquist bin zeroed, as in the AF-LDM reference; ``nyquist="half"`` keeps it at half weight); every
  ``Upsample2D`` becomes "ideal x2 up-sampling, then its conv" (instead of nearest + conv). Other resampler classes
  (``FirDownsample2D``, ``KDownsample2D``, transposed-conv up-samplers) are not converted;
- ``nonlinearity``: every ``ResnetBlock2D``'s nonlinearity becomes the filtered one (x2 up, activation, low-pass,
  down) on its 4-D feature maps. The same attribute also activates the (batch, channels) time embedding before
  ``time_emb_proj``: that tensor has no spatial axes, so it gets the plain activation (filtering it would mix
  channels and batch samples); with ``keep_full_resolution`` the blocks at full image resolution (first down
  block, last up block) keep the plain one, as the AF-LDM reference does in its VAE (default: only for
  ``AutoencoderKL``). Nonlinearities outside ResNet blocks (``conv_act`` before ``conv_out``, the time-embedding
  MLP, attention feed-forwards) stay plain: "all nonlinearities except those in the last layer" of the paper
  concerns the feature maps, and attention is made equivariant elsewhere (CFA), not by filtering.

Sizes: exact (circular) alias-free resampling needs every down-sampled size even. For the odd sizes that
``UNet2DConditionModel`` accepts (it passes ``output_size`` to its up-samplers), the patched down-sampler keeps
samples 0, 2, ..., i.e. ``ceil(n / 2)`` of them, the grid of the plain stride-2 conv, after the ideal low-pass, and
the patched up-sampler crops the ideal x2 result to ``output_size`` (``2m`` or ``2m - 1``; anything else is a
``ValueError``). Such sizes run, but are not exactly equivariant (the circular grid is not uniform across the seam).

ControlNet: its ``controlnet_cond_embedding`` (pixel-space conv + SiLU with stride-2 convs, ``F.silu`` inline) is
deliberately left untouched, so a patched ControlNet computes the same conditioning features as the plain one.
The AF-LDM reference (AF-YOSO) does not make it alias-free either: it replaces the embedding by identity and feeds
the VAE latent, a model change (it removes parameters) that belongs to the notebook that trains it, not to this
parameter-free patch. Its down blocks and mid block are patched like the U-Net's (its 1x1 zero convs need nothing).

Speed: the patched modules use the fast paths of ``afcore.layers`` (real-FFT resampling, fused filtered SiLU that
keeps only its input for backward) unless ``impl="ref"`` is given here, or later with ``layers.set_impl(model, "ref")``
or globally with ``layers.set_default_impl("ref")``.

Patched modules keep their class's attributes and parameter names (the class is swapped for a subclass and the
nonlinearity is wrapped by a parameter-free module), so state dicts are unchanged. The patch is recorded by
``save_alias_free`` (``alias_free.json`` beside the weights) and re-applied by ``load_alias_free``.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from afcore import layers

PATCH_FILE = "alias_free.json"


@functools.lru_cache(maxsize=None)
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
            return layers.ideal_down2(hidden_states, self.af_impl, getattr(self, "af_nyquist", "zero"))

    return Downsample2D, AliasFreeDownsample2D


@functools.lru_cache(maxsize=None)
def _upsample_cls():
    from diffusers.models.upsampling import Upsample2D

    class AliasFreeUpsample2D(Upsample2D):
        """Ideal x2 up-sampling (gain 4, scipy.signal.resample convention), then the block's conv.

        ``output_size`` (what ``UNet2DConditionModel`` passes for sizes not divisible by its total down factor)
        may be twice the input or one sample less per axis: the ideal x2 result is cropped to it.
        """

        def forward(self, hidden_states, output_size=None, *args, **kwargs):
            if self.use_conv_transpose:
                raise ValueError("make_alias_free: transposed-conv up-samplers are not supported")
            if not self.interpolate:  # this block does not resample at all: nothing to make alias-free
                return super().forward(hidden_states, output_size)
            if self.norm is not None:
                hidden_states = self.norm(hidden_states.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            hidden_states = layers.ideal_up2(hidden_states, output_size, self.af_impl)
            if self.use_conv:
                hidden_states = self.conv(hidden_states) if self.name == "conv" else self.Conv2d_0(hidden_states)
            return hidden_states

    return Upsample2D, AliasFreeUpsample2D


SpatialFilteredActivation = layers.SpatialFilteredActivation  # its home is afcore.layers; kept here by name


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
                    keep_full_resolution: bool | None = None, nyquist: str = "zero",
                    impl: str | None = None) -> nn.Module:
    """Patch ``model`` in place (see the module docstring); returns it. ``keep_full_resolution`` defaults to True
    for ``AutoencoderKL`` and False otherwise (``UNet2DModel``, ``UNet2DConditionModel``, ``ControlNetModel``).
    ``nyquist``: the ideal down-samplers' new-Nyquist bin, ``"zero"`` (reference) or ``"half"``. ``impl``: ``"fast"``,
    ``"ref"`` or None (follow ``afcore.layers``' default at call time); a runtime choice, not saved with the patch.
    ``patched_modules(model)`` counts what was converted."""
    from diffusers import AutoencoderKL
    from diffusers.models.resnet import ResnetBlock2D

    if getattr(model, "_alias_free_patch", None):
        raise ValueError("make_alias_free: this model is already patched")
    if nyquist not in ("zero", "half"):
        raise ValueError(f"nyquist must be one of ['zero', 'half'], got {nyquist!r}")
    if impl is not None and impl not in layers.IMPLS:
        raise ValueError(f"impl must be one of {list(layers.IMPLS)} or None, got {impl!r}")
    if keep_full_resolution is None:
        keep_full_resolution = isinstance(model, AutoencoderKL)
    down_base, down_af = _downsample_cls()
    up_base, up_af = _upsample_cls()
    skip = _full_resolution_blocks(model) if keep_full_resolution else set()
    for module in list(model.modules()):
        if resample and type(module) is down_base:
            module.__class__ = down_af
            module.af_impl, module.af_nyquist = impl, nyquist
        elif resample and type(module) is up_base:
            module.__class__ = up_af
            module.af_impl = impl
        elif nonlinearity and isinstance(module, ResnetBlock2D) and id(module) not in skip:
            if not isinstance(module.nonlinearity, layers.FilteredActivation):
                module.nonlinearity = layers.SpatialFilteredActivation(module.nonlinearity, up=2, method="ideal",
                                                                       nyquist=nyquist, impl=impl)
    model._alias_free_patch = {"resample": resample, "nonlinearity": nonlinearity,
                               "keep_full_resolution": keep_full_resolution}
    if nyquist != "zero":  # recorded only when it differs, so records of default patches stay as they were
        model._alias_free_patch["nyquist"] = nyquist
    return model


def patched_modules(model: nn.Module) -> dict[str, int]:
    """How many modules of ``model`` the surgery converted, by kind, e.g. ``{"Downsample2D": 1, "Upsample2D": 1,
    "ResnetBlock2D": 8}`` (ResNet blocks counted when their nonlinearity is filtered)."""
    from diffusers.models.resnet import ResnetBlock2D

    counts = {"Downsample2D": 0, "Upsample2D": 0, "ResnetBlock2D": 0}
    for module in model.modules():
        if type(module) is _downsample_cls()[1]:
            counts["Downsample2D"] += 1
        elif type(module) is _upsample_cls()[1]:
            counts["Upsample2D"] += 1
        elif isinstance(module, ResnetBlock2D) and isinstance(module.nonlinearity, layers.FilteredActivation):
            counts["ResnetBlock2D"] += 1
    return counts


def save_alias_free(model: nn.Module, path: str | Path) -> Path:
    """``save_pretrained`` plus the recorded patch (``alias_free.json``) so the load function can re-apply it."""
    path = Path(path)
    model.save_pretrained(path)
    patch = getattr(model, "_alias_free_patch", None) or {"resample": False, "nonlinearity": False,
                                                          "keep_full_resolution": False}
    (path / PATCH_FILE).write_text(json.dumps(patch))
    return path


def load_alias_free(model_cls, path: str | Path, impl: str | None = None) -> nn.Module:
    """Load a diffusers model saved by ``save_alias_free`` (or any ``from_pretrained`` path) and re-apply its patch
    (with ``impl``, see ``make_alias_free``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found")
    fix = "re-run the stage that saved it (`dvc repro`)"
    try:
        model = model_cls.from_pretrained(path)
    except Exception as exc:  # diffusers / safetensors errors of a damaged or foreign folder
        raise ValueError(f"{path} cannot be loaded as a {model_cls.__name__} ({type(exc).__name__}: {exc}); "
                         f"{fix}") from exc
    patch_file = path / PATCH_FILE
    if patch_file.exists():
        try:
            patch = json.loads(patch_file.read_text())
            flags = bool(patch["resample"]) or bool(patch["nonlinearity"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{patch_file}: not a patch record written by save_alias_free ({exc}); {fix}") from exc
        if flags:
            make_alias_free(model, **patch, impl=impl)
    return model.eval()
