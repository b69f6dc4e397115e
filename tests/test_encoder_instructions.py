"""The instruction table: bi-encoder task types prefix queries only, uni-encoder types prefix every text."""

from __future__ import annotations

import pytest

from embedpipe.encoder.instructions import (
    TASK_TYPE_TABLE,
    TaskType,
    default_instruction,
    format_document,
    format_query,
    is_uni_encoder,
    task_type,
)


def test_query_format_is_the_papers():
    assert format_query("what is pi?", "Answer math questions") == "Instruct: Answer math questions\nQuery: what is pi?"
    assert format_query("plain", None) == "plain"


@pytest.mark.parametrize("kind", ["retrieval", "reranking", "instruction_retrieval"])
def test_bi_encoder_documents_are_plain(kind):
    assert not is_uni_encoder(kind)
    assert format_document("doc text", "some task", kind) == "doc text"


@pytest.mark.parametrize("kind", ["sts", "classification", "clustering", "pair_classification", "bitext",
                                  "summarization", "multilabel_classification"])
def test_uni_encoder_types_instruct_every_text(kind):
    assert is_uni_encoder(kind)
    assert format_document("doc", "task", kind) == "Instruct: task\nQuery: doc"


def test_every_task_type_has_a_row_with_a_default_instruction():
    assert set(TASK_TYPE_TABLE) == set(TaskType)
    assert all(default_instruction(t) for t in TaskType)


def test_task_type_names_parse_loosely_and_fail_clearly():
    assert task_type("PairClassification") is TaskType.PAIR_CLASSIFICATION
    assert task_type("BitextMining") is TaskType.BITEXT
    assert task_type("STS") is TaskType.STS
    with pytest.raises(ValueError, match="unknown task type 'regression'.*retrieval"):
        task_type("regression")


def test_reading_records_does_not_load_the_model_stack():
    """The data schema needs the instruction table only; importing it must not pull in torch or transformers (a data
    or mining step would pay seconds and hundreds of MB for nothing). The package's names still resolve on use."""
    import subprocess
    import sys

    code = ("import sys, embedpipe.data.schema, embedpipe.encoder as enc\n"
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'model stack imported'\n"
            "assert enc.format_query('q', 't').startswith('Instruct: t')\n"
            "from embedpipe.encoder import Encoder, LlamaBidirectionalModel\n"
            "from transformers import AutoConfig, AutoModel\n"
            "config = AutoConfig.for_model('llama_bidirectional')\n"
            "assert type(config).__name__ == 'LlamaBidirectionalConfig'\n"
            "try:\n    enc.NoSuchName\nexcept AttributeError:\n    pass\nelse:\n    raise SystemExit('no error')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
