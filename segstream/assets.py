"""Finding data files: model weights and the demo clip.

Lookup order for an asset (the first hit wins):

1. an explicit path given by the user (``--weights FILE``);
2. the folder named by the ``SEGSTREAM_DATA`` environment variable;
3. the user cache folder (``$XDG_CACHE_HOME/segstream`` or ``~/.cache/segstream``);
4. a download from the asset's upstream address into the cache, checked against its
   sha256, with a progress bar.

Every file found in 2-4 is checked against the known sha256 once per process.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from segstream.errors import AssetError

logger = logging.getLogger(__name__)

DATA_ENV = "SEGSTREAM_DATA"
URL_BASE_ENV = "SEGSTREAM_DOWNLOAD_BASE"  # replaces the upstream address prefix (mirrors, tests)


@dataclass(frozen=True)
class Asset:
    """A data file the project knows by name, address and checksum."""

    filename: str
    url: str
    sha256: str
    description: str


ASSETS: dict[str, Asset] = {
    "espnet_p_2_q_8.pth": Asset(
        "espnet_p_2_q_8.pth",
        "https://github.com/sacmehta/ESPNet/raw/master/pretrained/decoder/espnet_p_2_q_8.pth",
        "343b0e77e8545d36113c4f3efbf1ee349256f25c97c9f9d5ddefe45f2f49763e",
        "ESPNet p=2 q=8 Cityscapes weights (MIT, Sachin Mehta)",
    ),
    "espnet_p_2_q_3.pth": Asset(
        "espnet_p_2_q_3.pth",
        "https://github.com/sacmehta/ESPNet/raw/master/pretrained/decoder/espnet_p_2_q_3.pth",
        "8f3eb198fb15e5da7fa8d258d5f0fc4a4213e1124f415f6fc54d2772d585a7fc",
        "ESPNet p=2 q=3 Cityscapes weights (MIT, Sachin Mehta)",
    ),
    "solidWhiteRight.mp4": Asset(
        "solidWhiteRight.mp4",
        "https://github.com/udacity/CarND-LaneLines-P1/raw/master/test_videos/solidWhiteRight.mp4",
        "2d8e14b46fe89afbc8ad1f718685cf09b83e85a324095031c38186a9f0535417",
        "dash-camera sample clip, 960x540, 221 frames (MIT, Udacity)",
    ),
}

_verified: set[Path] = set()


def cache_dir() -> Path:
    """The user cache folder for segstream (weights, exported models)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "segstream"


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check(path: Path, asset: Asset) -> None:
    if path in _verified:
        return
    actual = sha256_of(path)
    if actual != asset.sha256:
        raise AssetError(
            f"{path} does not match the known checksum of {asset.filename}: expected sha256 {asset.sha256}, "
            f"found {actual}. Delete it or replace it with the original file"
        )
    _verified.add(path)


def resolve_asset(name: str, explicit: str | os.PathLike[str] | None = None, download: bool = True) -> Path:
    """Find (or fetch) a known asset and return its local path.

    Args:
        name: key of ``ASSETS``.
        explicit: a user-given path that overrides the lookup (not checksummed, so users
            may bring their own fine-tuned weights).
        download: allow the download step.

    Raises:
        AssetError: not found anywhere and the download failed or was not allowed.
    """
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise AssetError(f"{path} does not exist; pass the path of an existing file")
        return path
    if name not in ASSETS:
        raise AssetError(f"unknown asset {name!r}; known: {', '.join(sorted(ASSETS))}")
    asset = ASSETS[name]
    candidates = []
    if os.environ.get(DATA_ENV):
        candidates.append(Path(os.environ[DATA_ENV]).expanduser() / asset.filename)
    candidates.append(cache_dir() / asset.filename)
    for path in candidates:
        if path.is_file():
            _check(path, asset)
            return path
    target = cache_dir() / asset.filename
    if download:
        try:
            download_asset(asset, target)
            return target
        except (OSError, urllib.error.URLError) as exc:
            reason = f"download from {_url(asset)} failed ({exc})"
    else:
        reason = "downloads are disabled"
    raise AssetError(
        f"{asset.filename} ({asset.description}) was not found and {reason}. Put the file in the folder named by "
        f"${DATA_ENV} or in {cache_dir()}, or download it yourself from {asset.url} (sha256 {asset.sha256})"
    )


def _url(asset: Asset) -> str:
    base = os.environ.get(URL_BASE_ENV)
    return f"{base.rstrip('/')}/{asset.filename}" if base else asset.url


def download_asset(asset: Asset, target: Path, timeout_s: float = 30.0) -> None:
    """Download ``asset`` to ``target`` atomically, with a progress bar and sha256 check."""
    url = _url(asset)
    target.parent.mkdir(parents=True, exist_ok=True)
    logger.info("downloading %s from %s", asset.filename, url)
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(prefix=asset.filename + ".", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout_s) as response:
            total = int(response.headers.get("Content-Length") or 0)
            done = 0
            while chunk := response.read(1 << 16):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                _progress(asset.filename, done, total)
        sys.stderr.write("\n")
        if digest.hexdigest() != asset.sha256:
            raise AssetError(
                f"downloaded {asset.filename} has sha256 {digest.hexdigest()}, expected {asset.sha256}; "
                f"the server at {url} sent a different file"
            )
        os.replace(tmp_name, target)
        _verified.add(target)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)


def _progress(name: str, done: int, total: int) -> None:
    if total:
        filled = int(30 * done / total)
        bar = "#" * filled + "." * (30 - filled)
        sys.stderr.write(f"\r{name} [{bar}] {done / 1e6:.1f}/{total / 1e6:.1f} MB")
    else:
        sys.stderr.write(f"\r{name} {done / 1e6:.1f} MB")
    sys.stderr.flush()
