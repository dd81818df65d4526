"""A real stage process fed messages that decode but do not fit: it skips and counts each,
goes on, and ends with its sources. Also: an end of stream for a source the run does not
have ends nothing."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import zmq
from conftest import ROOT

from segstream.engines.metadata import ModelMetadata
from segstream.pipeline.control import EventKind, decode_event
from segstream.pipeline.spec import PayloadChoice, PreprocessSettings, RingSpec, StageKind, StageSpec
from segstream.pipeline.wire.choices import FlowPolicy
from segstream.pipeline.wire.messages import Header, Kind, Message, Part, decode, encode, eos


def _frame(index: int, array: np.ndarray, source: str = "cam") -> list:
    header = Header(Kind.FRAME, source, index, f"{index:06d}", 1, 1,
                    parts=[Part("frame", tuple(array.shape), array.dtype.name, inline=0)])
    return encode(Message(header, [np.ascontiguousarray(array)]))


def test_a_preprocess_stage_skips_what_does_not_fit_and_goes_on(tmp_path):
    context = zmq.Context()
    feed, results, control = context.socket(zmq.PUSH), context.socket(zmq.PULL), context.socket(zmq.PULL)
    feed.bind(f"ipc://{tmp_path}/in.sock")
    control.bind(f"ipc://{tmp_path}/control.sock")
    spec = StageSpec("preprocess", StageKind.PREPROCESS, "0a1b2c3d", FlowPolicy.LOSSLESS,
                     PreprocessSettings(ModelMetadata.example()), inputs=(f"ipc://{tmp_path}/in.sock",),
                     outputs=(f"ipc://{tmp_path}/out.sock",), control=f"ipc://{tmp_path}/control.sock",
                     payloads=PayloadChoice.INLINE, ring=RingSpec("segstream-0a1b2c3d-preprocess", 4),
                     source_ids=("cam",))
    path = tmp_path / "spec.json"
    path.write_text(spec.to_json())
    stage = subprocess.Popen([sys.executable, "-m", "segstream.pipeline.stage_main", str(path)], cwd=ROOT)
    try:
        results.connect(f"ipc://{tmp_path}/out.sock")
        good = np.full((64, 128, 3), 90, np.uint8)
        for message in (_frame(0, np.zeros(12, np.uint8)),  # 1-D
                        _frame(1, np.zeros((8, 8, 4), np.uint8)),  # 4 channels
                        _frame(2, np.zeros((0, 8, 3), np.uint8)),  # 0 rows
                        _frame(3, good.astype(np.float64)),  # float64
                        encode(eos("intruder")),  # a source this run does not have
                        _frame(4, good, source="intruder"),
                        _frame(5, good),
                        encode(eos("cam"))):
            feed.send_multipart(message)
        out = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (out and out[-1].header.kind is Kind.EOS):
            if results.poll(200):
                out.append(decode(results.recv_multipart()))
        assert [(m.header.kind, m.header.index) for m in out] == [(Kind.TENSOR, 5), (Kind.EOS, -1)]
        assert out[0].header.part("input").shape == (1, 3, 512, 1024)
        assert stage.wait(timeout=60) == 0  # ended with its source, alive until then
        report = None
        while control.poll(1000):
            event = decode_event(control.recv())
            if event.kind is EventKind.DONE:
                report = event.report
        assert report is not None
        assert report.skipped == {"bad_input": 4, "unknown_source": 2}
        assert report.frames_in == 5 and report.frames_out == 1
    finally:
        if stage.poll() is None:
            stage.kill()
        for sock in (feed, results, control):
            sock.close(0)
        context.term()
