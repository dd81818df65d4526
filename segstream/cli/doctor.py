"""``segstream doctor``: what this machine has for segstream, and what to install for what is
missing. Nothing is imported that a check does not need; nothing is downloaded."""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass

SHM_WARN_BYTES = 256 << 20  # a 2048x1024 replay's rings take ~100 MB
GST_CHECK = ("import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0'); "
             "from gi.repository import Gst, GstRtspServer")


@dataclass(frozen=True)
class Check:
    """One line of the report: what, whether it is there, the detail, and the fix."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    needed: bool = False  # segstream cannot run without it


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_versions(distribution: str = "segstream") -> list[Check]:
    """One check per installed dependency of ``distribution`` (core and extras): its version,
    and whether it lies in the range segstream is tested with (pyproject.toml)."""
    try:
        requirements = importlib.metadata.requires(distribution) or []
    except importlib.metadata.PackageNotFoundError:
        return [Check("dependency versions", False, f"{distribution} is not installed as a package, so its tested "
                      f"ranges are unknown", "pip install -e . from the repository")]
    return version_checks(requirements, exclude=distribution)


def version_checks(requirements: list[str], exclude: str = "") -> list[Check]:
    """Checks of the installed versions against requirement lines (``name>=1,<2``, with or
    without an ``extra`` marker): a core requirement not installed is needed; an extra's is
    left out; a version outside its range is flagged with the install command that fixes it."""
    from packaging.requirements import InvalidRequirement, Requirement

    checks, seen = [], {exclude.lower()}
    for line in requirements:
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            continue
        name = requirement.name.lower()
        if name in seen or not requirement.specifier:
            continue
        seen.add(name)
        version = _version(requirement.name)
        wanted = f"pip install '{requirement.name}{requirement.specifier}'"
        if version is None:
            if requirement.marker is None:
                checks.append(Check(f"version: {requirement.name}", False, "not installed", wanted, needed=True))
            continue
        ok = requirement.specifier.contains(version, prereleases=True)
        detail = f"{version} (tested: {requirement.specifier})" if ok else (
            f"{version} is outside the tested range {requirement.specifier}: results may differ from the tested ones")
        checks.append(Check(f"version: {requirement.name}", ok, detail, "" if ok else wanted))
    return checks


def check_onnxruntime() -> Check:
    version = _version("onnxruntime") or _version("onnxruntime-gpu")
    if version is None:
        return Check("ONNX Runtime", False, "not installed", "pip install onnxruntime", needed=True)
    import onnxruntime

    return Check("ONNX Runtime", True, f"{version}; providers {', '.join(onnxruntime.get_available_providers())}")


def check_torch() -> Check:
    version = _version("torch")
    if version is None:
        return Check("PyTorch", False, "not installed (zoo export, training, the torch backend)",
                     "pip install torch==2.13.0 (the CPU build; an unpinned torch pulls a CUDA build of several GB)")
    cuda = "CUDA build" if "+cpu" not in version else "CPU build"
    return Check("PyTorch", True, f"{version} ({cuda})")


def check_gpu() -> list[Check]:
    from segstream.engines.backends.cuda_probe import probe_cuda
    from segstream.engines.backends.tensorrt.versions import INSTALL_HINT

    status = probe_cuda()
    checks = [Check("NVIDIA GPU and driver", status.usable, status.reason,
                    "" if status.usable else "a machine with an NVIDIA GPU and its driver (CPU runs need neither)")]
    version = _version("tensorrt") if importlib.util.find_spec("tensorrt") else None
    checks.append(Check("TensorRT", version is not None, version or "not installed",
                        "" if version else INSTALL_HINT))
    return checks


def check_h264() -> Check:
    from segstream.pipeline.sinks.video import h264_available

    if h264_available():
        return Check("H.264 overlay video", True, f"PyAV {_version('av')} with libx264")
    return Check("H.264 overlay video", False, "overlay.mp4 falls back to mp4v (browsers do not play it)",
                 "pip install av")


def check_ffmpeg() -> Check:
    path = shutil.which("ffmpeg")
    return Check("ffmpeg (--rtsp-out)", path is not None, path or "not found",
                 "" if path else "apt-get install ffmpeg")


def check_gstreamer() -> Check:
    python = shutil.which("python3", path="/usr/bin") or "/usr/bin/python3"
    try:
        ok = subprocess.run([python, "-c", GST_CHECK], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    return Check("GStreamer RTSP server (tests)", ok,
                 "python3-gi with GstRtspServer" if ok else "not found",
                 "" if ok else "apt-get install gstreamer1.0-rtsp gir1.2-gst-rtsp-server-1.0 python3-gi "
                               "gstreamer1.0-plugins-{base,good,ugly} gstreamer1.0-libav")


def check_shm() -> Check:
    try:
        usage = shutil.disk_usage("/dev/shm")
    except OSError:
        return Check("/dev/shm", False, "not available", "mount a tmpfs at /dev/shm (shared-memory rings)", needed=True)
    ok = usage.free >= SHM_WARN_BYTES
    return Check("/dev/shm", ok, f"{usage.free / (1 << 20):.0f} MiB free",
                 "" if ok else "give /dev/shm more room (docker: --shm-size=1g)")


def check_data() -> list[Check]:
    from segstream.assets import ASSETS, DATA_ENV, cache_dir

    folder = os.environ.get(DATA_ENV)
    out = []
    for name, asset in ASSETS.items():
        places = ([os.path.join(folder, asset.filename)] if folder else []) + [str(cache_dir() / asset.filename)]
        found = next((p for p in places if os.path.isfile(p)), None)
        out.append(Check(f"data: {name}", found is not None, found or "not found (downloaded on first use)",
                         "" if found else f"put it in ${DATA_ENV} or {cache_dir()}, from {asset.url}"))
    return out


def run_checks() -> list[Check]:
    """Every check, in the order they are printed."""
    return [Check("Python", True, f"{platform.python_version()} ({platform.machine()})"), check_onnxruntime(),
            check_torch(), *check_gpu(), check_h264(), check_ffmpeg(), check_gstreamer(), check_shm(),
            *check_data(), *check_versions()]


def cmd_doctor(args: argparse.Namespace) -> int:
    """Print the checks; exit 1 if something segstream needs is missing."""
    checks = run_checks()
    width = max(len(c.name) for c in checks)
    for check in checks:
        print(f"{'ok ' if check.ok else '-- '} {check.name:<{width}}  {check.detail}")
        if not check.ok and check.fix:
            print(f"    {'':<{width}}  fix: {check.fix}")
    return 1 if any(c.needed and not c.ok for c in checks) else 0


def add_parsers(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Register ``doctor``."""
    p = sub.add_parser("doctor", help="check this machine: backends, GPU, H.264, RTSP, shared memory, data")
    p.add_argument("--verbose", "-v", action="store_true")
    p.set_defaults(func=cmd_doctor)
