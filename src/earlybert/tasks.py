"""What differs between tasks: which data to read, which head to put on the encoder, how to score it.

Sequence classification / regression (GLUE, the user's own files) and extractive QA (SQuAD v1.1) share
everything else in the pipeline; this module is the only place that tells them apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import data as glue_data
from .archs import max_positions, mlm_head
from .metrics import classification_metrics, regression_metrics

SQUAD_FILES = ("train-v1.1.json", "dev-v1.1.json")


@dataclass
class TaskInfo:
    name: str
    headline: str  # metric reported as "score"
    tokenizer: object
    train_features: list[dict]
    eval_features: dict[str, list[dict]]
    mean_train_length: float
    model_config: object = None
    task: glue_data.Task | None = None  # classification / regression
    squad_examples: dict[str, list[dict]] = field(default_factory=dict)  # QA: evaluation examples per split
    squad_eval_meta: dict[str, dict] = field(default_factory=dict)  # QA: example ids and offsets per feature
    pad_to_multiple_of: int | None = None  # classification batches: their longest length rounded up to this

    @property
    def is_squad(self) -> bool:
        return self.task is None

    def collator(self):
        """The collator of this run's classification batches (training, search, calibration, evaluation)."""
        return glue_data.padding_collator(self.tokenizer, multiple_of=self.pad_to_multiple_of)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model",
                   "sentencepiece.bpe.model")


def check_path_exists(name_or_path: str, what: str) -> None:
    """A path-like name that does not exist is a typo, not a hub id: say so instead of transformers' repo-id rules."""
    if not Path(name_or_path).expanduser().exists() and (Path(name_or_path).is_absolute()
                                                         or name_or_path.startswith((".", "~"))):
        raise ValueError(f"cannot load {what} from {name_or_path!r}: no such folder")


def load_tokenizer(name_or_path: str):
    """The tokenizer of a local folder or hub name; ValueError with one complete line when there is none."""
    from transformers import AutoTokenizer

    path = Path(name_or_path).expanduser()
    check_path_exists(name_or_path, "a tokenizer")
    if path.is_dir() and not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ValueError(f"cannot load a tokenizer from {name_or_path!r}: the folder has none of "
                         f"{', '.join(TOKENIZER_FILES)}; give the folder or hub name of the model's tokenizer")
    try:
        return AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError, TypeError) as e:
        # transformers' messages run over several lines (numbered lists, advice): all of it, on one line.
        raise ValueError(f"cannot load a tokenizer from {name_or_path!r}: {' '.join(str(e).split())}") from None


def load_model_config(name_or_path: str):
    """The config of a supported model; ValueError / TypeError with one clear line otherwise."""
    from transformers import AutoConfig

    from .archs import get_arch

    check_path_exists(name_or_path, "a model")
    try:
        config = AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot load a model from {name_or_path!r}: {str(e).splitlines()[0]}") from None
    get_arch(config.model_type)  # TypeError naming the supported families
    return config


def _load_classification(config) -> glue_data.TaskData:
    if config.train_file or config.validation_file:
        if not (config.train_file and config.validation_file):
            raise ValueError("give both --train-file and --validation-file")
        if not config.text_columns:
            raise ValueError("name the text column(s) with --text-columns")
        return glue_data.load_files(config.train_file, config.validation_file, config.text_columns,
                                    config.label_column, config.regression)
    if config.task not in glue_data.TASKS:
        known = ", ".join([*glue_data.TASKS, "squad"])
        raise ValueError(f"unknown task {config.task!r}; choose from {known}, or give --train-file/--validation-file")
    task = glue_data.TASKS[config.task]
    if config.data is None:
        raise ValueError(f"give --data: a local folder with the {task.dir_name} TSV files, or a hub dataset name")
    if Path(config.data).exists() or "/" not in config.data or config.data.startswith((".", "/")):
        return glue_data.load_glue(task, config.data)
    return glue_data.load_hub(task, config.data)


def prepare_task(config) -> TaskInfo:
    """Read, check and tokenize the run's data. Raises ValueError / TypeError with one clear line on bad input."""
    model_config = load_model_config(config.model)
    tokenizer = load_tokenizer(config.model)
    glue_data.check_tokenizer(tokenizer, model_config)
    limit = max_positions(model_config)
    if limit is not None and config.max_length > limit:
        raise ValueError(f"max length {config.max_length} exceeds the model's {limit} position embeddings")
    multiple = config.pad_to_multiple_of
    if limit is not None and multiple and -(-config.max_length // multiple) * multiple > limit:
        raise ValueError(f"--max-length {config.max_length} padded to a multiple of {multiple} "
                         f"(--pad-to-multiple-of) exceeds the model's {limit} position embeddings")
    if config.task == "squad":
        info = _prepare_squad(config, tokenizer)
        info.model_config = model_config
        return info
    task_data = _load_classification(config)
    task = task_data.task
    train = glue_data.subsample(task_data.train, config.max_train_samples)
    train_features = glue_data.encode(train, tokenizer, config.max_length, task.is_regression)
    evals = {
        split: glue_data.encode(glue_data.subsample(examples, config.max_eval_samples), tokenizer, config.max_length,
                                task.is_regression)
        for split, examples in task_data.evals.items()
    }
    mean_length = float(np.mean([len(f["input_ids"]) for f in train_features]))
    return TaskInfo(task.name, task.metrics[0], tokenizer, train_features, evals, mean_length,
                    model_config=model_config, task=task, pad_to_multiple_of=multiple)


def _squad_paths(config) -> tuple[str, str]:
    if config.train_file or config.validation_file:
        if not (config.train_file and config.validation_file):
            raise ValueError("give both --train-file and --validation-file")
        return config.train_file, config.validation_file
    if config.data is None:
        raise ValueError("give --data (a folder with train-v1.1.json and dev-v1.1.json) or the two files")
    root = Path(config.data)
    return str(root / SQUAD_FILES[0]), str(root / SQUAD_FILES[1])


def _prepare_squad(config, tokenizer) -> TaskInfo:
    from . import qa

    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("SQuAD needs a fast tokenizer (offset mappings)")
    train_path, eval_path = _squad_paths(config)
    train_examples = glue_data.subsample(qa.read_squad(train_path), config.max_train_samples)
    eval_examples = glue_data.subsample(qa.read_squad(eval_path), config.max_eval_samples)
    try:
        train = qa.prepare_train_features(train_examples, tokenizer, config.max_length, config.doc_stride)
        evaluation = qa.prepare_eval_features(eval_examples, tokenizer, config.max_length, config.doc_stride)
    except Exception as e:  # the fast tokenizer raises a bare Exception when a question leaves no room for context
        raise ValueError(f"cannot cut SQuAD windows of {config.max_length} tokens with stride {config.doc_stride}: "
                         f"{str(e).splitlines()[0]}") from None
    train_features = _columns_to_rows(train)
    model_inputs = {k: v for k, v in evaluation.items() if k not in ("example_id", "offset_mapping")}
    mean_length = float(np.mean([len(f["input_ids"]) for f in train_features]))
    return TaskInfo("squad", "f1", tokenizer, train_features, {"validation": _columns_to_rows(model_inputs)},
                    mean_length, squad_examples={"validation": eval_examples}, squad_eval_meta={"validation": evaluation})


def _columns_to_rows(columns: dict[str, list]) -> list[dict]:
    keys = list(columns)
    return [{k: columns[k][i] for k in keys} for i in range(len(columns[keys[0]]))]


def load_model_for(name_or_path: str, info: TaskInfo):
    """The pretrained encoder with the head the task needs (a new, randomly initialised head)."""
    from transformers import AutoModelForQuestionAnswering, AutoModelForSequenceClassification

    if info.is_squad:
        return _from_pretrained(AutoModelForQuestionAnswering, name_or_path)
    task = info.task
    kwargs = {"num_labels": task.num_labels}
    if task.is_regression:
        kwargs["problem_type"] = "regression"
    else:
        kwargs["id2label"] = dict(enumerate(task.labels))
        kwargs["label2id"] = {label: i for i, label in enumerate(task.labels)}
    return _from_pretrained(AutoModelForSequenceClassification, name_or_path, **kwargs)


def load_masked_lm(name_or_path: str):
    """The checkpoint's own *ForMaskedLM, for a search driven by the masked-LM loss (--search-objective mlm).

    A checkpoint without MLM head weights (a bare encoder, a fine-tuned classifier) is refused in one line:
    transformers would give it a randomly initialised head, and a search led by a random head's loss says nothing
    about what the encoder knows."""
    from transformers import AutoModelForMaskedLM

    flag = "--search-objective mlm"
    try:
        model, info = AutoModelForMaskedLM.from_pretrained(name_or_path, output_loading_info=True, dtype=torch.float32)
        mlm_head(model.config.model_type)  # the family's head must be one MaskedLM knows how to call
    except (OSError, RuntimeError, ValueError, TypeError) as e:
        first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise ValueError(f"{flag}: cannot load a masked-LM model from {name_or_path!r}: {first}") from None
    head_missing = sorted(k for k in info["missing_keys"] if not k.startswith(model.base_model_prefix + "."))
    if head_missing:
        raise ValueError(f"{flag}: the checkpoint {name_or_path!r} has no masked-LM head ({head_missing[0]} and "
                         f"{len(head_missing) - 1} more weights missing); use the task objective or an MLM checkpoint")
    return model


def _from_pretrained(auto_class, name_or_path: str, **kwargs):
    # A checkpoint whose head does not fit the task (e.g. an MNLI model for SST-2) or with missing weight files
    # fails deep inside transformers; say what happened in one line instead.
    # Training keeps float32 master weights (mixed precision only inside autocast): transformers v5 loads a bf16
    # checkpoint as bf16 parameters, whose updates at fine-tuning learning rates (2e-5) mostly round away.
    kwargs.setdefault("dtype", torch.float32)
    try:
        return auto_class.from_pretrained(name_or_path, **kwargs)
    except (OSError, RuntimeError) as e:
        first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise ValueError(f"cannot load {name_or_path!r} for this task: {first}") from None


def evaluate_model(model, info: TaskInfo, config, accelerator) -> dict[str, float]:
    """Metrics on every evaluation split; with several splits (MNLI) keys are prefixed by the split name."""
    from .train import predict

    model = accelerator.prepare(model)
    results = {}
    for split, features in info.eval_features.items():
        if info.is_squad:
            from . import qa

            out = predict(model, features, glue_data.padding_collator(info.tokenizer, config.max_length),
                          config.batch_size, accelerator, keys=("start_logits", "end_logits"))
            meta = info.squad_eval_meta[split]
            predictions = qa.postprocess(info.squad_examples[split], meta, out["start_logits"].numpy(),
                                         out["end_logits"].numpy())
            scores = qa.squad_metrics(predictions, info.squad_examples[split])
            scores = {"exact_match": scores["exact_match"], "f1": scores["f1"]}
        else:
            out = predict(model, features, info.collator(), config.batch_size, accelerator)
            logits, labels = out["logits"], out["labels"]
            if info.task.is_regression:
                scores = regression_metrics(logits.squeeze(-1).numpy(), labels.numpy())
            else:
                scores = classification_metrics(logits.argmax(-1).numpy(), labels.numpy(), info.task.metrics)
        prefix = "" if len(info.eval_features) == 1 else f"{split}_"
        results.update({prefix + k: float(v) for k, v in scores.items()})
    if len(info.eval_features) > 1:  # MNLI: the paper's headline is matched accuracy
        first = next(iter(info.eval_features))
        results[info.headline] = results[f"{first}_{info.headline}"]
    return results
