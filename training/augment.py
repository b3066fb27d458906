"""Albumentations pipeline for field photos and how it is wired into ultralytics training.

Detection: the list from :func:`field_augmentations` is passed as ultralytics' own ``augmentations``
train argument. Ultralytics (``ultralytics/data/augment.py``, class ``Albumentations``) composes it with
``bbox_params`` so boxes follow spatial transforms (perspective), applies it after mosaic/affine and before
HSV/flip, serialises it into the run's ``args.yaml`` and checkpoints (``A.to_dict``), and restores it on
``--resume``. No monkey-patching is involved.

Classification: ultralytics' classification dataset uses torchvision transforms and ignores
``augmentations``; :class:`FieldClassificationTrainer` wraps the training dataset's transform so the
same albumentations pipeline runs on each image first (see ``training.classify``).
"""

from __future__ import annotations

from typing import Any


def field_augmentations(strength: float = 1.0, gray: float = 0.05) -> list:
    """Low light, motion and focus blur, JPEG artefacts, glare, shadows, perspective, partial occlusion,
    grey (probability ``gray``).

    ``strength`` scales every probability (0 disables, 1 = defaults below)."""
    import albumentations as A

    def p(x: float) -> float:
        return min(1.0, x * strength)

    return [
        A.RandomBrightnessContrast(brightness_limit=(-0.45, 0.15), contrast_limit=0.25, p=p(0.5)),  # low light
        A.RandomGamma(gamma_limit=(70, 160), p=p(0.2)),
        A.OneOf([A.MotionBlur(blur_limit=(3, 9)), A.Defocus(radius=(1, 3)), A.GaussianBlur(blur_limit=(3, 5))],
                p=p(0.3)),  # hand shake, missed focus
        A.ImageCompression(quality_range=(30, 90), p=p(0.3)),  # messaging-app JPEG artefacts
        A.RandomSunFlare(src_radius=80, num_flare_circles_range=(1, 3), p=p(0.05)),  # glare
        A.RandomShadow(p=p(0.15)),
        A.Perspective(scale=(0.02, 0.06), p=p(0.2)),
        A.CoarseDropout(num_holes_range=(1, 4), hole_height_range=(0.05, 0.15), hole_width_range=(0.05, 0.15),
                        p=p(0.2)),  # partial occlusion
        A.GaussNoise(std_range=(0.02, 0.08), p=p(0.2)),  # sensor noise in low light
        A.ToGray(p=p(gray)),
    ]


class AlbumentationsThen:
    """A picklable transform: albumentations on the (PIL RGB) image, then the original transform."""

    def __init__(self, transforms: list, then: Any) -> None:
        import albumentations as A

        self.compose = A.Compose(transforms)
        self.then = then

    def __call__(self, im: Any) -> Any:
        import numpy as np
        from PIL import Image

        out = self.compose(image=np.asarray(im))["image"]
        return self.then(Image.fromarray(out))


def field_classification_trainer(strength: float = 1.0) -> type:
    """An ultralytics ``ClassificationTrainer`` subclass whose training set gets the field augmentations."""
    from ultralytics.models.yolo.classify import ClassificationTrainer

    class FieldClassificationTrainer(ClassificationTrainer):
        def build_dataset(self, img_path: str, mode: str = "train", batch: Any = None) -> Any:
            ds = super().build_dataset(img_path, mode, batch)
            if mode == "train" and strength > 0:
                ds.torch_transforms = AlbumentationsThen(field_augmentations(strength), ds.torch_transforms)
            return ds

    return FieldClassificationTrainer
