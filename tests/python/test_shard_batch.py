"""test_shard_batch — cpdl.shard_batch / shard_batch_all against reference.py.

A deterministic property test over random batches that reach every branch of
the batch contract of docs/design.md (primaries, masks, positions, labels, metadata, pass-through,
cp, tp, S, B, modes), then explicit tests: errors, input immutability, the
one-buffer layout of shard_batch_all, the ctypes ABI. Plain script: prints
"N passed, M failed" and exits non-zero on any failure.
Run: PYTHONPATH=python CPDL_LIBRARY=<build>/libcpdl.so /usr/bin/python3 tests/python/test_shard_batch.py
"""
import copy
import os
import re
import subprocess
import sys
import tempfile
import traceback

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference  # noqa: E402
import testutil  # noqa: E402
from testutil import report  # noqa: E402

import cpdl  # noqa: E402
from cpdl import _ffi  # noqa: E402

N_BATCHES = int(os.environ.get("CPDL_TEST_BATCHES", "600"))
SEED = 20240520
MODES = ("contiguous", "round_robin", "aux_only")
CP_SIZES = (1, 2, 3, 4, 5, 6, 8)


def compare(got, want, where):
    """'' if the dicts match in keys, dtypes, shapes and values, else a reason."""
    if set(got) != set(want):
        return "%s: keys %s, expected %s" % (where, sorted(got), sorted(want))
    for name in want:
        g, w = got[name], want[name]
        if g.dtype != w.dtype:
            return "%s: %s dtype %s, expected %s" % (where, name, g.dtype, w.dtype)
        if g.shape != w.shape:
            return "%s: %s shape %s, expected %s" % (where, name, g.shape, w.shape)
        if not np.array_equal(g, w):
            bad = np.argwhere(g != w)
            return "%s: %s differs at %d places, first %s: %r vs %r" % (
                where, name, len(bad), tuple(bad[0]), g[tuple(bad[0])], w[tuple(bad[0])])
    return ""


# ---- random batches --------------------------------------------------------

def rand_lengths(rng, B, S):
    """Real-token count per row (right padding), at least 1."""
    return rng.integers(1, S + 1, size=B)


def random_case(rng):
    """One batch plus the keyword arguments, covering the contract's branches."""
    cp = int(rng.choice(CP_SIZES))
    tp = int(rng.choice((1, 2)))
    B = int(rng.integers(1, 4))
    unit = 2 * cp
    kind = rng.integers(0, 4)
    if kind == 0:
        S = 1
    elif kind == 1:
        S = int(rng.integers(2, 24))
    elif kind == 2:
        S = unit * int(rng.integers(1, 4))  # no padding needed
    else:
        S = max(1, unit * int(rng.integers(1, 4)) - int(rng.integers(1, unit)))
    batch = {}
    kw = {"tp_size": tp, "mode": MODES[rng.integers(0, 3)],
          "padding_token_id": int(rng.choice((0, -1, 50256)))}

    if rng.random() < 0.6:
        batch["input_ids"] = rng.integers(0, 60000, size=(B, S)).astype(
            rng.choice((np.int64, np.int32)))
    else:
        H = int(rng.integers(1, 5))
        batch["inputs_embeds"] = rng.standard_normal((B, S, H)).astype(
            rng.choice((np.float32, np.float16, np.float64)))

    lengths = rand_lengths(rng, B, S)
    real = np.arange(S)[None, :] < lengths[:, None]  # [B, S] True on real tokens
    mask_kind = rng.integers(0, 6)
    if mask_kind == 1:
        batch["attention_mask"] = real.astype(rng.choice((np.int64, np.int32, np.uint8)))
    elif mask_kind == 2:
        batch["attention_mask"] = real.copy()
    elif mask_kind == 3:  # 4-D bool: True = may attend
        causal = np.tril(np.ones((S, S), dtype=bool))
        batch["attention_mask"] = (causal[None, None] & real[:, None, None, :]
                                   & real[:, None, :, None])
    elif mask_kind == 4:  # 4-D additive: 0 = attend, large negative = masked
        dtype = rng.choice((np.float32, np.float16, np.float64))
        neg = np.finfo(dtype).min if rng.random() < 0.5 else -np.inf
        allowed = np.tril(np.ones((S, S), dtype=bool))[None, None] & real[:, None, :, None]
        batch["attention_mask"] = np.where(allowed, 0.0, neg).astype(dtype)
    elif mask_kind == 5:  # 4-D integer mask: "any other dtype" = additive rule
        batch["attention_mask"] = rng.integers(0, 2, size=(B, 1, S, S)).astype(np.uint8)
    if rng.random() < 0.25:
        pm = ~real
        batch["padding_mask"] = pm if rng.random() < 0.6 else pm.astype(np.int64)

    pos_kind = rng.integers(0, 5)
    pos_dtype = rng.choice((np.int64, np.int32))
    if pos_kind == 1:
        batch["position_ids"] = (rng.integers(0, 5, size=(B, S)).cumsum(axis=1)).astype(pos_dtype)
    elif pos_kind == 2:
        batch["position_ids"] = (np.arange(S)[None, :] + int(rng.integers(0, 9))).astype(pos_dtype)
    elif pos_kind == 3:  # mRoPE
        batch["position_ids"] = rng.integers(0, 100, size=(3, B, S)).astype(pos_dtype)

    has_labels = rng.random() < 0.7
    if has_labels:
        batch["labels"] = np.where(real, rng.integers(0, 60000, size=(B, S)), -100).astype(
            rng.choice((np.int64, np.int32)))
        if rng.random() < 0.5:
            lm = real.astype(rng.choice((np.bool_, np.uint8, np.int64, np.float32)))
            if rng.random() < 0.5:
                kw["loss_mask"] = lm
            else:
                batch["loss_mask"] = lm
    else:
        # The loss mask becomes labels and is padded with -100: signed dtypes only.
        lm = real.astype(rng.choice((np.int64, np.int32, np.float32)))
        if rng.random() < 0.5:
            kw["loss_mask"] = lm
        else:
            batch["loss_mask"] = lm

    if rng.random() < 0.3:
        batch["_packed_seq_ids"] = np.where(
            real, rng.integers(1, 4, size=(B, S)).cumsum(axis=1), 0).astype(
            rng.choice((np.int64, np.int32)))
    if rng.random() < 0.3:
        batch["mm_token_type_ids"] = rng.integers(0, 3, size=(B, S)).astype(
            rng.choice((np.int64, np.int32)))
    if rng.random() < 0.25:
        batch["per_layer_inputs"] = rng.standard_normal(
            (B, S, int(rng.integers(1, 3)), int(rng.integers(1, 4)))).astype(
            rng.choice((np.float32, np.float16)))

    if rng.random() < 0.35:
        seq_dims, pads = {}, {}
        batch["token_weights"] = rng.random((B, S)).astype(np.float32)
        seq_dims["token_weights"] = 1
        pads["token_weights"] = 1.5
        if rng.random() < 0.5:
            batch["vision_pos"] = rng.integers(0, 50, size=(B, 2, S)).astype(np.int64)
            seq_dims["vision_pos"] = 2
            pads["vision_pos"] = -7
        if rng.random() < 0.5:
            batch["seq_first"] = rng.integers(0, 9, size=(S, B)).astype(np.int32)
            seq_dims["seq_first"] = 0
            pads["seq_first"] = 3  # not given in pad_values half of the time
            if rng.random() < 0.5:
                del pads["seq_first"]
        kw["metadata_seq_dims"] = seq_dims
        kw["metadata_pad_values"] = pads

    if rng.random() < 0.3:
        n_img = int(rng.integers(1, 3))
        batch["pixel_values"] = rng.standard_normal((n_img, 3, 4, 4)).astype(np.float32)
        batch["image_grid_thw"] = rng.integers(1, 5, size=(n_img, 3)).astype(np.int64)
        # A per-token field nobody named passes through whole.
        batch["token_flags"] = rng.integers(0, 2, size=(B, S)).astype(np.uint8)

    if rng.random() < 0.1:  # a non-contiguous input view
        name = "input_ids" if "input_ids" in batch else "inputs_embeds"
        arr = batch[name]
        batch[name] = np.asfortranarray(arr)
    return batch, cp, kw


def reference_kwargs(kw):
    meta = None
    if kw.get("metadata_seq_dims"):
        pads = kw.get("metadata_pad_values") or {}
        meta = {n: (d, pads.get(n, 0)) for n, d in kw["metadata_seq_dims"].items()}
    return dict(tp_size=kw["tp_size"], loss_mask=kw.get("loss_mask"),
                padding_token_id=kw["padding_token_id"], metadata=meta, mode=kw["mode"])


def describe(batch, cp, kw):
    parts = ["cp=%d" % cp] + ["%s=%r" % (k, v) for k, v in kw.items() if k != "loss_mask"]
    if "loss_mask" in kw:
        parts.append("loss_mask(kw)=%s%s" % (kw["loss_mask"].dtype, kw["loss_mask"].shape))
    parts += ["%s:%s%s" % (n, a.dtype, a.shape) for n, a in batch.items()]
    return " ".join(parts)


def property_test():
    rng = np.random.default_rng(SEED)
    ok_batches = 0
    coverage = set()
    for i in range(N_BATCHES):
        batch, cp, kw = random_case(rng)
        coverage.update(batch)
        coverage.add("cp%d" % cp)
        coverage.add(kw["mode"])
        before = {k: v.copy() for k, v in batch.items()}
        reason = ""
        try:
            ref_kw = reference_kwargs(kw)
            want = [reference.shard(batch, cp, r, **ref_kw) for r in range(cp)]
            for r in range(cp):
                got = cpdl.shard_batch(batch, cp, r, **kw)
                reason = compare(got, want[r], "shard_batch rank %d" % r)
                if reason:
                    break
            if not reason:
                every = cpdl.shard_batch_all(batch, cp, **kw)
                if len(every) != cp:
                    reason = "shard_batch_all returned %d dicts for cp=%d" % (len(every), cp)
                for r in range(len(every)):
                    reason = reason or compare(every[r], want[r], "shard_batch_all rank %d" % r)
            if not reason:
                for k, v in before.items():
                    if not np.array_equal(batch[k], v, equal_nan=v.dtype.kind == "f"):
                        reason = "input field %s was modified" % k
        except Exception:  # noqa: BLE001 — any exception is a failed case
            reason = traceback.format_exc(limit=3)
        if reason:
            if testutil.failed < 15:
                print("batch %d: %s\n  %s" % (i, describe(batch, cp, kw), reason))
            report(False, "batch %d" % i)
        else:
            ok_batches += 1
            report(True, "batch %d" % i)
    print("random batches: %d of %d passed (seed %d)" % (ok_batches, N_BATCHES, SEED))
    for branch in ("input_ids", "inputs_embeds", "attention_mask", "padding_mask",
                   "position_ids", "labels", "loss_mask", "_packed_seq_ids",
                   "mm_token_type_ids", "per_layer_inputs", "token_weights", "vision_pos",
                   "seq_first", "pixel_values", "token_flags",
                   *["cp%d" % c for c in CP_SIZES], *MODES):
        report(branch in coverage, "coverage", "branch %s never generated" % branch)


# ---- explicit tests ---------------------------------------------------------

def small_batch(B=2, S=5):
    rng = np.random.default_rng(7)
    return {"input_ids": rng.integers(0, 100, size=(B, S)).astype(np.int64),
            "labels": rng.integers(0, 100, size=(B, S)).astype(np.int64),
            "attention_mask": np.ones((B, S), dtype=np.int64),
            "pixel_values": rng.standard_normal((1, 3, 2, 2)).astype(np.float32)}


def expect_error(what, fn, code_name, mentions=()):
    try:
        fn()
    except cpdl.Error as exc:
        msg_ok = bool(exc.message) and all(m in exc.message for m in mentions)
        report(exc.name == code_name and msg_ok and isinstance(exc, RuntimeError)
               and exc.code < 0 and exc.message in str(exc), what,
               "got %s %r, expected %s mentioning %s" % (exc.name, exc.message, code_name,
                                                         mentions))
        return
    except Exception as exc:  # noqa: BLE001
        report(False, what, "raised %r instead of cpdl.Error" % exc)
        return
    report(False, what, "no error raised")


def test_errors():
    b = small_batch()
    del b["input_ids"]
    expect_error("neither primary", lambda: cpdl.shard_batch(b, 2, 0), "CPDL_EFIELD")
    b = small_batch()
    b["inputs_embeds"] = np.zeros((2, 5, 3), np.float32)
    expect_error("both primaries", lambda: cpdl.shard_batch(b, 2, 0), "CPDL_EFIELD")
    b = small_batch()
    del b["labels"]
    expect_error("no labels, no loss_mask", lambda: cpdl.shard_batch(b, 2, 0), "CPDL_EFIELD",
                 ("labels",))
    b = small_batch()
    b["labels"] = np.zeros((2, 6), np.int64)
    expect_error("labels seq len disagrees", lambda: cpdl.shard_batch(b, 2, 0), "CPDL_EFIELD",
                 ("labels",))
    b = small_batch()
    b["labels"] = np.zeros((3, 5), np.int64)
    expect_error("labels batch size disagrees", lambda: cpdl.shard_batch(b, 2, 0),
                 "CPDL_EFIELD", ("labels",))
    b = small_batch()
    b["position_ids"] = np.zeros((2, 4), np.int64)
    expect_error("position_ids seq len disagrees", lambda: cpdl.shard_batch_all(b, 3),
                 "CPDL_EFIELD", ("position_ids",))
    b = small_batch()
    b["mm_token_type_ids"] = np.zeros((2, 7), np.int64)
    expect_error("mm_token_type_ids disagrees", lambda: cpdl.shard_batch(b, 1, 0),
                 "CPDL_EFIELD", ("mm_token_type_ids",))
    expect_error("cp_size 0", lambda: cpdl.shard_batch(small_batch(), 0, 0), "CPDL_EARG")
    expect_error("cp_rank out of range", lambda: cpdl.shard_batch(small_batch(), 2, 2),
                 "CPDL_EARG")
    expect_error("unknown mode", lambda: cpdl.shard_batch(small_batch(), 2, 0, mode="zigzag"),
                 "CPDL_EARG", ("zigzag",))
    # Python-side argument errors stay Python errors.
    try:
        cpdl.shard_batch({"input_ids": np.zeros((1, 2), np.int16),
                          "labels": np.zeros((1, 2), np.int64)}, 1, 0)
        report(False, "int16 rejected", "no error")
    except TypeError as exc:
        report("input_ids" in str(exc), "int16 rejected", str(exc))
    b = small_batch()
    try:
        cpdl.shard_batch(dict(b, loss_mask=np.ones((2, 5))), 1, 0, loss_mask=np.ones((2, 5)))
        report(False, "loss_mask twice", "no error")
    except ValueError:
        report(True, "loss_mask twice")
    report(cpdl.strerror(_ffi.EFIELD) == "batch field missing, duplicated or inconsistent",
           "strerror", cpdl.strerror(_ffi.EFIELD))
    report(cpdl.__version__ == cmake_version(), "__version__ is CMakeLists.txt's project(VERSION)",
           "%s vs %s" % (cpdl.__version__, cmake_version()))
    report(issubclass(cpdl.Error, RuntimeError), "Error is a RuntimeError")


def test_input_unchanged():
    b = small_batch(3, 7)
    b["attention_mask"][1, 5:] = 0
    b["position_ids"] = np.arange(7, dtype=np.int32)[None, :]
    keep = copy.deepcopy(b)
    ids = {k: id(v) for k, v in b.items()}
    lm = np.ones((3, 7), np.float32)
    lm_keep = lm.copy()
    cpdl.shard_batch(b, 2, 1, loss_mask=lm)
    cpdl.shard_batch_all(b, 3, loss_mask=lm, mode="round_robin")
    same = (set(b) == set(keep) and all(id(b[k]) == ids[k] for k in b)
            and all(np.array_equal(b[k], keep[k]) and b[k].dtype == keep[k].dtype
                    and b[k].shape == keep[k].shape for k in b)
            and np.array_equal(lm, lm_keep))
    report(same, "input dict unchanged")


def test_one_buffer():
    for mode in MODES:
        b = small_batch(2, 9)
        every = cpdl.shard_batch_all(b, 4, mode=mode)
        arrays = [a for d in every for a in d.values()]
        bases = {id(a.base) for a in arrays}
        report(len(bases) == 1, "one buffer (%s)" % mode, "%d distinct bases" % len(bases))
        report(not any(a.flags.owndata for a in arrays), "no array owns data (%s)" % mode)
        base = arrays[0].base
        report(all(np.shares_memory(a, base) for a in arrays if a.size),
               "arrays share the buffer (%s)" % mode)
        shared = ["pixel_values"] + (["input_ids"] if mode == "aux_only" else [])
        for name in shared:
            report(all(d[name] is every[0][name] for d in every),
                   "%s is one object for every rank (%s)" % (name, mode))
            report(not every[0][name].flags.writeable, "%s read-only (%s)" % (name, mode))
        # Rank blocks are distinct memory: labels of rank 0 and 1 don't overlap.
        report(not np.shares_memory(every[0]["labels"], every[1]["labels"]),
               "rank blocks disjoint (%s)" % mode)
        # 64-byte alignment of every field (the plan's offsets are 64-aligned).
        report(all(a.ctypes.data % 64 == 0 for a in arrays), "fields 64-byte aligned (%s)" % mode)


def test_bfloat16():
    rng = np.random.default_rng(3)
    bits = rng.integers(0, 2**16, size=(2, 5, 3)).astype(np.uint16)
    b = {"inputs_embeds": bits, "labels": np.zeros((2, 5), np.int64)}
    for r in range(2):
        got = cpdl.shard_batch(b, 2, r, dtypes={"inputs_embeds": "bfloat16"})
        want = reference.shard(b, 2, r)  # uint16 bits, padded with 0 bits = +0.0
        reason = compare(got, want, "bfloat16 rank %d" % r)
        report(not reason, "bfloat16 via dtypes", reason)
    try:
        cpdl.shard_batch(b, 2, 0, dtypes={"inputs_embeds": "float32"})
        report(False, "dtypes size mismatch", "no error")
    except ValueError:
        report(True, "dtypes size mismatch")


def test_import_error():
    env = dict(os.environ, CPDL_LIBRARY="/nonexistent/libcpdl.so",
               PYTHONPATH=os.path.dirname(os.path.dirname(cpdl.__file__)))
    proc = subprocess.run([sys.executable, "-c", "import cpdl"], env=env,
                          capture_output=True, text=True, timeout=60)
    err = proc.stderr
    report(proc.returncode != 0 and "ImportError" in err and "/nonexistent/libcpdl.so" in err
           and "scripts/test" in err and "CPDL_LIBRARY" in err, "clear ImportError", err[-400:])


def cmake_version():
    """project(cpdl VERSION x.y.z) of the repository's CMakeLists.txt."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(cpdl.__file__))))
    with open(os.path.join(root, "CMakeLists.txt")) as f:
        return re.search(r"project\(\s*cpdl\s+VERSION\s+([0-9.]+)", f.read()).group(1)


# _ffi's copies of the headers' constants, checked against the C compiler.
CONSTANTS = {"CPDL_MAX_DIMS": _ffi.CPDL_MAX_DIMS, "CPDL_MAX_FIELDS": _ffi.CPDL_MAX_FIELDS,
             "CPDL_NAME_MAX": _ffi.CPDL_NAME_MAX, "CPDL_SOURCE_MAX": _ffi.CPDL_SOURCE_MAX,
             "CPDL_STATE_VERSION": _ffi.CPDL_STATE_VERSION, "CPDL_OOB_OK": _ffi.OOB_OK,
             "CPDL_OOB_INPROGRESS": _ffi.OOB_INPROGRESS,
             "CPDL_ERRNO_FIRST": _ffi.ERRNO_FIRST, "CPDL_ERRNO_LAST": _ffi.ERRNO_LAST}
CONSTANTS.update({"CPDL_DTYPE_" + n: getattr(_ffi, "DTYPE_" + n) for n in (
    "BOOL", "UINT8", "INT32", "INT64", "FLOAT16", "BFLOAT16", "FLOAT32", "FLOAT64", "COUNT")})


def test_abi():
    """ctypes Structures match the C compiler's sizes and offsets; _ffi's
    constants its values; the error codes _ffi read from the library are
    exactly the header's CPDL_ERRNO_MAP."""
    include = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(cpdl.__file__))),
                           "include")
    structs = _ffi.STRUCTS  # every mirror: the prep layer's and the loader's
    lines = ['#include <stdio.h>', '#include <stddef.h>', '#include "cpdl.h"',
             '#include "cpdl/tools.h"', 'int main(void) {']
    for cname, py in structs.items():
        lines.append('printf("%s %%zu\\n", sizeof(%s));' % (cname, cname))
        for fname, _ in py._fields_:
            lines.append('printf("%s.%s %%zu\\n", offsetof(%s, %s));'
                         % (cname, fname, cname, fname))
    for name in CONSTANTS:
        lines.append('printf("%s %%d\\n", (int)%s);' % (name, name))
    lines.append('#define ERR(name, value, text) printf("error.CPDL_" #name " %d\\n", value);')
    lines.append('CPDL_ERRNO_MAP(ERR)')
    lines.append('return 0; }')
    mpicc = "mpicc"
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "abi.c")
        exe = os.path.join(tmp, "abi")
        with open(src, "w") as f:
            f.write("\n".join(lines))
        try:
            subprocess.run([mpicc] + testutil.include_flags(include) + [src, "-o", exe], check=True,
                           capture_output=True, timeout=120)
            out = subprocess.run([exe], check=True, capture_output=True, text=True).stdout
        except (OSError, subprocess.CalledProcessError) as exc:
            print("skip ABI check: cannot compile (%s)" % exc)
            return
    c_values = dict(line.split() for line in out.splitlines())
    for cname, py in structs.items():
        report(int(c_values[cname]) == __import__("ctypes").sizeof(py), "sizeof %s" % cname,
               "C %s vs ctypes %d" % (c_values[cname], __import__("ctypes").sizeof(py)))
        for fname, _ in py._fields_:
            c_off = int(c_values["%s.%s" % (cname, fname)])
            report(c_off == getattr(py, fname).offset, "offsetof %s.%s" % (cname, fname),
                   "C %d vs ctypes %d" % (c_off, getattr(py, fname).offset))
    for name, value in CONSTANTS.items():
        report(int(c_values[name]) == value, name, "C %s vs _ffi %d" % (c_values[name], value))
    header = {k[len("error.CPDL_"):]: int(v) for k, v in c_values.items()
              if k.startswith("error.")}
    report(header and _ffi.error_codes() == header, "error codes from the library",
           "library %s vs header %s" % (_ffi.error_codes(), header))
    report(_ffi.EEOF == header.get("EEOF") and cpdl.Error(_ffi.EEOF).name == "CPDL_EEOF",
           "_ffi.EEOF")
    try:
        _ffi.ENOSUCHCODE
        report(False, "unknown error constant", "no AttributeError")
    except AttributeError as exc:
        report("CPDL_ENOSUCHCODE" in str(exc) and "rebuild" in str(exc),
               "unknown error constant", str(exc))


def main():
    print("prep library: %s" % _ffi.prep().path)
    return testutil.run((test_abi, test_errors, test_input_unchanged, test_one_buffer,
                         test_bfloat16, test_import_error, property_test))


if __name__ == "__main__":
    sys.exit(main())
