//! Gemma's BOS and stop-token conventions on the fixture tokenizer.

use crate::common::fixture;
use ember_data::{TextStream, Tokenizer};
use ember_model::ModelSource;

fn tokenizer() -> Tokenizer {
    ModelSource::open(&fixture("gemma3")).unwrap().tokenizer().unwrap()
}

#[test]
fn bos_appears_exactly_once() {
    let tok = tokenizer();
    let plain = tok.encode("What is the capital of France?").unwrap();
    let with_bos = tok.encode("<bos>What is the capital of France?").unwrap();
    assert_eq!(plain[0], tok.bos_id());
    assert_eq!(plain.iter().filter(|&&t| t == tok.bos_id()).count(), 1);
    assert_eq!(plain, with_bos);
}

#[test]
fn stop_tokens_are_eos_and_end_of_turn() {
    let tok = tokenizer();
    let mut stops = tok.stop_tokens().to_vec();
    stops.sort();
    assert_eq!(
        stops,
        vec![tok.token_id("<eos>").unwrap(), tok.token_id("<end_of_turn>").unwrap()]
    );
}

#[test]
fn streamed_text_equals_the_decoded_text() {
    let tok = tokenizer();
    let text = "Bonjour, café — naïve déjà vu";
    let ids = tok.encode_raw(text).unwrap();
    let mut stream = TextStream::new(&tok, &[]);
    let mut streamed: String = ids.iter().map(|&id| stream.push(id).unwrap()).collect();
    streamed += &stream.finish().unwrap();
    assert_eq!(streamed, text);
    assert!(!streamed.contains('\u{FFFD}'), "no half characters are printed");
}

#[test]
fn a_missing_tokenizer_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("gemma3").join("config.json"), dir.path().join("config.json")).unwrap();
    let err = ModelSource::open(dir.path()).unwrap().tokenizer().err().unwrap();
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
}

#[test]
fn training_and_prompts_share_one_tokenizer() {
    // The data pipeline reads `<eos>` in data as text; a prompt's special-token strings are
    // the tokens, as transformers reads a prompt.
    let tok = tokenizer();
    let prompt = tok.encode("<start_of_turn>user\nHi<end_of_turn>").unwrap();
    assert_eq!(prompt[1], tok.token_id("<start_of_turn>").unwrap());
    assert_eq!(*prompt.last().unwrap(), tok.token_id("<end_of_turn>").unwrap());
    assert_eq!(tok.decode(&prompt).unwrap(), "user\nHi");
    assert_eq!(
        tok.decode_with_specials(&prompt).unwrap(),
        "<bos><start_of_turn>user\nHi<end_of_turn>"
    );
}
