#!/usr/bin/env bash
# lm-evaluation-harness onto the GPU machine, which has no package registry: run this here (a machine with the
# registry), then carry .whl with `benchmarks/device_eval.sh speed`, which installs it there before timing the
# harness. Pure-Python wheels only (about 13 MB): lm_eval 0.4.13 and what it imports that the GPU image lacks
# (its torch, transformers, accelerate, pandas, pyarrow, scikit-learn and sacrebleu are used as they are there).
# Three of them ship only as source (sqlitedict, word2number, rouge_score): built into wheels here.
set -euo pipefail
cd "$(dirname "$0")/.."
W=.whl
mkdir -p "$W"
grep -qx "/.whl/" "$(git rev-parse --git-path info/exclude)" || echo "/.whl/" >> "$(git rev-parse --git-path info/exclude)"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$W" \
  lm_eval==0.4.13 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 evaluate==0.4.6 pytablewriter==1.2.1 \
  DataProperty==1.1.1 mbstrdecoder==1.1.5 pathvalidate==3.3.1 tabledata==1.3.5 tcolorpy==0.1.7 typepy==1.3.5 \
  chardet==6.0.0.post1 more_itertools==11.2.1 jsonlines==4.0.0 nltk==3.10.4
python3 -m pip wheel -q --no-deps -w "$W" sqlitedict==2.1.0 word2number==1.1 rouge_score==0.1.2
ls "$W"
