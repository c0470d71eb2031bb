#!/usr/bin/env bash
# Builds cocoon's guest kernel (bzImage and ELF vmlinux) from Debian's linux-source-6.1 with our config
# fragment on top of `make tinyconfig`, and caches the result outside the checkout, keyed by the source
# package version and the fragment's hash. Prints the directory holding the kernel on its last line.
#
# Needs: linux-source-6.1 flex bison bc libelf-dev libssl-dev (installed by `make deps`).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
fragment="$here/kernel.config"
source_tar=/usr/src/linux-source-6.1.tar.xz
cache_root=${COCOON_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/cocoon}

if [ ! -r "$source_tar" ]; then
    echo "build-kernel: $source_tar is missing; install it with 'apt-get install linux-source-6.1' (or run 'make deps')" >&2
    exit 1
fi
src_version=$(dpkg-query -W -f='${Version}' linux-source-6.1)
# The key covers what changes the output: the source version, the fragment and the build recipe.
# Bump RECIPE when a change to this script changes the kernel it produces.
RECIPE=1
key=$( (echo "recipe $RECIPE"; cat "$fragment") | sha256sum | cut -c1-16)
out="$cache_root/kernel/$src_version-$key"

if [ -s "$out/bzImage" ] && [ -s "$out/vmlinux" ]; then
    echo "build-kernel: cached kernel $out" >&2
    echo "$out"
    exit 0
fi

jobs=$(nproc)
work=$(mktemp -d "${TMPDIR:-/tmp}/cocoon-kernel.XXXXXX")
trap 'rm -rf "$work"' EXIT

echo "build-kernel: [1/4] unpacking $source_tar ($src_version)" >&2
tar -xf "$source_tar" -C "$work"
ksrc="$work/linux-source-6.1"

echo "build-kernel: [2/4] tinyconfig + $(basename "$fragment")" >&2
make -C "$ksrc" ARCH=x86_64 tinyconfig >/dev/null
"$ksrc/scripts/kconfig/merge_config.sh" -m -O "$ksrc" "$ksrc/.config" "$fragment" >/dev/null
make -C "$ksrc" ARCH=x86_64 olddefconfig >/dev/null

# Every option the fragment asks for must have survived olddefconfig (a missing dependency drops it).
missing=0
while IFS= read -r line; do
    case "$line" in
        CONFIG_*=*)
            grep -qxF "$line" "$ksrc/.config" || { echo "build-kernel: option not applied: $line" >&2; missing=1; } ;;
        "# CONFIG_"*" is not set")
            opt=${line#\# }; opt=${opt%% *}
            if grep -q "^$opt=" "$ksrc/.config"; then echo "build-kernel: option not disabled: $opt" >&2; missing=1; fi ;;
    esac
done < "$fragment"
[ "$missing" = 0 ] || { echo "build-kernel: fix guest-image/kernel.config (add the missing dependencies)" >&2; exit 1; }

echo "build-kernel: [3/4] make -j$jobs bzImage (several minutes on 2 cores)" >&2
start=$(date +%s)
if ! make -C "$ksrc" ARCH=x86_64 -j"$jobs" bzImage > "$work/build.log" 2>&1; then
    tail -n 40 "$work/build.log" >&2
    echo "build-kernel: kernel build failed (full log above)" >&2
    exit 1
fi
echo "build-kernel: built in $(( $(date +%s) - start )) s" >&2

echo "build-kernel: [4/4] caching in $out" >&2
mkdir -p "$cache_root/kernel"
stage=$(mktemp -d "$cache_root/kernel/.stage.XXXXXX")
chmod 755 "$stage"
cp "$ksrc/arch/x86/boot/bzImage" "$stage/bzImage"
cp "$ksrc/vmlinux" "$stage/vmlinux"
cp "$ksrc/.config" "$stage/config"
rm -rf "$out"
mv "$stage" "$out"
echo "$out"
