#!/bin/sh
# Usage: expect_job_failure.sh EXPECTED_TEXT COMMAND...
# Passes when COMMAND (an mpirun job in which one rank fails) ends within 60 s
# with a non-zero status and its output contains EXPECTED_TEXT. A job that
# hangs (timeout's status 124) or succeeds fails the test.
expected=$1
shift
log=$(mktemp)
timeout 60 "$@" >"$log" 2>&1
rc=$?
cat "$log"
echo "exit status $rc"
ok=0
if [ "$rc" -eq 0 ] || [ "$rc" -eq 124 ]; then
  echo "FAIL: expected the job to end with a failure status (124 means it hung)"
  ok=1
elif ! grep -q -- "$expected" "$log"; then
  echo "FAIL: the output does not contain: $expected"
  ok=1
fi
rm -f "$log"
exit $ok
