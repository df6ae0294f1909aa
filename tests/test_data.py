"""Dataset cards validate; loaders read real tiles exactly; bad files give clear errors."""

from __future__ import annotations

import importlib.metadata
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from harness.data.cards import get_card, list_cards, load_card_file
from harness.data.loader import dataset_root, discover, load_split_arrays, read_pair, split
from harness.errors import CardError, DataError, UnknownDatasetError

#: Built-in datasets (generated on first use); the 18 reference cards are tested on fixtures in test_dataset_cards.py.
BUILT_IN = [c for c in list_cards() if get_card(c).generator and get_card(c).slides is None]  # slides-sample: tests/test_slides.py


@pytest.mark.parametrize("name", BUILT_IN)
def test_every_built_in_dataset_loads(name):
    card = get_card(name)
    samples = discover(card, dataset_root(card))
    assert len(samples) == card.expected.files
    parts = split(card, samples)
    n = len(samples)
    r_train, r_val, _ = card.split.ratios
    assert [len(parts[s]) for s in ("train", "val", "test")] == [round(n * r_train), round(n * r_val), n - round(n * r_train) - round(n * r_val)]
    ids = [s.ident for p in parts.values() for s in p]
    assert sorted(ids) == sorted(s.ident for s in samples)  # disjoint and complete
    arrays = load_split_arrays(card, parts["test"], card.input_size.patch16)
    assert arrays.images.shape[1:] == (card.input_size.patch16, card.input_size.patch16, 3)
    assert arrays.masks.max() < card.num_classes


def test_split_is_seeded():
    card = get_card("synthetic-tissue")
    samples = discover(card, dataset_root(card))
    assert split(card, samples) == split(card, samples)
    other = card.model_copy(update={"split": card.split.model_copy(update={"seed": 7})})
    assert [s.ident for s in split(other, samples)["test"]] != [s.ident for s in split(card, samples)["test"]]


def test_nuclei_sample_tiles_are_the_histolytics_pixels():
    card = get_card("nuclei-sample")
    root = dataset_root(card)
    dist = importlib.metadata.distribution("histolytics")
    image = np.asarray(Image.open(dist.locate_file("histolytics/data/hgsc_nest.jpg")).convert("RGB"))
    types = np.load(dist.locate_file("histolytics/data/hgsc_nest_type_mask.npz"))["nuc_raster"]
    sample = next(s for s in discover(card, root) if s.ident == "hgsc_r2c3")
    img, mask = read_pair(card, sample)
    assert np.array_equal(img, image[500:750, 750:1000])
    assert np.array_equal(mask, types[500:750, 750:1000])
    assert set(np.unique(mask)) <= {0, 1, 2, 3}


def _copy_sample(tmp_path: Path) -> tuple[Path, object]:
    card = get_card("synthetic-tissue")
    root = tmp_path / card.name
    shutil.copytree(dataset_root(card), root)
    return root, card


def test_wrong_mask_values_are_named(tmp_path):
    root, card = _copy_sample(tmp_path)
    Image.fromarray(np.full((256, 256), 9, np.uint8)).save(root / "masks/syn_0003.png")
    sample = next(s for s in discover(card, root) if s.ident == "syn_0003")
    with pytest.raises(DataError, match=r"label values \[9\] are outside the classes 0..3"):
        read_pair(card, sample)


def test_size_mismatch_corrupt_image_and_missing_mask(tmp_path):
    root, card = _copy_sample(tmp_path)
    Image.fromarray(np.zeros((100, 256), np.uint8)).save(root / "masks/syn_0004.png")
    (root / "images/syn_0005.png").write_bytes(b"not a png")
    samples = {s.ident: s for s in discover(card, root)}
    with pytest.raises(DataError, match="mask is 256x100 but its image is 256x256"):
        read_pair(card, samples["syn_0004"])
    with pytest.raises(DataError, match="syn_0005.png: not an image file"):
        read_pair(card, samples["syn_0005"])
    (root / "masks/syn_0006.png").unlink()
    with pytest.raises(DataError, match="syn_0006.png: no mask at"):
        discover(card, root)


def test_file_count_is_checked(tmp_path):
    root, card = _copy_sample(tmp_path)
    (root / "images/syn_0000.png").unlink()
    (root / "masks/syn_0000.png").unlink()
    with pytest.raises(DataError, match="found 39 samples.*expects 40"):
        discover(card, root)


def test_malformed_cards(tmp_path):
    good = yaml.safe_load((Path(__file__).parents[1] / "dataset_cards/synthetic-tissue.yaml").read_text())
    path = tmp_path / "synthetic-tissue.yaml"

    def check(mutate, match):
        data = yaml.safe_load(yaml.safe_dump(good))
        mutate(data)
        path.write_text(yaml.safe_dump(data))
        with pytest.raises(CardError, match=match):
            load_card_file(path)

    check(lambda d: d["classes"].pop(1), "class indices must be 0..2 in order")
    check(lambda d: d["split"].update(ratios=[0.5, 0.2, 0.1]), "sum to 1")
    check(lambda d: d["input_size"].update(patch14=225), "multiple of 14")
    check(lambda d: d.pop("source"), "source")
    check(lambda d: d["layout"].update(images="images/x.png"), "layout.images must contain {id}")
    check(lambda d: d["layout"].update(masks="masks/{group}/{id}.png"), "only use placeholders that layout.images has")
    check(lambda d: d.update(mask={"encoding": "index", "values": {7: 9}}), "outside the classes 0..3")
    check(lambda d: d["split"].update(rule="official"), "at least train and test")
    check(lambda d: d.update(colour="red"), "colour")
    path.write_text("name: [unclosed")
    with pytest.raises(CardError, match="not readable YAML"):
        load_card_file(path)


def test_unknown_card_suggests_a_close_one():
    with pytest.raises(UnknownDatasetError) as exc:
        get_card("nuclei-sampel")
    assert "did you mean 'nuclei-sample'" in exc.value.one_line()


def test_a_new_on_disk_format_is_one_registered_reader(tmp_path):
    """A reader module registering a format is all a new format takes: cards naming it validate, load and split."""
    from harness.data import readers
    from harness.data.cards import DatasetCard
    from harness.data.readers.base import Reader, read_image

    class CsvLabels(Reader):  # masks as CSV grids of class indices
        formats = ("csv-grid",)

        def read(self, card, sample):
            return read_image(card, sample.image), np.loadtxt(sample.mask, delimiter=",", dtype=np.uint8, ndmin=2)

    base = get_card("synthetic-tissue").model_dump(mode="json")
    raw = {**base, "name": "csv-sample", "generator": None, "format": "csv-grid",
           "layout": {**base["layout"], "images": "img/{id}.png", "masks": "lab/{id}.csv"}, "expected": {**base["expected"], "files": 3}}
    with pytest.raises(ValueError, match="unknown format 'csv-grid'"):
        DatasetCard(**raw)
    readers.register(CsvLabels)
    try:
        card = DatasetCard(**raw)
        rng = np.random.default_rng(0)
        for i in range(3):
            (tmp_path / "img").mkdir(exist_ok=True)
            (tmp_path / "lab").mkdir(exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), np.uint8)).save(tmp_path / "img" / f"s{i}.png")
            np.savetxt(tmp_path / "lab" / f"s{i}.csv", np.full((16, 16), i % card.num_classes), fmt="%d", delimiter=",")
        samples = discover(card, tmp_path)
        assert [s.ident for s in samples] == ["s0", "s1", "s2"]
        image, mask = read_pair(card, samples[1])
        assert image.shape == (16, 16, 3) and (mask == 1 % card.num_classes).all()
    finally:
        readers._READERS.pop("csv-grid")
