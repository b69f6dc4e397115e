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
