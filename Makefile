# `make demo` and `make test` install what they need: Debian packages via
# scripts/ensure-system.sh (as root), then a virtualenv in .venv.

PY ?= python3
VENV = .venv

.PHONY: system venv test soak demo bench bench-quick bench-control bench-bazel bench-backend bench-worker clean

# Cheap when everything is there, so it runs every time.
system:
	PY='$(PY)' scripts/ensure-system.sh

venv: $(VENV)/.stamp

# Order-only on `system`: checked first, but never forces a re-install.
# The stamp re-installs whenever pyproject.toml changes.
$(VENV)/.stamp: pyproject.toml | system
	test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -e '.[test,bench]'
	touch $@

# Everything on our kernel transport (the default), then every real-mount test
# again on the pyfuse3 transport: both must pass.
test: venv
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)
	SANDBOXFS_TRANSPORT=pyfuse3 $(VENV)/bin/python -m pytest tests/fuse $(PYTEST_ARGS)

# The long versions of the reliability suites (docs/reliability.md): the same
# tests with SANDBOXFS_SOAK=1, which scales them up (e.g. 1,000,000 random operations).
soak: venv
	SANDBOXFS_SOAK=1 $(VENV)/bin/python -m pytest -x $(SOAK_TESTS) $(PYTEST_ARGS)

SOAK_TESTS = tests/fuse/test_integrity.py tests/fuse/test_load.py

demo: venv
	$(VENV)/bin/python demo/demo.py

# The benchmark harness (docs/benchmarks.md). Needs root and /dev/fuse (it mounts
# sandboxfs and bindfs); `make bench` rewrites docs/benchmarks.md and docs/plots/.
bench: venv
	$(VENV)/bin/python -m bench $(BENCH_ARGS)

bench-quick: venv
	$(VENV)/bin/python -m bench --quick $(BENCH_ARGS)

# Only the control-socket scenarios (what bench/control_speed.py used to measure).
bench-control: venv
	$(VENV)/bin/python -m bench --only setup,scale --no-report $(BENCH_ARGS)

# Only the Bazel 2.1 clean builds (local, processwrapper, linux-sandbox, linux-sandbox +
# sandboxfs; Bazel from npm, cached in ~/.cache/sandboxfs-tests). Rewrites only the Bazel
# section and its target line of docs/benchmarks.md; the other sections are kept as they are.
bench-bazel: venv
	$(VENV)/bin/python -m bench --only bazel $(BENCH_ARGS)

# Only the sandbox backend (`sandboxfs serve`, issue 16): Create + Destroy of a 16,000-file tree
# first and when known, against forests of the same files, and one gcc action with 300 headers
# per strategy. Rewrites only its section and target line of docs/benchmarks.md, and
# docs/plots/backend.png.
bench-backend: venv
	$(VENV)/bin/python -m bench --only backend $(BENCH_ARGS)

# Only the remote worker (`sandboxfs worker` against a throwaway BuildGrid + PostgreSQL, which
# tests/engine.py starts): lazy sandboxes (--no-prefetch and default prefetch) against an eager
# download of a 10,000-file input root reading 5/50/100 % of it, and a trivial action's overhead.
# Rewrites only its section and target line of docs/benchmarks.md, and docs/plots/worker.png.
bench-worker: venv
	$(VENV)/bin/python -m bench --only worker $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
