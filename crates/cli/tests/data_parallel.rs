//! `ember train --nproc-per-node 2` on the CPU: two processes, one data-parallel run. It equals
//! one process with twice the accumulation (LoRA dropout included: masks follow the micro-batch,
//! not the rank); SIGKILL of the whole run and `--resume latest` end bit-identical to the run
//! left alone; a killed rank fails the run on every rank, named.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

const PATIENCE: Duration = Duration::from_secs(600);

/// A run config on the tiny fixture writing to `out`.
fn write_config(dir: &Path, out: &Path, accumulation: usize, steps: usize) -> PathBuf {
    let path = dir.join(format!("run-{accumulation}-{steps}.toml"));
    std::fs::write(
        &path,
        format!(
            "[model]\npath = \"{}\"\n[lora]\nr = 4\nlora_alpha = 8\nlora_dropout = 0.1\ntarget_modules = \"all-linear\"\n\
             [data]\npath = \"{}\"\nmax_seq_length = 48\n\
             [training]\noutput_dir = \"{}\"\nper_device_train_batch_size = 2\nmax_steps = {steps}\n\
             gradient_accumulation_steps = {accumulation}\nlearning_rate = 1e-3\nsave_steps = 2\n\
             optim = \"adamw_8bit\"\npad_to_multiple_of = 1\n",
            repo().join("fixtures/models/gemma3").display(),
            repo().join("datasets/tiny-instructions.jsonl").display(),
            out.display()
        ),
    )
    .unwrap();
    path
}

fn ember(config: &Path, extra: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ember"));
    command
        .args(["train", "--device", "cpu", "--config"])
        .arg(config)
        .args(extra);
    command
}

/// A port no one listens on now, for a run's rank 0.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `command` as rank `rank` of `world`, with torchrun's environment (rank 0 on `port` here).
fn as_rank(mut command: Command, rank: usize, world: usize, port: u16) -> Command {
    command
        .env("RANK", rank.to_string())
        .env("WORLD_SIZE", world.to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string());
    command
}

fn succeed(mut command: Command) -> Output {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn tensors(checkpoint: &Path) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut tensors = ember_testkit::read_f32(&checkpoint.join("adapter_model.safetensors"));
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    tensors
}

fn losses(out: &Path) -> Vec<f64> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line).unwrap()["loss"]
                .as_f64()
                .unwrap()
        })
        .collect()
}

/// Waits until `path` exists while `child` runs.
fn wait_for(child: &mut Child, path: &Path) {
    let started = Instant::now();
    while !path.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before {} existed", path.display());
        }
        assert!(started.elapsed() < PATIENCE, "{} did not appear", path.display());
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The pid of the child of `parent` whose environment holds `RANK=rank`.
fn rank_pid(parent: u32, rank: usize) -> u32 {
    let wanted = format!("RANK={rank}");
    let started = Instant::now();
    loop {
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            // `pid (comm) state ppid ...`: the fields after the last ')'.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if ppid != Some(parent) {
                continue;
            }
            let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
            if environ.split(|&b| b == 0).any(|var| var == wanted.as_bytes()) {
                return pid;
            }
        }
        assert!(started.elapsed() < PATIENCE, "rank {rank} of {parent} not found");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn two_ranks_equal_one_with_twice_the_accumulation_and_resume_exactly_after_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let single = dir.path().join("single");
    succeed(ember(&write_config(dir.path(), &single, 2, 6), &[]));
    let pair = dir.path().join("pair");
    let pair_config = write_config(dir.path(), &pair, 1, 6);
    let output = succeed(ember(&pair_config, &["--nproc-per-node", "2"]));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        stderr.matches("final loss").count(),
        1,
        "rank 0 alone reports: {stderr}"
    );

    for (a, b) in losses(&single).iter().zip(losses(&pair)) {
        assert!((a - b).abs() <= 1e-6 * a.abs(), "losses {a} vs {b}");
    }
    for ((name, _, x), (_, _, y)) in tensors(&single.join("checkpoint-6"))
        .into_iter()
        .zip(tensors(&pair.join("checkpoint-6")))
    {
        let scale = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = ember_testkit::max_abs_diff(&x, &y);
        assert!(diff <= 1e-6 * scale, "{name}: differs by {diff}");
    }

    // The same two-rank run killed whole (launcher and ranks) after its step-2 checkpoint, then
    // resumed twice over.
    let killed = dir.path().join("killed");
    let killed_config = write_config(dir.path(), &killed, 1, 6);
    let mut launcher = ember(&killed_config, &["--nproc-per-node", "2"])
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&mut launcher, &killed.join("checkpoint-2"));
    let group = format!("-{}", launcher.id());
    assert!(
        Command::new("kill")
            .args(["-KILL", "--", &group])
            .status()
            .unwrap()
            .success()
    );
    launcher.wait().unwrap();
    succeed(ember(&killed_config, &["--nproc-per-node", "2", "--resume", "latest"]));
    for file in ["adapter_model.safetensors", "optimizer.safetensors"] {
        assert_eq!(
            std::fs::read(pair.join("checkpoint-6").join(file)).unwrap(),
            std::fs::read(killed.join("checkpoint-6").join(file)).unwrap(),
            "{file} after SIGKILL and resume"
        );
    }
}

#[test]
fn a_killed_rank_fails_the_run_on_every_rank() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let config = write_config(dir.path(), &out, 1, 1000);
    let mut launcher = ember(&config, &["--nproc-per-node", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&mut launcher, &out.join("checkpoint-2"));
    let rank_1 = rank_pid(launcher.id(), 1);
    let rank_0 = rank_pid(launcher.id(), 0);
    assert!(
        Command::new("kill")
            .args(["-KILL", &rank_1.to_string()])
            .status()
            .unwrap()
            .success()
    );
    let started = Instant::now();
    let output = launcher.wait_with_output().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the run waited for the killed rank"
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("rank 1 left the run"), "rank 0 names it: {stderr}");
    assert!(stderr.contains("rank 1 of 2 failed"), "the launcher names it: {stderr}");
    assert!(!Path::new(&format!("/proc/{rank_0}")).exists(), "rank 0 still runs");
}

#[test]
fn a_rank_of_another_run_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let rank = |rank: usize, steps: usize| {
        let out = dir.path().join("out");
        as_rank(ember(&write_config(dir.path(), &out, 1, steps), &[]), rank, 2, port)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let zero = rank(0, 4);
    let one = rank(1, 5);
    let (zero, one) = (zero.wait_with_output().unwrap(), one.wait_with_output().unwrap());
    assert!(!zero.status.success() && !one.status.success());
    let stderr = String::from_utf8_lossy(&zero.stderr);
    assert!(stderr.contains("rank 1 runs other settings than rank 0"), "{stderr}");
    let stderr = String::from_utf8_lossy(&one.stderr);
    assert!(stderr.contains("refused by rank 0"), "{stderr}");
}

#[test]
fn a_world_of_one_is_the_plain_run_and_ddp_backend_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (plain, ranked) = (dir.path().join("plain"), dir.path().join("ranked"));
    succeed(ember(&write_config(dir.path(), &plain, 1, 2), &[]));
    let rank_zero = |config: &Path, extra: &[&str]| as_rank(ember(config, extra), 0, 1, port);
    let config = write_config(dir.path(), &ranked, 1, 2);
    succeed(rank_zero(&config, &[]));
    assert_eq!(
        std::fs::read(plain.join("checkpoint-2/adapter_model.safetensors")).unwrap(),
        std::fs::read(ranked.join("checkpoint-2/adapter_model.safetensors")).unwrap(),
        "torchrun's world of one trains as the plain run"
    );

    let output = rank_zero(&config, &["--set", "training.ddp_backend=\"nccl\""])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("ddp_backend = \"nccl\" sums between CUDA GPUs"),
        "{stderr}"
    );
    let output = rank_zero(&config, &["--set", "training.ddp_backend=\"gloo\""])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("ddp_backend") && stderr.contains("gloo"), "{stderr}");
}
