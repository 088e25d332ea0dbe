# %% [markdown]
# # 05 · Where the time of an alias-free layer goes
#
# An alias-free nonlinearity does four things where a plain one does one: up-sample by 2 (a low-pass filter), apply
# the activation at the doubled rate, low-pass again and keep every second sample. This notebook counts the work in
# principle, then shows where the measured time goes, from two sources:
#
# - `metrics/bench_signal.json`, written by the `bench` stage (`python -m afcore.bench`): every layer and model pair
#   timed side by side in one run, as ratios to the plain counterpart, with the device named;
# - small measurements made here: the two routes the fast resamplers can take (dense resampling matrices or banded
#   depthwise convolutions) across feature-map sizes, and a profile of one fast filtered SiLU.
#
# Timings depend on the machine; the text states what to look for, the printed tables give this run's numbers, and
# nothing below asserts a timing.

# %% tags=["parameters"]
profile = "cpu"
seed = 0
device = "cpu"
sizes = [16, 32, 64, 128]   # feature-map side lengths for the route comparison
channels = 64
elements = 1048576          # batch x channels x side^2 held constant across sizes (4 x 64 x 64 x 64)
numtaps = 13
rounds = 5                  # repeats per timing (the fastest is kept)
threads = 1                 # CPU threads (the bench stage uses one as well)

# %%
import json
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from afcore import fastops, layers
from afcore.utils import pick_device, save_figure, save_json, seed_everything

seed_everything(seed)
dev = pick_device(device)
if dev.type == "cpu":
    torch.set_num_threads(threads)
FIG = "figures/05_speed"
bench = json.loads(Path("metrics/bench_signal.json").read_text())
metrics = {"profile": profile, "device": str(dev), "threads": threads, "numtaps": numtaps,
           "bench_device": bench["device"], "bench_threads": bench["threads"]}


def best_ms(fn, reps=rounds):
    """Fastest of ``reps`` calls after one warm-up: process CPU time on a CPU, synchronised wall time on CUDA."""
    fn()
    best = float("inf")
    for _ in range(reps):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            fn()
            torch.cuda.synchronize(dev)
            best = min(best, time.perf_counter() - t0)
        else:
            t0 = time.process_time()
            fn()
            best = min(best, time.process_time() - t0)
    return best * 1e3

# %% [markdown]
# ## 1. The work in principle
#
# Take a feature map of side $N$ and a ×2 Kaiser filter of $n$ taps, applied separably (rows, then columns). Count
# multiply-adds per *input* element:
#
# - **up-sampling, banded (polyphase)**: each output sample needs only the $n/2$ taps that meet real input samples
#   (the zero-inserted ones contribute nothing). The row pass makes 2 outputs per input, the column pass 4, so
#   $(2 + 4)\,n/2 = 3n$;
# - **down-sampling, banded**: the row pass computes 2 kept outputs per input (of the 4 samples at the doubled rate)
#   with $n$ taps, the column pass 1, so $(2 + 1)\,n = 3n$;
# - **the activation** runs at the doubled rate: 4 evaluations per input element instead of 1.
#
# A banded filtered activation costs about $6n$ multiply-adds plus 4 activations per input element; a plain SiLU
# costs one activation and is limited by memory traffic alone (one read, one write). So even a perfect kernel does
# about $6n \approx 78$ multiply-adds where the plain layer does none, and 4× its activations: a ratio near 1 is
# only reachable on hardware where arithmetic is nearly free next to memory traffic (a GPU, with the up-sampled
# tensor kept in registers: that is what StyleGAN3's fused CUDA kernel does).
#
# The workbook's fast path (`afcore.fastops`) does not use banded filters for the sizes of its models: it builds the
# whole 1-D resampling (zero insertion, filter, padding, decimation) as a dense $2N \times N$ or $N \times 2N$
# matrix, once, and applies it as two matrix products. That costs $N$ (up) or $2N$ (down) multiply-adds per output
# and axis, $6N + 6N = 12N$ per input element in all: at $N = 64$ that is 768, about ten times the banded count. It
# still wins on a CPU at small $N$ because BLAS runs dense products near the processor's peak, while PyTorch's
# depthwise convolutions do not. The next section measures where that trade-off turns.

# %%
macs = {n: {"banded": 6 * numtaps, "dense": 12 * n} for n in sizes}
print("multiply-adds per input element (x2 up + x2 down, separable):")
for n in sizes:
    print(f"  N = {n:4d}: banded {macs[n]['banded']:5d}   dense matrices {macs[n]['dense']:6d}")
metrics["macs_per_input_element"] = macs

# %% [markdown]
# ## 2. Dense matrices against banded convolutions, measured
#
# Both routes exist in `afcore.fastops` and give the same result (checked below to float32 rounding): the dense one
# (used when the longest axis is at most `fastops.MATMUL_MAX` samples) and the banded one (transposed / strided
# depthwise convolutions of the 1-D taps, the route for long axes). We time each on the same number of elements
# (batch × channels × side² fixed), so a route whose time grows with $N$ is paying for its $O(N)$ work per output.

# %%
spec = fastops.FirSpec(factor=2, numtaps=numtaps, beta=8.0, radial=False, normalize=True)
routes = {
    "up, dense": lambda x: fastops._separable(x, "up", 2, spec, "circular", "zero"),
    "up, banded": lambda x: fastops._separable_conv_up(x, spec, "circular"),
    "down, dense": lambda x: fastops._separable(x, "down", 2, spec, "circular", "zero"),
    "down, banded": lambda x: fastops._separable_conv_down(x, spec, "circular"),
}
route_rows = []
gen = torch.Generator(device=dev).manual_seed(seed)
with torch.no_grad():
    for n in sizes:
        batch = max(1, elements // (channels * n * n))
        x = torch.randn(batch, channels, n, n, generator=gen, device=dev)
        x2 = torch.randn(batch, channels, 2 * n, 2 * n, generator=gen, device=dev)
        up_gap = float((routes["up, dense"](x) - routes["up, banded"](x)).abs().max())
        down_gap = float((routes["down, dense"](x2) - routes["down, banded"](x2)).abs().max())
        assert up_gap < 1e-4 and down_gap < 1e-4, (n, up_gap, down_gap)  # same operation, float32 rounding apart
        row = {"side": n, "batch": batch, "max_abs_gap_up": up_gap, "max_abs_gap_down": down_gap}
        for name, fn in routes.items():
            row[name] = best_ms(lambda fn=fn, inp=(x if name.startswith("up") else x2): fn(inp))
        row["silu_plain"] = best_ms(lambda: F.silu(x))
        route_rows.append(row)
        print(f"N = {n:4d} (batch {batch:3d}): " + "  ".join(f"{k} {row[k]:7.2f} ms" for k in routes)
              + f"  | plain SiLU {row['silu_plain']:.2f} ms")
metrics["routes_ms"] = route_rows
crossover = [r["side"] for r in route_rows if r["up, banded"] + r["down, banded"] < r["up, dense"] + r["down, dense"]]
metrics["banded_faster_from_side"] = min(crossover) if crossover else None
metrics["matmul_max"] = fastops.MATMUL_MAX
print("banded route faster (up + down) from side:", metrics["banded_faster_from_side"],
      f"| the fast path switches to it above {fastops.MATMUL_MAX} samples")

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
for ax, kind in zip(axes, ("up", "down")):
    for route, style in (("dense", "o-"), ("banded", "s--")):
        ax.plot(sizes, [r[f"{kind}, {route}"] for r in route_rows], style, label=f"{route}")
    ax.plot(sizes, [r["silu_plain"] for r in route_rows], "k:", label="plain SiLU (same input)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("feature-map side N (elements held constant)")
    ax.set_ylabel("ms")
    ax.set_title(f"x2 {kind}-sampling, {numtaps}-tap Kaiser")
    ax.legend(fontsize=8)
fig.suptitle(f"Two routes to the same resampling ({dev}, {threads} thread(s))")
fig.tight_layout()
save_figure(fig, f"{FIG}/routes.png")
plt.show()

# %% [markdown]
# **What to notice.** The dense route's time grows with $N$ at a fixed number of elements (its work per output is
# $O(N)$), the banded route's stays roughly flat ($O(n)$), and both sit far above the plain SiLU. On a CPU the dense
# route is usually the faster one up to sides of a few dozen samples, which is every feature map of the cpu
# profile. The printed crossover is where the banded route overtakes it on this machine; the fast path itself only
# switches above `fastops.MATMUL_MAX` samples, so on a CPU larger maps (the gpu profile's 256 px VAE) would gain from
# a lower switch point. Neither route comes near the banded arithmetic of section 1 at the processor's peak: a fused
# banded kernel is the next step, and it is where a GPU kernel earns its speed.
#
# ## 3. The benchmark: where the filtered SiLU's time goes
#
# The bench stage times the fast filtered SiLU's parts separately at each shape: the ×2 up-sampler, the SiLU at the
# doubled rate, and the down-sampler, next to the plain SiLU and the **memory-bound limit** (the time to read and
# write the input once, `x.clone()`), which a perfectly fused kernel would approach.

# %%
silu_rows = {tuple(r["shape"]): r for r in bench["layers"] if r["case"] == "silu"}
fused = [r for r in bench["layers"] if r["case"].startswith("filtered_silu") and r["impl"] == "fast"]
labels, breakdown = [], []
for r in fused:
    shape, parts = tuple(r["shape"]), r["parts_ms"]
    total = sum(parts.values())
    labels.append(f"{r['case'][len('filtered_silu_'):]}\n{'x'.join(map(str, shape))}")
    breakdown.append({"case": r["case"], "shape": list(shape), "fwd_ms": r["fwd_ms"],
                      "ratio_to_plain": r["fwd_ratio_to_plain"], "share": {k: v / total for k, v in parts.items()},
                      "limit_ratio_to_plain": r["memory_bound_limit_ms"] / silu_rows[shape]["fwd_ms"],
                      "fraction_of_memory_bound_limit": r["fraction_of_memory_bound_limit"]})
fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 3.8))
xs = np.arange(len(fused))
bottom = np.zeros(len(fused))
for part, colour in (("up", "C0"), ("silu_at_x2", "C1"), ("down", "C2")):
    share = np.array([b["share"][part] for b in breakdown])
    ax.bar(xs, share, bottom=bottom, color=colour, label=part)
    bottom += share
ax.set_xticks(xs, labels, fontsize=6, rotation=30)
ax.set_ylabel("share of the parts' time")
ax.set_title("Where the forward time goes")
ax.legend(fontsize=7)
bx.bar(xs, [b["ratio_to_plain"] for b in breakdown], color="k", alpha=0.7, label="fast filtered SiLU (fwd)")
bx.plot(xs, [b["limit_ratio_to_plain"] for b in breakdown], "m_", ms=20, mew=2,
        label="memory-bound limit (read + write x once)")
bx.axhline(10, color="r", ls="--", lw=1, label="the CPU goal: 10x")
bx.axhline(1, color="grey", lw=0.8)
bx.set_yscale("log")
bx.set_xticks(xs, labels, fontsize=6, rotation=30)
bx.set_ylabel("time / plain SiLU")
bx.set_title("Against the plain SiLU")
bx.legend(fontsize=7)
fig.suptitle(f"Fast filtered SiLU (bench stage: {bench['device']}, {bench['threads']} thread(s), {bench['date']})")
fig.tight_layout()
save_figure(fig, f"{FIG}/filtered_silu_parts.png")
plt.show()
metrics["filtered_silu_breakdown"] = breakdown
for b in breakdown:
    s = b["share"]
    print(f"{b['case']:28s} {str(b['shape']):18s} {b['ratio_to_plain']:6.1f}x plain | up {s['up']:.0%} "
          f"silu@x2 {s['silu_at_x2']:.0%} down {s['down']:.0%} | {b['fraction_of_memory_bound_limit']:.1%} of the "
          "memory-bound limit")

# %% [markdown]
# **What to notice.** The two resamplers take nearly all of the time and the activation itself, even at four times
# the samples, only a small share; the whole op runs at a few percent of the memory-bound limit. So on a CPU the
# ratio to the plain SiLU is set by the filters' arithmetic (section 1), not by memory, and the workbook's CPU goal
# of at most 10x is out of reach for unfused separate passes.
#
# ## 4. A profile of one call
#
# `torch.profiler` lists the operators one forward + backward of the fast Kaiser filtered SiLU runs (the backward
# recomputes the up-sampled activation instead of storing it, so it repeats the forward's products).

# %%
from torch.profiler import ProfilerActivity, profile as torch_profile

n_prof = sizes[min(2, len(sizes) - 1)]
act = layers.FilteredActivation(nn.SiLU(), method="kaiser", numtaps=numtaps, beta=8.0, impl="fast").to(dev)
xp = torch.randn(max(1, elements // (channels * n_prof * n_prof)), channels, n_prof, n_prof, generator=gen,
                 device=dev, requires_grad=True)
act(xp).sum().backward()  # warm-up: builds and caches the resampling matrices
activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
with torch_profile(activities=activities) as prof:
    xp.grad = None
    act(xp).sum().backward()
key = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
events = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)
total_us = sum(getattr(e, key) for e in events)
top = [{"op": e.key, "self_ms": getattr(e, key) / 1e3, "share": getattr(e, key) / total_us, "calls": e.count}
       for e in events[:8]]
print(f"input {tuple(xp.shape)}; total self time {total_us / 1e3:.2f} ms")
for t in top:
    print(f"  {t['op']:40s} {t['self_ms']:8.2f} ms  {t['share']:6.1%}  ({t['calls']} calls)")
metrics["op_profile"] = {"input_shape": list(xp.shape), "total_ms": total_us / 1e3, "top_ops": top}

fig, ax = plt.subplots(figsize=(7, 3))
ax.barh([t["op"] for t in top][::-1], [t["share"] for t in top][::-1], color="C0")
ax.set_xlabel("share of self time")
ax.set_title(f"Fast filtered SiLU fwd+bwd, {tuple(xp.shape)}, {dev}")
fig.tight_layout()
save_figure(fig, f"{FIG}/profile.png")
plt.show()

# %% [markdown]
# **What to notice.** Matrix products (`mm`/`bmm`/`matmul`, the dense resamplers) dominate; the SiLU and its
# gradient are a few percent.
#
# ## 5. Model pairs
#
# What this means for whole training steps: the bench stage times each alias-free model against its plain twin
# (same widths, same batch) in one run. Convolutions dominate a model's step, so the alias-free layers' overhead is
# diluted: compare the time ratios below with the tens of times of the bare filtered SiLU.

# %%
pairs = bench["models"]
fig, ax = plt.subplots(figsize=(7, 3))
xs = np.arange(len(pairs))
ax.bar(xs - 0.2, [p["time_ratio"] for p in pairs], 0.4, label="step time (fast)")
ax.bar(xs + 0.2, [p["time_ratio_ref"] for p in pairs], 0.4, label="step time (ref)", alpha=0.6)
ax.plot(xs, [p["memory_ratio"] for p in pairs], "kD", label="memory (fast)")
ax.axhline(1, color="grey", lw=0.8)
ax.set_xticks(xs, [p["pair"] for p in pairs])
ax.set_ylabel("alias-free / plain")
ax.set_title(f"Training-step ratios (bench stage, {bench['device']}, {bench['scale']} sizes)")
ax.legend(fontsize=8)
fig.tight_layout()
save_figure(fig, f"{FIG}/model_pairs.png")
plt.show()
metrics["model_pairs"] = [{k: p[k] for k in ("pair", "what", "time_ratio", "time_ratio_ref", "memory_ratio")}
                          for p in pairs]
for p in pairs:
    print(f"{p['what']:55s} time {p['time_ratio']:.2f}x (ref {p['time_ratio_ref']:.2f}x), "
          f"memory {p['memory_ratio']:.2f}x")

# %% [markdown]
# ## 6. The compiled CPU kernel, and the 10x goal
#
# Sections 1-3 say what a fused op on a CPU should do: only the banded work, with the 4x-sized activation kept in
# cache. `afcore.cpu_kernel` is that, written in C++ (compiled at first use): per image plane, polyphase up-sampling
# along rows then columns, the activation, and the down-sampler, computing only the kept samples. The fast path
# takes it for separable Kaiser filters on planes from `fastops.KERNEL_MIN_SIDE` px on. The bench stage times it
# against the PyTorch fast path (matrix products) in the same run, and checks each filtered SiLU against the goal
# of at most 10x the plain SiLU.

# %%
goals = bench.get("goals", {})
kv = goals.get("kernel_vs_torch", [])
if kv:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3))
    xs = np.arange(len(kv))
    axes[0].bar(xs - 0.2, [r["fwd_speedup"] for r in kv], 0.4, label="forward")
    axes[0].bar(xs + 0.2, [r["fwd_bwd_speedup"] for r in kv], 0.4, label="forward + backward")
    axes[0].axhline(1, color="grey", lw=0.8)
    axes[0].set_xticks(xs, [f"{r['shape'][-1]} px" + ("" if r["kernel_taken"] else "\n(not taken)") for r in kv])
    axes[0].set_ylabel("PyTorch fast path / kernel")
    axes[0].set_title("Kaiser 13-tap filtered SiLU: kernel speed-up")
    axes[0].legend(fontsize=8)
    cases = goals["cases"]
    names = sorted({c["case"] for c in cases})
    sides = sorted({c["shape"][-1] for c in cases})
    for i, name in enumerate(names):
        vals = [next(c["fwd_ratio_to_plain"] for c in cases if c["case"] == name and c["shape"][-1] == s)
                for s in sides]
        axes[1].plot(sides, vals, "o-", label=name.replace("filtered_silu_", ""))
    axes[1].axhline(goals["filtered_silu_goal_ratio"], color="k", ls="--", lw=1, label="goal")
    axes[1].set_xscale("log", base=2)
    axes[1].set_xlabel("feature-map side (px)")
    axes[1].set_ylabel("filtered / plain SiLU (forward)")
    axes[1].set_title("Against the 10x goal")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, f"{FIG}/cpu_kernel.png")
    plt.show()
    metrics["kernel_vs_torch"] = kv
    metrics["goal_cases"] = cases
    for c in cases:
        print(f"{c['case']:28s} {c['shape']}  {c['fwd_ratio_to_plain']:6.1f}x plain  "
              f"{'met' if c['met'] else 'missed by %.1fx' % c['missed_by_factor']}")

# %% [markdown]
# The kernel does a tenth of the dense path's multiply-adds at 64 px, yet gains only about 2x: its inner loops are
# short rows (64-128 samples) with per-row set-up, so it runs far below the CPU's arithmetic peak. A plain SiLU on
# this CPU streams at several elements per nanosecond; matching 10x of that with 13-tap filters at twice the rate
# would need the kernel to run its ~80 multiply-adds per sample near peak, which this straightforward code does not.

# %%
save_json(metrics, "metrics/05_speed.json")
