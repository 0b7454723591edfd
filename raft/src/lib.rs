//! The Raft consensus core.
