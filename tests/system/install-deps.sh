#!/usr/bin/env bash
# Debian packages of the system tests (tests/test_system_*.py): an SSH server for the Ray
# on-prem cluster launcher, a single-node SLURM, and headless Chromium for the MLflow UI.
# Run by .ci/run before `make test`; needs root (or sudo). Without them those tests skip.
set -euo pipefail
PACKAGES=(openssh-server openssh-client rsync slurm-wlm munge chromium chromium-driver)
missing=()
for package in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "system test packages: all installed"
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
# Another apt on the machine holds the lock for a while: wait for it instead of failing.
APT=(-o DPkg::Lock::Timeout=600 -o Acquire::Retries=3)
$SUDO apt-get "${APT[@]}" update -qq
$SUDO apt-get "${APT[@]}" install -y -qq --no-install-recommends "${missing[@]}"
