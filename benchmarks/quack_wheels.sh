#!/usr/bin/env bash
# quack-kernels onto the GPU machine, which has no package registry and takes 64 MiB a call.
#
# Here (a machine with the registry), once:   bash benchmarks/quack_wheels.sh fetch
#   downloads quack-kernels 0.6.4 and its pinned nvidia-cutlass-dsl 4.6.2 (cu13 libraries) with the wheels the
#   GPU image lacks, and splits them into .whl/part1 and .whl/part2 (each under 60 MB, the big cu13 wheel cut in
#   exactly two pieces), with .whl/SHA256 to check the reassembled wheel.
# There, in two calls back to back on one warm machine (the first leaves its part in /tmp/whl):
#   run 1, carry [".whl/part1", ...]:   bash benchmarks/quack_wheels.sh stage
#   run 2, carry [".whl/part2", ...]:   bash benchmarks/quack_wheels.sh stage && bash benchmarks/quack_wheels.sh install
#   then, in that same command:  export PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/python_packages; python benchmarks/probe_quack.py
# `install` puts every wheel in one `pip install --target` (a second --upgrade call into the same folder wipes
# the shared nvidia_cutlass_dsl folder) and checks the reassembled wheel's sha256 first.
set -euo pipefail
cd "$(dirname "$0")/.."
W=.whl
case "${1:-}" in
  fetch)
    rm -rf "$W" && mkdir -p "$W/dl" "$W/part1" "$W/part2"
    grep -qx "/.whl/" "$(git rev-parse --git-path info/exclude)" || echo "/.whl/" >> "$(git rev-parse --git-path info/exclude)"
    plats=()
    for p in manylinux_2_17 manylinux_2_24 manylinux_2_27 manylinux_2_28 manylinux_2_31 manylinux_2_34 manylinux_2_35; do
      plats+=(--platform "${p}_x86_64")
    done
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${plats[@]}" \
      --platform manylinux2014_x86_64 -d "$W/dl" quack-kernels==0.6.4 nvidia-cutlass-dsl==4.6.2 \
      nvidia-cutlass-dsl-libs-base==4.6.2 nvidia-cutlass-dsl-libs-core==4.6.2 nvidia-cutlass-dsl-libs-cu13==4.6.2 \
      "apache-tvm-ffi>=0.1.6,<0.2" torch-c-dlpack-ext "nvidia-cuda-nvdisasm>=13.3,<14"
    big=$(ls "$W"/dl/nvidia_cutlass_dsl_libs_cu13-*.whl)
    (cd "$W/dl" && sha256sum "$(basename "$big")") > "$W/SHA256"
    half=$(( ($(stat -c %s "$big") + 1) / 2 ))
    split -b "$half" -d -a 1 "$big" "$W/cu13.part."  # exactly two pieces: .0 and .1
    mv "$W/cu13.part.0" "$W/SHA256" "$W/part1/" && mv "$W/cu13.part.1" "$W/part2/"
    cp "$W/part1/SHA256" "$W/part2/"
    find "$W/dl" -name '*.whl' ! -name 'nvidia_cutlass_dsl_libs_cu13-*' -exec mv {} "$W/part2/" \;
    rm -rf "$W/dl"
    du -sh "$W/part1" "$W/part2"
    ;;
  stage)
    mkdir -p /tmp/whl
    for p in "$W"/part1 "$W"/part2; do [ -d "$p" ] && cp "$p"/* /tmp/whl/; done
    ls /tmp/whl
    ;;
  install)
    cd /tmp/whl
    [ -f cu13.part.0 ] && [ -f cu13.part.1 ] || { echo "quack_wheels: stage part1 and part2 first (two calls)" >&2; exit 1; }
    name=$(awk '{print $2}' SHA256)
    cat cu13.part.0 cu13.part.1 > "$name" && sha256sum -c SHA256 && rm cu13.part.0 cu13.part.1
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site /tmp/whl/*.whl
    ;;
  *)
    echo "usage: bash benchmarks/quack_wheels.sh fetch|stage|install" >&2
    exit 2
    ;;
esac
