"""Sources: video, folders, globs in natural order, test pattern, unreadable frames."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import CLIP, KITTI_FRAMES

from segstream.datasets.images import natural_key
from segstream.errors import SourceError
from segstream.pipeline.sources import open_source, to_bgr
from segstream.pipeline.sources.files import TestPatternSource


def test_natural_sort_puts_frame2_before_frame10():
    assert sorted(["frame10.png", "frame2.png", "frame1.png"], key=natural_key) == \
        ["frame1.png", "frame2.png", "frame10.png"]


def test_video_file_yields_bgr_frames_with_padded_names():
    source = open_source(str(CLIP))
    frames = []
    for frame in source.frames():
        frames.append(frame)
        if len(frames) == 3:
            break
    source.close()
    assert [f.name for f in frames] == ["000000", "000001", "000002"]
    assert frames[0].image.shape == (540, 960, 3) and source.fps == pytest.approx(25, abs=0.1)
    assert not source.live and source.source_id == "solidWhiteRight"


def test_folder_in_natural_order_with_unreadable_files_reported(tmp_path):
    for i, src in zip((10, 2, 1), KITTI_FRAMES):
        (tmp_path / f"frame{i}.png").symlink_to(src)
    (tmp_path / "frame3.png").write_bytes(b"this is not a png")
    (tmp_path / "notes.txt").write_text("ignored")
    source = open_source(str(tmp_path))
    frames = list(source.frames())
    assert [f.name for f in frames] == ["frame1", "frame2", "frame3", "frame10"]
    assert frames[2].image is None and "cannot decode" in frames[2].error
    assert all(f.image is not None and f.image.shape[2] == 3 for f in frames if f.name != "frame3")


def test_glob_source(tmp_path):
    source = open_source(str(KITTI_FRAMES[0].parent / "kitti_*.png"))
    assert [f.name for f in source.frames()] == ["kitti_000000", "kitti_000001", "kitti_000002"]


class _Buffers:
    """Hands out a fresh buffer per frame, as the capture's ring hands out its next slot,
    and remembers what it handed out; ``every`` > 1 hands out none for the others."""

    def __init__(self, every: int = 1) -> None:
        self.given: list[np.ndarray] = []
        self.asked = 0
        self.every = every

    def __call__(self, shape: tuple[int, int, int]) -> np.ndarray | None:
        self.asked += 1
        if (self.asked - 1) % self.every:
            return None
        self.given.append(np.full(shape, 17, np.uint8))
        return self.given[-1]


@pytest.mark.parametrize("uri", [str(CLIP), "test-pattern:320x240@50"])
def test_a_source_decodes_into_the_buffers_it_is_given_exactly_as_into_its_own(uri):
    def first(source, count: int) -> list:
        frames = source.frames()
        try:
            return [next(frames) for _ in range(count)]
        finally:
            source.close()

    plain = first(open_source(uri), 6)
    source = open_source(uri)
    buffers = source.buffers = _Buffers(every=2)  # a slot for every other frame (the others: none free)
    given = first(source, 6)
    assert buffers.asked == 6 and len(buffers.given) == 3
    for k, (want, got) in enumerate(zip(plain, given)):
        np.testing.assert_array_equal(got.image, want.image)
        assert (got.image is buffers.given[k // 2]) == (k % 2 == 0)  # decoded in place, not copied there
        assert got.name == want.name


def test_a_video_decoded_into_buffers_loops_and_ends_like_one_decoded_plain(tmp_path):
    clip = tmp_path / "short.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for k in range(3):
        writer.write(np.full((48, 64, 3), 40 * k, np.uint8))
    writer.release()
    source = open_source(str(clip), loop=True)
    buffers = source.buffers = _Buffers()
    frames = source.frames()
    names = [next(frames).name for _ in range(7)]
    source.close()
    assert names == [f"{k:06d}" for k in range(7)] and buffers.given[0].shape == (48, 64, 3)
    once = open_source(str(clip))
    once.buffers = _Buffers()
    assert [f.name for f in once.frames()] == ["000000", "000001", "000002"]  # ends at the end
    once.close()


def test_test_pattern_parses_size_and_rate():
    source = open_source("test-pattern:320x240@50")
    assert isinstance(source, TestPatternSource) and source.live
    frames = source.frames()
    first, second = next(frames), next(frames)
    assert first.image.shape == (240, 320, 3) and source.fps == 50
    assert (first.time_s, second.time_s) == (0.0, 0.02)  # the capture stage paces it


@pytest.mark.parametrize("uri, message", [
    ("test-pattern:big", "expected test-pattern"),
    ("/no/such/file.mp4", "not found"),
])
def test_bad_sources_are_clear_errors(uri, message):
    with pytest.raises(SourceError, match=message):
        open_source(uri)


def test_empty_folder_says_what_it_expected(tmp_path):
    with pytest.raises(SourceError, match="holds no images; expected files ending in"):
        open_source(str(tmp_path))


def test_grey_and_bgra_images_become_bgr():
    assert to_bgr(np.zeros((4, 5), np.uint8)).shape == (4, 5, 3)
    assert to_bgr(np.zeros((4, 5, 4), np.uint8)).shape == (4, 5, 3)
    assert to_bgr(np.zeros((4, 5, 3), np.uint16)).dtype == np.uint8
    with pytest.raises(ValueError, match="expected a grey, BGR or BGRA image"):
        to_bgr(np.zeros((4, 5, 2), np.uint8))


def test_a_video_cut_short_is_warned_about_and_its_missing_frames_counted(tmp_path, caplog):
    import subprocess

    from conftest import CLIP

    from segstream.pipeline.sources.files import VideoFileSource

    whole = tmp_path / "whole.mp4"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(CLIP), "-frames:v", "50", "-c:v", "libx264",
                    "-preset", "ultrafast", "-movflags", "+faststart", str(whole)], check=True)
    cut = tmp_path / "cut.mp4"
    data = whole.read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.6)])  # an interrupted download: the index says 50 frames
    complete = VideoFileSource(whole, "whole")
    assert len(list(complete.frames())) == 50 and complete.connection() == {}
    source = VideoFileSource(cut, "cut")
    read = len(list(source.frames()))
    assert 0 < read < 50 and source.connection() == {"frames_missing": 50 - read}
    assert "cut short" in caplog.text
