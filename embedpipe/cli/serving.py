"""Commands of the serving area: ``embedpipe serve`` (local OpenAI-compatible server) and ``embedpipe deploy``
(KServe InferenceService: applied through the kubernetes client when a kubeconfig is there, printed otherwise)."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add this area's commands to ``app``."""

    @app.command()
    def serve(
        model_dir: Path = typer.Argument(..., help="An encoder export (embedpipe.json beside the weights)."),
        host: str = typer.Option("127.0.0.1", help="Address to bind; 0.0.0.0 inside a container."),
        port: int = typer.Option(8080, help="TCP port."),
        model_name: str = typer.Option(None, help="Served model id (default: the folder's name)."),
        max_batch_size: int = typer.Option(32, help="Texts per forward pass when requests are merged."),
        max_wait_ms: float = typer.Option(5.0, help="How long the first request of a batch waits for others."),
        max_inputs: int = typer.Option(256, help="Most texts one request may send (more: HTTP 400)."),
        device: str = typer.Option(None, help="cpu, cuda, cuda:1 ... (default: cuda when available)."),
    ) -> None:
        """Serve MODEL_DIR with an OpenAI-compatible POST /v1/embeddings (plus GET /v1/models, /health)."""
        from embedpipe.encoder import NotAnEncoderExport
        from embedpipe.serving.app import ServeConfig, serve as run_server

        config = ServeConfig(model_name=model_name, max_inputs_per_request=max_inputs,
                             max_batch_size=max_batch_size, max_wait_ms=max_wait_ms)
        try:
            run_server(model_dir, host=host, port=port, config=config, device=device)
        except (FileNotFoundError, NotAnEncoderExport) as err:
            raise typer.BadParameter(str(err), param_hint="MODEL_DIR") from None

    @app.command()
    def deploy(
        model_uri: str = typer.Argument(..., help="Where the merged encoder export is: s3://bucket/path, pvc://..."),
        name: str = typer.Option("embedpipe-embedder", help="InferenceService name (a DNS label)."),
        namespace: str = typer.Option("embedpipe", help="Namespace."),
        runtime: str = typer.Option("vllm", help="vllm (GPU, vLLM pooling runner) or embedpipe (our server image)."),
        gpus: int = typer.Option(1, help="GPUs per replica; 0 for CPU (embedpipe runtime only)."),
        min_replicas: int = typer.Option(1, help="Autoscaling lower bound (0 allows scale to zero)."),
        max_replicas: int = typer.Option(4, help="Autoscaling upper bound."),
        recipe: Path = typer.Option(None, help="Take image registry/tag and the GPU node selector from a recipe."),
        with_runtime: bool = typer.Option(False, "--with-runtime", help="Also apply/print the ServingRuntime."),
        kubeconfig: Path = typer.Option(None, help="Kubeconfig (default: $KUBECONFIG, ~/.kube/config, in-cluster)."),
        context: str = typer.Option(None, help="Kubeconfig context."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Server-side dry run: validated, not stored."),
        print_only: bool = typer.Option(False, "--print", help="Print the manifests; never contact a cluster."),
        output: str = typer.Option("yaml", help="Printed format: yaml or json."),
    ) -> None:
        """Render the KServe InferenceService for MODEL_URI; apply it when a cluster is configured, else print it."""
        import yaml

        from embedpipe.deploy.apply import apply_custom_object, kube_client
        from embedpipe.deploy.kserve import render_inference_service, render_serving_runtime
        from embedpipe.deploy.validate import ManifestError, validate_documents

        from embedpipe.orchestration.config import GPU_ACCELERATOR
        from embedpipe.orchestration.images import DEFAULT_REGISTRY, DEFAULT_TAG

        registry, tag, selector, gpu_resource = DEFAULT_REGISTRY, DEFAULT_TAG, None, GPU_ACCELERATOR
        if recipe is not None:
            from embedpipe.recipe import load_recipe

            pipeline = load_recipe(recipe).pipeline
            registry, tag = pipeline.image_registry, pipeline.image_tag
            selector, gpu_resource = pipeline.gpu_node_selector, pipeline.gpu_accelerator
        try:
            docs = [render_inference_service(name, model_uri, namespace=namespace, runtime=runtime, gpus=gpus,
                                             min_replicas=min_replicas, max_replicas=max_replicas,
                                             node_selector=selector, gpu_resource=gpu_resource)]
            if with_runtime:
                rt = render_serving_runtime(runtime, image_registry=registry, image_tag=tag)
                rt["metadata"]["namespace"] = namespace
                docs.insert(0, rt)
            validate_documents(docs, "rendered manifests")
        except (ValueError, ManifestError) as err:
            raise typer.BadParameter(str(err)) from None
        if output not in ("yaml", "json"):
            raise typer.BadParameter(f"output must be yaml or json, got {output!r}", param_hint="--output")

        def show() -> None:
            if output == "json":
                typer.echo(json.dumps(docs if len(docs) > 1 else docs[0], indent=2))
            else:
                typer.echo(yaml.safe_dump_all(docs, sort_keys=False), nl=False)

        if print_only:
            show()
            return
        try:
            api_client = kube_client(kubeconfig, context)
        except FileNotFoundError as err:
            raise typer.BadParameter(str(err), param_hint="--kubeconfig") from None
        if api_client is None:
            typer.echo("no kubeconfig and not in a cluster: printing the manifests instead of applying them "
                       "(kubectl apply -f - would create them)", err=True)
            show()
            return
        for doc in docs:
            try:
                result = apply_custom_object(api_client, doc, dry_run=dry_run)
            except RuntimeError as err:
                typer.echo(str(err), err=True)
                raise typer.Exit(1) from None
            verb = "validated (server dry run)" if dry_run else "applied"
            typer.echo(f"{doc['kind']}/{result['metadata']['name']} {verb} in namespace "
                       f"{result['metadata'].get('namespace', '-')}")
