//! Which tokens carry loss, with the byte-level test tokenizer (no assets needed).

use ember_data::{Columns, TrainOn, Truncation};

use crate::common::{byte_ids, bytes_tokenizer, config, load_ok, write};

fn prompt_completion(dir: &std::path::Path, prompt: &str, completion: &str) -> ember_data::DataConfig {
    let line = serde_json::json!({"prompt": prompt, "completion": completion});
    let mut config = config(&write(dir, "pc.jsonl", format!("{line}\n")));
    config.columns = Columns {
        prompt: Some("prompt".into()),
        completion: Some("completion".into()),
        ..Columns::default()
    };
    config
}

#[test]
fn completion_only_trains_the_completion_and_its_eos() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = prompt_completion(dir.path(), "Q: 2+2?\nA:", " 4");
    config.train_on = TrainOn::Completion;
    let splits = load_ok(&config, &bytes_tokenizer());
    let sample = splits.train.get(0).unwrap();
    let expected: Vec<u32> = [vec![2], byte_ids("Q: 2+2?\nA: 4"), vec![1]].concat();
    assert_eq!(sample.input_ids, expected);
    let trained: Vec<usize> = (0..expected.len()).filter(|&i| sample.trained[i]).collect();
    let prompt_len = 1 + "Q: 2+2?\nA:".len();
    assert_eq!(trained, (prompt_len..expected.len()).collect::<Vec<_>>());
}

#[test]
fn train_on_all_trains_everything_after_bos() {
    let dir = tempfile::tempdir().unwrap();
    let config = prompt_completion(dir.path(), "P", "C");
    let splits = load_ok(&config, &bytes_tokenizer());
    let sample = splits.train.get(0).unwrap();
    assert_eq!(sample.trained, [false, true, true, true]);
}

#[test]
fn gemma_chat_trains_model_turns_and_their_end_of_turn_only() {
    let dir = tempfile::tempdir().unwrap();
    let line = serde_json::json!({"conversations": [
        {"from": "human", "value": "Hi"},
        {"from": "gpt", "value": "Yo"},
        {"from": "human", "value": "Bye"},
        {"from": "gpt", "value": "Ok"},
    ]});
    let mut config = config(&write(dir.path(), "c.jsonl", format!("{line}\n")));
    config.columns = Columns {
        conversations: Some("conversations".into()),
        ..Columns::default()
    };
    config.train_on = TrainOn::Completion;
    let splits = load_ok(&config, &bytes_tokenizer());
    let sample = splits.train.get(0).unwrap();
    // <start_of_turn> = 4, <end_of_turn> = 5 in the test tokenizer.
    let turn =
        |role: &str, text: &str| [vec![4], byte_ids(&format!("{role}\n{text}")), vec![5], byte_ids("\n")].concat();
    let expected = [
        vec![2],
        turn("user", "Hi"),
        turn("model", "Yo"),
        turn("user", "Bye"),
        turn("model", "Ok"),
    ]
    .concat();
    assert_eq!(sample.input_ids, expected);
    let trained: Vec<u32> = sample
        .input_ids
        .iter()
        .zip(sample.trained)
        .filter(|(_, t)| **t)
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(trained, [byte_ids("Yo"), vec![5], byte_ids("Ok"), vec![5]].concat());
}

#[test]
fn truncation_is_counted_and_untrainable_samples_are_dropped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let lines = [
        serde_json::json!({"prompt": "p", "completion": "short"}),
        serde_json::json!({"prompt": "p", "completion": "a much longer completion"}),
        serde_json::json!({"prompt": "a prompt longer than ten", "completion": "c"}),
    ];
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let mut config = prompt_completion(dir.path(), "", "");
    config.path = write(dir.path(), "t.jsonl", text).to_string_lossy().into_owned();
    config.max_seq_length = 10;
    config.train_on = TrainOn::Completion;
    let splits = load_ok(&config, &bytes_tokenizer());
    let stats = splits.train.stats();
    assert_eq!((stats.records, splits.train.len()), (3, 2));
    assert_eq!(
        (stats.truncated, stats.dropped_untrained, stats.dropped_too_long),
        (1, 1, 0)
    );
    assert!(splits.train.lengths().all(|l| l <= 10));

    config.truncation = Truncation::Drop;
    let splits = load_ok(&config, &bytes_tokenizer());
    let stats = splits.train.stats();
    assert_eq!((splits.train.len(), stats.truncated, stats.dropped_too_long), (1, 0, 2));
}
