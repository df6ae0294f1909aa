"""``mat``: MATLAB ``.mat`` label files, as HoVer-Net's CoNSeP/Kumar/CPM releases and Lizard ship them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.data.readers import register
from harness.data.readers.base import Reader, Sample, fail, read_image

if TYPE_CHECKING:
    from harness.data.cards import DatasetCard


def _read_mat(card: DatasetCard, path: Path) -> dict[str, Any]:
    from scipy.io import loadmat

    try:
        return loadmat(str(path))
    except Exception as exc:  # scipy raises ValueError/TypeError/MatReadError on damaged files
        raise fail(card, path, f"unreadable .mat file ({type(exc).__name__}: {str(exc)[:100]})") from None


def _array(card: DatasetCard, path: Path, mat: dict[str, Any], key: str | None) -> np.ndarray:
    if key is None or key not in mat:
        keys = sorted(k for k in mat if not k.startswith("__"))
        raise fail(card, path, f".mat file has no array '{key}' (it has {keys})", "check that this is the dataset the card describes")
    return np.asarray(mat[key])


def _instance_class(card: DatasetCard, path: Path, mat: dict[str, Any]) -> np.ndarray:
    """Lizard: ``inst_map`` plus ``id`` (instance ids) and ``class`` (their classes, same order)."""
    inst = _array(card, path, mat, card.mask.key)
    ids = _array(card, path, mat, card.mask.id_key).ravel()
    classes = _array(card, path, mat, card.mask.class_key).ravel()
    if len(ids) != len(classes):
        raise fail(card, path, f"{len(ids)} instance ids but {len(classes)} classes")
    inst = inst.astype(np.int64)
    if inst.min() < 0:
        raise fail(card, path, "inst_map has negative ids")
    lut = np.full(int(inst.max()) + 1, -1, np.int64)
    lut[0] = 0
    known = ids.astype(np.int64)
    lut[known[known <= inst.max()]] = classes.astype(np.int64)[known <= inst.max()]
    out = lut[inst]
    if (out < 0).any():
        missing = np.unique(inst[out < 0])[:5].tolist()
        raise fail(card, path, f"instances {missing} of the instance map have no class")
    return out


@register
class MatReader(Reader):
    formats = ("mat",)

    def read(self, card: DatasetCard, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        image = read_image(card, sample.image)
        mat = _read_mat(card, sample.mask)
        if card.mask.encoding == "instance-class":
            return image, _instance_class(card, sample.mask, mat)
        return image, _array(card, sample.mask, mat, card.mask.key)

    def instances(self, card: DatasetCard, sample: Sample, classes: np.ndarray) -> np.ndarray | None:
        mat = _read_mat(card, sample.mask)
        return np.asarray(mat["inst_map"]).astype(np.int64) if "inst_map" in mat else None
