#!/usr/bin/env bash
# Builds llama.cpp's llama-perplexity, llama-bench and llama-quantize (CPU only) from the source
# that the PyPI source distribution of llama-cpp-python vendors, into a cache outside the clone,
# and prints the directory that holds them. ddp's tests compare against llama-perplexity; `bench
# --llama-cpp DIR` runs llama-bench.
#
#   tools/build_llama_cpp.sh            # prints e.g. /root/.cache/ddp-llama.cpp/0.3.36/bin
#
# Idempotent: with the binaries present it only prints the directory. A killed run resumes: the
# download is checked against its pinned hash, the source is unpacked atomically, and ninja
# rebuilds only what is missing. cmake and ninja come from PyPI wheels, installed into the cache.
# Environment: DDP_LLAMA_CPP (cache root, default ~/.cache/ddp-llama.cpp), DDP_LLAMA_CPP_JOBS
# (parallel compile jobs, default: the number of CPUs). Progress goes to stderr, the directory to
# stdout. Takes about 6 minutes on 2 cores the first time (measured: 357 s).
set -euo pipefail

# Pinned: llama-cpp-python 0.3.36 vendors llama.cpp with tools/perplexity and the `deci`
# architecture. Changing the version means changing the hash (pip's JSON API lists it).
VERSION=0.3.36
SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
TARGETS=(llama-perplexity llama-bench llama-quantize)

ROOT="${DDP_LLAMA_CPP:-$HOME/.cache/ddp-llama.cpp}/$VERSION"
BIN="$ROOT/bin"
say() { echo "build_llama_cpp: $*" >&2; }

have_all() {
  local t
  for t in "${TARGETS[@]}"; do [[ -x "$BIN/$t" ]] || return 1; done
}
if have_all; then
  echo "$BIN"
  exit 0
fi
mkdir -p "$ROOT"
# Two builds at once (two CI jobs on one machine) would write the same files: take turns.
if command -v flock >/dev/null; then
  exec 9>"$ROOT/.lock"
  flock 9
  if have_all; then echo "$BIN"; exit 0; fi
fi
PY="${PYTHON:-python3}"

# 1. The source distribution, resolved through PyPI's JSON API and checked against the pin.
SDIST="$ROOT/llama_cpp_python-$VERSION.tar.gz"
if [[ ! -f "$SDIST" ]] || ! echo "$SHA256  $SDIST" | sha256sum -c --status; then
  say "downloading llama-cpp-python $VERSION (76 MB)"
  "$PY" - "$VERSION" "$SHA256" "$SDIST" <<'EOF'
import hashlib, json, os, sys, urllib.parse, urllib.request
version, sha, out = sys.argv[1:]
index = "https://pypi.org/pypi/llama-cpp-python/json"
files = json.load(urllib.request.urlopen(index, timeout=60))["releases"].get(version, [])
sdists = [f for f in files if f["packagetype"] == "sdist"]
if not sdists:
    sys.exit(f"no source distribution of llama-cpp-python {version} on PyPI")
url = urllib.parse.urljoin(index, sdists[0]["url"])
tmp = out + ".part"
urllib.request.urlretrieve(url, tmp)
got = hashlib.sha256(open(tmp, "rb").read()).hexdigest()
if got != sha:
    sys.exit(f"{url}: sha256 {got}, expected {sha}")
os.replace(tmp, out)
EOF
fi

# 2. The vendored llama.cpp, unpacked into a temporary directory and then renamed.
SRC="$ROOT/src"
if [[ ! -f "$SRC/CMakeLists.txt" ]]; then
  say "unpacking vendor/llama.cpp"
  rm -rf "$SRC" "$SRC.part"
  mkdir -p "$SRC.part"
  tar xzf "$SDIST" -C "$SRC.part" --strip-components=3 "llama_cpp_python-$VERSION/vendor/llama.cpp"
  mv "$SRC.part" "$SRC"
fi

# 3. cmake and ninja as PyPI wheels, in the cache (--target bypasses PEP 668's
#    externally-managed check and touches no system Python).
TOOLS="$ROOT/tools"
# The wheels' entry points (bin/cmake is a Python wrapper, bin/ninja the binary) run with the
# wheels on PYTHONPATH.
export PATH="$TOOLS/bin:$PATH" PYTHONPATH="$TOOLS${PYTHONPATH:+:$PYTHONPATH}"
tools_work() { "$TOOLS/bin/cmake" --version && "$TOOLS/bin/ninja" --version; } >/dev/null 2>&1
if ! tools_work; then
  say "installing cmake and ninja from PyPI"
  rm -rf "$TOOLS"
  "$PY" -m pip install --quiet --target "$TOOLS" cmake ninja >&2
  tools_work || { say "cmake/ninja from PyPI do not run (see $TOOLS/bin)"; exit 1; }
fi
CMAKE="$TOOLS/bin/cmake"
NINJA="$TOOLS/bin/ninja"

# 4. Configure once (CPU only, static so that bin/ can be copied; no HTTPS, tests, examples,
#    server), then build the three tools. ninja resumes a killed build.
BUILD="$ROOT/build"
if [[ ! -f "$BUILD/build.ninja" ]]; then
  say "configuring in $BUILD"
  rm -rf "$BUILD"
  "$CMAKE" -S "$SRC" -B "$BUILD" -G Ninja -DCMAKE_MAKE_PROGRAM="$NINJA" \
    -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF >&2
fi
say "building ${TARGETS[*]} (about 6 minutes on 2 cores the first time)"
"$CMAKE" --build "$BUILD" --target "${TARGETS[@]}" -j "${DDP_LLAMA_CPP_JOBS:-$(nproc)}" >&2

# 5. Publish: bin/ only ever holds complete binaries (copy, then rename).
mkdir -p "$BIN"
for t in "${TARGETS[@]}"; do
  cp "$BUILD/bin/$t" "$BIN/.$t.part"
  mv "$BIN/.$t.part" "$BIN/$t"
done
echo "$BIN"
