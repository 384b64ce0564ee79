"""PNet's pyramid levels cut into tiles and packed onto canvases of a few shapes: bounded memory for any photo size.

PNet is fully convolutional, so LiteRT needs an interpreter per input shape, and each holds buffers for its
shape (about 220 bytes per input pixel: 74 MB for the first level of a 720p photo). Fed level by level, a
server that sees photos of many sizes keeps dozens of them and sets new ones up for every new size. Here
every level is cut into tiles of at most :data:`SIDE` x :data:`SIDE` pixels, overlapping by
:data:`OVERLAP` (PNet's 12 px window less its stride of 2), and the tiles of all levels are packed side by
side onto canvases :data:`SIDE` wide and a multiple of :data:`STEP` high: :data:`SIDE` / :data:`STEP`
shapes in all, whatever the photo.

Exactness. PNet is: 3x3 convolution, PReLU, 2x2 max pooling with stride 2 ("same" padding), two 3x3
convolutions, two 1x1 convolutions. Tiles start at even offsets of their level and are placed at even
offsets of the canvas, so the pooling pairs the same rows and columns as on the whole level. A mask, added
to PNet's first activations (:func:`mask`), puts every activation whose 3x3 window is not wholly inside
one tile at :data:`MASKED`: pooling never picks it, as TensorFlow's "same" pooling ignores the missing
row of an odd-sized level. Every output cell read back (:func:`outputs`) is computed from its own tile's
pixels only, so the level's maps are the ones PNet gives on the level alone (tested to be bit for bit
the same on LiteRT).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Canvas width and largest height, and the longest side of a tile.
SIDE = 256
#: Canvas heights are multiples of this (a canvas is cut to its packed rows).
STEP = 32
#: Rows (and columns) two neighbouring tiles of one level share: PNet's window (12) less its stride (2).
OVERLAP = 10
#: What the mask adds to an activation no output may use: far below any real one (PNet's first
#: activations stay within about +-100 for inputs in [-1, 1]) and far from float32's overflow.
MASKED = -1e4


@dataclass(frozen=True)
class Tile:
    """Rows ``rows`` and columns ``cols`` (start, stop) of pyramid level ``level``, at (``y``, ``x``) on a
    canvas."""

    level: int
    rows: tuple[int, int]
    cols: tuple[int, int]
    y: int
    x: int

    @property
    def height(self) -> int:
        return self.rows[1] - self.rows[0]

    @property
    def width(self) -> int:
        return self.cols[1] - self.cols[0]


@dataclass(frozen=True)
class Canvas:
    """One PNet input: ``height`` x :data:`SIDE` pixels holding ``tiles``."""

    height: int
    tiles: tuple[Tile, ...]


def output_size(size: int) -> int:
    """PNet's output cells along a side of ``size`` input pixels (valid 3x3, "same" 2x2/2, two valid 3x3)."""
    return -(-(size - 2) // 2) - 4


def cuts(size: int, side: int = SIDE) -> list[tuple[int, int]]:
    """(start, stop) of the tiles along one side of a level: at most ``side`` long, starting at even
    offsets, each overlapping the previous one by :data:`OVERLAP`."""
    spans, start = [], 0
    while True:
        stop = min(size, start + side)
        spans.append((start, stop))
        if stop == size:
            return spans
        start = stop - OVERLAP


def output_span(start: int, stop: int) -> tuple[int, int]:
    """The level's output cells (start, stop) that a tile spanning input ``start:stop`` computes whole: those
    whose 12 px window lies inside it (at the level's end, as "same" pooling completes the last window)."""
    return start // 2, -(-(stop - 12) // 2) + 1


def _even(n: int) -> int:
    return n + (n & 1)


def pack(levels: list[tuple[int, int]], side: int = SIDE, step: int = STEP) -> list[Canvas]:
    """The tiles of every level (height, width), each at least 12 px, packed in shelves onto canvases
    ``side`` wide and at most ``side`` high: tallest tiles first, each on the first shelf with room, else
    on a new shelf, else on a new canvas. Offsets are even; each canvas is cut to its rows rounded up to
    ``step``."""
    tiles = [(i, r, c) for i, (h, w) in enumerate(levels) for r in cuts(h, side) for c in cuts(w, side)]
    tiles.sort(key=lambda t: (t[1][0] - t[1][1], t[2][0] - t[2][1]))  # tallest, then widest, first
    canvases: list[tuple[list[list[int]], list[Tile]]] = []  # (shelves [y, height, used width], tiles)
    for level, rows, cols in tiles:
        h, w = _even(rows[1] - rows[0]), _even(cols[1] - cols[0])
        spot = None
        for shelves, placed in canvases:
            shelf = next((s for s in shelves if s[1] >= h and side - s[2] >= w), None)
            used = shelves[-1][0] + shelves[-1][1]
            if shelf is None and side - used >= h:
                shelf = [used, h, 0]
                shelves.append(shelf)
            if shelf is not None:
                spot = (shelf, placed)
                break
        if spot is None:
            canvases.append(([[0, h, 0]], []))
            spot = (canvases[-1][0][0], canvases[-1][1])
        shelf, placed = spot
        placed.append(Tile(level, rows, cols, shelf[0], shelf[2]))
        shelf[2] += w
    return [Canvas(min(side, -(-(shelves[-1][0] + shelves[-1][1]) // step) * step), tuple(placed))
            for shelves, placed in canvases]


def image(canvas: Canvas, levels: list[np.ndarray], side: int = SIDE) -> np.ndarray:
    """The canvas's input (1, height, ``side``, 3): each tile's pixels at its place, zeros elsewhere."""
    x = np.zeros((1, canvas.height, side, levels[0].shape[2]), np.float32)
    for t in canvas.tiles:
        x[0, t.y:t.y + t.height, t.x:t.x + t.width] = levels[t.level][t.rows[0]:t.rows[1], t.cols[0]:t.cols[1]]
    return x


def mask(canvas: Canvas, side: int = SIDE) -> np.ndarray:
    """What is added to PNet's first activations (1, height - 2, ``side`` - 2, 1): 0 where the activation's
    3x3 window lies inside one tile, :data:`MASKED` elsewhere."""
    m = np.full((1, canvas.height - 2, side - 2, 1), MASKED, np.float32)
    for t in canvas.tiles:
        m[0, t.y:t.y + t.height - 2, t.x:t.x + t.width - 2] = 0.0
    return m


def outputs(canvas: Canvas, maps: list[np.ndarray], level_maps: list[list[np.ndarray]]) -> None:
    """Copy the output cells each tile computes whole from PNet's outputs on ``canvas`` (``maps``, each
    (1, rows, cols, k)) into its level's output maps (``level_maps[level]``, each (rows, cols, k))."""
    for t in canvas.tiles:
        (r0, r1), (c0, c1) = output_span(*t.rows), output_span(*t.cols)
        y, x = t.y // 2, t.x // 2
        for canvas_map, level_map in zip(maps, level_maps[t.level], strict=True):
            level_map[r0:r1, c0:c1] = canvas_map[0, y:y + r1 - r0, x:x + c1 - c0]
