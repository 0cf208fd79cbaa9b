//! Line figures (SVG through plotters): one series per method, log-scaled x.

use plotters::prelude::*;
use std::path::Path;

/// One named line of a figure (a marker when it has a single point).
pub struct Series {
    /// Legend label.
    pub label: String,
    /// `(x, y)` points in increasing x.
    pub points: Vec<(f64, f64)>,
}

/// Axis labels and title of a figure.
pub struct FigureSpec<'a> {
    /// Title above the plot.
    pub title: &'a str,
    /// x-axis label.
    pub x_label: &'a str,
    /// y-axis label.
    pub y_label: &'a str,
    /// Whether the x-axis is logarithmic.
    pub log_x: bool,
    /// y-axis range.
    pub y_range: (f64, f64),
}

/// Tick label: plain numbers for ratios and counts, scientific for FLOP-sized values.
fn axis_label(v: &f64) -> String {
    if (1e-2..1e4).contains(&v.abs()) {
        format!("{}", (v * 100.0).round() / 100.0)
    } else {
        format!("{v:.0e}")
    }
}

/// Writes an SVG line chart of `series` to `path` (written to a temporary and renamed).
pub fn line_chart_svg(path: &Path, spec: &FigureSpec<'_>, series: &[Series]) -> anyhow::Result<()> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (960, 640)).into_drawing_area();
        root.fill(&WHITE)?;
        let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
        let (lo, hi) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
            (a.min(x), b.max(x))
        });
        anyhow::ensure!(
            lo.is_finite() && hi.is_finite(),
            "figure {}: no points",
            spec.title
        );
        let (lo, hi) = if spec.log_x {
            (lo / 1.5, hi * 1.5)
        } else {
            (lo, hi)
        };
        let mut builder = ChartBuilder::on(&root);
        builder
            .caption(spec.title, ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(60);
        let (y0, y1) = spec.y_range;
        macro_rules! draw {
            ($chart:expr) => {{
                let mut chart = $chart;
                chart
                    .configure_mesh()
                    .x_desc(spec.x_label)
                    .y_desc(spec.y_label)
                    .x_label_formatter(&axis_label)
                    .draw()?;
                for (i, s) in series.iter().enumerate() {
                    let color = Palette99::pick(i).to_rgba();
                    // A method with one point (a single-pass encoder) is drawn as a marker.
                    let drawn = if s.points.len() == 1 {
                        chart.draw_series(
                            s.points.iter().map(|&p| Circle::new(p, 6, color.filled())),
                        )?
                    } else {
                        chart.draw_series(LineSeries::new(
                            s.points.iter().copied(),
                            color.stroke_width(2),
                        ))?
                    };
                    drawn.label(s.label.clone()).legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                    });
                }
                chart
                    .configure_series_labels()
                    .position(SeriesLabelPosition::LowerRight)
                    .background_style(WHITE.mix(0.85))
                    .border_style(BLACK)
                    .draw()?;
            }};
        }
        if spec.log_x {
            draw!(builder.build_cartesian_2d((lo..hi).log_scale(), y0..y1)?);
        } else {
            draw!(builder.build_cartesian_2d(lo..hi, y0..y1)?);
        }
        root.present()?;
    }
    sparse_core::io::write_atomic(path, svg.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_an_svg_with_every_label() {
        let dir = std::env::temp_dir().join(format!("si-fig-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f.svg");
        let series = vec![
            Series {
                label: "alpha".into(),
                points: vec![(1e3, 0.1), (1e6, 0.8)],
            },
            Series {
                label: "beta".into(),
                points: vec![(1e4, 0.5), (1e8, 0.9)],
            },
        ];
        let spec = FigureSpec {
            title: "t",
            x_label: "FLOPs",
            y_label: "MCC",
            log_x: true,
            y_range: (0.0, 1.0),
        };
        line_chart_svg(&path, &spec, &series).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("<svg")
                && text.contains("alpha")
                && text.contains("beta")
                && text.contains("FLOPs")
        );
        assert!(text.matches("<polyline").count() >= 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
