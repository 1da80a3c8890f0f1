//! `--plot FILE.svg`: latency distributions, one panel per scenario, each
//! run a curve of latency (µs, log) against percentile (log scale of
//! 1/(1-q): 90%, 99%, 99.9%... evenly spaced).

use std::path::Path;

use anyhow::anyhow;
use plotters::prelude::*;

use crate::report::Row;
use crate::scenarios::Scenario;

/// Quantiles to draw: 1 - 10^(-k/10), k = 0..=50 (up to 99.999%).
fn quantiles() -> impl Iterator<Item = (f64, f64)> {
    (0..=50).map(|k| {
        let x = 10f64.powf(k as f64 / 10.0);
        (x, 1.0 - 1.0 / x)
    })
}

/// Writes the chart of every row with latencies to `path`.
pub fn svg(rows: &[Row], path: &Path) -> anyhow::Result<()> {
    let scenarios: Vec<Scenario> = Scenario::ALL
        .into_iter()
        .filter(|s| rows.iter().any(|r| r.scenario == *s && r.latency.is_some()))
        .collect();
    if scenarios.is_empty() {
        anyhow::bail!("no run has latencies to draw");
    }
    let panel_rows = scenarios.len().div_ceil(2);
    let height = 420 * panel_rows as u32;
    let root = SVGBackend::new(path, (1400, height)).into_drawing_area();
    let err = |e: &dyn std::fmt::Debug| anyhow!("drawing {}: {e:?}", path.display());
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let panels = root.split_evenly((panel_rows, 2));
    for (panel, scenario) in panels.iter().zip(&scenarios) {
        let runs: Vec<&Row> = rows
            .iter()
            .filter(|r| r.scenario == *scenario && r.latency.is_some())
            .collect();
        let max = runs.iter().filter_map(|r| r.max_us).max().unwrap_or(1000) as f64;
        let min = runs
            .iter()
            .filter_map(|r| r.latency.as_ref().map(|h| h.min()))
            .min()
            .unwrap_or(1)
            .max(1) as f64;
        let mut chart = ChartBuilder::on(panel)
            .caption(
                format!("{}: latency by percentile", scenario.name()),
                ("sans-serif", 18),
            )
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(60)
            .build_cartesian_2d(
                (1f64..100_000f64).log_scale(),
                (min * 0.8..max * 1.25).log_scale(),
            )
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc("percentile")
            .y_desc("µs")
            .x_label_formatter(&|x| format!("{:.3}%", 100.0 * (1.0 - 1.0 / x)))
            .y_label_formatter(&|y| format!("{y:.0}"))
            .draw()
            .map_err(|e| err(&e))?;
        for (i, run) in runs.iter().enumerate() {
            let h = run.latency.as_ref().expect("filtered");
            let color = Palette99::pick(i).to_rgba();
            let points = quantiles().map(|(x, q)| (x, h.value_at_quantile(q).max(1) as f64));
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(|e| err(&e))?
                .label(format!(
                    "{} B {} {}",
                    run.size,
                    run.queue_type.as_str(),
                    run.target.name()
                ))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
