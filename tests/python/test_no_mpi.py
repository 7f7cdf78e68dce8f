"""test_no_mpi — the prep layer runs without MPI: libcpdl.so comes only on demand.

Usage: /usr/bin/python3 tests/python/test_no_mpi.py (a fresh process: nothing
before it may load libmpi).
Covers: `import cpdl` maps no cpdl library and no libmpi; cpdl.shard_batch
(checked against tests/python/reference.py) and a refused batch's cpdl.Error
run on libcpdl_prep.so with neither libmpi nor libcpdl.so mapped; a Source
then maps libcpdl.so (and libmpi); both libraries keep their own last-error
message, so an error from either names its cause; cpdl.fields reads the field
vocabulary (cpdl/fields.h) from libcpdl_prep.so, without libmpi. Prints "N
passed, M failed".
"""
import os
import re
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference  # noqa: E402
from testutil import report, run  # noqa: E402

import cpdl  # noqa: E402
from cpdl import _ffi  # noqa: E402

_LIBS = {"libmpi": re.compile(r"/libmpi\.so"), "libcpdl.so": re.compile(r"/libcpdl\.so"),
         "libcpdl_prep.so": re.compile(r"/libcpdl_prep\.so")}


def mapped():
    """{library: True if this process maps it} from /proc/self/maps."""
    with open("/proc/self/maps") as f:
        text = f.read()
    return {name: bool(pattern.search(text)) for name, pattern in _LIBS.items()}


def batch():
    rng = np.random.default_rng(7)
    ids = rng.integers(0, 1000, size=(2, 13))
    return {"input_ids": ids, "labels": np.roll(ids, -1, axis=1),
            "loss_mask": np.ones((2, 13), np.float32)}


def same(got, want):
    return set(got) == set(want) and all(
        got[k].dtype == want[k].dtype and np.array_equal(got[k], want[k]) for k in want)


def refused_message():
    """The message of cpdl.Error for a batch without input_ids (prep layer)."""
    try:
        cpdl.shard_batch({"labels": np.zeros((1, 4), np.int64)}, 2, 0)
    except cpdl.Error as exc:
        return exc.name, exc.message
    return None, "no error"


def test_prep_without_mpi():
    report(mapped() == {name: False for name in _LIBS}, "import cpdl loads no library",
           mapped())
    b = batch()
    for rank in range(3):
        report(same(cpdl.shard_batch(b, 3, rank), reference.shard(b, 3, rank)),
               "shard_batch cp 3 rank %d equals the reference" % rank)
    name, message = refused_message()
    report(name == "CPDL_EFIELD" and "input_ids" in message, "prep error names its cause",
           "%s: %s" % (name, message))
    report(cpdl.strerror(_ffi.EFIELD) == cpdl.Error(_ffi.EFIELD).args[0].split(": ", 1)[1],
           "strerror and Error agree")
    now = mapped()
    report(now["libcpdl_prep.so"], "libcpdl_prep.so serves the prep layer",
           "maps %s; prep library %s (a build without libcpdl_prep.so?)"
           % (now, _ffi.prep().path))
    report(not now["libmpi"] and not now["libcpdl.so"],
           "no libmpi, no libcpdl.so after shard_batch", now)


def test_fields_from_library():
    from cpdl import fields
    table = fields.table()
    names = [f.name for f in table]
    report(len(names) == len(set(names)) and len(names) >= 14, "the vocabulary's names are "
           "unique", names)
    report(fields.LOSS_MASK == "loss_mask" and fields.PACKED_SEQ_IDS == "_packed_seq_ids" and
           fields.CU_SEQLENS_PADDED == "cu_seqlens_padded", "constants name the C table's fields")
    report(fields.info("loss_mask") == fields.Field("loss_mask", "loss_mask", "float32"),
           "loss_mask is float32 (the one loss_mask dtype)", fields.info("loss_mask"))
    report(fields.info("inputs_embeds").dtype is None and fields.info("pixel_values") is None,
           "the caller's dtype is None; a name outside the vocabulary has no entry")
    report(set(fields.names(role="documents")) ==
           {"cu_seqlens", "cu_seqlens_padded", "max_seqlen", "doc_ids",
            "cu_local", "cp_group", "cp_chunk", "cp_groups", "cp_world_ranks"},
           "the per-document fields", fields.names(role="documents"))
    try:
        fields.NO_SUCH_FIELD
        report(False, "unknown constant", "no error")
    except AttributeError as exc:
        report("INPUT_IDS" in str(exc), "an unknown constant lists the vocabulary", str(exc))
    now = mapped()
    report(not now["libmpi"] and not now["libcpdl.so"], "the vocabulary loads no libmpi", now)


def test_full_on_demand():
    src = cpdl.Source("synthetic:?seed=5")
    report(len(src) > 0 and len(src[0]) > 0, "a Source reads samples")
    now = mapped()
    report(now["libcpdl.so"] and now["libmpi"], "a Source maps libcpdl.so and libmpi", now)
    report(os.path.basename(cpdl.library_path).startswith("libcpdl.so"), "library_path",
           cpdl.library_path)
    try:
        cpdl.Source("nosuchplugin:x")
        report(False, "libcpdl.so error", "no error")
    except cpdl.Error as exc:
        # Read from libcpdl.so's cpdl_last_error, not the prep library's.
        report("nosuchplugin" in exc.message, "libcpdl.so error names its cause", str(exc))
    name, message = refused_message()
    report(name == "CPDL_EFIELD" and "input_ids" in message,
           "prep error still names its cause with libcpdl.so loaded", "%s: %s" % (name, message))
    b = batch()
    report(same(cpdl.shard_batch(b, 2, 1), reference.shard(b, 2, 1)),
           "shard_batch with libcpdl.so loaded equals the reference")


if __name__ == "__main__":
    sys.exit(run((test_prep_without_mpi, test_fields_from_library, test_full_on_demand)))
