"""The C consumer in tools/ (libzmq only) is compiled here and reads a real pipeline."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
from conftest import KITTI_FRAMES, ROOT
from pipeline_helpers import start_pipeline

pytestmark = pytest.mark.integration

SOURCE = ROOT / "tools" / "c_consumer" / "consumer.c"



@pytest.fixture(scope="module")
def c_consumer(tmp_path_factory) -> Path:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None or not Path("/usr/include/zmq.h").exists():
        pytest.skip("needs a C compiler and libzmq headers (Debian: libzmq3-dev)")
    binary = tmp_path_factory.mktemp("c") / "segstream-consumer"
    subprocess.run([compiler, "-Wall", "-Werror", "-O2", str(SOURCE), "-lzmq", "-o", str(binary)], check=True)
    return binary


def test_c_consumer_receives_every_mask_in_order(tmp_path, fast_onnx, c_consumer):
    endpoint = f"ipc://{tmp_path}/pub.sock"
    consumer = subprocess.Popen([str(c_consumer), endpoint], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    try:
        time.sleep(0.5)
        glob = str(KITTI_FRAMES[0].parent / "kitti_*.png")
        proc = start_pipeline(["run", "--source", glob, "--model", str(fast_onnx), "--publish", endpoint],
                              tmp_path / "run.log", tmp_path / "t")
        assert proc.wait(timeout=120) == 0
        out, err = consumer.communicate(timeout=60)
    finally:
        consumer.kill()
    assert consumer.returncode == 0, err
    lines = out.splitlines()
    assert lines[-1] == "received 3 masks from 1 source(s), 0 error(s)"
    assert [line.split()[:2] for line in lines[:-1]] == [["kitti", str(k)] for k in range(3)]
    assert lines[0].split()[2] == "1224x370" and lines[0].split()[3] == str(1224 * 370)


def test_c_consumer_with_a_client_key_reads_an_endpoint_published_with_keys(tmp_path, fast_onnx, c_consumer):
    from conftest import CLIP, segstream_cmd

    keys = tmp_path / "keys"
    subprocess.run(segstream_cmd("keys", str(keys), "--client", "c"), check=True, capture_output=True)
    from pipeline_helpers import free_port_block

    endpoint = f"tcp://127.0.0.1:{free_port_block(1)}"
    consumer = subprocess.Popen([str(c_consumer), endpoint, "5", str(keys / "server.key"), str(keys / "c.key_secret")],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        proc = start_pipeline(["run", "--source", str(CLIP), "--max-frames", "30", "--rate", "15", "--model",
                               str(fast_onnx), "--publish", endpoint, "--publish-keys", str(keys)],
                              tmp_path / "run.log", tmp_path / "t")
        out, err = consumer.communicate(timeout=120)
        assert proc.wait(timeout=120) == 0
    finally:
        consumer.kill()
    assert consumer.returncode == 0, err
    assert out.splitlines()[-1] == "received 5 masks from 1 source(s), 0 error(s)"


def test_c_consumer_prints_the_instances_of_an_instance_model(tmp_path, instance_onnx, c_consumer):
    from conftest import CLIP

    endpoint = f"ipc://{tmp_path}/pub.sock"
    consumer = subprocess.Popen([str(c_consumer), endpoint], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        proc = start_pipeline(["run", "--source", str(CLIP), "--max-frames", "3", "--rate", "max", "--policy",
                               "lossless", "--model", str(instance_onnx), "--publish", endpoint,
                               "--record", str(tmp_path / "rec")], tmp_path / "run.log", tmp_path / "t")
        assert proc.wait(timeout=180) == 0
        out, err = consumer.communicate(timeout=60)
    finally:
        consumer.kill()
    assert consumer.returncode == 0, err
    import json

    recorded = [json.loads(line)["instances"] for line in (tmp_path / "rec" / "instances.jsonl").read_text().splitlines()]
    lines = out.splitlines()
    assert lines[-1] == "received 3 masks from 1 source(s), 0 error(s)"
    for index, instances in enumerate(recorded):
        at = lines.index(f"solidWhiteRight {index} instances {len(instances)}")
        for line, item in zip(lines[at + 1:at + 1 + len(instances)], instances):
            fields = line.split()
            assert fields[:2] == [str(item["id"]), "car"]
            assert abs(float(fields[2]) - item["score"]) < 1e-3
            assert all(abs(float(a) - b) < 0.06 for a, b in zip(fields[3:], item["box"]))
