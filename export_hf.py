"""Export a training checkpoint as a Hugging Face model folder.

    python export_hf.py --checkpoint out_smollm2_scratch/checkpoints/checkpoint_latest.pt --out_dir smollm2-shakespeare

writes config.json, model.safetensors, generation_config.json and the tokenizer files, so that
`AutoModelForCausalLM.from_pretrained(DIR)` and `AutoTokenizer.from_pretrained(DIR)` load it with no
network. The folder is written beside DIR under a temporary name and its files moved in only when all are
complete, so an export that fails midway leaves an earlier export as it was; the user's other files in DIR
are never moved, and a DIR that is not an earlier export is refused unless --overwrite. The weights go through transformers' own save_pretrained (on the LlamaForCausalLM that
smollm2.hf.to_hf_model builds), so a tied embedding is stored once, as the released SmolLM2 stores it,
and an untied lm_head is stored as its own tensor.

The folder also gets README.md, a Hub model card rendered from training_summary.json (both from
smollm2.hub: the checkpoint's own step, tokens, losses, device and data). Then, optionally:
    --space_dir DIR          a ready Gradio Space for this model (app.py, modules, requirements, model/)
    --push_to_hub OWNER/NAME [--private]   upload the export with huggingface_hub
    --push_space OWNER/NAME                upload the Space folder as a Gradio Space
A failed upload (no token, offline) prints one line and exits 2; the local export stays.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Optional

from safetensors import SafetensorError

from smollm2.checkpoint import checkpoint_tokenizer_id, model_from_checkpoint
from smollm2.hf import DTYPES, SPECIAL_TOKEN, write_hf_folder
from smollm2.hub import (FACTS_FILE, PushError, SpaceError, is_space_folder, model_card, push_folder, training_facts,
                         write_space)
from smollm2.io import fsync_dir, refuse_to_replace, remove_stale_temporaries, tmp_name
from smollm2.tokenizer import DEFAULT_TOKENIZER_ID, load_tokenizer
from smollm2.common import OneLineParser, SmolError, run_cli

class ExportError(SmolError, RuntimeError):
    code = 2


def refuse_foreign_folder(out_dir: str, overwrite: bool) -> None:
    """A folder that is neither missing, empty, nor an earlier export (it has no training_summary.json) is
    the user's: its README.md or config.json would be replaced by the export's. Only with --overwrite."""
    if overwrite or not os.path.isdir(out_dir) or os.path.exists(os.path.join(out_dir, FACTS_FILE)):
        return
    names = sorted(os.listdir(out_dir))
    if names:
        shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
        raise ExportError(f"--out_dir {out_dir} is not an earlier export (no {FACTS_FILE}) and holds {shown}; "
                          f"pick another --out_dir, or pass --overwrite to write the export there (files of the "
                          f"same name are replaced, the others kept)")


def export(checkpoint: str, out_dir: str, tokenizer_id: Optional[str] = None,
           dtype: str = "float32", log=print, repo_id: Optional[str] = None,
           overwrite: bool = False) -> tuple[list[str], dict]:
    """Write the Hugging Face folder; returns (the paths written, the model card's facts)."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ExportError(f"--out_dir {out_dir} exists and is not a directory")
    refuse_foreign_folder(out_dir, overwrite)
    here = os.path.abspath(os.getcwd())
    if os.path.commonpath([here, os.path.abspath(out_dir)]) == os.path.abspath(out_dir):
        raise ExportError(f"--out_dir {out_dir} holds the current directory; export into a folder of its own")
    model, ckpt = model_from_checkpoint(checkpoint)
    config = model.config
    # Load the tokenizer before writing anything, so a missing one leaves no half-written folder.
    tok = load_tokenizer(tokenizer_id or checkpoint_tokenizer_id(ckpt), log=log)
    if tok.vocab_size > config.vocab_size:
        raise ExportError(f"tokenizer {tok.source} has {tok.vocab_size} ids but the model only "
                          f"{config.vocab_size}")
    if tok.tokenizer.token_to_id(SPECIAL_TOKEN) != config.eos_token_id:
        raise ExportError(f"tokenizer {tok.source} maps {SPECIAL_TOKEN} to "
                          f"{tok.tokenizer.token_to_id(SPECIAL_TOKEN)}, the model's eos is {config.eos_token_id}")

    # Temporary folders beside out_dir (same filesystem: renames are atomic), named for this process.
    parent, base = os.path.split(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    remove_stale_temporaries(parent, prefix=f".{base}.")
    staging = tmp_name(os.path.join(parent, f".{base}.new"))
    try:
        try:
            write_hf_folder(staging, model, tok, dtype)
        except SafetensorError as e:  # safetensors reports a full disk as its own error, not an OSError
            raise ExportError(f"could not write the weights into {staging} ({str(e).strip()[:160]}); free disk "
                              f"space (or raise the file-size limit); {out_dir} is as it was") from e
        facts = training_facts(ckpt, model, tok.source, checkpoint)
        with open(os.path.join(staging, FACTS_FILE), "w", encoding="utf-8") as f:
            json.dump(facts, f, indent=2, sort_keys=True)
            f.write("\n")
        with open(os.path.join(staging, "README.md"), "w", encoding="utf-8") as f:
            f.write(model_card(facts, repo_id))
        written = sorted(os.listdir(staging))
        readable_by_all(staging, written)
        swap_in(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"exported {checkpoint} (global_step={ckpt.get('global_step')}, "
        f"{model.num_params():,} parameters, tie_word_embeddings={config.tie_word_embeddings}, {dtype}) "
        f"with tokenizer {tok.source}")
    paths = [os.path.join(out_dir, f) for f in written]
    for p in paths:
        log(f"  wrote {p} ({os.path.getsize(p):,} bytes)")
    return paths, facts


def readable_by_all(folder: str, names: list[str]) -> None:
    """The mode an ordinary new file gets (0644 under the usual umask) for every file of the export:
    safetensors writes model.safetensors through a private temporary (0600), which a Space or another user
    could not read."""
    umask = os.umask(0)
    os.umask(umask)
    for name in names:
        os.chmod(os.path.join(folder, name), 0o666 & ~umask)


def swap_in(staging: str, out_dir: str) -> None:
    """Put the complete staging folder's files into out_dir. A new out_dir is one rename. Into an existing
    one each export file is renamed over its namesake, one at a time (each lands whole): nothing else in
    out_dir (a .git, the user's notes) is ever moved, so no kill at any point can strand it in a temporary
    that a later export deletes. A kill midway leaves some files of the earlier export beside the new ones;
    running the export again completes it."""
    if not os.path.isdir(out_dir):
        os.replace(staging, out_dir)
        return
    for name in sorted(os.listdir(staging)):
        os.replace(os.path.join(staging, name), os.path.join(out_dir, name))
    fsync_dir(out_dir)


def main(argv=None) -> int:
    parser = OneLineParser(description="Export a SmolLM2 training checkpoint as a Hugging Face model folder.")
    parser.add_argument("--checkpoint", required=True, help="a .pt checkpoint written by training")
    parser.add_argument("--out_dir", required=True,
                        help="folder to write (created if missing; the files of an earlier export are replaced, "
                             "other files in it are kept; a folder that is not an earlier export needs --overwrite)")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into an existing --out_dir that is not an earlier export (its files of the same "
                             "names are replaced, the others kept); without it such a folder is refused")
    parser.add_argument("--tokenizer_id", default=None,
                        help="tokenizer to ship with the model (hub id, tokenizer.json, folder or .gguf); default: "
                             f"the one the checkpoint's run used if it resolves here, else {DEFAULT_TOKENIZER_ID}")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                        help="dtype of the stored weights (training keeps float32 masters)")
    parser.add_argument("--push_to_hub", default=None, metavar="OWNER/NAME",
                        help="after exporting, upload the folder to this Hub model repo (created if missing); the "
                             "token comes from `hf auth login` or $HF_TOKEN")
    parser.add_argument("--push_space", default=None, metavar="OWNER/NAME",
                        help="after writing --space_dir, upload it as a Gradio Space (created if missing)")
    parser.add_argument("--private", action="store_true", help="create the pushed repos private")
    parser.add_argument("--space_dir", default=None,
                        help="also write a ready Gradio Space for this model into this folder (replaced as a whole)")
    args = parser.parse_args(argv)
    if args.private and not (args.push_to_hub or args.push_space):
        parser.error("--private only applies with --push_to_hub or --push_space")
    if args.push_space and not args.space_dir:
        parser.error("--push_space uploads the folder --space_dir writes; give --space_dir too")
    for flag, repo in (("--push_to_hub", args.push_to_hub), ("--push_space", args.push_space)):
        if repo and (repo.count("/") != 1 or not all(repo.split("/"))):
            parser.error(f"{flag} wants OWNER/NAME, got {repo!r}")
    if args.space_dir and os.path.abspath(args.space_dir) == os.path.abspath(args.out_dir):
        parser.error("--space_dir must differ from --out_dir")
    if args.space_dir:  # before the export: a refused --space_dir leaves --out_dir as it was too
        try:
            refuse_to_replace(args.space_dir, "--space_dir", is_space_folder)
        except ValueError as e:
            raise SpaceError(str(e)) from e
    try:
        _, facts = export(args.checkpoint, args.out_dir, args.tokenizer_id, args.dtype, repo_id=args.push_to_hub,
                          overwrite=args.overwrite)
        if args.space_dir:
            title = (args.push_to_hub or os.path.basename(os.path.abspath(args.out_dir))).split("/")[-1]
            files = write_space(args.space_dir, args.out_dir, facts, title)
            print(f"wrote Space folder {args.space_dir}: {', '.join(files)}")
        if args.push_to_hub:
            url = push_folder(args.out_dir, args.push_to_hub, private=args.private)
            print(f"pushed {args.out_dir} to {url}")
        if args.push_space:
            url = push_folder(args.space_dir, args.push_space, private=args.private, repo_type="space")
            print(f"pushed {args.space_dir} to {url}")
    except PushError as e:
        raise PushError(f"{e}; the export is kept in {args.out_dir}"
                        f"{f' and the Space folder in {args.space_dir}' if args.space_dir else ''}") from e
    return 0


def cli(argv=None) -> None:
    run_cli(lambda: main(argv), "export_hf.py", also=(OSError,))  # an OSError: on --out_dir or --space_dir


if __name__ == "__main__":
    cli()
