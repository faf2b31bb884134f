//! `export`: the model as it ships. Takes the slice's directory (hard links to its files, a
//! copy where the file system refuses links) and writes its model card again with what the
//! pipeline measured after slicing: the evaluation (perplexity, accuracies, their change from
//! the dense model) and the benchmark. `formats` names the outputs: "hf" (the directory) and
//! "gguf" (`model.gguf` for llama.cpp, Ollama, LM Studio: `io::gguf_write`, per-layer widths as
//! llama.cpp's `deci`).

use std::path::Path;

use anyhow::{bail, Context, Result};

use super::common::{read_json, write_json, Location, ModelRef};
use super::slice::CARD;
use crate::artifacts::{BENCH_MD, EVAL_MD, MODEL_DIR, MODEL_GGUF};
use crate::engine::params::StageParams;
use crate::engine::stage::{
    Input, InputSpec, Metrics, ParamSpec, ParamType, StageContext, StageKind,
};
use crate::io::gguf::Value;
use crate::io::gguf_write::{output_type, write_gguf, GgufOptions, OUTPUT_TYPE_NAMES};
use crate::io::model_card::{CardFacts, StageRef};
use crate::io::quants::GgmlType;
use crate::io::{gguf_vocab, open_model};

/// The kind's name in recipes and cache paths.
pub const KIND: &str = "export";

/// The formats `formats` accepts.
pub const FORMATS: &[&str] = &["hf", "gguf"];

/// The `export` stage kind.
pub struct Export;

crate::stage_params! {
    /// The `export` stage's parameters.
    pub struct ExportParams {
        /// what to write: "hf" (model/: the Hugging Face directory with the model card), "gguf" (model.gguf for llama.cpp; per-layer widths as its `deci` architecture)
        formats: Vec<String> = vec!["hf".to_string()] => ParamType::StrList,
        /// with "gguf": the storage type of its matrices (norms and 1-D tensors stay f32)
        gguf_type: String = "f16" => ParamType::Choice(OUTPUT_TYPE_NAMES),
        /// the recipe's name, for the card (the pipeline sets "${recipe.name}")
        recipe: String = "" => ParamType::Str,
        /// the card's base_model (a Hub repository id), when the source does not name it
        base_model: String = "" => ParamType::Str,
    }
}

impl StageKind for Export {
    fn name(&self) -> &'static str {
        KIND
    }
    fn version(&self) -> u32 {
        1
    }
    fn about(&self) -> &'static str {
        "The model as it ships: the slice's directory (hard links) with a model card (README.md) that adds the evaluation and benchmark numbers, and with formats = [\"hf\", \"gguf\"] model.gguf for llama.cpp."
    }
    fn params(&self) -> Vec<ParamSpec> {
        ExportParams::specs()
    }
    fn inputs(&self) -> Vec<InputSpec> {
        vec![
            InputSpec {
                optional: false,
                name: "model",
                kinds: &[super::slice::KIND],
                doc: "the sliced model",
            },
            InputSpec {
                optional: true,
                name: "evaluation",
                kinds: &[super::evaluate::KIND],
                doc: "its evaluation, for the card",
            },
            InputSpec {
                optional: true,
                name: "benchmark",
                kinds: &[super::benchmark::KIND],
                doc: "its benchmark, for the card",
            },
        ]
    }
    fn headline(&self) -> Option<&'static str> {
        Some("params_total")
    }
    fn run(&self, ctx: &StageContext) -> Result<Metrics> {
        let p = ctx.typed::<ExportParams>()?;
        if let Some(f) = p.formats.iter().find(|f| !FORMATS.contains(&f.as_str())) {
            bail!(
                "stage {}: formats: \"{f}\" is not a format this build writes (one of: {})",
                ctx.instance,
                FORMATS.join(", ")
            );
        }
        let slice = ctx.input("model")?;
        let (facts, sections) = card(ctx, &p)?;
        if p.formats.iter().any(|f| f == "hf") {
            write_hf(ctx, &facts, &sections)?;
        }
        write_json(&ctx.out_dir.join(CARD), &facts)?;
        let mut m = Metrics::from([("params_total".into(), facts.params as f64)]);
        if p.formats.iter().any(|f| f == "gguf") {
            let path = ctx.out_dir.join(MODEL_GGUF);
            write_model_gguf(
                &slice.dir.join(MODEL_DIR),
                &path,
                &facts,
                output_type(&p.gguf_type)?,
            )?;
            let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            m.insert("gguf_bytes".into(), bytes as f64);
        }
        if let Some(ppl) = ctx
            .inputs
            .get("evaluation")
            .and_then(|e| e.metrics.get("perplexity"))
        {
            m.insert("perplexity".into(), *ppl);
        }
        Ok(m)
    }
}

/// The slice's card facts with the recipe, base model and stage keys added, and the measured
/// sections (evaluation, benchmark) of the connected inputs.
fn card(ctx: &StageContext, p: &ExportParams) -> Result<(CardFacts, Vec<(String, String)>)> {
    let slice = ctx.input("model")?;
    let mut facts: CardFacts = read_json(&slice.dir.join(CARD))?;
    if !p.recipe.is_empty() {
        facts.recipe = Some(p.recipe.clone());
    }
    if !p.base_model.is_empty() {
        facts.source_info.repo = Some(p.base_model.clone());
    }
    let mut sections = vec![];
    for (input, file, heading) in [
        ("evaluation", EVAL_MD, "Evaluation"),
        ("benchmark", BENCH_MD, "Benchmark"),
    ] {
        if let Some(inp) = ctx.inputs.get(input) {
            sections.push((heading.to_string(), measured(inp, file)?));
        }
    }
    let inputs = [
        Some(slice),
        ctx.inputs.get("evaluation"),
        ctx.inputs.get("benchmark"),
    ];
    for inp in inputs.into_iter().flatten() {
        facts.stages.push(StageRef {
            instance: inp.stage.clone(),
            kind: inp.kind.clone(),
            key: inp.key.clone(),
        });
    }
    Ok((facts, sections))
}

/// `model/`: hard links to the slice's files with the card rendered anew, and model.json
/// pointing at it for downstream stages.
fn write_hf(ctx: &StageContext, facts: &CardFacts, sections: &[(String, String)]) -> Result<()> {
    let slice = ctx.input("model")?;
    let dir = ctx.out_dir.join(MODEL_DIR);
    link_dir(&slice.dir.join(MODEL_DIR), &dir, &["README.md"])?;
    std::fs::write(dir.join("README.md"), facts.render(sections))
        .with_context(|| format!("writing {}", dir.join("README.md").display()))?;
    let mut about = ModelRef::read(&slice.dir)?.about;
    about.insert("card".into(), serde_json::to_value(facts)?);
    ModelRef {
        location: Location::EntryRelative(MODEL_DIR.into()),
        about,
    }
    .write(ctx.out_dir)
}

/// Writes the sliced HF directory `dir` as a GGUF at `path`: its tokenizer (and chat template)
/// carried over and checked, named after the source, with `ddp.*` keys saying what it is.
fn write_model_gguf(dir: &Path, path: &Path, facts: &CardFacts, ty: GgmlType) -> Result<()> {
    let files = open_model(dir)?;
    let tensors = crate::io::export::read_all(files.weights.as_ref())?;
    let base = facts.source_info.name.as_deref().unwrap_or("model");
    let mut extra = vec![
        ("ddp.source".to_string(), Value::Str(facts.source.clone())),
        ("ddp.pruned".to_string(), Value::Bool(true)),
    ];
    if let Some(m) = &facts.method {
        extra.push(("ddp.method".to_string(), Value::Str(m.clone())));
    }
    let opts = GgufOptions {
        ty,
        name: format!("{base} (pruned by ddp)"),
        tokenizer: gguf_vocab::tokenizer_metadata(&files)?,
        check_tokenizer: files.tokenizer.as_ref(),
        extra,
    };
    write_gguf(path, &files.config, &tensors, &opts)?;
    Ok(())
}

/// The markdown an evaluate or benchmark entry wrote (`file`), without its `# ` heading.
fn measured(inp: &Input, file: &str) -> Result<String> {
    let path = inp.dir.join(file);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("stage {}: reading {}", inp.stage, path.display()))?;
    let body = match text.strip_prefix("# ") {
        Some(rest) => rest.split_once('\n').map_or("", |(_, b)| b),
        None => &text,
    };
    Ok(format!(
        "From stage `{}` (key `{}`):\n\n{}",
        inp.stage,
        inp.key,
        body.trim()
    ))
}

/// `to` with a hard link to every file of `from` (a copy where linking fails, e.g. across
/// file systems), except the names in `skip`.
fn link_dir(from: &Path, to: &Path, skip: &[&str]) -> Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    let entries = std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))?;
    for e in entries {
        let e = e.with_context(|| format!("reading {}", from.display()))?;
        let name = e.file_name();
        if skip.iter().any(|s| name == *s) || !e.file_type()?.is_file() {
            continue;
        }
        let (src, dst) = (e.path(), to.join(&name));
        if std::fs::hard_link(&src, &dst).is_err() {
            std::fs::copy(&src, &dst)
                .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
        }
    }
    Ok(())
}
