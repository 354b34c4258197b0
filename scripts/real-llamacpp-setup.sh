#!/usr/bin/env bash
# Sets up the real llama.cpp tier, offline after the package downloads, outside the tracked
# files: llama-cpp-python's OpenAI server (pinned; pip builds llama.cpp from source, several
# minutes on 2 cores) in $DIR/llamacpp-venv, and a tiny random GGUF in $DIR/tiny-llama.gguf.
# With --with-llama-server it also builds llama.cpp's own `llama-server` from the llama.cpp
# source shipped in the same llama-cpp-python release, into $DIR/llama-server/bin.
# Idempotent: what is there already is kept.
#
#   usage: scripts/real-llamacpp-setup.sh DIR [--with-llama-server]
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=$(realpath -m "${1:?usage: $0 DIR [--with-llama-server]}")
VENV=$DIR/llamacpp-venv
LLAMA_CPP_PYTHON=0.3.36
GGUF=0.19.0
PYTHON=${PYTHON:-python3}
JOBS=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
mkdir -p "$DIR"

t0=$(date +%s)
if ! "$VENV/bin/python" -c 'import llama_cpp.server, gguf, numpy' 2>/dev/null; then
    echo "== installing llama-cpp-python $LLAMA_CPP_PYTHON (builds llama.cpp: several minutes)"
    "$PYTHON" -m venv "$VENV"
    # LLAVA_BUILD=OFF: no multimodal library (46 more files to compile); llama_cpp imports
    # it only for multimodal chat formats.
    CMAKE_ARGS="-DLLAVA_BUILD=OFF ${CMAKE_ARGS:-}" CMAKE_BUILD_PARALLEL_LEVEL=$JOBS \
        "$VENV/bin/pip" install --no-cache-dir \
        "llama-cpp-python[server]==$LLAMA_CPP_PYTHON" "gguf==$GGUF" "numpy<3"
    echo "== installed in $(( $(date +%s) - t0 )) s"
fi
if [ ! -s "$DIR/tiny-llama.gguf" ]; then
    "$VENV/bin/python" scripts/make-tiny-gguf.py "$DIR/tiny-llama.gguf"
fi

if [ "${2:-}" = "--with-llama-server" ] && [ ! -x "$DIR/llama-server/bin/llama-server" ]; then
    t1=$(date +%s)
    echo "== building llama-server from llama-cpp-python $LLAMA_CPP_PYTHON's llama.cpp source"
    "$VENV/bin/pip" install --no-cache-dir cmake ninja
    SRC=$DIR/llama-server/src
    rm -rf "$SRC" && mkdir -p "$SRC"
    "$VENV/bin/pip" download --no-deps --no-binary :all: -d "$SRC" "llama-cpp-python==$LLAMA_CPP_PYTHON"
    tar -xzf "$SRC"/llama_cpp_python-*.tar.gz -C "$SRC"
    LLAMA=$(echo "$SRC"/llama_cpp_python-*/vendor/llama.cpp)
    PATH=$VENV/bin:$PATH cmake -S "$LLAMA" -B "$SRC/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON \
        -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DBUILD_SHARED_LIBS=OFF
    PATH=$VENV/bin:$PATH cmake --build "$SRC/build" --target llama-server -j "$JOBS"
    mkdir -p "$DIR/llama-server/bin"
    cp "$SRC/build/bin/llama-server" "$DIR/llama-server/bin/"
    echo "== built llama-server in $(( $(date +%s) - t1 )) s"
fi
echo "== llama.cpp tier ready under $DIR"
