"""Train an image classifier (e.g. a firearm typology) with ultralytics from a model yaml, offline.

    python -m training.classify --config training/configs/<name>.yaml [--resume]

``data`` is an ImageNet-style folder (train/<class>/*.jpg, val/<class>/*.jpg). Other keys as in
``training.detect``.
"""

from __future__ import annotations

from pathlib import Path

from training.common import REPO, offline, prepare_run, run_cli, seed_everything


def train(cfg: dict, resume: bool = False) -> Path:
    offline()
    from ultralytics import YOLO

    seed_everything(int(cfg.get("seed", 0)))
    project = Path(cfg.get("runs", REPO / "runs" / "classify")).resolve()
    run_dir = project / cfg["name"]
    last = run_dir / "weights" / "last.pt"
    if resume and last.is_file():
        YOLO(str(last)).train(resume=True)
        return run_dir
    data = Path(cfg["data"])
    prepare_run(cfg, run_dir, data if data.is_dir() else None)
    model = YOLO(cfg.get("model", "yolov8n-cls.yaml"))
    args = dict(data=str(data), epochs=int(cfg.get("epochs", 50)), imgsz=int(cfg.get("imgsz", 224)),
                batch=int(cfg.get("batch", 32)), seed=int(cfg.get("seed", 0)), deterministic=True,
                device=cfg.get("device", "cpu"), workers=int(cfg.get("workers", 2)), project=str(project),
                name=cfg["name"], exist_ok=True, amp=False, plots=False, pretrained=False, verbose=False)
    args.update(cfg.get("train_args", {}))
    model.train(**args)
    return run_dir


def main(argv: list[str] | None = None) -> int:
    return run_cli(train, __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
