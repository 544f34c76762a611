"""The run directory: manifest, actions, mean-field history, a step journal for resume, and a lock.

Each completed step is written in order: its action rows, its mean-field entry, then one line in
``steps.jsonl`` that commits it (with the context state needed to continue). A run killed at any
point resumes from the last committed step whose rows are all present: rows of uncommitted steps are
discarded and a torn last line (a write cut short, even inside a multi-byte character) is ignored, so
nothing is lost or duplicated; a journal whose steps repeat or go backwards is refused (resume, export).

One process at a time holds a run: it holds an OS lock (``flock``) on ``run.flock`` for as long as it
runs (a process that locked a ``run.flock`` since removed locks the new one) and writes ``run.lock`` (host and process, refreshed at every commit) for others to read. A
``run.lock`` left by a dead process on this host, or not refreshed for ``STALE_LOCK_SECONDS`` on another
host (shared storage), is taken over; an empty or unreadable one (a full disk) at once. Deciding and
taking over happen under the OS lock, so of several processes resuming at once exactly one writes.
A run that stops on an exception records ``status: failed`` (or ``interrupted``) and the reason.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from mfllm.redaction import redact_secrets

if TYPE_CHECKING:
    from mfllm.simulation.step import Step

MANIFEST, STEPS, ACTIONS, MEAN_FIELD, LOCK = "manifest.json", "steps.jsonl", "actions.jsonl", "mean_field.jsonl", "run.lock"
OS_LOCK = "run.flock"
"""Held (``flock``) by the process running the run, removed (still held) when it ends."""
STALE_LOCK_SECONDS = 600.0
"""A lock whose holder has not written for this long, on another host, is taken as abandoned."""
logger = logging.getLogger(__name__)


class RunLockedError(RuntimeError):
    """Another process holds the run directory."""


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Complete JSON lines of ``path``. A final line without its newline is a write cut short and is
    ignored; any other bad line is an error naming the file and line."""
    return [record for _, record in _numbered_jsonl(path)]


def _numbered_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """:func:`_read_jsonl` with each record's line number."""
    if not path.exists():
        return []
    records = []
    lines = path.read_bytes().split(b"\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            if number == len(lines):  # no newline after it: torn
                break
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8"
            raise ValueError(f"{path}: line {number} is corrupt ({reason})") from exc
        if not isinstance(record, dict):  # a torn piece that happens to parse (e.g. a digit)
            if number == len(lines):
                break
            raise ValueError(f"{path}: line {number} is corrupt (not a JSON object)")
        records.append((number, record))
    return records


def _check_order(path: Path, records: list[tuple[int, dict[str, Any]]], consecutive: bool) -> None:
    """Refuse rows whose ``step`` repeats or goes backwards (two writers, or a journal pieced together):
    the journal's steps must be 0, 1, 2, ... (``consecutive``), other files' never decrease."""
    previous = -1
    for number, record in records:
        step = record.get("step")
        if not isinstance(step, int) or isinstance(step, bool):
            raise ValueError(f"{path}: line {number} has no step number")
        if (step != previous + 1) if consecutive else (step < previous):
            what = f"step {step} after step {previous}" if step <= previous else f"step {step} where step {previous + 1} was expected"
            raise ValueError(f"{path}: line {number}: {what}; the run was written twice or pieced together and cannot be "
                             "trusted (simulate it again into a fresh directory)")
        previous = step


def _step_of(line: bytes, path: Path, number: int) -> int:
    """The ``step`` of one complete JSON line of ``path``; a bad line is an error naming the file and line."""
    try:
        return int(json.loads(line.decode("utf-8"))["step"])
    except (UnicodeDecodeError, json.JSONDecodeError, TypeError, KeyError, ValueError) as exc:
        raise ValueError(f"{path}: line {number} is corrupt or has no step") from exc


@contextmanager
def _writing(path: Path) -> Iterator[None]:
    """Name ``path`` in a failed write (a full disk says only "No space left on device")."""
    try:
        yield
    except OSError as exc:
        if exc.filename is not None:
            raise
        raise OSError(exc.errno, f"{path}: cannot write ({exc.strerror or exc})") from exc


def _write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (a temporary file, synced, renamed over it)."""
    tmp = path.with_name(path.name + ".tmp")
    with _writing(path):
        with tmp.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)


def _lines(records: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records).encode("utf-8")


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    _write_bytes(path, _lines(records))


def _append_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    with _writing(path):
        with path.open("ab") as handle:
            handle.write(_lines(records))
            handle.flush()
            os.fsync(handle.fileno())


def _holder(path: Path) -> dict[str, Any]:
    """What ``run.lock`` says about its holder; {} when it is empty, unreadable or not a JSON object."""
    try:
        holder = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _same_file(fd: int, path: Path) -> bool:
    """Whether the open file ``fd`` is still the file at ``path``."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunStore:
    """Reads and writes one run directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def exists(self) -> bool:
        return (self.root / MANIFEST).is_file()

    # -------------------------------------------------------------- lock

    @contextmanager
    def lock(self, stale_after: float = STALE_LOCK_SECONDS) -> Iterator[None]:
        """Hold the run's lock for the block; refuse (:class:`RunLockedError`) while another process holds
        it. A ``run.lock`` left by a dead process on this host, or not refreshed for ``stale_after`` seconds
        on another host (the holder refreshes it at every commit), or empty or unreadable, is taken over."""
        if self.root.exists() and not self.root.is_dir():
            raise NotADirectoryError(f"{self.root}: a file stands where the run directory should be")
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / LOCK
        with self._os_lock(path):
            holder = self._live_holder(path, stale_after)
            if holder is not None:
                raise RunLockedError(f"{self.root} is in use by process {holder.get('pid')} on {holder.get('host')} "
                                     f"(lock {path}); wait for it to finish, or delete the lock if that process is gone")
            mine = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
            _write_bytes(path, json.dumps(mine).encode("utf-8"))
            try:
                yield
            finally:
                path.unlink(missing_ok=True)

    @contextmanager
    def _os_lock(self, path: Path) -> Iterator[None]:
        """Hold ``flock`` on the run's :data:`OS_LOCK` for the block (the OS releases it if this process dies);
        the file is removed, still locked, at the end. Where the file system has no ``flock`` (some network
        mounts), only ``run.lock`` guards the run."""
        target = self.root / OS_LOCK
        while True:
            with _writing(target):
                fd = os.open(target, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    holder = _holder(path)
                    raise RunLockedError(f"{self.root} is in use by process {holder.get('pid', '(unknown)')} on "
                                         f"{holder.get('host', 'this or another host')} (it holds {target}); wait for it to finish") from None
                logger.debug("%s: no flock on this file system (%s); relying on %s", self.root, exc, LOCK)
                yield
                return
            if _same_file(fd, target):
                break
            os.close(fd)  # locked a file its holder removed on leaving: lock the one now at the path
        try:
            yield
        finally:
            target.unlink(missing_ok=True)
            os.close(fd)  # releases the flock

    def _live_holder(self, path: Path, stale_after: float) -> dict[str, Any] | None:
        """The live holder named by the ``run.lock`` at ``path``; None when there is none or it is stale."""
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return None
        holder = _holder(path)
        if not holder:
            logger.warning("%s: taking over an empty or unreadable lock %s", self.root, path)
            return None
        same_host = holder.get("host") == socket.gethostname()
        pid = holder.get("pid")
        alive = _process_alive(pid) if same_host and isinstance(pid, int) and not isinstance(pid, bool) else age < stale_after
        if alive:
            return holder
        logger.warning("%s: taking over the lock of %s (process gone or lock not refreshed for %.0f s)", self.root, holder, age)
        return None

    def _refresh_lock(self) -> None:
        lock = self.root / LOCK
        if lock.exists():
            os.utime(lock)

    @contextmanager
    def running(self) -> Iterator[None]:
        """Mark the run ``running`` for the block; an exception that ends it is recorded in the manifest
        (``status: failed``, or ``interrupted`` for Ctrl-C, with ``error``: the reason on one line) and raised."""
        manifest = self.manifest()
        if manifest.get("status") != "running" or "error" in manifest:
            manifest.pop("error", None)
            self.write_manifest({**manifest, "status": "running"})
        try:
            yield
        except BaseException as exc:
            status = "interrupted" if isinstance(exc, (KeyboardInterrupt, SystemExit)) else "failed"
            reason = redact_secrets(" ".join(f"{type(exc).__name__}: {exc}".split()))
            try:
                self.update_manifest(status=status, error=reason)
            except OSError as failure:  # a full disk: the manifest keeps "running"; the original error is what matters
                logger.warning("%s: could not record the failure: %s", self.root, failure)
            raise

    # -------------------------------------------------------------- resume

    def check_resumable(self, resume: bool) -> None:
        """Refuse to start over a run, or to resume one whose journal cannot be trusted."""
        present = [name for name in (MANIFEST, STEPS, ACTIONS, MEAN_FIELD) if (self.root / name).exists()]
        if not present:
            return
        if not resume:
            raise FileExistsError(f"{self.root} already holds a run ({', '.join(present)}); pass resume=True (--resume) to continue it")
        if MANIFEST not in present:
            raise ValueError(f"{self.root}: {MANIFEST} is missing, so the run's config cannot be checked; refusing to resume "
                             f"(move the directory away to start again)")
        if STEPS not in present and any((self.root / name).exists() and (self.root / name).stat().st_size for name in (ACTIONS, MEAN_FIELD)):
            raise ValueError(f"{self.root}: {STEPS} (the commit journal) is missing but rows were written; refusing to resume "
                             f"(move the directory away to start again)")

    def manifest(self) -> dict[str, Any]:
        path = self.root / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"{self.root}: not a run directory (no {MANIFEST})")
        try:
            manifest = json.loads(path.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            where = f" at line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
            raise ValueError(f"{path}: corrupt or cut short{where}; the run cannot be read (restore the file, or simulate "
                             "again into a fresh directory)") from exc
        if not isinstance(manifest, dict):
            raise ValueError(f"{path}: not a JSON object; the run cannot be read")
        return manifest

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        _write_bytes(self.root / MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=False, default=str).encode("utf-8"))

    def update_manifest(self, **fields: Any) -> None:
        manifest = self.manifest()
        manifest.update(fields)
        self.write_manifest(manifest)

    def committed_steps(self) -> list[dict[str, Any]]:
        """The journal's steps (0, 1, 2, ...); a journal whose steps repeat or go backwards is refused."""
        numbered = _numbered_jsonl(self.root / STEPS)
        _check_order(self.root / STEPS, numbered, consecutive=True)
        return [step for _, step in numbered]

    def rollback_to_committed(self, schedule: Sequence[Step] | None = None, records_mean_field: bool = False) -> list[dict[str, Any]]:
        """Drop rows of uncommitted steps and repair torn lines; return the committed steps.

        With the run's ``schedule``, each committed step must be the scheduled one (same positions) and
        have all its rows (and its mean-field entry when the run ``records_mean_field``); the journal is
        cut back before the first step that lacks some (a cut file), so that step runs again and nothing
        is lost.
        """
        steps = self.committed_steps()
        rows = _read_jsonl(self.root / ACTIONS)
        mean_field = _read_jsonl(self.root / MEAN_FIELD)
        if schedule is not None:
            if len(steps) > len(schedule):
                raise ValueError(f"{self.root / STEPS}: {len(steps)} steps committed but the run has {len(schedule)}")
            counts: dict[int, int] = {}
            for row in rows:
                counts[row["step"]] = counts.get(row["step"], 0) + 1
            entries = {entry["step"] for entry in mean_field}
            for committed, planned in zip(list(steps), schedule):
                if committed["positions"] != list(planned.positions):
                    raise ValueError(f"{self.root / STEPS}: step {planned.index} covered positions {committed['positions'][:3]}... "
                                     f"but this config schedules {list(planned.positions)[:3]}...; cannot resume")
                expected = len(planned.positions) if planned.phase == "rollout" else 0
                if counts.get(planned.index, 0) != expected or (records_mean_field and planned.index not in entries):
                    logger.warning("%s: step %d lacks rows or its mean-field entry (file cut?); resuming from before it", self.root,
                                   planned.index)
                    steps = steps[: planned.index]
                    break
        done = len(steps)
        _write_jsonl(self.root / STEPS, steps)
        _write_jsonl(self.root / ACTIONS, [r for r in rows if r["step"] < done])
        _write_jsonl(self.root / MEAN_FIELD, [r for r in mean_field if r["step"] < done])
        return steps

    def commit(self, step: dict[str, Any], rows: list[dict[str, Any]], mean_field: dict[str, Any] | None) -> None:
        if rows:
            _append_jsonl(self.root / ACTIONS, rows)
        if mean_field is not None:
            _append_jsonl(self.root / MEAN_FIELD, [mean_field])
        _append_jsonl(self.root / STEPS, [step])
        self._refresh_lock()

    def copy_prefix(self, parent: RunStore, steps: int) -> None:
        """Make this run's rows, mean-field entries and journal the first ``steps`` committed steps of
        ``parent``, byte for byte (the journal last: it commits the copy, so a copy cut short is redone)."""
        committed = len(parent.committed_steps())
        if committed < steps:
            raise ValueError(f"{parent.root}: {committed} steps committed, fewer than the {steps} to copy")
        _write_jsonl(self.root / STEPS, [])  # an empty journal first: a copy cut short leaves a run that resumes (and copies again)
        for name in (ACTIONS, MEAN_FIELD, STEPS):
            source = parent.root / name
            lines = source.read_bytes().split(b"\n")[:-1] if source.exists() else []  # the last piece is empty or torn
            kept = b"".join(line + b"\n" for number, line in enumerate(lines, start=1)
                            if line.strip() and _step_of(line, source, number) < steps)
            _write_bytes(self.root / name, kept)

    def actions(self) -> list[dict[str, Any]]:
        return _read_jsonl(self.root / ACTIONS)

    def checked_actions(self) -> list[dict[str, Any]]:
        """The rows of the committed steps, refusing a run written twice (its journal or rows repeat a step)."""
        committed = len(self.committed_steps())
        numbered = _numbered_jsonl(self.root / ACTIONS)
        _check_order(self.root / ACTIONS, numbered, consecutive=False)
        return [row for _, row in numbered if row["step"] < committed]

    def mean_field_history(self) -> list[dict[str, Any]]:
        return _read_jsonl(self.root / MEAN_FIELD)


def export_actions(run_dir: str | Path, path: str | Path) -> Path:
    """Write a run's aligned real/simulated actions as CSV, Parquet or JSONL (by suffix)."""
    import pandas as pd

    store = RunStore(run_dir)
    manifest = store.manifest()
    frame = pd.DataFrame(store.checked_actions())
    frame.insert(0, "event_id", manifest["event"]["event_id"])
    frame.insert(1, "method", manifest["config"]["method"])
    frame.insert(2, "seed", manifest["config"]["seed"])
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".parquet":
        try:
            frame.to_parquet(path, index=False)
        except ImportError as exc:
            raise ImportError("Parquet export needs pyarrow: pip install 'mfllm[parquet]'") from exc
    elif suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True, force_ascii=False)
    else:
        raise ValueError(f"{path}: export format must be .csv, .parquet or .jsonl")
    return path
