"""afcore.noise_warp: the distributions of warped noise (integral noise, GP/RFF noise, baselines)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from afcore import flow as FL
from afcore import noise_warp as NW
from afcore.signal import radial_power_spectrum


def _const_flow(dy, dx, h, w, b=1):
    f = torch.zeros(b, 2, h, w)
    f[:, 0], f[:, 1] = dy, dx
    return f


def test_conditional_upsample_keeps_block_means_and_is_white():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4096, 1, 2, 2, generator=g)
    sub = NW.conditional_upsample(x, 8, g)
    sums = sub.reshape(4096, 1, 2, 8, 2, 8).sum(dim=(3, 5)) / 8
    torch.testing.assert_close(sums, x, atol=1e-5, rtol=0)
    v = sub.var(0)  # per sub-pixel variance over draws
    assert float((v - 1).abs().max()) < 0.1 and abs(float(v.mean()) - 1) < 0.05
    a = sub[:, 0, 0, :8].reshape(4096, 8)  # first sub-row of a block
    corr = torch.corrcoef(a.T)
    off = corr[~torch.eye(8, dtype=bool)]
    assert float(off.abs().max()) < 0.05


def test_integral_warp_identity_and_integer_shift():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 12, 16, generator=g)
    torch.testing.assert_close(NW.integral_warp(x, torch.zeros(2, 2, 12, 16), 8, g), x, atol=1e-5, rtol=0)
    y = NW.integral_warp(x, _const_flow(2, -3, 12, 16, b=2), 8, g)  # content moves by (2, -3)
    ref = torch.roll(x, (2, -3), dims=(-2, -1))
    torch.testing.assert_close(y[..., 2:, :-3], ref[..., 2:, :-3], atol=1e-5, rtol=0)
    fresh = y[..., :2, :]  # disoccluded rows: new noise, not the wrapped old rows
    assert not torch.allclose(fresh, ref[..., :2, :])


def test_integral_warp_of_a_rotation_is_white_unit_noise():
    g = torch.Generator().manual_seed(2)
    m = FL.motion("rotate", 16, degrees=10.0)
    f = m.flow(0, 1, (16, 16))  # one flow for the whole batch
    y = NW.integral_warp(torch.randn(2000, 1, 16, 16, generator=g), f, 8, g)
    s = NW.noise_stats(y)
    assert abs(s["mean"]) < 0.05 and abs(s["var"] - 1) < 0.05
    assert abs(s["corr_x"]) < 0.05 and abs(s["corr_y"]) < 0.05
    power = s["spectrum"][1]
    assert float((power - 1).abs().max()) < 0.1


def test_bilinear_baseline_loses_variance_at_half_pixel_offsets():
    g = torch.Generator().manual_seed(3)
    shape = (4000, 1, 8, 8)
    to_first = torch.stack([torch.zeros(4000, 2, 8, 8), _const_flow(0.5, 0.5, 8, 8, b=4000)])
    y = NW.noise_video("bilinear", shape, to_first, generator=g)[1][..., :-1, :-1]
    assert float(y.var()) < 0.9  # 4 x (1/4)^2 = 0.25 in theory
    y = NW.noise_video("nearest", shape, to_first, generator=g)[1]
    assert abs(float(y.var()) - 1) < 0.05


def _truncated_se_covariance(r, ell, trunc, n=400):
    """E[cos(z_x r)] for z ~ N(0, ell^-2 I) restricted to |z| <= trunc / ell, by polar quadrature."""
    rho = np.linspace(0, trunc, n + 1)[1:] - trunc / (2 * n)
    th = np.linspace(0, 2 * np.pi, 4 * n, endpoint=False)
    R, T = np.meshgrid(rho, th, indexing="ij")
    wgt = R * np.exp(-R ** 2 / 2)
    return float((wgt * np.cos(R * np.cos(T) * r / ell)).sum() / wgt.sum())


def test_rff_noise_unit_variance_and_kernel():
    g = torch.Generator().manual_seed(4)
    ell = NW.gp_length_scale()
    rff = NW.RFFNoise(32, 1, ell, features=3000, truncation=2.0, generator=g)
    x = rff(grid_size=(24, 24))
    assert abs(float(x.var()) - 1) < 0.05 and abs(float(x.mean())) < 0.05
    xc = x[:, 0]
    for lag in range(4):
        emp = float((xc[:, :, lag:] * xc[:, :, :24 - lag]).mean() / (xc ** 2).mean())
        exact = _truncated_se_covariance(lag, ell, 2.0)
        assert abs(emp - exact) < 0.05, (lag, emp, exact)
        # truncation at 2 sigma moves the kernel away from exp(-r^2 / 2 l^2) by less than 0.15 at these lags
        assert abs(exact - math.exp(-lag ** 2 / (2 * ell ** 2))) < 0.15
    # every frequency at or below Nyquist: all power representable on the grid
    assert float(rff.z.norm(dim=-1).max()) <= math.pi + 1e-5
    with pytest.raises(ValueError, match="features"):
        NW.RFFNoise(1, 1, features=0)


def test_gp_warp_integer_translation_is_a_roll_and_composition_agrees():
    g = torch.Generator().manual_seed(5)
    v = FL.synthetic_video("pan", size=16, frames=3, velocity=(1.0, 2.0))
    to_first = v.flows("to_first")[:, None]
    noise = NW.noise_video("gp_warp", (1, 4, 16, 16), to_first, generator=g, rff_features=500)
    assert torch.isfinite(noise).all()
    torch.testing.assert_close(noise[1][..., 1:, 2:], noise[0][..., :-1, :-2], atol=1e-4, rtol=0)
    torch.testing.assert_close(noise[2][..., 2:, 4:], noise[0][..., :-2, :-4], atol=1e-4, rtol=0)
    # frame-by-frame composition of the (rotation) flows gives the same re-evaluated noise as the analytic map
    v = FL.synthetic_video("rotate", size=16, frames=3, degrees=5.0)
    prev = v.flows("prev")
    back01, back12 = v.flow(1, 0), v.flow(2, 1)
    composed, inside = FL.compose(back12, back01)
    assert float((composed - v.flow(2, 0))[inside.expand(-1, 2, -1, -1).bool()].abs().max()) < 1e-3
    rff = NW.RFFNoise(1, 2, features=500, generator=g)
    base = FL.grid(16, 16)[None]
    a, b = rff(base + composed), rff(base + v.flow(2, 0))
    m = inside.bool().expand_as(a)
    torch.testing.assert_close(a[m], b[m], atol=5e-3, rtol=0)
    assert prev.shape == (2, 2, 16, 16)


def test_noise_video_methods_shapes_and_fixed_resample():
    g = torch.Generator().manual_seed(6)
    v = FL.synthetic_video("zoom", size=16, frames=3)
    to_first, prev = v.flows("to_first")[:, None], v.flows("prev")[:, None]
    for m in NW.METHODS:
        n = NW.noise_video(m, (1, 2, 16, 16), to_first, prev, generator=g, rff_features=200)
        assert n.shape == (3, 1, 2, 16, 16) and torch.isfinite(n).all(), m
        if m.endswith("fixed"):
            assert torch.equal(n[0], n[2])
        if m.endswith("resample"):
            assert float((n[0] - n[2]).abs().mean()) > 0.5
    with pytest.raises(ValueError, match="method"):
        NW.noise_video("polygon", (1, 2, 16, 16), to_first)
    with pytest.raises(ValueError, match="prev_flows"):
        NW.noise_video("hiwyn", (1, 2, 16, 16), to_first)


def test_noise_stats_of_white_noise():
    s = NW.noise_stats(torch.randn(500, 1, 16, 16, generator=torch.Generator().manual_seed(7)))
    assert abs(s["var"] - 1) < 0.03 and abs(s["corr_x"]) < 0.03
    f, p = radial_power_spectrum(torch.randn(500, 16, 16))
    assert float((p - 1).abs().max()) < 0.15


# ------------------------------------------------------------------ GP noise: memory budget and device placement
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def test_chunk_plan_stays_within_the_budget():
    rng = np.random.default_rng(0)
    cases = [tuple(int(v) for v in rng.integers(1, 400, 3)) + (int(rng.integers(400, 100_000)),) for _ in range(300)]
    # the gpu profile: the batched bench (1000 frames of 128x128x4, J = 3000: 67 GB of float32 phases unchunked),
    # a training step (64 latents of 32x32x4) and one 1024x1024 noise
    cases += [(1000, 128 * 128, 4 * 3000, NW.GP_CHUNK_ELEMENTS), (64, 32 * 32, 4 * 3000, NW.GP_CHUNK_ELEMENTS),
              (1, 1024 * 1024, 3000, NW.GP_CHUNK_ELEMENTS), (7, 5, 3, 3)]
    assert 1000 * 128 * 128 * 4 * 3000 * 4 > 60e9
    for batch, positions, width, budget in cases:
        bs, ps = NW.chunk_plan(batch, positions, width, budget)
        assert 1 <= bs <= batch and 1 <= ps <= positions, (batch, positions, width, budget)
        assert bs * ps * width <= budget, (batch, positions, width, budget, bs, ps)
        if batch * positions * width <= budget:  # what fits is done in one piece
            assert (bs, ps) == (batch, positions)
        if ps < positions:  # positions are only split with the whole batch, or one position at a time
            assert bs == batch or ps == 1
    with pytest.raises(ValueError, match="chunk"):
        NW.chunk_plan(2, 10, 100, 99)
    with pytest.raises(ValueError, match="chunk"):
        NW.RFFNoise(1, 2, features=50, chunk=99)


class _Allocations(torch.overrides.TorchFunctionMode):
    """Sizes (elements) of the tensors with their own storage that torch functions return (views excluded)."""

    def __init__(self):
        super().__init__()
        self.sizes = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor) and out._base is None:
            self.sizes.append((getattr(func, "__name__", str(func)), out.numel()))
        return out


@pytest.mark.parametrize("shape, budget, plan", [((3, 2, 40, 10), 2000, (3, 8)),  # positions split
                                                 ((6, 2, 40, 3), 200, (2, 1))])  # batch split, one position
def test_rff_noise_largest_intermediate_within_budget_and_chunked_equals_unchunked(shape, budget, plan):
    b, c, j, side = shape
    assert NW.chunk_plan(b, side * side, c * j, budget) == plan
    pos = FL.grid(side, side)[None].expand(b, -1, -1, -1) + 0.3 * torch.randn(
        b, 2, side, side, generator=torch.Generator().manual_seed(9))
    # float32 sums J terms in a chunk-dependent order (differences ~1e-6); float64 shows the chunks are exact
    for dtype, atol in ((torch.float64, 1e-6), (torch.float32, 1e-5)):
        rff = NW.RFFNoise(b, c, features=j, generator=torch.Generator().manual_seed(8), dtype=dtype)
        whole = rff(pos)  # the default budget: one piece
        rff.chunk = budget
        with _Allocations() as rec:
            chunked = rff(pos)
        largest = max(n for _, n in rec.sizes)
        assert largest <= budget, rec.sizes
        assert largest == plan[0] * plan[1] * c * j  # the phases of one chunk are the largest allocation
        assert chunked.dtype == dtype
        torch.testing.assert_close(chunked, whole, atol=atol, rtol=0)


def _old_rff_parameters(batch, channels, features, truncation, length_scale, generator):
    """The draws RFFNoise made before it could draw on a device: all on the CPU, float64, in this order."""
    n = batch * channels * features
    z = torch.empty(0, 2, dtype=torch.float64)
    while len(z) < n:
        cand = torch.randn(2 * n, 2, generator=generator, dtype=torch.float64)
        z = torch.cat([z, cand[cand.norm(dim=1) <= truncation]])
    z = (z[:n] / length_scale).reshape(batch, channels * features, 2).float()
    b = (2 * math.pi * torch.rand(batch, channels * features, generator=generator, dtype=torch.float64)).float()
    w = torch.randn(batch, channels, features, generator=generator, dtype=torch.float64).float()
    return z, b, w * math.sqrt(2 / features)


def test_rff_noise_cpu_draws_unchanged_and_match_the_formula():
    ell = NW.gp_length_scale()
    rff = NW.RFFNoise(3, 2, ell, features=70, truncation=2.0, generator=torch.Generator().manual_seed(10))
    z, b, w = _old_rff_parameters(3, 2, 70, 2.0, ell, torch.Generator().manual_seed(10))
    assert torch.equal(rff.z, z) and torch.equal(rff.b, b) and torch.equal(rff.w, w)
    assert rff.device == torch.device("cpu")
    pos = FL.grid(5, 6)[None].expand(3, -1, -1, -1).double()
    ph = torch.einsum("bkd,bdn->bkn", z.double(), pos.flatten(2)) + b.double()[..., None]  # (B, CJ, HW)
    ref = torch.einsum("bcjn,bcj->bcn", torch.cos(ph).reshape(3, 2, 70, -1), w.double()).reshape(3, 2, 5, 6)
    torch.testing.assert_close(rff(grid_size=(5, 6)).double(), ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_rff_noise_follows_its_generator_and_device(device):
    from afcore import video as V
    from afcore.device import make_generator

    dev = torch.device(device)
    on_dev = NW.RFFNoise(2, 3, features=50, generator=make_generator(3, device))
    x = on_dev(grid_size=(5, 5))
    assert on_dev.device.type == dev.type and x.device.type == dev.type and torch.isfinite(x).all()
    # a CPU generator gives the same draws wherever the noise is evaluated
    cpu = NW.RFFNoise(2, 3, features=50, generator=make_generator(3))
    moved = NW.RFFNoise(2, 3, features=50, generator=make_generator(3), device=device)
    assert moved.device.type == dev.type
    torch.testing.assert_close(moved(grid_size=(5, 5)).cpu(), cpu(grid_size=(5, 5)), atol=1e-5, rtol=0)
    assert torch.equal(moved.w.cpu(), cpu.w)
    # the training noise follows the batch: drawn with the batch's generator, on the batch's device
    eps = V._noise((2, 4, 6, 6), "gp", make_generator(1, device), dev, 50, 2.0)
    assert eps.device.type == dev.type and eps.shape == (2, 4, 6, 6)
    if device != "cpu":
        with pytest.raises(ValueError, match="positions are on"):
            on_dev(FL.grid(5, 5)[None].expand(2, -1, -1, -1))


def _polygon_transport(sub: np.ndarray, matrix: np.ndarray, offset: np.ndarray, h: int, w: int, n: int):
    """Integral noise by polygon transport, written independently of integral_warp: for each destination pixel,
    the preimage of its unit square under the affine motion p -> matrix @ p + offset is a parallelogram in the
    source frame; the sub-pixel centres inside it (matplotlib's point-in-polygon test) are summed and divided by
    the square root of their count. Returns (values, counts) of shape (H, W)."""
    from matplotlib.path import Path as PolyPath
    inv = np.linalg.inv(matrix)
    centres = (np.arange(h * n) + 0.5) / n - 0.5, (np.arange(w * n) + 0.5) / n - 0.5
    cy, cx = np.meshgrid(*centres, indexing="ij")
    points = np.stack([cy.ravel(), cx.ravel()], 1)
    values, counts = np.zeros((h, w)), np.zeros((h, w), dtype=int)
    for qy in range(h):
        for qx in range(w):
            square = np.array([[qy - .5, qx - .5], [qy - .5, qx + .5], [qy + .5, qx + .5], [qy + .5, qx - .5]])
            poly = (square - offset) @ inv.T
            inside = PolyPath(poly).contains_points(points)
            counts[qy, qx] = inside.sum()
            values[qy, qx] = sub.ravel()[inside].sum() / max(np.sqrt(inside.sum()), 1)
    return values, counts


@pytest.mark.parametrize("seed", [0, 1])
def test_integral_warp_matches_polygon_transport_up_to_the_frame_border(seed):
    # a rotation + zoom + sub-pixel translation: affine, so the transport must be exact in every pixel, the outer
    # half pixel of the frame included (reading the flow with border padding got those wrong)
    h, w, n = 9, 11, 4
    rng = np.random.default_rng(seed)
    angle, scale = rng.uniform(0.05, 0.15), rng.uniform(0.95, 1.05)
    matrix = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    centre = np.array([(h - 1) / 2, (w - 1) / 2])
    offset = centre - matrix @ centre + rng.uniform(-0.4, 0.4, 2)
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    p = np.stack([yy, xx], 0).reshape(2, -1)
    flow = torch.from_numpy((matrix @ p + offset[:, None] - p).reshape(1, 2, h, w))  # float64
    noise = torch.randn(1, 1, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    out = NW.integral_warp(noise, flow, n, torch.Generator().manual_seed(10 + seed))
    sub = NW.conditional_upsample(noise, n, torch.Generator().manual_seed(10 + seed))  # the same sub-pixels
    values, counts = _polygon_transport(sub[0, 0].numpy(), matrix, offset, h, w, n)
    covered = counts > 0
    edge = np.zeros((h, w), dtype=bool)
    edge[[0, -1], :] = edge[:, [0, -1]] = True
    assert (covered & edge).sum() >= edge.sum() // 2  # the border is really exercised
    np.testing.assert_allclose(out[0, 0].numpy()[covered], values[covered], atol=1e-9, rtol=0)


def test_sample_at_extrapolate_reproduces_an_affine_field_outside_the_frame():
    h, w = 5, 6
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    field = torch.stack([0.3 * yy - 0.2 * xx + 1.0, 0.1 * yy + 0.4 * xx - 2.0])[None]
    pos = torch.stack(torch.meshgrid(torch.linspace(-0.5, h - 0.5, 13, dtype=torch.float64),
                                     torch.linspace(-0.5, w - 0.5, 15, dtype=torch.float64), indexing="ij"))[None]
    py, px = pos[:, 0], pos[:, 1]
    want = torch.stack([0.3 * py - 0.2 * px + 1.0, 0.1 * py + 0.4 * px - 2.0], 1)
    torch.testing.assert_close(FL.sample_at(field, pos, padding="extrapolate"), want, atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="extrapolate"):
        FL.sample_at(field, pos, mode="nearest", padding="extrapolate")
