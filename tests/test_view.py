"""The live view in real headless Chromium: the page loads, the overlay updates, the
numbers change, and closing the page frees its stream."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request

import pytest
from pipeline_helpers import start_pipeline, wait_for_log
from test_streams import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")



def chromium(tmp_path, url: str, *args: str) -> str:
    profile = tmp_path / f"profile-{time.monotonic_ns()}"
    result = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                             "--disable-background-networking", "--disable-component-update", "--disable-sync",
                             f"--user-data-dir={profile}", "--window-size=1280,720", *args, url],
                            capture_output=True, text=True, timeout=60)
    return result.stdout


def stats(address: str) -> dict:
    with urllib.request.urlopen(f"http://{address}/stats.json", timeout=5) as response:
        return json.loads(response.read())


@needs_chromium
def test_live_view_in_headless_chromium(tmp_path, fast_onnx):
    address = f"127.0.0.1:{free_port()}"
    log = tmp_path / "run.log"
    proc = start_pipeline(["run", "--source", "test-pattern:640x360@25", "--model", str(fast_onnx), "--publish", "",
                           "--view", address], log, tmp_path / "t")
    wait_for_log(log, r"running")
    deadline = time.monotonic() + 30
    while stats(address)["frame"] == 0 and time.monotonic() < deadline:
        time.sleep(0.2)

    first_dom = chromium(tmp_path, f"http://{address}/", "--virtual-time-budget=2000", "--dump-dom")
    shots = []
    for k in range(2):
        shot = tmp_path / f"view{k}.png"
        chromium(tmp_path, f"http://{address}/", "--virtual-time-budget=2000", f"--screenshot={shot}")
        shots.append(shot.read_bytes())
        time.sleep(1.0)
    second_dom = chromium(tmp_path, f"http://{address}/", "--virtual-time-budget=2000", "--dump-dom")

    frame_numbers = [int(re.search(r'<b id="frame">(\d+)</b>', dom).group(1)) for dom in (first_dom, second_dom)]
    assert frame_numbers[1] > frame_numbers[0] > 0  # the numbers on the page change
    assert '<span class="swatch"' in second_dom  # the classes present are listed
    assert shots[0] != shots[1] and all(len(s) > 10_000 for s in shots)  # the overlay image updates
    time.sleep(1.0)
    assert stats(address)["viewers"] == 0  # every closed page freed its stream

    # several viewers at once, each getting JPEG frames; each freed when it goes
    streams = [urllib.request.urlopen(f"http://{address}/stream.mjpg", timeout=10) for _ in range(2)]
    for stream in streams:
        assert stream.headers["Content-Type"].startswith("multipart/x-mixed-replace")
        assert b"Content-Type: image/jpeg" in stream.read(4096)
    assert stats(address)["viewers"] == 2
    for stream in streams:
        stream.close()
    deadline = time.monotonic() + 5
    while stats(address)["viewers"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert stats(address)["viewers"] == 0

    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=10) == 130


@needs_chromium
def test_live_view_shows_sources_as_they_come_and_go(tmp_path, fast_onnx):
    from test_sources_api import api, wait_api, wait_state

    address, port = f"127.0.0.1:{free_port()}", free_port()
    log = tmp_path / "run.log"
    proc = start_pipeline(["run", "--api", str(port), "--model", str(fast_onnx), "--publish", "", "--view", address,
                           "--quiet"], log, tmp_path / "t")
    wait_api(port, proc, log)
    for sid in ("north", "south"):
        assert api(port, "POST", "/sources", {"uri": "test-pattern:320x240@10", "id": sid})[0] == 201

    def on_page() -> set[str]:
        dom = chromium(tmp_path, f"http://{address}/", "--virtual-time-budget=2000", "--dump-dom")
        table = re.search(r'<table id="sources">(.*?)</table>', dom, re.S)
        assert table, dom[-2000:]
        return set(re.findall(r'<tr class="[^"]*" data-id="([^"]+)">', table.group(1)))

    def on_air() -> set[str]:
        try:
            return {s["id"] for s in stats(address)["sources"]}
        except OSError:  # the render stage is still starting its server
            return set()

    deadline = time.monotonic() + 60
    while on_air() != {"north", "south"} and time.monotonic() < deadline:
        time.sleep(0.2)
    assert on_page() == {"north", "south"}
    with urllib.request.urlopen(f"http://{address}/stream.mjpg?source=south", timeout=10) as stream:
        assert b"Content-Type: image/jpeg" in stream.read(4096)  # one source alone

    assert api(port, "DELETE", "/sources/north")[0] == 200
    wait_state(port, "north", ("ended",))
    assert [s["id"] for s in stats(address)["sources"]] == ["south"]
    assert on_page() == {"south"}
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=30) == 130


@needs_chromium
def test_live_view_lists_the_instances_of_an_instance_model(tmp_path, instance_onnx):
    from conftest import CLIP

    address = f"127.0.0.1:{free_port()}"
    log = tmp_path / "run.log"
    proc = start_pipeline(["run", "--source", str(CLIP), "--model", str(instance_onnx), "--publish", "", "--view",
                           address, "--rate", "3", "--loop"], log, tmp_path / "t")
    wait_for_log(log, r"running")
    deadline = time.monotonic() + 60
    while not stats(address).get("instances") and time.monotonic() < deadline:
        time.sleep(0.2)
    listed = stats(address)["instances"]
    assert listed and all(i["label"] == "car" and re.fullmatch(r"#[0-9a-f]{6}", i["colour"]) for i in listed)
    dom = chromium(tmp_path, f"http://{address}/", "--virtual-time-budget=2000", "--dump-dom")
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    rows = re.findall(r'<tr><td><span class="swatch"[^>]*></span>car #(\d+)</td><td class="n">(\d+)%</td></tr>', dom)
    assert rows and int(rows[0][0]) == 1  # the best first, as the model ranked them
    assert 'id="instances-box" style=""' in dom or 'id="instances-box">' in dom  # shown for an instance model
