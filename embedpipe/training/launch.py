"""``python -m embedpipe.training.launch``: one stage, in one process or under torchrun (multi-GPU, multi-node).

    torchrun --nproc_per_node 8 --nnodes 4 ... -m embedpipe.training.launch \\
        --recipe recipes/llama-embed-nemotron-8b.yaml --stage stage1 --records s3://.../records.jsonl \\
        --init-model meta-llama/Llama-3.1-8B --out s3://.../stage1 --checkpoint-dir s3://.../ckpt/stage1

Rank 0 writes the summary (``--summary``) as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m embedpipe.training.launch", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--recipe", help="recipe YAML/JSON file")
    source.add_argument("--recipe-env", metavar="VAR", help="read the recipe JSON from this environment variable "
                        "(training jobs: EMBEDPIPE_RECIPE_JSON)")
    parser.add_argument("--stage", required=True, choices=["stage1", "stage2"])
    parser.add_argument("--records", required=True, help="records JSONL/Parquet (local or s3://), with mined negatives")
    parser.add_argument("--init-model", required=True, help="encoder export or base checkpoint")
    parser.add_argument("--out", required=True, help="output encoder export (local or s3://)")
    parser.add_argument("--checkpoint-dir", default=None)
    parser.add_argument("--no-resume", action="store_true")
    parser.add_argument("--variant", default=None, help='stage-2 variant as JSON, e.g. \'{"name": "mix-b", "learning_rate": 3e-6}\'')
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="recipe override section.key=value")
    parser.add_argument("--summary", default=None, help="write the summary JSON here (rank 0)")
    parser.add_argument("--trusted-records", action="store_true", help="the records are the mining step's output "
                        "(validated when the data build or SDG made them): check each row's shape only")
    return parser.parse_args(argv)


def mpi_to_torch_env(environ=None, hostfile: str = "/etc/mpi/hostfile") -> dict[str, str]:
    """torch.distributed's variables for a process that ``mpirun`` started (Trainer's deepspeed-distributed runtime):
    RANK / WORLD_SIZE / LOCAL_RANK from Open MPI's, MASTER_ADDR the first host of the hostfile (the launcher, which
    runs rank 0 as a node). Empty when not under Open MPI, or when torchrun set them already."""
    environ = os.environ if environ is None else environ
    if "OMPI_COMM_WORLD_RANK" not in environ or "RANK" in environ:
        return {}
    env = {"RANK": environ["OMPI_COMM_WORLD_RANK"], "WORLD_SIZE": environ["OMPI_COMM_WORLD_SIZE"],
           "LOCAL_RANK": environ.get("OMPI_COMM_WORLD_LOCAL_RANK", "0"),
           "MASTER_PORT": environ.get("MASTER_PORT", "29500")}
    if "MASTER_ADDR" in environ:
        env["MASTER_ADDR"] = environ["MASTER_ADDR"]
    else:
        try:
            with open(hostfile) as handle:
                hosts = [line.split()[0] for line in handle if line.strip() and not line.lstrip().startswith("#")]
        except OSError as err:
            raise RuntimeError(f"started by mpirun but the MPI hostfile {hostfile} is unreadable ({err}): "
                               "set MASTER_ADDR") from None
        if not hosts:
            raise RuntimeError(f"started by mpirun but the MPI hostfile {hostfile} lists no host: set MASTER_ADDR")
        env["MASTER_ADDR"] = hosts[0]
    return env


def load_launch_recipe(args: argparse.Namespace):
    """The recipe from ``--recipe`` (a file, with ``--set`` overrides) or ``--recipe-env`` (JSON in a variable)."""
    from embedpipe.recipe import RecipeError, load_recipe, recipe_from_tree

    if args.recipe_env:
        text = os.environ.get(args.recipe_env)
        if not text:
            raise RecipeError(f"--recipe-env {args.recipe_env}: the variable is unset or empty")
        try:
            tree = json.loads(text)
        except json.JSONDecodeError as err:
            raise RecipeError(f"${args.recipe_env}: not a recipe JSON ({err})") from None
        return recipe_from_tree(tree, args.overrides, origin=f"${args.recipe_env}")
    return load_recipe(args.recipe, args.overrides)


def run(recipe, stage: str, records: str, init_model: str, out: str, variant: dict | None = None,
        checkpoint_dir: str | None = None, resume: bool = True, summary_path: str | None = None,
        trusted_records: bool = False) -> dict:
    """One stage in this process (one rank of a torchrun/mpirun group, or alone) on an already loaded recipe."""
    from embedpipe import tracking
    from embedpipe.training.run import train_stage

    rank = int(os.environ.get("RANK", "0"))
    with tracking.resumed_run(rank):  # rank 0 logs into the child run its launcher opened (MLFLOW_RUN_ID)
        summary = train_stage(recipe, stage, records, init_model, out, variant=variant,
                              checkpoint_dir=checkpoint_dir, resume=resume, trusted_records=trusted_records)
    if rank == 0 and summary_path:
        with open(summary_path, "w") as handle:
            json.dump(summary, handle, indent=2, default=str)
    import torch

    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.update(mpi_to_torch_env())
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"[rank {rank}] %(asctime)s %(name)s: %(message)s")
    run(load_launch_recipe(args), args.stage, args.records, args.init_model, args.out,
        variant=json.loads(args.variant) if args.variant else None, checkpoint_dir=args.checkpoint_dir,
        resume=not args.no_resume, summary_path=args.summary, trusted_records=args.trusted_records)
    return 0


def launch_local(nproc: int, argv: list[str], run_id: str = "embedpipe-train") -> None:
    """Run ``python -m embedpipe.training.launch ARGV`` as ``nproc`` processes on this node with torch's elastic
    launcher (what ``torchrun --standalone --nproc_per_node N`` does): one process per GPU of the pod.

    A worker that fails fails the call (``ChildFailedError`` names the rank and its error)."""
    import uuid

    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=f"{run_id}-{uuid.uuid4().hex[:8]}",
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=1,
                          start_method="spawn")
    elastic_launch(config, sys.executable)("-m", "embedpipe.training.launch", *argv)


if __name__ == "__main__":
    sys.exit(main())
