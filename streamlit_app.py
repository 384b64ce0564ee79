"""Home: what the app does, the model card in brief, and the privacy promise."""

import streamlit as st

from core.modelcard import load_model_info, training_datasets
from ui.view import loading_status, page, reliability_text, start_loading

page("Home", "🙂")

st.title("Age and gender estimation from face photos")
st.write(
    "Upload a photo or take a webcam snapshot. Every face in it is found, boxed and numbered, and for each face "
    "the app estimates its **apparent age** (how old the face looks), with a range that holds the true age for "
    "about four faces in five, and the **probability that the face would be labelled female**. The pages are "
    "in the sidebar: **Photo upload**, **Webcam snapshot** and **Training history**."
)

info = load_model_info()
st.header("How accurate it is")
if not info.available:
    st.warning("No trained models in `models/` yet. Train them with `python -m train` (see the README).")
else:
    follow_loading = loading_status(start_loading())  # the models load in the background while you read
    age, gender = info.metadata.get("age", {}), info.metadata.get("gender", {})
    detect = info.metrics.get("detect") or {}
    chip = info.metrics.get("chip") or {}
    n = detect.get("n")
    on = f"on {n:,} test photos of UTKFace that the models never saw in training" if n else "on the test photos"
    c1, c2, c3 = st.columns(3)
    mae = detect.get("age_mae")
    c1.metric("Typical age error", f"{mae:.1f} years" if mae is not None else "n/a",
              help=f"The average distance between the estimated and the true age, {on} (mean absolute error, "
                   f"{mae if mae is not None else 'n/a'}). It grows with age: see Training history.")
    acc = detect.get("gender_accuracy")
    c2.metric("Gender label right", f"{acc:.1%}" if acc is not None else "n/a",
              help=f"Share of faces whose more likely gender matches the dataset's label, {on}.")
    cov = detect.get("age_range_coverage")
    c3.metric("True age inside the range", f"{cov:.0%}" if cov is not None else "n/a",
              help=f"Share of faces whose true age falls inside the range shown, {on}.")
    prov = age.get("provenance", {})
    run = prov.get("run", {})
    st.markdown(
        f"Measured {on}, the whole way a photo takes in the app (finding the face, cropping it, both models). "
        f"The models learned from about {run.get('n_train', '?'):,} photos of faces ({training_datasets(prov)}); "
        "the full model card is `models/MODEL_CARD.md`, and the **Training history** page shows how they were "
        "trained and how the error differs by age and group."
        if isinstance(run.get("n_train"), int) else
        f"Measured {on}, the whole way a photo takes in the app. Model card: `models/MODEL_CARD.md`."
    )
    with st.expander("Technical details"):
        c = chip.get("age_mae")
        st.markdown(
            "- Face detector: MTCNN; models: two VGG16 networks (the VGGFace architecture), one for age, one for "
            "gender.\n"
            f"- Input: {age.get('input_size', '?')} px face crops framed like UTKFace's aligned faces; each face "
            "is also estimated mirrored and the two averaged.\n"
            f"- Data split: {run.get('n_train', '?')} training / {run.get('n_val', '?')} validation / "
            f"{run.get('n_test', '?')} test images, duplicates kept on one side.\n"
            f"- Start of training: {prov.get('initialisation', 'unknown')} (pretrained VGGFace weights could "
            "not be used, so the network was trained from scratch).\n"
            + (f"- Age error on UTKFace's own ready-cropped test faces (no detection): {c:.2f} years.\n"
               if c is not None else "")
        )
    st.subheader("When gender is shown as uncertain")
    st.markdown(reliability_text(gender))

rule_stored = info.available and bool(info.metadata.get("gender", {}).get("gender_reliability"))
trained_on = (info.metadata.get("age", {}).get("provenance", {}).get("dataset")
              or "UTKFace (non-commercial research licence)")
st.header("Limits")
st.markdown(
    "- Estimates **apparent** age from appearance, not documents; the error grows with age and differs between "
    "groups of people (charts on the **Training history** page).\n"
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
