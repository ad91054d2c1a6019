#!/usr/bin/env bash
# Download, here, the wheels the GPU machine's image lacks into .whl/ (git-ignored through
# .git/info/exclude), for scripts/device_check.sh to install there without a network.
# The image has torch, transformers, accelerate, peft, pyarrow, pandas, fsspec and xxhash, but not
# datasets, dill or multiprocess; datasets 5.x also wants pyarrow >= 24, which is carried in case
# the image's is older (about 55 MB of the 64 MiB a call may carry).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >>.git/info/exclude
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 pyarrow==26.0.1
ls -l .whl
