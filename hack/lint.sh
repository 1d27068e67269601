#!/usr/bin/env bash
# Lint: clang-format must leave every C file unchanged; cppcheck must find nothing.
# (varFuncNullUB is off: glibc defines NULL as ((void *)0), and kw_log checks its NULL
# sentinel with __attribute__((sentinel)).)
#   hack/lint.sh          check
#   hack/lint.sh --fix    rewrite files with clang-format
set -euo pipefail
cd "$(dirname "$0")/.."
mapfile -t files < <(git ls-files --cached --others --exclude-standard '*.c' '*.h' 2>/dev/null || find common dataplane controller tests -name '*.[ch]')
fail=0
if [ "${1:-}" = "--fix" ]; then
    clang-format -i "${files[@]}"
    exit 0
fi
for f in "${files[@]}"; do
    if ! diff -q <(clang-format "$f") "$f" >/dev/null; then
        echo "lint: $f is not clang-formatted (run hack/lint.sh --fix)"
        fail=1
    fi
done
if command -v cppcheck >/dev/null; then
    if ! cppcheck --quiet --error-exitcode=1 --std=c11 --enable=warning,portability \
        --inline-suppr --suppress=missingIncludeSystem \
        --suppress=varFuncNullUB \
        -I common/include -I common/src "${files[@]}"; then
        fail=1
    fi
fi
python3 hack/docs-check.py || fail=1 # KW_BUILD: the data plane its probes run (else build/)
[ $fail -eq 0 ] && echo "lint: ${#files[@]} files clean"
exit $fail
