//! Renames: one atomic change in the cell, so `mv`, `sed -i` and editors' saves (a temporary
//! file renamed over the target) work on the mount, and another host sees the old contents or
//! the new, never a missing file or a half-written one.

use super::*;

fn quiet(out: &Output, what: &str) {
    assert!(out.status.success() && out.stderr.is_empty(), "{what}: {out:?}");
}

#[test]
fn mv_sed_i_and_an_editors_save_rename_files_in_one_step() {
    if !fuse_available("mv_sed_i_and_an_editors_save_rename_files_in_one_step") {
        return;
    }
    let cell = TestCell::start(CellOptions::default());
    let (a, b) = (Mount::start(&cell, &[]), Mount::start(&cell, &[]));
    fs::create_dir(a.path("etc")).expect("mkdir");
    let conf = a.path("etc/conf");
    fs::write(&conf, "port=1\n").expect("write");
    let instance = xattr(&conf, "user.chubby.instance").expect("instance");
    // The other host reads (and caches) the file before each change.
    assert_eq!(fs::read_to_string(b.path("etc/conf")).expect("read"), "port=1\n");
    // Another host watches the file: a rename over it is one change of its contents.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let client = cell.client(Duration::from_secs(5));
    let subscriptions = || {
        let all = rt.block_on(client.status_all());
        all.iter().filter_map(|(_, s)| s.as_ref().ok()).find(|s| s.role == "leader").map(|s| s.subscriptions)
    };
    let before = subscriptions();
    let mut watch = Command::new(bin("chubby"))
        .arg("--cell")
        .arg(cell.cell_arg())
        .envs(cell.client_env())
        .args(["watch", "/ls/local/etc/conf"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("chubby watch");
    let mut pids = Pids(vec![watch.id()]);
    let events = lines_of(watch.stdout.take().expect("stdout"));
    // The change must come after the watcher has subscribed, or it has nothing to see.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while subscriptions() <= before && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }

    quiet(&sh(&format!("sed -i s/port=1/port=2/ {}", conf.display())), "sed -i");
    assert_eq!(fs::read_to_string(b.path("etc/conf")).expect("read"), "port=2\n", "the other host");
    assert_eq!(xattr(&conf, "user.chubby.instance"), Some(instance.clone()), "the same node, new contents");
    let seen = events.recv_timeout(Duration::from_secs(20)).expect("an event");
    assert_eq!(seen, "modified /ls/local/etc/conf", "the watcher sees a change of contents");
    pids.kill(watch.id());
    let _ = watch.wait();
    let mut left: Vec<String> = fs::read_dir(a.path("etc"))
        .expect("ls")
        .map(|e| e.expect("entry").file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, ["conf"], "no temporary file left");

    assert_eq!(fs::read_to_string(b.path("etc/conf")).expect("read"), "port=2\n");
    // vim's default save renames the file to a backup, writes a new one and deletes the backup.
    let vim = Command::new("vim")
        .args(["-N", "-u", "NONE", "-i", "NONE", "-n", "-es"])
        .args(["-c", "set backupcopy=auto writebackup", "-c", "%s/port=2/port=3/", "-c", "wq"])
        .arg(&conf)
        .stdin(Stdio::null())
        .output()
        .expect("vim");
    assert!(vim.status.success(), "vim: {vim:?}");
    assert_eq!(fs::read_to_string(b.path("etc/conf")).expect("read"), "port=3\n");

    // `mv` to a new name, to another directory, and over a file: no warnings, and the old name
    // is gone on both hosts.
    quiet(&sh(&format!("mv {} {}", conf.display(), a.path("etc/conf.old").display())), "mv");
    assert_eq!(errno_of(fs::read(b.path("etc/conf"))), libc::ENOENT);
    assert_eq!(errno_of(fs::read(&conf)), libc::ENOENT);
    assert_eq!(fs::read_to_string(b.path("etc/conf.old")).expect("read"), "port=3\n");
    fs::create_dir(a.path("var")).expect("mkdir");
    quiet(&sh(&format!("mv {} {}", a.path("etc/conf.old").display(), a.path("var/").display())), "mv into a dir");
    fs::write(a.path("var/other"), "x").expect("write");
    quiet(&sh(&format!("mv {} {}", a.path("var/conf.old").display(), a.path("var/other").display())), "mv over");
    assert_eq!(fs::read_to_string(b.path("var/other")).expect("read"), "port=3\n");
    assert_eq!(errno_of(fs::metadata(b.path("var/conf.old"))), libc::ENOENT);

    // rsync writes a temporary file beside the target and renames it over; with `-a` it
    // also sets the mode, owner and times it finds at the source (what `stat` shows here).
    let local = tempfile::tempdir().expect("local dir");
    let source = local.path().join("other");
    fs::write(&source, "port=40\n").expect("write");
    let mode = <fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o644);
    fs::set_permissions(&source, mode).expect("chmod");
    quiet(&sh(&format!("rsync {} {}", source.display(), a.path("var/other").display())), "rsync");
    assert_eq!(fs::read_to_string(b.path("var/other")).expect("read"), "port=40\n");
    fs::write(&source, "port=500\n").expect("write");
    quiet(&sh(&format!("rsync -a {} {}", source.display(), a.path("var/other").display())), "rsync -a");
    assert_eq!(fs::read_to_string(b.path("var/other")).expect("read"), "port=500\n");
    // install makes its file private (mode 0600) until it is complete, then gives it its mode.
    quiet(&sh(&format!("install -m 644 {} {}", source.display(), a.path("var/installed").display())), "install");
    assert_eq!(fs::read_to_string(b.path("var/installed")).expect("read"), "port=500\n");
    let private = <fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600);
    assert_eq!(errno_of(fs::set_permissions(a.path("var/installed"), private)), libc::EPERM, "an existing file");
    assert_eq!(fs::read_to_string(b.path("var/other")).expect("read"), "port=500\n");

    // An open descriptor follows its file to the new name; what it wrote before the rename
    // goes with the file (a temporary file renamed before it is closed).
    let tmp = a.path("var/.tmp");
    let mut f = fs::File::create(&tmp).expect("create");
    f.write_all(b"written before the rename\n").expect("write");
    fs::rename(&tmp, a.path("var/final")).expect("rename of an open file");
    assert_eq!(fs::read_to_string(b.path("var/final")).expect("read"), "written before the rename\n");
    f.write_all(b"and after\n").expect("write");
    assert_eq!(f.metadata().expect("fstat of the renamed file").len(), 36);
    drop(f);
    assert_eq!(fs::read_to_string(b.path("var/final")).expect("read"), "written before the rename\nand after\n");

    // RENAME_NOREPLACE refuses an existing name; a file whose lock is held does not move; a
    // directory is EXDEV (so `mv` copies it); nothing changes.
    let noreplace = renameat2(&a.path("var/final"), &a.path("var/other"), libc::RENAME_NOREPLACE);
    assert_eq!(noreplace, libc::EEXIST);
    let mut groups = Groups::default();
    let mut holder = flock(&[], &b.path("var/final"), "sleep 60", &mut groups);
    await_held(&cell, "/ls/local/var/final");
    assert_eq!(errno_of(fs::rename(a.path("var/final"), a.path("var/moved"))), libc::EBUSY);
    groups.kill(holder.id());
    let _ = holder.wait();
    assert_eq!(errno_of(fs::rename(a.path("var"), a.path("var2"))), libc::EXDEV);
    // So `mv` of a directory copies it and deletes the original, with no warning about the
    // metadata it cannot copy.
    fs::create_dir(a.path("dir")).expect("mkdir");
    fs::write(a.path("dir/f"), "in a directory").expect("write");
    quiet(&sh(&format!("mv {} {}", a.path("dir").display(), a.path("dir2").display())), "mv of a directory");
    assert_eq!(fs::read_to_string(b.path("dir2/f")).expect("read"), "in a directory");
    assert_eq!(errno_of(fs::metadata(b.path("dir"))), libc::ENOENT);
    assert_eq!(fs::read_to_string(b.path("var/other")).expect("read"), "port=500\n");
    assert_eq!(fs::read_to_string(b.path("var/final")).expect("read"), "written before the rename\nand after\n");
}

/// `renameat2(2)`; the errno, or 0.
fn renameat2(from: &Path, to: &Path, flags: u32) -> i32 {
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).expect("path");
    let (from, to) = (c(from), c(to));
    // SAFETY: valid C strings; AT_FDCWD with absolute paths.
    let r = unsafe { libc::renameat2(libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to.as_ptr(), flags) };
    if r == 0 {
        0
    } else {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    }
}
