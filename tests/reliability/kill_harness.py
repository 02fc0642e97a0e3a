"""Kill a bundle command with SIGKILL at random points, restart it with the same arguments until it finishes.

``python -m tests.reliability.kill_harness --seed S --kills N --report out.json [--delay_from REGEX]
[--slow_save_kill K] [--hang_after M] [--reference DIR] -- <monai.bundle arguments>``

Every attempt runs ``python -m monai.bundle <arguments>`` (MONAI's own entry point, through ``runpy`` as ``-m``
does) in a process forked from this one, which has imported torch, MONAI and the bundle once: a restart then costs
no import time, so that many kills fit in a test's budget. Attempt ``i`` is killed (SIGKILL) after a delay drawn
from ``random.Random(seed)`` (counted from the first log line matching ``--delay_from``, e.g. the trainer's
"Engine run starting/resuming", when given, or, with ``--kill_after_iterations I``, from the moment the log shows a
random number, 1 to I, of training iterations of this attempt); attempt ``K`` (``--slow_save_kill``) instead makes ``torch.save`` slow (it writes half
a checkpoint, flushes it, says so in the log, then sleeps: ``bundle_driver.install_slow_save``) and is killed as soon
as the log says so, i.e. while a checkpoint is being written (``--slow_save_match``: only files whose name contains
this, e.g. ``.last.`` for the temporary file of ``last.pt`` or ``model_global`` for the best model). With ``--hang_after M`` (inference) the first attempt hangs after
writing its ``M``-th image (``bundle_driver.install_hang``) and is killed then. After ``N`` kills the command runs to its end. ``--reference``
runs it once, uninterrupted, with ``--output_dir``/``--ckpt_dir`` under DIR, for comparison.

The report (JSON) lists each attempt: its delay, exit status, whether it was killed while writing, the epoch
recorded in ``last.pt`` before it started and the ``resuming from`` line it logged; and the final run's status.
Each attempt's stdout and stderr go to ``attempt_<i>.log`` next to the report.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import runpy
import signal
import sys
import time
import traceback
from pathlib import Path

import monai.bundle  # noqa: F401 -- imported once, before forking
import torch

import glam_bundle  # noqa: F401
from glam_bundle.handlers.resume import ResumeCheckpoint  # noqa: F401
from tests.reliability import bundle_driver

torch.set_num_threads(1)


def _option(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


def _temporaries(folders: list[Path]) -> list[Path]:
    found = []
    for folder in folders:
        if folder.is_dir():
            found += [p for p in folder.iterdir() if p.is_file() and (p.name.startswith(".") or
                                                                        p.name.startswith("tmp"))]
    return found


def _fork_run(args: list[str], log: Path, slow_save: float | None = None, slow_match: str = "",
              hang_after: int | None = None) -> int:
    log.write_text("")  # there before the child writes to it
    pid = os.fork()
    if pid:
        _CHILDREN.append(pid)
        return pid
    code = 1
    try:  # the child: the command, its output in the log
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        if slow_save:
            os.environ["GLAM_FAULT_SLOW_SAVE"] = str(slow_save)
            os.environ["GLAM_FAULT_SLOW_SAVE_MATCH"] = slow_match
            bundle_driver.install_slow_save()
        if hang_after is not None:
            os.environ["GLAM_FAULT_HANG_AFTER"] = str(hang_after)
            bundle_driver.install_hang()
        sys.argv = ["monai.bundle", *args]
        runpy.run_module("monai.bundle", run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except BaseException:  # noqa: BLE001 -- reported through the exit status and the log
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


_REAPED: dict[int, int] = {}
_CHILDREN: list[int] = []


def _decode(status: int) -> int:
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _running(pid: int) -> bool:
    """Whether the child still runs (reaping it, and keeping its status, when it has ended)."""
    if pid in _REAPED:
        return False
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        _REAPED[pid] = _decode(status)
    return not done


def _wait_while(pid: int, seconds: float, poll: float, condition=lambda: True) -> None:
    """Sleep in steps of ``poll`` while ``condition()`` holds, the process runs and ``seconds`` have not passed."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and _running(pid) and condition():
        time.sleep(poll)


def _kill(pid: int) -> None:
    if _running(pid):
        os.kill(pid, signal.SIGKILL)


def _wait(pid: int) -> int:
    if pid not in _REAPED:
        _REAPED[pid] = _decode(os.waitpid(pid, 0)[1])
    return _REAPED[pid]


def _last_epoch(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        return {"epoch": int(state["epoch"]), "completed": bool(state["completed"])}
    except Exception as error:  # noqa: BLE001 -- a corrupt file is a finding, reported
        return {"error": f"{type(error).__name__}: {error}"[:300]}


def _unreadable_checkpoints(folders: list[Path]) -> list[str]:
    """The ``*.pt`` files (not temporary ones) in ``folders`` that ``torch.load(weights_only=True)`` cannot read."""
    bad = []
    for folder in dict.fromkeys(folders):
        for path in sorted(folder.glob("*.pt")) if folder.is_dir() else []:
            if path.name.startswith((".", "tmp")):
                continue
            try:
                torch.load(path, map_location="cpu", weights_only=True)
            except Exception:  # noqa: BLE001 -- any error: unreadable
                bad.append(path.name)
    return bad


def _kill_children() -> None:
    """SIGKILL every forked attempt still running (the harness failing must not leave one hanging)."""
    for pid in list(_CHILDREN):
        if pid not in _REAPED:
            try:
                os.kill(pid, signal.SIGKILL)
                _wait(pid)
            except (ProcessLookupError, ChildProcessError):
                pass


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--min_delay", type=float, default=0.3)
    parser.add_argument("--max_delay", type=float, default=4.0)
    parser.add_argument("--kill_after_iterations", type=int, default=0,
                        help="kill after a random number (1 to this) of logged training iterations, then the delay")
    parser.add_argument("--delay_from", default=None,
                        help="regular expression: kill delays count from the first log line matching it")
    parser.add_argument("--slow_save_kill", type=int, default=-1, help="attempt killed while writing a checkpoint")
    parser.add_argument("--slow_save_match", default=".last.", help="name part of the file written slowly")
    parser.add_argument("--hang_after", type=int, default=None,
                        help="inference: the first attempt hangs after writing this many images and is killed then")
    parser.add_argument("--reference", type=Path, default=None)
    parser.add_argument("--report", type=Path, required=True)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    options = parser.parse_args()
    command = [a for a in options.command if a != "--"]
    output_dir = Path(_option(command, "--output_dir"))
    ckpt_dir = Path(_option(command, "--ckpt_dir") or output_dir)
    last = output_dir / "last.pt"
    logs = options.report.parent
    rng = random.Random(options.seed)
    report: dict = {"command": command, "seed": options.seed, "attempts": []}
    started = time.monotonic()

    for attempt in range(options.kills + 1):
        final = attempt == options.kills
        before = _last_epoch(last)
        log = logs / f"attempt_{attempt}.log"
        slow = attempt == options.slow_save_kill
        hang = options.hang_after if attempt == 0 and not final else None
        delay = None if final or slow or hang is not None else round(rng.uniform(options.min_delay, options.max_delay), 2)
        t0 = time.monotonic()
        pid = _fork_run(command, log, slow_save=3.0 if slow else None, slow_match=options.slow_save_match,
                        hang_after=hang)
        killed_while_writing = False
        report_target = None
        if hang is not None:
            deadline = time.monotonic() + 300
            while "fault: hanging after image" not in log.read_text(errors="replace") and time.monotonic() < deadline:
                if not _running(pid):
                    break
                time.sleep(0.02)
            _kill(pid)
        elif slow:
            deadline = time.monotonic() + 120
            while "fault: slow save half-written" not in log.read_text(errors="replace") and time.monotonic() < deadline:
                if not _running(pid):
                    break
                time.sleep(0.01)
            killed_while_writing = "fault: slow save half-written" in log.read_text(errors="replace") and _running(pid)
            _kill(pid)
        elif delay is not None and options.kill_after_iterations:
            # the kill lands after a random number of training iterations of this attempt (1 to the given maximum)
            # and a random delay after that: a random point in an epoch, never more than a few epochs in
            target = rng.randint(1, options.kill_after_iterations)
            report_target = target
            _wait_while(pid, 300, 0.005, lambda: len(re.findall(
                r"Epoch: \d+/\d+, Iter: \d+/\d+", log.read_text(errors="replace"))) < target)
            _wait_while(pid, delay, 0.005)
            _kill(pid)
        elif delay is not None:
            if options.delay_from:  # the delay counts from the moment the log shows this line (e.g. training starts)
                _wait_while(pid, 300, 0.01, lambda: not re.search(options.delay_from, log.read_text(errors="replace")))
            _wait_while(pid, delay, 0.01)
            _kill(pid)
        status = _wait(pid)
        text = log.read_text(errors="replace")
        resumed = re.findall(r"resuming from \S+ at epoch \d+|stage already complete", text)
        report["attempts"].append({
            "attempt": attempt, "delay_s": delay, "after_iterations": report_target, "slow_save": slow, "killed_while_writing": killed_while_writing,
            "status": status, "seconds": round(time.monotonic() - t0, 2), "last_before": before,
            "resume_line": resumed[0] if resumed else "",
            "temporaries_after": [p.name for p in _temporaries([output_dir, ckpt_dir])],
            "files_after": {p.name: p.stat().st_mtime_ns for p in sorted(output_dir.iterdir()) if p.is_file()}
            if output_dir.is_dir() else {},
            "unreadable_after": _unreadable_checkpoints([output_dir, ckpt_dir]),
        })
    report["final_last"] = _last_epoch(last)
    report["seconds"] = round(time.monotonic() - started, 2)

    if options.reference is not None:
        reference = list(command)
        reference[reference.index("--output_dir") + 1] = str(options.reference / "out")
        reference[reference.index("--ckpt_dir") + 1] = str(options.reference / "models")
        report["reference_status"] = _wait(_fork_run(reference, logs / "reference.log"))
    options.report.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        _kill_children()
