"""train_loop — a tiny PyTorch training loop fed by cpdl.

    mpirun -np 4 /usr/bin/python3 examples/train_loop.py --cp 4 --steps 50
    mpirun -np 4 /usr/bin/python3 examples/train_loop.py --cp 4 --steps 40 --stop-after 20 \
        --save-state s.json                      # "checkpoint" after 20 steps
    mpirun -np 4 /usr/bin/python3 examples/train_loop.py --cp 4 --steps 40 --resume s.json

Each rank gets its CP shard of every batch as zero-copy tensors (DLPack views of
the shared segment), runs one step of a trivial model (embedding + linear over
its input_ids shard; token ids are hashed into --vocab so the model stays
small) and reports tokens/s. With a GPU, the rank's region is pinned once
(pin=True) and each shard is copied with non_blocking=True: an asynchronous
DMA straight from shared memory. Gradients are not synchronized across ranks:
this shows the data path, not distributed training.
--save-state: every rank calls state_dict() (collective: it gathers every
replica's cursor into one state for the whole job) and rank 0 alone writes it,
as a trainer's checkpoint does; --resume: every rank loads that one file, and
each replica continues from its own cursor. The state is tied to the options
that decide the data (cp, tp, seq_len, batch, source, ... and the number of
ranks): a mismatch is refused naming the option; steps may differ.
"""
import argparse
import json
import os
import time

import torch

import cpdl


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="", help="extra cpdl 'key=value ...' options")
    p.add_argument("--cp", type=int, default=1)
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--stop-after", type=int, default=0, help="leave the loop after N steps")
    p.add_argument("--save-state", metavar="FILE")
    p.add_argument("--resume", metavar="FILE")
    args = p.parse_args()

    use_cuda = torch.cuda.is_available()
    loader = cpdl.Loader(args.config, cp=args.cp, tp=args.tp, seq_len=args.seq_len,
                         batch=args.batch, steps=args.steps, pin=use_cuda)
    rank = loader.mesh.world_rank
    if use_cuda:
        local = int(os.environ.get("OMPI_COMM_WORLD_LOCAL_RANK", loader.mesh.group_rank))
        device = torch.device("cuda", local % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if args.resume:
        with open(args.resume) as f:
            loader.load_state_dict(json.load(f))

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(args.vocab, args.dim),
                                torch.nn.Linear(args.dim, args.vocab)).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    tokens = 0
    first_step = None
    loss = torch.zeros(())
    start = time.perf_counter()
    for batch in loader:
        if first_step is None:
            first_step = batch.step
        shard = batch.torch()  # zero-copy CPU tensors
        ids = shard["input_ids"].to(device, non_blocking=True)
        labels = shard["labels"].to(device, non_blocking=True)
        # The copies read the slot: wait for them before the slot goes back.
        if use_cuda:
            torch.cuda.current_stream().synchronize()
        batch.release()
        ids = ids % args.vocab
        labels = torch.where(labels < 0, labels, labels % args.vocab)
        logits = model(ids)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, args.vocab),
                                                 labels.reshape(-1), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        tokens += ids.numel()
        if args.stop_after and batch.step + 1 - first_step >= args.stop_after:
            break
    if use_cuda:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start

    state = loader.state_dict()  # collective: every rank, the whole job's state
    if args.save_state and rank == 0:
        tmp = "%s.tmp.%d" % (args.save_state, os.getpid())
        with open(tmp, "w") as f:
            json.dump(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, args.save_state)  # a crash leaves the old checkpoint or the new one
    mesh = loader.mesh
    pinned = loader.pinned
    loader.close()
    if rank == 0:
        print("steps %s..%d  rank 0 (dp %d cp %d tp %d) on %s, pinned %s: %d tokens in "
              "%.3f s = %.0f tokens/s per rank, last loss %.4f"
              % (first_step, state["step"] - 1, mesh.dp_rank, mesh.cp_rank, mesh.tp_rank,
                 device, pinned, tokens, elapsed, tokens / max(elapsed, 1e-9),
                 float(loss.detach())), flush=True)


if __name__ == "__main__":
    main()
