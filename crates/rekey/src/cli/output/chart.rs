//! The SVG chart `fleet-bench --chart` writes: projected outage against
//! fleet size, one line per path and the server's floor (one `UPDATE` of
//! every row) as the reference, drawn with plotters.

use std::path::Path;

use plotters::prelude::*;

use crate::bench::{BenchReport, PROJECTED_FLEETS};
use crate::cli::CliError;

/// Draws projected wall time (log-log) for the in-place engine and the naive loop.
pub fn write_chart(path: &Path, bench: &BenchReport) -> Result<(), CliError> {
    draw(path, bench).map_err(|e| {
        CliError::io(
            format!("drawing chart {}", path.display()),
            std::io::Error::other(e.to_string()),
        )
    })
}

fn draw(path: &Path, bench: &BenchReport) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    type Series<'a> = (&'a str, Vec<(u64, f64)>, RGBColor);
    let mut series: Vec<Series> = vec![
        ("in place (rekey engine)", bench.projection.clone(), BLUE),
        ("in place, naive loop", bench.naive_projection.clone(), RED),
    ];
    let floor_label = format!(
        "server floor, UPDATE of every row (in place / floor = {:.2})",
        bench.in_place_over_floor
    );
    series.push((
        &floor_label,
        PROJECTED_FLEETS
            .iter()
            .map(|&n| (n, n as f64 / bench.floor.rows_per_sec.max(1e-9)))
            .collect(),
        BLACK,
    ));
    if let Some(p) = &bench.reprovision {
        series.push(("re-provision (fake cloud)", p.projection.clone(), GREEN));
    }
    let max_secs = series
        .iter()
        .flat_map(|(_, pts, _)| pts.iter().map(|p| p.1))
        .fold(1.0, f64::max);
    let min_secs = series
        .iter()
        .flat_map(|(_, pts, _)| pts.iter().map(|p| p.1))
        .fold(f64::MAX, f64::min)
        .max(1e-3);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Projected outage (wall time) by fleet size",
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (500u64..2_000_000u64).log_scale(),
            (min_secs / 2.0..max_secs * 2.0).log_scale(),
        )?;
    chart
        .configure_mesh()
        .x_desc("tenants")
        .y_desc("seconds")
        .x_label_formatter(&|x| format!("{x}"))
        .y_label_formatter(&|y| {
            if *y < 1.0 {
                format!("{y:.2}")
            } else {
                format!("{y:.0}")
            }
        })
        .draw()?;
    for (name, points, color) in series {
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart.draw_series(
            points
                .iter()
                .map(|&(x, y)| Circle::new((x, y), 4, color.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    root.present()?;
    Ok(())
}
