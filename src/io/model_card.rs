//! The model card (README.md) of an exported model, and the `ddp` block of its config.json:
//! what it was pruned from (source, revision, licence), how (recipe, stages and their keys,
//! method, budget), what it kept (shape per layer, parameter count) and, when the pipeline
//! measured them, its evaluation and benchmark numbers.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::gguf::{GgufFile, Value as Meta};
use crate::model::config::LayerShape;

/// A stage of the pipeline that made the model.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StageRef {
    /// Instance name in the recipe (e.g. `anneal-train`).
    pub instance: String,
    /// Stage kind.
    pub kind: String,
    /// Stage key (its cache entry's name).
    pub key: String,
}

/// What the source model says about itself.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SourceInfo {
    /// Its name (GGUF `general.name`, config.json `_name_or_path`).
    pub name: Option<String>,
    /// Its licence (GGUF `general.license`, the README front matter's `license`).
    pub license: Option<String>,
    /// The Hugging Face repository it is (or was converted from), for `base_model`.
    pub repo: Option<String>,
}

/// Everything a model card states, gathered by the stage that writes the model (`card.json`
/// in its entry, so a later stage can add the numbers).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CardFacts {
    /// The source spec as the recipe gives it (path, `pip:PKG==VER:FILE` or `hf:ORG/NAME@REV`).
    pub source: String,
    /// What the source says about itself.
    pub source_info: SourceInfo,
    /// The recipe's name, when the stage knows it.
    pub recipe: Option<String>,
    /// The stages that made the model, source first.
    pub stages: Vec<StageRef>,
    /// The pruning method (`anneal-train` / `oneshot` `method`).
    pub method: Option<String>,
    /// Target sparsity of the prunable parameters (gate-insert `sparsity`).
    pub target_sparsity: Option<f64>,
    /// The rule that made the final mask (threshold `rule`).
    pub mask_rule: Option<String>,
    /// Tokens the pruning trained on, when recorded.
    pub tokens_trained: Option<f64>,
    /// The written dtype (torch name).
    pub dtype: String,
    /// Parameters of the source and of this model.
    pub params_source: usize,
    /// Parameters of this model.
    pub params: usize,
    /// The source's layer shape (uniform).
    pub source_layer: LayerShape,
    /// The kept shape of every layer.
    pub layers: Vec<LayerShape>,
    /// Whether config.json is the standard one (uniform layers) that transformers loads.
    pub standard: bool,
}

impl SourceInfo {
    /// Reads the name, licence and repository of the model at `path` (a GGUF file or an HF
    /// directory; `spec` is how the recipe named it); what is missing stays `None`.
    pub fn read(path: &Path, spec: &str) -> Self {
        let mut info = if path.is_dir() {
            Self::of_hf_dir(path)
        } else {
            GgufFile::open(path)
                .map(|f| Self::of_gguf(&f))
                .unwrap_or_default()
        };
        if let Some(rest) = spec.strip_prefix("hf:") {
            info.repo = Some(rest.split('@').next().unwrap_or(rest).to_string());
        }
        info
    }

    fn of_gguf(f: &GgufFile) -> Self {
        let s = |k: &str| f.get(k).and_then(Meta::as_str).map(str::to_string);
        let repo = ["general.base_model.0.repo_url", "general.source.url"]
            .iter()
            .filter_map(|&k| s(k))
            .find_map(|u| hub_repo(&u));
        Self {
            name: s("general.name"),
            license: s("general.license"),
            repo,
        }
    }

    fn of_hf_dir(dir: &Path) -> Self {
        let front = std::fs::read_to_string(dir.join("README.md")).unwrap_or_default();
        let config: Value = std::fs::read_to_string(dir.join("config.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null);
        let name = config
            .get("_name_or_path")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .map(str::to_string);
        Self {
            repo: name.clone().filter(|n| is_repo_id(n)),
            name,
            license: front_matter_value(&front, "license"),
        }
    }
}

/// `ORG/NAME` of a `https://huggingface.co/ORG/NAME...` address.
fn hub_repo(url: &str) -> Option<String> {
    let rest = url.split("huggingface.co/").nth(1)?;
    let mut parts = rest.split('/');
    let id = format!("{}/{}", parts.next()?, parts.next()?);
    is_repo_id(&id).then_some(id)
}

/// Whether `s` looks like a Hub repository id (`ORG/NAME`, not a path).
fn is_repo_id(s: &str) -> bool {
    let mut parts = s.split('/');
    let ok = |p: Option<&str>| {
        p.is_some_and(|p| {
            !p.is_empty()
                && !p.starts_with('.')
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
    };
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

/// A top-level scalar of a README's YAML front matter (`---` ... `---`).
fn front_matter_value(readme: &str, key: &str) -> Option<String> {
    let body = readme.strip_prefix("---")?;
    let end = body.find("\n---")?;
    body[..end].lines().find_map(|l| {
        let v = l.strip_prefix(key)?.strip_prefix(':')?.trim();
        let v = v.trim_matches(|c| c == '"' || c == '\'');
        (!v.is_empty()).then(|| v.to_string())
    })
}

impl CardFacts {
    /// config.json's `ddp` block (documented in docs/ARCHITECTURE.md).
    pub fn config_block(&self) -> Value {
        let kept = json!({
            "params": self.params,
            "params_fraction": self.params as f64 / self.params_source.max(1) as f64,
            "heads": self.layers.iter().map(|l| l.num_attention_heads).collect::<Vec<_>>(),
            "kv_heads": self.layers.iter().map(|l| l.num_key_value_heads).collect::<Vec<_>>(),
            "intermediate_size": self.layers.iter().map(|l| l.intermediate_size).collect::<Vec<_>>(),
        });
        json!({
            "source": self.source,
            "source_params": self.params_source,
            "method": self.method,
            "target_sparsity": self.target_sparsity,
            "mask_rule": self.mask_rule,
            "tokens_trained": self.tokens_trained,
            "kept": kept,
            "tool_version": env!("CARGO_PKG_VERSION"),
        })
    }

    /// The README.md: YAML front matter for the Hub, then the facts, then `sections`
    /// (`(heading, markdown)`, e.g. the evaluation), then how to load the model.
    pub fn render(&self, sections: &[(String, String)]) -> String {
        let mut s = self.front_matter();
        let info = &self.source_info;
        let title = info
            .repo
            .as_deref()
            .or(info.name.as_deref())
            .unwrap_or(&self.source);
        s += &format!("\n# {title}, pruned with ddp\n\n");
        s += &format!(
            "A structurally pruned copy of `{}`: whole attention heads, key/value groups and \
             FFN channels were removed, so it is a smaller dense model ({} of its {} \
             parameters kept), stored in {}.\n",
            self.source,
            millions(self.params),
            millions(self.params_source),
            self.dtype
        );
        s += &self.provenance();
        s += &self.shape_table();
        for (heading, body) in sections {
            s += &format!("\n## {heading}\n\n{}\n", body.trim_end());
        }
        s += &self.usage();
        s
    }

    fn front_matter(&self) -> String {
        let q = |v: &str| serde_json::to_string(v).expect("strings serialize");
        let mut s = "---\n".to_string();
        if let Some(l) = &self.source_info.license {
            s += &format!("license: {}\n", q(l));
        }
        if let Some(r) = &self.source_info.repo {
            s += &format!("base_model: {}\n", q(r));
        }
        s += "tags:\n- pruned\n- ddp\npipeline_tag: text-generation\nlibrary_name: transformers\n---\n";
        s
    }

    fn provenance(&self) -> String {
        let mut s = "\n## How it was made\n\n".to_string();
        s += &format!("- Source: `{}`", self.source);
        if let Some(n) = &self.source_info.name {
            s += &format!(" ({n})");
        }
        s += &format!(
            "; licence: {}\n",
            self.source_info
                .license
                .as_deref()
                .unwrap_or("not stated by the source")
        );
        if let Some(r) = &self.recipe {
            s += &format!("- Recipe: `{r}`\n");
        }
        let method = self.method.as_deref().unwrap_or("unknown");
        s += &format!("- Method: {method}");
        if let Some(t) = self.target_sparsity {
            s += &format!(", target sparsity {t} of the prunable (attention and FFN) parameters");
        }
        if let Some(r) = &self.mask_rule {
            s += &format!(", mask rule `{r}`");
        }
        if let Some(t) = self.tokens_trained {
            s += &format!(", trained on {t:.0} tokens");
        }
        s += "\n";
        if !self.stages.is_empty() {
            s += "- Stages (instance, kind, cache key):\n";
            for st in &self.stages {
                s += &format!("  - `{}` ({}): `{}`\n", st.instance, st.kind, st.key);
            }
        }
        s
    }

    fn shape_table(&self) -> String {
        let src = &self.source_layer;
        let mut s = format!(
            "\n## Kept shape\n\n{} parameters ({:.1} % of the source's {}); dtype {}.\n\n\
             | layer | heads | KV heads | FFN width |\n|---:|---:|---:|---:|\n\
             | source | {} | {} | {} |\n",
            millions(self.params),
            100.0 * self.params as f64 / self.params_source.max(1) as f64,
            millions(self.params_source),
            self.dtype,
            src.num_attention_heads,
            src.num_key_value_heads,
            src.intermediate_size
        );
        // Runs of equal layers share a row (`0-29` for a uniform model).
        let mut i = 0;
        while i < self.layers.len() {
            let l = &self.layers[i];
            let n = self.layers[i..].iter().take_while(|x| *x == l).count();
            let span = match n {
                1 => i.to_string(),
                _ => format!("{i}-{}", i + n - 1),
            };
            s += &format!(
                "| {span} | {} | {} | {} |\n",
                l.num_attention_heads, l.num_key_value_heads, l.intermediate_size
            );
            i += n;
        }
        s
    }

    fn usage(&self) -> String {
        if !self.standard {
            return "\n## How to load it\n\nIts layers have different widths (config.json's \
                    `ddp_layer_shapes`), which transformers' config cannot express: load it with \
                    ddp (`ddp-run generate --model DIR --prompt \"Once upon a time\"`, `ddp-run eval --model DIR --text FILE`).\n"
                .into();
        }
        "\n## How to load it\n\n```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n\
         path = \"path/to/this/directory\"\n\
         tokenizer = AutoTokenizer.from_pretrained(path)\n\
         model = AutoModelForCausalLM.from_pretrained(path)  # in the stored dtype\n\
         messages = [{\"role\": \"user\", \"content\": \"What is pruning?\"}]\n\
         inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors=\"pt\", return_dict=True)\n\
         out = model.generate(**inputs, max_new_tokens=32)\n\
         print(tokenizer.decode(out[0][inputs[\"input_ids\"].shape[1]:], skip_special_tokens=True))\n```\n\n\
         (`apply_chat_template` needs a source with a chat template; otherwise pass text to \
         `tokenizer(...)`.) ddp reads it too: `ddp-run generate --model DIR --prompt \"...\"`.\n"
            .into()
    }
}

/// `n` in millions (`106.2M`), or as is below a million.
fn millions(n: usize) -> String {
    if n >= 1_000_000 {
        format!("{:.1}M", n as f64 / 1e6)
    } else {
        n.to_string()
    }
}
