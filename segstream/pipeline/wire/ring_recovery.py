"""Recovery of a lossless ring after one of its readers died: the frames the dead process
held are released on its behalf, so the writer does not wait for them for good."""

from __future__ import annotations

import logging

import numpy as np

from segstream.pipeline.wire.shm_ring import MAX_READERS, _Segment
from segstream.pipeline.wire.shm_segments import Segment, segment_names

logger = logging.getLogger(__name__)


def release_everything(ring: str, reader_id: int, downstream: tuple[int, ...] = ()) -> int:
    """Release, for reader ``reader_id``, every frame now in the segments of ``ring``.

    The supervisor calls this when it restarts a reader in lossless flow: the frames the
    dead process held will never be released by it, and the writer would wait for them
    forever. The frames it had not released yet (queued for it, or in its hands) died with
    it, so readers that get this ring's frames only through it (``downstream``: render,
    behind a dead preprocess, on capture's ring) will never see them either: they are
    released for those readers too. Otherwise a ring full of such frames would stall the
    run (render releases in order, and never hears of them). Returns how many segments
    were touched.
    """
    touched = 0
    if not 0 <= reader_id < MAX_READERS or not all(0 <= d < MAX_READERS for d in downstream):
        return 0
    for name in segment_names(f"{ring}-"):
        try:
            shm = Segment(name)
        except (OSError, ValueError):
            continue
        try:
            seg = _Segment(shm)
            lost = (seg.seq > 0) & (seg.released[reader_id] < seg.seq) & (seg.slot_released[reader_id] < seg.seq)
            for other in downstream:
                np.maximum(seg.slot_released[other], np.where(lost, seg.seq, 0), out=seg.slot_released[other])
            newest = int(seg.seq.max(initial=0))
            seg.released[reader_id] = max(int(seg.released[reader_id]), newest)
            np.maximum(seg.slot_released[reader_id], seg.seq, out=seg.slot_released[reader_id])
            touched += 1
            seg.close()
        except ValueError:
            shm.close()
    return touched
