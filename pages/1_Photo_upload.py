"""Photo upload: one or several photos, every face boxed, numbered and estimated."""

import streamlit as st

from ui.view import analyze_and_show, loading_status, page, sidebar_settings, start_loading

page("Photo upload", "🖼️")
st.title("Photo upload")
loader = start_loading()
settings = sidebar_settings()

files = st.file_uploader("Photos (JPEG, PNG, WebP or BMP)", type=["jpg", "jpeg", "png", "webp", "bmp"],
                         accept_multiple_files=True)
if not files:
    follow_loading = loading_status(loader)
    st.info("Choose one or more photos to analyse.")
    follow_loading()
    st.stop()

for i, f in enumerate(files):
    analyze_and_show(f.name, f.getvalue(), settings, key=f"upload-{i}")
    st.divider()
