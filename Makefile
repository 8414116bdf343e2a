# The two commands of the README:  `make serve`  and  `make test`.
.PHONY: setup tools lint format serve eval-demo test test-fast model report adapters adapters-report effort-report router bench bench-router clean
PY := .venv/bin/python

setup:
	bash scripts/setup.sh

# The OpenAI-compatible server on the embedded model and every adapter in adapters/ (port 8000).
serve: setup
	.venv/bin/effort serve $(ARGS)

# A quick look at the evaluator (budgets enforced by vLLM).
eval-demo: setup
	.venv/bin/effort eval --n 60 --settings full,frac:0.5,frac:0.25,none --out eval-out

# Tools of the deploy tests (Prometheus, promtool; dclint into .tools/), installed when missing.
tools:
	bash scripts/tools.sh

# Lint and format check first (fails in seconds), then the whole suite.
test: setup tools lint
	$(PY) -m pytest -q -rs

# ruff: lint and format check (line length 119, pyproject.toml); `make format` rewrites the tree.
lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: setup
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

# Rebuild the embedded model and its published report (~40 min on 2 cores): stage 1 from scratch
# (6M tokens, one re-check pass), stage 2 continued from it (2.5M tokens: two re-check passes and
# partial re-checks, so correct reasoning comes in every length e1 needs), stage 3 continued from
# that (3M tokens: the terse chain on short questions, a shorter correct path on easy prompts).
BASE_STAGE2 := --recheck-passes 2 --styles verbose=0.5,partial=0.16,plain=0.14,compact=0.1,none=0.04,cut=0.06 \
	--tokens 2.5e6 --lr 1e-3 --curriculum-start 16 --curriculum-until 0 --minutes 9 --seed 3
BASE_STAGE3 := --recheck-passes 2 --styles verbose=0.44,partial=0.16,plain=0.12,terse=0.15,compact=0.03,none=0.04,cut=0.06 \
	--tokens 3e6 --lr 1e-3 --curriculum-start 16 --curriculum-until 0 --minutes 20 --seed 3
model: setup
	.venv/bin/effort train base --force --out runs/base-stage1
	.venv/bin/effort train base --force --init-from runs/base-stage1 --out runs/base-stage2 $(BASE_STAGE2)
	.venv/bin/effort train base --force --init-from runs/base-stage2 --out models/effort-tiny $(BASE_STAGE3)
	$(MAKE) report

report: setup
	.venv/bin/effort report base --update-manifest

# Train the shipped adapters for the embedded model (each run <= 20 min on 2 cores), then the
# comparison table and plot of the README (adapters/report/).
adapters: setup
	.venv/bin/effort train dler --force --lr-schedule linear
	.venv/bin/effort train dler-da --force --lr-schedule linear
	.venv/bin/effort train e1 --force --max-steps 26 --minutes 19
	.venv/bin/effort merge --adapter dler --force
	$(MAKE) adapters-report

adapters-report: setup
	.venv/bin/effort eval --n 500 --adapters base,dler,dler-da,dler-merged,e1 --out adapters/report \
		--router none --settings full,base@frac:0.25,base@frac:0.5,base@frac:0.75,e1@control:0.25,e1@control:0.5,e1@control:0.75

# The README's effort table and curve (adapters/effort-report/, ~10 min on 2 cores): what the default
# server does at each effort (`server`: the base model's name, any adapter), the base alone under plain
# budget forcing at the same fractions of its length, and each adapter asked for by name.
ES := base@full,base@none,base@route:0.25,base@route:0.5,base@route:0.75,base@auto
ES := $(ES),base@effort:0,base@effort:0.1,base@effort:0.25,base@effort:0.5,base@effort:0.75,base@effort:1
ES := $(ES),dler@effort:0.1,dler@effort:0.25,dler@effort:0.5,dler@effort:0.75,dler@effort:1
ES := $(ES),dler-da@effort:0.1,dler-da@effort:0.25,dler-da@effort:0.5,dler-da@effort:0.75,dler-da@effort:1
ES := $(ES),dler-merged@effort:0.1,dler-merged@effort:0.25,dler-merged@effort:0.5,dler-merged@effort:0.75
ES := $(ES),dler-merged@effort:1,e1@effort:0.1,e1@effort:0.25,e1@effort:0.5,e1@effort:0.75,e1@effort:1
effort-report: setup
	.venv/bin/effort eval --n 500 --adapters base,dler,dler-da,dler-merged,e1 --out adapters/effort-report \
		--settings $(ES)

# The difficulty router (adapters/router/) from measured records, then its report on the test split:
#  1. every route model at full effort (and no thinking) on dev prompts -> length heads;
#  2. each model at fractions of its own length, as routes run (budgets from stage 1's predicted lengths) -> route heads;
#  3. calibrate the auto margin on other dev prompts (seed 1); 4. auto vs fixed efforts on test.
# Each stage is a file target: an interrupted run picks up where it stopped (~20 min on 2 cores).
ROUTES := base,dler,e1
EFFORTS := route:0.25,route:0.5,route:0.75
router: setup adapters/router/report/results.json

runs/router/fit-full/results.json:
	.venv/bin/effort eval --adapters $(ROUTES) --settings full,none --split dev --n 600 --router none --out $(@D)
runs/router/stage1/router.json: runs/router/fit-full/results.json
	.venv/bin/effort router fit --records $< --out $(@D)
runs/router/fit-effort/results.json: runs/router/stage1/router.json
	.venv/bin/effort eval --adapters $(ROUTES) --settings $(EFFORTS) --split dev --n 600 --router $(<D) --out $(@D)
runs/router/calib/results.json: runs/router/fit-effort/results.json
	.venv/bin/effort eval --adapters $(ROUTES) --settings full,none,$(EFFORTS) --split dev --seed 1 --n 400 \
		--router runs/router/stage1 --out $(@D)
adapters/router/router.json: runs/router/calib/results.json
	.venv/bin/effort router fit --records runs/router/fit-full/results.json,runs/router/fit-effort/results.json --out $(@D)
	.venv/bin/effort router calibrate --router $(@D) --records $<
adapters/router/report/results.json: adapters/router/router.json
	.venv/bin/effort eval --adapters $(ROUTES) --settings full,$(EFFORTS),base@auto --split test --n 500 \
		--router adapters/router --out $(@D)

bench-router: setup
	.venv/bin/effort bench router

bench: setup
	.venv/bin/effort bench serve --out bench-serve.md

clean:
	rm -rf eval-out .pytest_cache
