"""scripts/gpu_check.py, the one prepared check for a lent GPU, run end to end at toy size on the
CPU so that it still works on the day a GPU is there."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_runs_every_step_at_toy_size(tmp_path, monkeypatch):
    for module in ("captum", "pytorch_grad_cam"):
        pytest.importorskip(module)
    monkeypatch.setenv("SALBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "check"
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--smoke", "--out", str(out)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    summary = (out / "summary.md").read_text()
    for section in ("## 1. Throughput", "## 2. Peers", "## 3. Plan vs a measured slice"):
        assert section in summary
    kinds = set(pq.read_table(out / "throughput" / "throughput.parquet").column("kind").to_pylist())
    assert {"method", "forward", "forward_backward_baseline"} <= kinds and any(k.startswith("pipeline") for k in kinds)
    assert "road" in summary and "deletion+insertion" in summary  # the faithfulness peers ran
    line = next(ln for ln in summary.splitlines() if "plan / measured" in ln)
    assert "n/a" not in line  # every classifier was priced from the throughput rows
    assert (out / "slice-run" / "run.json").is_file()
