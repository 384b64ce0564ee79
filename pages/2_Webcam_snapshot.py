"""Webcam snapshot: the same pipeline and the same result view as the upload page."""

import streamlit as st

from ui.view import analyze_and_show, loading_status, page, sidebar_settings, start_loading

page("Webcam snapshot", "📷")
st.title("Webcam snapshot")
loader = start_loading()
settings = sidebar_settings()

shot = st.camera_input("Take a picture (your browser will ask for camera access)")
if shot is None:
    follow_loading = loading_status(loader)
    st.info("Take a snapshot to analyse it. The picture stays in memory and is never stored.")
    follow_loading()
    st.stop()

analyze_and_show("snapshot.jpg", shot.getvalue(), settings, key="webcam")
