"""The 18 reference dataset cards: each validates, and `prepare` accepts a fixture written in
its original layout and reads back the expected masks pixel for pixel. Corrupted downloads
fail in one line that names the file and the problem, and leave nothing behind."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from harness.data.cards import DatasetCard, get_card, list_cards
from harness.data.loader import dataset_root, discover, read_pair, split
from harness.data.prepare import INDEX_FILE, PREVIEW_FILE, prepare
from harness.errors import DataError

from dataset_fixtures import write_fixture

REFERENCE = ["bcss", "cocahis", "conic2022", "consep", "cosas24", "cpm15", "cpm17", "crag", "ebhi", "glas", "janowczyk",
             "kumar", "lizard", "nucls", "pannuke", "rings", "tnbc", "wsss4luad"]


def test_all_reference_cards_and_the_samples_validate():
    names = list_cards()
    assert set(REFERENCE) <= set(names) and {"nuclei-sample", "synthetic-tissue"} <= set(names)
    densebench = {get_card(n).densebench_name for n in REFERENCE}
    assert len(densebench) == 18 and None not in densebench
    formats = {get_card(n).format for n in REFERENCE}
    assert formats == {"image-mask", "mat", "npy", "xml-polygons"}
    for n in names:
        card = get_card(n)
        assert card.input_size.patch14 % 14 == 0 and card.input_size.patch16 % 16 == 0
        assert card.source.url.startswith("https://")


@pytest.mark.parametrize("name", REFERENCE)
def test_prepare_accepts_the_original_layout_and_reads_back_the_masks(name, tmp_path):
    card = get_card(name)
    src = tmp_path / "download"
    expected = write_fixture(card, src)
    report = prepare(card, source=src, data_dir=tmp_path / "data")
    assert report.samples == len(expected) == (card.expected.files or 12)
    assert sum(report.split_sizes.values()) == report.samples and min(report.split_sizes.values()) > 0
    index = pq.read_table(report.out_dir / INDEX_FILE)
    assert index.num_rows == report.samples
    assert json.loads(index.schema.metadata[b"class_names"]) == card.class_names
    assert Image.open(report.out_dir / PREVIEW_FILE).size[0] > 0
    assert dataset_root(card, tmp_path / "data") == src.resolve()
    samples = discover(card, src)
    assert sorted(s.ident for s in samples) == sorted(expected)
    for s in samples:  # every sample, pixel for pixel
        image, mask = read_pair(card, s)
        np.testing.assert_array_equal(mask, expected[s.ident], err_msg=f"{name} {s.ident}")
        assert image.shape[:2] == mask.shape and image.dtype == np.uint8
    pixels = np.sum([np.bincount(m.ravel(), minlength=card.num_classes) for m in expected.values()], axis=0)
    assert list(report.class_pixels.values()) == pixels.tolist()


def test_official_splits_follow_the_release_folders(tmp_path):
    card = get_card("consep")
    write_fixture(card, tmp_path)
    parts = split(card, discover(card, tmp_path))
    assert all(s.ident.startswith("Test/") for s in parts["test"])
    assert all(s.ident.startswith("Train/") for s in parts["train"] + parts["val"])
    pannuke = get_card("pannuke")
    write_fixture(pannuke, tmp_path / "pn", n=30)
    parts = split(pannuke, discover(pannuke, tmp_path / "pn", check_count=False))
    assert {s.ident[0] for s in parts["train"]} == {"1"} and {s.ident[0] for s in parts["test"]} == {"3"}


def test_seeded_split_is_pinned(tmp_path):
    card = get_card("tnbc")
    write_fixture(card, tmp_path)
    parts = split(card, discover(card, tmp_path))
    assert {k: len(v) for k, v in parts.items()} == {"train": 35, "val": 10, "test": 5}
    text = "\n".join(f"{k}:{s.ident}" for k in ("train", "val", "test") for s in parts[k])
    assert hashlib.sha256(text.encode()).hexdigest()[:16] == "f04a7c90bed3b966"


def test_geojson_polygons_by_class_name(tmp_path):
    raw = get_card("kumar").model_dump()
    raw |= {"name": "geo", "format": "geojson-polygons", "layout": {"images": "images/{id}.png", "masks": "annotations/{id}.geojson"},
            "classes": [{"index": 0, "name": "background", "color": "#000000"}, {"index": 1, "name": "tumor", "color": "#ff0000"},
                        {"index": 2, "name": "stroma", "color": "#00ff00"}],
            "mask": {"encoding": "polygons", "values": {"Tumor": 1, "Stroma": 2}}, "expected": {"files": 6}}
    card = DatasetCard(**raw)
    expected = write_fixture(card, tmp_path / "src")
    report = prepare(card, source=tmp_path / "src", data_dir=tmp_path / "data")
    assert report.samples == 6
    for s in discover(card, tmp_path / "src"):
        np.testing.assert_array_equal(read_pair(card, s)[1], expected[s.ident])
    assert report.class_pixels["stroma"] > 0 and report.class_pixels["tumor"] > 0


# --- corrupted downloads ----------------------------------------------------------------


def _first(root: Path, pattern: str) -> Path:
    return sorted(root.glob(pattern))[0]


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])


def _sixteen_bit(p: Path) -> None:
    Image.fromarray(np.asarray(Image.open(p).convert("L")).astype(np.uint16) * 257).save(p)  # I;16 greyscale


def _bomb(p: Path) -> None:
    """A valid PNG whose header declares 30000 x 30000 pixels (900 M: past Pillow's decompression-bomb limit)."""
    import struct
    import zlib

    Image.new("L", (1, 1)).save(p)
    data = bytearray(p.read_bytes())
    ihdr = struct.pack(">II", 30000, 30000) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    p.write_bytes(bytes(data))


def _fractional_masks(p: Path) -> None:
    masks = np.load(p).astype(np.float64)
    masks[0, 0, 0, 0] = 0.5
    np.save(p, masks)


def _resize(p: Path) -> None:
    Image.open(p).resize((7, 9)).save(p)


def _set_value(p: Path, v: int) -> None:
    a = np.asarray(Image.open(p)).copy()
    a[0, 0] = v
    Image.fromarray(a).save(p)


def _duplicate(p: Path) -> None:
    shutil.copy(p, p.with_suffix(".tif"))


def _colour_mask(p: Path) -> None:
    a = np.asarray(Image.open(p).convert("L"))
    Image.fromarray(np.stack([a, a // 2, a // 3], -1).astype(np.uint8)).save(p)


def _move_all(root: Path) -> None:
    (root / "nested").mkdir()
    for d in [d for d in root.iterdir() if d.name != "nested"]:
        d.rename(root / "nested" / d.name)


def _empty(root: Path) -> None:
    for d in list(root.iterdir()):
        shutil.rmtree(d)


# (card, mutation(root), text the one-line error must contain)
CORRUPTIONS = {
    "missing mask": ("tnbc", lambda r: _first(r, "GT_*/*.png").unlink(), "no mask at"),
    "size mismatch": ("tnbc", lambda r: _resize(_first(r, "GT_*/*.png")), "but its image is"),
    "unexpected label": ("bcss", lambda r: _set_value(_first(r, "masks/*.png"), 99), "label values [99]"),
    "truncated png": ("tnbc", lambda r: _truncate(_first(r, "Slide_*/*.png")), "unreadable or truncated image"),
    "truncated mask": ("tnbc", lambda r: _truncate(_first(r, "GT_*/*.png")), "unreadable or truncated mask"),
    "non-image file": ("tnbc", lambda r: _first(r, "Slide_*/*.png").write_text("not a picture"), "not an image file"),
    "wrong layout": ("tnbc", _move_all, "matches the layout"),
    "empty folder": ("tnbc", _empty, "is empty"),
    "duplicate ids": ("lizard", lambda r: shutil.copy(_first(r, "lizard_images01/*/s0000.png"), r / "lizard_images02/Lizard_Images02/s0000.png"),
                      "duplicate sample id 's0000'"),
    "missing files": ("tnbc", lambda r: [_first(r, "GT_*/*.png").unlink(), _first(r, "Slide_*/*.png").unlink()], "found 49 samples"),
    "rgb mask": ("tnbc", lambda r: _colour_mask(_first(r, "GT_*/*.png")), "3 different colour channels"),
    "bad mat": ("consep", lambda r: _first(r, "Train/Labels/*.mat").write_bytes(b"MATLAB junk"), "unreadable .mat file"),
    "mat without key": ("consep", lambda r: __import__("scipy.io").io.savemat(_first(r, "Train/Labels/*.mat"), {"other": np.zeros(2)}), "has no array 'type_map'"),
    "unknown split folder": ("consep", lambda r: (r / "Train").rename(r / "Training"), "split folder 'Training'"),
    "npy row mismatch": ("pannuke", lambda r: np.save(_first(r, "Fold 1/masks/fold1/masks.npy"), np.zeros((3, 16, 16, 6))), "mask rows"),
    "broken xml": ("kumar", lambda r: _first(r, "Annotations/*.xml").write_text("<Annotations><Region"), "unreadable annotation"),
    "unknown group": ("ebhi", lambda r: (r / "Polyp").rename(r / "Cancer"), "not one of the card's groups"),
    "16-bit image": ("tnbc", lambda r: _sixteen_bit(_first(r, "Slide_*/*.png")), "16-bit or float pixels"),
    "decompression bomb": ("tnbc", lambda r: _bomb(_first(r, "Slide_*/*.png")), "decompression bomb"),
    "zero-byte npy": ("pannuke", lambda r: _first(r, "Fold 1/images/fold1/images.npy").write_bytes(b""), "unreadable .npy file"),
    "fractional npy mask": ("pannuke", lambda r: _fractional_masks(_first(r, "Fold 1/masks/fold1/masks.npy")), "fractional label values"),
    "polygon outside the image": ("kumar", lambda r: _first(r, "Annotations/*.xml").write_text(
        '<Annotations><Annotation><Regions><Region Id="1" Text=""><Vertices><Vertex X="1" Y="1" /><Vertex X="9000" Y="1" />'
        '<Vertex X="9000" Y="5" /></Vertices></Region></Regions></Annotation></Annotations>'), "outside the"),
    "lizard instance without class": ("lizard", lambda r: __import__("scipy.io").io.savemat(
        _first(r, "lizard_labels/Lizard_Labels/Labels/*.mat"), {"inst_map": np.ones((24, 32)) * 5, "id": np.array([[1]]), "class": np.array([[2]])}), "have no class"),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_a_corrupted_download_fails_in_one_line_and_writes_nothing(case, tmp_path):
    name, mutate, message = CORRUPTIONS[case]
    card = get_card(name)
    src = tmp_path / "download"
    write_fixture(card, src)
    mutate(src)
    data = tmp_path / "data"
    with pytest.raises(DataError) as exc:
        prepare(card, source=src, data_dir=data)
    line = exc.value.one_line()
    assert "\n" not in line and message in line, line
    assert str(src) in line  # names the file or folder
    assert "(fix: " in line
    assert not data.exists(), "a failed prepare must write nothing"


def test_cli_prepare_reports_a_bad_file_in_one_line_and_exits_non_zero(tmp_path):
    card = get_card("tnbc")
    src = tmp_path / "download"
    write_fixture(card, src)
    bad = _first(src, "GT_*/*.png")
    _truncate(bad)
    res = subprocess.run([sys.executable, "-m", "harness.cli", "data", "prepare", "tnbc", "--from", str(src),
                          "--data-dir", str(tmp_path / "data"), "--no-progress"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "truncated mask" in lines[0], res.stderr
    assert not (tmp_path / "data").exists()
    bad.unlink()
    (src / "GT_01" / "extra.txt").write_text("notes")  # stray non-image files beside the data are fine
    _first(src, "Slide_*/*.png").unlink()
    res = subprocess.run([sys.executable, "-m", "harness.cli", "data", "prepare", "tnbc", "--from", str(src),
                          "--data-dir", str(tmp_path / "data"), "--no-progress"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "found 49 samples" in res.stderr and "the card expects 50" in res.stderr


def test_prepare_a_built_in_sample_from_the_cli(tmp_path):
    res = subprocess.run([sys.executable, "-m", "harness.cli", "data", "prepare", "nuclei-sample", "--data-dir", str(tmp_path), "--no-progress"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "nuclei-sample: 36 samples" in res.stdout and "seeded split: train 25, val 7, test 4" in res.stdout
    index = pq.read_table(tmp_path / "nuclei-sample" / INDEX_FILE).to_pydict()
    assert sorted(index["split"]).count("test") == 4 and len(index["id"]) == 36
    totals = np.sum(index["pixels"], axis=0)
    assert totals.sum() == 36 * 250 * 250 and (totals > 0).all()  # every class is present in the sample


#: The reference's per-dataset input sizes (lingxitong/PFM_Segmentation configs/data/dataset_size_info.json:
#: resize_14, resize_16), keyed by our card names.
REFERENCE_SIZES = {
    "bcss": (952, 944), "conic2022": (252, 256), "consep": (994, 992), "cpm15": (392, 384), "cpm17": (490, 496),
    "janowczyk": (994, 992), "kumar": (994, 992), "lizard": (336, 336), "nucls": (252, 256), "pannuke": (252, 256),
    "rings": (994, 992), "tnbc": (504, 512), "wsss4luad": (196, 192), "glas": (420, 416), "cocahis": (994, 992),
    "crag": (994, 992), "ebhi": (224, 224), "cosas24": (994, 992),
}


@pytest.mark.parametrize("name", sorted(REFERENCE_SIZES))
def test_each_densebench_card_has_the_reference_input_sizes(name):
    card = get_card(name)
    assert (card.input_size.for_patch(14), card.input_size.for_patch(16)) == REFERENCE_SIZES[name]


def test_musk_runs_at_384_in_densebench_and_at_the_cards_size_in_corrected():
    from harness.models.spec import get_spec
    from harness.run.plan import input_size_for

    glas, musk = get_card("glas"), get_spec("musk")
    assert input_size_for(None, glas, musk, "densebench") == 384
    assert input_size_for(None, glas, musk, "corrected") == 416
    assert input_size_for(224, glas, musk, "densebench") == 224  # an explicit --input-size wins


#: ``num_classes`` of the reference's configs/data/<Dataset>.json, for the lists read so far (the others are not checked yet).
REFERENCE_NUM_CLASSES = {"glas": 2, "pannuke": 6}


@pytest.mark.parametrize("name", sorted(REFERENCE_NUM_CLASSES))
def test_card_class_counts_match_the_reference_lists(name):
    assert get_card(name).num_classes == REFERENCE_NUM_CLASSES[name]
