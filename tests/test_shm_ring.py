"""Shared-memory rings: references, reuse detection, lossless credits, clean-up."""

from __future__ import annotations

import os
import secrets
import threading
import time
from typing import Callable

import numpy as np
import pytest

from segstream.pipeline.wire.messages import Header, Kind, Message, Part, ShmRef
from segstream.pipeline.wire.payloads import PayloadMode, PayloadReader, PayloadWriter
from segstream.pipeline.wire.shm_ring import RingReader, RingWriter
from segstream.pipeline.wire.shm_segments import sweep


@pytest.fixture
def ring_name():
    name = f"segstream-test{secrets.token_hex(3)}-stage"
    yield name
    sweep(name)


def _shm_names(prefix: str) -> list[str]:
    return sorted(n for n in os.listdir("/dev/shm") if n.startswith(prefix))


def test_reader_gets_a_copy_of_what_was_written(ring_name):
    writer = RingWriter(ring_name, slots=4)
    reader = RingReader()
    data = np.random.default_rng(0).integers(0, 255, (540, 960, 3), dtype=np.uint8)
    part = writer.put("frame", data)
    out = reader.read(part)
    np.testing.assert_array_equal(out, data)
    assert out.base is None or not np.shares_memory(out, data)
    reader.close()
    writer.close()
    assert _shm_names(ring_name) == []


def test_overwritten_slot_reads_as_none_in_live_flow(ring_name):
    writer = RingWriter(ring_name, slots=2, readers=1, wait=False)
    reader = RingReader(0)
    first = writer.put("frame", np.zeros(10, np.uint8))
    writer.put("frame", np.ones(10, np.uint8))
    writer.put("frame", np.full(10, 2, np.uint8))  # reuses the first slot
    assert reader.read(first) is None
    reader.close()
    writer.close()


def test_lossless_writer_waits_for_every_reader(ring_name):
    writer = RingWriter(ring_name, slots=2, readers=2, wait=True)
    a, b = RingReader(0), RingReader(1)
    parts = [writer.put("x", np.full(4, i, np.uint8)) for i in range(2)]
    done = threading.Event()

    def third() -> None:
        parts.append(writer.put("x", np.full(4, 2, np.uint8)))
        done.set()

    thread = threading.Thread(target=third)
    thread.start()
    time.sleep(0.1)
    assert not done.is_set()  # slot of frame 0 not released yet
    a.release(parts[0])
    time.sleep(0.1)
    assert not done.is_set()  # reader b still holds it
    np.testing.assert_array_equal(b.read(parts[0]), np.zeros(4, np.uint8))
    b.release(parts[0])
    assert done.wait(2)
    thread.join()
    np.testing.assert_array_equal(a.read(parts[2]), np.full(4, 2, np.uint8))
    a.close()
    b.close()
    writer.close()


def test_waiting_writer_gives_up_on_stop(ring_name):
    writer = RingWriter(ring_name, slots=1, readers=1, wait=True)
    writer.put("x", np.zeros(4, np.uint8))
    assert writer.put("x", np.zeros(4, np.uint8), stop=lambda: True) is None
    writer.close()


def test_bigger_frames_get_a_new_segment_and_old_references_stay_readable(ring_name):
    writer = RingWriter(ring_name, slots=4)
    reader = RingReader()
    small = writer.put("frame", np.full((10, 10, 3), 7, np.uint8))
    big = writer.put("frame", np.full((100, 100, 3), 9, np.uint8))
    assert small.ref.ring != big.ref.ring
    assert reader.read(small)[0, 0, 0] == 7 and reader.read(big)[0, 0, 0] == 9
    reader.close()
    writer.close()
    assert _shm_names(ring_name) == []


def test_sweep_removes_what_a_dead_writer_left(ring_name):
    writer = RingWriter(ring_name, slots=2)
    writer.put("x", np.zeros(16, np.uint8))
    writer.close(unlink=False)
    assert _shm_names(ring_name)
    assert sweep(ring_name) and _shm_names(ring_name) == []


@pytest.mark.parametrize("mode", list(PayloadMode))
def test_payloads_shm_and_inline_share_one_api(ring_name, mode):
    writer = PayloadWriter(mode, ring_name, readers=1)
    reader = PayloadReader(0)
    message = Message(Header(Kind.FRAME, "cam0", 0, "000000", 1, 1))
    data = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    assert writer.add(message, "tensor", data)
    expected = data.copy()
    data[:] = -1  # the caller reuses its buffer for the next frame before the message is sent
    np.testing.assert_array_equal(reader.get(message, "tensor"), expected)
    data = expected
    forwarded = Message(Header(Kind.RESULT, "cam0", 0, "000000", 1, 1))
    reader.forward(message, forwarded, "tensor")
    np.testing.assert_array_equal(reader.get(forwarded, "tensor"), data)
    with pytest.raises(KeyError, match="has no part 'frame'"):
        reader.get(message, "frame")
    reader.close()
    writer.close()


def test_parallel_workers_sharing_a_reader_id_release_their_own_frames(ring_name):
    """Workers that each get some frames release per slot; none can release another's."""
    writer = RingWriter(ring_name, slots=2, readers=1, wait=True)
    worker_a, worker_b = RingReader(0, in_order=False), RingReader(0, in_order=False)
    first = writer.put("x", np.zeros(4, np.uint8))  # to worker a
    second = writer.put("x", np.ones(4, np.uint8))  # to worker b
    worker_b.read(second)
    worker_b.release(second)  # b is done with frame 2; frame 1 is still a's
    assert writer.put("x", np.zeros(4, np.uint8), stop=lambda: True) is None  # slot of frame 1 still busy
    worker_a.read(first)
    worker_a.release(first)
    assert writer.put("x", np.zeros(4, np.uint8)) is not None
    worker_a.close()
    worker_b.close()
    writer.close()


def test_a_view_reads_in_place_read_only_and_tells_when_the_writer_reused_the_slot(ring_name):
    writer = RingWriter(ring_name, slots=2, readers=1, wait=False)  # live flow: the writer never waits
    reader = RingReader(0)
    data = np.random.default_rng(1).integers(0, 255, (4, 6, 3), dtype=np.uint8)
    part = writer.put("frame", data)
    view = reader.view(part)
    np.testing.assert_array_equal(view, data)
    assert not view.flags.writeable  # nobody writes into another stage's ring
    with pytest.raises(ValueError):
        view[0, 0, 0] = 1
    assert reader.intact(part)
    writer.put("frame", data)
    writer.put("frame", np.zeros_like(data))  # reuses the viewed slot: the view now shows another frame
    assert not reader.intact(part) and reader.view(part) is None
    np.testing.assert_array_equal(view, 0)  # in place indeed: what was made from it must be dropped
    del view
    reader.close()
    writer.close()


def test_a_lossless_view_holds_until_released(ring_name):
    writer = RingWriter(ring_name, slots=2, readers=1, wait=True)
    reader = RingReader(0)
    first = writer.put("frame", np.full(8, 7, np.uint8))
    view = reader.view(first)
    writer.put("frame", np.ones(8, np.uint8))
    stopped = []
    assert writer.put("frame", np.zeros(8, np.uint8), lambda: stopped.append(1) or len(stopped) > 20) is None
    np.testing.assert_array_equal(view, 7)  # the writer waited instead of reusing the slot
    assert reader.intact(first)
    reader.release(first)
    assert writer.put("frame", np.zeros(8, np.uint8)) is not None
    del view
    reader.close()
    writer.close()


@pytest.mark.parametrize("mode", list(PayloadMode))
def test_add_with_lets_the_producer_write_straight_into_the_payload(ring_name, mode):
    writer = PayloadWriter(mode, ring_name, readers=1)
    reader = PayloadReader(0)
    message = Message(Header(Kind.TENSOR, "cam0", 0))
    slots = []

    def fill(slot: np.ndarray) -> None:
        slots.append(slot)
        slot[:] = np.arange(6, dtype=np.float32).reshape(2, 3)

    assert writer.add_with(message, "input", (2, 3), np.float32, fill)
    got = reader.view(message, "input")
    np.testing.assert_array_equal(got, np.arange(6, dtype=np.float32).reshape(2, 3))
    slots[0][0, 0] = 42.0  # no copy in between: the reader sees where the producer wrote
    assert got[0, 0] == 42.0
    assert reader.intact(message, "input")
    reader.release(message, "input")
    got = slots[0] = None
    reader.close()
    writer.close()


def test_a_dead_readers_lost_frames_are_released_for_the_readers_behind_it_too(ring_name):
    """Capture's ring, read by preprocess (0) and render (1, which gets frames only through
    preprocess). Preprocess dies holding frames 3 and 4: they will never reach render, so
    they are released for render too; frames 1 and 2, already past preprocess, stay held
    for render (it is still to draw them). Found by the chaos test: without it, a ring full
    of such frames stalled the run."""
    from segstream.pipeline.wire.ring_recovery import release_everything

    writer = RingWriter(ring_name, slots=4, readers=2, wait=True)
    preprocess, render = RingReader(0), RingReader(1)
    parts = [writer.put("frame", np.full(4, k, np.uint8)) for k in range(4)]  # seqs 1-4, the ring is full
    preprocess.release(parts[1])  # preprocess passed frames 1 and 2 on (in order: 2 covers 1)
    assert release_everything(f"{ring_name}", 0, downstream=(1,)) == 1
    def give_up() -> Callable[[], bool]:  # a put that would wait for good ends instead
        tries = iter(range(50))
        return lambda: next(tries, 49) >= 49

    assert writer.put("frame", np.zeros(4, np.uint8), give_up()) is None  # frame 1's slot: render holds it
    render.release(parts[1])  # render draws frames 1 and 2
    assert [writer.put("frame", np.zeros(4, np.uint8), give_up()) is not None for _ in range(4)] == [True] * 4
    preprocess.close()
    render.close()
    writer.close()


def test_a_withdrawn_frame_holds_no_slot_and_reads_as_gone(ring_name):
    """A stage that wrote its output and then dropped the frame (its input was torn
    meanwhile) never sends the reference: nobody will release it. Withdrawing the frame
    frees the slot; without it a lossless writer waits for it for good (found by the chaos
    test: a restarted preprocess stalled on its first frame)."""
    writer = RingWriter(ring_name, slots=2, readers=1, wait=True)
    reader = RingReader(0, in_order=False)
    dropped = writer.put("x", np.zeros(4, np.uint8))
    writer.withdraw(dropped)
    assert reader.view(dropped) is None and not reader.intact(dropped)
    second = writer.put("x", np.ones(4, np.uint8))
    reader.release(second)
    give_up = iter(range(50))
    assert all(writer.put("x", np.zeros(4, np.uint8), lambda: next(give_up, 49) >= 49) is not None
               for _ in range(2))  # frame 1's slot was free again, frame 2's was released
    writer.withdraw(dropped)  # long since reused: withdrawing it again changes nothing
    assert int(writer._segment.seq[dropped.ref.slot]) == 3
    reader.close()
    writer.close()


@pytest.mark.parametrize("mode", list(PayloadMode))
def test_a_payload_writer_withdraws_the_parts_it_added(ring_name, mode):
    writer = PayloadWriter(mode, ring_name, readers=1)
    reader = PayloadReader(0)
    message = Message(Header(Kind.TENSOR, "cam0", 0))
    carried = Part("frame", (4,), "uint8", ref=ShmRef("segstream-someone-else-0", 0, 7))
    message.header.parts.append(carried)  # forwarded from upstream: not this writer's to withdraw
    assert writer.add(message, "input", np.ones((2, 3), np.float32))
    writer.withdraw(message, "input")
    writer.withdraw(message, "input")  # gone already: nothing happens
    assert message.header.parts == [carried]
    if mode is PayloadMode.SHM:
        assert int(writer._ring._segment.seq[1]) == 0  # the slot reads as empty
    reader.close()
    writer.close()


def test_a_reserved_slot_is_published_as_it_is_without_a_copy(ring_name):
    writer = RingWriter(ring_name, slots=8, readers=1, wait=True)
    reader = RingReader(0)
    slot = writer.reserve((4, 6, 3), np.uint8)
    slot[:] = 9  # a decoder writing its frame in place
    assert writer.reserve((4, 6, 3), np.uint8) is slot  # asked again before it is published: the same slot
    part = writer.put("frame", slot)
    assert writer.in_place == 1 and part.ref is not None
    view = reader.view(part)
    assert (view == 9).all()
    slot[0, 0, 0] = 1  # the reader's view is that very memory: the frame was not copied
    assert view[0, 0, 0] == 1
    # Something else than the reserved slot is copied as ever; the reservation is given up
    other = writer.reserve((4, 6, 3), np.uint8)
    copied = writer.put("frame", np.full((4, 6, 3), 5, np.uint8))
    assert writer.in_place == 1 and (reader.view(copied) == 5).all()
    assert copied.ref.slot == (part.ref.slot + 1) % 8
    other[0, 0, 0] = 2  # into the slot that was reserved
    assert reader.view(copied)[0, 0, 0] == 2
    # An array made from the reserved slot (flipped) is copied into that same slot right
    # (numpy copies overlapping memory through a buffer)
    flipped = writer.reserve((4, 6, 3), np.uint8)
    flipped[:] = np.arange(72, dtype=np.uint8).reshape(4, 6, 3)
    want = flipped[:, ::-1].copy()
    np.testing.assert_array_equal(reader.view(writer.put("frame", flipped[:, ::-1])), want)
    # Another shape gives up the reserved slot and takes the next one of that shape
    writer.reserve((4, 6, 3), np.uint8)
    bigger = writer.reserve((8, 6, 3), np.uint8)
    assert bigger.shape == (8, 6, 3)
    writer.abandon()
    reader.close()
    writer.close()
    assert _shm_names(ring_name) == []


def test_a_reservation_waits_for_a_free_slot_in_lossless_flow_and_gives_up_on_stop(ring_name):
    writer = RingWriter(ring_name, slots=2, readers=1, wait=True)
    reader = RingReader(0)
    parts = [writer.put("x", np.full(4, i, np.uint8)) for i in range(2)]
    assert writer.reserve((4,), np.uint8, stop=lambda: True) is None  # both slots held by the reader
    released = threading.Timer(0.2, reader.release, args=(parts[0],))
    released.start()
    slot = writer.reserve((4,), np.uint8, stop=lambda: False)
    released.join()
    assert slot is not None and writer.last_wait_ns > 0
    assert reader.view(parts[0]) is None  # the reserved slot reads as busy, not as the old frame
    assert (reader.view(parts[1]) == 1).all()
    writer.abandon()  # never published: the slot is free again, and empty
    reader.release(parts[1])
    assert (reader.view(writer.put("x", np.full(4, 7, np.uint8))) == 7).all()
    reader.close()
    writer.close()


@pytest.mark.parametrize("mode", [PayloadMode.SHM, PayloadMode.INLINE])
def test_a_payload_writer_reserves_a_slot_only_where_arrays_travel_by_shared_memory(ring_name, mode):
    writer = PayloadWriter(mode, ring_name, readers=1, slots=4)
    reader = PayloadReader(0)
    slot = writer.reserve((5, 5), np.uint16)
    if mode is PayloadMode.INLINE:
        assert slot is None
        slot = np.empty((5, 5), np.uint16)
    slot[:] = 300
    message = Message(Header(Kind.FRAME, "cam", 0))
    assert writer.add(message, "frame", slot)
    assert writer.in_place == (1 if mode is PayloadMode.SHM else 0)
    assert (reader.get(message, "frame") == 300).all()
    reader.close()
    writer.close()


def test_a_reader_unmaps_the_ring_of_a_writer_that_was_restarted(ring_name):
    """Each restart of an upstream stage left its dead incarnation's ring mapped in every
    reader for the rest of the run (the soak saw render and preprocess grow at a kill)."""
    data = np.zeros((48, 64, 3), np.uint8)
    reader = RingReader()
    first, other = RingWriter(ring_name, slots=2), RingWriter(ring_name + "x", slots=2)  # another stage
    assert reader.read(first.put("frame", data)) is not None and reader.read(other.put("frame", data)) is not None
    assert len(reader._segments) == 2
    restarted = RingWriter(f"{ring_name}.r1", slots=2)
    assert reader.read(restarted.put("frame", data)) is not None
    mapped = sorted(reader._segments)
    assert mapped == sorted([f"{ring_name}.r1-0", f"{ring_name}x-0"]), mapped  # the dead one let go, not the other
    reader.close()
    for writer in (first, other, restarted):
        writer.close()
