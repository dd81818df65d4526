"""Message encode/decode round trips and rejection of malformed messages."""

from __future__ import annotations

import json
import time

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
from segstream.pipeline.wire.policies import CATCH_UP_MAX, CatchUp, FlowPolicy, Inbox


def _frame_message() -> Message:
    mask = np.arange(12, dtype=np.uint8).reshape(3, 4)
    header = Header(Kind.RESULT, "cam0", 7, "000007", 123, 456,
                    parts=[Part("mask", (3, 4), "uint8", inline=0),
                           Part("frame", (3, 4, 3), "uint8", ref=ShmRef("segstream-0a1b2c3d-capture-0-0", 2, 9))],
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


def _with_ref(**ref) -> bytes:
    data = json.loads(_header_bytes())
    data["parts"][1]["ref"].update(ref)
    return json.dumps(data).encode()


def _raw(text: str) -> bytes:
    """A header with ``text`` spliced in as raw JSON (NaN, Infinity, huge numbers)."""
    return _header_bytes(index=0).replace(b'"index": 0', f'"index": {text}'.encode())


@pytest.mark.parametrize("frames, reason", [
    ([b"cam0", _with_ref(slot="abc"), bytes(12)], "bad_ref"),
    ([b"cam0", _with_ref(slot=[1]), bytes(12)], "bad_ref"),
    ([b"cam0", _with_ref(slot=True), bytes(12)], "bad_ref"),
    ([b"cam0", _with_ref(slot=1 << 40), bytes(12)], "bad_ref"),
    ([b"cam0", _with_ref(seq=-1), bytes(12)], "bad_ref"),
    ([b"cam0", _with_ref(ring="../../etc/passwd"), bytes(12)], "bad_ref"),
    ([b"cam0", _with_ref(ring="segstream-0a1b2c3d-capture/0-0"), bytes(12)], "bad_ref"),
    ([b"cam0", _with_ref(ring="psql-shm-1"), bytes(12)], "bad_ref"),
    ([b"cam0", _raw("Infinity"), bytes(12)], "bad_json"),
    ([b"cam0", _raw("NaN"), bytes(12)], "bad_json"),
    ([b"cam0", _raw("9" * 5000), bytes(12)], "bad_json"),
    ([b"cam0", _raw("1e400"), bytes(12)], "bad_field"),
    ([b"cam0", _header_bytes(stamps=[["capture", 1, 1e30]]), bytes(12)], "bad_field"),
    ([b"cam0", _header_bytes(capture_ns=-5), bytes(12)], "bad_field"),
    ([b"cam0", _header_bytes(parts=[{"name": "m", "shape": [200000, 200000], "dtype": "uint8", "inline": 0,
                                     "encoding": "rle"}]), b"xxxx"], "bad_part"),
    ([b"cam0", _header_bytes(parts=[{"name": "m", "shape": [60000, 60000], "dtype": "uint8", "inline": 0,
                                     "encoding": "rle"}]), b"xxxx"], "too_large"),
    ([b"cam0", _header_bytes(parts=[{"name": "m", "shape": [2, -1], "dtype": "uint8", "inline": 0}]), b"xx"],
     "bad_part"),
    ([b"cam0", _header_bytes(parts=[{"name": "m", "shape": [1, 1, 1, 1, 1], "dtype": "uint8", "inline": 0}]),
      b"x"], "bad_part"),
    ([b"cam0", _header_bytes(parts="all"), bytes(12)], "bad_part"),
    ([b"cam0", _header_bytes(name="../../x"), bytes(12)], "bad_name"),
    ([b"/abs", _header_bytes(source="/abs"), bytes(12)], "bad_name"),
    ([b"a\x00b", _header_bytes(source="a\u0000b"), bytes(12)], "bad_name"),
    ([b"cam0", _header_bytes(meta={"classification": "car"}), bytes(12)], "bad_meta"),
    ([b"cam0", _header_bytes(meta={"classification": [{"label": 3, "score": 0.5}]}), bytes(12)], "bad_field"),
    ([b"cam0", _header_bytes(meta={"classes": [1, 2]}), bytes(12)], "bad_meta"),
    ([b"cam0", _header_bytes(meta={"classes": {"9" * 5000: 0.5}}), bytes(12)], "bad_meta"),
    ([b"cam0", _header_bytes(meta={"labels": ["road"]}), bytes(12)], "bad_meta"),
    ([b"cam0", _header_bytes(meta={"labels": {"road": "0"}}), bytes(12)], "bad_meta"),
    ([b"cam0", _header_bytes(meta={"labels": {"0": 7}}), bytes(12)], "bad_field"),
    ([b"cam0", _header_bytes(meta={"labels": {"0": "x" * 500}}), bytes(12)], "bad_field"),
    ([b"cam0", _header_bytes(meta={"fps": "fast"}), bytes(12)], "bad_field"),
    ([b"cam0", _header_bytes(meta=[]), bytes(12)], "bad_field"),
    ([b"cam0", _header_bytes(version=True), bytes(12)], "bad_version"),
    ([b"cam0", _header_bytes(), bytes(12), *[b""] * 20], "bad_part"),
    # found by the fuzz suite (tests/test_fuzz.py): unhashable values where a name is expected
    ([b"cam0", _header_bytes(kind={"x": "y"}), bytes(12)], "bad_field"),
    ([b"cam0", _header_bytes(kind=[1]), bytes(12)], "bad_field"),
    ([b"cam0", _header_bytes(meta={"fps": 10**400}), bytes(12)], "bad_field"),
    ([b"cam0", _header_bytes(parts=[{"name": "m", "shape": [2, 6], "dtype": {}, "inline": 0}]), bytes(12)],
     "bad_part"),
    ([b"cam0", _header_bytes(parts=[{"name": "m", "shape": [2, 6], "dtype": "uint8", "inline": 0,
                                     "encoding": []}]), bytes(12)], "bad_part"),
])
def test_hostile_headers_are_refused_with_a_reason_and_nothing_else(frames, reason):
    """Every field with a wrong type, an out-of-range number, NaN/Infinity, a huge shape,
    a reference to another ring or a path, a traversal name: a MessageError with its
    reason, never a ValueError, TypeError or OverflowError from deeper down."""
    with pytest.raises(MessageError) as info:
        decode(frames)
    assert info.value.reason == reason, info.value


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
    got += inbox.receive(500)  # one message a call: the EOS waited in the inbox
    assert [(m.header.kind, m.header.index) for m in got] == [(Kind.RESULT, 4), (Kind.EOS, -1)]
    assert skipped["superseded"] == 4 and len(inbox.superseded) == 4
    push.close(0)
    pull.close(0)
    ctx.term()


def _burst_inbox(catch_up: CatchUp, frames: int, fps: float = 30.0) -> tuple[list[Message], SkipCounter]:
    """A live inbox that finds ``frames`` frames of one source and an EOS waiting."""
    ctx = zmq.Context()
    push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    pull.bind("inproc://burst-test")
    push.connect("inproc://burst-test")
    for i in range(frames):
        m = _frame_message()
        m.header.index = i
        m.header.meta["fps"] = fps
        push.send_multipart(encode(m))
    push.send_multipart(encode(eos("cam0")))
    skipped = SkipCounter()
    inbox = Inbox(pull, FlowPolicy.LIVE, skipped, catch_up)
    got: list[Message] = []
    for _ in range(50):  # until the EOS (the last message) is in
        got += inbox.receive(100)
        if got and got[-1].header.kind is Kind.EOS:
            break
    push.close(0)
    pull.close(0)
    ctx.term()
    return got, skipped


def test_live_inbox_takes_a_burst_a_fast_stage_can_clear_and_only_the_newest_for_a_slow_one():
    fast = CatchUp(warm_up_s=0)
    for _ in range(20):
        fast.note(5_000_000)  # 5 ms a frame, sources at 30 fps: four frames in two intervals
    got, skipped = _burst_inbox(fast, 3)
    assert [m.header.index for m in got] == [0, 1, 2, -1]
    assert skipped["superseded"] == 0
    got, skipped = _burst_inbox(fast, 7)  # never more than CATCH_UP_MAX at once, the newest
    assert [m.header.index for m in got] == [*range(7 - CATCH_UP_MAX, 7), -1]
    assert skipped["superseded"] == 7 - CATCH_UP_MAX
    slow = CatchUp(warm_up_s=0)
    for _ in range(20):
        slow.note(300_000_000)  # a 300 ms model
    got, skipped = _burst_inbox(slow, 5, fps=25.0)
    assert [m.header.index for m in got] == [4, -1]
    assert skipped["superseded"] == 4


def test_a_live_inbox_hands_a_burst_out_one_by_one_and_judges_the_rest_by_the_newest_cost():
    """Behind a stage's first frame (its set-up) frames queue and nothing is measured: the
    burst is taken for the time being, and once one of them is measured a fast stage keeps
    the rest while a slow one drops them down to the newest."""
    for cost_ns, kept in ((5_000_000, [1, 2, 3, 4, 5, 6]), (300_000_000, [1, 6])):
        catch_up = CatchUp(warm_up_s=0)
        catch_up.note(1_000_000_000)  # the first frame opened everything: not counted
        ctx = zmq.Context()
        push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
        pull.bind("inproc://one-by-one")
        push.connect("inproc://one-by-one")
        for i in range(1, 7):
            m = _frame_message()
            m.header.index = i
            m.header.meta["fps"] = 30.0
            push.send_multipart(encode(m))
        push.send_multipart(encode(eos("cam0")))
        skipped = SkipCounter()
        inbox = Inbox(pull, FlowPolicy.LIVE, skipped, catch_up)
        got: list[Message] = []
        time.sleep(0.05)  # all of it queued, as behind a slow first frame
        for _ in range(50):
            batch = inbox.receive(100)
            assert len(batch) <= 1  # one at a time
            for m in batch:
                got.append(m)
                if m.header.kind is not Kind.EOS:
                    catch_up.note(cost_ns)  # the stage processed it
            if got and got[-1].header.kind is Kind.EOS:
                break
        push.close(0)
        pull.close(0)
        ctx.term()
        assert [m.header.index for m in got] == [*kept, -1], cost_ns
        assert skipped["superseded"] == 6 - len(kept)
        assert [m.header.index for m in inbox.superseded] == [i for i in range(1, 7) if i not in kept]


@pytest.mark.parametrize("fps", [None, "30", float("nan"), -5.0, 1e12, True])
def test_catch_up_takes_a_source_rate_it_cannot_read_as_the_default(fps):
    catch_up = CatchUp(warm_up_s=0)
    for _ in range(20):
        catch_up.note(20_000_000)  # 20 ms a frame: three in two intervals at the default 30 fps
    assert catch_up.allowance(fps, burst=9) == 3


def test_catch_up_shares_the_budget_among_the_sources_of_a_burst():
    catch_up = CatchUp(warm_up_s=0)
    for _ in range(20):
        catch_up.note(10_000_000)  # 10 ms a frame at 30 fps: six in two intervals, for all sources
    assert catch_up.allowance(30.0, burst=9) == CATCH_UP_MAX
    assert catch_up.allowance(30.0, burst=9, sharing=2) == 3
    assert catch_up.allowance(30.0, burst=9, sharing=4) == 1


def test_catch_up_does_not_count_the_first_frame_and_warms_up_on_bursts_it_can_clear():
    catch_up = CatchUp()
    assert catch_up.allowance(30.0, burst=CATCH_UP_MAX) == CATCH_UP_MAX  # behind the set-up
    # longer: taken for the time being (the inbox hands them out one by one and asks again)
    assert catch_up.allowance(30.0, burst=3 * CATCH_UP_MAX) == 2 * CATCH_UP_MAX
    catch_up.note(2_000_000_000)  # the first frame opened everything: not counted
    catch_up.note(10_000_000)
    assert catch_up.allowance(30.0, burst=6) == 6  # warming up, keeping up
    slow = CatchUp()
    slow.note(1)
    slow.note(400_000_000)
    assert slow.allowance(25.0, burst=3) == 1  # warming up, but slower than its source


def test_catch_up_keeps_warming_up_for_the_first_seconds_of_a_stage():
    """Every process of a run warms up at once, so a live stage's first second costs more
    than the rest (render at 1080p: 20-45 ms an overlay, then 8-12): bursts it can clear are
    taken whole for ``warm_up_s`` after its first frame, however many frames it measured."""
    now = [100.0]
    catch_up = CatchUp(warm_up_s=2.0, clock=lambda: now[0])
    for _ in range(40):
        catch_up.note(25_000_000)  # 25 ms a frame at 30 fps: two frames in two intervals
    now[0] += 1.5
    assert catch_up.allowance(30.0, burst=7) == 7  # still warming up
    assert catch_up.allowance(30.0, burst=7, sharing=2) == 1  # two sources: it cannot keep up with both
    now[0] += 1.0
    assert catch_up.allowance(30.0, burst=7) == 2  # warmed up: what two intervals hold
    behind = CatchUp(warm_up_s=2.0, clock=lambda: now[0])
    for _ in range(40):
        behind.note(50_000_000)  # slower than its source: a backlog taken now would only grow
    assert behind.allowance(30.0, burst=7) == 1


def test_instances_meta_is_checked_on_receipt():
    import pytest

    from segstream.errors import MessageError
    from segstream.pipeline.wire.messages import Header, Kind, Message, decode, encode

    good = {"id": 1, "class_id": 3, "label": "car", "score": 0.93, "box": [10.0, 20.5, 100, 80]}

    def message(instances: object) -> list:
        return encode(Message(Header(Kind.RESULT, "cam", 0, "000000", 1, 2, meta={"instances": instances})))

    assert decode(message([good])).header.meta["instances"] == [good]
    for bad in ("cars", [good] * 1001, [3], [{**good, "id": 0}], [{**good, "id": True}], [{**good, "score": 1.5}],
                [{**good, "label": "x" * 200}], [{**good, "box": [1, 2, 3]}], [{**good, "box": [1, 2, 3, "4"]}],
                [{**good, "box": [-5, 0, 1, 1]}], [{k: v for k, v in good.items() if k != "class_id"}]):
        with pytest.raises(MessageError):
            decode(message(bad))
