#!/bin/sh
# nm_check.sh — the shared library never calls exit/abort (it returns errors
# and the caller decides: docs/design.md#the-failure-model) and uses no
# process-shared condition variables (a waiter killed inside
# pthread_cond_wait can wedge every later broadcast:
# docs/design.md#the-ring-protocol). Checks the undefined dynamic symbols.
#
# usage: nm_check.sh LIBCPDL_SO
set -u
lib=$1
syms=$(nm -D -u "$lib") || { echo "FAIL: nm -D -u $lib failed"; exit 1; }
count=$(printf '%s\n' "$syms" | grep -c .)
echo "$lib: $count undefined dynamic symbols"
[ "$count" -gt 10 ] || { echo "FAIL: implausibly few symbols: $syms"; exit 1; }
bad=$(printf '%s\n' "$syms" | awk '{print $NF}' | sed 's/@.*//' |
      grep -E '^(pthread_cond_[a-z_]+|exit|_exit|_Exit|abort|quick_exit)$' || true)
if [ -n "$bad" ]; then
  echo "FAIL: libcpdl imports forbidden symbols:"; echo "$bad"; exit 1
fi
echo "nm check: PASS (no pthread_cond_*, exit, _exit, _Exit, quick_exit or abort)"
