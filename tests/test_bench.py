"""workbook.bench: where the report goes (the path DVC declares, on every device), the scale the smoke profile asks
for, and the profiler helper that notebook 05 reads its self times through."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from workbook import bench
from afcore.utils import REPO_ROOT


def test_report_goes_exactly_where_asked_whatever_the_device(tmp_path, monkeypatch):
    report = {"device": "NVIDIA H100 80GB HBM3", "device_type": "cuda", "threads": 1, "layers": [], "models": []}
    # the default: metrics/bench_signal.json, the path dvc.yaml declares, also for a CUDA report
    assert bench.output_path(None) == REPO_ROOT / "metrics" / "bench_signal.json"
    written = bench.write_report(report, None, root=tmp_path)
    assert written == tmp_path / "metrics" / "bench_signal.json"
    assert sorted(p.name for p in (tmp_path / "metrics").iterdir()) == ["bench_signal.json"]
    assert json.loads(written.read_text())["device_type"] == "cuda"  # the device is recorded inside
    # --out exactly as given (the 2-thread stage's path), relative to the working directory
    monkeypatch.chdir(tmp_path)
    out = bench.write_report(report, "metrics/bench_signal_2threads.json", root=tmp_path / "elsewhere")
    assert out == Path("metrics/bench_signal_2threads.json")
    assert (tmp_path / "metrics" / "bench_signal_2threads.json").is_file()
    assert not (tmp_path / "elsewhere").exists()
    assert not any("cuda" in p.name for p in (tmp_path / "metrics").iterdir())


def test_scale_auto_follows_the_device_and_the_profiles_name_real_scales():
    assert bench.resolve_scale("auto", "cpu") == "cpu" and bench.resolve_scale(None, "cuda") == "gpu"
    assert bench.resolve_scale("smoke", "cuda") == "smoke"
    with pytest.raises(ValueError, match="scale must be one of"):
        bench.resolve_scale("tiny", "cpu")
    with pytest.raises(SystemExit):
        bench.main(["--scale", "tiny"])
    with pytest.raises(SystemExit):
        bench.main(["--rounds", "0"])
    spec = yaml.safe_load((REPO_ROOT / "profiles" / "speed.yaml").read_text())
    assert spec["cpu"]["bench_scale"] == "auto" and spec["cpu"]["bench_rounds"] == 5  # today's dvc.yaml command
    assert spec["smoke"]["bench_scale"] == "smoke" and spec["smoke"]["bench_rounds"] == 1
    for profile in spec.values():
        assert profile.get("bench_scale", "auto") in bench.SCALES


def test_profile_ops_reads_self_times_on_the_cpu_and_the_device_attribute_exists():
    x = torch.randn(64, 64, device="cpu")
    total_us, rows = bench.profile_ops(lambda: (x @ x).relu().sum(), "cpu", top=3)
    assert total_us > 0 and 1 <= len(rows) <= 3
    assert {"op", "self_ms", "share", "calls"} <= set(rows[0]) and 0 < rows[0]["share"] <= 1
    assert any("mm" in r["op"] for r in rows)
    # what a CUDA run reads: the device self time of the same events (0 for CPU-only ops), through the same helper;
    # torch >= 2.4 has no self_cuda_time_total, so reading that attribute would raise here
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        (x @ x).sum()
    events = prof.key_averages()
    assert all(bench.self_time_us(e, "cuda") == 0.0 for e in events)
    assert sum(bench.self_time_us(e, "cpu") for e in events) > 0
