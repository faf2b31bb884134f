//! The report's figures as PNG (plotters, bitmap backend, bundled DejaVu font so no system
//! fonts are needed): quality vs sparsity with the Pareto front, speed-up vs sparsity against
//! the ideal, quality vs training tokens, training curves, and per-layer maps of the kept heads
//! and channels.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Once;

use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::{Error, Result};

const W: u32 = 900;
const H: u32 = 560;

fn font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The bundled font is valid; a failure would only leave text unrendered.
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        );
        let _ = plotters::style::register_font("sans-serif", FontStyle::Bold, dejavu::sans::bold());
    });
}

fn err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::bad_file(path, format!("drawing the plot: {e}"))
}

/// The i-th series colour: 16 distinct ones, so a study's trained and one-shot rows (up to 16
/// lines in one plot) do not share a colour.
fn colour(i: usize) -> RGBColor {
    const P: [RGBColor; 16] = [
        RGBColor(31, 119, 180),
        RGBColor(214, 39, 40),
        RGBColor(44, 160, 44),
        RGBColor(255, 127, 14),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(23, 190, 207),
        RGBColor(188, 189, 34),
        RGBColor(0, 0, 128),
        RGBColor(128, 0, 0),
        RGBColor(0, 128, 128),
        RGBColor(255, 187, 120),
        RGBColor(152, 223, 138),
        RGBColor(197, 176, 213),
        RGBColor(50, 50, 50),
    ];
    P[i % P.len()]
}

fn range(vals: impl Iterator<Item = f64>, pad: f64, floor: Option<f64>) -> (f64, f64) {
    let v: Vec<f64> = vals.filter(|x| x.is_finite()).collect();
    let (mut lo, mut hi) = v
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if (hi - lo).abs() < 1e-12 {
        lo -= 0.5;
        hi += 0.5;
    }
    let p = (hi - lo) * pad;
    let lo = floor.map_or(lo - p, |f| (lo - p).max(f));
    (lo, hi + p)
}

type Xy<'a, 'b> = ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// A chart on `area` with a caption (skipped when empty) and labelled axes.
#[allow(clippy::too_many_arguments)]
fn axes<'a, 'b>(
    area: &'a DrawingArea<BitMapBackend<'b>, Shift>,
    path: &Path,
    caption: &str,
    x: (f64, f64),
    y: (f64, f64),
    xdesc: &str,
    ydesc: &str,
    label_size: u32,
    (log_x, log_y): (bool, bool),
) -> Result<Xy<'a, 'b>> {
    let mut b = ChartBuilder::on(area);
    if !caption.is_empty() {
        b.caption(caption, ("sans-serif", label_size + 4));
    }
    let mut c = b
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(x.0..x.1, y.0..y.1)
        .map_err(|e| err(path, e))?;
    // A log axis is drawn as log10 values labelled with the values themselves.
    let unlog = |v: &f64| {
        let x = 10f64.powf(*v);
        if x >= 100.0 {
            format!("{x:.0}")
        } else {
            format!("{x:.3}")
        }
    };
    // Token counts on a log axis: 16k, 1.2M.
    let unlog_count = |v: &f64| {
        let x = 10f64.powf(*v);
        if x >= 1e6 {
            format!("{:.2}M", x / 1e6)
        } else if x >= 1e3 {
            format!("{:.1}k", x / 1e3)
        } else {
            format!("{x:.0}")
        }
    };
    let mut mesh = c.configure_mesh();
    mesh.x_desc(xdesc)
        .y_desc(ydesc)
        .label_style(("sans-serif", label_size));
    if log_y {
        mesh.y_label_formatter(&unlog);
    }
    if log_x {
        mesh.x_label_formatter(&unlog_count);
    }
    mesh.draw().map_err(|e| err(path, e))?;
    Ok(c)
}

/// How a named line is drawn.
#[derive(Clone, Copy, PartialEq)]
enum Stroke {
    Solid,
    /// Solid, with its points as filled circles.
    Marked,
    Dashed,
}

/// A named line (listed in the legend).
fn line(
    c: &mut Xy,
    path: &Path,
    name: &str,
    pts: &[(f64, f64)],
    col: RGBColor,
    width: u32,
    stroke: Stroke,
) -> Result<()> {
    let style = col.stroke_width(width);
    let drawn = if stroke == Stroke::Dashed {
        c.draw_series(DashedLineSeries::new(pts.to_vec(), 6, 4, style))
    } else {
        c.draw_series(LineSeries::new(pts.to_vec(), style))
    };
    drawn
        .map_err(|e| err(path, e))?
        .label(name)
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], style));
    if stroke == Stroke::Marked {
        c.draw_series(pts.iter().map(|&p| Circle::new(p, 5, col.filled())))
            .map_err(|e| err(path, e))?;
    }
    Ok(())
}

fn legend<'a, 'b: 'a>(
    c: &mut Xy<'a, 'b>,
    path: &Path,
    pos: SeriesLabelPosition,
    size: u32,
) -> Result<()> {
    c.configure_series_labels()
        .position(pos)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .label_font(("sans-serif", size))
        .draw()
        .map_err(|e| err(path, e))
}

/// A series: name and (x, y) points, in x order.
pub type Series = (String, Vec<(f64, f64)>);

/// A speed-up panel: its title, the measured series, and the ideal line.
pub type Panel = (String, Vec<Series>, Vec<(f64, f64)>);

/// The points not dominated by another (lower or equal x and y, one strictly lower).
pub fn pareto(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    // x: kept fraction of parameters (lower is better), y: perplexity (lower is better).
    let mut front: Vec<(f64, f64)> = points
        .iter()
        .copied()
        .filter(|&(x, y)| {
            !points
                .iter()
                .any(|&(a, b)| a <= x && b <= y && (a < x || b < y))
        })
        .collect();
    front.sort_by(|a, b| a.0.total_cmp(&b.0));
    front.dedup();
    front
}

/// Perplexity against sparsity (achieved, % of the dense model's parameters), one line per
/// method, the Pareto front dashed.
pub fn quality_vs_sparsity(
    path: &Path,
    series: &[Series],
    dense: Option<f64>,
    ylabel: &str,
) -> Result<()> {
    font();
    let root = BitMapBackend::new(path, (W, H)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(path, e))?;
    let raw: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.1.iter().copied())
        .chain(dense.map(|d| (0.0, d)))
        .collect();
    // Values spanning more than a factor of 20 go on a log axis (a collapsed model's
    // perplexity would flatten every other line).
    let (lo, hi) = raw
        .iter()
        .fold((f64::INFINITY, 0f64), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let log_y = lo > 0.0 && hi / lo > 20.0;
    let t = |v: f64| if log_y { v.log10() } else { v };
    let series: Vec<Series> = series
        .iter()
        .map(|(n, pts)| (n.clone(), pts.iter().map(|&(x, y)| (x, t(y))).collect()))
        .collect();
    let dense_y = dense.map(t);
    let all: Vec<(f64, f64)> = raw.iter().map(|&(x, y)| (x, t(y))).collect();
    let ydesc = if log_y {
        format!("{ylabel} (log scale)")
    } else {
        ylabel.to_string()
    };
    let x = range(all.iter().map(|p| p.0), 0.08, Some(0.0));
    let y = range(
        all.iter().map(|p| p.1),
        0.1,
        if log_y { None } else { Some(0.0) },
    );
    let caption = format!("Quality vs sparsity ({ylabel}, lower is better)");
    let xdesc = "parameters removed (% of the dense model)";
    let mut c = axes(
        &root,
        path,
        &caption,
        x,
        y,
        xdesc,
        &ydesc,
        15,
        (false, log_y),
    )?;
    if let (Some(d), Some(dy)) = (dense, dense_y) {
        line(
            &mut c,
            path,
            &format!("dense ({d:.2})"),
            &[(x.0, dy), (x.1, dy)],
            RGBColor(120, 120, 120),
            1,
            Stroke::Solid,
        )?;
    }
    for (i, (name, pts)) in series.iter().enumerate() {
        line(&mut c, path, name, pts, colour(i), 2, Stroke::Marked)?;
    }
    // Kept fraction and quality are both better lower: the front over (100 - removed, y).
    let front = pareto(&all.iter().map(|&(x, y)| (100.0 - x, y)).collect::<Vec<_>>());
    let front: Vec<(f64, f64)> = front.iter().map(|&(k, y)| (100.0 - k, y)).collect();
    if front.len() > 1 {
        line(
            &mut c,
            path,
            "Pareto front",
            &front,
            BLACK,
            1,
            Stroke::Dashed,
        )?;
    }
    c.draw_series(
        front
            .iter()
            .map(|&p| Circle::new(p, 8, BLACK.stroke_width(1))),
    )
    .map_err(|e| err(path, e))?;
    legend(&mut c, path, SeriesLabelPosition::UpperLeft, 15)?;
    root.present().map_err(|e| err(path, e))
}

/// A line with error bars: its name and (x, y, ±standard error) points, in x order.
pub type ErrSeries = (String, Vec<(f64, f64, Option<f64>)>);

/// Perplexity against tokens trained (log x when they span 10x): one marked line per trained method and target,
/// with ±1 standard error bars; methods that do not train (`flat`: name, value) as dashed
/// horizontal lines, dense as a solid grey one. Log y when the values span more than 20x.
pub fn quality_vs_tokens(
    path: &Path,
    trained: &[ErrSeries],
    flat: &[(String, f64)],
    dense: Option<f64>,
    ylabel: &str,
) -> Result<()> {
    font();
    let root = BitMapBackend::new(path, (W, H)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(path, e))?;
    let pts = || trained.iter().flat_map(|s| s.1.iter());
    let ys: Vec<f64> = pts()
        .flat_map(|&(_, y, se)| [y - se.unwrap_or(0.0), y + se.unwrap_or(0.0)])
        .chain(flat.iter().map(|f| f.1))
        .chain(dense)
        .filter(|y| *y > 0.0)
        .collect();
    let (lo, hi) = ys
        .iter()
        .fold((f64::INFINITY, 0f64), |(a, b), &y| (a.min(y), b.max(y)));
    let log_y = lo > 0.0 && hi / lo > 20.0;
    let t = |v: f64| if log_y { v.log10() } else { v };
    // Budgets spanning 10x or more (a study's geometric ones), or a single one, on a log axis.
    let (xlo, xhi) = pts()
        .filter(|p| p.0 > 0.0)
        .fold((f64::INFINITY, 0f64), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let log_x = xhi / xlo >= 10.0 || xhi == xlo;
    let tx = |v: f64| if log_x { v.log10() } else { v };
    let x = range(pts().filter(|p| p.0 > 0.0).map(|p| tx(p.0)), 0.08, None);
    let y = range(
        ys.iter().map(|&v| t(v)),
        0.1,
        if log_y { None } else { Some(0.0) },
    );
    let ydesc = if log_y {
        format!("{ylabel} (log scale)")
    } else {
        ylabel.to_string()
    };
    let caption = format!("Quality vs training tokens ({ylabel}, lower is better)");
    let xdesc = if log_x {
        "tokens trained (log scale)"
    } else {
        "tokens trained"
    };
    let mut c = axes(
        &root,
        path,
        &caption,
        x,
        y,
        xdesc,
        &ydesc,
        15,
        (log_x, log_y),
    )?;
    if let Some(d) = dense {
        let name = format!("dense ({d:.2})");
        let grey = RGBColor(120, 120, 120);
        line(
            &mut c,
            path,
            &name,
            &[(x.0, t(d)), (x.1, t(d))],
            grey,
            1,
            Stroke::Solid,
        )?;
    }
    for (i, (name, pts)) in trained.iter().enumerate() {
        let col = colour(i);
        let xy: Vec<(f64, f64)> = pts.iter().map(|&(a, b, _)| (tx(a), t(b))).collect();
        line(&mut c, path, name, &xy, col, 2, Stroke::Marked)?;
        // ±1 SE: a vertical bar with caps (the lower end kept on the axis).
        let cap = (x.1 - x.0) * 0.006;
        let bars = pts.iter().filter_map(|&(a, b, se)| {
            let se = se?;
            let (xa, top) = (tx(a), t(b + se));
            let low = if b - se > 0.0 { t(b - se) } else { y.0 };
            let v = [
                (xa - cap, low),
                (xa + cap, low),
                (xa, low),
                (xa, top),
                (xa - cap, top),
                (xa + cap, top),
            ];
            Some(PathElement::new(v.to_vec(), col.stroke_width(1)))
        });
        c.draw_series(bars).map_err(|e| err(path, e))?;
    }
    for (i, (name, v)) in flat.iter().enumerate() {
        let col = colour(trained.len() + i);
        line(
            &mut c,
            path,
            name,
            &[(x.0, t(*v)), (x.1, t(*v))],
            col,
            2,
            Stroke::Dashed,
        )?;
    }
    legend(&mut c, path, SeriesLabelPosition::UpperRight, 14)?;
    root.present().map_err(|e| err(path, e))
}

/// Measured speed-up against sparsity: one panel per phase (e.g. decode, prefill), one line
/// per method, and the ideal from FLOPs per token dashed (it depends only on the shapes).
pub fn speedup_vs_sparsity(path: &Path, panels: &[Panel]) -> Result<()> {
    font();
    let root = BitMapBackend::new(path, (W, H)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(path, e))?;
    let root = root
        .titled(
            "Speed-up over dense vs sparsity: measured (solid), ideal from FLOPs (dashed)",
            ("sans-serif", 20),
        )
        .map_err(|e| err(path, e))?;
    let areas = root.split_evenly((1, panels.len().max(1)));
    let all: Vec<(f64, f64)> = panels
        .iter()
        .flat_map(|p| {
            p.1.iter()
                .flat_map(|s| s.1.iter().copied())
                .chain(p.2.iter().copied())
        })
        .chain([(0.0, 1.0)])
        .collect();
    let x = range(all.iter().map(|p| p.0), 0.08, Some(0.0));
    let y = range(all.iter().map(|p| p.1), 0.1, Some(0.0));
    for (area, (title, measured, ideal)) in areas.iter().zip(panels) {
        let mut c = axes(
            area,
            path,
            title,
            x,
            y,
            "parameters removed (%)",
            "speed-up over dense (x)",
            14,
            (false, false),
        )?;
        line(
            &mut c,
            path,
            "dense (1.0x)",
            &[(x.0, 1.0), (x.1, 1.0)],
            RGBColor(120, 120, 120),
            1,
            Stroke::Solid,
        )?;
        if !ideal.is_empty() {
            line(
                &mut c,
                path,
                "ideal (FLOPs)",
                ideal,
                BLACK,
                2,
                Stroke::Dashed,
            )?;
        }
        for (i, (name, pts)) in measured.iter().enumerate() {
            line(&mut c, path, name, pts, colour(i), 2, Stroke::Marked)?;
        }
        legend(&mut c, path, SeriesLabelPosition::UpperLeft, 14)?;
    }
    root.present().map_err(|e| err(path, e))
}

/// One training run: loss terms, expected sparsity per family against its target, and mu_t,
/// against the step, in three panels. `cols`: the CSV's columns by name.
pub fn training_curves(
    path: &Path,
    title: &str,
    cols: &BTreeMap<String, Vec<(f64, f64)>>,
    families: &BTreeMap<String, Vec<(f64, f64)>>,
    target: Option<f64>,
) -> Result<()> {
    font();
    let root = BitMapBackend::new(path, (W, H * 3 / 2)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(path, e))?;
    let root = root
        .titled(&format!("Training: {title}"), ("sans-serif", 22))
        .map_err(|e| err(path, e))?;
    let panels = root.split_evenly((3, 1));
    let x = range(
        cols.values().flat_map(|v| v.iter().map(|p| p.0)),
        0.02,
        Some(0.0),
    );
    let pick = |names: &[&str]| -> Vec<Series> {
        names
            .iter()
            .filter_map(|n| cols.get(*n).map(|v| (n.to_string(), v.clone())))
            .collect()
    };
    let fam: Vec<Series> = families
        .iter()
        .map(|(k, v)| (format!("expected sparsity: {k}"), v.clone()))
        .collect();
    let rows = [
        ("loss (nats)", pick(&["loss", "ce", "kl"]), None),
        ("expected sparsity", fam, target),
        ("mu_t / lr_z", pick(&["mu", "lr_z"]), None),
    ];
    for (area, (ylabel, series, hline)) in panels.iter().zip(rows) {
        let ys = series
            .iter()
            .flat_map(|s| s.1.iter().map(|p| p.1))
            .chain(hline);
        let y = range(ys, 0.1, None);
        let mut c = axes(area, path, "", x, y, "step", ylabel, 14, (false, false))?;
        for (i, (name, pts)) in series.iter().enumerate() {
            line(&mut c, path, name, pts, colour(i), 2, Stroke::Solid)?;
        }
        if let Some(t) = hline {
            line(
                &mut c,
                path,
                &format!("target {t}"),
                &[(x.0, t), (x.1, t)],
                BLACK,
                1,
                Stroke::Dashed,
            )?;
        }
        legend(&mut c, path, SeriesLabelPosition::UpperRight, 14)?;
    }
    root.present().map_err(|e| err(path, e))
}

/// Per-layer map of kept (dark) and removed (light) units: one panel for query heads, one for
/// channels (named `channel_label`); rows are layers.
pub fn kept_map(
    path: &Path,
    title: &str,
    heads: &[Vec<bool>],
    channels: &[Vec<bool>],
    channel_label: &str,
) -> Result<()> {
    font();
    let root = BitMapBackend::new(path, (W, H)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(path, e))?;
    let root = root
        .titled(
            &format!("Kept units per layer: {title} (dark = kept)"),
            ("sans-serif", 20),
        )
        .map_err(|e| err(path, e))?;
    let (left, right) = root.split_horizontally(W / 4);
    for (area, grid, what, col) in [
        (&left, heads, "query head", colour(0)),
        (&right, channels, channel_label, colour(2)),
    ] {
        let layers = grid.len();
        let width = grid.iter().map(Vec::len).max().unwrap_or(1).max(1);
        let kept: usize = grid.iter().flatten().filter(|&&k| k).count();
        let total: usize = grid.iter().map(Vec::len).sum();
        let mut c = ChartBuilder::on(area)
            .caption(format!("{what}s: {kept}/{total} kept"), ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(35)
            .y_label_area_size(45)
            .build_cartesian_2d(0..width, 0..layers)
            .map_err(|e| err(path, e))?;
        c.configure_mesh()
            .disable_mesh()
            .x_desc(what)
            .y_desc("layer")
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(|e| err(path, e))?;
        c.draw_series(grid.iter().enumerate().flat_map(|(l, row)| {
            row.iter().enumerate().map(move |(u, &k)| {
                let fill = if k {
                    col.filled()
                } else {
                    RGBColor(235, 235, 235).filled()
                };
                Rectangle::new([(u, l), (u + 1, l + 1)], fill)
            })
        }))
        .map_err(|e| err(path, e))?;
    }
    root.present().map_err(|e| err(path, e))
}

#[cfg(test)]
mod tests {
    #[test]
    fn pareto_front_keeps_the_undominated() {
        let pts = [
            (0.8, 10.0),
            (0.6, 12.0),
            (0.6, 15.0),
            (0.5, 30.0),
            (0.8, 11.0),
        ];
        assert_eq!(
            super::pareto(&pts),
            vec![(0.5, 30.0), (0.6, 12.0), (0.8, 10.0)]
        );
    }
}
