//! Ranks as threads of one process, summing through shared memory: what the CPU tests run a
//! W-rank training on, with the same rank-order sums and failure rules as the TCP group.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{Collective, CollectiveError};

/// Makes the ranks of a `world`-rank group; hand one to each thread.
pub struct ThreadGroup;

impl ThreadGroup {
    /// Each sum waits at most `timeout` for the other ranks.
    #[allow(clippy::new_ret_no_self)]
    pub fn new(world: usize, timeout: Duration) -> Vec<ThreadRank> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                round: 0,
                deposits: vec![None; world],
                result: None,
                left: vec![false; world],
            }),
            changed: Condvar::new(),
        });
        (0..world)
            .map(|rank| ThreadRank {
                rank,
                world,
                timeout,
                round: 0,
                shared: shared.clone(),
            })
            .collect()
    }
}

/// One rank of a [`ThreadGroup`]. Dropping it (the thread ended, or failed) makes the other
/// ranks' next sums fail instead of waiting for it.
pub struct ThreadRank {
    rank: usize,
    world: usize,
    timeout: Duration,
    /// The sums this rank has taken part in.
    round: u64,
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Clone)]
enum Values {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

impl Values {
    fn len(&self) -> usize {
        match self {
            Values::F32(v) => v.len(),
            Values::F64(v) => v.len(),
        }
    }

    /// `self += other`, element-wise; `false` when the kinds differ.
    fn add(&mut self, other: &Values) -> bool {
        match (self, other) {
            (Values::F32(a), Values::F32(b)) => a.iter_mut().zip(b).for_each(|(a, b)| *a += b),
            (Values::F64(a), Values::F64(b)) => a.iter_mut().zip(b).for_each(|(a, b)| *a += b),
            _ => return false,
        }
        true
    }
}

/// A round's sum, or the rank whose values did not fit it: `(rank, expected, got)`.
type RoundOutcome = Result<Values, (usize, usize, usize)>;

struct State {
    /// The sum being gathered: `round` sums have completed before it.
    round: u64,
    deposits: Vec<Option<Values>>,
    /// The sum of round `.0`, kept until every rank has read it (no rank can deposit into the
    /// next round before reading this one).
    result: Option<(u64, RoundOutcome)>,
    left: Vec<bool>,
}

impl ThreadRank {
    fn sum(&mut self, values: Values) -> Result<Values, CollectiveError> {
        let round = self.round;
        self.round += 1;
        let deadline = Instant::now() + self.timeout;
        let mut state = self.lock();
        state.deposits[self.rank] = Some(values);
        if state.deposits.iter().all(Option::is_some) {
            let deposits: Vec<Values> = state.deposits.iter_mut().map(|d| d.take().expect("checked")).collect();
            let mut total = Ok(deposits[0].clone());
            for (rank, values) in deposits.iter().enumerate().skip(1) {
                if let Ok(sum) = &mut total
                    && (values.len() != sum.len() || !sum.add(values))
                {
                    total = Err((rank, sum.len(), values.len()));
                }
            }
            state.result = Some((round, total));
            state.round += 1;
            self.shared.changed.notify_all();
        }
        loop {
            if let Some((done, total)) = &state.result
                && *done == round
            {
                return total
                    .clone()
                    .map_err(|(rank, expected, got)| CollectiveError::Length { rank, expected, got });
            }
            let missing = (0..self.world).find(|&r| state.deposits[r].is_none());
            let now = Instant::now();
            let error = match missing {
                Some(rank) if state.left[rank] => Some(CollectiveError::Left { rank }),
                _ if now >= deadline => Some(CollectiveError::Timeout {
                    rank: missing.unwrap_or(0),
                    timeout: self.timeout,
                }),
                _ => None,
            };
            if let Some(error) = error {
                // This rank gives up on the round: its values must not complete it later.
                state.deposits[self.rank] = None;
                return Err(error);
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A rank that panicked while holding the lock left the state consistent (it only
        // assigns whole fields); its drop marks it as gone.
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Collective for ThreadRank {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn sum_f32(&mut self, values: &mut [f32]) -> Result<(), CollectiveError> {
        match self.sum(Values::F32(values.to_vec()))? {
            Values::F32(total) => values.copy_from_slice(&total),
            Values::F64(_) => unreachable!("a round sums one kind"),
        }
        Ok(())
    }

    fn sum_f64(&mut self, values: &mut [f64]) -> Result<(), CollectiveError> {
        match self.sum(Values::F64(values.to_vec()))? {
            Values::F64(total) => values.copy_from_slice(&total),
            Values::F32(_) => unreachable!("a round sums one kind"),
        }
        Ok(())
    }
}

impl Drop for ThreadRank {
    fn drop(&mut self) {
        let mut state = self.lock();
        state.left[self.rank] = true;
        self.shared.changed.notify_all();
    }
}
