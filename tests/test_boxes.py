"""Box overlap and the frame's edge, against hand computations."""

from __future__ import annotations

import pytest

from core.boxes import cover, covered, intersection, iou, reaches_edge


def test_overlaps_equal_a_hand_computation():
    a, b = (0.0, 0.0, 10.0, 10.0), (5.0, 0.0, 10.0, 20.0)  # share a 5 x 10 strip
    assert intersection(a, b) == 50.0
    assert iou(a, b) == pytest.approx(50 / (100 + 200 - 50))
    assert covered(a, b) == pytest.approx(0.5) and covered(b, a) == pytest.approx(0.25)
    assert cover(a, b) == pytest.approx(0.5)  # of the smaller box, a
    inner = (2.0, 2.0, 4.0, 4.0)
    assert cover(a, inner) == 1.0 and iou(a, inner) == pytest.approx(16 / 100)
    assert iou(a, (20.0, 20.0, 5.0, 5.0)) == 0.0 and iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0


def test_reaches_edge_within_the_margin_only():
    assert reaches_edge((0, 40, 10, 10), 100, 100) and reaches_edge((40, 0.5, 10, 10), 100, 100)
    assert reaches_edge((89.5, 40, 10, 10), 100, 100) and reaches_edge((40, 85, 10, 14.2), 100, 100)
    assert not reaches_edge((1.5, 1.5, 97, 97), 100, 100)
    assert reaches_edge((3, 40, 10, 10), 100, 100, edge=3.0) and not reaches_edge((3.5, 40, 10, 10), 100, 100, 3.0)
