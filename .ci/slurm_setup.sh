#!/usr/bin/env bash
# CI: install Debian's Slurm packages if missing, then start the single-node test cluster
# (launcher/slurm/testcluster.sh). Exit non-zero when either fails; .ci/run then skips the Slurm tests.
# Works as root, or as a user with password-less sudo; a user without either needs the packages
# preinstalled (the daemons themselves then run as that user).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for prog in slurmctld:slurmctld slurmd:slurmd sinfo:slurm-client sbatch:slurm-client; do
    command -v "${prog%%:*}" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "${prog%%:*}" >/dev/null 2>&1 \
        || missing+=("${prog##*:}")
done
if ((${#missing[@]})); then
    pkgs=(slurmctld slurmd slurm-client)
    if [[ $(id -u) == 0 ]]; then
        as_root=()
    elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        as_root=(sudo -n)
    else
        echo "error: Slurm is not installed (${missing[*]}) and installing needs root or password-less sudo" >&2
        exit 1
    fi
    echo "[slurm_setup] installing ${pkgs[*]}" >&2
    # No service may start from the packages' postinst scripts: the test cluster runs its own
    # daemons (and ports) from testcluster.sh. policy-rc.d exit 101 = "action forbidden".
    added_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' | "${as_root[@]}" tee /usr/sbin/policy-rc.d >/dev/null
        "${as_root[@]}" chmod 755 /usr/sbin/policy-rc.d
        added_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    rc=0
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null || rc=$?
    if ((rc == 0)); then
        "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${pkgs[@]}" >/dev/null || rc=$?
    fi
    if ((added_policy)); then "${as_root[@]}" rm -f /usr/sbin/policy-rc.d; fi
    if ((rc != 0)); then
        echo "error: apt-get install ${pkgs[*]} failed (exit $rc)" >&2
        exit 1
    fi
fi
export PATH="$PATH:/usr/sbin:/sbin"
exec bash launcher/slurm/testcluster.sh start
