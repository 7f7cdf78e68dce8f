"""make_gpt_data — a Megatron .idx/.bin data set for the benchmarks.

uint16 tokens (values 1..50000, deterministic), one sequence per document,
document lengths exponential with mean 2048 (at least 1). Sized for
--windows windows of the longest --seq-lens. Skips the work when <prefix>.bin
already has at least that many tokens.
Usage: make_gpt_data.py PREFIX --seq-lens 128K,1M --windows 44
"""
import argparse
import os

import numpy as np


def parse_len(text):
    text = text.strip().upper()
    return int(text.rstrip("KM")) * {"K": 1 << 10, "M": 1 << 20}.get(text[-1:], 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("prefix")
    ap.add_argument("--seq-lens", default="1M")
    ap.add_argument("--windows", type=int, default=64)
    args = ap.parse_args()
    need = max(parse_len(s) for s in args.seq_lens.split(",")) * args.windows + 1
    if os.path.exists(args.prefix + ".idx") and os.path.exists(args.prefix + ".bin") and \
            os.path.getsize(args.prefix + ".bin") >= 2 * need:
        return
    rng = np.random.default_rng(1)
    lengths = []
    total = 0
    while total < need:
        n = np.maximum(1, rng.exponential(2048, 256).astype(np.int64))
        lengths.extend(n.tolist())
        total += int(n.sum())
    lengths = np.array(lengths, np.int64)
    pointers = np.concatenate(([0], np.cumsum(lengths[:-1]) * 2)).astype("<i8")
    with open(args.prefix + ".bin", "wb") as f:
        for chunk in range(0, total, 1 << 24):
            n = min(1 << 24, total - chunk)
            f.write(rng.integers(1, 50001, n, dtype=np.uint16).astype("<u2").tobytes())
    with open(args.prefix + ".idx", "wb") as f:
        f.write(b"MMIDIDX\x00\x00")
        f.write(np.array([1], "<u8").tobytes())
        f.write(np.array([8], "u1").tobytes())  # uint16 tokens
        f.write(np.array([len(lengths), len(lengths) + 1], "<u8").tobytes())
        f.write(lengths.astype("<i4").tobytes())
        f.write(pointers.tobytes())
        f.write(np.arange(len(lengths) + 1, dtype="<i8").tobytes())
    print("make_gpt_data: %s: %d documents, %d tokens" % (args.prefix, len(lengths), total))


if __name__ == "__main__":
    main()
