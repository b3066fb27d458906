"""Teach a narrow detector (student) to give the raw head outputs of a wide one (teacher): knowledge distillation.

    python -m training.distill --teacher models/sources/detector-v1.7.pt \\
        --student runs/prune/detector-v1.7w375-init.pt --data runs/data/detector-v1.7 \\
        --imgsz 416 --hours 1.5 --out runs/distill/detector-v1.9m

Why: a detector pruned from the default (``training.prune``) starts close to it but not close enough to ship,
and fine-tuning it on boxes alone needs many GPU epochs. Distillation uses a far richer signal: on every
augmented training photo, at every anchor of every level, the student is pulled towards the teacher's class
scores and box distributions. No label is read, so any augmentation is allowed (both see the same pixels) and
the teacher's test split stays unseen as long as ``--data``'s train split is the teacher's own.

Loss, per batch (YOLOv8 heads: 4 x ``reg_max`` box-side logits and ``nc`` class logits per anchor):
- classes: binary cross-entropy of the student's logits against the teacher's sigmoid scores, summed and
  divided by the sum of the teacher's scores (as ultralytics normalises its own class loss);
- boxes: KL divergence of the student's side distributions from the teacher's (softmax over ``reg_max`` bins,
  the four sides summed), weighted at each anchor by the teacher's highest class score, so anchors on objects
  count and empty ground does not.

BatchNorm statistics stay as the student came (frozen; small CPU batches would make them noisy); weights and
BN affine parameters train with AdamW, the learning rate following a cosine over the time budget (``--hours``)
or over ``--steps``. Checkpoints (``weights/last.pt`` every ``--save-every`` minutes, ``weights/best.pt`` at
the end) are ordinary ultralytics checkpoints carrying ``train_args`` (imgsz, data), so ``export.onnx`` takes
the run folder as it takes a training run; ``distill.json`` logs the loss curve.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


def augment_letterbox(im: np.ndarray, imgsz: int, rng: np.random.Generator, gray_p: float = 0.25) -> np.ndarray:
    """A random view of a BGR photo as a CHW float32 RGB array in [0, 1], ``imgsz`` square, grey padded.

    Random zoom (0.6-1.0 of the longest side fitting ``imgsz``, or a crop of up to 1.6x), position, mirror,
    brightness / contrast and, with probability ``gray_p``, grey."""
    import cv2

    h, w = im.shape[:2]
    zoom = float(rng.uniform(0.6, 1.6))
    scale = zoom * imgsz / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    small = cv2.resize(im, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    canvas = np.full((imgsz, imgsz, 3), 114, np.uint8)
    # place the (possibly larger) view at a random offset; a view larger than the canvas is cropped at random
    oy, ox = int(rng.integers(-(max(nh - imgsz, 0)), max(imgsz - nh, 0) + 1)), \
        int(rng.integers(-(max(nw - imgsz, 0)), max(imgsz - nw, 0) + 1))
    y0, x0 = max(oy, 0), max(ox, 0)
    sy, sx = max(-oy, 0), max(-ox, 0)
    ch, cw = min(imgsz - y0, nh - sy), min(imgsz - x0, nw - sx)
    canvas[y0:y0 + ch, x0:x0 + cw] = small[sy:sy + ch, sx:sx + cw]
    if rng.random() < 0.5:
        canvas = canvas[:, ::-1]
    out = canvas.astype(np.float32) * float(rng.uniform(0.75, 1.25)) + float(rng.uniform(-25, 25))
    if rng.random() < gray_p:
        out = np.repeat(out.mean(axis=2, keepdims=True), 3, axis=2)
    return np.ascontiguousarray(np.clip(out, 0, 255)[:, :, ::-1].transpose(2, 0, 1) / 255.0, dtype=np.float32)


class PhotoViews:
    """Torch dataset of random views (``augment_letterbox``) of the photos in a folder; unreadable files are
    skipped with a warning when listed."""

    def __init__(self, images: list[Path], imgsz: int, seed: int = 0, gray_p: float = 0.25):
        import cv2

        self.imgsz, self.seed, self.gray_p = imgsz, seed, gray_p
        self.images = []
        for p in images:
            if cv2.imread(str(p), cv2.IMREAD_REDUCED_COLOR_8) is None:
                logger.warning("skipping unreadable image %s", p)
            else:
                self.images.append(p)
        if not self.images:
            raise ValueError("no readable training image")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Any:
        import cv2
        import torch

        im = cv2.imread(str(self.images[i]), cv2.IMREAD_COLOR)
        rng = np.random.default_rng([self.seed, i, int(torch.randint(0, 2**31 - 1, (1,)).item())])
        return torch.from_numpy(augment_letterbox(im, self.imgsz, rng, self.gray_p))


def head_outputs(model: Any, x: Any) -> tuple[Any, Any]:
    """Raw (box logits [B, 4*reg_max, A], class logits [B, nc, A]) of a YOLOv8 DetectionModel."""
    out = model(x)
    raw = out if isinstance(out, dict) else out[1]
    if "one2many" in raw:
        raw = raw["one2many"]
    return raw["boxes"], raw["scores"]


def distill_loss(s_box: Any, s_cls: Any, t_box: Any, t_cls: Any, reg_max: int = 16,
                 box_weight: float = 1.0) -> tuple[Any, dict]:
    """Class BCE against the teacher's scores + ``box_weight`` x score-weighted KL of the box-side distributions."""
    import torch.nn.functional as F

    t_score = t_cls.sigmoid()
    norm = t_score.sum().clamp(min=1.0)
    l_cls = F.binary_cross_entropy_with_logits(s_cls, t_score, reduction="sum") / norm
    l_box = box_kl(s_box, t_box, t_score, reg_max)
    return l_cls + box_weight * l_box, {"cls": float(l_cls.detach()), "box": float(l_box.detach())}


def box_kl(s_box: Any, t_box: Any, t_score: Any, reg_max: int = 16) -> Any:
    """KL divergence of the student's box-side distributions from the teacher's (softmax over ``reg_max`` bins,
    four sides summed), averaged over anchors weighted by the teacher's highest class score there."""
    import torch
    import torch.nn.functional as F

    b, _, a = s_box.shape
    t_p = F.softmax(t_box.view(b, 4, reg_max, a), dim=2)
    s_logp = F.log_softmax(s_box.view(b, 4, reg_max, a), dim=2)
    kl = (t_p * (torch.log(t_p.clamp(min=1e-9)) - s_logp)).sum(dim=2).sum(dim=1)  # [B, A]
    w = t_score.max(dim=1).values  # [B, A]
    return (kl * w).sum() / w.sum().clamp(min=1e-6)


def _freeze_bn(model: Any) -> None:
    import torch

    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()


def distill(teacher: Any, student: Any, loader: Any, *, lr: float = 1e-5, hours: float | None = None,
            steps: int | None = None, box_weight: float = 1.0, on_step: Any = None) -> list[dict[str, float]]:
    """Train ``student`` towards ``teacher`` on ``loader`` batches until ``hours`` or ``steps`` run out
    (cosine learning rate over whichever is given); returns the per-step log, which ``on_step(log)`` also
    receives after every step."""
    import torch

    if (hours is None) == (steps is None):
        raise ValueError("give exactly one of hours or steps")
    if (hours is not None and hours <= 0) or (steps is not None and steps < 1):
        raise ValueError(f"nothing to do: hours={hours}, steps={steps}")
    if len(teacher.names) != len(student.names):
        raise ValueError(f"teacher has {len(teacher.names)} classes, student {len(student.names)}")
    teacher = teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    _freeze_bn(student)
    for p in student.parameters():
        p.requires_grad_(True)
    reg_max = int(getattr(student.model[-1], "reg_max", 16))
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=lr, weight_decay=1e-4)
    t0, log, step = time.monotonic(), [], 0
    budget = hours * 3600 if hours is not None else None
    while True:
        for x in loader:
            frac = (time.monotonic() - t0) / budget if budget else step / steps
            if frac >= 1:
                return log
            for g in opt.param_groups:
                g["lr"] = lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
            with torch.no_grad():
                t_box, t_cls = head_outputs(teacher, x)
            s_box, s_cls = head_outputs(student, x)
            loss, parts = distill_loss(s_box, s_cls, t_box, t_cls, reg_max, box_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            log.append({"step": step, "s": round(time.monotonic() - t0, 1), "lr": opt.param_groups[0]["lr"], **parts})
            if on_step:
                on_step(log)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.distill", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", type=Path, required=True, help="ultralytics checkpoint of the wide detector")
    ap.add_argument("--student", type=Path, required=True, help="checkpoint of the narrow one (training.prune)")
    ap.add_argument("--data", type=Path, required=True, help="built dataset: photos of images/train are used")
    ap.add_argument("--out", type=Path, required=True, help="run folder (weights/best.pt, distill.json, run.json)")
    ap.add_argument("--imgsz", type=int, default=416)
    budget = ap.add_mutually_exclusive_group(required=True)
    budget.add_argument("--hours", type=float, help="time budget (the learning rate decays over it)")
    budget.add_argument("--steps", type=int, help="number of batches instead of a time budget")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-5,
                    help="AdamW peak learning rate (1e-4 and more made a pruned v1.7 worse, see training/README)")
    ap.add_argument("--box-weight", type=float, default=2.0, help="weight of the box loss against the class loss")
    ap.add_argument("--gray-p", type=float, default=0.25, help="share of views turned grey")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--save-every", type=float, default=15.0, help="minutes between weights/last.pt saves")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import torch

    from training.common import load_checkpoint, offline, prepare_run, save_checkpoint, seed_everything
    from wtivision.errors import DatasetError
    from wtivision.evaluate import split_images

    offline()
    seed_everything(a.seed)
    if a.threads:
        torch.set_num_threads(a.threads)
    try:
        images = [p for p, _ in split_images(a.data, "train")]
    except DatasetError as exc:
        raise SystemExit(str(exc)) from None
    if not images:
        raise SystemExit(f"no training image under {a.data}")
    teacher, student = load_checkpoint(a.teacher, "--teacher")[0], load_checkpoint(a.student, "--student")[0]
    views = PhotoViews(images, a.imgsz, a.seed, a.gray_p)
    loader = torch.utils.data.DataLoader(views, batch_size=a.batch, shuffle=True, num_workers=a.workers,
                                         drop_last=True, persistent_workers=a.workers > 0)
    cfg = {"name": a.out.name, "teacher": str(a.teacher), "student": str(a.student), "imgsz": a.imgsz,
           "batch": a.batch, "lr": a.lr, "box_weight": a.box_weight, "hours": a.hours, "steps": a.steps,
           "gray_p": a.gray_p, "seed": a.seed}
    prepare_run(cfg, a.out, a.data / "data.yaml")
    train_args = {"imgsz": a.imgsz, "data": str(a.data / "data.yaml"), "task": "detect", "distilled_from":
                  str(a.teacher)}
    last_save = [time.monotonic()]

    def on_step(log: list[dict[str, float]]) -> None:
        step, row = len(log), log[-1]
        if step % 20 == 0:
            recent = log[-20:]
            logger.info("step %d %.0f s lr %.2e cls %.4f box %.4f", step, row["s"], row["lr"],
                        np.mean([r["cls"] for r in recent]), np.mean([r["box"] for r in recent]))
        if time.monotonic() - last_save[0] > a.save_every * 60:
            save_checkpoint(student, a.out / "weights" / "last.pt", train_args,
                            {"distill": {**cfg, "steps_done": step}})
            (a.out / "distill.json").write_text(json.dumps({"config": cfg, "log": log}), encoding="utf-8")
            last_save[0] = time.monotonic()

    log = distill(teacher, student, loader, lr=a.lr, hours=a.hours, steps=a.steps, box_weight=a.box_weight,
                  on_step=on_step)
    info = {**cfg, "steps_done": len(log), "images_seen": len(log) * a.batch, "train_photos": len(views)}
    for kind in ("last", "best"):
        save_checkpoint(student, a.out / "weights" / f"{kind}.pt", train_args, {"distill": info})
    (a.out / "distill.json").write_text(json.dumps({"config": cfg, "summary": info, "log": log}), encoding="utf-8")
    logger.info("distilled %s -> %s: %s", a.teacher, a.out, info)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
