"""Joining (or starting) Ray, the engine handle the driver holds, and the Ray Data pipeline
that turns a list of photos into a stream of finished rows."""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
from dataclasses import dataclass, field

from geolocsft.engine import EngineError

# Photos per Ray Data dataset: one photo per block keeps a killed actor's loss to its photo in
# flight; windows keep the number of blocks (and driver memory) bounded on million-photo lists.
WINDOW = 4096
# Preparation tasks ask for no CPU so they are never starved by actors holding every CPU; at
# most this many per actor run at once (they take milliseconds next to inference).
PREPARE_PER_ACTOR = 2


@dataclass
class ClusterOptions:
    address: str | None = None  # None: start Ray on this machine
    actors: int | None = None  # None: the cluster's CPUs (or GPUs) / resources per actor
    threads_per_actor: int = 1
    gpus_per_actor: float = 0.0
    object_store_mb: int | None = None  # only when starting Ray here


@dataclass
class WorkerStats:
    photos: int = 0
    infer_s: float = 0.0
    first_s: float | None = None  # driver clock when its first row arrived
    last_s: float | None = None


@dataclass
class ClusterStats:
    workers: dict[str, WorkerStats] = field(default_factory=dict)
    driver_s: float = 0.0  # time the driver spent handling rows (store writes, places)
    rows: int = 0
    wall_s: float = 0.0

    def table(self) -> list[str]:
        lines = []
        for name, w in sorted(self.workers.items()):
            span = (w.last_s - w.first_s) if w.first_s is not None and w.last_s else 0.0
            rate = f"{w.photos / w.infer_s:.2f} photos/s busy" if w.infer_s else "-"
            lines.append(f"actor {name}: {w.photos} photos, {w.infer_s / max(w.photos, 1):.2f} "
                         f"s/photo in the engine, {rate}, active {span:.1f} s")
        if self.rows:
            lines.append(f"driver: {1000 * self.driver_s / self.rows:.1f} ms per photo "
                         f"(store, places) over {self.rows} rows")
        return lines


def connect(options: ClusterOptions) -> bool:
    """Join the cluster at options.address or start Ray here. Returns True when this call
    connected (and so should disconnect); False when this process was already connected."""
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
    # Workers started here must import the same code as the driver (a source checkout run with
    # PYTHONPATH); on a cluster every node has geolocsft installed (docs/cluster.md).
    env_vars = {k: os.environ[k] for k in ("PYTHONPATH",) if os.environ.get(k)}
    common = {"runtime_env": {"env_vars": env_vars} if env_vars else None,
              "log_to_driver": False, "logging_level": logging.WARNING}
    try:
        if options.address is None:
            store = options.object_store_mb
            ray.init(include_dashboard=False,
                     object_store_memory=store * 1024 * 1024 if store else None, **common)
        elif options.address.startswith("ray://"):  # Ray Client takes fewer options
            ray.init(address=options.address, runtime_env=common["runtime_env"])
        else:
            ray.init(address=options.address, **common)
    except Exception as exc:  # ConnectionError, ValueError, RuntimeError from ray.init
        where = options.address or "this machine"
        raise EngineError(f"cannot {'join Ray at' if options.address else 'start Ray on'} "
                          f"{where}: {exc}") from None
    return True


def _remote_error(exc: BaseException) -> EngineError:
    """The user-facing line inside a Ray task failure."""
    cause = getattr(exc, "cause", None)
    return EngineError(str(cause) if cause is not None else str(exc).splitlines()[0])


class ClusterEngine:
    """What the driver holds instead of a loaded Engine: the model's spec, the settings the
    workers' engines key their results with, and the pipeline that runs them."""

    def __init__(self, spec, options: ClusterOptions, engine_kwargs: dict):
        self.spec = spec
        self.options = options
        self.engine_kwargs = dict(engine_kwargs)
        self.engine_kwargs["n_threads"] = options.threads_per_actor
        # GPU layers only where Ray gave the actor a GPU; elsewhere actors share no device.
        self.engine_kwargs["n_gpu_layers"] = -1 if options.gpus_per_actor > 0 else 0
        self.stats = ClusterStats()
        self._settings: dict[tuple, dict] = {}
        self._owns_connection = connect(options)
        try:
            self.actors = options.actors or self._default_actors()
            self._warn_if_oversized()
            self.settings()  # load the model once on a worker: a bad model fails here
        except BaseException:
            self.close()
            raise

    def _default_actors(self) -> int:
        import ray

        resources = ray.cluster_resources()
        if self.options.gpus_per_actor > 0:
            return max(1, int(resources.get("GPU", 0) // self.options.gpus_per_actor))
        return max(1, int(resources.get("CPU", 1) // self.options.threads_per_actor))

    def _warn_if_oversized(self) -> None:
        """A pool bigger than the cluster waits for nodes to join (an autoscaler may add them):
        say so rather than look hung."""
        import ray

        resources = ray.cluster_resources()
        for name, per_actor in (("CPU", self.options.threads_per_actor),
                                ("GPU", self.options.gpus_per_actor)):
            need, have = self.actors * per_actor, resources.get(name, 0)
            if need > have:
                print(f"geolocsft: warning: {self.actors} actors need {need:g} {name}s, the "
                      f"cluster has {have:g} now; the run waits for nodes to join",
                      file=sys.stderr)

    def settings(self, *, samples: int = 1, temperature: float = 0.0) -> dict:
        import ray

        from cluster.stages import engine_settings

        key = (int(samples), float(temperature))
        if key not in self._settings:
            probe = ray.remote(engine_settings).options(num_cpus=0, max_retries=0)
            try:
                self._settings[key] = ray.get(probe.remote(self.spec, self.engine_kwargs,
                                                           samples, temperature))
            except ray.exceptions.RayError as exc:
                raise _remote_error(exc) from None
        return self._settings[key]

    def close(self) -> None:
        import ray

        if self._owns_connection and ray.is_initialized():
            ray.shutdown()
        self._owns_connection = False

    # -- the pipeline
    def _dataset(self, rows: list[dict], done: frozenset, samples: int, temperature: float):
        import ray.data

        from cluster.stages import LocateActor, prepare_photo

        logging.getLogger("ray.data").setLevel(logging.ERROR)  # our own progress line instead
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.execution_options.preserve_order = False  # rows come back as they finish
        ds = ray.data.from_items(rows, override_num_blocks=len(rows))
        ds = ds.map(prepare_photo, fn_kwargs={"budget": self.spec.budget.to_dict(), "done": done},
                    num_cpus=0,
                    compute=ray.data.TaskPoolStrategy(size=PREPARE_PER_ACTOR * self.actors))
        return ds.map(LocateActor,
                      fn_constructor_kwargs={"spec": self.spec, "engine_kwargs": self.engine_kwargs,
                                             "samples": samples, "temperature": temperature},
                      num_cpus=self.options.threads_per_actor,
                      num_gpus=self.options.gpus_per_actor or None,
                      # Ray Data restarts a killed actor and retries its photo (max_restarts and
                      # max_task_retries default to -1 for actor pools); the driver drops a
                      # photo delivered twice, so the store holds it once.
                      compute=ray.data.ActorPoolStrategy(size=self.actors))

    def stream(self, items, done_hashes, *, samples: int, temperature: float,
               cancel: threading.Event):
        """Finished rows as they arrive, photo order not kept. Stops promptly on cancel (rows in
        flight are dropped). A retried task may deliver a photo twice: the caller dedupes."""
        done = frozenset(done_hashes)  # Ray Data ships it once per stage, not per photo
        for start in range(0, len(items), WINDOW):
            window = [{"path": str(i.path), "root": str(i.root)}
                      for i in items[start:start + WINDOW]]
            ds = self._dataset(window, done, samples, temperature)
            if not (yield from _drain(ds, cancel)):
                return


_END = object()


def _drain(ds, cancel: threading.Event):
    """Iterate the dataset on a thread so the driver can notice cancel while a row is pending.
    Returns False when cancelled."""
    rows: queue.Queue = queue.Queue()
    stop = threading.Event()

    def pump():
        try:
            for row in ds.iter_rows():
                rows.put(row)
                if stop.is_set():
                    break
            rows.put(_END)
        except BaseException as exc:  # handed to the driver's thread
            rows.put(exc)

    thread = threading.Thread(target=pump, name="geolocsft-ray-rows", daemon=True)
    thread.start()
    try:
        while True:
            if cancel.is_set():
                return False
            try:
                row = rows.get(timeout=0.2)
            except queue.Empty:
                continue
            if row is _END:
                thread.join()
                return True
            if isinstance(row, BaseException):
                raise row
            yield row
    finally:
        stop.set()


class RayBackend:
    """Set on the CLI's args by cluster.cli: the core's locate/bench handlers call open_engine
    and runner instead of Engine and LocateRunner."""

    def __init__(self, options: ClusterOptions, *, report: bool = True):
        self.options = options
        self.report = report
        self.engine: ClusterEngine | None = None

    def open_engine(self, spec, **engine_kwargs) -> ClusterEngine:
        self.engine = ClusterEngine(spec, self.options, engine_kwargs)
        return self.engine

    def runner(self, engine, store, **kwargs):
        from cluster.runner import RayLocateRunner

        return RayLocateRunner(engine, store, **kwargs)

    def finish(self) -> None:
        """Per-actor throughput after the run (the core handler printed its summary)."""
        if self.engine is not None and self.report:
            for line in self.engine.stats.table():
                print(f"ray: {line}", file=sys.stderr)
        if self.engine is not None:
            self.engine.close()
