"""Parameter-free alias-free building blocks: filtered nonlinearity, alias-free down- and up-sampling.

Taught by notebooks 02_resampling_and_nonlinearity and 03_equivariance; used by the Config A-D U-Nets, the AF-VAE
discriminator and the module surgery (``afcore.surgery``, which imports this module, never the reverse). Filters are
non-persistent buffers: a model patched with these layers has exactly the parameters and state-dict keys of the
unpatched one.

Two implementations give the same results (tested to float tolerance, values and gradients):

- ``impl="fast"`` (the default): ``afcore.fastops``, i.e. polyphase separable FIR resampling, real-FFT ideal
  resampling, and a fused filtered activation that keeps only its input for the backward pass;
- ``impl="ref"``: the straightforward layers (dense 2-D kernel as a depthwise convolution, complex FFT low-pass of
  the zero-inserted tensor, activation composed by autograd), the code the theory notebooks teach with.

A layer built with ``impl=None`` follows the module default at call time: ``set_default_impl("ref")`` switches every
such layer of every model back; ``set_impl(model, "ref")`` switches one model's layers (including those the surgery
installed).
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from afcore import backend, fastops, signal

METHODS = ("ideal", "kaiser")
IMPLS = signal.IMPLS
_DEFAULT = {"impl": "fast"}


def set_default_impl(impl: str) -> None:
    """Module-wide default for layers built with ``impl=None`` (``"fast"`` unless changed)."""
    signal._check_choice(impl, IMPLS, "impl")
    _DEFAULT["impl"] = impl


def get_default_impl() -> str:
    return _DEFAULT["impl"]


@contextlib.contextmanager
def default_impl(impl: str):
    """``with default_impl("ref"): ...`` runs the block with the reference layers."""
    old = _DEFAULT["impl"]
    set_default_impl(impl)
    try:
        yield
    finally:
        _DEFAULT["impl"] = old


def set_impl(model: nn.Module, impl: str | None) -> nn.Module:
    """Set ``impl`` (``"fast"``, ``"ref"`` or None = the module default) on every alias-free module of ``model``."""
    if impl is not None:
        signal._check_choice(impl, IMPLS, "impl")
    for module in model.modules():
        if hasattr(module, "af_impl"):
            module.af_impl = impl
    return model


def _resolve(impl: str | None) -> str:
    return _DEFAULT["impl"] if impl is None else impl


class _Resampler(nn.Module):
    """Shared filter settings of the alias-free layers (``method`` ideal FFT or Kaiser FIR)."""

    def __init__(self, factor: int = 2, method: str = "ideal", numtaps: int | None = None, beta: float = 8.0,
                 radial: bool = False, normalize: bool = True, padding: str = "circular", nyquist: str = "zero",
                 impl: str | None = None):
        super().__init__()
        signal._check_choice(method, METHODS, "method")
        signal._check_choice(padding, signal.PADDINGS, "padding")
        signal._check_choice(nyquist, signal.NYQUIST, "nyquist")
        if impl is not None:
            signal._check_choice(impl, IMPLS, "impl")
        signal._check_factor(factor)
        self.factor, self.method, self.padding, self.nyquist = factor, method, padding, nyquist
        self.numtaps, self.beta, self.radial, self.normalize = numtaps, beta, radial, normalize
        self.af_impl = impl
        self.spec = None
        if method == "kaiser":
            self.spec = signal.fir_spec(factor, numtaps, beta, radial, normalize)
            taps = signal._kaiser_taps(factor, numtaps, beta, radial, normalize)
            self.register_buffer("taps", taps, persistent=False)

    @property
    def impl(self) -> str:
        return _resolve(self.af_impl)

    # ------------------------------------------------------------------ reference path (the original layers)
    def lowpass(self, x: torch.Tensor) -> torch.Tensor:
        if self.method == "ideal":
            return _complex_ideal_lowpass(x, 1.0 / self.factor, self.nyquist)
        return signal.fir_filter(x, self.taps.to(x.dtype), padding=self.padding)

    def _kernel_2d(self, x: torch.Tensor) -> torch.Tensor:
        taps = self.taps.to(device=x.device, dtype=x.dtype)
        return torch.outer(taps, taps) if taps.ndim == 1 else taps

    def _pad(self, x: torch.Tensor, half: int) -> torch.Tensor:
        if self.padding == "circular":
            return F.pad(x, (half,) * 4, mode="circular")
        return F.pad(x, (half,) * 4)

    def fir_down(self, x: torch.Tensor) -> torch.Tensor:
        """Filter and keep every factor-th sample in one strided depthwise convolution (same result)."""
        k = self._kernel_2d(x).flip(0, 1)
        half = k.shape[-1] // 2
        lead, (h, w) = x.shape[:-2], x.shape[-2:]
        flat = x.reshape(1, -1, h, w)
        c = flat.shape[1]
        out = F.conv2d(self._pad(flat, half), k.expand(c, 1, *k.shape), stride=self.factor, groups=c)
        return out.reshape(*lead, *out.shape[-2:])

    def fir_up(self, x: torch.Tensor) -> torch.Tensor:
        """Zero insertion + filter as one transposed depthwise convolution (polyphase; same result)."""
        k = self._kernel_2d(x)
        f, n = self.factor, k.shape[-1]
        half = n // 2
        lead, (h, w) = x.shape[:-2], x.shape[-2:]
        flat = x.reshape(1, -1, h, w)
        c = flat.shape[1]
        if self.padding == "circular":
            # wrap enough input samples so the scattered taps cover the borders, then crop the centre
            m = -(-half // f)
            flat = F.pad(flat, (m,) * 4, mode="circular")
            out = F.conv_transpose2d(flat, k.expand(c, 1, n, n), stride=f, groups=c)
            start = m * f + half
            out = out[..., start:start + h * f, start:start + w * f]
        else:
            out = F.conv_transpose2d(flat, k.expand(c, 1, n, n), stride=f, padding=half, groups=c,
                                     output_padding=f - 1 - (n - 1 - 2 * half))
            out = out[..., :h * f, :w * f]
        return out.reshape(*lead, h * f, w * f)

    def ref_down(self, x: torch.Tensor) -> torch.Tensor:
        if self.method == "kaiser":
            return self.fir_down(x)
        return self.lowpass(x)[..., ::self.factor, ::self.factor]

    def ref_up(self, x: torch.Tensor) -> torch.Tensor:
        if self.method == "kaiser":
            return self.fir_up(x) * self.factor**2
        h, w = x.shape[-2:]
        z = x.new_zeros(*x.shape[:-2], h * self.factor, w * self.factor)
        z[..., ::self.factor, ::self.factor] = x
        return _complex_ideal_lowpass(z, 1.0 / self.factor, "half") * self.factor**2

    # ------------------------------------------------------------------ fast path
    def fast_down(self, x: torch.Tensor) -> torch.Tensor:
        if self.method == "kaiser":
            return fastops.fir_down(x, self.spec, self.padding)
        return fastops.ideal_down(x, self.factor, self.nyquist)

    def fast_up(self, x: torch.Tensor) -> torch.Tensor:
        if self.method == "kaiser":
            return fastops.fir_up(x, self.spec, self.padding)
        return fastops.ideal_up(x, self.factor)

    def extra_repr(self) -> str:
        if self.method == "kaiser":
            extra = f", numtaps={self.taps.shape[-1]}, beta={self.beta}, radial={self.radial}, padding={self.padding!r}"
        else:
            extra = f", nyquist={self.nyquist!r}"
        return f"factor={self.factor}, method={self.method!r}{extra}, impl={self.af_impl!r}"


def _complex_ideal_lowpass(x: torch.Tensor, cutoff: float, edge: str) -> torch.Tensor:
    """The original layers' ideal low-pass: full complex FFT times the square mask (kept as the reference path)."""
    h, w = x.shape[-2:]
    mask = signal._ideal_mask_1d(h, cutoff, x.device, edge)[:, None] * signal._ideal_mask_1d(w, cutoff, x.device,
                                                                                                edge)[None, :]
    cdtype = torch.complex64 if x.dtype != torch.float64 else torch.complex128
    return torch.fft.ifft2(torch.fft.fft2(x.to(cdtype)) * mask.to(cdtype)).real.to(x.dtype)


class AliasFreeDownsample(_Resampler):
    """Low-pass at 1/factor of Nyquist, then keep every factor-th sample (replaces max-pool / strided conv).

    Anjum et al.'s Config B uses ``method="kaiser", radial=True, numtaps=3, beta in {0, 1, 2}``. The ideal method
    zeroes the new Nyquist bin by default (``nyquist="zero"``, the AF-LDM reference); ``nyquist="half"`` keeps it at
    half weight (the adjoint of the ideal up-sampler; see ``afcore.signal.downsample``).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h % self.factor or w % self.factor:
            raise ValueError(f"input size {(h, w)} must be divisible by factor={self.factor}")
        return self.fast_down(x) if self.impl == "fast" else self.ref_down(x)


class AliasFreeUpsample(_Resampler):
    """Zero insertion, low-pass at 1/factor, gain factor**2 (replaces bilinear / nearest up-sampling).

    The gain keeps the signal's mean; the reference code of Anjum et al. omits it (its output mean drops to 1/4),
    which a following GroupNorm partly hides. With their 3x3 jinc a constant comes out as a checkerboard (about
    0.88-1.10 of it for beta 1, normalised): the filter's phases have unequal DC gains (see
    ``afcore.signal.upsample``); that is the paper's filter, not a defect of this layer.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fast_up(x) if self.impl == "fast" else self.ref_up(x)


class FilteredActivation(nn.Module):
    """Alias-free pointwise nonlinearity: up-sample by ``up``, apply ``act``, low-pass, down-sample.

    The nonlinearity creates harmonics above the input's band; evaluating it at ``up`` times the rate gives them
    room, and the low-pass removes them before returning to the input grid (StyleGAN3, AF-LDM). The fast path is one
    autograd function that saves only the input (``afcore.fastops.filtered_activation``, ``fused=True``); activations
    with parameters (e.g. PReLU) always take the unfused composition so that their parameters get gradients.

    ``fused=None`` (default) fuses every filter, except the short radial (jinc) kernels of Config B-D where the
    compiled CPU kernel is not taken (GPU tensors, planes under ``backend.KERNEL_MIN_SIDE`` px, no compiler): there
    their up-sampler is a cheap 3x3 convolution, and recomputing it in the backward pass costs more time (measured
    about 1.2-1.3x per forward+backward on CPU) than keeping its output saves, so they run the fast resamplers
    composed by autograd, which keeps the x2 intermediates for backward. In the kernel the fused op is the faster
    one for every filter (``metrics/bench_signal.json``). The choice is made per call (``uses_fused``).
    """

    def __init__(self, act: nn.Module | None = None, up: int = 2, method: str = "ideal", impl: str | None = None,
                 fused: bool | None = None, **filter_kwargs):
        super().__init__()
        self.act = act if act is not None else nn.SiLU()
        self.up_layer = AliasFreeUpsample(up, method, impl=impl, **filter_kwargs)
        self.down_layer = AliasFreeDownsample(up, method, impl=impl, **filter_kwargs)
        self.af_impl = impl
        self.fused = fused
        self.radial = method == "kaiser" and bool(filter_kwargs.get("radial", False))

    @property
    def impl(self) -> str:
        return _resolve(self.af_impl)

    def uses_fused(self, x: torch.Tensor) -> bool:
        """Whether the fast path fuses for input x (``fused``, or by default: see the class docstring)."""
        if self.fused is not None:
            return self.fused
        return not self.radial or backend.use_kernel(x, self.act, self.down_layer.spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.impl == "ref" or not self.uses_fused(x) or any(True for _ in self.act.parameters()):
            down, up = self.down_layer, self.up_layer
            if self.impl == "ref":
                return down.ref_down(self.act(up.ref_up(x)))
            return down.fast_down(self.act(up.fast_up(x)))
        d = self.down_layer
        return fastops.filtered_activation(x, self.act, d.factor, d.method, d.spec, d.padding, d.nyquist)


class SpatialFilteredActivation(FilteredActivation):
    """``FilteredActivation`` on 4-D feature maps; the plain activation on tensors without two spatial axes.

    ``ResnetBlock2D`` applies one ``nonlinearity`` module both to its feature maps and to the (batch, channels)
    time embedding; only the former has a spectrum to protect.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            return self.act(x)
        return super().forward(x)


def ideal_down2(x: torch.Tensor, impl: str | None = None, nyquist: str = "zero") -> torch.Tensor:
    """Ideal low-pass at half Nyquist, keep samples 0, 2, ... (``signal.downsample`` when both sizes are even; an odd
    size keeps ``ceil(n / 2)`` samples, the grid of a stride-2 conv)."""
    impl = _resolve(impl)
    h, w = x.shape[-2:]
    if h % 2 == 0 and w % 2 == 0:
        if impl == "fast":
            return fastops.ideal_down(x, 2, nyquist)
        return _complex_ideal_lowpass(x, 0.5, nyquist)[..., ::2, ::2]
    if impl == "fast":
        return fastops.ideal_lowpass(x, 0.5, nyquist)[..., ::2, ::2]
    return _complex_ideal_lowpass(x, 0.5, nyquist)[..., ::2, ::2]


def ideal_up2(x: torch.Tensor, output_size=None, impl: str | None = None) -> torch.Tensor:
    """Ideal x2 up-sampling (gain 4, ``scipy.signal.resample``), cropped to ``output_size`` when that is one sample
    short per axis (odd sizes); anything else is a ``ValueError``."""
    h, w = x.shape[-2:]
    if _resolve(impl) == "fast":
        up = fastops.ideal_up(x, 2)
    else:
        z = x.new_zeros(*x.shape[:-2], 2 * h, 2 * w)
        z[..., ::2, ::2] = x
        up = _complex_ideal_lowpass(z, 0.5, "half") * 4
    if output_size is None:
        return up
    out = tuple(int(s) for s in output_size)
    if len(out) != 2 or out[0] not in (2 * h, 2 * h - 1) or out[1] not in (2 * w, 2 * w - 1):
        raise ValueError(f"output_size must be (2h or 2h-1, 2w or 2w-1) = {((2 * h, 2 * h - 1), (2 * w, 2 * w - 1))} "
                         f"for an input of size {(h, w)}, got {tuple(output_size)}")
    return up[..., :out[0], :out[1]]
