//! The cell's [`CellState`] as the Raft node's [`StateMachine`]: entries in, encoded
//! [`Outcome`](crate::state::Outcome)s out, and the [`Effect`]s of each entry handed to the
//! master through an [`EffectSink`] (every replica produces them; only a master acts on them).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use raft::{Index, SnapshotEncoder, StateMachine};

use crate::state::{encode, CellState, Effect};

/// The state machine's end of the effect channel. Effects are sent only while the master
/// wants them (from the moment it starts taking office until it leaves): a follower's apply
/// then costs no wake-up of the master's task, which would drop them anyway.
pub struct EffectSink {
    tx: UnboundedSender<Vec<Effect>>,
    wanted: Arc<AtomicBool>,
}

/// The master's end of the effect channel; `wanted` turns sending on and off.
pub struct EffectSource {
    pub rx: UnboundedReceiver<Vec<Effect>>,
    pub wanted: Arc<AtomicBool>,
}

pub fn effect_channel() -> (EffectSink, EffectSource) {
    let (tx, rx) = unbounded_channel();
    let wanted = Arc::new(AtomicBool::new(false));
    (EffectSink { tx, wanted: wanted.clone() }, EffectSource { rx, wanted })
}

pub struct CellMachine {
    state: CellState,
    effects: Option<EffectSink>,
    /// Effects of the entries applied since the last `after_applying`, sent then in one batch:
    /// the master's task is woken once per run of entries, and after their proposers, whose
    /// answers are what a client waits for.
    unsent: Vec<Effect>,
    /// The length of the last snapshot encoded: the next one's buffer starts a little larger.
    last_snapshot_len: Arc<AtomicUsize>,
}

impl CellMachine {
    pub fn new(effects: Option<EffectSink>) -> CellMachine {
        CellMachine { state: CellState::default(), effects, unsent: Vec::new(), last_snapshot_len: Arc::default() }
    }

    pub fn state(&self) -> &CellState {
        &self.state
    }
}

impl StateMachine for CellMachine {
    /// An entry that does not decode stops the replica: a newer cell-server wrote it (its
    /// operations are not this build's), and skipping it would leave this replica's state
    /// different from its peers'. Upgraded, the replica applies it from its log.
    fn apply(&mut self, index: Index, data: &[u8], answer: bool) -> Result<Bytes, String> {
        let command = crate::state::command::decode(data).map_err(|e| {
            format!("{e}: a newer cell-server wrote it (or it is damaged); upgrade this replica to apply it")
        })?;
        let outcome = self.state.apply_command(index, command);
        let effects = self.state.take_effects();
        if !effects.is_empty() && self.effects.as_ref().is_some_and(|s| s.wanted.load(Ordering::SeqCst)) {
            if self.unsent.is_empty() {
                self.unsent = effects;
            } else {
                self.unsent.extend(effects);
            }
        }
        // Only a proposer reads the outcome; a follower's would be encoded for nothing.
        Ok(if answer { encode(&outcome) } else { Bytes::new() })
    }

    fn after_applying(&mut self) {
        if let Some(sink) = &self.effects {
            if !self.unsent.is_empty() {
                let _ = sink.tx.send(std::mem::take(&mut self.unsent));
            }
        }
    }

    fn snapshot(&self) -> SnapshotEncoder {
        let encode = self.state.snapshot_later();
        let last_len = self.last_snapshot_len.clone();
        Box::new(move || {
            let guess = last_len.load(Ordering::Relaxed);
            let data = encode(guess + guess / 8);
            last_len.store(data.len(), Ordering::Relaxed);
            data
        })
    }

    fn restore(&mut self, data: &[u8]) -> Result<(), String> {
        self.state = CellState::restore(data)?;
        self.unsent.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Command, Op};

    /// An entry of an operation this build does not know (a newer cell-server's) is not
    /// skipped: the replica stops, so its state never goes on without it.
    #[test]
    fn an_entry_that_does_not_decode_is_refused_and_changes_nothing() {
        let mut m = CellMachine::new(None);
        let tick = encode(&Command { now_ms: 5, request: None, op: Op::Tick });
        assert!(m.apply(1, &tick, true).is_ok());
        // The same entry with an Op variant past the last this build knows (the bytes are
        // the clock, the absent request, then the variant).
        let mut newer = tick.to_vec();
        assert_eq!(newer.len(), 3);
        newer[2] = 100;
        let why = m.apply(2, &newer, true).unwrap_err();
        assert!(why.contains("upgrade this replica"), "{why}");
        assert_eq!(m.state().applied(), 1);
    }
}
