"""Procedural scenes, normal metrics and the YOSO model of afcore.normals (notebook 60)."""
import math

import pytest
import torch

from afcore import metrics, normals as NM
from afcore.signal import fourier_shift
from afcore.surgery import patched_modules


def _scene(texture="smooth", n=3, seed=0, size=16):
    return NM.random_scene(torch.Generator(device="cpu").manual_seed(seed), texture, n, size)


def _periodic_scene(size=16):
    """Bumps and ramp off; ripple and albedo frequencies on the size-periodic grid: a band-limited periodic scene."""
    s = _scene("smooth", 2, seed=1, size=size)
    s["amp"].zero_()
    s["ramp"].zero_()
    s["ripple_g"] = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64, device="cpu").expand(2, 2, 2) / size
    s["ripple_amp"].fill_(0.15)
    freqs = torch.tensor([[0, 1], [1, 0], [1, 1], [2, 1], [1, -2], [0, 2]], dtype=torch.float64, device="cpu")
    s["albedo_g"] = (freqs / size).expand(2, 6, 2).clone()
    return s


def test_normals_are_unit_length_and_face_the_viewer():
    img, n = NM.render(_scene("sharp"), 16)
    assert torch.allclose(n.norm(dim=1), torch.ones_like(n[:, 0]), atol=1e-5)
    assert (n[:, 2] > 0).all()
    assert img.min() >= -1 and img.max() <= 1


def test_analytic_normals_match_finite_differences_of_the_height():
    scene, size, eps = _scene("smooth", 4, seed=3), 16, 1e-4
    _, n = NM.render(scene, size, supersample=1, dtype=torch.float64)  # one sample per pixel: the pixel centres
    ax = torch.arange(size, dtype=torch.float64, device="cpu")
    yy, xx = (v.reshape(-1) for v in torch.meshgrid(ax, ax, indexing="ij"))
    h = lambda y, x: NM.height_and_gradient(scene, y, x)[0]  # noqa: E731
    hy = (h(yy + eps, xx) - h(yy - eps, xx)) / (2 * eps)
    hx = (h(yy, xx + eps) - h(yy, xx - eps)) / (2 * eps)
    ref = torch.stack([-hx, hy, torch.ones_like(hx)], 1)  # x right, y up (= -row), z viewer
    ref = (ref / ref.norm(dim=1, keepdim=True)).reshape(n.shape)
    assert NM.angular_error(n, ref)[:, 1:-1, 1:-1].max() < 1.0


def test_integer_offset_render_equals_a_roll_inside():
    scene = _scene("sharp", 2, seed=4)
    img0, n0 = NM.render(scene, 16)
    img, n = NM.render(scene, 16, offset=(2, -3))
    assert torch.allclose(img[..., 2:, :-3], img0[..., :-2, 3:], atol=1e-5)
    assert torch.allclose(n[..., 2:, :-3], n0[..., :-2, 3:], atol=1e-5)
    assert not torch.allclose(img, img0, atol=1e-2)


def test_fractional_offset_render_matches_a_fourier_shift_for_a_smooth_periodic_scene():
    scene = _periodic_scene()
    img0, n0 = NM.render(scene, 16, dtype=torch.float64)
    img, n = NM.render(scene, 16, offset=(0.5, -0.25), dtype=torch.float64)
    assert (img - fourier_shift(img0, (0.5, -0.25))).abs().max() < 1e-3
    assert (n - fourier_shift(n0, (0.5, -0.25))).abs().max() < 1e-3


def test_angular_error_and_metrics_on_constructed_normals():
    _, n = NM.render(_scene(), 16)
    assert NM.angular_error(n, n).max() < 0.05
    assert (NM.angular_error(-n, n) - 180).abs().max() < 0.05
    def tilt(deg):  # cos(a) n + sin(a) u with u a unit vector orthogonal to n: exactly `deg` degrees from n
        e = torch.zeros_like(n)
        e[:, 0] = 1.0
        u = torch.linalg.cross(n, e, dim=1)
        u = u / u.norm(dim=1, keepdim=True)
        a = math.radians(deg)
        return math.cos(a) * n + math.sin(a) * u

    m = NM.normal_metrics(tilt(10.0), n)
    assert torch.allclose(m["mean"], torch.full_like(m["mean"], 10.0), atol=1e-2)
    assert torch.allclose(m["median"], torch.full_like(m["median"], 10.0), atol=1e-2)
    assert (m["under_11.25"] == 100).all() and (m["under_22.5"] == 100).all()
    m = NM.normal_metrics(tilt(25.0), n, mask=torch.ones(16, 16, device="cpu"))
    assert (m["under_22.5"] == 0).all() and (m["under_30"] == 100).all()


def test_normal_codes_round_trip_and_reject_unknown_names():
    g = torch.Generator().manual_seed(3)
    _, n = NM.render(NM.random_scene(g, "smooth", n=2, size=16), 16)
    assert torch.equal(NM.image_to_normals(NM.normals_to_image(n, "rgb"), "rgb"), n)
    img = NM.normals_to_image(n, "xy")
    assert torch.equal(img[:, 2], torch.zeros_like(img[:, 2])) and torch.equal(img[:, :2], n[:, :2])
    torch.testing.assert_close(NM.image_to_normals(img, "xy"), n, atol=1e-6, rtol=0)  # n_z rebuilt, n_z >= 0
    with pytest.raises(ValueError, match="normals_code"):
        NM.normals_to_image(n, "rgba")


def test_xy2_code_doubles_the_tilts_repeats_their_sum_and_round_trips_below_30_degrees():
    tilt = torch.deg2rad(torch.tensor([0.0, 10.0, 29.0, 45.0], dtype=torch.float64))
    az = torch.deg2rad(torch.tensor([0.0, 30.0, 200.0, 45.0], dtype=torch.float64))
    n = torch.stack([tilt.sin() * az.cos(), tilt.sin() * az.sin(), tilt.cos()])[None, :, None, :]  # (1, 3, 1, 4)
    img = NM.normals_to_image(n, "xy2")
    torch.testing.assert_close(img[0, :, 0, :3], torch.cat([2 * n[0, :2, 0, :3], n[0, :2, 0, :3].sum(0, keepdim=True)]))
    assert img.abs().max() <= 1  # 45 deg: 2 n_x = 2 sin 45 cos 45 = 1, 2 n_y = 1 and the sum clipped to 1
    back = NM.image_to_normals(img, "xy2")
    assert NM.angular_error(back, n)[0, 0, :3].max() < 1e-5  # tilts under 30 deg come back exactly


def test_bad_texture_and_train_t_are_named():
    with pytest.raises(ValueError, match="texture"):
        _scene("glossy")
    with pytest.raises(ValueError, match="normals_light_azimuth"):
        NM.random_scene(torch.Generator(device="cpu"), "smooth", 1, 16, light_azimuth=(180, 90))
    unet, cn = NM.yoso_models((8, 16), cross_dim=8, sample_size=4)
    with pytest.raises(ValueError, match="normals_train_t"):
        NM.yoso_loss(NM.YOSO(unet, cn), torch.zeros(2, 4, 4, 4, device="cpu"), torch.zeros(2, 4, 4, 4, device="cpu"),
                     torch.Generator(device="cpu"), train_t="sometimes")


def _tiny(alias_free=False):
    torch.manual_seed(0)
    unet, cn = NM.yoso_models((8, 16), cross_dim=8, sample_size=8, alias_free=alias_free)
    return NM.YOSO(unet, cn).eval()


def test_zero_initialised_controlnet_leaves_the_unet_unchanged():
    model = _tiny()
    assert isinstance(model.controlnet.controlnet_cond_embedding, torch.nn.Conv2d)
    cond = torch.randn(2, 4, 8, 8, device="cpu")
    sample = torch.randn(2, 4, 8, 8, device="cpu")
    t = torch.full((2,), 999, device="cpu")
    with torch.no_grad():
        model.prompt.normal_()
        plain = model.unet(sample, t, encoder_hidden_states=model.prompt.expand(2, -1, -1)).sample
        # the ControlNet's output zero convs made nonzero: the output must still ignore the condition, because the
        # conditioning conv itself starts at zero
        for conv in [*model.controlnet.controlnet_down_blocks, model.controlnet.controlnet_mid_block]:
            conv.weight.normal_()
        a, b = model(cond, sample, t), model(2 * cond + 1, sample, t)
        assert torch.allclose(a, b, atol=1e-6)
        for conv in [*model.controlnet.controlnet_down_blocks, model.controlnet.controlnet_mid_block]:
            conv.weight.zero_()
        assert torch.allclose(model(cond, sample, t), plain, atol=1e-6)


def test_random_conditioning_init_lets_the_condition_reach_the_controlnet_from_the_start():
    """zero_cond=False: the ControlNet's residuals depend on the condition at initialisation (with the default
    zero conv they do not, so its output convs get no condition-dependent gradient)."""
    cond, sample = torch.randn(2, 4, 8, 8, device="cpu"), torch.zeros(2, 4, 8, 8, device="cpu")
    t, text = torch.full((2,), 999, device="cpu"), torch.zeros(2, 1, 8, device="cpu")
    for zero_cond in (True, False):
        torch.manual_seed(0)
        _, cn = NM.yoso_models((8, 16), cross_dim=8, sample_size=8, zero_cond=zero_cond)
        with torch.no_grad():
            for conv in [*cn.controlnet_down_blocks, cn.controlnet_mid_block]:  # see the features, not zeros
                conv.weight.normal_()
            a, _ = cn(sample, t, encoder_hidden_states=text, controlnet_cond=cond, return_dict=False)
            b, _ = cn(sample, t, encoder_hidden_states=text, controlnet_cond=2 * cond + 1, return_dict=False)
        same = all(torch.allclose(x, y, atol=1e-6) for x, y in zip(a, b))
        assert same == zero_cond, zero_cond


def test_equivariance_loss_shifts_sample_and_condition_together():
    class Linear(torch.nn.Module):  # pointwise linear in both inputs: exactly equivariant to Fourier shifts
        T = 1000

        def __init__(self, wc, ws):
            super().__init__()
            self.wc, self.ws = wc, ws

        def forward(self, cond, sample=None, t=None):
            return self.wc * cond.flip(1) + self.ws * sample

    cond = torch.randn(4, 4, 8, 8, device="cpu")
    target = torch.randn(4, 4, 8, 8, device="cpu")
    for wc, ws in ((1.0, 0.0), (0.0, 1.0), (0.7, -0.4)):
        g = torch.Generator(device="cpu").manual_seed(1)
        loss, logs = NM.yoso_loss(Linear(wc, ws), cond, target, g, p_zero=0.0, eq_weight=1.0, max_frac=0.375)
        assert logs["eq"] < 1e-10
        g = torch.Generator(device="cpu").manual_seed(1)
        _, plain = NM.yoso_loss(Linear(wc, ws), cond, target, g, p_zero=0.0, eq_weight=0.0)
        assert abs(logs["x0"] - plain["x0"]) < 1e-6  # the x0 term is the unshifted pass


def test_alias_free_yoso_patches_both_networks_and_trains_a_step():
    model = _tiny(alias_free=True)
    assert patched_modules(model.unet)["Downsample2D"] == 1 and patched_modules(model.controlnet)["Downsample2D"] == 1
    assert patched_modules(model.controlnet)["ResnetBlock2D"] > 0
    model.train()
    cond, target = torch.randn(2, 4, 8, 8, device="cpu"), torch.randn(2, 4, 8, 8, device="cpu")
    loss, logs = NM.yoso_loss(model, cond, target, torch.Generator(device="cpu").manual_seed(0), eq_weight=1.0)
    loss.backward()
    assert logs["eq"] > 0 and math.isfinite(loss.item())
    assert model.controlnet.controlnet_cond_embedding.weight.grad is not None


@pytest.mark.parametrize("alias_free", [False, True])
def test_save_and_load_round_trip(tmp_path, alias_free):
    model = _tiny(alias_free)
    with torch.no_grad():
        for p in model.parameters():  # no zero-initialised parts left: the round trip must carry every weight
            p.add_(0.05 * torch.randn(p.shape, device="cpu"))
    NM.save_yoso(model, tmp_path / "m")
    back = NM.load_yoso(tmp_path / "m")
    assert patched_modules(back.unet) == patched_modules(model.unet)
    assert patched_modules(back.controlnet) == patched_modules(model.controlnet)
    cond = torch.randn(2, 4, 8, 8, device="cpu")
    with torch.no_grad():
        assert torch.allclose(back(cond), model(cond), atol=1e-5)


def test_pretrained_unet_from_a_saved_standin_and_a_clear_offline_message(tmp_path, monkeypatch):
    model = _tiny()
    model.unet.save_pretrained(tmp_path / "sd" / "unet")  # SD layout: the U-Net in a unet/ subfolder
    unet, cn = NM.yoso_models(pretrained_unet=str(tmp_path / "sd"), alias_free=True)
    assert torch.equal(unet.conv_in.weight, model.unet.conv_in.weight)
    assert patched_modules(unet)["Downsample2D"] == 1 and cn.controlnet_cond_embedding.weight.abs().sum() == 0
    assert torch.equal(cn.conv_in.weight, unet.conv_in.weight)  # the ControlNet is copied from the loaded U-Net
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as C

    monkeypatch.setattr(C, "HF_HUB_OFFLINE", True)
    with pytest.raises(RuntimeError, match="normals_pretrained_unet"):
        NM.yoso_models(pretrained_unet="no-such-org/no-such-unet")


def test_pointwise_control_is_exactly_equivariant_under_cropped_shifts():
    ctrl = NM.PointwiseControl(device="cpu").double()
    z = torch.randn(3, 4, 8, 8, device="cpu", dtype=torch.float64)
    with torch.no_grad():
        sp = metrics.spsnr(lambda x: ctrl.decoder(ctrl(x)), z, (0.0, 0.625), scale=1.0, per_sample=True)
    assert (sp > 200).all()  # float64 rounding


def test_yoso_loss_cfa_detach_defaults_to_the_reference_and_changes_only_the_gradient():
    """cfa_detach (default True, the reference's): the CFA keys/values stored from the unshifted pass carry no
    gradient. Same loss value either way; False adds the gradient through them; the default equals True."""
    model = _tiny(alias_free=True).train()
    cond = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    target = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    params = [p for p in model.parameters() if p.requires_grad]

    def run(**kw):
        g = torch.Generator(device="cpu").manual_seed(5)
        loss, _ = NM.yoso_loss(model, cond, target, g, p_zero=0.0, eq_weight=1.0, **kw)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        return loss.detach(), torch.cat([(torch.zeros_like(p) if gr is None else gr).flatten()
                                         for p, gr in zip(params, grads)])

    (l_def, g_def), (l_true, g_true), (l_false, g_false) = run(), run(cfa_detach=True), run(cfa_detach=False)
    torch.testing.assert_close(l_def, l_false)
    torch.testing.assert_close(g_def, g_true, rtol=1e-5, atol=1e-8)
    assert (g_false - g_true).norm() > 0.01 * g_true.norm()


def test_decoded_loss_adds_the_weighted_mse_of_the_decoded_prediction_and_names_its_parameter():
    class Linear(torch.nn.Module):
        T = 1000

        def forward(self, cond, sample=None, t=None):
            return 0.5 * cond + sample

    def decode(z):  # a differentiable stand-in decoder: 4 latent channels -> 3 image channels, 2x up
        return torch.nn.functional.interpolate(z[:, :3] * 2 - z[:, 3:], scale_factor=2)

    cond, target = torch.randn(4, 4, 8, 8, device="cpu"), torch.randn(4, 4, 8, 8, device="cpu")
    image = torch.randn(4, 3, 16, 16, device="cpu")
    for eq in (0.0, 1.0):
        g = torch.Generator(device="cpu").manual_seed(3)
        _, plain = NM.yoso_loss(Linear(), cond, target, g, p_zero=1.0, eq_weight=eq)
        g = torch.Generator(device="cpu").manual_seed(3)
        loss, logs = NM.yoso_loss(Linear(), cond, target, g, p_zero=1.0, eq_weight=eq, decoded_weight=2.5,
                                  decode=decode, target_image=image)
        expected = float(((decode(0.5 * cond) - image) ** 2).mean())  # p_zero = 1: sample 0, prediction cond / 2
        assert logs["dec"] == pytest.approx(expected, rel=1e-5) and logs["x0"] == pytest.approx(plain["x0"], rel=1e-6)
        assert loss.item() == pytest.approx(plain["x0"] + plain.get("eq", 0.0) * eq + 2.5 * expected, rel=1e-5)
    with pytest.raises(ValueError, match="normals_decoded_weight"):
        NM.yoso_loss(Linear(), cond, target, torch.Generator(device="cpu").manual_seed(0), decoded_weight=1.0)
