"""Running a grid: every cell without a complete result, one at a time, resumable, then the tables.

Each cell runs as a subprocess in the grid's environment, in its own folder (``cell.json``, its configs, the
tool's log); a lock keeps two runners off one runs folder, and Ctrl-C / SIGTERM stop the running cell's tool
and mark the cell interrupted. The README's "How it runs and resumes" describes it.
"""

from __future__ import annotations

import ctypes
import datetime as _dt
import fnmatch
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..lmms.datasets import SMOKE_JSONL
from ..lmms.efficiency_log import read_log
from ..lmms.smoke_data import write_smoke_data
from ..models.presets import write_checkpoint
from ..paths import REPO
from ..report.render import write_tables
from ..report.tables import aggregate
from .cells import (
    bench_command,
    cell_problems,
    cell_status,
    eval_command,
    read_cell,
    spec_hash,
    write_cell,
    write_config,
)
from .check import check_missing
from .grid import Cell, EvalCell, Grid
from .progress import Progress, describe, fmt_seconds

__all__ = ["LOCK_FILE", "PID_FILE", "prepare_inputs", "run_cell", "run_grid", "stop_orphan", "write_grid_tables"]


def _clear(folder: Path) -> None:
    """Remove a cell's previous outputs (a partial run must not mix with the next one)."""
    if folder.is_dir():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)


def _count_docs(folder: Path) -> int:
    """Documents logged so far by the cell's efficiency logs."""
    total = 0
    for path in folder.rglob("*_efficiency*.jsonl"):
        try:
            total += len(read_log(path))
        except OSError:
            pass
    return total


def run_cell(cell: Cell, progress: Progress) -> tuple[bool, float, str]:
    """Run one cell from scratch, in the grid's environment; return (complete, seconds, why not)."""
    stop_orphan(cell.folder)
    _clear(cell.folder)
    spec = cell.spec()
    if isinstance(cell, EvalCell):
        write_config(cell.config, cell.folder / "config.yaml")
        command = eval_command(cell)
        log = cell.folder / "lmms-eval.log"
    else:
        for _, _, config in cell.configs:
            write_config(config, cell.folder / "configs" / f"{config.name}.yaml")
        command = bench_command(cell)
        log = cell.folder / "bench.log"
    record = {"spec": spec, "spec_hash": spec_hash(spec, cell.grid.runs), "grid": str(cell.grid.path),
              "grid_name": cell.grid.name, "label": cell.grid.label, "command": command,
              "command_line": shlex.join(command),
              "state": "running", "started_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "host": os.uname().nodename if hasattr(os, "uname") else ""}
    write_cell(cell.folder, record)
    start = time.monotonic()
    interrupted = False
    with open(log, "w", encoding="utf-8") as handle:
        handle.write("$ " + shlex.join(command) + "\n")
        handle.flush()
        proc = subprocess.Popen(command, cwd=str(REPO), env=dict(cell.grid.environ), stdout=handle,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_die_with_parent(os.getpid()))
        (cell.folder / PID_FILE).write_text(f"{proc.pid}\n")
        last_report = start
        last_docs = -1
        try:
            while True:
                try:
                    proc.wait(timeout=1.0)
                    break
                except subprocess.TimeoutExpired:
                    pass
                now = time.monotonic()
                if isinstance(cell, EvalCell) and now - last_report >= cell.grid.progress_s:
                    last_report = now
                    docs = _count_docs(cell.folder)
                    if docs != last_docs:
                        last_docs = docs
                        total = cell.task.docs if not cell.grid.limit else None
                        rate = docs / (now - start) if docs else 0.0
                        eta = f", cell ETA {fmt_seconds((total - docs) / rate)}" if total and rate else ""
                        of = f"/{total}" if total else ""
                        progress.print(f"      ... {docs}{of} documents after {fmt_seconds(now - start)}{eta}")
        except KeyboardInterrupt:
            interrupted = True
            _stop(proc)
    seconds = time.monotonic() - start
    (cell.folder / PID_FILE).unlink(missing_ok=True)
    problems = cell_problems(cell)
    if interrupted and problems:
        problems = ["interrupted", *problems]
    # An interrupt that came after the tool had written everything leaves a complete cell: it says so.
    record.update(state="complete" if not problems else ("interrupted" if interrupted else "failed"),
                  returncode=proc.returncode, duration_s=round(seconds, 1),
                  finished_utc=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                  problems=problems)
    write_cell(cell.folder, record)
    if interrupted:
        raise KeyboardInterrupt
    return not problems, seconds, "; ".join(problems[:3])


LOCK_FILE = ".reproduce.lock"
#: The running tool's pid, in its cell folder while it runs (a runner killed with SIGKILL leaves it behind).
PID_FILE = "tool.pid"
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> Any:
    """A ``preexec_fn``: on Linux the tool gets SIGTERM when the runner dies, even by SIGKILL (prctl
    PR_SET_PDEATHSIG); elsewhere None (the next run stops an orphan, :func:`stop_orphan`)."""
    if not sys.platform.startswith("linux"):
        return None

    def preexec() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        except (OSError, AttributeError):
            return
        if os.getppid() != parent:  # the runner died before prctl took effect
            os._exit(1)

    return preexec


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def stop_orphan(folder: Path, out: Any = None) -> bool:
    """Stop a tool left running in ``folder`` by a runner that was killed (its pid in ``tool.pid``, its command
    naming the folder); True if one was stopped. Its whole process group goes (SIGTERM, then SIGKILL)."""
    path = folder / PID_FILE
    try:
        pid = int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return False
    alive = True
    try:
        os.kill(pid, 0)
    except OSError:
        alive = False
    if alive and Path("/proc").is_dir() and str(folder) not in _cmdline(pid):
        alive = False  # the pid now belongs to another program
    if alive:
        if out is not None:
            print(f"  stopping {pid}, still running in {folder} from a runner that was killed", file=out)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pid, sig)
            except OSError:
                try:
                    os.kill(pid, sig)
                except OSError:
                    break
            deadline = time.monotonic() + 10.0
            while time.monotonic() < deadline and _cmdline(pid) and _running(pid):
                time.sleep(0.1)
            if not _running(pid):
                break
    path.unlink(missing_ok=True)
    return alive


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a zombie (dead, not yet reaped by its parent) is not running
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return True


def _lock(runs: Path) -> Path | None:
    """Claim the runs folder (two runners on one folder would clobber each other's cells); None if taken."""
    runs.mkdir(parents=True, exist_ok=True)
    path = runs / LOCK_FILE
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(path.read_text().split()[0])
                os.kill(pid, 0)
                return None  # its process is alive
            except PermissionError:
                return None  # alive, another user's
            except (ValueError, IndexError, OSError):
                path.unlink(missing_ok=True)  # stale: its process is gone
                continue
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{os.getpid()} {_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')}\n")
        return path
    return None


def _stop(proc: subprocess.Popen) -> None:
    """Stop a cell's tool and everything it started (its own process group): SIGINT, then SIGTERM, then SIGKILL."""
    for sig, grace in ((signal.SIGINT, 15.0), (signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=grace)
            break
        except subprocess.TimeoutExpired:
            continue
        except KeyboardInterrupt:  # a second Ctrl-C: straight to the next signal
            continue
    try:
        proc.wait(timeout=5.0)
    except (subprocess.TimeoutExpired, KeyboardInterrupt):
        pass


def _interrupt_on_term() -> Any:
    """SIGTERM / SIGHUP (a job scheduler's stop, a closed terminal) end the run like Ctrl-C: the running cell's
    tool is stopped and the cell marked interrupted. Returns a function restoring the previous handlers."""
    saved = {}

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is None:
            continue
        try:
            saved[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread
            pass

    def restore() -> None:
        for sig, previous in saved.items():
            signal.signal(sig, previous)

    return restore


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("        " + line for line in text[-lines:])


def prepare_inputs(grid: Grid, out: Any = sys.stdout) -> None:
    """The grid's generated inputs (tiny checkpoint, smoke data), made only when absent."""
    ckpt = grid.prepare.get("checkpoint")
    if ckpt:
        folder = Path(ckpt["out"])
        if not (folder / "config.json").is_file() or not list(folder.glob("*.safetensors")):
            write_checkpoint(ckpt["preset"], folder, seed=int(ckpt.get("seed", 0)), dtype=ckpt.get("dtype"))
            print(f"prepared: random-initialised '{ckpt['preset']}' checkpoint in {folder}", file=out)
    smoke = grid.prepare.get("smoke_data")
    if smoke:
        folder = Path(smoke["out"])
        if not (folder / SMOKE_JSONL).is_file():
            write_smoke_data(folder, seed=int(smoke.get("seed", 0)))
            print(f"prepared: smoke data in {folder}", file=out)


def run_grid(
    grid: Grid,
    *,
    force: bool = False,
    only: Sequence[str] = (),
    dry_run: bool = False,
    tables: bool = True,
    out: Any = sys.stdout,
) -> int:
    """Run every incomplete cell of the grid, then write the tables. Returns an exit status.

    The checks and every run get the grid's environment (:attr:`Grid.environ`); this process's is left alone.
    """
    everything = grid.cells()
    if only:
        everything = [c for c in everything if any(fnmatch.fnmatch(c.id, p) or p in c.id for p in only)]
        if not everything:
            print(f"error: no cell matches {', '.join(only)} (cell ids look like {grid.cells()[0].id})", file=out)
            return 2
    skipped = {c.id for c in everything if isinstance(c, EvalCell) and c.unavailable}
    cells = [c for c in everything if c.id not in skipped]
    print(f"grid {grid.name} ({grid.path}): {len(everything)} cells -> runs in {grid.runs}, tables in {grid.tables}",
          file=out)
    if grid.label:
        print(f"  {grid.label}", file=out)
    if not dry_run:
        prepare_inputs(grid, out)
    states = {c.id: cell_status(c) for c in cells}
    todo = [c for c in cells if force or states[c.id][0] != "complete"]
    done = len(cells) - len(todo)
    print(f"  {done} complete, {len(todo)} to run" + (" (--force: all)" if force else "")
          + (f", {len(skipped)} unavailable here (not run)" if skipped else ""), file=out)
    todo_ids = {c.id for c in todo}
    for cell in everything:
        if cell.id in skipped:
            print(f"  [skip] {describe(cell)}: unavailable ({cell.unavailable})", file=out)
            continue
        state, why = states[cell.id]
        mark = "run " if cell.id in todo_ids else "done"
        print(f"  [{mark}] {describe(cell)}: {state}{(' (' + why + ')') if why and state != 'missing' else ''}",
              file=out)
    if todo:
        problems, notes = check_missing(grid, todo)
        if dry_run:  # what `prepare` generates is not missing: a real run makes it first
            made = [str(v["out"]) for v in grid.prepare.values() if isinstance(v, dict) and v.get("out")]
            generated = [(w, m) for w, m in problems if any(path in m for path in made)]
            problems = [p for p in problems if p not in generated]
            notes += [f"generated by the grid's prepare step on a real run: {m}" for _, m in generated]
        for note in notes:
            print(f"  note: {note}", file=out)
        if problems:
            print(f"\nerror: {len(problems)} thing(s) missing for the {len(todo)} cell(s) to run; nothing was run. "
                  "Put them in place (or point the grid / environment at them) and run again:", file=out)
            for what in dict.fromkeys(w for w, _ in problems):
                print(f"  {what}:", file=out)
                for w, message in problems:
                    if w == what:
                        print(f"    - {message}", file=out)
            return 2
    if dry_run:
        for cell in todo:
            command = eval_command(cell) if isinstance(cell, EvalCell) else bench_command(cell)
            print(f"  would run {cell.id}:\n    {shlex.join(command)}", file=out)
        return 0
    lock = _lock(grid.runs)
    if lock is None:
        print(f"error: another `earlytom-eval reproduce` is running on {grid.runs} "
              f"({grid.runs / LOCK_FILE}); wait for it or remove that file if it is stale", file=out)
        return 2
    for cell in cells:  # tools a killed runner left running would write into the cells we are about to run
        stop_orphan(cell.folder, out)
    _settle_states(cells, states)
    progress = Progress(cells, out)
    failed = []
    restore = _interrupt_on_term()
    try:
        for number, cell in enumerate(todo, start=1):
            index = f"[{number}/{len(todo)}]"
            remaining = todo[number - 1:]
            progress.print(f"{index} {describe(cell)}: running (estimated {fmt_seconds(progress.estimate(cell))}; "
                           f"grid ETA {progress.eta(remaining)}) -> {cell.folder}")
            ok, seconds, why = run_cell(cell, progress)
            progress.add(cell, seconds)
            left = todo[number:]
            tail = f"; {len(left)} left, ETA {progress.eta(left)}" if left else ""
            if ok:
                progress.print(f"{index} {describe(cell)}: complete in {fmt_seconds(seconds)}{tail}")
            else:
                failed.append(cell)
                log = cell.folder / ("lmms-eval.log" if isinstance(cell, EvalCell) else "bench.log")
                progress.print(f"{index} {describe(cell)}: FAILED after {fmt_seconds(seconds)}: {why}; log {log}{tail}")
                progress.print(_tail(log))
    except KeyboardInterrupt:
        progress.print("\ninterrupted: finished cells are kept; run the same command again to resume")
        return 130
    finally:
        restore()
        lock.unlink(missing_ok=True)
    if tables:
        write_grid_tables(grid, out)
    if failed:
        print(f"error: {len(failed)} cell(s) failed: {', '.join(c.id for c in failed)}; their logs are in their "
              "folders; run again to retry them", file=out)
        return 1
    return 0


def _settle_states(cells: Sequence[Cell], states: dict[str, tuple[str, str]]) -> None:
    """A cell whose files are complete but whose ``cell.json`` says otherwise (an interrupt after its tool had
    finished) is kept: its record says complete."""
    for cell in cells:
        if states[cell.id][0] != "complete":
            continue
        record = read_cell(cell.folder)
        if record is not None and record.get("state") != "complete":
            record.update(state="complete", problems=[], settled_from=record.get("state"))
            write_cell(cell.folder, record)


def write_grid_tables(grid: Grid, out: Any = sys.stdout) -> Path:
    """Aggregate the grid's runs into its tables folder (every cell of the grid expected)."""
    expected = [c.expected() for c in grid.eval_cells()]
    result = aggregate(grid.runs, expected=expected, average=grid.average or None, label=grid.label or None)
    title = f"Tables: grid {grid.name}"
    write_tables(result, grid.tables, title=title)
    print(f"tables and plots: {grid.tables}/tables.md (+ .csv, .tex, .png)", file=out)
    for problem in result.problems:
        print(f"  warning: {problem}", file=out)
    return grid.tables / "tables.md"
