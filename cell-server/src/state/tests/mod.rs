//! Tests of the state machine: [`transcripts`] of `apply`, a [`properties`] test over random
//! logs and snapshots, and the snapshot [`formats`].

mod formats;
mod properties;
mod restore;
mod transcripts;
