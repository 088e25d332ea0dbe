"""Config A-E U-Nets: parameter-free alias-free variants, named configs, resume, rotation, two processes."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from afcore import config_unet, ddpm, metrics, signal
from afcore.train import train_loop


def _count(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_every_paper_config_builds_runs_and_adds_no_parameters():
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10, 900])
    base = _count(config_unet.ConfigUNet("A", in_channels=3, base=8, levels=2))
    for name in config_unet.PAPER_CONFIGS:
        model = config_unet.ConfigUNet(name, in_channels=3, base=8, levels=2)
        assert _count(model) == base, name
        assert model(x, t).shape == x.shape
    cfg = config_unet.parse_config("D-2N")
    assert cfg == {"resample": True, "activation": True, "beta": 2.0, "normalize": True, "filter": "kaiser"}
    ideal = config_unet.ConfigUNet("D-1N", in_channels=3, base=8, levels=2, filter_method="ideal")
    assert _count(ideal) == base and ideal(x, t).shape == x.shape
    with pytest.raises(ValueError, match="filter_method must be one of"):
        config_unet.ConfigUNet("D-1N", filter_method="gaussian")


def test_unknown_config_name_lists_the_allowed_ones():
    with pytest.raises(ValueError, match=r"config must be one of .*'A', 'B-0'"):
        config_unet.ConfigUNet("E-3")


def test_alias_free_unet_is_more_shift_consistent_at_init():
    """At init, each alias-free part adds shift consistency on its own: the filtered activation (C-1N over A, D-1N
    over B-1N; measured about 11.5 dB each) and the resampling (D-1N over C-1N). A filtered activation that filters
    nothing (C-1N = A, D-1N = B-1N) fails, and so does a resampler that does nothing alias-free."""
    torch.manual_seed(0)
    x = signal.ideal_lowpass(torch.randn(4, 1, 32, 32), 0.5)
    t = torch.full((4,), 500)
    scores = {}
    for name in ("A", "B-1N", "C-1N", "D-1N"):
        torch.manual_seed(1)
        model = config_unet.ConfigUNet(name, in_channels=1, base=8, levels=2, attention=False).eval()
        with torch.no_grad():
            scores[name] = float(metrics.spsnr(lambda z: model(z, t), x, (0.0, 0.5)))
    assert scores["C-1N"] > scores["A"] + 5, scores
    assert scores["D-1N"] > scores["B-1N"] + 5, scores
    assert scores["B-1N"] > scores["A"] + 1 and scores["D-1N"] > scores["C-1N"] + 1, scores


def test_ddim_rotation_by_phi_rotates_the_result_counter_clockwise():
    """DDIM with a pointwise denoiser commutes with rotation, so rotating x_t by phi/steps after every step ends
    rotated by phi: 90 and 180 degrees have exact answers (rot90 of the plain sample), and the direction is
    counter-clockwise as displayed (rot90 k=1, not k=-1)."""
    class ZeroEps(torch.nn.Module):  # a pointwise (hence rotation-equivariant) denoiser
        def forward(self, x, t):
            return torch.zeros_like(x)

    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    blob = torch.exp(-(((yy - 12) / 3) ** 2 + ((xx - 19) / 2) ** 2))[None, None] * 0.8
    plain = ddpm.sample(ZeroEps(), blob, steps=4)
    mask = signal.inscribed_circle_mask(32, 32, margin=2)
    for phi, k in ((90.0, 1), (180.0, 2)):
        rotated = ddpm.sample(ZeroEps(), blob, steps=4, rotate_to=phi)
        assert metrics.psnr(rotated * mask, torch.rot90(plain, k, (-2, -1)) * mask, mask) > 40, phi
    rotated = ddpm.sample(ZeroEps(), blob, steps=4, rotate_to=90.0)
    assert metrics.psnr(rotated * mask, torch.rot90(plain, -1, (-2, -1)) * mask, mask) < 20


@pytest.mark.parametrize("rotation", ["spline-wrap", "fourier"])
def test_ancestral_sampler_rotates_x_t_by_phi_over_t_after_every_step(rotation):
    """The reference's Config E protocol: Algorithm 2 with x_t rotated by phi / T after every step. With phi / T =
    90 degrees each rotation is exactly a rot90 (spline-wrap: grid points map onto grid points; fourier: inside the
    inscribed circle), so the sampler equals the recursion written out with numpy and rot90 (the noise drawn after
    the step and rotated with x from then on). A rotation skipped, applied once, in the other direction or before
    the noise fails."""
    import numpy as np

    class Linear(torch.nn.Module):  # pointwise: commutes with rotation
        def forward(self, x, t):
            return 0.1 * x + 1e-4 * t.view(-1, 1, 1, 1).to(x.dtype)

    T = 5
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    x_T = (torch.exp(-(((yy - 5) / 2.5) ** 2 + ((xx - 9) / 1.5) ** 2)) * 0.9)[None, None].double()
    ours = ddpm.ancestral_sample(Linear(), x_T, torch.Generator().manual_seed(5), num_train_timesteps=T,
                                 rotate_to=90.0 * T, rotation=rotation)
    betas = np.linspace(1e-4, 0.02, T)
    alphas, g, x = 1 - betas, torch.Generator().manual_seed(5), x_T.numpy()[0, 0].copy()
    abar = np.cumprod(alphas)
    for i in range(T - 1, 0, -1):
        eps = 0.1 * x + 1e-4 * i
        z = torch.randn((1, 1) + x.shape, generator=g, dtype=torch.float64).numpy()[0, 0] if i > 1 else 0.0
        x = (x - (1 - alphas[i]) / np.sqrt(1 - abar[i]) * eps) / np.sqrt(alphas[i]) + np.sqrt(betas[i]) * z
        x = np.rot90(x, 1)  # counter-clockwise as displayed (row 0 at the top)
    expected = np.clip(x, -1, 1)
    if rotation == "spline-wrap":
        np.testing.assert_allclose(ours.numpy()[0, 0], expected, rtol=0, atol=1e-6)
    else:
        mask = signal.inscribed_circle_mask(16, 16, margin=2).double().numpy()
        err = np.abs((ours.numpy()[0, 0] - expected) * mask).max()
        assert err < 0.05 * np.abs(expected * mask).max(), err
    assert np.abs(expected - np.clip(np.rot90(x, -1), -1, 1)).max() > 0.1  # the directions are distinguishable


def test_unet_training_resumes_to_the_same_weights(tmp_path):
    scheduler = ddpm.make_scheduler()
    data = torch.rand(8, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1

    def get_batch(step):
        return data[torch.randint(0, 8, (4,), generator=torch.Generator().manual_seed(step))]

    def loss_fn(m, x0, step):
        return ddpm.ddpm_loss(m, x0, scheduler, torch.Generator().manual_seed(1000 + step)), {}

    def fresh():
        torch.manual_seed(0)
        return config_unet.ConfigUNet("B-1N", in_channels=1, base=8, levels=1, attention=False)

    full, _, _ = train_loop(fresh(), loss_fn, get_batch, steps=4, lr=1e-3, ckpt_dir=tmp_path / "a")
    train_loop(fresh(), loss_fn, get_batch, steps=4, lr=1e-3, ckpt_dir=tmp_path / "b", ckpt_every=1, stop_after=2)
    resumed, _, _ = train_loop(fresh(), loss_fn, get_batch, steps=4, lr=1e-3, ckpt_dir=tmp_path / "b")
    for a, b in zip(full.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b)


@pytest.mark.slow
def test_two_cpu_processes_stay_in_sync(tmp_path):
    # accelerate's own CPU multi-process launcher needs MPI; torchrun (which accelerate wraps for GPUs) starts the
    # same gloo process group that Accelerator(cpu=True) joins.
    launcher = Path(sys.executable).parent / "torchrun"
    script = Path(__file__).parent / "two_process_train.py"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parent.parent))
    cmd = [str(launcher), "--nproc_per_node", "2", "--master_port", "29517", str(script), str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    r0, r1 = (torch.load(tmp_path / f"rank{i}.pt") for i in (0, 1))
    assert r0["world"] == r1["world"] == 2
    # to float rounding: two processes run the same update but may take other vector paths (memory alignment); a
    # rank that trained on its own gradients would differ by orders of magnitude more
    torch.testing.assert_close(r0["params"], r1["params"], rtol=0, atol=1e-6)
    torch.manual_seed(0)
    init = torch.cat([p.flatten() for p in
                      config_unet.ConfigUNet("D-1N", 1, base=8, levels=1, attention=False).parameters()])
    assert not torch.equal(init, r0["params"])


def test_the_unet_has_the_reference_widths_and_full_resolution_attention():
    b = 32
    model = config_unet.ConfigUNet("A", in_channels=3, base=b, levels=3)
    ups = [(u.convs[0].net[0].in_channels, u.convs[1].net[3].out_channels) for u in model.ups]
    assert ups == [(8 * b, 2 * b), (4 * b, b), (2 * b, b)]  # the reference's up1, up2, up3
    assert all(isinstance(a, config_unet.SelfAttention) for a in model.up_attn)  # sa4, sa5 and sa6 (full resolution)
    assert sum(p.numel() for p in model.parameters()) == 5_897_155  # the reference UNet(c_in=3, image_size=32)


def test_ancestral_sampler_is_algorithm_2_of_ho_et_al():
    import numpy as np

    class Linear(torch.nn.Module):
        def forward(self, x, t):
            return 0.1 * x + 1e-4 * t.view(-1, 1, 1, 1).to(x.dtype)

    T = 12
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ours = ddpm.ancestral_sample(Linear(), x_T, torch.Generator().manual_seed(5), num_train_timesteps=T)
    betas = np.linspace(1e-4, 0.02, T)
    alphas, g, x = 1 - betas, torch.Generator().manual_seed(5), x_T.numpy().copy()
    abar = np.cumprod(alphas)
    for i in range(T - 1, 0, -1):
        eps = 0.1 * x + 1e-4 * i
        z = torch.randn(x.shape, generator=g, dtype=torch.float64).numpy() if i > 1 else 0.0
        x = (x - (1 - alphas[i]) / np.sqrt(1 - abar[i]) * eps) / np.sqrt(alphas[i]) + np.sqrt(betas[i]) * z
    np.testing.assert_allclose(ours.numpy(), np.clip(x, -1, 1), rtol=0, atol=1e-12)


def test_reference_rotation_wraps_and_ours_zero_fills_the_corners():
    ones = torch.ones(1, 1, 16, 16, dtype=torch.float64)
    spline = ddpm.rotate_step(ones, 30.0, "spline-wrap")
    torch.testing.assert_close(spline, ones, rtol=0, atol=1e-9)  # nothing enters from outside the grid
    fourier = ddpm.rotate_step(ones, 30.0, "fourier", boundary="zeros")
    assert float(fourier[0, 0, 0, 0]) < 0.2 and float(fourier[0, 0, 8, 8]) == pytest.approx(1.0, abs=0.05)
    assert ddpm.applied_rotation(90.0, "reference", steps=25) == pytest.approx(89.91)
    assert ddpm.applied_rotation(90.0, "ddim", steps=25) == 90.0
    with pytest.raises(ValueError, match="rotation"):
        ddpm.rotate_step(ones, 3.0, "bilinear")


def test_paper_table_has_every_config_for_every_data_set():
    for dataset, rows in config_unet.PAPER_TABLE.items():
        assert set(rows) == set(config_unet.PAPER_CONFIGS), dataset
    assert config_unet.PAPER_TABLE["mnist"]["B-1N"] == (1.97, 11.62, 0.72)
    assert config_unet.PAPER_TABLE["mnist_m"]["C-1N"][1] == 144.41
