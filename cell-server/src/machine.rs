//! The cell's [`CellState`] as the Raft node's [`StateMachine`]: entries in, encoded
//! [`Outcome`](crate::state::Outcome)s out, and the [`Effect`]s of each entry handed to the
//! master through a channel (every replica produces them; only a master acts on them).

use bytes::Bytes;
use tokio::sync::mpsc::UnboundedSender;

use raft::{Index, StateMachine};

use crate::state::{encode, CellState, Effect};

pub struct CellMachine {
    state: CellState,
    effects: Option<UnboundedSender<Vec<Effect>>>,
}

impl CellMachine {
    pub fn new(effects: Option<UnboundedSender<Vec<Effect>>>) -> CellMachine {
        CellMachine { state: CellState::default(), effects }
    }

    pub fn state(&self) -> &CellState {
        &self.state
    }
}

impl StateMachine for CellMachine {
    fn apply(&mut self, index: Index, data: &[u8]) -> Bytes {
        let outcome = self.state.apply(index, data);
        if let Err(crate::state::StateError::InvalidArgument(why)) = &outcome {
            if why.starts_with("undecodable entry") {
                tracing::warn!(index, %why, "entry skipped");
            }
        }
        let effects = self.state.take_effects();
        if let Some(tx) = self.effects.as_ref().filter(|_| !effects.is_empty()) {
            let _ = tx.send(effects);
        }
        encode(&outcome)
    }

    fn snapshot(&self) -> Bytes {
        self.state.snapshot()
    }

    fn restore(&mut self, data: &[u8]) -> Result<(), String> {
        self.state = CellState::restore(data)?;
        Ok(())
    }
}
