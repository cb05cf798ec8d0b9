"""``avengers embed``: give every query a vector in the active embedding space."""

from __future__ import annotations

import dataclasses
import sys

import click
from avengers_store.cli import options
from avengers_store.cli.commands import Command
from avengers_store.cli.output import echo_json

from avengers_store.calibration.query_vectors import embed_queries, import_npy


@click.command("embed", cls=Command)
@click.option(
    "--embedder",
    help="all-MiniLM-L6-v2 (default; ONNX Runtime, else torch), all-MiniLM-L6-v2-int8 (its own "
    "space), sentence-transformers:<dir>, model2vec:<dir> or openai:<base_url>#<model>. "
    "Default: the active space's embedder, else $AVENGERS_EMBEDDER.",
)
@click.option("--batch-size", type=int, default=64, show_default=True, help="Texts per batch.")
@click.option(
    "--from-npy",
    "npy",
    type=click.Path(exists=True, dir_okay=False),
    help="Import precomputed vectors instead: row i of the .npy is row i of --source.",
)
@click.option(
    "--source",
    type=click.Path(dir_okay=False),
    help="With --from-npy: the file the queries were loaded from (same path as at load time).",
)
@options.json_output
def command(embedder, batch_size, npy, source, as_json) -> None:
    """Embed every query that has no vector yet in the embedder's space (made active).

    Batches commit as they finish: an interrupted run resumes where it stopped. A different
    embedder gets its own space; vectors of two spaces are never mixed. With --from-npy the
    vectors come from a file (checked: one row per row of the loaded file, same dimension as
    the space; float16 is fine; rows are L2-normalised).

    \b
    Example:
      avengers embed
      avengers embed --embedder all-MiniLM-L6-v2-int8
      avengers embed --embedder openai:http://vllm-embed:8000/v1#gte-Qwen2-7B-instruct
      avengers embed --from-npy embeddings_minilm.npy --source routerdc_7models.parquet
    """
    progress = sys.stderr.isatty()
    if npy:
        if not source:
            raise click.UsageError("--from-npy needs --source (the file the queries came from)")
        result = import_npy(npy, source, embedder=embedder, progress=progress)
        if as_json:
            echo_json(dataclasses.asdict(result))
            return
        click.echo(
            f"imported {result.imported:,} vectors into space {result.space_id} "
            f"({result.embedder}, {result.dimension}-d); {result.already:,} already had one "
            f"[{result.seconds:.1f}s]"
        )
        return
    if source:
        raise click.UsageError("--source is only used with --from-npy")
    result = embed_queries(embedder, batch_size=batch_size, progress=progress)
    if as_json:
        echo_json(dataclasses.asdict(result))
        return
    click.echo(
        f"embedded {result.embedded:,} queries in space {result.space_id} "
        f"({result.embedder}, {result.dimension}-d); {result.already:,} already had a vector "
        f"[{result.seconds:.1f}s]"
    )
