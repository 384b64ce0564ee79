# Two commands: `make run` (set up + start the app) and `make test` (set up + run every check).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: run test lint install install-dev clean models bench generalisation reliability export

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.runtime: requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.dev: requirements.txt requirements-dev.txt $(VENV)/.runtime
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

install: $(VENV)/.runtime
install-dev: $(VENV)/.dev

# The inference export of each shipped model (OpenVINO IR next to the .h5, see README "How it works"): made once
# here, from the committed .h5, not at every start; redone when the .h5 changes. core checks its sha256 and falls
# back to the .h5 if the export is missing or stale, so a failed export only costs speed.
EXPORTS := models/age_model.export.json models/gender_model.export.json
export: $(EXPORTS)
models/%_model.export.json: models/%_model.h5 | $(VENV)/.runtime
	$(BIN)/python -m train.export --tasks $* || echo "warning: no inference export for $*; the app runs the .h5"

run: install export
	$(BIN)/streamlit run streamlit_app.py

lint: install-dev
	$(BIN)/ruff check .

test: install-dev lint
	$(BIN)/pytest

# The shipped models, end to end (about 2 hours on 2 cores). Every step resumes, or is skipped when done.
DATA ?= ../shared/data/utkface
# The shared backbone is used after 9 of its 14 planned epochs (--until-epoch 9), as shipped.
FINETUNE = --data-dir $(DATA) --init runs/multitask/checkpoint.keras --freeze-blocks 2 --schedule 96:2 --lr 3e-4 --augment basic \
           --warmup-epochs 0.1 --resume
AAF ?= ../shared/data/aaf
# Then the gender model: one short epoch on UTKFace + All-Age-Faces with the photo augmentation (shipped since
# session 5; the same step for age was measured and not shipped, see README).
MIX = --data-dir $(DATA) --data-dir $(AAF) --freeze-blocks 2 --schedule 96:1 --epoch-images 12800 --lr 5e-5 \
      --warmup-epochs 0.1 --augment photo --resume
# Then the age model: one short epoch on UTKFace alone with the photo augmentation (shipped since session 6;
# adding AAF to it over-aged children, see README "Beyond UTKFace, step by step").
PHOTO = --freeze-blocks 2 --schedule 96:1 --epoch-images 12800 --lr 5e-5 --warmup-epochs 0.1 --augment photo --resume
models: install
	$(BIN)/python -m train multitask --data-dir $(DATA) --schedule 64:7,96:7 --warmup-epochs 0.5 --until-epoch 9 --augment basic --resume
	$(BIN)/python -m train age $(FINETUNE)
	$(BIN)/python -m train gender $(FINETUNE)
	$(BIN)/python -m train gender $(MIX) --init models/gender_model.h5 --run-dir runs/gender_mix
	$(BIN)/python -m train age --data-dir $(DATA) $(PHOTO) --init models/age_model.h5 --run-dir runs/age_photo
	$(BIN)/python -m train.evaluate --data-dir $(DATA) --json models/metrics_test_chip.json
	$(BIN)/python -m train.evaluate --data-dir $(DATA) --detect --json models/metrics_test_detect.json
	$(BIN)/python -m train.export --data-dir $(DATA)
	$(BIN)/python -m train.reliability --data-dir $(DATA) --data-dir $(AAF)
	$(BIN)/python -m train.card

# The gender model's reliability rule (models/gender_model.json), e.g. after retraining either model.
reliability: install
	$(BIN)/python -m train.reliability --data-dir $(DATA) --data-dir $(AAF)

# Beyond UTKFace: our models and the peer on every dataset's test split, clean and degraded (README).
GENERALISATION = --data-dir $(DATA) --data-dir $(AAF) --degrade --out-dir models/generalisation
generalisation: install
	$(BIN)/python -m train.evaluate $(GENERALISATION)
	$(BIN)/python -m train.evaluate $(GENERALISATION) --detect
	$(BIN)/python -m bench.peer_accuracy $(GENERALISATION)
	$(BIN)/python -m bench.peer_accuracy $(GENERALISATION) --detect
	$(BIN)/python -m train.card

bench: install-dev
	$(BIN)/python -m bench --data-dir $(DATA)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
