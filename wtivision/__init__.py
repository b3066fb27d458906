"""wtivision: weapons technical intelligence imaging, offline on CPU.

The runtime needs numpy, opencv, pillow and onnxruntime only; it never imports
torch, ultralytics or paddle, never touches the network and writes nothing at import.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = [
    "Analyzer",
    "Classification",
    "Detection",
    "HeadstampRecord",
    "ImageFindings",
    "TextReading",
    "__version__",
]

_LAZY = {
    "Analyzer": "wtivision.analyzer",
    "Classification": "wtivision.results",
    "Detection": "wtivision.results",
    "HeadstampRecord": "wtivision.results",
    "ImageFindings": "wtivision.results",
    "TextReading": "wtivision.results",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'wtivision' has no attribute {name!r}")
