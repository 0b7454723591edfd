//! Network namespaces for clients whose network a test cuts.

use std::path::Path;
use std::process::Command;

/// A network namespace joined to this one by a veth pair, for a client whose network a test
/// cuts. The host end gets `host_ip`, the namespace end `ns_ip` (a /30 of 10.213.0.0/16 picked
/// from the process id and `tag`). Deleted, with its link, when dropped. Needs root and `ip`.
pub struct Netns {
    pub name: String,
    pub host_ip: String,
    pub ns_ip: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out =
        Command::new("ip").args(args).output().map_err(|e| format!("ip {}: {e} (install iproute2)", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl Netns {
    /// `tag` tells apart the namespaces of one test process (at most 63).
    pub fn create(tag: u32) -> Result<Netns, String> {
        let pid = std::process::id();
        // One /30 per (process, tag): 256 × 64 slots of 4 addresses fill 10.213.0.0/16.
        let base = ((pid % 256) * 64 + tag % 64) * 4;
        let (b, c) = (base / 256, base % 256);
        let name = format!("chubby-test-{pid}-{tag}");
        let (host_if, ns_if) = (format!("vh{pid}x{tag}"), format!("vn{pid}x{tag}"));
        let ns = Netns {
            name: name.clone(),
            host_ip: format!("10.213.{b}.{}", c + 1),
            ns_ip: format!("10.213.{b}.{}", c + 2),
        };
        ip(&["netns", "add", &name])?;
        ip(&["link", "add", &host_if, "type", "veth", "peer", "name", &ns_if])?;
        ip(&["link", "set", &ns_if, "netns", &name])?;
        ip(&["addr", "add", &format!("{}/30", ns.host_ip), "dev", &host_if])?;
        ip(&["link", "set", &host_if, "up"])?;
        ip(&["-n", &name, "addr", "add", &format!("{}/30", ns.ns_ip), "dev", &ns_if])?;
        ip(&["-n", &name, "link", "set", &ns_if, "up"])?;
        ip(&["-n", &name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A command run inside the namespace (`ip netns exec` execs it: same pid).
    pub fn command(&self, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// A command run in the namespace's network but this process's mount namespace (where
    /// `ip netns exec` would give it a mount namespace of its own): for a FUSE daemon whose
    /// mount the test must see.
    pub fn command_keeping_mounts(&self, program: &Path) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.name)).arg(program);
        c
    }

    /// Runs `f`'s future on a thread of its own inside the namespace: a network namespace
    /// belongs to a thread, and every socket the future's single-threaded runtime opens is
    /// opened there.
    pub fn run_inside<F, Fut>(&self, f: F) -> std::thread::JoinHandle<Fut::Output>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future,
        Fut::Output: Send + 'static,
    {
        let path = std::ffi::CString::new(format!("/run/netns/{}", self.name)).expect("name");
        std::thread::spawn(move || {
            // SAFETY: open and setns with a valid C string; the descriptor is closed after.
            unsafe {
                let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                assert!(fd >= 0, "open {path:?}: {}", std::io::Error::last_os_error());
                let r = libc::setns(fd, libc::CLONE_NEWNET);
                let err = std::io::Error::last_os_error();
                libc::close(fd);
                assert_eq!(r, 0, "setns {path:?}: {err}");
            }
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(f())
        })
    }

    /// Cuts the namespace off: its packets to the host end are dropped, silently for the
    /// other side (no reset, no FIN), as when a cable is pulled.
    pub fn cut(&self) -> Result<(), String> {
        ip(&["-n", &self.name, "route", "add", "blackhole", &format!("{}/32", self.host_ip)])
    }

    pub fn heal(&self) -> Result<(), String> {
        ip(&["-n", &self.name, "route", "del", "blackhole", &format!("{}/32", self.host_ip)])
    }

    /// A process, started now, that heals the namespace when told: for a test whose own
    /// processes, started later, would flush a file of a mount in their exec and so wait on
    /// the cell the cut keeps out of reach.
    pub fn healer(&self) -> Healer {
        let script = format!("read go && exec ip -n {} route del blackhole {}/32", self.name, self.host_ip);
        let child = Command::new("sh").arg("-c").arg(script).stdin(std::process::Stdio::piped()).spawn().expect("sh");
        Healer(child)
    }
}

/// See [`Netns::healer`]; killed if dropped unused.
pub struct Healer(std::process::Child);

impl Healer {
    pub fn heal(mut self) -> Result<(), String> {
        use std::io::Write;
        let mut stdin = self.0.stdin.take().expect("stdin");
        stdin.write_all(b"go\n").map_err(|e| e.to_string())?;
        drop(stdin);
        match super::process::exit_within(&mut self.0, std::time::Duration::from_secs(10)) {
            Some(st) if st.success() => Ok(()),
            other => Err(format!("healing: {other:?}")),
        }
    }
}

impl Drop for Healer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace also deletes the veth pair.
        let _ = ip(&["netns", "del", &self.name]);
    }
}
