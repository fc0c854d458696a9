"""Scenario 7: ``sandboxfs worker`` (a Remote Workers API bot for BuildGrid): lazy sandbox
materialisation against an eager download of every input.

A throwaway PostgreSQL + BuildGrid 0.9.1 (``tests.engine``) is started *unpinned* (on
every CPU; this process's CPU-0 affinity is lifted while they start).  The worker runs
under ``taskset -c SERVER_CPU`` (CPU 1 here), with its own state dir under the work tree;
this process, the eager runner and what it starts run on CPU 0.

1. **Per action**, an input root of ``worker_files`` files (100 per directory, 1-4 KiB of
   random bytes each; 10,000 in the full mode) plus a list of paths, and the action
   ``sh -c 'xargs cat < list-<P> > /dev/null'``, reading P % (5, 50, 100) of the files (the
   same paths every round).  Every round uploads *new* random content to the same paths
   (not timed), so nobody has the blobs yet: the first time the worker sees these inputs.
   The Command is the same across rounds (no salt: the fresh content already makes the
   Action distinct, and ``do_not_cache`` is set), so the prefetch of the files that Command
   looked up last time applies from the second round on (round 1 is the warm-up).
   * *lazy*: Execute through BuildGrid to the worker, end to end in this process; and the
     worker's own time (lease in hand -> result ready), which the worker puts in
     ``ExecutedActionMetadata.auxiliary_metadata`` as a Duration: BuildGrid overwrites
     worker_start/worker_completed with the times it assigned the lease and processed the
     report, so those two include engine round trips.
     Once with a ``--no-prefetch`` worker, once with a default one (two worker processes in
     turn, never both up: BuildGrid would hand the lease to either).
   * *eager*: what a worker without sandboxfs does, in this process, for the same uploaded
     Action: read the Action and Command, the Directory tree level by level, every file blob
     in BatchReadBlobs batches (``sandboxfs.worker.fetch._plan``: <= 3 MiB, <= 1000 blobs) on
     4 threads (as ``fetch_many``), write them into a fresh directory, run the command there
     with subprocess, delete the directory.  No engine scheduling is in it, so the report
     adds the engine's own part of a trivial action (2., end to end minus the worker's part).
2. **Trivial action** (``/bin/true``, empty input root), ``worker_trivial`` per round: end to
   end through the worker, the worker's own time, BuildGrid's worker_start ->
   worker_completed, the engine's scheduling (queued -> worker_start) and the rest.

Targets (worker issue): lazy clearly faster than eager at 5 %, <= 1.2x eager at 100 %;
worker overhead per trivial action <= 20 ms over the engine's round trips.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import statistics
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from google.protobuf import duration_pb2

from bench.measure import Progress, summary
from bench.mounts import CLIENT_CPU, SERVER_CPU

FRACTIONS = (5, 50, 100)  # percent of the files the action reads
VARIANTS = ("no_prefetch", "prefetch")
FILES_PER_DIR = 100
SIZES = (1024, 4096)
TARGET_5_RATIO = 1.0      # lazy / eager at 5 %: below ("clearly": we say by how much)
TARGET_100_RATIO = 1.2    # lazy / eager at 100 %: at most
TARGET_OVERHEAD_MS = 20.0
EAGER_THREADS = 4


def steps(config) -> int:
    return 2 * (config.warmup + config.repeats) + 2


def _argv(fraction: int) -> list[str]:
    return ["sh", "-c", f"xargs cat < list-{fraction} > /dev/null"]


class Inputs:
    """The paths, their sizes and the read lists (fixed); ``fresh()`` new content."""

    def __init__(self, files: int) -> None:
        rng = random.Random(7)
        dirs = max(1, files // FILES_PER_DIR)
        self.paths = [f"d{d:03d}/f{f:03d}" for d in range(dirs) for f in range(files // dirs)]
        self.sizes = [rng.randint(*SIZES) for _ in self.paths]
        self.lists = {}
        for fraction in FRACTIONS:
            chosen = sorted(rng.sample(self.paths, max(1, len(self.paths) * fraction // 100)))
            self.lists[fraction] = ("\n".join(chosen) + "\n").encode()

    def fresh(self, fraction: int) -> dict[str, bytes]:
        blob = os.urandom(sum(self.sizes))
        out, at = {}, 0
        for path, size in zip(self.paths, self.sizes):
            out[path] = blob[at:at + size]
            at += size
        out[f"list-{fraction}"] = self.lists[fraction]
        return out


def _ts(t) -> float:
    return t.seconds + t.nanos / 1e9


def _meta(response) -> dict[str, float]:
    """Seconds between the ExecutedActionMetadata timestamps that matter here."""
    m = response.result.execution_metadata
    q, ws, wc = _ts(m.queued_timestamp), _ts(m.worker_start_timestamp), _ts(m.worker_completed_timestamp)
    own = None
    for extra in m.auxiliary_metadata:
        if extra.Is(duration_pb2.Duration.DESCRIPTOR):
            d = duration_pb2.Duration()
            extra.Unpack(d)
            own = d.ToNanoseconds() / 1e9
    return {"queued_to_start": ws - q if q else None, "assigned_to_reported": wc - ws,
            "worker": own if own is not None else wc - ws,
            "fetch": _ts(m.input_fetch_completed_timestamp) - _ts(m.input_fetch_start_timestamp),
            "run": _ts(m.execution_completed_timestamp) - _ts(m.execution_start_timestamp),
            "upload": _ts(m.output_upload_completed_timestamp) - _ts(m.output_upload_start_timestamp),
            "queued_at": q, "completed_at": wc}


def _execute(client, digest) -> tuple[float, dict]:
    sent = time.time()
    t0 = time.perf_counter()
    response = client.execute(digest, timeout=600)
    took = time.perf_counter() - t0
    got = time.time()
    if response.status.code or response.result.exit_code:
        raise RuntimeError(f"action failed: status {response.status}, exit "
                           f"{response.result.exit_code}")
    meta = _meta(response)
    meta["to_queued"] = meta["queued_at"] - sent if meta["queued_at"] else None
    meta["completed_to_client"] = got - meta["completed_at"]
    return took, meta


# -- eager: what a worker without sandboxfs does -------------------------------------------

def _eager(engine, action_digest, base: Path, ident: str) -> dict[str, float]:
    from sandboxfs.backend.proto import remote_execution_pb2 as re
    from sandboxfs.worker.engine import digest_of
    from sandboxfs.worker.fetch import _plan

    def one(d):
        (_, code, message, data), = engine.read_batch([d])
        if code:
            raise RuntimeError(f"blob {d.hash}: {code} {message}")
        return data

    t0 = time.perf_counter()
    action = re.Action.FromString(one(action_digest))
    command = re.Command.FromString(one(action.command_digest))
    root = base / ident
    root.mkdir()
    files: list[tuple[Path, str, int, bool]] = []
    level = [(root, action.input_root_digest)]
    while level:  # the tree, one level per round of batches
        wanted = {d.hash: d.size_bytes for _, d in level}
        data = {}
        for job in _plan(wanted):
            for d, code, message, blob in engine.read_batch([digest_of(h, s) for h, s in job]):
                if code:
                    raise RuntimeError(f"directory {d.hash}: {code} {message}")
                data[d.hash] = blob
        following = []
        for path, d in level:
            directory = re.Directory.FromString(data[d.hash]) if d.size_bytes else re.Directory()
            for sub in directory.directories:
                (path / sub.name).mkdir()
                following.append((path / sub.name, sub.digest))
            for f in directory.files:
                files.append((path / f.name, f.digest.hash, f.digest.size_bytes, f.is_executable))
        level = following
    t_tree = time.perf_counter()
    by_hash: dict[str, list[tuple[Path, bool]]] = {}
    for path, h, size, executable in files:
        by_hash.setdefault(h, []).append((path, executable))
    sizes = {h: s for _, h, s, _ in files}

    def job(batch):
        for d, code, message, blob in engine.read_batch([digest_of(h, s) for h, s in batch]):
            if code:
                raise RuntimeError(f"file {d.hash}: {code} {message}")
            for path, executable in by_hash[d.hash]:
                with open(path, "wb") as out:
                    out.write(blob)
                if executable:
                    os.chmod(path, 0o755)
    jobs = _plan(sizes)
    for h, s in sizes.items():
        if s == 0:
            for path, _ in by_hash[h]:
                path.touch()
    with ThreadPoolExecutor(EAGER_THREADS) as pool:
        list(pool.map(job, jobs))
    t_files = time.perf_counter()
    env = {v.name: v.value for v in command.environment_variables}
    ran = subprocess.run(list(command.arguments), cwd=root / command.working_directory, env=env,
                         stdin=subprocess.DEVNULL, capture_output=True, check=False)
    t_run = time.perf_counter()
    if ran.returncode:
        raise RuntimeError(f"eager run failed: {ran.stderr.decode(errors='replace')[-1000:]}")
    shutil.rmtree(root)
    t_end = time.perf_counter()
    return {"total": t_end - t0, "tree": t_tree - t0, "files": t_files - t_tree,
            "run": t_run - t_files, "delete": t_end - t_run, "blobs": len(jobs)}


# -- the run ---------------------------------------------------------------------------------

@contextlib.contextmanager
def _unpinned():
    """This process on every CPU for a while (what it starts meanwhile inherits that)."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def _ms(xs) -> list[float]:
    return [round(x * 1000, 3) for x in xs if x is not None]


def run(env, config, progress: Progress) -> dict:
    try:
        from tests.buildgrid_venv import EngineUnavailable
        from tests.engine import BuildGrid, PostgreSQL
        from tests.fuse.worker_harness import WorkerProcess
    except ImportError as exc:
        return {"skipped": f"tests.engine not importable: {exc}"}
    from bench.remote_client import RemoteClient

    base = env.workdir / "worker"
    base.mkdir()
    started, load_start = time.strftime("%Y-%m-%dT%H:%M:%S"), os.getloadavg()
    n = config.worker_files
    inputs = Inputs(n)
    try:
        with _unpinned():
            pg = env.stack.enter_context(PostgreSQL())
            grid = env.stack.enter_context(BuildGrid(pg, base / "engine", keepalive_timeout=30,
                                                     expiry_interval=1))
    except EngineUnavailable as exc:
        return {"skipped": str(exc)}
    progress.step(f"PostgreSQL + BuildGrid up at {grid.endpoint} (unpinned)")
    client = RemoteClient(grid.endpoint)
    env.stack.callback(client.close)
    eager_dir = base / "eager"
    eager_dir.mkdir()
    lazy = {v: {f: [] for f in FRACTIONS} for v in VARIANTS}
    eager = {v: {f: [] for f in FRACTIONS} for v in VARIANTS}
    trivial: list[dict] = []
    upload_s: list[float] = []
    for variant in VARIANTS:
        extra = ("--no-prefetch",) if variant == "no_prefetch" else ()
        worker = WorkerProcess(grid.endpoint, base / f"state-{variant}", name=f"bench-{variant}",
                               extra=extra, cpu=SERVER_CPU if SERVER_CPU > CLIENT_CPU else None)
        with worker:
            for r in range(config.warmup + config.repeats):
                warm = r < config.warmup
                line = []
                order_f = FRACTIONS[r % 3:] + FRACTIONS[:r % 3]
                if warm and variant == "no_prefetch":  # it only warms the worker: the cheap one
                    order_f = (FRACTIONS[0],)
                for i, fraction in enumerate(order_f):
                    t0 = time.perf_counter()
                    digest = client.action(_argv(fraction), inputs.fresh(fraction))
                    upload_s.append(time.perf_counter() - t0)
                    # lazy and eager of the same Action, their order alternated
                    order = ("lazy", "eager") if (r + i) % 2 == 0 else ("eager", "lazy")
                    got = {}
                    for what in order:
                        if what == "lazy":
                            got["lazy"] = _execute(client, digest)
                        else:
                            got["eager"] = _eager(client.engine, digest, eager_dir,
                                                  f"r{variant}{r}-{fraction}")
                    took, meta = got["lazy"]
                    line.append(f"{fraction}%: lazy {took * 1000:.0f} ms (worker "
                                f"{meta['worker'] * 1000:.0f}), eager {got['eager']['total'] * 1000:.0f} ms")
                    if not warm:
                        lazy[variant][fraction].append({"e2e": took, **meta})
                        eager[variant][fraction].append(got["eager"])
                if variant == "no_prefetch":  # the trivial actions, on the first worker
                    for k in range(config.worker_trivial):
                        digest = client.action(["/bin/true"], {})
                        took, meta = _execute(client, digest)
                        if not warm:
                            trivial.append({"e2e": took, **meta})
                progress.step(f"{variant} round {r + 1}{' (warm-up)' if warm else ''}: "
                              + ", ".join(line))
            log_tail = worker.log_text()[-2000:]
    return _results(config, n, inputs, lazy, eager, trivial, upload_s, started, load_start, log_tail)


def _results(config, n, inputs, lazy, eager, trivial, upload_s, started, load_start, log_tail):
    triv = {key: summary(_ms(t[key] for t in trivial))
            for key in ("e2e", "worker", "assigned_to_reported", "queued_to_start", "to_queued",
                        "completed_to_client", "run", "fetch", "upload")}
    engine_part = [t["e2e"] - t["worker"] for t in trivial]
    triv["engine_part"] = summary(_ms(engine_part))
    engine_ms = statistics.median(_ms(engine_part)) if engine_part else 0.0
    rows = []
    for variant in VARIANTS:
        for fraction in FRACTIONS:
            ls, es = lazy[variant][fraction], eager[variant][fraction]
            e_local = _ms(e["total"] for e in es)
            e2e = _ms(s["e2e"] for s in ls)
            worker = _ms(s["worker"] for s in ls)
            eager_med = statistics.median(e_local) + engine_ms if e_local else None
            rows.append({
                "variant": variant, "fraction": fraction,
                "files_read": inputs.lists[fraction].count(b"\n"),
                "lazy_e2e_ms": summary(e2e), "lazy_worker_ms": summary(worker),
                "lazy_fetch_ms": summary(_ms(s["fetch"] for s in ls)),
                "lazy_run_ms": summary(_ms(s["run"] for s in ls)),
                "lazy_queued_to_start_ms": summary(_ms(s["queued_to_start"] for s in ls)),
                "eager_local_ms": summary(e_local),
                "eager_phases_ms": {p: summary(_ms(e[p] for e in es))
                                    for p in ("tree", "files", "run", "delete")},
                "eager_with_engine_ms": eager_med,
                "ratio_e2e": statistics.median(e2e) / eager_med if e2e and eager_med else None,
                "ratio_worker_vs_local": (statistics.median(worker) / statistics.median(e_local)
                                          if worker and e_local else None),
                "per_round": {"lazy_e2e_ms": e2e, "lazy_worker_ms": worker, "eager_local_ms": e_local},
            })
    by = {(r["variant"], r["fraction"]): r for r in rows}
    targets = {"ratio_5": TARGET_5_RATIO, "ratio_100": TARGET_100_RATIO,
               "overhead_ms": TARGET_OVERHEAD_MS}
    for variant in VARIANTS:
        r5, r100 = by[(variant, 5)]["ratio_e2e"], by[(variant, 100)]["ratio_e2e"]
        targets[f"{variant}_5_met"] = r5 is not None and r5 < TARGET_5_RATIO
        targets[f"{variant}_100_met"] = r100 is not None and r100 <= TARGET_100_RATIO
    w = triv["worker"]["median"]
    targets["overhead_met"] = w is not None and w <= TARGET_OVERHEAD_MS
    return {"files": n, "dirs": len({p.split('/')[0] for p in inputs.paths}),
            "sizes": SIZES, "fractions": FRACTIONS, "argv": _argv(5),
            "bytes": sum(inputs.sizes), "rows": rows, "trivial": triv,
            "trivial_per_round": len(trivial), "engine_part_ms": engine_ms,
            "upload_s": summary(upload_s), "targets": targets,
            "worker_cpu": SERVER_CPU, "client_cpu": CLIENT_CPU,
            "warmup": config.warmup, "repeats": config.repeats, "started": started,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "loadavg_start": load_start,
            "loadavg_end": os.getloadavg(), "worker_log_tail": log_tail}
