# The two commands of the README:  `make serve`  and  `make test`.
.PHONY: setup serve eval-demo test test-fast model report bench clean
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

# Rebuild the embedded model and its published report: stage 1 from scratch with the length
# curriculum (19 min), stage 2 continues at full length (16 min) — 35 min on 2 cores.
model: setup
	.venv/bin/effort train base --force --out models/effort-tiny.stage1
	.venv/bin/effort train base --force --init-from models/effort-tiny.stage1 --minutes 16 --lr 1.5e-3 \
		--curriculum-start 16 --seed 1 --out models/effort-tiny
	rm -rf models/effort-tiny.stage1
	$(MAKE) report

report: setup
	.venv/bin/effort report base --update-manifest

bench: setup
	.venv/bin/effort bench serve --out bench-serve.md

clean:
	rm -rf eval-out .pytest_cache
