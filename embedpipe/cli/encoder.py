"""``embedpipe convert`` and ``embedpipe encode``."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    app.command("convert")(convert)
    app.command("encode")(encode)


def convert(
    source: str = typer.Argument(..., help="Llama-family checkpoint folder, a .gguf file, or 'smollm2-135m-instruct' "
                                           "(the packaged SmolLM2 GGUF)."),
    out_dir: Path = typer.Argument(..., help="Where to write the encoder export."),
    max_length: int = typer.Option(512, help="Maximum tokens per text; longer texts are truncated and counted."),
) -> None:
    """Make a causal Llama checkpoint a bidirectional mean-pooling encoder and export it.

    The export loads with embedpipe, with AutoModel.from_pretrained(dir, trust_remote_code=True), and with
    SentenceTransformer(dir, trust_remote_code=True); all three give the same vectors.
    """
    from embedpipe.encoder.convert import convert_checkpoint

    out = convert_checkpoint(source, out_dir, max_length=max_length)
    typer.echo(f"encoder written to {out}")


def encode(
    model_dir: Path = typer.Argument(..., help="An encoder export (from `embedpipe convert` or training)."),
    input_file: Path = typer.Argument(..., help="Texts, one per line (.txt) or a JSONL file with a 'text' field."),
    output: Path = typer.Option(Path("embeddings.npy"), "--output", "-o", help="Where to write the .npy matrix."),
    instruction: str = typer.Option(None, help="Write each text as 'Instruct: {instruction}\\nQuery: {text}'."),
    batch_size: int = typer.Option(32, help="Texts per forward pass."),
    max_length: int = typer.Option(None, help="Override the export's maximum tokens per text."),
) -> None:
    """Encode texts from a file into an (n, dim) float32 .npy of unit-norm vectors."""
    import numpy as np

    from embedpipe.encoder import Encoder, format_query
    from embedpipe.encoder.texts import read_texts

    texts = read_texts(input_file)
    encoder = Encoder.from_pretrained(model_dir, max_length=max_length)
    if instruction:
        texts = [format_query(t, instruction) for t in texts]
    vectors = encoder.encode(texts, batch_size=batch_size)
    np.save(output, vectors)
    typer.echo(f"{len(texts)} texts -> {output} {vectors.shape}; {encoder.truncated_count} truncated")
