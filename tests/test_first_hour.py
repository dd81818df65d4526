"""What a newcomer meets in the first hour: --version, doctor, clear words where the tool
waits or falls back, nothing left behind by a run that never started."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import DATA, ROOT, run_segstream


def _offline_env(tmp_path) -> dict[str, str]:
    """No data folder, an empty cache, and downloads that fail at once."""
    (tmp_path / "data").mkdir(exist_ok=True)
    return {**os.environ, "SEGSTREAM_DATA": str(tmp_path / "data"), "XDG_CACHE_HOME": str(tmp_path / "cache"),
            "SEGSTREAM_DOWNLOAD_BASE": "http://127.0.0.1:9/"}


def test_version():
    out = run_segstream("--version")
    assert out.returncode == 0 and out.stdout.startswith("segstream 0.")


def test_doctor_checks_the_machine_and_says_what_to_install(tmp_path):
    here = run_segstream("doctor", env={**os.environ, "SEGSTREAM_DATA": str(DATA)})
    assert here.returncode == 0, here.stderr
    lines = here.stdout.splitlines()
    for name in ("Python", "ONNX Runtime", "PyTorch", "NVIDIA GPU and driver", "TensorRT", "H.264 overlay video",
                 "/dev/shm", "data: solidWhiteRight.mp4"):
        assert any(name in line for line in lines), name
    assert next(line for line in lines if "data: solidWhiteRight.mp4" in line).startswith("ok")
    assert next(line for line in lines if "H.264" in line).startswith("ok")  # PyAV is a dependency
    offline = run_segstream("doctor", env=_offline_env(tmp_path))
    data_line = next(k for k, line in enumerate(offline.stdout.splitlines()) if "data: espnet_p_2_q_8.pth" in line)
    assert offline.stdout.splitlines()[data_line].startswith("--")
    assert "fix: put it in $SEGSTREAM_DATA" in offline.stdout.splitlines()[data_line + 1]


def test_demo_offline_names_every_missing_file_at_once(tmp_path):
    out = run_segstream("demo", "--record", str(tmp_path / "demo"), env=_offline_env(tmp_path))
    assert out.returncode == 2
    assert "the demo needs 2 file(s)" in out.stderr
    assert "solidWhiteRight.mp4" in out.stderr and "espnet_p_2_q_8.pth" in out.stderr
    assert not (tmp_path / "demo").exists()


def test_a_run_that_never_started_leaves_no_record_folder(tmp_path):
    out = run_segstream("run", "--source", str(tmp_path / "no-such.mp4"), "--record", str(tmp_path / "rec"),
                        "--publish", "")
    assert out.returncode == 2 and "not found" in out.stderr
    assert not (tmp_path / "rec").exists()


def test_run_without_a_source_says_it_plays_the_test_pattern(tmp_path, fast_onnx):
    out = run_segstream("run", "--model", str(fast_onnx), "--max-frames", "2", "--publish", "", "--quiet",
                        timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "no --source given: running the built-in test-pattern" in out.stderr
    backend = next(line for line in out.stderr.splitlines() if "backend:" in line)
    assert backend.split("INFO ", 1)[1] == "backend: onnxruntime on cpu"  # the reasons are at DEBUG


def test_consume_says_where_it_waits(tmp_path):
    endpoint = f"ipc://{tmp_path}/nobody.sock"
    out = run_segstream("consume", endpoint, "--timeout", "1", timeout=60)
    assert out.returncode == 1
    assert f"waiting for masks on {endpoint} (PUB socket)" in out.stderr
    assert f"no mask of any source for 1 s on {endpoint}: is a pipeline publishing there" in out.stdout


def test_models_lists_without_importing_torch_in_aligned_columns():
    code = ("import sys\nfrom segstream.cli import main\nmain(['models'])\n"
            "print('TORCH', 'torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[-1] == "TORCH False"
    table = lines[:lines.index("")]  # the table, then a note on the weights column
    assert table[0].split()[:5] == ["name", "task", "input", "classes", "params"]
    ends = {line.index(" pretrained") if " pretrained" in line else line.index(" needs --weights ")
            for line in table[1:]}
    assert len(ends) == 1  # the weights column starts at the same place on every row
    assert any("espnet-cityscapes " in line and "364,569" in line for line in table)
