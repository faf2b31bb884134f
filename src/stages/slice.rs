//! `slice`: folds the final mask into the weights and writes the smaller model as a Hugging
//! Face directory (standard config when shapes are uniform).

use anyhow::Result;
use toml::Value;

use super::common::{model_path, read_json};
use crate::engine::stage::{InputSpec, Metrics, ParamSpec, ParamType, StageContext, StageKind};
use crate::io::{self, export};
use crate::model::accounting;
use crate::prune::{mask::FinalMask, slice};

pub struct Slice;

impl StageKind for Slice {
    fn name(&self) -> &'static str {
        "slice"
    }
    fn version(&self) -> u32 {
        1
    }
    fn about(&self) -> &'static str {
        "Fold surviving gate values into the weights, cut removed heads, KV groups and channels, and write the smaller model (model/: safetensors, config.json, tokenizer.json)."
    }
    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec { name: "uniform", ty: ParamType::Bool, default: Some(Value::Boolean(false)), doc: "pad every layer to the same shapes (zero-gated units) so the config is the standard one that transformers and vLLM load" },
            ParamSpec { name: "multiple", ty: ParamType::Int { min: 1, max: 1 << 16 }, default: Some(Value::Integer(1)), doc: "with uniform: round channel counts up to this multiple" },
        ]
    }
    fn inputs(&self) -> Vec<InputSpec> {
        vec![InputSpec {
            optional: false,
            name: "mask",
            kinds: &["threshold"],
            doc: "the final mask",
        }]
    }
    fn headline(&self) -> Option<&'static str> {
        Some("params_kept")
    }
    fn run(&self, ctx: &StageContext) -> Result<Metrics> {
        let input = ctx.input("mask")?;
        let files = io::open_model(&model_path(input, ctx.cache_root)?)?;
        let mask: FinalMask = read_json(&input.dir.join("mask.json"))?;
        let s = slice::slice(
            &files.config,
            files.weights.as_ref(),
            &mask,
            ctx.bool("uniform"),
            ctx.int("multiple") as usize,
        )?;
        let dir = ctx.out_dir.join("model");
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
            Some(_) => serde_json::json!({"entry_relative": "model"}),
            None => serde_json::json!({"path": dir}),
        };
        std::fs::write(
            ctx.out_dir.join("model.json"),
            serde_json::to_string_pretty(
                &serde_json::json!({"location": location, "config": s.config}),
            )?,
        )?;
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
