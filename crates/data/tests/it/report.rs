//! What `ember data` prints.

use ember_data::{DatasetReport, Percentiles, TrainOn};

use crate::common::{bytes_tokenizer, config, load_ok, write};

#[test]
fn the_report_counts_and_marks_the_trained_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let lines = [
        serde_json::json!({"instruction": "Add.", "input": "2+2", "output": "4"}),
        serde_json::json!({"instruction": "Long.", "input": "", "output": "x".repeat(300)}),
    ];
    let path = write(dir.path(), "r.jsonl", format!("{}\n{}\n", lines[0], lines[1]));
    let tokenizer = bytes_tokenizer();
    let mut config = config(&path);
    config.train_on = TrainOn::Completion;
    config.max_seq_length = 200;
    let splits = load_ok(&config, &tokenizer);
    let report = DatasetReport::new(&config, &splits, &tokenizer, 1).unwrap();

    assert_eq!(report.train.stats.records, 2);
    assert_eq!(report.train.stats.truncated, 1);
    assert_eq!(report.train.lengths.max, 200);
    assert_eq!(
        report.examples[0].marked,
        "<bos>Based on given instruction and input, generate an appropriate response\n\
         ### Instruction:\nAdd.\n### Input:\n2+2\n### Response:\n[[4\n<eos>]]"
    );
    let text = report.to_string();
    for expected in [
        "template alpaca-seed, training on completions only, max_seq_length 200 (truncate)",
        "train: 2 records -> 2 samples",
        "r.jsonl (2 records)",
        "max 200",
        "truncated 1, dropped 0 (too long) + 0 (no trained token)",
        "sample 0 (",
        "[[4\n<eos>]]",
    ] {
        assert!(text.contains(expected), "`{expected}` not in:\n{text}");
    }
}

#[test]
fn percentiles_are_nearest_rank() {
    let values: Vec<usize> = (1..=100).collect();
    let p = Percentiles::of_sorted(&values);
    assert_eq!((p.min, p.p50, p.p90, p.p95, p.p99, p.max), (1, 50, 90, 95, 99, 100));
    let p = Percentiles::of_sorted(&[7]);
    assert_eq!((p.min, p.p50, p.p99, p.max), (7, 7, 7, 7));
}
