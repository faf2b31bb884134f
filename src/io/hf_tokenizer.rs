//! The tokenizer files of a Hugging Face directory as transformers' `save_pretrained` writes
//! them: tokenizer.json, tokenizer_config.json (special tokens as strings, add_bos/add_eos,
//! the added tokens, the chat template), special_tokens_map.json; and generation_config.json.
//!
//! `tokenizer_class` is `PreTrainedTokenizerFast` unless the source names one: that class
//! runs tokenizer.json as it is, so transformers tokenizes exactly as ddp does (a named class
//! such as `LlamaTokenizerFast` may rebuild the post-processor or the pre-tokenizer).

use serde_json::{json, Map, Value};

use super::export::pretty;
use super::tokenizer::Tokenizer;
use crate::model::config::ModelConfig;

/// The class transformers loads a tokenizer.json with when the source names none.
pub const GENERIC_CLASS: &str = "PreTrainedTokenizerFast";

/// The token string of `id`, if the vocabulary has it.
fn token(t: &Tokenizer, id: Option<u32>) -> Option<String> {
    id.and_then(|i| t.inner.id_to_token(i))
}

/// `(file name, contents)` of the tokenizer files.
pub fn files(t: &Tokenizer, cfg: &ModelConfig) -> Result<Vec<(&'static str, String)>, String> {
    let json = t
        .inner
        .to_string(false)
        .map_err(|e| format!("tokenizer.json could not be written: {e}"))?;
    let config = tokenizer_config(t, cfg);
    let special = special_tokens_map(&config);
    Ok(vec![
        ("tokenizer.json", json),
        ("tokenizer_config.json", pretty(&config)),
        ("special_tokens_map.json", pretty(&special)),
    ])
}

/// tokenizer_config.json: the source's keys (HF directory sources) with what they lack filled
/// in from the tokenizer; `added_tokens_decoder` always from tokenizer.json, so the two agree.
pub fn tokenizer_config(t: &Tokenizer, cfg: &ModelConfig) -> Value {
    let mut o: Map<String, Value> = t.meta.source_config.clone().unwrap_or_default();
    let named = |id: Option<u32>| token(t, id).map_or(Value::Null, Value::String);
    let unk = t.meta.unk_id.or_else(|| unk_of_model(t));
    let defaults = [
        ("add_bos_token", json!(t.add_bos)),
        ("add_eos_token", json!(t.meta.add_eos)),
        ("bos_token", named(t.bos_id)),
        ("eos_token", named(t.eos_id)),
        ("unk_token", named(unk)),
        ("pad_token", named(t.meta.pad_id)),
        ("clean_up_tokenization_spaces", json!(false)),
        ("model_max_length", json!(cfg.max_position_embeddings)),
        ("tokenizer_class", json!(GENERIC_CLASS)),
    ];
    for (k, v) in defaults {
        o.entry(k).or_insert(v);
    }
    if let Some(tpl) = &t.meta.chat_template {
        o.insert("chat_template".into(), json!(tpl));
    }
    o.insert("added_tokens_decoder".into(), added_tokens_decoder(t));
    Value::Object(o)
}

/// The BPE model's `unk_token`, as an id (sentencepiece-style vocabularies have one).
fn unk_of_model(t: &Tokenizer) -> Option<u32> {
    let v = serde_json::to_value(t.inner.get_model()).ok()?;
    let unk = v.get("unk_token")?.as_str()?;
    t.inner.token_to_id(unk)
}

/// `{"ID": {"content": .., "lstrip": .., "normalized": .., "rstrip": .., "single_word": ..,
/// "special": ..}}` in id order, as transformers writes it.
fn added_tokens_decoder(t: &Tokenizer) -> Value {
    let mut added: Vec<_> = t.inner.get_added_tokens_decoder().into_iter().collect();
    added.sort_by_key(|(id, _)| *id);
    let mut o = Map::new();
    for (id, a) in added {
        o.insert(
            id.to_string(),
            json!({"content": a.content, "lstrip": a.lstrip, "normalized": a.normalized,
                   "rstrip": a.rstrip, "single_word": a.single_word, "special": a.special}),
        );
    }
    Value::Object(o)
}

/// special_tokens_map.json: the special tokens of `config` that are set.
fn special_tokens_map(config: &Value) -> Value {
    let mut o = Map::new();
    for k in [
        "bos_token",
        "eos_token",
        "unk_token",
        "pad_token",
        "additional_special_tokens",
    ] {
        match config.get(k) {
            None | Some(Value::Null) => {}
            Some(v) => {
                o.insert(k.into(), v.clone());
            }
        }
    }
    Value::Object(o)
}

/// generation_config.json from the model's and tokenizer's special-token ids (for a source
/// without one).
pub fn generation_config(cfg: &ModelConfig, t: Option<&Tokenizer>) -> Value {
    let mut o = Map::new();
    o.insert("_from_model_config".into(), json!(true));
    let bos = cfg.bos_token_id.or(t.and_then(|t| t.bos_id));
    let eos = cfg.eos_token_id.or(t.and_then(|t| t.eos_id));
    let pad = t.and_then(|t| t.meta.pad_id);
    for (k, v) in [
        ("bos_token_id", bos),
        ("eos_token_id", eos),
        ("pad_token_id", pad),
    ] {
        if let Some(id) = v {
            o.insert(k.into(), json!(id));
        }
    }
    Value::Object(o)
}
