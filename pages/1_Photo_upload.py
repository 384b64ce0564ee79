"""Photo upload: one or several photos, every face boxed, numbered and estimated."""

import streamlit as st

from ui.view import analyze_and_show, require_models, sidebar_settings

st.set_page_config(page_title="Photo upload", page_icon="🖼️", layout="wide")
st.title("Photo upload")
settings = sidebar_settings()
require_models()

files = st.file_uploader("Photos (JPEG, PNG, WebP or BMP)", type=["jpg", "jpeg", "png", "webp", "bmp"],
                         accept_multiple_files=True)
if not files:
    st.info("Choose one or more photos to analyse.")
    st.stop()

for i, f in enumerate(files):
    analyze_and_show(f.name, f.getvalue(), settings, key=f"upload-{i}")
    st.divider()
