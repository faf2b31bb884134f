//! `slice`: folds the final mask into the weights and writes the smaller model as a Hugging
//! Face directory (standard config when shapes are uniform).

use anyhow::Result;

use super::common::{open_input, read_json, Location, ModelRef};
use crate::artifacts::{MASK, MODEL_DIR};
use crate::engine::params::{int_in, StageParams};
use crate::engine::stage::{InputSpec, Metrics, ParamSpec, ParamType, StageContext, StageKind};
use crate::io::export;
use crate::model::accounting;
use crate::prune::{mask::FinalMask, slice};

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
    }
}

impl StageKind for Slice {
    fn name(&self) -> &'static str {
        KIND
    }
    fn version(&self) -> u32 {
        1
    }
    fn about(&self) -> &'static str {
        "Fold surviving gate values into the weights, cut removed heads, KV groups and channels, and write the smaller model (model/: safetensors, config.json, tokenizer.json)."
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
        export::write_hf_dir(&dir, &s.config, &s.tensors, files.tokenizer.as_ref())?;
        let before = accounting::count(&files.config);
        let after = accounting::count(&s.config);
        let standard = s.config.layer_shapes.is_none();
        if !standard {
            ctx.progress.println(format!(
                "{}: layers have different shapes; the config records them in `ddp_layer_shapes` (ddp loads it). Standard runtimes need uniform shapes: threshold rule = \"uniform\" or slice uniform = true.",
                ctx.instance
            ));
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
