"""Face boxes as (x, y, width, height) in pixels: overlap and the frame's edge.

The detector merges its passes with these, the border-face benchmark scores with the same ones, so a
"match" means one thing everywhere.
"""

from __future__ import annotations

#: A face box: x, y of its top-left corner, its width and height, in pixels.
Box = tuple[float, float, float, float]


def intersection(a: Box, b: Box) -> float:
    """The area two boxes share."""
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return ix * iy


def iou(a: Box, b: Box) -> float:
    """Intersection over union; 0 for two empty boxes."""
    inter = intersection(a, b)
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def covered(a: Box, b: Box) -> float:
    """The share of box ``a`` that box ``b`` covers."""
    return intersection(a, b) / max(1e-6, a[2] * a[3])


def cover(a: Box, b: Box) -> float:
    """The share of the smaller of two boxes that the other covers: 1 when one lies inside the other."""
    return intersection(a, b) / max(1e-6, min(a[2] * a[3], b[2] * b[3]))


def reaches_edge(box: Box, width: int, height: int, edge: float = 1.0) -> bool:
    """Whether ``box`` comes within ``edge`` px of the border of a ``width`` x ``height`` image: the frame
    cuts the face, or touches it."""
    x, y, w, h = box
    return x <= edge or y <= edge or x + w >= width - edge or y + h >= height - edge
