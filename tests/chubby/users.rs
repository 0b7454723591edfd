//! A mount's per-user sessions: an idle user's session is closed and nothing of it is kept.

use super::*;

/// A mount keeps nothing for a user whose idle session it closed: a long-running mount that
/// many users pass through does not grow by one entry per user.
#[test]
fn a_mount_forgets_users_whose_idle_sessions_it_closed() {
    let cell = TestCell::start(CellOptions::default());
    let rt = runtime();
    rt.block_on(wait_converged(&cell.client(Duration::from_secs(5)), 0, Duration::from_secs(30))).unwrap();
    let mounted = rt
        .block_on(fuse_mount::fs::MountedCell::open(
            "local".into(),
            cell.addrs.clone(),
            opts(),
            Some(Duration::from_millis(300)),
        ))
        .expect("the mount's own session opens");
    for uid in 60_000..60_020 {
        rt.block_on(mounted.session(uid)).expect("a user's session opens");
    }
    assert_eq!(mounted.users_tracked().0, 21, "the mount's own user and 20 others");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut tracked = mounted.users_tracked();
    while tracked.0 > 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        tracked = mounted.users_tracked();
    }
    // The idle check runs every 100 ms; one more pass is enough for what goes with a session.
    std::thread::sleep(Duration::from_millis(300));
    let (sessions, used, gates) = mounted.users_tracked();
    assert_eq!(sessions, 1, "only the mount's own user keeps a session");
    assert!(used <= 1 && gates <= 1, "{used} use times and {gates} gates kept for users without a session");
    rt.block_on(mounted.close());
}
