# The README's two commands are `make demo` (set up, then run the main job) and `make test`
# (set up, then run the whole test suite). Everything else here is a convenience.
.PHONY: setup demo test test-fast lock

VENV_BIN := .venv/bin
PYTEST_ARGS ?=

setup:
	bash scripts/setup.sh

demo: setup
	bash scripts/demo.sh

test: setup
	$(VENV_BIN)/python -m pytest -n 2 --dist worksteal $(PYTEST_ARGS)

test-fast: setup
	$(VENV_BIN)/python -m pytest -n 2 --dist worksteal -m "not slow" $(PYTEST_ARGS)

# Re-pin every dependency from a full install (commit the result).
lock: setup
	{ echo "# Exact versions for every extra (pip install -c requirements/constraints.txt ...)."; \
	  echo "# Regenerate with: make lock   (pip freeze of a full [train,triton,dev] install)"; \
	  $(VENV_BIN)/python -m pip freeze --exclude-editable | grep -v -i '^avserve'; } > requirements/constraints.txt
