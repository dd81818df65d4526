"""One API for array payloads, whether they travel by shared-memory reference or inline.

On one host a stage writes arrays into its ``RingWriter`` and the message carries only a
reference; across hosts (tcp:// endpoints) the bytes travel in the message. Stages call
``PayloadWriter.add`` and ``PayloadReader.get`` and never look at which one is used.
"""

from __future__ import annotations

import logging
from enum import Enum
from typing import Callable

import numpy as np

from segstream.pipeline.wire.messages import Message, Part, inline_array
from segstream.pipeline.wire.shm_ring import RingReader, RingWriter

logger = logging.getLogger(__name__)


class PayloadMode(str, Enum):
    """How a stage ships the arrays it produces."""

    SHM = "shm"
    INLINE = "inline"


def mode_for_endpoint(endpoint: str, requested: str = "auto") -> PayloadMode:
    """Shared memory for ipc:// (same host), inline otherwise, unless ``requested`` says."""
    if requested != "auto":
        return PayloadMode(requested)
    return PayloadMode.SHM if endpoint.startswith(("ipc://", "inproc://")) else PayloadMode.INLINE


class PayloadWriter:
    """Adds arrays to outgoing messages.

    Args:
        mode: shared memory or inline.
        ring_name: segment name prefix for shared memory.
        readers: readers of this ring that release what they read.
        slots: ring slots.
        lossless: wait for the readers before reusing a slot (else overwrite).
    """

    def __init__(self, mode: PayloadMode, ring_name: str, readers: int = 0, slots: int = 8,
                 lossless: bool = True) -> None:
        self.blocked_ns = 0  # total time spent waiting for free slots (flow control)
        self._ring = RingWriter(ring_name, slots, readers, lossless) if mode is PayloadMode.SHM else None

    def add(self, message: Message, name: str, array: np.ndarray, stop: Callable[[], bool] = lambda: False,
            inline: bool = False) -> bool:
        """Attach ``array`` to ``message`` as part ``name``.

        Args:
            message: the outgoing message.
            name: the part's name.
            array: the data (copied, unless it is the slot ``reserve`` handed out).
            stop: ends a wait for a free shared-memory slot.
            inline: put the bytes in the message even on one host (for occasional parts,
                such as ground truth, that must not hold ring slots).

        Returns False only if shared-memory flow control was interrupted by ``stop``.
        """
        if self._ring is not None and not inline:
            part = self._ring.put(name, array, stop)
            self.blocked_ns += self._ring.last_wait_ns
            if part is None:
                return False
            message.header.parts.append(part)
            return True
        # A private copy: the message is sent without copying, after this returns, and the
        # caller may reuse its buffer for the next frame.
        array = np.array(array, order="C", copy=True)
        message.header.parts.append(Part(name, tuple(array.shape), array.dtype.name, inline=len(message.payload)))
        message.payload.append(array)
        return True

    def add_with(self, message: Message, name: str, shape: tuple[int, ...], dtype: np.dtype | str,
                 fill: Callable[[np.ndarray], object], stop: Callable[[], bool] = lambda: False) -> bool:
        """Attach an array of ``shape`` and ``dtype`` that ``fill`` writes in place: straight
        into a shared-memory slot (no copy of a finished array), or into a new array that
        travels inline. Returns False only if a wait for a free slot was ended by ``stop``.
        """
        if self._ring is not None:
            part = self._ring.put_with(name, shape, dtype, fill, stop)
            self.blocked_ns += self._ring.last_wait_ns
            if part is None:
                return False
            message.header.parts.append(part)
            return True
        array = np.empty(shape, dtype)
        fill(array)
        message.header.parts.append(Part(name, tuple(array.shape), array.dtype.name, inline=len(message.payload)))
        message.payload.append(array)
        return True

    def reserve(self, shape: tuple[int, ...], dtype: np.dtype | str,
                stop: Callable[[], bool] = lambda: False) -> np.ndarray | None:
        """A shared-memory slot to produce the next array in (a decoder writing its frame
        straight into it); ``add`` of that very array then sends it without a copy.

        None where arrays travel inline (make your own), or if ``stop`` ended a wait for
        a free slot. See ``RingWriter.reserve``.
        """
        if self._ring is None:
            return None
        view = self._ring.reserve(shape, dtype, stop)
        self.blocked_ns += self._ring.last_wait_ns
        return view

    @property
    def in_place(self) -> int:
        """Arrays sent from the slot ``reserve`` handed out, with no copy."""
        return self._ring.in_place if self._ring is not None else 0

    def abandon(self) -> None:
        """Give up a ``reserve``d slot that will not be sent."""
        if self._ring is not None:
            self._ring.abandon()

    def withdraw(self, message: Message, name: str) -> None:
        """Take part ``name`` back out of ``message``, which will not be sent after all:
        its shared-memory slot is free again at once (in lossless flow nobody would ever
        release it otherwise, and the ring would stall on it)."""
        part = message.header.part(name)
        if part is None:
            return
        message.header.parts.remove(part)
        if self._ring is not None and part.ref is not None:
            self._ring.withdraw(part)

    def close(self, unlink: bool = True) -> None:
        """Close the ring (if any); ``unlink=False`` leaves its segments in place."""
        if self._ring is not None:
            self._ring.close(unlink)


class PayloadReader:
    """Reads arrays out of incoming messages.

    Args:
        reader_id: this stage's index among the lossless readers of upstream rings, or
            None if it takes no part in their flow control.
        in_order: this stage sees every frame of those rings in order (False for one of
            several parallel workers).
    """

    def __init__(self, reader_id: int | None = None, in_order: bool = True) -> None:
        self._rings = RingReader(reader_id, in_order)
        self._sources_of: dict[str, set[str]] = {}  # ring -> the sources whose parts it held

    def get(self, message: Message, name: str, out: np.ndarray | None = None) -> np.ndarray | None:
        """The array of part ``name`` (a private copy for shared memory, written into
        ``out`` when it fits), or None if a shared-memory slot was reused before it could
        be read.

        Raises:
            KeyError: the message has no such part.
        """
        part = self._part(message, name)
        if part.inline is not None:
            return inline_array(part, message.payload)
        return self._rings.read(part, out)

    def _part(self, message: Message, name: str) -> Part:
        part = message.header.part(name)
        if part is None:
            raise KeyError(f"message has no part {name!r}; it has {[p.name for p in message.header.parts]}")
        if part.ref is not None:
            sources = self._sources_of.setdefault(part.ref.ring, set())
            if len(sources) < 2:  # a ring of two sources or more is shared: never forgotten
                sources.add(message.header.source)
        return part

    def forget_source(self, source: str) -> None:
        """``source`` ended: unmap the rings only its parts came in (its capture's), so
        that a service whose sources come and go keeps no mapping of the ones gone."""
        for ring, sources in list(self._sources_of.items()):
            if sources == {source}:
                del self._sources_of[ring]
                self._rings.forget(ring)

    def view(self, message: Message, name: str) -> np.ndarray | None:
        """The array of part ``name`` where it lies, read-only and not copied; None if a
        shared-memory slot was reused before it could be read. Use it, check ``intact``
        (live flow lets the writer reuse the slot at any time), then ``release``.

        Raises:
            KeyError: the message has no such part.
        """
        part = self._part(message, name)
        if part.inline is not None:
            return inline_array(part, message.payload)
        return self._rings.view(part)

    def ring_slots(self, message: Message, name: str) -> int:
        """Slots of the ring that holds part ``name`` (0 for an inline part)."""
        part = self._part(message, name)
        return 0 if part.ref is None else self._rings.slots(part)

    def intact(self, message: Message, name: str) -> bool:
        """Whether what ``view`` returned for part ``name`` is still the frame's (an
        inline part always is; a shared-memory slot may have been reused meanwhile)."""
        part = message.header.part(name)
        return part is not None and (part.inline is not None or self._rings.intact(part))

    def take(self, message: Message, name: str, out: np.ndarray | None = None) -> np.ndarray | None:
        """``get`` then ``release``: for a stage that is done with the slot once it has
        its copy. None if the slot was reused first."""
        array = self.get(message, name, out)
        self.release(message, name)
        return array

    def release(self, message: Message, name: str) -> None:
        """Done with part ``name``: lets a lossless writer reuse its slot."""
        part = message.header.part(name)
        if part is not None:
            self._rings.release(part)

    def forward(self, source: Message, target: Message, *names: str) -> None:
        """Carry the parts ``names`` of ``source`` (those it has) into ``target``
        unchanged, without copying."""
        for name in names:
            part = source.header.part(name)
            if part is None:
                continue
            if part.inline is not None:
                target.header.parts.append(Part(part.name, part.shape, part.dtype, inline=len(target.payload)))
                target.payload.append(source.payload[part.inline])
            else:
                target.header.parts.append(part)

    def close(self) -> None:
        self._rings.close()

