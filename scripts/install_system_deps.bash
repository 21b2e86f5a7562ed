#!/usr/bin/env bash
# Installs the system packages the integration tests and benchmarks need: slurm-wlm
# and munge for the single-node Slurm cluster (scripts/slurm_single_node.bash), fio
# for the merge benchmark's write bound (benchmarks/bench_build.py), and a Java
# runtime for the local Spark tests when no `java` is on the PATH.  Only as
# root on Debian/Ubuntu with apt-get; anywhere else it says in one line that
# the Slurm tests (and the fio bound) will be skipped, and succeeds.  Reruns are cheap: dpkg -s
# answers in milliseconds, and apt-get update runs only when something is missing.
set -euo pipefail

PACKAGES=(slurm-wlm munge fio)

skip() {
    echo "install_system_deps: $1; the Slurm integration tests will be skipped" \
        "and the merge benchmark reports its fio bound as not measured" >&2
    exit 0
}

[ "$(id -u)" -eq 0 ] || skip "not root (uid $(id -u)), cannot install ${PACKAGES[*]}"
command -v apt-get >/dev/null 2>&1 || skip "no apt-get (not Debian/Ubuntu), cannot install ${PACKAGES[*]}"
command -v dpkg-query >/dev/null 2>&1 || skip "no dpkg-query, cannot check ${PACKAGES[*]}"

missing=()
for pkg in "${PACKAGES[@]}"; do
    # "install ok installed" is the only status that means the package is usable;
    # half-configured or config-files-only states need a reinstall.
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    [ "$status" = "install ok installed" ] || missing+=("$pkg")
done
command -v java >/dev/null 2>&1 || missing+=(default-jre-headless)   # pyspark needs a JVM
[ "${#missing[@]}" -eq 0 ] && exit 0

echo "install_system_deps: installing ${missing[*]} with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
# Package scripts must not start daemons here (there is usually no init system
# in a container, and scripts/slurm_single_node.bash starts them with its own
# configuration); policy-rc.d exit code 101 means "action forbidden".
policy=/usr/sbin/policy-rc.d
own_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    own_policy=1
fi
cleanup() { if [ "$own_policy" -eq 1 ]; then rm -f "$policy"; fi; }
trap cleanup EXIT

apt_install() {
    apt-get install -y -q --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}"
}
if ! apt_install >/tmp/install_system_deps.$$.log 2>&1; then
    # The usual reason is a stale or empty package list (fresh containers ship none).
    apt-get update -q >>/tmp/install_system_deps.$$.log 2>&1 || true
    if ! apt_install >>/tmp/install_system_deps.$$.log 2>&1; then
        echo "install_system_deps: apt-get install ${missing[*]} failed; last lines of the log:" >&2
        tail -n 20 /tmp/install_system_deps.$$.log >&2
        rm -f /tmp/install_system_deps.$$.log
        exit 1
    fi
fi
rm -f /tmp/install_system_deps.$$.log
echo "install_system_deps: installed ${missing[*]}" >&2
