"""Dataset layouts, timestamps, pacing schedules and looping (no pipeline processes)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import CLIP
from dataset_trees import (
    DRIVE,
    SEQUENCE,
    cityscapes_tree,
    kitti360_tree,
    kitti_raw_tree,
    kitti_semantics_tree,
    synthetic_gt,
)

from segstream.datasets.layouts import parse_kitti_timestamps
from segstream.errors import SourceError
from segstream.pipeline.sources import SourceFrame, default_source_id, open_source
from segstream.pipeline.stages.capture import make_schedule


def test_kitti_timestamps_keep_nanoseconds(tmp_path):
    path = tmp_path / "timestamps.txt"
    path.write_text("2011-09-26 13:02:25.964389698\n2011-09-26 13:02:26.068084598\n2011-09-26 13:02:27.000000001\n")
    times = parse_kitti_timestamps(path)
    assert times[0] == 0.0
    assert times[1] == pytest.approx(0.1036949, abs=1e-6)
    assert times[2] == pytest.approx(1.035610303, abs=1e-6)


def test_bad_timestamp_line_is_named(tmp_path):
    path = tmp_path / "timestamps.txt"
    path.write_text("2011-09-26 13:02:25.9\nyesterday\n")
    with pytest.raises(SourceError, match=r"timestamps.txt:2: 'yesterday' is not a KITTI timestamp"):
        parse_kitti_timestamps(path)


def test_cityscapes_layout_pairs_ground_truth(tmp_path):
    stems = cityscapes_tree(tmp_path, frames=3, size=(256, 128))
    source = open_source(f"cityscapes:{tmp_path}")
    frames = list(source.frames())
    assert [f.name for f in frames] == stems and source.fps == 17.0
    assert source.gt_kind == "cityscapes-label-ids"
    np.testing.assert_array_equal(frames[0].gt, synthetic_gt((128, 256), 0))
    assert frames[1].gt is None
    np.testing.assert_array_equal(frames[2].gt, synthetic_gt((128, 256), 2))
    assert [f.name for f in open_source(f"cityscapes:{tmp_path}:val:frankfurt").frames()] == stems


def test_cityscapes_prefers_the_sequence_folder(tmp_path):
    cityscapes_tree(tmp_path, frames=2, size=(64, 32))
    seq = tmp_path / "leftImg8bit_sequence" / "val" / "frankfurt"
    seq.mkdir(parents=True)
    (seq / "frankfurt_000000_000019_leftImg8bit.png").symlink_to(
        tmp_path / "leftImg8bit" / "val" / "frankfurt" / "frankfurt_000000_000000_leftImg8bit.png")
    assert [f.name for f in open_source(f"cityscapes:{tmp_path}").frames()] == ["frankfurt_000000_000019_leftImg8bit"]


def test_kitti_raw_layout_carries_timestamps(tmp_path):
    drive, times = kitti_raw_tree(tmp_path, frames=5)
    source = open_source(f"kitti-raw:{drive}")
    frames = list(source.frames())
    assert [f.name for f in frames] == [f"{k:010d}" for k in range(5)]
    assert [f.time_s for f in frames] == pytest.approx(times, abs=1e-6)
    assert all(f.gt is None for f in frames)
    assert default_source_id(f"kitti-raw:{drive}") == f"kitti-raw-{DRIVE}"


def test_kitti_semantics_layout(tmp_path):
    stems = kitti_semantics_tree(tmp_path)
    frames = list(open_source(f"kitti-semantics:{tmp_path}").frames())
    assert [f.name for f in frames] == stems
    assert all(f.gt is not None and f.gt.shape == f.image.shape[:2] for f in frames)


def test_kitti360_layout_with_partial_semantics(tmp_path):
    stems = kitti360_tree(tmp_path)
    frames = list(open_source(f"kitti360:{tmp_path}:{SEQUENCE}").frames())
    assert [f.name for f in frames] == stems
    assert [f.gt is not None for f in frames] == [False, True, True]


@pytest.mark.parametrize("uri, message", [
    ("cityscapes:/no/such/root", "is not a folder; expected cityscapes:ROOT"),
    ("kitti360:{tmp}", "kitti360 needs a sequence"),
    ("kitti-raw:{tmp}", "expected the KITTI raw"),
    ("cityscapes:{tmp}:test", "expected the Cityscapes"),
])
def test_bad_dataset_uris_say_what_was_expected(tmp_path, uri, message):
    with pytest.raises(SourceError, match=message):
        open_source(uri.format(tmp=tmp_path))


def test_schedules():
    drive_frame = SourceFrame(None, "x", time_s=0.25)
    plain = SourceFrame(None, "y")

    class Replay:
        self_paced, fps = False, 17.0

    class Camera:
        self_paced, fps = True, 30.0

    native = make_schedule("native", Replay())
    assert native(3, drive_frame) == 0.25 and native(17, plain) == pytest.approx(1.0)
    assert make_schedule("10", Replay())(5, plain) == pytest.approx(0.5)
    assert make_schedule("max", Replay()) is None and make_schedule("native", Camera()) is None


def test_video_loop_starts_over_and_keeps_counting():
    source = open_source(str(CLIP), loop=True)
    names = []
    for frame in source.frames():
        names.append(frame.name)
        if len(names) == 230:
            break
    source.close()
    assert len(names) == 230 and names[-1] == "000229"
