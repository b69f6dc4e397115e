"""The OpenAI embeddings wire format (``POST /v1/embeddings``) plus embedpipe's instruction extension.

Requests are validated strictly (a number where a string belongs is an error, not coerced) and every problem becomes
an OpenAI-shaped 400 ``{"error": {"message", "type", "param", "code"}}`` naming the offending field and index.
"""

from __future__ import annotations

import base64
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr


class EmbeddingRequest(BaseModel):
    """OpenAI's embedding request; ``input_type``/``instruction``/``task_type`` are embedpipe extensions.

    ``input_type`` "query" formats each text as ``Instruct: {instruction}\\nQuery: {text}``; "document" formats it the
    way the task type wants documents (plain for retrieval). Without ``input_type`` the texts are embedded as sent
    (the client formats them, as it must for vLLM's endpoint).
    """

    model_config = ConfigDict(extra="forbid")

    input: StrictStr | list[StrictStr]
    model: StrictStr | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: StrictInt | None = Field(None, gt=0)
    user: StrictStr | None = None
    input_type: Literal["query", "document"] | None = None
    instruction: StrictStr | None = None
    task_type: StrictStr = "retrieval"


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: Usage
    dimensions: int


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "embedpipe"
    dimensions: int
    max_input_tokens: int
    max_inputs_per_request: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def error_body(message: str, param: str | None = None, err_type: str = "invalid_request_error",
               code: str | None = None) -> dict:
    """OpenAI's error envelope (what the ``openai`` client turns into ``BadRequestError`` etc.)."""
    return {"error": {"message": message, "type": err_type, "param": param, "code": code}}


def encode_vector(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    """``float``: a JSON list; ``base64``: little-endian float32 bytes, as OpenAI's API returns them."""
    if encoding_format == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector.astype(np.float32).tolist()
