"""Resize vs slide inference end to end (in-process runtime), with instance metrics on nuclei cards."""

from __future__ import annotations

import math

import pytest

from harness.data.cards import get_card
from harness.data.prepare import prepare
from harness.results.schema import INSTANCE_METRICS
from harness.run.lifecycle import execute
from harness.run.plan import resolve_config

from dataset_fixtures import write_fixture


def _run(dataset: str, inference: str, tmp_path, **kw):
    cfg, _ = resolve_config("segmentation", "phikon", dataset, runtime="inprocess", epochs=2, inference=inference, n_bootstrap=20, input_size=112, **kw)
    return execute(cfg, results_dir=tmp_path / "results", data_dir=kw.pop("data_dir", None), write=False)


@pytest.mark.slow
def test_resize_and_slide_score_the_same_decoder_on_nuclei_sample(tmp_path):
    resize = _run("nuclei-sample", "resize", tmp_path)
    slide = _run("nuclei-sample", "slide", tmp_path)
    assert (resize.inference, resize.window, resize.overlap) == ("resize", None, None)
    assert (slide.inference, slide.window, slide.overlap) == ("slide", 112, 0.2)
    assert slide.best_val == resize.best_val and slide.best_epoch == resize.best_epoch  # one decoder, two scorings
    for row in (resize, slide):
        assert 0 <= row.mIoU <= 1 and 0 <= row.pixel_accuracy <= 1
        for m in INSTANCE_METRICS:
            value = getattr(row, m)
            assert value is None or (0 <= value <= 1 and not math.isnan(value)), (m, value)
        assert row.AJI is not None and row.det_F1 is not None
    assert slide.mIoU != resize.mIoU  # scored against the 250 px labels, not the 112 px resize


def test_slide_on_a_prepared_format_fixture_with_release_instances(tmp_path):
    card = get_card("consep")
    write_fixture(card, tmp_path / "src")
    prepare(card, source=tmp_path / "src", data_dir=tmp_path / "data")
    cfg, _ = resolve_config("segmentation", "phikon", "consep", runtime="inprocess", epochs=1, inference="slide", input_size=112, n_bootstrap=10)
    row = execute(cfg, data_dir=tmp_path / "data", write=False)
    assert row.window == 112 and row.split_sizes[2] > 0
    assert row.PQ is not None or row.DQ is not None or row.AJI is not None


def test_a_bad_inference_mode_is_a_one_line_config_error():
    from harness.errors import ConfigError

    with pytest.raises(ConfigError, match="--inference"):
        resolve_config("segmentation", "phikon", "nuclei-sample", runtime="inprocess", inference="tiles")
