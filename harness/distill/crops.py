"""DINOv2 multi-crop and iBOT masks, in numpy and PIL, seeded per step.

Every random choice of step ``s`` comes from ``numpy.random.default_rng((seed, s))``, so
a run resumed from a checkpoint at step ``s`` draws exactly the crops and masks the
uninterrupted run would have drawn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from harness.distill.config import DistillConfig


def random_resized_crop(rng: np.random.Generator, image: np.ndarray, size: int, scale: tuple[float, float],
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> np.ndarray:
    """torchvision's RandomResizedCrop (bicubic), then a random horizontal flip."""
    h, w = image.shape[:2]
    area = h * w
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            break
    else:  # fall back to the whole image
        top, left, ch, cw = 0, 0, h, w
    crop = Image.fromarray(image[top:top + ch, left:left + cw]).resize((size, size), Image.Resampling.BICUBIC)
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(crop)


def photometric(rng: np.random.Generator, crop: np.ndarray, blur_p: float) -> np.ndarray:
    """DINOv2's colour jitter (p 0.8: brightness 0.4, contrast 0.4, saturation 0.2), grayscale (p 0.2) and blur (p ``blur_p``)."""
    img = Image.fromarray(crop)
    if rng.random() < 0.8:
        for enhance, strength in ((ImageEnhance.Brightness, 0.4), (ImageEnhance.Contrast, 0.4), (ImageEnhance.Color, 0.2)):
            img = enhance(img).enhance(float(rng.uniform(1 - strength, 1 + strength)))
    if rng.random() < 0.2:
        img = img.convert("L").convert("RGB")
    if rng.random() < blur_p:
        img = img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.1, 2.0))))
    return np.asarray(img)


def ibot_masks(rng: np.random.Generator, n: int, grid: int, probability: float, ratio: tuple[float, float]) -> np.ndarray:
    """``bool [n, grid*grid]``: each image is masked with ``probability``, a share in ``ratio`` of its patches at random."""
    masks = np.zeros((n, grid * grid), bool)
    for i in range(n):
        if rng.random() < probability:
            k = max(1, int(round(rng.uniform(*ratio) * grid * grid)))
            masks[i, rng.choice(grid * grid, k, replace=False)] = True
    return masks


@dataclass(frozen=True)
class Batch:
    """One step's inputs. Global crops are view-major: ``[2 * B]`` is view 0 of every image, then view 1."""

    index: np.ndarray  # [B] image indices
    global_crops: np.ndarray  # uint8 [2B, G, G, 3]
    local_crops: np.ndarray  # uint8 [L*B, l, l, 3]
    masks: np.ndarray  # bool [2B, (G/p)^2]


def make_batch(cfg: DistillConfig, images: list[np.ndarray], step: int, fixed_globals: bool = False) -> Batch:
    """The crops of ``step``. ``fixed_globals``: the global views are the image resized and its mirror
    (no jitter), so their teacher features can be computed once (``--teacher-cache``)."""
    rng = np.random.default_rng((cfg.seed, step))
    index = rng.choice(len(images), cfg.batch_size, replace=len(images) < cfg.batch_size)
    views: list[list[np.ndarray]] = [[], []]
    for i in index:
        if fixed_globals:
            base = fixed_global_view(images[i], cfg.global_size)
            views[0].append(base)
            views[1].append(base[:, ::-1])
        else:
            for v, blur in ((0, 1.0), (1, 0.1)):  # DINOv2: blur always on the first global crop, rarely on the second
                views[v].append(photometric(rng, random_resized_crop(rng, images[i], cfg.global_size, cfg.global_scale), blur))
    local = [photometric(rng, random_resized_crop(rng, images[i], cfg.local_size, cfg.local_scale), 0.5)
             for _ in range(cfg.local_crops) for i in index]
    grid = cfg.global_size // cfg.patch_size
    masks = ibot_masks(rng, 2 * len(index), grid, cfg.mask_probability, cfg.mask_ratio)
    local_arr = np.stack(local) if local else np.zeros((0, cfg.local_size, cfg.local_size, 3), np.uint8)
    return Batch(index, np.ascontiguousarray(np.stack(views[0] + views[1])), local_arr, masks)


def fixed_global_view(image: np.ndarray, size: int) -> np.ndarray:
    """The deterministic global view of an image: resized to ``size`` (bicubic)."""
    if image.shape[:2] == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC))
