#!/usr/bin/env bash
# The GPU check (python -m search.bench --only gpu) on a bare GPU machine.
#
#   scripts/gpu-check.sh fetch   # here, with PyPI: the wheels the GPU machine lacks, into .whl/
#   scripts/gpu-check.sh run     # there, from the carried tree (code + .whl/, < 64 MiB): no
#                                # registry, no install; writes BENCHMARKS.md's GPU section
#
# The GPU machine has Python 3.12, torch, torchvision, timm, transformers and safetensors
# (transformers brings huggingface-hub, regex, tqdm, pyyaml, numpy; torchvision brings pillow).
# Of open_clip_torch's requirements only ftfy is missing, and ftfy needs wcwidth. All three are
# pure-Python wheels (`--platform any`; wcwidth also ships a compiled x86_64 one, not taken):
# `run` unzips them into .whl/site (no pip needed) and puts that and the tree on PYTHONPATH.
# Versions: those the project's CPU environment runs its tests with.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=(open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4)
LIMIT_MIB=64

case "${1:-}" in
  fetch)
    mkdir -p .whl
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
      --platform any -d .whl "${WHEELS[@]}"   # pure-Python wheels: any CPU architecture
    wheels=$(du -cb .whl/*.whl | tail -1 | cut -f1)
    code=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
    total=$((wheels + code))
    echo "wheels $((wheels / 1024)) KiB + tracked tree $((code / 1024)) KiB = $((total / 1048576)) MiB (limit ${LIMIT_MIB} MiB)"
    if [ "$total" -ge $((LIMIT_MIB * 1048576)) ]; then echo "error: over ${LIMIT_MIB} MiB" >&2; exit 1; fi
    ;;
  run)
    shopt -s nullglob
    wheels=(.whl/*.whl)
    if [ ${#wheels[@]} -eq 0 ]; then
      echo "error: no wheels in .whl/: run 'scripts/gpu-check.sh fetch' where PyPI is reachable and carry .whl/" >&2
      exit 2
    fi
    mkdir -p .whl/site
    for w in "${wheels[@]}"; do python3 -m zipfile -e "$w" .whl/site; done
    PYTHONPATH="$PWD:$PWD/.whl/site${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 \
      python3 -m search.bench --only gpu --write BENCHMARKS.md "${@:2}"
    ;;
  *)
    echo "usage: scripts/gpu-check.sh fetch | run [--work DIR]" >&2
    exit 2
    ;;
esac
