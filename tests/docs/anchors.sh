#!/bin/sh
# anchors.sh — every citation of an in-tree document's section,
# "docs/<name>.md#<anchor>", names a heading that exists in that document
# (anchors as GitHub makes them: lower case, punctuation dropped, spaces to
# hyphens). A renamed heading then fails here instead of leaving dead links.
#
# usage: anchors.sh SOURCE_DIR
# Exit 77 (SKIPPED) when SOURCE_DIR is not a git checkout or git is missing.
set -u
src=${1:?usage: anchors.sh SOURCE_DIR}
. "$(dirname "$0")/require_git.sh"
export LC_ALL=C
# The anchors of one markdown file's headings, one a line.
anchors_of() {
  grep -E '^#{1,6} ' "$1" | sed -e 's/^#* *//' | tr 'A-Z' 'a-z' \
    | sed -e 's/[^a-z0-9 _-]//g' -e 's/ /-/g'
}
cites=$(git -C "$src" grep -h -o -I -E 'docs/[a-z0-9_-]+[.]md#[a-z0-9_-]+' -- . | sort -u)
bad=0
n=0
for cite in $cites; do
  n=$((n + 1))
  file=${cite%%#*}
  anchor=${cite#*#}
  if [ ! -f "$src/$file" ]; then
    echo "FAIL: $cite: $file does not exist"
    bad=1
  elif ! anchors_of "$src/$file" | grep -qx -- "$anchor"; then
    echo "FAIL: $cite: no heading of $file has the anchor '$anchor'; its anchors are:"
    anchors_of "$src/$file" | sed 's/^/  #/'
    bad=1
  fi
done
if [ "$bad" -ne 0 ]; then
  echo "fix: cite an existing heading, or restore the heading the citation names"
  exit 1
fi
echo "ok: $n section citations, each names an existing heading"
