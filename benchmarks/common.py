"""Helpers for benchmarks: machine facts, timing statistics, generated photos, RSS sampling."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np


def machine() -> dict:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor()
    mem_gib = 0.0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": mem_gib,
        "os": platform.platform(),
        "python": sys.version.split()[0],
    }
    for mod in ("onnxruntime", "numpy", "cv2", "torch", "ultralytics"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:
            info[mod] = "not installed"
    return info


def stats_ms(samples: list[float]) -> dict:
    a = np.asarray(samples, dtype=np.float64)
    return {
        "n": int(a.size),
        "median_ms": round(float(np.median(a)), 2),
        "p90_ms": round(float(np.percentile(a, 90)), 2),
        "mean_ms": round(float(a.mean()), 2),
        "per_s": round(1000.0 / float(a.mean()), 2),
    }


def time_calls(fn, items, warmup: int = 2, repeat: int = 1) -> list[float]:
    for it in items[:warmup]:
        fn(it)
    out = []
    for _ in range(repeat):
        for it in items:
            t0 = time.perf_counter()
            fn(it)
            out.append((time.perf_counter() - t0) * 1000.0)
    return out


def generated_photos(folder: Path, n: int, w: int = 2048, h: int = 1536, seed: int = 0,
                     sources: list[Path] | None = None) -> list[Path]:
    """``n`` JPEG photos: the example photos resized/jittered if given, else textured scenes."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    srcs = [cv2.imread(str(p)) for p in (sources or [])]
    srcs = [s for s in srcs if s is not None]
    out = []
    for i in range(n):
        p = folder / f"gen_{i:05d}.jpg"
        if not p.exists():
            if srcs:  # the source scaled to fit (aspect kept) on a textured canvas, as a camera frame
                src = srcs[i % len(srcs)]
                f = min(w / src.shape[1], h / src.shape[0]) * rng.uniform(0.6, 1.0)
                obj = cv2.resize(src, (int(src.shape[1] * f), int(src.shape[0] * f)), interpolation=cv2.INTER_CUBIC)
                img = cv2.resize(np.clip(rng.normal(120, 30, (h // 16, w // 16, 3)), 0, 255).astype(np.uint8), (w, h),
                                 interpolation=cv2.INTER_CUBIC)
                y0, x0 = int(rng.integers(0, h - obj.shape[0] + 1)), int(rng.integers(0, w - obj.shape[1] + 1))
                img[y0:y0 + obj.shape[0], x0:x0 + obj.shape[1]] = obj
                img = np.clip(img.astype(np.int16) + rng.integers(-12, 12, (1, 1, 3)), 0, 255).astype(np.uint8)
            else:
                img = np.clip(rng.normal(120, 40, (h // 8, w // 8, 3)), 0, 255).astype(np.uint8)
                img = cv2.resize(img, (w, h), interpolation=cv2.INTER_CUBIC)
            cv2.imwrite(str(p), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        out.append(p)
    return out


def _tree_rss_kib(pid: int) -> int:
    total = 0
    stack = [pid]
    while stack:
        p = stack.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
            for task in Path(f"/proc/{p}/task").iterdir():
                kids = (task / "children").read_text().split()
                stack.extend(int(k) for k in kids)
        except (OSError, ValueError):
            continue
    return total


def run_measured(cmd: list[str], env: dict | None = None, interval: float = 0.05) -> dict:
    """Run a command; return wall seconds and peak RSS of its whole process tree (MiB)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0

    def sample() -> None:
        nonlocal peak
        while proc.poll() is None:
            peak = max(peak, _tree_rss_kib(proc.pid))
            time.sleep(interval)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, err = proc.communicate()
    th.join()
    return {
        "seconds": round(time.perf_counter() - t0, 3),
        "peak_rss_mib": round(peak / 1024, 1),
        "returncode": proc.returncode,
        "stdout": out[-2000:],
        "stderr": err[-2000:],
    }
