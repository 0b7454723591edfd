//! Transcripts of `apply` (`testdata/*.txt`, `REWRITE=1` regenerates them).
//!
//! Script commands (sessions are named; `NAME:OWNER` picks a lock owner, 1 by default; node
//! operations use the node's current instance unless `instance=N` is given):
//! `at MS`, `tick`, `session NAME [principal=P]`, `expire NAME`, `endsession NAME`,
//! `open NAME PATH [create] [dir] [ephemeral] [excl] [text=T]`, `close NAME PATH [handle=K]
//! [legacy]` (the session's last handle to it not closed yet unless `handle=` names one;
//! `legacy`: a Close without a handle id),
//! `set NAME PATH TEXT|@SIZE [if=N] [fence=NAME:OWNER@PATH]`, `rm NAME PATH [if=N] [fence=…]`,
//! `acquire NAME[:OWNER] PATH x|s [try] [delay=MS]`, `release …`, `cancel …`,
//! `acl NAME PATH r=A,B w=A a=A`, `retry NAME [back=K]` (the K-th last call, 1 by default), `check NAME[:OWNER] PATH`, `checkseq SEQ`,
//! `lock PATH`, `clock`, `put PATH TEXT` (operator write),
//! `hold NAME` (the session's next call is slow: it takes the next sequence number, and the
//! session's later calls say it is not answered yet, until `arrive NAME CMD …` applies CMD
//! with that number), `reuse NAME CMD …` (CMD under the sequence number of the session's last
//! call), `repeat N CMD …` (CMD N times; the last output),
//! `stat PATH`, `ls PATH`.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::state::*;

pub(super) struct Driver {
    pub(super) state: CellState,
    now: u64,
    pub(super) ids: BTreeMap<String, SessionId>,
    pub(super) names: BTreeMap<SessionId, String>,
    pub(super) next_seq: BTreeMap<SessionId, u64>,
    /// Each session's calls, oldest first, for `retry`.
    history: BTreeMap<SessionId, Vec<Command>>,
    /// Last sequencer granted to `NAME:OWNER PATH`.
    sequencers: BTreeMap<String, String>,
    /// Ids of the handles to ephemeral nodes each session opened and has not closed, by path.
    handles: BTreeMap<(SessionId, String), Vec<u64>>,
    /// Per session, the sequence number of a call on its way (`hold`), and whether the next
    /// call is it (`arrive`).
    held: BTreeMap<SessionId, u64>,
    arriving: Option<u64>,
}

fn holder_arg(arg: &str) -> (&str, Owner) {
    match arg.split_once(':') {
        Some((n, o)) => (n, o.parse().expect("owner number")),
        None => (arg, 1),
    }
}

fn opt<'a>(args: &[&'a str], key: &str) -> Option<&'a str> {
    args.iter().find_map(|a| a.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

fn names(list: Option<&str>) -> Vec<String> {
    match list {
        None | Some("") => Vec::new(),
        Some(l) => l.split(',').map(String::from).collect(),
    }
}

impl Driver {
    pub(super) fn new() -> Driver {
        let mut state = CellState::default();
        let init = Command {
            now_ms: 0,
            request: None,
            op: Op::InitCell {
                key: Bytes::from_static(&[1; 32]),
                limits: Limits { max_nodes: 20, max_depth: 4, max_sessions: 8 },
            },
        };
        state.apply(1, &encode(&init)).expect("init");
        Driver {
            state,
            now: 0,
            ids: BTreeMap::new(),
            names: BTreeMap::new(),
            next_seq: BTreeMap::new(),
            history: BTreeMap::new(),
            sequencers: BTreeMap::new(),
            handles: BTreeMap::new(),
            held: BTreeMap::new(),
            arriving: None,
        }
    }

    fn id(&self, name: &str) -> SessionId {
        *self.ids.get(name).unwrap_or_else(|| panic!("no session named {name}"))
    }

    fn name(&self, id: SessionId) -> String {
        self.names.get(&id).cloned().unwrap_or_else(|| format!("#{id}"))
    }

    fn instance(&self, path: &str, args: &[&str]) -> u64 {
        opt(args, "instance")
            .map(|i| i.parse().expect("instance number"))
            .unwrap_or_else(|| self.state.node(path).map(|n| n.stat.instance).unwrap_or(0))
    }

    fn fence(&self, args: &[&str]) -> Option<String> {
        opt(args, "fence").map(|f| self.sequencers.get(&f.replace('@', " ")).cloned().unwrap_or_else(|| f.to_string()))
    }

    fn submit(&mut self, session: Option<SessionId>, op: Op) -> String {
        let arriving = self.arriving.take();
        let request = session.map(|s| {
            let seq = self.next_seq.entry(s).or_insert(1);
            let sequence = arriving.unwrap_or(*seq);
            if arriving.is_none() {
                *seq += 1;
            } else {
                self.held.remove(&s);
            }
            let first_incomplete = self.held.get(&s).copied().unwrap_or(sequence);
            RequestId { session: s, sequence, first_incomplete }
        });
        let entry = Command { now_ms: self.now, request, op };
        if let Some(s) = session {
            self.history.entry(s).or_default().push(entry.clone());
        }
        self.run(entry)
    }

    fn run(&mut self, entry: Command) -> String {
        let index = self.state.applied() + 1;
        let outcome = self.state.apply(index, &encode(&entry));
        let mut out = self.describe(&outcome);
        for e in self.state.take_effects() {
            out.push_str(&self.describe_effect(e));
        }
        out
    }

    fn describe(&mut self, outcome: &Outcome) -> String {
        match outcome {
            Ok(Reply::Done) => "ok\n".into(),
            Ok(Reply::Session { id }) => format!("session #{id}\n"),
            Ok(Reply::Opened { stat, rights, created }) => format!(
                "opened instance={} rights={rights} {}\n",
                stat.instance,
                if *created { "created" } else { "existing" }
            ),
            Ok(Reply::OpenedEphemeral { stat, rights, created, handle }) => format!(
                "opened instance={} rights={rights} {} handle={handle}\n",
                stat.instance,
                if *created { "created" } else { "existing" }
            ),
            Ok(Reply::Stat(s)) => format!("{}\n", describe_stat(s)),
            Ok(Reply::Granted { sequencer }) => format!("granted {sequencer}\n"),
            Ok(Reply::Queued) => "queued\n".into(),
            Err(e) => format!("error {}: {e}\n", e.reason()),
        }
    }

    fn describe_effect(&mut self, e: Effect) -> String {
        match e {
            Effect::LockGranted { session, owner, path, sequencer } => {
                let who = format!("{}:{owner}", self.name(session));
                self.sequencers.insert(format!("{who} {path}"), sequencer);
                format!("  -> {who} granted {path}\n")
            }
            Effect::WaitEnded { session, owner, path, reason } => {
                format!("  -> {}:{owner} stops waiting for {path} ({reason})\n", self.name(session))
            }
            Effect::LockConflict { path, holders } => {
                let h: Vec<_> = holders.iter().map(|s| self.name(*s)).collect();
                format!("  -> conflict on {path}, held by [{}]\n", h.join(", "))
            }
            Effect::LockDelay { path, until_ms } => format!("  -> lock-delay on {path} until {until_ms}\n"),
            Effect::NodeChanged { path, change } => format!("  -> {change:?} {path}\n"),
            Effect::SessionEnded { session, expired } => {
                format!("  -> session {} ended ({})\n", self.name(session), if expired { "expired" } else { "closed" })
            }
        }
    }

    fn lock_state(&self, path: &str) -> String {
        let Some(n) = self.state.node(path) else { return "no such node\n".into() };
        let l = &n.lock;
        let who = |h: &Holder| format!("{}:{}", self.name(h.session), h.owner);
        let holders: Vec<_> = l.holders.keys().map(who).collect();
        let waiters: Vec<_> = l.waiters.iter().map(|w| format!("{}({})", who(&w.holder), w.mode.letter())).collect();
        let mode = if l.holders.is_empty() { '-' } else { l.mode.letter() };
        let mut s = format!(
            "mode={mode} holders=[{}] queue=[{}] generation={} delay={}",
            holders.join(" "),
            waiters.join(" "),
            n.stat.lock_generation,
            l.delay_ms
        );
        if l.delay_until_ms > 0 {
            s.push_str(&format!(" unavailable-until={}", l.delay_until_ms));
        }
        s + "\n"
    }

    pub(super) fn command(&mut self, line: &str) -> String {
        let words: Vec<&str> = line.split_whitespace().collect();
        let (cmd, args) = (words[0], &words[1..]);
        let arg = |i: usize| *args.get(i).unwrap_or_else(|| panic!("`{line}`: argument {i} missing"));
        match cmd {
            "at" => {
                self.now = arg(0).parse().expect("time in ms");
                "ok\n".into()
            }
            "tick" => self.submit(None, Op::Tick),
            "hold" => {
                let s = self.id(arg(0));
                let seq = self.next_seq.entry(s).or_insert(1);
                self.held.insert(s, *seq);
                *seq += 1;
                format!("holding request {}\n", seq.saturating_sub(1))
            }
            "arrive" => {
                let s = self.id(arg(0));
                self.arriving = Some(*self.held.get(&s).expect("a held call"));
                self.command(&words[2..].join(" "))
            }
            "reuse" => {
                let s = self.id(arg(0));
                let last = self.history.get(&s).and_then(|h| h.last()).and_then(|e| e.request).expect("a call");
                self.arriving = Some(last.sequence);
                self.command(&words[2..].join(" "))
            }
            "repeat" => {
                let n: usize = arg(0).parse().expect("a count");
                let rest = words[2..].join(" ");
                (0..n).map(|_| self.command(&rest)).last().unwrap_or_default()
            }
            "session" => {
                let principal = opt(args, "principal").unwrap_or(arg(0)).to_string();
                let open_id = opt(args, "open").map_or(0, |o| o.parse().expect("open id"));
                let out = self.submit(None, Op::CreateSession { principal, open_id });
                if let Some(id) = out.strip_prefix("session #").and_then(|s| s.trim().parse().ok()) {
                    self.ids.insert(arg(0).to_string(), id);
                    self.names.entry(id).or_insert_with(|| arg(0).to_string());
                }
                out
            }
            "expire" => self.submit(None, Op::ExpireSession { session: self.id(arg(0)) }),
            "endsession" => self.submit(Some(self.id(arg(0))), Op::CloseSession),
            "retry" => {
                let s = self.id(arg(0));
                let back: usize = opt(args, "back").map_or(1, |b| b.parse().expect("a count"));
                let calls = self.history.get(&s).expect("a call to retry");
                let entry = calls[calls.len() - back].clone();
                let entry = Command { now_ms: self.now, ..entry };
                self.run(entry)
            }
            "check" => {
                let (name, owner) = holder_arg(arg(0));
                let key = format!("{name}:{owner} {}", arg(1));
                let seq = self.sequencers.get(&key).cloned().unwrap_or_default();
                format!("{}\n", if self.state.check_sequencer(&seq) { "valid" } else { "stale" })
            }
            "lock" => self.lock_state(arg(0)),
            "checkseq" => format!("{}\n", if self.state.check_sequencer(arg(0)) { "valid" } else { "stale" }),
            "clock" => format!("{}\n", self.state.clock_ms()),
            "put" => self.submit(
                None,
                Op::AdminPut {
                    path: arg(0).to_string(),
                    contents: Bytes::from(args.get(1).copied().unwrap_or("").to_string()),
                },
            ),
            "cat" => match self.state.node(arg(0)) {
                Some(n) => format!("{:?}\n", String::from_utf8_lossy(&n.contents)),
                None => "no such node\n".into(),
            },
            "stat" => match self.state.node(arg(0)) {
                Some(n) => format!("{}\n", describe_stat(&n.stat)),
                None => "no such node\n".into(),
            },
            "ls" => match self.state.read_dir(arg(0)) {
                Ok(entries) => {
                    let n: Vec<_> = entries.iter().map(|(n, _)| n.as_str()).collect();
                    format!("[{}]\n", n.join(" "))
                }
                Err(e) => format!("error: {e}\n"),
            },
            // Reads through a handle of NAME (its instance as opened, or `instance=N`).
            "hstat" | "hls" => {
                let session = self.id(arg(0));
                let path = arg(1);
                let instance = self.instance(path, args);
                match (cmd, self.state.node_of_handle(session, path, instance)) {
                    (_, Err(e)) => format!("error {}: {e}\n", e.reason()),
                    ("hstat", Ok(n)) => format!("{}\n", describe_stat(&n.stat)),
                    _ => {
                        let entries = self.state.read_dir(path).expect("a directory");
                        let n: Vec<_> = entries.iter().map(|(n, _)| n.as_str()).collect();
                        format!("[{}]\n", n.join(" "))
                    }
                }
            }
            _ => self.node_command(line, cmd, args),
        }
    }

    fn node_command(&mut self, line: &str, cmd: &str, args: &[&str]) -> String {
        let (name, owner) = holder_arg(args[0]);
        let session = self.id(name);
        let path = args.get(1).unwrap_or_else(|| panic!("`{line}`: path missing")).to_string();
        let instance = self.instance(&path, args);
        let if_generation = opt(args, "if").map(|g| g.parse().expect("generation"));
        let op = match cmd {
            "open" => {
                let create = args.contains(&"create").then(|| Create {
                    directory: args.contains(&"dir"),
                    ephemeral: args.contains(&"ephemeral"),
                    exclusive: args.contains(&"excl"),
                    contents: Bytes::from(opt(args, "text").unwrap_or("").to_string()),
                });
                Op::Open { path, create }
            }
            "close" => {
                let open = self.handles.entry((session, path.clone())).or_default();
                match opt(args, "handle").map(|h| h.parse().expect("a handle id")) {
                    _ if args.contains(&"legacy") => Op::Close { path, instance },
                    Some(handle) => Op::CloseHandle { path, instance, handle },
                    None => match open.pop() {
                        Some(handle) => Op::CloseHandle { path, instance, handle },
                        None => Op::Close { path, instance },
                    },
                }
            }
            "set" => Op::SetContents {
                path,
                instance,
                // `@N`: N bytes of filler.
                contents: match args[2].strip_prefix('@') {
                    Some(n) => Bytes::from(vec![b'.'; n.parse().expect("size")]),
                    None => Bytes::from(args[2].to_string()),
                },
                if_generation,
                sequencer: self.fence(args),
            },
            "append" => Op::Append {
                path,
                instance,
                data: match args[2].strip_prefix('@') {
                    Some(n) => Bytes::from(vec![b'.'; n.parse().expect("size")]),
                    None => Bytes::from(args[2].to_string()),
                },
                sequencer: self.fence(args),
            },
            "mv" => Op::Rename { path, instance, to: args[2].to_string(), replace: !args.contains(&"noreplace") },
            "rm" => Op::Delete { path, instance, if_generation, sequencer: self.fence(args) },
            "acquire" => Op::Acquire {
                path,
                instance,
                mode: if args[2] == "s" { LockMode::Shared } else { LockMode::Exclusive },
                owner,
                lock_delay_ms: opt(args, "delay").map(|d| d.parse().expect("ms")),
                try_only: args.contains(&"try"),
            },
            // `convert NAME PATH x|s [try]`: the owner's lock in the other mode, in one step.
            "convert" => Op::Convert {
                path,
                instance,
                mode: if args[2] == "s" { LockMode::Shared } else { LockMode::Exclusive },
                owner,
                try_only: args.contains(&"try"),
            },
            "release" => Op::Release { path, instance, owner },
            "cancel" => Op::Cancel { path, instance, owner },
            "acl" => {
                let acl = Acl {
                    readers: names(opt(args, "r")),
                    writers: names(opt(args, "w")),
                    change_acl: names(opt(args, "a")),
                };
                // `if=N`: only at ACL generation N.
                match opt(args, "if") {
                    Some(g) => Op::SetAclIf { path, instance, acl, if_acl_generation: g.parse().expect("generation") },
                    None => Op::SetAcl { path, instance, acl },
                }
            }
            _ => panic!("unknown command `{line}`"),
        };
        let out = self.submit(Some(session), op);
        if let Some(handle) = out.lines().next().and_then(|l| l.split_once(" handle=")).map(|(_, h)| h) {
            let handle = handle.parse().expect("a handle id");
            self.handles.entry((session, args[1].to_string())).or_default().push(handle);
        }
        out
    }
}

fn describe_stat(s: &Stat) -> String {
    format!(
        "instance={} content={} lock={} acl={} len={} {}{} mtime={}",
        s.instance,
        s.content_generation,
        s.lock_generation,
        s.acl_generation,
        s.length,
        if s.directory { "dir" } else { "file" },
        if s.ephemeral { " ephemeral" } else { "" },
        s.mtime_ms
    )
}

fn transcript(name: &str) {
    let path = format!("{}/src/state/testdata/{name}.txt", env!("CARGO_MANIFEST_DIR"));
    let mut d = Driver::new();
    raft::transcript::run_file(&path, |cmd| d.command(cmd));
}

#[test]
fn exclusive_waiters_are_granted_one_at_a_time_in_fifo_order() {
    transcript("lock_fifo");
}

#[test]
fn readers_share_and_a_queued_writer_is_not_starved() {
    transcript("shared_exclusive");
}

#[test]
fn cancel_removes_a_waiter_and_may_unblock_the_queue() {
    transcript("cancel");
}

#[test]
fn a_holder_converts_its_lock_without_letting_go() {
    transcript("convert");
}

#[test]
fn reads_through_a_handle_end_with_its_session_and_its_node_instance() {
    transcript("handles");
}

#[test]
fn a_node_whose_lock_is_held_or_waited_for_is_not_deleted() {
    transcript("delete_locked");
}

#[test]
fn lock_delay_belongs_to_the_name_and_outlives_the_node() {
    transcript("lock_delay_name");
}

#[test]
fn session_expiry_releases_locks_with_lock_delay_and_reaps_ephemerals() {
    transcript("session_expiry");
}

#[test]
fn sequencers_go_stale_and_fence_writes() {
    transcript("sequencers");
}

#[test]
fn acls_are_inherited_and_enforced() {
    transcript("acl");
}

#[test]
fn generation_numbers_and_conditional_writes() {
    transcript("generations");
}

#[test]
fn retried_calls_are_applied_once() {
    transcript("retries");
}

#[test]
fn log_time_never_moves_back_and_repeated_master_entries_change_nothing() {
    transcript("clock");
}

#[test]
fn answers_are_kept_by_time_and_bytes_not_by_a_count() {
    transcript("answers");
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    transcript("bad_input");
}

#[test]
fn appends_land_whole_in_log_order_and_within_the_limit() {
    transcript("append");
}

#[test]
fn a_rename_replaces_a_file_in_place_or_moves_it_in_one_step() {
    transcript("rename");
}
