"""Training augmentation: the reference's list, seeded per (seed, epoch, sample); frozen runs extract it online."""

from __future__ import annotations

import numpy as np
import pytest

from harness.config import RunConfig
from harness.data.augment import Augmenter, Resized, _pipeline, training_images
from harness.data.cards import get_card
from harness.data.formats import read_sample
from harness.data.loader import dataset_root, discover

#: The reference's SegmentationTransforms.get_training_transforms, in order: (transform, p); OneOf lists its members.
REFERENCE = [
    ("RandomResizedCrop", 1.0), ("HorizontalFlip", 0.5), ("VerticalFlip", 0.1), ("RandomRotate90", 0.3), ("Transpose", 0.3),
    ("OneOf[ElasticTransform,GridDistortion,OpticalDistortion]", 0.3),
    ("OneOf[ColorJitter,HueSaturationValue,RGBShift]", 0.5),
    ("OneOf[GaussNoise,MultiplicativeNoise]", 0.3),
    ("OneOf[GaussianBlur,MotionBlur,MedianBlur]", 0.2),
    ("OneOf[RandomRain,RandomSnow,RandomFog]", 0.2),
    ("RandomBrightnessContrast", 0.4), ("RandomGamma", 0.3), ("CoarseDropout", 0.3),
]


def _described(compose) -> list[tuple[str, float]]:
    out = []
    for t in compose.transforms:
        name = type(t).__name__
        if name == "OneOf":
            name = f"OneOf[{','.join(type(m).__name__ for m in t.transforms)}]"
        out.append((name, t.p))
    return out


def test_densebench_is_the_reference_list_and_histology_drops_only_the_weather():
    assert _described(_pipeline("densebench", 64)) == REFERENCE
    assert _described(_pipeline("histology", 64)) == [t for t in REFERENCE if "RandomRain" not in t[0]]
    crop = _pipeline("densebench", 96).transforms[0]
    assert crop.size == (96, 96) and tuple(crop.scale) == (0.5, 1.0) and tuple(crop.ratio) == (0.75, 1.33)


@pytest.fixture(scope="module")
def nuclei():
    card = get_card("nuclei-sample")
    samples = discover(card, dataset_root(card))[:6]
    pairs = [read_sample(card, s) for s in samples]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def test_draws_depend_on_seed_epoch_and_sample_only(nuclei):
    images, masks = nuclei
    a = Augmenter("densebench", 64, 42, images, masks)
    x, m = a.batch([0, 1, 2, 3], epoch=5)
    assert x.shape == (4, 64, 64, 3) and x.dtype == np.uint8 and m.shape == (4, 64, 64) and m.dtype == np.uint8
    # any order, a fresh augmenter (a resumed job): the same images
    y, n = Augmenter("densebench", 64, 42, images, masks).batch([3, 1, 0, 2], epoch=5)
    assert np.array_equal(x[0], y[2]) and np.array_equal(x[3], y[0]) and np.array_equal(m[1], n[1])
    # another epoch or another run seed: other draws
    assert not np.array_equal(a.batch([0], epoch=6)[0][0], x[0])
    assert not np.array_equal(Augmenter("densebench", 64, 43, images, masks).batch([0], epoch=5)[0][0], x[0])
    # masks move with the image and gain no class: nearest neighbour, no blending of labels
    for i in range(4):
        assert set(np.unique(m[i])) <= set(np.unique(masks[i]))


def test_none_trains_on_the_resized_split_and_never_reads_the_originals():
    images = np.zeros((3, 8, 8, 3), np.uint8)
    masks = np.ones((3, 8, 8), np.uint8)

    def originals():
        raise AssertionError("augment none must not read the originals")

    source = training_images("none", 8, 42, (images, masks), originals)
    assert isinstance(source, Resized) and len(source) == 3
    x, m = source.batch(np.array([2, 0]), epoch=7)
    assert x.shape == (2, 8, 8, 3) and (m == 1).all()


def test_presets_choose_augmentation_align_corners_and_resize():
    run = {"model": "phikon", "dataset": "nuclei-sample"}
    dense, fixed = RunConfig.from_preset("densebench", **run), RunConfig.from_preset("corrected", **run)
    assert (dense.augment, dense.align_corners, dense.resize) == ("densebench", True, "cv2")
    assert (fixed.augment, fixed.align_corners, fixed.resize) == ("histology", False, "pil")
    assert RunConfig.from_preset("densebench", augment="none", **run).augment == "none"


def test_a_frozen_run_with_augmentation_caches_val_and_test_only_and_records_it(tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from harness.results.store import read_rows

    args = [sys.executable, "-m", "harness.cli", "bench", "-m", "phikon", "-d", "nuclei-sample", "--epochs", "2", "--input-size", "64",
            "--runtime", "inprocess", "--results-dir", str(tmp_path), "--no-progress"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    (row,) = read_rows(tmp_path)
    assert json.loads(row["config_json"])["augment"] == "densebench"
    cache = Path(os.environ["PFMBENCH_FEATURES"])
    splits = sorted(json.loads((d / "meta.json").read_text())["key"]["split"] for d in cache.iterdir() if (d / "meta.json").exists())
    assert splits == ["test", "val"]  # the augmented training batches went through the model online, uncached
