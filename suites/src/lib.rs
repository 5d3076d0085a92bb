//! fusegate's test suites live in `tests/`: `conformance` is the trial list of
//! `fusegate_harness::conform` under libtest-mimic, one trial per (backend, entry, case).
