"""GPFM's ROI tasks: metrics against hand-computed values, the two heads, ROI cards, and rows from served features."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from harness.config import RoiConfig
from harness.data.cards import DatasetCard, get_card, load_card_file
from harness.data.loader import discover, split
from harness.errors import CardError, ConfigError, DataError
from harness.metrics.classification import binary_auroc, evaluate_classification, macro_accuracy, macro_auroc, macro_f1, per_class_f1, topk_accuracy
from harness.roi.heads import ProbeRecipe, knn_retrieval, train_linear_probe
from harness.run.lifecycle import execute
from harness.run.plan import resolve_config
from harness.run.roi import roi_labels

# --- metrics, by hand -------------------------------------------------------------------

TRUTH = np.array([0, 0, 1, 1, 2, 2])
PRED = np.array([0, 1, 1, 1, 2, 0])


def test_macro_accuracy_is_the_mean_per_class_recall():
    # recalls: class 0 1/2, class 1 2/2, class 2 1/2
    assert macro_accuracy(TRUTH, PRED, 3) == pytest.approx((0.5 + 1.0 + 0.5) / 3)


def test_macro_f1_by_hand():
    # class 0: TP 1, FP 1, FN 1 -> 2/4; class 1: TP 2, FP 1, FN 0 -> 4/5; class 2: TP 1, FP 0, FN 1 -> 2/3
    assert per_class_f1(TRUTH, PRED, 4) == pytest.approx([0.5, 0.8, 2 / 3, None])  # class 3: never seen, never predicted
    assert macro_f1(TRUTH, PRED, 4) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)


def test_binary_auroc_counts_pairs_and_half_ties():
    truth = np.array([0, 0, 1, 1])
    assert binary_auroc(truth == 1, np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(3 / 4)  # 0.35 < 0.4 loses one pair of four
    assert binary_auroc(truth == 1, np.array([0.1, 0.4, 0.4, 0.8])) == pytest.approx(3.5 / 4)  # the tie counts one half
    assert np.isnan(binary_auroc(np.array([True, True]), np.array([0.2, 0.3])))


def test_macro_auroc_two_classes_uses_class_one_and_more_classes_one_vs_rest():
    prob2 = np.array([[0.9, 0.1], [0.6, 0.4], [0.65, 0.35], [0.2, 0.8]])
    assert macro_auroc(np.array([0, 0, 1, 1]), prob2) == pytest.approx(3 / 4)
    truth = np.array([0, 1, 2, 2])
    prob3 = np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.1, 0.6, 0.3], [0.3, 0.1, 0.6]])
    # class 0: 0.7 above all three others -> 1; class 1: positive 0.5 vs 0.2, 0.6, 0.1 -> 2/3;
    # class 2: positives 0.3 and 0.6 vs negatives 0.1 and 0.3 -> (1 + 0.5 + 1 + 1) / 4
    assert macro_auroc(truth, prob3) == pytest.approx((1 + 2 / 3 + 3.5 / 4) / 3)


def test_topk_accuracy_is_a_hit_in_the_first_k_averaged_per_class():
    truth = np.array([0, 1, 1])
    neighbours = np.array([[1, 0, 1], [1, 1, 0], [0, 0, 1]])
    assert topk_accuracy(truth, neighbours, 1, 2) == pytest.approx((0 + 0.5) / 2)
    assert topk_accuracy(truth, neighbours, 2, 2) == pytest.approx((1 + 0.5) / 2)
    assert topk_accuracy(truth, neighbours, 3, 2) == pytest.approx(1.0)


def test_bootstrap_intervals_bracket_the_estimate_and_are_seeded():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, 200)
    prob = rng.dirichlet(np.ones(3), 200)
    prob[np.arange(200), truth] += 0.5  # informative
    a = evaluate_classification(truth, prob, n_boot=200, seed=1)
    b = evaluate_classification(truth, prob, n_boot=200, seed=1)
    assert a == b
    for m, v in a.metrics.items():
        low, high = a.ci[m]
        assert low <= v <= high and high - low > 0.01
    assert a.metrics["macro_auroc"] > 0.8


# --- the heads --------------------------------------------------------------------------

def test_knn_votes_by_rank_weights_through_a_softmax():
    train = np.array([[0.0], [1.0], [10.0], [11.0]])
    result = knn_retrieval(train, np.array([0, 0, 1, 1]), np.array([[0.2]]), num_classes=2)
    # two classes -> the 2 nearest vote: class 0 gets 1.0 + 0.9, class 1 nothing; softmax([1.9, 0])
    expected = np.exp([1.9, 0.0]) / np.exp([1.9, 0.0]).sum()
    assert result.test_prob[0] == pytest.approx(expected)
    assert result.neighbour_labels.tolist() == [[0, 0, 1, 1]]  # all four (k_max 5 > 4 training images), nearest first


def test_knn_z_scores_with_the_training_statistics():
    # Dimension 1 has a huge scale but no signal; unscaled it would decide every neighbour.
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 20)
    train = np.stack([labels + rng.normal(0, 0.1, 40), rng.normal(0, 1000, 40)], 1)
    test = np.array([[0.0, 0.0], [1.0, 0.0]])
    assert knn_retrieval(train, labels, test, 2).test_prob.argmax(1).tolist() == [0, 1]


def test_linear_probe_learns_selects_on_val_and_stops_early():
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 1, (3, 16))
    def draw(n):
        y = rng.integers(0, 3, n)
        return centers[y] + rng.normal(0, 0.5, (n, 16)), y
    (xt, yt), (xv, yv), (xs, ys) = draw(90), draw(30), draw(30)
    result = train_linear_probe(xt, yt, xv, yv, xs, 3, ProbeRecipe(epochs=400, patience=15, lr=1e-2, batch_size=32))
    assert result.best_val > 0.95
    assert result.epochs_run < 400 and result.epochs_run - result.best_epoch == 15
    assert macro_accuracy(ys, result.test_prob.argmax(1), 3) > 0.9
    assert result.trainable_params == 16 * 3 + 3


# --- ROI cards --------------------------------------------------------------------------

def _roi_card(**changes) -> dict:
    card = get_card("roi-sample").model_dump(mode="json")
    card.update(changes)
    return card


def test_roi_cards_need_the_image_folder_format_and_a_group_label():
    with pytest.raises(ValueError, match="task roi-classification cannot use format image-mask"):
        DatasetCard(**_roi_card(format="image-mask", layout={"images": "images/{id}.png", "masks": "masks/{id}.png"}))
    with pytest.raises(ValueError, match="name the label by a {group} folder"):
        DatasetCard(**_roi_card(layout={"images": "{id}.png"}))
    seg = get_card("nuclei-sample").model_dump(mode="json")
    with pytest.raises(ValueError, match="needs layout.masks"):
        DatasetCard(**{**seg, "layout": {"images": "images/{id}.png"}})


def test_a_malformed_roi_card_file_is_one_line(tmp_path):
    path = tmp_path / "bad-roi.yaml"
    path.write_text(json.dumps(_roi_card(name="bad-roi", mask={"encoding": "index"})))
    with pytest.raises(CardError, match="bad-roi.yaml: .*from-group"):
        load_card_file(path)


def test_the_gpfm_roi_cards_are_all_there():
    names = ["bach", "breakhis", "ccrcc-tcga-hel", "chaoyang", "crc-100k", "crc-msi", "esca", "gashisdb", "pancancer-tcga",
             "pancancer-til", "pcam", "unitopatho", "wsss4luad-roi"]
    cards = [get_card(n) for n in names]
    assert all(c.task == "roi-classification" and c.format == "image-folder" for c in cards)
    assert get_card("crc-retrieval").task == "roi-retrieval"
    # GPFM selects on its test split for these; the cards always leave a real validation split
    assert all(c.split.rule == "seeded" or {"train", "test"} <= set(c.split.official.values()) for c in cards)


def test_label_in_the_file_name_and_an_unknown_class_folder(tmp_path):
    card = get_card("wsss4luad-roi")
    for i, label in enumerate(["1, 0, 0", "0, 1, 1", "0, 0, 1", "1, 1, 0"]):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / f"{100 + i}-{i}-[{label}].png")
    samples = discover(card, tmp_path, check_count=False)
    assert roi_labels(card, samples).tolist() == [0, 1, 2, 0]  # the first positive label, as GPFM

    sample_card = get_card("roi-sample")
    (tmp_path / "b" / "mitotic").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "b" / "mitotic" / "x.png")
    with pytest.raises(DataError, match="folder 'mitotic' is not one of the card's classes"):
        roi_labels(sample_card, discover(sample_card, tmp_path / "b", check_count=False))


def test_roi_sample_tiles_are_the_histolytics_pixels_labelled_by_their_dominant_type():
    import importlib.metadata

    from harness.data.formats import read_image
    from harness.data.loader import dataset_root

    dist = importlib.metadata.distribution("histolytics")
    image = np.asarray(Image.open(dist.locate_file("histolytics/data/hgsc_nest.jpg")).convert("RGB"))
    types = np.load(dist.locate_file("histolytics/data/hgsc_nest_type_mask.npz"))["nuc_raster"]
    card = get_card("roi-sample")
    samples = discover(card, dataset_root(card))
    labels = roi_labels(card, samples)
    for sample, label in list(zip(samples, labels))[::20]:
        r, c = int(sample.image.stem[6:8]), int(sample.image.stem[9:11])
        sl = np.s_[r * 100:(r + 1) * 100, c * 100:(c + 1) * 100]
        assert np.array_equal(read_image(card, sample.image), image[sl])
        counts = np.bincount(types[sl].ravel(), minlength=4)[1:]
        assert counts.argmax() == label and counts.max() >= 0.6 * counts.sum()


def test_roi_sample_is_real_balanced_and_split_three_ways():
    from harness.data.loader import dataset_root

    card = get_card("roi-sample")
    parts = split(card, discover(card, dataset_root(card)))
    counts = {name: np.bincount(roi_labels(card, p), minlength=3).tolist() for name, p in parts.items()}
    assert sum(map(sum, counts.values())) == 175
    assert [sum(c) for c in counts.values()] == [105, 35, 35]
    assert all(min(c) >= 5 for c in counts.values())  # every class in every split


# --- rows -------------------------------------------------------------------------------

def test_task_and_card_must_agree():
    with pytest.raises(ConfigError, match="'roi-sample' is an ROI card"):
        from harness.run.plan import resolve_config

        resolve_config("segmentation", "phikon", "roi-sample", runtime="inprocess")
    with pytest.raises(ConfigError, match="needs an ROI card; 'nuclei-sample' is a segmentation card"):
        resolve_config("roi-linear", "phikon", "nuclei-sample", runtime="inprocess")
    with pytest.raises(ConfigError, match="retrieval card"):
        resolve_config("roi-linear", "phikon", "crc-retrieval", runtime="inprocess")


@pytest.mark.slow
def test_linear_probe_row_from_served_features(tmp_path, no_leftover_servers):
    cfg, _ = resolve_config("roi-linear", "phikon", "roi-sample", runtime="local", epochs=60, input_size=112, n_bootstrap=200)
    row = execute(cfg, results_dir=tmp_path)
    assert row.task == "roi-linear" and row.decoder == "linear" and row.transfer == "shm" and row.runtime == "local"
    assert row.split_sizes == [105, 35, 35] and row.class_names == ["connective", "inflammatory", "neoplastic"]
    for m in ("macro_acc", "macro_f1", "macro_auroc"):
        value, low, high = getattr(row, m), getattr(row, f"{m}_ci_low"), getattr(row, f"{m}_ci_high")
        assert 0 <= low <= value <= high <= 1
    assert row.macro_auroc > 0.6  # random-init ViT-B features still separate nuclei types better than chance
    assert row.mIoU is None and row.top1_acc is None
    assert 1 <= row.best_epoch <= 60 and row.trainable_params == 768 * 3 + 3
    assert RoiConfig(**json.loads(row.config_json)).config_hash() == row.config_hash
    # same key: skipped
    again = execute(cfg, results_dir=tmp_path, skip_finished=True)
    assert again.row_id == row.row_id


@pytest.mark.slow
def test_knn_row_through_the_cli(tmp_path):
    res = tmp_path / "results"
    cmd = [sys.executable, "-m", "harness", "bench", "-m", "phikon", "-d", "roi-sample", "--task", "roi-knn", "--runtime", "inprocess",
           "--input-size", "112", "--results-dir", str(res), "--no-progress"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "top1_acc" in done.stdout and "macro_auroc" in done.stdout
    from harness.results.store import read_rows

    (row,) = read_rows(res)
    assert row["task"] == "roi-knn" and row["decoder"] == "knn"
    assert row["top1_acc"] <= row["top3_acc"] <= row["top5_acc"] <= 1
    assert row["macro_acc"] > 0.45  # three classes: chance is 1/3

    wrong = subprocess.run([sys.executable, "-m", "harness", "bench", "-m", "phikon", "-d", "nuclei-sample", "--task", "roi-knn",
                            "--runtime", "inprocess", "--results-dir", str(res)], capture_output=True, text=True, timeout=120)
    assert wrong.returncode == 1
    assert wrong.stderr.strip().count("\n") == 0 and "segmentation card" in wrong.stderr
