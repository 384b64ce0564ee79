# Two commands: `make run` (set up + start the app) and `make test` (set up + run every check).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: run test lint install install-dev clean campaign models bench generalisation reliability export

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

# The backbone campaign (python -m train campaign, docs/campaign.md): continues from models/campaign wherever the
# last machine stopped, at the best precision this CPU has; HOURS=3 ends this stretch after three hours. Commit
# models/campaign afterwards: it is what the next machine continues from.
DATA ?= ../shared/data/utkface
AAF ?= ../shared/data/aaf
LFW ?= ../shared/data/lfw
campaign: install
	$(BIN)/python -m train campaign --data-dir $(DATA) --data-dir $(AAF) --data-dir $(LFW) $(if $(HOURS),--hours $(HOURS))

# The shipped models from the campaign's backbone as it stands: each fine-tuned on its own (LFW has no ages, so
# the age model trains on UTKFace + AAF), evaluated, exported, quantized, its reliability rule and the card.
FINETUNE = --init campaign --schedule 96:2 --lr 3e-4 --augment photo --warmup-epochs 0.1 --epoch-images 16000 --resume
models: install
	$(BIN)/python -m train age --data-dir $(DATA) --data-dir $(AAF) $(FINETUNE)
	$(BIN)/python -m train gender --data-dir $(DATA) --data-dir $(AAF) --data-dir $(LFW) $(FINETUNE)
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
