#!/usr/bin/env bash
# Debian's Chromium and ChromeDriver for the console's browser tests: installed with apt-get
# when missing (as root, or with sudo), then their versions printed. Browser downloads are
# impossible on our machines; Debian's packages are what the tests drive.
set -euo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  /usr/bin/chromium --version
  exit 0
fi
echo "chromium.sh: installing Debian's chromium and chromium-driver" >&2
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q >/dev/null || { echo "chromium.sh: apt-get update failed" >&2; exit 1; }
$SUDO apt-get install -y -q chromium chromium-driver >/dev/null \
  || { echo "chromium.sh: could not install chromium and chromium-driver" >&2; exit 1; }
/usr/bin/chromium --version
