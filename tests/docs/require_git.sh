# require_git.sh — sourced by the tests/docs checks, which read git's tracked
# files: exits 77 (SKIPPED) unless git is installed and $src is a git
# checkout. CI runs from a fresh clone, where the checks are real.
if ! command -v git >/dev/null 2>&1; then
  echo "SKIPPED: git is not installed, so the tracked files cannot be listed"
  exit 77
fi
if ! git -C "$src" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  echo "SKIPPED: $src is not a git checkout (the check reads git's tracked files)"
  exit 77
fi
