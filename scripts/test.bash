#!/usr/bin/env bash
# The README's test command: install the package with its test extras into the
# current Python, install the system packages the integration tests need (when
# root on Debian/Ubuntu), then run the whole suite, slow and integration tests
# included.  Extra arguments go to pytest (e.g. `-k rpc`, `-x`).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

"$PYTHON" -m pip install --quiet --disable-pip-version-check -e '.[test,spark,demo]'

# The torch k-means backend is tested on torch's CPU device, so the test environment
# gets the CPU-only torch build: the default PyPI wheel drags in several GB of CUDA
# libraries.  TORCH_CPU_SPEC / TORCH_CPU_INDEX choose another build or index;
# TORCH_CPU_SPEC= (empty) skips this, and the torch tests then skip with a reason.
TORCH_CPU_SPEC=${TORCH_CPU_SPEC-torch==2.13.0+cpu}
TORCH_CPU_INDEX=${TORCH_CPU_INDEX-https://download.pytorch.org/whl/cpu}
if [ -n "$TORCH_CPU_SPEC" ] && ! "$PYTHON" -c 'import torch' 2>/dev/null; then
    "$PYTHON" -m pip install --quiet --disable-pip-version-check \
        ${TORCH_CPU_INDEX:+--extra-index-url "$TORCH_CPU_INDEX"} "$TORCH_CPU_SPEC" \
        || echo "warning: could not install $TORCH_CPU_SPEC; the torch backend tests will skip" >&2
fi
if [ -x scripts/install_system_deps.bash ]; then
    bash scripts/install_system_deps.bash
fi

# faiss's idle OpenMP threads spin by default and steal the cores that the
# test's own server processes need; passive waiting made every variant faster when
# servers and client share cores (docs/FAISS_FACTS.md).
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
set +e
"$PYTHON" -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "pytest collected no tests: treating as a failure" >&2
    exit 1
fi
exit "$rc"
