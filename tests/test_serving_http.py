"""The local server over real HTTP on loopback: OpenAI client compatibility, instructions, batching, bad requests."""

from __future__ import annotations

import base64
import concurrent.futures as cf

import httpx
import numpy as np
import pytest

from embedpipe.encoder import Encoder, format_query
from embedpipe.serving.app import ServeConfig, load_app
from embedpipe.serving.background import BackgroundServer


@pytest.fixture(scope="module")
def encoder(tiny_encoder) -> Encoder:
    return Encoder.from_pretrained(tiny_encoder, device="cpu")


@pytest.fixture(scope="module")
def server(tiny_encoder):
    config = ServeConfig(model_name="tiny", max_inputs_per_request=8, max_batch_size=16, max_wait_ms=50)
    app = load_app(tiny_encoder, config, device="cpu")
    with BackgroundServer(app) as url:
        yield url, app


def post(url: str, body, **kwargs) -> httpx.Response:
    return httpx.post(f"{url}/v1/embeddings", json=body, timeout=60, **kwargs)


def test_openai_client_gets_the_encoder_vectors(server, encoder):
    import openai

    url, _ = server
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    texts = ["How do I open a file?", "The with statement manages context."]
    result = client.embeddings.create(model="tiny", input=texts)
    got = np.array([d.embedding for d in result.data], dtype=np.float32)
    np.testing.assert_allclose(got, encoder.encode(texts), atol=1e-5)
    assert [d.index for d in result.data] == [0, 1]
    assert result.usage.prompt_tokens > 0 and result.model == "tiny"
    single = client.embeddings.create(model="tiny", input="one text")
    assert len(single.data) == 1 and len(single.data[0].embedding) == encoder.dimension


def test_dimensions_are_reported_and_checked(server, encoder):
    url, _ = server
    dim = encoder.dimension
    response = post(url, {"input": ["a"], "dimensions": dim})
    assert response.status_code == 200
    assert response.json()["dimensions"] == dim and response.headers["x-embedding-dimensions"] == str(dim)
    models = httpx.get(f"{url}/v1/models").json()["data"]
    assert models[0]["id"] == "tiny" and models[0]["dimensions"] == dim
    bad = post(url, {"input": ["a"], "dimensions": 8})
    assert bad.status_code == 400 and "Matryoshka" in bad.json()["error"]["message"]
    assert bad.json()["error"]["param"] == "dimensions"


def test_query_instruction_is_applied(server, encoder):
    url, _ = server
    instruction = "Given a question about Python, retrieve the answer"
    body = {"input": ["what is a generator"], "input_type": "query", "instruction": instruction}
    got = np.array(post(url, body).json()["data"][0]["embedding"], dtype=np.float32)
    expected = encoder.encode([format_query("what is a generator", instruction)])[0]
    plain = encoder.encode(["what is a generator"])[0]
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert not np.allclose(got, plain, atol=1e-3)
    doc = post(url, {"input": ["what is a generator"], "input_type": "document"}).json()["data"][0]["embedding"]
    np.testing.assert_allclose(np.array(doc, dtype=np.float32), plain, atol=1e-5)  # retrieval documents: plain


def test_base64_encoding(server, encoder):
    url, _ = server
    data = post(url, {"input": "bytes please", "encoding_format": "base64"}).json()["data"][0]["embedding"]
    vector = np.frombuffer(base64.b64decode(data), dtype="<f4")
    np.testing.assert_allclose(vector, encoder.encode(["bytes please"])[0], atol=1e-6)


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ({"input": []}, "input", "empty list"),
        ({"input": ""}, "input[0]", "empty"),
        ({"input": ["ok", "   "]}, "input[1]", "empty"),
        ({"input": [f"t{i}" for i in range(9)]}, "input", "too many inputs: 9 > 8"),
        ({"input": 42}, "input", "got int"),
        ({"input": [1, 2, 3]}, "input[0]", "token id"),
        ({"input": [[1, 2], [3]]}, "input[0]", "token id"),
        ({"input": ["ok", None]}, "input[1]", "null"),
        ({"input": ["ok", {"text": "x"}]}, "input[1]", "dict"),
        ({}, "input", "required"),
        ({"input": "x", "encoding_format": "int8"}, "encoding_format", "encoding_format"),
        ({"input": "x", "input_type": "passage"}, "input_type", "input_type"),
        ({"input": "x", "instruction": "do it"}, "instruction", "input_type"),
        ({"input": "x", "input_type": "query", "task_type": "translation"}, "task_type", "unknown task type"),
        ({"input": "x", "temperature": 0.5}, "temperature", "unknown field"),
        ({"input": "x", "dimensions": "576"}, "dimensions", "dimensions"),
    ],
)
def test_bad_requests_get_clear_400s(server, body, param, fragment):
    url, _ = server
    response = post(url, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert fragment in error["message"]
    assert error["type"] == "invalid_request_error"


def test_malformed_bodies_and_unknown_model(server):
    url, _ = server
    not_json = httpx.post(f"{url}/v1/embeddings", content=b"{input: nope", timeout=30,
                          headers={"content-type": "application/json"})
    assert not_json.status_code == 400 and "not valid JSON" in not_json.json()["error"]["message"]
    array = post(url, ["a", "b"])
    assert array.status_code == 400 and "JSON object" in array.json()["error"]["message"]
    wrong_model = post(url, {"input": "x", "model": "gpt-4"})
    assert wrong_model.status_code == 404 and wrong_model.json()["error"]["code"] == "model_not_found"
    # after every bad request the server still serves
    assert post(url, {"input": "still alive"}).status_code == 200
    assert httpx.get(f"{url}/health").json()["status"] == "ok"


def test_openai_client_sees_bad_request_errors(server):
    import openai

    url, _ = server
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="empty list"):
        client.embeddings.create(model="tiny", input=[])


def test_concurrent_requests_are_batched_and_each_gets_its_own_vectors(server, encoder):
    url, app = server
    texts = [f"concurrent request number {i} about python modules" for i in range(24)]
    before = app.state.batcher.stats.as_dict()

    def one(i: int):
        return i, post(url, {"input": [texts[i]]}).json()["data"][0]["embedding"]

    with cf.ThreadPoolExecutor(12) as pool:
        results = dict(pool.map(one, range(len(texts))))
    after = app.state.batcher.stats.as_dict()
    got = np.array([results[i] for i in range(len(texts))], dtype=np.float32)
    np.testing.assert_allclose(got, encoder.encode(texts), atol=1e-5)
    assert after["requests"] - before["requests"] == len(texts)
    assert after["batches"] - before["batches"] < len(texts)  # several requests shared a forward pass
    assert after["largest_batch"] > 1


def test_a_model_failure_is_a_500_and_the_server_recovers(tiny_encoder, monkeypatch):
    encoder = Encoder.from_pretrained(tiny_encoder, device="cpu")
    from embedpipe.serving.app import create_app

    real = encoder.encode_token_ids
    calls = {"n": 0}

    def flaky(ids, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("CUDA error: an illegal memory access")
        return real(ids, **kwargs)

    monkeypatch.setattr(encoder, "encode_token_ids", flaky)
    with BackgroundServer(create_app(encoder, ServeConfig(model_name="flaky"))) as url:
        failed = post(url, {"input": "x"})
        assert failed.status_code == 500 and "illegal memory access" in failed.json()["error"]["message"]
        assert post(url, {"input": "x"}).status_code == 200
