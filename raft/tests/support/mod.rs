//! Test harness shared by the simulation, the scenario transcripts and the benchmark: a whole
//! Raft group in one process, with a network that can drop, delay, duplicate and reorder
//! messages and cut any link, nodes that crash and lose what they had not persisted, and a
//! checker that verifies Raft's safety properties after every step.
#![allow(dead_code)]

pub mod checker;
pub mod cluster;
pub mod group;
pub mod ready;
pub mod rng;
pub mod script;
pub mod sim;
pub mod state_machine;
