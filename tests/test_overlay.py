"""Overlay rendering: blend, mask only, side by side, class filter, legend."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from segstream.datasets import cityscapes
from segstream.pipeline.overlay import OverlayRenderer, OverlayStyle, RenderMode


def _renderer(**style) -> OverlayRenderer:
    return OverlayRenderer(cityscapes.CLASS_NAMES, cityscapes.PALETTE_BGR, 255, OverlayStyle(**style))


@pytest.fixture
def scene():
    frame = np.full((100, 200, 3), 100, np.uint8)
    mask = np.zeros((100, 200), np.uint8)  # road
    mask[:, 100:] = cityscapes.CLASS_NAMES.index("car")
    mask[:10] = 255  # ignored
    return frame, mask


def test_blend_colours_classes_and_leaves_ignored_pixels(scene):
    frame, mask = scene
    out = _renderer(opacity=0.5, legend=False).blend(frame, mask)
    road = np.array(cityscapes.PALETTE_BGR[0])
    np.testing.assert_allclose(out[50, 50], (frame[50, 50] + road) / 2, atol=1)
    np.testing.assert_array_equal(out[5, 5], frame[5, 5])


def test_mask_mode_draws_colours_only(scene):
    frame, mask = scene
    out = _renderer(mode=RenderMode.MASK, legend=False).blend(frame, mask)
    np.testing.assert_array_equal(out[50, 150], cityscapes.PALETTE_BGR[13])
    np.testing.assert_array_equal(out[5, 5], (0, 0, 0))


def test_side_by_side_puts_the_frame_beside_the_blend(scene):
    frame, mask = scene
    out = _renderer(mode="side-by-side", legend=False).annotate(frame, mask)
    assert out.shape == (100, 400, 3)
    np.testing.assert_array_equal(out[50:, :200][:, :], np.broadcast_to(frame[50:], (50, 200, 3)))


def test_class_filter_colours_only_the_chosen_classes(scene):
    frame, mask = scene
    out = _renderer(classes=(13,), legend=False).blend(frame, mask)
    np.testing.assert_array_equal(out[50, 50], frame[50, 50])  # road left alone
    assert not np.array_equal(out[50, 150], frame[50, 150])  # car coloured


def test_legend_draws_into_the_top_right_only_when_asked(scene):
    frame, mask = scene
    frame = np.full((720, 1280, 3), 100, np.uint8)
    mask = np.zeros((720, 1280), np.uint8)
    with_legend = _renderer(opacity=0.0).annotate(frame, mask)
    without = _renderer(opacity=0.0, legend=False).annotate(frame, mask)
    assert not np.array_equal(with_legend[:80, -220:], without[:80, -220:])
    np.testing.assert_array_equal(without[:80, -220:], frame[:80, -220:])


def test_label_shadow_covers_the_text_on_this_opencv():
    """The "frame N  X fps" label: no text pixel touches the untouched background, so the
    shadow follows every stroke (OpenCV 5 widens thick text, so a shadow drawn as thicker
    text drifts away from the letters).

    "Untouched" is a pixel left as it was on two backgrounds of different grey: an
    antialiased edge of the white text over its black shadow can come out at any grey,
    the background's own included (OpenCV 5.1 draws an edge pixel at exactly 128), so one
    background's value alone does not tell the background from the text's edge.
    """
    from segstream.pipeline.overlay import draw_label

    def labelled(grey: int) -> np.ndarray:
        image = np.full((80, 420, 3), grey, np.uint8)
        draw_label(image, "frame 1234  25.0 fps", (10, 50), 0.8, 2)
        return image

    image, other = labelled(128), labelled(37)
    background = (image == 128).all(axis=2) & (other == 37).all(axis=2)
    text = (image > 200).all(axis=2)
    assert text.sum() > 500  # the text is there
    assert (text == (other > 200).all(axis=2)).all()  # white text whatever lies under it
    around_text = cv2.dilate(text.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    assert not (around_text & background).any()
    # and a label at the image's edge is clipped, not an error
    draw_label(image, "frame 1", (400, 5), 0.8, 2)


def test_the_video_writer_takes_any_frame_size_and_names_the_file_only_when_complete(tmp_path):
    """A 1x1 first frame (H.264 needs even sides of at least 2) and frames of other sizes
    after it; until it is closed the video exists only under its temporary name."""
    from segstream.pipeline.sinks.video import VideoFile
    from segstream.pipeline.sources.files import VideoFileSource

    path = tmp_path / "overlay.mp4"
    video = VideoFile(path, 25.0)
    video.write(np.full((1, 1, 3), 200, np.uint8))
    for k in range(4):
        video.write(np.full((17 + k, 31, 3), 40 * k, np.uint8))
    assert not path.exists() and video.partial.exists()
    video.close()
    assert path.exists() and not video.partial.exists()
    frames = list(VideoFileSource(path, "overlay").frames())
    assert len(frames) == 5 and frames[0].image.shape == (2, 2, 3)


def test_what_a_killed_video_writer_left_plays_and_is_kept_by_the_next_writer(tmp_path):
    """A render process SIGKILLed mid-video (then restarted): its file plays up to its last
    fragment and is kept as overlay.salvaged-1.mp4; the new writer starts its own."""
    import subprocess
    import sys

    from segstream.pipeline.sinks.video import VideoFile
    from segstream.pipeline.sources.files import VideoFileSource

    path = tmp_path / "overlay.mp4"
    writer = subprocess.Popen([sys.executable, "-c", f"""
import time
import json

import numpy as np
from pathlib import Path
from segstream.pipeline.sinks.video import VideoFile
video = VideoFile(Path({str(path)!r}), 25.0)
for k in range(80):
    video.write(np.full((48, 64, 3), k, np.uint8))
print("ready", flush=True)
time.sleep(60)
"""], stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "ready"
    writer.kill()
    writer.wait()
    assert not path.exists()
    video = VideoFile(path, 25.0)
    assert video.salvaged == tmp_path / "overlay.salvaged-1.mp4"
    assert 50 <= len(list(VideoFileSource(video.salvaged, "x").frames())) <= 80  # all but the last fragment
    video.write(np.zeros((48, 64, 3), np.uint8))
    video.close()
    assert len(list(VideoFileSource(path, "x").frames())) == 1


def test_class_counts_travel_in_a_message_and_malformed_ones_are_refused():
    from segstream.pipeline.overlay import class_counts, counts_from_meta, counts_to_meta

    mask = np.array([[0, 0, 3], [3, 3, 255]], np.uint8)
    counts = class_counts(mask)
    sent = json.loads(json.dumps(counts_to_meta(counts)))  # as the header carries it
    assert sent == [[0, 2], [3, 3], [255, 1]]
    np.testing.assert_array_equal(counts_from_meta(sent, mask.size), counts)
    for bad in (None, "x", [[0, 2]], [[0, 2], [3, 3], [255, 2]], [[256, 6]], [[0, -1], [3, 7]], [[0, 6.0]],
                [[0, True], [1, 5]], [[0]] * 6, [[0, 1]] * 300, [["0", 6]]):
        assert counts_from_meta(bad, mask.size) is None, bad


def test_background_work_runs_in_order_and_brings_a_failure_back():
    import threading

    from segstream.errors import OutputError
    from segstream.pipeline.sinks.background import BackgroundWork

    work = BackgroundWork("test", depth=2)
    order, threads = [], set()

    def job(k: int) -> None:
        order.append(k)
        threads.add(threading.current_thread().name)

    for k in range(20):
        work.submit(lambda k=k: job(k))
    work.wait()
    assert order == list(range(20)) and threads == {"test"}  # in order, off the caller's thread

    def fails() -> None:
        raise OutputError("disk full")

    work.submit(fails)
    work.submit(lambda: order.append("after"))  # dropped: the sink has failed
    with pytest.raises(OutputError, match="disk full"):
        work.wait()
    work.submit(lambda: 1 / 0)  # a bug in a job comes back as the sink's error too
    with pytest.raises(OutputError, match="ZeroDivisionError"):
        work.close()
    assert "after" not in order


def test_the_video_sink_encodes_on_its_own_thread_and_a_file_is_complete_at_end_of_stream(tmp_path):
    from segstream.pipeline.sinks import SinkContext, SinkResult
    from segstream.pipeline.sinks.video import VideoFiles
    from segstream.pipeline.sources.files import VideoFileSource
    from segstream.pipeline.wire.messages import Header, Kind

    sink = VideoFiles(str(tmp_path), SinkContext(per_source_dirs=True))
    for k in range(6):
        for source in ("a", "b"):
            sink.write(SinkResult(Header(Kind.RESULT, source, k, f"{k:06d}"),
                                  image=np.full((48, 64, 3), 30 * k, np.uint8)))
    sink.end_source(SinkResult(Header(Kind.EOS, "a")))
    assert (tmp_path / "a" / "overlay.mp4").exists()  # complete the moment end_source returned
    assert not (tmp_path / "b" / "overlay.mp4").exists()  # b goes on
    sink.close()
    assert sink.frames == 12
    for source in ("a", "b"):
        frames = list(VideoFileSource(tmp_path / source / "overlay.mp4", source).frames())
        assert len(frames) == 6 and abs(int(frames[-1].image.mean()) - 150) <= 3


@pytest.mark.parametrize("small, big", [((64, 128), (1080, 1920)), ((7, 13), (1080, 1920)), ((100, 100), (37, 53)),
                                        ((512, 1024), (540, 960)), ((32, 64), (1024, 2048)), ((1, 1), (5, 3))])
def test_class_counts_of_a_resized_label_map_are_those_of_the_resize(small, big):
    from segstream.pipeline.overlay import class_counts, resized_class_counts

    labels = np.random.default_rng(sum(small)).integers(0, 20, small).astype(np.uint8)
    labels[labels == 19] = 255
    resized = cv2.resize(labels, (big[1], big[0]), interpolation=cv2.INTER_NEAREST)
    counts = resized_class_counts(labels, resized)
    assert counts.dtype == np.int64 and np.array_equal(counts, class_counts(resized))


def test_the_blend_is_the_same_whether_or_not_it_is_told_the_class_counts():
    from segstream.pipeline.overlay import class_counts

    renderer = _renderer(classes=(0, 2))
    frame = np.random.default_rng(3).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    for values in ((0, 2), (0, 1, 2), (0, 2, 255)):  # nothing hidden; a filtered-out class; the ignore label
        mask = np.random.default_rng(len(values)).choice(values, (40, 60)).astype(np.uint8)
        assert np.array_equal(renderer.blend(frame, mask, class_counts(mask)), renderer.blend(frame, mask))


def test_a_warmed_up_renderer_draws_exactly_what_a_fresh_one_draws(scene):
    """``warm_up`` (a live render pays OpenCV's first calls before its first frame) leaves
    nothing behind that shows in an overlay."""
    from segstream.pipeline.overlay import class_counts

    frame, mask = scene
    for style in ({"legend": True}, {"legend": False, "mode": RenderMode.SIDE_BY_SIDE}):
        warmed, fresh = _renderer(**style), _renderer(**style)
        warmed.warm_up()
        for index in range(2):
            np.testing.assert_array_equal(warmed.annotate(frame, mask, index, 25.0, class_counts(mask)),
                                          fresh.annotate(frame, mask, index, 25.0, class_counts(mask)))


def test_the_video_sink_queues_overlays_while_its_encoder_starts(tmp_path):
    """The encoder's start-up (opening it, its first frames: ~200 ms at 1080p) must not
    hold a live render back: ``ENCODER_QUEUE`` overlays wait for it without blocking."""
    import threading

    from segstream.pipeline.sinks import SinkContext, SinkResult
    from segstream.pipeline.sinks.video import ENCODER_QUEUE, VideoFiles
    from segstream.pipeline.wire.messages import Header, Kind

    sink = VideoFiles(str(tmp_path), SinkContext())
    starting = threading.Event()
    sink._work.submit(lambda: starting.wait(60))  # the encoder thread is busy starting up
    written = threading.Event()

    def render() -> None:
        for k in range(ENCODER_QUEUE):
            sink.write(SinkResult(Header(Kind.RESULT, "cam", k, f"{k:06d}"), image=np.full((48, 64, 3), 9, np.uint8)))
        written.set()

    drawer = threading.Thread(target=render)
    drawer.start()
    try:
        assert written.wait(30), "the render stage waited for the encoder's start-up"
    finally:
        starting.set()
        drawer.join()
    sink.close()
    assert sink.frames == ENCODER_QUEUE
