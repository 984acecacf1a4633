//! The cost side as an SVG chart: one panel per metric, a bar per runtime (the median),
//! log-scale value axis. plotters' SVG backend writes text as `<text>` elements, so no font
//! files are needed.

use std::path::Path;

use plotters::prelude::*;

use super::cost::{fmt_num, MetricRow};

#[derive(Debug, thiserror::Error)]
pub enum SvgError {
    #[error("drawing the chart: {0}")]
    Draw(String),
}

fn draw_err<E: std::fmt::Debug>(e: E) -> SvgError {
    SvgError::Draw(format!("{e:?}"))
}

const COLORS: [RGBColor; 6] = [
    RGBColor(0x4c, 0x72, 0xb0),
    RGBColor(0xdd, 0x84, 0x52),
    RGBColor(0x55, 0xa8, 0x68),
    RGBColor(0xc4, 0x4e, 0x52),
    RGBColor(0x81, 0x72, 0xb3),
    RGBColor(0x93, 0x78, 0x60),
];

/// Value-axis range for medians `vals`: a decade of room around them on the log scale.
pub fn log_range(vals: &[f64]) -> (f64, f64) {
    let lo = vals
        .iter()
        .copied()
        .filter(|v| *v > 0.0)
        .fold(f64::INFINITY, f64::min);
    let hi = vals.iter().copied().fold(0.0, f64::max);
    if !lo.is_finite() || hi <= 0.0 {
        return (0.1, 10.0);
    }
    let lo = 10f64.powf(lo.log10().floor());
    // At least two decades, so close values do not fill the panel with minor ticks.
    (lo, 10f64.powf(hi.log10().floor() + 1.0).max(lo * 100.0))
}

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    row: &MetricRow,
    runtimes: &[String],
) -> Result<(), SvgError> {
    let vals: Vec<(usize, f64)> = runtimes
        .iter()
        .enumerate()
        .filter_map(|(i, rt)| row.stats.get(rt).map(|s| (i, s.median)))
        .collect();
    let (lo, hi) = log_range(&vals.iter().map(|(_, v)| *v).collect::<Vec<_>>());
    let mut chart = ChartBuilder::on(area)
        .caption(row.metric.label(), ("sans-serif", 15))
        .margin(12)
        .x_label_area_size(28)
        .y_label_area_size(56)
        // `(0..k).into_segmented()` has k + 1 segments: one per runtime is 0..n-1.
        .build_cartesian_2d(
            (0..runtimes.len().saturating_sub(1).max(1)).into_segmented(),
            (lo..hi).log_scale(),
        )
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => runtimes.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .y_label_formatter(&|v| format!("{v:.0e}"))
        .draw()
        .map_err(draw_err)?;
    chart
        .draw_series(vals.iter().map(|(i, v)| {
            let color = COLORS[i % COLORS.len()];
            let mut bar = Rectangle::new(
                [
                    (SegmentValue::Exact(*i), lo),
                    (SegmentValue::Exact(i + 1), *v),
                ],
                color.filled(),
            );
            bar.set_margin(0, 0, 8, 8);
            bar
        }))
        .map_err(draw_err)?;
    chart
        .draw_series(vals.iter().map(|(i, v)| {
            let ratio = row
                .ratio_to_runc
                .get(&runtimes[*i])
                .map(|r| format!(" ({}x)", fmt_num(*r)))
                .unwrap_or_default();
            Text::new(
                format!("{}{ratio}", fmt_num(*v)),
                (SegmentValue::CenterOf(*i), *v),
                ("sans-serif", 12),
            )
        }))
        .map_err(draw_err)?;
    Ok(())
}

/// Writes the chart of `rows` (runtimes in `runtimes` order) to `path`.
pub fn write(
    path: &Path,
    rows: &[MetricRow],
    runtimes: &[String],
    title: &str,
) -> Result<(), SvgError> {
    let root = SVGBackend::new(path, (1500, 900)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;
    let root = root.titled(title, ("sans-serif", 20)).map_err(draw_err)?;
    let cols = 3;
    let nrows = rows.len().div_ceil(cols).max(1);
    let areas = root.split_evenly((nrows, cols));
    for (row, area) in rows.iter().zip(areas.iter()) {
        panel(area, row, runtimes)?;
    }
    root.present().map_err(draw_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::cost::{Metric, Stats};
    use super::*;

    #[test]
    fn log_range_spans_decades() {
        assert_eq!(log_range(&[150.0, 42000.0]), (100.0, 100000.0));
        assert_eq!(log_range(&[1.13, 1.14]), (1.0, 100.0));
        assert_eq!(log_range(&[]), (0.1, 10.0));
        assert_eq!(log_range(&[0.0]), (0.1, 10.0));
    }

    #[test]
    fn writes_text_without_fonts() {
        let st = |m| Stats {
            median: m,
            p95: m,
            n: 1,
        };
        let rows = vec![MetricRow {
            metric: Metric::Getppid,
            stats: BTreeMap::from([
                ("runc".to_string(), st(150.0)),
                ("sandbox-vm".to_string(), st(90000.0)),
            ]),
            ratio_to_runc: BTreeMap::from([
                ("runc".to_string(), 1.0),
                ("sandbox-vm".to_string(), 600.0),
            ]),
        }];
        let p = std::env::temp_dir().join(format!("svm-bench-svg-{}.svg", std::process::id()));
        write(&p, &rows, &["runc".into(), "sandbox-vm".into()], "test").unwrap();
        let s = std::fs::read_to_string(&p).unwrap();
        std::fs::remove_file(&p).unwrap();
        assert!(s.starts_with("<svg"));
        assert!(s.contains("getppid syscall (ns)"));
        assert!(s.contains("\nsandbox-vm\n"), "{s}");
        assert!(s.contains("90000 (600x)"), "{s}");
    }
}
