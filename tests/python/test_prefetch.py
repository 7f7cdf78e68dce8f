"""test_prefetch — cpdl.Loader(device=..., prefetch=N) delivers every step's shard intact, in order.

CI has no GPU, so torch.cuda's streams and events are replaced by stand-ins
that run on the CPU (the copies are then plain CPU copies); what is tested is
the feed's own machinery: one byte-span copy viewed as each field (offsets,
dtypes, shapes), the worker thread and its credits (prefetch 1 and 2), the
synchronous path (prefetch 0), the order of each step's copy event and slot
(recorded, then synchronized, then the slot released: never a slot given back
while its copy may still read it; the stand-ins log all three), StopIteration at the end, and close() while
the worker is mid-stream (leaving the loop early). Every step's tensors are
compared with a plain loader's host views of the same configuration.
Run under mpirun -np 2 (cp 2).
"""
import contextlib
import sys
import threading

import numpy as np
import torch

import testutil
from testutil import report

import cpdl
from cpdl import _prefetch


# What happened to each copy's event and slot, in order: ("record" | "synchronize" |
# "release", event). A CUDA copy is asynchronous: the host slot may go back only after
# the copy's event was recorded and then synchronized (the copy has read the slot).
ORDER = []
EARLY = []  # slots released before their copy's event completed


class FakeEvent:
    def __init__(self):
        self.recorded = False
        self.completed = False
        self.step = None  # the step whose copy it follows (set by the _launch wrapper)

    def record(self, stream=None):
        self.recorded = True
        ORDER.append(("record", self))

    def synchronize(self):
        assert self.recorded, "synchronize() before record()"
        self.completed = True
        ORDER.append(("synchronize", self))


class FakeStream:
    def __init__(self, device=None):
        self.waited = []

    def wait_event(self, event):
        assert event.recorded, "the consumer waits on an event never recorded"
        self.waited.append(event)


CONSUMER = FakeStream()
RECORDED = []
SPANS = []


def install_fakes():
    torch.cuda.Stream = FakeStream
    torch.cuda.Event = FakeEvent
    torch.cuda.stream = lambda s: contextlib.nullcontext()
    torch.cuda.current_stream = lambda device=None: CONSUMER
    torch.cuda.set_device = lambda device: None
    torch.Tensor.record_stream = lambda self, s: RECORDED.append((self.data_ptr(), s))
    span = _prefetch.DeviceFeed._span
    _prefetch.DeviceFeed._span = lambda self, batch: SPANS.append(span(self, batch)) or SPANS[-1]
    launch = _prefetch.DeviceFeed._launch

    def launch_and_note(self, batch):
        item = launch(self, batch)
        event = item[1]
        event.step = batch.step
        batch._copy_event = event  # what release() checks
        return item
    _prefetch.DeviceFeed._launch = launch_and_note
    release = cpdl.Batch.release

    def release_after_copy(self):
        event = getattr(self, "_copy_event", None)
        if event is not None and not self.released:
            ORDER.append(("release", event))
            if not event.completed:
                EARLY.append(self.step)
        release(self)
    cpdl.Batch.release = release_after_copy
    real = _prefetch.resolve
    _prefetch.resolve = lambda device, prefetch: (
        (torch.device("cpu"), prefetch) if device == "fake" else real(device, prefetch))


CONFIG = dict(cp=2, seq_len=500, batch=2, steps=7, mode="round_robin")


def host_steps():
    out = []
    with cpdl.Loader(**CONFIG) as loader:
        for batch in loader:
            out.append((batch.step, {k: torch.from_numpy(np.array(v)) for k, v in batch.items()}))
    return out


def check_order(prefetch, events):
    """Every step's copy event was recorded, then synchronized, then its slot released,
    once each."""
    by_step = {}
    for what, event in events:
        by_step.setdefault(event.step, []).append(what)
    bad = {step: seq for step, seq in by_step.items()
           if seq != ["record", "synchronize", "release"]}
    report(by_step and not bad, "prefetch=%d: record -> synchronize -> release for every step"
           % prefetch, "%s" % sorted(bad.items())[:3])


def check_feed(want, prefetch, stop_after=None):
    got = 0
    waited_before = len(CONSUMER.waited)
    order_before, early_before = len(ORDER), len(EARLY)
    with cpdl.Loader(device="fake", prefetch=prefetch, **CONFIG) as loader:
        for i, batch in enumerate(loader):
            step, fields = want[i]
            report(batch.step == step, "prefetch=%d step order" % prefetch,
                   "%d != %d" % (batch.step, step))
            report(sorted(batch) == sorted(fields), "prefetch=%d fields" % prefetch,
                   "%s vs %s" % (sorted(batch), sorted(fields)))
            for name, tensor in fields.items():
                t = batch[name]
                report(t.dtype == tensor.dtype and t.shape == tensor.shape and
                       torch.equal(t, tensor), "prefetch=%d step %d field %s" % (prefetch, step, name),
                       "%s %s vs %s %s" % (t.dtype, tuple(t.shape), tensor.dtype, tuple(tensor.shape)))
            got += 1
            if stop_after is not None and got == stop_after:
                break
        worker = getattr(loader._feed, "_worker", None)
    report(worker is None or not worker.is_alive(), "prefetch=%d worker joined at close" % prefetch)
    report(len(CONSUMER.waited) - waited_before == got, "prefetch=%d consumer waited on each copy"
           % prefetch, "%d waits for %d steps" % (len(CONSUMER.waited) - waited_before, got))
    report(len(EARLY) == early_before, "prefetch=%d: no slot released before its copy's event "
           "completed" % prefetch, "steps %s" % EARLY[early_before:])
    check_order(prefetch, ORDER[order_before:])
    return got


def test_state_save():
    with cpdl.Loader(device="fake", prefetch=1, **CONFIG) as loader:
        next(loader)
        try:
            loader.state_dict()
            report(False, "state_dict() under prefetch=1 refused")
        except cpdl.Error as exc:
            report("prefetch=0" in str(exc), "state_dict() refusal names the fix", str(exc))
    with cpdl.Loader(device="fake", prefetch=0, **CONFIG) as loader:
        first = next(loader).step
        state = loader.state_dict()
        report(state["step"] == first + 1, "prefetch=0: state starts after the step in use",
               "%s after step %d" % (state, first))


def test_feeds():
    want = host_steps()
    report(len(want) == CONFIG["steps"], "host loader steps", str(len(want)))
    for prefetch in (0, 1, 2):
        report(check_feed(want, prefetch) == len(want), "prefetch=%d all steps" % prefetch)
    report(check_feed(want, 1, stop_after=3) == 3, "early close with the worker running")
    report(RECORDED, "device memory recorded for the consumer stream")
    report(SPANS and all(s is not None for s in SPANS), "one byte span per step",
           str(SPANS[:3]))
    report(threading.active_count() == 1, "no thread left behind",
           str(threading.enumerate()))


if __name__ == "__main__":
    install_fakes()
    sys.exit(testutil.run([test_feeds, test_state_save]))
