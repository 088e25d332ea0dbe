"""Module surgery: parameter-free, a no-op when switched off, faithful to its definition, survives save/load."""
from __future__ import annotations

import copy

import pytest
import torch

from afcore import layers, signal
from afcore.surgery import load_alias_free, make_alias_free, save_alias_free


def tiny_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                         up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(8, 16, 16),
                         layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=32).eval()


def tiny_unet():
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return UNet2DModel(sample_size=16, in_channels=4, out_channels=4, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), layers_per_block=1, norm_num_groups=4,
                       attention_head_dim=8).eval()


def _decode(vae, x):
    with torch.no_grad():
        return vae.decode(vae.encode(x).latent_dist.mode()).sample


def test_patch_adds_no_parameters_and_keeps_state_dict_keys():
    for make in (tiny_vae, tiny_unet):
        model = make()
        keys, count = list(model.state_dict()), sum(p.numel() for p in model.parameters())
        make_alias_free(model)
        assert list(model.state_dict()) == keys
        assert sum(p.numel() for p in model.parameters()) == count


def _by_hand_alias_free(vae, resample: bool, nonlinearity: bool):
    """Forward hooks on a plain VAE that replace each converted module's output by its definition written with
    ``afcore.signal``: down-sampler = conv at stride 1 then ideal /2, up-sampler = ideal x2 then conv, ResNet
    nonlinearity = ideal x2, SiLU, ideal /2 (except in the full-resolution blocks). Returns the hook handles."""
    from diffusers.models.downsampling import Downsample2D
    from diffusers.models.resnet import ResnetBlock2D
    from diffusers.models.upsampling import Upsample2D

    fn = torch.nn.functional
    handles = []
    plain = set(vae.encoder.down_blocks[0].resnets) | set(vae.decoder.up_blocks[-1].resnets)
    for m in vae.modules():
        if resample and isinstance(m, Downsample2D):
            handles.append(m.register_forward_hook(lambda mod, inp, out: signal.downsample(
                fn.conv2d(inp[0], mod.conv.weight, mod.conv.bias, padding=1), 2)))
        elif resample and isinstance(m, Upsample2D):
            handles.append(m.register_forward_hook(lambda mod, inp, out: mod.conv(signal.upsample(inp[0], 2))))
        elif nonlinearity and isinstance(m, ResnetBlock2D) and m not in plain:
            handles.append(m.nonlinearity.register_forward_hook(lambda mod, inp, out: signal.downsample(
                fn.silu(signal.upsample(inp[0], 2)), 2)))
    return handles


@pytest.mark.parametrize("switches", [{"resample": True, "nonlinearity": False},
                                      {"resample": False, "nonlinearity": True}, {}])
def test_switches_off_leave_outputs_unchanged_and_on_changes_them(switches):
    """Off: the plain model's outputs (to float rounding: the two are separate module instances, whose kernels may
    take other vector paths on another CPU). On: exactly the plain model with the switched parts replaced by their
    definitions (a change of any other kind, or in the wrong modules, fails), and that change is not small."""
    x = signal.ideal_lowpass(torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1, 0.8)
    vanilla = tiny_vae()
    off = make_alias_free(copy.deepcopy(vanilla), resample=False, nonlinearity=False)
    torch.testing.assert_close(_decode(off, x), _decode(vanilla, x), rtol=0, atol=1e-6)
    on = make_alias_free(copy.deepcopy(vanilla), **switches)
    expected_model = copy.deepcopy(vanilla)
    handles = _by_hand_alias_free(expected_model, switches.get("resample", True), switches.get("nonlinearity", True))
    assert handles
    expected = _decode(expected_model, x)
    torch.testing.assert_close(_decode(on, x), expected, rtol=1e-4, atol=1e-5)
    assert (expected - _decode(vanilla, x)).abs().max() > 1e-3


def test_patched_resamplers_follow_their_definition_and_vae_keeps_full_resolution_plain():
    vae = make_alias_free(tiny_vae())
    down = vae.encoder.down_blocks[0].downsamplers[0]
    x = signal.ideal_lowpass(torch.randn(1, 8, 16, 16), 0.9)
    expected = signal.downsample(torch.nn.functional.conv2d(x, down.conv.weight, down.conv.bias, padding=1), 2)
    torch.testing.assert_close(down(x), expected)
    up = vae.decoder.up_blocks[0].upsamplers[0]
    z = torch.randn(1, 16, 8, 8)
    torch.testing.assert_close(up(z), up.conv(signal.upsample(z, 2)))
    assert not isinstance(vae.encoder.down_blocks[0].resnets[0].nonlinearity, layers.FilteredActivation)
    assert isinstance(vae.encoder.down_blocks[1].resnets[0].nonlinearity, layers.FilteredActivation)
    assert not isinstance(vae.decoder.up_blocks[-1].resnets[0].nonlinearity, layers.FilteredActivation)
    unet = make_alias_free(tiny_unet())
    assert isinstance(unet.down_blocks[0].resnets[0].nonlinearity, layers.FilteredActivation)
    with pytest.raises(ValueError, match="already patched"):
        make_alias_free(unet)


def test_patched_downsampler_is_exactly_shift_equivariant_without_its_conv():
    vae = make_alias_free(tiny_vae())
    down = vae.encoder.down_blocks[0].downsamplers[0]
    down.use_conv = False  # the resampling core alone: ideal low-pass + every 2nd sample
    x = signal.ideal_lowpass(torch.randn(2, 8, 16, 16, dtype=torch.float64), 0.45)
    d = (1.0, -0.5)
    torch.testing.assert_close(down(signal.fourier_shift(x, d)), signal.fourier_shift(down(x), (0.5, -0.25)))


# A reloaded model has bit-identical weights and the same patch, but its tensors live at new addresses: BLAS, oneDNN
# and pocketfft may pick other blockings / summation orders for them, which on some x86-64 CPUs moves float32 outputs
# by a few ulps (8e-7 and 2e-6 seen). So the state and the patch are compared exactly, the outputs within a float32
# tolerance far below any effect of a missing or different patch (those change outputs by > 1e-3, tested above).
ROUND_TRIP_TOL = dict(rtol=1e-4, atol=1e-5)


def _assert_same_model(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa), "state dicts differ"
    assert a._alias_free_patch == b._alias_free_patch
    assert [type(m).__name__ for m in a.modules()] == [type(m).__name__ for m in b.modules()]
    from afcore.surgery import patched_modules

    assert patched_modules(a) == patched_modules(b)


def test_save_load_round_trip_reapplies_the_patch(tmp_path):
    import json

    from diffusers import AutoencoderKL, UNet2DModel

    from afcore.surgery import PATCH_FILE

    x = torch.rand(1, 3, 32, 32) * 2 - 1
    vae = make_alias_free(tiny_vae())
    loaded = load_alias_free(AutoencoderKL, save_alias_free(vae, tmp_path / "vae"))
    assert json.loads((tmp_path / "vae" / PATCH_FILE).read_text()) == {
        "resample": True, "nonlinearity": True, "keep_full_resolution": True}
    _assert_same_model(loaded, vae)
    torch.testing.assert_close(_decode(loaded, x), _decode(vae, x), **ROUND_TRIP_TOL)
    unet = make_alias_free(tiny_unet(), nonlinearity=False)
    again = load_alias_free(UNet2DModel, save_alias_free(unet, tmp_path / "unet"))
    _assert_same_model(again, unet)
    z, t = torch.randn(1, 4, 16, 16), torch.tensor([10])
    with torch.no_grad():
        torch.testing.assert_close(again(z, t).sample, unet(z, t).sample, **ROUND_TRIP_TOL)
    with pytest.raises(FileNotFoundError):
        load_alias_free(UNet2DModel, tmp_path / "missing")


# ------------------------------------------------------------ conditional U-Net and ControlNet (AF-SD, AF-YOSO)
COND = dict(in_channels=4, block_out_channels=(8, 16), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            cross_attention_dim=8, layers_per_block=1, norm_num_groups=4, attention_head_dim=4)


def tiny_cond_unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(sample_size=16, out_channels=4, up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                **COND).eval()


def tiny_controlnet():
    """Matching ControlNet (cond image at 2x the latent size); its zero-initialised convs (the conditioning
    embedding's conv_out and the residual convs) get small random weights so that the control image matters."""
    from diffusers import ControlNetModel

    torch.manual_seed(1)
    net = ControlNetModel(conditioning_channels=3, conditioning_embedding_out_channels=(4, 8), **COND).eval()
    zero_convs = [net.controlnet_cond_embedding.conv_out, *net.controlnet_down_blocks, net.controlnet_mid_block]
    for conv in zero_convs:
        torch.nn.init.normal_(conv.weight, std=0.1)
    return net


def _cond_inputs(size=16, batch=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(sample=torch.randn(batch, 4, size, size, generator=g),
                timestep=torch.tensor([10] * batch), encoder_hidden_states=torch.randn(batch, 5, 8, generator=g))


def _cond_image(size=16, batch=1, seed=0):
    return torch.rand(batch, 3, 2 * size, 2 * size, generator=torch.Generator().manual_seed(seed + 100)) * 2 - 1


def _run_unet(unet, **kw):
    with torch.no_grad():
        return unet(**kw).sample


def _run_controlnet(net, **kw):
    with torch.no_grad():
        out = net(**kw, conditioning_scale=1.0)
    return [*out.down_block_res_samples, out.mid_block_res_sample]


def _count(model):
    from diffusers.models.downsampling import Downsample2D
    from diffusers.models.resnet import ResnetBlock2D
    from diffusers.models.upsampling import Upsample2D

    kinds = {"Downsample2D": Downsample2D, "Upsample2D": Upsample2D, "ResnetBlock2D": ResnetBlock2D}
    return {k: sum(isinstance(m, c) for m in model.modules()) for k, c in kinds.items()}


@pytest.mark.parametrize("make,expected", [(tiny_cond_unet, {"Downsample2D": 1, "Upsample2D": 1, "ResnetBlock2D": 8}),
                                           (tiny_controlnet, {"Downsample2D": 1, "Upsample2D": 0, "ResnetBlock2D": 4})])
def test_conditional_models_patch_every_resampler_and_resnet_without_new_parameters(make, expected):
    from afcore.surgery import patched_modules

    model = make()
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert _count(model) == expected
    assert patched_modules(model) == {k: 0 for k in expected}
    make_alias_free(model)
    assert patched_modules(model) == expected  # every Downsample2D / Upsample2D / ResnetBlock2D converted
    assert {k: v.shape for k, v in model.state_dict().items()} == shapes
    assert list(model.state_dict()) == list(shapes)
    from diffusers.models.resnet import ResnetBlock2D

    resnets = [m for m in model.modules() if isinstance(m, ResnetBlock2D)]
    assert resnets and all(isinstance(m.nonlinearity, layers.FilteredActivation) for m in resnets)


def test_conditional_models_switches_off_leave_outputs_unchanged_and_on_changes_outputs():
    # "unchanged" to 1e-6: off and plain are separate module instances (see the test above); on changes by > 1e-3
    kw = _cond_inputs()
    unet = tiny_cond_unet()
    off = make_alias_free(copy.deepcopy(unet), resample=False, nonlinearity=False)
    torch.testing.assert_close(_run_unet(off, **kw), _run_unet(unet, **kw), rtol=0, atol=1e-6)
    for switches in ({"resample": True, "nonlinearity": False}, {"resample": False, "nonlinearity": True}, {}):
        on = make_alias_free(copy.deepcopy(unet), **switches)
        assert (_run_unet(on, **kw) - _run_unet(unet, **kw)).abs().max() > 1e-3, switches
    net = tiny_controlnet()
    ckw = dict(kw, controlnet_cond=_cond_image())
    off = make_alias_free(copy.deepcopy(net), resample=False, nonlinearity=False)
    for a, b in zip(_run_controlnet(off, **ckw), _run_controlnet(net, **ckw)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    on = make_alias_free(copy.deepcopy(net))
    diffs = [(a - b).abs().max() for a, b in zip(_run_controlnet(on, **ckw), _run_controlnet(net, **ckw))]
    assert max(diffs) > 1e-3
    # the pixel-space conditioning embedding is deliberately left plain (see afcore.surgery's docstring)
    with torch.no_grad():
        torch.testing.assert_close(on.controlnet_cond_embedding(ckw["controlnet_cond"]),
                                   net.controlnet_cond_embedding(ckw["controlnet_cond"]), rtol=0, atol=1e-6)


def test_patched_controlnet_drives_patched_conditional_unet_end_to_end():
    unet, net = make_alias_free(tiny_cond_unet()), make_alias_free(tiny_controlnet())
    kw = _cond_inputs(batch=2)

    def pipeline(cond):
        residuals = _run_controlnet(net, **kw, controlnet_cond=cond)
        return _run_unet(unet, **kw, down_block_additional_residuals=tuple(residuals[:-1]),
                         mid_block_additional_residual=residuals[-1])

    a, b = pipeline(_cond_image(batch=2)), pipeline(_cond_image(batch=2, seed=1))
    assert a.shape == (2, 4, 16, 16) and torch.isfinite(a).all()
    assert (a - b).abs().max() > 1e-4  # the control image reaches the U-Net's output
    assert (a - _run_unet(unet, **kw)).abs().max() > 1e-4


def test_patched_conditional_unet_keeps_batch_samples_independent():
    """The time embedding shares ResnetBlock2D.nonlinearity but has no spatial axes: it must not be filtered (doing
    so mixed channels and batch samples)."""
    unet = make_alias_free(tiny_cond_unet())
    kw = _cond_inputs(batch=2)
    kw["timestep"] = torch.tensor([10, 700])
    both = _run_unet(unet, **kw)
    for i in range(2):
        one = _run_unet(unet, **{k: v[i:i + 1] for k, v in kw.items()})
        torch.testing.assert_close(both[i:i + 1], one, rtol=1e-4, atol=1e-5)


def test_patched_conditional_unet_runs_on_odd_sizes_and_rejects_bad_output_size():
    unet = make_alias_free(tiny_cond_unet())
    kw = _cond_inputs(size=15)
    out = _run_unet(unet, **kw)
    assert out.shape == (1, 4, 15, 15) and torch.isfinite(out).all()
    up = unet.up_blocks[0].upsamplers[0]
    z = torch.randn(1, 16, 8, 8)
    torch.testing.assert_close(up(z, (15, 16)), up.conv(signal.upsample(z, 2)[..., :15, :]))
    with pytest.raises(ValueError, match="output_size"):
        up(z, (17, 16))


def test_conditional_unet_resamplers_follow_their_definition_and_are_shift_equivariant():
    unet = make_alias_free(tiny_cond_unet())
    down, up = copy.deepcopy(unet.down_blocks[0].downsamplers[0]), copy.deepcopy(unet.up_blocks[0].upsamplers[0])
    x = signal.ideal_lowpass(torch.randn(1, 8, 16, 16), 0.9)
    expected = signal.downsample(torch.nn.functional.conv2d(x, down.conv.weight, down.conv.bias, padding=1), 2)
    torch.testing.assert_close(down(x), expected)
    # the resampling cores alone (conv off): exact equivariance on band-limited circular input, fractional shifts
    down.use_conv, up.use_conv = False, False
    x = signal.ideal_lowpass(torch.randn(2, 8, 16, 16, dtype=torch.float64), 0.45)
    torch.testing.assert_close(down(signal.fourier_shift(x, (1.0, -0.5))), signal.fourier_shift(down(x), (0.5, -0.25)))
    z = signal.ideal_lowpass(torch.randn(2, 16, 8, 8, dtype=torch.float64), 0.9)
    torch.testing.assert_close(up(signal.fourier_shift(z, (0.25, -0.75))), signal.fourier_shift(up(z), (0.5, -1.5)))


def test_conditional_models_save_load_round_trip_is_bit_identical(tmp_path):
    """Bit-identical weights and patch; outputs equal to float32 tolerance (see ROUND_TRIP_TOL)."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    kw = _cond_inputs()
    unet = make_alias_free(tiny_cond_unet())
    again = load_alias_free(UNet2DConditionModel, save_alias_free(unet, tmp_path / "unet"))
    _assert_same_model(again, unet)
    torch.testing.assert_close(_run_unet(again, **kw), _run_unet(unet, **kw), **ROUND_TRIP_TOL)
    net = make_alias_free(tiny_controlnet())
    loaded = load_alias_free(ControlNetModel, save_alias_free(net, tmp_path / "controlnet"))
    _assert_same_model(loaded, net)
    ckw = dict(kw, controlnet_cond=_cond_image())
    for a, b in zip(_run_controlnet(loaded, **ckw), _run_controlnet(net, **ckw)):
        torch.testing.assert_close(a, b, **ROUND_TRIP_TOL)


# ------------------------------------------------------------ fast / reference paths and the Nyquist option
def test_patched_models_use_the_fast_path_and_agree_with_the_reference_path():
    from afcore.surgery import patched_modules

    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    vae = make_alias_free(tiny_vae())
    switchable = [m for m in vae.modules() if hasattr(m, "af_impl")]
    counts = patched_modules(vae)
    # every patched resampler and every filtered activation (with its two inner resamplers) follows the switch
    assert len(switchable) == counts["Downsample2D"] + counts["Upsample2D"] + 3 * counts["ResnetBlock2D"]
    assert all(m.af_impl is None for m in switchable) and layers.get_default_impl() == "fast"
    fast = _decode(vae, x)
    layers.set_impl(vae, "ref")
    assert all(m.af_impl == "ref" for m in switchable)
    torch.testing.assert_close(fast, _decode(vae, x), rtol=1e-4, atol=1e-5)  # float32, other summation order
    unet = make_alias_free(tiny_unet(), impl="ref")
    assert all(m.af_impl == "ref" for m in unet.modules() if hasattr(m, "af_impl"))


def test_nyquist_option_is_recorded_reapplied_and_changes_what_the_downsampler_keeps(tmp_path):
    from diffusers import UNet2DModel

    with pytest.raises(ValueError, match="nyquist must be one of"):
        make_alias_free(tiny_unet(), nyquist="third")
    half = make_alias_free(tiny_unet(), nyquist="half")
    assert half._alias_free_patch["nyquist"] == "half"
    assert "nyquist" not in make_alias_free(tiny_unet())._alias_free_patch  # default records stay as before
    again = load_alias_free(UNet2DModel, save_alias_free(half, tmp_path / "unet"))
    down = again.down_blocks[0].downsamplers[0]
    assert down.af_nyquist == "half"
    down.use_conv = False
    # a checkerboard along W at the new Nyquist frequency (1/4 cycle/sample): kept at half amplitude, or removed
    n = torch.arange(16, dtype=torch.float32)
    x = torch.cos(torch.pi * n / 2).expand(1, 8, 16, 16)
    torch.testing.assert_close(down(x), 0.5 * torch.cos(torch.pi * torch.arange(8.0)).expand(1, 8, 8, 8),
                               rtol=0, atol=1e-5)
    down.af_nyquist = "zero"
    assert down(x).abs().max() < 1e-5
