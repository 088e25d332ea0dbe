"""The training loop's options, measured: plain fp32 vs bf16 autocast (``amp``) vs ``torch.compile`` (``compile``).

    python -m workbook.bench_train                     # this machine's default device -> metrics/bench_train.json
    python -m workbook.bench_train --device cuda --base 32 --levels 3 --batch 128

For Config A and D-1N U-Nets, each variant runs ``--warmup`` steps (compilation happens there and is reported
separately) and then ``--steps`` timed optimizer steps through ``afcore.train.train_loop``; the variants run one after
another in one process, on one device, and the report gives milliseconds per step, images per second, the ratio to the
plain loop and the final loss (bf16 must not change what is learned beyond noise). Seconds come from the loop's own
per-step history (CUDA work is synchronised by the loss's ``.item()``).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from afcore import config_unet, ddpm
from afcore.train import batch_sampler, train_loop
from afcore.utils import REPO_ROOT, save_json
from afcore.device import make_generator, pick_device


def measure(config: str, variant: str, device: torch.device, base: int, levels: int, batch: int,
            warmup: int, steps: int) -> dict:
    torch.manual_seed(0)
    model = config_unet.ConfigUNet(config, in_channels=1, base=base, levels=levels)
    images = torch.rand(512, 1, 32, 32, generator=torch.Generator().manual_seed(0), device="cpu") * 2 - 1
    get_batch = batch_sampler(images, batch_size=batch, seed=0, device=device)
    scheduler = ddpm.make_scheduler()

    def loss_fn(m, b, step):
        x0, s = b
        return ddpm.ddpm_loss(m, x0, scheduler, make_generator(s, x0.device)), {}

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        _, _, history = train_loop(model, loss_fn, get_batch, steps=warmup + steps, lr=1e-4, ckpt_dir=tmp,
                                   device=str(device), amp=variant == "amp", compile=variant == "compile",
                                   desc=f"{config} {variant}")
        wall = time.perf_counter() - t0
    timed = [h["seconds"] for h in history[warmup:]]
    ms = 1000 * statistics.median(timed)
    return {"config": config, "variant": variant, "ms_per_step": ms, "images_per_second": batch / ms * 1000,
            "warmup_seconds": sum(h["seconds"] for h in history[:warmup]), "wall_seconds": wall,
            "final_loss": statistics.mean(h["loss"] for h in history[-max(1, steps // 4):])}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m workbook.bench_train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--base", type=int, default=16)
    parser.add_argument("--levels", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--variants", default="plain,amp,compile")
    parser.add_argument("--out", default=str(REPO_ROOT / "metrics" / "bench_train.json"))
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    variants = args.variants.split(",")
    rows = [measure(c, v, device, args.base, args.levels, args.batch, args.warmup, args.steps)
            for c in ("A", "D-1N") for v in variants]
    for r in rows:
        plain = next(p for p in rows if p["config"] == r["config"] and p["variant"] == "plain")
        r["time_relative_to_plain"] = r["ms_per_step"] / plain["ms_per_step"]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    report = {"device": str(device), "device_name": name, "torch": torch.__version__,
              "threads": torch.get_num_threads(), "size": {"base": args.base, "levels": args.levels,
                                                           "batch": args.batch},
              "steps": {"warmup": args.warmup, "timed": args.steps}, "rows": rows,
              "note": "bf16 autocast pays off on tensor-core GPUs; on CPUs without bf16 units it is usually slower. "
                      "torch.compile's first steps include compilation (warmup_seconds)."}
    save_json(report, args.out)
    for r in rows:
        print(f"{r['config']:5s} {r['variant']:8s} {r['ms_per_step']:8.1f} ms/step  x{r['time_relative_to_plain']:.2f}"
              f"  warm-up {r['warmup_seconds']:.1f} s  loss {r['final_loss']:.4f}")


if __name__ == "__main__":
    main()
