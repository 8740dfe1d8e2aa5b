//! Bad input never panics and never silently skips: each case is a clear error.

use ember_data::{Columns, DataConfig, Format, TemplateSpec, Truncation};

use crate::common::{bytes_tokenizer, config, fixture, load_err, write};

fn assert_contains(message: &str, parts: &[&str]) {
    for part in parts {
        assert!(message.contains(part), "`{part}` not in: {message}");
    }
}

#[test]
fn malformed_json_line_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "train.jsonl",
        "{\"instruction\": \"a\", \"input\": \"\", \"output\": \"b\"}\n\n{\"instruction\": \"a\", \"input\": \n",
    );
    let message = load_err(&config(&path), &bytes_tokenizer());
    assert_contains(&message, &["train.jsonl:3", "malformed JSON"]);
}

#[test]
fn missing_column_is_named_with_the_columns_that_exist() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "qa.jsonl", "{\"question\": \"q\", \"answer\": \"a\"}\n");
    let message = load_err(&config(&path), &bytes_tokenizer());
    assert_contains(
        &message,
        &[
            "qa.jsonl:1",
            "missing column `instruction`",
            "question, answer", // in the order the file has them
            "[data.columns]",
        ],
    );
}

#[test]
fn missing_column_in_a_csv_header_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "d.csv", "instruction,output\nhi,there\n");
    let message = load_err(&config(&path), &bytes_tokenizer());
    assert_contains(&message, &["d.csv:1", "missing column `input`", "instruction, output"]);
}

#[test]
fn missing_column_in_a_parquet_schema_is_named() {
    let mut config = config(&fixture("chat.parquet"));
    config.columns = Columns {
        prompt: Some("prompt".into()),
        completion: Some("completion".into()),
        ..Columns::default()
    };
    let message = load_err(&config, &bytes_tokenizer());
    assert_contains(&message, &["chat.parquet", "missing column `prompt`", "messages"]);
}

#[test]
fn empty_datasets_are_errors_in_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("empty.jsonl", ""),
        ("blank.jsonl", "\n  \n\n"),
        ("empty.json", "[ ]"),
        ("header_only.csv", "instruction,input,output\n"),
    ];
    for (name, contents) in cases {
        let path = write(dir.path(), name, contents);
        let message = load_err(&config(&path), &bytes_tokenizer());
        assert_contains(&message, &["holds no records"]);
    }
    let path = write(dir.path(), "no_header.csv", "");
    let message = load_err(&config(&path), &bytes_tokenizer());
    assert_contains(&message, &["no_header.csv", "file is empty"]);
}

#[test]
fn a_directory_or_glob_without_data_files_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "README.md", "not data");
    let message = load_err(&config(dir.path()), &bytes_tokenizer());
    assert_contains(&message, &["no dataset files match"]);
    let glob = dir.path().join("train-*.parquet");
    let message = load_err(&config(&glob), &bytes_tokenizer());
    assert_contains(&message, &["no dataset files match", "train-*.parquet"]);
    let message = load_err(&config(&dir.path().join("nope.jsonl")), &bytes_tokenizer());
    assert_contains(&message, &["nope.jsonl", "no such file"]);
}

#[test]
fn invalid_utf8_is_an_error_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let good = b"{\"instruction\": \"a\", \"input\": \"\", \"output\": \"b\"}\n";
    let bad = b"{\"instruction\": \"caf\xe9\", \"input\": \"\", \"output\": \"b\"}";
    let path = write(dir.path(), "latin1.jsonl", [&good[..], bad].concat());
    let message = load_err(&config(&path), &bytes_tokenizer());
    assert_contains(&message, &["latin1.jsonl:2", "invalid UTF-8"]);

    let path = write(dir.path(), "latin1.json", [b"[".as_slice(), bad, b"]"].concat());
    let message = load_err(&config(&path), &bytes_tokenizer());
    assert_contains(&message, &["latin1.json: element 0", "invalid UTF-8"]);

    let csv = b"instruction,input,output\nok,,fine\ncaf\xe9,,b\n";
    let path = write(dir.path(), "latin1.csv", csv);
    let message = load_err(&config(&path), &bytes_tokenizer());
    assert_contains(&message, &["latin1.csv:3", "invalid UTF-8 in column `instruction`"]);
}

#[test]
fn a_number_where_text_is_expected_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "n.jsonl",
        "{\"instruction\": \"a\", \"input\": \"\", \"output\": 42}\n",
    );
    let message = load_err(&config(&path), &bytes_tokenizer());
    assert_contains(
        &message,
        &[
            "n.jsonl:1",
            "column `output` holds a number (42) where text is expected",
        ],
    );

    let message = load_err(&config(&fixture("output_is_int.parquet")), &bytes_tokenizer());
    assert_contains(&message, &["output_is_int.parquet", "column `output` holds INT64"]);

    let message = load_err(&config(&fixture("input_is_null.parquet")), &bytes_tokenizer());
    assert_contains(
        &message,
        &["input_is_null.parquet: row 1", "column `input` holds null where text"],
    );
}

#[test]
fn a_cut_off_json_array_is_reported_not_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let record = "{\"instruction\": \"a\", \"input\": \"\", \"output\": \"b\"}";
    let path = write(dir.path(), "cut.json", format!("[{record},\n{{\"instruction\": \"x"));
    let message = load_err(&config(&path), &bytes_tokenizer());
    assert_contains(&message, &["cut.json: element 1 (line 2)", "cut off"]);

    let path = write(dir.path(), "unclosed.json", format!("[{record}"));
    let message = load_err(&config(&path), &bytes_tokenizer());
    assert_contains(&message, &["unclosed.json", "closing `]`"]);

    let path = write(dir.path(), "scalar.json", format!("[{record}, 7]"));
    let message = load_err(&config(&path), &bytes_tokenizer());
    assert_contains(&message, &["element 1 is not an object"]);
}

#[test]
fn a_record_that_is_not_an_object_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "arr.jsonl", "[\"a\", \"b\"]\n");
    let message = load_err(&config(&path), &bytes_tokenizer());
    assert_contains(&message, &["arr.jsonl:1", "must be a JSON object", "an array"]);
}

#[test]
fn bad_conversations_are_errors_naming_the_turn() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            r#"{"messages": [{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}]}"#,
            "`messages[1].role` is `tool`",
        ),
        (
            r#"{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}"#,
            "`messages[1]` is a user turn where a model turn is expected",
        ),
        (
            r#"{"messages": [{"role": "user", "content": 3}]}"#,
            "column `messages[0].content` holds a number (3)",
        ),
        (
            r#"{"messages": [{"role": "user"}]}"#,
            "missing column `messages[0].content`",
        ),
        (r#"{"messages": []}"#, "empty conversation"),
        (
            r#"{"messages": [{"role": "user", "content": [{"type": "image", "url": "x"}]}]}"#,
            "only text parts",
        ),
    ];
    for (line, expected) in cases {
        let path = write(dir.path(), "chat.jsonl", format!("{line}\n"));
        let mut config = config(&path);
        config.columns = Columns {
            messages: Some("messages".into()),
            ..Columns::default()
        };
        let message = load_err(&config, &bytes_tokenizer());
        assert_contains(&message, &["chat.jsonl:1", expected]);
    }
}

#[test]
fn csv_cannot_hold_chat_and_ragged_rows_name_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "chat.csv", "messages\nx\n");
    let mut chat = config(&path);
    chat.columns = Columns {
        messages: Some("messages".into()),
        ..Columns::default()
    };
    assert_contains(&load_err(&chat, &bytes_tokenizer()), &["cannot hold chat"]);

    let path = write(dir.path(), "ragged.csv", "instruction,input,output\na,b,c\na,b\n");
    let message = load_err(&config(&path), &bytes_tokenizer());
    assert_contains(&message, &["ragged.csv:3", "2 fields, the header has 3"]);
}

#[test]
fn an_unknown_extension_asks_for_a_format() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "data.txt", "{}");
    let message = load_err(&config(&path), &bytes_tokenizer());
    assert_contains(&message, &["data.txt", "set `format`"]);

    let mut explicit = config(&path);
    explicit.format = Format::Jsonl;
    assert_contains(
        &load_err(&explicit, &bytes_tokenizer()),
        &["missing column `instruction`"],
    );
}

#[test]
fn template_mistakes_are_explained() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "t.jsonl",
        "{\"instruction\": \"a\", \"input\": \"\", \"output\": \"b\"}\n",
    );
    let cases = [
        (
            "{instruction}{output}{input}",
            "must have {output} as its last placeholder",
        ),
        ("{instruction}{input}{question}{output}", "placeholder {question}"),
        ("{instruction}{output}", "never uses {input}"),
        ("{instruction}{input}{output}{output}", "more than once"),
        ("{instruction} } {input}{output}", "`}}`"),
        ("{instruction}<bos>{input}{output}", "holds `<bos>` inside"),
    ];
    for (template, expected) in cases {
        let mut config = config(&path);
        config.template = Some(TemplateSpec::Custom(template.into()));
        assert_contains(&load_err(&config, &bytes_tokenizer()), &[expected]);
    }
    let mut chat = config(&path);
    chat.template = Some(TemplateSpec::GemmaChat);
    assert_contains(&load_err(&chat, &bytes_tokenizer()), &["gemma-chat needs chat columns"]);

    let mut no_input = config(&path);
    no_input.columns = Columns {
        instruction: Some("instruction".into()),
        output: Some("output".into()),
        ..Columns::default()
    };
    assert_contains(&load_err(&no_input, &bytes_tokenizer()), &["alpaca-seed fills"]);
}

#[test]
fn dropping_every_sample_is_an_error_with_the_counts() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "t.jsonl",
        "{\"instruction\": \"a\", \"input\": \"\", \"output\": \"b\"}\n",
    );
    let mut config: DataConfig = config(&path);
    config.max_seq_length = 8;
    config.truncation = Truncation::Drop;
    let message = load_err(&config, &bytes_tokenizer());
    assert_contains(&message, &["all 1 records", "1 longer than max_seq_length = 8"]);
}

#[test]
fn a_tokenizer_without_bos_is_refused() {
    let json = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": null, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": {"<unk>": 0}, "unk_token": "<unk>"}
    });
    let inner: tokenizers::Tokenizer = json.to_string().parse().unwrap();
    let err = ember_data::Tokenizer::new(inner).err().expect("no <bos>");
    assert!(err.to_string().contains("no `<bos>` token"), "{err}");
}

#[test]
fn a_corrupt_parquet_file_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read(fixture("alpaca.parquet")).unwrap();
    let not_parquet = write(dir.path(), "text.parquet", "instruction,input,output\n");
    let cut = write(dir.path(), "cut.parquet", &good[..good.len() / 2]);
    let mut scrambled = good.clone();
    for byte in &mut scrambled[8..good.len() / 2] {
        *byte = byte.wrapping_mul(31).wrapping_add(7);
    }
    let scrambled = write(dir.path(), "scrambled.parquet", scrambled);
    for path in [not_parquet, cut, scrambled] {
        let message = load_err(&config(&path), &bytes_tokenizer());
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert_contains(&message, &[name.as_str()]);
    }
}
