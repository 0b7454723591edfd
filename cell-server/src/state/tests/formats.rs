//! Snapshot formats: one written by an earlier format is read into today's state, one of a
//! format this build does not know is refused.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::properties::check_invariants;
use super::transcripts::Driver;
use crate::state::*;

/// A snapshot of format 1, written by the cell-server of before handles had ids (from
/// sessions a and b: a holds /e open twice and the lock on /d/f; b, which had /e open and held
/// the lock on the ephemeral /gone with a 9 s lock-delay, expired at log time 1000), is read
/// whole: a's two handles get ids, b's are gone, /gone's lock-delay belongs to the name.
#[test]
fn a_format_1_snapshot_is_read_into_todays_state() {
    let data = std::fs::read(format!("{}/src/state/testdata/format1.snapshot", env!("CARGO_MANIFEST_DIR"))).unwrap();
    assert!(!data.starts_with(SNAPSHOT_MAGIC), "the fixture is of format 1");
    let state = CellState::restore(&data).expect("a format-1 snapshot restores");
    check_invariants(&state).unwrap();
    let a = state.session(1).expect("session a");
    assert_eq!(a.ephemeral_handles, BTreeMap::from([(1, "/e".to_string()), (2, "/e".to_string())]));
    assert!(state.session(2).is_none(), "b expired");
    assert_eq!(state.node("/e").unwrap().openers, BTreeMap::from([(1, 2)]));
    assert_eq!(state.name_delays.get("/gone"), Some(&10_000));
    assert_eq!(a.replies.len(), 1, "a's last answer");
    assert_eq!(a.replies.values().next().unwrap().at_ms, 2000);
    assert_eq!(state.node("/d/f").unwrap().contents, Bytes::from_static(b"world"));

    // It goes on as a cell of today: the two handles close one at a time (twice is once),
    // a node made at /gone inherits its lock-delay, and the snapshot it writes is of today.
    let mut d = Driver::new();
    d.state = state;
    d.ids.insert("a".into(), 1);
    d.names.insert(1, "a".into());
    d.next_seq.insert(1, 100);
    let lines = [
        ("close a /e handle=1", "ok\n"),
        ("close a /e handle=1", "ok\n"),
        ("close a /e handle=2", "ok\n  -> Deleted /e\n"),
        ("open a /gone create", "opened instance=5 rights=rwa created\n  -> Created /gone\n"),
        ("lock /gone", "mode=- holders=[] queue=[] generation=0 delay=60000 unavailable-until=10000\n"),
    ];
    for (line, want) in lines {
        assert_eq!(d.command(line), want, "{line}");
    }
    let again = CellState::restore(&d.state.snapshot()).unwrap();
    assert_eq!(again.snapshot(), d.state.snapshot());
    assert!(d.state.snapshot().starts_with(SNAPSHOT_MAGIC));
}

/// A snapshot of a format this build does not know is refused with a clear error.
#[test]
fn a_snapshot_of_a_later_format_is_refused() {
    let mut data = CellState::default().snapshot().to_vec();
    data[SNAPSHOT_MAGIC.len()] = 9;
    let err = CellState::restore(&data).unwrap_err();
    assert!(err.contains("format 9"), "{err}");
}
