//! Gemma's BOS and stop-token conventions on the fixture tokenizer.

mod common;

use common::fixture;
use ember_model::{GemmaTokenizer, TextStream};

fn tokenizer() -> GemmaTokenizer {
    GemmaTokenizer::from_dir(&fixture("gemma3")).unwrap()
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
    let mut stream = TextStream::new(&tok);
    let streamed: String = ids.iter().map(|&id| stream.push(id).unwrap()).collect();
    assert_eq!(streamed, text);
    assert!(!streamed.contains('\u{FFFD}'), "no half characters are printed");
}

#[test]
fn a_missing_tokenizer_is_a_clear_error() {
    let err = GemmaTokenizer::from_dir(std::path::Path::new("/nonexistent"))
        .err()
        .unwrap();
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
}
