# The two commands of the README:  `make serve`  and  `make test`.
.PHONY: setup serve eval-demo test test-fast model report adapters adapters-report bench clean
PY := .venv/bin/python

setup:
	bash scripts/setup.sh

# The OpenAI-compatible server on the embedded model and every adapter in adapters/ (port 8000).
serve: setup
	.venv/bin/effort serve $(ARGS)

# A quick look at the evaluator (budgets enforced by vLLM).
eval-demo: setup
	.venv/bin/effort eval --n 60 --settings full,frac:0.5,frac:0.25,none --out eval-out

test: setup
	$(PY) -m pytest -q -rs

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

# Rebuild the embedded model and its published report: from scratch, 6M tokens (~17 min on 2 cores).
model: setup
	.venv/bin/effort train base --force --out models/effort-tiny
	$(MAKE) report

report: setup
	.venv/bin/effort report base --update-manifest

# Train the shipped adapters for the embedded model (each run <= 20 min on 2 cores), then the
# comparison table and plot of the README (adapters/report/).
adapters: setup
	.venv/bin/effort train dler --force
	.venv/bin/effort train dler-da --force
	.venv/bin/effort train e1 --force --max-steps 240
	.venv/bin/effort merge --adapter dler --force
	$(MAKE) adapters-report

adapters-report: setup
	.venv/bin/effort eval --n 500 --adapters base,dler,dler-da,dler-merged,e1 --out adapters/report \
		--settings full,base@frac:0.25,base@frac:0.5,base@frac:0.75,e1@effort:0.25,e1@effort:0.5,e1@effort:0.75

bench: setup
	.venv/bin/effort bench serve --out bench-serve.md

clean:
	rm -rf eval-out .pytest_cache
