"""A deterministic stand-in for an LLM behind the OpenAI-compatible HTTP API (a real server on 127.0.0.1): SDG's
openai backend talks to it over the wire. Valid answers for every SDG template, and some malformed ones."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


def _scripted_answer(prompt: str, seed: int) -> str:
    """A deterministic stand-in for an LLM behind the HTTP API: valid answers, and some malformed ones."""
    bad = "f-strings" in prompt or int(hashlib.sha1(f"{prompt}:{seed}".encode()).hexdigest(), 16) % 7 == 0
    if "Passage:" in prompt:
        passage = prompt.split("Passage:", 1)[1].strip()
        if bad:
            return "   "
        return "Query: " + " ".join(passage.split()[:9]).rstrip(".,") + "?"
    if "Brainstorm" in prompt:
        topic = re.search(r"tasks about (\w+)", prompt)
        return json.dumps([f"Retrieve {topic.group(1) if topic else 'general'} articles that answer a question",
                           "Find documents that support a claim"])
    if "assigned a retrieval task" in prompt:
        task = re.search(r"task: (.*)", prompt).group(1)
        if bad:
            return "Sorry, I can't write that " + "{"
        return json.dumps({"user_query": f"which {task.lower()}",
                           "positive_document": f"This document is about how to {task.lower()} in detail.",
                           "hard_negative_document": "A cooking recipe for tomato soup with basil."})
    if "text classification task:" in prompt:
        task = re.search(r"task: (.*)", prompt).group(1)
        labels = ["positive", "negative", "neutral", "mixed"]
        pick = int(hashlib.sha1(f"{prompt}:{seed}".encode()).hexdigest(), 16)
        label, misleading = labels[pick % 4], labels[(pick // 4 + 1 + pick % 4) % 4]
        if misleading == label:
            misleading = labels[(pick + 1) % 4]
        return json.dumps({"input_text": f"An example text ({seed}, {pick % 97}) for the task: {task.lower()}",
                           "label": f"{label} sentiment", "misleading_label": f"{misleading} sentiment"})
    if "Write a sentence" in prompt or "Write a short" in prompt:
        lang = re.search(r"values are all strings in (\w+)|translation into (\w+)", prompt)
        return json.dumps({"S1": f"The weather is nice today ({seed})", "S2": f"Today the weather is pleasant ({seed})",
                           "S3": f"The train leaves at noon ({seed}) {lang.group(0) if lang else ''}"})
    return "unexpected prompt"


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass

    def do_POST(self):  # noqa: N802
        server = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with server.lock:
            server.requests.append(body)
            count = len(server.requests)
        if self.path != "/v1/chat/completions":
            self.send_error(404)
            return
        if server.fail_after is not None and count > server.fail_after:
            self.send_response(500)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"error": {"message": "engine died", "type": "server_error"}}')
            return
        content = _scripted_answer(body["messages"][-1]["content"], body.get("seed", 0))
        payload = {"id": f"cmpl-{count}", "object": "chat.completion", "created": 0, "model": body["model"],
                   "choices": [{"index": 0, "finish_reason": "stop",
                                "message": {"role": "assistant", "content": content}}],
                   "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def llm_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.requests, server.fail_after, server.lock = [], None, threading.Lock()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


