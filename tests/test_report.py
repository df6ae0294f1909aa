"""`pfmbench report`: ranks, seeds, published deltas, figures, and the HTML page in a real headless Chromium."""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness.report.html import build_report
from harness.report.published import CSV_PATH, published, published_ranks
from harness.report.ranks import average_ranks
from harness.results.schema import ResultRow
from harness.results.store import write_row

_T0 = datetime(2026, 1, 1)


def _published_csv(strategy: str, dataset: str, model: str) -> float:
    """Read the shipped CSV directly (not through the code under test)."""
    with CSV_PATH.open() as f:
        for r in csv.DictReader(f):
            if (r["strategy"], r["dataset"], r["model"]) == (strategy, dataset, model):
                return float(r["mDice"])
    raise KeyError((strategy, dataset, model))


def _published_csv_ci(strategy: str, dataset: str, model: str) -> tuple[str, str]:
    with CSV_PATH.open() as f:
        for r in csv.DictReader(f):
            if (r["strategy"], r["dataset"], r["model"]) == (strategy, dataset, model):
                return r["mDice_ci_low"], r["mDice_ci_high"]
    raise KeyError((strategy, dataset, model))


def _row(results: Path, model: str, dataset: str, strategy: str, mdice: float, weights: str = "sha256:" + "ab" * 32, seed: int = 42,
         minutes: int = 0, preset: str = "densebench", adapted_modules: int | None = None) -> None:
    config_hash = uuid.uuid5(uuid.NAMESPACE_DNS, f"{model}{dataset}{strategy}{seed}{preset}").hex[:16]
    metrics = {}
    for m in ("mIoU", "mDice", "mIoU_nobg", "mDice_nobg", "pixel_accuracy"):
        metrics.update({m: mdice, f"{m}_ci_low": mdice - 0.02, f"{m}_ci_high": mdice + 0.02})
    write_row(ResultRow(
        row_id=uuid.uuid4().hex[:12], run_key=uuid.uuid4().hex[:20], created_at=_T0 + timedelta(minutes=minutes), model=model,
        model_spec_hash="s" * 16, weights=weights, weights_init_seed=0 if weights == "random" else None, dataset=dataset, card_hash="c" * 16,
        split_sizes=[10, 3, 3], strategy=strategy, decoder="transunet", preset=preset, seed=seed, epochs=1, input_size=224, blocks=[-1],
        inference="resize", runtime="inprocess", transfer="none", image_digest=None, config_hash=config_hash, config_json="{}", **metrics,
        class_names=["a", "b"], per_class_iou=[0.5, 0.5], per_class_dice=[0.5, 0.5], n_bootstrap=10, best_epoch=0, best_val=0.5,
        harness_version="test", git_commit=None, package_versions="{}", hardware="test", wall_time_s=1.0, peak_rss_mb=1.0,
        adapted_modules=adapted_modules,
    ), results)


def _roi_row(results: Path, model: str, task: str, auroc: float, top1: float | None = None, seed: int = 42) -> None:
    config_hash = uuid.uuid5(uuid.NAMESPACE_DNS, f"{model}{task}{seed}").hex[:16]
    metrics: dict[str, float] = {}
    if task == "roi-linear":
        for m, v in (("macro_acc", auroc - 0.1), ("macro_f1", auroc - 0.2), ("macro_auroc", auroc)):
            metrics.update({m: v, f"{m}_ci_low": v - 0.03, f"{m}_ci_high": v + 0.03})
    else:
        metrics.update({"top1_acc": top1 or 0.0, "top3_acc": min(1.0, (top1 or 0.0) + 0.1), "top5_acc": min(1.0, (top1 or 0.0) + 0.2)})
    write_row(ResultRow(
        row_id=uuid.uuid4().hex[:12], run_key=uuid.uuid4().hex[:20], created_at=_T0, task=task, model=model, model_spec_hash="s" * 16,
        weights="sha256:" + "cd" * 32, weights_init_seed=None, dataset="roi-sample", card_hash="r" * 16, split_sizes=[105, 35, 35],
        strategy="frozen", decoder="none", preset="gpfm", seed=seed, epochs=30, input_size=224, blocks=[-1], inference="none", runtime="inprocess",
        transfer="none", image_digest=None, config_hash=config_hash, config_json="{}", **metrics,
        class_names=["connective", "inflammatory", "neoplastic"], per_class_f1=[0.61, 0.52, 0.83] if task == "roi-linear" else [],
        n_bootstrap=10, best_epoch=0, best_val=0.5, harness_version="test", git_commit=None, package_versions="{}", hardware="test",
        wall_time_s=1.0, peak_rss_mb=1.0,
    ), results)


def test_average_ranks_share_ties():
    assert average_ranks([0.9, 0.7, 0.9, 0.1]) == [1.5, 3.0, 1.5, 4.0]


def test_the_shipped_published_numbers_are_the_reference_files():
    with CSV_PATH.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5 * 18 * 17  # 1530 cells, none missing
    assert {r["strategy"] for r in rows} == {"frozen", "lora", "dora", "cnn", "transformer"}
    assert all(float(r["mDice_ci_low"]) <= float(r["mDice"]) <= float(r["mDice_ci_high"]) for r in rows)
    # the summary's figure: mean frozen mDice over the 306 (dataset, model) cells is 0.6590
    assert np.mean([float(r["mDice"]) for r in rows if r["strategy"] == "frozen"]) == pytest.approx(0.6590, abs=5e-5)
    assert published("cnn_adapter", "GlaS", "uni_v1").mean == _published_csv("cnn", "GlaS", "uni_v1")
    assert published("full", "GlaS", "uni_v1") is None  # the reference published no full fine-tuning
    # the baseline view's average ranks: 17 models on each of 18 datasets, so each strategy's ranks average (17 + 1) / 2
    ranks = published_ranks("mDice")
    assert len(ranks) == 17 and all(len(by) == 5 for by in ranks.values())
    for strategy in ("frozen", "lora", "dora", "cnn_adapter", "transformer_adapter"):
        assert np.mean([by[strategy] for by in ranks.values()]) == pytest.approx(9.0)
    # recomputed from the CSV for one model: its frozen rank on each dataset, averaged
    frozen = [r for r in rows if r["strategy"] == "frozen"]
    own = [1 + sum(float(o["mDice"]) > float(r["mDice"]) for o in frozen if o["dataset"] == r["dataset"]) for r in frozen if r["model"] == "uni_v1"]
    assert ranks["uni_v1"]["frozen"] == pytest.approx(np.mean(own), abs=0.03)  # ties share their mean rank


@pytest.fixture
def store(tmp_path):
    res = tmp_path / "res"
    pub_uni = _published_csv("frozen", "GlaS", "uni_v1")
    _row(res, "uni", "glas", "frozen", pub_uni + 0.0123)
    _row(res, "uni", "glas", "frozen", 0.99, weights="random")  # untrained: never compared
    _row(res, "virchow", "glas", "frozen", 0.70, seed=1)
    _row(res, "virchow", "glas", "frozen", 0.80, seed=2)  # two seeds -> one entry, mean 0.75
    _row(res, "phikon", "glas", "frozen", 0.10, minutes=0)
    _row(res, "phikon", "glas", "frozen", 0.60, minutes=5)  # the same configuration re-run: the newest counts
    _row(res, "phikon", "glas", "lora", 0.61, adapted_modules=0)  # densebench: the reference's coverage, no adapter on phikon
    _row(res, "gigapath", "ebhi", "cnn_adapter", 0.5)
    _row(res, "uni", "nuclei-sample", "frozen", 0.4)  # no published cell
    _roi_row(res, "uni", "roi-linear", 0.91)
    _roi_row(res, "phikon", "roi-linear", 0.84)
    _roi_row(res, "uni", "roi-knn", 0.0, top1=0.77)
    return res, pub_uni


def test_leaderboard_ranks_seeds_and_published_deltas(store, tmp_path):
    res, pub_uni = store
    files = build_report(res, tmp_path / "report")
    with files.csv.open() as f:
        table = {(r["dataset"], r["strategy"], r["model"], r["weights"][:6]): r for r in csv.DictReader(f)}
    uni = table[("glas", "frozen", "uni", "sha256")]
    assert float(uni["delta"]) == pytest.approx(0.0123, abs=1e-4) and float(uni["published"]) == pytest.approx(pub_uni, abs=1e-4)
    assert uni["rank"] == "1"
    virchow = table[("glas", "frozen", "virchow", "sha256")]
    assert virchow["seeds"] == "2" and float(virchow[files.board.metric]) == pytest.approx(0.75) and virchow["rank"] == "2"
    assert table[("glas", "frozen", "phikon", "sha256")]["mDice"] == "0.6000"
    rnd = table[("glas", "frozen", "uni", "random")]
    assert rnd["published"] == "" and rnd["delta"] == "" and rnd["rank"] == "1"  # ranked among the random entries only
    assert "did not wrap" in table[("glas", "lora", "phikon", "sha256")]["note"]
    # every comparison with a published cell says the splits differ, and what ours is (GlaS: the release's official split)
    assert "splits differ: the published value used the reference's split lists; this entry's is the official" in uni["note"]
    assert "splits differ" not in table[("nuclei-sample", "frozen", "uni", "sha256")]["note"]  # no published cell, nothing to say
    assert "no adapter: frozen backbone" in table[("glas", "lora", "phikon", "sha256")]["context"]
    assert "no adapter" not in table[("glas", "frozen", "phikon", "sha256")]["context"]
    assert table[("nuclei-sample", "frozen", "uni", "sha256")]["published"] == ""
    ranks = {(r.model, r.strategy, r.random): r for r in files.board.ranks}
    assert ranks[("uni", "frozen", False)].average_rank == 1.0 and ranks[("uni", "frozen", False)].datasets == 2
    assert ranks[("phikon", "all", False)].average_rank == pytest.approx((3 + 1) / 2)
    for png in files.pngs:
        img = np.asarray(Image.open(png).convert("L"))
        assert img.shape[0] > 100 and img.std() > 10, png  # a real figure, not a blank canvas
    assert sorted(p.name for p in files.pngs) == ["heatmap.png", "published.png", "published_delta.png", "strategies.png"]


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_html_report_renders_its_tables_in_headless_chromium(store, tmp_path):
    browser = _chromium()
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("CI needs Chromium for this test: apt-get install chromium (.ci/run does)")
        pytest.skip("no Chromium on this machine (apt-get install chromium)")
    res, _ = store
    files = build_report(res, tmp_path / "report")
    html = files.html.read_text()
    assert "http://" not in html and "https://" not in html  # self-contained: nothing to fetch
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([browser, *flags, "--dump-dom", files.html.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    tables = re.findall(r'<table class="leaderboard" data-dataset="([^"]+)" data-strategy="([^"]+)"', dom.stdout)
    assert sorted(tables) == [("ebhi", "cnn_adapter"), ("glas", "frozen"), ("glas", "lora"), ("nuclei-sample", "frozen")]
    assert dom.stdout.count('<img alt="') == 4 and "not compared" in dom.stdout and 'id="ranks"' in dom.stdout
    # the published leaderboard is the baseline view: 17 models ranked over the 18 datasets, per strategy
    published = dom.stdout.split('id="published-ranks"')[1].split("</table>")[0]
    assert published.count("<tr>") == 1 + 17 and ">uni_v1<" in published and "No rows of yours yet" not in dom.stdout
    # the ROI rows have their own section, with their own metrics, ranks and run context
    roi = re.findall(r'<table class="roi" data-dataset="([^"]+)" data-task="([^"]+)"', dom.stdout)
    assert sorted(roi) == [("roi-sample", "roi-knn"), ("roi-sample", "roi-linear")]
    linear = dom.stdout.split('data-task="roi-linear"')[1].split("</table>\n")[0]
    assert "macro_auroc (ranked)" in linear and "top1_acc" not in linear and "0.9100" in linear and "(0.8800 - 0.9400)" in linear
    assert linear.index(">uni<") < linear.index(">phikon<") and "30 ep, 224 px, gpfm" in linear and "neoplastic" in linear
    assert "split seeded 60/20/20 (card seed 42)" in linear  # roi-sample's card cuts its own seeded split
    # each segmentation entry says how it ran, its per-class values, and its distance to the published value in CI half-widths
    glas = dom.stdout.split('data-dataset="glas" data-strategy="frozen"')[1].split("</table>\n")[0]
    assert "1 ep, 224 px, densebench, transunet, resize" in glas and "per class" in glas
    assert "split official" in glas  # GlaS ships its own split: the card says so, and so does the entry
    above = float(_published_csv_ci("frozen", "GlaS", "uni_v1")[1]) - _published_csv("frozen", "GlaS", "uni_v1")  # the CI's upper side
    assert f"{0.0123 / above:+.2f}" in glas
    # ranks: one overall table and one per-strategy table, no model repeated within either
    overall = dom.stdout.split('id="ranks"')[1].split("</table>")[0]
    assert overall.count('>uni</td><td class="name">densebench</td><td class="name">real<') == 1 and 'id="ranks-by-strategy"' in dom.stdout
    assert overall.count(">uni<") == 2  # once with real weights, once untrained: two entries, not a repeat
    shot = tmp_path / "shot.png"
    subprocess.run([browser, *flags, f"--screenshot={shot}", "--window-size=1200,900", files.html.as_uri()], capture_output=True, timeout=120, check=True)
    img = np.asarray(Image.open(shot).convert("L"))
    assert img.shape == (900, 1200) and (img < 128).mean() > 0.01  # text was painted


def test_report_cli_errors_are_one_line(tmp_path):
    # no rows yet: the page still shows the published leaderboard, the baseline a first row is read against
    empty = subprocess.run([sys.executable, "-m", "harness.cli", "report", "--results-dir", str(tmp_path / "none"), "--out", str(tmp_path / "r")],
                           capture_output=True, text=True)
    assert empty.returncode == 0 and "no segmentation rows of yours" in empty.stdout and "pfmbench bench" in empty.stdout, empty.stderr
    page = (tmp_path / "r" / "report.html").read_text()
    assert "No rows of yours yet" in page and 'id="published-ranks"' in page and 'alt="published"' in page and 'class="leaderboard"' not in page
    bad = subprocess.run([sys.executable, "-m", "harness.cli", "report", "--metric", "F1"], capture_output=True, text=True)
    assert bad.returncode == 1 and "unknown metric 'F1'" in bad.stderr
