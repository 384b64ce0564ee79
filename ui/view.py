"""Streamlit building blocks shared by the pages: models loaded in the background, sidebar settings, the result
view."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image
from streamlit.errors import StreamlitPageNotFoundError

import core
from core import memory
from core.draw import annotate, shrink
from core.image import load_image
from core.models import AgeGenderModels, models_dir
from core.models import require_models as check_model_files
from core.pipeline import DEFAULT_MIN_FACE_SIZE, DEFAULT_THRESHOLD, face_crop, prepare
from core.reliability import GenderReliability
from core.results import csv_text, image_dict, image_rows

#: Photos are shown and offered for download at most this large (a 50 MP photo would be a 100 MB PNG).
DISPLAY_MAX_SIDE = 2048

#: Uploads the upload page analyses and shows at once: a session keeps what its last run showed (images,
#: downloads) until its next run, so more photos are shown a page at a time (docs/memory.md).
PHOTOS_PER_PAGE = 5


#: Loading the detector and both models takes 1-2 s on the project's 2-core machines, up to about 10 s on a
#: machine's first start (MTCNN's conversion to LiteRT, OpenVINO's first compile; docs/speed.md). The progress
#: bar runs on the longer time, so it never stalls at its end on a first start.
TYPICAL_LOAD_S = 2.0
FIRST_START_LOAD_S = 10.0
LOAD_TIME_TEXT = f"usually under {TYPICAL_LOAD_S:.0f} s, up to {FIRST_START_LOAD_S:.0f} s on a machine's first start"


class ModelLoader:
    """The detector and both models, loaded (and warmed up with one blank face) in a background thread, so
    that no page waits for them before it is drawn. One per server process and models folder."""

    def __init__(self, directory: str):
        self.directory = directory
        self.models: AgeGenderModels | None = None
        self.error: Exception | None = None
        self.seconds: float | None = None
        self.done = threading.Event()
        self._t0 = time.perf_counter()
        threading.Thread(target=self._load, name="model-loader", daemon=True).start()

    def _load(self) -> None:
        try:
            models = prepare(self.directory)  # the detector builds in a second thread while the models load
            models.predict({s: np.zeros((1, s, s, 3), np.uint8) for s in set(models.input_sizes.values())})
            self.models = models
        except Exception as exc:  # noqa: BLE001 - shown on the page instead of a traceback
            self.error = exc
        finally:
            self.seconds = time.perf_counter() - self._t0
            self.done.set()

    @property
    def elapsed(self) -> float:
        return self.seconds if self.seconds is not None else time.perf_counter() - self._t0


@st.cache_resource(show_spinner=False)
def model_loader(directory: str) -> ModelLoader:
    """The process-wide loader of the models in ``directory``; raises :class:`core.ModelNotFound` at once
    (and caches nothing) when a model file is missing."""
    check_model_files(directory)
    return ModelLoader(directory)


#: The app's pages in sidebar order: script (relative to ``streamlit_app.py``), label, icon. Streamlit would
#: name the entry page after its file ("streamlit app"), so its own list is switched off
#: (``client.showSidebarNavigation = false`` in ``.streamlit/config.toml``) and :func:`page` draws this one.
PAGES = (  # Material icons: drawn by Streamlit's own font, where a system may have no emoji font
    ("streamlit_app.py", "Home", ":material/home:"),
    ("pages/1_Photo_upload.py", "Photo upload", ":material/upload:"),
    ("pages/2_Webcam_snapshot.py", "Webcam snapshot", ":material/photo_camera:"),
    ("pages/3_Training_history.py", "Training history", ":material/monitoring:"),
)


def page(title: str, icon: str) -> None:
    """Every page's first call: the browser tab's title and icon, and the sidebar's list of pages."""
    st.set_page_config(page_title=f"{title} · Age & gender", page_icon=icon, layout="wide")
    with st.sidebar:
        for script, label, page_icon in PAGES:
            try:
                st.page_link(script, label=label, icon=page_icon)
            except StreamlitPageNotFoundError:  # one page script run on its own (AppTest): no app around it
                break
        st.divider()


def start_loading() -> ModelLoader:
    """Start loading the models in the background (every page calls this first); a clear error and
    ``st.stop()`` when they are missing."""
    try:
        return model_loader(str(models_dir().resolve()))
    except core.ModelNotFound as exc:
        st.error(f"The models are not available: {exc}")
        st.stop()
        raise  # unreachable: st.stop() ends the script run


def loading_status(loader: ModelLoader) -> Callable[[], None]:
    """One line on the models at this place of the page: still loading (seconds so far) or ready (how long it
    took). Returns ``follow``: call it last on the page to keep the line current until the models are ready.
    ``follow`` loops inside this script run, after everything else is drawn (a click or an upload interrupts
    it like any script run); reruns instead (a fragment with ``run_every``) would make Streamlit collect garbage
    and clear Keras' session after each one, which slowed the loading thread down many times over."""
    slot = st.empty()

    def show() -> None:
        if not loader.done.is_set():
            slot.caption(f"Loading the face detector and the models in the background: {loader.elapsed:.0f} s so "
                         f"far ({LOAD_TIME_TEXT}; once per server start). You can choose a photo "
                         "meanwhile.")
        elif loader.models is not None:
            slot.caption(f"Models ready (loaded in {loader.seconds:.1f} s, once for this server).")
        else:
            slot.error(f"The models could not be loaded: {loader.error}")

    def follow() -> None:
        while not loader.done.wait(0.5):
            show()
        show()

    show()
    return follow


def require_models() -> AgeGenderModels:
    """The loaded models; while they load, a progress bar with the seconds so far (no silent spinner); a clear
    error and ``st.stop()`` when loading failed."""
    loader = start_loading()
    if not loader.done.is_set():
        bar = st.progress(0.0, text="Loading the models...")
        while not loader.done.wait(0.25):
            bar.progress(min(loader.elapsed / FIRST_START_LOAD_S, 0.95),
                         text=f"Loading the face detector and the models: {loader.elapsed:.0f} s so far "
                              f"({LOAD_TIME_TEXT}; once per server start)")
        bar.empty()
    if loader.models is None:
        st.error(f"The models could not be loaded: {loader.error}")
        st.stop()
    assert loader.models is not None
    return loader.models


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
    """One row per face, the columns a person reads at once, under the output contract's names (README,
    "Output"); "cut by the frame" only where some face is; why a gender is uncertain is said below the table
    (:func:`uncertain_reasons`), in full."""
    rows = []
    for i, f in enumerate(faces, 1):
        d = f.as_dict()
        rows.append({
            "face": i,
            "age": d["age"],
            "age range": f"{d['age_range'][0]:.0f}-{d['age_range'][1]:.0f}",
            "gender": d["gender"],
            "female probability": d["female_probability"],
            "detection confidence": d["confidence"],
            "cut by the frame": "yes" if d["cut_by_frame"] else "",
        })
    table = pd.DataFrame(rows)
    return table if any(f.cut_by_frame for f in faces) else table.drop(columns="cut by the frame")


def uncertain_reasons(faces: list[core.FaceResult]) -> list[str]:
    """"face N: why its gender is uncertain", for each face whose gender is."""
    return [f"face {i}: {f.gender_note}" for i, f in enumerate(faces, 1) if not f.gender_reliable and f.gender_note]


def downloads(name: str, faces: list[core.FaceResult]) -> tuple[str, str]:
    """The CSV and JSON downloads of one photo's faces, in the output contract (:mod:`core.results`)."""
    return csv_text(image_rows(name, faces)), json.dumps(image_dict(name, faces), indent=2)


#: Photos are drawn at most this many pixels high on the page, so the table below stays in view.
SHOWN_MAX_HEIGHT = 560


def shown_width(rgb: np.ndarray) -> int:
    """The width to draw ``rgb`` at: :data:`SHOWN_MAX_HEIGHT` high at most (narrower on a narrow screen)."""
    h, w = rgb.shape[:2]
    return max(1, min(w, round(SHOWN_MAX_HEIGHT * w / h)))


#: Help texts of the result table's columns.
COLUMN_HELP = {
    "face": "the number on the box in the photo",
    "model input": "the crop of the face that the age and gender models saw",
    "age": "estimated apparent age in years",
    "age range": "on held-out faces the true age fell inside such a range for about 80 % of them",
    "gender": "the gender label the model gives (UTKFace's binary label); 'uncertain' where validation data "
              "says it is unreliable for such a face",
    "female probability": "the gender model's probability that the face is labelled female, 0 to 1: 0.9 leans "
                          "female, 0.1 leans male, near 0.5 it cannot tell",
    "detection confidence": "how sure the face detector is that this is a face (not how sure the age or "
                            "gender is)",
    "cut by the frame": "the face reaches the photo's edge, so part of it may be cut off: its age and gender "
                        "rest on less of the face",
}


def reliability_text(gender_metadata: dict) -> str:
    """The gender model's reliability rule in words, from its ``gender_reliability`` block."""
    block = gender_metadata.get("gender_reliability")
    rule = GenderReliability.from_metadata(block)
    if rule is None or block is None:
        return ("No reliability rule is stored with this gender model, so every face gets a label: run "
                "`python -m train.reliability` (see the README).")
    bad = [f"{b.label} ({b.accuracy:.0%})" if b.accuracy is not None else b.label for b in rule.buckets
           if not b.reliable]
    low, high = rule.band
    v = block.get("validation", {})
    parts = [f"Gender is shown as **uncertain** where the validation split says it is unreliable (right for "
             f"fewer than {rule.target:.0%} of the faces):"]
    parts.append(f"predicted ages {', '.join(bad)}" if bad else "no age bucket")
    if high > low:
        parts.append(f"and a probability of female between {low:.2f} and {high:.2f}"
                     + (f" ({rule.band_accuracy:.0%})" if rule.band_accuracy is not None else ""))
    text = " ".join(parts) + "."
    when = (block.get("computed_on") or {}).get("computed", "")[:10]
    text += f" Measured on the validation faces{' on ' + when if when else ''}."
    if v.get("n"):
        text += f" On the {v['n']} validation faces that leaves {v['uncertain_share']:.0%} uncertain"
        text += (f"; the labels shown were right {v['accuracy_shown']:.1%} of the time (all faces: "
                 f"{v['accuracy_all']:.1%})." if v.get("accuracy_shown") is not None else ".")
    return text


def _data_uri(rgb: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(_png(rgb)).decode()


def crops_column(rgb: np.ndarray, faces: list[core.FaceResult], models: AgeGenderModels,
                 align: bool) -> dict[str, list[str]]:
    """Thumbnails (data URIs) of the crop each model saw: one column, or one per model where the input sizes
    differ."""
    sizes = models.input_sizes
    names = {"model input": sizes["age"]} if len(set(sizes.values())) == 1 else {
        f"{task} model input": size for task, size in sizes.items()}
    return {name: [_data_uri(face_crop(rgb, f, size, align=align)) for f in faces] for name, size in names.items()}


def _gender_style(value: str) -> str:
    if value.startswith("uncertain"):
        return "color: #6b7280; font-style: italic"
    return f"color: {'#b8327a' if value == 'female' else '#2563b8'}; font-weight: 600"


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def photo_page(count: int) -> range:
    """Which of ``count`` uploads to show: all up to :data:`PHOTOS_PER_PAGE`, else the page of them chosen
    above the results (the newest by default)."""
    pages = -(-count // PHOTOS_PER_PAGE)
    if pages <= 1:
        return range(count)
    labels = [f"{p * PHOTOS_PER_PAGE + 1}-{min(count, (p + 1) * PHOTOS_PER_PAGE)}" for p in range(pages)]
    chosen = st.radio(f"{count} photos, {PHOTOS_PER_PAGE} analysed and shown at a time: photos", labels,
                      index=pages - 1, horizontal=True)
    first = labels.index(chosen) * PHOTOS_PER_PAGE
    return range(first, min(count, first + PHOTOS_PER_PAGE))


def _annotated_png(data: bytes, faces: list[core.FaceResult]) -> bytes:
    """The annotated photo as a PNG, made from the uploaded bytes when it is downloaded: a session then keeps
    the photo as sent rather than a PNG of several MB per photo."""
    return _png(annotate(load_image(data), faces, max_side=DISPLAY_MAX_SIDE))


def analyze_and_show(name: str, data: bytes, settings: Settings, key: str) -> list[core.FaceResult] | None:
    """Decode, analyse and render one image; a warning instead of an exception for a bad file."""
    models = require_models()
    try:
        started = time.perf_counter()
        rgb = load_image(data, name=name)
        faces = core.analyze(rgb, min_face_size=settings.min_face_size, threshold=settings.threshold,
                             align=settings.align, models=models)
        seconds = time.perf_counter() - started
    except core.InvalidImage as exc:
        st.warning(f"**{name}**: {exc}")
        return None
    except Exception as exc:  # noqa: BLE001 - the UI must never show a traceback
        st.error(f"**{name}**: analysis failed ({type(exc).__name__}: {exc}).")
        return None
    show_result(name, rgb, faces, key=key, seconds=seconds, models=models, align=settings.align, source=data)
    del rgb
    memory.trim()  # what the photo's analysis freed, handed back (each run is a thread with its own arena)
    return faces


#: Faces shown in the results table before it scrolls.
TABLE_ROWS = 12


def show_result(name: str, rgb: np.ndarray, faces: list[core.FaceResult], *, key: str, seconds: float | None = None,
                models: AgeGenderModels | None = None, align: bool = True, source: bytes | None = None) -> None:
    """The one result view: annotated image, table (with the models' crops where ``models`` is given), time
    taken, downloads (the annotated PNG made on demand from ``source``, the photo's bytes, where given)."""
    st.subheader(name)
    took = f" in {seconds:.2f} s" if seconds is not None else ""
    if not faces:
        st.info(f"No face found in {name}{took}. Try a smaller minimum face size or a lower detection threshold "
                "in the sidebar, or a photo where the face is larger and facing the camera.")
        small = shrink(rgb, DISPLAY_MAX_SIDE)[0]
        st.image(small, width=shown_width(small))
        return
    annotated = annotate(rgb, faces, max_side=DISPLAY_MAX_SIDE)
    n = f"{len(faces)} face{'s' if len(faces) != 1 else ''}"
    st.image(annotated, caption=n, width=shown_width(annotated))
    if seconds is not None:
        st.caption(f"{n} found and analysed{took} (detection, crops and both models).")
    table = results_table(faces)
    shown = table.copy()
    if models is not None:
        for column, images in crops_column(rgb, faces, models, align).items():
            shown.insert(1, column, images)
    config = {c: st.column_config.Column(help=COLUMN_HELP.get(c.replace("age model ", "").replace("gender model ", "")))
              for c in shown.columns}
    config.update({c: st.column_config.ImageColumn(c, help=COLUMN_HELP["model input"]) for c in shown.columns
                   if c.endswith("model input")})
    styled = shown.style.map(_gender_style, subset=["gender"]).format(
        {"age": "{:.1f}", "female probability": "{:.2f}", "detection confidence": "{:.2f}"})
    row_height = 64 if models is not None else None
    # every face's row visible without scrolling inside the table (a group photo's sixth face was hidden
    # below the default ten-row height at 64 px rows); beyond TABLE_ROWS faces the table scrolls
    height = "content" if len(faces) <= TABLE_ROWS else (row_height or 35) * TABLE_ROWS + 40
    st.dataframe(styled, hide_index=True, width="stretch", column_config=config, row_height=row_height,
                 height=height)
    uncertain = sum(not f.gender_reliable for f in faces)
    if uncertain:
        st.caption(f"Gender shown as *uncertain* for {uncertain} of {len(faces)} faces: on validation faces like "
                   "these the gender model was right too rarely to give a label (see the Home page).")
        reasons = uncertain_reasons(faces)
        if reasons:
            st.markdown("**Why uncertain**\n" + "".join(f"\n- {r}" for r in reasons))
    stem = name.rsplit(".", 1)[0]
    c1, c2, c3 = st.columns(3)
    png = partial(_annotated_png, source, faces) if source is not None else _png(annotated)
    c1.download_button("Annotated image (PNG)", png, f"{stem}_annotated.png", "image/png", key=f"{key}-png")
    table_csv, payload = downloads(name, faces)
    c2.download_button("Results (CSV)", table_csv, f"{stem}_faces.csv", "text/csv", key=f"{key}-csv")
    c3.download_button("Results (JSON)", payload, f"{stem}_faces.json", "application/json", key=f"{key}-json")
