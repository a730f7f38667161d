"""Extractive question answering on SQuAD v1.1 with Hugging Face fast tokenizers.

The steps follow transformers' examples/pytorch/question-answering (run_qa.py and utils_qa.py): long contexts
are split into overlapping windows ("features"), training features are labelled with the answer's token span,
and at evaluation the start/end logits of all of an example's features are mapped back to a span of its context.

The scoring is the official SQuAD v1.1 evaluation script (exact match and token-level F1), reimplemented here
because `evaluate.load("squad")` fetches its metric code from the Hugging Face hub at run time and fails offline.

`examples` arguments take a list of example dicts as `read_squad` returns them, or a batch of columns as
`datasets.Dataset.map(batched=True)` passes them.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .data import check_utf8

# ---------------------------------------------------------------------------------------------------- reading


def read_squad(path: str | Path) -> list[dict]:
    """SQuAD v1.1 JSON -> examples [{"id", "title", "question", "context", "answers": {"text", "answer_start"}}]."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"SQuAD file not found: {path}")
    check_utf8(path)
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    articles = raw.get("data") if isinstance(raw, dict) else None  # "version" and any other keys are ignored
    if not isinstance(articles, list):
        raise ValueError(f'{path}: expected a JSON object with a "data" list (SQuAD v1.1 format)')

    examples = [ex for a, article in enumerate(articles) for ex in _article_examples(article, f"{path}: data[{a}]")]
    if not examples:
        raise ValueError(f"{path}: contains no questions")
    duplicates = [key for key, n in Counter(ex["id"] for ex in examples).items() if n > 1]
    if duplicates:  # predictions are keyed by id, so a repeated id would silently merge two questions
        raise ValueError(f"{path}: duplicate question id {duplicates[0]!r}")
    return examples


def _article_examples(article: Any, where: str) -> list[dict]:
    title = article.get("title", "") if isinstance(article, dict) else ""
    examples = []
    for p, paragraph in enumerate(_field(article, "paragraphs", list, where)):
        context = _field(paragraph, "context", str, f"{where}.paragraphs[{p}]")
        for q, qa in enumerate(_field(paragraph, "qas", list, f"{where}.paragraphs[{p}]")):
            examples.append(_example(qa, title, context, f"{where}.paragraphs[{p}].qas[{q}]"))
    return examples


def _example(qa: Any, title: str, context: str, where: str) -> dict:
    answers = _field(qa, "answers", list, where)
    if not answers:  # SQuAD v2 unanswerable questions have none; v1.1 scoring is undefined for them
        raise ValueError(f"{where}: has no answers (SQuAD v1.1 needs at least one per question)")
    return {
        "id": _field(qa, "id", str, where),
        "title": str(title),
        "question": _field(qa, "question", str, where),
        "context": context,
        "answers": {
            "text": [_field(a, "text", str, f"{where}.answers[{i}]") for i, a in enumerate(answers)],
            "answer_start": [_field(a, "answer_start", int, f"{where}.answers[{i}]") for i, a in enumerate(answers)],
        },
    }


def _field(record: Any, key: str, kind: type, where: str) -> Any:
    value = record.get(key) if isinstance(record, dict) else None
    if not isinstance(value, kind) or isinstance(value, bool):  # bool is an int subclass; never a valid field here
        raise ValueError(f'{where}: missing or malformed "{key}"')
    return value


def _rows(examples: Any) -> list[dict]:
    """A list of example dicts, whether given as one (read_squad) or as a batch of columns (datasets.map)."""
    if isinstance(examples, Mapping):
        keys = list(examples)
        return [dict(zip(keys, values)) for values in zip(*examples.values())]
    return list(examples)


# ---------------------------------------------------------------------------------------------------- features


def prepare_train_features(examples: Any, tokenizer: Any, max_length: int = 384, stride: int = 128) -> dict[str, list]:
    """Tokenized windows labelled with the first answer's token span (both at CLS when the window lacks it)."""
    examples = _rows(examples)
    encoding, context_id = _tokenize_windows(examples, tokenizer, max_length, stride)
    features = _model_inputs(encoding)
    features["start_positions"], features["end_positions"] = [], []
    for i, offsets in enumerate(encoding["offset_mapping"]):
        answers = examples[encoding["overflow_to_sample_mapping"][i]]["answers"]
        span = _answer_token_span(answers, offsets, encoding.sequence_ids(i), context_id)
        if span is None:  # run_qa.py's convention: "no answer here" is the CLS token
            cls = _cls_index(features["input_ids"][i], tokenizer)
            span = (cls, cls)
        features["start_positions"].append(span[0])
        features["end_positions"].append(span[1])
    return features


def prepare_eval_features(examples: Any, tokenizer: Any, max_length: int = 384, stride: int = 128) -> dict[str, list]:
    """Tokenized windows with their example id and offsets (None outside the context) for `postprocess`."""
    examples = _rows(examples)
    encoding, context_id = _tokenize_windows(examples, tokenizer, max_length, stride)
    features = _model_inputs(encoding)
    features["example_id"] = [examples[s]["id"] for s in encoding["overflow_to_sample_mapping"]]
    features["offset_mapping"] = [
        _context_offsets(offsets, encoding.sequence_ids(i), context_id)
        for i, offsets in enumerate(encoding["offset_mapping"])
    ]
    return features


def _tokenize_windows(examples: list[dict], tokenizer: Any, max_length: int, stride: int) -> tuple[Any, int]:
    """Encode (question, context) pairs, one feature per window of `max_length` tokens overlapping by `stride`.

    Returns the encoding and the sequence id of the context. The question goes on the side the padding is not on,
    as in run_qa.py, so a left-padding model reads the context first; only the context is ever truncated.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("question answering needs a fast tokenizer (it maps answers to tokens through offsets)")
    questions = [ex["question"].lstrip() for ex in examples]  # some SQuAD questions start with spaces that waste tokens
    contexts = [ex["context"] for ex in examples]
    question_first = tokenizer.padding_side == "right"
    encoding = tokenizer(
        questions if question_first else contexts,
        contexts if question_first else questions,
        truncation="only_second" if question_first else "only_first",
        max_length=max_length,
        stride=stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding=False,  # a collator pads each batch, which wastes far less compute than padding to max_length
    )
    return encoding, 1 if question_first else 0


def _context_offsets(offsets: list, sequence_ids: list, context_id: int) -> list[tuple[int, int] | None]:
    """Character offsets of context tokens; None for question and special tokens, which are never an answer."""
    return [tuple(offset) if sequence == context_id else None for offset, sequence in zip(offsets, sequence_ids)]


def _model_inputs(encoding: Any) -> dict[str, list]:
    return {key: encoding[key] for key in ("input_ids", "attention_mask", "token_type_ids") if key in encoding}


def _answer_token_span(answers: dict, offsets: list, sequence_ids: list, context_id: int) -> tuple[int, int] | None:
    """Token indices of the first answer, or None when this window does not hold all of it."""
    if not answers["answer_start"]:
        return None
    start_char = answers["answer_start"][0]
    end_char = start_char + len(answers["text"][0])
    context = [k for k, sequence in enumerate(sequence_ids) if sequence == context_id]
    if not context:
        return None
    first, last = context[0], context[-1]
    if offsets[first][0] > start_char or offsets[last][1] < end_char:
        return None
    # Walk inwards from the window's ends. Unlike run_qa.py, the walks stop at the context's edges: its start walk
    # runs on into the final [SEP] (offsets (0, 0)) and labels it when the answer is the window's last token.
    start = first
    while start <= last and offsets[start][0] <= start_char:
        start += 1
    end = last
    while end >= first and offsets[end][1] >= end_char:
        end -= 1
    return start - 1, end + 1


def _cls_index(input_ids: list[int], tokenizer: Any) -> int:
    for special in (tokenizer.cls_token_id, tokenizer.bos_token_id):  # RoBERTa-style tokenizers only have <s>
        if special is not None and special in input_ids:
            return input_ids.index(special)
    return 0


# ---------------------------------------------------------------------------------------------------- predictions


def postprocess(
    examples: Any,
    features: dict[str, list],
    start_logits: Any,
    end_logits: Any,
    n_best: int = 20,
    max_answer_length: int = 30,
) -> dict[str, str]:
    """{example id: answer text}: the best valid context span over all of the example's features ("" if none)."""
    examples = _rows(examples)
    start_logits, end_logits = _to_numpy(start_logits), _to_numpy(end_logits)
    offset_mappings = features["offset_mapping"]
    longest = max((len(offsets) for offsets in offset_mappings), default=0)
    if start_logits.shape != end_logits.shape or start_logits.shape[0] != len(offset_mappings):
        raise ValueError(f"logits {start_logits.shape}/{end_logits.shape} do not match {len(offset_mappings)} features")
    if start_logits.shape[1] < longest:
        raise ValueError(f"logits cover {start_logits.shape[1]} tokens but a feature has {longest}")

    best: dict[str, tuple[float, int, int]] = {}  # example id -> (score, start char, end char)
    for i, (example_id, offsets) in enumerate(zip(features["example_id"], offset_mappings)):
        span = _best_span(start_logits[i], end_logits[i], offsets, n_best, max_answer_length)
        if span is not None and (example_id not in best or span[0] > best[example_id][0]):
            best[example_id] = span
    answers = {}
    for ex in examples:
        span = best.get(ex["id"])
        answers[ex["id"]] = ex["context"][span[1] : span[2]] if span else ""
    return answers


def _best_span(
    start_logits: np.ndarray, end_logits: np.ndarray, offsets: list, n_best: int, max_answer_length: int
) -> tuple[float, int, int] | None:
    """(score, start char, end char) of the best valid pair among the n_best top context tokens for start and end.

    Logits past the feature's own length are batch padding and are never looked at. Unlike utils_qa.py, tokens
    outside the context are dropped before taking the n best, so they cannot crowd out valid candidates.
    """
    context_tokens = np.array([k for k, offset in enumerate(offsets) if offset is not None], dtype=int)
    if context_tokens.size == 0:
        return None
    starts = context_tokens[np.argsort(-start_logits[context_tokens], kind="stable")[:n_best]]
    ends = context_tokens[np.argsort(-end_logits[context_tokens], kind="stable")[:n_best]]
    scores = start_logits[starts][:, None] + end_logits[ends][None, :]
    lengths = ends[None, :] - starts[:, None] + 1
    scores = np.where((lengths >= 1) & (lengths <= max_answer_length), scores, -np.inf)
    s, e = np.unravel_index(np.argmax(scores), scores.shape)
    if not np.isfinite(scores[s, e]):
        return None
    return float(scores[s, e]), offsets[starts[s]][0], offsets[ends[e]][1]


def _to_numpy(logits: Any) -> np.ndarray:
    if hasattr(logits, "detach"):  # a torch tensor, maybe on GPU or in bfloat16, which numpy lacks
        logits = logits.detach().float().cpu().numpy()
    logits = np.asarray(logits)
    if logits.ndim != 2:
        raise ValueError(f"expected logits of shape (num_features, seq_len), got {logits.shape}")
    return logits


# ---------------------------------------------------------------------------------------------------- scoring

_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(s: str) -> str:
    """Official SQuAD v1.1 normalization: lower case, drop punctuation and articles, collapse whitespace."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCTUATION)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def squad_metrics(predictions: dict[str, str], examples: Any) -> dict[str, float]:
    """Official SQuAD v1.1 exact_match and f1 (percentages, best over each example's references) and count.

    An example without a prediction scores 0, as in the official script.
    """
    examples = _rows(examples)
    if not examples:
        raise ValueError("no examples to score")
    exact_match = f1 = 0.0
    for ex in examples:
        references = ex["answers"]["text"]
        if not references:
            raise ValueError(f"example {ex['id']!r} has no reference answers (SQuAD v1.1 scoring needs one)")
        if ex["id"] not in predictions:
            continue
        prediction = predictions[ex["id"]]
        exact_match += max(float(normalize_answer(prediction) == normalize_answer(r)) for r in references)
        f1 += max(_token_f1(prediction, r) for r in references)
    count = len(examples)
    return {"exact_match": 100 * exact_match / count, "f1": 100 * f1 / count, "count": count}


def _token_f1(prediction: str, reference: str) -> float:
    predicted, gold = normalize_answer(prediction).split(), normalize_answer(reference).split()
    common = sum((Counter(predicted) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(gold)
    return 2 * precision * recall / (precision + recall)
