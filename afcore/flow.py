"""Optical flow and videos with ground truth (taught in notebooks/40_noise_warping.py and 41_video_editing.py).

Conventions (used by every video stage):

- A **flow** is a tensor ``(B, 2, H, W)`` in pixels, channel 0 = dy, channel 1 = dx. The *forward flow*
  ``F_{a->b}`` sends pixel p of frame a to ``p + F(p)`` in frame b.
- **Backward warp** ``backward_warp(y_b, F_{a->b})(p) = y_b(p + F_{a->b}(p))`` (bilinear by default) pulls frame b
  onto frame a's grid; its mask marks the p whose source lies inside frame b.
- **Forward splatting** pushes every pixel of frame a to ``p + F(p)`` and spreads it over the neighbouring pixels
  with bilinear (or nearest) weights; the weights are returned so a caller can normalise or mark holes.
- Pixel centres sit at integer coordinates 0..H-1 (``align_corners=True`` in ``grid_sample`` terms). A latent of a
  factor-f autoencoder has sample u at image coordinate f*u, so an image motion ``p -> m(p)`` is the latent motion
  ``u -> m(f u) / f``.
- **Warping error** ``WE(y_b, y_a, F_{a->b}) = sum_p M(p) |y_b(p + F(p)) - y_a(p)|^2 / (C sum_p M)`` per sample: the
  later frame is interpolated, the reference is not.

Synthetic videos (:func:`synthetic_video`) are rendered anti-aliased (4x4 super-sampling of a bicubic-resampled,
area-resized photograph, then a 4x4 box average) from the photographs that ship with scikit-image. Each frame j is
defined by a *world map* ``W_j``: frame j's pixel p shows the photograph at frame-0 coordinates ``W_j(p)``
(``W_0`` = identity), so every flow is analytic: ``F_{a->b}(p) = W_b^{-1}(W_a(p)) - p``. Motions: integer or
sub-pixel pans, rotation and zoom about the frame centre, and a smooth elastic field whose inverse is found by
fixed-point iteration. The stereo pair of scikit-image (``stereo_pair``) is a real two-view case with a measured
disparity; ``read_video`` + ``farneback_flow`` let a user run the stages on their own clip (OpenCV needed).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["grid", "backward_warp", "forward_splat", "compose", "consistency_mask", "warp_error", "Motion",
           "motion", "synthetic_video", "Video", "stereo_pair", "read_video", "farneback_flow", "MOTIONS"]

MOTIONS = ("pan", "rotate", "zoom", "elastic")


def grid(h: int, w: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(2, H, W) pixel coordinates (y, x)."""
    ys = torch.arange(h, device=device, dtype=dtype)
    xs = torch.arange(w, device=device, dtype=dtype)
    return torch.stack(torch.meshgrid(ys, xs, indexing="ij"))


def _check_flow(x: torch.Tensor, flow: torch.Tensor) -> None:
    if flow.ndim != 4 or flow.shape[1] != 2:
        raise ValueError(f"flow must be (B, 2, H, W) with channels (dy, dx), got {tuple(flow.shape)}")
    if x is not None and (x.ndim != 4 or x.shape[-2:] != flow.shape[-2:] and x.shape[-2:] != flow.shape[-2:]):
        raise ValueError(f"x must be (B, C, H, W), got {tuple(x.shape)}")


def _inside(pos: torch.Tensor, h: int, w: int, eps: float = 1e-4) -> torch.Tensor:
    return ((pos[:, 0] >= -eps) & (pos[:, 0] <= h - 1 + eps) & (pos[:, 1] >= -eps) & (pos[:, 1] <= w - 1 + eps))


def sample_at(x: torch.Tensor, pos: torch.Tensor, mode: str = "bilinear", padding: str = "zeros") -> torch.Tensor:
    """Sample ``x`` (B, C, H, W) at absolute pixel positions ``pos`` (B, 2, H', W') (y, x).

    Bilinear and nearest are computed with explicit weights, so integer positions return the samples exactly
    (``grid_sample``'s coordinate normalisation would add float rounding); bicubic uses ``grid_sample``.
    ``padding="extrapolate"`` (bilinear only) continues the outermost cell's bilinear surface outside the frame, so a
    field that is affine in position (the flow of an affine motion) is reproduced exactly everywhere, including the
    half pixel beyond the outer pixel centres where ``border`` would freeze it.
    """
    if mode not in ("bilinear", "nearest", "bicubic"):
        raise ValueError(f"mode must be 'bilinear', 'nearest' or 'bicubic', got {mode!r}")
    if padding not in ("zeros", "border", "reflection", "extrapolate"):
        raise ValueError(f"padding must be 'zeros', 'border', 'reflection' or 'extrapolate', got {padding!r}")
    h, w = x.shape[-2:]
    if padding == "extrapolate":
        if mode != "bilinear" or h < 2 or w < 2:
            raise ValueError(f"padding='extrapolate' needs mode='bilinear' and H, W >= 2, got mode={mode!r}, "
                             f"(H, W) = {(h, w)}")
        return _bilinear_extrapolate(x, pos)
    if mode == "bicubic" or padding == "reflection":
        gy = 2 * pos[:, 0].double() / max(h - 1, 1) - 1
        gx = 2 * pos[:, 1].double() / max(w - 1, 1) - 1
        g = torch.stack([gx, gy], -1)
        return F.grid_sample(x.double(), g, mode=mode, padding_mode=padding, align_corners=True).to(x.dtype)
    py, px = pos[:, 0], pos[:, 1]
    if padding == "border":
        py, px = py.clamp(0, h - 1), px.clamp(0, w - 1)
    b, c = x.shape[:2]
    flat = x.reshape(b, c, h * w)
    if mode == "nearest":
        corners = [(torch.round(py), torch.round(px), torch.ones_like(py))]
    else:
        y0, x0 = torch.floor(py), torch.floor(px)
        fy, fx = py - y0, px - x0
        corners = [(y0, x0, (1 - fy) * (1 - fx)), (y0, x0 + 1, (1 - fy) * fx),
                   (y0 + 1, x0, fy * (1 - fx)), (y0 + 1, x0 + 1, fy * fx)]
    out = 0
    for cy, cx, wt in corners:
        ok = (cy >= 0) & (cy <= h - 1) & (cx >= 0) & (cx <= w - 1)
        idx = (cy.clamp(0, h - 1) * w + cx.clamp(0, w - 1)).long().reshape(b, 1, -1)
        vals = torch.gather(flat, 2, idx.expand(b, c, idx.shape[-1])).reshape(b, c, *py.shape[-2:])
        out = out + vals * (wt * ok).to(x.dtype)[:, None]
    return out


def _bilinear_extrapolate(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Bilinear interpolation whose cell index is clamped to the frame and whose weights are not (see sample_at)."""
    h, w = x.shape[-2:]
    b, c = x.shape[:2]
    py, px = pos[:, 0], pos[:, 1]
    y0 = torch.floor(py).clamp(0, h - 2)
    x0 = torch.floor(px).clamp(0, w - 2)
    fy, fx = py - y0, px - x0  # outside [0, 1] beyond the outer centres: linear continuation
    flat = x.reshape(b, c, h * w)
    out = 0
    for cy, cx, wt in [(y0, x0, (1 - fy) * (1 - fx)), (y0, x0 + 1, (1 - fy) * fx),
                       (y0 + 1, x0, fy * (1 - fx)), (y0 + 1, x0 + 1, fy * fx)]:
        idx = (cy * w + cx).long().reshape(b, 1, -1)
        vals = torch.gather(flat, 2, idx.expand(b, c, idx.shape[-1])).reshape(b, c, *py.shape[-2:])
        out = out + vals * wt.to(x.dtype)[:, None]
    return out


def backward_warp(x: torch.Tensor, flow: torch.Tensor, mode: str = "bilinear", padding: str = "zeros"):
    """``y(p) = x(p + flow(p))``; returns ``(y, mask)`` with mask (B, 1, H, W) = source inside the frame."""
    _check_flow(x, flow)
    h, w = x.shape[-2:]
    pos = grid(*flow.shape[-2:], device=flow.device, dtype=flow.dtype)[None] + flow
    mask = _inside(pos, h, w)[:, None].to(x.dtype)
    return sample_at(x, pos, mode, padding), mask


def forward_splat(x: torch.Tensor, flow: torch.Tensor, kernel: str = "bilinear", normalize: bool = False):
    """Push pixel p of ``x`` to ``p + flow(p)``; returns ``(y, weight)``, weight (B, 1, H, W) the summed kernel.

    ``kernel="bilinear"`` spreads each pixel over its 4 neighbours, ``"nearest"`` drops it on the closest pixel.
    ``normalize`` divides by the weight where it is positive (holes stay 0).
    """
    _check_flow(x, flow)
    if kernel not in ("bilinear", "nearest"):
        raise ValueError(f"kernel must be 'bilinear' or 'nearest', got {kernel!r}")
    b, c, h, w = x.shape
    pos = grid(h, w, device=x.device, dtype=flow.dtype)[None] + flow
    if kernel == "nearest":
        corners = [(torch.round(pos[:, 0]), torch.round(pos[:, 1]), torch.ones_like(pos[:, 0]))]
    else:
        y0, x0 = torch.floor(pos[:, 0]), torch.floor(pos[:, 1])
        fy, fx = pos[:, 0] - y0, pos[:, 1] - x0
        corners = [(y0, x0, (1 - fy) * (1 - fx)), (y0, x0 + 1, (1 - fy) * fx),
                   (y0 + 1, x0, fy * (1 - fx)), (y0 + 1, x0 + 1, fy * fx)]
    out = torch.zeros(b, c, h * w, dtype=x.dtype, device=x.device)
    weight = torch.zeros(b, 1, h * w, dtype=x.dtype, device=x.device)
    src = x.reshape(b, c, h * w)
    for cy, cx, wt in corners:
        ok = (cy >= 0) & (cy <= h - 1) & (cx >= 0) & (cx <= w - 1) & (wt > 0)
        idx = (cy.clamp(0, h - 1) * w + cx.clamp(0, w - 1)).long().reshape(b, 1, h * w)
        wt = (wt * ok).reshape(b, 1, h * w).to(x.dtype)
        out.scatter_add_(2, idx.expand(b, c, h * w), src * wt)
        weight.scatter_add_(2, idx, wt)
    out, weight = out.reshape(b, c, h, w), weight.reshape(b, 1, h, w)
    if normalize:
        out = torch.where(weight > 0, out / weight.clamp_min(1e-12), torch.zeros_like(out))
    return out, weight


def compose(f_ab: torch.Tensor, f_bc: torch.Tensor):
    """Forward flow a -> c from a -> b and b -> c: ``f_ac(p) = f_ab(p) + f_bc(p + f_ab(p))``.

    Returns ``(f_ac, mask)``; mask marks the p whose intermediate point lies inside frame b (elsewhere ``f_bc`` is
    extended from the border, a guess).
    """
    _check_flow(None, f_ab)
    _check_flow(None, f_bc)
    warped, mask = backward_warp(f_bc, f_ab, padding="border")
    return f_ab + warped, mask


def consistency_mask(fwd: torch.Tensor, bwd: torch.Tensor, alpha: float = 0.01, beta: float = 0.5) -> torch.Tensor:
    """Forward-backward check (UnFlow / GMFlow form): pixel p of frame a is *valid* when p + fwd(p) lies in frame b
    and ``|fwd(p) + bwd(p + fwd(p))| <= alpha (|fwd(p)| + |bwd(p)|) + beta``. Returns (B, 1, H, W) float."""
    _check_flow(None, fwd)
    _check_flow(None, bwd)
    bwd_at, inside = backward_warp(bwd, fwd, padding="border")
    diff = (fwd + bwd_at).norm(dim=1, keepdim=True)
    thresh = alpha * (fwd.norm(dim=1, keepdim=True) + bwd.norm(dim=1, keepdim=True)) + beta
    return ((diff <= thresh).to(fwd.dtype) * inside)


def fourier_warp(x: torch.Tensor, flow: torch.Tensor, tol: float = 1e-3):
    """``backward_warp`` for a constant flow (a pan) as an exact band-limited shift: ``y(p) = x(p + d)`` computed
    with a phase ramp in the Fourier domain (no interpolation blur, so a pan of a band-limited frame is undone
    exactly; the wrap-around is cut by the in-frame mask). Returns ``(y, mask)`` like :func:`backward_warp`; raises
    if the flow is not constant per sample (within ``tol`` px)."""
    _check_flow(x, flow)
    d = flow.mean((-1, -2))  # (B, 2): (dy, dx)
    if float((flow - d[:, :, None, None]).abs().max()) > tol:
        raise ValueError("fourier_warp needs a constant flow per sample (a pan); use backward_warp otherwise")
    h, w = x.shape[-2:]
    fy = torch.fft.fftfreq(h, device=x.device, dtype=torch.float64)
    fx = torch.fft.fftfreq(w, device=x.device, dtype=torch.float64)
    phase = 2 * math.pi * (d[:, 0, None, None].double() * fy[:, None] + d[:, 1, None, None].double() * fx[None, :])
    y = torch.fft.ifft2(torch.fft.fft2(x.double()) * torch.polar(torch.ones_like(phase), phase)[:, None]).real
    pos = grid(h, w, device=flow.device, dtype=flow.dtype)[None] + flow
    return y.to(x.dtype), _inside(pos, h, w)[:, None].to(x.dtype)


def warp_error(y_b: torch.Tensor, y_a: torch.Tensor, flow_ab: torch.Tensor, mask: torch.Tensor | None = None,
               mode: str = "bilinear", warp=None) -> torch.Tensor:
    """Per-sample warping error ``sum M |y_b(p + F(p)) - y_a(p)|^2 / (C sum M)`` (B,); the later frame y_b is
    interpolated onto a's grid, y_a is not. ``mask`` (optional, (B|1, 1, H, W)) is multiplied with the in-frame mask.
    ``warp``: a replacement for :func:`backward_warp` with its signature (e.g. :func:`fourier_warp` for pans)."""
    warped, inside = backward_warp(y_b, flow_ab, mode=mode) if warp is None else warp(y_b, flow_ab)
    m = inside if mask is None else inside * mask
    err = ((warped - y_a) ** 2 * m).flatten(1).sum(1)
    return err / (m.expand_as(y_a).flatten(1).sum(1)).clamp_min(1)


# --------------------------------------------------------------------------------------------------- motions
@dataclass
class Motion:
    """World map of a video: frame j's pixel p shows frame-0 coordinates ``world(j, p)``; ``inverse`` undoes it.

    Positions are tensors (..., 2, H, W) in (y, x) pixels of the frame grid; ``centre`` is the frame centre.
    """
    kind: str
    params: dict = field(default_factory=dict)

    def world(self, j: int, p: torch.Tensor) -> torch.Tensor:
        return _apply(self, j, p, inverse=False)

    def inverse(self, j: int, q: torch.Tensor) -> torch.Tensor:
        return _apply(self, j, q, inverse=True)

    def flow(self, a: int, b: int, size, scale: float = 1.0, device=None) -> torch.Tensor:
        """Forward flow a -> b (1, 2, h, w) on a grid whose sample u sits at frame coordinate ``scale * u``."""
        p = grid(*size, device=device, dtype=torch.float64)[None] * scale
        return ((self.inverse(b, self.world(a, p)) - p) / scale).float()


def _elastic_field(p: torch.Tensor, comps) -> torch.Tensor:
    """Smooth displacement D(p) (..., 2, H, W): a sum of a few random low-frequency sinusoids per axis."""
    out = []
    for axis in comps:
        d = torch.zeros_like(p[..., 0, :, :])
        for ky, kx, phase, amp in axis:
            d = d + amp * torch.cos(ky * p[..., 0, :, :] + kx * p[..., 1, :, :] + phase)
        out.append(d)
    return torch.stack(out, -3)


def _apply(m: Motion, j: int, p: torch.Tensor, inverse: bool) -> torch.Tensor:
    c = torch.tensor(m.params["centre"], dtype=p.dtype, device=p.device).view(2, 1, 1)
    if m.kind == "pan":
        v = torch.tensor(m.params["velocity"], dtype=p.dtype, device=p.device).view(2, 1, 1)
        return p + j * v if inverse else p - j * v  # content moves by +v per frame
    if m.kind == "rotate":
        th = math.radians(m.params["degrees"] * j) * (1 if inverse else -1)
        q = p - c
        cos, sin = math.cos(th), math.sin(th)
        # counter-clockwise as displayed (y down): content at angle th means world = R(-th) p
        y = cos * q[..., 0, :, :] - sin * q[..., 1, :, :]
        x = sin * q[..., 0, :, :] + cos * q[..., 1, :, :]
        return torch.stack([y, x], -3) + c
    if m.kind == "zoom":
        s = m.params["factor"] ** j
        return (p - c) * (s if inverse else 1 / s) + c
    if m.kind == "elastic":
        a = m.params["amplitude"] * math.sin(2 * math.pi * j / m.params["period"])
        comps = m.params["components"]
        if not inverse:
            return p - a * _elastic_field(p, comps)
        q = p.clone()
        for _ in range(m.params.get("iterations", 30)):  # p = w + a D(p): a contraction since |a grad D| < 1
            q = p + a * _elastic_field(q, comps)
        return q
    raise ValueError(f"motion kind must be one of {MOTIONS}, got {m.kind!r}")


def motion(kind: str, size: int, generator: torch.Generator | None = None, **kw) -> Motion:
    """A random motion of ``kind`` for frames of ``size`` px. Keywords override the random draw:
    pan ``velocity=(dy, dx)`` px/frame (default: ``speed`` px/frame in a random compass direction, ``integer``
    rounds it); rotate ``degrees`` per frame (default +-2); zoom ``factor`` per frame (default 1.02 or 1/1.02);
    elastic ``amplitude`` (px, default 1), ``period`` (frames, default 8), ``cutoff`` (cycles/px, default 1/8)."""
    if kind not in MOTIONS:
        raise ValueError(f"motion kind must be one of {MOTIONS}, got {kind!r}")
    g = generator
    r = lambda: float(torch.rand((), generator=g, device="cpu"))  # noqa: E731
    params = {"centre": ((size - 1) / 2, (size - 1) / 2)}
    if kind == "pan":
        if "velocity" not in kw:
            speed = kw.pop("speed", 1.0)
            ang = 2 * math.pi * int(8 * r()) / 8  # compass directions
            v = (speed * math.sin(ang), speed * math.cos(ang))
            if kw.pop("integer", False):
                v = (float(round(v[0])), float(round(v[1])))
                v = v if v != (0.0, 0.0) else (0.0, float(speed))
            kw["velocity"] = v
        kw.pop("speed", None)
        kw.pop("integer", None)
    elif kind == "rotate":
        kw.setdefault("degrees", 2.0 if r() < 0.5 else -2.0)
    elif kind == "zoom":
        kw.setdefault("factor", 1.02 if r() < 0.5 else 1 / 1.02)
    else:
        amp = kw.setdefault("amplitude", 1.0)
        kw.setdefault("period", 8)
        cutoff = kw.pop("cutoff", 1 / 8)
        comps = []
        for _ in range(2):
            terms = []
            for _ in range(4):
                f, ang = cutoff * (0.3 + 0.7 * r()), 2 * math.pi * r()
                terms.append((2 * math.pi * f * math.sin(ang), 2 * math.pi * f * math.cos(ang), 2 * math.pi * r(),
                              1.0))
            comps.append(terms)
        # normalise so max |D| over a padded frame is 1 px (times `amplitude` at the motion's peak)
        p = grid(2 * size, 2 * size, dtype=torch.float64) - size / 2
        peak = _elastic_field(p, comps).abs().amax()
        kw["components"] = [[(ky, kx, ph, a / float(peak)) for ky, kx, ph, a in t] for t in comps]
        del amp
    params.update(kw)
    return Motion(kind, params)


# --------------------------------------------------------------------------------------------------- videos
@dataclass
class Video:
    """Frames (T, 3, H, W) in [-1, 1] with their motion; ``flow(a, b, scale)`` gives analytic flows."""
    frames: torch.Tensor
    motion: Motion

    def flow(self, a: int, b: int, scale: float = 1.0) -> torch.Tensor:
        h, w = self.frames.shape[-2:]
        return self.motion.flow(a, b, (round(h / scale), round(w / scale)), scale, device=self.frames.device)

    def flows(self, kind: str = "prev", scale: float = 1.0) -> torch.Tensor:
        """(T-1, 2, h, w): forward flows j-1 -> j (``kind="prev"``) or 0 -> j (``"first"``) for j = 1..T-1;
        ``"to_first"``: (T, 2, h, w) backward maps j -> 0 (where frame j's pixels come from in frame 0)."""
        t = len(self.frames)
        if kind == "prev":
            return torch.cat([self.flow(j - 1, j, scale) for j in range(1, t)])
        if kind == "first":
            return torch.cat([self.flow(0, j, scale) for j in range(1, t)])
        if kind == "to_first":
            return torch.cat([self.flow(j, 0, scale) for j in range(t)])
        raise ValueError(f"kind must be 'prev', 'first' or 'to_first', got {kind!r}")


def _photo(name: str, side: int, generator: torch.Generator | None) -> torch.Tensor:
    from afcore.data import natural_images

    img = torch.from_numpy(natural_images((name,))[0]).permute(2, 0, 1)[None].float()
    h, w = img.shape[-2:]
    s = min(h, w)
    crop = int(s * (0.6 + 0.4 * float(torch.rand((), generator=generator, device="cpu"))))
    y0 = int(torch.randint(0, h - crop + 1, (1,), generator=generator, device="cpu"))
    x0 = int(torch.randint(0, w - crop + 1, (1,), generator=generator, device="cpu"))
    img = img[..., y0:y0 + crop, x0:x0 + crop]
    return F.interpolate(img, size=(side, side), mode="area" if side < crop else "bicubic",
                         align_corners=None if side < crop else False) * 2 - 1


def render(source: torch.Tensor, m: Motion, frames: int, size: int, supersample: int = 4) -> torch.Tensor:
    """Render ``frames`` frames of ``size`` px: ``source`` (1, C, S, S) at ``supersample`` px per frame pixel,
    centred on frame 0; each frame pixel averages ``supersample``^2 bicubic samples at W_j(sub-pixel centres)."""
    n = supersample
    side = source.shape[-1]
    off = (side / n - size) / 2  # frame-0 pixel p sits at source frame coordinate p + off
    sub = (torch.arange(size * n, dtype=torch.float64, device="cpu") + 0.5) / n - 0.5
    p = torch.stack(torch.meshgrid(sub, sub, indexing="ij"))[None]
    out = []
    for j in range(frames):
        wpos = m.world(j, p)
        src = ((wpos + off) + 0.5) * n - 0.5  # frame coordinate -> source pixel index
        y = sample_at(source.double(), src, mode="bicubic", padding="reflection")
        out.append(F.avg_pool2d(y, n).float())
    return torch.cat(out).clamp(-1, 1)


def synthetic_video(kind: str, size: int = 64, frames: int = 8, photo: str = "astronaut", seed: int = 0,
                    margin: float = 2.0, supersample: int = 4, **motion_kw) -> Video:
    """An anti-aliased video of ``frames`` frames (``size`` px) from a scikit-image photo under a random ``kind``
    motion (see :func:`motion`); frame 0 is the centre of a photo crop ``margin`` times the frame."""
    g = torch.Generator().manual_seed(seed)
    m = motion(kind, size, g, **motion_kw)
    side = size + 2 * int(round(size * (margin - 1) / 2))  # an even border: frame-0 pixels land on source pixels
    source = _photo(photo, side * supersample, g)
    return Video(render(source, m, frames, size, supersample), m)


# --------------------------------------------------------------------------------------------------- real data
def stereo_pair(scale: int = 1):
    """scikit-image's motorcycle stereo pair as a two-view case: ``(left, right, flow, valid)``.

    ``left``, ``right`` (1, 3, H, W) in [-1, 1], area-reduced by ``scale``; ``flow`` (1, 2, H, W) = (0, -d), the
    forward flow left -> right given by the measured disparity d (``right[y, x - d] = left[y, x]``); ``valid``
    (1, 1, H, W) marks finite disparities whose target lies in the right view.
    """
    import skimage.data

    left, right, disp = skimage.data.stereo_motorcycle()
    left = torch.from_numpy(np.asarray(left, np.float32) / 255).permute(2, 0, 1)[None] * 2 - 1
    right = torch.from_numpy(np.asarray(right, np.float32) / 255).permute(2, 0, 1)[None] * 2 - 1
    d = torch.from_numpy(np.asarray(disp, np.float32))[None, None]
    ok = torch.isfinite(d) & (d > 0)
    d = torch.where(ok, d, torch.zeros_like(d))
    if scale > 1:
        left, right = F.avg_pool2d(left, scale), F.avg_pool2d(right, scale)
        okf = F.avg_pool2d(ok.float(), scale)
        d = F.avg_pool2d(d, scale) / okf.clamp_min(1e-6) / scale
        ok = okf > 0.999
    flow = torch.cat([torch.zeros_like(d), -d], 1)
    pos_x = grid(*d.shape[-2:])[1][None, None] - d
    valid = (ok & (pos_x >= 0)).float()
    return left, right, flow, valid


def _cv2(what: str):
    try:
        import cv2
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(f"{what} needs OpenCV: pip install opencv-python-headless") from e
    return cv2


def _rgb8(a: np.ndarray, where: str) -> np.ndarray:
    """An 8-bit frame as (H, W, 3): grey frames repeated over three channels, an alpha channel dropped."""
    if a.dtype != np.uint8:
        raise ValueError(f"{where}: {a.dtype} pixels; read_video takes 8-bit frames (convert the clip to 8 bit)")
    if a.ndim == 2:
        return np.repeat(a[..., None], 3, axis=-1)
    if a.ndim == 3 and a.shape[-1] in (1, 3, 4):
        return np.repeat(a, 3, axis=-1) if a.shape[-1] == 1 else a[..., :3]
    raise ValueError(f"{where}: an array of shape {a.shape} is not an image (expected H x W, or H x W x 1/3/4)")


def _read_frames(imageio, p, files):
    """The frames of a GIF (``files`` None) or of the image files ``files``, one at a time; a file that cannot be
    decoded (damaged, truncated, not an image) raises a ValueError naming it instead of the decoder's own error."""
    if files is None:
        try:
            frames = imageio.mimread(p)
        except Exception as exc:
            raise ValueError(f"{str(p)!r} cannot be read as a GIF ({type(exc).__name__}: {exc}): the file is damaged, "
                             "truncated or not a GIF; replace it") from exc
        yield from frames
        return
    for f in files:
        try:
            frame = imageio.imread(f)
        except Exception as exc:
            raise ValueError(f"{str(p)!r} frame {f.name} cannot be read as an image ({type(exc).__name__}: {exc}): "
                             "the file is damaged, truncated or not an image; replace or remove it") from exc
        yield frame


def read_video(path: str, size: int | None = None, max_frames: int | None = None) -> torch.Tensor:
    """Frames (T, 3, H, W) in [-1, 1] of a video file (OpenCV; GIFs and image folders also through imageio),
    centre-cropped to a square and area-resized to ``size`` when given. Grey frames become three equal channels;
    frames of different sizes, not 8-bit, or that cannot be decoded, are refused with the offending frame named."""
    from pathlib import Path

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"video path {path!r} does not exist")
    frames = []
    if p.is_dir() or p.suffix.lower() == ".gif":
        import imageio.v2 as imageio
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in (".png", ".jpg", ".jpeg")) if p.is_dir() \
            else None
        for j, a in enumerate(_read_frames(imageio, p, files)):
            label = files[j].name if files else j
            frames.append(_rgb8(np.asarray(a), f"{path!r} frame {label}"))
            if frames[-1].shape != frames[0].shape:
                raise ValueError(f"{path!r}: frame {label} is {frames[-1].shape[0]}x"
                                 f"{frames[-1].shape[1]} pixels but the first is {frames[0].shape[0]}x"
                                 f"{frames[0].shape[1]}: all frames of a clip must have one size")
            if max_frames and len(frames) >= max_frames:
                break
    else:
        cv2 = _cv2("read_video for video files")
        cap = cv2.VideoCapture(str(p))
        while not max_frames or len(frames) < max_frames:
            ok, bgr = cap.read()
            if not ok:
                break
            frames.append(bgr[..., ::-1].copy())
        cap.release()
    if not frames:
        raise ValueError(f"no frames could be read from {path!r}")
    x = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255 * 2 - 1
    h, w = x.shape[-2:]
    s = min(h, w)
    x = x[..., (h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    if size:
        x = F.interpolate(x, size=(size, size), mode="area" if size < s else "bicubic")
    return x.clamp(-1, 1)


def farneback_flow(frames: torch.Tensor, **kw) -> torch.Tensor:
    """Forward flows j -> j+1 (T-1, 2, H, W), (dy, dx), by OpenCV's Farneback method on gray frames in [-1, 1]."""
    cv2 = _cv2("farneback_flow")
    opts = dict(pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0)
    opts.update(kw)
    gray = ((frames.mean(1) + 1) * 127.5).clamp(0, 255).to(torch.uint8).numpy()
    out = []
    for a, b in zip(gray[:-1], gray[1:]):
        f = cv2.calcOpticalFlowFarneback(a, b, None, **opts)  # (H, W, 2) as (dx, dy)
        out.append(torch.from_numpy(f[..., ::-1].copy()).permute(2, 0, 1))
    return torch.stack(out).float()
