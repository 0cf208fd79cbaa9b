//! Figures through plotters: line charts (one series per method, log-scaled x)
//! rendered as SVG or PNG with an embedded font, and the [`Drawing`] trait
//! that lets any figure be rendered both ways.

use plotters::coord::Shift;
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

/// Registers the embedded DejaVu Sans as every font family the figures name, so
/// that text renders (SVG layout and PNG glyphs) on a machine with no system fonts.
pub fn register_fonts() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        for family in ["sans-serif", "serif", "monospace"] {
            // The font is a valid TTF shipped by the `dejavu` crate; failure is impossible in practice.
            let _ =
                plotters::style::register_font(family, FontStyle::Normal, dejavu::sans::regular());
        }
    });
}

/// Something drawable on any plotters backend (so one figure gives both an SVG and a PNG).
pub trait Drawing {
    /// Draws onto `root` (already sized; not yet filled).
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> anyhow::Result<()>
    where
        DB::ErrorType: 'static;
}

/// The figure as an SVG document.
pub fn render_svg(drawing: &impl Drawing, size: (u32, u32)) -> anyhow::Result<String> {
    register_fonts();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        drawing.draw(&root)?;
        root.present()?;
    }
    Ok(svg)
}

/// The figure as a PNG image (RGB, 8 bits), rendered with the embedded font.
pub fn render_png(drawing: &impl Drawing, size: (u32, u32)) -> anyhow::Result<Vec<u8>> {
    register_fonts();
    let mut rgb = vec![0u8; size.0 as usize * size.1 as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, size).into_drawing_area();
        drawing.draw(&root)?;
        root.present()?;
    }
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, size.0, size.1);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.write_header()?.write_image_data(&rgb)?;
    Ok(out)
}

/// A line chart: one line per series; series from index `markers_from` on are
/// drawn as one marker per point instead (scatter plots: 0; none: `usize::MAX`).
pub struct LineChart<'a> {
    /// Title, axis labels and ranges.
    pub spec: &'a FigureSpec<'a>,
    /// The series.
    pub series: &'a [Series],
    /// Index of the first series drawn as markers.
    pub markers_from: usize,
}

impl Drawing for LineChart<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> anyhow::Result<()>
    where
        DB::ErrorType: 'static,
    {
        let (spec, series) = (self.spec, self.series);
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
        } else if hi > lo {
            (lo, hi)
        } else {
            (lo - 0.5, hi + 0.5)
        };
        let mut builder = ChartBuilder::on(root);
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
                    let drawn = if s.points.len() == 1 || i >= self.markers_from {
                        chart.draw_series(
                            s.points.iter().map(|&p| Circle::new(p, 5, color.filled())),
                        )?
                    } else {
                        // Small dots on the vertices: each is a measured run.
                        chart.draw_series(
                            s.points.iter().map(|&p| Circle::new(p, 3, color.filled())),
                        )?;
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
        Ok(())
    }
}

/// Writes an SVG line chart of `series` to `path` (written to a temporary and renamed).
pub fn line_chart_svg(path: &Path, spec: &FigureSpec<'_>, series: &[Series]) -> anyhow::Result<()> {
    let chart = LineChart {
        spec,
        series,
        markers_from: usize::MAX,
    };
    let svg = render_svg(&chart, (960, 640))?;
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
        // The same figure as a PNG: a valid signature, the requested size, and
        // text actually drawn (the embedded font, not blank space).
        let chart = LineChart {
            spec: &spec,
            series: &series,
            markers_from: 0,
        };
        let png = render_png(&chart, (320, 200)).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let decoder = png::Decoder::new(std::io::Cursor::new(&png));
        let mut reader = decoder.read_info().unwrap();
        assert_eq!((reader.info().width, reader.info().height), (320, 200));
        let mut rgb = vec![0; reader.output_buffer_size()];
        reader.next_frame(&mut rgb).unwrap();
        let dark = rgb.chunks(3).filter(|p| p.iter().all(|&c| c < 80)).count();
        assert!(dark > 200, "only {dark} dark pixels: no text or axes drawn");
    }
}
