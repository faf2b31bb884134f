//! Tokenizers: `tokenizer.json` via the `tokenizers` crate, or one built from GGUF metadata in
//! the same form transformers' converters produce (so ids match the reference exactly).

use std::path::Path;
use std::str::FromStr;

use serde_json::{json, Value as Json};

use super::gguf::{GgufFile, Value};
use crate::error::{Error, Result};

/// A tokenizer with the model's special-token conventions.
pub struct Tokenizer {
    /// The `tokenizers` tokenizer that does the work.
    pub inner: tokenizers::Tokenizer,
    /// Beginning-of-sequence token id, if the model has one.
    pub bos_id: Option<u32>,
    /// End-of-sequence token id, if the model has one.
    pub eos_id: Option<u32>,
    /// Whether `encode(.., true)` prepends BOS (the model's convention).
    pub add_bos: bool,
    /// What the source says beyond the vocabulary (chat template, padding, ...), carried into
    /// an exported directory's tokenizer_config.json.
    pub meta: TokenizerMeta,
    origin: String,
}

/// The source's tokenizer settings that tokenizer.json does not hold: from an HF directory's
/// tokenizer_config.json (and chat_template.jinja), or from a GGUF's `tokenizer.*` metadata.
#[derive(Debug, Clone, Default)]
pub struct TokenizerMeta {
    /// The Jinja chat template (`chat_template`, GGUF `tokenizer.chat_template`).
    pub chat_template: Option<String>,
    /// Padding token id (GGUF `tokenizer.ggml.padding_token_id`).
    pub pad_id: Option<u32>,
    /// Unknown-token id (GGUF `tokenizer.ggml.unknown_token_id`).
    pub unk_id: Option<u32>,
    /// Whether EOS is appended (GGUF `tokenizer.ggml.add_eos_token`).
    pub add_eos: bool,
    /// The source's tokenizer_config.json as it was (HF directory sources), whose keys an
    /// export keeps.
    pub source_config: Option<serde_json::Map<String, Json>>,
}

impl TokenizerMeta {
    /// Reads `tokenizer_config.json` (and `chat_template.jinja`, where newer transformers
    /// keep the template) in `dir`; neither file is required.
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        let mut m = Self::default();
        let path = dir.join("tokenizer_config.json");
        if path.is_file() {
            let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
            let v: Json = serde_json::from_str(&text)
                .map_err(|e| Error::bad_file(&path, format!("invalid JSON: {e}")))?;
            let Json::Object(o) = v else {
                return Err(Error::bad_file(&path, "not a JSON object"));
            };
            m.chat_template = match o.get("chat_template") {
                Some(Json::String(t)) => Some(t.clone()),
                _ => None,
            };
            m.add_eos = o.get("add_eos_token").and_then(Json::as_bool) == Some(true);
            m.source_config = Some(o);
        }
        let jinja = dir.join("chat_template.jinja");
        if m.chat_template.is_none() && jinja.is_file() {
            m.chat_template =
                Some(std::fs::read_to_string(&jinja).map_err(|e| Error::io(&jinja, e))?);
        }
        Ok(m)
    }

    /// Reads the `tokenizer.*` keys of a GGUF beyond the vocabulary.
    fn from_gguf(f: &GgufFile) -> Self {
        Self {
            chat_template: f
                .get("tokenizer.chat_template")
                .and_then(Value::as_str)
                .map(str::to_string),
            pad_id: meta_token_id(f, "tokenizer.ggml.padding_token_id"),
            unk_id: meta_token_id(f, "tokenizer.ggml.unknown_token_id"),
            add_eos: f
                .get("tokenizer.ggml.add_eos_token")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            source_config: None,
        }
    }
}

impl Tokenizer {
    /// Loads a `tokenizer.json`; whether it adds BOS is found by encoding a probe text.
    pub fn from_file(path: &Path, bos_id: Option<u32>, eos_id: Option<u32>) -> Result<Self> {
        let origin = path.display().to_string();
        super::regular_file(path, super::MODEL_FILE)?;
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        // Some of the library's deserializers panic on a syntax error: check the syntax first.
        serde_json::from_str::<serde::de::IgnoredAny>(&text).map_err(|e| Error::Tokenizer {
            origin: origin.clone(),
            what: format!("invalid JSON: {e}"),
        })?;
        let inner = guarded(&origin, "", || tokenizers::Tokenizer::from_str(&text))?;
        let mut t = Self {
            inner,
            bos_id,
            eos_id,
            add_bos: false,
            meta: match path.parent() {
                Some(dir) => TokenizerMeta::from_hf_dir(dir)?,
                None => TokenizerMeta::default(),
            },
            origin,
        };
        // The post-processor decides; probe it rather than guess.
        t.add_bos = match bos_id {
            Some(b) => t.encode("a", true)?.first() == Some(&b),
            None => false,
        };
        Ok(t)
    }

    /// Token ids of `text`; `add_special` lets the post-processor add its special tokens.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let enc = guarded(&self.origin, "encode failed: ", || {
            self.inner.encode(text, add_special)
        })?;
        Ok(enc.get_ids().to_vec())
    }

    /// The text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        guarded(&self.origin, "decode failed: ", || {
            self.inner.decode(ids, true)
        })
    }

    /// Checks that this tokenizer fits a model of `vocab_size` token ids (`source` says where
    /// that size comes from): no id, BOS and EOS included, past the embedding, and not a small
    /// fraction of it either, which is another model's tokenizer (its text would come out as
    /// a few unknown tokens, and the error would blame the text).
    pub fn check_fits(&self, vocab_size: usize, source: &str) -> Result<()> {
        let ids = self
            .inner
            .get_vocab(true)
            .values()
            .chain(self.bos_id.iter())
            .chain(self.eos_id.iter())
            .max()
            .map_or(0, |&m| m as usize + 1);
        let what = if ids > vocab_size {
            format!(
                "token ids go up to {}, past the model's vocab_size {vocab_size} ({source}): the model has no embedding for them",
                ids - 1
            )
        } else if ids < vocab_size / 2 {
            format!(
                "only {ids} token ids for a model with vocab_size {vocab_size} ({source}): the tokenizer of another model?"
            )
        } else {
            return Ok(());
        };
        Err(Error::Tokenizer {
            origin: self.origin.clone(),
            what,
        })
    }

    /// Number of token ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Builds the tokenizer a GGUF file describes (`tokenizer.ggml.*`).
    pub fn from_gguf(f: &GgufFile) -> Result<Self> {
        let origin = f.path.display().to_string();
        let err = |what: String| Error::Tokenizer {
            origin: origin.clone(),
            what,
        };
        let v = GgufVocab::read(f).map_err(err)?;
        let (add_bos, spec) = v.spec(f).map_err(err)?;
        let inner = guarded(&origin, "could not build the tokenizer: ", || {
            tokenizers::Tokenizer::from_str(&spec.to_string())
        })?;
        Ok(Self {
            inner,
            bos_id: v.bos_id,
            eos_id: v.eos_id,
            add_bos,
            meta: TokenizerMeta::from_gguf(f),
            origin,
        })
    }
}

/// A call into the `tokenizers` library, its error (after `what`) or its panic as an
/// [`Error::Tokenizer`] of `origin`: some of its code `expect`s what a malformed file breaks,
/// and a bad file is the user's to fix, not a crash.
fn guarded<T>(origin: &str, what: &str, f: impl FnOnce() -> tokenizers::Result<T>) -> Result<T> {
    let err = |why: String| Error::Tokenizer {
        origin: origin.to_string(),
        what: format!("{what}{why}"),
    };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r.map_err(|e| err(e.to_string())),
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| p.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            Err(err(format!("the tokenizers library failed on it: {msg}")))
        }
    }
}

/// The result of a step of [`Tokenizer::from_gguf`]; the error is the `what` of an
/// [`Error::Tokenizer`].
type Built<T> = std::result::Result<T, String>;

/// A token id stored under `key` in the GGUF metadata.
fn meta_token_id(f: &GgufFile, key: &str) -> Option<u32> {
    f.get(key).and_then(Value::as_u64).map(|x| x as u32)
}

/// The vocabulary part of a GGUF's `tokenizer.ggml.*` metadata.
struct GgufVocab<'a> {
    /// `tokenizer.ggml.model`: `llama` (sentencepiece BPE) or `gpt2` (byte-level BPE).
    model: &'a str,
    tokens: Vec<String>,
    /// Token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
    types: Vec<u64>,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
}

impl<'a> GgufVocab<'a> {
    /// Reads the model kind, tokens, token types and BOS/EOS ids.
    fn read(f: &'a GgufFile) -> Built<Self> {
        let model = f
            .get("tokenizer.ggml.model")
            .and_then(Value::as_str)
            .ok_or("tokenizer.ggml.model is missing: the GGUF carries no tokenizer")?;
        let tokens: Vec<String> = f
            .get("tokenizer.ggml.tokens")
            .and_then(Value::as_array)
            .ok_or("tokenizer.ggml.tokens is missing")?
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or("tokenizer.ggml.tokens holds a non-string")?;
        let types: Vec<u64> = f
            .get("tokenizer.ggml.token_type")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(|v| v.as_u64().unwrap_or(1)).collect())
            .unwrap_or_else(|| vec![1; tokens.len()]);
        Ok(Self {
            model,
            tokens,
            types,
            bos_id: meta_token_id(f, "tokenizer.ggml.bos_token_id"),
            eos_id: meta_token_id(f, "tokenizer.ggml.eos_token_id"),
        })
    }

    /// Whether BOS is prepended, and the `tokenizer.json` value for this vocabulary.
    fn spec(&self, f: &GgufFile) -> Built<(bool, Json)> {
        let flag = |k: &str, d: bool| f.get(k).and_then(Value::as_bool).unwrap_or(d);
        let (add_bos, mut spec) = match self.model {
            "llama" => (
                flag("tokenizer.ggml.add_bos_token", true),
                self.sentencepiece_spec(f)?,
            ),
            "gpt2" => (
                flag("tokenizer.ggml.add_bos_token", false),
                self.byte_level_spec(f)?,
            ),
            other => {
                return Err(format!(
                    "tokenizer.ggml.model = {other:?} is not supported (supported: llama, gpt2)"
                ))
            }
        };
        if add_bos {
            spec["post_processor"] = self.bos_post_processor()?;
        }
        Ok((add_bos, spec))
    }

    /// Unknown, control and user-defined tokens, as `added_tokens` entries.
    fn added_tokens(&self) -> Vec<Json> {
        self.tokens
            .iter()
            .zip(&self.types)
            .enumerate()
            .filter(|(_, (_, &t))| t == 2 || t == 3 || t == 4)
            .map(|(i, (tok, _))| {
                json!({"id": i, "content": tok, "single_word": false, "lstrip": false,
                       "rstrip": false, "normalized": false, "special": true})
            })
            .collect()
    }

    /// Token -> id; a token listed twice keeps its first id.
    fn vocab(&self) -> serde_json::Map<String, Json> {
        let mut m = serde_json::Map::new();
        for (i, t) in self.tokens.iter().enumerate() {
            m.entry(t.clone()).or_insert(json!(i));
        }
        m
    }

    /// A sentencepiece BPE (`llama`): merges derived from `tokenizer.ggml.scores`.
    fn sentencepiece_spec(&self, f: &GgufFile) -> Built<Json> {
        let scores: Vec<f64> = f
            .get("tokenizer.ggml.scores")
            .and_then(Value::as_array)
            .ok_or("tokenizer.ggml.scores is missing (needed for a sentencepiece BPE)")?
            .iter()
            .map(|v| v.as_f64().unwrap_or(0.0))
            .collect();
        let unk_id = meta_token_id(f, "tokenizer.ggml.unknown_token_id")
            .or_else(|| self.types.iter().position(|&t| t == 2).map(|x| x as u32))
            .unwrap_or(0) as usize;
        let merges = sentencepiece_merges(&self.tokens, &scores);
        Ok(json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": self.added_tokens(),
            "normalizer": {"type": "Sequence", "normalizers": [
                {"type": "Prepend", "prepend": "\u{2581}"},
                {"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"}]},
            "pre_tokenizer": null,
            "post_processor": null,
            "decoder": {"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
                {"type": "ByteFallback"}, {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
            "model": {"type": "BPE", "dropout": null, "unk_token": self.tokens.get(unk_id),
                "continuing_subword_prefix": null, "end_of_word_suffix": null,
                "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                "vocab": self.vocab(), "merges": merges}
        }))
    }

    /// A byte-level BPE (`gpt2`): `tokenizer.ggml.merges`, pre-tokenizer from `tokenizer.ggml.pre`.
    fn byte_level_spec(&self, f: &GgufFile) -> Built<Json> {
        let merges: Vec<Json> = f
            .get("tokenizer.ggml.merges")
            .and_then(Value::as_array)
            .ok_or("tokenizer.ggml.merges is missing (needed for a byte-level BPE)")?
            .iter()
            .filter_map(|v| v.as_str())
            .filter_map(|m| m.split_once(' '))
            .map(|(a, b)| json!([a, b]))
            .collect();
        let pre = f
            .get("tokenizer.ggml.pre")
            .and_then(Value::as_str)
            .unwrap_or("default");
        let pre_tokenizer = byte_level_pre_tokenizer(pre).ok_or_else(|| {
            format!(
                "tokenizer.ggml.pre = {pre:?} is not supported (supported: default, gpt-2, smollm, llama-bpe, qwen2)"
            )
        })?;
        Ok(json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": self.added_tokens(),
            "normalizer": null,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null,
                "continuing_subword_prefix": null, "end_of_word_suffix": null,
                "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                "vocab": self.vocab(), "merges": merges}
        }))
    }

    /// The post-processor that prepends BOS to every sequence.
    fn bos_post_processor(&self) -> Built<Json> {
        let bos = self
            .bos_id
            .ok_or("add_bos_token is set but bos_token_id is missing")?;
        let bos_tok = self
            .tokens
            .get(bos as usize)
            .ok_or_else(|| format!("bos_token_id {bos} is outside the vocabulary"))?;
        Ok(json!({
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos_tok, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos_tok, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": bos_tok, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos_tok.as_str(): {"id": bos_tok, "ids": [bos], "tokens": [bos_tok]}}
        }))
    }
}

/// The split regex of llama.cpp's `llama-bpe` pre-tokenizer, as the models' tokenizer.json spell it.
pub(crate) const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// The split regex of llama.cpp's `qwen2` pre-tokenizer.
pub(crate) const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The pre-tokenizer llama.cpp applies for each `tokenizer.ggml.pre` value, in HF form.
fn byte_level_pre_tokenizer(pre: &str) -> Option<Json> {
    let byte_level = |regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": regex});
    let split = |re: &str| json!({"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false});
    Some(match pre {
        "default" | "gpt-2" | "gpt2" => byte_level(true),
        "smollm" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
        "llama-bpe" | "llama3" => {
            json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_SPLIT), byte_level(false)]})
        }
        "qwen2" => {
            json!({"type": "Sequence", "pretokenizers": [split(QWEN2_SPLIT), byte_level(false)]})
        }
        _ => return None,
    })
}

/// Merges of a sentencepiece BPE vocabulary, as transformers' `generate_merges` derives them:
/// every split of a piece into two in-vocabulary pieces, ordered by the merged piece's score
/// (then by the lengths of the parts), highest first; ties keep vocabulary order.
fn sentencepiece_merges(tokens: &[String], scores: &[f64]) -> Vec<Json> {
    let mut vocab = std::collections::HashMap::new();
    for (i, t) in tokens.iter().enumerate() {
        vocab.entry(t.as_str()).or_insert(i);
    }
    let mut merges: Vec<(&str, &str, f64)> = Vec::new();
    for (i, piece) in tokens.iter().enumerate() {
        let score = scores.get(i).copied().unwrap_or(0.0);
        let mut local: Vec<(&str, &str, f64)> = piece
            .char_indices()
            .skip(1)
            .map(|(at, _)| (&piece[..at], &piece[at..]))
            .filter(|(l, r)| vocab.contains_key(l) && vocab.contains_key(r))
            .map(|(l, r)| (l, r, score))
            .collect();
        local.sort_by_key(|(l, r, _)| (vocab[l], vocab[r]));
        merges.extend(local);
    }
    let clen = |s: &str| s.chars().count();
    merges.sort_by(|a, b| {
        b.2.total_cmp(&a.2)
            .then(clen(b.0).cmp(&clen(a.0)))
            .then(clen(b.1).cmp(&clen(a.1)))
    });
    merges.into_iter().map(|(l, r, _)| json!([l, r])).collect()
}
