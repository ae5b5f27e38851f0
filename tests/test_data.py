"""The training stream: resumable, deterministic, and never serving an evaluation example."""

import torch

import seqicl.tasks as tasks
from seqicl.seeding import derive_seed
from seqicl.tasks.datamodule import Prefetched, TaskDataModule, TrainBatches


def test_derive_seed_is_stable():
    assert derive_seed(0, "test") == derive_seed(0, "test")
    assert derive_seed(0, "test") != derive_seed(0, "val")
    assert derive_seed(1, "a", 2) == 991280350367608004  # pinned: changing it changes every dataset


def take(it, n):
    return [next(it)["inputs"].clone() for _ in range(n)]


def test_fixed_set_stream_resumes_exactly():
    task = tasks.build("mqar", vocab_size=64, seq_len=16, num_kv_pairs=2)
    data = task.sample(40, seed=0)
    full = TrainBatches(task, 8, seed=1, data=data)
    seq = []
    for _ in range(3):  # three epochs of 5 batches
        seq += [b["inputs"] for b in full]
    assert len(seq) == 15
    part = TrainBatches(task, 8, seed=1, data=data)
    it = iter(part)
    first = take(it, 2)
    for _ in range(3):
        next(it)
    state = part.state_dict()
    resumed = TrainBatches(task, 8, seed=1, data=data)
    resumed.load_state_dict(state)
    rest = [b["inputs"] for b in resumed]
    for _ in range(2):
        rest += [b["inputs"] for b in resumed]
    got = first + [seq[2], seq[3], seq[4]] + rest
    assert all(torch.equal(a, b) for a, b in zip(got, seq))
    # epochs are reshuffled
    assert not torch.equal(seq[0], seq[5])


def test_online_stream_is_deterministic_and_resumable():
    task = tasks.build("mqar", vocab_size=64, seq_len=16, num_kv_pairs=2)
    a = TrainBatches(task, 4, seed=2, steps_per_epoch=3)
    seq = [b["inputs"] for b in a] + [b["inputs"] for b in a]
    b = TrainBatches(task, 4, seed=2, steps_per_epoch=3)
    b.load_state_dict({"epoch": 1, "pos": 1})
    assert all(torch.equal(x, y) for x, y in zip([x["inputs"] for x in b], seq[4:]))


def test_online_stream_never_serves_validation_or_test_examples():
    # 4 context tokens over 2 values: only 16 distinct sequences, so collisions are certain.
    task = tasks.build("induction_head", vocab_size=4, context_len=4, train_all_tokens=False)
    dm = TaskDataModule(task, batch_size=32, val_size=3, test_size=3, steps_per_epoch=20, on_device=False)
    dm.setup()
    held = {tuple(r) for s in ("val", "test") for r in dm.splits[s]["inputs"].tolist()}
    served = [tuple(r) for b in dm.train_dataloader() for r in b["inputs"].tolist()]
    assert len(served) == 20 * 32
    assert not held & set(served)
    assert len(set(served)) > 5


def test_prefetched_stream_serves_the_same_batches_and_resumes():
    task = tasks.build("mqar", vocab_size=32, seq_len=16, num_kv_pairs=2)
    plain = TrainBatches(task, 4, seed=3, steps_per_epoch=3)
    expected = [b["inputs"] for _ in range(2) for b in plain]
    ahead = Prefetched(TrainBatches(task, 4, seed=3, steps_per_epoch=3), pin=False)
    served = []
    for _ in range(2):
        served += [b["inputs"] for b in ahead]
    assert len(served) == len(expected) == 6
    assert all(torch.equal(a, b) for a, b in zip(served, expected))
    # Stop after 4 batches (the next one already drawn in the background), save, and resume.
    first = Prefetched(TrainBatches(task, 4, seed=3, steps_per_epoch=3), pin=False)
    it = iter(first)
    taken = [next(it)["inputs"] for _ in range(3)] + [next(iter(first))["inputs"]]
    state = first.state_dict()
    resumed = Prefetched(TrainBatches(task, 4, seed=3, steps_per_epoch=3), pin=False)
    resumed.load_state_dict(state)
    rest = [b["inputs"] for b in resumed]
    assert all(torch.equal(a, b) for a, b in zip(taken + rest, expected))
    assert len(taken + rest) == 6
