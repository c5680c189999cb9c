#!/usr/bin/env sh
# Install this bundle for the current user (no root, no network):
#   ./install-linux.sh [PREFIX]      (default PREFIX: ~/.local)
# Copies the bundle to PREFIX/opt/geolocsft, links PREFIX/bin/geolocsft, and adds the menu entry
# and icon. Remove with: rm -rf PREFIX/opt/geolocsft PREFIX/bin/geolocsft
#   PREFIX/share/applications/geolocsft.desktop PREFIX/share/icons/hicolor/scalable/apps/geolocsft.svg
set -eu
here="$(cd "$(dirname "$0")" && pwd)"
prefix="${1:-$HOME/.local}"
dest="$prefix/opt/geolocsft"
if [ "$here" != "$dest" ]; then
  if [ -e "$dest" ]; then
    printf '%s exists: replace it? [y/N] ' "$dest"
    read -r answer
    [ "$answer" = y ] || [ "$answer" = Y ] || { echo "nothing changed"; exit 1; }
    rm -rf "$dest.old" && mv "$dest" "$dest.old"
  fi
  mkdir -p "$prefix/opt"
  cp -a "$here" "$dest.tmp" && mv "$dest.tmp" "$dest"
  rm -rf "$dest.old"
fi
share="$dest/_internal/share/geolocsft/linux"
mkdir -p "$prefix/bin" "$prefix/share/applications" "$prefix/share/icons/hicolor/scalable/apps"
ln -sf "$dest/geolocsft" "$prefix/bin/geolocsft"
cp "$share/geolocsft.svg" "$prefix/share/icons/hicolor/scalable/apps/geolocsft.svg"
sed -e "s|^Exec=geolocsft |Exec=\"$dest/geolocsft\" |" -e "s|^TryExec=.*|TryExec=$dest/geolocsft|" \
  "$share/geolocsft.desktop" > "$prefix/share/applications/geolocsft.desktop.tmp"
mv "$prefix/share/applications/geolocsft.desktop.tmp" "$prefix/share/applications/geolocsft.desktop"
command -v update-desktop-database >/dev/null && update-desktop-database "$prefix/share/applications" || true
echo "installed in $dest; start it from the menu or with: $prefix/bin/geolocsft"
