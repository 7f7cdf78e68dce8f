"""cpdl.fields — the field vocabulary (include/cpdl/fields.h), read from the
library: every batch field name cpdl gives a meaning to, its role and the
dtype cpdl's loader produces it in. Nothing here spells a field name: the
table comes from cpdl_field_info() of the MPI-free prep library, loaded on
first use (importing this module loads nothing).

    from cpdl import fields
    fields.LOSS_MASK            # "loss_mask"
    fields.info("loss_mask")    # Field(name='loss_mask', role='loss_mask', dtype='float32')
    fields.names(role="documents")

A constant's name is the C enum's without its CPDL_FIELD_ prefix
(CPDL_FIELD_PACKED_SEQ_IDS -> fields.PACKED_SEQ_IDS == "_packed_seq_ids").
dtype is None where cpdl passes on the caller's dtype.
"""
import collections
import threading

from . import _ffi

Field = collections.namedtuple("Field", "name role dtype")

_lock = threading.Lock()
_table = None


def _constant_name(name):
    return name.lstrip("_").upper()


def table():
    """Every entry of the vocabulary, in cpdl_field_id_t order (a tuple of Field)."""
    global _table
    if _table is None:
        with _lock:
            if _table is None:
                lib = _ffi.prep()
                out, i = [], 0
                while True:
                    p = lib.cpdl_field_info(i)
                    if not p:  # past CPDL_FIELD_COUNT
                        break
                    e = p.contents
                    dtype = None if e.dtype >= _ffi.DTYPE_COUNT else \
                        lib.cpdl_dtype_name(e.dtype).decode()
                    out.append(Field(e.name.decode(), lib.cpdl_field_role_name(e.role).decode(),
                                     dtype))
                    i += 1
                # The constants become plain attributes once the table is read.
                globals().update({_constant_name(f.name): f.name for f in out})
                _table = tuple(out)
    return _table


def info(name):
    """The Field called `name`, or None for a name cpdl passes through as it is."""
    for f in table():
        if f.name == name:
            return f
    return None


def names(role=None):
    """The names of the vocabulary, in order; only those of `role` if given
    ("primary", "labels", "loss_mask", "position", "mask", "sequence", "documents")."""
    return tuple(f.name for f in table() if role is None or f.role == role)


def __getattr__(attr):
    if attr.startswith("__"):  # introspection (copy, pickle, doctest) loads no library
        raise AttributeError(attr)
    for f in table():
        if _constant_name(f.name) == attr:
            return f.name
    raise AttributeError("module 'cpdl.fields' has no attribute %r (the vocabulary: %s)"
                         % (attr, ", ".join(_constant_name(f.name) for f in table())))
