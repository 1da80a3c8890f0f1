//! `--plot FILE.svg` for `--growth`: RSS against the count of streams or
//! publishers (log x), or the copies of a body held at peak against its
//! size (log x), one curve per path and in-flight count.

use std::path::Path;

use anyhow::anyhow;
use plotters::prelude::*;

use super::sizes::Run;
use super::Step;

fn err(path: &Path) -> impl Fn(&dyn std::fmt::Debug) -> anyhow::Error + '_ {
    move |e| anyhow!("drawing {}: {e:?}", path.display())
}

/// Warren's RSS (MiB) at each step, against the count.
pub fn steps(what: &str, steps: &[Step], path: &Path) -> anyhow::Result<()> {
    let points: Vec<(f64, f64)> = steps
        .iter()
        .filter(|s| s.phase == "step")
        .filter_map(|s| Some((s.count as f64, s.rss_kib? as f64 / 1024.0)))
        .collect();
    anyhow::ensure!(!points.is_empty(), "no step has an RSS to draw");
    let max_x = points.iter().map(|p| p.0).fold(1.0, f64::max);
    let max_y = points.iter().map(|p| p.1).fold(1.0, f64::max);
    let err = err(path);
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("Warren RSS by open {what}"), ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((0.8f64..max_x * 1.5).log_scale(), 0f64..max_y * 1.15)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc(what)
        .y_desc("VmRSS MiB")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()
        .map_err(|e| err(&e))?;
    let color = Palette99::pick(0).to_rgba();
    chart
        .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
        .map_err(|e| err(&e))?;
    chart
        .draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// Copies of a body held at peak, against its size.
pub fn sizes(runs: &[Run], path: &Path) -> anyhow::Result<()> {
    let mut curves: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for r in runs {
        let Some(copies) = r.copies else { continue };
        let label = format!("{} x{}", r.path, r.in_flight);
        // Log scale: a run that grew nothing is drawn at the floor.
        let point = (r.size as f64, copies.max(0.01));
        match curves.iter_mut().find(|(l, _)| *l == label) {
            Some((_, points)) => points.push(point),
            None => curves.push((label, vec![point])),
        }
    }
    anyhow::ensure!(!curves.is_empty(), "no run has copies to draw");
    let all = curves.iter().flat_map(|(_, p)| p.iter());
    let (min_x, max_x, min_y, max_y) = all
        .fold((f64::MAX, 1.0f64, 0.5f64, 1.0f64), |(a, b, c, d), p| {
            (a.min(p.0), b.max(p.0), c.min(p.1), d.max(p.1))
        });
    let err = err(path);
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Copies of a body Warren holds at peak", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(
            (min_x * 0.7..max_x * 1.4).log_scale(),
            (min_y * 0.7..max_y * 1.5).log_scale(),
        )
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("body size")
        .y_desc("copies: (peak - before) / (size x in flight)")
        .y_label_formatter(&|y| format!("{y:.2}"))
        .x_label_formatter(&|x| match *x {
            x if x >= 1048576.0 => format!("{:.0} MiB", x / 1048576.0),
            x if x >= 1024.0 => format!("{:.0} KiB", x / 1024.0),
            x => format!("{x:.0} B"),
        })
        .draw()
        .map_err(|e| err(&e))?;
    for (i, (label, points)) in curves.into_iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(|e| err(&e))?;
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
