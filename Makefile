# The two commands a newcomer needs: `make up` (install + run the embedded stack)
# and `make test` (install + run the test suite).
.PHONY: install up test lint

install:
	bash scripts/install.sh

up: install
	.venv/bin/medsched up

test: install
	.venv/bin/python -m pytest -q

lint:
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy .
	.venv/bin/python -m deploy.protogen --check
