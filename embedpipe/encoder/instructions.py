"""How each task type writes its texts: bi-encoder (instructed queries, plain documents) or uni-encoder (all instructed).

llama-embed-nemotron-8b formats a query as ``Instruct: {task}\\nQuery: {text}``; retrieval documents carry no prefix,
while symmetric tasks (STS, classification, clustering, ...) put the instruction on every text so both sides live in
the same instructed space.
"""

from __future__ import annotations

from enum import Enum


class TaskType(str, Enum):
    RETRIEVAL = "retrieval"
    RERANKING = "reranking"
    CLASSIFICATION = "classification"
    MULTILABEL_CLASSIFICATION = "multilabel_classification"
    CLUSTERING = "clustering"
    STS = "sts"
    PAIR_CLASSIFICATION = "pair_classification"
    BITEXT = "bitext"
    SUMMARIZATION = "summarization"
    INSTRUCTION_RETRIEVAL = "instruction_retrieval"


BI_ENCODER = "bi-encoder"
UNI_ENCODER = "uni-encoder"

# task type -> (encoder style, default instruction used when a task brings none)
TASK_TYPE_TABLE: dict[TaskType, tuple[str, str]] = {
    TaskType.RETRIEVAL: (BI_ENCODER, "Given a question, retrieve passages that answer the question"),
    TaskType.RERANKING: (BI_ENCODER, "Given a query, retrieve documents relevant to the query"),
    TaskType.INSTRUCTION_RETRIEVAL: (BI_ENCODER, "Given a query, retrieve documents that follow the instruction"),
    TaskType.CLASSIFICATION: (UNI_ENCODER, "Classify the given text into its category"),
    TaskType.MULTILABEL_CLASSIFICATION: (UNI_ENCODER, "Classify the given text into its categories"),
    TaskType.CLUSTERING: (UNI_ENCODER, "Identify the topic or theme of the given text"),
    TaskType.STS: (UNI_ENCODER, "Retrieve semantically similar text"),
    TaskType.PAIR_CLASSIFICATION: (UNI_ENCODER, "Retrieve text that is semantically similar to the given text"),
    TaskType.BITEXT: (UNI_ENCODER, "Retrieve parallel sentences"),
    TaskType.SUMMARIZATION: (UNI_ENCODER, "Retrieve semantically similar summaries"),
}


def task_type(value: str | TaskType) -> TaskType:
    """Parse a task type name (case and ``-``/space insensitive), with an error that lists the valid names."""
    if isinstance(value, TaskType):
        return value
    key = str(value).strip().lower().replace("-", "_").replace(" ", "_")
    aliases = {"pairclassification": "pair_classification", "bitextmining": "bitext", "bitext_mining": "bitext",
               "multilabelclassification": "multilabel_classification",
               "instructionretrieval": "instruction_retrieval"}
    key = aliases.get(key, key)
    try:
        return TaskType(key)
    except ValueError:
        valid = ", ".join(t.value for t in TaskType)
        raise ValueError(f"unknown task type {value!r}; expected one of: {valid}") from None


def is_uni_encoder(kind: str | TaskType) -> bool:
    return TASK_TYPE_TABLE[task_type(kind)][0] == UNI_ENCODER


def default_instruction(kind: str | TaskType) -> str:
    return TASK_TYPE_TABLE[task_type(kind)][1]


def format_query(text: str, instruction: str | None) -> str:
    """``Instruct: {task}\\nQuery: {text}``; with no instruction the text is returned unchanged."""
    if not instruction:
        return text
    return f"Instruct: {instruction}\nQuery: {text}"


def format_document(text: str, instruction: str | None, kind: str | TaskType) -> str:
    """Documents are plain for bi-encoder task types and instructed like queries for uni-encoder ones."""
    return format_query(text, instruction) if is_uni_encoder(kind) else text


def query_prefix(instruction: str) -> str:
    """The prefix alone (for sentence-transformers ``prompt=``)."""
    return f"Instruct: {instruction}\nQuery: "
