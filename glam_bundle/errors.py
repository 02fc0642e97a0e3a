"""Mistakes a user can fix, reported as one line; the full traceback only with ``GLAM_DEBUG=1``.

The bundle runs under MONAI's own entry point (``python -m monai.bundle run --config_file ...``), whose config
expressions wrap every exception in ``RuntimeError("Failed to evaluate ConfigExpression ...")`` and whose
``StatsHandler`` logs every engine exception with its traceback. Without help, a misspelt path reaches the user as
two chained tracebacks of ~65 lines with the cause in the middle. So importing :mod:`glam_bundle` (every config
does, ``"$import glam_bundle"``) calls :func:`install`, which

- sets ``sys.excepthook``: an uncaught exception whose chain (``raise ... from``, MONAI's wrapping) holds a
  :class:`UserError` (or one of the bundle's other user-error types, a full disk, or one of the known
  third-party errors in :data:`KNOWN_ERRORS`) is printed as one line ``error: <message>`` on stderr and the
  process exits with :data:`EXIT_USER_ERROR` (2). Any other exception keeps Python's traceback (exit 1);
- sets ``threading.excepthook``: a background thread stopped by such an error (TensorBoard's event writer on a
  full disk) prints one line ``warning: <thread> stopped: <message>`` instead of its traceback;
- strips the traceback from log records of such errors (``logger.exception`` in MONAI's ``StatsHandler``), keeping
  their one-line message.

``GLAM_DEBUG=1`` (any value but "", "0", "false", "no") turns both off: every error shows its full traceback.

Every user-error message is one line that starts with the setting and/or the file (``--ckpt_path
./models/model.pt: ...``) and ends with what to do. ``docs/troubleshooting.md`` lists them.
"""

from __future__ import annotations

import atexit
import errno
import logging
import os
import pickle
import re
import sys
import threading
from collections.abc import Callable, Iterator

__all__ = [
    "DEBUG_ENV",
    "EXIT_USER_ERROR",
    "UserError",
    "ConfigError",
    "AllCasesFailedError",
    "debug_enabled",
    "exception_chain",
    "is_disk_full",
    "user_error_message",
    "install",
]

DEBUG_ENV = "GLAM_DEBUG"
EXIT_USER_ERROR = 2
DEBUG_HINT = f"(traceback: {DEBUG_ENV}=1)"
CACHE_HINT = "use --cache memory (RAM) or --cache none (no cache) instead of the disk cache"

# User-error types defined in modules that do not derive from UserError, by qualified name (importing them here
# would import torch-heavy modules at ``import glam_bundle``).
_NAMED_USER_ERRORS = frozenset({
    "glam_bundle.handlers.resume.ResumeError",
    "glam_bundle.data.patch_cache.PatchCacheMissingError",
})


class UserError(Exception):
    """A mistake the user can fix (a setting, a path, an input file); its message is one line naming the setting
    and/or the file and what to do. The error hook prints it as ``error: <message>`` without a traceback."""

    def __str__(self) -> str:
        return one_line(super().__str__())


class ConfigError(UserError, ValueError):
    """A setting has a value the bundle cannot use, e.g. ``--max_epochs 0`` or ``--cache dsk``.

    Args:
        setting: the config key as given on the command line (without ``--``).
        value: the value it has.
        problem: what is wrong and what to do, e.g. ``"must be one of disk, memory, none"``.
    """

    def __init__(self, setting: str, value, problem: str):
        self.setting, self.value, self.problem = setting, value, problem
        super().__init__(f"--{setting} {value}: {problem}")

    def __reduce__(self):
        return self.__class__, (self.setting, self.value, self.problem)


class AllCasesFailedError(UserError, RuntimeError):
    """Every case of a run (or of a training epoch) failed to load, so the run has no result.

    Args:
        n_failed: how many cases failed; report: the CSV listing them; first: the first failure record
            (``{"image": ..., "error": ...}``); what: what the cases are ("images", "training images", ...).
    """

    def __init__(self, n_failed: int, report: str | os.PathLike, first: dict | None = None, what: str = "images"):
        self.n_failed, self.report, self.first, self.what = n_failed, os.fspath(report), first or {}, what
        example = ""
        if self.first:
            error = str(self.first.get("error", ""))
            image = str(self.first.get("image", ""))
            example = f"; the first: {error if error.startswith(image) else f'{image}: {error}'}"
        counted = f"all {n_failed} {what}" if n_failed != 1 else f"the only {what[:-1] if what.endswith('s') else what}"
        super().__init__(
            f"{counted} failed, none was processed (listed in {self.report}){example}; fix or replace "
            "the files, or check --dataset_dir / --datalist"
        )

    def __reduce__(self):
        return self.__class__, (self.n_failed, self.report, self.first, self.what)


def one_line(text: str) -> str:
    """``text`` with its line breaks and runs of blanks as single spaces."""
    return re.sub(r"\s+", " ", str(text)).strip()


def debug_enabled() -> bool:
    """True when ``GLAM_DEBUG`` asks for full tracebacks."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from, outermost first, as Python prints them (``__cause__``, else an
    unsuppressed ``__context__``), without cycles."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        yield current
        seen.add(id(current))
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)


def is_user_error(exc: BaseException) -> bool:
    """True for the bundle's user-error types (:class:`UserError` and the named ones)."""
    if isinstance(exc, UserError):
        return True
    return any(f"{cls.__module__}.{cls.__qualname__}" in _NAMED_USER_ERRORS for cls in type(exc).__mro__)


_DISK_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def is_disk_full(exc: BaseException) -> bool:
    """True for "no space left on device" (or a disk quota exceeded), also when torch's writer reports it as a
    RuntimeError ("file write failed")."""
    if isinstance(exc, OSError) and exc.errno in _DISK_FULL_ERRNOS:
        return True
    text = str(exc)
    return isinstance(exc, (OSError, RuntimeError)) and (
        "No space left on device" in text or "Disk quota exceeded" in text or "file write failed" in text
    )


def _disk_full_message(exc: BaseException) -> str:
    where = getattr(exc, "filename", None)
    where = f"writing {where}" if where else one_line(str(exc))[:200]
    return f"disk full ({where}); free some space (e.g. delete the bundle's cache/ folder), or {CACHE_HINT}"


def _max_epochs_message(match: re.Match) -> str:
    if match.groupdict().get("value") is None:
        return "--max_epochs: must be a positive number of epochs (got 0 or less); give e.g. --max_epochs 10"
    return (f"--max_epochs {match.group('value')}: below epoch {match.group('start')}, where the resumed run "
            "already is; give a larger --max_epochs, or --resume false to train this stage again from the start")


def _state_dict_message(match: re.Match) -> str:
    text = match.string
    parts = []
    for label, pattern in (("missing", r"Missing key\(s\) in state_dict: (.*?)\.\s*(?:\n|$)"),
                           ("unexpected", r"Unexpected key\(s\) in state_dict: (.*?)\.\s*(?:\n|$)")):
        found = re.search(pattern, text)
        if found:
            keys = re.findall(r'"([^"]+)"', found.group(1))
            parts.append(f"{len(keys)} {label} keys (e.g. {keys[0]})" if keys else f"{label} keys")
    shapes = re.findall(r"size mismatch for ([^:]+):", text)
    if shapes:
        parts.append(f"{len(shapes)} of another shape (e.g. {shapes[0]})")
    found = ", ".join(parts) or f"see {DEBUG_ENV}=1"
    return (f"--ckpt_path: the checkpoint does not fit the {match.group('network')} network ({found}); give the "
            "checkpoint of this network (models/model.pt of the final stage), or run with the settings it was "
            "trained with (image_size, crop_size, network_def#..., the same preset)")


def _undefined_reference_message(match: re.Match) -> str:
    key, sub = match.group("key"), match.group("sub")
    hint = ""
    if key == "max_epochs":
        hint = (" (configs/train.json takes one number per stage: --max_epochs \"{'global': 10, 'local': 5, "
                "'joint': 2}\")")
    return (f"--{key}: the config reads {key}#{sub}, which is not defined (did a command-line value replace a "
            f"group of settings?); give a value of the config's own form{hint}")


def _out_of_memory_message(match: re.Match) -> str:
    size = match.groupdict().get("bytes")
    if size:
        detail = f"an allocation of {int(size) / 1e9:.1f} GB failed"
    else:
        detail = one_line(match.string)[:160] or "an allocation failed"
    return (f"out of memory ({detail}); lower what the run holds at once: --batch_size (training; inference takes one "
            "image at a time), --num_workers, or the frame with --image_size and --crop_size (e.g. the 368x240 of "
            "configs/presets/demo.json), or run on a machine with more memory")


def _refused_checkpoint_message(match: re.Match) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", match.string)  # torch bolds part of its advice
    named = re.search(r"GLOBAL\s+([\w.]+)", text)
    if named:
        what = f"its pickle asks for {named.group(1)}, which could run code"
    else:
        detail = re.search(r"WeightsUnpickler error:\s*(.*?)\s*(?:Please use|Check the documentation|$)", text, re.S)
        reason = one_line(detail.group(1)).rstrip(".") if detail and detail.group(1).strip() else "no reason given"
        what = (f"torch's weights-only unpickler rejects it ({reason[:120]}): a corrupt file, or a pickle that asks "
                "for more than tensors")
    return (f"--ckpt_path: refused to load the checkpoint: {what}; only plain tensors are loaded (weights_only). "
            "Use a checkpoint from a source you trust (the bundle's own models/*.pt, or the authors' weights "
            "converted with scripts/import_original_checkpoint.py)")


def _corrupt_checkpoint_message(match: re.Match) -> str:
    return (f"--ckpt_path: the checkpoint is truncated or corrupt ({one_line(match.string)[:160]}); give a complete "
            "file (copy or download it again, or the models/*.pt of a finished training stage)")


# Third-party errors whose cause is a setting: (exception type, pattern of its message, one-line message).
KNOWN_ERRORS: tuple[tuple[type[BaseException], re.Pattern, Callable[[re.Match], str]], ...] = (
    (ValueError, re.compile(r"Argument max_epochs is invalid"), _max_epochs_message),
    (ValueError, re.compile(r"Argument max_epochs should be greater than or equal to the start epoch defined in "
                            r"the state: (?P<value>\d+) vs (?P<start>\d+)"), _max_epochs_message),
    (ValueError, re.compile(r"the referring item `@(?P<key>[\w.]+)::(?P<sub>[\w:.]+)` is not defined in the config"),
     _undefined_reference_message),
    (RuntimeError, re.compile(r"Error\(s\) in loading state_dict for (?P<network>\w+)"), _state_dict_message),
    # PyTorch's CPU allocator ("DefaultCPUAllocator: not enough memory: you tried to allocate N bytes", "can't
    # allocate memory"), CUDA ("CUDA out of memory. Tried to allocate ..."; torch.OutOfMemoryError is a
    # RuntimeError) and Python's / numpy's MemoryError ("Unable to allocate 5.4 GiB for an array ...").
    (RuntimeError, re.compile(r"DefaultCPUAllocator: (?:not enough memory|can't allocate memory)"
                              r"(?:: you tried to allocate (?P<bytes>\d+) bytes)?|out of memory"), _out_of_memory_message),
    (MemoryError, re.compile(r".*", re.S), _out_of_memory_message),
    # torch.load(weights_only=True) refusing a pickle (MONAI's CheckpointLoader: inference and evaluation's
    # --ckpt_path), and reading a truncated or corrupt checkpoint file.
    (pickle.UnpicklingError, re.compile(r"^Weights only load failed"), _refused_checkpoint_message),
    (RuntimeError, re.compile(r"PytorchStreamReader failed|failed finding central directory"),
     _corrupt_checkpoint_message),
    (EOFError, re.compile(r"^(?:Ran out of input)?$"), lambda match: (
        "--ckpt_path: the checkpoint (or another file the run reads with pickle) is empty or truncated (EOFError); "
        "give a complete file")),
)


def _known_error_message(exc: BaseException) -> str | None:
    for kind, pattern, message in KNOWN_ERRORS:
        if isinstance(exc, kind):
            match = pattern.search(str(exc))
            if match:
                return message(match)
    return None


def user_error_message(exc: BaseException) -> str | None:
    """The one line to show for ``exc`` (searched along its chain), or None when it is not a user's mistake."""
    for error in exception_chain(exc):
        if is_user_error(error):
            return one_line(str(error))
        if is_disk_full(error):
            return _disk_full_message(error)
        known = _known_error_message(error)
        if known:
            return known
    return None


def _exit_with(line: str, code: int) -> None:
    """From inside ``sys.excepthook`` (where ``sys.exit`` cannot change the status Python sets, 1): run the
    ``atexit`` functions (logging, TensorBoard writers, the cache report) first, so that ``line`` is the last thing
    the run prints, write it to stderr, then ``os._exit(code)``."""
    try:
        sys.stdout.flush()
        atexit._run_exitfuncs()
    except Exception:  # an exit function failing must not hide the error
        pass
    finally:
        try:
            sys.stdout.flush()
        except Exception:  # a closed stream
            pass
        try:
            sys.stderr.flush()
        except Exception:
            pass
        try:
            # one write(2) call: a background thread still printing (TensorBoard's writer on a full disk) cannot
            # interleave with or swallow the line, as it could with sys.stderr's buffered writes
            os.write(2, (line + "\n").encode("utf-8", "replace"))
        except OSError:
            pass
        finally:
            os._exit(code)


_previous_hook: Callable | None = None
_previous_thread_hook: Callable | None = None
_previous_factory: Callable | None = None


def _shortened_message(exc: BaseException) -> str | None:
    """The one line that replaces ``exc``'s traceback, or None (not a user's error, or ``GLAM_DEBUG`` set)."""
    return None if debug_enabled() or not isinstance(exc, Exception) else user_error_message(exc)


def _excepthook(exc_type, exc, tb) -> None:
    message = _shortened_message(exc)
    if message is None:
        (_previous_hook or sys.__excepthook__)(exc_type, exc, tb)
        return
    _exit_with(f"error: {message} {DEBUG_HINT}", EXIT_USER_ERROR)


def _thread_excepthook(args) -> None:
    """A background thread (TensorBoard's event writer, the inference writer) stopped by a user's error, e.g. a full
    disk: one line, written at once (a traceback printed piece by piece can break the run's own last line)."""
    message = _shortened_message(args.exc_value)
    if message is None:
        (_previous_thread_hook or threading.__excepthook__)(args)
        return
    name = getattr(args.thread, "name", None) or "a background thread"
    try:
        os.write(2, f"warning: {name} stopped: {message}\n".encode("utf-8", "replace"))
    except OSError:
        pass


def _record_factory(*args, **kwargs) -> logging.LogRecord:
    record = _previous_factory(*args, **kwargs)
    exc_info = record.exc_info
    if exc_info and isinstance(exc_info, tuple) and _shortened_message(exc_info[1]) is not None:
        record.exc_info, record.exc_text = None, None
    return record


def install() -> None:
    """Install the error hook (``sys.excepthook``) and the log-record filter; idempotent. See the module docs."""
    global _previous_hook, _previous_thread_hook, _previous_factory
    if sys.excepthook is not _excepthook:
        _previous_hook = sys.excepthook
        sys.excepthook = _excepthook
    if threading.excepthook is not _thread_excepthook:
        _previous_thread_hook = threading.excepthook
        threading.excepthook = _thread_excepthook
    factory = logging.getLogRecordFactory()
    if factory is not _record_factory:
        _previous_factory = factory
        logging.setLogRecordFactory(_record_factory)
