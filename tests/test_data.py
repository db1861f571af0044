"""Data preparation and loading, against references: the shards hold exactly each document's own
tokenization plus one end-of-text id, in every input format; a killed preparation resumed is byte-identical
to an uninterrupted one; the samplers' windows are disjoint across ranks and cover each window once per
epoch; every bad input is one line and exit 2."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from smollm2.data import TokenBatches, TokenDataset, load_training_data, open_prepared, permute
from smollm2.prepare import PrepareSettings, prepare
from smollm2.shards import MANIFEST, DataError, load_manifest, read_doc_ends, read_header, read_ids
from smollm2.sources import split_text
from smollm2.tokenizer import SmolTokenizer, load_tokenizer

REPO = Path(__file__).resolve().parents[1]
from conftest import REALDOCS, TOKENIZER_JSON as TOKENIZER, require_realdocs  # noqa: E402
UINT16_SHA256 = "1895d231cbeb99f9f1323205e5a2da9471553a0960d16d5a3a685d9dac4e4729"  # input.txt's ids as uint16, reference tokenizer
EOS = 0
DOCS = ["First document.\nIt has two lines, 12 digits 345678901234 and café.",
        "Second: naïve 日本語 text with emoji 😀 and  double  spaces.\n\n\nThird paragraph.",
        "x",
        "<|endoftext|> in the text is text, not the special token.",
        "Last one " * 50]



@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(str(TOKENIZER))


def all_ids(folder, split="train") -> np.ndarray:
    m = load_manifest(str(folder))
    parts = [read_ids(read_header(os.path.join(folder, e["file"]))) for e in m["shards"][split]]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


def expected(tok, docs) -> np.ndarray:
    return np.asarray([i for d in docs for i in tok.encode(d) + [EOS]], dtype=np.int64)


def write_formats(root: Path, docs) -> dict[str, list[str]]:
    """The same documents as a folder of .txt, a .jsonl, a .jsonl.gz, a .jsonl.zst and a .parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    (root / "txt").mkdir()
    for i, d in enumerate(docs):
        (root / "txt" / f"doc{i:02d}.txt").write_text(d, encoding="utf-8")
    lines = "".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs)).encode()
    (root / "d.jsonl").write_bytes(lines)
    (root / "d.jsonl.gz").write_bytes(gzip.compress(lines))
    (root / "d.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines))
    pq.write_table(pa.table({"text": docs, "id": list(range(len(docs)))}), root / "d.parquet", row_group_size=2)
    return {"txt": [str(root / "txt")], "jsonl": [str(root / "d.jsonl")], "jsonl.gz": [str(root / "d.jsonl.gz")],
            "jsonl.zst": [str(root / "d.jsonl.zst")], "parquet": [str(root / "d.parquet")]}


NO_VAL = PrepareSettings(val_fraction=0.0)


@pytest.mark.parametrize("fmt", ["txt", "jsonl", "jsonl.gz", "jsonl.zst", "parquet"])
@pytest.mark.parametrize("workers", [0, 2])
def test_shards_hold_each_documents_ids_and_one_eos(tmp_path, tok, fmt, workers):
    inputs = write_formats(tmp_path, DOCS)[fmt]
    m = prepare(inputs, str(tmp_path / "out"), tok, PrepareSettings(val_fraction=0.0, max_piece_chars=16),
                workers=workers, progress_bar=False)
    assert np.array_equal(all_ids(tmp_path / "out"), expected(tok, DOCS))
    info = read_header(str(tmp_path / "out" / "train_00000.bin"))
    assert info.token_bytes == 2 and m["dtype"] == "uint16" and m["eos_id"] == EOS
    ends = read_doc_ends(info)
    assert ends.tolist() == np.cumsum([len(tok.encode(d)) + 1 for d in DOCS]).tolist()
    assert m["totals"]["documents"] == len(DOCS) and m["val"]["mode"] == "none"


def test_realdocs_in_three_formats(tmp_path, tok):
    require_realdocs()
    # A slice of each real file group: per-document tokenization + EOS, in input order.
    import pyarrow.parquet as pq

    txts = sorted((REALDOCS / "python-docs").glob("c*.txt"))[:20]
    jl = tmp_path / "a.jsonl.gz"
    with gzip.open(REALDOCS / "linux-docs-a.jsonl.gz", "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for _, line in zip(range(40), f)]
    jl.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    table = pq.read_table(REALDOCS / "linux-docs-b.parquet").slice(0, 40)
    pq.write_table(table, tmp_path / "b.parquet")
    docs = [p.read_text(encoding="utf-8") for p in txts] + [r["text"] for r in rows] + table.column("text").to_pylist()
    prepare([str(p) for p in txts] + [str(jl), str(tmp_path / "b.parquet")], str(tmp_path / "out"), tok,
            PrepareSettings(val_fraction=0.0, shard_tokens=20_000, max_piece_chars=3000), workers=2, progress_bar=False)
    assert np.array_equal(all_ids(tmp_path / "out"), expected(tok, docs))


def test_both_encoders_write_the_same_bytes(tmp_path, tok, corpus_path):
    require_realdocs()
    # tiktoken running the tokenizer's BPE (the default when installed) against tokenizers itself, on Tiny
    # Shakespeare, real documents in three formats, and texts holding characters the vocabulary lacks.
    pytest.importorskip("tiktoken")
    awkward = ["tab\tcontrol \x04 byte \x1d", "plane 4 \U00040000 and 9 \U00090001", "digits  12  3 \u00a0 4"]
    (tmp_path / "awkward.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in awkward))
    import pyarrow.parquet as pq
    pq.write_table(pq.read_table(REALDOCS / "linux-docs-b.parquet").slice(0, 200), tmp_path / "b.parquet")
    inputs = [str(corpus_path), str(tmp_path / "b.parquet"), str(tmp_path / "awkward.jsonl"),
              *map(str, sorted((REALDOCS / "python-docs").glob("l*.txt"))[:20])]
    trees = {}
    for encoder in ("tokenizers", "tiktoken"):
        prepare(inputs, str(tmp_path / encoder), tok, PrepareSettings(shard_tokens=2_000_000), workers=2,
                progress_bar=False, encoder=encoder)
        trees[encoder] = tree_bytes(tmp_path / encoder)
    assert trees["tiktoken"] == trees["tokenizers"] and len(trees["tiktoken"]) >= 3


def test_encoder_falls_back_to_tokenizers_where_tiktoken_cannot_be_proven_equal(tmp_path, tok):
    from smollm2.prepare import pick_encoder
    pytest.importorskip("tiktoken")
    spec = json.loads(tok.tokenizer.to_str())
    logs = []
    assert pick_encoder(tok.tokenizer.to_str(), "auto", logs.append) == "tiktoken" and not logs
    spec["normalizer"] = {"type": "Lowercase"}
    assert pick_encoder(json.dumps(spec), "auto", logs.append) == "tokenizers"
    assert logs == ["encoder: tokenizers (tiktoken not used: it has a normalizer)"]
    with pytest.raises(DataError, match="--encoder tiktoken cannot run this tokenizer: it has a normalizer"):
        pick_encoder(json.dumps(spec), "tiktoken", logs.append)
    spec["normalizer"] = None
    spec["model"]["merges"] = spec["model"]["merges"][::-1]  # ranks no longer follow the merge order
    assert pick_encoder(json.dumps(spec), "auto", logs.append) == "tokenizers" and "not in the order" in logs[-1]


def test_a_tokenizer_with_edited_merges_gets_its_own_ids(tmp_path, tok, corpus_path):
    # The last 1,000 merges removed: no probe text reaches those tokens, but every vocabulary token is checked,
    # so preparation falls back to tokenizers and writes the edited tokenizer's ids, saying which encoder ran.
    pytest.importorskip("tiktoken")
    from tokenizers import Tokenizer
    from smollm2.prepare import pick_encoder
    spec = json.loads(tok.tokenizer.to_str())
    spec["model"]["merges"] = spec["model"]["merges"][:-1000]
    edited = SmolTokenizer(Tokenizer.from_str(json.dumps(spec)), "edited")
    text = corpus_path.read_text(encoding="utf-8")[:200_000]
    assert edited.encode(text) != tok.encode(text)  # the edit changes ids on this text
    logs = []
    assert pick_encoder(edited.definition, "auto", logs.append) == "tokenizers"
    assert logs and "no merge produces its vocabulary token" in logs[-1]
    (tmp_path / "a.txt").write_text(text, encoding="utf-8")
    prepare([str(tmp_path / "a.txt")], str(tmp_path / "out"), edited, PrepareSettings(val_fraction=0.0),
            workers=0, progress_bar=False, log=logs.append)
    assert np.array_equal(all_ids(tmp_path / "out"), expected(edited, [text]))
    assert any("tokenizers" in line for line in logs[-2:])


def test_pieces_cut_only_at_pretoken_boundaries(corpus_path, tok):
    text = corpus_path.read_text(encoding="utf-8")
    pieces = split_text(text, 700)
    assert len(pieces) > 1000 and "".join(pieces) == text and max(map(len, pieces)) <= 700
    ids = [i for enc in tok.tokenizer.encode_batch(pieces, add_special_tokens=False) for i in enc.ids]
    assert ids == tok.encode(text)


def test_a_long_stretch_without_spaces_read_in_blocks_is_cut_after_it(tmp_path, tok, monkeypatch):
    # A stretch of 5 x max_chars without a space, read in blocks smaller than it: the reader reads on to
    # the first safe cut after it (up to 8 x max_chars) instead of cutting inside it, so the ids are exact.
    from smollm2 import sources
    monkeypatch.setattr(sources, "_READ_BYTES", 50)
    text = "a b c d e f g " * 9 + "x" * 500 + " and after it, words" * 30
    (tmp_path / "long.txt").write_text(text, encoding="utf-8")
    pieces = [p.text for p in sources.read_text_file(str(tmp_path / "long.txt"), max_chars=100)]
    assert "".join(pieces) == text and any("x" * 500 in p for p in pieces)
    assert [i for p in pieces for i in tok.encode(p)] == tok.encode(text)


def test_input_txt_prepares_to_the_reference_ids_and_holds_out_its_tail(tmp_path, corpus_path, tok):
    import hashlib
    data = load_training_data(str(corpus_path), tok, str(tmp_path / "cache"), val_fraction=0.1, log=lambda m: None)
    train, val = data.train.read(0, len(data.train)), data.val.read(0, len(data.val))
    ids = np.concatenate([train, val])
    assert hashlib.sha256(ids[:-1].astype(np.uint16).tobytes()).hexdigest() == UINT16_SHA256 and ids[-1] == EOS
    # One document: the tail 10% of its 341,094 ids (and the EOS) held out, as in the README's runs.
    assert len(train) == 341_094 - 34_109 and len(val) == 34_110
    # From shards the random sampler draws the windows it draws from the raw text (offsets from (seed, step, micro)).
    b = TokenBatches(data, 256, 1337, "random")
    x, y = b.train_batch(7, 3, 2)
    o = np.random.default_rng([1337, 7, 3]).integers(0, len(train) - 256, size=2)
    assert np.array_equal(x.numpy(), np.stack([train[i:i + 256] for i in o]))
    assert np.array_equal(y.numpy(), np.stack([train[i + 1:i + 257] for i in o]))


def test_validation_holds_out_whole_documents_by_seed(tmp_path, tok):
    docs = [f"Document number {i}. " + "word " * (i % 13 + 3) for i in range(200)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    runs = {}
    for seed in (1, 2):
        out = tmp_path / f"out{seed}"
        prepare([str(tmp_path / "d.jsonl")], str(out), tok, PrepareSettings(val_fraction=0.2, seed=seed),
                workers=0, progress_bar=False)
        runs[seed] = load_manifest(str(out))
        train, val = all_ids(out, "train"), all_ids(out, "val")
        decode = lambda ids: [tok.decode(d) for d in np.split(ids, np.where(ids == EOS)[0] + 1)[:-1]]  # noqa: E731
        train_docs, val_docs = [d[:-len("<|endoftext|>")] for d in decode(train)], [d[:-13] for d in decode(val)]
        assert sorted(train_docs + val_docs) == sorted(docs) and docs[0] in train_docs
        assert 20 <= len(val_docs) <= 60 and runs[seed]["val"]["mode"] == "documents"
    again = tmp_path / "again"
    prepare([str(tmp_path / "d.jsonl")], str(again), tok, PrepareSettings(val_fraction=0.2, seed=1), workers=2,
            progress_bar=False)
    assert (again / "val_00000.bin").read_bytes() == (tmp_path / "out1" / "val_00000.bin").read_bytes()
    assert runs[1]["totals"]["val_documents"] != runs[2]["totals"]["val_documents"] or \
        runs[1]["shards"]["val"][0]["sha256"] != runs[2]["shards"]["val"][0]["sha256"]


def test_val_tokens_caps_the_held_out_documents(tmp_path, tok):
    docs = [f"doc {i} " + "text " * 40 for i in range(100)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    m = prepare([str(tmp_path / "d.jsonl")], str(tmp_path / "o"), tok, PrepareSettings(val_fraction=0.5, val_tokens=200),
                workers=0, progress_bar=False)
    assert 200 <= m["totals"]["val_tokens"] < 200 + 60


def test_uint32_shards_for_a_vocabulary_over_65535(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    vocab = {"<|endoftext|>": 0, "[UNK]": 1, **{f"w{i}": i + 2 for i in range(70_000)}}
    t = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    big = SmolTokenizer(t, "wordlevel-70k")
    docs = ["w69990 w5 w69999", "w65534 w65535 w65536"]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    m = prepare([str(tmp_path / "d.jsonl")], str(tmp_path / "o"), big, NO_VAL, workers=0, progress_bar=False)
    assert m["dtype"] == "uint32" and read_header(str(tmp_path / "o" / "train_00000.bin")).token_bytes == 4
    assert all_ids(tmp_path / "o").tolist() == [69992, 7, 70001, 0, 65536, 65537, 65538, 0]


def run_prepare(*args, check=False):
    r = subprocess.run([sys.executable, str(REPO / "prepare_data.py"), *map(str, args), "--tokenizer_id", str(TOKENIZER),
                        "--quiet"], capture_output=True, text=True, timeout=300)
    if check and r.returncode != 0:
        raise AssertionError(r.stderr)
    return r


def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_killed_preparation_resumes_byte_identical(tmp_path):
    require_realdocs()
    src = [str(REALDOCS / "linux-docs-a.jsonl.gz")]
    flags = ["--shard_tokens", 150_000, "--workers", 2]
    run_prepare(*src, "--out_dir", tmp_path / "ref", *flags, check=True)
    ref = tree_bytes(tmp_path / "ref")
    assert len([n for n in ref if n.startswith("train_")]) > 10

    out = tmp_path / "killed"
    p = subprocess.Popen([sys.executable, str(REPO / "prepare_data.py"), *src, "--out_dir", str(out),
                          *map(str, flags), "--tokenizer_id", str(TOKENIZER), "--quiet"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "progress.json").exists() and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (out / MANIFEST).exists(), "the run finished before it could be killed"
    (out / f"train_00099.bin.tmp.{p.pid}").write_bytes(b"half a shard")  # what a kill mid-write leaves
    r = run_prepare(*src, "--out_dir", out, *flags, check=True)
    assert tree_bytes(out) == ref
    r = run_prepare(*src, "--out_dir", out, *flags, check=True)
    assert "nothing to do" in r.stdout + r.stderr


def test_changed_input_or_tokenizer_is_refused_then_rebuilt(tmp_path, tok):
    (tmp_path / "a.txt").write_text("one document about cats " * 20)
    out = str(tmp_path / "o")
    run_prepare(tmp_path / "a.txt", "--out_dir", out, check=True)
    (tmp_path / "a.txt").write_text("one document about dogs " * 20)
    r = run_prepare(tmp_path / "a.txt", "--out_dir", out)
    assert r.returncode == 2 and "--overwrite 1" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    run_prepare(tmp_path / "a.txt", "--out_dir", out, "--overwrite", 1, check=True)
    assert "dogs" in tok.decode(all_ids(out).tolist())
    # Training with another tokenizer than the shards': refused.
    from tokenizers import Tokenizer, models
    other = SmolTokenizer(Tokenizer(models.WordLevel({"<|endoftext|>": 0, "[UNK]": 1}, unk_token="[UNK]")), "other")
    with pytest.raises(DataError, match="prepared with tokenizer"):
        open_prepared(out, other)


def bad_input_cases(root: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    (root / "empty.txt").write_text("")
    (root / "binary.txt").write_bytes(b"abc\x00\x01\x02" * 100)
    (root / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    (root / "notjson.jsonl").write_text('{"text": "fine"}\n{not json\n')
    (root / "nofield.jsonl").write_text('{"text": "fine"}\n{"body": "no text field"}\n')
    pq.write_table(pa.table({"body": ["x"]}), root / "nocol.parquet")
    pq.write_table(pa.table({"text": ["some text"] * 1000}), root / "full.parquet")
    (root / "cut.parquet").write_bytes((root / "full.parquet").read_bytes()[:300])
    (root / "notgzip.jsonl.gz").write_text('{"text": "not compressed"}\n')
    os.mkfifo(root / "fifo.txt")
    return {"no files match": [str(root / "nothing*.txt")], "missing": [str(root / "missing.txt")],
            "empty": [str(root / "empty.txt")], "binary": [str(root / "binary.txt")],
            "not utf-8": [str(root / "latin1.txt")], "jsonl not json": [str(root / "notjson.jsonl")],
            "jsonl lacks the field": [str(root / "nofield.jsonl")], "parquet lacks the column": [str(root / "nocol.parquet")],
            "parquet truncated": [str(root / "cut.parquet")], "gzip that is not": [str(root / "notgzip.jsonl.gz")],
            "a fifo": [str(root / "fifo.txt")]}


def test_bad_inputs_exit_2_in_one_line(tmp_path):
    cases = bad_input_cases(tmp_path)
    # Eleven independent processes, started together (each is mostly interpreter start-up), then checked one by one.
    procs = {name: subprocess.Popen([sys.executable, str(REPO / "prepare_data.py"), *inputs, "--out_dir",
                                     str(tmp_path / f"out_{name.replace(' ', '_')}"), "--tokenizer_id", str(TOKENIZER),
                                     "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, inputs in cases.items()}
    for name, p in procs.items():
        out = tmp_path / f"out_{name.replace(' ', '_')}"
        _, err = p.communicate(timeout=300)
        assert p.returncode == 2, (name, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("prepare_data.py: error: ") and "Traceback" not in err, (name, err)
        assert not (out / MANIFEST).exists(), name


def test_damaged_dataset_is_refused(tmp_path, tok):
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": f"doc {i} " * 30}) + "\n" for i in range(50)))
    out = tmp_path / "o"
    prepare([str(tmp_path / "d.jsonl")], str(out), tok, PrepareSettings(val_fraction=0.1, shard_tokens=500),
            workers=0, progress_bar=False)
    open_prepared(str(out), tok)
    manifest = (out / MANIFEST).read_text()
    (out / MANIFEST).write_text(manifest.replace('"documents": 50', '"documents": 51'))
    with pytest.raises(DataError, match="checksum"):
        open_prepared(str(out), tok)
    (out / MANIFEST).write_text(manifest)
    shard = out / "train_00001.bin"
    data = shard.read_bytes()
    shard.write_bytes(data[:-10])
    with pytest.raises(DataError, match="truncated"):
        open_prepared(str(out), tok)
    flipped = bytearray(data)
    flipped[100] ^= 1
    shard.write_bytes(bytes(flipped))
    with pytest.raises(DataError, match="sha256"):
        open_prepared(str(out), tok)


def test_feistel_permutation_is_a_bijection():
    for n in (1, 2, 3, 5, 64, 1000, 4097, 65_537):
        p = permute(np.arange(n), n, key=12345)
        assert np.array_equal(np.sort(p), np.arange(n)), n
    a, b = permute(np.arange(1000), 1000, 1), permute(np.arange(1000), 1000, 2)
    assert not np.array_equal(a, b) and not np.array_equal(a, np.arange(1000))


@pytest.mark.parametrize("batch,accum,world", [(1, 4, 1), (3, 2, 2), (2, 1, 4)])
def test_epoch_sampler_visits_each_window_once_per_epoch(batch, accum, world):
    T, n = 8, 8 * 102  # 101 windows of 9 ids at any shift of the grid in [0, 8)
    data = TokenBatches(TokenDataset.from_array(np.arange(n)), T, seed=5, sampler="epoch")
    W = data.windows_per_epoch
    assert W == 101 and len({data.epoch_shift(e) for e in range(20)}) > 1
    per_step = batch * accum * world
    offsets = [data.train_offsets(s, r * accum + m, batch, world * accum)
               for s in range(1, 3 * W // per_step + 2) for r in range(world) for m in range(accum)]
    flat = np.concatenate(offsets)
    for e in range(3):
        epoch = flat[e * W:(e + 1) * W]
        assert np.array_equal(np.sort(epoch), data.epoch_shift(e) + np.arange(W) * T), e
        assert data.epoch_shift(e) + (W - 1) * T + T + 1 <= n
    assert not np.array_equal(flat[:W], flat[W:2 * W])  # a new order each epoch
    x, y = data.train_batch(1, 0, batch, world * accum)
    assert np.array_equal(y[:, :-1].numpy(), x[:, 1:].numpy()) and np.all(np.diff(x.numpy(), axis=1) == 1)


@pytest.mark.parametrize("sampler", ["epoch", "random"])
def test_ranks_take_disjoint_windows_whose_union_is_one_process(sampler):
    # In-process check of the indexing; test_two_gloo_ranks_see_disjoint_windows runs it under torchrun.
    data = TokenBatches(TokenDataset.from_array(np.arange(4001)), 16, seed=3, sampler=sampler)
    for step in (1, 2, 77):
        one = data.step_batch(step, 4, 2, "cpu", rank=0, world=1)[0]
        r0 = data.step_batch(step, 2, 2, "cpu", rank=0, world=2)[0]
        r1 = data.step_batch(step, 2, 2, "cpu", rank=1, world=2)[0]
        assert np.array_equal(np.concatenate([r0, r1]), one.numpy())


GLOO_SCRIPT = r"""
import os, sys
sys.path.insert(0, {repo!r})
import numpy as np, torch, torch.distributed as dist
from smollm2.data import TokenBatches, TokenDataset, load_training_data
from smollm2.tokenizer import load_tokenizer
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
data = load_training_data({folder!r}, load_tokenizer({tok!r}), {cache!r})
b = TokenBatches(data, 32, 11, "epoch")
mine = torch.cat([b.step_batch(s, 2, 2, "cpu", rank, world)[0].flatten(0, 1)[:, 0] for s in range(1, 40)])
got = [torch.zeros_like(mine) for _ in range(world)]
dist.all_gather(got, mine)
if rank == 0:
    torch.save(torch.stack(got), {out!r})
dist.destroy_process_group()
"""


def test_two_gloo_ranks_see_disjoint_windows(tmp_path, tok):
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": f"doc {i} " * 60}) + "\n" for i in range(80)))
    folder = tmp_path / "ds"
    prepare([str(tmp_path / "d.jsonl")], str(folder), tok, PrepareSettings(val_fraction=0.0, shard_tokens=3000),
            workers=0, progress_bar=False)
    script = tmp_path / "ranks.py"
    script.write_text(GLOO_SCRIPT.format(repo=str(REPO), folder=str(folder), tok=str(TOKENIZER),
                                         cache=str(tmp_path / "cache"), out=str(tmp_path / "got.pt")))
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29613",
                        str(script)], capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr[-2000:]
    import torch
    got = torch.load(tmp_path / "got.pt")  # (2 ranks, steps * 2 micro * 2 rows) first ids of each window
    b = TokenBatches(load_training_data(str(folder), tok, str(tmp_path / "cache")), 32, 11, "epoch")
    one = torch.cat([b.step_batch(s, 4, 2, "cpu")[0] for s in range(1, 40)])  # (steps*4, 2, T): one process
    per_step = one.view(39, 4, 2, 32)[:, :, :, 0]
    assert torch.equal(got[0].view(39, 2, 2), per_step[:, :2]) and torch.equal(got[1].view(39, 2, 2), per_step[:, 2:])
    windows = b.windows_per_epoch
    firsts = [b.train_offsets(s, j, 2, 4) for s in range(1, 40) for j in range(4)]
    assert len(set(np.concatenate(firsts)[:windows].tolist())) == min(windows, 39 * 8)


TRAIN = ["--model", "tiny", "--seq_len", "32", "--batch_size", "2", "--grad_accum", "2", "--warmup_steps", "2",
         "--lr_decay_steps", "12", "--tokenizer_id", str(TOKENIZER), "--sample_every", "0", "--val_every", "4",
         "--val_batches", "2", "--log_every", "1", "--save_every", "6", "--keep_checkpoints", "0"]


def run_train(out_dir, data, *extra):
    return subprocess.run([sys.executable, str(REPO / "train.py"), *TRAIN, "--input_file", str(data),
                           "--out_dir", str(out_dir), *map(str, extra)], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tok):
    root = tmp_path_factory.mktemp("prepared")
    docs = [f"Document {i}: " + " ".join(f"w{(i * 7 + j) % 97}" for j in range(40 + i % 50)) for i in range(300)]
    (root / "d.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    prepare([str(root / "d.jsonl")], str(root / "ds"), tok, PrepareSettings(val_fraction=0.1, shard_tokens=4000),
            workers=0, progress_bar=False)
    return root / "ds"


def test_training_from_shards_resumes_bit_exact(tmp_path, prepared):
    import torch
    # The uninterrupted run and the first half of the interrupted one are independent: run them side by side.
    ref, half = (subprocess.Popen([sys.executable, str(REPO / "train.py"), *TRAIN, "--input_file", str(prepared),
                                   "--out_dir", str(tmp_path / name), "--max_steps", str(steps)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for name, steps in (("ref", 12), ("res", 6)))
    (out, err), (_, half_err) = ref.communicate(timeout=600), half.communicate(timeout=600)
    assert ref.returncode == 0, err
    assert "val loss" in out and "sampler epoch" in out
    assert half.returncode == 0, half_err
    r = run_train(tmp_path / "res", prepared, "--max_steps", 12, "--resume", 1)
    assert r.returncode == 0 and "RESUME: starting from global_step=6" in r.stdout, r.stderr
    a = torch.load(tmp_path / "ref" / "checkpoints" / "checkpoint_step_12.pt", weights_only=True)
    b = torch.load(tmp_path / "res" / "checkpoints" / "checkpoint_step_12.pt", weights_only=True)
    assert a["data"]["fingerprint"] == load_manifest(str(prepared))["job_key"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_train_refuses_a_damaged_dataset_in_one_line(tmp_path, prepared):
    import shutil
    ds = tmp_path / "ds"
    shutil.copytree(prepared, ds)
    shard = ds / "train_00000.bin"
    shard.write_bytes(shard.read_bytes()[:-4])
    r = run_train(tmp_path / "o", ds, "--max_steps", 2)
    assert r.returncode == 2 and "truncated" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_a_hugging_face_dataset_on_disk(tmp_path, tok):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"text": DOCS, "id": list(range(len(DOCS)))}).save_to_disk(str(tmp_path / "hfds"))
    m = prepare([f"hf:{tmp_path / 'hfds'}"], str(tmp_path / "o"), tok, NO_VAL, workers=0, progress_bar=False)
    assert np.array_equal(all_ids(tmp_path / "o"), expected(tok, DOCS)) and m["sources"][0]["sha256"]
    r = run_prepare("hf:no-such-owner/no-such-dataset", "--out_dir", tmp_path / "o2")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_killed_preparation_leaves_no_workers(tmp_path):
    require_realdocs()
    import psutil
    p = subprocess.Popen([sys.executable, str(REPO / "prepare_data.py"), str(REALDOCS / "linux-docs-a.jsonl.gz"),
                          "--out_dir", str(tmp_path / "o"), "--workers", "2", "--tokenizer_id", str(TOKENIZER), "--quiet"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    children = []
    while len(children) < 2 and time.time() < deadline:
        children = psutil.Process(p.pid).children()
        time.sleep(0.05)
    assert len(children) >= 2
    p.kill()
    p.wait()
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"orphaned workers: {[c.pid for c in alive]}"
