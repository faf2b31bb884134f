//! The `tokenizer.*` metadata of a GGUF file. llama.cpp tokenizes text itself, so the file's
//! tokenizer must be exactly the source's: from a GGUF source every `tokenizer.*` key is copied
//! verbatim (chat template included); from a Hugging Face directory, `tokenizer.json` and
//! `tokenizer_config.json` are converted as llama.cpp's `convert_hf_to_gguf.py` does
//! (byte-level BPE as `gpt2` with merges and a pre-tokenizer name, sentencepiece-style BPE as
//! `llama` with scores). [`check_round_trip`] verifies the result on probe texts.

use std::path::Path;

use serde_json::Value as Json;

use super::gguf::{GgufFile, Value};
use super::gguf_write::Metadata;
use super::tokenizer::{Tokenizer, LLAMA3_SPLIT, QWEN2_SPLIT};
use super::ModelFiles;
use crate::error::{Error, Result};

/// llama.cpp's token types.
const NORMAL: i32 = 1;
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;
const BYTE: i32 = 6;

/// The `tokenizer.*` keys for a model opened with [`super::open_model`]: copied from its GGUF
/// file, or converted from its directory's tokenizer files.
pub fn tokenizer_metadata(files: &ModelFiles) -> Result<Metadata> {
    if files.format == "gguf" {
        return Ok(copy_from_gguf(&GgufFile::open(&files.path)?));
    }
    let tok = files.tokenizer().map_err(|_| {
        Error::bad_file(
            files.path.join("tokenizer.json"),
            "missing: a GGUF needs the tokenizer (llama.cpp tokenizes the text itself)",
        )
    })?;
    from_hf_dir(&files.path, files.config.vocab_size, tok)
}

/// Every `tokenizer.*` key of `f`, verbatim.
pub fn copy_from_gguf(f: &GgufFile) -> Metadata {
    f.metadata
        .iter()
        .filter(|(k, _)| k.starts_with("tokenizer."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Reads a JSON file of the directory, `None` when it is absent.
fn read_json(path: &Path) -> Result<Option<Json>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::bad_file(path, format!("invalid JSON: {e}")))
}

/// The converted tokenizer of the HF directory `dir` for an embedding of `vocab_size` rows;
/// `tok` is its tokenizer as opened, whose `meta` holds tokenizer_config.json and the chat
/// template (chat_template.jinja included).
pub fn from_hf_dir(dir: &Path, vocab_size: usize, tok: &Tokenizer) -> Result<Metadata> {
    let path = dir.join("tokenizer.json");
    let j = read_json(&path)?.ok_or_else(|| Error::bad_file(&path, "missing"))?;
    let cfg = tok
        .meta
        .source_config
        .clone()
        .map_or(Json::Null, Json::Object);
    let bad = |what: String| Error::bad_file(&path, what);
    let model = &j["model"];
    if model["type"] != "BPE" {
        return Err(bad(format!(
            "model type {} cannot be written to GGUF (supported: BPE, byte-level or sentencepiece-style)",
            model["type"]
        )));
    }
    let v = Vocab::read(&j, vocab_size).map_err(bad)?;
    let spm = model["byte_fallback"] == true;
    let mut m: Metadata = if spm {
        v.sentencepiece(model)
    } else {
        v.byte_level(&j).map_err(bad)?
    };
    let id = |s: Option<u32>| s.map(Value::U32);
    let special = [
        (
            "bos_token_id",
            tok.bos_id.or_else(|| v.id_of(&cfg["bos_token"])),
        ),
        (
            "eos_token_id",
            tok.eos_id.or_else(|| v.id_of(&cfg["eos_token"])),
        ),
        (
            "unknown_token_id",
            spm.then(|| v.id_of(&model["unk_token"])).flatten(),
        ),
        ("padding_token_id", v.id_of(&cfg["pad_token"])),
    ];
    for (k, x) in special {
        if let Some(x) = id(x) {
            m.push((format!("tokenizer.ggml.{k}"), x));
        }
    }
    // What ddp's tokenizer does (its post-processor, probed), which llama.cpp must repeat.
    m.push((
        "tokenizer.ggml.add_bos_token".into(),
        Value::Bool(tok.add_bos),
    ));
    m.push(("tokenizer.ggml.add_eos_token".into(), Value::Bool(false)));
    let templates = chat_templates(&cfg);
    if templates.is_empty() {
        // A template kept in chat_template.jinja (newer transformers) rather than the config.
        let t = tok.meta.chat_template.clone();
        m.extend(t.map(|t| ("tokenizer.chat_template".to_string(), Value::Str(t))));
    }
    m.extend(templates);
    Ok(m)
}

/// `tokenizer.chat_template` (and `tokenizer.chat_template.NAME` for named ones) from
/// tokenizer_config.json, as the converter writes them.
fn chat_templates(cfg: &Json) -> Metadata {
    match &cfg["chat_template"] {
        Json::String(s) => vec![("tokenizer.chat_template".into(), Value::Str(s.clone()))],
        Json::Array(named) => named
            .iter()
            .filter_map(|t| Some((t["name"].as_str()?, t["template"].as_str()?)))
            .map(|(n, t)| {
                let key = match n {
                    "default" => "tokenizer.chat_template".to_string(),
                    n => format!("tokenizer.chat_template.{n}"),
                };
                (key, Value::Str(t.to_string()))
            })
            .collect(),
        _ => vec![],
    }
}

/// Token strings and types by id, from `tokenizer.json`'s vocabulary and added tokens.
struct Vocab {
    tokens: Vec<String>,
    types: Vec<i32>,
}

impl Vocab {
    fn read(j: &Json, vocab_size: usize) -> std::result::Result<Self, String> {
        let vocab = j["model"]["vocab"]
            .as_object()
            .ok_or("model.vocab is not an object")?;
        // Ids the embedding has but the tokenizer never produces, as the converter names them.
        let mut tokens: Vec<String> = (0..vocab_size).map(|i| format!("[PAD{i}]")).collect();
        let mut types = vec![UNUSED; vocab_size];
        let mut set = |id: u64, tok: &str, ty: i32| -> std::result::Result<(), String> {
            let i = id as usize;
            if i >= vocab_size {
                return Err(format!(
                    "token {tok:?} has id {id}, past the model's vocab_size {vocab_size}"
                ));
            }
            tokens[i] = tok.to_string();
            types[i] = ty;
            Ok(())
        };
        for (tok, id) in vocab {
            let id = id
                .as_u64()
                .ok_or_else(|| format!("token {tok:?}: bad id {id}"))?;
            set(id, tok, if is_byte_token(tok) { BYTE } else { NORMAL })?;
        }
        for t in j["added_tokens"].as_array().into_iter().flatten() {
            let (Some(id), Some(tok)) = (t["id"].as_u64(), t["content"].as_str()) else {
                continue;
            };
            let ty = if j["model"]["unk_token"] == tok {
                UNKNOWN
            } else if t["special"] == true {
                CONTROL
            } else {
                USER_DEFINED
            };
            set(id, tok, ty)?;
        }
        Ok(Self { tokens, types })
    }

    /// The id of a token given as a string or as `{"content": ...}`.
    fn id_of(&self, t: &Json) -> Option<u32> {
        let s = t.as_str().or_else(|| t["content"].as_str())?;
        self.tokens.iter().position(|x| x == s).map(|i| i as u32)
    }

    fn list(&self) -> Metadata {
        vec![
            (
                "tokenizer.ggml.tokens".into(),
                Value::Array(self.tokens.iter().cloned().map(Value::Str).collect()),
            ),
            (
                "tokenizer.ggml.token_type".into(),
                Value::Array(self.types.iter().map(|&t| Value::I32(t)).collect()),
            ),
        ]
    }

    /// A sentencepiece-style BPE as llama.cpp's `llama` vocabulary: each piece scored by the
    /// rank of the first merge that makes it (llama.cpp merges the best-scored piece first,
    /// which is the BPE's merge order), pieces no merge makes below every merged one.
    fn sentencepiece(&self, model: &Json) -> Metadata {
        let n_merges = merges(model).len();
        let mut scores = vec![-(n_merges as f32) - 1.0; self.tokens.len()];
        let index: std::collections::HashMap<&str, usize> = self
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.as_str(), i))
            .collect();
        for (rank, (a, b)) in merges(model).into_iter().enumerate().rev() {
            if let Some(&i) = index.get([a.as_str(), b.as_str()].concat().as_str()) {
                scores[i] = -(rank as f32);
            }
        }
        let mut m = vec![(
            "tokenizer.ggml.model".to_string(),
            Value::Str("llama".into()),
        )];
        m.extend(self.list());
        m.push((
            "tokenizer.ggml.scores".into(),
            Value::Array(scores.into_iter().map(Value::F32).collect()),
        ));
        m
    }

    /// A byte-level BPE as llama.cpp's `gpt2` vocabulary, with its merges and the name of its
    /// pre-tokenizer.
    fn byte_level(&self, j: &Json) -> std::result::Result<Metadata, String> {
        let pre = pre_name(&j["pre_tokenizer"]).ok_or_else(|| {
            format!(
                "pre_tokenizer {} matches none of llama.cpp's that ddp knows (gpt-2, smollm, llama-bpe, qwen2)",
                j["pre_tokenizer"]
            )
        })?;
        let merges = merges(&j["model"])
            .into_iter()
            .map(|(a, b)| Value::Str(format!("{a} {b}")))
            .collect();
        let mut m = vec![
            (
                "tokenizer.ggml.model".to_string(),
                Value::Str("gpt2".into()),
            ),
            ("tokenizer.ggml.pre".to_string(), Value::Str(pre.into())),
        ];
        m.extend(self.list());
        m.push(("tokenizer.ggml.merges".into(), Value::Array(merges)));
        Ok(m)
    }
}

/// `<0xAB>`: a sentencepiece byte-fallback piece.
fn is_byte_token(t: &str) -> bool {
    t.len() == 6
        && t.starts_with("<0x")
        && t.ends_with('>')
        && t[3..5].chars().all(|c| c.is_ascii_hexdigit())
}

/// A BPE's merges, written as `"a b"` or `["a", "b"]`.
fn merges(model: &Json) -> Vec<(String, String)> {
    let pair = |m: &Json| -> Option<(String, String)> {
        match m {
            Json::String(s) => s
                .split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string())),
            Json::Array(a) => Some((a.first()?.as_str()?.into(), a.get(1)?.as_str()?.into())),
            _ => None,
        }
    };
    model["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(pair)
        .collect()
}

/// llama.cpp's `tokenizer.ggml.pre` name for a byte-level `pre_tokenizer` (the inverse of
/// the pre-tokenizers `tokenizer::Tokenizer::from_gguf` builds).
fn pre_name(pre: &Json) -> Option<&'static str> {
    let byte_level = |v: &Json| v["type"] == "ByteLevel";
    match pre["type"].as_str()? {
        "ByteLevel" => Some("gpt-2"),
        "Sequence" => match pre["pretokenizers"].as_array()?.as_slice() {
            [d, b] if d["type"] == "Digits" && d["individual_digits"] == true && byte_level(b) => {
                Some("smollm")
            }
            [s, b] if s["type"] == "Split" && byte_level(b) => {
                match s["pattern"]["Regex"].as_str()? {
                    LLAMA3_SPLIT => Some("llama-bpe"),
                    QWEN2_SPLIT => Some("qwen2"),
                    _ => None,
                }
            }
            _ => None,
        },
        _ => None,
    }
}

/// Texts on which the written tokenizer must give the source's ids: words, spaces, digits,
/// punctuation, newlines, accents, CJK and an emoji.
const PROBES: &[&str] = &[
    "Once upon a time, there was a little girl named Lily. She loved to play outside!",
    "  Leading spaces,\ttabs\nand new lines\n\n  1234567 3.14159 -42 x=y+1; don't we'll",
    "naïve café — Übermäßig 東京タワー 🙂 ∑ x²",
];

/// Opens the written GGUF at `path` as ddp would and checks that its tokenizer encodes the
/// probe texts as `source` does.
pub fn check_round_trip(path: &Path, source: &Tokenizer) -> Result<()> {
    let f = GgufFile::open(path)?;
    let written = Tokenizer::from_gguf(&f)?;
    for text in PROBES {
        let (a, b) = (written.encode(text, true)?, source.encode(text, true)?);
        if a != b {
            return Err(Error::bad_file(
                path,
                format!(
                    "the tokenizer written does not reproduce the source's: {text:?} gives {a:?}, the source {b:?}"
                ),
            ));
        }
    }
    Ok(())
}
