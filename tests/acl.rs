//! ACLs end to end: the `chubby` CLI sets a node's reader, writer and change-ACL names, and
//! each user of a host acts as its own principal (`NAME@HOST`), so the cell allows or refuses
//! what that user asks. Runs the CLI as `nobody` through `setpriv`: needs root.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use e2e_tests::{bin, wait_converged, CellOptions, TestCell};

const NOBODY: u32 = 65534;

fn host() -> String {
    std::fs::read_to_string("/etc/hostname").expect("/etc/hostname").trim().to_string()
}

/// A copy of the CLI that any user may run (the build directory may be private to root).
fn public_cli(dir: &tempfile::TempDir) -> PathBuf {
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.path().join("chubby");
    std::fs::copy(bin("chubby"), &path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[test]
fn acls_set_from_the_cli_decide_what_each_user_of_a_host_may_do() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test runs the CLI as another user: run it as root");
    let cell = TestCell::start(CellOptions::default());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(wait_converged(&cell.client(Duration::from_secs(5)), 0, Duration::from_secs(30))).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cli = public_cli(&dir);
    let run = |uid: u32, args: &[&str]| {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid", &uid.to_string(), "--regid", &uid.to_string(), "--clear-groups"]);
        let out = cmd.arg(&cli).env("CHUBBY_CELL", cell.cell_arg()).env_remove("USER").args(args).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        (out.status.code().unwrap_or(-1), text)
    };
    let (root, nobody) = (format!("root@{}", host()), format!("nobody@{}", host()));

    // Everyone may do everything until an ACL is narrowed.
    assert_eq!(run(0, &["mkdir", "/ls/local/team"]).0, 0);
    assert_eq!(run(NOBODY, &["put", "/ls/local/team/notes", "by nobody"]).0, 0);
    let (code, out) = run(0, &["acl", "/ls/local/team"]);
    assert_eq!((code, out.as_str()), (0, "readers:            *\nwriters:            *\nchange-acl:         *\n"));

    // root keeps writing and changing the directory's ACL; everyone still reads.
    let (code, out) = run(0, &["acl", "/ls/local/team", "--writers", &root, "--change-acl", &root]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("writers:            {root}\n")), "{out}");
    assert_eq!(run(0, &["put", "/ls/local/team/conf", "v1"]).0, 0, "a new node takes its parent's ACL");
    let (code, json) = run(NOBODY, &["--json", "acl", "/ls/local/team/conf"]);
    assert_eq!(code, 0, "{json}");
    assert!(json.contains(&format!("\"writers\":[\"{root}\"]")), "{json}");
    assert!(json.contains("\"readers\":[\"*\"]"), "{json}");
    assert_eq!(run(NOBODY, &["get", "/ls/local/team/conf"]), (0, "v1\n".into()));

    // nobody may not write, create, delete or change the ACL there; nothing changes.
    let (code, out) = run(NOBODY, &["put", "/ls/local/team/conf", "v2"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("lacks -w-"), "the refusal says why: {out}");
    assert_eq!(run(NOBODY, &["put", "/ls/local/team/new", "x"]).0, 1, "no creating in a directory it may not write");
    assert_eq!(run(NOBODY, &["rm", "/ls/local/team/conf"]).0, 1);
    assert_eq!(run(NOBODY, &["acl", "/ls/local/team/conf", "--readers", &nobody]).0, 1);
    assert_eq!(run(0, &["get", "/ls/local/team/conf"]), (0, "v1\n".into()));
    assert_eq!(run(0, &["get", "/ls/local/team/new"]).0, 3);

    // A node that existed before keeps its own (open) ACL.
    assert_eq!(run(NOBODY, &["put", "/ls/local/team/notes", "still mine"]).0, 0);

    // Readers can be narrowed too: then nobody cannot even open the node.
    assert_eq!(run(0, &["acl", "/ls/local/team/conf", "--readers", &format!("{root},someone@else")]).0, 0);
    let (code, out) = run(NOBODY, &["get", "/ls/local/team/conf"]);
    assert_eq!(code, 1, "{out}");
    let (code, out) = run(0, &["stat", "/ls/local/team/conf"]);
    assert_eq!(code, 0);
    assert!(out.contains(&format!("readers:            {root},someone@else\n")), "{out}");
    assert!(out.contains("acl generation:     2\n"), "{out}");

    // An empty change-ACL list would lock the ACL for good: refused as bad usage.
    assert_eq!(run(0, &["acl", "/ls/local/team", "--change-acl", ""]).0, 2);
}

#[test]
fn an_acl_change_never_undoes_another_made_since_it_read_the_acl() {
    use fuse_mount::client::{OpenOptions, Session, SessionOptions};
    let cell = TestCell::start(CellOptions::default());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let opts = SessionOptions { principal: "ops".into(), ..SessionOptions::default() };
        let (a, b) = (
            Session::open(cell.addrs.clone(), opts.clone()).await.unwrap(),
            Session::open(cell.addrs.clone(), opts).await.unwrap(),
        );
        let create = OpenOptions { create: true, ..OpenOptions::default() };
        let (ha, _) = a.open_node("/ls/local/shared", create).await.unwrap();
        let (hb, _) = b.open_node("/ls/local/shared", OpenOptions::default()).await.unwrap();

        // a reads the ACL, b changes the writers, a's write of what it read is refused.
        let (mut read, stat) = a.acl(&ha).await.unwrap();
        b.update_acl(&hb, |acl| acl.writers = vec!["ops".into(), "deploy".into()]).await.unwrap();
        read.readers = vec!["ops".into()];
        let stale = a.set_acl(&ha, read, Some(stat.acl_generation)).await.unwrap_err();
        assert_eq!(stale.reason(), Some(fuse_mount::proto::Refusal::GenerationMismatch), "{stale}");

        // update_acl reads afresh: both changes stand.
        let (acl, _) = a.update_acl(&ha, |acl| acl.readers = vec!["ops".into()]).await.unwrap();
        assert_eq!(
            (acl.readers.as_slice(), acl.writers.as_slice()),
            (&["ops".to_string()][..], &["ops".to_string(), "deploy".to_string()][..])
        );
        let (now, _) = b.acl(&hb).await.unwrap();
        assert_eq!(now, acl);
    });
}
