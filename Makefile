# Two commands set everything up on a fresh clone: `make demo` and `make test`.
# Each creates .venv on first use. torch is installed first, pinned to the CPU build
# (torch==2.13.0 lies on this project's machines' disk); override TORCH for another build,
# e.g. `make test TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"`.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

PEERS := .peers-venv
PEERS_STAMP := $(PEERS)/.installed

.PHONY: demo test test-fast bench bench-peers clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/photongap demo --out demo-output

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

# The peers' benchmark: CAREamics' Noise2Void in its own environment, then bench_peers.py at
# 1 and 0.1 photons/px (about 50 min per level on a 2-core CPU). careamics is installed
# without its torchvision requirement (torchvision from PyPI needs another torch build than the
# pinned CPU one); an import-time stand-in takes its place: Noise2Void never calls it.
$(PEERS_STAMP): benchmarks/peers/requirements.txt
	$(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/python -m pip install -q --upgrade pip
	$(PEERS)/bin/python -m pip install -q $(TORCH)
	$(PEERS)/bin/python -m pip install -q --no-deps careamics==0.3.5
	$(PEERS)/bin/python -m pip install -q -r benchmarks/peers/requirements.txt $(TORCH)
	# The site folder is asked for in the recipe's shell: make would expand a variable for it
	# before the environment exists.
	cp -r benchmarks/peers/torchvision_stub/torchvision "$$($(PEERS)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/"
	touch $(PEERS_STAMP)

bench-peers: $(STAMP) $(PEERS_STAMP)
	$(PY) benchmarks/bench_peers.py --level 1 --budget 20
	$(PY) benchmarks/bench_peers.py --level 0.1 --budget 20

clean:
	rm -rf $(VENV) $(PEERS) demo-output bench-output
