from types import SimpleNamespace

import pytest
import torch

from afcore import ldm
from afcore.ldm import equivariance_loss, sample_latent_shift
from afcore.signal import fourier_shift, valid_mask
from afcore.train import train_loop


class PointwiseNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 4, 1)

    def forward(self, x, t):
        return SimpleNamespace(sample=self.conv(x))


def test_shift_sampler_grid_and_range():
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        dy, dx = sample_latent_shift((8, 16), g)
        assert abs(dy) <= 3 and abs(dx) <= 6
        assert (dy * 8) == int(dy * 8) and (dx * 8) == int(dx * 8)


def test_loss_zero_for_equivariant_net_and_mask():
    net = PointwiseNet()
    x = torch.randn(2, 4, 8, 8)
    loss, mask = equivariance_loss(net, x, torch.tensor([3, 3]), (1.5, -2.0))
    assert loss.item() < 1e-10
    assert mask[:1].sum() == 0 and mask[:, -2:].sum() == 0 and mask[2:, :6].all()
    loss.backward()  # differentiable


class PositionalNet(torch.nn.Module):
    """A 1x1 conv plus a learned position-dependent offset: not shift-equivariant, so both passes matter."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = torch.nn.Conv2d(4, 4, 1)
        self.offset = torch.nn.Parameter(torch.randn(1, 4, 8, 8, generator=g))

    def forward(self, x, t):
        return SimpleNamespace(sample=self.conv(x) + self.offset)


def _grads_of(loss, net):
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(net.parameters()))])


def test_equivariance_loss_stop_gradient_sides():
    """"none" (the reference's default) trains through both passes, "shifted" (the reference's use_stop_grad)
    only through T f(x), "target" only through f(T x); checked against the loss written out by hand."""
    net = PositionalNet()
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    t, d = torch.tensor([3, 3]), (1.5, -2.0)
    mask = valid_mask((8, 8), d)

    def by_hand(detach_shifted, detach_target):
        out = net(fourier_shift(x, d), t).sample
        target = fourier_shift(net(x, t).sample, d)
        out = out.detach() if detach_shifted else out
        target = target.detach() if detach_target else target
        return ((out - target) ** 2 * mask).sum() / (mask.sum() * 2 * 4)

    through_target = _grads_of(by_hand(True, False), net)
    through_shifted = _grads_of(by_hand(False, True), net)
    assert (through_target - through_shifted).norm() > 0.1 * through_target.norm()  # the sides are distinguishable
    expected = {"none": through_target + through_shifted, "shifted": through_target, "target": through_shifted}
    for side, grad in expected.items():
        loss, _ = equivariance_loss(net, x, t, d, stop_grad=side, cfa=False)
        assert torch.allclose(loss, by_hand(False, False), rtol=1e-5, atol=1e-7)
        assert torch.allclose(_grads_of(loss, net), grad, rtol=1e-4, atol=1e-6), side
    with pytest.raises(ValueError, match="stop_grad"):
        equivariance_loss(net, x, t, d, stop_grad=True)


def test_ldm_loss_defaults_to_no_stop_gradient():
    import inspect

    assert inspect.signature(ldm.ldm_loss).parameters["stop_grad"].default == "none"
    assert inspect.signature(ldm.equivariance_loss).parameters["stop_grad"].default == "none"


def test_schedules_af_ldm_by_default_and_sd_as_an_option():
    import numpy as np

    for kind in ("ddim", "ddpm"):
        s = ldm.make_scheduler(kind)
        betas = s.betas.double().numpy()
        expected = np.linspace(0.0015 ** 0.5, 0.0195 ** 0.5, 1000) ** 2  # scaled-linear: linear in sqrt(beta)
        assert np.allclose(betas, expected, rtol=1e-5, atol=0) and s.config.steps_offset == 1
        sd = ldm.make_scheduler(kind, schedule="sd").betas.double().numpy()
        assert np.allclose(sd[[0, -1]], [0.00085, 0.012], rtol=1e-5)
    ddim = ldm.make_scheduler("ddim")
    ddim.set_timesteps(20)
    assert ddim.timesteps.tolist() == list(range(951, 0, -50))  # steps_offset 1: the last step is t = 1
    with pytest.raises(ValueError, match="ldm_schedule"):
        ldm.make_scheduler("ddim", schedule="ldm")


# --- training loss, sampling consistency, resume --------------------------------------------------------------


def tiny_latent_unet():
    torch.manual_seed(0)
    return ldm.latent_unet((8, 16), latent_channels=4, sample_size=8, groups=4)


def test_ldm_loss_without_equivariance_is_the_epsilon_loss():
    unet = tiny_latent_unet()
    z0 = torch.randn(3, 4, 8, 8)
    scheduler = ldm.make_scheduler("ddpm")
    loss, logs = ldm.ldm_loss(unet, z0, scheduler, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)  # draws, in order: timesteps, then noise
    t = torch.randint(0, 1000, (3,), generator=g)
    noise = torch.randn(z0.shape, generator=g)
    expected = torch.nn.functional.mse_loss(unet(scheduler.add_noise(z0, noise, t), t).sample, noise)
    assert torch.allclose(loss, expected) and set(logs) == {"diffusion"}


@pytest.mark.parametrize("cfa", [False, True])
def test_ldm_loss_equivariance_term(cfa):
    scheduler = ldm.make_scheduler("ddpm")
    # an exactly shift-equivariant "U-Net": the equivariance term vanishes, whatever the shift drawn
    loss, logs = ldm.ldm_loss(PointwiseNet(), torch.randn(2, 4, 8, 8), scheduler, torch.Generator().manual_seed(1),
                              eq_weight=1.0, cfa=cfa)
    assert logs["equivariance"] < 1e-10
    # a real U-Net: both terms finite and the total backpropagates into every trained weight
    unet = tiny_latent_unet()
    loss, logs = ldm.ldm_loss(unet, torch.randn(2, 4, 8, 8), scheduler, torch.Generator().manual_seed(1),
                              eq_weight=1.0, cfa=cfa)
    assert set(logs) == {"diffusion", "equivariance"} and logs["equivariance"] > 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in unet.parameters() if p.requires_grad)


def test_shift_consistency_is_exact_for_an_equivariant_net_and_for_a_zero_shift_with_cfa():
    z_T = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    r = ldm.shift_consistency(PointwiseNet(), z_T, [(0.0, 0.375), (1.25, -0.5)], steps=3, cfa=False,
                              decode=lambda z: z.repeat_interleave(2, -1).repeat_interleave(2, -2), factor=2)
    assert r["latent"].shape == (2, 2) and r["per_step"].shape == (2, 3, 2) and r["frames"].shape == (2, 2, 4, 16, 16)
    assert (r["latent"] > 90).all()
    # a U-Net with attention, anchored on its own unshifted run and not shifted: the runs coincide
    r = ldm.shift_consistency(tiny_latent_unet().eval(), z_T, [(0.0, 0.0)], steps=3, cfa=True)
    assert (r["latent"] > 100).all()
    # a real shift, written out by hand: per-sample PSNR on the non-wrapped region, peak = the target's range there
    unet, d = tiny_latent_unet().eval(), (0.0, 0.5)
    r = ldm.shift_consistency(unet, z_T, [d], steps=3, cfa=False)
    target = fourier_shift(ldm.sample(unet, z_T, 3), d)
    out = ldm.sample(unet, fourier_shift(z_T, d), 3)
    m = valid_mask((8, 8), d).bool().expand_as(target)
    by_hand = []
    for i in range(2):
        tgt, o = target[i][m[i]].double(), out[i][m[i]].double()
        by_hand.append(20 * torch.log10(tgt.max() - tgt.min()) - 10 * torch.log10(((o - tgt) ** 2).mean()))
    assert torch.allclose(r["latent"][0].double(), torch.stack(by_hand), atol=1e-3)
    assert torch.equal(r["per_step"][0, -1], r["latent"][0])  # the last step's latent is the final one
    assert (r["latent"] < 60).all()  # not free for a plain U-Net


def test_ldm_training_resumes_exactly(tmp_path):
    z = torch.randn(16, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    scheduler = ldm.make_scheduler("ddpm")

    def get_batch(step):
        g = torch.Generator().manual_seed(step)
        return z[torch.randint(0, 16, (4,), generator=g)], step

    def loss_fn(m, batch, step):
        return ldm.ldm_loss(m, batch[0], scheduler, torch.Generator().manual_seed(int(batch[1])), eq_weight=1.0)

    kwargs = dict(steps=4, lr=1e-3, ema_decay=0.9, ckpt_every=1)
    full, full_ema, _ = train_loop(tiny_latent_unet(), loss_fn, get_batch, ckpt_dir=tmp_path / "a", **kwargs)
    train_loop(tiny_latent_unet(), loss_fn, get_batch, ckpt_dir=tmp_path / "b", stop_after=2, **kwargs)
    resumed, resumed_ema, history = train_loop(tiny_latent_unet(), loss_fn, get_batch, ckpt_dir=tmp_path / "b",
                                               **kwargs)
    assert [h["step"] for h in history] == [1, 2, 3, 4]
    for a, b in zip(list(full.parameters()) + list(full_ema.parameters()),
                    list(resumed.parameters()) + list(resumed_ema.parameters())):
        assert torch.equal(a, b)


def test_ldm_hot_paths_name_their_device():
    """Loss, sampling and shift consistency create every tensor on a named device (a forgotten device= in
    afcore/ldm.py, vae.py, vae_gan.py or attention.py fails here; on a GPU it would be a CPU tensor in the loop)."""
    from afcore import device as device_mod, utils, vae as V, vae_gan as G

    ours = tuple(str(utils.REPO_ROOT / "afcore" / m) for m in ("ldm.py", "vae.py", "vae_gan.py", "attention.py"))
    dev = torch.device("cpu")
    unet = tiny_latent_unet()
    z0 = torch.randn(2, 4, 8, 8, generator=device_mod.make_generator(0, dev), device=dev)
    vae = G.VAEWithDiscriminator(V.small_vae((8, 16), groups=4), G.PatchDiscriminator((8, 16), alias_free=True))
    x = torch.rand(2, 3, 16, 16, generator=device_mod.make_generator(1, dev), device=dev) * 2 - 1
    with device_mod.DeviceGuard(roots=ours):
        for side in ldm.STOP_GRADS:
            loss, _ = ldm.ldm_loss(unet, z0, ldm.make_scheduler("ddpm"), device_mod.make_generator(2, dev),
                                   eq_weight=1.0, stop_grad=side)
            loss.backward()
        with torch.no_grad():
            ldm.shift_consistency(unet.eval(), z0, [(0.0, 0.5)], steps=2, cfa=True, decode=lambda z: z, factor=1)
        loss, _ = G.vae_gan_loss(vae, x, device_mod.make_generator(3, dev), eq_weight=1.0, perceptual_weight=1.0,
                                 perceptual=G.PerceptualFeatures(), gan_weight=0.5)
        loss.backward()
        with torch.no_grad():
            V.enc_dec_spsnr(vae.vae.eval(), x, (0.0, 2.0))


def test_ldm_loss_rejects_a_generator_on_another_device():
    """A generator on another device than the batch (a CPU generator on a CUDA run, say) is a clear ValueError
    naming the argument, before anything is drawn; here the batch sits on the 'meta' device."""
    z0 = torch.empty(2, 4, 8, 8, device="meta")
    with pytest.raises(ValueError, match=r"ldm_loss: generator is on cpu but the batch z0 .* is on meta"):
        ldm.ldm_loss(tiny_latent_unet(), z0, ldm.make_scheduler("ddpm"), torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="generator must be a torch.Generator"):
        ldm.ldm_loss(tiny_latent_unet(), torch.zeros(2, 4, 8, 8), ldm.make_scheduler("ddpm"), 0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_ldm_loss_rejects_a_cpu_generator_on_cuda():
    unet = tiny_latent_unet().cuda()
    z0 = torch.randn(2, 4, 8, 8, device="cuda")
    with pytest.raises(ValueError, match="generator is on cpu"):
        ldm.ldm_loss(unet, z0, ldm.make_scheduler("ddpm"), torch.Generator().manual_seed(0))
    loss, logs = ldm.ldm_loss(unet, z0, ldm.make_scheduler("ddpm"), torch.Generator(device="cuda").manual_seed(0),
                              eq_weight=1.0)
    assert torch.isfinite(loss) and logs["equivariance"].device.type == "cuda"
