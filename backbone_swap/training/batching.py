"""Which samples train together, in which order and on which process, and their tensors.

An epoch's samples are shuffled into global batches (grouped by modality and length, as LLaVA's trainer
groups them), each global batch is cut into micro-batches shared out evenly across the processes, and a
``DataLoader`` turns this process's micro-batches into tensors (cached features read from disk, padding)
ahead of the step that uses them. The order depends only on the seed, the epoch and the step, so a
resumed stage continues with exactly the micro-batch it stopped before.
"""

from __future__ import annotations

import functools
import queue
import random
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch.utils.data import DataLoader, Sampler

from backbone_swap.errors import BackboneSwapError
from backbone_swap.training.data import IGNORE, Sample


# -- the order of an epoch -----------------------------------------------------------------------------
def length_grouped_batches(lengths: Sequence[int], batch_size: int, *, seed: int, group: bool = True,
                           megabatch: int = 8, modality: Sequence[bool] | None = None) -> list[list[int]]:
    """Shuffled batches of indices in which samples of similar length sit together (less padding).

    Samples are shuffled, cut into mega-batches of ``megabatch`` batches, sorted by length inside each,
    then cut into batches, and the batches are shuffled: random order, little padding, and the same seed
    always gives the same batches.

    With ``modality`` (per sample: whether it has an image) and both kinds present, each batch holds one
    kind, as LLaVA-1.5's trainer groups them (``group_by_modality_length``); the two kinds' last partial
    batches are merged at the end.
    """
    rng = random.Random(seed)
    if not group or modality is None or len(set(modality)) < 2:
        return _grouped(list(range(len(lengths))), lengths, batch_size, rng, group, megabatch)
    batches, rest = [], []
    for kind in (True, False):
        part = _grouped([i for i, m in enumerate(modality) if m == kind], lengths, batch_size, rng, group, megabatch)
        partial = [b for b in part if len(b) < batch_size]
        rest += [i for b in partial for i in b]
        batches += [b for b in part if len(b) == batch_size]
    rng.shuffle(batches)
    return batches + [rest[i: i + batch_size] for i in range(0, len(rest), batch_size)]


def _grouped(order: list[int], lengths: Sequence[int], batch_size: int, rng: random.Random, group: bool,
             megabatch: int) -> list[list[int]]:
    rng.shuffle(order)
    if not group:
        return [order[i: i + batch_size] for i in range(0, len(order), batch_size)]
    size = batch_size * megabatch
    batches = []
    for i in range(0, len(order), size):
        chunk = sorted(order[i: i + size], key=lambda k: -lengths[k])
        batches += [chunk[j: j + batch_size] for j in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def padding_fraction(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """Share of the tokens in padded batches that are padding."""
    total = sum(max(lengths[i] for i in b) * len(b) for b in batches if b)
    real = sum(lengths[i] for b in batches for i in b)
    return 0.0 if total == 0 else 1 - real / total


def steps_per_epoch(samples: int, global_batch: int, world: int) -> int:
    """Optimizer steps in an epoch: the global batches that every process gets a share of.

    A last batch smaller than the number of processes cannot be shared out: it is left out of every epoch,
    so that epochs and resumed runs line up.
    """
    steps = samples // global_batch + (samples % global_batch >= world)
    if steps == 0:
        raise BackboneSwapError(f"{samples} samples cannot be shared by {world} processes",
                                "Train on more samples, or on fewer processes")
    return steps


# -- the split of a global batch across processes ------------------------------------------------------
def split_for_processes(batch: list[int], micro_batch: int, world: int) -> list[list[int]] | None:
    """Micro-batches of at most ``micro_batch`` samples, as many for every process.

    A full global batch splits evenly by construction; a short last batch is cut into smaller pieces so
    that no process sits out a step (which would leave the others waiting in the gradient exchange).
    """
    count = -(-len(batch) // micro_batch)
    count = -(-count // world) * world
    if len(batch) < count:
        return None if len(batch) < world else _even(batch, world)
    return _even(batch, count)


def _even(items: list[int], parts: int) -> list[list[int]]:
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for k in range(parts):
        end = start + size + (1 if k < extra else 0)
        out.append(items[start:end])
        start = end
    return out


class MicroBatchPlan(NamedTuple):
    """One micro-batch of this process, and where it sits in its optimizer step."""

    indices: list[int]
    last: bool  # it closes the step: gradients are exchanged and the optimizer steps after it
    parts: int  # this process's micro-batches in the step (the loss of each is divided by it)
    step_samples: int  # samples in the step's global batch, over all processes


class MicroBatchSampler(Sampler[MicroBatchPlan]):
    """This process's micro-batches for the optimizer steps ``start`` to ``total`` of a stage.

    Step ``s`` trains global batch ``s % steps_per_epoch`` of epoch ``s // steps_per_epoch``, whose order is
    drawn from ``seed + epoch`` alone: a stage resumed at step ``start`` sees what an uninterrupted one does.
    """

    def __init__(self, lengths: Sequence[int], modality: Sequence[bool], *, global_batch: int, micro_batch: int,
                 world: int, rank: int, seed: int, group: bool, start: int, total: int) -> None:
        self.lengths, self.modality = lengths, modality
        self.global_batch, self.micro_batch, self.world, self.rank = global_batch, micro_batch, world, rank
        self.seed, self.group, self.start, self.total = seed, group, start, total
        self.steps_per_epoch = steps_per_epoch(len(lengths), global_batch, world)

    def epoch(self, epoch: int) -> list[list[int]]:
        """The global batches of ``epoch``, one per step."""
        batches = length_grouped_batches(self.lengths, self.global_batch, seed=self.seed + epoch, group=self.group,
                                         modality=self.modality)
        return [b for b in batches if len(b) >= self.world]

    def _epochs(self) -> range:
        """The epochs that the steps ``start`` to ``total`` touch."""
        if self.start >= self.total:
            return range(0)
        return range(self.start // self.steps_per_epoch, (self.total - 1) // self.steps_per_epoch + 1)

    def __iter__(self) -> Iterator[MicroBatchPlan]:
        for epoch in self._epochs():
            batches = self.epoch(epoch)
            first = max(self.start - epoch * self.steps_per_epoch, 0)
            last = min(self.total - epoch * self.steps_per_epoch, self.steps_per_epoch)
            for batch in batches[first:last]:
                micro = split_for_processes(batch, self.micro_batch, self.world)
                mine = micro[self.rank::self.world]
                for k, part in enumerate(mine):
                    yield MicroBatchPlan(part, k == len(mine) - 1, len(mine), len(batch))

    def padding(self) -> float:
        """The mean share of padding in the epochs these steps touch (each epoch counted whole)."""
        fractions = [padding_fraction(self.lengths, self.epoch(epoch)) for epoch in self._epochs()]
        return sum(fractions) / max(len(fractions), 1)


# -- tensors --------------------------------------------------------------------------------------------
def pad_batch(samples: Sequence[Sample], pad_id: int):
    """Right-padded ids, the attention mask, and labels that ignore the pads."""
    width = max(s.length for s in samples)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(samples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    for row, s in enumerate(samples):
        ids[row, : s.length] = torch.tensor(s.input_ids)
        labels[row, : s.length] = torch.tensor(s.labels)
        mask[row, : s.length] = 1
    return ids, mask, labels


def collate(samples: Sequence[Sample], features: Callable[[Any], Any], pad_id: int):
    """Right-padded ids, labels (IGNORE on pads) and the attention mask, plus the batch's image features."""
    ids, mask, labels = pad_batch(samples, pad_id)
    images = [s.image for s in samples if s.image is not None]
    if not images:
        return ids, mask, labels, None
    if hasattr(features, "batch"):  # the tower itself, run once for the whole batch
        return ids, mask, labels, features.batch(images)
    return ids, mask, labels, torch.stack([features(image) for image in images])


@dataclass
class MicroBatch:
    """A micro-batch's tensors, and where it sits in its optimizer step (see ``MicroBatchPlan``)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    features: torch.Tensor | None
    last: bool
    parts: int
    step_samples: int

    def to(self, device: Any) -> MicroBatch:
        features = self.features.to(device) if self.features is not None else None
        return MicroBatch(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device),
                          features, self.last, self.parts, self.step_samples)


class _PlannedSamples(torch.utils.data.Dataset):
    """The samples, fetched a micro-batch at a time together with the plan that chose them."""

    def __init__(self, samples: Sequence[Sample]) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]

    def __getitems__(self, plan: MicroBatchPlan) -> tuple[MicroBatchPlan, list[Sample]]:
        return plan, [self.samples[i] for i in plan.indices]


def _collate_planned(planned: tuple[MicroBatchPlan, list[Sample]], *, features: Callable[[Any], Any],
                     pad_id: int) -> MicroBatch:
    plan, samples = planned
    return MicroBatch(*collate(samples, features, pad_id), plan.last, plan.parts, plan.step_samples)


def micro_batches(samples: Sequence[Sample], sampler: MicroBatchSampler, features: Callable[[Any], Any],
                  pad_id: int) -> Iterator[MicroBatch]:
    """This process's micro-batches, in the sampler's order, each prepared while the one before computes.

    Cached features are read in a background thread, two micro-batches ahead. A thread rather than the
    loader's worker processes: reading and padding is light work that waits on the disk, while each worker
    process would compete with the step for the cores and touch (so copy) the samples that every training
    process already holds. With ``bench/train.py``'s model on two busy cores, the step waited 0.1 ms for its
    micro-batch with the thread, 9.5 ms with one worker process, 18-100 ms with neither. The vision tower
    (``features`` with a ``batch`` method, when the cache is off) runs where it is called, on the training
    device, so it stays on the main thread.
    """
    # a generator of its own: without one the loader draws its workers' seed from the global generator, and
    # the dropout that follows would differ from a run without the loader
    loader = DataLoader(_PlannedSamples(samples), batch_sampler=sampler, generator=torch.Generator(),
                        collate_fn=functools.partial(_collate_planned, features=features, pad_id=pad_id))
    if hasattr(features, "batch"):
        yield from loader
        return
    prefetched = _Prefetched(loader, depth=2)
    try:
        yield from prefetched
    finally:
        prefetched.close()


class _Prefetched:
    """An iterable read ``depth`` items ahead by a background thread; its errors are raised to the reader."""

    _END = object()

    def __init__(self, iterable: Any, depth: int) -> None:
        self._queue: queue.Queue = queue.Queue(depth)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._fill, args=(iterable,), daemon=True, name="prefetch")
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stopped.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _fill(self, iterable: Any) -> None:
        try:
            for item in iterable:
                if not self._put((item, None)):
                    return
            self._put((self._END, None))
        except BaseException as error:  # handed to the reader, which raises it
            self._put((None, error))

    def __iter__(self) -> Iterator[Any]:
        while True:
            item, error = self._queue.get()
            if error is not None:
                raise error
            if item is self._END:
                return
            yield item

    def close(self) -> None:
        self._stopped.set()
        self._thread.join()
