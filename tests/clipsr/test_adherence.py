"""The pixel classifier behind prompt adherence: exact on ground truth, blind to flat blobs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from clipsr.adherence import CaptionAttributes, ShapeAttributes, adherence_counts
from clipsr.degradations import box_downsample
from pipelines.generated_shapes import (
    BACKGROUNDS,
    COLOURS,
    SHAPES,
    attributes,
    caption_for,
    generated_shapes,
    render,
)


@pytest.fixture(scope="module")
def attrs() -> ShapeAttributes:
    return ShapeAttributes.from_dict(attributes())


def test_captions_parse_and_round_trip(attrs):
    for shape, colour, bg in itertools.product(SHAPES, COLOURS, BACKGROUNDS):
        caption = caption_for(shape, colour, bg)
        parsed = attrs.parse(caption)
        assert parsed == CaptionAttributes(shape, colour, bg)
        assert attrs.caption(parsed) == caption
    assert attrs.parse("a cat on a sofa") is None
    assert attrs.parse("red circles on a pink background") is None
    assert attrs.shapes == list(SHAPES) and attrs.chance == 0.25


def test_classifier_is_exact_on_every_ground_truth(attrs):
    occupied = np.random.default_rng(1).random((8, 8)) < 0.5
    for shape, colour, bg in itertools.product(SHAPES, COLOURS, BACKGROUNDS):
        hr = render(shape, colour, bg, occupied)
        assert np.array_equal(attrs.occupied(hr, bg), occupied)
        labels = attrs.classify(hr, colour, bg, occupied)
        assert (labels == SHAPES.index(shape)).all(), (shape, colour, bg)


def test_flat_cells_match_no_shape(attrs):
    item = generated_shapes(1, seed=5)[0]
    blocks = box_downsample(item.image, 16).repeat(16, 0).repeat(16, 1)  # one colour per cell
    labels = attrs.classify(blocks, item.colour, item.background, item.occupied)
    assert (labels == -1).all()
    background = np.empty_like(item.image)
    background[:] = BACKGROUNDS[item.background]
    assert (attrs.classify(background, item.colour, item.background, item.occupied) == -1).all()


def test_counts_reward_the_right_shapes_only(attrs):
    item = generated_shapes(1, seed=7)[0]
    parsed = attrs.parse(item.caption)
    others = [s for s in SHAPES if s != item.shape]
    right = {s: render(s, item.colour, item.background, item.occupied) for s in others}
    counts = adherence_counts(attrs, parsed, item.image, item.image, right)
    n = int(item.occupied.sum())
    assert counts["objects"] == n and counts["adherent"] == n
    assert counts["edit_objects"] == 3 * n and counts["edit_hits"] == 3 * n
    assert counts["verdicts"] == {item.shape: item.shape, **{s: s for s in others}}
    # a model that ignores the caption draws the true shape for every prompt: no edit succeeds
    stubborn = dict.fromkeys(others, item.image)
    counts = adherence_counts(attrs, parsed, item.image, item.image, stubborn)
    assert counts["edit_hits"] == 0 and counts["verdicts"][others[0]] == item.shape


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"kind": "boxes"}, "attributes.kind"),
        ({"cell": 1}, "attributes.cell"),
        ({"caption": "{colour} things"}, "attributes.caption"),
        ({"templates": {"circle": [[1]]}}, "attributes.templates.circle"),
        ({"colours": {"red": [300, 0, 0]}}, "attributes.colours.red"),
        ({"shapes": {"circle": "circles"}}, "attributes.shapes"),
    ],
)
def test_bad_declarations_name_the_field(change, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        ShapeAttributes.from_dict({**attributes(), **change})
