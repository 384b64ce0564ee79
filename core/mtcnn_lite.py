"""MTCNN's three stages in NumPy and OpenCV, its networks on LiteRT: face detection without TensorFlow.

``mtcnn`` 1.0 imports TensorFlow with the package and runs parts of its stages as TensorFlow ops (the image
pyramid's area resize, the patches' ``crop_and_resize``). TensorFlow's import alone takes 2.1-2.7 s on this
project's 2-core machines, five times as long as loading both age and gender models from their export, and
it was the floor of a cold start. Here the same steps run in NumPy/OpenCV, step for step as
``mtcnn.stages`` and ``mtcnn.utils`` compute them (same scales, box arithmetic, the package's own
non-maximum suppression, bilinear patches as ``tf.image.crop_and_resize`` samples them), on the package's
networks converted to LiteRT flatbuffers. ``tests/test_mtcnn_lite.py`` compares every stage with the
package's.

The flatbuffers are made from the weights inside the ``mtcnn`` package once per machine and cached
(:func:`core.lite.cached_flatbuffer`); only that first conversion imports TensorFlow. Importing this module
does not import ``mtcnn`` (its ``__init__`` imports TensorFlow): the weights are found with ``importlib``, and
only :func:`new_mtcnn` (the package's own networks, to convert or to run) imports it.

    nets = load_nets()                       # the three networks, converted once per machine
    rows = detect(rgb, nets, min_face_size=20, threshold_onet=0.8)
    # rows: (n, 16) [image 0, x1, y1, x2, y2, confidence, 5 landmark x, 5 landmark y], mtcnn's layout
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
from collections import OrderedDict
from pathlib import Path

import cv2
import numpy as np

from core import lite
from core import pnet_canvas as canvas
from core.hardware import cpu_threads, import_tensorflow

#: The networks in stage order, the side of the square patches RNet and ONet take (PNet takes whole pyramid
#: levels), and the widths of their outputs in the order the package's stages unpack them: box regression,
#: (ONet) landmarks, face probability.
NETS = ("pnet", "rnet", "onet")
PATCH = {"pnet": None, "rnet": 24, "onet": 48}
OUTPUT_WIDTHS = {"pnet": (4, 2), "rnet": (4, 2), "onet": (4, 10, 2)}
#: Patches per RNet and ONet call: their interpreters' shapes stay a few buckets (1 to 256, 1 to 64) however
#: many proposals a photo has, and so do the patches in memory (ONet's first activations at 256 patches alone
#: would take 69 MB).
MAX_BATCH = {"pnet": None, "rnet": 256, "onet": 64}
#: What :func:`convert` makes of each network beyond the package's (part of its cache name): PNet takes a mask.
FORM = {"pnet": "-masked", "rnet": "", "onet": ""}

#: mtcnn 1.0's defaults for the stages' thresholds, as ``MTCNN.detect_faces`` passes them.
PYRAMID_FACTOR = 0.709
PNET_WINDOW = 12
THRESHOLD_PNET, THRESHOLD_RNET = 0.6, 0.7
NMS_PNET_LEVEL, NMS_PNET, NMS_RNET, NMS_ONET = 0.5, 0.7, 0.7, 0.7


class LiteNet:
    """One of MTCNN's networks run by LiteRT's XNNPACK CPU kernels; returns NumPy arrays.

    PNet scans every level of the image pyramid: its convolutions have 3 to 32 channels, which TensorFlow's
    CPU kernels run far below the CPU's speed (XNNPACK ran PNet's whole 720p pyramid about 3.5x faster).
    RNet and ONet see a few dozen small patches per photo, where a ``tf.function`` call costs about 2-3 ms
    of fixed overhead each, more than the arithmetic; a LiteRT call costs a fraction of a millisecond.

    ``patch=None`` (PNet): input ``(1, H, W, 3)`` and, as :func:`convert` makes PNet, a mask added to its
    first activations (``(1, H - 2, W - 2, 1)``, zeros when not given; see :mod:`core.pnet_canvas`), one
    interpreter per input shape. ``patch=S`` (RNet, ONet): input ``(N, S, S, 3)``, run ``max_batch`` rows at
    a time where set; N is padded up to a bucket (:meth:`bucket`) so a few interpreters serve every N, and
    the padding rows are dropped from the outputs. At most :attr:`max_shapes` interpreters are kept (least
    recently used dropped): each holds buffers for its shape, and setting one up costs about twice its run.
    """

    max_shapes = 12  # PNet's canvas heights (core.pnet_canvas: 8), RNet's and ONet's buckets (9 and 7)

    def __init__(self, flatbuffer: bytes, widths: tuple[int, ...], *, patch: int | None = None,
                 threads: int | None = None, max_batch: int | None = None) -> None:
        self.flatbuffer = flatbuffer
        self.widths = widths
        self.patch = patch
        self.max_batch = max_batch
        self._threads = threads or cpu_threads()
        self._interpreters: OrderedDict[tuple[int, ...], tuple] = OrderedDict()

    @staticmethod
    def bucket(n: int) -> int:
        """The batch size that ``n`` patches are padded to: a power of two up to 256, then a multiple of 256
        (at most about twice the work, a handful of interpreters). From 1, not 8: most photos send ONet one or
        two faces, and ONet on 8 patches takes 8x as long as on one (1.3 against 0.17 ms); a patch's outputs
        are the same bit for bit at every batch size."""
        if n <= 256:
            return 1 << max(0, n - 1).bit_length()
        return -(-n // 256) * 256

    def _interpreter(self, shape: tuple[int, ...]) -> tuple:
        if shape in self._interpreters:
            self._interpreters.move_to_end(shape)
            return self._interpreters[shape]
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_content=self.flatbuffer, num_threads=self._threads)
        inputs = sorted(interpreter.get_input_details(), key=lambda d: -int(d["shape"][-1]))  # image, then mask
        interpreter.resize_tensor_input(inputs[0]["index"], list(shape))
        if len(inputs) > 1:
            interpreter.resize_tensor_input(inputs[1]["index"], [shape[0], shape[1] - 2, shape[2] - 2, 1])
        lite.allocate_quietly(interpreter)
        # Outputs differ in width: match LiteRT's outputs to the package's order by width.
        by_width = {int(d["shape"][-1]): d["index"] for d in interpreter.get_output_details()}
        entry = (interpreter, [d["index"] for d in inputs], [by_width[w] for w in self.widths])
        self._interpreters[shape] = entry
        if len(self._interpreters) > self.max_shapes:
            self._interpreters.popitem(last=False)
        return entry

    def __call__(self, images: np.ndarray, mask: np.ndarray | None = None) -> list[np.ndarray]:
        x = np.asarray(images, np.float32)
        n = len(x)
        if self.patch is not None and self.max_batch and n > self.max_batch:
            parts = [self(x[i:i + self.max_batch]) for i in range(0, n, self.max_batch)]
            return [np.concatenate(outputs) for outputs in zip(*parts, strict=True)]
        if self.patch is not None:
            size = self.bucket(n)
            if size != n:
                x = np.concatenate([x, np.zeros((size - n, *x.shape[1:]), np.float32)])
        interpreter, inputs, outputs = self._interpreter(tuple(x.shape))
        interpreter.set_tensor(inputs[0], x)
        if len(inputs) > 1:
            interpreter.set_tensor(inputs[1], np.zeros((n, x.shape[1] - 2, x.shape[2] - 2, 1), np.float32)
                                   if mask is None else np.asarray(mask, np.float32))
        interpreter.invoke()
        return [interpreter.get_tensor(i)[:n] for i in outputs]  # get_tensor copies; padding rows dropped


# --- The networks: the package's weights, converted once per machine --------------------------------------

def weights_path(net: str) -> Path:
    """The package's weights file of one network, found without importing ``mtcnn`` (which imports
    TensorFlow)."""
    spec = importlib.util.find_spec("mtcnn")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the mtcnn package is not installed: pip install -r requirements.txt")
    return Path(next(iter(spec.submodule_search_locations))) / "assets" / "weights" / f"{net}.lz4"


def tensorflow_version() -> str:
    """The installed TensorFlow's version, from its package metadata (importing it takes seconds)."""
    for dist in ("tensorflow", "tensorflow-cpu", "tf-nightly", "tensorflow-intel", "tensorflow-macos"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    import tensorflow as tf

    return tf.__version__


def cache_name(net: str = "pnet") -> str:
    """The cache file name of one network's LiteRT flatbuffer: the mtcnn and TensorFlow (converter)
    versions, the network's form (:data:`FORM`) and a hash of its weights, so a new mtcnn or TensorFlow
    converts again."""
    digest = hashlib.sha256(weights_path(net).read_bytes()).hexdigest()[:16]
    version = importlib.metadata.version("mtcnn")
    return f"mtcnn-{version}-{net}{FORM[net]}-{digest}-tf{tensorflow_version()}.tflite"


def new_mtcnn():
    """A new ``mtcnn.MTCNN`` as the package builds it (its networks in Keras, eager), in float32.

    MTCNN's networks are float32 Keras models: built under a global mixed_bfloat16 policy (as in training)
    they would compute in bf16, and mtcnn's box code then fails on bf16 arrays. The policy is restored after.
    Used to run the package's stages (:class:`core.detect.PackageStages`) and to convert its networks to LiteRT.
    """
    import_tensorflow()  # maybe while the models load in another thread (core.pipeline.prepare)
    import keras
    from mtcnn import MTCNN

    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        return MTCNN(device="CPU:0")
    finally:
        keras.mixed_precision.set_global_policy(policy)


def convert(keras_net, patch: int | None) -> bytes:
    """A LiteRT flatbuffer of one of the package's Keras networks (imports TensorFlow).

    PNet (``patch=None``) gets a second input, a mask added to its first activations (after the PReLU, before
    the pooling), which lets :mod:`core.pnet_canvas` run many pyramid tiles in one call; a zero mask gives
    the package's network."""
    import tensorflow as tf

    if patch is not None:
        spec = tf.TensorSpec([None, patch, patch, 3], tf.float32)
        return lite.convert(tf.function(lambda x: keras_net(x), input_signature=[spec]))
    n = keras_net  # mtcnn 1.0's PNet: conv1, prelu1, maxpool1, conv2, prelu2, conv3, prelu3, conv4_1, conv4_2

    def masked(x, mask):
        y = n.maxpool1(n.prelu1(n.conv1(x)) + mask)
        y = n.prelu3(n.conv3(n.prelu2(n.conv2(y))))
        return n.conv4_1(y), n.conv4_2(y)

    specs = [tf.TensorSpec([1, None, None, 3], tf.float32), tf.TensorSpec([1, None, None, 1], tf.float32)]
    return lite.convert(tf.function(masked, input_signature=specs))


def load_nets(threads: int | None = None) -> dict[str, LiteNet]:
    """The three networks on LiteRT, from the cache, or converted (TensorFlow, ``mtcnn``) and cached."""
    keras_nets: dict[str, object] = {}

    def make(net: str) -> bytes:
        if not keras_nets:
            keras_nets.update(zip(NETS, (stage.model for stage in new_mtcnn().stages), strict=True))
        return convert(keras_nets[net], PATCH[net])

    return {net: LiteNet(lite.cached_flatbuffer(cache_name(net), lambda net=net: make(net)), OUTPUT_WIDTHS[net],
                         patch=PATCH[net], threads=threads, max_batch=MAX_BATCH[net]) for net in NETS}


# --- The stages --------------------------------------------------------------------------------------------

def scale_pyramid(height: int, width: int, min_face_size: float) -> np.ndarray:
    """The pyramid's scales, as ``mtcnn.utils.images.build_scale_pyramid``: the first maps a face of
    ``min_face_size`` px onto PNet's 12 px window, each next one 0.709 of it, while the image's shorter
    side stays above 12 px at the default minimum face size."""
    count = round(-((np.log(min(width, height) / PNET_WINDOW) / np.log(PYRAMID_FACTOR)) + 1))
    return PNET_WINDOW / min_face_size * PYRAMID_FACTOR ** np.arange(count)


def sort_by_score(rows: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Rows by descending score, ties as the package orders them (the reverse of ``np.argsort``)."""
    return rows[np.argsort(scores)[::-1]]


def pair_overlaps(boxes: np.ndarray, rows: slice, method: str = "union") -> np.ndarray:
    """Overlap of the boxes ``boxes[rows]`` with every box (x1, y1, x2, y2; no +1 on sides): intersection
    over union, or over the smaller area (``"min"``). A degenerate pair gives NaN, which suppresses
    nothing (as in the package)."""
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    a = boxes[rows][:, None, :]
    b = boxes[None, :, :]
    inter = (np.maximum(0, np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]))
             * np.maximum(0, np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1])))
    area_a, area_b = area[rows][:, None], area[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        if method == "union":
            return inter / (area_a + area_b - inter)
        if method == "min":
            return inter / np.minimum(area_a, area_b)
    raise ValueError("method must be 'union' or 'min'")


def suppress(rows: np.ndarray, threshold: float, method: str = "union", *, sort: bool = True,
             chunk: int = 1024) -> np.ndarray:
    """mtcnn 1.0's non-maximum suppression (``smart_nms_from_bboxes`` for one image): after sorting by
    confidence (column 5), a box is dropped when **any** higher box overlaps it by more than ``threshold``,
    whether that box was kept or not (the package's rule, not the greedy one). Computed ``chunk`` rows of
    the overlap matrix at a time, so thousands of PNet proposals need no N x N matrix in memory."""
    if len(rows) == 0:
        return np.empty((0, rows.shape[1] if rows.ndim == 2 else 6))
    if sort:
        rows = sort_by_score(rows, rows[:, 5])
    boxes = rows[:, 1:5]
    n = len(rows)
    beaten = np.zeros(n, bool)
    for start in range(0, n, chunk):
        block = slice(start, min(n, start + chunk))
        over = pair_overlaps(boxes, block, method) > threshold          # (block rows i, all columns j)
        higher = np.arange(block.start, block.stop)[:, None] < np.arange(n)[None, :]  # i ranks above j
        beaten |= (over & higher).any(axis=0)
    return rows[~beaten]


def to_square(rows: np.ndarray) -> np.ndarray:
    """Each box made square around its centre, side the longer of its two (``resize_to_square``)."""
    rows = rows.copy()
    h = rows[:, 4] - rows[:, 2]
    w = rows[:, 3] - rows[:, 1]
    side = np.maximum(w, h)
    rows[:, 1] = rows[:, 1] + w * 0.5 - side * 0.5
    rows[:, 2] = rows[:, 2] + h * 0.5 - side * 0.5
    rows[:, 3] = rows[:, 1] + side
    rows[:, 4] = rows[:, 2] + side
    return rows


def refine(rows: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Boxes moved by a network's regression, in units of their side + 1 (``adjust_bboxes``)."""
    rows = rows.copy()
    w = rows[:, 3] - rows[:, 1] + 1
    h = rows[:, 4] - rows[:, 2] + 1
    rows[:, 1:5] += offsets * np.stack([w, h, w, h], axis=-1)
    return rows


def crop_and_resize(image: np.ndarray, rows: np.ndarray, size: int) -> np.ndarray:
    """``size`` x ``size`` bilinear patches of ``image`` (H x W x C float32) for each box, sampled exactly
    as the package's ``extract_patches`` has ``tf.image.crop_and_resize`` sample them: the box's corners
    divided by the image's height and width, then mapped onto pixel centres 0..H-1; samples outside the
    image are 0."""
    h, w = image.shape[:2]
    n = len(rows)
    y1 = (rows[:, 2] / h).astype(np.float32)
    x1 = (rows[:, 1] / w).astype(np.float32)
    y2 = (rows[:, 4] / h).astype(np.float32)
    x2 = (rows[:, 3] / w).astype(np.float32)
    steps = np.arange(size, dtype=np.float32)[None, :]
    last_y, last_x, last_step = np.float32(h - 1), np.float32(w - 1), np.float32(size - 1)
    in_y = y1[:, None] * last_y + steps * ((y2 - y1) * last_y / last_step)[:, None]
    in_x = x1[:, None] * last_x + steps * ((x2 - x1) * last_x / last_step)[:, None]
    valid_y = (in_y >= 0) & (in_y <= h - 1)
    valid_x = (in_x >= 0) & (in_x <= w - 1)
    top = np.clip(np.floor(in_y), 0, h - 1).astype(np.intp)
    bottom = np.clip(np.ceil(in_y), 0, h - 1).astype(np.intp)
    left = np.clip(np.floor(in_x), 0, w - 1).astype(np.intp)
    right = np.clip(np.ceil(in_x), 0, w - 1).astype(np.intp)
    y_lerp = (in_y - np.floor(in_y))[:, :, None, None]
    x_lerp = (in_x - np.floor(in_x))[:, None, :, None]
    # The four neighbours of every sample, gathered from the image as rows of pixels: ``take`` on flat indices
    # is the same gather as image[row, col] indexing, and 10-20x faster for these small arrays.
    flat = image.reshape(h * w, image.shape[2])
    t, b = (top * w)[:, :, None], (bottom * w)[:, :, None]
    lft, rgt = left[:, None, :], right[:, None, :]
    top_left, bottom_left = flat.take(t + lft, axis=0), flat.take(b + lft, axis=0)
    top_row = top_left + (flat.take(t + rgt, axis=0) - top_left) * x_lerp
    bottom_row = bottom_left + (flat.take(b + rgt, axis=0) - bottom_left) * x_lerp
    patches = top_row + (bottom_row - top_row) * y_lerp
    patches[~(valid_y[:, :, None] & valid_x[:, None, :])] = 0.0
    return patches.reshape(n, size, size, image.shape[2]).astype(np.float32)


def pnet_maps(levels: list[np.ndarray], net: LiteNet) -> list[list[np.ndarray]]:
    """PNet's outputs (regression (rows, cols, 4), probability (rows, cols, 2)) on each pyramid level, as on
    the level alone, computed on the few canvas shapes of :mod:`core.pnet_canvas`."""
    maps = [[np.empty((canvas.output_size(h), canvas.output_size(w), k), np.float32) for k in OUTPUT_WIDTHS["pnet"]]
            for h, w in (level.shape[:2] for level in levels)]
    for sheet in canvas.pack([level.shape[:2] for level in levels]):
        canvas.outputs(sheet, net(canvas.image(sheet, levels), canvas.mask(sheet)), maps)
    return maps


def stage_pnet(image: np.ndarray, net: LiteNet, min_face_size: float) -> np.ndarray:
    """Proposals: PNet on every pyramid level, each level's boxes suppressed, then all together, squared."""
    h, w = image.shape[:2]
    scales, levels = [], []
    for scale in scale_pyramid(h, w, min_face_size):
        sh, sw = (np.asarray([h, w]) * scale).astype(int)  # as tf.image.resize truncates the float size
        if sh < PNET_WINDOW or sw < PNET_WINDOW:
            continue  # PNet has nothing to scan (the package fails on such a level; core never asks for one)
        scales.append(scale)
        levels.append(cv2.resize(image, (int(sw), int(sh)), interpolation=cv2.INTER_AREA))  # = TF's area resize
    found = []
    for scale, (regression, probability) in zip(scales, pnet_maps(levels, net), strict=True):
        score = probability[:, :, 1]
        ys, xs = np.nonzero(score > THRESHOLD_PNET)
        reg = regression[ys, xs].astype(np.float64)
        # The package's cell: top-left at 2 * index + 1, bottom-right at 2 * index + 12, so 11 px wide.
        x1, y1 = xs * 2 + 1, ys * 2 + 1
        x2, y2 = xs * 2 + PNET_WINDOW, ys * 2 + PNET_WINDOW
        side = PNET_WINDOW - 1
        rows = np.stack([np.zeros(len(xs)), x1 + reg[:, 0] * side, y1 + reg[:, 1] * side,
                         x2 + reg[:, 2] * side, y2 + reg[:, 3] * side,
                         score[ys, xs].astype(np.float64)], axis=1)
        rows = sort_by_score(rows, rows[:, 5])
        rows[:, 1:5] /= scale
        found.append(suppress(rows, NMS_PNET_LEVEL, sort=False))
    rows = np.concatenate(found) if found else np.empty((0, 6))
    return to_square(suppress(rows, NMS_PNET))


def run_patches(image: np.ndarray, rows: np.ndarray, net: LiteNet) -> list[np.ndarray]:
    """``net`` on its patches of the boxes ``rows``, cut and run ``net.max_batch`` boxes at a time."""
    step = net.max_batch or max(1, len(rows))
    parts = [net(crop_and_resize(image, rows[i:i + step], net.patch)) for i in range(0, len(rows), step)]
    return [np.concatenate(outputs) for outputs in zip(*parts, strict=True)]


def stage_rnet(image: np.ndarray, rows: np.ndarray, net: LiteNet) -> np.ndarray:
    """Refinement: RNet on 24 px patches of the proposals; its confidence replaces PNet's."""
    offsets, probability = run_patches(image, rows, net)
    rows = rows.copy()
    rows[:, 5] = probability[:, -1]
    rows = refine(rows, offsets)
    rows = rows[rows[:, 5] > THRESHOLD_RNET]
    return to_square(suppress(rows, NMS_RNET))


def stage_onet(image: np.ndarray, rows: np.ndarray, net: LiteNet, threshold: float) -> np.ndarray:
    """Output: ONet on 48 px patches; boxes, confidence and five landmarks (mapped onto the box it saw)."""
    offsets, marks, probability = run_patches(image, rows, net)
    marks = marks.astype(np.float64)
    w = rows[:, 3:4] - rows[:, 1:2] + 1
    h = rows[:, 4:5] - rows[:, 2:3] + 1
    marks[:, 0:5] = w * marks[:, 0:5] + rows[:, 1:2] - 1
    marks[:, 5:10] = h * marks[:, 5:10] + rows[:, 2:3] - 1
    rows = rows.copy()
    rows[:, 5] = probability[:, -1]
    rows = np.concatenate([refine(rows, offsets), marks], axis=1)
    rows = rows[rows[:, 5] > threshold]
    return suppress(rows, NMS_ONET, "min")


def detect(rgb: np.ndarray, nets: dict[str, LiteNet], *, min_face_size: float = 20.0,
           threshold_onet: float = 0.8) -> np.ndarray:
    """MTCNN on one RGB uint8 image: rows ``[0, x1, y1, x2, y2, confidence, x of left eye, right eye, nose,
    mouth left, mouth right, then their y]`` in the image's pixels (boxes not yet clipped to it), as the
    package's three stages return them; ``(0, 16)`` when no face."""
    image = ((rgb.astype(np.float32) - 127.5) / 128.0)  # the package's normalisation to [-1, 1]
    rows = stage_pnet(image, nets["pnet"], min_face_size)
    if len(rows):
        rows = stage_rnet(image, rows, nets["rnet"])
    if len(rows):
        rows = stage_onet(image, rows, nets["onet"], threshold_onet)
    return rows if len(rows) else np.empty((0, 16))
