#!/usr/bin/env bash
# Wheels the GPU device check needs that the lent machine's image lacks (it has torch, transformers,
# aiohttp, httpx, msgpack, psutil, numpy, PyYAML, pytest; no network). Run here, once, from the repo root:
#
#   bash benchmarks/gpu_wheels.sh            # -> .whl/ (ignored by git; carried with the device call)
#
# then on the device:   pip install --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
pkgs=(pyzmq==27.3.0 omegaconf==2.3.1 hydra-core==1.3.2 fastapi==0.165.0
      starlette==1.10.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
      uvicorn==0.55.0 gymnasium==1.4.0 farama-notifications==0.0.4)
for spec in "${pkgs[@]}"; do
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform any -d .whl "$spec"
done
# omegaconf's parser runtime exists only as an sdist: build its (pure-Python) wheel here.
python3 -m pip wheel --quiet --no-deps -w .whl antlr4-python3-runtime==4.9.3
ls -la .whl
