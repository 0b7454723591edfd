//! A linearizability checker for recorded histories (Wing and Gong's search with Lowe's
//! memoization, as in Porcupine): is there an order of the operations, each placed between
//! its call and its return, in which a sequential model gives every answer that was seen?
//!
//! An operation whose outcome the client does not know (a timeout, a lost connection) has no
//! return: it may take effect at any point after its call, or never (placed last, where its
//! effect constrains nothing). Histories of independent keys are checked one key at a time.

use std::collections::HashSet;
use std::hash::Hash;
use std::time::Instant;

/// A sequential specification.
pub trait Model {
    type State: Clone + Eq + Hash;
    type Input;
    type Output;
    fn init(&self) -> Self::State;
    /// The state after `input` is applied to `state` answering `output` (`None`: not known),
    /// or `None` if the model cannot answer that.
    fn step(&self, state: &Self::State, input: &Self::Input, output: Option<&Self::Output>) -> Option<Self::State>;
}

/// One operation of a history.
#[derive(Clone, Debug)]
pub struct Op<I, O> {
    pub client: usize,
    pub call: Instant,
    /// The answer and when it came; `None` if the outcome is unknown.
    pub ret: Option<(Instant, O)>,
    pub input: I,
}

/// Why a history is not linearizable: the most operations that could be ordered, and an
/// operation whose return the search could not get past.
#[derive(Debug)]
pub struct Violation {
    pub linearized: usize,
    pub stuck_at: usize,
}

#[derive(Clone, Copy)]
enum Event {
    Call(usize),
    Return(usize),
}

/// Whether `ops` is linearizable with respect to `model`.
pub fn check<M: Model>(model: &M, ops: &[Op<M::Input, M::Output>]) -> Result<(), Violation> {
    let n = ops.len();
    // Events in time order, calls before returns at equal times (the lenient reading: the two
    // operations overlap). An unknown outcome returns after everything.
    let mut events: Vec<(Instant, u8, Event)> = Vec::with_capacity(2 * n);
    let end = ops.iter().map(|o| o.ret.as_ref().map_or(o.call, |r| r.0)).max();
    for (i, o) in ops.iter().enumerate() {
        events.push((o.call, 0, Event::Call(i)));
        let ret = o.ret.as_ref().map(|r| r.0).or(end).expect("a history with operations has an end");
        events.push((ret, if o.ret.is_some() { 1 } else { 2 }, Event::Return(i)));
    }
    events.sort_by_key(|&(t, k, _)| (t, k));
    // A doubly linked list over the events, with a head sentinel at index m; operations are
    // lifted out of it (call and return) when linearized and put back when undone.
    let m = events.len();
    let nil = usize::MAX;
    let mut next: Vec<usize> = (0..=m)
        .map(|i| {
            if i == m {
                if m > 0 {
                    0
                } else {
                    nil
                }
            } else if i + 1 < m {
                i + 1
            } else {
                nil
            }
        })
        .collect();
    let mut prev: Vec<usize> = (0..=m).map(|i| if i == 0 { m } else { i - 1 }).collect();
    let (mut call_at, mut ret_at) = (vec![0; n], vec![0; n]);
    for (idx, (_, _, e)) in events.iter().enumerate() {
        match e {
            Event::Call(i) => call_at[*i] = idx,
            Event::Return(i) => ret_at[*i] = idx,
        }
    }
    let unlink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, idx: usize| {
        let (p, q) = (prev[idx], next[idx]);
        next[p] = q;
        if q != nil {
            prev[q] = p;
        }
    };
    let relink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, idx: usize| {
        let (p, q) = (prev[idx], next[idx]);
        next[p] = idx;
        if q != nil {
            prev[q] = idx;
        }
    };

    let mut state = model.init();
    let mut done = vec![0u64; n.div_ceil(64)];
    let mut seen: HashSet<(Vec<u64>, M::State)> = HashSet::new();
    let mut stack: Vec<(usize, M::State)> = Vec::new();
    let mut best = 0;
    let mut entry = next[m];
    while next[m] != nil {
        match events.get(entry).map(|e| e.2) {
            Some(Event::Call(i)) => {
                let o = &ops[i];
                let applied = model.step(&state, &o.input, o.ret.as_ref().map(|r| &r.1));
                let fresh = applied.filter(|s| {
                    let mut d = done.clone();
                    d[i / 64] |= 1 << (i % 64);
                    seen.insert((d, s.clone()))
                });
                if let Some(s) = fresh {
                    stack.push((i, std::mem::replace(&mut state, s)));
                    done[i / 64] |= 1 << (i % 64);
                    unlink(&mut next, &mut prev, ret_at[i]);
                    unlink(&mut next, &mut prev, call_at[i]);
                    best = best.max(stack.len());
                    entry = next[m];
                } else {
                    entry = next[entry];
                }
            }
            // A return whose operation is not placed yet: something placed before must move.
            Some(Event::Return(i)) => {
                let Some((j, old)) = stack.pop() else {
                    return Err(Violation { linearized: best, stuck_at: i });
                };
                state = old;
                done[j / 64] &= !(1 << (j % 64));
                relink(&mut next, &mut prev, call_at[j]);
                relink(&mut next, &mut prev, ret_at[j]);
                entry = next[call_at[j]];
            }
            None => unreachable!("the list ends only when empty"),
        }
    }
    Ok(())
}

/// A register with Chubby's content generation: reads see (value, generation), a write sets
/// the value and moves the generation on by one, a compare-and-set does so only at the
/// generation it names. `initial` is the (value, generation) the history starts from.
pub struct Register {
    pub initial: (u64, u64),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegisterInput {
    Read,
    Write(u64),
    Cas { if_generation: u64, value: u64 },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegisterOutput {
    Value { value: u64, generation: u64 },
    Written { generation: u64 },
    Mismatch,
}

impl Model for Register {
    /// (value, generation)
    type State = (u64, u64);
    type Input = RegisterInput;
    type Output = RegisterOutput;

    fn init(&self) -> (u64, u64) {
        self.initial
    }

    fn step(&self, s: &(u64, u64), input: &RegisterInput, out: Option<&RegisterOutput>) -> Option<(u64, u64)> {
        let written = |value: u64| {
            let after = (value, s.1 + 1);
            match out {
                None => Some(after),
                Some(RegisterOutput::Written { generation }) if *generation == after.1 => Some(after),
                Some(_) => None,
            }
        };
        match input {
            RegisterInput::Read => match out {
                None => Some(*s),
                Some(RegisterOutput::Value { value, generation }) if (*value, *generation) == *s => Some(*s),
                Some(_) => None,
            },
            RegisterInput::Write(v) => written(*v),
            RegisterInput::Cas { if_generation, value } if *if_generation == s.1 => written(*value),
            RegisterInput::Cas { .. } => match out {
                None | Some(RegisterOutput::Mismatch) => Some(*s),
                Some(_) => None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::RegisterInput::*;
    use super::RegisterOutput::*;
    use super::*;
    use std::time::Duration;

    const REGISTER: Register = Register { initial: (0, 1) };

    /// Operations from (client, call ms, return ms or none, input, output).
    fn history(
        spec: &[(usize, u64, Option<u64>, RegisterInput, RegisterOutput)],
    ) -> Vec<Op<RegisterInput, RegisterOutput>> {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        spec.iter()
            .map(|(client, call, ret, input, output)| Op {
                client: *client,
                call: at(*call),
                ret: ret.map(|r| (at(r), output.clone())),
                input: input.clone(),
            })
            .collect()
    }

    #[test]
    fn overlapping_operations_may_take_effect_in_either_order() {
        let h = history(&[
            (0, 0, Some(10), Write(5), Written { generation: 2 }),
            (1, 1, Some(9), Read, Value { value: 0, generation: 1 }),
            (2, 2, Some(12), Read, Value { value: 5, generation: 2 }),
        ]);
        assert!(check(&REGISTER, &h).is_ok());
    }

    #[test]
    fn a_read_of_an_older_value_after_a_completed_write_is_a_violation() {
        let h = history(&[
            (0, 0, Some(10), Write(5), Written { generation: 2 }),
            (1, 11, Some(12), Read, Value { value: 0, generation: 1 }),
        ]);
        assert!(check(&REGISTER, &h).is_err());
    }

    #[test]
    fn a_write_of_unknown_outcome_may_take_effect_late_or_never() {
        let late = history(&[
            (0, 0, None, Write(7), Mismatch),
            (1, 5, Some(6), Read, Value { value: 0, generation: 1 }),
            (1, 7, Some(8), Read, Value { value: 7, generation: 2 }),
        ]);
        assert!(check(&REGISTER, &late).is_ok());
        let never =
            history(&[(0, 0, None, Write(7), Mismatch), (1, 5, Some(6), Read, Value { value: 0, generation: 1 })]);
        assert!(check(&REGISTER, &never).is_ok());
        // But once seen it cannot be unseen.
        let flicker = history(&[
            (0, 0, None, Write(7), Mismatch),
            (1, 5, Some(6), Read, Value { value: 7, generation: 2 }),
            (1, 7, Some(8), Read, Value { value: 0, generation: 1 }),
        ]);
        assert!(check(&REGISTER, &flicker).is_err());
    }

    #[test]
    fn compare_and_set_succeeds_only_at_its_generation() {
        let ok = history(&[
            (0, 0, Some(1), Cas { if_generation: 1, value: 3 }, Written { generation: 2 }),
            (1, 2, Some(3), Cas { if_generation: 1, value: 4 }, Mismatch),
            (1, 4, Some(5), Read, Value { value: 3, generation: 2 }),
        ]);
        assert!(check(&REGISTER, &ok).is_ok());
        // Two sequential CAS at the same generation cannot both succeed.
        let twice = history(&[
            (0, 0, Some(1), Cas { if_generation: 1, value: 3 }, Written { generation: 2 }),
            (1, 2, Some(3), Cas { if_generation: 1, value: 4 }, Written { generation: 2 }),
        ]);
        assert!(check(&REGISTER, &twice).is_err());
    }

    #[test]
    fn an_empty_history_and_a_long_one_check() {
        assert!(check(&REGISTER, &[]).is_ok());
        // 3,000 operations of 4 clients, each overlapping its neighbours: the memoized search
        // finishes quickly where plain backtracking would not.
        let mut spec = Vec::new();
        let mut generation = 1;
        for i in 0..3000u64 {
            let client = (i % 4) as usize;
            if i % 3 == 0 {
                generation += 1;
                spec.push((client, i * 10, Some(i * 10 + 25), Write(i), Written { generation }));
            } else {
                spec.push((client, i * 10, Some(i * 10 + 25), Read, Value { value: (i / 3) * 3, generation }));
            }
        }
        assert!(check(&REGISTER, &history(&spec)).is_ok());
    }
}
