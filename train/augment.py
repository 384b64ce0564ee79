"""Training-only augmentation as TensorFlow ops inside tf.data ``map`` calls (never Python per image).

Two recipes (``python -m train --augment {basic,photo}``):

- ``basic``: the Keras preprocessing layers the shipped models were trained with (:func:`augmenter`): flip,
  +-10 deg rotation, +-10 % zoom, +-5 % shift, brightness, contrast; on whole batches.
- ``photo`` (default): what faces in real photos go through before they reach the model, on top of the same
  geometry. :class:`Photo` holds every probability and strength. Per image, before batching (each has its
  own random size or quality): Gaussian blur, down-then-up scaling to an effective 20-64 px, JPEG
  re-encoding at low quality. Per batch, with per-image random values: one affine warp for flip, rotation,
  scale and shift (a detector's box noise, one resampling instead of three), brightness and contrast,
  colour (saturation, hue, white balance: one colour matrix), grayscale, an old scanned photograph's look
  (sepia or faded colour, low contrast, film grain, scan blur, halftone) and random erasing (occlusion).

Every function takes and returns float32 RGB in 0..255 and a stateless seed (shape [2] int); the same
seeds give the same images. :func:`with_seeds` pairs the elements of a dataset with such seeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import tensorflow as tf


@dataclass(frozen=True)
class Photo:
    """Probabilities (``p_*``) and strengths of the ``photo`` recipe."""

    # geometry, every image: flip, and the jitter of a detector's box (relative to the crop)
    p_flip: float = 0.5
    rotation_deg: float = 10.0
    scale: float = 0.10  # zoom factor in [1 - scale, 1 + scale]
    shift: float = 0.06  # fraction of the side, each axis
    # light, every image (as basic): brightness +-fraction of 255, contrast factor 1 +- contrast
    brightness: float = 0.15
    contrast: float = 0.2
    # colour
    p_colour: float = 0.5
    saturation: tuple[float, float] = (0.6, 1.4)
    hue: float = 0.04  # +- fraction of the hue circle
    white_balance: float = 0.08  # per-channel gain 1 +- white_balance
    p_gray: float = 0.1
    # occlusion: a rectangle of random colour covering area_fraction of the image
    p_erase: float = 0.25
    erase_area: tuple[float, float] = (0.02, 0.15)
    erase_aspect: tuple[float, float] = (0.3, 3.3)
    # capture and transmission, per image before batching
    p_blur: float = 0.2
    blur_sigma: tuple[float, float] = (0.5, 1.5)  # pixels at 64 px input, scaled with the input size
    p_lowres: float = 0.25
    lowres_side: tuple[int, int] = (20, 64)  # effective resolution in pixels
    p_jpeg: float = 0.3
    jpeg_quality: tuple[int, int] = (15, 50)
    # an old photograph, scanned (per batch, :func:`random_old_photo`): faded or sepia colour, low contrast
    # with lifted blacks, film grain, the scanner's blur and, for some, a printed halftone screen
    p_old: float = 0.15
    sepia: tuple[float, float] = (0.0, 1.0)  # blend towards the sepia tone
    fade_contrast: tuple[float, float] = (0.45, 0.9)
    fade_lift: tuple[float, float] = (5.0, 60.0)  # grey levels the blacks are lifted by
    grain: tuple[float, float] = (2.0, 14.0)  # sigma of the grain in grey levels
    scan_blur: tuple[float, float] = (0.0, 1.0)  # blend towards a 3 x 3 box blur
    p_halftone: float = 0.3  # of the old photos
    halftone: tuple[float, float] = (0.08, 0.3)  # depth of the screen's modulation
    halftone_period: tuple[float, float] = (2.5, 4.5)  # pixels between dots


PHOTO = Photo()


def with_seeds(ds: tf.data.Dataset, seed: int) -> tf.data.Dataset:
    """``ds`` zipped with a stream of stateless seeds (shape [2] int64), new ones on each iteration."""
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2, drop_remainder=True)
    return tf.data.Dataset.zip((ds, seeds))


def _uniform(shape, seed, lo: float, hi: float) -> tf.Tensor:
    return tf.random.stateless_uniform(shape, seed, lo, hi)


def _maybe(p: float, seed, fn, image: tf.Tensor) -> tf.Tensor:
    """``fn(image)`` with probability ``p`` (one image)."""
    if p <= 0:
        return image
    out = tf.cond(_uniform([], seed, 0.0, 1.0) < p, lambda: fn(image), lambda: image)
    out.set_shape(image.shape)
    return out


# ---- per image (before batching) -------------------------------------------------------------------------

def gaussian_blur(image: tf.Tensor, sigma: tf.Tensor, radius: int) -> tf.Tensor:
    """Separable Gaussian blur of one H x W x 3 image, reflected at the border."""
    x = tf.range(-radius, radius + 1, dtype=tf.float32)
    k = tf.exp(-(x**2) / (2.0 * tf.square(tf.maximum(sigma, 1e-3))))
    k = k / tf.reduce_sum(k)
    padded = tf.pad(image[None], [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="REFLECT")
    out = tf.nn.depthwise_conv2d(padded, tf.tile(k[None, :, None, None], [1, 1, 3, 1]), [1, 1, 1, 1], "VALID")
    out = tf.nn.depthwise_conv2d(out, tf.tile(k[:, None, None, None], [1, 1, 3, 1]), [1, 1, 1, 1], "VALID")
    return out[0]


def random_blur(image: tf.Tensor, seed, *, p: float = PHOTO.p_blur,
                sigma: tuple[float, float] = PHOTO.blur_sigma) -> tf.Tensor:
    """With probability ``p``, a Gaussian blur with sigma drawn from ``sigma`` (pixels at 64 px, scaled)."""
    size = int(image.shape[0])
    lo, hi = (s * size / 64 for s in sigma)
    radius = min(max(1, math.ceil(3 * hi)), size - 1)
    s = tf.random.split(seed, 2)
    return _maybe(p, s[0], lambda im: gaussian_blur(im, _uniform([], s[1], lo, hi), radius), image)


def random_lowres(image: tf.Tensor, seed, *, p: float = PHOTO.p_lowres,
                  side: tuple[int, int] = PHOTO.lowres_side) -> tf.Tensor:
    """With probability ``p``, shrink to a random side in ``side`` (anti-aliased) and scale back up
    (bilinear): a face that was that many pixels wide in the photo. Sides at or above the image's are a no-op."""
    h, w = int(image.shape[0]), int(image.shape[1])
    s = tf.random.split(seed, 2)

    def down_up(im):
        n = tf.minimum(tf.random.stateless_uniform([], s[1], side[0], side[1] + 1, dtype=tf.int32), min(h, w))
        small = tf.image.resize(im, tf.stack([n * h // min(h, w), n * w // min(h, w)]), "bilinear", antialias=True)
        return tf.image.resize(small, [h, w], "bilinear")

    return _maybe(p, s[0], down_up, image)


def random_jpeg(image: tf.Tensor, seed, *, p: float = PHOTO.p_jpeg,
                quality: tuple[int, int] = PHOTO.jpeg_quality) -> tf.Tensor:
    """With probability ``p``, re-encode as JPEG at a quality drawn from ``quality`` (inclusive)."""
    s = tf.random.split(seed, 2)

    def jpeg(im):
        q = tf.random.stateless_uniform([], s[1], quality[0], quality[1] + 1, dtype=tf.int32)
        u8 = tf.cast(tf.clip_by_value(tf.round(im), 0.0, 255.0), tf.uint8)
        return tf.cast(tf.image.adjust_jpeg_quality(u8, q), tf.float32)

    return _maybe(p, s[0], jpeg, image)


def photo_image(image: tf.Tensor, seed, config: Photo = PHOTO) -> tf.Tensor:
    """The per-image part of ``photo``: blur, low resolution, JPEG (uint8 or float in, float32 0..255 out)."""
    image = tf.cast(image, tf.float32)
    s = tf.random.split(seed, 3)
    image = random_blur(image, s[0], p=config.p_blur, sigma=config.blur_sigma)
    image = random_lowres(image, s[1], p=config.p_lowres, side=config.lowres_side)
    return random_jpeg(image, s[2], p=config.p_jpeg, quality=config.jpeg_quality)


# ---- per batch (per-image random values) ------------------------------------------------------------------

def _per_image(images: tf.Tensor) -> tf.Tensor:
    return tf.shape(images)[:1]


def random_affine(images: tf.Tensor, seed, *, p_flip: float = PHOTO.p_flip,
                  rotation_deg: float = PHOTO.rotation_deg, scale: float = PHOTO.scale,
                  shift: float = PHOTO.shift) -> tf.Tensor:
    """Flip, rotation, zoom and shift about the centre as one bilinear warp per image (outside: black, as
    the chip border)."""
    n = _per_image(images)
    h, w = tf.cast(tf.shape(images)[1], tf.float32), tf.cast(tf.shape(images)[2], tf.float32)
    s = tf.random.split(seed, 4)
    flip = tf.where(_uniform(n, s[0], 0.0, 1.0) < p_flip, -1.0, 1.0)
    angle = _uniform(n, s[1], -rotation_deg, rotation_deg) * (math.pi / 180.0)
    zoom = _uniform(n, s[2], 1.0 - scale, 1.0 + scale)
    offset = _uniform(tf.concat([n, [2]], 0), s[3], -shift, shift)
    tx, ty = offset[:, 0] * w, offset[:, 1] * h
    cx, cy = (w - 1.0) / 2.0, (h - 1.0) / 2.0
    cos, sin = tf.cos(angle) / zoom, tf.sin(angle) / zoom
    # output pixel q -> input pixel p = c + F R(-angle) (q - c - t) / zoom, F = diag(flip, 1)
    a0, a1, b0, b1 = flip * cos, flip * sin, -sin, cos
    a2 = cx - a0 * (cx + tx) - a1 * (cy + ty)
    b2 = cy - b0 * (cx + tx) - b1 * (cy + ty)
    zeros = tf.zeros_like(a0)
    transforms = tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=tf.shape(images)[1:3], fill_value=0.0,
        interpolation="BILINEAR", fill_mode="CONSTANT")


def random_light(images: tf.Tensor, seed, *, brightness: float = PHOTO.brightness,
                 contrast: float = PHOTO.contrast) -> tf.Tensor:
    """Brightness (+- ``brightness`` x 255) and contrast (factor 1 +- ``contrast`` about each image's mean)."""
    shape = tf.concat([_per_image(images), [1, 1, 1]], 0)
    s = tf.random.split(seed, 2)
    factor = _uniform(shape, s[0], 1.0 - contrast, 1.0 + contrast)
    mean = tf.reduce_mean(images, axis=[1, 2], keepdims=True)
    offset = (1.0 - factor) * mean + _uniform(shape, s[1], -brightness, brightness) * 255.0
    return tf.clip_by_value(images * factor + offset, 0.0, 255.0)


#: RGB -> YIQ (luma and two chroma axes) and back: saturation scales the chroma, hue rotates it.
_RGB_TO_YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))


def random_colour(images: tf.Tensor, seed, *, p: float = PHOTO.p_colour,
                  saturation: tuple[float, float] = PHOTO.saturation, hue: float = PHOTO.hue,
                  white_balance: float = PHOTO.white_balance) -> tf.Tensor:
    """With probability ``p`` per image: saturation factor, hue shift (+- ``hue`` of the circle) and
    per-channel gains, as one 3 x 3 colour matrix per image (a rotation of the chroma plane in YIQ)."""
    n = _per_image(images)
    s = tf.random.split(seed, 4)
    sat = _uniform(n, s[0], *saturation)
    theta = _uniform(n, s[1], -hue, hue) * (2.0 * math.pi)
    gain = _uniform(tf.concat([n, [3]], 0), s[2], 1.0 - white_balance, 1.0 + white_balance)
    one, zero = tf.ones_like(sat), tf.zeros_like(sat)
    chroma = tf.reshape(tf.stack([one, zero, zero,
                                  zero, sat * tf.cos(theta), -sat * tf.sin(theta),
                                  zero, sat * tf.sin(theta), sat * tf.cos(theta)], axis=1), [-1, 3, 3])
    to_yiq = tf.constant(_RGB_TO_YIQ, tf.float32)
    matrix = gain[:, :, None] * (tf.linalg.inv(to_yiq) @ chroma @ to_yiq)
    apply = tf.reshape(_uniform(n, s[3], 0.0, 1.0) < p, [-1, 1, 1])
    matrix = tf.where(apply, matrix, tf.eye(3, batch_shape=n))
    return tf.clip_by_value(tf.einsum("bhwj,bij->bhwi", images, matrix), 0.0, 255.0)


def random_grayscale(images: tf.Tensor, seed, *, p: float = PHOTO.p_gray) -> tf.Tensor:
    """With probability ``p`` per image, its luma (``tf.image.rgb_to_grayscale``'s weights) in all three
    channels."""
    n = _per_image(images)
    luma = tf.tile(tf.constant([[0.2989, 0.5870, 0.1140]], tf.float32), [3, 1])
    apply = tf.reshape(_uniform(n, seed, 0.0, 1.0) < p, [-1, 1, 1])
    matrix = tf.where(apply, luma, tf.eye(3, batch_shape=n))
    return tf.einsum("bhwj,bij->bhwi", images, matrix)


def random_erasing(images: tf.Tensor, seed, *, p: float = PHOTO.p_erase,
                   area: tuple[float, float] = PHOTO.erase_area,
                   aspect: tuple[float, float] = PHOTO.erase_aspect) -> tf.Tensor:
    """With probability ``p`` per image, a rectangle of random colour (a hand, sunglasses, a cup)."""
    n = _per_image(images)
    h, w = tf.shape(images)[1], tf.shape(images)[2]
    hf, wf = tf.cast(h, tf.float32), tf.cast(w, tf.float32)
    s = tf.random.split(seed, 6)
    size = _uniform(n, s[0], *area) * hf * wf
    ratio = tf.exp(_uniform(n, s[1], math.log(aspect[0]), math.log(aspect[1])))
    eh = tf.clip_by_value(tf.sqrt(size * ratio), 1.0, hf)
    ew = tf.clip_by_value(tf.sqrt(size / ratio), 1.0, wf)
    y0 = _uniform(n, s[2], 0.0, 1.0) * (hf - eh)
    x0 = _uniform(n, s[3], 0.0, 1.0) * (wf - ew)
    yy = tf.cast(tf.range(h), tf.float32)[None, :, None]
    xx = tf.cast(tf.range(w), tf.float32)[None, None, :]
    inside = ((yy >= y0[:, None, None]) & (yy < (y0 + eh)[:, None, None])
              & (xx >= x0[:, None, None]) & (xx < (x0 + ew)[:, None, None]))
    apply = _uniform(n, s[4], 0.0, 1.0) < p
    mask = (inside & apply[:, None, None])[..., None]
    colour = _uniform(tf.concat([n, [1, 1, 3]], 0), s[5], 0.0, 255.0)
    return tf.where(mask, colour, images)


#: The classic sepia-tone matrix (RGB rows).
_SEPIA = ((0.393, 0.769, 0.189), (0.349, 0.686, 0.168), (0.272, 0.534, 0.131))


def random_old_photo(images: tf.Tensor, seed, *, p: float = PHOTO.p_old, config: Photo = PHOTO) -> tf.Tensor:
    """With probability ``p`` per image, the look of a scanned family photograph: colour blended
    towards sepia, contrast lowered and blacks lifted (fading), monochrome film grain, the scanner's blur and,
    for ``p_halftone`` of them, a printed halftone screen. Scanned photos are where the models erred most."""
    c = config
    n = _per_image(images)
    shape = tf.concat([n, [1, 1, 1]], 0)
    s = tf.random.split(seed, 9)
    sepia = tf.einsum("bhwj,ij->bhwi", images, tf.constant(_SEPIA, tf.float32))
    x = images + _uniform(shape, s[0], *c.sepia) * (sepia - images)
    x = _uniform(shape, s[1], *c.fade_lift) + _uniform(shape, s[2], *c.fade_contrast) * x
    blurred = tf.nn.avg_pool2d(tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="SYMMETRIC"), 3, 1, "VALID")
    x = x + _uniform(shape, s[3], *c.scan_blur) * (blurred - x)
    grain = tf.random.stateless_normal(tf.concat([tf.shape(images)[:3], [1]], 0), s[4])
    x = x + _uniform(shape, s[5], *c.grain) * grain
    h, w = tf.shape(images)[1], tf.shape(images)[2]
    period = _uniform(shape, s[6], *c.halftone_period)
    yy = tf.cast(tf.range(h), tf.float32)[None, :, None, None]
    xx = tf.cast(tf.range(w), tf.float32)[None, None, :, None]
    screen = 0.5 + 0.5 * tf.cos(2 * math.pi * xx / period) * tf.cos(2 * math.pi * yy / period)
    depth = _uniform(shape, s[7], *c.halftone) * tf.cast(_uniform(shape, s[8], 0.0, 1.0) < c.p_halftone,
                                                          tf.float32)
    x = x * (1.0 - depth + depth * 2.0 * screen)
    apply = tf.reshape(_uniform(n, tf.random.experimental.stateless_fold_in(seed, 1), 0.0, 1.0) < p,
                       [-1, 1, 1, 1])
    return tf.where(apply, tf.clip_by_value(x, 0.0, 255.0), images)


def photo_batch(images: tf.Tensor, seed, config: Photo = PHOTO) -> tf.Tensor:
    """The per-batch part of ``photo``: geometry, light, colour, grayscale, an old photograph's look,
    erasing (float32 0..255)."""
    images = tf.cast(images, tf.float32)
    s = tf.random.split(seed, 5)
    images = random_affine(images, s[0], p_flip=config.p_flip, rotation_deg=config.rotation_deg,
                           scale=config.scale, shift=config.shift)
    images = random_light(images, s[1], brightness=config.brightness, contrast=config.contrast)
    images = random_colour(images, s[2], p=config.p_colour, saturation=config.saturation, hue=config.hue,
                           white_balance=config.white_balance)
    images = random_grayscale(images, s[3], p=config.p_gray)
    images = random_old_photo(images, tf.random.experimental.stateless_fold_in(seed, 7), p=config.p_old,
                              config=config)
    return random_erasing(images, s[4], p=config.p_erase, area=config.erase_area, aspect=config.erase_aspect)


def augmenter(seed: int):
    """The ``basic`` recipe: flip, small rotation / scale / shift, brightness and contrast (Keras layers)."""
    import keras
    from keras import layers

    return keras.Sequential([
        layers.RandomFlip("horizontal", seed=seed),
        layers.RandomRotation(10 / 360, fill_mode="constant", seed=seed + 1),
        layers.RandomZoom((-0.1, 0.1), fill_mode="constant", seed=seed + 2),
        layers.RandomTranslation(0.05, 0.05, fill_mode="constant", seed=seed + 3),
        layers.RandomBrightness(0.15, value_range=(0, 255), seed=seed + 4),
        layers.RandomContrast(0.2, value_range=(0, 255), seed=seed + 5),
    ], name="augment")
