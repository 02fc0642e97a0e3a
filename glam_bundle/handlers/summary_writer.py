"""The TensorBoard writer shared by the bundle's TensorBoard handlers: made on first use, so a handler that is
built but never writes (e.g. on a rank > 0 of a DDP run) leaves no event file."""

from __future__ import annotations

from typing import Any

__all__ = ["LazySummaryWriter"]


class LazySummaryWriter:
    """Mixin: ``self.writer`` is the given ``SummaryWriter`` or one made on ``self.log_dir`` at first use."""

    log_dir: str

    def _init_writer(self, summary_writer: Any = None) -> None:
        self._writer = summary_writer
        self._own_writer = summary_writer is None

    @property
    def writer(self) -> Any:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=self.log_dir)
        return self._writer

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Close the writer this handler made (not a shared one)."""
        if self._own_writer and self._writer is not None:
            self._writer.close()
            self._writer = None
