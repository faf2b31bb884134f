//! A stories260k sweep through evaluate, benchmark and report: the report renders, its table
//! has a row per model with deltas against dense, and its plots are valid PNG images.

use crate::common::*;

use std::fs;

fn png_size(path: &std::path::Path) -> (u32, u32) {
    let dec = png::Decoder::new(std::io::BufReader::new(fs::File::open(path).unwrap()));
    let mut r = dec
        .read_info()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut buf = vec![0; r.output_buffer_size().unwrap()];
    let info = r.next_frame(&mut buf).unwrap();
    // Not a blank canvas: some pixels differ from the first one.
    assert!(
        buf.chunks(3).any(|p| p != &buf[..3]),
        "{} is blank",
        path.display()
    );
    (info.width, info.height)
}

#[test]
fn a_stories260k_sweep_reports_every_model_with_plots() {
    // DDP_KEEP_REPORT=DIR keeps the run there, to look at the plots.
    let tmp = tempfile::tempdir().unwrap();
    let root = match std::env::var_os("DDP_KEEP_REPORT") {
        Some(p) => tempfile::TempDir::new_in(p).unwrap().keep(),
        None => tmp.path().to_path_buf(),
    };
    let moby = fixtures().join("corpora/moby-dick.txt");
    let s = run_text_at(
        &root,
        "sweep.toml",
        &recipes::sweep(&moby.to_string_lossy()),
    );
    assert!(
        !s.failed(),
        "{:?}",
        s.results
            .iter()
            .map(|x| (&x.name, &x.outcome))
            .collect::<Vec<_>>()
    );
    let out = root.as_path().join("out/sweep/report");
    let md = fs::read_to_string(out.join("report.md")).unwrap();
    println!("{md}");
    let json: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let rows = json["rows"].as_array().unwrap();
    // dense + 2 sparsities x (ddp + wanda-sp + magnitude)
    assert_eq!(rows.len(), 7, "{md}");
    assert_eq!(rows[0]["method"], "dense");
    for method in ["ddp", "wanda-sp", "magnitude"] {
        for t in ["0.3", "0.5"] {
            assert!(
                md.contains(&format!("| {method} @ {t} |")),
                "{method} @ {t} missing:\n{md}"
            );
        }
    }
    // Every pruned row has its perplexity delta against dense, and a measured speed-up beside
    // the ideal one.
    for row in &rows[1..] {
        let e = &row["eval"];
        let delta = e["delta.perplexity"].as_f64().unwrap();
        let dense = rows[0]["eval"]["perplexity"].as_f64().unwrap();
        assert!((e["perplexity"].as_f64().unwrap() - dense - delta).abs() < 1e-9);
        let b = &row["bench"];
        assert!(b["speedup.decode.b1"].as_f64().unwrap() > 0.0, "{row}");
        assert!(
            b["ideal.decode"].as_f64().unwrap() > 1.0,
            "pruned models need fewer FLOPs: {row}"
        );
    }
    let csv = fs::read_to_string(out.join("report.csv")).unwrap();
    assert_eq!(csv.lines().count(), 8);
    let plots: Vec<String> = json["plots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    for want in [
        "plots/quality_vs_sparsity.png",
        "plots/speedup_vs_sparsity.png",
        "plots/training_ddp_0.3.png",
        "plots/kept_wanda-sp_0.5.png",
    ] {
        assert!(plots.iter().any(|p| p == want), "{want} not in {plots:?}");
    }
    for p in &plots {
        let (w, h) = png_size(&out.join(p));
        assert!(w >= 800 && h >= 500, "{p}: {w}x{h}");
        assert!(
            md.contains(&format!("]({p})")),
            "{p} not linked from report.md"
        );
    }
}

#[test]
fn evaluation_text_that_is_the_calibration_text_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("sweep.toml");
    let sotu = fixtures().join("corpora/sotu/*.txt");
    fs::write(&path, recipes::sweep(&sotu.to_string_lossy())).unwrap();
    let e = ddp::recipe::load(&path, &ddp::stages::registry())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("sweep.toml:")
            && e.contains("stage `evaluate-dense`")
            && e.contains("is the calibration data"),
        "{e}"
    );
    // Overlap by content (another spelling of the same files) is caught when the stage runs.
    let blocks = ddp::data::Blocks {
        seq_len: 40,
        train: vec![(0..40).collect()],
        validation: vec![],
        tokens_seen: 40,
    };
    let mut eval: Vec<u32> = (1000..1100).collect();
    assert!(ddp::stages::evaluate::check_disjoint(&eval, &blocks, "x").is_ok());
    eval.splice(50..50, 3..38);
    let e = ddp::stages::evaluate::check_disjoint(&eval, &blocks, "x")
        .unwrap_err()
        .to_string();
    assert!(e.contains("overlaps the calibration text"), "{e}");
}

/// stories260k: DDP at two training budgets (anneal-train `steps` swept) and magnitude, each
/// evaluated, and the report.
fn budget_sweep() -> String {
    format!(
        r#"
name = "budgets"
[sweep]
budget = {{ param = "steps", values = [2, 3], stages = ["anneal-train"] }}
[stages.load]
kind = "load"
model = "{model}"
[stages.gate-insert]
kind = "gate-insert"
after = ["load"]
sparsity = 0.5
[stages.calibrate]
kind = "calibrate"
after = ["load"]
data = "{calib}"
seq_len = 32
max_tokens = 1500
[stages.anneal-train]
kind = "anneal-train"
after = ["gate-insert", "calibrate"]
warmup = 1
mu_end = 0.5
[stages.threshold]
kind = "threshold"
after = ["anneal-train"]
rule = "topk"
[stages.slice]
kind = "slice"
after = ["threshold"]
[stages.oneshot]
kind = "oneshot"
after = ["gate-insert", "calibrate"]
method = "magnitude"
[stages.threshold-oneshot]
kind = "threshold"
after = ["oneshot"]
rule = "topk"
[stages.slice-oneshot]
kind = "slice"
after = ["threshold-oneshot"]
[stages.evaluate-dense]
kind = "evaluate"
after = ["load", "calibrate"]
data = "{eval}"
seq_len = 64
max_tokens = 512
cloze_items = 0
[stages.evaluate]
kind = "evaluate"
after = ["slice", "calibrate", "evaluate-dense"]
data = "{eval}"
seq_len = 64
max_tokens = 512
cloze_items = 0
[stages.evaluate-oneshot]
kind = "evaluate"
after = ["slice-oneshot", "calibrate", "evaluate-dense"]
data = "{eval}"
seq_len = 64
max_tokens = 512
cloze_items = 0
[stages.report]
kind = "report"
after = ["evaluate-dense", "evaluate", "evaluate-oneshot"]
"#,
        model = fixtures().join("stories260k").display(),
        calib = fixtures().join("corpora/sotu/*.txt").display(),
        eval = fixtures().join("corpora/moby-dick.txt").display(),
    )
}

/// Tokens of a train_log.csv's steps (its `tokens` column, once per step).
fn logged_tokens(path: &std::path::Path) -> f64 {
    let text = fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let head: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |n: &str| head.iter().position(|h| *h == n).unwrap();
    let (step, tokens) = (col("step"), col("tokens"));
    let mut steps = std::collections::BTreeMap::new();
    for l in lines {
        let f: Vec<&str> = l.split(',').collect();
        steps.insert(f[step].to_string(), f[tokens].parse::<f64>().unwrap());
    }
    steps.values().sum()
}

#[test]
fn a_sweep_over_training_steps_names_them_and_plots_perplexity_against_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    let root = match std::env::var_os("DDP_KEEP_REPORT") {
        Some(p) => tempfile::TempDir::new_in(p).unwrap().keep(),
        None => tmp.path().to_path_buf(),
    };
    let s = run_text_at(&root, "budgets.toml", &budget_sweep());
    assert!(
        !s.failed(),
        "{:?}",
        s.results
            .iter()
            .map(|x| (&x.name, &x.outcome))
            .collect::<Vec<_>>()
    );
    let out = root.join("out/budgets/report");
    let md = fs::read_to_string(out.join("report.md")).unwrap();
    println!("{md}");
    let json: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let rows = json["rows"].as_array().unwrap();
    let labels: Vec<&str> = rows.iter().map(|r| r["label"].as_str().unwrap()).collect();
    // The two DDP rows differ only by anneal-train's steps, in budget order; the others are
    // alone in their method and target and keep their plain labels.
    assert_eq!(
        labels,
        [
            "dense",
            "ddp @ 0.5, steps=2",
            "ddp @ 0.5, steps=3",
            "magnitude @ 0.5"
        ],
        "{md}"
    );
    assert_eq!(
        rows[2]["varied"],
        serde_json::json!([{"param": "steps", "value": 3}])
    );
    // Tokens trained: anneal-train's record, which its log's steps add up to; none for the
    // models that did not train.
    let tokens: Vec<Option<f64>> = rows.iter().map(|r| r["tokens_trained"].as_f64()).collect();
    for (i, steps) in [(1, 2.0), (2, 3.0)] {
        let log =
            std::path::Path::new(rows[i]["train_dir"].as_str().unwrap()).join("train_log.csv");
        let t = tokens[i].unwrap();
        assert_eq!(t, logged_tokens(&log), "row {i}");
        assert_eq!(
            t,
            steps * 32.0,
            "row {i}: {steps} steps of one 32-token block"
        );
    }
    assert_eq!((tokens[0], tokens[3]), (None, None));
    // The table shows them, and every perplexity with its standard error.
    let header = md.lines().find(|l| l.starts_with("| model |")).unwrap();
    assert!(header.contains("| tokens trained |"), "{header}");
    assert!(md.contains("| ddp @ 0.5, steps=3 | ddp | 0.5 |"), "{md}");
    for r in rows {
        let e = &r["eval"];
        let (p, se) = (
            e["perplexity"].as_f64().unwrap(),
            e["perplexity_stderr"].as_f64().unwrap(),
        );
        assert!(se > 0.0 && (se - p * e["mean_nll_stderr"].as_f64().unwrap()).abs() < 1e-9 * se);
        assert!(
            md.contains(&format!("{p:.3} ± {se:.3}")),
            "{p} ± {se} not in\n{md}"
        );
    }
    let row3 = md
        .lines()
        .find(|l| l.starts_with("| ddp @ 0.5, steps=3 |"))
        .unwrap();
    assert!(row3.contains(" | 96 | "), "{row3}");
    // The plot of perplexity against tokens trained: a PNG, linked from report.md.
    let want = "plots/perplexity_vs_tokens.png";
    assert!(
        json["plots"].as_array().unwrap().iter().any(|p| p == want),
        "{}",
        json["plots"]
    );
    let (w, h) = png_size(&out.join(want));
    assert!(w >= 800 && h >= 500, "{w}x{h}");
    assert!(md.contains(&format!("]({want})")), "{md}");
    // Each DDP budget has its own training plot (the labels no longer collide).
    for p in [
        "plots/training_ddp_0.5_steps_2.png",
        "plots/training_ddp_0.5_steps_3.png",
    ] {
        assert!(
            out.join(p).is_file() && md.contains(&format!("]({p})")),
            "{p}:\n{md}"
        );
    }
}
