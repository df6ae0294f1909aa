"""Sliding-window inference: full coverage, exact blending, padding, batching across images."""

from __future__ import annotations

import numpy as np
import pytest

from harness.infer.sliding import blend_weights, coverage, sliding_window, window_starts


def test_window_starts_end_at_the_border():
    assert window_starts(100, 32, 26) == [0, 26, 52, 68]
    assert window_starts(20, 32, 26) == [0]
    assert window_starts(64, 32, 32) == [0, 32]


@pytest.mark.parametrize("blend", ["gaussian", "linear", "uniform"])
def test_every_pixel_is_predicted_exactly_once_in_the_blend_sense(blend):
    cov = coverage(101, 77, 32, overlap=0.25, blend=blend)  # not multiples of the window
    np.testing.assert_allclose(cov, 1.0, atol=1e-12)
    assert (blend_weights(32, blend) > 0).all()


@pytest.mark.parametrize("shape", [(101, 77), (20, 45), (32, 32)])
def test_a_constant_model_gives_the_constant_back(shape):
    img = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    const = np.array([0.3, -1.5, 2.0])
    out = sliding_window([img], lambda t: np.broadcast_to(const[None, :, None, None], (len(t), 3, 32, 32)), 32, overlap=0.2)
    assert out[0].shape == (3, *shape)
    np.testing.assert_allclose(out[0], const[:, None, None] * np.ones(shape), atol=1e-12)


def test_a_pixelwise_model_is_reproduced_exactly_and_windows_are_batched_across_images():
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, s + (3,), dtype=np.uint8) for s in [(70, 90), (33, 40), (64, 64)]]
    calls = []

    def predict(tiles):  # logits depend only on the pixel: blending must give them back exactly
        calls.append(len(tiles))
        return np.stack([tiles[..., 0], tiles[..., 1] * 0.5], axis=1).astype(np.float64)

    out = sliding_window(images, predict, 32, overlap=0.5, batch=8)
    for img, lg in zip(images, out):
        np.testing.assert_allclose(lg[0], img[..., 0], atol=1e-9)
        np.testing.assert_allclose(lg[1], img[..., 1] * 0.5, atol=1e-9)
    assert max(calls) == 8 and sum(calls) > 8  # full batches mixing windows of several images


def test_bad_predict_output_is_named():
    with pytest.raises(ValueError, match="expected \\[1, C, 16, 16\\]"):
        sliding_window([np.zeros((16, 16, 3), np.uint8)], lambda t: np.zeros((1, 2, 8, 8)), 16)
