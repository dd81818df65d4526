"""Shared fixtures: real data from ../shared/data, an isolated cache, the exported model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SEGSTREAM_DATA", ROOT.parent / "shared" / "data")).resolve()
CLIP = DATA / "solidWhiteRight.mp4"
CITYSCAPES_FRAMES = sorted(DATA.glob("frankfurt_*_leftImg8bit.png"))
KITTI_FRAMES = sorted(DATA.glob("kitti_*.png"))


def pytest_configure(config: pytest.Config) -> None:
    if not (DATA / "espnet_p_2_q_8.pth").is_file():
        raise pytest.UsageError(f"test data not found in {DATA}; set SEGSTREAM_DATA to the shared data folder")
    os.environ["SEGSTREAM_DATA"] = str(DATA)
    # Keep the user's cache out of the tests; the exported model lands here once per session.
    cache = Path(os.environ.get("SEGSTREAM_TEST_CACHE", ROOT / ".pytest_cache" / "segstream-cache"))
    cache.mkdir(parents=True, exist_ok=True)
    os.environ["XDG_CACHE_HOME"] = str(cache)


@pytest.fixture(scope="session")
def espnet_onnx() -> Path:
    """The ESPNet q=8 model exported to ONNX (cached across the session)."""
    from segstream.engines.export import cached_onnx

    return cached_onnx("espnet-cityscapes")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slow tests first: the two workers then share out the short ones and finish
    together, instead of one of them ending on a long tail."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(autouse=True)
def _stop_what_the_test_started():
    """Whatever pipeline a test started is gone after it, passed or failed."""
    yield
    from pipeline_helpers import stop_started_pipelines

    stop_started_pipelines()


def segstream_cmd(*args: str) -> list[str]:
    """Command line that runs the segstream CLI of this checkout."""
    return [sys.executable, "-m", "segstream", *args]


def run_segstream(*args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess[str]:
    """Run the CLI to completion and return its result (text mode)."""
    return subprocess.run(segstream_cmd(*args), capture_output=True, text=True, timeout=timeout, cwd=ROOT, **kwargs)


@pytest.fixture(scope="session")
def fast_onnx(tmp_path_factory) -> Path:
    """ESPNet q=3 exported at 256x128: a fast model for tests about timing and plumbing."""
    from segstream.engines.export import export_onnx

    return export_onnx("espnet-cityscapes-q3", tmp_path_factory.mktemp("models") / "fast.onnx", height=128, width=256)


@pytest.fixture(scope="session")
def instance_onnx(tmp_path_factory) -> Path:
    """maskrcnn-r18-fpn exported at 352x192 with untrained weights whose box classifier calls
    every proposal a car (its car bias raised): the real graph, with many detections on any
    frame, for tests of how instances travel. That the model learns is shown by
    test_maskrcnn_training."""
    import torch

    from segstream.engines.export import export_onnx
    from segstream.engines.models.zoo import MODELS

    torch.manual_seed(0)
    net = MODELS["maskrcnn-r18-fpn"].build()
    with torch.no_grad():
        net.roi_heads.box_predictor.cls_score.bias[3] = 8.0  # COCO class 3: car
    folder = tmp_path_factory.mktemp("maskrcnn")
    torch.save(net.state_dict(), folder / "planted.pt")
    return export_onnx("maskrcnn-r18-fpn", folder / "maskrcnn.onnx", weights=folder / "planted.pt", height=192,
                       width=352)
