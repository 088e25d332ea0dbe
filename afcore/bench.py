"""Throughput of alias-free resampling and filtered activations (``make bench`` -> metrics/bench_signal.json).

Sizes follow the later U-Nets' feature maps (batch x channels x H x W). Timings are medians over repeats after a
warm-up, on CPU and, when present, on CUDA (synchronised). Numbers depend on the machine: the JSON records it.
"""
from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time

import torch
from torch import nn

from afcore import layers
from afcore.utils import REPO_ROOT, save_json

SHAPES = ((32, 128, 64, 64), (8, 64, 32, 32))


def _time(fn, x, repeats: int, device) -> float:
    with torch.no_grad():
        fn(x)
        times = []
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def cases():
    kaiser = dict(method="kaiser", numtaps=13, beta=8.0)
    anjum = dict(method="kaiser", numtaps=3, beta=1.0, radial=True)
    return {
        "upsample_ideal": layers.AliasFreeUpsample(2, "ideal"),
        "upsample_kaiser13_separable": layers.AliasFreeUpsample(2, **kaiser),
        "upsample_jinc3x3_anjum": layers.AliasFreeUpsample(2, **anjum),
        "upsample_bilinear_baseline": nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
        "downsample_ideal": layers.AliasFreeDownsample(2, "ideal"),
        "downsample_kaiser13_separable": layers.AliasFreeDownsample(2, **kaiser),
        "downsample_jinc3x3_anjum": layers.AliasFreeDownsample(2, **anjum),
        "downsample_maxpool_baseline": nn.MaxPool2d(2),
        "activation_plain_silu": nn.SiLU(),
        "activation_filtered_silu_ideal": layers.FilteredActivation(nn.SiLU(), method="ideal"),
        "activation_filtered_silu_kaiser13": layers.FilteredActivation(nn.SiLU(), **kaiser),
    }


def run(repeats: int = 5, devices=None) -> dict:
    devices = devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    results = []
    for dev in devices:
        device = torch.device(dev)
        for shape in SHAPES:
            x = torch.randn(*shape, device=device)
            megapixels = shape[0] * shape[1] * shape[2] * shape[3] / 1e6
            for name, module in cases().items():
                seconds = _time(module.to(device), x, repeats, device)
                results.append({"device": dev, "shape": list(shape), "case": name, "ms": seconds * 1e3,
                                "input_megavalues_per_s": megapixels / seconds})
    return {
        "what": "median wall time per call (forward, no grad), float32; input values per second = B*C*H*W / time",
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": datetime.date.today().isoformat(),
        "repeats": repeats,
        "results": results,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m afcore.bench", description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(REPO_ROOT / "metrics" / "bench_signal.json"))
    args = parser.parse_args(argv)
    report = run(args.repeats)
    save_json(report, args.out)
    for r in report["results"]:
        print(f"{r['device']:5s} {str(tuple(r['shape'])):20s} {r['case']:36s} {r['ms']:10.2f} ms")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
