"""Train an image classifier (e.g. a firearm typology) with ultralytics from a model yaml, offline.

    python -m training.classify --config training/configs/<name>.yaml [--resume]

``data`` is an ImageNet-style folder (``train/<class>/*.jpg``, ``val/<class>/*.jpg``, optional ``test/``),
e.g. the ``classify/`` folder that ``datasets.build`` writes for image-level (csv) sources. Other keys and
the run folder: see ``training.common``. Field augmentations run before ultralytics' own classification
transforms (``training.augment.field_classification_trainer``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from training import common


def train(cfg: dict[str, Any], resume: bool = False) -> Path:
    """Train a classifier; return the run folder."""
    return common.train(cfg, "classify", resume)


def main(argv: list[str] | None = None) -> int:
    return common.run_cli("classify", __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
