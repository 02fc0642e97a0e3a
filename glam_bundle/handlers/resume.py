"""Resume a training stage after a kill: :class:`ResumeCheckpoint`.

One file (``save_dir/filename``, default ``last.pt``) holds everything the next epoch starts from: the objects of
``save_dict`` (model, optimizer, LR scheduler, ...), the trainer's ignite state (epoch, iteration), the AMP grad
scaler when the trainer has one, and the random number generators' states. It is rewritten atomically at the end
of every ``save_interval_epochs``-th epoch, after every other end-of-epoch handler (LR scheduler step, validation),
and marked complete when the run completes.

Running the same command again:

- no file (or ``resume=False``): the stage trains from scratch (and overwrites the file);
- a file of an unfinished run: everything is restored and training goes on with the next epoch ("resuming from
  <file> at epoch N");
- a file of a completed run: the objects are restored and the run returns at once ("stage already complete"),
  unless ``max_epochs`` is now larger than the completed run's (the stage then trains on to the new
  ``max_epochs``). To train a stage again from scratch, delete the file or pass ``resume=False``
  (``--resume false`` with the bundle's configs).

Exactness: with ``glam_bundle.engines.GLAMTrainer(epoch_seed=...)`` (every epoch's random draws are a function of
``(seed, epoch)``) and ``glam_bundle.data.samplers.ClassBalancedSampler`` (its subset is a function of
``(seed, epoch)``: it needs no state here), a resumed run ends with the same weights as an uninterrupted run, bit
for bit, on the CPU with the same number of data loader workers and threads. On a GPU cuDNN/cuBLAS and atomic-add
kernels are not deterministic unless ``torch.use_deterministic_algorithms(True)`` (with
``CUBLAS_WORKSPACE_CONFIG=:4096:8``) is set, so the runs agree only up to that nondeterminism, which an
uninterrupted run has too. Without ``epoch_seed`` the RNG states saved here are restored, which repeats the global
RNG streams but not the random transforms' own states: a resumed run then differs from an uninterrupted one
(statistically equivalent, not identical).
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint

from glam_bundle.atomic_io import atomic_output, remove_stale_temporaries

__all__ = ["ResumeCheckpoint", "ResumeError"]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
ENGINE_KEY = "trainer"
SCALER_KEY = "scaler"
_RESERVED_KEYS = (ENGINE_KEY, SCALER_KEY)


class ResumeError(RuntimeError):
    """A resume file that cannot be used; the message names the file and what to do."""


def _plain(obj: Any) -> Any:
    """``obj`` with numpy scalars/arrays as Python numbers/tensors, so that ``torch.load(weights_only=True)``
    reads it back."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, Mapping):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    return obj


class _KeyMetricSaverState:
    """State of a MONAI ``CheckpointSaver``'s best-metric tracking (which files hold which scores), so that after a
    resume a worse validation does not replace the best model saved before the kill."""

    def __init__(self, saver: Any) -> None:
        if getattr(saver, "_key_metric_checkpoint", None) is None:
            raise TypeError("ResumeCheckpoint: a CheckpointSaver in save_dict must have save_key_metric=True")
        self.saver = saver

    def state_dict(self) -> dict:
        return _plain(dict(self.saver._key_metric_checkpoint.state_dict()))

    def load_state_dict(self, state: Mapping) -> None:
        self.saver._key_metric_checkpoint.load_state_dict(state)


class _EvaluatorBestMetric:
    """An evaluator's best key metric so far and its epoch (what MONAI's workflows compare new metrics with)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def state_dict(self) -> dict:
        state = self.engine.state
        best = getattr(state, "best_metric", -1)
        if isinstance(best, torch.Tensor):
            best = best.detach().cpu()
        return _plain({"best_metric": best, "best_metric_epoch": getattr(state, "best_metric_epoch", -1)})

    def load_state_dict(self, state: Mapping) -> None:
        self.engine.state.best_metric = state["best_metric"]
        self.engine.state.best_metric_epoch = state["best_metric_epoch"]


def _stateful(name: str, obj: Any) -> Any:
    """An object with ``state_dict``/``load_state_dict`` for ``save_dict[name]``."""
    from monai.handlers import CheckpointSaver  # MONAI's handlers package is slow to import

    if isinstance(obj, CheckpointSaver):
        return _KeyMetricSaverState(obj)
    if isinstance(obj, Engine):
        return _EvaluatorBestMetric(obj)
    if not (callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None))):
        raise TypeError(
            f"ResumeCheckpoint: save_dict[{name!r}] ({type(obj).__name__}) has no state_dict/load_state_dict"
        )
    return obj


def _rng_states() -> dict:
    """The states of torch (CPU, CUDA), numpy's and Python's global generators, as tensors and lists."""
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    states = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: Mapping) -> None:
    torch.set_rng_state(states["torch"])
    numpy_state = states["numpy"]
    np.random.set_state((
        numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
        numpy_state["has_gauss"], numpy_state["cached_gaussian"],
    ))
    python_state = states["python"]
    random.setstate((python_state["version"], tuple(python_state["internal"]), python_state["gauss_next"]))
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


def _summary(exc: BaseException, max_lines: int = 4, max_chars: int = 600) -> str:
    """``"<type>: <first lines of the message>"``, short enough for an error message."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = "; ".join(lines[:max_lines]) + ("; ..." if len(lines) > max_lines else "")
    if len(text) > max_chars:
        text = text[: max_chars - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _is_main_process() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


class ResumeCheckpoint:
    """Save the training state at epoch ends and resume from it when the same stage runs again.

    Attach it to the trainer (e.g. in a config's ``train#handlers``); it adds the trainer itself (its ignite state:
    epoch, iteration), so ``save_dict`` must not name it (a config cannot reference the trainer from its own
    handlers).

    - ``Events.STARTED``: when ``save_dir/filename`` exists (and ``resume``), load it (``torch.load`` with
      ``weights_only=True``) and restore every object with ignite's ``Checkpoint.load_objects``, the trainer's
      epoch and iteration and the RNG states; log "resuming from <file> at epoch N". ``max_epochs`` stays the one
      the trainer was built with. A file that cannot be read or does not fit the objects raises
      :class:`ResumeError` naming the file and what to do. A completed run's file restores the objects and
      returns at once ("stage already complete") unless ``max_epochs`` grew.
    - ``Events.EPOCH_COMPLETED`` (every ``save_interval_epochs`` epochs), after the other end-of-epoch handlers:
      write everything atomically (a temporary file in ``save_dir``, flushed to disk, then ``os.replace``), so a
      kill during the write leaves the previous complete file.
    - ``Events.COMPLETED``: write the final state marked ``"completed": True``.

    Only rank 0 writes under ``torch.distributed``. The sampler has no state to save when it is a function of
    ``(seed, epoch)`` (``ClassBalancedSampler``); see the module docstring for what is exact.

    Args:
        save_dir: folder of the file (created when missing).
        save_dict: ``{"model": ..., "optimizer": ..., "lr_scheduler": ...}``: objects with ``state_dict`` and
            ``load_state_dict``; ``None`` values are skipped. Also accepted: a MONAI ``CheckpointSaver`` with
            ``save_key_metric=True`` (its best-model tracking, so a resumed run does not replace the best model
            with a worse one) and an evaluator engine (its ``best_metric`` and ``best_metric_epoch``). The keys
            "trainer" and "scaler" are reserved.
        filename: the file name in ``save_dir``.
        save_interval_epochs: save every this many epochs (the final state is always saved).
        resume: load an existing file; False trains from scratch and overwrites it.
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        save_dict: Mapping[str, Any],
        filename: str = "last.pt",
        save_interval_epochs: int = 1,
        resume: bool = True,
    ) -> None:
        if int(save_interval_epochs) < 1:
            raise ValueError(f"save_interval_epochs must be >= 1, got {save_interval_epochs}")
        reserved = [key for key in save_dict if key in _RESERVED_KEYS]
        if reserved:
            raise ValueError(
                f"ResumeCheckpoint: save_dict keys {reserved} are reserved (the handler adds the trainer's state and "
                "its grad scaler itself)"
            )
        self.save_dir = Path(save_dir)
        self.filename = filename
        self.save_interval_epochs = int(save_interval_epochs)
        self.resume = bool(resume)
        self.objects = {name: _stateful(name, obj) for name, obj in save_dict.items() if obj is not None}
        self.engine: Engine | None = None

    @property
    def path(self) -> Path:
        return self.save_dir / self.filename

    def attach(self, engine: Engine) -> None:
        self.engine = engine
        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def _to_save(self, engine: Engine) -> dict[str, Any]:
        objects = dict(self.objects)
        objects[ENGINE_KEY] = engine
        scaler = getattr(engine, "scaler", None)
        if scaler is not None:
            objects[SCALER_KEY] = scaler
        return objects

    # ---------------------------------------------------------------------------------------------------- saving

    def save(self, engine: Engine, completed: bool = False) -> Path | None:
        """Write the state atomically (rank 0 only); returns the path written, None on other ranks."""
        if not _is_main_process():
            return None
        payload = {
            "format_version": FORMAT_VERSION,
            "completed": bool(completed),
            "epoch": int(engine.state.epoch),
            "objects": {name: obj.state_dict() for name, obj in self._to_save(engine).items()},
            "rng": _rng_states(),
        }
        with atomic_output(self.path) as tmp:
            with open(tmp, "wb") as handle:
                torch.save(payload, handle)
                handle.flush()
                os.fsync(handle.fileno())
        return self.path

    def epoch_completed(self, engine: Engine) -> None:
        if engine.state.epoch % self.save_interval_epochs == 0:
            self.save(engine)

    def completed(self, engine: Engine) -> None:
        self.save(engine, completed=True)

    # --------------------------------------------------------------------------------------------------- loading

    def _error(self, problem: str) -> ResumeError:
        return ResumeError(
            f"cannot resume from {self.path}: {problem}. Delete this file to train the stage from scratch "
            "(or run with resume=False, e.g. --resume false), or point the run at the configuration that wrote it."
        )

    def _read(self) -> dict:
        try:
            checkpoint = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # corrupt, truncated, not a torch file, or holding non-allowed types
            raise self._error(f"the file is not a readable resume checkpoint ({_summary(exc)})") from exc
        if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get("objects"), Mapping):
            raise self._error("the file is not a resume checkpoint written by ResumeCheckpoint")
        if checkpoint.get("format_version") != FORMAT_VERSION:
            raise self._error(f"unknown format_version {checkpoint.get('format_version')!r}")
        return dict(checkpoint)

    def _move_savers_last(self, engine: Engine) -> None:
        """Save after every other EPOCH_COMPLETED/COMPLETED handler attached so far (the LR scheduler's step, the
        validation and its best-model saver), so the file holds the state the next epoch starts from."""
        for event, handler in ((Events.EPOCH_COMPLETED, self.epoch_completed), (Events.COMPLETED, self.completed)):
            if engine.has_event_handler(handler, event):
                engine.remove_event_handler(handler, event)
            engine.add_event_handler(event, handler)

    def started(self, engine: Engine) -> None:
        self._move_savers_last(engine)
        if _is_main_process():
            remove_stale_temporaries(self.path)  # of a write that a kill interrupted
        if not self.path.exists():
            return
        if not self.resume:
            logger.info("resume=False: ignoring %s, training from scratch (the file will be overwritten)", self.path)
            return
        checkpoint = self._read()
        saved = checkpoint["objects"]
        objects = self._to_save(engine)
        if SCALER_KEY in objects and SCALER_KEY not in saved:
            logger.warning("%s has no grad scaler state (saved without AMP): the scaler starts afresh", self.path)
            objects.pop(SCALER_KEY)
        missing = sorted(name for name in objects if name not in saved)
        if missing:
            raise self._error(
                f"it has no state for {missing} (it holds {sorted(saved)}): it was written with another save_dict"
            )
        ignored = sorted(name for name in saved if name not in objects)
        if ignored:
            logger.warning("%s: ignoring the saved state of %s (not in save_dict)", self.path, ignored)

        max_epochs, epoch_length = engine.state.max_epochs, engine.state.epoch_length
        try:
            Checkpoint.load_objects(to_load=objects, checkpoint={name: saved[name] for name in objects})
        except Exception as exc:
            raise self._error(f"its state does not fit this run's objects ({_summary(exc)})") from exc
        saved_max_epochs = engine.state.max_epochs
        if epoch_length is not None and engine.state.epoch_length != epoch_length:
            logger.warning(
                "%s was written with %s iterations per epoch, this run has %s (the training set changed?): "
                "going on from epoch %d", self.path, engine.state.epoch_length, epoch_length, engine.state.epoch,
            )
            engine.state.epoch_length = epoch_length
            engine.state.iteration = engine.state.epoch * epoch_length
        engine.state.max_epochs = max_epochs  # the run's own max_epochs, not the file's
        if "rng" in checkpoint:
            _set_rng_states(checkpoint["rng"])

        epoch = engine.state.epoch
        if checkpoint.get("completed") and (saved_max_epochs is None or max_epochs <= saved_max_epochs):
            logger.info(
                "stage already complete: %s holds the completed run (epoch %d); nothing to train. Delete it or run "
                "with resume=False to train again.", self.path, epoch,
            )
            engine.terminate(skip_completed=True)
            return
        logger.info("resuming from %s at epoch %d (of %s)", self.path, epoch, max_epochs)
        if getattr(engine, "epoch_seed", None) is None:
            logger.warning(
                "the trainer has no epoch_seed: the resumed run will not repeat the random draws of an "
                "uninterrupted run exactly (set GLAMTrainer(epoch_seed=...))"
            )
