//! Batches as the model sees them: padding, labels, packing masks, order and resume.

use std::sync::Arc;

use ember_data::{
    Batch, DataConfig, Dataset, EvalSplit, IGNORE_INDEX, Loader, LoaderOptions, LoaderPosition, eval_batches,
};

use crate::common::{bytes_tokenizer, config, load_ok, write};

/// Sample `i` has length `lengths[i]`; its ids are `1000 * (i + 1) + position` (unique, so a
/// token in a batch tells which sample and position it came from); the second half is trained.
fn dataset(lengths: &[usize]) -> Arc<Dataset> {
    Arc::new(Dataset::from_samples(lengths.iter().enumerate().map(|(i, &len)| {
        let ids = (0..len).map(|p| 1000 * (i as u32 + 1) + p as u32).collect();
        let trained = (0..len).map(|p| p >= len / 2).collect();
        (ids, trained)
    })))
}

fn options(batch_size: usize) -> LoaderOptions {
    LoaderOptions {
        batch_size,
        shuffle: true,
        group_by_length: false,
        packing: false,
        max_seq_length: 16,
        seed: 7,
        pad_id: 0,
    }
}

const LENGTHS: [usize; 11] = [3, 16, 7, 2, 9, 5, 12, 4, 8, 6, 10];

/// Which sample a token id belongs to, and its position in it.
fn origin(id: u32) -> (u32, u32) {
    (id / 1000 - 1, id % 1000)
}

#[test]
fn packing_never_attends_across_samples() {
    let data = dataset(&LENGTHS);
    let mut opts = options(2);
    opts.packing = true;
    let mut loader = Loader::new(data.clone(), opts).unwrap();
    let mut seen = Vec::new();
    let mut packed_rows = 0;
    for _ in 0..loader.batches_per_epoch() {
        let batch = loader.next_batch();
        for row in 0..batch.batch_size {
            let at = |t: usize| row * batch.seq_len + t;
            let segments: Vec<u32> = (0..batch.seq_len).map(|t| batch.segment_ids[at(t)]).collect();
            packed_rows += usize::from(segments.iter().any(|&s| s > 1));
            for q in 0..batch.seq_len {
                for k in 0..batch.seq_len {
                    let allowed = batch.may_attend(row, q, k);
                    let real = segments[q] != 0 && segments[k] != 0;
                    let same_sample = real && origin(batch.input_ids[at(q)]).0 == origin(batch.input_ids[at(k)]).0;
                    // The mask the model sees allows exactly: same sample, not the future.
                    assert_eq!(allowed, same_sample && k <= q, "row {row} q {q} k {k}");
                }
                if segments[q] != 0 {
                    let (sample, position) = origin(batch.input_ids[at(q)]);
                    assert_eq!(batch.position_ids[at(q)], position, "positions restart per sample");
                    if position == 0 {
                        seen.push(sample);
                    }
                }
            }
        }
        assert!(batch.seq_len <= 16);
    }
    assert!(packed_rows > 0, "the test must pack something");
    seen.sort_unstable();
    assert_eq!(seen, (0..LENGTHS.len() as u32).collect::<Vec<_>>(), "each sample once");
}

#[test]
fn labels_are_unshifted_ids_at_trained_positions_and_never_a_sample_start() {
    let data = dataset(&LENGTHS);
    for packing in [false, true] {
        let mut opts = options(3);
        opts.packing = packing;
        let mut loader = Loader::new(data.clone(), opts).unwrap();
        for _ in 0..loader.batches_per_epoch() {
            let batch = loader.next_batch();
            let mut trained = 0;
            for i in 0..batch.input_ids.len() {
                if batch.segment_ids[i] == 0 {
                    assert_eq!(batch.labels[i], IGNORE_INDEX, "padding");
                    assert_eq!(batch.input_ids[i], 0, "pad id");
                    continue;
                }
                let (sample, position) = origin(batch.input_ids[i]);
                let len = LENGTHS[sample as usize] as u32;
                let expected = if position >= len / 2 && position > 0 {
                    i64::from(batch.input_ids[i])
                } else {
                    IGNORE_INDEX
                };
                assert_eq!(batch.labels[i], expected);
                trained += usize::from(expected != IGNORE_INDEX);
            }
            assert_eq!(batch.num_trained_tokens, trained);
        }
    }
}

#[test]
fn unpacked_rows_are_right_padded_to_the_longest_in_the_batch() {
    let data = dataset(&[3, 5, 2]);
    let mut opts = options(3);
    opts.shuffle = false;
    let batch = Loader::new(data.clone(), opts).unwrap().next_batch();
    assert_eq!((batch.batch_size, batch.seq_len), (3, 5));
    assert_eq!(batch.segment_ids, [1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]);
    assert_eq!(batch.attention_mask(), [1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]);
    assert_eq!(batch.position_ids, [0, 1, 2, 0, 0, 0, 1, 2, 3, 4, 0, 1, 0, 0, 0]);
    assert!(!batch.is_packed());
    assert!(batch.may_attend(1, 4, 0) && !batch.may_attend(1, 0, 4) && !batch.may_attend(0, 3, 0));
}

fn run(data: &Arc<Dataset>, opts: LoaderOptions, batches: usize) -> Vec<Batch> {
    let mut loader = Loader::new(data.clone(), opts).unwrap();
    (0..batches).map(|_| loader.next_batch()).collect()
}

#[test]
fn resume_matches_the_uninterrupted_run() {
    let data = dataset(&LENGTHS);
    let variants = [
        options(2),
        LoaderOptions {
            packing: true,
            ..options(2)
        },
        LoaderOptions {
            group_by_length: true,
            ..options(2)
        },
        LoaderOptions {
            shuffle: false,
            ..options(4)
        },
    ];
    for opts in variants {
        let uninterrupted = run(&data, opts, 20);
        for stop in [0, 1, 5, 6, 13] {
            let mut loader = Loader::new(data.clone(), opts).unwrap();
            for batch in &uninterrupted[..stop] {
                assert_eq!(&loader.next_batch(), batch);
            }
            let saved = serde_json::to_string(&loader.position()).unwrap();
            let position: LoaderPosition = serde_json::from_str(&saved).unwrap();
            let mut resumed = Loader::resume(data.clone(), opts, position).unwrap();
            for (i, batch) in uninterrupted[stop..].iter().enumerate() {
                assert_eq!(
                    &resumed.next_batch(),
                    batch,
                    "{opts:?}: batch {} after stop {stop}",
                    stop + i
                );
            }
        }
    }
}

#[test]
fn resume_over_other_data_or_seed_is_refused() {
    let data = dataset(&LENGTHS);
    let mut loader = Loader::new(data.clone(), options(2)).unwrap();
    loader.next_batch();
    let position = loader.position();
    let other = dataset(&LENGTHS[1..]);
    let err = Loader::resume(other, options(2), position).err().unwrap();
    assert!(err.to_string().contains("data fingerprint"), "{err}");
    let err = Loader::resume(data.clone(), LoaderOptions { seed: 8, ..options(2) }, position)
        .err()
        .unwrap();
    assert!(err.to_string().contains("seed"), "{err}");
    let err = Loader::resume(data.clone(), options(3), position).err().unwrap();
    assert!(
        err.to_string().contains("fingerprint"),
        "batch size is part of it: {err}"
    );
}

fn epoch_order(batches: &[Batch]) -> Vec<u32> {
    batches
        .iter()
        .flat_map(|b| (0..b.batch_size).map(|r| origin(b.input_ids[r * b.seq_len]).0))
        .collect()
}

#[test]
fn shuffling_is_deterministic_per_seed_and_changes_per_epoch() {
    let data = dataset(&LENGTHS);
    let per_epoch = LENGTHS.len().div_ceil(2);
    let a = run(&data, options(2), 3 * per_epoch);
    assert_eq!(a, run(&data, options(2), 3 * per_epoch));
    let epochs: Vec<Vec<u32>> = a.chunks(per_epoch).map(epoch_order).collect();
    for epoch in &epochs {
        let mut sorted = epoch.clone();
        sorted.sort_unstable();
        assert_eq!(
            sorted,
            (0..LENGTHS.len() as u32).collect::<Vec<_>>(),
            "every sample once"
        );
    }
    assert_ne!(epochs[0], epochs[1]);
    let other_seed = run(&data, LoaderOptions { seed: 8, ..options(2) }, per_epoch);
    assert_ne!(epoch_order(&other_seed), epochs[0]);
    let unshuffled = run(
        &data,
        LoaderOptions {
            shuffle: false,
            ..options(2)
        },
        per_epoch,
    );
    assert_eq!(epoch_order(&unshuffled), (0..LENGTHS.len() as u32).collect::<Vec<_>>());
}

#[test]
fn group_by_length_batches_similar_lengths_longest_first() {
    let lengths: Vec<usize> = (0..64).map(|i| 2 + (i * 37) % 50).collect();
    let data = dataset(&lengths);
    let opts = LoaderOptions {
        group_by_length: true,
        batch_size: 4,
        ..options(4)
    };
    let loader = Loader::new(data.clone(), opts).unwrap();
    let batches = run(&data, opts, loader.batches_per_epoch());
    assert_eq!(batches[0].seq_len, *lengths.iter().max().unwrap(), "longest first");
    let padding = |bs: &[Batch]| {
        bs.iter()
            .map(|b| b.segment_ids.iter().filter(|&&s| s == 0).count())
            .sum::<usize>()
    };
    let random = run(
        &data,
        LoaderOptions {
            group_by_length: false,
            ..opts
        },
        batches.len(),
    );
    assert!(
        padding(&batches) * 2 < padding(&random),
        "{} vs {}",
        padding(&batches),
        padding(&random)
    );
}

#[test]
fn eval_batches_cover_every_sample_in_order() {
    let data = dataset(&LENGTHS);
    let order: Vec<u32> = eval_batches(&data, 4, 0).flat_map(|b| epoch_order(&[b])).collect();
    assert_eq!(order, (0..LENGTHS.len() as u32).collect::<Vec<_>>());
}

fn numbered_jsonl(n: usize) -> String {
    (0..n)
        .map(|i| {
            serde_json::json!({"instruction": format!("q{i}"), "input": "", "output": format!("a{i}")}).to_string()
                + "\n"
        })
        .collect()
}

#[test]
fn an_eval_fraction_is_exact_disjoint_and_seeded() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "d.jsonl", numbered_jsonl(40));
    let tokenizer = bytes_tokenizer();
    let mut config: DataConfig = config(&path);
    config.eval = Some(EvalSplit::Fraction(0.1));
    let splits = load_ok(&config, &tokenizer);
    let eval = splits.eval.as_ref().unwrap();
    assert_eq!((splits.train.len(), eval.len()), (36, 4));
    assert_eq!((splits.train.stats().records, eval.stats().records), (36, 4));
    let text = |d: &Dataset| -> Vec<Vec<u32>> { d.iter().map(|s| s.input_ids.to_vec()).collect() };
    let (train_ids, eval_ids) = (text(&splits.train), text(eval));
    assert!(eval_ids.iter().all(|e| !train_ids.contains(e)));
    assert_eq!(load_ok(&config, &tokenizer), splits, "same seed, same split");
    config.seed += 1;
    assert_ne!(text(load_ok(&config, &tokenizer).eval.as_ref().unwrap()), eval_ids);

    config.eval = Some(EvalSplit::Fraction(0.001));
    assert!(crate::common::load_err(&config, &tokenizer).contains("eval records"));

    let eval_path = write(dir.path(), "eval.jsonl", numbered_jsonl(3));
    config.eval = Some(EvalSplit::Path(eval_path.to_string_lossy().into_owned()));
    let splits = load_ok(&config, &tokenizer);
    assert_eq!((splits.train.len(), splits.eval.unwrap().len()), (40, 3));
}

#[test]
fn tokenization_does_not_depend_on_the_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "d.jsonl", numbered_jsonl(5000));
    let tokenizer = bytes_tokenizer();
    let mut config = config(&path);
    let one = load_ok(&config, &tokenizer);
    config.num_proc = Some(3);
    assert_eq!(load_ok(&config, &tokenizer), one);
}
