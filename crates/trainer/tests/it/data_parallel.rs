//! Data parallelism on the CPU: W ranks as threads summing through a [`ThreadGroup`] (and a
//! [`TcpGroup`] over localhost) equal one rank with W times the accumulation (bit for bit when
//! each rank has one micro-batch a step); a non-finite
//! gradient on one rank skips the step on all; a rank that fails or hangs ends the run on every
//! rank instead of leaving them waiting; a resume on another number of ranks goes on only where
//! the steps stay the same.

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::{AD, config};
use burn::backend::NdArray;
use burn::tensor::{DType, Tensor};
use ember_model::{GemmaForCausalLM, LayerGrads, LayerKeep};
use ember_trainer::distributed::{Collective, CollectiveError, TcpGroup, ThreadGroup, WorldEnv};
use ember_trainer::grads::MicroBatch;
use ember_trainer::kernels::{BatchKernels, BurnKernels, Favour, TrainKernels};
use ember_trainer::trainer::{Start, StepLog, TrainSummary, train, train_across};
use ember_trainer::{Result, TrainError};

type B = NdArray<f32>;

/// What a rank's kernels do at its `at`-th micro-batch (counted from 0).
#[derive(Clone, Copy)]
enum Fault {
    None,
    /// The loss and its gradient come out NaN.
    Nan {
        at: usize,
    },
    /// The micro-batch fails.
    Fail {
        at: usize,
    },
    /// The micro-batch takes this long first.
    Stall {
        at: usize,
        pause: Duration,
    },
}

/// burn's kernels with a fault injected on one rank.
struct Faulty {
    fault: Fault,
    micro_batches: AtomicUsize,
}

impl Faulty {
    fn new(fault: Fault) -> Self {
        Self {
            fault,
            micro_batches: AtomicUsize::new(0),
        }
    }
}

impl TrainKernels<B> for Faulty {
    fn name(&self) -> &'static str {
        "faulty"
    }

    fn unsupported(&self, _: &GemmaForCausalLM<B>) -> Option<String> {
        None
    }

    fn prepare<'a>(
        &'a self,
        model: &'a GemmaForCausalLM<B>,
        batch: &MicroBatch,
        favour: Favour,
    ) -> Result<Box<dyn BatchKernels<B> + 'a>> {
        let n = self.micro_batches.fetch_add(1, Ordering::Relaxed);
        let inner = BurnKernels.prepare(model, batch, favour)?;
        match self.fault {
            Fault::Fail { at } if at == n => Err(TrainError::Kernels("injected failure".into())),
            Fault::Stall { at, pause } if at == n => {
                std::thread::sleep(pause);
                Ok(inner)
            }
            Fault::Nan { at } if at == n => Ok(Box::new(NanHead(inner))),
            _ => Ok(inner),
        }
    }
}

struct NanHead<'a>(Box<dyn BatchKernels<B> + 'a>);

impl BatchKernels<B> for NanHead<'_> {
    fn forward(&mut self, index: usize, x: Tensor<B, 3>, keep: LayerKeep<B>) -> Result<Tensor<B, 3>> {
        self.0.forward(index, x, keep)
    }

    fn backward(
        &mut self,
        index: usize,
        x: Tensor<B, 3>,
        grad: Tensor<B, 3>,
        keep: LayerKeep<B>,
    ) -> Result<(Tensor<B, 3>, LayerGrads<B>)> {
        self.0.backward(index, x, grad, keep)
    }

    fn head(&mut self, x: Tensor<B, 3>, normaliser: f64) -> Result<(Tensor<B, 1>, Tensor<B, 3>)> {
        let (loss, grad) = self.0.head(x, normaliser)?;
        Ok((loss.mul_scalar(f32::NAN), grad.mul_scalar(f32::NAN)))
    }

    fn loss(&mut self, x: Tensor<B, 3>) -> Result<Tensor<B, 1>> {
        self.0.loss(x)
    }

    fn logits(&mut self, x: Tensor<B, 3>) -> Result<Tensor<B, 3>> {
        self.0.logits(x)
    }
}

/// A rank's result: its summary and every step it logged.
type RankRun = std::result::Result<(TrainSummary, Vec<StepLog>), TrainError>;

/// Trains `config` (with `accumulation`) as `world` ranks in threads, rank r with `faults[r]`.
fn run_ranks(
    world: usize,
    accumulation: usize,
    out: &Path,
    steps: usize,
    start: impl Fn() -> Start + Sync,
    faults: &[Fault],
    timeout: Duration,
) -> Vec<RankRun> {
    let mut config = config(out, steps, "adamw_torch", true);
    config.training.gradient_accumulation_steps = accumulation;
    let results = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for (rank, mut collective) in ThreadGroup::new(world, timeout).into_iter().enumerate() {
            let (config, results, start) = (&config, &results, &start);
            let fault = faults.get(rank).copied().unwrap_or(Fault::None);
            scope.spawn(move || {
                let kernels = Faulty::new(fault);
                let mut logs = Vec::new();
                let result = train_across::<AD>(
                    config,
                    start(),
                    &Default::default(),
                    DType::F32,
                    &kernels,
                    &mut collective,
                    &AtomicBool::new(false),
                    |log| logs.push(log.clone()),
                );
                // The group learns at once that this rank is gone (a failed one included).
                drop(collective);
                results
                    .lock()
                    .unwrap()
                    .push((rank, result.map(|summary| (summary, logs))));
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by_key(|(rank, _)| *rank);
    results.into_iter().map(|(_, result)| result).collect()
}

fn one_rank(accumulation: usize, out: &Path, steps: usize) -> Vec<StepLog> {
    let mut config = config(out, steps, "adamw_torch", true);
    config.training.gradient_accumulation_steps = accumulation;
    let mut logs = Vec::new();
    train::<AD>(
        &config,
        Start::Fresh,
        &Default::default(),
        DType::F32,
        &BurnKernels,
        &AtomicBool::new(false),
        |log| logs.push(log.clone()),
    )
    .unwrap();
    logs
}

fn adapter(checkpoint: &Path) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut tensors = ember_testkit::read_f32(&checkpoint.join("adapter_model.safetensors"));
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    tensors
}

fn assert_close(what: &str, a: f64, b: f64) {
    assert!((a - b).abs() <= 1e-6 * a.abs().max(b.abs()), "{what}: {a} vs {b}");
}

/// Each adapter tensor within `tolerance` relative (`‖a − b‖ / ‖a‖`).
fn assert_same_adapter(a: &Path, b: &Path, tolerance: f64) {
    for ((name, shape, x), (other, other_shape, y)) in adapter(a).into_iter().zip(adapter(b)) {
        assert_eq!((&name, &shape), (&other, &other_shape));
        let norm = |v: &mut dyn Iterator<Item = f64>| v.map(|d| d * d).sum::<f64>().sqrt();
        let diff = norm(&mut x.iter().zip(&y).map(|(a, b)| f64::from(a - b)));
        let size = norm(&mut x.iter().map(|&a| f64::from(a)));
        assert!(
            diff <= tolerance * size,
            "{name}: differs by {:e} relative",
            diff / size
        );
    }
}

fn assert_same_steps(ranks: &[StepLog], single: &[StepLog]) {
    assert_eq!(ranks.len(), single.len());
    for (a, b) in ranks.iter().zip(single) {
        assert_close(&format!("loss at step {}", a.step), a.loss, b.loss);
        assert_close(&format!("grad norm at step {}", a.step), a.grad_norm, b.grad_norm);
    }
}

const PATIENT: Duration = Duration::from_secs(600);

/// With one micro-batch per rank, the ranks' sum adds the micro-batches in the order one rank
/// accumulates them: the same bits. With two, rank 0 holds g0 + g2 and rank 1 g1 + g3, and
/// (g0 + g2) + (g1 + g3) rounds unlike ((g0 + g1) + g2) + g3; the losses and gradient norms
/// stay within 1e-6, but Adam's division by √v magnifies the rounding of gradients near zero:
/// 2.7e-6 relative in the worst adapter tensor after 4 steps (0 after the first).
#[test]
fn w_ranks_equal_one_rank_with_w_times_the_accumulation() {
    for (world, accumulation, tolerance) in [(2, 1, 0.0), (3, 1, 0.0), (2, 2, 1e-5)] {
        let single = tempfile::tempdir().unwrap();
        let reference = one_rank(world * accumulation, single.path(), 4);
        let shared = tempfile::tempdir().unwrap();
        let ranks = run_ranks(world, accumulation, shared.path(), 4, || Start::Fresh, &[], PATIENT);
        for (rank, result) in ranks.into_iter().enumerate() {
            let (summary, logs) = result.unwrap();
            assert_eq!(summary.steps, 4);
            assert_same_steps(&logs, &reference);
            assert_eq!(
                summary.last_checkpoint,
                shared.path().join("checkpoint-4"),
                "rank {rank}"
            );
        }
        assert_same_adapter(
            &single.path().join("checkpoint-4"),
            &shared.path().join("checkpoint-4"),
            tolerance,
        );
        let logged = std::fs::read_to_string(shared.path().join("metrics.jsonl")).unwrap();
        assert_eq!(logged.lines().count(), 4, "rank 0 alone writes metrics.jsonl");
    }
}

#[test]
fn a_non_finite_gradient_on_one_rank_skips_the_step_on_every_rank() {
    let out = tempfile::tempdir().unwrap();
    let ranks = run_ranks(
        2,
        1,
        out.path(),
        4,
        || Start::Fresh,
        &[Fault::None, Fault::Nan { at: 1 }],
        PATIENT,
    );
    let logs: Vec<Vec<StepLog>> = ranks.into_iter().map(|r| r.unwrap().1).collect();
    for logs in &logs {
        let skipped: Vec<bool> = logs.iter().map(|l| l.skipped).collect();
        assert_eq!(skipped, [false, true, false, false]);
    }
    for (a, b) in logs[0].iter().zip(&logs[1]) {
        if !a.skipped {
            assert_eq!(a.loss, b.loss, "step {}: the ranks stayed together", a.step);
        }
    }
}

#[test]
fn a_failing_rank_ends_the_run_on_every_rank() {
    let out = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let ranks = run_ranks(
        2,
        1,
        out.path(),
        6,
        || Start::Fresh,
        &[Fault::None, Fault::Fail { at: 2 }],
        PATIENT,
    );
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "the ranks waited for the failed one"
    );
    let errors: Vec<String> = ranks.into_iter().map(|r| r.unwrap_err().to_string()).collect();
    assert!(errors[1].contains("injected failure"), "{}", errors[1]);
    assert!(errors[0].contains("rank 1 left the run"), "{}", errors[0]);
}

#[test]
fn a_hanging_rank_ends_the_run_after_the_timeout() {
    let out = tempfile::tempdir().unwrap();
    let stall = Fault::Stall {
        at: 1,
        pause: Duration::from_secs(4),
    };
    let ranks = run_ranks(
        2,
        1,
        out.path(),
        4,
        || Start::Fresh,
        &[Fault::None, stall],
        Duration::from_secs(1),
    );
    let errors: Vec<String> = ranks.into_iter().map(|r| r.unwrap_err().to_string()).collect();
    assert!(
        errors[0].contains("rank 1 did not reach the gradient sum within 1 s"),
        "{}",
        errors[0]
    );
    assert!(errors[1].contains("rank 0 left the run"), "{}", errors[1]);
}

#[test]
fn a_resume_on_other_ranks_goes_on_where_the_steps_stay_the_same() {
    let single = tempfile::tempdir().unwrap();
    one_rank(2, single.path(), 6);
    let out = tempfile::tempdir().unwrap();
    for result in run_ranks(2, 1, out.path(), 3, || Start::Fresh, &[], PATIENT) {
        result.unwrap();
    }
    let checkpoint = out.path().join("checkpoint-3");
    // One rank with accumulation 1 would take half the micro-batches a step: refused.
    let mut halved = config(out.path(), 6, "adamw_torch", true);
    halved.training.gradient_accumulation_steps = 1;
    let stop = AtomicBool::new(false);
    let refused = train::<AD>(
        &halved,
        Start::Resume(checkpoint.clone()),
        &Default::default(),
        DType::F32,
        &BurnKernels,
        &stop,
        |_| {},
    );
    let message = refused.unwrap_err().to_string();
    assert!(message.contains("set gradient_accumulation_steps = 2"), "{message}");
    // With accumulation 2 it is the same run.
    let mut same = halved.clone();
    same.training.gradient_accumulation_steps = 2;
    train::<AD>(
        &same,
        Start::Resume(checkpoint),
        &Default::default(),
        DType::F32,
        &BurnKernels,
        &stop,
        |_| {},
    )
    .unwrap();
    assert_same_adapter(
        &single.path().join("checkpoint-6"),
        &out.path().join("checkpoint-6"),
        0.0,
    );
}

/// Ranks over localhost, each in a thread.
fn tcp_ranks(world: usize, fingerprints: &[u64]) -> Vec<std::result::Result<TcpGroup, CollectiveError>> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..world)
            .map(|rank| {
                let env = WorldEnv {
                    rank,
                    local_rank: rank,
                    world_size: world,
                    master_addr: "127.0.0.1".into(),
                    master_port: port,
                };
                let fingerprint = fingerprints[rank];
                scope.spawn(move || TcpGroup::connect(&env, fingerprint, Duration::from_secs(30)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn tcp_ranks_sum_in_rank_order_and_refuse_another_run() {
    let groups: Vec<TcpGroup> = tcp_ranks(3, &[7, 7, 7]).into_iter().map(|g| g.unwrap()).collect();
    // 1e8 + 1 - 1e8 in f32 depends on the order: rank order gives (1e8 + 1) - 1e8 = 0.
    let inputs = [[1e8f32, 0.5], [1.0, 0.25], [-1e8, 0.125]];
    let sums: Vec<Vec<f32>> = std::thread::scope(|scope| {
        let handles: Vec<_> = groups
            .into_iter()
            .zip(inputs)
            .map(|(mut group, mut values)| {
                scope.spawn(move || {
                    group.sum_f32(&mut values).unwrap();
                    let mut wide = [group.rank() as f64, 1.0];
                    group.sum_f64(&mut wide).unwrap();
                    assert_eq!(wide, [3.0, 3.0]);
                    values.to_vec()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for sum in &sums {
        assert_eq!(sum, &[(1e8f32 + 1.0) - 1e8, 0.875]);
    }
    let refused = tcp_ranks(2, &[7, 8]);
    let message = refused[0].as_ref().err().expect("rank 0 refuses").to_string();
    assert!(message.contains("rank 1 runs other settings"), "{message}");
    assert!(refused[1].is_err());
}

#[test]
fn a_tcp_rank_that_ends_is_named_by_the_others() {
    let mut groups: Vec<TcpGroup> = tcp_ranks(2, &[1, 1]).into_iter().map(|g| g.unwrap()).collect();
    drop(groups.pop());
    let error = groups[0].sum_f32(&mut [1.0]).unwrap_err();
    assert!(matches!(error, CollectiveError::Left { rank: 1 }), "{error}");
}

/// What NCCL's sums rely on to learn that a rank died: the TCP links, looked at without a sum.
#[test]
fn tcp_links_tell_a_rank_that_ended_without_a_sum() {
    let mut groups: Vec<TcpGroup> = tcp_ranks(3, &[1, 1, 1]).into_iter().map(|g| g.unwrap()).collect();
    for group in &mut groups {
        group.check_peers().unwrap();
    }
    drop(groups.pop());
    let error = groups[0].check_peers().unwrap_err();
    assert!(matches!(error, CollectiveError::Left { rank: 2 }), "{error}");
    // Rank 1 sees only rank 0, which still runs.
    groups[1].check_peers().unwrap();
    drop(groups.remove(0));
    let error = groups[0].check_peers().unwrap_err();
    assert!(matches!(error, CollectiveError::Left { rank: 0 }), "{error}");
}

#[test]
fn the_launch_environment_is_read_as_torchrun_sets_it() {
    let vars = |pairs: &'static [(&'static str, &'static str)]| {
        move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
    };
    assert_eq!(WorldEnv::from_vars(vars(&[])).unwrap(), None);
    let env = WorldEnv::from_vars(vars(&[
        ("WORLD_SIZE", "4"),
        ("RANK", "3"),
        ("LOCAL_RANK", "1"),
        ("MASTER_ADDR", "node0"),
        ("MASTER_PORT", "29500"),
    ]))
    .unwrap()
    .unwrap();
    assert_eq!(
        (env.rank, env.local_rank, env.world_size, env.master_port),
        (3, 1, 4, 29500)
    );
    for (pairs, named) in [
        (
            &[("WORLD_SIZE", "2"), ("MASTER_ADDR", "a"), ("MASTER_PORT", "1")][..],
            "RANK",
        ),
        (
            &[
                ("WORLD_SIZE", "2"),
                ("RANK", "2"),
                ("MASTER_ADDR", "a"),
                ("MASTER_PORT", "1"),
            ][..],
            "RANK",
        ),
        (&[("WORLD_SIZE", "two")][..], "WORLD_SIZE"),
        (
            &[("WORLD_SIZE", "2"), ("RANK", "0"), ("MASTER_ADDR", "a")][..],
            "MASTER_PORT",
        ),
        (
            &[
                ("WORLD_SIZE", "2"),
                ("RANK", "0"),
                ("MASTER_ADDR", "a"),
                ("MASTER_PORT", "0"),
            ][..],
            "MASTER_PORT",
        ),
    ] {
        let pairs: &'static [(&'static str, &'static str)] = pairs;
        let error = WorldEnv::from_vars(vars(pairs)).unwrap_err().to_string();
        assert!(error.contains(named), "{named}: {error}");
    }
}
