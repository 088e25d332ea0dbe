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


def test_switches_off_leave_outputs_unchanged_and_on_changes_them():
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    vanilla = tiny_vae()
    off = make_alias_free(copy.deepcopy(vanilla), resample=False, nonlinearity=False)
    torch.testing.assert_close(_decode(off, x), _decode(vanilla, x), rtol=0, atol=0)
    on = make_alias_free(copy.deepcopy(vanilla))
    assert (_decode(on, x) - _decode(vanilla, x)).abs().max() > 1e-3


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


def test_save_load_round_trip_reapplies_the_patch(tmp_path):
    from diffusers import AutoencoderKL, UNet2DModel

    x = torch.rand(1, 3, 32, 32) * 2 - 1
    vae = make_alias_free(tiny_vae())
    loaded = load_alias_free(AutoencoderKL, save_alias_free(vae, tmp_path / "vae"))
    torch.testing.assert_close(_decode(loaded, x), _decode(vae, x), rtol=0, atol=0)
    unet = make_alias_free(tiny_unet(), nonlinearity=False)
    again = load_alias_free(UNet2DModel, save_alias_free(unet, tmp_path / "unet"))
    z, t = torch.randn(1, 4, 16, 16), torch.tensor([10])
    with torch.no_grad():
        torch.testing.assert_close(again(z, t).sample, unet(z, t).sample, rtol=0, atol=0)
    with pytest.raises(FileNotFoundError):
        load_alias_free(UNet2DModel, tmp_path / "missing")
