//! A training process killed with SIGKILL at any moment, checkpoint writes included, leaves
//! only complete checkpoints behind, the newest one resumes, and what the killed writes left
//! (`.checkpoint-N.partial-PID`) is gone after the next start; `metrics.jsonl` ends with each
//! step logged once.
//!
//! The kills are timed by watching the output directory, not by the clock: on a loaded
//! machine starting the binary and loading the model can take longer than any fixed sleep, and
//! a sleep only hopes to land inside a checkpoint write where watching for the write's
//! temporary directory lands there every time.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

const CHECKPOINT_FILES: [&str; 4] = [
    "adapter_config.json",
    "adapter_model.safetensors",
    "optimizer.safetensors",
    "trainer_state.json",
];

/// How long a run may take to reach the moment it is to be killed at (a cold start of the
/// debug binary under a parallel build included).
const PATIENCE: Duration = Duration::from_secs(600);

fn checkpoints(out: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(out)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("checkpoint-"))
        .collect();
    dirs.sort();
    dirs
}

/// Whether process `pid` is writing a checkpoint in `out` now (its `.checkpoint-N.partial-PID`
/// exists).
fn writing_checkpoint(out: &Path, pid: u32) -> bool {
    let suffix = format!(".partial-{pid}");
    std::fs::read_dir(out).into_iter().flatten().flatten().any(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        name.starts_with(".checkpoint-") && name.ends_with(&suffix)
    })
}

/// When in a run the kill comes.
#[derive(Debug, Clone, Copy)]
enum Moment {
    /// This long after a checkpoint write is seen under way.
    DuringWrite(Duration),
    /// As soon as a checkpoint the run did not start with is in place (the save's last
    /// fsync, the pruning or the next step under way).
    AfterCheckpoint,
}

/// Waits for `moment` in the run `child` writes to `out`, then kills it (SIGKILL on Unix).
fn kill_at(child: &mut Child, out: &Path, moment: Moment) {
    let before: HashSet<PathBuf> = checkpoints(out).into_iter().collect();
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before {moment:?}");
        }
        let reached = match moment {
            Moment::DuringWrite(_) => writing_checkpoint(out, child.id()),
            Moment::AfterCheckpoint => checkpoints(out).iter().any(|dir| !before.contains(dir)),
        };
        if reached {
            break;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "the run did not reach {moment:?} in {PATIENCE:?}"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
    if let Moment::DuringWrite(delay) = moment {
        std::thread::sleep(delay);
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

fn global_step(dir: &Path) -> u64 {
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("trainer_state.json")).unwrap()).unwrap();
    state["global_step"].as_u64().unwrap()
}

#[test]
fn sigkill_never_leaves_a_half_written_checkpoint() {
    let out = tempfile::tempdir().unwrap();
    let run = out.path().join("run");
    let config = out.path().join("run.toml");
    std::fs::write(
        &config,
        format!(
            "[model]\npath = \"{}\"\n[lora]\nr = 4\nlora_alpha = 8\ntarget_modules = \"all-linear\"\n\
             [data]\npath = \"{}\"\nmax_seq_length = 48\n\
             [training]\noutput_dir = \"{}\"\nper_device_train_batch_size = 2\nmax_steps = 1000\n\
             learning_rate = 1e-3\nsave_steps = 1\nsave_total_limit = 3\noptim = \"adamw_8bit\"\n",
            repo().join("fixtures/models/gemma3").display(),
            repo().join("datasets/tiny-instructions.jsonl").display(),
            run.display()
        ),
    )
    .unwrap();
    // The first run dies inside its first save (nothing to resume: the next run starts afresh
    // beside the dead write's leftovers); the resumed ones die inside later saves, at different
    // points of the write, or just after one.
    let moments = [
        Moment::DuringWrite(Duration::ZERO),
        Moment::AfterCheckpoint,
        Moment::DuringWrite(Duration::ZERO),
        Moment::DuringWrite(Duration::from_millis(2)),
        Moment::AfterCheckpoint,
    ];
    for (round, moment) in moments.into_iter().enumerate() {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ember"));
        command.args(["train", "--device", "cpu", "--config"]).arg(&config);
        if !checkpoints(&run).is_empty() {
            command.args(["--resume", "latest"]);
        }
        let mut child = command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        kill_at(&mut child, &run, moment);

        for dir in checkpoints(&run) {
            for file in CHECKPOINT_FILES {
                assert!(dir.join(file).exists(), "round {round}: {} lacks {file}", dir.display());
            }
            assert!(global_step(&dir) > 0);
        }
    }
    // The newest checkpoint continues: two more steps, then a clean exit.
    let newest = checkpoints(&run).iter().map(|dir| global_step(dir)).max().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(["train", "--device", "cpu", "--resume", "latest", "--config"])
        .arg(&config)
        .args(["--set", &format!("training.max_steps={}", newest + 2)])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "resuming failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(run.join(format!("checkpoint-{}", newest + 2)).exists());
    // Every resume cut metrics.jsonl back to its checkpoint's step: the steps logged after it by
    // the killed run were logged again, and the file holds each step once.
    let steps: Vec<u64> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(steps, (1..=newest + 2).collect::<Vec<_>>());
    let leftovers: Vec<String> = std::fs::read_dir(&run)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
}
