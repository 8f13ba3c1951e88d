#!/bin/sh
# doctest_discover_tests registers one ctest test per TEST_CASE, and CMake splits a name at ';'.
# Each half then selects no test case, and doctest passes when it runs nothing: a test case
# whose name holds ';' silently never runs. Fails listing such names.
found=$(grep -rn 'TEST_CASE("[^"]*;' "$1" --include='*.cpp')
if [ -n "$found" ]; then
  echo "test case names with ';' (ctest would run nothing for them):"
  echo "$found"
  exit 1
fi
echo "no test case name holds ';'"
