"""Training augmentation: the reference's albumentations pipeline, seeded per sample and epoch.

``densebench`` is the reference's ``SegmentationTransforms.get_training_transforms``
(``data/transforms.py`` of lingxitong/PFM_Segmentation) transform for transform, with the
same parameters and probabilities, minus its final ``Normalize``/``ToTensorV2``: here
images stay uint8 and each model's extractor normalises them, as for every other input.
``histology`` is that list without the weather effects (rain, snow, fog), which model no
artefact of a stained slide; ``corrected`` trains with it. ``none`` trains on the
resized images as they are.

Every draw is seeded by (run seed, epoch, sample index), not by a stream shared across
the run, so an epoch's augmented images are the same in a resumed job as in an
uninterrupted one, in any batch order, on any machine. The reference seeds one stream
(``Compose(seed=42)``) consumed by its data-loader workers, so its own draws depend on
the worker count; the distributions are the same.

The val/test transform is a plain resize (:func:`harness.data.loader.resize_pair`).
"""

from __future__ import annotations

import os
import threading
import zlib
from collections.abc import Callable, Sequence

import numpy as np

from harness.config import Augment


def _pipeline(name: str, size: int):
    # albumentations asks PyPI for a newer version on import (2 s timeout, a warning offline): never
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import albumentations as A

    geometric = [
        A.RandomResizedCrop(size=(size, size), scale=(0.5, 1.0), ratio=(0.75, 1.33), p=1.0),
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.1),
        A.RandomRotate90(p=0.3),
        A.Transpose(p=0.3),
        A.OneOf([
            A.ElasticTransform(alpha=1, sigma=50, p=1.0),
            A.GridDistortion(num_steps=5, distort_limit=0.3, p=1.0),
            A.OpticalDistortion(distort_limit=0.2, p=1.0),
        ], p=0.3),
    ]
    photometric = [
        A.OneOf([
            A.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, p=1.0),
            A.HueSaturationValue(hue_shift_limit=20, sat_shift_limit=30, val_shift_limit=20, p=1.0),
            A.RGBShift(r_shift_limit=25, g_shift_limit=25, b_shift_limit=25, p=1.0),
        ], p=0.5),
        A.OneOf([
            A.GaussNoise(p=1.0),
            A.MultiplicativeNoise(multiplier=(0.9, 1.1), per_channel=True, p=1.0),
        ], p=0.3),
        A.OneOf([
            A.GaussianBlur(blur_limit=(3, 7), p=1.0),
            A.MotionBlur(blur_limit=7, p=1.0),
            A.MedianBlur(blur_limit=7, p=1.0),
        ], p=0.2),
    ]
    weather = [
        A.OneOf([
            A.RandomRain(brightness_coefficient=0.7, p=1.0),
            A.RandomSnow(brightness_coeff=2.5, p=1.0),
            A.RandomFog(alpha_coef=0.08, p=1.0),
        ], p=0.2),
    ]
    lighting = [
        A.RandomBrightnessContrast(brightness_limit=0.3, contrast_limit=0.3, p=0.4),
        A.RandomGamma(gamma_limit=(70, 130), p=0.3),
        A.CoarseDropout(p=0.3),
    ]
    steps = geometric + photometric + (weather if name == "densebench" else []) + lighting
    return A.Compose(steps, seed=0)


class Augmenter:
    """Augmented training batches of fixed size from a split's original images (sizes may differ).

    ``batch(indices, epoch)`` returns uint8 ``[b, S, S, 3]`` images and ``[b, S, S]`` masks.
    Masks follow every geometric transform (nearest neighbour); photometric transforms
    leave them alone, and ``CoarseDropout`` blanks pixels of the image only, as the reference.
    """

    def __init__(self, name: Augment, size: int, seed: int, images: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> None:
        if name == "none":
            raise ValueError("augment 'none' trains on the resized split: no Augmenter")
        self.name, self.size, self.seed = name, size, seed
        self.images, self.masks = images, masks
        self.transform = _pipeline(name, size)
        # seeding and applying share the pipeline's random state: batches prefetched on several threads take turns
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.images)

    def sample_seed(self, index: int, epoch: int) -> int:
        """The seed of one sample's draws in one epoch: a function of (run seed, epoch, index) only."""
        return zlib.crc32(f"{self.seed}/{epoch}/{index}".encode())

    def one(self, index: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            self.transform.set_random_seed(self.sample_seed(index, epoch))
            out = self.transform(image=self.images[index], mask=self.masks[index])
        return out["image"], out["mask"]

    def batch(self, indices: Sequence[int] | np.ndarray, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        pairs = [self.one(int(i), epoch) for i in indices]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


class Resized:
    """``augment=none``: the resized split's own arrays, the same every epoch."""

    def __init__(self, images: np.ndarray, masks: np.ndarray) -> None:
        self.images, self.masks = images, masks

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, indices: Sequence[int] | np.ndarray, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        return self.images[indices], self.masks[indices]


TrainImages = Augmenter | Resized


def training_images(augment: Augment, size: int, seed: int, resized: tuple[np.ndarray, np.ndarray],
                    originals: Callable[[], tuple[Sequence[np.ndarray], Sequence[np.ndarray]]]) -> TrainImages:
    """Where a run's training batches come from: the resized arrays, or the originals augmented (read only then)."""
    if augment == "none":
        return Resized(*resized)
    images, masks = originals()
    return Augmenter(augment, size, seed, images, masks)
