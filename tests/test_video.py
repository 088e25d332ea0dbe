"""afcore.video: the Warped Diffusion sampler (equivariance self-guidance) and the video metrics."""
from __future__ import annotations

import pytest
import torch

from afcore import flow as FL
from afcore import noise_warp as NW
from afcore import video as V
from afcore.ldm import make_scheduler


def _model(seed=0):
    torch.manual_seed(seed)
    return V.sr_unet((8, 16), latent_channels=2, sample_size=8, groups=4).eval()


def _pan_inputs(t=3, b=2, h=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    m = FL.motion("pan", h, velocity=(0.0, 1.0))
    to_first = torch.stack([m.flow(j, 0, (h, h))[0] for j in range(t)])[:, None].expand(-1, b, -1, -1, -1)
    prev = torch.stack([m.flow(j - 1, j, (h, h))[0] for j in range(1, t)])[:, None].expand(-1, b, -1, -1, -1)
    noises = NW.noise_video("gp_warp", (b, 2, h, h), to_first, generator=g, rff_features=300)
    conds = torch.randn(t, b, 2, h, h, generator=g)
    return noises, conds, prev


def test_unguided_sampler_matches_a_plain_ddim_loop():
    unet = _model()
    noises, conds, _ = _pan_inputs(t=2)
    out = V.sample_video(unet, noises, conds, steps=5)
    sched = make_scheduler("ddim")
    sched.set_timesteps(5)
    x = noises[0]
    with torch.no_grad():
        for t in sched.timesteps:
            eps = unet(torch.cat([x, conds[0]], 1), torch.full((x.shape[0],), int(t))).sample
            x = sched.step(eps, t, x, eta=0.0).prev_sample
    torch.testing.assert_close(out[0], x, atol=1e-6, rtol=0)


def test_lambda_zero_is_bit_identical_to_unguided_sampling():
    unet = _model()
    noises, conds, prev = _pan_inputs()
    plain = V.sample_video(unet, noises, conds, steps=4)
    zero = V.sample_video(unet, noises, conds, steps=4, guidance=0.0, prev_flows=prev)
    assert torch.equal(plain, zero)
    one = V.sample_video(unet, noises, conds, steps=4, guidance=1.0, prev_flows=prev)
    assert torch.equal(one[0], plain[0]) and not torch.equal(one[1], plain[1])


def test_guidance_lowers_the_latent_warping_error_on_integer_pans():
    # a random-weight U-Net on an integer pan: GP-warped noise alone leaves the attention and the border effects;
    # self-guidance (lambda 1, DPS step) must cut the warping error against the previous frame by >= 10x
    unet = _model(1)
    noises, _, prev = _pan_inputs(t=3, b=2, h=8, seed=3)
    conds = torch.zeros_like(noises)  # same (empty) condition for every frame
    plain = V.sample_video(unet, noises, conds, steps=20)
    guided = V.sample_video(unet, noises, conds, steps=20, guidance=1.0, prev_flows=prev)
    first = torch.stack([prev[0], prev[0] + prev[1]])
    we_plain = V.warp_errors(plain, first, prev)["prev"].mean()
    we_guided = V.warp_errors(guided, first, prev)["prev"].mean()
    print(float(we_plain), float(we_guided))
    assert float(we_guided) * 10 <= float(we_plain), (float(we_plain), float(we_guided))


def test_per_video_lambda_and_errors():
    unet = _model()
    noises, conds, prev = _pan_inputs(b=2)
    mixed = V.sample_video(unet, noises, conds, steps=3, guidance=torch.tensor([0.0, 1.0]), prev_flows=prev)
    plain = V.sample_video(unet, noises, conds, steps=3)
    assert torch.equal(mixed[:, 0], plain[:, 0]) and not torch.equal(mixed[:, 1], plain[:, 1])
    with pytest.raises(ValueError, match="prev_flows"):
        V.sample_video(unet, noises, conds, steps=3, guidance=1.0)
    with pytest.raises(ValueError, match="guidance_norm"):
        V.sample_video(unet, noises, conds, steps=3, guidance=1.0, prev_flows=prev, guidance_norm="l2")


def test_warp_errors_zero_on_exact_integer_pan_and_restoration_metrics():
    x = torch.randn(1, 3, 16, 16)
    y = torch.stack([torch.roll(x, (0, j), dims=(-2, -1)) for j in range(3)])  # (T, B, C, H, W)
    m = FL.motion("pan", 16, velocity=(0.0, 1.0))
    prev = torch.stack([m.flow(j - 1, j, (16, 16)) for j in (1, 2)])
    first = torch.stack([m.flow(0, j, (16, 16)) for j in (1, 2)])
    we = V.warp_errors(y, first, prev)
    assert we["first"].abs().max() < 1e-10 and we["prev"].abs().max() < 1e-10
    img = torch.rand(2, 3, 32, 32) * 2 - 1
    r = V.restoration(img, img)
    assert torch.all(r["ssim"] > 0.999) and torch.all(r["mse01"] == 0)
    noisy = (img + 0.1 * torch.randn_like(img)).clamp(-1, 1)
    r = V.restoration(noisy, img)
    expect = 10 * torch.log10(4 / ((noisy - img) ** 2).flatten(1).mean(1))
    torch.testing.assert_close(r["psnr"], expect)


def test_degrade_sr_is_box_then_bicubic():
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    y = V.degrade_sr(x, 4)
    assert y.shape == x.shape
    # area-averaging the degraded image recovers the low-resolution image closely (bicubic is near-interpolating)
    assert float((torch.nn.functional.avg_pool2d(y, 4) - torch.nn.functional.avg_pool2d(x, 4)).abs().mean()) < 0.1


def test_sr_loss_runs_with_both_noises():
    unet = _model()
    sched = make_scheduler("ddpm")
    g = torch.Generator().manual_seed(0)
    z0, c = torch.randn(2, 2, 8, 8), torch.randn(2, 2, 8, 8)
    for kind in ("indep", "gp"):
        loss, logs = V.sr_loss(unet, z0, c, sched, g, noise=kind, rff_features=100)
        assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="noise"):
        V.sr_loss(unet, z0, c, sched, g, noise="pink")
