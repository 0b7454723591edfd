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
    fn apply(&mut self, index: Index, data: &[u8], answer: bool) -> Bytes {
        let outcome = self.state.apply(index, data);
        if let Err(crate::state::StateError::InvalidArgument(why)) = &outcome {
            if why.starts_with("undecodable entry") {
                tracing::warn!(index, %why, "entry skipped");
            }
        }
        let effects = self.state.take_effects();
        if !effects.is_empty() && self.effects.as_ref().is_some_and(|s| s.wanted.load(Ordering::SeqCst)) {
            if self.unsent.is_empty() {
                self.unsent = effects;
            } else {
                self.unsent.extend(effects);
            }
        }
        // Only a proposer reads the outcome; a follower's would be encoded for nothing.
        if answer {
            encode(&outcome)
        } else {
            Bytes::new()
        }
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
