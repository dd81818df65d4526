"""``--reduced-decode``: JPEG frames decoded at 1/2, 1/4 or 1/8 of their size where the
model takes less, masks still published at the image's full size. The JPEG and PNG header
readers are fuzzed, and images whose header claims more than a frame may be are refused
undecoded; the pipeline runs for real on JPEGs made from the shared Cityscapes frames."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import CITYSCAPES_FRAMES

from segstream.engines.metadata import ModelMetadata
from segstream.pipeline.sources.files import ImageListSource
from segstream.pipeline.sources.image_headers import HEADER_SCAN_BYTES, jpeg_size, png_size
from segstream.pipeline.sources.reduced_decode import read_reduced, reduction


@pytest.fixture(scope="module")
def cityscapes_jpeg() -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.imread(str(CITYSCAPES_FRAMES[0])), [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return buf.tobytes()


def test_the_size_comes_from_the_frame_header_of_baseline_progressive_and_grey_jpegs(cityscapes_jpeg):
    image = cv2.imdecode(np.frombuffer(cityscapes_jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert jpeg_size(cityscapes_jpeg) == (1024, 2048)
    ok, progressive = cv2.imencode(".jpg", image[:1000, :1500], [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    assert jpeg_size(progressive) == (1000, 1500)  # an ndarray as well as bytes
    ok, grey = cv2.imencode(".jpg", cv2.cvtColor(image[:77, :33], cv2.COLOR_BGR2GRAY))
    assert jpeg_size(grey.tobytes()) == (77, 33)
    # a large APP segment (metadata) before the frame header is stepped over
    app = b"\xff\xe1" + (60002).to_bytes(2, "big") + bytes(60000)
    assert jpeg_size(cityscapes_jpeg[:2] + app + cityscapes_jpeg[2:]) == (1024, 2048)


def test_anything_but_a_well_formed_jpeg_header_has_no_size(cityscapes_jpeg):
    ok, png = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))
    sof = cityscapes_jpeg.index(b"\xff\xc0")
    lying_length = bytearray(cityscapes_jpeg)
    lying_length[4:6] = b"\x00\x01"  # the first segment claims less than its own length field
    zero_size = bytearray(cityscapes_jpeg)
    zero_size[sof + 5:sof + 9] = bytes(4)
    huge_app = cityscapes_jpeg[:2] + b"\xff\xe1\xff\xff" + bytes(HEADER_SCAN_BYTES)
    for data in (b"", b"\xff", b"\xff\xd8", png.tobytes(), cityscapes_jpeg[:sof + 6], bytes(lying_length),
                 bytes(zero_size), b"\xff\xd8\xff\xda\x00\x08" + bytes(20), b"\xff\xd8\x00\x00" + bytes(100), huge_app):
        assert jpeg_size(data) is None, data[:16]
    assert png_size(png) == (8, 8) and png_size(png.tobytes()[:23]) is None and png_size(cityscapes_jpeg) is None
    zero_width = bytearray(png.tobytes())
    zero_width[16:20] = bytes(4)
    assert png_size(bytes(zero_width)) is None and png_size(b"\x89PNG\r\n\x1a\n" + bytes(16)) is None


def test_random_and_mangled_headers_never_raise(cityscapes_jpeg):
    rng = np.random.default_rng(7)
    head = np.frombuffer(cityscapes_jpeg[:700], np.uint8)
    for _ in range(2000):
        mangled = head.copy()
        at = rng.integers(2, len(mangled), size=rng.integers(1, 6))
        mangled[at] = rng.integers(0, 256, size=len(at))
        size = jpeg_size(mangled)
        assert size is None or (isinstance(size, tuple) and min(size) > 0)
        jpeg_size(b"\xff\xd8" + rng.integers(0, 256, size=int(rng.integers(0, 64)), dtype=np.uint8).tobytes())
        png_size(b"\x89PNG\r\n\x1a\n" + rng.integers(0, 256, size=int(rng.integers(0, 32)), dtype=np.uint8).tobytes())


@pytest.mark.parametrize(("size", "at_least", "factor"), [
    ((1024, 2048), (512, 1024), 2),  # Cityscapes for ESPNet: exactly half
    ((1024, 2048), (128, 256), 8),
    ((1080, 1920), (512, 1024), 1),  # 960 wide would be narrower than the model
    ((1080, 1920), (64, 128), 8),
    ((1081, 1921), (136, 241), 8),  # libjpeg rounds up: 136 x 241
    ((1080, 1920), (136, 241), 4),
    ((100, 100), (512, 1024), 1),  # smaller than the model already
])
def test_the_reduction_is_the_largest_that_still_covers_the_model_input(size, at_least, factor):
    assert reduction(size, at_least) == factor


def test_a_jpeg_decodes_reduced_and_says_its_full_size_anything_else_whole(cityscapes_jpeg):
    data = np.frombuffer(cityscapes_jpeg, np.uint8)
    image, full = read_reduced(data, (512, 1024))
    assert image.shape == (512, 1024, 3) and full == (1024, 2048)
    whole = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    halved = cv2.resize(whole, (1024, 512), interpolation=cv2.INTER_AREA)
    assert np.abs(image.astype(int) - halved).mean() < 3  # the same picture, at half size
    image, full = read_reduced(data, (1024, 2048))  # no room to reduce
    assert full is None and (image == whole).all()
    ok, png = cv2.imencode(".png", whole[:64, :128])
    image, full = read_reduced(png, (8, 8))
    assert full is None and (image == whole[:64, :128]).all()
    assert read_reduced(np.frombuffer(b"\xff\xd8\xff" + bytes(50), np.uint8), (8, 8)) == (None, None)


def test_an_image_folder_decodes_jpegs_reduced_when_asked_and_reports_what_it_cannot_read(tmp_path, cityscapes_jpeg):
    (tmp_path / "a.jpg").write_bytes(cityscapes_jpeg)
    cv2.imwrite(str(tmp_path / "b.png"), np.full((64, 128, 3), 50, np.uint8))
    (tmp_path / "c.jpg").write_bytes(cityscapes_jpeg[:300])  # cut short inside its header
    (tmp_path / "d.jpg").write_bytes(b"")
    entries = sorted(tmp_path.iterdir())
    plain = list(ImageListSource(entries, "cam", "test folder").frames())
    assert [f.full_size for f in plain] == [None] * 4 and plain[0].image.shape == (1024, 2048, 3)
    source = ImageListSource(entries, "cam", "test folder")
    source.reduce_to = (128, 256)
    frames = list(source.frames())
    assert [f.name for f in frames] == ["a", "b", "c", "d"]
    assert frames[0].image.shape == (128, 256, 3) and frames[0].full_size == (1024, 2048)
    assert frames[1].image.shape == (64, 128, 3) and frames[1].full_size is None
    assert frames[2].image is None and "cannot decode c.jpg" in frames[2].error
    assert frames[3].image is None and "cannot decode d.jpg" in frames[3].error


def _plan(metadata: ModelMetadata, **config_fields):
    from segstream.engines.backends.choice import BackendChoice
    from segstream.engines.resolve import InferenceModel
    from segstream.pipeline.config import PipelineConfig
    from segstream.pipeline.graph import plan_run
    from segstream.pipeline.spec import StageKind
    from segstream.pipeline.wire.choices import FlowPolicy

    model = InferenceModel("model.onnx", metadata, BackendChoice("onnxruntime", "cpu"))
    config = PipelineConfig(sources=("frames/",), publish="", **config_fields)
    plan = plan_run(config, FlowPolicy.LOSSLESS, "0a1b2c3d", Path("/tmp/segstream-plan"), model)
    return [s.settings.reduce_to for s in plan.stages if s.kind is StageKind.CAPTURE]


def test_frames_are_reduced_only_when_asked_and_nothing_needs_them_whole(caplog):
    from segstream.engines.models.zoo import MODELS

    example = ModelMetadata.example()
    assert _plan(example) == [None]
    assert _plan(example, reduced_decode=True) == [(512, 1024)]
    assert _plan(example, reduced_decode=True, sinks=("masks:out",)) == [(512, 1024)]
    assert _plan(example, reduced_decode=True, record="out") == [None]  # the overlay is drawn on the frame
    assert _plan(example, reduced_decode=True, sinks=("video:out",)) == [None]
    assert _plan(MODELS["maskrcnn-r18-fpn"].metadata, reduced_decode=True) == [None]  # boxes in frame pixels
    assert "--reduced-decode is ignored" in caplog.text


def test_a_run_over_jpegs_publishes_full_size_masks_from_reduced_frames(tmp_path, fast_onnx):
    """Real stage processes: the JPEGs (and one that cannot be read) through the fast model,
    reduced and whole; masks at full size either way, and nearly the same."""
    from segstream.engines.resolve import resolve_inference
    from segstream.pipeline.config import PipelineConfig
    from segstream.pipeline.supervisor import Supervisor
    from segstream.pipeline.wire.choices import FlowPolicy

    frames = tmp_path / "frames"
    frames.mkdir()
    for path in CITYSCAPES_FRAMES:
        cv2.imwrite(str(frames / f"{path.stem}.jpg"), cv2.imread(str(path)), [cv2.IMWRITE_JPEG_QUALITY, 90])
    (frames / "zz_broken.jpg").write_bytes((frames / f"{CITYSCAPES_FRAMES[0].stem}.jpg").read_bytes()[:500])
    base = PipelineConfig(sources=(str(frames),), model=str(fast_onnx), publish="", policy=FlowPolicy.LOSSLESS,
                          quiet=True)
    masks, stats = {}, {}
    for reduced in (True, False):
        out = tmp_path / f"masks-{reduced}"
        result = Supervisor(replace(base, reduced_decode=reduced, sinks=(f"masks:{out}",)),
                            resolve_inference(str(fast_onnx), backend="onnxruntime")).run()
        assert result.exit_code == 0, (result.error, {name: stage.get("error") for name, stage in
                                                      result.stats.get("stages", {}).items()})
        stats[reduced] = result.stats
        masks[reduced] = {p.name: cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in sorted(out.rglob("*.png"))}
    capture = {reduced: s["stages"]["capture-0"] for reduced, s in stats.items()}
    assert capture[True]["extra"].get("decoded_reduced") == len(CITYSCAPES_FRAMES)
    assert "decoded_reduced" not in capture[False]["extra"]
    for reduced in (True, False):
        assert capture[reduced]["skipped"] == {"unreadable": 1}
        assert stats[reduced]["frames_published"] == len(CITYSCAPES_FRAMES)
    assert masks[True].keys() == masks[False].keys() and len(masks[True]) == len(CITYSCAPES_FRAMES)
    for name, mask in masks[True].items():
        assert mask.shape == masks[False][name].shape == (1024, 2048)
        assert (mask == masks[False][name]).mean() > 0.85, name  # a 1/8 decode against a 16x linear resize


def _claiming(data: bytes, height: int, width: int) -> bytes:
    """A JPEG or PNG whose header claims ``height`` x ``width`` (PNG's header checksum
    made right), with the small image's data behind it: a decompression bomb."""
    import zlib

    out = bytearray(data)
    if out.startswith(b"\x89PNG"):
        out[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
        out[29:33] = zlib.crc32(bytes(out[12:29])).to_bytes(4, "big")
    else:
        sof = out.index(b"\xff\xc0")
        out[sof + 5:sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(out)


@pytest.mark.parametrize("reduce_to", [None, (64, 128)])
def test_an_image_whose_header_claims_more_pixels_than_a_frame_may_have_is_refused_before_decoding(tmp_path,
                                                                                                  reduce_to):
    """A few hundred bytes claiming 30000x30000 made OpenCV allocate 2.7 GB and decode for
    7 s, for a frame the wire then refuses anyway: it is refused from its header, with why."""
    small = np.full((16, 16, 3), 120, np.uint8)
    for suffix in (".jpg", ".png"):
        ok, buf = cv2.imencode(suffix, small)
        (tmp_path / f"bomb{suffix}").write_bytes(_claiming(buf.tobytes(), 30000, 30000))
    cv2.imwrite(str(tmp_path / "fine.png"), small)
    source = ImageListSource(sorted(tmp_path.iterdir()), "cam", "test folder")
    source.reduce_to = reduce_to
    frames = list(source.frames())
    assert [f.name for f in frames] == ["bomb", "bomb", "fine"]
    for frame in frames[:2]:
        assert frame.image is None
        assert "30000x30000" in frame.error and "pixels" in frame.error, frame.error
    assert frames[2].image.shape == (16, 16, 3)


def test_a_full_size_larger_than_a_frame_may_be_is_refused_though_within_eight_times_the_frame():
    """A forged message with a large frame and a full size 8x it would make publish resize
    the mask to 4.3 GB: the full size is held to the pixels a frame may have."""
    from segstream.pipeline.expect import full_size_problem
    from segstream.pipeline.wire.checks import MAX_FRAME_PIXELS

    assert full_size_problem([8192, 8192], (1024, 1024, 3)) is None
    problem = full_size_problem([65535, 65535], (8192, 8192, 3))
    assert problem is not None and "pixels" in problem, problem
    side = int(MAX_FRAME_PIXELS ** 0.5)
    assert full_size_problem([side, side], (side // 4, side // 4, 3)) is None
