"""Train an object detector with ultralytics from a model yaml (no hub weights), offline.

    python -m training.detect --config training/configs/<name>.yaml [--resume]

Config keys and the run folder's contents: see ``training.common``. Field augmentations (low light, blur,
JPEG, glare, shadows, perspective, occlusion) go through ultralytics' ``augmentations`` hook
(``training.augment``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from training import common


def train(cfg: dict[str, Any], resume: bool = False) -> Path:
    """Train a detector; return the run folder."""
    return common.train(cfg, "detect", resume)


def main(argv: list[str] | None = None) -> int:
    return common.run_cli("detect", __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
