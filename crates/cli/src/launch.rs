//! `ember train --nproc-per-node N`: torchrun's job on one host. Starts this command N times
//! as ranks 0..N of one data-parallel run (`RANK`, `LOCAL_RANK`, `WORLD_SIZE`, `MASTER_ADDR`,
//! `MASTER_PORT` set for each) and waits for them; when one fails, the rest are ended and the
//! run fails naming it. Across hosts, torchrun or Slurm set those variables themselves and start
//! `ember train` without this option.

use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// How long the other ranks get to end on their own (they see the failed rank leave and say
/// so) before they are killed.
const GRACE: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(20);

/// Runs `nproc` ranks of this process's own command line without `--nproc-per-node`, rank 0
/// listening on `master_port` (a free port when `None`).
pub fn run(nproc: usize, master_port: Option<u16>) -> Result<()> {
    let port = match master_port {
        Some(port) => port,
        None => free_port()?,
    };
    let exe = std::env::current_exe().context("finding the ember executable to start the ranks")?;
    let args = rank_args(std::env::args().skip(1));
    // Ctrl-C reaches every rank (one process group): they save a checkpoint and end; the
    // launcher waits for them.
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = interrupted.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::Relaxed)).context("installing the Ctrl-C handler")?;
    eprintln!("ember: starting {nproc} ranks on this host (MASTER_PORT {port})");
    let mut ranks: Vec<Child> = Vec::with_capacity(nproc);
    for rank in 0..nproc {
        let child = Command::new(&exe)
            .args(&args)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", nproc.to_string())
            .env("LOCAL_WORLD_SIZE", nproc.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .spawn();
        match child {
            Ok(child) => ranks.push(child),
            Err(e) => {
                end(&mut ranks);
                return Err(e).with_context(|| format!("starting rank {rank} ({})", exe.display()));
            }
        }
    }
    let mut exited: Vec<Option<ExitStatus>> = vec![None; nproc];
    loop {
        let mut failed = Vec::new();
        for (rank, child) in ranks.iter_mut().enumerate() {
            if exited[rank].is_none() {
                exited[rank] = child.try_wait().with_context(|| format!("waiting for rank {rank}"))?;
                if exited[rank].is_some_and(|s| !s.success()) {
                    failed.push(rank);
                }
            }
        }
        // The first to fail is the cause: the others fail after it, saying it left. Within
        // one poll, a rank killed by a signal went first.
        if let Some(&first) = failed
            .iter()
            .find(|&&r| exited[r].is_some_and(|s| s.signal().is_some()))
            .or(failed.first())
        {
            let status = exited[first].expect("it exited");
            let deadline = Instant::now() + GRACE;
            while Instant::now() < deadline && exited.iter().any(Option::is_none) {
                std::thread::sleep(POLL);
                for (rank, child) in ranks.iter_mut().enumerate() {
                    if exited[rank].is_none() {
                        exited[rank] = child.try_wait().ok().flatten();
                    }
                }
            }
            end(&mut ranks);
            bail!("rank {first} of {nproc} failed ({status}); the run ended on every rank");
        }
        if exited.iter().all(Option::is_some) {
            return Ok(());
        }
        std::thread::sleep(POLL);
    }
}

/// Kills every rank still running and reaps them all.
fn end(ranks: &mut [Child]) {
    for child in ranks.iter_mut() {
        if child.try_wait().ok().flatten().is_none() {
            let _ = child.kill();
        }
        let _ = child.wait();
    }
}

/// The command line without `--nproc-per-node N` (or `=N`) and `--master-port P`.
fn rank_args(args: impl Iterator<Item = String>) -> Vec<String> {
    let mut kept = Vec::new();
    let mut skip_value = false;
    for arg in args {
        if skip_value {
            skip_value = false;
            continue;
        }
        match arg.as_str() {
            "--nproc-per-node" | "--master-port" => skip_value = true,
            a if a.starts_with("--nproc-per-node=") || a.starts_with("--master-port=") => {}
            _ => kept.push(arg),
        }
    }
    kept
}

/// A TCP port free on this host now (the OS's choice).
fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port for rank 0")?;
    Ok(listener.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ranks_command_line_drops_the_launcher_options() {
        let args = [
            "train",
            "--nproc-per-node",
            "2",
            "--config",
            "c.toml",
            "--master-port=29501",
            "--set",
            "training.max_steps=3",
        ];
        assert_eq!(
            rank_args(args.iter().map(|s| s.to_string())),
            ["train", "--config", "c.toml", "--set", "training.max_steps=3"]
        );
        let args = ["train", "--nproc-per-node=4", "--config", "c.toml"];
        assert_eq!(
            rank_args(args.iter().map(|s| s.to_string())),
            ["train", "--config", "c.toml"]
        );
    }
}
