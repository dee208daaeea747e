"""The generated shapes set is leak-free at 16x: only the caption tells an object's shape.

The proof is a trained classifier: on box-downsampled LR it stays at chance on held-out images,
while the same classifier on the HR cells is near perfect, and on MATLAB-bicubic LR of the same
images (whose 16x kernel crosses cells) it is far above chance: the test can tell a leak.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier

from clipsr.degradations import DegradationConfig, make_lr
from pipelines.generated_shapes import (
    CELL,
    OBJECT_PIXELS,
    PLURAL,
    SHAPES,
    attributes,
    caption_for,
    generated_shapes,
    render,
    shape_mask,
)

SCALE = 16


def test_every_shape_has_exactly_the_same_pixel_count_and_a_distinct_mask():
    masks = [shape_mask(s) for s in SHAPES]
    assert all(m.sum() == OBJECT_PIXELS and m.shape == (CELL, CELL) for m in masks)
    for i in range(len(masks)):
        for j in range(i + 1, len(masks)):
            assert (masks[i] != masks[j]).sum() >= 20, (SHAPES[i], SHAPES[j])
    # objects stay inside their cell: the border rows/columns of a cell are never all set
    assert not any(m[0].all() or m[-1].all() or m[:, 0].all() or m[:, -1].all() for m in masks)


def test_box_lr_is_bit_identical_for_every_shape():
    occupied = np.random.default_rng(0).random((8, 8)) < 0.5
    box = DegradationConfig(kind="box")
    lrs = [make_lr(render(s, "red", "grey", occupied), SCALE, box, 0)[0] for s in SHAPES]
    assert all(np.array_equal(lrs[0], lr) for lr in lrs[1:])
    hrs = [render(s, "red", "grey", occupied) for s in SHAPES]
    assert all(not np.array_equal(hrs[0], hr) for hr in hrs[1:])


def test_set_is_deterministic_and_captioned():
    a, b = generated_shapes(6, seed=3), generated_shapes(6, seed=3)
    assert [x.caption for x in a] == [x.caption for x in b]
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a, b))
    assert generated_shapes(2, seed=3, start=4)[1].caption == a[5].caption
    assert a[0].image.shape == (128, 128, 3) and a[0].image.dtype == np.uint8
    assert all(f"{x.colour} {PLURAL[x.shape]} on a {x.background}" in x.caption for x in a)
    assert all(x.occupied.any() for x in a)
    assert caption_for("cross", "red", "grey") == "red crosses on a grey background"
    decl = attributes()
    assert decl["kind"] == "cell-shapes" and decl["degradation"] == "box"
    assert np.array_equal(np.array(decl["templates"]["triangle"], bool), shape_mask("triangle"))


def _objects(items, kind: str):
    """(features, shape label) per object: LR 3x3 cell neighbourhood (contrast-normalised) plus
    the raw cell colour, or the object's HR cell, normalised the same way."""
    feats, labels = [], []
    cfg = DegradationConfig(kind="bicubic" if kind == "bicubic" else "box")
    for item in items:
        lr = make_lr(item.image, SCALE, cfg, 0)[0].astype(np.float64)
        padded = np.pad(lr, ((1, 1), (1, 1), (0, 0)), mode="edge")
        for r, c in zip(*np.nonzero(item.occupied)):
            if kind == "hr":
                patch = item.image[r * CELL : (r + 1) * CELL, c * CELL : (c + 1) * CELL]
                patch = patch.astype(np.float64)
            else:
                patch = padded[r : r + 3, c : c + 3]
            flat = patch.ravel()
            norm = (flat - flat.mean()) / (flat.std() + 1e-6)
            extra = lr[r, c] if kind != "hr" else patch.mean(axis=(0, 1))
            feats.append(np.concatenate([norm, extra]))
            labels.append(SHAPES.index(item.shape))
    return np.array(feats), np.array(labels)


@pytest.fixture(scope="module")
def split_sets():
    return generated_shapes(160, seed=11), generated_shapes(80, seed=12)


def _accuracy(split_sets, kind: str) -> float:
    train, test = split_sets
    x_train, y_train = _objects(train, kind)
    x_test, y_test = _objects(test, kind)
    clf = HistGradientBoostingClassifier(max_iter=60, random_state=0).fit(x_train, y_train)
    return float((clf.predict(x_test) == y_test).mean())


def test_lr_classifier_stays_at_chance_on_box_lr(split_sets):
    accuracy = _accuracy(split_sets, "box")
    assert accuracy <= 0.30, f"box LR leaks shape: {accuracy:.3f} (chance 0.25)"


def test_same_classifier_reads_the_shape_from_hr(split_sets):
    accuracy = _accuracy(split_sets, "hr")
    assert accuracy > 0.95, accuracy


def test_same_classifier_catches_the_leak_of_bicubic_lr(split_sets):
    # MATLAB bicubic at 16x mixes neighbouring cells with shape-dependent weights: a leak that
    # this classifier must detect, or the chance-level result above would prove nothing.
    accuracy = _accuracy(split_sets, "bicubic")
    assert accuracy > 0.35, accuracy
