from types import SimpleNamespace

import pytest
import torch

from afcore import ldm
from afcore.attention import EquivariantAttention
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
    """Each component takes exactly the multiples of 1/8 in [-0.375 n, 0.375 n] (3 for n = 8, 6 for n = 16)."""
    g = torch.Generator().manual_seed(0)
    draws = [sample_latent_shift((8, 16), g) for _ in range(3000)]
    assert {round(dy * 8) for dy, _ in draws} == set(range(-24, 25))
    assert {round(dx * 8) for _, dx in draws} == set(range(-48, 49))
    assert all(dy * 8 == round(dy * 8) and dx * 8 == round(dx * 8) for dy, dx in draws)


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


def _paired_by_hand(net, x, t, d, cfa):
    """(f(x), f(T_d x)) written out; with ``cfa`` the shifted pass takes keys/values recorded from x in a pass under
    no_grad: constants, as the reference stores them (``hidden_states.detach()``)."""
    if not cfa:
        return net(x, t).sample, net(fourier_shift(x, d), t).sample
    with EquivariantAttention(net) as eq:
        eq.record()
        with torch.no_grad():
            net(x, t)
        eq.off()
        ref = net(x, t).sample
        eq.use()
        return ref, net(fourier_shift(x, d), t).sample


def _masked_err(out, target, d):
    mask = valid_mask(out.shape[-2:], d)
    return ((out - target) ** 2 * mask).sum() / (mask.sum() * out.shape[0] * out.shape[1])


@pytest.mark.parametrize("cfa", [False, True])
def test_equivariance_loss_stop_gradient_sides(cfa):
    """"none" (the reference's default) trains through both passes, "shifted" (the reference's use_stop_grad)
    only through T f(x), "target" only through f(T x); checked against the loss written out by hand, without CFA
    (a position-dependent net) and with CFA (a U-Net with attention, the stored keys/values constants)."""
    net = tiny_latent_unet() if cfa else PositionalNet()
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    t, d = torch.tensor([3, 3]), (1.5, -2.0)

    def by_hand(detach_shifted, detach_target):
        ref, out = _paired_by_hand(net, x, t, d, cfa)
        target = fourier_shift(ref, d)
        out = out.detach() if detach_shifted else out
        target = target.detach() if detach_target else target
        return _masked_err(out, target, d)

    through_target = _grads_of(by_hand(True, False), net)
    through_shifted = _grads_of(by_hand(False, True), net)
    assert (through_target - through_shifted).norm() > 0.1 * through_target.norm()  # the sides are distinguishable
    expected = {"none": through_target + through_shifted, "shifted": through_target, "target": through_shifted}
    for side, grad in expected.items():
        loss, _ = equivariance_loss(net, x, t, d, stop_grad=side, cfa=cfa)
        assert torch.allclose(loss, by_hand(False, False), rtol=1e-5, atol=1e-7)
        assert torch.allclose(_grads_of(loss, net), grad, rtol=1e-4, atol=1e-6), side
    with pytest.raises(ValueError, match="stop_grad"):
        equivariance_loss(net, x, t, d, stop_grad=True)


def _ldm_loss_by_hand(net, z0, seed, eq_weight, cfa, detach_shifted=False, detach_target=False):
    """ldm_loss written out from the generator's draws (timesteps, noise, shift), the noising from the AF-LDM
    schedule's betas (scaled-linear 0.0015..0.0195) rather than the scheduler's add_noise."""
    g = torch.Generator().manual_seed(seed)
    b = z0.shape[0]
    t = torch.randint(0, 1000, (b,), generator=g)
    noise = torch.randn(z0.shape, generator=g)
    betas = torch.linspace(0.0015 ** 0.5, 0.0195 ** 0.5, 1000, dtype=torch.float64) ** 2
    abar = torch.cumprod(1 - betas, 0)[t].float().view(b, 1, 1, 1)
    x_t = abar.sqrt() * z0 + (1 - abar).sqrt() * noise
    if eq_weight <= 0:
        return torch.mean((net(x_t, t).sample - noise) ** 2), None
    k = [int(0.375 * n * 8) for n in z0.shape[-2:]]
    d = tuple(int(torch.randint(-kk, kk + 1, (1,), generator=g)) / 8 for kk in k)
    ref, out = _paired_by_hand(net, x_t, t, d, cfa)
    target = fourier_shift(ref, d)
    out = out.detach() if detach_shifted else out
    target = target.detach() if detach_target else target
    eps = torch.mean((ref - noise) ** 2)
    return eps + eq_weight * _masked_err(out, target, d), d


def test_ldm_loss_defaults_to_no_stop_gradient():
    """Called without ``stop_grad``, ldm_loss and equivariance_loss train through both passes: their gradients equal
    those of the loss written out with nothing detached, not those with either side detached."""
    net = PositionalNet()
    z0 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    sched = ldm.make_scheduler("ddpm")
    loss, _ = ldm.ldm_loss(net, z0, sched, torch.Generator().manual_seed(9), eq_weight=1.0, cfa=False)
    hand, d = _ldm_loss_by_hand(net, z0, 9, 1.0, cfa=False)
    assert d != (0.0, 0.0)
    grad = _grads_of(loss, net)
    torch.testing.assert_close(grad, _grads_of(hand, net), rtol=1e-4, atol=1e-6)
    for detach in ((True, False), (False, True)):
        other = _grads_of(_ldm_loss_by_hand(net, z0, 9, 1.0, False, *detach)[0], net)
        assert (grad - other).norm() > 0.01 * grad.norm()
    x, t, d = torch.randn(2, 4, 8, 8), torch.tensor([3, 3]), (1.5, -2.0)
    eq, _ = equivariance_loss(net, x, t, d, cfa=False)
    ref, out = _paired_by_hand(net, x, t, d, False)
    torch.testing.assert_close(_grads_of(eq, net), _grads_of(_masked_err(out, fourier_shift(ref, d), d), net),
                               rtol=1e-4, atol=1e-6)


def test_cfa_detach_default_stops_the_gradient_through_the_stored_keys_and_values():
    """cfa_detach=True (the default, the reference's): the gradient equals that of the loss whose shifted pass
    takes its keys/values from a no_grad pass (no gradient through them); cfa_detach=False adds the gradient through
    the stored keys/values, which is clearly non-zero. Checked on equivariance_loss and on ldm_loss."""
    unet = tiny_latent_unet()
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    t, d = torch.tensor([300, 300]), (1.5, -2.0)
    ref, out = _paired_by_hand(unet, x, t, d, cfa=True)
    g_const = _grads_of(_masked_err(out, fourier_shift(ref, d), d), unet)
    g_default = _grads_of(equivariance_loss(unet, x, t, d)[0], unet)
    g_true = _grads_of(equivariance_loss(unet, x, t, d, cfa_detach=True)[0], unet)
    g_false = _grads_of(equivariance_loss(unet, x, t, d, cfa_detach=False)[0], unet)
    torch.testing.assert_close(g_default, g_const, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(g_true, g_const, rtol=1e-4, atol=1e-6)
    through_kv = g_false - g_const  # the gradient through the stored keys/values
    assert through_kv.norm() > 0.01 * g_const.norm()
    # the loss value does not depend on the option
    torch.testing.assert_close(equivariance_loss(unet, x, t, d, cfa_detach=False)[0],
                               equivariance_loss(unet, x, t, d)[0])
    # ldm_loss: the same, from the generator's draws
    z0 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    sched = ldm.make_scheduler("ddpm")
    hand, _ = _ldm_loss_by_hand(unet, z0, 4, 1.0, cfa=True)
    g_hand = _grads_of(hand, unet)
    loss, _ = ldm.ldm_loss(unet, z0, sched, torch.Generator().manual_seed(4), eq_weight=1.0)
    torch.testing.assert_close(_grads_of(loss, unet), g_hand, rtol=1e-4, atol=1e-6)
    loss_false, _ = ldm.ldm_loss(unet, z0, sched, torch.Generator().manual_seed(4), eq_weight=1.0, cfa_detach=False)
    assert (_grads_of(loss_false, unet) - g_hand).norm() > 0.01 * g_hand.norm()
    with pytest.raises(ValueError, match="cfa_detach"):
        ldm.ldm_loss(unet, z0, sched, torch.Generator().manual_seed(4), eq_weight=1.0, cfa_detach="yes")


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
    """The epsilon MSE at x_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps, written out from the generator's draws
    (timesteps, then noise) and the schedule's betas."""
    unet = tiny_latent_unet()
    z0 = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(6))
    loss, logs = ldm.ldm_loss(unet, z0, ldm.make_scheduler("ddpm"), torch.Generator().manual_seed(5))
    expected, _ = _ldm_loss_by_hand(unet, z0, 5, 0.0, cfa=False)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-7)
    assert set(logs) == {"diffusion"}
    torch.testing.assert_close(logs["diffusion"], expected.detach(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("cfa", [False, True])
def test_ldm_loss_equivariance_term(cfa):
    scheduler = ldm.make_scheduler("ddpm")
    # an exactly shift-equivariant "U-Net": the equivariance term vanishes, whatever the shift drawn
    loss, logs = ldm.ldm_loss(PointwiseNet(), torch.randn(2, 4, 8, 8), scheduler, torch.Generator().manual_seed(1),
                              eq_weight=1.0, cfa=cfa)
    assert logs["equivariance"] < 1e-10
    # a real U-Net: each term equals the loss written out from the generator's draws, the total their weighted sum
    unet = tiny_latent_unet()
    z0 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(8))
    loss, logs = ldm.ldm_loss(unet, z0, scheduler, torch.Generator().manual_seed(1), eq_weight=0.7, cfa=cfa)
    hand, d = _ldm_loss_by_hand(unet, z0, 1, 0.7, cfa=cfa)
    assert set(logs) == {"diffusion", "equivariance"} and d != (0.0, 0.0)
    eps_hand, _ = _ldm_loss_by_hand(unet, z0, 1, 0.0, cfa=False)  # the same timesteps and noise: the epsilon term
    torch.testing.assert_close(logs["diffusion"], eps_hand.detach(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(logs["equivariance"], ((hand - eps_hand) / 0.7).detach(), rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(loss, hand, rtol=1e-5, atol=1e-7)
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


def test_shift_consistency_crop_protocol_shifts_the_noise_with_the_crop_and_decodes_the_masked_latent():
    """noise_shift="crop" (the reference's Table 3): the shifted run starts from the cropped shift of the noise (the
    uncovered border zero, the seam column of a negative fractional shift kept) and its z_0 times the valid mask is
    decoded; latent_peak="joint-range" takes max - min over both masked latents. Written out by hand."""
    unet, z_T, d = tiny_latent_unet().eval(), torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)), \
        (0.0, -1.5)
    r = ldm.shift_consistency(unet, z_T, [d], steps=3, cfa=False, decode=lambda z: z, factor=1, noise_shift="crop",
                              latent_peak="joint-range")
    src = torch.arange(8.0) - d[1]
    keep = ((src >= 0) & (src < 8)).float()  # the frame [0, N): columns 6 (source 7.5) kept, 7 (source 8.5) zero
    assert keep.tolist() == [1.0] * 7 + [0.0]
    z_crop = fourier_shift(z_T, d) * keep
    with torch.no_grad():
        ref, out = ldm.sample(unet, z_T, 3), ldm.sample(unet, z_crop, 3)
    m = valid_mask((8, 8), d)
    assert m[:, 6:].sum() == 0 and m[:, :6].all()
    torch.testing.assert_close(r["frames"][0], out * m, rtol=1e-5, atol=1e-6)
    target = fourier_shift(ref, d)
    for i in range(2):
        a, b = (out[i] * m).double(), (target[i] * m).double()
        peak = torch.maximum(a.max(), b.max()) - torch.minimum(a.min(), b.min())
        mse = ((a - b) ** 2).sum() / (m.sum() * 4)
        assert float(r["latent"][0, i]) == pytest.approx(float(20 * torch.log10(peak) - 10 * torch.log10(mse)),
                                                          abs=1e-3)
    circ = ldm.shift_consistency(unet, z_T, [d], steps=3, cfa=False, decode=lambda z: z, factor=1)
    assert (circ["frames"][0] - r["frames"][0]).abs().max() > 1e-3  # the protocols differ
    with pytest.raises(ValueError, match="noise_shift"):
        ldm.shift_consistency(unet, z_T, [d], steps=3, noise_shift="zeros")
    with pytest.raises(ValueError, match="latent_peak"):
        ldm.shift_consistency(unet, z_T, [d], steps=3, latent_peak="max")


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
