"""ResumeCheckpoint + GLAMTrainer(epoch_seed) + ClassBalancedSampler: a stage killed mid-epoch and run again ends
with the same weights, bit for bit, as an uninterrupted run (CPU, one thread).

The training set is a few random 256x128 images with labels through a random transform (RandGaussianNoised), the
network a tiny GLAM trained global-only with GlobalModuleLoss, Adam and a StepLR scheduler stepped at epoch ends.
Run as a script (``python -m tests.test_resume SAVE_DIR [--hang]``) it trains that stage once: the subprocess
test kills it with SIGKILL.
"""

import logging
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from ignite.engine import Events
from monai.data import DataLoader
from monai.handlers import LrScheduleHandler
from monai.transforms import Compose, RandGaussianNoised

from glam_bundle.constants import TINY_NETWORK
from glam_bundle.data.cache import make_cached_dataset
from glam_bundle.data.failures import SkipBadCases, collate_skip_failures
from glam_bundle.data.samplers import ClassBalancedSampler
from glam_bundle.engines import GLAMTrainer
from glam_bundle.handlers import ResumeCheckpoint, ResumeError
from glam_bundle.inferers import GLAMInferer
from glam_bundle.losses import GlobalModuleLoss
from glam_bundle.networks import GLAM
from glam_bundle.transforms import MakeLabeld
from tests.conftest import REPO_ROOT

torch.set_num_threads(1)

SEED = 7
MAX_EPOCHS = 3
ITERATIONS_PER_EPOCH = 3  # 3 positives + 3 of 5 negatives, batch 2
TINY_GLAM = dict(TINY_NETWORK, crop_size=(64, 64))


class Killed(Exception):
    """The simulated kill."""


def make_items():
    generator = torch.Generator().manual_seed(0)
    labels = [(1, 0), (0, 1), (1, 1), (0, 0), (0, 0), (0, 0), (0, 0), (0, 0)]
    return [{"image": torch.rand(1, 256, 128, generator=generator), "benign": b, "malignant": m} for b, m in labels]


def build(save_dir, max_epochs=MAX_EPOCHS, num_workers=0, extra_handlers=(), resume=True, network_kwargs=None):
    """Everything a training stage builds, from scratch (as a new process would)."""
    dataset = SkipBadCases(make_cached_dataset(
        data=make_items(), transform=Compose([MakeLabeld(), RandGaussianNoised(keys="image", prob=1.0, std=0.1)]),
        cache="none",
    ))
    loader = DataLoader(dataset, batch_size=2, sampler=ClassBalancedSampler(dataset, seed=SEED),
                        num_workers=num_workers, collate_fn=collate_skip_failures)
    torch.manual_seed(123)  # the initial weights
    network = GLAM(**{**TINY_GLAM, **(network_kwargs or {})})
    optimizer = torch.optim.Adam(network.global_module.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    handlers = [
        ResumeCheckpoint(save_dir, {"model": network, "optimizer": optimizer, "lr_scheduler": scheduler},
                         resume=resume),
        # attached after ResumeCheckpoint on purpose: the file must hold the state after the scheduler's step
        LrScheduleHandler(scheduler, print_lr=False),
        *extra_handlers,
    ]
    trainer = GLAMTrainer(
        device=torch.device("cpu"), max_epochs=max_epochs, train_data_loader=loader, network=network,
        optimizer=optimizer, loss_function=GlobalModuleLoss(), inferer=GLAMInferer(global_only=True),
        train_handlers=handlers, decollate=False, amp=False, epoch_seed=SEED,
    )
    return trainer, network, optimizer, scheduler


class KillAt:
    """Raise (a simulated kill) or hang (to be SIGKILLed) after iteration ``iteration`` of epoch ``epoch``."""

    def __init__(self, epoch, iteration, hang=False):
        self.epoch, self.iteration, self.hang = epoch, iteration, hang

    def attach(self, engine):
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine):
        in_epoch = engine.state.iteration - (engine.state.epoch - 1) * engine.state.epoch_length
        if engine.state.epoch == self.epoch and in_epoch == self.iteration:
            if self.hang:
                time.sleep(600)
            raise Killed()


class CountIterations:
    def __init__(self):
        self.count = 0

    def attach(self, engine):
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine):
        self.count += 1


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            assert_same_state(a[key], b[key])
        elif isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


def run_uninterrupted(save_dir, num_workers=0):
    trainer, network, optimizer, scheduler = build(save_dir, num_workers=num_workers)
    trainer.run()
    assert trainer.state.epoch == MAX_EPOCHS and trainer.state.epoch_length == ITERATIONS_PER_EPOCH
    return save_dir, network.state_dict(), optimizer.state_dict(), scheduler.state_dict()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return run_uninterrupted(tmp_path_factory.mktemp("uninterrupted"))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_after_a_failure_mid_epoch_is_exact(uninterrupted, tmp_path, caplog, num_workers):
    if num_workers:  # worker processes: their transforms are seeded from the epoch's torch seed
        uninterrupted = run_uninterrupted(tmp_path / "uninterrupted", num_workers)
        assert not torch.equal(uninterrupted[1]["global_module.heads.conv0.weight"],
                               run_uninterrupted(tmp_path / "other", 0)[1]["global_module.heads.conv0.weight"])
    _, weights, optimizer_state, scheduler_state = uninterrupted
    tmp_path = tmp_path / "killed"
    trainer, network, _, _ = build(tmp_path, num_workers=num_workers, extra_handlers=[KillAt(epoch=2, iteration=2)])
    initial = {k: v.clone() for k, v in network.state_dict().items()}
    with pytest.raises(Killed):
        trainer.run()
    saved = torch.load(tmp_path / "last.pt", weights_only=True)
    assert saved["epoch"] == 1 and not saved["completed"]
    assert saved["objects"]["lr_scheduler"]["last_epoch"] == 1  # saved after the scheduler's end-of-epoch step

    # a new process: everything rebuilt from scratch
    counter = CountIterations()
    trainer, network, optimizer, scheduler = build(tmp_path, num_workers=num_workers, extra_handlers=[counter])
    key = "global_module.heads.conv0.weight"
    assert not torch.equal(network.state_dict()[key], weights[key])
    assert_same_state(network.state_dict(), initial)
    with caplog.at_level(logging.INFO, logger="glam_bundle.handlers.resume"):
        trainer.run()
    assert f"resuming from {tmp_path / 'last.pt'} at epoch 1" in caplog.text
    assert counter.count == (MAX_EPOCHS - 1) * ITERATIONS_PER_EPOCH  # epochs 2 and 3 only
    assert trainer.state.epoch == MAX_EPOCHS
    assert_same_state(network.state_dict(), weights)
    assert_same_state(optimizer.state_dict(), optimizer_state)
    assert_same_state(scheduler.state_dict(), scheduler_state)


def test_a_completed_stage_returns_at_once(uninterrupted, caplog):
    save_dir, weights, optimizer_state, _ = uninterrupted
    counter = CountIterations()
    trainer, network, optimizer, _ = build(save_dir, extra_handlers=[counter])
    with caplog.at_level(logging.INFO, logger="glam_bundle.handlers.resume"):
        trainer.run()
    assert "stage already complete" in caplog.text and counter.count == 0
    assert_same_state(network.state_dict(), weights)  # the trained objects are restored
    assert_same_state(optimizer.state_dict(), optimizer_state)
    # more epochs than the completed run: training goes on from its end
    counter = CountIterations()
    trainer, _, _, scheduler = build(save_dir, max_epochs=MAX_EPOCHS + 1, extra_handlers=[counter])
    trainer.run()
    assert counter.count == ITERATIONS_PER_EPOCH and scheduler.last_epoch == MAX_EPOCHS + 1
    # resume=False trains from scratch
    counter = CountIterations()
    trainer, _, _, _ = build(save_dir, max_epochs=1, resume=False, extra_handlers=[counter])
    trainer.run()
    assert counter.count == ITERATIONS_PER_EPOCH
    assert torch.load(save_dir / "last.pt", weights_only=True)["epoch"] == 1


def test_corrupt_or_incompatible_file_is_a_clear_error(tmp_path):
    path = tmp_path / "last.pt"
    path.write_bytes(b"PK\x03\x04 truncated")
    trainer, *_ = build(tmp_path)
    with pytest.raises(ResumeError, match=rf"cannot resume from {path}: the file is not a readable .*Delete this file"):
        trainer.run()
    trainer, *_ = build(tmp_path, max_epochs=1, resume=False)
    trainer.run()  # a good file from a tiny GLAM of other widths
    trainer, *_ = build(tmp_path, network_kwargs={"global_channels": [4, 8, 8, 8, 16]})
    with pytest.raises(ResumeError, match=rf"cannot resume from {path}: its state does not fit .*size mismatch"):
        trainer.run()


def test_a_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    trainer, *_ = build(tmp_path, max_epochs=1)
    trainer.run()
    before = (tmp_path / "last.pt").read_bytes()

    def broken_save(obj, handle, *args, **kwargs):
        handle.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    handler = trainer._event_handlers[Events.COMPLETED][-1][0].__self__
    with pytest.raises(OSError, match="disk full"):
        handler.save(trainer)
    assert (tmp_path / "last.pt").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left


def _train_in_subprocess(save_dir, hang=False):
    command = [sys.executable, "-m", "tests.test_resume", str(save_dir)] + (["--hang"] if hang else [])
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_resume_after_sigkill_is_exact(tmp_path):
    reference = _train_in_subprocess(tmp_path / "reference")
    killed = _train_in_subprocess(tmp_path / "killed", hang=True)
    checkpoint = tmp_path / "killed" / "last.pt"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert checkpoint.exists(), killed.communicate()[0].decode()[-3000:]
    killed.send_signal(signal.SIGKILL)
    killed.communicate()
    assert killed.returncode == -signal.SIGKILL
    assert not torch.load(checkpoint, weights_only=True)["completed"]

    resumed = _train_in_subprocess(tmp_path / "killed")
    outputs = {}
    for name, process in (("resumed", resumed), ("reference", reference)):
        outputs[name] = process.communicate(timeout=300)[0].decode()
        assert process.returncode == 0, outputs[name][-3000:]
    assert f"resuming from {checkpoint} at epoch 1" in outputs["resumed"]
    final = torch.load(checkpoint, weights_only=True)
    expected = torch.load(tmp_path / "reference" / "last.pt", weights_only=True)
    assert final["completed"] and final["epoch"] == expected["epoch"] == MAX_EPOCHS
    assert_same_state(final["objects"], expected["objects"])


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    trainer, *_ = build(sys.argv[1], extra_handlers=[KillAt(2, 2, hang=True)] if "--hang" in sys.argv else [])
    trainer.run()
