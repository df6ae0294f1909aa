"""Token features on disk: extract a split once, train any number of decoders from a memory map.

A frozen backbone's token grids depend only on what goes into the forward pass: the model
(its spec, and the image it runs in, or this host's torch and harness for a local run),
its weights, the input pixels of the split at the run's resolution, and the tapped
blocks. Seeds, decoders, epochs, learning rates and presets do not change them, so a
sweep over those re-extracts nothing. The frozen path has no augmentation
(``augment=none``), which is what makes features reusable at all.

Layout, under ``$PFMBENCH_FEATURES`` (default ``$PFMBENCH_CACHE/features``, i.e.
``~/.cache/pfmbench/features``)::

    <key>/tokens.f16   fp16 [N, L, h, w, D], C order, written in batches
    <key>/meta.json    shape, dtype and every field of the key, human-readable

An entry is written into a private temporary directory and renamed into place when the
last batch is on disk, so a killed extraction leaves no entry a later run could read
(only a hidden ``.*.tmp`` folder that :func:`clear` removes). Any change of a key field is a
different key: nothing is ever invalidated in place. Writes are streamed (one batch in
memory at a time), so extracting a split larger than RAM keeps the harness's memory flat.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from harness import constants
from harness.errors import CacheError
from harness.util.atomic import atomic_directory

TOKENS_FILE, META_FILE = "tokens.f16", "meta.json"
_HASH_CHUNK = 64 << 20


def pixels_hash(batches: Iterable[np.ndarray]) -> str:
    """Hash of the exact uint8 pixels fed to the model and their shape, however they are batched."""
    h = hashlib.blake2b(digest_size=16)
    n, item_shape = 0, None
    for batch in batches:
        arr = np.ascontiguousarray(batch)
        item_shape = item_shape or (arr.shape[1:], str(arr.dtype))
        n += len(arr)
        flat = arr.reshape(-1).view(np.uint8)
        for i in range(0, flat.size, _HASH_CHUNK):
            h.update(flat[i:i + _HASH_CHUNK].data)
    h.update(repr((n, item_shape)).encode())
    return h.hexdigest()


@dataclass(frozen=True)
class FeatureKey:
    """Everything the token grids of one split depend on; :meth:`digest` names the entry."""

    model: str
    spec_hash: str
    environment: str  # the image digest, or "host:torch-<v>:harness-<v>" for local and in-process runs
    weights: str  # "random:<init seed>" or "sha256:<hex>"
    dataset: str
    card_hash: str
    split: str
    pixels: str  # pixels_hash of the split's inputs at this resolution
    size: int
    blocks: tuple[int, ...]

    def digest(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:24]


def host_environment() -> str:
    """The environment a local or in-process server computes in: this venv's torch and harness."""
    import torch

    from harness import __version__

    return f"host:torch-{torch.__version__}:harness-{__version__}"


def on_device(environment: str, device: str, engine: str = "torch", dtype: str = "bf16") -> str:
    """``environment`` narrowed to how the features were computed (:func:`~harness.util.devices.compute_tag`).

    Eager torch on a CPU keys by the environment alone (as before devices were recorded);
    a GPU adds its autocast dtype and model, another engine its name.
    """
    from harness.util.devices import compute_tag

    tag = compute_tag(device, engine, dtype)
    return f"{environment}:{tag}" if tag else environment


class FeatureCache:
    """Memory-mapped fp16 token grids keyed by :class:`FeatureKey`."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or constants.features_dir()

    def entry(self, key: FeatureKey) -> Path:
        return self.root / key.digest()

    def get(self, key: FeatureKey) -> np.ndarray | None:
        """The cached tokens as a read-only memory map, or None when absent or unreadable."""
        path = self.entry(key)
        try:
            meta = json.loads((path / META_FILE).read_text())
            shape = tuple(meta["shape"])
            expected = int(np.prod(shape)) * 2
            if (path / TOKENS_FILE).stat().st_size != expected or meta["key"] != _jsonable(key):
                return None
            return np.memmap(path / TOKENS_FILE, dtype=np.float16, mode="r", shape=shape)
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def put(self, key: FeatureKey, batches: Iterable[np.ndarray]) -> np.ndarray:
        """Stream ``batches`` (fp16 ``[b, L, h, w, D]``) into a new entry (written whole or not at all); returns its memory map.

        Only the batch being written is in memory. If another process committed the same
        key meanwhile, its entry is kept (the features are the same) and this one dropped.
        """
        try:
            with atomic_directory(self.entry(key)) as tmp:  # a concurrent writer of the same key may win: same features
                self._write(tmp, key, batches)
        except OSError as exc:
            raise CacheError(f"cannot write the feature cache in {self.root}: {exc.strerror or exc}",
                             f"free disk space, set {constants.FEATURES_ENV} to a larger disk, or pass --no-feature-cache") from exc
        cached = self.get(key)
        assert cached is not None
        return cached

    @staticmethod
    def _write(tmp: Path, key: FeatureKey, batches: Iterable[np.ndarray]) -> None:
        n, item_shape = 0, None
        with open(tmp / TOKENS_FILE, "wb") as f:
            for batch in batches:
                batch = np.ascontiguousarray(batch, dtype=np.float16)
                if item_shape is None:
                    item_shape = batch.shape[1:]
                elif batch.shape[1:] != item_shape:
                    raise ValueError(f"batch shape {batch.shape[1:]} differs from the first batch's {item_shape}")
                f.write(batch.data)
                n += len(batch)
        if item_shape is None:
            raise ValueError("no batches to cache")
        (tmp / META_FILE).write_text(json.dumps({"shape": [n, *item_shape], "dtype": "float16", "key": _jsonable(key)}, indent=1))

    def entries(self) -> Iterator[tuple[Path, dict, int]]:
        """Every committed entry: its directory, its metadata and its size in bytes."""
        if not self.root.is_dir():
            return
        for path in sorted(self.root.iterdir()):
            if path.name.startswith("."):  # a temporary of a killed extraction
                continue
            try:
                meta = json.loads((path / META_FILE).read_text())
                yield path, meta, (path / TOKENS_FILE).stat().st_size
            except (OSError, ValueError):
                continue

    def clear(self) -> tuple[int, int]:
        """Remove every entry and any temporary directory a killed extraction left; returns (entries, bytes)."""
        count = freed = 0
        if self.root.is_dir():
            for path in self.root.iterdir():
                freed += sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
                count += not path.name.startswith(".")
                shutil.rmtree(path, ignore_errors=True)
        return count, freed


def _jsonable(key: FeatureKey) -> dict:
    return json.loads(json.dumps(asdict(key)))
