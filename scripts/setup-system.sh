#!/usr/bin/env bash
# Debian packages that headless Qt/napari rendering needs: Xvfb (pytest-xvfb starts it)
# and the xcb libraries Qt's xcb platform plugin loads. Installs them only when one is
# missing; needs root or sudo.
set -euo pipefail
pkgs="xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxkbcommon-x11-0 libxcb-cursor0 libegl1 libgl1"
missing=0
for p in $pkgs; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing=1
done
[ "$missing" -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "setup-system: no apt-get; install these packages yourself: $pkgs" >&2
  exit 0
fi
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "setup-system: installing $pkgs"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxkbcommon-x11-0 libxcb-cursor0 libegl1 libgl1 >/dev/null
