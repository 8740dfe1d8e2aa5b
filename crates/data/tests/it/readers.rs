//! Every format, and shards, read as the same dataset.

use std::path::PathBuf;

use ember_data::{Columns, DataConfig, Dataset, Format, Loader, LoaderOptions, TemplateSpec, Tokenizer};

use crate::common::{alpaca_jsonl, alpaca_records, bytes_tokenizer, config, fixture, gemma, load_ok, write};

/// The alpaca records as JSON Lines, a JSON array, CSV and (committed) Parquet.
fn alpaca_in_every_format(dir: &std::path::Path) -> Vec<PathBuf> {
    let records: Vec<serde_json::Value> = alpaca_records()
        .iter()
        .map(|[i, n, o]| serde_json::json!({"instruction": i, "input": n, "output": o}))
        .collect();
    let mut csv = csv::Writer::from_writer(Vec::new());
    csv.write_record(["instruction", "input", "output"]).unwrap();
    for record in alpaca_records() {
        csv.write_record(record).unwrap();
    }
    vec![
        write(dir, "a.jsonl", alpaca_jsonl()),
        write(dir, "a.json", serde_json::to_string_pretty(&records).unwrap()),
        write(dir, "a.csv", csv.into_inner().unwrap()),
        fixture("alpaca.parquet"),
    ]
}

fn first_batch(config: &DataConfig, tokenizer: &Tokenizer) -> ember_data::Batch {
    let splits = load_ok(config, tokenizer);
    let options = LoaderOptions::new(config, 8, tokenizer.pad_id());
    Loader::new(splits.train, options).unwrap().next_batch()
}

#[test]
fn the_same_record_from_jsonl_json_parquet_and_csv_gives_identical_batches() {
    let dir = tempfile::tempdir().unwrap();
    let files = alpaca_in_every_format(dir.path());
    let mut tokenizers = vec![bytes_tokenizer()];
    tokenizers.extend(gemma());
    for tokenizer in &tokenizers {
        let batches: Vec<_> = files.iter().map(|file| first_batch(&config(file), tokenizer)).collect();
        assert_eq!(batches[0].batch_size, 3);
        for (file, batch) in files.iter().zip(&batches) {
            assert_eq!(batch, &batches[0], "{} differs from JSON Lines", file.display());
        }
    }
}

/// Every sample's ids and mask.
fn samples(dataset: &Dataset) -> Vec<(Vec<u32>, Vec<bool>)> {
    dataset
        .iter()
        .map(|s| (s.input_ids.to_vec(), s.trained.to_vec()))
        .collect()
}

#[test]
fn a_json_file_of_json_lines_is_read_as_json_lines() {
    // Hugging Face's `Dataset.to_json("x.json")` writes JSON Lines.
    let dir = tempfile::tempdir().unwrap();
    let lines = write(dir.path(), "hf.json", alpaca_jsonl());
    let reference = write(dir.path(), "ref.jsonl", alpaca_jsonl());
    let tokenizer = bytes_tokenizer();
    assert_eq!(
        samples(&load_ok(&config(&lines), &tokenizer).train),
        samples(&load_ok(&config(&reference), &tokenizer).train)
    );
}

#[test]
fn a_directory_or_glob_of_shards_reads_as_one_dataset_in_name_order() {
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> = alpaca_jsonl().lines().map(|l| format!("{l}\n")).collect();
    write(dir.path(), "shards/train-00001.jsonl", &lines[2]);
    write(dir.path(), "shards/train-00000.jsonl", lines[..2].concat());
    write(dir.path(), "shards/README.md", "not data");
    write(dir.path(), "shards/.cache/x.jsonl", "not read: hidden");
    let whole = write(dir.path(), "whole.jsonl", alpaca_jsonl());
    let tokenizer = bytes_tokenizer();
    let expected = samples(&load_ok(&config(&whole), &tokenizer).train);

    let by_dir = load_ok(&config(&dir.path().join("shards")), &tokenizer).train;
    assert_eq!(samples(&by_dir), expected);
    let files: Vec<(String, usize)> = by_dir
        .stats()
        .files
        .iter()
        .map(|f| (f.path.file_name().unwrap().to_string_lossy().into_owned(), f.records))
        .collect();
    assert_eq!(
        files,
        [("train-00000.jsonl".to_owned(), 2), ("train-00001.jsonl".to_owned(), 1)]
    );

    let by_glob = load_ok(&config(&dir.path().join("shards/train-*.jsonl")), &tokenizer).train;
    assert_eq!(samples(&by_glob), expected);
}

#[test]
fn a_record_larger_than_the_read_buffer_streams_intact() {
    let dir = tempfile::tempdir().unwrap();
    let long = "word ".repeat(60_000);
    let record = serde_json::json!({"instruction": "i", "input": "", "output": long});
    let array = write(dir.path(), "big.json", format!("[\n{record},\n{record}\n]"));
    let lines = write(dir.path(), "big.jsonl", format!("{record}\n{record}\n"));
    let tokenizer = bytes_tokenizer();
    let mut config_array = config(&array);
    config_array.max_seq_length = 400_000;
    let mut config_lines = config(&lines);
    config_lines.max_seq_length = 400_000;
    let from_array = load_ok(&config_array, &tokenizer).train;
    assert_eq!(from_array.len(), 2);
    assert_eq!(from_array.stats().truncated, 0);
    assert_eq!(samples(&from_array), samples(&load_ok(&config_lines, &tokenizer).train));
}

#[test]
fn byte_order_marks_and_blank_lines_are_tolerated() {
    let dir = tempfile::tempdir().unwrap();
    let tokenizer = bytes_tokenizer();
    let reference = samples(&load_ok(&config(&write(dir.path(), "r.jsonl", alpaca_jsonl())), &tokenizer).train);
    let bom_lines = write(
        dir.path(),
        "bom.jsonl",
        format!("\u{feff}{}\n\r\n", alpaca_jsonl().replace('\n', "\r\n")),
    );
    assert_eq!(samples(&load_ok(&config(&bom_lines), &tokenizer).train), reference);
    let mut csv = String::from("\u{feff}instruction,input,output\n");
    csv.push_str("\"Give three tips for staying healthy.\",,\"1. Eat a balanced diet.\n2. Exercise regularly.\n3. Sleep well.\"\n");
    let bom_csv = write(dir.path(), "bom.csv", csv);
    assert_eq!(samples(&load_ok(&config(&bom_csv), &tokenizer).train), reference[..1]);
}

/// One chat, written as `messages` JSON Lines, ShareGPT, content parts and Parquet.
#[test]
fn chat_layouts_and_formats_agree() {
    let dir = tempfile::tempdir().unwrap();
    let messages = serde_json::json!([
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
    ]);
    let second = serde_json::json!([
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Goodbye."},
    ]);
    let sharegpt = |m: &serde_json::Value| -> serde_json::Value {
        let from = |r: &str| {
            match r {
                "user" => "human",
                "assistant" => "gpt",
                other => other,
            }
            .to_owned()
        };
        m.as_array()
            .unwrap()
            .iter()
            .map(|t| serde_json::json!({"from": from(t["role"].as_str().unwrap()), "value": t["content"]}))
            .collect()
    };
    let parts = |m: &serde_json::Value| -> serde_json::Value {
        m.as_array()
            .unwrap()
            .iter()
            .map(|t| serde_json::json!({"role": t["role"], "content": [{"type": "text", "value": t["content"]}], "loss_weight": 1.0}))
            .collect()
    };
    let jsonl = |key: &str, a: serde_json::Value, b: serde_json::Value| {
        format!("{}\n{}\n", serde_json::json!({ key: a }), serde_json::json!({ key: b }))
    };
    let with_columns = |path: PathBuf, columns: Columns| {
        let mut config = config(&path);
        config.columns = columns;
        config
    };
    let messages_columns = Columns {
        messages: Some("messages".into()),
        ..Columns::default()
    };
    let configs = [
        with_columns(
            write(
                dir.path(),
                "m.jsonl",
                jsonl("messages", messages.clone(), second.clone()),
            ),
            messages_columns.clone(),
        ),
        with_columns(
            write(
                dir.path(),
                "s.jsonl",
                jsonl("conversations", sharegpt(&messages), sharegpt(&second)),
            ),
            Columns {
                conversations: Some("conversations".into()),
                ..Columns::default()
            },
        ),
        with_columns(
            write(
                dir.path(),
                "p.jsonl",
                jsonl("messages", parts(&messages), parts(&second)),
            ),
            messages_columns.clone(),
        ),
        with_columns(fixture("chat.parquet"), messages_columns),
    ];
    let tokenizer = bytes_tokenizer();
    let reference = samples(&load_ok(&configs[0], &tokenizer).train);
    assert_eq!(reference.len(), 2);
    for config in &configs[1..] {
        assert_eq!(
            samples(&load_ok(config, &tokenizer).train),
            reference,
            "{}",
            config.path
        );
    }
}

#[test]
fn an_explicit_format_overrides_the_extension() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "train.txt", alpaca_jsonl());
    let mut config = config(&path);
    config.format = Format::Jsonl;
    config.template = Some(TemplateSpec::Custom("{instruction}{input}{output}".into()));
    assert_eq!(load_ok(&config, &bytes_tokenizer()).train.len(), 3);
}
