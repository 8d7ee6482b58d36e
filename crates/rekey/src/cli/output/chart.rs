//! The SVG chart `fleet-bench --chart` writes: projected outage against
//! fleet size, one line per path and the server's floor (one `UPDATE` of
//! every row) as the reference, drawn with plotters.
//!
//! Read at a glance by someone planning an outage: the y axis is labelled
//! in durations with guide lines at 1 min, 10 min, 1 h and 1 day; colours
//! are from the Okabe-Ito palette (told apart with the common colour-vision
//! deficiencies) and every line also differs by marker or dash; a footer
//! says when, on what and with which settings the figures were measured.

use std::path::Path;

use plotters::coord::combinators::WithKeyPoints;
use plotters::prelude::*;

use crate::bench::{BenchReport, PROJECTED_FLEETS};
use crate::cli::CliError;

const WIDTH: u32 = 900;
const PLOT_HEIGHT: u32 = 520;
const FOOTER_HEIGHT: u32 = 64;

/// Okabe-Ito colours.
const BLUE: RGBColor = RGBColor(0, 114, 178);
const VERMILLION: RGBColor = RGBColor(213, 94, 0);
const REDDISH_PURPLE: RGBColor = RGBColor(204, 121, 167);
const ORANGE: RGBColor = RGBColor(230, 159, 0);
const INK: RGBColor = RGBColor(0, 0, 0);
const GUIDE: RGBColor = RGBColor(150, 150, 150);

/// Where the y axis has a labelled guide line, in seconds.
const GUIDES: [(f64, &str); 9] = [
    (0.01, "10 ms"),
    (0.1, "100 ms"),
    (1.0, "1 s"),
    (10.0, "10 s"),
    (60.0, "1 min"),
    (600.0, "10 min"),
    (3600.0, "1 h"),
    (86_400.0, "1 day"),
    (864_000.0, "10 days"),
];

#[derive(Clone, Copy)]
enum Marker {
    Circle,
    Triangle,
    Square,
    Cross,
    None,
}

struct Line {
    label: String,
    points: Vec<(u64, f64)>,
    color: RGBColor,
    marker: Marker,
    dashed: bool,
}

/// Draws projected wall time (log-log) for every path fleet-bench measured.
pub fn write_chart(path: &Path, bench: &BenchReport) -> Result<(), CliError> {
    draw(path, bench).map_err(|e| {
        CliError::io(
            format!("drawing chart {}", path.display()),
            std::io::Error::other(e.to_string()),
        )
    })
}

fn lines(bench: &BenchReport) -> Vec<Line> {
    let best_workers = bench
        .in_place
        .iter()
        .max_by(|a, b| a.rows_per_sec.total_cmp(&b.rows_per_sec))
        .map_or(1, |f| f.workers);
    let mut lines = vec![
        Line {
            label: format!("in place, rekey ({best_workers} workers)"),
            points: bench.projection.clone(),
            color: BLUE,
            marker: Marker::Circle,
            dashed: false,
        },
        Line {
            label: "in place, naive loop (one transaction per row)".into(),
            points: bench.naive_projection.clone(),
            color: VERMILLION,
            marker: Marker::Triangle,
            dashed: false,
        },
        Line {
            label: format!(
                "server floor: one UPDATE of every row (in place / floor = {:.2})",
                bench.in_place_over_floor
            ),
            points: PROJECTED_FLEETS
                .iter()
                .map(|&n| (n, n as f64 / bench.floor.rows_per_sec.max(1e-9)))
                .collect(),
            color: INK,
            marker: Marker::None,
            dashed: true,
        },
    ];
    if let Some(p) = &bench.reprovision {
        let a = &p.at_api_limits;
        lines.push(Line {
            label: format!(
                "re-provision at the APIs' pacing (Neon {} req/s, Fly {} req/s)",
                a.neon_rps, a.fly_rps
            ),
            points: a.projection.clone(),
            color: REDDISH_PURPLE,
            marker: Marker::Square,
            dashed: false,
        });
        lines.push(Line {
            label: format!(
                "re-provision, fake cloud without rate limits ({} ms per call)",
                p.latency_ms
            ),
            points: p.projection.clone(),
            color: ORANGE,
            marker: Marker::Cross,
            dashed: true,
        });
    }
    lines
}

/// The two lines under the plot: when and on what it was measured, and
/// with which settings.
fn footer(bench: &BenchReport) -> [String; 2] {
    let m = &bench.measured_on;
    let workers: Vec<String> = bench
        .in_place
        .iter()
        .map(|f| f.workers.to_string())
        .collect();
    let first = format!(
        "Measured {} on {} CPUs, PostgreSQL {}, rekey {}. In place: {} rows, batch {}, workers {}.",
        m.date,
        m.cpus,
        m.server_version,
        m.rekey_version,
        bench.rows,
        bench.batch_size,
        workers.join(", ")
    );
    let second = match &bench.reprovision {
        Some(p) => format!(
            "Re-provision: {} tenants, {} at once, {} ms per call, {:.1} calls per tenant (Neon {:.1}, Fly {:.1}); \
             at the APIs' pacing {}.",
            p.done,
            p.concurrency,
            p.latency_ms,
            p.calls_per_tenant,
            p.neon_calls_per_tenant,
            p.fly_calls_per_tenant,
            p.at_api_limits.rate_text()
        ),
        None => "Re-provision not measured (--provision-tenants 0).".into(),
    };
    [first, second]
}

fn fleet_label(n: u64) -> String {
    match n {
        n if n >= 1_000_000 => format!("{}M", n / 1_000_000),
        n if n >= 1_000 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}

fn guide_label(secs: f64) -> String {
    GUIDES
        .iter()
        .find(|(at, _)| (at / secs - 1.0).abs() < 1e-6)
        .map_or_else(|| format!("{secs} s"), |(_, label)| (*label).to_string())
}

fn draw(path: &Path, bench: &BenchReport) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (WIDTH, PLOT_HEIGHT + FOOTER_HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let (plot, foot) = root.split_vertically(PLOT_HEIGHT);
    let lines = lines(bench);
    let all = || lines.iter().flat_map(|l| l.points.iter().map(|p| p.1));
    // Headroom above the highest point for the legend (upper left), so
    // that no line runs under it.
    let max_secs = all().fold(1.0, f64::max) * 300.0;
    let min_secs = (all().fold(f64::MAX, f64::min).max(1e-3)) / 2.0;
    let guides: Vec<f64> = GUIDES
        .iter()
        .map(|g| g.0)
        .filter(|at| (min_secs..=max_secs).contains(at))
        .collect();
    let mut chart = ChartBuilder::on(&plot)
        .caption(
            "Projected outage (wall time) by fleet size",
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (500u64..2_000_000u64)
                .log_scale()
                .with_key_points(PROJECTED_FLEETS.to_vec()),
            (min_secs..max_secs).log_scale().with_key_points(guides),
        )?;
    chart
        .configure_mesh()
        .x_desc("tenants in the fleet")
        .y_desc("wall time")
        .x_label_formatter(&|n| fleet_label(*n))
        .y_label_formatter(&|s| guide_label(*s))
        .bold_line_style(GUIDE.mix(0.6).stroke_width(1))
        .label_style(("sans-serif", 14))
        .draw()?;
    for line in &lines {
        let style = line.color.stroke_width(2);
        let color = line.color;
        let dashed = line.dashed;
        let series = if dashed {
            chart.draw_series(DashedLineSeries::new(line.points.clone(), 8, 5, style))?
        } else {
            chart.draw_series(LineSeries::new(line.points.clone(), style))?
        };
        series.label(line.label.as_str()).legend(move |(x, y)| {
            let end = if dashed { x + 8 } else { x + 20 };
            PathElement::new(vec![(x, y), (end, y)], color.stroke_width(2))
        });
        draw_markers(&mut chart, line)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(INK)
        .background_style(WHITE.mix(0.9))
        .label_font(("sans-serif", 13))
        .draw()?;
    for (i, text) in footer(bench).iter().enumerate() {
        foot.draw(&Text::new(
            text.as_str(),
            (15, 8 + 22 * i as i32),
            ("sans-serif", 12).into_font().color(&INK),
        ))?;
    }
    root.present()?;
    Ok(())
}

type Chart<'a, 'b> = ChartContext<
    'a,
    SVGBackend<'b>,
    Cartesian2d<WithKeyPoints<LogCoord<u64>>, WithKeyPoints<LogCoord<f64>>>,
>;

fn draw_markers(chart: &mut Chart<'_, '_>, line: &Line) -> Result<(), Box<dyn std::error::Error>> {
    let fill = line.color.filled();
    let stroke = line.color.stroke_width(2);
    let points = line.points.iter().copied();
    match line.marker {
        Marker::Circle => {
            chart.draw_series(points.map(|p| Circle::new(p, 4, fill)))?;
        }
        Marker::Triangle => {
            chart.draw_series(points.map(|p| TriangleMarker::new(p, 5, fill)))?;
        }
        Marker::Square => {
            chart.draw_series(
                points.map(|p| EmptyElement::at(p) + Rectangle::new([(-4, -4), (4, 4)], fill)),
            )?;
        }
        Marker::Cross => {
            chart.draw_series(points.map(|p| Cross::new(p, 4, stroke)))?;
        }
        Marker::None => {}
    }
    Ok(())
}
