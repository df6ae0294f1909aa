"""Whole slides: reading (OpenSlide and tiffslide), tissue and tiles, bad slides, tables, splits, ABMIL, C-index, rows.

The slides are ``slides-sample``: real H&E (histolytics) written as tiled TIFF pyramids.
"""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from harness.client.feature_cache import FeatureCache
from harness.data.cards import get_card, list_cards
from harness.data.loader import dataset_root
from harness.data.prepare import prepare
from harness.errors import ConfigError, DataError
from harness.metrics.survival import concordance, harrell
from harness.mil.train import MilRecipe, predict, train_classifier, train_survival
from harness.run.lifecycle import execute
from harness.run.plan import resolve_config
from harness.slides.reader import open_slide
from harness.slides.sample import GLASS, write_pyramid
from harness.slides.table import case_folds, case_split, read_table
from harness.slides.tiling import load_grid, tile_slide, tile_slides, tiles_path

CARD = "slides-sample"


@pytest.fixture(scope="module")
def sample() -> Path:
    return dataset_root(get_card(CARD))


def _slides(root: Path) -> list[Path]:
    return sorted((root / "slides").glob("*.tiff"))


# --- reading ------------------------------------------------------------------------------

def test_openslide_and_tiffslide_read_the_same_pyramid_and_microns_per_pixel(sample):
    path = _slides(sample)[0]
    with open_slide(path, "openslide") as a, open_slide(path, "tiffslide") as b:
        assert (a.backend, b.backend) == ("openslide", "tiffslide")
        assert a.dimensions == b.dimensions == (2048, 2048)
        assert a.level_downsamples == b.level_downsamples == (1.0, 2.0, 4.0)
        assert a.mpp == b.mpp == 0.5
        assert a.best_level(2.0) == 1 and a.best_level(3.9) == 1 and a.best_level(1.5) == 0
        ra, rb = a.read(512, 768, 1, (256, 256)), b.read(512, 768, 1, (256, 256))
        assert ra.shape == rb.shape == (256, 256, 3)
        assert np.abs(ra.astype(int) - rb.astype(int)).mean() < 1.0  # two JPEG decoders


def _bad_slides(folder: Path, good: Path) -> dict[str, Path]:
    folder.mkdir()
    out = {"good": folder / "good.tiff"}
    shutil.copy(good, out["good"])
    out["truncated"] = folder / "truncated.tiff"
    out["truncated"].write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    out["not-a-slide"] = folder / "notes.svs"
    out["not-a-slide"].write_text("this is a text file\n")
    out["no-mpp"] = folder / "no-mpp.tiff"
    tifffile.imwrite(out["no-mpp"], np.full((1024, 1024, 3), 200, np.uint8), tile=(256, 256), photometric="rgb")
    out["blank"] = folder / "blank.tiff"
    write_pyramid(out["blank"], np.full((2048, 2048, 3), GLASS, np.uint8))
    out["missing"] = folder / "gone.tiff"
    return out


def test_bad_slides_are_one_line_errors_naming_the_file_and_the_others_are_tiled(sample, tmp_path):
    slides = _bad_slides(tmp_path / "in", _slides(sample)[0])
    report = tile_slides({k: v for k, v in slides.items()}, tmp_path / "tiles", 512, 0.5, 0.5)
    assert report.tiled == 1 and report.skipped == 0 and report.tiles > 0
    assert len(report.failed) == 5
    for line in report.failed:
        assert "\n" not in line and "fix:" in line
    by_file = {name: next(line for line in report.failed if str(path) in line) for name, path in slides.items() if name != "good"}
    assert "truncated or damaged" in by_file["truncated"] and "not a readable slide" in by_file["not-a-slide"]
    assert "no microns per pixel" in by_file["no-mpp"]
    assert "no tissue found" in by_file["blank"]
    assert "no such slide file" in by_file["missing"]
    assert sorted(p.name for p in (tmp_path / "tiles").iterdir()) == ["good.npz"]  # nothing written for a bad slide


def test_the_cli_tiles_on_past_a_bad_slide_and_exits_1(sample, tmp_path):
    root = tmp_path / "download"
    shutil.copytree(sample, root, ignore=shutil.ignore_patterns(".complete"))
    (root / "slides" / "S003.tiff").write_bytes(b"II*\x00broken")
    cards = tmp_path / "cards"
    cards.mkdir()
    text = (Path("dataset_cards") / f"{CARD}.yaml").read_text().replace("generator: histolytics-hgsc-slides\n", "")
    (cards / f"{CARD}.yaml").write_text(text)
    data = tmp_path / "data"
    env = {"PFMBENCH_CARDS_DIR": str(cards), "PFMBENCH_DATA": str(data)}
    import os

    source = data / CARD / "source.json"
    source.parent.mkdir(parents=True)
    source.write_text(f'{{"root": "{root}"}}')
    done = subprocess.run([sys.executable, "-m", "harness", "slides", "tile", CARD, "--no-progress"], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **env})
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"{root / 'slides' / 'S003.tiff'}: not a readable slide" in done.stdout
    assert "27 slides tiled, 0 already tiled, 1 failed" in done.stdout
    again = subprocess.run([sys.executable, "-m", "harness", "slides", "tile", CARD, "--no-progress"], capture_output=True, text=True,
                           timeout=300, env={**os.environ, **env})
    assert "0 slides tiled, 27 already tiled, 1 failed" in again.stdout  # resumed: only the bad slide is tried again


# --- tissue and tiles -------------------------------------------------------------------------

def test_kept_tiles_are_the_tiles_mostly_covered_by_tissue(sample):
    import cv2

    for path in _slides(sample)[:6]:
        with open_slide(path) as slide:
            grid = tile_slide(slide, 512, 0.5, 0.5)
            level2 = slide.read(0, 0, 2, (512, 512))  # 4 px per level-0 ... 128 px per tile
        assert grid.tile_level0 == 512 and grid.coords.dtype == np.int64
        saturation = cv2.cvtColor(level2, cv2.COLOR_RGB2HSV)[..., 1].astype(float)
        share = (saturation > 40).reshape(4, 128, 4, 128).mean(axis=(1, 3))  # truth from the pixels, not the thumbnail
        kept = {(int(x) // 512, int(y) // 512) for x, y in grid.coords}
        for row in range(4):
            for col in range(4):
                if abs(share[row, col] - 0.5) > 0.15:  # away from the threshold the two must agree
                    assert ((col, row) in kept) == (share[row, col] >= 0.5), (path.name, row, col, share[row, col])
        assert 8 <= len(grid) <= 12  # 2 or 3 tissue pieces of 2 x 2 tiles; the debris speck makes none


def test_the_tile_edge_follows_the_slide_resolution(sample, tmp_path):
    with open_slide(_slides(sample)[0]) as slide:
        level0 = slide.read(0, 0, 0, (2048, 2048))
    fine = tmp_path / "fine.tiff"  # the same tissue declared at 0.25 um/px (a 40x scan): a 0.5 um tile is 1024 px there
    write_pyramid(fine, level0, mpp=0.25)
    with open_slide(fine) as slide:
        grid = tile_slide(slide, 512, 0.5, 0.5)
    assert grid.tile_level0 == 1024 and 1 <= len(grid) <= 4  # a 2 x 2 grid of 1024 px tiles on the 2048 px slide
    assert (grid.coords % 1024 == 0).all()


def test_tiling_resumes_per_slide_and_redoes_a_changed_slide(sample, tmp_path):
    slides = {p.stem: tmp_path / p.name for p in _slides(sample)[:3]}
    for stem, dst in slides.items():
        shutil.copy(sample / "slides" / f"{stem}.tiff", dst)
    out = tmp_path / "tiles"
    first = tile_slides(slides, out, 512, 0.5, 0.5)
    assert (first.tiled, first.skipped) == (3, 0)
    second = tile_slides(slides, out, 512, 0.5, 0.5)
    assert (second.tiled, second.skipped, second.tiles) == (0, 3, 0)
    with open(slides["S001"], "ab") as f:
        f.write(b"\x00" * 16)  # a changed file (size and mtime)
    third = tile_slides(slides, out, 512, 0.5, 0.5)
    assert (third.tiled, third.skipped) == (1, 2)
    other = tile_slides(slides, out, 512, 0.5, 0.75)  # other parameters: every slide again
    assert other.tiled == 3
    grid = load_grid(tiles_path(out, "S000"))
    assert grid is not None and grid.params["min_tissue"] == 0.75


# --- tables, splits, cards ------------------------------------------------------------------

def _table_root(sample: Path, tmp_path: Path, edit) -> Path:
    root = tmp_path / "download"
    (root / "slides").mkdir(parents=True)
    rows = list(csv.DictReader(open(sample / "labels.csv")))[:6]
    for r in rows:
        (root / "slides" / f"{r['slide_id']}.tiff").symlink_to(sample / "slides" / f"{r['slide_id']}.tiff")
    rows = edit(rows, root) or rows
    with open(root / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root


def _set(i: int, **kw):
    def edit(rows, root):
        rows[i].update(kw)
    return edit


BAD_TABLES = {
    "missing slide": (lambda rows, root: (root / "slides" / f"{rows[2]['slide_id']}.tiff").unlink(), "row 4: slide file .* is missing"),
    "unknown label": (_set(1, label="tumour"), "row 3: label 'tumour' is not one of the card's classes"),
    "duplicate case": (_set(1, months="3.0"), "row 3: case 'C000' has other values than on row 2"),
    "negative time": (_set(3, months="-2"), "row 5: negative or infinite time -2.0"),
    "bad event": (_set(3, event="2"), "row 5: event '2' is not 0 \\(censored\\) or 1 \\(observed\\)"),
    "duplicate slide": (_set(4, slide_id="S003", case_id="C003"), "row 6: slide 'S003' is listed twice \\(also row 5\\)"),
    "missing column": (lambda rows, root: [{k: v for k, v in r.items() if k != "event"} for r in rows], "no column 'event'"),
}


@pytest.mark.parametrize("problem", sorted(BAD_TABLES))
def test_prepare_rejects_a_bad_table_in_one_line_and_writes_nothing(sample, tmp_path, problem):
    edit, message = BAD_TABLES[problem]
    root = _table_root(sample, tmp_path, edit)
    card = get_card(CARD).model_copy(update={"generator": None})
    with pytest.raises(DataError, match=message) as err:
        prepare(card, root, tmp_path / "data")
    assert "\n" not in err.value.one_line() and str(root / "labels.csv") in err.value.one_line()
    assert not (tmp_path / "data").exists()


def test_prepare_indexes_a_good_slide_download(sample, tmp_path):
    import pyarrow.parquet as pq

    root = _table_root(sample, tmp_path, lambda rows, root: None)
    card = get_card(CARD).model_copy(update={"generator": None})
    report = prepare(card, root, tmp_path / "data")
    index = pq.read_table(report.out_dir / "index.parquet").to_pylist()
    assert [r["slide_id"] for r in index] == ["S000", "S001", "S002", "S003", "S004", "S005"]
    assert {r["mpp"] for r in index} == {0.5} and {r["width"] for r in index} == {2048}
    assert (report.out_dir / "source.json").is_file() and report.samples == 6


def test_splits_and_folds_keep_each_case_whole(sample):
    records = read_table(get_card(CARD), sample)
    parts = case_split(records, (0.7, 0.1, 0.2), 42)
    cases = {name: {r.case_id for r in part} for name, part in parts.items()}
    assert not (cases["train"] & cases["val"]) and not (cases["train"] & cases["test"]) and not (cases["val"] & cases["test"])
    assert sum(len(p) for p in parts.values()) == len(records) == 28
    assert [len(cases[s]) for s in ("train", "val", "test")] == [17, 2, 5]  # 24 cases at 7:1:2
    folds = case_folds(records, 5, 42)
    flat = [c for f in folds for c in f]
    assert sorted(flat) == sorted({r.case_id for r in records}) and len(flat) == len(set(flat))
    events = {r.case_id: r.event for r in records}
    assert all(any(events[c] for c in f) for f in folds)  # stratified: an event in every fold


def test_gpfm_slide_cards_validate_and_refuse_the_wrong_task():
    cards = [get_card(n) for n in list_cards()]
    wsi = [c for c in cards if c.slides is not None and c.generator is None]
    assert sum(c.task == "wsi-classification" for c in wsi) == 20 and sum(c.task == "wsi-survival" for c in wsi) == 14
    for c in wsi:
        assert c.format == "slides" and c.slides.tile_px == 512 and c.slides.mpp == 0.5
        assert (c.task == "wsi-survival") == c.slides.survival and (c.num_classes >= 2) == (c.task == "wsi-classification")
    with pytest.raises(ConfigError, match="has no slide labels"):
        get_card("tcga-brca-survival").check_task("wsi-abmil")
    with pytest.raises(ConfigError, match="has no survival times"):
        get_card("bracs-7").check_task("wsi-survival")
    with pytest.raises(ConfigError, match="is a slide card"):
        get_card(CARD).check_task("segmentation")
    with pytest.raises(ConfigError, match="needs a slide card"):
        get_card("roi-sample").check_task("wsi-abmil")


# --- metrics and MIL -----------------------------------------------------------------------

def test_harrell_c_matches_torchsurv_and_its_interval_holds_it():
    from torchsurv.metrics.cindex import ConcordanceIndex

    rng = np.random.default_rng(0)
    for n in (6, 40, 150):
        risk = rng.normal(size=n)
        risk[:4] = risk[0]  # tied risks count one half
        time = rng.permutation(n).astype(float) + 1
        event = rng.random(n) < 0.6
        ours = harrell(risk, time, event)
        ref = float(ConcordanceIndex()(torch.tensor(risk, dtype=torch.float32), torch.tensor(event), torch.tensor(time, dtype=torch.float32)))
        assert ours == pytest.approx(ref, abs=1e-6)
    c = concordance(risk, time, event, n_boot=300, seed=1)
    assert c.ci_low <= c.value <= c.ci_high
    assert concordance(-time, time, np.ones(n, bool), n_boot=0).value == 1.0  # risk ordered as the deaths
    assert np.isnan(concordance(risk, time, np.zeros(n, bool)).value)  # all censored: no comparable pair


RECIPE = MilRecipe(epochs=30, patience=10, lr=2e-4, weight_decay=1e-4, hidden=64, attention=32, dropout=0.25, batch_size=8, seed=0)


def _bags(rng: np.random.Generator, labels: np.ndarray, dim: int = 16) -> list[np.ndarray]:
    """Bags of 20-40 noise instances; a positive bag hides 3 instances shifted along the first axis."""
    out = []
    for y in labels:
        bag = rng.normal(size=(rng.integers(20, 40), dim)).astype(np.float16)
        if y:
            bag[:3, 0] += 4
        out.append(bag)
    return out


def test_abmil_finds_the_positive_instances_and_is_deterministic():
    rng = np.random.default_rng(0)
    y = {s: rng.permutation(np.repeat([0, 1], n)) for s, n in (("train", 30), ("val", 6), ("test", 10))}
    bags = {s: _bags(rng, y[s]) for s in y}
    result = train_classifier(bags["train"], y["train"], bags["val"], y["val"], bags["test"], 2, RECIPE)
    again = train_classifier(bags["train"], y["train"], bags["val"], y["val"], bags["test"], 2, RECIPE)
    np.testing.assert_array_equal(result.test_prob, again.test_prob)
    assert ((result.test_prob[:, 1] > 0.5) == y["test"].astype(bool)).mean() >= 0.9
    assert 1 <= result.best_epoch <= result.epochs_run <= RECIPE.epochs
    assert result.trainable_params == (16 * 64 + 64) + 2 * (64 * 32 + 32) + (32 + 1) + (64 * 2 + 2)


def test_cox_abmil_ranks_cases_by_their_hazard():
    rng = np.random.default_rng(1)
    n = 120
    hazard = rng.normal(size=n)
    time = rng.exponential(1 / np.exp(2 * hazard))
    event = rng.random(n) < 0.8
    bags = [np.concatenate([rng.normal(size=(10, 8)), rng.normal(size=(3, 8)) + [2 * h, 0, 0, 0, 0, 0, 0, 0]]).astype(np.float16) for h in hazard]

    def c_index(epochs: int) -> float:
        recipe = MilRecipe(epochs=epochs, patience=1, lr=1e-3, weight_decay=1e-4, hidden=32, attention=16, dropout=0.0, batch_size=16, seed=0)
        model = train_survival(bags[:80], time[:80], event[:80], recipe)
        return harrell(predict(model, bags[80:], "cpu")[:, 0], time[80:], event[80:])

    oracle = harrell(hazard[80:], time[80:], event[80:])  # the true hazard's own C-index on these cases
    trained, barely = c_index(30), c_index(1)
    assert trained >= oracle - 0.1 and trained > barely + 0.2, (trained, barely, oracle)


# --- rows ---------------------------------------------------------------------------------

def test_abmil_and_survival_rows_from_one_set_of_cached_bags(tmp_path):
    cfg, _ = resolve_config("wsi-abmil", "phikon", CARD, runtime="inprocess", epochs=8, input_size=112, n_bootstrap=100)
    row = execute(cfg, results_dir=tmp_path)
    assert row.task == "wsi-abmil" and row.decoder == "abmil" and row.tiles == 280
    assert row.split_sizes == [20, 3, 5] and row.class_names == ["nest", "stroma"]
    for m in ("macro_acc", "macro_f1", "macro_auroc"):
        assert 0 <= getattr(row, f"{m}_ci_low") <= getattr(row, m) <= getattr(row, f"{m}_ci_high") <= 1
    assert row.c_index is None
    entries = list(FeatureCache().entries())
    assert len(entries) == 28 and all(meta["shape"][1:] == [768] for _, meta, _ in entries)  # one fp16 bag [N, 768] per slide
    assert sorted(meta["shape"][0] for _, meta, _ in entries) == sorted(len(load_grid(p)) for p in (dataset_root(get_card(CARD)).parent / CARD / "tiles").glob("*.npz"))

    surv_cfg, _ = resolve_config("wsi-survival", "phikon", CARD, runtime="inprocess", epochs=3, input_size=112, n_bootstrap=100)
    surv = execute(surv_cfg, results_dir=tmp_path)
    assert len(list(FeatureCache().entries())) == 28  # the same bags: nothing extracted again
    assert surv.task == "wsi-survival" and len(surv.fold_c_index) == 5 and sum(surv.split_sizes) == 24
    scored = [v for v in surv.fold_c_index if v is not None]
    assert surv.c_index == pytest.approx(np.mean(scored)) and 0 <= surv.c_index <= 1
    for v, lo, hi in zip(surv.fold_c_index, surv.fold_c_index_ci_low, surv.fold_c_index_ci_high):
        assert v is None or lo <= v <= hi
    assert surv.macro_auroc is None

    from harness.report.roi import build_roi_entries, roi_columns

    groups = build_roi_entries([row.model_dump(), surv.model_dump()])  # the report's GPFM section
    assert set(groups) == {(CARD, "wsi-abmil"), (CARD, "wsi-survival")}
    (abmil,), (cox,) = groups[(CARD, "wsi-abmil")], groups[(CARD, "wsi-survival")]
    assert abmil.values["macro_auroc"][0] == row.macro_auroc and abmil.rank == 1
    assert cox.values["c_index"][0] == surv.c_index and roi_columns(groups)[(CARD, "wsi-survival")] == ["c_index"]


@pytest.mark.slow
def test_a_killed_slide_extraction_resumes_at_the_first_slide_without_a_bag(tmp_path, no_leftover_servers):
    import os
    import signal

    from harness.results.store import read_rows
    from tests.waiting import wait_until

    res = tmp_path / "results"
    cmd = [sys.executable, "-m", "harness", "bench", "-m", "phikon", "-d", CARD, "--task", "wsi-abmil", "--runtime", "local",
           "--input-size", "112", "--epochs", "5", "--results-dir", str(res), "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    cache = FeatureCache()

    def some_bags() -> list:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        entries = list(cache.entries())
        return entries if len(entries) >= 5 else []

    wait_until(some_bags, 600, "five slide bags in the feature cache")
    os.killpg(proc.pid, signal.SIGKILL)  # the harness and everything in its session, at once
    proc.wait()
    before = {path.name: (path / "tokens.f16").stat().st_mtime_ns for path, _, _ in cache.entries()}
    assert 5 <= len(before) < 28 and read_rows(res) == []

    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    after = {path.name: (path / "tokens.f16").stat().st_mtime_ns for path, _, _ in cache.entries()}
    assert len(after) == 28 and all(after[name] == mtime for name, mtime in before.items())  # finished bags were not extracted again
    (row,) = read_rows(res)
    assert row["task"] == "wsi-abmil" and row["transfer"] == "shm" and row["tiles"] == 280

    surv = subprocess.run([*cmd[:cmd.index("wsi-abmil")], "wsi-survival", *cmd[cmd.index("wsi-abmil") + 1:]], capture_output=True, text=True, timeout=900)
    assert surv.returncode == 0, surv.stderr
    assert "C-index over 5 folds" in surv.stdout and "mean" in surv.stdout and len(list(cache.entries())) == 28
