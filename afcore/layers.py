"""Parameter-free alias-free building blocks: filtered nonlinearity, alias-free down- and up-sampling.

Taught by notebooks 02_resampling_and_nonlinearity and 03_equivariance; used by the Config A-D U-Nets and the
module surgery that makes diffusers models alias-free. Filters are non-persistent buffers: a model patched with
these layers has exactly the parameters and state-dict keys of the unpatched one.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from afcore import signal

METHODS = ("ideal", "kaiser")


class _Resampler(nn.Module):
    """Shared filter settings of the alias-free layers (``method`` ideal FFT or Kaiser FIR)."""

    def __init__(self, factor: int = 2, method: str = "ideal", numtaps: int | None = None, beta: float = 8.0,
                 radial: bool = False, normalize: bool = True, padding: str = "circular"):
        super().__init__()
        signal._check_choice(method, METHODS, "method")
        signal._check_factor(factor)
        self.factor, self.method, self.padding = factor, method, padding
        self.numtaps, self.beta, self.radial, self.normalize = numtaps, beta, radial, normalize
        if method == "kaiser":
            taps = signal._kaiser_taps(factor, numtaps, beta, radial, normalize)
            self.register_buffer("taps", taps, persistent=False)

    def lowpass(self, x: torch.Tensor) -> torch.Tensor:
        if self.method == "ideal":
            return signal.ideal_lowpass(x, 1.0 / self.factor)
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

    def extra_repr(self) -> str:
        extra = f", numtaps={self.taps.shape[-1]}, beta={self.beta}, radial={self.radial}" if self.method == "kaiser" else ""
        return f"factor={self.factor}, method={self.method!r}{extra}"


class AliasFreeDownsample(_Resampler):
    """Low-pass at 1/factor of Nyquist, then keep every factor-th sample (replaces max-pool / strided conv).

    Anjum et al.'s Config B uses ``method="kaiser", radial=True, numtaps=3, beta in {0, 1, 2}``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h % self.factor or w % self.factor:
            raise ValueError(f"input size {(h, w)} must be divisible by factor={self.factor}")
        if self.method == "kaiser":
            return self.fir_down(x)
        return self.lowpass(x)[..., ::self.factor, ::self.factor]


class AliasFreeUpsample(_Resampler):
    """Zero insertion, low-pass at 1/factor, gain factor**2 (replaces bilinear / nearest up-sampling).

    The gain keeps the signal's amplitude; the reference code of Anjum et al. omits it (its output mean drops to
    1/4), which a following GroupNorm partly hides.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.method == "kaiser":
            return self.fir_up(x) * self.factor**2
        h, w = x.shape[-2:]
        z = x.new_zeros(*x.shape[:-2], h * self.factor, w * self.factor)
        z[..., ::self.factor, ::self.factor] = x
        return self.lowpass(z) * self.factor**2


class FilteredActivation(nn.Module):
    """Alias-free pointwise nonlinearity: up-sample by ``up``, apply ``act``, low-pass, down-sample.

    The nonlinearity creates harmonics above the input's band; evaluating it at ``up`` times the rate gives them
    room, and the low-pass removes them before returning to the input grid (StyleGAN3, AF-LDM).
    """

    def __init__(self, act: nn.Module | None = None, up: int = 2, method: str = "ideal", **filter_kwargs):
        super().__init__()
        self.act = act if act is not None else nn.SiLU()
        self.up_layer = AliasFreeUpsample(up, method, **filter_kwargs)
        self.down_layer = AliasFreeDownsample(up, method, **filter_kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_layer(self.act(self.up_layer(x)))


def __getattr__(name):
    # The diffusers module surgery lives in afcore.surgery (it imports diffusers); expose it here as the API names it.
    if name in ("make_alias_free", "save_alias_free", "load_alias_free"):
        from afcore import surgery

        return getattr(surgery, name)
    raise AttributeError(f"module 'afcore.layers' has no attribute {name!r}")
