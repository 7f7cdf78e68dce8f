#!/bin/sh
# no_external_refs.sh — the tree explains itself: no tracked file cites the
# original brief that lived outside the repository (its design, reliability
# and style files, or a path into a sibling "shared" directory). Cite the
# in-tree documents instead: docs/design.md#<section>, docs/reliability.md
# (R-numbers).
#
# usage: no_external_refs.sh SOURCE_DIR [EXCLUDED_PATHSPEC...]
#   e.g. no_external_refs.sh . ':!include/'   (extra arguments are git pathspecs)
# Exit 77 (SKIPPED) when SOURCE_DIR is not a git checkout or git is missing;
# CI runs from a fresh clone, where the check is real.
set -u
src=${1:?usage: no_external_refs.sh SOURCE_DIR [EXCLUDED_PATHSPEC...]}
shift
. "$(dirname "$0")/require_git.sh"
# Bracketed dots keep this file from matching its own patterns.
hits=$(git -C "$src" grep -n -I \
  -e 'DESIGN[.]md' -e 'RELIABILITY[.]md' -e 'STYLE[.]md' -e '[.][.]/shared' \
  -- . "$@")
status=$?
if [ "$status" -gt 1 ]; then
  echo "FAIL: git grep failed (exit $status) in $src"
  exit 1
fi
if [ -n "$hits" ]; then
  echo "FAIL: these tracked lines cite documents outside the repository:"
  echo "$hits"
  echo "fix: cite docs/design.md#<section> or docs/reliability.md (R-number) instead"
  exit 1
fi
echo "ok: no tracked file cites a document outside the repository"
