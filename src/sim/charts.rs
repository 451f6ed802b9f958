//! The report's PNG charts (plotters, labelled with the bundled DejaVu Sans): latency CDFs
//! per strategy, and acks per second through a region's loss.

use plotters::prelude::*;
use std::path::Path;

use super::Figures;

const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
const COLOURS: [RGBColor; 3] =
    [RGBColor(0x1f, 0x77, 0xb4), RGBColor(0xd6, 0x27, 0x28), RGBColor(0x2c, 0xa0, 0x2c)];

pub(crate) type Error = Box<dyn std::error::Error + Send + Sync>;

fn register_font() -> Result<(), Error> {
    plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
        .map_err(|_| "assets/fonts/DejaVuSans.ttf does not parse as a font".into())
}

/// A CDF (101 percentiles each, milliseconds) per named run, on a log time axis.
pub fn cdf(path: &Path, title: &str, lines: &[(String, Vec<u32>)]) -> Result<(), Error> {
    register_font()?;
    let root = BitMapBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let most = lines.iter().filter_map(|(_, p)| p.last()).max().copied().unwrap_or(1).max(10);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((1f64..f64::from(most) * 1.2).log_scale(), 0f64..100f64)?;
    chart.configure_mesh().x_desc("milliseconds (log)").y_desc("% of ops").draw()?;
    for (i, (name, percentiles)) in lines.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let points = percentiles.iter().enumerate().map(|(q, &ms)| (f64::from(ms.max(1)), q as f64));
        chart
            .draw_series(LineSeries::new(points, colour.stroke_width(2)))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}

/// Writes acked per second (all regions) through the run of each strategy, with the fault's
/// start and end marked.
pub fn timeline(path: &Path, title: &str, runs: &[&Figures]) -> Result<(), Error> {
    let total = |f: &Figures| -> Vec<f64> {
        let seconds = f.timeline.iter().map(Vec::len).max().unwrap_or(0);
        (0..seconds)
            .map(|s| f64::from(f.timeline.iter().map(|r| r.get(s).copied().unwrap_or(0)).sum::<u32>()))
            .collect()
    };
    let series: Vec<(String, Vec<f64>)> =
        runs.iter().map(|f| (f.strategy.label().to_string(), total(f))).collect();
    let marks: Vec<f64> = runs
        .first()
        .and_then(|f| f.faults.first())
        .map(|fault| {
            let (from, to) = fault.window();
            vec![from as f64 / 1000.0, to as f64 / 1000.0]
        })
        .unwrap_or_default();
    lines(path, title, ("seconds of virtual time", "writes acked per second"), &marks, &series)
}

/// A line per named series of one value per second, with vertical marks at `marks` (seconds).
pub fn lines(
    path: &Path,
    title: &str,
    (x_desc, y_desc): (&str, &str),
    marks: &[f64],
    series: &[(String, Vec<f64>)],
) -> Result<(), Error> {
    register_font()?;
    let root = BitMapBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let seconds = series.iter().map(|(_, v)| v.len()).max().unwrap_or(1).max(1);
    let most = series.iter().flat_map(|(_, v)| v.iter().copied()).fold(1f64, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..seconds as f64, 0f64..most)?;
    chart.configure_mesh().x_desc(x_desc).y_desc(y_desc).draw()?;
    for &x in marks {
        chart.draw_series(LineSeries::new([(x, 0.0), (x, most)], BLACK.mix(0.4)))?;
    }
    for (i, (name, values)) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let line = values.iter().enumerate().map(|(s, &v)| (s as f64, v));
        chart
            .draw_series(LineSeries::new(line, colour.stroke_width(2)))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}
