"""The fused filtered activation ``down(act(up(x)))`` for separable Kaiser filters as one Triton kernel (CUDA).

Each program computes a ``BLOCK x BLOCK`` tile of the output of one image plane, in four passes that follow the
compiled CPU kernel's polyphase formulas (``afcore/csrc/filtered_act.cpp``), for a factor of 2 and ``n`` taps
(gain included) with centre offset ``o = n // 2``:

1. rows up:     R[k, c] = sum_b  cu[b] x[k, (c + o - b) / 2]        over the taps with c + o - b even
2. columns up:  U[r, c] = act( sum_a cu[a] R[(r + o - a) / 2, c] )   over the taps with r + o - a even
3. columns down D[i, c] = sum_t cd[t] U[2 i - t + o, c]
4. rows down:   y[i, j] = sum_s cd[s] D[i, 2 j - s + o]

for exactly the rows and columns of R, U and D that the tile needs (its halo included), with indices outside the
plane wrapped (circular padding) or dropped (zeros). R, U and D live in a per-program scratch buffer of a few tens of
kB (L1/L2-resident on a GPU), separated by barriers; only x is read from and y written to the tensors: the 4x-sized
activation never reaches main memory. The grid is persistent: a fixed number of programs loops over the tiles, so the
scratch is bounded whatever the batch.

Status: verified against the reference in Triton's interpreter (``TRITON_INTERPRET=1``, on the CPU, in the tests);
not yet compiled or timed on a GPU (none was available when it was written). ``afcore.fastops`` therefore takes it
only when asked (``AFCORE_TRITON=1``) and falls back to the eager fast path, with one warning, if it fails; the
backward pass stays on the eager path (it recomputes the forward's up-sampling, as the CPU path does).
"""
from __future__ import annotations

import functools
import importlib.util
import os

import torch


BLOCK = 16          # output tile side
PROGRAMS = 1024     # persistent programs (scratch: PROGRAMS x a few tens of kB)
# activations it evaluates: code as in afcore.cpu_kernel (GELU's erf form is left to the eager path)
ACT_CODES = {0, 1, 2, 3, 5, 6, 7}


def available() -> bool:
    """Triton importable, and a GPU to run on (or the interpreter switched on, as the tests do)."""
    if importlib.util.find_spec("triton") is None:
        return False
    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET", "0") == "1"


def _pow2(n: int) -> int:
    return 1 << max(0, int(n - 1).bit_length())


def tile_sizes(numtaps: int, block: int = BLOCK) -> dict:
    """Power-of-two sides of the tile's intermediates: U covers 2 block + n - 2 rows, R half of that plus n."""
    o = numtaps // 2
    ur = _pow2(2 * block + numtaps - 2)
    kr = _pow2((ur - 1) // 2 + o + 1)
    return {"BR": block, "UR": ur, "KR": kr}


try:  # the kernels are defined at import (Triton reads TRITON_INTERPRET when it decorates them)
    import triton
    import triton.language as tl
except ImportError:  # no Triton: available() is False and nothing below is defined
    triton = None

if triton is not None:
    @triton.jit
    def _act(u, ACT: tl.constexpr, param):
        if ACT == 1:
            u = tl.maximum(u, 0.0)
        elif ACT == 2:
            u = tl.where(u > 0, u, u * param)
        elif ACT == 3:
            u = u / (1.0 + tl.exp(-u))
        elif ACT == 5:  # GELU, tanh form: 0.5 u (1 + tanh(z)) = u sigmoid(2 z)
            z = 0.7978845608028654 * (u + 0.044715 * u * u * u)
            u = u / (1.0 + tl.exp(-2.0 * z))
        elif ACT == 6:  # tanh(u) = 2 sigmoid(2 u) - 1
            u = 2.0 / (1.0 + tl.exp(-2.0 * u)) - 1.0
        elif ACT == 7:
            u = 1.0 / (1.0 + tl.exp(-u))
        return u

    @triton.jit
    def filtered_act(x_ptr, y_ptr, scratch_ptr, cu_ptr, cd_ptr, planes, H, W, tiles_h, tiles_w, param,
                     NT: tl.constexpr, CIRC: tl.constexpr, ACT: tl.constexpr, BR: tl.constexpr, UR: tl.constexpr,
                     KR: tl.constexpr):
        O: tl.constexpr = NT // 2
        pid = tl.program_id(0)
        n_prog = tl.num_programs(0)
        scratch = scratch_ptr + pid * (KR * UR + UR * UR + BR * UR)
        r_buf = scratch
        u_buf = scratch + KR * UR
        d_buf = u_buf + UR * UR
        kk = tl.arange(0, KR)[:, None]    # R rows (low rate)
        rr = tl.arange(0, UR)[:, None]    # U rows (high rate)
        cc = tl.arange(0, UR)[None, :]    # U / R / D columns (high rate)
        ii = tl.arange(0, BR)[:, None]    # output rows
        jj = tl.arange(0, BR)[None, :]    # output columns
        total = planes * tiles_h * tiles_w
        for tile in range(pid, total, n_prog):
            plane = tile // (tiles_h * tiles_w)
            i0 = (tile // tiles_w) % tiles_h * BR
            j0 = tile % tiles_w * BR
            ur0 = 2 * i0 - O      # high-rate row of U's first row; likewise columns
            uc0 = 2 * j0 - O
            kr0 = i0 - O          # low-rate row of R's first row
            xp = x_ptr + plane * H * W
            # 1. rows up: R[k, c], k = kr0 + kk, high-rate column uc0 + cc
            k = kr0 + kk
            acc = tl.zeros((KR, UR), dtype=tl.float32)
            for b in tl.static_range(NT):
                num = uc0 + cc + O - b
                col = num >> 1
                ok = (num & 1) == 0
                if CIRC:
                    rk = ((k % H) + H) % H
                    ck = ((col % W) + W) % W
                    v = tl.load(xp + rk * W + ck, mask=ok & (kk >= 0), other=0.0)
                else:
                    inside = ok & (k >= 0) & (k < H) & (col >= 0) & (col < W)
                    v = tl.load(xp + k * W + col, mask=inside, other=0.0)
                acc += tl.load(cu_ptr + b) * v
            tl.store(r_buf + kk * UR + cc, acc)
            tl.debug_barrier()
            # 2. columns up + activation: U[r, c], high-rate row ur0 + rr
            acc = tl.zeros((UR, UR), dtype=tl.float32)
            for a in tl.static_range(NT):
                num = ur0 + rr + O - a
                krel = (num >> 1) - kr0
                ok = ((num & 1) == 0) & (krel >= 0) & (krel < KR) & (cc >= 0)
                acc += tl.load(cu_ptr + a) * tl.load(r_buf + krel * UR + cc, mask=ok, other=0.0)
            u = _act(acc, ACT, param)
            if not CIRC:  # the down-sampler pads the activation with zeros: outside the plane it is 0, not act(...)
                r_abs = ur0 + rr
                c_abs = uc0 + cc
                u = tl.where((r_abs >= 0) & (r_abs < 2 * H) & (c_abs >= 0) & (c_abs < 2 * W), u, 0.0)
            tl.store(u_buf + rr * UR + cc, u)
            tl.debug_barrier()
            # 3. columns down: D[i, c] = sum_t cd[t] U[2 (i0 + i) - t + O - ur0, c] = U[2 i + 2 O - t, c]
            acc = tl.zeros((BR, UR), dtype=tl.float32)
            for t in tl.static_range(NT):
                acc += tl.load(cd_ptr + t) * tl.load(u_buf + (2 * ii + 2 * O - t) * UR + cc)
            tl.store(d_buf + ii * UR + cc, acc)
            tl.debug_barrier()
            # 4. rows down: y[i, j] = sum_s cd[s] D[i, 2 j + 2 O - s]
            acc = tl.zeros((BR, BR), dtype=tl.float32)
            for s in tl.static_range(NT):
                acc += tl.load(cd_ptr + s) * tl.load(d_buf + ii * UR + 2 * jj + 2 * O - s)
            oi = i0 + ii
            oj = j0 + jj
            tl.store(y_ptr + plane * H * W + oi * W + oj, acc, mask=(oi < H) & (oj < W))
            tl.debug_barrier()  # the next tile overwrites this program's scratch


@functools.lru_cache(maxsize=32)
def _taps(spec, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The up-sampler's taps (gain ``factor`` per axis) and the down-sampler's, as the CPU kernel splits them."""
    from afcore import cpu_kernel

    (up,), _ = cpu_kernel._terms(spec, "up")
    (down,), _ = cpu_kernel._terms(spec, "down")
    return (torch.tensor(up, dtype=torch.float32, device=device),
            torch.tensor(down, dtype=torch.float32, device=device))


def supports(spec, act_code: int | None) -> bool:
    """What the kernel computes: a separable Kaiser filter at factor 2 and an activation it knows."""
    return spec is not None and not spec.radial and spec.factor == 2 and act_code in ACT_CODES


def filtered_activation(x: torch.Tensor, spec, padding: str, act_code: int, act_param: float = 0.0,
                        programs: int = PROGRAMS) -> torch.Tensor:
    """``down(act(up(x)))`` on every plane of x (..., H, W) in float32 (the result is cast back to x's dtype)."""
    if not supports(spec, act_code):
        raise ValueError(f"the Triton kernel takes separable factor-2 Kaiser filters and activation codes "
                         f"{sorted(ACT_CODES)}, got {spec} and {act_code}")
    if padding not in ("circular", "zeros"):
        raise ValueError(f"padding must be 'circular' or 'zeros', got {padding!r}")
    h, w = x.shape[-2:]
    flat = x.reshape(-1, h, w).to(torch.float32).contiguous()
    out = torch.empty_like(flat)
    if flat.numel() == 0:
        return out.reshape(x.shape).to(x.dtype)
    sizes = tile_sizes(spec.numtaps)
    tiles_h, tiles_w = -(-h // sizes["BR"]), -(-w // sizes["BR"])
    grid = min(programs, flat.shape[0] * tiles_h * tiles_w)
    per_program = sizes["KR"] * sizes["UR"] + sizes["UR"] ** 2 + sizes["BR"] * sizes["UR"]
    scratch = torch.empty(grid * per_program, dtype=torch.float32, device=x.device)
    cu, cd = _taps(spec, x.device)
    filtered_act[(grid,)](flat, out, scratch, cu, cd, flat.shape[0], h, w, tiles_h, tiles_w, float(act_param),
                       NT=spec.numtaps, CIRC=padding == "circular", ACT=int(act_code), **sizes)
    return out.reshape(x.shape).to(x.dtype)
