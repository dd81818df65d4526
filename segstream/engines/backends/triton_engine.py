"""Triton Inference Server backend (``--backend triton --triton-url grpc://HOST:8001``).

The infer stage sends frames to a Triton server over gRPC (``tritonclient``) instead of
running the model itself. The served model comes from ``segstream triton-repo``: it takes
uint8 BGR images at model resolution and normalises in its graph, so preprocessing here
only resizes, and a frame costs a quarter of the float tensor's bytes on the wire.

- Metadata: the model config's parameter ``segstream_metadata``, checked like a file's.
- Several requests in flight: a batch of N frames (``--batch``) goes out as N requests at
  once, so their round trips overlap and the server's dynamic batcher groups them with
  other pipelines' requests.
- ``--triton-shm [system|cuda]``: the images travel through shared memory registered with
  the server (same host), not inside the gRPC messages: system shared memory, or CUDA
  shared memory where both sides have the GPU (written against tritonclient's documented
  ``cuda_shared_memory`` API; no GPU was here to run it).
- A server that cannot be reached raises ``BackendUnavailable``; the infer stage retries
  with backoff, counting frames as ``backend-unavailable`` in live flow and holding them
  in lossless flow.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from concurrent.futures import Future
from typing import Any

import numpy as np

from segstream.engines.metadata import ModelMetadata
from segstream.errors import BackendUnavailable, ModelError

logger = logging.getLogger(__name__)

DEFAULT_URL = "grpc://127.0.0.1:8001"
TIMEOUT_S = 30.0


def triton_address(url: str) -> str:
    """``HOST:PORT`` from ``grpc://HOST:PORT`` (or ``HOST:PORT``).

    Raises:
        ModelError: another scheme (only gRPC is spoken), or no port.
    """
    scheme, sep, rest = url.partition("://")
    if sep and scheme != "grpc":
        raise ModelError(f"--triton-url takes grpc://HOST:PORT (Triton's gRPC port, 8001 by default), found {url!r}")
    address = rest if sep else url
    host, _, port = address.rstrip("/").rpartition(":")
    if not host or not port.isdigit():
        raise ModelError(f"--triton-url takes grpc://HOST:PORT, e.g. grpc://127.0.0.1:8001, found {url!r}")
    return f"{host}:{port}"


def _client(url: str) -> Any:
    try:
        import tritonclient.grpc as grpcclient
    except ImportError as exc:
        raise BackendUnavailable(f"--backend triton needs tritonclient (pip install 'tritonclient[grpc]'): {exc}") \
            from None
    return grpcclient.InferenceServerClient(url=triton_address(url))


def _unavailable(url: str, exc: Exception) -> BackendUnavailable:
    return BackendUnavailable(f"Triton at {url} did not answer ({exc}); is tritonserver running with that gRPC port?")


def served_model(url: str, model: str) -> tuple[ModelMetadata, int]:
    """The metadata and largest batch of ``model`` on the server at ``url``.

    Raises:
        BackendUnavailable: the server cannot be reached.
        ModelError: the model is not there, not ready, or carries no segstream metadata.
    """
    from tritonclient.utils import InferenceServerException

    from segstream.engines.triton_repo import INPUT_FORMAT, METADATA_PARAMETER

    client = _client(url)
    try:
        if not client.is_server_live():
            raise BackendUnavailable(f"Triton at {url} is not live yet")
        if not client.is_model_ready(model):
            index = [m.get("name") for m in client.get_model_repository_index(as_json=True).get("models", [])]
            raise ModelError(f"Triton at {url} has no ready model {model!r} (its models: {index}); write one with "
                             f"`segstream triton-repo {model} -o REPO` and serve REPO")
        config = client.get_model_config(model, as_json=True)["config"]
    except InferenceServerException as exc:
        raise _unavailable(url, exc) from None
    finally:
        client.close()
    text = config.get("parameters", {}).get(METADATA_PARAMETER, {}).get("string_value")
    if not text:
        raise ModelError(f"Triton model {model!r} at {url} has no parameter {METADATA_PARAMETER!r}; write its "
                         f"repository with `segstream triton-repo`, which puts the metadata there")
    meta = ModelMetadata.from_json(text)
    if meta.extra.get("triton_input") != INPUT_FORMAT:
        raise ModelError(f"Triton model {model!r} takes {meta.extra.get('triton_input')!r} inputs; segstream sends "
                         f"{INPUT_FORMAT} (write the repository with `segstream triton-repo`)")
    return meta, max(int(config.get("max_batch_size", 0)), 1)


class TritonEngine:
    """Sends images to a model on a Triton server.

    Args:
        model_path: the model's name on the server.
        url: the server's gRPC address.
        shm: send images through shared memory registered with the server: ``system``,
            ``cuda``, or "" (inside the gRPC messages).
        threads: unused (the server does the work); accepted for a uniform interface.
    """

    takes_images = True

    def __init__(self, model_path: str, url: str = DEFAULT_URL, shm: str | bool = "", threads: int = 0) -> None:
        self.model = str(model_path)
        self.url = url
        self.metadata, self.max_batch = served_model(url, self.model)
        self._client = _client(url)
        self._outputs = [o.name for o in self.metadata.outputs]
        self._shm: list[tuple[str, Any]] = []  # (region name, handle), one per request in flight
        self._shm_key = f"segstream-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._shm_kind = "system" if shm is True else str(shm or "")
        if self._shm_kind:
            self._open_shm()
        logger.info("triton: model %s at %s (max batch %d%s)", self.model, url, self.max_batch,
                    ", images through shared memory" if shm else "")

    def _open_shm(self) -> None:
        size = self.metadata.input_height * self.metadata.input_width * 3
        for k in range(self.max_batch):
            name = f"{self._shm_key}-{k}"
            if self._shm_kind == "cuda":
                import tritonclient.utils.cuda_shared_memory as cudashm

                handle = cudashm.create_shared_memory_region(name, size, 0)
                self._client.register_cuda_shared_memory(name, cudashm.get_raw_handle(handle), 0, size)
            elif self._shm_kind == "system":
                import tritonclient.utils.shared_memory as sysshm

                handle = sysshm.create_shared_memory_region(name, f"/{name}", size)
                self._client.register_system_shared_memory(name, f"/{name}", size)
            else:
                raise ModelError(f"--triton-shm takes system or cuda, found {self._shm_kind!r}")
            self._shm.append((name, handle))

    def _shm_module(self) -> Any:
        if self._shm_kind == "cuda":
            import tritonclient.utils.cuda_shared_memory as module
        else:
            import tritonclient.utils.shared_memory as module
        return module

    def infer(self, tensor: np.ndarray) -> dict[str, np.ndarray]:
        """Not offered: the served model takes uint8 images (``takes_images``)."""
        raise ModelError("the triton backend sends uint8 images; call infer_image()")

    def infer_image(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """Infer one (H, W, 3) BGR image, or an (N, H, W, 3) batch as N requests in
        flight at once; outputs with the batch first.

        Raises:
            BackendUnavailable: the server cannot be reached or failed the request.
        """
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        images = image[None] if image.ndim == 3 else image
        futures: list[Future] = []
        for k, one in enumerate(images):
            request = grpcclient.InferInput("images", [1, *one.shape], "UINT8")
            if self._shm and k < len(self._shm):
                name, handle = self._shm[k]
                self._shm_module().set_shared_memory_region(handle, [np.ascontiguousarray(one[None])])
                request.set_shared_memory(name, one.nbytes)
            else:
                request.set_data_from_numpy(np.ascontiguousarray(one[None]))
            future: Future = Future()
            futures.append(future)
            self._client.async_infer(self.model, [request], _completer(future), client_timeout=TIMEOUT_S,
                                     outputs=[grpcclient.InferRequestedOutput(n) for n in self._outputs])
        results = []
        for future in futures:
            try:
                results.append(future.result(TIMEOUT_S + 5))
            except (InferenceServerException, TimeoutError) as exc:
                raise _unavailable(self.url, exc) from None
        return {name: np.concatenate([r.as_numpy(name) for r in results]) for name in self._outputs}

    def close(self) -> None:
        """Unregister shared memory and disconnect."""
        if self._shm:
            unregister = self._client.unregister_cuda_shared_memory if self._shm_kind == "cuda" else \
                self._client.unregister_system_shared_memory
            for name, handle in self._shm:
                try:
                    unregister(name)
                except Exception:  # noqa: BLE001 - the server may be gone; the region still goes
                    pass
                self._shm_module().destroy_shared_memory_region(handle)
            self._shm = []
        self._client.close()


def _completer(future: Future) -> Any:
    lock = threading.Lock()

    def done(result: Any, error: Any) -> None:
        with lock:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

    return done
