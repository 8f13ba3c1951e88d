# Sourced by test.sh and demo.sh, so both configure build/ alike and share it.
# -g1 (line tables, which is what backtraces and sanitizer reports use) rather than -g: full
# debug info at -O2 costs gcc variable tracking on every function, a large share of build time.
sluice_build_flags=(-DCMAKE_BUILD_TYPE=RelWithDebInfo "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O2 -g1 -DNDEBUG")
# ASan+UBSan into build-asan/: -O1, ASan's recommended level, fast enough to run and much
# cheaper to compile than -O2.
sluice_sanitize_flags=(-DCMAKE_BUILD_TYPE=RelWithDebInfo "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g1 -DNDEBUG"
  -DSLUICE_SANITIZE=ON -DSLUICE_BUILD_BENCH=OFF)
