"""The bidirectional Llama encoder shared by training, mining, merging, evaluation and serving."""

from transformers import AutoConfig, AutoModel

from embedpipe.encoder.encoder import Encoder, NotAnEncoderExport, check_texts, read_export_metadata
from embedpipe.encoder.instructions import (
    TASK_TYPE_TABLE,
    TaskType,
    default_instruction,
    format_document,
    format_query,
    is_uni_encoder,
    task_type,
)
from embedpipe.encoder.modeling_bidirectional_llama import (
    LlamaBidirectionalConfig,
    LlamaBidirectionalModel,
    mean_pool,
)

try:
    AutoConfig.register("llama_bidirectional", LlamaBidirectionalConfig)
    AutoModel.register(LlamaBidirectionalConfig, LlamaBidirectionalModel)
except ValueError:  # already registered (module re-imported)
    pass

__all__ = [
    "Encoder", "NotAnEncoderExport", "check_texts", "read_export_metadata", "TASK_TYPE_TABLE", "TaskType",
    "default_instruction", "format_document", "format_query", "is_uni_encoder", "task_type",
    "LlamaBidirectionalConfig", "LlamaBidirectionalModel", "mean_pool",
]
