"""The service soak as CI runs it: a short one (tools/soak.py) with sources added and
removed, a stage killed, metrics scraped; the run survives and the samples, table and plot
come out. Its long run is recorded in RELIABILITY.md."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest
from conftest import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_short_service_soak_runs_to_its_end_and_reports(tmp_path, fast_onnx):
    out = tmp_path / "soak"
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "soak.py"), "--minutes", "1", "--every", "10",
                             "--churn-every", "8", "--kill-every", "25", "--window", "0.5", "--max-growth", "1000",
                             "--model", str(fast_onnx), "--out", str(out)], capture_output=True, text=True,
                            timeout=240, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| publish |" in result.stdout and "| render |" in result.stdout and "stages killed" in result.stdout
    rows = list(csv.DictReader((out / "soak.csv").open()))
    assert len(rows) >= 3 and all(float(r["shm"]) >= 0 for r in rows)
    assert (out / "soak.png").stat().st_size > 10_000
    log = (out / "run.log").read_text()
    assert "released" in log and "restarted" in log  # sources came and went, a stage was killed and came back
