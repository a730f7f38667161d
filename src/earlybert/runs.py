"""Everything a run keeps on disk: atomic writes, the run folder (refusing to overwrite, resume checks, the wall
clock over every attempt), stage checkpoints, and the ticket every process of a distributed run agrees on."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import Callable

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def atomic_writer(path: Path, mode: str = "w"):
    """A file object whose content replaces `path` only once the block ends without an error: written to a
    temporary file beside it, flushed to disk, then renamed over `path`, so a kill never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be read by others
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_writer(path, "w") as f:
        f.write(text)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_writer(path, "wb") as f:
        f.write(data)


class RunFolder:
    """The run directory: refuses to overwrite without permission, writes every file atomically."""

    def __init__(self, path: str | Path, resume: bool, overwrite: bool, is_main: bool = True):
        """Checks only; nothing is touched until `create()`, so a run that fails on bad input leaves no trace."""
        self.path = Path(path)
        self.is_main = is_main
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"output {self.path} is a file, not a folder")
        self.replace = overwrite and self.path.exists() and any(self.path.iterdir())
        if self.path.exists() and any(self.path.iterdir()) and not (resume or overwrite):
            raise ValueError(f"run folder {self.path} is not empty; pass --resume to continue it or --overwrite to replace it")

    def create(self) -> "RunFolder":
        if self.replace and self.is_main:
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    def write_json(self, name: str, data) -> None:
        if self.is_main:
            atomic_write_text(self.path / name, json.dumps(data, indent=1))

    def read_json(self, name: str):
        path = self.path / name
        return json.loads(path.read_text()) if path.exists() else None

    def check_resume(self, config: dict) -> dict | None:
        """For --resume, before anything is written: None to go on (continue the run, or start it when there is
        nothing to resume, which is announced); the stored results when the run already finished, so nothing is
        retrained or rewritten. ValueError naming each setting that differs from the run's own config.json.

        The output path is not part of a run's identity: a run folder that was moved or copied resumes."""
        if not self.path.is_dir() or not any(self.path.iterdir()):
            if self.is_main:
                logger.warning("nothing to resume in %s (%s); starting a new run", self.path,
                               "empty folder" if self.path.is_dir() else "no such folder")
            return None
        saved = self.read_json("config.json")
        if saved is None:
            raise ValueError(f"{self.path} is not a run folder (no config.json), so there is nothing to resume; "
                             "use a new --output, or --overwrite to replace it")
        differences = _differences(saved, json.loads(json.dumps(config)))
        if differences:
            raise ValueError(f"run folder {self.path} was started with other settings: {'; '.join(differences)}; "
                             "resume with the run's own settings (its config.json) or use a new --output")
        results = self.read_json("results.json")  # written last: its presence means the run finished
        if results is not None and self.is_main:
            logger.warning("run %s already finished; nothing was rerun or rewritten (--overwrite runs it again)",
                           self.path)
        return results

    def check_data(self, fingerprint: str, source: str) -> None:
        """For a resumed run, before anything is written: ValueError when the run started on other data than
        `source` gives now (the training and evaluation examples as the run sees them, `fingerprint`). Its
        settings can all be the same while a file behind a path changed, or another tokenizer answers to a name:
        resumed silently, the rest of the run would train on other examples than its first part. A run started
        before runs kept a fingerprint has none to compare with and goes on; nor is a folder about to be replaced
        (--overwrite) checked."""
        saved = None if self.replace else self.read_json(DATA_FINGERPRINT)
        if saved is not None and saved["fingerprint"] != fingerprint:
            raise ValueError(f"run folder {self.path} was started on other data: the examples {source} gives now "
                             f"differ from the ones it trained on (a changed file, another tokenizer); resume with "
                             "the data it started with, or use --overwrite or a new --output")

    def keep_data(self, fingerprint: str, source: str) -> None:
        """Record the data the run starts on (once; a resumed run keeps its first record), for check_data."""
        if self.read_json(DATA_FINGERPRINT) is None:
            self.write_json(DATA_FINGERPRINT, {"fingerprint": fingerprint, "source": source})


DATA_FINGERPRINT = "data.json"  # in the run folder: what check_data compares a resumed run's data with


def fingerprint(*parts) -> str:
    """A digest of examples (lists of dicts of token ids, labels, offsets) or of strings, in order: what a run
    trains and evaluates on, whichever files or datasets it came from."""
    h = hashlib.sha256()
    for part in parts:
        items = [part] if isinstance(part, (str, bytes)) else part
        for item in items:
            text = item if isinstance(item, (str, bytes)) else json.dumps(
                item, sort_keys=True, default=lambda x: x.tolist() if hasattr(x, "tolist") else str(x))
            h.update(text.encode() if isinstance(text, str) else text)
            h.update(b"\n")
        h.update(b"\x00")  # parts are separate: moving an example from one to the next changes the digest
    return h.hexdigest()


IDENTITY_IGNORES = ("output",)  # where a run lives is not what it is: a moved or copied run folder resumes


def _differences(saved: dict, now: dict, prefix: str = "") -> list[str]:
    """'name: run value -> now value' for every setting (nested ones as a.b) that differs, output path aside."""
    out = []
    for key in dict.fromkeys([*saved, *now]):
        if not prefix and key in IDENTITY_IGNORES:
            continue
        if key not in saved and now.get(key) is None:  # a setting added since the run started, left off: the same run
            continue
        old, new = saved.get(key, "(unset)"), now.get(key, "(unset)")
        if isinstance(old, dict) and isinstance(new, dict):
            out += _differences(old, new, f"{prefix}{key}.")
        elif old != new:
            out.append(f"{prefix}{key} {old!r} in the run, {new!r} now")
    return out


class WallClock:
    """Wall time of a run over every attempt of it (a run resumed after a kill counts the killed attempt too).

    `attempts.json` in the run folder lists the seconds of each attempt. The running attempt's entry is rewritten
    every `every_s` seconds by a background thread, so an attempt killed without warning (kill -9, a scheduler's
    time limit) still leaves its time, to within `every_s`."""

    FILE = "attempts.json"

    def __init__(self, folder: RunFolder, every_s: float = 5.0):
        self.folder = folder
        self.every_s = every_s
        self.previous = [float(s) for s in (folder.read_json(self.FILE) or {}).get("attempts_s", [])]
        self.start = time.perf_counter()
        self._end: float | None = None
        self._stop = threading.Event()
        self._thread = None

    def begin(self) -> "WallClock":
        """Call once the run folder exists; only the main process writes."""
        if self.folder.is_main:
            self._write()
            # The thread holds the clock weakly, so a run that failed with an exception drops the clock and the
            # heartbeat ends with it (see __del__) instead of writing into the folder for the life of the process.
            self._thread = threading.Thread(target=_heartbeat, args=(weakref.ref(self), self._stop, self.every_s),
                                            name="earlybert-wall-clock", daemon=True)
            self._thread.start()
        return self

    def _write(self) -> None:
        self.folder.write_json(self.FILE, {"attempts_s": [*self.previous, self.elapsed_s()]})

    def elapsed_s(self) -> float:
        return (self._end if self._end is not None else time.perf_counter()) - self.start

    def total_s(self) -> float:
        return sum(self.previous) + self.elapsed_s()

    def stop(self) -> float:
        """Stops the heartbeat and records this attempt; returns the total over all attempts."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._end is None:
            self._end = time.perf_counter()  # the attempt's time, frozen: the file and the results say the same
            if self._thread is not None:
                self._write()
        return self.total_s()

    def __del__(self):
        self._stop.set()


def _heartbeat(clock_ref, stop: threading.Event, every_s: float) -> None:
    while not stop.wait(every_s):
        clock = clock_ref()
        if clock is None or not clock.folder.path.is_dir():  # dropped, or its folder removed
            return
        clock._write()
        del clock


def broadcast_ticket(ticket, accelerator) -> tuple:
    """Rank 0's ticket for every rank, so the processes of a distributed run can never disagree on the shape;
    and whether all ranks had drawn that same ticket themselves (they should: DDP keeps the gates in sync)."""
    from accelerate.utils import broadcast_object_list, gather_object

    if accelerator.num_processes == 1:
        return ticket, True
    payload = [ticket.to_dict()]
    broadcast_object_list(payload, from_process=0)
    chosen = type(ticket).from_dict(payload[0])
    own = (ticket.heads, ticket.ffn) == (chosen.heads, chosen.ffn)
    agreed = all(gather_object([own]))
    if not agreed:
        logger.warning("ranks drew different tickets; all use rank 0's")
    return chosen, agreed


def write_folder(path: Path, write: Callable[[Path], None]) -> None:
    """write(folder) fills a staging folder beside `path`, renamed to `path` once whole: a kill never leaves a
    half-written folder where a later run would take it for a finished one."""
    partial = path.with_name(path.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    write(partial)
    os.replace(partial, path)


def save_checkpoint(accelerator, directory: Path, progress: dict) -> None:
    """accelerate's state + our progress, swapped in with renames so a kill never leaves half a checkpoint."""
    accelerator.wait_for_everyone()
    tmp, old = directory.with_name(directory.name + ".tmp"), directory.with_name(directory.name + ".old")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    # Every rank writes its own RNG state into `tmp` and save_state returns without a barrier: renaming `tmp`
    # before the other ranks have written made them fail (or a resume miss their states).
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / "progress.json").write_text(json.dumps(progress))
        if directory.exists():
            os.replace(directory, old)
        os.replace(tmp, directory)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def find_checkpoint(directory: Path) -> Path | None:
    """The newest complete checkpoint (a kill between the two renames leaves only `.old`)."""
    for candidate in (directory, directory.with_name(directory.name + ".old")):
        if (candidate / "progress.json").exists():
            return candidate
    return None


def remove_checkpoint(directory: Path, accelerator) -> None:
    """Drop a stage's checkpoint; call once the stage's results are safely written elsewhere."""
    if accelerator.is_main_process:
        for leftover in (directory, directory.with_name(directory.name + ".old"), directory.with_name(directory.name + ".tmp")):
            shutil.rmtree(leftover, ignore_errors=True)
