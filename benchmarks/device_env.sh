# Sourced by the device runbooks from the repository root: what every call on the GPU machine needs.
export PYTHONUNBUFFERED=1
export SMOLLM2_TOKENIZER=${SMOLLM2_TOKENIZER:-$PWD/.assets/tokenizer.json}  # no hub there: the carried file
[ -f input.txt ] || cp .assets/input.txt input.txt  # nor internet: the carried corpus
