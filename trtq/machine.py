"""A description of the machine a benchmark ran on: CPU, memory, GPU, driver, TensorRT and runtimes.

Everything is optional: a field that cannot be read is None. Nothing here imports TensorRT at module
import, initialises CUDA, or fails: it reads ``/proc``, ``nvidia-smi`` (when present, with a timeout),
the Jetson release file and package versions.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import socket
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or None


def _memory_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _nvidia_smi() -> list[dict[str, str]]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name,driver_version,memory.total,compute_cap", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        logger.debug("nvidia-smi failed: %s", exc)
        return []
    gpus: list[dict[str, str]] = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 2:
            keys = ("name", "driver", "memory", "compute_capability")
            gpus.append(dict(zip(keys, parts, strict=False)))
    return gpus


def _jetson_release() -> str | None:
    try:
        text = Path("/etc/nv_tegra_release").read_text().strip()
    except OSError:
        return None
    return text.splitlines()[0] if text else None


def _tensorrt_version() -> str | None:
    from trtq.trt.compat import trt_version

    try:
        return trt_version()
    except Exception as exc:  # a broken install must not break a benchmark report
        logger.debug("TensorRT version unavailable: %s", exc)
        return None


def _onnxruntime() -> dict[str, Any] | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    return {"version": ort.__version__, "providers": list(ort.get_available_providers())}


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity where the OS tells, else every CPU)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def _cpu_isa() -> str | None:
    """The CPU's integer-kernel class (``avx2`` = AVX2 without VNNI, ``avx-vnni``, ``avx512-vnni``, ``arm64``)."""
    from trtq.cpuisa import detect_isa

    try:
        return detect_isa().isa
    except Exception:
        return None


def describe_machine(*, device: int = 0) -> dict[str, Any]:
    """Host, OS, CPU, memory, GPUs (nvidia-smi), Jetson release, TensorRT / ONNX Runtime / CUDA bindings."""
    gpus = _nvidia_smi()
    gpu = gpus[device] if 0 <= device < len(gpus) else None
    return {
        "hostname": socket.gethostname(),
        "os": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cpu_isa": _cpu_isa(),
        "cpu_count": os.cpu_count(),
        "memory_gb": _memory_gb(),
        "gpu": gpu.get("name") if gpu else None,
        "gpu_driver": gpu.get("driver") if gpu else None,
        "gpu_memory": gpu.get("memory") if gpu else None,
        "gpu_compute_capability": gpu.get("compute_capability") if gpu else None,
        "gpus": gpus,
        "jetson_release": _jetson_release(),
        "tensorrt": _tensorrt_version(),
        "onnxruntime": _onnxruntime(),
        "numpy": _version("numpy"),
        "pycuda": _version("pycuda"),
        "cuda_python": _version("cuda-python") or _version("cuda-bindings"),
    }


def machine_summary(machine: dict[str, Any]) -> str:
    """One line: ``"host: CPU (2 cores, 24 GB); GPU X (driver D); TensorRT V; ONNX Runtime V"``."""
    parts = [
        f"{machine.get('hostname')}: {machine.get('cpu') or 'unknown CPU'} ({machine.get('cpu_count')} cores"
    ]
    if machine.get("cpu_isa"):
        parts[0] += f", ISA {machine['cpu_isa']}"
    if machine.get("memory_gb"):
        parts[0] += f", {machine['memory_gb']} GB"
    parts[0] += ")"
    if machine.get("gpu"):
        parts.append(f"GPU {machine['gpu']} (driver {machine.get('gpu_driver')})")
    else:
        parts.append("no NVIDIA GPU visible")
    if machine.get("jetson_release"):
        parts.append(str(machine["jetson_release"]))
    parts.append(f"TensorRT {machine['tensorrt']}" if machine.get("tensorrt") else "no TensorRT")
    ort = machine.get("onnxruntime")
    if isinstance(ort, dict):
        parts.append(f"ONNX Runtime {ort.get('version')}")
    return "; ".join(parts)
