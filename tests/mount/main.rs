//! The mount: a cell used through `chubby-mount` with ordinary tools (`sh`, `cat`-like reads,
//! `mkdir`, `rm`, `flock`), as DESIGN.md's FUSE mapping promises. Each test runs a 3-replica
//! cell and one or two mounts ("hosts"); they need root and /dev/fuse (see
//! [`fuse_available`]).
//!
//! One binary, a module per subject.

use std::fs;
use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use e2e_tests::{
    bin, detach, exit_within, fuse_available, is_mount_point, lines_of, wait_converged, CellOptions, LocalCell, Mount,
    Netns, Pids, TestCell,
};

mod cache;
mod faults;
mod flock;
mod helpers;
mod lifecycle;
mod rename;
mod shell;
mod users;

use helpers::*;
