# Sourced by the device runbooks from the repository root: what every call on the GPU machine needs.
export PYTHONUNBUFFERED=1
export SMOLLM2_TOKENIZER=${SMOLLM2_TOKENIZER:-$PWD/.assets/tokenizer.json}  # no hub there: the carried file
[ -f input.txt ] || cp .assets/input.txt input.txt  # nor internet: the carried corpus
# The GPU machine's image sets PYTHONDONTWRITEBYTECODE=1 over a site-packages without __pycache__, so every
# process compiled torch's Python source again: ~7 s of each start-up there (cProfile: builtins.compile).
# A normal install keeps bytecode; so does this machine from here on, under /tmp ("cold" empties it too).
unset PYTHONDONTWRITEBYTECODE
export PYTHONPYCACHEPREFIX=${PYTHONPYCACHEPREFIX:-/tmp/pycache}
