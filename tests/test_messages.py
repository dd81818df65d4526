"""Message encode/decode round trips and rejection of malformed messages."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zmq

from segstream.pipeline.telemetry.stats import SkipCounter
from segstream.pipeline.wire.messages import (
    Header,
    Kind,
    Message,
    MessageError,
    Part,
    ShmRef,
    Stamp,
    decode,
    encode,
    eos,
    inline_array,
)
from segstream.pipeline.wire.policies import FlowPolicy, Inbox


def _frame_message() -> Message:
    mask = np.arange(12, dtype=np.uint8).reshape(3, 4)
    header = Header(Kind.RESULT, "cam0", 7, "000007", 123, 456,
                    parts=[Part("mask", (3, 4), "uint8", inline=0),
                           Part("frame", (3, 4, 3), "uint8", ref=ShmRef("segstream-x-capture-0-0", 2, 9))],
                    stamps=[Stamp("capture", 1, 2), Stamp("infer", 3, 4)], meta={"fps": 25.0})
    return Message(header, [mask])


def test_round_trip_keeps_every_field():
    original = _frame_message()
    frames = [bytes(memoryview(f)) if not isinstance(f, bytes) else f for f in encode(original)]
    decoded = decode(frames)
    assert decoded.header == original.header
    np.testing.assert_array_equal(inline_array(decoded.header.parts[0], decoded.payload), original.payload[0])
    assert frames[0] == b"cam0"


def test_eos_round_trip():
    message = eos("cam0", frames_in=3)
    decoded = decode(encode(message))
    assert decoded.header.kind is Kind.EOS and decoded.header.meta == {"frames_in": 3}


def _header_bytes(**changes) -> bytes:
    data = json.loads(encode(_frame_message())[1])
    data.update(changes)
    return json.dumps(data).encode()


@pytest.mark.parametrize(
    "frames, reason",
    [
        ([b"cam0"], "too_few_parts"),
        ([b"cam0", b"{not json", b""], "bad_json"),
        ([b"cam0", b"[1, 2]"], "bad_json"),
        ([b"cam0", _header_bytes(version=99), bytes(12)], "bad_version"),
        ([b"cam0", _header_bytes(kind="teleport"), bytes(12)], "bad_field"),
        ([b"other", _header_bytes(), bytes(12)], "topic_mismatch"),
        ([b"cam0", _header_bytes(), bytes(11)], "payload_mismatch"),
        ([b"cam0", _header_bytes()], "payload_mismatch"),
        ([b"cam0", _header_bytes(parts=[{"name": "m", "shape": [2], "dtype": "object", "inline": 0}]), b"xx"],
         "bad_part"),
        ([b"cam0", _header_bytes(parts=[{"name": "m", "shape": [2], "dtype": "uint8"}]), b"xx"], "bad_part"),
        ([b"cam0", _header_bytes(stamps=[["a", 1]]), bytes(12)], "bad_field"),
        ([b"cam0", _header_bytes(index="7"), bytes(12)], "bad_field"),
    ],
)
def test_malformed_messages_are_rejected_with_a_reason(frames, reason):
    with pytest.raises(MessageError) as info:
        decode(frames)
    assert info.value.reason == reason


def test_missing_field_is_named():
    data = json.loads(_header_bytes())
    del data["capture_ns"]
    with pytest.raises(MessageError, match="capture_ns"):
        decode([b"cam0", json.dumps(data).encode(), bytes(12)])


def test_inbox_counts_malformed_and_keeps_going():
    ctx = zmq.Context()
    push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    pull.bind("inproc://inbox-test")
    push.connect("inproc://inbox-test")
    skipped = SkipCounter()
    inbox = Inbox(pull, FlowPolicy.LOSSLESS, skipped)
    push.send_multipart([b"cam0", b"garbage"])
    push.send_multipart(encode(_frame_message()))
    received = []
    for _ in range(20):
        received += inbox.receive(100)
        if received:
            break
    assert [m.header.index for m in received] == [7]
    assert skipped["malformed_bad_json"] == 1
    push.close(0)
    pull.close(0)
    ctx.term()


def test_live_inbox_keeps_newest_frame_per_source_and_every_eos():
    ctx = zmq.Context()
    push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    pull.bind("inproc://live-test")
    push.connect("inproc://live-test")
    for i in range(5):
        m = _frame_message()
        m.header.index = i
        push.send_multipart(encode(m))
    push.send_multipart(encode(eos("cam0")))
    skipped = SkipCounter()
    inbox = Inbox(pull, FlowPolicy.LIVE, skipped)
    got = inbox.receive(500)
    assert [(m.header.kind, m.header.index) for m in got] == [(Kind.RESULT, 4), (Kind.EOS, -1)]
    assert skipped["superseded"] == 4 and len(inbox.superseded) == 4
    push.close(0)
    pull.close(0)
    ctx.term()
