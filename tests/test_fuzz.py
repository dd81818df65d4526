"""Fuzzing every boundary that reads from a socket, with real processes and sockets.

Each stage kind gets ``FUZZ_MESSAGES`` structured mutations of a valid message of its
input (``fuzzing.py``) and a share of mutated commands, then one valid frame and its end
of stream. It must not die, must process the valid frame, and must count every message:
received, or refused with a reason. The supervisor's control socket, ``segstream
consume`` and ``MaskSubscriber`` get the same treatment. Nothing may be written outside
an output folder.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import zmq
from conftest import segstream_cmd
from fuzzing import mutate, mutate_json
from pipeline_helpers import start_pipeline, wait_for_log

from segstream.engines.metadata import ModelMetadata
from segstream.errors import MessageError
from segstream.pipeline.control import (
    Command,
    CommandMessage,
    EventKind,
    PipelineFigures,
    StageEvent,
    decode_command,
    decode_event,
)
from segstream.pipeline.control import (
    encode as encode_control,
)
from segstream.pipeline.spec import (
    CaptureSettings,
    InferSettings,
    PayloadChoice,
    PreprocessSettings,
    PublishSettings,
    RenderSettings,
    RingSpec,
    StageKind,
    StageSpec,
)
from segstream.pipeline.telemetry.stats import StageReport
from segstream.pipeline.wire.choices import FlowPolicy
from segstream.pipeline.wire.messages import Header, Kind, Message, Part, decode, encode, eos
from segstream.pipeline.wire.names import is_safe_name

FUZZ_MESSAGES = int(os.environ.get("SEGSTREAM_FUZZ_MESSAGES", "10000"))
RUN_ID = "0a1b2c3d"
SOURCE = "cam"
ESCAPE = "segstream-fuzz-escape"  # what traversal names in fuzzing.py aim at


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory) -> Path:
    """ESPNet q=3 at 32x64: inference in a millisecond, for the valid frames among the fuzz."""
    from segstream.engines.export import export_onnx

    return export_onnx("espnet-cityscapes-q3", tmp_path_factory.mktemp("tiny") / "tiny.onnx", height=32, width=64)


def _message(kind: Kind, index: int, **arrays: np.ndarray) -> list[bytes]:
    parts = [Part(name, tuple(a.shape), a.dtype.name, inline=k) for k, (name, a) in enumerate(arrays.items())]
    header = Header(kind, SOURCE, index, f"{index:06d}", 1, 1, parts=parts, meta={"fps": 25.0, "seq": index})
    return [bytes(f) if not isinstance(f, np.ndarray) else f.tobytes()
            for f in encode(Message(header, [np.ascontiguousarray(a) for a in arrays.values()]))]


FRAME = np.full((24, 32, 3), 90, np.uint8)
LABELS = (np.arange(32 * 64) % 2).astype(np.uint8).reshape(32, 64)
MASK = (np.arange(24 * 32) % 2).astype(np.uint8).reshape(24, 32)
TENSOR = np.zeros((1, 3, 32, 64), np.float32)


def _ends_the_receiver(header: dict) -> bool:
    """A header that could legitimately end a stage or consumer: an end of stream, or a
    message of another (valid) source, whose end a consumer would wait for too."""
    source = header.get("source")
    return header.get("kind") == "eos" or (isinstance(source, str) and source != SOURCE and is_safe_name(source))


def _decoded(decoder: Callable[[Any], Any], raw: Any) -> Any:
    """What ``decoder`` makes of ``raw``, or None where it refuses it (what the receiver
    counts as malformed)."""
    try:
        return decoder(raw)
    except MessageError:
        return None


def _stopping_command(variant: dict) -> bool:
    command = _decoded(decode_command, json.dumps(variant).encode())
    return command is not None and command.command in (Command.STOP, Command.FINISH)


class StageUnderFuzz:
    """One real stage process, with the test as its supervisor, upstream and downstream."""

    def __init__(self, tmp_path: Path, spec: StageSpec) -> None:
        self.tmp_path = tmp_path
        self.context = zmq.Context()
        self.feed = self.context.socket(zmq.PUSH)
        self.feed.bind(f"ipc://{tmp_path}/in.sock")
        self.control = self.context.socket(zmq.PULL)
        self.control.bind(f"ipc://{tmp_path}/control.sock")
        self.commands = self.context.socket(zmq.PUB)
        self.commands.setsockopt(zmq.SNDHWM, 0)
        self.commands.bind(f"ipc://{tmp_path}/commands.sock")
        self.spec = replace(spec, control=f"ipc://{tmp_path}/control.sock", commands=f"ipc://{tmp_path}/commands.sock")
        path = tmp_path / f"{spec.name}.json"
        path.write_text(self.spec.to_json())
        self.process = subprocess.Popen([sys.executable, "-m", "segstream.pipeline.stage_main", str(path)], cwd=tmp_path)
        self.out: list[Message] = []
        self._drain_stop = threading.Event()
        self._drain = threading.Thread(target=self._drain_outputs, daemon=True)
        self._drain.start()
        self.report: StageReport | None = None
        self._wait_for(EventKind.READY)
        deadline = time.monotonic() + 60
        while not self._wait_for(EventKind.STARTED, timeout=0.2, fail=False):
            self.commands.send(encode_control(CommandMessage(Command.START)))
            assert time.monotonic() < deadline, "the stage did not start"

    def _drain_outputs(self) -> None:
        pull = self.context.socket(zmq.PULL)
        for endpoint in self.spec.outputs:
            pull.connect(endpoint)
        while not self._drain_stop.is_set():
            if pull.poll(50):
                self.out.append(decode(pull.recv_multipart()))
        pull.close(0)

    def _wait_for(self, kind: EventKind, timeout: float = 60, fail: bool = True) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.control.poll(50):
                event = decode_event(self.control.recv())
                if event.report is not None:
                    self.report = event.report
                if event.kind is kind:
                    return True
            assert self.process.poll() is None, f"the stage died with {self.process.returncode}"
        assert not fail, f"no {kind.value} event within {timeout} s"
        return False

    def fuzz_commands(self, count: int, rng: random.Random) -> int:
        """Send ``count`` mutated commands; returns how many are malformed."""
        bases = [json.loads(encode_control(CommandMessage(Command.FIGURES, PipelineFigures(10, 2, {"infer": 4.0})))),
                 json.loads(encode_control(CommandMessage(Command.START)))]
        malformed = 0
        for k in range(count):
            raw = mutate_json(rng.choice(bases), rng, _stopping_command)
            malformed += _decoded(decode_command, raw) is None
            self.commands.send(raw)
            if k % 500 == 499:
                time.sleep(0.05)  # the stage reads commands between frames
        return malformed

    def finish(self, last: list[list[bytes]]) -> StageReport:
        """Send the valid ``last`` messages, wait for the stage to end; its final report."""
        for frames in last:
            self.feed.send_multipart(frames)
        self._wait_for(EventKind.ENDED, timeout=90)
        deadline = time.monotonic() + 60
        while self.process.poll() is None:  # as the supervisor does once every stage ended
            self.commands.send(encode_control(CommandMessage(Command.FINISH)))
            time.sleep(0.1)
            assert time.monotonic() < deadline, "the stage did not finish"
        assert self.process.returncode == 0
        self._wait_for(EventKind.DONE, timeout=10)
        assert self.report is not None
        return self.report

    def close(self) -> None:
        self._drain_stop.set()
        self._drain.join()
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for sock in (self.feed, self.control, self.commands):
            sock.close(0)
        self.context.term()


def _spec(kind: StageKind, settings, tmp_path: Path, outputs: bool = True) -> StageSpec:
    return StageSpec(kind.value, kind, RUN_ID, FlowPolicy.LOSSLESS, settings, inputs=(f"ipc://{tmp_path}/in.sock",),
                     outputs=(f"ipc://{tmp_path}/out.sock",) if outputs else (), payloads=PayloadChoice.INLINE,
                     ring=RingSpec(f"segstream-{RUN_ID}-{kind.value}", 4) if outputs else None, source_ids=(SOURCE,))


def _files_outside(tmp_path: Path, allowed: Path) -> list[str]:
    """Files the run created under ``tmp_path`` but outside ``allowed`` (besides the
    harness's own spec, ledger and sockets)."""
    out = []
    for path in tmp_path.rglob("*"):
        if path.is_dir() or allowed in path.parents or path.suffix in (".json", ".ledger", ".sock", ".onnx"):
            continue
        out.append(str(path))
    return out


def _assert_every_message_counted(report: StageReport, sent: int, malformed: int, commands_malformed: int) -> None:
    refused_on_receipt = sum(n for r, n in report.skipped.items() if r.startswith("malformed_"))
    unknown = report.skipped.get("unknown_source", 0)
    control = sum(n for r, n in report.skipped.items() if r.startswith("control_"))
    other = report.skipped_total - refused_on_receipt - unknown - control
    assert refused_on_receipt == malformed, report.skipped
    assert control == commands_malformed, report.skipped
    assert report.frames_in + refused_on_receipt + unknown == sent, (report.frames_in, report.skipped)
    assert report.frames_in == report.frames_out + other, (report.frames_in, report.frames_out, report.skipped)


MIDDLE_STAGES = {
    StageKind.PREPROCESS: lambda onnx, out: PreprocessSettings(replace(ModelMetadata.example(), input_width=64,
                                                                       input_height=32)),
    StageKind.INFER: lambda onnx, out: InferSettings(str(onnx), "onnxruntime", {"threads": 1}),
    StageKind.PUBLISH: lambda onnx, out: PublishSettings(ModelMetadata.example(), sinks=(f"masks:{out}",)),
    StageKind.RENDER: lambda onnx, out: RenderSettings(ModelMetadata.example(), sinks=(f"video:{out}",)),
}
BASE_MESSAGES = {
    StageKind.PREPROCESS: lambda i: _message(Kind.FRAME, i, frame=FRAME),
    StageKind.INFER: lambda i: _message(Kind.TENSOR, i, input=TENSOR, frame=FRAME),
    StageKind.PUBLISH: lambda i: _message(Kind.RESULT, i, labels=LABELS, frame=FRAME),
    StageKind.RENDER: lambda i: _message(Kind.RESULT, i, frame=FRAME, mask=MASK),
}


@pytest.mark.parametrize("kind", list(MIDDLE_STAGES), ids=lambda k: k.value)
def test_a_stage_fed_ten_thousand_mutations_lives_counts_each_and_writes_nowhere_else(kind, tmp_path, tiny_onnx):
    rng = random.Random(f"segstream-{kind.value}")
    out = tmp_path / "out"
    spec = _spec(kind, MIDDLE_STAGES[kind](tiny_onnx, out), tmp_path, outputs=kind is not StageKind.RENDER)
    harness = StageUnderFuzz(tmp_path, spec)
    try:
        base = BASE_MESSAGES[kind](0)
        malformed = commands_malformed = 0
        for k in range(FUZZ_MESSAGES):
            frames = mutate(base, rng, _ends_the_receiver)
            malformed += _decoded(decode, frames) is None
            harness.feed.send_multipart(frames)
            if k % 10 == 9:
                commands_malformed += harness.fuzz_commands(1, rng)
        report = harness.finish([BASE_MESSAGES[kind](1), [bytes(f) for f in encode(eos(SOURCE))]])
        _assert_every_message_counted(report, FUZZ_MESSAGES + 1, malformed, commands_malformed)
        assert report.frames_out >= 1  # the valid frame at the end went through
        if kind is not StageKind.RENDER:
            assert any(m.header.index == 1 and m.header.kind is not Kind.EOS for m in harness.out)
    finally:
        harness.close()
    assert _files_outside(tmp_path, out) == []
    assert not Path("/tmp", ESCAPE).exists()


def test_a_capture_stage_fed_ten_thousand_mutated_commands_lives_and_counts_each(tmp_path):
    rng = random.Random("segstream-capture")
    spec = replace(_spec(StageKind.CAPTURE, CaptureSettings("test-pattern:32x24@200", SOURCE, max_frames=0), tmp_path),
                   inputs=())
    harness = StageUnderFuzz(tmp_path, spec)
    try:
        malformed = 0
        for _ in range(FUZZ_MESSAGES // 1000):
            malformed += harness.fuzz_commands(1000, rng)
            time.sleep(0.1)
        assert harness.process.poll() is None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # its reports catch up with what was sent
            harness._wait_for(EventKind.STATS, timeout=5)
            counted = sum(n for r, n in harness.report.skipped.items() if r.startswith("control_"))
            if counted >= malformed:
                break
        assert counted == malformed, harness.report.skipped
        assert harness.report.frames_out > 0  # it kept capturing all along
        harness.commands.send(encode_control(CommandMessage(Command.STOP)))
        assert harness.process.wait(timeout=30) == 0
    finally:
        harness.close()


def _result(index: int) -> list[bytes]:
    header = Header(Kind.RESULT, SOURCE, index, f"{index:06d}", 1, time.time_ns(),
                    parts=[Part("mask", MASK.shape, "uint8", inline=0)],
                    meta={"classes": {"0": 0.5, "1": 0.5}, "ignore_index": 255, "model": "example"})
    return [bytes(f) if not isinstance(f, np.ndarray) else f.tobytes() for f in encode(Message(header, [MASK]))]


def _fuzz_results(push: zmq.Socket, rng: random.Random) -> int:
    """Send the mutations, one valid result and the end of stream; returns how many
    of the mutations were malformed on the wire."""
    malformed = 0
    for _ in range(FUZZ_MESSAGES):
        frames = mutate(_result(0), rng, _ends_the_receiver)
        malformed += _decoded(decode, frames) is None
        push.send_multipart(frames)
    push.send_multipart(_result(1))
    push.send_multipart([bytes(f) for f in encode(eos(SOURCE))])
    return malformed


def test_mask_subscriber_fed_ten_thousand_mutations_lives_and_counts_each(tmp_path):
    from segstream.pipeline.client import MaskSubscriber

    endpoint = f"ipc://{tmp_path}/lossless.sock"
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    push.bind(endpoint)
    sent: list[int] = []
    sender = threading.Thread(target=lambda: sent.append(_fuzz_results(push, random.Random("segstream-client"))))
    results = []
    with MaskSubscriber(endpoint, timeout_s=60, lossless=True) as subscriber:
        sender.start()
        results = list(subscriber)
        sender.join()
    push.close(0)
    context.term()
    assert not subscriber.timed_out and subscriber.ended == {SOURCE}
    assert results[-1].index == 1 and np.array_equal(results[-1].mask, MASK)
    assert sum(n for r, n in subscriber.skipped.items() if r.startswith("malformed_")) == sent[0]
    assert len(results) + sum(subscriber.skipped.values()) == FUZZ_MESSAGES + 1


def test_consume_fed_ten_thousand_mutations_lives_counts_and_saves_only_inside_its_folder(tmp_path):
    endpoint = f"ipc://{tmp_path}/lossless.sock"
    save = tmp_path / "saved"
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    push.bind(endpoint)
    stdout, stderr = tmp_path / "consume.out", tmp_path / "consume.err"
    with open(stdout, "w") as out, open(stderr, "w") as err:  # files, not pipes: a full pipe would stall it
        consumer = subprocess.Popen(segstream_cmd("consume", endpoint, "--lossless", "--save", str(save),
                                                  "--timeout", "60"), stdout=out, stderr=err, cwd=tmp_path)
    try:
        malformed = _fuzz_results(push, random.Random("segstream-consume"))
        consumer.wait(timeout=120)
    finally:
        if consumer.poll() is None:
            consumer.kill()
        push.close(0)
        context.term()
    assert consumer.returncode == 0, stderr.read_text()[-2000:]
    lines = stdout.read_text().splitlines()
    received = [line for line in lines if line.startswith("source=") and "end-of-stream" not in line]
    summary = next(line for line in lines if line.startswith("skipped "))
    skipped = int(summary.split()[1])
    reasons = dict((r.split()[0], int(r.split()[1])) for r in summary[summary.index("(") + 1:-1].split(", "))
    assert len(received) + skipped == FUZZ_MESSAGES + 1
    assert sum(n for r, n in reasons.items() if r.startswith("malformed_")) == malformed
    assert received[-1].startswith(f"source={SOURCE} frame=1 ")
    assert sorted(_files_outside(tmp_path, save)) == sorted([str(stdout), str(stderr)])
    assert (save / SOURCE / "000001.png").is_file()
    assert not Path("/tmp", ESCAPE).exists()


def test_the_supervisor_fed_ten_thousand_forged_events_runs_on_and_counts_each(tmp_path, tiny_onnx):
    log, tmpdir = tmp_path / "run.log", tmp_path / "t"
    record = tmp_path / "rec"
    proc = start_pipeline(["run", "--source", "test-pattern:64x48@10", "--model", str(tiny_onnx), "--publish", "",
                           "--record", str(record)], log, tmpdir)
    run_id = wait_for_log(log, r"run (\w+): running").group(1)
    import tempfile

    run_dirs = [p.parent for base in (tmpdir, Path(tempfile.gettempdir()), Path("/tmp"))
                for p in base.glob("segstream-*/owner") if p.read_text().split()[1:2] == [run_id]]
    control = run_dirs[0] / "control.sock"
    # Well-formed events of the run's real stages among them, ends, errors and source
    # failures included: none carries the run's control token, so every one is refused.
    bases = [json.loads(encode_control(StageEvent("infer", EventKind.STATS, report=StageReport("infer", 5, 5)))),
             json.loads(encode_control(StageEvent("capture-0", EventKind.READY))),
             json.loads(encode_control(StageEvent("capture-0", EventKind.SOURCE_FAILED, source="test-pattern",
                                                  message="forged"))),
             json.loads(encode_control(StageEvent("publish", EventKind.DONE, exit_code=1)))]

    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    push.connect(f"ipc://{control}")
    rng = random.Random("segstream-supervisor")
    refused = 0
    try:
        for _ in range(FUZZ_MESSAGES):
            raw = mutate_json(rng.choice(bases), rng, lambda variant: False)
            refused += 1
            push.send(raw)
        push.close(linger=30_000)
        time.sleep(1.5)
        assert proc.poll() is None, log.read_text()[-2000:]
        os.killpg(proc.pid, 2)
        assert proc.wait(timeout=30) == 130
    finally:
        context.term()
    stats = json.loads((record / "stats.json").read_text())
    assert stats["run_id"] == run_id and stats["control_events_refused"] == refused
    assert stats["frames_published"] > 0
