"""Pre-training data: raw text tokenized once into a flat token file, read back as packed fixed-length sequences.

Tokenizing is streamed (files are read line by line, tokenized in batches with the fast tokenizer, appended to
disk), so a corpus larger than memory works; the token file is memory-mapped when read. One cache serves
every sequence length: sequences are cut from the flat stream when read, so phase 1 (128) and phase 2 (512)
share it. The cache is keyed by the files' contents (in order) and the tokenizer's vocabulary, and written
atomically, so interrupted tokenization never leaves a half cache behind.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .runs import atomic_writer

TOKEN_DTYPE = np.uint32  # vocabularies beyond 65,535 (RoBERTa: 50,265 fits uint16, others do not)


def text_files(paths: list[str]) -> list[Path]:
    """Files named directly, and every *.txt file under named folders; ValueError when there are none."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*.txt") if p.is_file())
        elif path.is_file():
            files.append(path)
        else:
            raise ValueError(f"text path {path} does not exist")
    if not files:
        raise ValueError(f"no text files found in {', '.join(paths)}")
    return files


def _check_text(path: Path) -> None:
    head = path.open("rb").read(1 << 16)
    if not head.strip():
        raise ValueError(f"text file {path} is empty")
    if b"\x00" in head:
        raise ValueError(f"text file {path} looks binary (NUL bytes); give plain UTF-8 text")
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 4:  # a multi-byte character cut at the block's end is fine
            raise ValueError(f"text file {path} is not UTF-8 text (byte {e.start})") from None


# (path, size, mtime, ctime) -> the file's content digest, within one process: prepare() runs again at every
# resume of a sliced run, and a 70 MB corpus need not be read again while its files are untouched (any write, or
# a reset of the mtime, moves the ctime).
_DIGESTS: dict[tuple[str, int, int, int], str] = {}


def _content_digest(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    if key not in _DIGESTS:
        with open(path, "rb") as f:
            _DIGESTS[key] = hashlib.file_digest(f, "sha256").hexdigest()
    return _DIGESTS[key]


def _files_key(files: list[Path], extra: bytes = b"") -> str:
    """The files' contents in their order (not their paths or times): a fresh copy of the same text, in another
    folder or with new modification times, reuses the vocabulary and token file trained on it."""
    h = hashlib.sha256()
    for f in files:
        h.update(f"{_content_digest(f)}\n".encode())
    h.update(extra)
    return h.hexdigest()[:16]


# Bumped when the token file's layout changes, so that no cache written by an older layout is read back.
# 2: a document boundary that falls between two batches of lines is kept (1 lost it).
TOKEN_CACHE_VERSION = 2


def _cache_key(files: list[Path], tokenizer) -> str:
    vocab = json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return _files_key(files, f"v{TOKEN_CACHE_VERSION}|{vocab}".encode())


TRAIN_TOKENIZER_PREFIX = "wordpiece:"  # `--tokenizer wordpiece:16000` trains a vocabulary on the corpus itself
WORDPIECE_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def load_or_train_tokenizer(spec: str, files: list[Path], cache_dir: Path):
    """`spec` names a tokenizer (folder or hub name), or is `wordpiece:N`: a lowercasing BERT WordPiece vocabulary
    of N tokens trained on `files`, kept in the cache beside the token files and reused while the files and N
    are the same. A small model trained on a small corpus spends most of its step in the embedding and the
    vocabulary projection; a vocabulary sized to the corpus (8-16k) makes both several times cheaper."""
    from .tasks import load_tokenizer

    if not spec.startswith(TRAIN_TOKENIZER_PREFIX):
        return load_tokenizer(spec)
    size = spec[len(TRAIN_TOKENIZER_PREFIX):]
    if not size.isdigit() or int(size) < len(WORDPIECE_SPECIAL) + 100:
        raise ValueError(f"--tokenizer {spec!r}: give wordpiece:N with N a vocabulary size of at least 105")
    for f in files:
        _check_text(f)
    target = cache_dir / f"wordpiece{size}-{_files_key(files)}"
    if not (target / "tokenizer.json").exists():
        _train_wordpiece(files, int(size), target)
    return load_tokenizer(str(target))


def _train_wordpiece(files: list[Path], vocab_size: int, target: Path) -> None:
    # The tokenizers library trains the vocabulary (in Rust, streaming the files); transformers' fast BERT
    # tokenizer wraps it, so the folder loads with AutoTokenizer and saves with the pre-trained model.
    import shutil
    import tempfile

    from tokenizers import BertWordPieceTokenizer
    from transformers import BertTokenizerFast

    wordpiece = BertWordPieceTokenizer(lowercase=True)
    wordpiece.train([str(f) for f in files], vocab_size=vocab_size, min_frequency=2,
                    special_tokens=WORDPIECE_SPECIAL, show_progress=False)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:  # written beside the target and renamed into place: an interrupted run leaves no half tokenizer
        BertTokenizerFast(tokenizer_object=wordpiece._tokenizer, do_lower_case=True).save_pretrained(staging)
        try:
            os.replace(staging, target)
        except OSError:
            # Another process trained the same vocabulary at the same time and renamed its folder first. Training
            # does not reproduce its ids, so the first one stays, for every process that reads this cache.
            if not (target / "tokenizer.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def tokenize_to_cache(files: list[Path], tokenizer, cache_dir: Path, batch_lines: int = 2000) -> Path:
    """Token ids of all lines of `files`, each document followed by [SEP], in one flat file; returns its path.

    A blank line ends a document (the layout of the Brown and Wikipedia samples); within a document the lines
    are concatenated, so packed sequences span sentences as BERT's do.
    """
    for f in files:
        _check_text(f)
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / f"tokens-{_cache_key(files, tokenizer)}.bin"
    if target.exists():
        return target
    sep = tokenizer.sep_token_id
    total, in_document = 0, False
    with atomic_writer(target, "wb") as out:
        for f in files:
            with open(f, encoding="utf-8", errors="replace") as lines:
                batch: list[str] = []
                for line in lines:
                    batch.append(line.strip())
                    if len(batch) == batch_lines:
                        written, in_document = _write_batch(out, batch, tokenizer, sep, in_document)
                        total += written
                        batch = []
                # a file ends its last document
                written, in_document = _write_batch(out, batch + [""], tokenizer, sep, in_document)
                total += written
        if total == 0:  # raised inside the writer: nothing is left behind
            raise ValueError("the text files hold no tokens")
    return target


def _write_batch(out, lines: list[str], tokenizer, sep: int, in_document: bool) -> tuple[int, bool]:
    """Appends `lines`' tokens to `out`, [SEP] at each blank line that ends a document; returns the number of ids
    written and whether the stream now ends inside a document. That state crosses batches: a boundary at a
    batch's first line closes the document the previous batch left open, and an all-blank batch tokenizes nothing
    (the tokenizer rejects an empty list)."""
    text = [line for line in lines if line]
    # verbose=False: lines longer than the model's length are expected here (they are cut when packed), so
    # transformers' "sequence length is longer than the specified maximum" warning would only mislead.
    ids = iter(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"] if text else ())
    stream: list[int] = []
    for line in lines:
        if line:
            tokens = next(ids)
            stream.extend(tokens)
            in_document = in_document or bool(tokens)
        elif in_document:
            stream.append(sep)  # document boundary
            in_document = False
    np.asarray(stream, dtype=TOKEN_DTYPE).tofile(out)
    return len(stream), in_document


@dataclass
class PackedSequences(Dataset):
    """[CLS] + seq_len - 2 tokens + [SEP], cut back to back from a slice of the flat token file."""

    path: Path
    seq_len: int
    cls_id: int
    sep_id: int
    start: int = 0  # token offset of this split's first sequence
    stop: int | None = None  # token offset where this split ends

    def __post_init__(self):
        self.tokens = np.memmap(self.path, dtype=TOKEN_DTYPE, mode="r")
        self.stop = len(self.tokens) if self.stop is None else self.stop
        self.body = self.seq_len - 2
        if self.body < 1:
            raise ValueError(f"sequence length {self.seq_len} leaves no room for tokens")
        self.count = (self.stop - self.start) // self.body
        if self.count == 0:
            raise ValueError(f"not enough text for one sequence of {self.seq_len} tokens")

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> dict:
        begin = self.start + i * self.body
        body = torch.from_numpy(self.tokens[begin : begin + self.body].astype(np.int64))
        ids = torch.cat([torch.tensor([self.cls_id]), body, torch.tensor([self.sep_id])])
        return {"input_ids": ids, "index": i}


def split(path: Path, seq_len: int, tokenizer, held_out: float) -> tuple[PackedSequences, PackedSequences]:
    """(training, held-out) sequences: the held-out slice is the tail of the token stream."""
    if not 0 < held_out < 1:
        raise ValueError(f"held-out fraction must be in (0, 1), got {held_out}")
    n = len(np.memmap(path, dtype=TOKEN_DTYPE, mode="r"))
    cut = int(n * (1 - held_out))
    make = lambda a, b: PackedSequences(path, seq_len, tokenizer.cls_token_id, tokenizer.sep_token_id, a, b)  # noqa: E731
    return make(0, cut), make(cut, n)


class SeededMLMCollator:
    """transformers' MLM collator (15% of tokens; 80% [MASK], 10% random, 10% kept), with masks that depend
    only on the seed and which sequences form the batch. Masks then survive a resume exactly (accelerate reads
    one batch ahead, so a global-RNG collator would draw differently after a restart), and full and EarlyBERT
    runs see the very same masked batches."""

    def __init__(self, tokenizer, seed: int, mlm_probability: float = 0.15):
        from transformers import DataCollatorForLanguageModeling

        self.seed = seed
        self.collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=mlm_probability, seed=seed)

    def __call__(self, examples: list[dict]) -> dict:
        indices = tuple(int(e["index"]) for e in examples)
        self.collator.generator = torch.Generator().manual_seed(hash((self.seed, indices)) & 0x7FFF_FFFF_FFFF)
        self.collator._generator_pid = os.getpid()
        return self.collator([{"input_ids": e["input_ids"]} for e in examples])
