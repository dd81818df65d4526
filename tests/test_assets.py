"""Weights and sample lookup: explicit path, SEGSTREAM_DATA, cache, checked download."""

from __future__ import annotations

import functools
import http.server
import shutil
import threading

import pytest
from conftest import DATA

from segstream import assets


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(assets.DATA_ENV, raising=False)
    monkeypatch.setattr(assets, "_verified", set())
    return tmp_path


@pytest.fixture
def http_server(tmp_path):
    """A real HTTP server on 127.0.0.1 serving the shared data folder and a bad copy."""
    served = tmp_path / "served"
    served.mkdir()
    shutil.copy(DATA / "espnet_p_2_q_3.pth", served / "espnet_p_2_q_3.pth")
    (served / "bad").mkdir()
    (served / "bad" / "espnet_p_2_q_3.pth").write_bytes(b"not the weights")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_explicit_path_wins(isolated):
    path = assets.resolve_asset("espnet_p_2_q_3.pth", explicit=DATA / "espnet_p_2_q_3.pth")
    assert path == DATA / "espnet_p_2_q_3.pth"


def test_explicit_path_that_does_not_exist_is_a_clear_error(isolated):
    with pytest.raises(assets.AssetError, match="does not exist"):
        assets.resolve_asset("espnet_p_2_q_3.pth", explicit=isolated / "nope.pth")


def test_data_folder_from_environment(isolated, monkeypatch):
    monkeypatch.setenv(assets.DATA_ENV, str(DATA))
    assert assets.resolve_asset("solidWhiteRight.mp4", download=False) == DATA / "solidWhiteRight.mp4"


def test_cache_folder_is_used(isolated):
    target = assets.cache_dir() / "espnet_p_2_q_3.pth"
    target.parent.mkdir(parents=True)
    shutil.copy(DATA / "espnet_p_2_q_3.pth", target)
    assert assets.resolve_asset("espnet_p_2_q_3.pth", download=False) == target


def test_a_corrupt_cached_file_is_refused(isolated):
    target = assets.cache_dir() / "espnet_p_2_q_3.pth"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"truncated")
    with pytest.raises(assets.AssetError, match="does not match the known checksum"):
        assets.resolve_asset("espnet_p_2_q_3.pth", download=False)


def test_download_from_a_local_server_with_checksum(isolated, http_server, monkeypatch, capfd):
    monkeypatch.setenv(assets.URL_BASE_ENV, http_server)
    path = assets.resolve_asset("espnet_p_2_q_3.pth")
    assert path == assets.cache_dir() / "espnet_p_2_q_3.pth"
    assert assets.sha256_of(path) == assets.ASSETS["espnet_p_2_q_3.pth"].sha256
    assert "espnet_p_2_q_3.pth [" in capfd.readouterr().err  # the progress bar
    assert not list(path.parent.glob("*.part"))


def test_download_with_wrong_checksum_leaves_nothing(isolated, http_server, monkeypatch):
    monkeypatch.setenv(assets.URL_BASE_ENV, http_server + "/bad")
    with pytest.raises(assets.AssetError, match="sha256"):
        assets.resolve_asset("espnet_p_2_q_3.pth")
    assert not (assets.cache_dir() / "espnet_p_2_q_3.pth").exists()
    assert not list(assets.cache_dir().glob("*.part"))


def test_offline_and_not_found_says_where_to_put_the_file(isolated, monkeypatch):
    monkeypatch.setenv(assets.URL_BASE_ENV, "http://127.0.0.1:9")  # nothing listens on port 9
    with pytest.raises(assets.AssetError) as info:
        assets.resolve_asset("espnet_p_2_q_8.pth")
    message = str(info.value)
    assert "SEGSTREAM_DATA" in message and str(assets.cache_dir()) in message and "sha256" in message
