"""cpdl.torchtitan — a torchtitan data loader whose batches are already CP-sharded.

torchtitan (read at pytorch/torchtitan b5bcd76c66d0acb1a08b176d9639425bc55e0b2a)
builds its data loader from config.dataloader.build(dp_world_size=, dp_rank=,
tokenizer=, max_context_length=, num_tokens_per_batch=), iterates
(input_dict, labels) with input_dict = {"input": [T], "positions": [T]} (the
micro batch folded into one stream of T tokens, components/data/collators.py),
checkpoints it through state_dict() / load_state_dict(), and shards for CP in
Trainer.post_dataloading_process -> prepare_context_parallel_input
(distributed/context_parallel/api.py): torch's head-tail load balancer on the
stream — this rank keeps chunks r and 2*cp-1-r of 2*cp. DataLoader gives those
shards straight from cpdl's shared memory (a cpdl.Loader in mode round_robin,
one row of T tokens per step), so the trainer skips that call
(docs/torchtitan.md: the lines that change).

Owns: the torchtitan batch protocol and its resume state on top of
cpdl.Loader. Invariants: shard() equals prepare_context_parallel_input with
load_balancer_type="headtail" on the same stream (tests/python/test_adapters.py);
state_dict() is cpdl's one state for the whole job, so the dict any rank
saves restores every rank.
"""
import dataclasses

import torch

from . import _adapt
from . import fields as F

STATE_VERSION = 1


def shard(input_dict, labels, cp_size, cp_rank):
    """(input_dict, labels) of one torchtitan stream -> this CP rank's part,
    as prepare_context_parallel_input(..., load_balancer_type="headtail")
    gives it (inputs, labels, positions cut; other entries untouched), through
    cpdl's core (mode round_robin). Returns (inputs, labels, extra_kwargs)."""
    extra = {k: v for k, v in input_dict.items() if k != "input"}
    inputs = input_dict["input"]
    if "positions" not in extra:
        raise KeyError("positions")  # torchtitan's CP shard requires them too
    T = inputs.shape[0]
    if T % (2 * cp_size):
        raise ValueError("cpdl.torchtitan: the stream has %d tokens; the head-tail balancer "
                         "needs a multiple of 2*cp = %d" % (T, 2 * cp_size))
    core = {F.INPUT_IDS: inputs.unsqueeze(0), F.LABELS: labels.unsqueeze(0),
            F.POSITION_IDS: extra["positions"].unsqueeze(0)}
    (out,) = _adapt.shard_tensors(core, cp_size, [cp_rank], mode="round_robin")
    extra["positions"] = out[F.POSITION_IDS][0]
    return out[F.INPUT_IDS][0], out[F.LABELS][0], extra


@dataclasses.dataclass
class DataLoaderConfig:
    """config.dataloader for torchtitan's trainer: build() opens DataLoader
    with the trainer's runtime arguments. loader: cpdl.Loader keyword
    arguments (source=, mesh=, dims=, seed=, ... — seq_len, batch and mode
    are set from the trainer)."""
    loader: dict = dataclasses.field(default_factory=dict)
    device: str = None

    def build(self, **runtime):
        return DataLoader(self, **runtime)

    def to_dict(self):
        return {"loader": {k: repr(v) if not isinstance(v, (str, int, float, bool)) else v
                           for k, v in self.loader.items()}, "device": self.device}


class DataLoader:
    """torchtitan's BaseDataLoader protocol (iteration of (input_dict, labels),
    state_dict(), load_state_dict(), close()) over a cpdl.Loader: each step is
    one row of num_tokens_per_batch tokens and this rank gets its head-tail
    shard: ({"input": [T/cp], "positions": [T/cp]}, labels [T/cp]), int64 CPU
    tensors (torchtitan moves them itself; device= copies them there, or use
    Loader(device="cuda") batches, which are on the GPU already). copy=True (the
    default) copies them out of shared memory: torchtitan's train_step takes
    every gradient-accumulation and pipeline micro batch before it uses the
    first, and a view lives only until the next step. copy=False hands out
    the zero-copy views: only with one micro batch per step.

    config: a DataLoaderConfig (or None); loader: an open cpdl.Loader to use
    instead of opening one (mode round_robin, batch 1). The runtime arguments
    are the trainer's: num_tokens_per_batch is the row length; dp_world_size
    and dp_rank are checked against cpdl's mesh (a disagreement would feed
    replicas the wrong data)."""

    def __init__(self, config=None, *, dp_world_size=None, dp_rank=None,
                 num_tokens_per_batch=None, tokenizer=None, max_context_length=None,
                 loader=None, device=None, copy=True, **runtime):
        del tokenizer, max_context_length, runtime  # the source is cpdl's
        config = config or DataLoaderConfig()
        if loader is None:
            from .loader import Loader
            options = dict(config.loader)
            if num_tokens_per_batch is not None:
                options["seq_len"] = num_tokens_per_batch
            options.setdefault("batch", 1)
            options.setdefault("mode", "round_robin")
            loader = Loader(**options)
        self.loader = loader
        self.device = device if device is not None else config.device
        mode = _adapt.loader_mode(loader)
        batch = int(loader.config["batch"])
        if mode != "round_robin" or batch != 1:
            raise ValueError("cpdl.torchtitan: torchtitan folds a micro batch into one stream and "
                             "balances it head-tail; open the loader with mode=round_robin, "
                             "batch=1 and seq_len = tokens per micro batch (got mode=%s, "
                             "batch=%d)" % (mode, batch))
        seq_len = int(loader.config["seq_len"])
        if num_tokens_per_batch is not None and seq_len != num_tokens_per_batch:
            raise ValueError("cpdl.torchtitan: the loader's seq_len %d is not the trainer's "
                             "num_tokens_per_batch %d" % (seq_len, num_tokens_per_batch))
        mesh = loader.mesh
        if seq_len % (2 * mesh.cp_size):
            raise ValueError("cpdl.torchtitan: seq_len %d is not a multiple of 2*cp = %d (the "
                             "head-tail balancer needs it)" % (seq_len, 2 * mesh.cp_size))
        for name, given, have in (("dp_world_size", dp_world_size, mesh.dp_size),
                                  ("dp_rank", dp_rank, mesh.dp_rank)):
            if given is not None and int(given) != have:
                raise ValueError("cpdl.torchtitan: the trainer's %s is %d but cpdl's mesh says "
                                 "%d; open the loader on the trainer's mesh (mesh=, dims=)"
                                 % (name, given, have))
        self.seq_len = seq_len
        self.copy = bool(copy)

    def __iter__(self):
        for batch in self.loader:
            tensors = _adapt.batch_tensors(batch, copy=self.copy, device=self.device)
            inputs = tensors[F.INPUT_IDS][0].to(torch.int64)
            labels = tensors[F.LABELS][0].to(torch.int64)
            positions = tensors[F.POSITION_IDS][0].to(torch.int64)
            yield {"input": inputs, "positions": positions}, labels

    def state_dict(self):
        """Collective (every rank, at the same step — as torchtitan's checkpoint
        save and load do): {"version", "cpdl": cpdl's whole-job state}."""
        return {"version": STATE_VERSION, "cpdl": self.loader.state_dict()}

    def load_state_dict(self, state_dict):
        """Before the first iteration; an empty dict (no checkpoint) does nothing."""
        if not state_dict:
            return
        if state_dict.get("version") != STATE_VERSION:
            raise ValueError("cpdl.torchtitan: data loader state version %r; this cpdl reads "
                             "version %d" % (state_dict.get("version"), STATE_VERSION))
        self.loader.load_state_dict(state_dict["cpdl"])

    def close(self):
        self.loader.close()
