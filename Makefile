# The two commands of the README:  `make serve`  and  `make test`.
.PHONY: setup serve test test-fast model report clean
PY := .venv/bin/python

setup:
	bash scripts/setup.sh

# Until the serving issue lands: evaluate the embedded model (budgets enforced by vLLM).
serve: setup
	.venv/bin/effort eval --n 60 --settings full,frac:0.5,frac:0.25,none --out eval-out

test: setup
	$(PY) -m pytest -q -rs

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

# Rebuild the embedded model (≈19 min on 2 cores) and its published report.
model: setup
	.venv/bin/effort train base --force
	$(MAKE) report

report: setup
	.venv/bin/effort report base --update-manifest

clean:
	rm -rf eval-out .pytest_cache
