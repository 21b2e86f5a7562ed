#!/usr/bin/env bash
# The README's test command: install the package with its test extras into the
# current Python, install the system packages the integration tests need (when
# root on Debian/Ubuntu), then run the whole suite, slow and integration tests
# included.  Extra arguments go to pytest (e.g. `-k rpc`, `-x`).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

"$PYTHON" -m pip install --quiet --disable-pip-version-check -e '.[test,spark,demo]'
if [ -x scripts/install_system_deps.bash ]; then
    bash scripts/install_system_deps.bash
fi

# faiss's idle OpenMP threads spin by default and steal the cores that the
# test's own server processes need (see FAISS notes); passive waiting is faster here.
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
