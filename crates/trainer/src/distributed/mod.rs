//! Data parallelism: ranks (one process per GPU, or threads in tests) that each compute part of
//! an optimizer step's micro-batches and sum their gradients once per step.
//!
//! Every rank steps the same seeded loader over the step's `accumulation × world` micro-batches
//! and computes those whose index is its rank modulo the world size. So the loss normaliser (the
//! trained tokens of all of them) needs no message, and a W-rank run is a one-rank run with
//! accumulation × W, dropout masks included. After the sum every rank holds the same gradients:
//! clipping, the non-finite skip and the update agree without further messages.

mod env;
mod reduce;
mod tcp;
mod threads;

use std::hash::{Hash, Hasher};
use std::time::Duration;

use crate::config::RunConfig;

pub use env::WorldEnv;
pub(crate) use reduce::{sum_flag, sum_step};
pub use tcp::TcpGroup;
pub use threads::{ThreadGroup, ThreadRank};

/// transformers' `ddp_timeout` default: how long a collective waits for the slowest rank.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

/// Identifies a run's settings (`[data]`, `[training]`, `[lora]`, the model and `init_from`),
/// so that a rank started with another config is refused when it connects.
pub fn run_fingerprint(config: &RunConfig) -> u64 {
    // SipHash with fixed keys: the same on every rank of one binary.
    let mut hasher = std::hash::DefaultHasher::new();
    crate::resume::run_settings(config).to_string().hash(&mut hasher);
    config.lora.to_json().to_string().hash(&mut hasher);
    config.model.path.hash(&mut hasher);
    config.init_from.hash(&mut hasher);
    hasher.finish()
}

/// Sums across the ranks of a run. Every rank calls the same sums in the same order; each
/// returns once all ranks have contributed, with the sum, added in rank order, on every rank.
pub trait Collective: Send {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    fn sum_f32(&mut self, values: &mut [f32]) -> Result<(), CollectiveError>;
    fn sum_f64(&mut self, values: &mut [f64]) -> Result<(), CollectiveError>;
}

/// The run of a single process: rank 0 of 1, sums are the values themselves.
pub struct Solo;

impl Collective for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn sum_f32(&mut self, _: &mut [f32]) -> Result<(), CollectiveError> {
        Ok(())
    }
    fn sum_f64(&mut self, _: &mut [f64]) -> Result<(), CollectiveError> {
        Ok(())
    }
}

/// Why a collective could not complete. Each ends the run on the rank that sees it.
#[derive(Debug, thiserror::Error)]
pub enum CollectiveError {
    #[error("rank {rank} left the run (it failed or was killed; its own output says why)")]
    Left { rank: usize },
    #[error(
        "rank {rank} did not reach the gradient sum within {} s: it hangs or is far behind \
         (raise [training] ddp_timeout if its steps are that slow)",
        timeout.as_secs()
    )]
    Timeout { rank: usize, timeout: Duration },
    #[error(
        "a rank did not reach the gradient sum within {} s: it hangs or is far behind \
         (raise [training] ddp_timeout if its steps are that slow)",
        timeout.as_secs()
    )]
    Stalled { timeout: Duration },
    #[error("rank {rank} sent {got} values where this rank has {expected}: the ranks run different models or settings")]
    Length { rank: usize, expected: usize, got: usize },
    #[error("rank {rank} {message}")]
    Handshake { rank: usize, message: String },
    #[error("environment variable {name}={value:?}: {message}")]
    Env {
        name: &'static str,
        value: String,
        message: String,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}
