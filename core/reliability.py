"""When a gender estimate is too unreliable to show as a label: the rule stored with the gender model.

``python -m train.reliability`` measures, on validation faces run through the app's pipeline, how often the
gender model is right per bucket of *predicted* age and per band of probability, and writes the result as
``gender_reliability`` into ``models/gender_model.json``:

    "gender_reliability": {
      "schema": "gender-reliability/1", "target_accuracy": 0.85, "min_faces": 30,
      "age_buckets": [{"low": 0, "high": 5, "label": "0-4", "n": 120, "accuracy": 0.62, "reliable": false}, ...],
      "probability_band": {"low": 0.3, "high": 0.7, "n": 150, "accuracy": 0.71, "bins": [...]},
      "reliable_from_age": 15, "validation": {...}, "computed_on": {...}}

A face's gender is *uncertain* when its predicted age falls in a bucket marked unreliable (validation
accuracy below the target, or too few faces to tell), or when its P(female) lies strictly inside the band.
This module only reads the block; a model without it is taken as reliable everywhere (models exported before
the rule existed: run ``python -m train.reliability``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

SCHEMA = "gender-reliability/1"


@dataclass(frozen=True)
class AgeBucket:
    """Predicted ages ``low <= age < high`` (``high`` ``None``: no upper end) and the validation verdict."""

    low: float
    high: float | None
    n: int
    accuracy: float | None
    reliable: bool

    @property
    def label(self) -> str:
        return f"{self.low:g}+" if self.high is None else f"{self.low:g}-{self.high - 1:g}"

    def contains(self, age: float) -> bool:
        return self.low <= age and (self.high is None or age < self.high)


@dataclass(frozen=True)
class GenderReliability:
    """The rule of a ``gender_reliability`` block; :meth:`judge` applies it to one face."""

    buckets: tuple[AgeBucket, ...]
    band: tuple[float, float]  # P(female) strictly inside (low, high) is uncertain; (0.5, 0.5): no band
    band_accuracy: float | None
    target: float

    @classmethod
    def from_metadata(cls, block: dict[str, Any] | None) -> GenderReliability | None:
        """The rule of the gender model's ``gender_reliability`` block, or ``None`` when there is none."""
        if not block or block.get("schema") != SCHEMA:
            return None
        buckets = tuple(AgeBucket(float(b["low"]), None if b.get("high") is None else float(b["high"]),
                                  int(b.get("n", 0)), b.get("accuracy"), bool(b["reliable"]))
                        for b in block.get("age_buckets", []))
        band = block.get("probability_band") or {}
        return cls(buckets, (float(band.get("low", 0.5)), float(band.get("high", 0.5))), band.get("accuracy"),
                   float(block.get("target_accuracy", math.nan)))

    def bucket(self, age: float) -> AgeBucket | None:
        """The bucket of a predicted age (the last one for ages above every bucket)."""
        for b in self.buckets:
            if b.contains(age):
                return b
        return self.buckets[-1] if self.buckets and age >= self.buckets[-1].low else None

    def judge(self, age: float, female_probability: float) -> tuple[bool, str | None]:
        """``(reliable, why not)`` for a face of predicted ``age`` and ``female_probability``."""
        b = self.bucket(age)
        if b is not None and not b.reliable:
            measured = (f"{b.accuracy:.0%} right on validation faces of that predicted age (n={b.n})"
                        if b.accuracy is not None and b.n else "too few validation faces of that age to tell")
            return False, f"predicted age {b.label}: {measured}; target {self.target:.0%}"
        low, high = self.band
        if low < female_probability < high:
            measured = ("unreliable" if self.band_accuracy is None
                        else f"{self.band_accuracy:.0%} right on validation")
            return False, f"P(female) {female_probability:.2f} is between {low:.2f} and {high:.2f}: {measured}"
        return True, None

    @property
    def reliable_from_age(self) -> float | None:
        """The lowest predicted age from which every bucket is reliable (``None``: none is)."""
        start = None
        for b in reversed(self.buckets):
            if not b.reliable:
                break
            start = b.low
        return start
