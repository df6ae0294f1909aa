"""The feature cache: keyed, streamed, atomic; a frozen run from the cache equals one that extracted."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from harness.client.feature_cache import FeatureCache, FeatureKey, pixels_hash
from harness.errors import CacheError
from harness.results.schema import METRICS
from harness.run.lifecycle import execute
from harness.run.plan import resolve_config

KEY = FeatureKey("phikon", "spec0", "host:torch-x:harness-y", "random:0", "nuclei-sample", "card0", "train", "pix0", 224, (11,))


def _batches(n: int, b: int = 3, shape=(1, 2, 2, 4), seed: int = 0):
    rng = np.random.default_rng(seed)
    for i in range(0, n, b):
        yield rng.standard_normal((min(b, n - i), *shape)).astype(np.float16)


def test_put_streams_batches_and_get_returns_a_read_only_memory_map(tmp_path):
    cache = FeatureCache(tmp_path)
    assert cache.get(KEY) is None
    stored = cache.put(KEY, _batches(10))
    expected = np.concatenate(list(_batches(10)))
    assert isinstance(stored, np.memmap) and stored.shape == (10, 1, 2, 2, 4) and not stored.flags.writeable
    np.testing.assert_array_equal(cache.get(KEY), expected)
    meta = json.loads((cache.entry(KEY) / "meta.json").read_text())
    assert meta["shape"] == [10, 1, 2, 2, 4] and meta["key"]["blocks"] == [11]
    (path, listed, nbytes), = cache.entries()
    assert path == cache.entry(KEY) and nbytes == 10 * 16 * 2


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(FeatureKey)])
def test_every_key_field_names_a_different_entry(field):
    value = getattr(KEY, field)
    changed = dataclasses.replace(KEY, **{field: (value + 1 if isinstance(value, int) else (10,) if isinstance(value, tuple) else value + "x")})
    assert changed.digest() != KEY.digest()


def test_an_interrupted_write_leaves_no_entry_and_no_temporary_files(tmp_path):
    cache = FeatureCache(tmp_path)

    def dying():
        yield from _batches(6)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache.put(KEY, dying())
    assert cache.get(KEY) is None and list(tmp_path.iterdir()) == []


def test_a_truncated_entry_is_a_miss_and_a_concurrent_commit_is_kept(tmp_path):
    cache = FeatureCache(tmp_path)
    cache.put(KEY, _batches(4))
    with open(cache.entry(KEY) / "tokens.f16", "r+b") as f:
        f.truncate(10)
    assert cache.get(KEY) is None
    cache.clear()
    first = np.array(cache.put(KEY, _batches(4, seed=1)))
    second = cache.put(KEY, _batches(4, seed=2))  # same key committed meanwhile: the first entry stays
    np.testing.assert_array_equal(second, first)
    assert [p.name for p in tmp_path.iterdir()] == [KEY.digest()]


def test_a_full_disk_is_a_clear_error(tmp_path, monkeypatch):
    cache = FeatureCache(tmp_path)

    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("pathlib.Path.write_text", no_space)
    with pytest.raises(CacheError) as err:
        cache.put(KEY, _batches(2))
    assert "No space left on device" in err.value.one_line() and "--no-feature-cache" in err.value.one_line()
    assert list(tmp_path.iterdir()) == []


def test_pixels_hash_follows_the_pixels_not_the_batching():
    images = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    assert pixels_hash([images]) == pixels_hash([images[:2], images[2:]])
    changed = images.copy()
    changed[5, 7, 7, 2] ^= 1
    assert pixels_hash([changed]) != pixels_hash([images])


def test_frozen_runs_read_the_cache_and_score_exactly_as_an_extracting_run(tmp_path):
    """Seed 2 after seed 1 extracts nothing (no runtime is even started) and equals a run without the cache.

    Without augmentation: an augmented run extracts its training batches online (test_augment.py).
    """
    def run(seed: int, **kw):
        cfg, _ = resolve_config("segmentation", "phikon", "nuclei-sample", runtime="inprocess", epochs=2, seed=seed, input_size=64, augment="none")
        return execute(cfg, results_dir=tmp_path / "res", write=False, **kw)

    first = run(1)
    assert first.transfer == "inprocess"
    cache = FeatureCache()
    assert sorted(m["key"]["split"] for _, m, _ in cache.entries()) == ["test", "train", "val"]
    cached = run(2)
    assert cached.transfer == "cache"
    fresh = run(2, feature_cache=False)
    assert fresh.transfer == "inprocess"
    for m in METRICS:
        assert cached.model_dump()[m] == fresh.model_dump()[m], m
    assert cached.run_key == fresh.run_key
    # another resolution is another key: extracted again, three more entries
    cfg, _ = resolve_config("segmentation", "phikon", "nuclei-sample", runtime="inprocess", epochs=1, seed=1, input_size=96, augment="none")
    assert execute(cfg, results_dir=tmp_path / "res", write=False).transfer == "inprocess"
    assert len(list(cache.entries())) == 6
