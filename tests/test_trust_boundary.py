"""The trust boundary on tcp: a peer without the run's keys can neither take frames, nor
inject messages, nor reach the control sockets; the public endpoints with
``--publish-keys`` serve only the consumers they authorise. Real processes and sockets."""

from __future__ import annotations

import subprocess
import threading
import time

import zmq
from conftest import CLIP, segstream_cmd
from pipeline_helpers import free_port_block, read_stats, start_pipeline, wait_for_log

from segstream.pipeline.control import EventKind, StageEvent
from segstream.pipeline.control import encode as encode_control
from segstream.pipeline.wire.messages import encode, eos


class Intruder:
    """Connects without keys to every port of a run: a PULL that would take frames and a
    PUSH that sends forged messages and events."""

    def __init__(self, ports: range) -> None:
        self.context = zmq.Context()
        self.taken = 0
        self.pulls, self.pushes = [], []
        for port in ports:
            pull, push = self.context.socket(zmq.PULL), self.context.socket(zmq.PUSH)
            pull.connect(f"tcp://127.0.0.1:{port}")
            push.setsockopt(zmq.SNDTIMEO, 0)
            push.connect(f"tcp://127.0.0.1:{port}")
            self.pulls.append(pull)
            self.pushes.append(push)

    def attack(self, seconds: float) -> None:
        forged = [bytes(f) for f in encode(eos("clip"))]
        event = encode_control(StageEvent("publish", EventKind.DONE))
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for push in self.pushes:
                for message in (forged, [event]):
                    try:
                        push.send_multipart(message, zmq.NOBLOCK)
                    except zmq.ZMQError:
                        pass
            for pull in self.pulls:
                while pull.poll(0):
                    pull.recv_multipart()
                    self.taken += 1
            time.sleep(0.05)

    def close(self) -> None:
        for sock in self.pulls + self.pushes:
            sock.close(0)
        self.context.term()


def test_a_tcp_run_refuses_peers_without_its_keys_and_loses_nothing_to_them(tmp_path, fast_onnx):
    port = free_port_block()
    config = tmp_path / "tcp.yaml"
    config.write_text(f"transport: tcp\ntcp_base_port: {port}\npublish: ''\n")
    record, log = tmp_path / "rec", tmp_path / "run.log"
    proc = start_pipeline(["run", "--config", str(config), "--source", str(CLIP), "--max-frames", "60",
                           "--rate", "20", "--model", str(fast_onnx), "--record", str(record)], log, tmp_path / "t")
    wait_for_log(log, r"run \w+: running")
    intruder = Intruder(range(port, port + 8))
    try:
        intruder.attack(2.5)
    finally:
        intruder.close()
    assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
    stats = read_stats(record)
    assert intruder.taken == 0
    assert stats["frames_in"] == stats["frames_published"] == 60 and stats["frames_unaccounted"] == 0
    assert stats["peers_refused"] >= 1  # counted: handshakes without the run's key
    assert stats["control_events_refused"] == 0  # the forged events never got through


def test_published_masks_over_tcp_reach_only_authorised_consumers(tmp_path, fast_onnx):
    keys = tmp_path / "keys"
    made = subprocess.run(segstream_cmd("keys", str(keys), "--client", "planner"), capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    assert (keys / "server.key_secret").stat().st_mode & 0o077 == 0
    endpoint = f"tcp://127.0.0.1:{free_port_block(1)}"
    authorised = subprocess.Popen(segstream_cmd("consume", endpoint, "--server-key", str(keys / "server.key"),
                                                "--client-key", str(keys / "planner.key_secret"), "--timeout", "90"),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    from segstream.pipeline.client import MaskSubscriber
    from segstream.pipeline.wire.keys import CurveClient, RunKeys

    stranger = RunKeys.generate().client  # a key pair nobody authorised
    got: dict[str, int] = {}
    done = threading.Event()

    def listen(name: str, curve: CurveClient | None) -> None:  # for as long as the authorised one gets masks
        got[name] = 0
        with MaskSubscriber(endpoint, timeout_s=0.5, curve=curve) as masks:
            while not done.is_set():
                got[name] += sum(1 for _ in masks)

    server_key = (keys / "server.key").read_text().split('public-key = "')[1].split('"')[0]
    listeners = [threading.Thread(target=listen, args=("no key", None)),
                 threading.Thread(target=listen, args=("unknown key", CurveClient(server_key, stranger.public,
                                                                                  stranger.secret)))]
    for thread in listeners:
        thread.start()
    try:
        time.sleep(0.5)
        record, log = tmp_path / "rec", tmp_path / "run.log"
        proc = start_pipeline(["run", "--source", str(CLIP), "--max-frames", "20", "--model", str(fast_onnx),
                               "--publish", endpoint, "--publish-keys", str(keys), "--record", str(record)],
                              log, tmp_path / "t")
        assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
        out, err = authorised.communicate(timeout=60)
    finally:
        if authorised.poll() is None:
            authorised.kill()
        done.set()
        for thread in listeners:
            thread.join(timeout=60)
    assert authorised.returncode == 0, err[-2000:]
    assert len([line for line in out.splitlines() if line.startswith("source=solidWhiteRight frame=")]) == 20, out
    assert got == {"no key": 0, "unknown key": 0}
    assert read_stats(record)["peers_refused"] >= 2


def test_publish_keys_without_a_tcp_endpoint_is_a_clear_error(tmp_path):
    from conftest import run_segstream

    result = run_segstream("run", "--source", str(CLIP), "--publish", f"ipc://{tmp_path}/x.sock",
                           "--publish-keys", str(tmp_path / "keys"))
    assert result.returncode == 2 and "--publish-keys protects tcp:// endpoints" in result.stderr
