#!/usr/bin/env bash
# Builds the proxy-wasm host that Apache APISIX's `wasm` plugin runs on
# (api7's wasm-nginx-module: an nginx module plus the `resty.proxy-wasm` Lua
# library) for Debian's nginx, once, into a prefix outside the repository:
#
#   ${GRAYLANE_APISIX_HOST:-$HOME/.cache/graylane/apisix-host}
#
# A second run finds the stamp of a finished build (keyed on this script, the
# patches, the Lua shim, the vendored tarballs and the installed nginx and lua
# module versions) and does nothing. Prints the build time.
#
# Parts, none downloaded from a source host:
# - Debian: nginx, nginx-dev (its configured source tree, to build a dynamic
#   module), libnginx-mod-http-lua (lua-nginx-module 0.10.23: the module
#   resolves its ngx_http_lua_ffi_* symbols at run time), lua-resty-core,
#   lua-resty-lrucache, lua-cjson. Installed with apt-get when missing.
# - PyPI: the wheel wasmtime==0.38.0, for its _libwasmtime.so (the wasmtime C
#   API the module links against), fetched with `pip download`.
# - ../shared/vendor (found in an ancestor folder of the repository, or
#   GRAYLANE_VENDOR): wasm-nginx-module, lua-resty-http and the C headers of
#   wasmtime's C API 0.38.1. Unpacked into the prefix, never into the
#   repository; our patches (scripts/apisix-host/patches/) are applied there.
#
# Layout of the prefix:
#   modules/ngx_http_wasm_module.so   the nginx module (rpath to wasmtime/lib)
#   wasmtime/lib/libwasmtime.so       wasmtime C API 0.38.0 (from the wheel)
#   lua/resty/                        proxy-wasm.lua, lua-resty-http, string.lua shim
#   build.stamp                       written last, when everything is in place
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
prefix=${GRAYLANE_APISIX_HOST:-$HOME/.cache/graylane/apisix-host}
started=$(date +%s)

say() { printf 'apisix-host: %s\n' "$*"; }
die() { printf 'apisix-host: FAILED: %s\n' "$*" >&2; exit 1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# --- the vendored sources -------------------------------------------------
find_vendor() {
    if [ -n "${GRAYLANE_VENDOR:-}" ]; then
        echo "$GRAYLANE_VENDOR"
        return
    fi
    local dir=$root
    while [ "$dir" != / ]; do
        dir=$(dirname "$dir")
        if [ -f "$dir/shared/vendor/wasm-nginx-module.tar.gz" ]; then
            echo "$dir/shared/vendor"
            return
        fi
    done
    die "no shared/vendor/wasm-nginx-module.tar.gz in any folder above $root (set GRAYLANE_VENDOR)"
}
vendor=$(find_vendor)
for tarball in wasm-nginx-module.tar.gz lua-resty-http.tar.gz wasmtime-c-api-0.38.1-include.tar.gz; do
    [ -f "$vendor/$tarball" ] || die "missing $vendor/$tarball"
done

# --- Debian packages ------------------------------------------------------
packages=(nginx nginx-dev libnginx-mod-http-lua lua-resty-core lua-resty-lrucache lua-cjson)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep 'install ok installed' >/dev/null \
        || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing Debian packages: ${missing[*]}"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null \
        || die "apt-get install ${missing[*]}"
fi
[ -f /usr/share/nginx/src/conf_flags ] || die "nginx-dev has no /usr/share/nginx/src/conf_flags"

# --- already built? -------------------------------------------------------
stamp_key() {
    {
        sha256sum "$here/build.sh"
        find "$here/patches" "$here/lua" -type f -print0 | sort -z | xargs -0 sha256sum
        sha256sum "$vendor/wasm-nginx-module.tar.gz" "$vendor/lua-resty-http.tar.gz" \
            "$vendor/wasmtime-c-api-0.38.1-include.tar.gz"
        dpkg-query -W -f='${Package} ${Version}\n' nginx nginx-dev libnginx-mod-http-lua
    } | sed "s#  $root/#  #; s#  $vendor/#  vendor/#" | sha256sum | cut -d' ' -f1
}
key=$(stamp_key)
if [ -f "$prefix/build.stamp" ] && [ "$(cat "$prefix/build.stamp")" = "$key" ] \
    && [ -f "$prefix/modules/ngx_http_wasm_module.so" ]; then
    say "already built in $prefix (stamp $key); nothing to do ($(($(date +%s) - started)) s)"
    exit 0
fi
say "building into $prefix"
rm -f "$prefix/build.stamp"
mkdir -p "$prefix"

# --- wasmtime C API 0.38: the library from PyPI's wheel, headers vendored --
downloads=$prefix/downloads
mkdir -p "$downloads"
wheel=$(find "$downloads" -maxdepth 1 -name 'wasmtime-0.38.0-*.whl' -print -quit)
if [ -z "$wheel" ]; then
    say "pip download wasmtime==0.38.0"
    python3 -m pip download -q --no-deps --only-binary=:all: -d "$downloads" 'wasmtime==0.38.0' \
        || die "pip download wasmtime==0.38.0 (PyPI must be reachable)"
    wheel=$(find "$downloads" -maxdepth 1 -name 'wasmtime-0.38.0-*.whl' -print -quit)
    [ -n "$wheel" ] || die "pip downloaded no wasmtime-0.38.0 wheel into $downloads"
fi
rm -rf "$prefix/wasmtime"
mkdir -p "$prefix/wasmtime/lib"
python3 - "$wheel" "$prefix/wasmtime/lib/libwasmtime.so" <<'PY' || die "no _libwasmtime.so in $wheel"
import sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    data = z.read("wasmtime/linux-x86_64/_libwasmtime.so")
with open(out, "wb") as f:
    f.write(data)
PY
tar xzf "$vendor/wasmtime-c-api-0.38.1-include.tar.gz" -C "$prefix/wasmtime" --strip-components=1

# --- sources: wasm-nginx-module (patched) and lua-resty-http --------------
src=$prefix/src
rm -rf "$src"
mkdir -p "$src"
tar xzf "$vendor/wasm-nginx-module.tar.gz" -C "$src"
tar xzf "$vendor/lua-resty-http.tar.gz" -C "$src"
module=$src/wasm-nginx-module
[ -f "$module/config" ] || die "wasm-nginx-module.tar.gz did not unpack into wasm-nginx-module/"
for patch in "$here"/patches/*.patch; do
    say "applying $(basename "$patch")"
    patch -s -p1 -d "$module" < "$patch" || die "patch $(basename "$patch") does not apply"
done
# The module's config expects the C API in wasmtime-c-api/{include,lib}.
ln -s "$prefix/wasmtime" "$module/wasmtime-c-api"

# --- the dynamic module, against the installed nginx's configuration ------
build=$prefix/build
rm -rf "$build"
cp -r /usr/share/nginx/src "$build"
# shellcheck disable=SC1091
. "$build/conf_flags"   # NGX_CONF_FLAGS=( ... ), the installed nginx's flags
say "configuring nginx $(dpkg-query -W -f='${Version}' nginx) with the module"
(
    cd "$build"
    ./configure "${NGX_CONF_FLAGS[@]}" \
        --with-cc-opt='-g -O2 -fPIC' \
        --with-ld-opt="-Wl,-rpath,$prefix/wasmtime/lib" \
        --add-dynamic-module="$module" > "$prefix/configure.log" 2>&1
) || die "nginx configure (see $prefix/configure.log)"
(cd "$build" && make -f objs/Makefile modules > "$prefix/make.log" 2>&1) \
    || die "make modules (see $prefix/make.log)"
mkdir -p "$prefix/modules"
cp "$build/objs/ngx_http_wasm_module.so" "$prefix/modules/"

# --- Lua: resty.proxy-wasm, lua-resty-http, the resty.string shim ---------
rm -rf "$prefix/lua"
mkdir -p "$prefix/lua/resty"
cp "$module/lib/resty/proxy-wasm.lua" "$prefix/lua/resty/"
cp "$src"/lua-resty-http/lib/resty/http*.lua "$prefix/lua/resty/"
cp "$here/lua/resty/string.lua" "$prefix/lua/resty/"

# --- check: nginx loads the three modules and a wasm_vm directive ---------
check=$prefix/check
rm -rf "$check"
mkdir -p "$check/logs"
cat > "$check/nginx.conf" <<EOF
load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;
load_module $prefix/modules/ngx_http_wasm_module.so;
error_log $check/logs/error.log;
pid $check/nginx.pid;
events {}
http { wasm_vm wasmtime; }
EOF
nginx -t -q -p "$check" -c "$check/nginx.conf" > "$check/logs/test.log" 2>&1 \
    || die "nginx -t with the module: $(cat "$check/logs/test.log")"
ldd "$prefix/modules/ngx_http_wasm_module.so" | grep "$prefix/wasmtime/lib/libwasmtime.so" >/dev/null \
    || die "the module does not link $prefix/wasmtime/lib/libwasmtime.so: $(ldd "$prefix/modules/ngx_http_wasm_module.so")"

echo "$key" > "$prefix/build.stamp"
say "built in $(($(date +%s) - started)) s: $prefix/modules/ngx_http_wasm_module.so"
