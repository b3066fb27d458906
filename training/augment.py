"""Albumentations pipeline for field photos, handed to ultralytics' Albumentations hook
(``model.train(augmentations=...)``), which applies it with the boxes kept in sync."""

from __future__ import annotations


def field_augmentations(strength: float = 1.0) -> list:
    """Low light, motion and focus blur, JPEG artefacts, glare, shadows, perspective, partial occlusion."""
    import albumentations as A

    p = lambda x: min(1.0, x * strength)  # noqa: E731
    return [
        A.RandomBrightnessContrast(brightness_limit=(-0.45, 0.15), contrast_limit=0.25, p=p(0.5)),  # low light
        A.RandomGamma(gamma_limit=(70, 160), p=p(0.2)),
        A.OneOf([A.MotionBlur(blur_limit=(3, 9)), A.Defocus(radius=(1, 3)), A.GaussianBlur(blur_limit=(3, 5))],
                p=p(0.3)),
        A.ImageCompression(quality_range=(30, 90), p=p(0.3)),
        A.RandomSunFlare(src_radius=80, num_flare_circles_range=(1, 3), p=p(0.05)),  # glare
        A.RandomShadow(p=p(0.15)),
        A.Perspective(scale=(0.02, 0.06), p=p(0.2)),
        A.CoarseDropout(num_holes_range=(1, 4), hole_height_range=(0.05, 0.15), hole_width_range=(0.05, 0.15),
                        p=p(0.2)),  # partial occlusion
        A.GaussNoise(std_range=(0.02, 0.08), p=p(0.2)),
        A.ToGray(p=p(0.05)),
    ]
