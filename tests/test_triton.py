"""The Triton backend against a real Triton Inference Server on 127.0.0.1: the
``tritonserver`` of the nvidia-pytriton wheel (its venv made by .ci/run), serving a
repository that ``segstream triton-repo --platform python`` wrote (a Python-backend model
running ONNX Runtime: the only backend that wheel bundles)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import CITYSCAPES_FRAMES, CLIP, ROOT, run_segstream, segstream_cmd
from pipeline_helpers import start_pipeline, wait_for_exit

sys.path.insert(0, str(ROOT / "tools"))
from triton_local import LocalTriton, triton_missing  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow,
              pytest.mark.skipif(triton_missing() is not None, reason=str(triton_missing()))]

MODEL = "espnet-q3-small"


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("triton") / "repo"
    done = subprocess.run(segstream_cmd("triton-repo", "espnet-cityscapes-q3", "-o", str(folder), "--platform",
                                        "python", "--max-batch", "4", "--name", MODEL, "--height", "128", "--width",
                                        "256"), capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    done = subprocess.run(segstream_cmd("triton-repo", "espnet-cityscapes", "-o", str(folder), "--platform", "python",
                                        "--max-batch", "4"), capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    config = (folder / MODEL / "config.pbtxt").read_text()
    assert 'backend: "python"' in config and "max_batch_size: 4" in config and "segstream_metadata" in config
    return folder


@pytest.fixture
def server(repo):
    triton = LocalTriton(repo).start()
    # Its Python backend names its shared memory by the server's own prefix, so none of it
    # outlives the server (a killed stub frees none; 1 MB a model instance otherwise).
    assert triton.leftover_shm(), "the Python backend did not take the server's shm-region prefix"
    yield triton
    triton.close()
    assert not triton.leftover_shm()


def _masks(record: Path) -> dict[str, np.ndarray]:
    return {str(p.relative_to(record)): cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
            for p in sorted(record.rglob("masks/*.png"))}


def test_masks_through_triton_agree_with_local_onnxruntime(server, espnet_onnx, tmp_path):
    # The pretrained ESPNet on the Cityscapes frames: locally the float path that matches
    # the original ESPNet bit for bit; through Triton a uint8 resize, then the in-graph
    # normalisation (as on the GPU path), so a few boundary pixels differ.
    frames = str(CITYSCAPES_FRAMES[0].parent / "frankfurt_*_leftImg8bit.png")
    common = ["--source", frames, "--policy", "lossless", "--publish", ""]
    local = run_segstream("run", *common, "--model", str(espnet_onnx), "--record", str(tmp_path / "local"), "--quiet")
    assert local.returncode == 0, local.stderr[-2000:]
    remote = run_segstream("run", *common, "--backend", "triton", "--triton-url", server.url, "--model",
                           "espnet-cityscapes", "--batch", "4", "--triton-shm", "--record", str(tmp_path / "triton"),
                           "--quiet")
    assert remote.returncode == 0, remote.stderr[-2000:]
    expected, got = _masks(tmp_path / "local"), _masks(tmp_path / "triton")
    assert expected.keys() == got.keys() and len(got) == len(CITYSCAPES_FRAMES)
    agree = sum(int((expected[k] == got[k]).sum()) for k in got) / sum(m.size for m in got.values())
    assert agree >= 0.995, agree
    stats = json.loads((tmp_path / "triton" / "stats.json").read_text())
    assert stats["backend"]["name"] == "triton" and stats["frames_published"] == len(got)


def test_two_pipelines_share_one_server(server, tmp_path):
    runs = []
    for k in range(2):
        log = tmp_path / f"run{k}.log"
        proc = start_pipeline(["run", "--source", str(CLIP), "--max-frames", "20", "--policy", "lossless",
                               "--backend", "triton", "--triton-url", server.url, "--model", MODEL, "--publish", "",
                               "--record", str(tmp_path / f"rec{k}"), "--quiet"], log, tmp_path / f"t{k}")
        runs.append((proc, log))
    for proc, log in runs:
        assert wait_for_exit(proc, log, 180) == 0, log.read_text()[-2000:]
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.url.split("//", 1)[1])
    statistics = client.get_inference_statistics(MODEL, as_json=True)["model_stats"][0]
    client.close()
    assert int(statistics["inference_count"]) == 40  # both pipelines' frames, on the one server
    masks = [_masks(tmp_path / f"rec{k}") for k in range(2)]
    assert len(masks[0]) == len(masks[1]) == 20
    assert all(np.array_equal(masks[0][name], masks[1][name]) for name in masks[0])


def test_lossless_run_recovers_when_the_server_is_killed_and_restarted(server, tmp_path):
    log, record = tmp_path / "run.log", tmp_path / "rec"
    proc = start_pipeline(["run", "--source", str(CLIP), "--max-frames", "60", "--policy", "lossless", "--rate", "15",
                           "--backend", "triton", "--triton-url", server.url, "--model", MODEL, "--publish", "",
                           "--record", str(record)], log, tmp_path / "t")
    deadline = time.monotonic() + 120
    while len(list(record.rglob("masks/*.png"))) < 10 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(list(record.rglob("masks/*.png"))) >= 10, log.read_text()[-2000:]
    server.stop()  # SIGKILL, mid-run
    time.sleep(2.0)
    server.start()
    assert wait_for_exit(proc, log, 180) == 0, log.read_text()[-3000:]
    stats = json.loads((record / "stats.json").read_text())
    assert stats["frames_published"] == 60 and stats["frames_skipped"]["total"] == 0  # held, then sent
    assert "retrying" in log.read_text()


def test_clear_errors_for_a_missing_model_and_a_server_that_is_not_there(server, tmp_path):
    missing = run_segstream("run", "--source", "test-pattern", "--max-frames", "5", "--backend", "triton",
                            "--triton-url", server.url, "--model", "nosuch", "--publish", "", timeout=120)
    assert missing.returncode == 2 and "no ready model 'nosuch'" in missing.stderr and MODEL in missing.stderr
    from test_streams import free_port

    nobody = run_segstream("run", "--source", "test-pattern", "--max-frames", "5", "--backend", "triton",
                           "--triton-url", f"grpc://127.0.0.1:{free_port()}", "--model", MODEL, "--publish", "",
                           timeout=120)
    assert nobody.returncode == 2 and "did not answer" in nobody.stderr and "tritonserver" in nobody.stderr
    bad = run_segstream("run", "--backend", "triton", "--triton-url", "http://127.0.0.1:8000", "--model", MODEL,
                        timeout=60)
    assert bad.returncode == 2 and "grpc://HOST:PORT" in bad.stderr


def test_live_run_skips_frames_while_the_server_is_away_and_goes_on(server, tmp_path):
    import os
    import signal

    log, record = tmp_path / "run.log", tmp_path / "rec"
    # A source long enough to outlast the server's restart on a loaded machine; the test
    # ends the run (Ctrl-C) once masks come again.
    proc = start_pipeline(["run", "--source", "test-pattern:320x240@10", "--max-frames", "3000", "--backend",
                           "triton", "--triton-url", server.url, "--model", MODEL, "--publish", "", "--record",
                           str(record)], log, tmp_path / "t")

    def masks() -> int:
        return len(list(record.rglob("masks/*.png")))

    deadline = time.monotonic() + 120
    while masks() < 5 and time.monotonic() < deadline:
        time.sleep(0.1)
    server.stop()
    time.sleep(2.0)
    before = masks()
    server.start()
    deadline = time.monotonic() + 120
    while masks() <= before and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert masks() > before, log.read_text()[-3000:]  # masks again once the server is back
    os.killpg(proc.pid, signal.SIGINT)
    assert wait_for_exit(proc, log, 60) == 130, log.read_text()[-3000:]  # stopped by Ctrl-C, stats written
    stats = json.loads((record / "stats.json").read_text())
    assert stats["frames_skipped"]["by_stage"]["infer"].get("backend-unavailable", 0) > 0


def test_the_local_triton_tool_stops_its_server_on_sigterm(repo, tmp_path):
    """tools/triton_local.py as a user runs it: SIGTERM to the tool stops tritonserver and
    its backend stubs (their own session) and frees their shared memory; nothing outlives it."""
    import os
    import signal

    from triton_local import free_port

    port = free_port()
    log = (tmp_path / "tool.log").open("w")
    tool = subprocess.Popen([sys.executable, str(ROOT / "tools" / "triton_local.py"), str(repo), "--grpc-port",
                             str(port)], stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        ready = tool.stdout.readline()
        assert "tritonserver ready" in ready, (tmp_path / "tool.log").read_text()[-3000:]
        server_log = Path(ready.split("(log: ", 1)[1].split(")", 1)[0])
        prefix = "segstream_triton_" + server_log.parent.name.rsplit("-", 1)[-1] + "_"
        assert list(Path("/dev/shm").glob(prefix + "*"))  # the backend's regions, while it runs

        def servers() -> list[int]:
            found = []
            for proc in Path("/proc").iterdir():
                try:
                    cmdline = (proc / "cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                joined = b" ".join(cmdline)
                server = any(b"tritonserver" in arg for arg in cmdline) and str(port).encode() in joined
                if proc.name.isdigit() and (server or prefix.encode() in joined):  # the server, or its stubs
                    found.append(int(proc.name))
            return found

        assert servers()
        tool.send_signal(signal.SIGTERM)
        assert tool.wait(timeout=60) == 0
        deadline = time.monotonic() + 10
        while servers() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert servers() == [] and not list(Path("/dev/shm").glob(prefix + "*"))
        assert not server_log.parent.exists()
    finally:
        if tool.poll() is None:
            os.kill(tool.pid, signal.SIGKILL)
        log.close()
