//! `slice`: folds the final mask into the weights and writes the smaller model as the Hugging
//! Face directory a user expects (standard config when shapes are uniform): weights in the
//! source's dtype, the tokenizer files with the source's chat template, generation_config.json,
//! a model card, and config.json's `ddp` block. `card.json` keeps the card's facts for the
//! `export` stage, which adds the evaluation and benchmark numbers.

use std::path::Path;

use anyhow::Result;

use super::common::{open_input, read_json, write_json, Location, ModelRef};
use crate::artifacts::{MASK, MODEL_DIR};
use crate::engine::lineage::ancestors;
use crate::engine::params::{int_in, StageParams};
use crate::engine::stage::{
    Input, InputSpec, Metrics, ParamSpec, ParamType, StageContext, StageKind,
};
use crate::io::export::{self, HfOptions, WeightDtype};
use crate::io::model_card::{CardFacts, SourceInfo, StageRef};
use crate::io::{dtype, ModelFiles};
use crate::model::accounting;
use crate::model::config::{Arch, ModelConfig};
use crate::prune::{mask::FinalMask, slice};

/// The facts of the model card, in the slice's entry (read by `export`).
pub const CARD: &str = "card.json";

/// The dtypes `dtype` accepts.
pub const DTYPES: &[&str] = &["source", "f32", "bf16", "f16"];

/// The kind's name in recipes and cache paths.
pub const KIND: &str = "slice";

/// The `slice` stage kind.
pub struct Slice;

crate::stage_params! {
    /// The `slice` stage's parameters.
    pub struct SliceParams {
        /// pad every layer to the same shapes (zero-gated units) so the config is the standard one that transformers and vLLM load
        uniform: bool = false => ParamType::Bool,
        /// with uniform: round channel counts up to this multiple
        multiple: usize = 1 => int_in(1, 1 << 16),
        /// dtype of the written weights: "source" (the source's: its safetensors dtype; for a GGUF F32/F16/BF16 as they are, quantised blocks as f16), "f32", "bf16" or "f16". Gates are folded in f32, then cast
        dtype: String = "source" => ParamType::Choice(DTYPES),
    }
}

impl StageKind for Slice {
    fn name(&self) -> &'static str {
        KIND
    }
    fn version(&self) -> u32 {
        2
    }
    fn about(&self) -> &'static str {
        "Fold surviving gate values into the weights, cut removed heads, KV groups and channels, and write the smaller model (model/: safetensors in the source's dtype, config.json, tokenizer files with the chat template, generation_config.json, README.md)."
    }
    fn params(&self) -> Vec<ParamSpec> {
        SliceParams::specs()
    }
    fn inputs(&self) -> Vec<InputSpec> {
        vec![InputSpec {
            optional: false,
            name: "mask",
            kinds: &[super::threshold::KIND],
            doc: "the final mask",
        }]
    }
    fn headline(&self) -> Option<&'static str> {
        Some("params_kept")
    }
    fn run(&self, ctx: &StageContext) -> Result<Metrics> {
        let input = ctx.input("mask")?;
        let files = open_input(input, ctx.cache_root)?;
        let mask: FinalMask = read_json(&input.dir.join(MASK))?;
        let p = ctx.typed::<SliceParams>()?;
        let s = slice::slice(
            &files.config,
            files.weights.as_ref(),
            &mask,
            p.uniform,
            p.multiple,
        )?;
        let dir = ctx.out_dir.join(MODEL_DIR);
        let dtype = match WeightDtype::parse(&p.dtype) {
            Some(d) => d,
            None => dtype::of_source(&files.path)?,
        };
        let facts = card_facts(ctx, input, &files, &s.config, dtype)?;
        let opts = HfOptions {
            dtype,
            shard_bytes: None,
            generation_config: source_generation_config(&files.path)?,
            ddp: Some(facts.config_block()),
            readme: Some(facts.render(&[])),
        };
        export::write_hf_dir_with(&dir, &s.config, &s.tensors, files.tokenizer.as_ref(), &opts)?;
        write_json(&ctx.out_dir.join(CARD), &facts)?;
        let before = accounting::count(&files.config);
        let after = accounting::count(&s.config);
        let standard = s.config.layer_shapes.is_none();
        let c = &s.config;
        if standard && c.arch == Arch::Llama && c.hidden_size % c.num_attention_heads != 0 {
            ctx.warn(&format!(
                "{} heads do not divide hidden_size {}: transformers 5.25 refuses such a LlamaConfig (its validate_architecture ignores head_dim); ddp and llama.cpp (export formats = [\"gguf\"]) load it",
                c.num_attention_heads, c.hidden_size
            ));
        }
        if !standard {
            ctx.note(
                "layers have different shapes: config.json records them in `ddp_layer_shapes` (ddp loads it) and export formats = [\"gguf\"] writes llama.cpp's per-layer `deci` GGUF; transformers and vLLM need uniform shapes (threshold rule = \"uniform\" or slice uniform = true)",
            );
        }
        // model.json for downstream stages: the sliced model, inside this entry.
        let rel = ctx.out_dir.strip_prefix(ctx.cache_root).ok();
        let location = match rel {
            Some(_) => Location::EntryRelative(MODEL_DIR.into()),
            None => Location::Path(dir.clone()),
        };
        let mut about = serde_json::Map::new();
        about.insert("config".into(), serde_json::to_value(&s.config)?);
        ModelRef { location, about }.write(ctx.out_dir)?;
        Ok(Metrics::from([
            ("params_total".into(), after.total as f64),
            (
                "params_kept".into(),
                after.total as f64 / before.total as f64,
            ),
            (
                "prunable_kept".into(),
                after.prunable() as f64 / before.prunable() as f64,
            ),
            ("standard_config".into(), if standard { 1.0 } else { 0.0 }),
        ]))
    }
}

/// The source's generation_config.json (HF directory sources that have one).
fn source_generation_config(path: &Path) -> Result<Option<serde_json::Value>> {
    let p = path.join("generation_config.json");
    if !path.is_dir() || !p.is_file() {
        return Ok(None);
    }
    Ok(Some(read_json(&p)?))
}

/// What the card states, from the mask's lineage (load's source, gate-insert's target,
/// the training's method and tokens, threshold's rule) and the two configs.
fn card_facts(
    ctx: &StageContext,
    mask: &Input,
    files: &ModelFiles,
    sliced: &ModelConfig,
    dtype: WeightDtype,
) -> Result<CardFacts> {
    let anc = ancestors(ctx.cache_root, &mask.dir);
    let by_kind = |kind: &str| anc.iter().map(|(_, m)| m).find(|m| m.kind == kind);
    let param = |kind: &str, name: &str| by_kind(kind).and_then(|m| m.params.get(name).cloned());
    let text = |v: Option<serde_json::Value>| v.and_then(|v| v.as_str().map(str::to_string));
    let trained = by_kind(super::anneal_train::KIND);
    let pruned_by = trained.or(by_kind(super::oneshot::KIND));
    let source =
        text(param(super::load::KIND, "model")).unwrap_or_else(|| files.path.display().to_string());
    let params_source = accounting::count(&files.config).total;
    Ok(CardFacts {
        source_info: SourceInfo::read(&files.path, &source),
        source,
        recipe: None,
        stages: anc
            .iter()
            .rev()
            .map(|(_, m)| StageRef {
                instance: m.instance.clone(),
                kind: m.kind.clone(),
                key: m.key.clone(),
            })
            .collect(),
        method: pruned_by.and_then(|m| m.params.get("method")?.as_str().map(str::to_string)),
        target_sparsity: param(super::gate_insert::KIND, "sparsity").and_then(|v| v.as_f64()),
        mask_rule: text(param(super::threshold::KIND, "rule")),
        tokens_trained: trained.and_then(|m| m.metrics.get("tokens_trained").copied()),
        dtype: dtype.torch_name().to_string(),
        params_source,
        params: accounting::count(sliced).total,
        source_layer: files.config.layer(0),
        layers: (0..sliced.num_hidden_layers)
            .map(|i| sliced.layer(i))
            .collect(),
        standard: sliced.layer_shapes.is_none(),
    })
}
