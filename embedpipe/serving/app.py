"""The local embedding server: FastAPI + uvicorn, OpenAI-compatible ``/v1/embeddings`` over an encoder export.

Why not ``kserve.ModelServer``: KServe 0.21's OpenAI embedding protocol (``kserve.protocol.rest.openai``) imports its
request/response types from vLLM, which cannot be installed without CUDA; this server keeps OpenAI's wire format and
adds dynamic batching (:mod:`embedpipe.serving.batcher`) on the same FastAPI/uvicorn stack KServe itself runs on.
On a cluster the same app runs as the ``embedpipe-serve`` KServe runtime (``embedpipe serve /mnt/models``).
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from embedpipe.serving.batcher import DynamicBatcher, Overloaded
from embedpipe.serving.protocol import (
    EmbeddingData,
    EmbeddingRequest,
    EmbeddingResponse,
    ModelCard,
    ModelList,
    Usage,
    encode_vector,
    error_body,
)

log = logging.getLogger(__name__)


@dataclass
class ServeConfig:
    """Limits of one server; defaults suit a CPU laptop, raise them for a GPU."""

    model_name: str | None = None
    max_inputs_per_request: int = 256
    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    max_pending: int = 1024
    max_request_bytes: int = 8 * 1024 * 1024


class RequestError(ValueError):
    """A bad request: becomes a 4xx with an OpenAI error body naming ``param``."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None):
        super().__init__(message)
        self.param, self.status, self.code = param, status, code


def _type_name(value) -> str:
    return "null" if value is None else type(value).__name__


def check_input(raw, max_inputs: int) -> list[str]:
    """Turn ``input`` into a list of non-empty strings or raise a :class:`RequestError` that names the index."""
    if raw is None:
        raise RequestError("'input' is required: a string or a list of strings", "input")
    if isinstance(raw, str):
        raw = [raw]
    elif not isinstance(raw, list):
        raise RequestError(f"'input' must be a string or a list of strings, got {_type_name(raw)}", "input")
    if not raw:
        raise RequestError("'input' is an empty list; send at least one text", "input")
    if len(raw) > max_inputs:
        raise RequestError(f"too many inputs: {len(raw)} > {max_inputs} per request; split the request", "input",
                           code="too_many_inputs")
    for i, text in enumerate(raw):
        if isinstance(text, int) or (isinstance(text, list) and text and all(isinstance(t, int) for t in text)):
            raise RequestError(f"input[{i}] is a token id or token id list; this server takes strings "
                               "(token ids of another tokenizer would not match this model)", f"input[{i}]")
        if not isinstance(text, str):
            raise RequestError(f"input[{i}] is {_type_name(text)}, expected a string", f"input[{i}]")
        if not text.strip():
            raise RequestError(f"input[{i}] is empty", f"input[{i}]")
    return raw


def _pydantic_error(err: ValidationError) -> RequestError:
    first = err.errors()[0]
    param = ".".join(str(p) for p in first["loc"]) or None
    if first["type"] == "extra_forbidden":
        return RequestError(f"unknown field {param!r}", param)
    return RequestError(f"{param}: {first['msg']}", param)


def create_app(encoder, config: ServeConfig | None = None) -> FastAPI:
    """Build the FastAPI app serving ``encoder`` (an :class:`embedpipe.encoder.Encoder`)."""
    from embedpipe.encoder.instructions import default_instruction, format_document, format_query, task_type

    config = config or ServeConfig()
    model_name = config.model_name or "embedpipe"
    dimension = encoder.dimension
    created = int(time.time())

    def encode(texts: list[str], max_length: int) -> tuple[np.ndarray, list[int]]:
        ids = encoder.tokenizer(texts, add_special_tokens=True, truncation=False)["input_ids"]  # tokenised once
        counts = [min(len(x), max_length) for x in ids]
        vectors = encoder.encode_token_ids(ids, batch_size=config.max_batch_size, max_length=max_length,
                                           show_progress_bar=False)
        return vectors, counts

    batcher = DynamicBatcher(encode, max_batch_size=config.max_batch_size, max_wait_ms=config.max_wait_ms,
                             max_pending=config.max_pending)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(title="embedpipe embeddings", version="1", lifespan=lifespan)
    app.state.batcher = batcher
    app.state.encoder = encoder

    @app.exception_handler(RequestError)
    async def _request_error(_request: Request, err: RequestError):
        return JSONResponse(error_body(str(err), err.param, code=err.code), status_code=err.status)

    @app.exception_handler(Exception)
    async def _server_error(_request: Request, err: Exception):
        log.error("request failed: %s: %s", type(err).__name__, err)
        return JSONResponse(error_body(f"the server failed to embed the input: {type(err).__name__}: {err}",
                                       err_type="server_error"), status_code=500)

    def prepare(request: EmbeddingRequest, texts: list[str]) -> tuple[list[str], int]:
        try:
            kind = task_type(request.task_type)
        except ValueError as err:
            raise RequestError(str(err), "task_type") from None
        if request.input_type is None:
            if request.instruction is not None:
                raise RequestError("'instruction' needs 'input_type' (query or document)", "instruction")
            return texts, encoder.max_length
        instruction = request.instruction or default_instruction(kind)
        if request.input_type == "query":
            return [format_query(t, instruction) for t in texts], encoder.query_max_length
        return [format_document(t, instruction, kind) for t in texts], encoder.max_length

    @app.post("/v1/embeddings")
    async def embeddings(request: Request):
        body = await request.body()
        if len(body) > config.max_request_bytes:
            raise RequestError(f"request body is {len(body)} bytes; the limit is {config.max_request_bytes}",
                               status=413)
        try:
            payload = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise RequestError(f"the request body is not valid JSON: {err}") from None
        if not isinstance(payload, dict):
            raise RequestError(f"the request body must be a JSON object, got {_type_name(payload)}")
        texts = check_input(payload.get("input"), config.max_inputs_per_request)
        try:
            parsed = EmbeddingRequest.model_validate(payload)
        except ValidationError as err:
            raise _pydantic_error(err) from None
        if parsed.model is not None and parsed.model != model_name:
            raise RequestError(f"model {parsed.model!r} is not served here; this server serves {model_name!r}",
                               "model", status=404, code="model_not_found")
        if parsed.dimensions is not None and parsed.dimensions != dimension:
            raise RequestError(f"this model produces {dimension}-dimensional embeddings and was not trained for "
                               f"truncated (Matryoshka) output; omit 'dimensions' or send {dimension}",
                               "dimensions")
        formatted, max_length = prepare(parsed, texts)
        try:
            vectors, counts = await batcher.submit(formatted, max_length)
        except Overloaded as err:
            raise RequestError(f"server overloaded: {err}; retry later", status=503, code="overloaded") from None
        tokens = int(sum(counts))
        response = EmbeddingResponse(
            data=[EmbeddingData(index=i, embedding=encode_vector(v, parsed.encoding_format))
                  for i, v in enumerate(vectors)],
            model=model_name,
            usage=Usage(prompt_tokens=tokens, total_tokens=tokens),
            dimensions=dimension,
        )
        return JSONResponse(response.model_dump(), headers={"x-embedding-dimensions": str(dimension)})

    @app.get("/v1/models")
    async def models() -> ModelList:
        return ModelList(data=[ModelCard(id=model_name, created=created, dimensions=dimension,
                                         max_input_tokens=encoder.max_length,
                                         max_inputs_per_request=config.max_inputs_per_request)])

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": model_name, "batching": batcher.stats.as_dict()}

    return app


def load_app(model_dir: str | Path, config: ServeConfig | None = None, device: str | None = None) -> FastAPI:
    """Load an encoder export and build its app; the served name defaults to the export folder's name."""
    from embedpipe.encoder import Encoder

    config = config or ServeConfig()
    encoder = Encoder.from_pretrained(model_dir, device=device)
    if config.model_name is None:
        config.model_name = Path(model_dir).resolve().name
    return create_app(encoder, config)


def serve(model_dir: str | Path, host: str = "127.0.0.1", port: int = 8080, config: ServeConfig | None = None,
          device: str | None = None, log_level: str = "info") -> None:
    """Run the server in the foreground (uvicorn, one process: the model is loaded once)."""
    import uvicorn

    app = load_app(model_dir, config, device)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
