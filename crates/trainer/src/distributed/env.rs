//! torchrun's launch contract: the environment variables that make a process one rank of a run.

use super::CollectiveError;

/// Where this process stands in a run, from `RANK`, `LOCAL_RANK`, `WORLD_SIZE`, `MASTER_ADDR`
/// and `MASTER_PORT` as torchrun, Slurm scripts and `ember train --nproc-per-node` set them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorldEnv {
    pub rank: usize,
    /// The rank among this host's processes: the GPU it uses.
    pub local_rank: usize,
    pub world_size: usize,
    /// Where rank 0 listens.
    pub master_addr: String,
    pub master_port: u16,
}

impl WorldEnv {
    /// Reads the process environment; `None` when `WORLD_SIZE` is unset (a single process).
    pub fn from_env() -> Result<Option<Self>, CollectiveError> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// As [`Self::from_env`], with `var` looking the variables up. A variable that is set but
    /// malformed, or missing beside `WORLD_SIZE`, is an error naming it.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, CollectiveError> {
        let Some(world) = var("WORLD_SIZE") else {
            return Ok(None);
        };
        let number = |name: &'static str, value: String| -> Result<usize, CollectiveError> {
            value.trim().parse().map_err(|_| CollectiveError::Env {
                name,
                value,
                message: "expected a non-negative integer".into(),
            })
        };
        let required = |name: &'static str| -> Result<String, CollectiveError> {
            var(name).ok_or_else(|| CollectiveError::Env {
                name,
                value: String::new(),
                message: format!("unset, but WORLD_SIZE={world} is set: a rank of a run needs RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT"),
            })
        };
        let world_size = number("WORLD_SIZE", world.clone())?;
        if world_size == 0 {
            return Err(CollectiveError::Env {
                name: "WORLD_SIZE",
                value: world,
                message: "a run has at least one rank".into(),
            });
        }
        let rank_text = required("RANK")?;
        let rank = number("RANK", rank_text.clone())?;
        if rank >= world_size {
            return Err(CollectiveError::Env {
                name: "RANK",
                value: rank_text,
                message: format!("ranks are 0..{world_size} (WORLD_SIZE={world_size})"),
            });
        }
        // torchrun always sets LOCAL_RANK; a one-process-per-host launcher may not.
        let local_rank = match var("LOCAL_RANK") {
            Some(value) => number("LOCAL_RANK", value)?,
            None => 0,
        };
        let (master_addr, master_port) = match world_size {
            1 => (
                var("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into()),
                var("MASTER_PORT").and_then(|p| p.parse().ok()).unwrap_or(0),
            ),
            _ => {
                let port_text = required("MASTER_PORT")?;
                let port = port_text.trim().parse().map_err(|_| CollectiveError::Env {
                    name: "MASTER_PORT",
                    value: port_text.clone(),
                    message: "expected a TCP port, 1 to 65535".into(),
                })?;
                if port == 0 {
                    return Err(CollectiveError::Env {
                        name: "MASTER_PORT",
                        value: port_text,
                        message: "expected a TCP port, 1 to 65535".into(),
                    });
                }
                (required("MASTER_ADDR")?, port)
            }
        };
        Ok(Some(Self {
            rank,
            local_rank,
            world_size,
            master_addr,
            master_port,
        }))
    }
}
