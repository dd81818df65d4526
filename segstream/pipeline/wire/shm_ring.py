"""A shared-memory ring of fixed-size slots, written by one stage and read by others.

Layout of a ring segment (all int64, little endian, then the slot data):

    [magic, slots, slot_bytes, readers, seq[slots], released[MAX_READERS],
     slot_released[MAX_READERS][slots], data]

- The writer puts frame number ``n`` (``seq``, counting from 1 over the writer's life)
  in slot ``n % slots``. Before writing it marks the slot busy (``seq = -1``), after it
  stores ``n``: a seqlock.
- A reader copies the slot and checks ``seq`` before and after; if it changed, the slot
  was reused under it and the read returns None (the caller counts an ``overwritten``
  skip). No locks, no waiting on the reader side.
- Lossless flow: each reader (or group of readers sharing one id, such as several
  inference workers that each get some of the frames) marks what it is done with. The
  writer waits before it reuses a slot until every reader id released the frame that was
  there: either that very frame (``slot_released[reader][slot]``) or, for a reader that
  sees every frame in order, a later one (``released[reader]``, a watermark that also
  covers frames a stage in between dropped). Live flow: the writer never waits.

Segments are named ``segstream-<run>-<stage>-<k>`` so a supervisor can sweep what a
killed stage left behind (``shm_segments.sweep``).
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import numpy as np

from segstream.pipeline.wire.messages import Part, ShmRef
from segstream.pipeline.wire.shm_segments import Segment, check_room, unlink_segment

logger = logging.getLogger(__name__)

MAGIC = 0x53454753545245  # "SEGSTRE"
MAX_READERS = 8
_FIXED = 4
_ALIGN = 64
WAIT_MIN_S = 0.0002  # a writer waiting for a free slot polls from this interval...
WAIT_MAX_S = 0.005  # ...backing off to this one


def _control_bytes(slots: int) -> int:
    return (_FIXED + slots + MAX_READERS + MAX_READERS * slots) * 8


class _Segment:
    """One mapped ring segment and numpy views of its control block."""

    def __init__(self, shm: Segment) -> None:
        self.shm = shm
        if shm.size < _FIXED * 8:
            raise ValueError(f"shared memory {shm.name} is too small to be a segstream ring")
        head = np.ndarray((_FIXED,), np.int64, shm.buf, 0)
        if int(head[0]) != MAGIC:
            raise ValueError(f"shared memory {shm.name} is not a segstream ring")
        self.slots, self.slot_bytes, self.readers = int(head[1]), int(head[2]), int(head[3])
        control = _control_bytes(self.slots)
        self.data_offset = (control + _ALIGN - 1) // _ALIGN * _ALIGN
        if not 0 < self.slots <= 1 << 16 or self.slot_bytes < 0 or \
                self.data_offset + self.slots * self.slot_bytes > shm.size:
            raise ValueError(f"shared memory {shm.name} does not hold the ring its header describes")
        self.seq = np.ndarray((self.slots,), np.int64, shm.buf, _FIXED * 8)
        self.released = np.ndarray((MAX_READERS,), np.int64, shm.buf, (_FIXED + self.slots) * 8)
        self.slot_released = np.ndarray((MAX_READERS, self.slots), np.int64, shm.buf,
                                        (_FIXED + self.slots + MAX_READERS) * 8)

    def slot_view(self, slot: int, part: Part) -> np.ndarray:
        offset = self.data_offset + slot * self.slot_bytes
        return np.ndarray(part.shape, part.dtype, self.shm.buf, offset)

    def close(self) -> None:
        self.seq = self.released = self.slot_released = None  # type: ignore[assignment]
        try:
            self.shm.close()
        except BufferError:
            logger.debug("segment %s still has views; left mapped until exit", self.shm.name)


def _same_buffer(array: np.ndarray, view: np.ndarray) -> bool:
    """Whether ``array`` is exactly ``view``'s memory (same start, shape and type)."""
    return (array.shape == view.shape and array.dtype == view.dtype and array.flags.c_contiguous
            and array.__array_interface__["data"][0] == view.__array_interface__["data"][0])


class RingWriter:
    """The writing side: owns its segments and unlinks them on close.

    Args:
        name: segment name prefix, ``segstream-<run>-<stage>``.
        slots: number of slots.
        readers: how many readers release frames (``RingReader.release``).
        wait: wait for every reader to release a frame before its slot is reused
            (lossless flow); live flow overwrites.
    """

    def __init__(self, name: str, slots: int = 8, readers: int = 0, wait: bool = True) -> None:
        if readers > MAX_READERS:
            raise ValueError(f"at most {MAX_READERS} readers per ring, asked for {readers}")
        self.name = name
        self.slots = slots
        self.readers = readers
        self.wait = wait and readers > 0
        self._segment: _Segment | None = None
        self._owned: list[Segment] = []
        self._seq = 0
        self._reserved: tuple[_Segment, int, np.ndarray] | None = None  # reserve()d, not yet published
        self.in_place = 0  # frames published where reserve() handed them out (no copy)
        self.last_wait_ns = 0  # how long the last put (or reserve) waited for a free slot

    def _new_segment(self, slot_bytes: int) -> _Segment:
        slot_bytes = (slot_bytes + _ALIGN - 1) // _ALIGN * _ALIGN
        control = _control_bytes(self.slots)
        size = (control + _ALIGN - 1) // _ALIGN * _ALIGN + self.slots * slot_bytes
        check_room(size)
        shm = Segment(f"{self.name}-{len(self._owned)}", create=True, size=size)
        self._owned.append(shm)
        head = np.ndarray((_FIXED,), np.int64, shm.buf, 0)
        head[:] = (MAGIC, self.slots, slot_bytes, self.readers)
        segment = _Segment(shm)
        segment.seq[:] = 0
        segment.slot_released[:] = 0
        # Everything before the first frame of this segment counts as released.
        segment.released[:] = self._seq
        logger.debug("created ring %s: %d slots of %d bytes", shm.name, self.slots, slot_bytes)
        return segment

    def put(self, name: str, array: np.ndarray, stop: Callable[[], bool] = lambda: False) -> Part | None:
        """Copy ``array`` into the next slot and return the part that references it; if
        ``array`` is the slot ``reserve`` handed out, publish it as it is (no copy).

        In lossless flow (``readers > 0``) this waits until the slot is free; returns
        None only if ``stop()`` turned true while waiting.
        """
        array = np.asarray(array)
        if self._reserved is not None:
            seg, slot, view = self._reserved
            if _same_buffer(array, view):
                self._reserved = None
                self.last_wait_ns = 0  # reserve() counted the wait
                self.in_place += 1
                return self._publish(seg, slot, name, view.shape, view.dtype)
        return self.put_with(name, array.shape, array.dtype, lambda slot: np.copyto(slot, array), stop)

    def put_with(self, name: str, shape: tuple[int, ...], dtype: np.dtype | str,
                 fill: Callable[[np.ndarray], object], stop: Callable[[], bool] = lambda: False) -> Part | None:
        """Let ``fill`` write an array of ``shape`` and ``dtype`` straight into the next
        slot (no copy of a finished array) and return the part that references it.

        Waits for a free slot like ``put``; returns None only if ``stop()`` turned true
        while waiting. A ``fill`` that raises leaves the slot marked busy and unpublished.
        """
        self.abandon()
        taken = self._take_slot(shape, dtype, stop)
        if taken is None:
            return None
        seg, slot, view = taken
        fill(view)
        return self._publish(seg, slot, name, view.shape, view.dtype)

    def reserve(self, shape: tuple[int, ...], dtype: np.dtype | str,
                stop: Callable[[], bool] = lambda: False) -> np.ndarray | None:
        """The next slot as a writable array, for a producer to fill in place (a decoder
        writing its frame straight into shared memory); ``put`` of that very array then
        publishes it without a copy.

        Waits for a free slot like ``put``; None if ``stop()`` turned true while waiting.
        The slot reads as busy until it is published. Asked again before that, the same
        slot comes back (for a frame that could not be decoded into it, say) if it fits;
        ``abandon`` gives it up.
        """
        if self._reserved is not None:
            view = self._reserved[2]
            if view.shape == tuple(shape) and view.dtype == np.dtype(dtype) and self._reserved[0] is self._segment:
                return view
            self.abandon()
        self._reserved = self._take_slot(shape, dtype, stop)
        return None if self._reserved is None else self._reserved[2]

    def abandon(self) -> None:
        """Give up a reserved slot that was not published: it reads as empty again."""
        if self._reserved is not None:
            seg, slot, _ = self._reserved
            self._reserved = None
            if seg.seq is not None:
                seg.seq[slot] = 0

    def _take_slot(self, shape: tuple[int, ...], dtype: np.dtype | str,
                   stop: Callable[[], bool]) -> tuple[_Segment, int, np.ndarray] | None:
        """The next slot, waited for in lossless flow and marked busy, as an array of
        ``shape`` and ``dtype``; None if ``stop()`` turned true while waiting."""
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if self._segment is None or nbytes > self._segment.slot_bytes:
            # First frame, or a bigger one: a new segment (old ones stay until close,
            # readers may still hold references into them).
            self._segment = self._new_segment(int(nbytes * 1.25) + _ALIGN)
        seg = self._segment
        slot = (self._seq + 1) % self.slots
        self.last_wait_ns = 0
        if self.wait and not self._slot_free(seg, slot):
            waited_from = time.monotonic_ns()
            pause = WAIT_MIN_S
            while not self._slot_free(seg, slot):
                if stop():
                    return None
                time.sleep(pause)
                pause = min(pause * 2, WAIT_MAX_S)  # back off: waiting must not eat the cores
            self.last_wait_ns = time.monotonic_ns() - waited_from
        seg.seq[slot] = -1
        return seg, slot, np.ndarray(tuple(shape), dtype, seg.shm.buf, seg.data_offset + slot * seg.slot_bytes)

    def _publish(self, seg: _Segment, slot: int, name: str, shape: tuple[int, ...], dtype: np.dtype) -> Part:
        self._seq += 1
        seg.seq[slot] = self._seq
        return Part(name, tuple(shape), dtype.name, ref=ShmRef(seg.shm.name, slot, self._seq))

    def withdraw(self, part: Part) -> None:
        """Take back a frame that was written but will never be sent (the stage dropped it
        after writing): its slot reads as empty, so no reader is waited for. Lossless flow
        needs it, since nobody will ever release a frame they never heard of; a frame
        whose slot was reused since is left alone."""
        seg = self._segment
        ref = part.ref
        if seg is None or ref is None or ref.ring != seg.shm.name or not 0 <= ref.slot < seg.slots:
            return
        if int(seg.seq[ref.slot]) == ref.seq:
            seg.seq[ref.slot] = 0

    def _slot_free(self, seg: _Segment, slot: int) -> bool:
        occupant = int(seg.seq[slot])
        for reader in range(self.readers):
            if seg.released[reader] < occupant and seg.slot_released[reader, slot] < occupant:
                return False
        return True

    def close(self, unlink: bool = True) -> None:
        """Unmap every segment this writer created and unlink them (unless a supervisor
        will sweep them once the readers are done: ``unlink=False``)."""
        self.abandon()
        if self._segment is not None:
            self._segment.close()
            self._segment = None
        for shm in self._owned:
            try:
                shm.close()
            except BufferError:
                pass
            if unlink:
                unlink_segment(shm.name)
        self._owned.clear()


class RingReader:
    """The reading side: attaches segments by name as references arrive.

    Args:
        reader_id: this reader's index in the rings' release tables, or None for a
            reader that does not take part in lossless flow control.
        in_order: this reader sees every frame of the ring, in order (so releasing one
            frame releases every earlier one). False for one of several workers sharing
            a reader id.
    """

    def __init__(self, reader_id: int | None = None, in_order: bool = True) -> None:
        self.reader_id = reader_id
        self.in_order = in_order
        self._segments: dict[str, _Segment] = {}

    def _segment(self, ring: str) -> _Segment | None:
        seg = self._segments.get(ring)
        if seg is None:
            try:
                shm = Segment(ring)
            except (OSError, ValueError):
                return None
            try:
                seg = _Segment(shm)
            except ValueError:  # not a segstream ring
                shm.close()
                return None
            self._forget_older_incarnations(ring)
            self._segments[ring] = seg
        return seg

    def _forget_older_incarnations(self, segment: str) -> None:
        """A restarted writer's ring was attached: unmap its dead predecessors' segments
        (``<run>-<stage>[.rN]-<k>``; the same stage, another incarnation), which no frame
        will reference again, so that restarts do not pile up mappings."""
        ring = segment.rsplit("-", 1)[0]
        stage = ring.split(".r", 1)[0]
        for other in list(self._segments):
            other_ring = other.rsplit("-", 1)[0]
            if other_ring != ring and other_ring.split(".r", 1)[0] == stage:
                self.forget(other)

    def view(self, part: Part) -> np.ndarray | None:
        """The referenced array in place, read-only, without a copy; None if the slot was
        reused already.

        In lossless flow the writer does not reuse the slot before this reader releases
        it, so the view holds until ``release``. In live flow it may reuse it at any time:
        check ``intact`` once done with the view, and drop what was made from it if not.
        """
        assert part.ref is not None
        seg = self._segment(part.ref.ring)
        if seg is None or part.nbytes > seg.slot_bytes or not 0 <= part.ref.slot < seg.slots:
            return None
        if int(seg.seq[part.ref.slot]) != part.ref.seq:
            return None
        view = seg.slot_view(part.ref.slot, part)
        view.flags.writeable = False
        return view

    def slots(self, part: Part) -> int:
        """How many slots the referenced ring has (0 if it cannot be attached)."""
        assert part.ref is not None
        seg = self._segment(part.ref.ring)
        return 0 if seg is None else seg.slots

    def intact(self, part: Part) -> bool:
        """Whether the referenced slot still holds the frame (it was not reused)."""
        assert part.ref is not None
        seg = self._segments.get(part.ref.ring)
        return seg is not None and 0 <= part.ref.slot < seg.slots and int(seg.seq[part.ref.slot]) == part.ref.seq

    def read(self, part: Part, out: np.ndarray | None = None) -> np.ndarray | None:
        """A private copy of the referenced array, or None if the slot was reused.

        ``out``, if given and of the right shape and dtype, receives the copy.
        """
        view = self.view(part)
        if view is None:
            return None
        if out is not None and out.shape == view.shape and out.dtype == view.dtype:
            np.copyto(out, view)
        else:
            out = view.copy()
        return out if self.intact(part) else None

    def release(self, part: Part) -> None:
        """Tell the writer this reader is done with the frame (and every earlier one)."""
        if self.reader_id is None or part.ref is None:
            return
        seg = self._segment(part.ref.ring)
        if seg is None or not 0 <= part.ref.slot < seg.slots:
            return
        ref = part.ref
        if ref.seq > int(seg.slot_released[self.reader_id, ref.slot]):
            seg.slot_released[self.reader_id, ref.slot] = ref.seq
        if self.in_order and ref.seq > int(seg.released[self.reader_id]):
            seg.released[self.reader_id] = ref.seq

    def forget(self, ring: str) -> None:
        """Unmap segment ``ring`` (its writer is gone or done with this reader); a later
        reference to it attaches it again."""
        seg = self._segments.pop(ring, None)
        if seg is not None:
            seg.close()

    def close(self) -> None:
        """Unmap every attached segment (never unlinks: the writer owns them)."""
        for seg in self._segments.values():
            seg.close()
        self._segments.clear()
