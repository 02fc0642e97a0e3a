"""``python -m tests.reliability.bundle_driver <monai.bundle arguments>``: ``python -m monai.bundle`` with faults.

The fault suite and the reliability tests run the bundle's real configs through MONAI's own entry point; this
driver only installs the faults that environment variables ask for, then runs ``monai.bundle`` as ``-m`` would:

- ``GLAM_FAULT_DENY_READ=<text>``: opening for reading a file whose path contains ``<text>`` raises
  ``PermissionError`` (EACCES). The tests run as root, for whom ``chmod 000`` does not stop reads, so an
  unreadable file is simulated here.
- ``GLAM_FAULT_ENOSPC_AFTER=<n>``: after ``n`` files opened for writing, every further file opened for writing
  (``open``/``io.open``, which nibabel, Pillow, csv, ``atomic_output`` and torch's file handles use) raises
  ``OSError(ENOSPC)``: the disk is full (counting only files whose name contains ``GLAM_FAULT_ENOSPC_MATCH``,
  when set).
- ``GLAM_FAULT_SLOW_SAVE=<seconds>``: ``torch.save`` writes the first half of a checkpoint, flushes it, sleeps,
  then writes the rest, so that a kill lands while a checkpoint is being written (only files whose name contains
  ``GLAM_FAULT_SLOW_SAVE_MATCH``, when set: ``.last.`` is the temporary file of the resume checkpoint ``last.pt``).
- ``GLAM_FAULT_OOM=1``: the network's forward pass raises the error PyTorch's CPU allocator raises when memory
  runs out (``DefaultCPUAllocator: not enough memory``).
- ``GLAM_FAULT_HANG_AFTER=<n>``: the inference writer hangs (sleeps) after writing its ``n``-th image, so that a
  test can kill the run at a known point.
"""

from __future__ import annotations

import builtins
import errno
import io
import os
import runpy
import sys
import time


def _is_write(mode: str) -> bool:
    return any(flag in mode for flag in "wax+")


def _path_of(file) -> str:
    return os.fsdecode(file) if isinstance(file, (str, bytes, os.PathLike)) else ""


def install_open_faults() -> None:
    deny = os.environ.get("GLAM_FAULT_DENY_READ")
    enospc_after = os.environ.get("GLAM_FAULT_ENOSPC_AFTER")
    if not deny and enospc_after is None:
        return
    enospc_match = os.environ.get("GLAM_FAULT_ENOSPC_MATCH", "")
    original = builtins.open
    writes = [0]

    def faulty_open(file, mode="r", *args, **kwargs):
        path = _path_of(file)
        if path:
            if deny and deny in path and not _is_write(mode):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
            if (enospc_after is not None and _is_write(mode) and not path.startswith("/dev/")
                    and enospc_match in os.path.basename(path)):
                writes[0] += 1
                if writes[0] > int(enospc_after):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        return original(file, mode, *args, **kwargs)

    builtins.open = faulty_open
    io.open = faulty_open


def install_slow_save() -> None:
    delay = os.environ.get("GLAM_FAULT_SLOW_SAVE")
    if not delay:
        return
    import torch

    original = torch.save

    match = os.environ.get("GLAM_FAULT_SLOW_SAVE_MATCH", "")

    def slow_save(obj, f, *args, **kwargs):
        name = _path_of(f) or getattr(f, "name", "")
        if isinstance(name, int):  # a file object opened from a descriptor (tempfile): its path
            try:
                name = os.readlink(f"/proc/self/fd/{name}")
            except OSError:
                name = ""
        if match and match not in os.path.basename(name):
            return original(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        original(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        handle = builtins.open(f, "wb") if isinstance(f, (str, bytes, os.PathLike)) else f
        try:
            handle.write(data[: len(data) // 2])
            handle.flush()
            print(f"fault: slow save half-written ({len(data)} bytes)", file=sys.stderr, flush=True)
            time.sleep(float(delay))
            handle.write(data[len(data) // 2:])
        finally:
            if handle is not f:
                handle.close()

    torch.save = slow_save


def install_oom() -> None:
    if not os.environ.get("GLAM_FAULT_OOM"):
        return
    from glam_bundle.networks import GLAM

    def out_of_memory(self, *args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: you "
                           "tried to allocate 5787025408 bytes.")

    GLAM.forward = out_of_memory


def install_hang() -> None:
    after = os.environ.get("GLAM_FAULT_HANG_AFTER")
    if after is None:
        return
    from glam_bundle.handlers import inference_writer

    original = inference_writer.GLAMInferenceWriter.write_iteration
    count = [0]

    def write_then_hang(self, engine):
        original(self, engine)
        self.wait()  # "after image N": its files and row are written (also by the background writer thread)
        if engine.state.output:
            count[0] += 1
        if count[0] >= int(after):
            print("fault: hanging after image", count[0], file=sys.stderr, flush=True)
            time.sleep(3600)

    inference_writer.GLAMInferenceWriter.write_iteration = write_then_hang


def main() -> None:
    install_open_faults()
    install_slow_save()
    install_oom()
    install_hang()
    sys.argv = ["monai.bundle", *sys.argv[1:]]
    runpy.run_module("monai.bundle", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
