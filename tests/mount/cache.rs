//! The kernel's cache of a mount stays linearizable across another client's writes.

use super::*;

/// Reads through the mount are linearizable although the kernel caches attributes, entries and
/// pages: while another client writes a node 100 times, every read on the mount (`stat` and a
/// whole read) sees a value at least as new as the last write completed before it began,
/// whole (never cut to an older size), and stat's size matches a value of that age too.
#[test]
fn reads_through_the_kernel_cache_stay_linearizable_across_another_clients_writes() {
    if !fuse_available("reads_through_the_kernel_cache_stay_linearizable_across_another_clients_writes") {
        return;
    }
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let cell = TestCell::start(CellOptions::default());
    let m = Mount::start(&cell, &[]);
    let value = |i: u64| format!("{i}:{}", "#".repeat((i % 13) as usize));

    // First in lockstep: the kernel keeps the node's attributes (fstat of an open file is
    // answered without the daemon; a stat by path asks the daemon for the name, which answers
    // from the session's cache), another client writes, and the very next fstat and stat
    // already have the new size.
    fs::write(m.path("counter"), value(0)).expect("write");
    let open = fs::File::open(m.path("counter")).expect("open");
    for i in 1..=12u64 {
        assert_eq!(fs::read_to_string(m.path("counter")).expect("read"), value(i - 1));
        for _ in 0..3 {
            assert_eq!(open.metadata().expect("fstat").len(), value(i - 1).len() as u64);
        }
        let put = chubby(&cell, &["put", "/ls/local/counter", &value(i)]);
        assert!(put.status.success(), "{put:?}");
        assert_eq!(open.metadata().expect("fstat").len(), value(i).len() as u64, "fstat after write {i}");
        assert_eq!(fs::metadata(m.path("counter")).expect("stat").len(), value(i).len() as u64, "stat after write {i}");
    }
    drop(open);

    // Then a writer that does not wait for the readers.
    fs::write(m.path("counter"), value(0)).expect("write");
    let completed = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (addrs, completed, done) = (cell.addrs.clone(), completed.clone(), done.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async {
                let opts = fuse_mount::client::SessionOptions { cache: false, ..Default::default() };
                let s = fuse_mount::client::Session::open(addrs, opts).await.expect("session");
                let (h, _) = s.open_node("/ls/local/counter", Default::default()).await.expect("open");
                // Paced so that the mount's session caches the node between writes (a read while
                // a write is pending is not cacheable) and the kernel gets to keep attributes.
                for i in 1..=100u64 {
                    s.set(&h, value(i).into(), None, "").await.expect("set");
                    completed.store(i, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(15)).await;
                }
                let _ = s.close().await;
            });
            done.store(true, Ordering::SeqCst);
        })
    };
    let parse = |text: &str| -> u64 {
        let (n, hashes) = text.split_once(':').unwrap_or_else(|| panic!("a torn read: {text:?}"));
        let n: u64 = n.parse().unwrap_or_else(|_| panic!("a torn read: {text:?}"));
        assert_eq!(hashes.len() as u64, n % 13, "a read cut to another size: {text:?}");
        n
    };
    let (mut reads, mut stale_free) = (0u64, true);
    while !done.load(Ordering::SeqCst) {
        let floor = completed.load(Ordering::SeqCst);
        // stat (answered by the kernel's attribute cache when it may) gives the size of a value
        // written no earlier than the floor and no later than the write in flight after it.
        // (A read makes the kernel ask for the atime again, so the first stat after one
        // reaches the daemon; the next ones are the kernel's own answers while it may keep
        // them. Most rounds only stat.)
        for _ in 0..2 {
            let size = fs::metadata(m.path("counter")).expect("stat").len();
            let ceiling = completed.load(Ordering::SeqCst) + 1;
            assert!(
                (floor..=ceiling.min(100)).any(|i| value(i).len() as u64 == size),
                "stat size {size} is none of writes {floor}..={ceiling}"
            );
        }
        reads += 1;
        if reads % 8 == 0 {
            let got = parse(&fs::read_to_string(m.path("counter")).expect("read"));
            stale_free &= got >= floor;
            assert!(got >= floor, "read {got} after write {floor} had completed");
        }
    }
    writer.join().expect("writer");
    assert!(stale_free && reads > 100, "{reads} rounds checked");
    assert_eq!(parse(&fs::read_to_string(m.path("counter")).expect("read")), 100);
}
