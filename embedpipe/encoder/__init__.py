"""The bidirectional Llama encoder shared by training, mining, merging, evaluation and serving.

Names are imported on first use (PEP 562), so ``embedpipe.encoder.instructions`` (used by the data schema) does not
pull in torch and transformers: a data or mining step that never touches the model starts seconds sooner.
"""

from importlib import import_module

_EXPORTS = {
    "Encoder": "encoder", "NotAnEncoderExport": "encoder", "check_texts": "encoder", "read_export_metadata": "encoder",
    "TASK_TYPE_TABLE": "instructions", "TaskType": "instructions", "default_instruction": "instructions",
    "format_document": "instructions", "format_query": "instructions", "is_uni_encoder": "instructions",
    "task_type": "instructions",
    "LlamaBidirectionalConfig": "modeling_bidirectional_llama", "LlamaBidirectionalModel": "modeling_bidirectional_llama",
    "mean_pool": "modeling_bidirectional_llama",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
