"""Home: what the app does, the model card in brief, and the privacy promise."""

import streamlit as st

from core.modelcard import load_model_info, training_datasets
from ui.view import loading_status, page, reliability_text, start_loading

page("Home", "🙂")

st.title("Age and gender estimation from face photos")
st.write(
    "Upload a photo or take a webcam snapshot: every face is found (MTCNN), boxed and numbered, and two "
    "VGGFace-architecture models estimate its **apparent age** (with a calibrated range) and the "
    "**probability that it is labelled female**, with the detector's confidence. Pages: "
    "**Photo upload**, **Webcam snapshot** and the **Training history** dashboard (left sidebar)."
)

info = load_model_info()
st.header("The models")
if not info.available:
    st.warning("No trained models in `models/` yet. Train them with `python -m train` (see the README).")
else:
    follow_loading = loading_status(start_loading())  # the models load in the background while you read
    age, gender = info.metadata.get("age", {}), info.metadata.get("gender", {})
    detect = info.metrics.get("detect") or {}
    chip = info.metrics.get("chip") or {}
    c1, c2, c3, c4 = st.columns(4)
    def years(m: dict) -> str:
        return f"{m['age_mae']:.2f}" if m.get("age_mae") is not None else "n/a"

    c1.metric("Age MAE, photos (years)", years(detect), help="test split, full app pipeline (MTCNN + crop)")
    c2.metric("Age MAE, chips (years)", years(chip), help="test split, face chips as given")
    acc = detect.get("gender_accuracy")
    c3.metric("Gender accuracy, photos", f"{acc:.1%}" if acc is not None else "n/a")
    cov = detect.get("age_range_coverage")
    c4.metric("True age inside the range", f"{cov:.0%}" if cov is not None else "n/a")
    prov = age.get("provenance", {})
    st.markdown(
        f"- **Data:** {prov.get('dataset', 'UTKFace')}; split {prov.get('run', {}).get('n_train', '?')} train / "
        f"{prov.get('run', {}).get('n_val', '?')} validation / {prov.get('run', {}).get('n_test', '?')} test "
        "images, duplicates kept on one side.\n"
        f"- **Initialisation:** {prov.get('initialisation', 'unknown')}. Pretrained VGGFace weights could not "
        f"be used where these models were trained, so the backbone was trained from scratch on "
        f"{training_datasets(prov)}.\n"
        f"- **Input:** {age.get('input_size', '?')} px face crops framed like UTKFace chips; test-time flip.\n"
        "- Full model card: `models/MODEL_CARD.md`; curves and per-group errors: **Training history**."
    )
    st.subheader("When gender is shown as uncertain")
    st.markdown(reliability_text(gender))

rule_stored = info.available and bool(info.metadata.get("gender", {}).get("gender_reliability"))
trained_on = (info.metadata.get("age", {}).get("provenance", {}).get("dataset")
              or "UTKFace (non-commercial research licence)")
st.header("Limits")
st.markdown(
    "- Estimates **apparent** age from appearance, not documents; errors grow for the elderly and vary by group "
    "(see the per-bucket and per-race charts).\n"
    "- Gender is the dataset's **binary label** (as annotated in UTKFace), not anyone's identity; for children "
    + ("it is unreliable, and the app says *uncertain* there (above).\n" if rule_stored else
       "it is unreliable (no rule to show it as *uncertain* is stored with this gender model yet).\n") +
    f"- Trained on {trained_on}; not for decisions about people."
)

st.header("Privacy")
st.markdown(
    "Images are processed **in memory** and **never stored**: nothing is written to disk, logged or sent "
    "anywhere. Streamlit's usage statistics are switched off."
)

if info.available:
    follow_loading()  # keeps the models' line current until they are ready
