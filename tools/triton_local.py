#!/usr/bin/env python3
"""A local Triton Inference Server for tests and benchmarks, from the ``tritonserver``
binary inside the ``nvidia-pytriton`` wheel (it bundles only the Python backend: serve a
repository written with ``segstream triton-repo --platform python``).

The server gets a virtual environment of its own, made by ``.ci/run`` (or by hand)::

    python3 -m venv ~/.cache/segstream-triton
    ~/.cache/segstream-triton/bin/pip install nvidia-pytriton "numpy<2" onnxruntime

(``nvidia-pytriton`` requires numpy < 2: under numpy 2 its Python-backend stub hands back
empty outputs, or all-zero inputs, without a word.) The stub embeds libpython and ignores
``PYTHONPATH``; it takes its prefix from the first ``python3`` on ``PATH``, so the venv's
``bin`` goes first there, and its base Python's libpython folder on ``LD_LIBRARY_PATH``.

    python tools/triton_local.py REPO [--grpc-port 8001]     # serve REPO until Ctrl-C
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_VENV = Path(os.environ.get("SEGSTREAM_TRITON_VENV", Path.home() / ".cache" / "segstream-triton"))


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def triton_missing(venv: Path = DEFAULT_VENV) -> str | None:
    """Why no local Triton can start (None when it can)."""
    if not _venv_python(venv).exists():
        return f"no Triton venv at {venv} (.ci/run makes it; see tools/triton_local.py)"
    if _server_root(venv) is None:
        return f"the venv at {venv} has no nvidia-pytriton (pip install nvidia-pytriton)"
    check = subprocess.run([str(_venv_python(venv)), "-c", "import numpy, onnxruntime; assert numpy.__version__ < '2'"],
                           capture_output=True)
    if check.returncode != 0:
        return f"the venv at {venv} needs numpy < 2 and onnxruntime for the Python-backend models"
    return None


def _server_root(venv: Path) -> Path | None:
    found = list(venv.glob("lib/python3*/site-packages/pytriton/tritonserver"))
    return found[0] if found else None


def _venv_python_facts(venv: Path) -> tuple[str, str]:
    """(X.Y of the venv's Python, the folder of its base Python's libpython)."""
    code = "import sys, sysconfig; print(*sys.version_info[:2], sep='.'); print(sysconfig.get_config_var('LIBDIR'))"
    out = subprocess.run([str(_venv_python(venv)), "-c", code], capture_output=True, text=True, check=True).stdout
    version, libdir = out.split()
    return version, libdir


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalTriton:
    """``tritonserver`` serving ``repo`` on 127.0.0.1 (gRPC on ``grpc_port``).

    Args:
        repo: the model repository.
        venv: the server's virtual environment.
        grpc_port: its gRPC port (0: a free one).
    """

    def __init__(self, repo: Path, venv: Path = DEFAULT_VENV, grpc_port: int = 0) -> None:
        missing = triton_missing(venv)
        if missing:
            raise RuntimeError(missing)
        self.repo, self.venv = Path(repo), venv
        self.grpc_port = grpc_port or free_port()
        self.proc: subprocess.Popen | None = None
        self._work = Path(tempfile.mkdtemp(prefix="segstream-triton-"))
        self.log = self._work / "tritonserver.log"
        # The Python backend names its shared-memory regions by this prefix, so the ones
        # a killed server leaves behind can be found and removed (see ``leftover_shm``).
        self.shm_prefix = f"segstream_triton_{self._work.name.rsplit('-', 1)[-1]}_"

    @property
    def url(self) -> str:
        return f"grpc://127.0.0.1:{self.grpc_port}"

    def _backends(self, root: Path, version: str) -> Path:
        python = self._work / "backends" / "python"
        if not python.is_dir():
            python.mkdir(parents=True)
            for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
                (python / name).symlink_to(root / "backends" / "python" / name)
            shutil.copy2(root / "python_backend_stubs" / version / "triton_python_backend_stub", python)
        return python.parent

    def start(self, ready_timeout_s: float = 60) -> "LocalTriton":
        """Start the server and wait until it is ready."""
        root = _server_root(self.venv)
        assert root is not None
        # The Python-backend stub embeds libpython and ignores PYTHONPATH: it finds its
        # prefix from the first ``python3`` on PATH, so the venv's bin goes first (its
        # pyvenv.cfg then brings the venv's site-packages, numpy < 2 included), and the
        # libpython of the venv's base Python goes on LD_LIBRARY_PATH. Copied out of the
        # wheel, the stub no longer finds the wheel's own libraries by its rpath either.
        version, libdir = _venv_python_facts(self.venv)
        vendored = str(root.parent.parent / "nvidia_pytriton.libs")
        libraries = [libdir, vendored, os.environ.get("LD_LIBRARY_PATH")]
        env = {**os.environ, "LD_LIBRARY_PATH": os.pathsep.join(filter(None, libraries)),
               "PATH": os.pathsep.join([str(self.venv / "bin"), os.environ.get("PATH", "")])}
        cmd = [str(root / "bin" / "tritonserver"), "--model-repository", str(self.repo),
               "--backend-directory", str(self._backends(root, version)), "--grpc-address", "127.0.0.1",
               "--grpc-port", str(self.grpc_port), "--allow-http", "false", "--allow-metrics", "false",
               "--log-verbose", "0", "--exit-on-error", "true",
               f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}"]
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log.open("ab"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self._wait_ready(ready_timeout_s)
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(url=f"127.0.0.1:{self.grpc_port}")
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(f"tritonserver exited ({self.proc.returncode}):\n{self.log.read_text()[-3000:]}")
                try:
                    if client.is_server_ready():
                        return
                except Exception:  # noqa: BLE001 - not listening yet
                    pass
                time.sleep(0.3)
        finally:
            client.close()
        raise RuntimeError(f"tritonserver not ready after {timeout_s:.0f} s:\n{self.log.read_text()[-3000:]}")

    def _signal_group(self, sig: int) -> None:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def leftover_shm(self) -> list[Path]:
        """The shared-memory regions of this server's Python backend still in /dev/shm."""
        return sorted(Path("/dev/shm").glob(f"{self.shm_prefix}*"))

    def stop(self, grace_s: float = 15) -> None:
        """Stop the server and its backend stubs: SIGTERM (Triton then unloads its models and
        frees their shared memory), SIGKILL after ``grace_s``; then remove whatever shared
        memory of its Python backend is left (a killed stub frees none)."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self._signal_group(signal.SIGTERM)
                try:
                    self.proc.wait(grace_s)
                except subprocess.TimeoutExpired:
                    pass
            self._signal_group(signal.SIGKILL)  # the server, and any stub that outlived it
            self.proc.wait()
        self.proc = None
        for region in self.leftover_shm():
            region.unlink(missing_ok=True)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description="serve a model repository with the nvidia-pytriton tritonserver")
    parser.add_argument("repo")
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    parser.add_argument("--grace", type=float, default=5.0, metavar="S",
                        help="on Ctrl-C or SIGTERM, how long the server may take to unload before SIGKILL")
    args = parser.parse_args()

    def stop(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    # The server runs in a session of its own (so that a stop reaches its backend stubs):
    # a SIGTERM or SIGHUP to this script must stop it too, not orphan it.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    server = LocalTriton(Path(args.repo), args.venv, args.grpc_port)
    try:
        server.start()
        print(f"tritonserver ready at {server.url} (log: {server.log}); Ctrl-C to stop", flush=True)
        assert server.proc is not None
        # Poll, not wait(): a signal that the kernel hands to one of gRPC's threads does not
        # interrupt a main thread blocked in waitpid, and the handler would never run (seen
        # under load: the tool ignored SIGTERM and its server outlived it).
        while server.proc.poll() is None:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the clean-up short
        server.stop(args.grace)
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
