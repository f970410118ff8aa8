# The two commands of the README: `make demo` and `make test`. Each creates .venv when missing and
# installs the package with what it needs, then runs. Override PYTHON or TORCH_SPEC if you must.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.digzsl-installed
# On the project's CPU machines these wheels come from local disk; on a GPU machine pip fetches the
# CUDA build of the same versions.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
RUN ?= runs/miniworld
export HF_HUB_OFFLINE ?= 1

.PHONY: install demo demo-multilabel test bench assets ship-assets clean-run

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q $(TORCH_SPEC)
	$(BIN)/python -m pip install --disable-pip-version-check -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/digzsl run --config miniworld --out $(RUN)

# The multi-label method (docs/multilabel.md) on MiniWorld's scenes.
RUN_ML ?= runs/miniworld-multilabel
demo-multilabel: $(STAMP)
	$(BIN)/digzsl run --config miniworld_multilabel --out $(RUN_ML)

test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=25

# CPU benchmarks (figures in benchmarks/results/*.json and benchmarks/README.md); serve needs a demo run.
bench: $(STAMP)
	$(BIN)/python benchmarks/dct_step.py
	$(BIN)/python benchmarks/token_scaling.py
	$(BIN)/python benchmarks/generation.py
	test -f $(RUN)/classifier/weights.safetensors || $(MAKE) demo
	$(BIN)/python benchmarks/serve.py --run $(RUN)
	$(BIN)/python benchmarks/pipeline.py
	$(BIN)/python benchmarks/ablation.py
	$(BIN)/python benchmarks/determinism.py
	$(BIN)/python benchmarks/diagnose.py --run $(RUN)
	$(BIN)/python benchmarks/multilabel_ablation.py
	$(BIN)/python benchmarks/live.py --run $(RUN)
	$(BIN)/python benchmarks/multilabel_throughput.py
	$(BIN)/python benchmarks/zerodiff_ablation.py --keep
	$(BIN)/python benchmarks/zerodiff_scale.py
	$(BIN)/python benchmarks/gpu.py
	$(BIN)/python benchmarks/make_readme.py

# Reproduce the shipped MiniWorld foundation models from scratch (about 90 minutes on 2 CPU cores):
# render the world, pretrain CLIP + SD on its captioned corpus (Ray Train), train the oracle, measure.
# Results land in $(ASSETS_OUT); `make ship-assets` copies them into the package.
WORLD ?= build/miniworld-world
ASSETS_OUT ?= build/miniworld-assets
assets: $(STAMP)
	$(BIN)/digzsl miniworld make --out $(WORLD) --parts corpus,zsl --quiet
	$(BIN)/digzsl pretrain --data $(WORLD)/corpus --out $(ASSETS_OUT)
	$(BIN)/digzsl miniworld train-oracle --out $(ASSETS_OUT)/oracle
	$(BIN)/digzsl miniworld check --assets $(ASSETS_OUT) --world $(WORLD) --json $(ASSETS_OUT)/check.json --quiet

ship-assets:
	rm -rf digzsl_ray/assets/miniworld/sd digzsl_ray/assets/miniworld/clip digzsl_ray/assets/miniworld/oracle
	cp -r $(ASSETS_OUT)/sd $(ASSETS_OUT)/clip $(ASSETS_OUT)/oracle digzsl_ray/assets/miniworld/
	cp $(ASSETS_OUT)/check.json $(ASSETS_OUT)/pretrain.json digzsl_ray/assets/miniworld/

clean-run:
	rm -rf $(RUN)
