//! End-to-end tests of the cell (real processes, real mounts, faults) live here, beside the
//! helpers they share. The Raft core's own proof (simulation and scenario transcripts) lives in
//! `raft/tests/`.
