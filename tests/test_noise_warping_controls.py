"""The pieces issue 24 added to stage noise_warping: the residual model's parameterisation, the exact (Fourier) pan
warp, shared noise draws across warp methods, the paper-scaled lambda and the GP noise's neighbour correlation."""
from __future__ import annotations

import math

import pytest
import torch

from afcore import flow as FL, ldm, noise_warp as NW, video as VID
from afcore.stages import noise_warping as stage


class _ConstResidual(torch.nn.Module):
    """A stand-in network that predicts a fixed residual whatever its input."""

    def __init__(self, r):
        super().__init__()
        self.r = r

    def forward(self, inp, t):
        return type("Out", (), {"sample": self.r.expand(inp.shape[0], -1, -1, -1)})()


def test_residual_model_is_an_epsilon_model_whose_clean_estimate_is_input_plus_residual():
    sched = ldm.make_scheduler("ddpm", schedule=VID.SCHEDULE)
    g = torch.Generator().manual_seed(0)
    c, r = torch.randn(3, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    model = stage.ResidualSR(_ConstResidual(r), sched.alphas_cumprod)
    y = torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([0, 500, 999])
    eps = model(torch.cat([y, c], 1), t).sample
    a = sched.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    x0 = (y - (1 - a).sqrt() * eps) / a.sqrt()  # what the DDIM sampler computes from the epsilon
    assert torch.allclose(x0, c + r, atol=1e-4)
    # a network that knows nothing (zero residual) samples its input: DDIM from any noise ends at c, up to the
    # schedule's last noise level (alpha_bar_0 = 0.99915: a leftover of std 0.03 times the noise)
    zero = stage.ResidualSR(_ConstResidual(torch.zeros(1, 4, 8, 8)), sched.alphas_cumprod)

    class Net(torch.nn.Module):  # sample_video's calling convention
        def forward(self, inp, t):
            return zero(inp, t)

    out = VID.sample_video(Net(), torch.randn(2, 3, 4, 8, 8, generator=g), c[None].expand(2, -1, -1, -1, -1), 5)
    assert float((out - c[None]).pow(2).mean()) < 0.002


def test_fourier_warp_is_exact_for_pans():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 16, 16, generator=g)
    flow = torch.zeros(2, 2, 16, 16)
    flow[0, 0], flow[0, 1], flow[1, 0], flow[1, 1] = 2.0, -3.0, -1.0, 0.0
    y, m = FL.fourier_warp(x, flow)
    yb, mb = FL.backward_warp(x, flow)
    assert torch.equal(m, mb) and torch.allclose(y * m, yb * mb, atol=1e-5)  # integer shifts: the same as bilinear
    # a sub-pixel shift of a band-limited periodic signal is undone exactly; bilinear blurs it
    k = 3
    p = torch.arange(16.0)
    sig = torch.cos(2 * math.pi * k * p / 16)[None, None, None].expand(1, 1, 16, 16)
    d = 0.35
    flow = torch.zeros(1, 2, 16, 16)
    flow[:, 1] = d
    want = torch.cos(2 * math.pi * k * (p + d) / 16)[None, None, None].expand(1, 1, 16, 16)
    y, m = FL.fourier_warp(sig, flow)
    assert torch.allclose(y * m, want * m, atol=1e-5)
    yb, _ = FL.backward_warp(sig, flow)
    assert ((yb - want) * m).abs().max() > 1e-2
    with pytest.raises(ValueError, match="constant flow"):
        FL.fourier_warp(x, torch.randn(2, 2, 16, 16, generator=g))


def test_warp_methods_share_their_draws():
    cfg = stage.Config().replace(warp_frame_size=32, warp_frames=3, warp_videos=2, warp_rff_features=16,
                                 warp_hiwyn_factor=2)
    videos = stage.make_videos(cfg)["T2"]  # integer latent-pixel pans
    lat = type("L", (), {"factor": 4, "shape": (4, 8, 8), "device": torch.device("cpu")})()
    noise = {m: stage.noises_for(cfg, lat, m, videos) for m in ("fixed", "nearest", "bilinear", "hiwyn", "gp_fixed",
                                                               "gp_nearest", "gp_warp")}
    # frame 0 is the same draw for every white method, and for every GP method
    assert all(torch.equal(noise[m][0], noise["fixed"][0]) for m in ("nearest", "bilinear", "hiwyn"))
    assert torch.allclose(noise["gp_warp"][0], noise["gp_fixed"][0], atol=1e-5)
    # on integer pans nearest and bilinear warping give identical noise; GP warping agrees with GP nearest where
    # the content comes from inside frame 0 (1 latent px a frame, 3 frames: 2 px from the border)
    assert torch.equal(noise["nearest"], noise["bilinear"])
    inner = (slice(None), slice(None), slice(None), slice(2, -2), slice(2, -2))
    assert torch.allclose(noise["gp_warp"][inner], noise["gp_nearest"][inner], atol=1e-4)
    # a video's noise does not depend on the other videos of the batch
    alone = stage.noises_for(cfg, lat, "nearest", videos[1:], indices=[1])
    assert torch.equal(alone, noise["nearest"][:, 1:])


def test_paper_scaled_lambda_and_sweep():
    cfg = stage.Config().replace(warp_guidance=1.0, warp_guidance_sweep=(0.0, 0.3, 1.0))  # 0 and 1: runs of their own
    assert stage.paper_scaled_lambda(cfg, (4, 16, 16)) == pytest.approx(1 / 8)
    assert stage.paper_scaled_lambda(cfg, (4, 128, 128)) == pytest.approx(1.0)
    assert stage.sweep(cfg, (4, 16, 16)) == [0.125, 0.3]


def test_gp_neighbour_correlation_is_the_truncated_kernels():
    # without the cut the kernel's lag-1 correlation is exp(-pi^2 / 8) = 0.291; the cut at |z| <= 2 / l gives 0.391
    assert NW.truncated_correlation(1.0, truncation=50.0) == pytest.approx(math.exp(-math.pi ** 2 / 8), abs=1e-4)
    rho = NW.truncated_correlation(1.0, truncation=2.0)
    assert rho == pytest.approx(0.391, abs=1e-3)
    # and the drawn noise has it (400 draws of 32x32 with 2000 features: SE of the estimate ~0.003)
    n = NW.RFFNoise(400, 1, features=2000, truncation=2.0, generator=torch.Generator().manual_seed(2))(
        grid_size=(32, 32)).double()
    emp = float((n[..., :, 1:] * n[..., :, :-1]).mean() / (n ** 2).mean())
    assert emp == pytest.approx(rho, abs=0.02)


def test_high_energy_ratio_scores_blur_below_one():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 16, 16, generator=g)
    blur = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(x, (1, 1, 1, 1), mode="circular"), 3, stride=1)
    assert torch.allclose(stage.high_energy(x) / stage.high_energy(x), torch.ones(2))
    assert (stage.high_energy(blur) / stage.high_energy(x) < 0.2).all()
