"""The `--ray` options of `geolocsft locate` and `geolocsft bench run`, registered through the
core's OPTION_MODULES hook. Cheap to import: Ray is imported only when --ray is given."""

from __future__ import annotations

import argparse

from geolocsft.cli import CliError

COMMANDS = ("locate", "bench run")
LOCAL = "local"  # --ray without an address: start a Ray instance on this machine


def extend(command: str, parser: argparse.ArgumentParser) -> None:
    if command not in COMMANDS:
        return
    group = parser.add_argument_group("cluster (Ray; needs the `cluster` extra)")
    group.add_argument("--ray", nargs="?", const=LOCAL, default=None, metavar="ADDRESS",
                       help="run across a Ray cluster: no ADDRESS starts Ray on this machine; "
                       "'auto' or ray://host:10001 joins a running cluster (docs/cluster.md)")
    group.add_argument("--actors", type=int, default=None, metavar="N",
                       help="inference actors, each loading the model once "
                       "(default: the cluster's CPUs / threads per actor)")
    group.add_argument("--threads-per-actor", type=int, default=1, metavar="T",
                       help="llama.cpp threads (and Ray CPUs) per actor (default 1)")
    group.add_argument("--gpus-per-actor", type=float, default=0, metavar="G",
                       help="GPUs per actor; > 0 offloads every layer (llama.cpp built with "
                       "CUDA/Metal; default 0)")
    local_handler = parser.get_default("handler")

    def handler(args):
        if args.ray is None:
            for flag in ("actors", "gpus_per_actor"):
                if getattr(args, flag):
                    raise CliError(f"--{flag.replace('_', '-')} needs --ray")
            return local_handler(args)
        args.backend = make_backend(args)
        try:
            return local_handler(args)
        finally:
            args.backend.finish()

    parser.set_defaults(handler=handler)


def make_backend(args):
    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401
    except ImportError:
        raise CliError("--ray needs Ray: install the cluster extra, "
                       "pip install -e '.[cluster]'") from None
    from cluster.backend import ClusterOptions, RayBackend

    if args.actors is not None and args.actors < 1:
        raise CliError("--actors must be at least 1")
    if args.threads_per_actor < 1:
        raise CliError("--threads-per-actor must be at least 1")
    if args.gpus_per_actor < 0:
        raise CliError("--gpus-per-actor must be 0 or more")
    if getattr(args, "threads", None):
        raise CliError("with --ray, give --threads-per-actor instead of --threads")
    address = None if args.ray == LOCAL else args.ray
    return RayBackend(ClusterOptions(address=address, actors=args.actors,
                                     threads_per_actor=args.threads_per_actor,
                                     gpus_per_actor=args.gpus_per_actor))
