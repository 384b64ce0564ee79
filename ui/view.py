"""Streamlit building blocks shared by the pages: cached models, sidebar settings, the result view."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image

import core
from core.draw import annotate, shrink
from core.image import load_image
from core.models import AgeGenderModels
from core.pipeline import DEFAULT_MIN_FACE_SIZE, DEFAULT_THRESHOLD, prepare

#: Photos are shown and offered for download at most this large (a 50 MP photo would be a 100 MB PNG).
DISPLAY_MAX_SIDE = 2048


@st.cache_resource(show_spinner="Loading the face detector and the age and gender models...")
def cached_models() -> AgeGenderModels:
    """Detector and both models, loaded once per server process and shared by all sessions."""
    return prepare()


def require_models() -> AgeGenderModels:
    """The models, or a clear error and ``st.stop()`` when they are missing."""
    try:
        return cached_models()
    except core.ModelNotFound as exc:
        st.error(f"The models are not available: {exc}")
        st.stop()
        raise  # unreachable: st.stop() ends the script run


@dataclass(frozen=True)
class Settings:
    min_face_size: int = DEFAULT_MIN_FACE_SIZE
    threshold: float = DEFAULT_THRESHOLD
    align: bool = True


def sidebar_settings() -> Settings:
    with st.sidebar:
        st.header("Detection settings")
        min_face = st.slider("Minimum face size (px)", 12, 300, DEFAULT_MIN_FACE_SIZE, step=4,
                             help="Faces smaller than this (box side, in the photo's pixels) are ignored.")
        threshold = st.slider("Detection threshold", 0.50, 0.99, DEFAULT_THRESHOLD, step=0.01,
                              help="Lower finds more faces, and more false ones.")
        align = st.checkbox("Align eyes", value=True,
                            help="Rotate each face so the eyes are level before estimating, as in training.")
        st.caption("Images are processed in memory and never stored.")
    return Settings(min_face, threshold, align)


def results_table(faces: list[core.FaceResult]) -> pd.DataFrame:
    return pd.DataFrame([{
        "face": i,
        "age": round(f.age, 1),
        "age range": f"{f.age_range[0]:.0f}-{f.age_range[1]:.0f}",
        "gender": f.gender,
        "gender probability": round(f.gender_probability, 3),
        "P(female)": round(f.female_probability, 3),
        "detection confidence": round(f.confidence, 3),
    } for i, f in enumerate(faces, 1)])


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def analyze_and_show(name: str, data: bytes, settings: Settings, key: str) -> list[core.FaceResult] | None:
    """Decode, analyse and render one image; a warning instead of an exception for a bad file."""
    models = require_models()
    try:
        rgb = load_image(data, name=name)
        faces = core.analyze(rgb, min_face_size=settings.min_face_size, threshold=settings.threshold,
                             align=settings.align, models=models)
    except core.InvalidImage as exc:
        st.warning(f"**{name}**: {exc}")
        return None
    except Exception as exc:  # noqa: BLE001 - the UI must never show a traceback
        st.error(f"**{name}**: analysis failed ({type(exc).__name__}: {exc}).")
        return None
    show_result(name, rgb, faces, key=key)
    return faces


def show_result(name: str, rgb: np.ndarray, faces: list[core.FaceResult], *, key: str) -> None:
    """The one result view: annotated image, table, downloads."""
    st.subheader(name)
    if not faces:
        st.info(f"No face found in {name}. Try a smaller minimum face size or a lower detection threshold "
                "in the sidebar, or a photo where the face is larger and facing the camera.")
        st.image(shrink(rgb, DISPLAY_MAX_SIDE)[0], width="stretch")
        return
    annotated = annotate(rgb, faces, max_side=DISPLAY_MAX_SIDE)
    st.image(annotated, caption=f"{len(faces)} face{'s' if len(faces) != 1 else ''}", width="stretch")
    table = results_table(faces)
    st.dataframe(table, hide_index=True, width="stretch")
    stem = name.rsplit(".", 1)[0]
    c1, c2, c3 = st.columns(3)
    c1.download_button("Annotated image (PNG)", _png(annotated), f"{stem}_annotated.png", "image/png",
                       key=f"{key}-png")
    c2.download_button("Results (CSV)", table.to_csv(index=False), f"{stem}_faces.csv", "text/csv",
                       key=f"{key}-csv")
    payload = json.dumps({"file": name, "faces": [f.as_dict() for f in faces]}, indent=2)
    c3.download_button("Results (JSON)", payload, f"{stem}_faces.json", "application/json", key=f"{key}-json")
