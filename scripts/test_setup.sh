#!/usr/bin/env bash
# What the whole test suite needs beyond the Python packages, then the command given (e.g. .venv/bin/pytest -q):
# a Python 3.8 agent venv where a 3.8 interpreter exists, an OpenSSH server, headless Chromium, and (as root)
# qemu-user-static, debootstrap and the emulated aarch64 device's root filesystem. Each is installed with apt-get
# where it is missing and apt-get exists; whatever cannot be installed leaves a warning and its tests skip.
# Shared by the README's test command and .ci/run. Run from anywhere; it works in the repository root.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_install() {  # apt_install WHAT PACKAGE...: install with apt-get (sudo -n when not root), or warn
  local what=$1
  shift
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo -n"
  { $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"; } \
    || echo "warning: could not install $*; $what will skip" >&2
}

# The device agent must run on Python 3.8 (JetPack 5). Where this machine has a 3.8 interpreter, give
# it the agent's own dependencies so the zipapp test runs on a real 3.8 instead of skipping.
py38=$(ls -d /root/.pyenv/versions/3.8*/bin/python3 2>/dev/null | head -n 1 || true)
if [ -n "$py38" ]; then
  "$py38" -m venv .venv38
  .venv38/bin/pip install --quiet "numpy<2" opencv-python-headless onnxruntime
  export EDGEKIT_PYTHON38="$PWD/.venv38/bin/python"
fi

# The fleet tests start a real OpenSSH server on 127.0.0.1 (tests/fleet/conftest.py); without sshd they skip.
if [ ! -x /usr/sbin/sshd ] && command -v apt-get >/dev/null 2>&1; then
  apt_install "the fleet tests" openssh-server
fi

# The HTML report's layout test (tests/test_report_browser.py) renders it in headless Chromium; without it, it skips.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  apt_install "the HTML report's browser test" chromium
fi

# The emulated ARM64 device (tests/fleet/test_arm64.py): qemu-user-static and debootstrap, the aarch64 binfmt
# handler, and the aarch64 Debian root filesystem cached outside the clone (~/.cache/edgekit/arm64-rootfs:
# about 6 min to build once, reused while its recipe is unchanged). It needs root; elsewhere those tests skip.
if [ "$(id -u)" = 0 ]; then
  if command -v apt-get >/dev/null 2>&1 && { [ ! -x /usr/bin/qemu-aarch64-static ] || [ ! -x /usr/sbin/debootstrap ]; }; then
    apt_install "the ARM64 tests" qemu-user-static debootstrap
  fi
  time .venv/bin/python scripts/arm64_device.py build \
    || echo "warning: the aarch64 root filesystem was not built; the ARM64 tests will try again" >&2
fi

if [ "$#" -gt 0 ]; then
  exec "$@"  # with EDGEKIT_PYTHON38 in its environment
fi
