"""Tiny random models of every supported family and head class (hidden 32, 2 layers, 4 heads, FFN 37)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, DistilBertConfig, ElectraConfig, RobertaConfig

from earlybert.slim import AUTO_CLASSES

VOCAB = 99


def tiny_config(family: str, attn: str = "eager", **overrides):
    common = dict(vocab_size=VOCAB, max_position_embeddings=64, attn_implementation=attn)
    if family == "distilbert":
        return DistilBertConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=37, **common, **overrides)
    bert_like = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, **common)
    if family == "bert":
        return BertConfig(**bert_like, **overrides)
    if family == "roberta":
        return RobertaConfig(**bert_like, pad_token_id=1, **overrides)
    if family == "electra":  # embedding_size != hidden_size exercises ELECTRA's embeddings_project
        return ElectraConfig(**bert_like, embedding_size=16, **overrides)
    raise ValueError(family)


FAMILIES = ["bert", "roberta", "electra", "distilbert"]


def head_classes(family: str):
    """(Auto class) for each head class transformers offers for this family."""
    config_class = type(tiny_config(family))
    out = []
    for auto in AUTO_CLASSES:
        try:
            auto._model_mapping[config_class]
        except KeyError:
            continue
        out.append(auto)
    return out


FAMILY_HEADS = [
    pytest.param(family, auto, id=f"{family}-{auto.__name__.removeprefix('AutoModel') or 'Base'}")
    for family in FAMILIES
    for auto in head_classes(family)
]


def build(family: str, auto, attn: str = "eager", seed: int = 0):
    overrides = {"is_decoder": True} if auto.__name__ == "AutoModelForCausalLM" else {}
    torch.manual_seed(seed)
    return auto.from_config(tiny_config(family, attn, **overrides)).eval()


def inputs_for(model, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    shape = (2, 3, 9) if "MultipleChoice" in type(model).__name__ else (2, 9)
    ids = torch.randint(3, VOCAB, shape, generator=g)
    mask = torch.ones(shape, dtype=torch.long)
    mask[..., -2:] = 0  # padding exercises the attention mask path
    return {"input_ids": ids, "attention_mask": mask}


def outputs(model, batch) -> list[torch.Tensor]:
    with torch.no_grad():
        out = model(**batch)
    return [t for t in out.to_tuple() if isinstance(t, torch.Tensor)]


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    assert len(a) == len(b) and len(a) > 0
    return max((x.float() - y.float()).abs().max().item() for x, y in zip(a, b))


# -- a tiny pretrained-looking encoder with a real WordPiece tokenizer, and GLUE-layout data --------------------

WORDS = "good great fine nice bad awful poor sad movie film the a is was plot acting really very".split()


def write_tiny_encoder(path, family: str = "bert", dropout: float = 0.1):
    """A tiny random encoder saved with a matching fast WordPiece tokenizer: a stand-in for a hub checkpoint."""
    from transformers import AutoModel, BertTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)}).save_pretrained(path)
    config = tiny_config(family, "sdpa")
    config.vocab_size = len(vocab)
    config.max_position_embeddings = 128
    for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout"):
        if hasattr(config, name):
            setattr(config, name, dropout)
    if family == "roberta":
        config.pad_token_id = 0
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(path)
    return path


def write_sst2_like(path, n_train: int = 64, n_dev: int = 24, seed: int = 0):
    """Sentiment sentences in the SST-2 TSV layout; the label follows the adjective, so it is learnable."""
    import random

    rng = random.Random(seed)

    def rows(n):
        out = []
        for _ in range(n):
            label = rng.randint(0, 1)
            adjective = rng.choice(WORDS[:4] if label else WORDS[4:8])
            out.append(f"the {rng.choice(['movie', 'film'])} {rng.choice(['is', 'was'])} {adjective} \t{label}")
        return out

    task_dir = path / "SST-2"
    task_dir.mkdir(parents=True, exist_ok=True)
    (task_dir / "train.tsv").write_text("sentence\tlabel\n" + "\n".join(rows(n_train)) + "\n")
    (task_dir / "dev.tsv").write_text("sentence\tlabel\n" + "\n".join(rows(n_dev)) + "\n")
    return path


@contextlib.contextmanager
def bench_script(name: str):
    """bench/<name>.py loaded as a module, with bench/ on the import path while it is in use: the scripts import
    their sibling machine.py, as when run directly."""
    bench = Path(__file__).resolve().parents[1] / "bench"
    sys.path.insert(0, str(bench))
    try:
        spec = importlib.util.spec_from_file_location(f"{name}_bench", bench / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(bench))


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory):
    return write_tiny_encoder(tmp_path_factory.mktemp("encoder") / "bert")


@pytest.fixture(scope="session")
def glue_dir(tmp_path_factory):
    return write_sst2_like(tmp_path_factory.mktemp("glue"))


# -- tests marked realdata read ../shared/data (beside the clone) or $EARLYBERT_DATA ----------------------------

REAL_DATA = Path(os.environ.get("EARLYBERT_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def pytest_collection_modifyitems(config, items):
    """A clone without the shared data folder skips the realdata tests, saying why in one line; CI has it."""
    if REAL_DATA.is_dir():
        return
    skip = pytest.mark.skip(reason=f"real data folder {REAL_DATA} not found (set EARLYBERT_DATA to use another)")
    for item in items:
        if "realdata" in item.keywords:
            item.add_marker(skip)


def torchrun(args: list[str], port: int, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    """`earlybert ARGS` in two gloo processes. --tee 3 prefixes every line a rank prints with its rank, so a failure
    shows what each rank said (its own error, an abort message) rather than only the launcher's traceback."""
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          str(port), "--tee", "3", "-m", "earlybert", *args], capture_output=True, text=True, env=env,
                         timeout=timeout)
    lines = (two.stdout + two.stderr).splitlines()
    said = ["\n".join(line for line in lines if line.startswith(f"[default{rank}]"))[-2000:] for rank in (0, 1)]
    assert two.returncode == 0, "\n".join(said) + "\n--- launcher ---\n" + two.stderr[-1500:]  # each rank's own end
    return two
