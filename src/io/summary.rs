//! What `ddp-run inspect` shows of a model: the file, its architecture and sizes, and the
//! parameter counts by part (what pruning can remove and what it cannot), as JSON or text.

use serde_json::json;

use super::ModelFiles;
use crate::model::accounting;

/// The summary as JSON: source, file, dtypes, the architecture's sizes, parameter counts and
/// the full config.
pub fn json(files: &ModelFiles, spec: &str) -> serde_json::Value {
    let c = &files.config;
    let p = accounting::count(c);
    json!({
        "source": spec,
        "path": files.path,
        "format": files.format,
        "dtype": files.weights.dtype_summary(),
        "architecture": c.arch,
        "layers": c.num_hidden_layers,
        "hidden_size": c.hidden_size,
        "heads": c.num_attention_heads,
        "kv_heads": c.num_key_value_heads,
        "head_dim": c.head_dim,
        "ffn_size": c.intermediate_size,
        "experts": c.moe.as_ref().map(|m| m.num_experts),
        "experts_per_token": c.moe.as_ref().map(|m| m.num_experts_per_tok),
        "vocab_size": c.vocab_size,
        "tied_embeddings": c.tie_word_embeddings,
        "parameters": {
            "total": p.total, "embedding": p.embedding, "prunable": p.prunable(),
            "attention": p.attention, "ffn": p.ffn, "routed_experts": p.experts,
            "other": p.other,
        },
        "config": c,
    })
}

/// `1234567` -> `"1,234,567"`.
fn grouped(x: usize) -> String {
    let s = x.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// The summary as aligned text lines.
pub fn text(files: &ModelFiles, spec: &str) -> String {
    let c = &files.config;
    let p = accounting::count(c);
    let n = grouped;
    let mut lines = vec![
        format!("model         {spec}"),
        format!(
            "file          {} ({}, {})",
            files.path.display(),
            files.format,
            files.weights.dtype_summary()
        ),
        format!("architecture  {:?}", c.arch),
        format!("layers        {}", c.num_hidden_layers),
        format!("hidden        {}", c.hidden_size),
        format!(
            "heads         {} query / {} KV (head_dim {})",
            c.num_attention_heads, c.num_key_value_heads, c.head_dim
        ),
        format!("ffn           {}", c.intermediate_size),
    ];
    if let Some(m) = &c.moe {
        let shared = m
            .shared_expert_intermediate_size
            .map_or(String::new(), |s| format!(" + shared expert of width {s}"));
        lines.push(format!(
            "experts       {} ({} per token, width {}){shared}",
            m.num_experts, m.num_experts_per_tok, m.moe_intermediate_size
        ));
    }
    let tied = if c.tie_word_embeddings {
        " (tied embeddings)"
    } else {
        ""
    };
    lines.push(format!("vocab         {}{tied}", c.vocab_size));
    lines.push(format!("parameters    {} total", n(p.total)));
    lines.push(format!("              {} embedding", n(p.embedding)));
    let experts = if p.experts > 0 {
        format!(", of which {} in routed experts", n(p.experts))
    } else {
        String::new()
    };
    lines.push(format!(
        "              {} prunable ({} attention, {} FFN{experts})",
        n(p.prunable()),
        n(p.attention),
        n(p.ffn)
    ));
    lines.push(format!(
        "              {} other (norms, routers)",
        n(p.other)
    ));
    lines.join("\n") + "\n"
}

#[cfg(test)]
mod tests {
    #[test]
    fn thousands_are_grouped() {
        assert_eq!(super::grouped(7), "7");
        assert_eq!(super::grouped(1234), "1,234");
        assert_eq!(super::grouped(134515008), "134,515,008");
    }
}
