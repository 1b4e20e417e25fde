"""`make gpu-check` on this machine (quick mode; on a CPU it must say that no GPU was found)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import REPO

from benchmarks.gpu_check import training_flops_per_image
from benchmarks.pack import PackedResNet, packing_matches_separate
from models import ResNetConfig, build_model, parameter_count
from pipeline.calibration import DEFAULT_CALIBRATION, load_calibration


def _state(path: Path) -> bytes | None:
    return path.read_bytes() if path.exists() else None


@pytest.mark.slow
def test_gpu_check_quick_runs_and_says_what_it_measured(tmp_path: Path) -> None:
    installed = _state(DEFAULT_CALIBRATION)
    out = tmp_path / "report"
    done = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--quick", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    table = (out / "gpu_check.md").read_text()
    assert table in done.stdout  # the table is printed
    assert report["failures"] == [] and report["quick"]
    sections = report["sections"]
    assert {"correctness", "throughput", "sharing", "packing", "launcher", "projection"} <= set(
        sections
    )
    assert len(sections["correctness"]) >= 10  # the cuda tests were collected
    eager = [r for r in sections["throughput"] if r["mode"] == "eager"]
    assert eager and all(r["images_per_second"] > 0 for r in eager)
    assert any(r["processes"] == 2 for r in sections["sharing"] if r.get("status") == "ok")
    assert all(r["max_logit_difference"] <= 1e-4 for r in sections["packing"])
    # A quick run never installs its numbers as the calibration, and is refused as one.
    assert _state(DEFAULT_CALIBRATION) == installed
    with pytest.raises(ValueError, match="only a full run on a GPU calibrates"):
        load_calibration(out / "calibration.json")
    if not torch.cuda.is_available():
        assert "no GPU found" in done.stdout and "no GPU was found" in table
        assert all(r["result"] == "skipped" for r in sections["correctness"])
        graph = [r for r in sections["throughput"] if r["mode"] == "cuda_graph"]
        assert graph and all(r["status"].startswith("skipped: no CUDA") for r in graph)
        assert sections["launcher"][0]["status"].startswith("skipped: no CUDA")
        assert any(r["status"] == "skipped: no CUDA" for r in sections["sharing"])
        assert "estimates nothing" in table
        assert "peak_memory_mib" not in {k for r in eager for k, v in r.items() if v is not None}


def test_packed_network_computes_the_separate_networks() -> None:
    assert packing_matches_separate(4, 3, 2, torch.device("cpu"), batch=4) <= 1e-5
    # The control: packing the networks in another order changes what each slot computes.
    cfg = ResNetConfig(width=4, blocks_per_stage=2)
    models = [build_model(cfg).train() for _ in range(2)]
    packed = PackedResNet.from_models(models[::-1]).train()
    x = torch.randn(2, 4, 3, 32, 32)  # [network, batch, ...]
    with torch.no_grad():
        separate = torch.stack([m(xi) for m, xi in zip(models, x, strict=True)], dim=1)
        swapped = packed(x.transpose(0, 1).reshape(4, 6, 32, 32))
    assert float((swapped - separate).abs().max()) > 1e-3
    assert sum(p.numel() for p in packed.parameters()) == 2 * parameter_count(cfg)


def test_training_flops_count_the_convolutions() -> None:
    cfg = ResNetConfig(width=8, blocks_per_stage=1)
    # stem 3->8 at 32x32; blocks 8 (32x32), 16 (16x16), 32 (8x8); transitions 8->16, 16->32.
    convolutions = (
        3 * 8 * 1024
        + 2 * (8 * 8 * 1024 + 16 * 16 * 256 + 32 * 32 * 64)
        + 8 * 16 * 256
        + 16 * 32 * 64
    )
    forward = 2 * 9 * convolutions + 2 * 32 * 10
    assert training_flops_per_image(cfg) == 3 * forward
