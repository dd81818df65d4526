"""Is CUDA usable here? Asked of the driver itself, without importing torch or TensorRT.

A TensorRT runtime created on a machine whose driver is missing or broken can take the
interpreter down instead of raising, so every GPU backend asks ``probe_cuda()`` first.
The probe loads ``libcuda.so.1`` with ctypes and calls ``cuInit``; on a CPU machine it
returns a status whose ``reason`` says what is missing and how to get it.
"""

from __future__ import annotations

import ctypes
import functools
import logging
from dataclasses import dataclass

logger = logging.getLogger(__name__)

_CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75
_CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76
_CUDA_ERROR_NO_DEVICE = 100


@dataclass(frozen=True)
class CudaDevice:
    """One GPU as the driver reports it."""

    index: int
    name: str
    compute_capability: tuple[int, int]
    memory_bytes: int

    @property
    def sm(self) -> str:
        """Compute capability as TensorRT and engine caches write it, e.g. ``sm90``."""
        return f"sm{self.compute_capability[0]}{self.compute_capability[1]}"


@dataclass(frozen=True)
class CudaStatus:
    """What the probe found.

    Attributes:
        usable: a driver is loaded, initialises, and sees at least one device.
        reason: when not usable, what is missing and how to fix it; else a summary.
        driver_version: e.g. 12040 for CUDA 12.4 (0 without a driver).
        devices: the visible GPUs.
    """

    usable: bool
    reason: str
    driver_version: int = 0
    devices: tuple[CudaDevice, ...] = ()


def _check(result: int, call: str) -> None:
    if result != 0:
        raise OSError(f"{call} returned CUDA error {result}")


@functools.lru_cache(maxsize=1)
def probe_cuda() -> CudaStatus:
    """Ask the CUDA driver whether a GPU is usable (cached for the process).

    Example:
        >>> status = probe_cuda()
        >>> status.usable or "driver" in status.reason or "device" in status.reason
        True
    """
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return CudaStatus(False, "no NVIDIA driver: libcuda.so.1 is not on this machine; install the NVIDIA "
                                 "driver (and run on a machine with an NVIDIA GPU)")
    result = lib.cuInit(0)
    if result == _CUDA_ERROR_NO_DEVICE:
        return CudaStatus(False, "the NVIDIA driver sees no GPU (cuInit: no device); check CUDA_VISIBLE_DEVICES "
                                 "and that the GPU is passed into this container")
    if result != 0:
        return CudaStatus(False, f"the NVIDIA driver failed to initialise (cuInit error {result}); check that "
                                 f"the driver and kernel module versions match (nvidia-smi)")
    try:
        version = ctypes.c_int(0)
        _check(lib.cuDriverGetVersion(ctypes.byref(version)), "cuDriverGetVersion")
        count = ctypes.c_int(0)
        _check(lib.cuDeviceGetCount(ctypes.byref(count)), "cuDeviceGetCount")
        devices = tuple(_device(lib, i) for i in range(count.value))
    except OSError as exc:
        return CudaStatus(False, f"the NVIDIA driver answered with an error: {exc}")
    if not devices:
        return CudaStatus(False, "the NVIDIA driver sees no GPU; check CUDA_VISIBLE_DEVICES", version.value)
    names = ", ".join(f"{d.name} ({d.sm})" for d in devices)
    return CudaStatus(True, f"CUDA driver {version.value // 1000}.{version.value % 1000 // 10}: {names}",
                      version.value, devices)


def _device(lib: ctypes.CDLL, index: int) -> CudaDevice:
    handle = ctypes.c_int(0)
    _check(lib.cuDeviceGet(ctypes.byref(handle), index), "cuDeviceGet")
    name = ctypes.create_string_buffer(256)
    _check(lib.cuDeviceGetName(name, 256, handle), "cuDeviceGetName")
    major, minor = ctypes.c_int(0), ctypes.c_int(0)
    _check(lib.cuDeviceGetAttribute(ctypes.byref(major), _CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, handle),
           "cuDeviceGetAttribute")
    _check(lib.cuDeviceGetAttribute(ctypes.byref(minor), _CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, handle),
           "cuDeviceGetAttribute")
    memory = ctypes.c_size_t(0)
    _check(lib.cuDeviceTotalMem_v2(ctypes.byref(memory), handle), "cuDeviceTotalMem_v2")
    return CudaDevice(index, name.value.decode(errors="replace"), (major.value, minor.value), memory.value)
