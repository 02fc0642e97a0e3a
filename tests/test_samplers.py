"""ClassBalancedSampler (paper section 4.1) and its per-epoch draw through a real GLAMTrainer run."""

import logging

import pytest
import torch
from ignite.engine import Events
from monai.data import DataLoader
from monai.transforms import Compose
from torch import nn

from glam_bundle.data.cache import make_cached_dataset
from glam_bundle.data.failures import SkipBadCases, collate_skip_failures
from glam_bundle.data.samplers import ClassBalancedSampler, datalist_items, derive_seed
from glam_bundle.engines import GLAMTrainer
from glam_bundle.transforms import MakeLabeld

torch.set_num_threads(1)


def make_items(n_pos=4, n_neg=10):
    items = []
    for i in range(n_pos):  # benign-only, malignant-only and both
        items.append({"image": f"/data/p{i}.png", "benign": int(i % 3 != 1), "malignant": int(i % 3 != 0)})
    for i in range(n_neg):
        items.append({"image": f"/data/n{i}.png", "benign": 0, "malignant": 0})
    return items


def split(sampler, indices):
    positives = [i for i in indices if i < sampler.num_positives]
    return positives, [i for i in indices if i >= sampler.num_positives]


def test_balance_and_new_negatives_each_epoch():
    sampler = ClassBalancedSampler(make_items(4, 10), seed=5)
    assert len(sampler) == 8 and (sampler.num_positives, sampler.num_negatives) == (4, 10)
    seen_negatives = set()
    draws = []
    for epoch in range(1, 21):
        sampler.set_epoch(epoch)
        indices = list(sampler)
        positives, negatives = split(sampler, indices)
        assert len(indices) == len(set(indices)) == 8  # without replacement
        assert sorted(positives) == [0, 1, 2, 3] and len(negatives) == 4
        seen_negatives.update(negatives)
        draws.append(tuple(indices))
    assert len(set(draws)) == len(draws)
    assert len(seen_negatives) == 10  # new negatives are drawn every epoch


def test_deterministic_per_seed_and_epoch():
    items = make_items(4, 10)
    a, b = ClassBalancedSampler(items, seed=1), ClassBalancedSampler(items, seed=1)
    a.set_epoch(3)
    b.set_epoch(7)
    list(b)  # b's history must not matter
    b.set_epoch(3)
    assert list(a) == list(b) == a.epoch_indices(3)
    assert a.epoch_indices(3) != a.epoch_indices(4)
    assert a.epoch_indices(3) != ClassBalancedSampler(items, seed=2).epoch_indices(3)
    assert derive_seed(1, 3) != derive_seed(1, 3, stream=1) != derive_seed(3, 1)


def test_more_positives_than_negatives_and_one_class(caplog):
    sampler = ClassBalancedSampler(make_items(6, 2), seed=0)
    assert sorted(sampler.epoch_indices(1)) == list(range(8))  # all positives + min(6, 2) negatives
    with caplog.at_level(logging.WARNING, logger="glam_bundle.data.samplers"):
        only_negatives = ClassBalancedSampler(make_items(0, 5), seed=0)
        assert sorted(only_negatives.epoch_indices(1)) == list(range(5))
        only_negatives.epoch_indices(2)
    assert sum("all negative" in r.getMessage() for r in caplog.records) == 1  # warned once


def test_warns_when_set_epoch_is_not_called(caplog):
    sampler = ClassBalancedSampler(make_items(2, 6))
    with caplog.at_level(logging.WARNING, logger="glam_bundle.data.samplers"):
        list(sampler)
        sampler.set_epoch(1)
        list(sampler)
        assert not caplog.records
        list(sampler)
    assert "set_epoch is not being called" in caplog.text


@pytest.mark.parametrize("n_pos, n_neg, replicas, drop_last", [(4, 10, 2, False), (5, 9, 3, False), (5, 9, 3, True)])
def test_distributed_shards(n_pos, n_neg, replicas, drop_last):
    items = make_items(n_pos, n_neg)
    shards = []
    for rank in range(replicas):
        sampler = ClassBalancedSampler(items, seed=4, num_replicas=replicas, rank=rank, drop_last=drop_last)
        sampler.set_epoch(2)
        shards.append(list(sampler))
        assert len(shards[-1]) == len(sampler)
    epoch = ClassBalancedSampler(items, seed=4).epoch_indices(2)
    assert len({len(s) for s in shards}) == 1  # equal lengths
    flat = [i for s in shards for i in s]
    if drop_last:
        assert len(set(flat)) == len(flat) and set(flat) <= set(epoch)
        assert len(flat) == len(epoch) // replicas * replicas
    else:
        assert set(flat) == set(epoch)  # covering, the padding repeats the epoch's first indices
        assert len(flat) - len(set(flat)) == len(flat) - len(epoch) < replicas
    if len(epoch) % replicas == 0:  # no padding: disjoint
        assert len(set(flat)) == len(flat)


def test_unknown_labels_are_an_error_naming_the_image():
    items = make_items(2, 2) + [{"image": "/data/missing.png", "benign": 0},
                                {"image": "/data/minus.png", "benign": -1, "malignant": 0}]
    sampler = ClassBalancedSampler(items)  # labels are read lazily
    with pytest.raises(ValueError, match=r"2 training item\(s\) with an unknown label.*missing\.png.*minus\.png"):
        len(sampler)
    # one known positive class is enough: the item is positive
    assert ClassBalancedSampler([{"image": "a", "malignant": 1}, {"image": "b", "benign": 0, "malignant": 0}])


def test_unwraps_the_config_dataset_and_reads_items_lazily():
    items = []
    dataset = SkipBadCases(make_cached_dataset(data=items, transform=Compose([MakeLabeld()]), cache="none"))
    sampler = ClassBalancedSampler(dataset, seed=0)
    items.extend(make_items(3, 5))  # the items appear after the sampler is built
    assert datalist_items(dataset) is items
    assert len(sampler) == 6
    with pytest.raises(TypeError, match="datalist items"):
        datalist_items(object())


class _Recorder:
    def __init__(self):
        self.per_epoch = {}

    def attach(self, engine):
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.record)

    def record(self, engine):
        indices = engine.state.batch["index"].tolist()
        self.per_epoch.setdefault(engine.state.epoch, []).extend(indices)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_glam_trainer_sets_the_epoch_before_the_epoch_iterator_exists(num_workers):
    items = [dict(item, index=i, image=torch.full((1, 2, 2), float(i))) for i, item in enumerate(make_items(3, 7))]
    dataset = SkipBadCases(make_cached_dataset(data=items, transform=Compose([MakeLabeld()]), cache="none"))
    sampler = ClassBalancedSampler(dataset, seed=11)
    calls = []
    original = sampler.set_epoch
    sampler.set_epoch = lambda epoch: (calls.append(epoch), original(epoch))[-1]
    loader = DataLoader(dataset, batch_size=2, sampler=sampler, num_workers=num_workers,
                        collate_fn=collate_skip_failures)
    network = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    recorder = _Recorder()
    trainer = GLAMTrainer(
        device=torch.device("cpu"), max_epochs=3, train_data_loader=loader, network=network,
        optimizer=torch.optim.SGD(network.parameters(), lr=0.01), loss_function=nn.MSELoss(),
        train_handlers=[recorder], decollate=False, epoch_seed=3,
    )
    trainer.run()
    assert calls == [1, 2, 3]  # once per epoch, 1-based as MONAI's DistributedSampler hook
    reference = ClassBalancedSampler(make_items(3, 7), seed=11)
    assert recorder.per_epoch == {epoch: reference.epoch_indices(epoch) for epoch in (1, 2, 3)}
    assert len({tuple(v) for v in recorder.per_epoch.values()}) == 3
