"""Monte Carlo campaigns: many runs of one scenario, reproducible from one seed.

Run ``i`` uses the ``i``-th seed of ``numpy.random.SeedSequence(seed)``, so the summary
does not depend on the scheduler (a local process pool, a Dask cluster) or on how many
workers share the work, and any run can be replayed alone with
``pumpctl simulate SCENARIO --seed <its seed>``.

Runs go out in batches (little scheduling overhead per run) and come back in run order;
each batch is appended to the runs file (Parquet, or CSV without pyarrow) and folded into
a ``CampaignStats`` that keeps exact counts, the worst runs, and only the few numeric
columns the percentiles need (8 bytes a run each), so memory stays small whatever N.
An interrupted campaign keeps its runs file; ``resume`` re-reads it and goes on.
"""

from __future__ import annotations

import bisect
import csv
import hashlib
import itertools
import json
import math
import multiprocessing as mp
import os
import shutil
import signal
import sys
import threading
from array import array
from collections import Counter, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pumpctl.errors import InputError, PumpctlError
from pumpctl.setting import load_pump, load_setting
from pumpctl.sim.runner import run_scenario
from pumpctl.sim.scenario import GAP_CAUSES, Scenario, with_values

#: Version of campaign.json / sweep.json; 2 added schema_version, share_interrupted_by_cause,
#: wasted_mg and expect_max_interrupted_s.
SCHEMA_VERSION = 2
#: Largest campaign accepted (percentile columns take 24 bytes a run).
MAX_RUNS = 10_000_000
#: Columns of runs.parquet / runs.csv, in order.
RUN_COLUMNS = (
    "run",
    "seed",
    "verdict",
    "interrupted_s",
    "interruptions",
    "causes",
    "dose_error_pct",
    "bags",
    "wasted_mg",
    "alarms",
    "failed_expectations",
)
DASK_HINT = "install it with: pip install 'pumpctl[dask]'"

# numpy's SeedSequence.generate_state hash constants (numpy/random/bit_generator.pyx)
_INIT_B = 0x8B51F9DD
_MULT_B = 0x58F38DED
_MASK32 = 0xFFFFFFFF


class CampaignInterrupted(PumpctlError):
    """Ctrl-C (or SIGTERM) stopped a campaign; what finished is kept (exit 130)."""

    exit_code = 130

    def __init__(self, message: str, done: int) -> None:
        super().__init__(message)
        self.done = done


# ---------------------------------------------------------------------------
# Seeds and single runs
# ---------------------------------------------------------------------------
def run_seeds(seed: int, runs: int) -> list[int]:
    """The per-run seeds of a campaign."""
    return [int(s) for s in np.random.SeedSequence(seed).generate_state(runs, dtype=np.uint32)]


def seeds_block(seed: int, start: int, stop: int) -> list[int]:
    """``run_seeds(seed, N)[start:stop]`` for any N >= stop, without the earlier seeds.

    ``generate_state`` mixes word ``i`` with ``INIT_B * MULT_B**i``, a closed form, so a
    batch needs only its own seeds (memory does not grow with N).
    """
    pool = [int(w) for w in np.random.SeedSequence(seed).pool]
    h = (_INIT_B * pow(_MULT_B, start, 1 << 32)) & _MASK32
    out: list[int] = []
    for i in range(start, stop):
        v = pool[i % len(pool)] ^ h
        h = (h * _MULT_B) & _MASK32
        v = (v * h) & _MASK32
        out.append(v ^ (v >> 16))
    return out


def _loaded(sc: Scenario) -> tuple[Any, Any]:
    """The scenario's setting and pump, loaded once per scenario object in this process:
    every run of a campaign uses the same content (and skips finding and checking files)."""
    hit = _LOADED.get(id(sc))
    if hit is None or hit[0] is not sc:
        setting = load_setting(sc.resolve_path(sc.setting))
        model = load_pump(sc.resolve_path(sc.pump))
        _LOADED.clear()  # one scenario at a time per worker
        hit = _LOADED[id(sc)] = (sc, setting, model)
    return hit[1], hit[2]


_LOADED: dict[int, tuple[Scenario, Any, Any]] = {}


def one_run(sc: Scenario, seed: int) -> dict[str, Any]:
    """A compact record of one run (what the campaign summary needs)."""
    r = run_scenario(sc, seed, trace=False, loaded=_loaded(sc)).result
    return {
        "seed": seed,
        "verdict": r["verdict"],
        "interrupted_s": r["interrupted_s"],
        "interruptions": len(r["interruptions"]),
        "causes": sorted({g["cause"] for g in r["interruptions"]}),
        "dose_error_pct": r["dose_error_pct"],
        "bags": len(r["bags"]),
        "alarms": dict(Counter(a["kind"] for a in r["alarms"])),
        "failed_expectations": r["failed_expectations"],
        "wasted_mg": r["wasted_mg"],
    }


def run_batch(sc: Scenario, seeds: list[int]) -> list[dict[str, Any]]:
    """The records of a batch of runs (the unit of work sent to a worker)."""
    return [one_run(sc, s) for s in seeds]


# ---------------------------------------------------------------------------
# Summary, folded in run order
# ---------------------------------------------------------------------------
def _pct(values: Any, qs: tuple[int, ...]) -> dict[str, float]:
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return {f"p{q}": 0.0 for q in qs} | {"min": 0.0, "max": 0.0, "mean": 0.0}
    return {f"p{q}": round(float(np.percentile(arr, q)), 3) for q in qs} | {
        "min": round(float(arr.min()), 3),
        "max": round(float(arr.max()), 3),
        "mean": round(float(arr.mean()), 3),
    }


def _worst_key(rec: dict[str, Any], index: int) -> tuple[float, float, int, int]:
    return (-rec["interrupted_s"], -abs(rec["dose_error_pct"]), int(rec["seed"]), index)


class CampaignStats:
    """Exact counts, the worst runs and compact percentile columns, fed run by run."""

    def __init__(self, worst: int = 5) -> None:
        self.worst = worst
        self.n = 0
        self.passed = 0
        self.failed = 0
        self.interrupted_runs = 0
        self.causes: Counter[str] = Counter()
        self.interrupted_s = array("d")
        self.dose_error_pct = array("d")
        self.wasted_mg = array("d")
        self.cause_mask = array("I")  # bit i: GAP_CAUSES[i] (bit 31: any other cause)
        self._worst: list[tuple[tuple[float, float, int, int], dict[str, Any]]] = []

    def add(self, rec: dict[str, Any]) -> None:
        """Fold one run's record in (records must come in run order)."""
        index = self.n
        self.n += 1
        self.passed += rec["verdict"] == "pass"
        self.failed += rec["verdict"] == "fail"
        self.interrupted_runs += rec["interrupted_s"] > 0
        self.causes.update(rec["causes"])
        self.interrupted_s.append(float(rec["interrupted_s"]))
        self.dose_error_pct.append(float(rec["dose_error_pct"]))
        self.wasted_mg.append(float(rec.get("wasted_mg", 0.0)))
        mask = 0
        for c in rec["causes"]:
            mask |= 1 << (GAP_CAUSES.index(c) if c in GAP_CAUSES else 31)
        self.cause_mask.append(mask)
        key = _worst_key(rec, index)
        if len(self._worst) < self.worst or key < self._worst[-1][0]:
            slim = {k: rec[k] for k in ("seed", "interrupted_s", "dose_error_pct", "causes")}
            bisect.insort(self._worst, (key, slim), key=lambda kv: kv[0])
            del self._worst[self.worst :]

    def summary(
        self, sc: Scenario, seed: int, point: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The campaign summary (the ``--json`` output and campaign.json).

        ``point``: the swept values, named in each worst run's ``reproduce`` line.
        """
        n = self.n
        swept = f" (with {', '.join(f'{k}={v}' for k, v in point.items())})" if point else ""
        return {
            "schema_version": SCHEMA_VERSION,
            "scenario": sc.name,
            "scenario_path": sc.path,
            "seed": seed,
            "runs": n,
            "passed": self.passed,
            "failed": self.failed,
            "share_interrupted": round(self.interrupted_runs / n, 6) if n else 0.0,
            "interrupted_s": _pct(self.interrupted_s, (50, 90, 95, 99)),
            "dose_error_pct": _pct(self.dose_error_pct, (5, 50, 95)),
            "wasted_mg": _pct(self.wasted_mg, (50, 90, 95, 99)),
            "interruption_causes": dict(sorted(self.causes.items())),
            "share_interrupted_by_cause": {
                c: round(k / n, 6) for c, k in sorted(self.causes.items())
            },
            "expect_max_interrupted_s": sc.max_interrupted_s,
            "worst_runs": [
                {
                    "seed": r["seed"],
                    "interrupted_s": r["interrupted_s"],
                    "dose_error_pct": r["dose_error_pct"],
                    "causes": r["causes"],
                    "reproduce": f"pumpctl simulate {sc.path} --seed {r['seed']}{swept}",
                }
                for _, r in self._worst
            ],
        }


def summarise(
    sc: Scenario, records: list[dict[str, Any]], seed: int, worst: int = 5
) -> dict[str, Any]:
    """Share of runs with any gap, percentiles, the worst runs (reproducible), causes."""
    stats = CampaignStats(worst)
    for r in records:
        stats.add(r)
    return stats.summary(sc, seed)


# ---------------------------------------------------------------------------
# Where the work runs
# ---------------------------------------------------------------------------
class Executor(Protocol):
    """Runs batches somewhere; futures are polled so Ctrl-C is seen between waits."""

    slots: int
    name: str

    def share(self, sc: Scenario) -> Any: ...
    def submit(self, sc_ref: Any, seeds: list[int]) -> Any: ...
    def wait(self, fut: Any, timeout_s: float) -> bool: ...
    def result(self, fut: Any) -> list[dict[str, Any]]: ...
    def close(self, cancel: bool) -> None: ...


class _Later:
    def __init__(self, sc: Scenario, seeds: list[int]) -> None:
        self.sc, self.seeds = sc, seeds


class SerialExecutor:
    """In this process, one batch at a time (``--workers 1``)."""

    slots = 1
    name = "local, 1 worker"

    def share(self, sc: Scenario) -> Any:
        return sc

    def submit(self, sc_ref: Any, seeds: list[int]) -> Any:
        return _Later(sc_ref, seeds)

    def wait(self, fut: Any, timeout_s: float) -> bool:
        return True

    def result(self, fut: Any) -> list[dict[str, Any]]:
        return run_batch(fut.sc, fut.seeds)

    def close(self, cancel: bool) -> None:
        pass


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what Ctrl-C means


class PoolExecutor:
    """A local process pool (``--scheduler local``)."""

    def __init__(self, workers: int) -> None:
        # forkserver, not fork: a worker forked from a process with other threads (a
        # lease heartbeat, a console, a test runner) can inherit a held lock and hang.
        # The server preloads pumpctl, so workers start as quickly as forked ones.
        if sys.platform.startswith("linux"):
            ctx = mp.get_context("forkserver")
            ctx.set_forkserver_preload(["pumpctl.sim.campaign"])
        else:
            ctx = mp.get_context("spawn")
        self.pool = ctx.Pool(workers, initializer=_ignore_sigint)
        self.slots = workers
        self.name = f"local, {workers} workers"

    def share(self, sc: Scenario) -> Any:
        return sc

    def submit(self, sc_ref: Any, seeds: list[int]) -> Any:
        return self.pool.apply_async(run_batch, (sc_ref, seeds))

    def wait(self, fut: Any, timeout_s: float) -> bool:
        fut.wait(timeout_s)
        return bool(fut.ready())

    def result(self, fut: Any) -> list[dict[str, Any]]:
        return fut.get()

    def close(self, cancel: bool) -> None:
        if cancel:
            self.pool.terminate()
        else:
            self.pool.close()
        self.pool.join()


def dask_available() -> bool:
    """True when ``dask.distributed`` can be imported."""
    try:
        import distributed  # noqa: F401
    except ImportError:
        return False
    return True


#: Dask settings for CPU-bound workers: no 10 ms stack profiler nor 1 ms GIL monitor
#: stealing the GIL from the simulation. For `dask worker` processes started by hand, the
#: same as environment variables: DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=False etc.
LEAN_WORKER_CONFIG = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.system-monitor.gil.enabled": False,
    "distributed.admin.tick.interval": "200ms",
    "distributed.worker.memory.monitor-interval": "1s",
    "distributed.admin.system-monitor.interval": "2s",
}


def _warm_worker() -> str:
    """Import the simulator in a worker before timing starts (spawned workers import afresh)."""
    import pumpctl.sim.runner  # noqa: F401

    return "ok"


class DaskExecutor:
    """A Dask distributed cluster: a new ``LocalCluster`` or an existing scheduler."""

    def __init__(self, address: str | None, workers: int) -> None:
        import logging

        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise InputError(f"--scheduler needs Dask distributed; {DASK_HINT}") from None
        self.cluster = None
        self._futures: set[Any] = set()
        if address is None:
            import dask

            with dask.config.set(LEAN_WORKER_CONFIG):  # the nannies pass it to the workers
                self.cluster = LocalCluster(
                    n_workers=workers,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=":0",  # no fixed port: other clusters may run
                    silence_logs=logging.ERROR,
                )
            self.client = Client(self.cluster)
        else:
            try:
                self.client = Client(address, timeout="10s")
            except (OSError, TimeoutError) as exc:
                raise InputError(
                    f"--scheduler {address}: no Dask scheduler answered ({exc}); allowed: "
                    "local, dask, or the address of a running `dask scheduler`"
                ) from None
        try:
            self.client.wait_for_workers(1, timeout=30)
        except TimeoutError:
            self.close(cancel=True)
            raise InputError(
                f"--scheduler {address}: the scheduler has no workers after 30 s; allowed: a "
                f"scheduler with workers (start them with `dask worker {address}`)"
            ) from None
        try:
            self.client.run(_warm_worker)
        except ImportError as exc:
            self.close(cancel=True)
            raise InputError(
                f"--scheduler {address or 'dask'}: a Dask worker cannot import pumpctl ({exc}); "
                "allowed: workers started from an environment with pumpctl installed"
            ) from None
        self.slots = max(1, sum(self.client.nthreads().values()))
        where = address or "LocalCluster"
        self.name = f"dask {where}, {self.slots} worker threads"

    def share(self, sc: Scenario) -> Any:
        return self.client.scatter(sc, broadcast=True)

    def submit(self, sc_ref: Any, seeds: list[int]) -> Any:
        fut = self.client.submit(run_batch, sc_ref, seeds, pure=False)
        self._futures.add(fut)
        return fut

    def wait(self, fut: Any, timeout_s: float) -> bool:
        from distributed import wait

        try:
            wait(fut, timeout=timeout_s)
        except TimeoutError:
            return False
        return True

    def result(self, fut: Any) -> list[dict[str, Any]]:
        self._futures.discard(fut)
        return fut.result()

    def close(self, cancel: bool) -> None:
        if cancel and self._futures:
            self.client.cancel(list(self._futures))
        self.client.close()
        cluster = getattr(self, "cluster", None)
        if cluster is not None:
            cluster.close()


def make_executor(scheduler: str, workers: int) -> Executor:
    """``local`` (a process pool, or this process for one worker), ``dask`` or an address."""
    if scheduler == "local":
        return SerialExecutor() if workers <= 1 else PoolExecutor(workers)
    if scheduler == "dask":
        return DaskExecutor(None, workers)
    return DaskExecutor(scheduler, workers)


@contextmanager
def executor_for(scheduler: str, workers: int) -> Iterator[Executor]:
    """An executor, closed at the end (in-flight work cancelled if something went wrong)."""
    ex = make_executor(scheduler, workers)
    try:
        yield ex
    except BaseException:
        ex.close(cancel=True)
        raise
    ex.close(cancel=False)


# ---------------------------------------------------------------------------
# The runs file
# ---------------------------------------------------------------------------
def pyarrow_available() -> bool:
    """True when runs are streamed to Parquet (else CSV)."""
    try:
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        return False
    return True


def to_row(index: int, rec: dict[str, Any]) -> dict[str, Any]:
    """A run's record as a runs-file row (lists and dicts as text)."""
    return {
        "run": index,
        "seed": int(rec["seed"]),
        "verdict": rec["verdict"],
        "interrupted_s": float(rec["interrupted_s"]),
        "interruptions": int(rec["interruptions"]),
        "causes": ";".join(rec["causes"]),
        "dose_error_pct": float(rec["dose_error_pct"]),
        "bags": int(rec["bags"]),
        "wasted_mg": float(rec.get("wasted_mg", 0.0)),
        "alarms": json.dumps(rec.get("alarms", {}), sort_keys=True),
        "failed_expectations": json.dumps(rec.get("failed_expectations", [])),
    }


def from_row(row: dict[str, Any]) -> dict[str, Any]:
    """A runs-file row (Parquet or CSV) back as a record; floats round-trip exactly."""
    causes = row["causes"] or ""
    return {
        "seed": int(row["seed"]),
        "verdict": row["verdict"],
        "interrupted_s": float(row["interrupted_s"]),
        "interruptions": int(row["interruptions"]),
        "causes": causes.split(";") if causes else [],
        "dose_error_pct": float(row["dose_error_pct"]),
        "bags": int(row["bags"]),
        "wasted_mg": float(row["wasted_mg"]),
        "alarms": json.loads(row["alarms"]),
        "failed_expectations": json.loads(row["failed_expectations"]),
    }


class RunsWriter(Protocol):
    path: Path

    def write(self, rows: list[dict[str, Any]]) -> None: ...
    def close(self) -> None: ...


class CsvRunsWriter:
    """runs.csv, appended and flushed batch by batch (survives even kill -9)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        new = not path.exists() or path.stat().st_size == 0
        self.fh = path.open("a", newline="", encoding="utf-8")
        self.w = csv.DictWriter(self.fh, fieldnames=RUN_COLUMNS)
        if new:
            self.w.writeheader()
            self.fh.flush()

    def write(self, rows: list[dict[str, Any]]) -> None:
        self.w.writerows(rows)
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()


class ParquetRunsWriter:
    """runs.parquet, crash-safe: runs go to whole part files, merged in on close.

    A Parquet file is readable only once its footer is written, so finished runs are
    written every ``PART_ROWS`` as complete files under ``.runs.parts/`` (named by their
    first run) and appended to runs.parquet on close (end, Ctrl-C, error) or, after a
    ``kill -9``, on ``--resume``. At most ``PART_ROWS - 1`` finished runs are lost to a
    kill -9; they are run again on resume, with the same seeds.
    """

    PART_ROWS = 256

    def __init__(self, path: Path, first_run: int) -> None:
        import pyarrow as pa

        self.path = path
        self.pa = pa
        self.schema = parquet_schema()
        self.parts = parts_dir(path)
        self.parts.mkdir(exist_ok=True)
        self.next_run = first_run
        self.buf: list[dict[str, Any]] = []

    def write(self, rows: list[dict[str, Any]]) -> None:
        self.buf.extend(rows)
        if len(self.buf) >= self.PART_ROWS:
            self._flush()

    def _flush(self) -> None:
        import pyarrow.parquet as pq

        if not self.buf:
            return
        name = f"part-{self.next_run:012d}.parquet"
        tmp = self.parts / f".{name}.tmp"
        pq.write_table(self.pa.Table.from_pylist(self.buf, schema=self.schema), str(tmp))
        os.replace(tmp, self.parts / name)
        self.next_run += len(self.buf)
        self.buf = []

    def close(self) -> None:
        self._flush()
        merge_parts(self.path)


def parts_dir(path: Path) -> Path:
    """Where a runs.parquet's not yet merged runs wait."""
    return path.with_name(".runs.parts")


def merge_parts(path: Path) -> None:
    """Append the part files to runs.parquet (a new file renamed over the old one).

    Safe to repeat after a crash at any point: parts already in runs.parquet (by their
    first run) are skipped, and the old file stays until the new one is whole.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts = parts_dir(path)
    if not parts.is_dir():
        return
    have = pq.ParquetFile(str(path)).metadata.num_rows if path.exists() else 0
    todo = sorted(p for p in parts.glob("part-*.parquet") if int(p.stem[5:]) >= have)
    if todo or not path.exists():
        tmp = path.with_name(f".{path.name}.tmp")
        w = pq.ParquetWriter(str(tmp), parquet_schema())
        if path.exists():
            old = pq.ParquetFile(str(path))
            for g in range(old.num_row_groups):
                w.write_table(old.read_row_group(g))
        expected = have
        group: list[Any] = []  # parts gathered into row groups of ~64k runs
        for part in todo:
            if int(part.stem[5:]) != expected:
                w.close()
                tmp.unlink()
                raise InputError(f"{part}: runs {expected}.. are missing; the file is damaged")
            group.append(pq.read_table(str(part)))
            expected += group[-1].num_rows
            if sum(t.num_rows for t in group) >= 65536:
                w.write_table(pa.concat_tables(group))
                group = []
        if group:
            w.write_table(pa.concat_tables(group))
        w.close()
        os.replace(tmp, path)
    shutil.rmtree(parts)


def parquet_schema() -> Any:
    """The Arrow schema of runs.parquet."""
    import pyarrow as pa

    types = {
        "run": pa.int64(),
        "seed": pa.int64(),
        "verdict": pa.string(),
        "interrupted_s": pa.float64(),
        "interruptions": pa.int64(),
        "causes": pa.string(),
        "dose_error_pct": pa.float64(),
        "bags": pa.int64(),
        "wasted_mg": pa.float64(),
        "alarms": pa.string(),
        "failed_expectations": pa.string(),
    }
    return pa.schema([(c, types[c]) for c in RUN_COLUMNS])


def _read_csv_rows(path: Path) -> Iterator[dict[str, Any]]:
    with path.open("rb+") as fb:  # drop a half-written last line (killed mid-write)
        data_end = fb.seek(0, os.SEEK_END)
        if data_end:
            fb.seek(max(0, data_end - 65536))
            tail = fb.read()
            if not tail.endswith(b"\n"):
                cut = tail.rfind(b"\n")
                fb.truncate(data_end - len(tail) + cut + 1 if cut >= 0 else 0)
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is not None and tuple(reader.fieldnames) != RUN_COLUMNS:
            raise InputError(f"{path}: not a pumpctl runs file (columns {reader.fieldnames})")
        yield from reader


def _read_parquet_rows(path: Path) -> Iterator[dict[str, Any]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(str(path))
    except Exception as exc:  # pyarrow raises ArrowInvalid (a ValueError) and OSError
        raise InputError(
            f"{path}: unreadable ({exc}); a campaign killed with -9 loses its Parquet footer; "
            "allowed: --resume (it rebuilds the file from its parts) or a new directory"
        ) from None
    if tuple(pf.schema_arrow.names) != RUN_COLUMNS:
        raise InputError(f"{path}: not a pumpctl runs file (columns {pf.schema_arrow.names})")
    for batch in pf.iter_batches(batch_size=4096):
        yield from batch.to_pylist()


def _hash_scenario(sc: Scenario) -> str:
    text = json.dumps(sc.raw, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class RunsStore:
    """The streamed runs file of one campaign directory, plus what it belongs to."""

    META = "campaign.meta.json"

    def __init__(self, out_dir: Path, fmt: str | None = None) -> None:
        self.dir = out_dir
        self.fmt = fmt or ("parquet" if pyarrow_available() else "csv")
        self.path = out_dir / f"runs.{self.fmt}"

    def existing(self) -> Path | None:
        """A runs file already in the directory, if any."""
        for name in ("runs.parquet", "runs.csv"):
            if (self.dir / name).exists():
                return self.dir / name
        if parts_dir(self.dir / "runs.parquet").is_dir():  # killed before the first merge
            return self.dir / "runs.parquet"
        return None

    def open(
        self, sc: Scenario, seed: int, runs: int, resume: bool, stats: CampaignStats
    ) -> RunsWriter:
        """Open for appending; with ``resume``, fold the finished runs into ``stats`` first."""
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = {
            "schema_version": SCHEMA_VERSION,
            "scenario": sc.name,
            "scenario_path": sc.path,
            "scenario_sha256": _hash_scenario(sc),
            "seed": seed,
        }
        found = self.existing()
        meta_path = self.dir / self.META
        if found is None:
            _write_atomic(meta_path, json.dumps(meta, indent=2) + "\n")
            return self._writer(self.path)
        if not resume:
            raise InputError(
                f"{self.dir} already holds a campaign ({found.name}); allowed: --resume to "
                "continue it, or a new --out directory"
            )
        try:
            old = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise InputError(f"{meta_path}: missing or unreadable; cannot resume") from None
        for key in ("scenario_sha256", "seed"):
            if old.get(key) != meta[key]:
                raise InputError(
                    f"--resume: {self.dir} is a campaign of {old.get('scenario_path')} "
                    f"seed {old.get('seed')}; allowed: the same scenario, sweep point and seed"
                )
        if found.suffix == ".parquet":
            if not pyarrow_available():
                raise InputError(f"{found} needs pyarrow to resume; install: pip install pyarrow")
            self.fmt, self.path = "parquet", found
            merge_parts(found)  # runs finished before a kill -9
            for i, row in enumerate(_read_parquet_rows(found)):
                self._fold(i, row, runs, stats)
            return self._writer(found, stats.n)
        self.fmt, self.path = "csv", found
        for i, row in enumerate(_read_csv_rows(found)):
            self._fold(i, row, runs, stats)
        return CsvRunsWriter(found)

    def _fold(self, i: int, row: dict[str, Any], runs: int, stats: CampaignStats) -> None:
        if int(row["run"]) != i:
            raise InputError(f"{self.path}: row {i} is run {row['run']}; the file is damaged")
        if i >= runs:
            raise InputError(
                f"--runs {runs}: {self.path} already holds more runs; allowed: --runs {i + 1} "
                "or more"
            )
        stats.add(from_row(row))

    def _writer(self, path: Path, first_run: int = 0) -> RunsWriter:
        if self.fmt == "parquet":
            return ParquetRunsWriter(path, first_run)
        return CsvRunsWriter(path)


# ---------------------------------------------------------------------------
# Running a campaign
# ---------------------------------------------------------------------------
@contextmanager
def _stop_on_signal() -> Iterator[dict[str, bool]]:
    """SIGINT/SIGTERM set a flag checked between batches; a second Ctrl-C stops at once."""
    flag = {"stop": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: Any) -> None:
        if flag["stop"]:
            raise KeyboardInterrupt
        flag["stop"] = True

    prev = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in prev:
        signal.signal(s, handler)
    try:
        yield flag
    finally:
        for s, h in prev.items():
            signal.signal(s, h)


def batch_size(runs: int, slots: int) -> int:
    """Runs per batch: a few batches per worker, at most 256 runs (about 1-3 s of work)."""
    cap = 32 if slots <= 1 else 256
    return max(1, min(cap, math.ceil(runs / (slots * 4))))


def stream_runs(
    sc: Scenario,
    runs: int,
    *,
    seed: int,
    executor: Executor,
    start: int = 0,
    on_batch: Callable[[int, list[dict[str, Any]]], None],
    progress: Callable[[int, int], None] | None = None,
    stop_after: int | None = None,
    batch: int | None = None,
) -> int:
    """Run ``start..runs-1`` and hand each batch's records to ``on_batch`` in run order.

    ``stop_after`` (tests) acts as Ctrl-C once that many runs in total are done.
    Returns the number of runs done; raises ``CampaignInterrupted`` when stopped.
    """
    size = batch or batch_size(runs - start, executor.slots)
    window = executor.slots * 2
    sc_ref = executor.share(sc) if start < runs else sc
    pending: deque[tuple[int, Any]] = deque()
    nxt = start
    done = start
    if progress:
        progress(start, runs)
    with _stop_on_signal() as flag:
        try:
            while done < runs:
                while nxt < runs and len(pending) < window:
                    stop = min(runs, nxt + size)
                    pending.append((nxt, executor.submit(sc_ref, seeds_block(seed, nxt, stop))))
                    nxt = stop
                first, fut = pending[0]
                while not flag["stop"] and not executor.wait(fut, 0.25):
                    pass
                if flag["stop"]:
                    raise CampaignInterrupted("interrupted", done)
                recs = executor.result(fut)
                pending.popleft()
                on_batch(first, recs)
                done = first + len(recs)
                if progress:
                    progress(done, runs)
                if stop_after is not None and done >= stop_after and done < runs:
                    raise CampaignInterrupted("interrupted", done)
        except KeyboardInterrupt:
            raise CampaignInterrupted("interrupted", done) from None
    return done


def run_campaign(
    sc: Scenario,
    runs: int,
    *,
    workers: int = 1,
    seed: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """All runs' records, in seed order whatever the number of workers (small campaigns)."""
    out: list[dict[str, Any]] = []
    with executor_for("local", workers) as ex:
        stream_runs(
            sc,
            runs,
            seed=sc.seed if seed is None else seed,
            executor=ex,
            on_batch=lambda first, recs: out.extend(recs),
            progress=progress,
        )
    return out


def campaign(
    sc: Scenario,
    runs: int,
    *,
    seed: int,
    executor: Executor,
    out_dir: Path | None = None,
    resume: bool = False,
    progress: Callable[[int, int], None] | None = None,
    stop_after: int | None = None,
    batch: int | None = None,
    point: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], CampaignStats]:
    """A campaign streamed to ``out_dir/runs.*``; the summary and the stats behind it.

    On Ctrl-C the runs file keeps every run finished in order and the
    ``CampaignInterrupted`` message says how to continue.
    """
    stats = CampaignStats()
    writer: RunsWriter | None = None
    if out_dir is not None:
        store = RunsStore(out_dir)
        writer = store.open(sc, seed, runs, resume, stats)

    def on_batch(first: int, recs: list[dict[str, Any]]) -> None:
        if writer is not None:
            writer.write([to_row(first + i, r) for i, r in enumerate(recs)])
        for r in recs:
            stats.add(r)

    try:
        stream_runs(
            sc,
            runs,
            seed=seed,
            executor=executor,
            start=stats.n,
            on_batch=on_batch,
            progress=progress,
            stop_after=stop_after,
            batch=batch,
        )
    except CampaignInterrupted as exc:
        if writer is not None:
            writer.close()
            writer = None
            msg = (
                f"interrupted: {exc.done} of {runs} runs kept in {store.path}; "
                "continue with the same command and --resume"
            )
        else:
            msg = f"interrupted after {exc.done} of {runs} runs (nothing kept: no --out)"
        raise CampaignInterrupted(msg, exc.done) from None
    finally:
        if writer is not None:
            writer.close()
    return stats.summary(sc, seed, point), stats


# ---------------------------------------------------------------------------
# Sweeps
# ---------------------------------------------------------------------------
def parse_value(text: str, key: str) -> Any:
    """A swept value: an integer, a finite number, or a word (a pump or setting name)."""
    t = text.strip()
    if not t:
        raise InputError(f"--sweep {key}: an empty value; allowed: V1,V2,... numbers or names")
    try:
        return int(t)
    except ValueError:
        pass
    try:
        v = float(t)
    except ValueError:
        return t
    if not math.isfinite(v):
        raise InputError(f"--sweep {key}={t}: not a finite number; allowed: finite numbers")
    return v


def parse_sweeps(specs: list[str]) -> list[tuple[str, list[Any]]]:
    """``KEY=V1,V2,...`` options as (key, values) axes, in the order given."""
    axes: list[tuple[str, list[Any]]] = []
    for spec in specs:
        key, eq, values = spec.partition("=")
        key = key.strip()
        if not eq or not key or not values.strip():
            raise InputError(
                f"--sweep {spec!r} is not allowed; allowed: KEY=V1,V2,... such as "
                "nurse.response_min=2,5,10"
            )
        if any(k == key for k, _ in axes):
            raise InputError(f"--sweep {key} given twice; allowed: each key once")
        axes.append((key, [parse_value(v, key) for v in values.split(",")]))
    return axes


def sweep_points(sc: Scenario, axes: list[tuple[str, list[Any]]]) -> list[tuple[dict, Scenario]]:
    """Every grid point with its scenario, all validated before any run starts."""
    keys = [k for k, _ in axes]
    points = []
    for combo in itertools.product(*(vals for _, vals in axes)):
        point = dict(zip(keys, combo, strict=True))
        try:
            points.append((point, with_values(sc, point)))
        except InputError as exc:
            shown = ", ".join(f"{k}={v}" for k, v in point.items())
            raise InputError(f"--sweep {shown}: {exc}") from None
    return points


def sweep_row(point: dict[str, Any], s: dict[str, Any]) -> dict[str, Any]:
    """One grid point's flat summary row (sweep.csv)."""
    row = dict(point)
    row |= {
        "runs": s["runs"],
        "passed": s["passed"],
        "failed": s["failed"],
        "share_interrupted": s["share_interrupted"],
    }
    for q in ("p50", "p95", "p99", "max", "mean"):
        row[f"interrupted_s_{q}"] = s["interrupted_s"][q]
    for q in ("p5", "p50", "p95"):
        row[f"dose_error_pct_{q}"] = s["dose_error_pct"][q]
    for q in ("p50", "p95", "max"):
        row[f"wasted_mg_{q}"] = s["wasted_mg"][q]
    for c in GAP_CAUSES:
        row[f"share_{c}"] = s["share_interrupted_by_cause"].get(c, 0.0)
    return row


def write_sweep(
    axes: list[tuple[str, list[Any]]],
    rows: list[dict[str, Any]],
    summaries: list[dict[str, Any]],
    out_dir: Path,
) -> None:
    """sweep.csv, sweep.json and sweep.png into ``out_dir`` (each written whole, then renamed)."""
    keys = [k for k, _ in axes]
    tmp = out_dir / ".sweep.tmp"
    tmp.mkdir(exist_ok=True)
    with (tmp / "sweep.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    doc = {
        "schema_version": SCHEMA_VERSION,
        "keys": keys,
        "rows": [
            {"point": {k: r[k] for k in keys}, **s} for r, s in zip(rows, summaries, strict=True)
        ],
    }
    (tmp / "sweep.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    plot_sweep(axes, rows, tmp / "sweep.png")
    for name in ("sweep.csv", "sweep.json", "sweep.png"):
        os.replace(tmp / name, out_dir / name)
    tmp.rmdir()


def plot_sweep(axes: list[tuple[str, list[Any]]], rows: list[dict[str, Any]], path: Path) -> Path:
    """Share of runs interrupted against the first swept key, a line per other combination."""
    from matplotlib.figure import Figure

    key, values = axes[0]
    numeric = all(isinstance(v, int | float) for v in values)
    xs = values if numeric else list(range(len(values)))
    others = [k for k, _ in axes[1:]]
    fig = Figure(figsize=(7.5, 4.5), dpi=100, layout="constrained")
    ax = fig.subplots()
    groups: dict[tuple, list[tuple[Any, float]]] = {}
    for r in rows:
        label = tuple(r[k] for k in others)
        x = xs[values.index(r[key])]
        groups.setdefault(label, []).append((x, r["share_interrupted"] * 100))
    for label, pts in groups.items():
        name = ", ".join(f"{k}={v}" for k, v in zip(others, label, strict=True)) or None
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    if not numeric:
        ax.set_xticks(xs, [str(v) for v in values])
    ax.set_xlabel(key)
    ax.set_ylabel("runs interrupted (%)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    if others:
        ax.legend(fontsize=8)
    ax.set_title(f"share of runs interrupted vs {key}")
    fig.savefig(path)
    return path


# ---------------------------------------------------------------------------
# Histograms
# ---------------------------------------------------------------------------
def plot_histograms(stats: CampaignStats, summary: dict[str, Any], path: Path) -> Path:
    """Interruption seconds per run by cause (with the expectation's limit), dose error."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), dpi=100, layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    gaps = np.frombuffer(stats.interrupted_s, dtype=float) if stats.n else np.zeros(0)
    masks = np.frombuffer(stats.cause_mask, dtype=np.uint32) if stats.n else np.zeros(0, int)
    hit = gaps > 0
    if hit.any():
        bins = np.histogram_bin_edges(gaps[hit], bins=40)
        for i, cause in enumerate(GAP_CAUSES):
            sel = hit & ((masks >> i) & 1).astype(bool)
            if sel.any():
                ax1.hist(gaps[sel], bins=bins, histtype="step", linewidth=1.5, label=cause)
        ax1.legend(fontsize=8, title="runs with cause")
    limit = summary["expect_max_interrupted_s"]
    ax1.axvline(limit, color="k", linestyle="--", linewidth=1)
    ax1.annotate(f"limit {limit:g} s", (limit, 1), xycoords=("data", "axes fraction"), fontsize=8)
    ax1.set_xlabel("interruption per run (s), runs with any gap")
    ax1.set_ylabel("runs")
    ax1.set_title(
        f"{summary['share_interrupted'] * 100:.1f}% of {summary['runs']} runs interrupted"
    )
    ax1.grid(alpha=0.3)
    if stats.n:
        ax2.hist(np.frombuffer(stats.dose_error_pct, dtype=float), bins=40, color="#2ca02c")
    ax2.set_xlabel("dose error vs ordered (%)")
    ax2.set_ylabel("runs")
    ax2.set_title(
        f"dose error p5 {summary['dose_error_pct']['p5']:+.2f}%, "
        f"p95 {summary['dose_error_pct']['p95']:+.2f}%"
    )
    ax2.grid(alpha=0.3)
    fig.suptitle(f"campaign: {summary['scenario']}")
    fig.savefig(path)
    return path
