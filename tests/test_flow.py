"""afcore.flow: warps, splats, composition, consistency masks, analytic videos, the stereo pair."""
from __future__ import annotations

import math

import sys

import numpy as np
import pytest
import torch

from afcore import flow as FL


def _const_flow(dy, dx, h=16, w=20, b=1):
    f = torch.zeros(b, 2, h, w)
    f[:, 0], f[:, 1] = dy, dx
    return f


def test_identity_warp_is_exact():
    x = torch.randn(2, 3, 16, 20)
    y, m = FL.backward_warp(x, torch.zeros(2, 2, 16, 20))
    torch.testing.assert_close(y, x, atol=1e-6, rtol=0)
    assert m.min() == 1


@pytest.mark.parametrize("mode", ["bilinear", "nearest", "bicubic"])
def test_integer_backward_warp_equals_roll_inside(mode):
    x = torch.randn(1, 3, 16, 20)
    y, m = FL.backward_warp(x, _const_flow(2, -3), mode=mode)
    # y(p) = x(p + (2, -3)) = roll(x, (-2, 3))(p) where the source is inside
    ref = torch.roll(x, (-2, 3), dims=(-2, -1))
    inside = m.bool().expand_as(x)
    torch.testing.assert_close(y[inside], ref[inside], atol=1e-5, rtol=0)
    assert m.sum() == (16 - 2) * (20 - 3)
    assert y[~inside].abs().max() < 1e-6  # zero padding outside


def test_integer_forward_splat_equals_roll_with_unit_weight():
    x = torch.randn(1, 2, 16, 20)
    for kernel in ("bilinear", "nearest"):
        y, wt = FL.forward_splat(x, _const_flow(-1, 4), kernel=kernel)
        ref = torch.roll(x, (-1, 4), dims=(-2, -1))
        covered = wt[0, 0] > 0
        assert covered.sum() == (16 - 1) * (20 - 4)
        torch.testing.assert_close(wt[0, 0][covered], torch.ones(int(covered.sum())), atol=1e-6, rtol=0)
        torch.testing.assert_close(y[..., covered], ref[..., covered], atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", ["pan", "rotate", "elastic"])
def test_bilinear_splat_is_the_adjoint_of_the_backward_warp(kind):
    # warp(y, f)(p) = sum_q k(p, q) y(q) and splat(x, f)(q) = sum_p k(p, q) x(p) with the same bilinear weights,
    # so <splat(x), y> = <x, warp(y)> exactly, for any flow (a sub-pixel pan, a rotation, an elastic field)
    m = FL.motion(kind, 24, torch.Generator().manual_seed(2), **({"velocity": (0.5, -1.25)} if kind == "pan" else {}))
    f = m.flow(0, 1, (24, 24)).double()
    x, y = torch.randn(1, 3, 24, 24, dtype=torch.float64), torch.randn(1, 3, 24, 24, dtype=torch.float64)
    s, _ = FL.forward_splat(x, f)
    w, _ = FL.backward_warp(y, f)
    assert abs(float((s * y).sum() - (x * w).sum())) < 1e-9
    # the splat's weight is the warp applied to ones, transposed: its total equals the warp mask's coverage
    _, wt = FL.forward_splat(torch.ones_like(x[:, :1]), f)
    ones, _ = FL.backward_warp(torch.ones_like(x[:, :1]), f)
    assert abs(float(wt.sum() - ones.sum())) < 1e-9


def test_compose_translations_add():
    f1, f2 = _const_flow(1.25, -0.5), _const_flow(-0.75, 2.0)
    f, m = FL.compose(f1, f2)
    torch.testing.assert_close(f, _const_flow(0.5, 1.5), atol=1e-5, rtol=0)


def test_rotation_flows_compose_to_the_analytic_total():
    m = FL.motion("rotate", 32, degrees=3.0)
    f01, f12, f02 = m.flow(0, 1, (32, 32)), m.flow(1, 2, (32, 32)), m.flow(0, 2, (32, 32))
    f, inside = FL.compose(f01, f12)
    # bilinear interpolation of an affine field is exact up to float32 rounding
    sel = inside.bool().expand_as(f)
    torch.testing.assert_close(f[sel], f02[sel], atol=1e-3, rtol=0)


def test_consistency_mask_all_valid_for_analytic_pairs_and_catches_an_inconsistent_one():
    for kind in ("rotate", "zoom", "elastic", "pan"):
        m = FL.motion(kind, 32, torch.Generator().manual_seed(1))
        fwd, bwd = m.flow(0, 1, (32, 32)), m.flow(1, 0, (32, 32))
        valid = FL.consistency_mask(fwd, bwd)
        _, inside = FL.backward_warp(torch.zeros(1, 1, 32, 32), fwd)
        assert torch.equal(valid, inside)
    bad = FL.consistency_mask(_const_flow(0, 3, 32, 32), _const_flow(0, 3, 32, 32))
    assert bad.sum() == 0


def test_elastic_inverse_and_world_maps():
    m = FL.motion("elastic", 32, torch.Generator().manual_seed(0))
    p = FL.grid(32, 32, dtype=torch.float64)[None]
    for j in (1, 2, 5):
        assert (m.inverse(j, m.world(j, p)) - p).abs().max() < 1e-4
    # max |D| is 1 px at the motion's peak amplitude
    d = (m.world(2, p) - p).norm(dim=1).max()
    assert 0.3 < d <= 1.5


def test_latent_flow_is_image_flow_over_factor():
    m = FL.motion("zoom", 64, factor=1.03)
    fi = m.flow(0, 1, (64, 64))
    fl = m.flow(0, 1, (16, 16), scale=4)
    torch.testing.assert_close(fl, fi[..., ::4, ::4] / 4, atol=1e-5, rtol=0)


def test_integer_pan_video_frames_are_exact_shifts():
    v = FL.synthetic_video("pan", size=32, frames=3, velocity=(1.0, -2.0))
    a, b = v.frames[0:1], v.frames[1:2]
    # content moves by +v: frame1(p) = frame0(p - v)
    torch.testing.assert_close(b[..., 1:, :-2], a[..., :-1, 2:], atol=1e-5, rtol=0)
    we = FL.warp_error(v.frames[1:2], v.frames[0:1], v.flow(0, 1))
    assert float(we) < 1e-9


def test_subpixel_and_rotation_videos_follow_their_flows():
    for kind, kw in (("pan", {"velocity": (0.4, 0.3)}), ("rotate", {"degrees": 2.0}), ("zoom", {}),
                     ("elastic", {})):
        v = FL.synthetic_video(kind, size=48, frames=3, photo="chelsea", seed=3, **kw)
        assert v.frames.shape == (3, 3, 48, 48) and v.frames.abs().max() <= 1
        good = FL.warp_error(v.frames[2:3], v.frames[0:1], v.flow(0, 2))
        # a wrong flow (the opposite motion) must be much worse than the true one
        bad = FL.warp_error(v.frames[2:3], v.frames[0:1], v.flow(2, 0))
        assert float(good) < 0.2 * float(bad), (kind, float(good), float(bad))


def test_video_flow_kinds_and_bad_kind():
    v = FL.synthetic_video("pan", size=16, frames=4, velocity=(0.0, 1.0))
    assert v.flows("prev").shape == (3, 2, 16, 16)
    torch.testing.assert_close(v.flows("first")[2], torch.stack([torch.zeros(16, 16), torch.full((16, 16), 3.0)]))
    assert v.flows("to_first", scale=4).shape == (4, 2, 4, 4)
    with pytest.raises(ValueError, match="kind"):
        v.flows("next")
    with pytest.raises(ValueError, match="motion kind"):
        FL.motion("shear", 16)
    with pytest.raises(ValueError, match="mode"):
        FL.backward_warp(torch.zeros(1, 1, 4, 4), torch.zeros(1, 2, 4, 4), mode="cubic")


def test_stereo_convention():
    left, right, flow, valid = FL.stereo_pair(scale=4)
    warped, inside = FL.backward_warp(right, flow)
    m = valid * inside
    good = (((warped - left).abs().mean(1, keepdim=True) * m).sum() / m.sum()) / 2 * 255
    wrong, inside2 = FL.backward_warp(right, -flow)
    m2 = valid * inside2
    bad = (((wrong - left).abs().mean(1, keepdim=True) * m2).sum() / m2.sum()) / 2 * 255
    assert float(good) < 0.5 * float(bad), (float(good), float(bad))


def test_warp_error_zero_for_exact_circular_pan():
    x = torch.randn(2, 3, 16, 16)
    y = torch.roll(x, (0, 2), dims=(-2, -1))  # content moved by +2 px in x
    assert FL.warp_error(y, x, _const_flow(0, 2, 16, 16, b=2)).abs().max() < 1e-10


def test_read_video_gif_and_missing(tmp_path):
    from afcore.utils import save_gif

    frames = [torch.rand(24, 32, 3).numpy() for _ in range(3)]
    save_gif(frames, tmp_path / "clip.gif")
    v = FL.read_video(str(tmp_path / "clip.gif"), size=16)
    assert v.shape == (3, 3, 16, 16) and v.abs().max() <= 1
    with pytest.raises(FileNotFoundError, match="video path"):
        FL.read_video(str(tmp_path / "none.mp4"))


def test_farneback_recovers_a_pan_and_says_what_to_install_without_opencv(monkeypatch):
    v = FL.synthetic_video("pan", size=64, frames=2, velocity=(1.0, 2.0))
    f = FL.farneback_flow(v.frames)
    assert abs(float(f[0, 0, 16:-16, 16:-16].median()) - 1) < 0.3
    assert abs(float(f[0, 1, 16:-16, 16:-16].median()) - 2) < 0.3
    monkeypatch.setitem(sys.modules, "cv2", None)  # as if OpenCV were not installed
    with pytest.raises(ImportError, match="opencv-python-headless"):
        FL.farneback_flow(torch.zeros(2, 3, 8, 8))


def test_read_video_takes_grey_frame_folders_and_names_a_frame_of_another_size(tmp_path):
    """A folder of grey PNGs used to fail deep inside torch (permute of a 3-D array), mixed sizes inside numpy."""
    import imageio.v2 as imageio

    rng = np.random.default_rng(0)
    grey = tmp_path / "grey"
    grey.mkdir()
    frames = [rng.integers(0, 256, (20, 24), dtype=np.uint8) for _ in range(3)]
    for j, f in enumerate(frames):
        imageio.imwrite(grey / f"{j:03d}.png", f)
    v = FL.read_video(str(grey))
    assert v.shape == (3, 3, 20, 20)
    assert torch.equal(v[:, 0], v[:, 1]) and torch.equal(v[:, 1], v[:, 2])
    expected = torch.from_numpy(frames[1][:, 2:22].astype(np.float32)) / 255 * 2 - 1
    torch.testing.assert_close(v[1, 0], expected, atol=1e-6, rtol=0)
    imageio.imwrite(grey / "003.png", rng.integers(0, 256, (16, 16), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"frame 003.png is 16x16 pixels but the first is 20x24"):
        FL.read_video(str(grey))
    deep = tmp_path / "deep"
    deep.mkdir()
    imageio.imwrite(deep / "0.png", np.zeros((8, 8), dtype=np.uint16))
    with pytest.raises(ValueError, match="uint16 pixels.*8-bit"):
        FL.read_video(str(deep))
