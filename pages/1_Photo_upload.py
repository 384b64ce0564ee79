"""Photo upload: one or several photos, every face boxed, numbered and estimated."""

import streamlit as st

from core.image import MAX_BYTES, SUPPORTED, SUPPORTED_SUFFIXES
from ui.view import analyze_and_show, loading_status, page, photo_page, sidebar_settings, start_loading

page("Photo upload", "🖼️")
st.title("Photo upload")
loader = start_loading()
settings = sidebar_settings()

files = st.file_uploader(f"Photos ({SUPPORTED})", type=SUPPORTED_SUFFIXES, accept_multiple_files=True,
                         max_upload_size=MAX_BYTES // 2**20)
if not files:
    follow_loading = loading_status(loader)
    st.info("Choose one or more photos to analyse.")
    follow_loading()
    st.stop()

for i in photo_page(len(files)):
    analyze_and_show(files[i].name, files[i].getvalue(), settings, key=f"upload-{i}")
    st.divider()
