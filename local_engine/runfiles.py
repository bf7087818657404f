"""Where engines leave their traces (log, record of who runs them), and process-group helpers.

Each running engine has a record, `<run dir>/engine-<provider>-<port>.json`, written by whoever
launched it (`escalade serve` or `escalade engine start`). It lets `escalade engine status|stop`
and a gateway started later find an engine that another process runs. The run directory is
$ESCALADE_RUN_DIR, else $XDG_RUNTIME_DIR/escalade, else /tmp/escalade-<uid>.
"""

import contextlib
import json
import os
import signal
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path


def default_run_dir() -> Path:
    explicit = os.environ.get("ESCALADE_RUN_DIR")
    if explicit:
        return Path(explicit)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "escalade"
    return Path(tempfile.gettempdir()) / f"escalade-{os.getuid()}"


@dataclass(frozen=True, slots=True)
class EngineRecord:
    provider: str
    origin: str
    pgid: int
    """The engine's process group (its leader is the leash; see leash.py)."""
    supervisor_pid: int
    owner: str
    """`serve` or `engine start`: the command whose process supervises the engine."""
    log: str
    started_at: float
    argv: list[str]


def record_path(run_dir: Path, provider: str, port: int) -> Path:
    return run_dir / f"engine-{provider}-{port}.json"


def log_path(run_dir: Path, provider: str, port: int) -> Path:
    return run_dir / f"engine-{provider}-{port}.log"


def write_record(path: Path, record: EngineRecord) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(record), indent=1))
    tmp.replace(path)


def read_record(path: Path) -> EngineRecord | None:
    try:
        data = json.loads(path.read_text())
        return EngineRecord(**data)
    except (OSError, ValueError, TypeError):
        return None


def remove_record(path: Path, pgid: int | None = None) -> None:
    """Delete the record, but only if it still describes `pgid` (another process may own it now)."""
    if pgid is not None:
        current = read_record(path)
        if current is not None and current.pgid != pgid:
            return
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _state(pid) not in (None, "Z")


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes in process group `pgid`. Reads /proc; elsewhere, signal 0."""
    proc = Path("/proc")
    if not proc.is_dir():
        return [pgid] if _group_signalable(pgid) else []
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        stat = _stat_fields(int(entry.name))
        if stat is not None and stat[2] == str(pgid) and stat[0] != "Z":
            members.append(int(entry.name))
    return members


def group_alive(pgid: int) -> bool:
    return bool(group_members(pgid))


def signal_group(pgid: int, sig: signal.Signals) -> bool:
    """Send `sig` to every process in the group; False when the group is already gone."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


def _group_signalable(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name: state, ppid, pgrp, ..."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2 :].split()


def _state(pid: int) -> str | None:
    if not Path("/proc").is_dir():
        return "R"
    fields = _stat_fields(pid)
    return fields[0] if fields else None
