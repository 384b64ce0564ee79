"""Webcam snapshot: the same pipeline and the same result view as the upload page."""

import streamlit as st

from ui.view import analyze_and_show, require_models, sidebar_settings

st.set_page_config(page_title="Webcam snapshot", page_icon="📷", layout="wide")
st.title("Webcam snapshot")
settings = sidebar_settings()
require_models()

shot = st.camera_input("Take a picture (your browser will ask for camera access)")
if shot is None:
    st.info("Take a snapshot to analyse it. The picture stays in memory and is never stored.")
    st.stop()

analyze_and_show("snapshot.jpg", shot.getvalue(), settings, key="webcam")
