"""python.gpt_source — the gpt: source against megatron_reference.py, an
independent numpy statement of Megatron-LM's GPTDataset / BlendedDataset rules
(numpy's RandomState is the RNG oracle): every sample of single datasets and
blends (weighted, unweighted, uint16 + int32 prefixes), every split, several
seq_len and seeds, one epoch and many (both sides of the separate-final-epoch
rule), the split bounds' rounding at a tie (half to even), the mid-level
surplus crossing an epoch boundary and flipping the separate final epoch, a
surplus too small for the blend (Megatron's oversampling error), tiny
datasets, sequences shorter and longer than seq_len, with and without the
extra token; then bad input: weights that do not parse, a split with no
sequences, missing files, a missing num_samples.
"""
import os
import sys
import tempfile

import numpy as np

import megatron_reference as ref
from datafiles import write_megatron
from testutil import report, run

import cpdl

TMP = tempfile.mkdtemp(prefix="cpdl-gpt-")


def dataset(name, n, max_len, dtype=np.uint16, seed=0, min_len=0):
    rng = np.random.RandomState(seed)
    high = 60000 if np.dtype(dtype).itemsize == 2 else 2**31 - 1
    seqs = [rng.randint(0, high, size=rng.randint(min_len, max_len + 1)) for _ in range(n)]
    prefix = os.path.join(TMP, name)
    write_megatron(prefix, seqs, dtype)
    return prefix


def uri(items, num_samples, **keys):
    query = "&".join(["num_samples=%d" % num_samples] + ["%s=%s" % kv for kv in keys.items()])
    return "gpt:" + ",".join(items) + "?" + query


def compare(what, items, num_samples, seq_len, seed, split="969,30,1", split_index=0,
            extra=1, surplus=None):
    keys = {"split": split, "split_index": split_index, "add_extra_token": extra}
    kw = {}
    if surplus is not None:
        keys["mid_level_dataset_surplus"] = surplus
        kw["surplus"] = surplus
    want = ref.Pipeline(items, num_samples, seq_len, seed, split, split_index, extra=extra, **kw)
    got = cpdl.Source(uri(items, num_samples, **keys), seq_len=seq_len, seed=seed)
    report(len(got) == len(want), what + " length", "%d != %d" % (len(got), len(want)))
    bad = [i for i in range(min(len(got), len(want))) if not np.array_equal(got[i], want[i])]
    report(not bad, what + " samples", "first differing sample %s" % bad[:3])
    return want


def test_single():
    a = dataset("single", 200, 40, seed=1)
    for seq_len in (1, 8, 33, 100):
        for seed in (0, 1234, 4294967295):
            compare("single S=%d seed=%d" % (seq_len, seed), [a], 50, seq_len, seed)


def epoch_case(tokens_per_epoch, num_samples, seq_len, extra=1):
    """(several epochs, separate final epoch) as Megatron decides them."""
    epochs = max(1, -(-(num_samples * seq_len + extra) // tokens_per_epoch))
    if epochs == 1:
        return (False, False)
    sans = ((epochs - 1) * tokens_per_epoch - extra) // seq_len
    per_epoch = (tokens_per_epoch - extra) // seq_len
    return (True, num_samples - sans < int(0.80 * per_epoch))


def test_epochs():
    a = dataset("epochs", 30, 20, seed=2)
    tokens = int(ref.Indexed(a).sequence_lengths[:29].sum())  # the 969,30,1 train split
    picked = {}
    for num_samples in range(2, 400):
        picked.setdefault(epoch_case(tokens, num_samples, 16), []).append(num_samples)
    report(len(picked) == 3, "the dataset gives all three epoch cases", str(picked.keys()))
    for case, values in sorted(picked.items()):
        for num_samples in (values[0], values[-1]):
            want = compare("epochs N=%d %s" % (num_samples, case), [a], num_samples, 16, 7)
            d = want.datasets[0]
            report((d.num_epochs > 1, d.separate_final_epoch) == case, "epoch case %s" % (case,))


def test_splits():
    a = dataset("splits", 1000, 6, seed=3)
    for split in ("969,30,1", "80,10,10", "1,1,1", "0.5 0.25 0.25"):
        for index in (0, 1, 2):
            compare("split %s[%d]" % (split, index), [a], 20, 8, 11, split, index)
    compare("split 99,1 (no test)", [a], 20, 8, 11, "99,1", 1)
    # a deliberate tie: 10 sequences at 25,50,25 put the bounds at 2.5 and 7.5, which
    # Python's round (half to even) makes 2 and 8: train [0, 2), valid [2, 8), test [8, 10)
    tie = dataset("tie", 10, 20, seed=12, min_len=1)
    report([tuple(int(round(x * 10.0)) for x in b) for b in ref.split_bounds("25,50,25")]
           == [(0, 2), (2, 8), (8, 10)], "the reference rounds the tie half to even")
    for index in (0, 1, 2):
        compare("split 25,50,25[%d] of 10 (a tie)" % index, [tie], 30, 4, 5, "25,50,25", index)


def test_lengths_vs_seq_len():
    short = dataset("short", 100, 3, seed=4)           # sequences much shorter than S
    long_ = dataset("long", 6, 400, seed=5, min_len=200)  # much longer than S
    compare("short sequences", [short], 20, 64, 1)
    compare("long sequences", [long_], 100, 16, 1)
    compare("long sequences, no extra token", [long_], 100, 16, 1, extra=0)
    compare("short sequences, no extra token", [short], 20, 5, 9, extra=0)


def test_tiny():
    one = dataset("tiny", 1, 5, seed=6, min_len=5)
    compare("one sequence", [one], 3, 2, 1, split="1")
    compare("one sequence, many epochs", [one], 40, 2, 1, split="1")


def test_blends():
    a = dataset("blend_a", 150, 30, np.uint16, seed=7)
    b = dataset("blend_b", 90, 50, np.int32, seed=8)
    c = dataset("blend_c", 40, 10, np.uint16, seed=9, min_len=1)
    compare("blend 0.3/0.7 uint16+int32", ["0.3", a, "0.7", b], 200, 16, 1234)
    compare("blend 3 weights", ["2", a, "1", b, "1", c], 300, 8, 5, split="90,5,5")
    compare("blend valid split", ["1", a, "3", b], 40, 8, 5, split="90,5,5", split_index=1)
    compare("blend one weighted prefix", ["1.0", a], 64, 8, 2)
    compare("blend unweighted", [a, b, c], 120, 8, 3)
    compare("blend surplus 0.5", ["0.3", a, "0.7", b], 100, 16, 1234, surplus=0.5)
    compare("blend many epochs", ["0.5", c, "0.5", b], 500, 32, 1)


def epochs_of(pipeline):
    return [(d.num_epochs, d.separate_final_epoch) for d in pipeline.datasets]


def test_blend_surplus():
    """The mid-level surplus decides each dataset's epochs: (1 + surplus) x its target
    crosses an epoch boundary (a's 1 -> 2 epochs) or flips the separate-final-epoch rule
    (b's), so the default 0.005 gives other samples than no surplus; and a surplus too small
    for what the blend draws is Megatron's oversampling error."""
    a = dataset("blend_a", 150, 30, np.uint16, seed=7)
    b = dataset("blend_b", 90, 50, np.int32, seed=8)
    for num_samples, what in ((222, "a crosses an epoch"), (285, "b's separate final epoch")):
        items = ["0.3", a, "0.7", b]
        bare = ref.Pipeline(items, num_samples, 32, 1234, surplus=0.0)
        want = compare("blend surplus 0.005 (%s)" % what, items, num_samples, 32, 1234,
                       surplus=0.005)
        report(epochs_of(bare) != epochs_of(want), "the surplus changes the epochs (%s)" % what,
               "%s both" % epochs_of(want))
        compare("blend surplus 0 (%s)" % what, items, num_samples, 32, 1234, surplus=0.0)
    # weights 1:1:5 of 8 samples: targets 2, 2, 6, blend size 10, and the greedy blend
    # draws 7 from the third dataset. One epoch of it holds exactly 6 samples of seq_len 8
    # (49 tokens), so without a surplus it is built with 6 and oversampled.
    seqs = [np.arange(7, dtype=np.uint16) + 100 * i for i in range(7)]
    exact = os.path.join(TMP, "blend_exact")
    write_megatron(exact, seqs, np.uint16)
    items = ["1", a, "1", b, "5", exact]
    try:
        ref.Pipeline(items, 8, 8, 3, split="1", surplus=0.0)
        report(False, "the reference raises for a too-small surplus")
    except IndexError:
        pass
    expect_error("surplus 0 oversamples the blend",
                 uri(items, 8, split="1", mid_level_dataset_surplus=0), ["blend_exact",
                                                                         "mid_level_dataset_surplus"])
    compare("blend surplus 0.005 where 0 is too small", items, 8, 8, 3, split="1", surplus=0.005)


def expect_error(what, u, words, seq_len=8):
    try:
        cpdl.Source(u, seq_len=seq_len, seed=1)
    except cpdl.Error as e:
        text = str(e)
        report(all(w in text for w in words), what, "message: %s" % text)
        return
    report(False, what, "opened without an error")


def test_bad_input():
    a = dataset("bad", 10, 10, seed=10, min_len=1)
    expect_error("weight that does not parse", uri(["0.3", a, "x", a], 10), ["weight"])
    expect_error("weight without prefix", uri(["0.3", a, "0.7"], 10), ["weight"])
    expect_error("negative weight", uri(["-1", a, "2", a], 10), ["weight"])
    # 10 sequences, split 98,1,1: valid gets round(0.98*10)..round(0.99*10) = 10..10
    expect_error("split with 0 sequences", uri([a], 10, split="98,1,1", split_index=1),
                 ["0 sequences", "split"])
    expect_error("split with weight 0", uri([a], 10, split="100,0,0", split_index=2),
                 ["weight 0"])
    expect_error("missing files", uri([a + "_missing"], 10), ["_missing.idx"])
    expect_error("no num_samples", "gpt:" + a, ["num_samples"])
    expect_error("bad split", uri([a], 10, split="1.2.3"), ["split"])
    expect_error("unknown key", uri([a], 10, bogus=1), ["bogus"])
    # a sequence pointing past the .bin: the read that touches it fails, naming it
    c = dataset("corrupt", 10, 10, seed=11, min_len=1)
    raw = bytearray(open(c + ".idx", "rb").read())
    raw[34 + 4 * 10 + 8 * 3:34 + 4 * 10 + 8 * 4] = (1 << 40).to_bytes(8, "little")
    open(c + ".idx", "wb").write(bytes(raw))
    src = cpdl.Source(uri([c], 10, split="1"), seq_len=4, seed=1)
    try:
        for i in range(len(src)):
            src[i]
        report(False, "corrupt pointer", "every sample read without an error")
    except cpdl.Error as e:
        report("sequence 3" in str(e) and "corrupt.bin" in str(e), "corrupt pointer", str(e))


if __name__ == "__main__":
    sys.exit(run([test_single, test_epochs, test_splits, test_lengths_vs_seq_len, test_tiny,
                  test_blends, test_blend_surplus, test_bad_input]))
