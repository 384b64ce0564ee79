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
# The int8 heads are built from models/<task>_model.int8.json (python -m train.quantize), redone when it changes.
EXPORTS := models/age_model.export.json models/gender_model.export.json
export: $(EXPORTS)
.SECONDEXPANSION:
models/%_model.export.json: models/%_model.h5 $$(wildcard models/$$*_model.int8.json) | $(VENV)/.runtime
	$(BIN)/python -m train.export --tasks $* || echo "warning: no inference export for $*; the app runs the .h5"

run: install export
	$(BIN)/streamlit run streamlit_app.py

lint: install-dev
	$(BIN)/ruff check .

test: install-dev lint
	$(BIN)/pytest

# The shipped models, end to end (about 3 hours on 2 cores with bf16). Every step resumes, or is skipped when done.
DATA ?= ../shared/data/utkface
AAF ?= ../shared/data/aaf
# 1. The shared backbone, from scratch on UTKFace + All-Age-Faces (16,000 images per epoch, drawn in proportion
#    to each dataset), all 14 planned epochs (shipped since session 9; see README "Beyond UTKFace, step by step").
BACKBONE = --data-dir $(DATA) --data-dir $(AAF) --schedule 64:7,96:7 --warmup-epochs 0.5 --augment basic \
           --epoch-images 16000 --resume
# 2. Each model fine-tuned from it on the same mix, blocks 1-2 frozen, with the photo augmentation.
FINETUNE = --data-dir $(DATA) --data-dir $(AAF) --init runs/multitask/model.keras --freeze-blocks 2 --schedule 96:2 \
           --lr 3e-4 --augment photo --warmup-epochs 0.1 --epoch-images 16000 --resume
models: install
	$(BIN)/python -m train multitask $(BACKBONE)
	$(BIN)/python -m train age $(FINETUNE)
	$(BIN)/python -m train gender $(FINETUNE)
	$(BIN)/python -m train.evaluate --data-dir $(DATA) --json models/metrics_test_chip.json
	$(BIN)/python -m train.evaluate --data-dir $(DATA) --detect --json models/metrics_test_detect.json
	$(BIN)/python -m train.export --data-dir $(DATA)
	$(BIN)/python -m train.quantize --data-dir $(DATA) --data-dir $(AAF)
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
