"""Fine-tuning data: GLUE tasks from their standard TSV files, the user's own CSV / TSV / JSON lines, hub datasets.

GLUE TSVs are read with Python's csv module, quoting off: sentences contain `"` characters that a quoting
reader (pandas, datasets' csv builder) would take as field delimiters and silently merge rows. Every quirk of
the original files (CoLA has no header, MRPC starts with a byte-order mark, RTE/QNLI/MNLI use string labels)
is declared in `TASKS` rather than handled in code branches.
"""

from __future__ import annotations

import codecs
import csv
import json
import random
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader

csv.field_size_limit(2**31 - 1)  # some GLUE rows (QNLI contexts) exceed csv's 128 KiB default


@dataclass(frozen=True)
class Task:
    name: str
    text_columns: tuple[str, ...]
    label_column: str
    labels: tuple[str, ...] | None  # label strings in id order; None: regression
    metrics: tuple[str, ...]  # the first is the headline score
    dir_name: str = ""  # folder name in the GLUE download layout
    train_file: str = "train.tsv"
    eval_files: dict[str, str] = field(default_factory=lambda: {"validation": "dev.tsv"})
    header: bool = True
    columns: tuple[str, ...] | None = None  # column names of header-less files
    hub_text_columns: tuple[str, ...] | None = None  # column names in the hub's copy, where they differ
    hub_eval_splits: dict[str, str] = field(default_factory=lambda: {"validation": "validation"})

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)


BINARY = ("0", "1")
NLI2 = ("entailment", "not_entailment")  # entailment -> 0, as transformers' run_glue and the hub copy do

TASKS: dict[str, Task] = {
    "cola": Task("cola", ("sentence",), "label", BINARY, ("mcc", "accuracy"), "CoLA", header=False,
                 columns=("source", "label", "original_mark", "sentence")),
    "sst2": Task("sst2", ("sentence",), "label", BINARY, ("accuracy",), "SST-2"),
    "mrpc": Task("mrpc", ("#1 String", "#2 String"), "Quality", BINARY, ("accuracy", "f1"), "MRPC",
                 hub_text_columns=("sentence1", "sentence2")),
    "qqp": Task("qqp", ("question1", "question2"), "is_duplicate", BINARY, ("accuracy", "f1"), "QQP"),
    "stsb": Task("stsb", ("sentence1", "sentence2"), "score", None, ("pearson", "spearman"), "STS-B"),
    "mnli": Task("mnli", ("sentence1", "sentence2"), "gold_label", ("entailment", "neutral", "contradiction"),
                 ("accuracy",), "MNLI", eval_files={"matched": "dev_matched.tsv", "mismatched": "dev_mismatched.tsv"},
                 hub_text_columns=("premise", "hypothesis"),
                 hub_eval_splits={"matched": "validation_matched", "mismatched": "validation_mismatched"}),
    "qnli": Task("qnli", ("question", "sentence"), "label", NLI2, ("accuracy",), "QNLI"),
    "rte": Task("rte", ("sentence1", "sentence2"), "label", NLI2, ("accuracy",), "RTE"),
}


@dataclass
class Example:
    texts: tuple[str, ...]
    label: int | float


# -- reading files -------------------------------------------------------------------------------------------


def _read_rows(path: Path, header: bool, columns: tuple[str, ...] | None) -> list[dict]:
    """Rows of a CSV / TSV (by extension; GLUE .tsv with quoting off) or JSON-lines file, as dicts."""
    if not path.exists():
        raise ValueError(f"data file {path} does not exist")
    if path.stat().st_size == 0:
        raise ValueError(f"data file {path} is empty")
    if path.suffix in (".jsonl", ".json"):
        return _read_json_lines(path)
    check_utf8(path)
    delimiter = "," if path.suffix == ".csv" else "\t"
    quoting = csv.QUOTE_MINIMAL if path.suffix == ".csv" else csv.QUOTE_NONE
    with open(path, encoding="utf-8-sig", newline="") as f:  # utf-8-sig drops MRPC's byte-order mark
        reader = csv.reader(f, delimiter=delimiter, quoting=quoting)
        if header:
            names = next(reader, None)
            if names is None:
                raise ValueError(f"data file {path} is empty")
        else:
            names = list(columns)
        rows = []
        for line_no, values in enumerate(reader, start=2 if header else 1):
            if not values:
                continue
            if len(values) != len(names):
                raise ValueError(f"{path} line {line_no}: {len(values)} fields, expected {len(names)} ({names})")
            rows.append(dict(zip(names, values)))
    if not rows:
        raise ValueError(f"data file {path} has no rows")
    return rows


def check_utf8(path: Path) -> None:
    """ValueError naming the file and the first offending byte (0-based offset) unless it is UTF-8 text.

    Checked up front because the codec's own message names neither the file nor where in it, and a latin-1,
    gzip or binary file would otherwise fail mid-read. Read in blocks, so a large file costs no extra memory."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            try:
                decoder.decode(block)
            except UnicodeDecodeError as e:
                # e.start counts from the bytes the decoder held back from the previous block plus this block.
                held = len(decoder.getstate()[0])
                raise ValueError(f"data file {path} is not UTF-8 text (byte {offset - held + e.start}); "
                                 "save it as UTF-8 (decompress it first if it is compressed)") from None
            offset += len(block)
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError as e:
            raise ValueError(f"data file {path} is not UTF-8 text (byte {offset - len(e.object) + e.start}); "
                             "it ends inside a character") from None


def _read_json_lines(path: Path) -> list[dict]:
    check_utf8(path)
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} line {line_no} is not JSON: {e.msg}") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path} line {line_no} is not a JSON object")
            rows.append(row)
    if not rows:
        raise ValueError(f"data file {path} has no rows")
    return rows


def _to_examples(rows: list[dict], task: Task, source: str, text_columns: tuple[str, ...] | None = None) -> list[Example]:
    text_columns = text_columns or task.text_columns
    needed = [*text_columns, task.label_column]
    label_ids = None if task.labels is None else {label: i for i, label in enumerate(task.labels)}
    examples = []
    for i, row in enumerate(rows, start=1):
        missing = [c for c in needed if c not in row]
        if missing:  # every row: JSON lines need not share their keys
            where = f"{source} has no column" if i == 1 else f"{source} row {i} has no column"
            raise ValueError(f"{where} {missing[0]!r} (columns: {', '.join(map(str, row))})")
        raw = str(row[task.label_column]).strip()
        if label_ids is None:
            try:
                label = float(raw)
            except ValueError:
                raise ValueError(f"{source} row {i}: label {raw!r} is not a number (regression task)") from None
        elif raw in label_ids:
            label = label_ids[raw]
        else:
            raise ValueError(f"{source} row {i}: label {raw!r} is not one of {list(task.labels)}")
        examples.append(Example(tuple(str(row[c]) for c in text_columns), label))
    return examples


def _hub_label(value, task: Task) -> str:
    # The hub's copies store class ids; map them back to our label strings so one code path checks them.
    return str(value) if task.labels is None else task.labels[int(value)] if int(value) >= 0 else "-1"


# -- public API ----------------------------------------------------------------------------------------------


@dataclass
class TaskData:
    task: Task
    train: list[Example]
    evals: dict[str, list[Example]]


def load_glue(task: Task, data: str | Path) -> TaskData:
    """GLUE task from a local folder (the task's own folder, or the GLUE root holding it)."""
    root = Path(data)
    if not root.exists():
        raise ValueError(f"data directory {root} does not exist")
    if (root / task.dir_name).is_dir():
        root = root / task.dir_name
    read = lambda name: _to_examples(_read_rows(root / name, task.header, task.columns), task, str(root / name))  # noqa: E731
    return TaskData(task, read(task.train_file), {split: read(name) for split, name in task.eval_files.items()})


def load_hub(task: Task, name: str) -> TaskData:
    """GLUE task from the hub through `datasets` (needs a network), e.g. name="nyu-mll/glue"."""
    try:  # imported here only: local files need no `datasets`, and machines without it run everything else
        import datasets
    except ImportError:
        raise ValueError(f"loading {name!r} from the hub needs the `datasets` package (pip install datasets); "
                         "or give a local folder") from None

    try:
        ds = datasets.load_dataset(name, task.name)
    except Exception as e:  # datasets raises many types for "not reachable / not found"
        raise ValueError(f"cannot load {task.name} from hub dataset {name!r}: {str(e).splitlines()[0]}") from None
    columns = task.hub_text_columns or task.text_columns
    hub_task = replace(task, text_columns=columns, label_column="label")

    def convert(split: str) -> list[Example]:
        rows = [{**r, "label": _hub_label(r["label"], task)} for r in ds[split]]
        return _to_examples(rows, hub_task, f"{name}/{task.name}/{split}")

    return TaskData(task, convert("train"), {k: convert(v) for k, v in task.hub_eval_splits.items()})


def load_files(train_file: str | Path, validation_file: str | Path, text_columns: tuple[str, ...],
               label_column: str, regression: bool = False) -> TaskData:
    """The user's own labelled data: CSV / TSV (with a header) or JSON lines; any number of classes."""
    if not text_columns or len(text_columns) > 2:
        raise ValueError("give one or two text columns")
    train_rows = _read_rows(Path(train_file), True, None)
    eval_rows = _read_rows(Path(validation_file), True, None)
    if label_column not in train_rows[0]:
        raise ValueError(f"{train_file} has no column {label_column!r} (columns: {', '.join(map(str, train_rows[0]))})")
    if regression:
        labels, metrics = None, ("pearson", "spearman")
    else:
        values = sorted({str(r[label_column]).strip() for r in train_rows})
        if all(v.lstrip("-").isdigit() for v in values):
            values.sort(key=int)
        if len(values) < 2:
            raise ValueError(f"{train_file} has a single label value {values}; classification needs two or more")
        labels, metrics = tuple(values), ("accuracy", "f1") if len(values) == 2 else ("accuracy",)
    task = Task("custom", tuple(text_columns), label_column, labels, metrics)
    return TaskData(task, _to_examples(train_rows, task, str(train_file)), {"validation": _to_examples(eval_rows, task, str(validation_file))})


def subsample(examples: list[Example], limit: int | None, seed: int = 0) -> list[Example]:
    """A fixed random subset (same for every method and run seed), in the original order."""
    if limit is None or limit >= len(examples):
        return examples
    keep = sorted(random.Random(seed).sample(range(len(examples)), limit))
    return [examples[i] for i in keep]


def check_tokenizer(tokenizer, model_config) -> None:
    """ValueError when a tokenizer cannot belong to the model: ids beyond its embeddings, another pad id."""
    vocab = getattr(model_config, "vocab_size", None)
    if vocab is not None and len(tokenizer) > vocab:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens but the model embeds only {vocab}: they do not match")
    pad = getattr(model_config, "pad_token_id", None)
    if pad is not None and tokenizer.pad_token_id is not None and tokenizer.pad_token_id != pad:
        raise ValueError(
            f"tokenizer pads with id {tokenizer.pad_token_id} but the model expects {pad}: they do not match"
        )


def encode(examples: list[Example], tokenizer, max_length: int, regression: bool) -> list[dict]:
    texts = list(zip(*[e.texts for e in examples]))
    encoded = tokenizer(*[list(t) for t in texts], truncation=True, max_length=max_length)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded]
    return [
        {**{k: encoded[k][i] for k in keys}, "labels": float(e.label) if regression else int(e.label)}
        for i, e in enumerate(examples)
    ]


def padding_collator(tokenizer, pad_to: int | None = None, multiple_of: int | None = None):
    """Batches padded to their longest sequence, rounded up to `multiple_of` if given, or to `pad_to` (for outputs
    concatenated along the sequence).

    Rounding the length up leaves a few batch shapes instead of one per length (on a GPU tensor cores want multiples
    of 8; on a CPU each shape of a bf16 matrix product builds its own oneDNN kernel), at the cost of more padded
    tokens, which cost more than the fewer shapes saved on a Xeon CPU with earlybert's wide kernel cache
    (bench/shape_cache.py: both steps ~5% slower). The padded positions are masked, so the model computes the same
    function; dropout draws its masks over the padded shape, so a run is not bit-identical to one padded to the
    longest."""
    from transformers import DataCollatorWithPadding

    return DataCollatorWithPadding(tokenizer, padding="max_length" if pad_to else "longest", max_length=pad_to,
                                   pad_to_multiple_of=None if pad_to else multiple_of)


def make_loader(dataset, collate_fn, batch_size: int, order: list[int] | None = None) -> DataLoader:
    """Batches in the given order of indices (default: as stored).

    Shuffling is the caller's: the training loop draws each epoch's order itself, so that a resumed run can
    skip exactly the batches already done instead of replaying a sampler's random state.
    """
    # An own generator: creating an iterator otherwise draws a seed from the global RNG, which would shift the
    # dropout masks of a resumed run (it creates one more iterator than the run it continues).
    return DataLoader(dataset, batch_size=batch_size, sampler=order, shuffle=False, collate_fn=collate_fn,
                      generator=torch.Generator().manual_seed(0))
