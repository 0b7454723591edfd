//! A backup's state made the first state of a new cell.

use super::properties::check_invariants;
use super::transcripts::Driver;
use crate::state::*;

/// Sessions are not restored: their locks are free at once (no lock-delay: nobody of the old
/// cell can hold them in the new one), their queued acquires and ephemeral nodes are gone,
/// and the handle key is dropped. Files, contents, ACLs and generation numbers stay, and a
/// new session of the new cell goes on from them.
#[test]
fn a_restored_state_keeps_the_namespace_and_drops_the_sessions() {
    let mut d = Driver::new();
    for line in [
        "session a",
        "session b",
        "open a /dir create dir",
        "open a /dir/f create",
        "set a /dir/f hello",
        "set a /dir/f world",
        "acl a /dir/f r=a,b w=a a=a",
        "open a /lock create",
        "acquire a /lock x delay=60000",
        "open b /lock",
        "acquire b /lock x",
        "open b /eph create ephemeral",
        // A holder lost before the backup: its lock-delay still runs.
        "session d",
        "open d /dlock create",
        "acquire d /dlock x delay=60000",
        "expire d",
    ] {
        d.command(line);
    }
    let before = d.state.node("/dir/f").unwrap().clone();
    let lock_generation = d.state.node("/lock").unwrap().stat.lock_generation;
    let s = d.state.summary();
    assert_eq!((s.sessions, s.locks_held, s.ephemeral_nodes), (2, 1, 1));
    assert_eq!((s.nodes, s.directories, s.content_bytes), (6, 2, 5));
    assert_eq!(d.state.lock_delays().count(), 1);

    let restored = CellState::restore(&d.state.snapshot()).unwrap().into_new_cell();
    check_invariants(&restored).unwrap();
    assert_eq!(restored.sessions().count(), 0);
    assert!(restored.key().is_empty(), "the new cell's first master makes a new key");
    let f = restored.node("/dir/f").unwrap();
    assert_eq!((&f.contents, &f.acl, &f.stat), (&before.contents, &before.acl, &before.stat));
    assert!(restored.node("/eph").is_none(), "ephemeral nodes go with their sessions");
    let lock = &restored.node("/lock").unwrap().lock;
    assert!(lock.holders.is_empty() && lock.waiters.is_empty());
    assert_eq!(lock.delay_until_ms, 0, "no lock-delay");
    assert_eq!(restored.node("/dlock").unwrap().lock.delay_until_ms, 0, "the lost holder's lock-delay ended");
    assert_eq!(restored.lock_delays().count(), 0);
    assert_eq!(restored.summary(), Summary { nodes: 5, directories: 2, content_bytes: 5, ..Summary::default() });

    // The new cell goes on: its master's first entry sets a key, a new session takes the lock
    // at once, and generations continue from the backup's.
    let mut d = Driver::new();
    d.state = restored;
    let init = Command {
        now_ms: 0,
        request: None,
        op: Op::InitCell { key: bytes::Bytes::from_static(&[2; 32]), limits: Limits::default() },
    };
    let next = d.state.applied() + 1;
    d.state.apply(next, &encode(&init)).unwrap();
    for (line, want) in [
        ("session c", ""),
        ("open c /lock", ""),
        ("acquire c /lock x try", "granted"),
        ("open c /dlock", ""),
        ("acquire c /dlock x try", "granted"),
    ] {
        let got = d.command(line);
        assert!(got.contains(want), "{line}: {got}");
    }
    // A session id the old cell may have given out after the backup is never the new one's.
    assert!(d.state.sessions().all(|(id, _)| *id > 1 << 40), "session ids go on from far past the backup's");
    assert_eq!(d.state.key(), &[2; 32]);
    assert!(d.state.node("/lock").unwrap().stat.lock_generation > lock_generation);
}
