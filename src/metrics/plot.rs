//! PNG charts of a run's `metrics.jsonl`: the panels of the QwenLong-L1 report's Figure 2
//! (reward, entropy, KL, response length, clip fraction) and the warm-up SFT loss.
//!
//! | file                  | metrics                                                              |
//! |-----------------------|----------------------------------------------------------------------|
//! | `reward.png`          | `critic/score/mean`, `rollout/score/mean`, `critic/acc/mean`         |
//! | `entropy.png`         | `actor/entropy`                                                      |
//! | `kl.png`              | `actor/kl`, `actor/ppo_kl`                                           |
//! | `response_length.png` | `response_length/mean`, `response_length/min`, `response_length/max` |
//! | `clip_fraction.png`   | `actor/pg_clipfrac`, `actor/pg_clipfrac_low`, `actor/pg_clipfrac_high` |
//! | `sft_loss.png`        | `train/loss`, `eval/loss`                                            |
//!
//! A chart is written only when at least one of its metrics has a value. A record without a
//! metric, or with `null` or a number of magnitude [`MAX_VALUE`] or more there (sentinels such as
//! `f64::MAX`, logged as the minimum of an empty set), simply lacks that point.
//!
//! # The x axis: a global step
//! Every record has a `"step"`, and may have a `"phase"` (a string such as `"sft"`, `"stage1"`)
//! and a `"stage"` (an integer). Each phase restarts its steps (SFT logs its first evaluation at
//! step 0, training from 1), so the charts plot a *global step*: records are taken in file order
//! and each `(phase, stage, step)` key not seen before gets the next integer, starting at 1. A
//! record whose key was already seen (SFT's final evaluation, logged with its last training step)
//! shares that key's x; where two records give one metric at the same x, the later one counts.
//!
//! Where `(phase, stage)` changes from one record to the next a new segment starts: a dashed
//! vertical line marks the boundary, labelled above the plot with the phase name, or `stage N`
//! for a record with a stage but no phase (`phase stage N` when both are given and the phase name
//! does not already contain the stage number). The segment at the chart's left edge is labelled
//! there. Each chart spans the global steps where its own metrics have values, so `sft_loss.png`
//! covers the SFT phase and the RL charts the RL stages.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::io::JsonlReader;

/// DejaVu Sans (see `assets/fonts/LICENSE-DejaVu.txt`), registered with plotters as
/// `sans-serif` so charts need no system font libraries.
static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";
const SIZE: (u32, u32) = (1000, 600);
/// Height of the band above the plot that holds the phase labels.
const PHASE_BAND: u32 = 26;
/// Series with at most this many points are drawn with a marker at each point.
const MARKERS_UP_TO: usize = 80;
const PALETTE: [RGBColor; 5] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
];
/// Bar colours: grey for the first series (a reference such as the start), then matplotlib's.
const BARS: [RGBColor; 8] = [
    RGBColor(150, 150, 150),
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
];
/// Values of this magnitude or more are treated as absent.
pub const MAX_VALUE: f64 = 1e300;
const BOUNDARY: RGBColor = RGBColor(110, 110, 110);
const GRID: RGBColor = RGBColor(225, 225, 225);
const FINE_GRID: RGBColor = RGBColor(246, 246, 246);

/// One chart: its file name, title, y-axis description and `(metric key, legend label)` series.
struct ChartSpec {
    file: &'static str,
    title: &'static str,
    y_desc: &'static str,
    series: &'static [(&'static str, &'static str)],
}

const CHARTS: &[ChartSpec] = &[
    ChartSpec {
        file: "reward.png",
        title: "Reward",
        y_desc: "score / accuracy",
        series: &[
            ("critic/score/mean", "critic/score/mean (kept groups)"),
            ("rollout/score/mean", "rollout/score/mean (all rollouts)"),
            ("critic/acc/mean", "critic/acc/mean"),
        ],
    },
    ChartSpec {
        file: "entropy.png",
        title: "Policy entropy",
        y_desc: "entropy (nats per token)",
        series: &[("actor/entropy", "actor/entropy")],
    },
    ChartSpec {
        file: "kl.png",
        title: "KL divergence",
        y_desc: "KL per token",
        series: &[
            ("actor/kl", "actor/kl (to the reference)"),
            ("actor/ppo_kl", "actor/ppo_kl (to the rollout policy)"),
        ],
    },
    ChartSpec {
        file: "response_length.png",
        title: "Response length",
        y_desc: "tokens",
        series: &[
            ("response_length/mean", "response_length/mean"),
            ("response_length/min", "response_length/min"),
            ("response_length/max", "response_length/max"),
        ],
    },
    ChartSpec {
        file: "clip_fraction.png",
        title: "Clip fraction",
        y_desc: "fraction of tokens clipped",
        series: &[
            ("actor/pg_clipfrac", "actor/pg_clipfrac"),
            ("actor/pg_clipfrac_low", "actor/pg_clipfrac_low"),
            ("actor/pg_clipfrac_high", "actor/pg_clipfrac_high"),
        ],
    },
    ChartSpec {
        file: "sft_loss.png",
        title: "SFT loss",
        y_desc: "loss (nats per token)",
        series: &[("train/loss", "train/loss"), ("eval/loss", "eval/loss")],
    },
];

/// Reads `RUN_DIR/metrics.jsonl` and writes the charts of the run under `RUN_DIR/plots/`,
/// returning the written files in the order of the table above.
pub fn plot_run(run_dir: &Path) -> Result<Vec<PathBuf>> {
    let records = read_metrics(&run_dir.join("metrics.jsonl"))?;
    plot_metrics(&records, &run_dir.join("plots"))
}

/// Reads a metrics log: one JSON object with a `"step"` per line (blank lines are skipped). A
/// line that is not such an object is an error naming the file and line, except the last one:
/// a run killed while appending a record leaves it unfinished, so it is skipped with a warning
/// naming the file, line and what is wrong.
pub fn read_metrics(path: &Path) -> Result<Vec<Value>> {
    let reader = JsonlReader::new(path).on_bad_line(|e| {
        format!("not valid JSON ({e}); expected a metrics object with a \"step\"")
    });
    let lines = reader
        .lines()
        .and_then(|l| l.collect::<Result<Vec<_>>>())
        .map_err(|e| {
            if e.is_not_found() {
                Error::Invalid(format!(
                    "{}: metrics file not found (a run directory written by `longrl sft` or \
                     `longrl rl` holds one)",
                    path.display()
                ))
            } else {
                e
            }
        })?;
    let last = lines.iter().rposition(|l| !l.is_blank());
    let mut records = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.is_blank() {
            continue;
        }
        let record = reader.parse::<Value>(line).and_then(|value| {
            RecordKey::of(&value).map_err(|m| Error::input(path, line.number, m))?;
            Ok(value)
        });
        match record {
            Ok(value) => records.push(value),
            Err(e) if Some(i) == last => log::warn!(
                "{e}; skipped: the last line of the log{}",
                if line.complete {
                    ""
                } else {
                    ", cut short (no line end) by an interrupted write"
                }
            ),
            Err(e) => return Err(e),
        }
    }
    Ok(records)
}

/// Writes the charts of `records` (metrics objects in log order, each with a `"step"`) under
/// `out_dir`, created if missing; returns the written files. A chart whose metrics are absent
/// is not written, so the result may be empty.
pub fn plot_metrics(records: &[Value], out_dir: &Path) -> Result<Vec<PathBuf>> {
    let timeline = Timeline::new(records)?;
    let mut written = Vec::new();
    for spec in CHARTS {
        let series: Vec<Series> = spec
            .series
            .iter()
            .map(|&(key, label)| Series {
                label,
                points: timeline.points(records, key),
            })
            .filter(|s| !s.points.is_empty())
            .collect();
        if series.is_empty() {
            continue;
        }
        if written.is_empty() {
            register_font()?;
            std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
        }
        let path = out_dir.join(spec.file);
        draw_chart(&path, spec, &series, &timeline.segments)?;
        written.push(path);
    }
    Ok(written)
}

fn register_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED
        .get_or_init(|| plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(
            "the embedded chart font is not a valid TrueType font".into(),
        ))
    }
}

/// The `(phase, stage)` segment and step of a record.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RecordKey {
    phase: Option<String>,
    stage: Option<String>,
    step: u64,
}

impl RecordKey {
    fn of(value: &Value) -> std::result::Result<Self, String> {
        let obj = value
            .as_object()
            .ok_or("expected a JSON object with a \"step\"")?;
        let step = obj
            .get("step")
            .ok_or("missing \"step\"")?
            .as_u64()
            .ok_or("\"step\": expected a non-negative integer")?;
        let label = |field: &str| match obj.get(field) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => Some(other.to_string()),
        };
        Ok(Self {
            phase: label("phase"),
            stage: label("stage"),
            step,
        })
    }

    fn segment_label(&self) -> Option<String> {
        match (&self.phase, &self.stage) {
            (Some(p), Some(s)) if !p.contains(s.as_str()) => Some(format!("{p} stage {s}")),
            (Some(p), _) => Some(p.clone()),
            (None, Some(s)) => Some(format!("stage {s}")),
            (None, None) => None,
        }
    }
}

/// A run of consecutive records with one `(phase, stage)`, starting at global step `start`.
struct Segment {
    start: u64,
    label: Option<String>,
}

/// The global step of every record and the segments of the log.
struct Timeline {
    xs: Vec<u64>,
    segments: Vec<Segment>,
}

impl Timeline {
    fn new(records: &[Value]) -> Result<Self> {
        let mut ids: HashMap<RecordKey, u64> = HashMap::new();
        let mut xs = Vec::with_capacity(records.len());
        let mut segments = Vec::new();
        let mut previous: Option<(Option<String>, Option<String>)> = None;
        for (i, record) in records.iter().enumerate() {
            let key = RecordKey::of(record)
                .map_err(|m| Error::Invalid(format!("metrics record {}: {m}", i + 1)))?;
            let next = ids.len() as u64 + 1;
            let segment = (key.phase.clone(), key.stage.clone());
            let label = key.segment_label();
            let x = *ids.entry(key).or_insert(next);
            if previous.as_ref() != Some(&segment) {
                segments.push(Segment { start: x, label });
                previous = Some(segment);
            }
            xs.push(x);
        }
        Ok(Self { xs, segments })
    }

    /// The `(global step, value)` points of metric `key`, ordered by step.
    fn points(&self, records: &[Value], key: &str) -> Vec<(f64, f64)> {
        let mut by_x = BTreeMap::new();
        for (record, &x) in records.iter().zip(&self.xs) {
            if let Some(v) = record.get(key).and_then(Value::as_f64) {
                if v.abs() < MAX_VALUE {
                    by_x.insert(x, v);
                }
            }
        }
        by_x.into_iter().map(|(x, v)| (x as f64, v)).collect()
    }
}

struct Series {
    label: &'static str,
    points: Vec<(f64, f64)>,
}

fn draw_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("{}: cannot draw the chart: {e}", path.display()))
}

fn x_label(v: &f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// Formats y labels for ticks `step` apart on an axis reaching magnitude `scale`: scientific
/// notation from 1e7 up, else enough decimals for the tick spacing, without trailing zeros.
fn y_label(step: f64, scale: f64) -> impl Fn(&f64) -> String {
    let decimals = (-step.log10()).ceil().clamp(0.0, 12.0) as usize + 1;
    move |v| {
        if scale >= 1e7 {
            return format!("{v:.2e}");
        }
        let s = format!("{v:.decimals$}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        match s {
            "-0" => "0".to_string(),
            s => s.to_string(),
        }
    }
}

fn draw_chart(
    path: &Path,
    spec: &ChartSpec,
    series: &[Series],
    segments: &[Segment],
) -> Result<()> {
    let fail = |e: DrawingAreaErrorKind<_>| draw_error(path, e);
    let points = || series.iter().flat_map(|s| s.points.iter());
    let (x_min, x_max) = points().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
        (lo.min(p.0), hi.max(p.0))
    });
    let (y_min, y_max) = points().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
        (lo.min(p.1), hi.max(p.1))
    });
    let span = y_max - y_min;
    let scale = y_min.abs().max(y_max.abs());
    let pad = if span > scale * 1e-9 {
        span
    } else if scale > 0.0 {
        scale * 0.1
    } else {
        1.0
    };
    // Headroom above the data for the legend (one row per series).
    let y_lo = y_min - 0.05 * pad;
    let y_hi = y_max + (0.08 + 0.08 * series.len() as f64) * pad;
    let (x_lo, x_hi) = (x_min - 0.5, x_max + 0.5);

    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(fail)?;
    let titled = root
        .titled(spec.title, (FAMILY, 26).into_font().color(&BLACK))
        .map_err(fail)?;
    let (_, body) = titled.split_vertically(PHASE_BAND);
    let mut chart = ChartBuilder::on(&body)
        .margin(14)
        .margin_top(2)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(x_lo..x_hi, y_lo..y_hi)
        .map_err(fail)?;
    chart
        .configure_mesh()
        .x_desc("global step")
        .y_desc(spec.y_desc)
        .x_labels(10)
        .y_labels(8)
        .x_label_formatter(&x_label)
        .y_label_formatter(&y_label((y_hi - y_lo) / 8.0, y_lo.abs().max(y_hi.abs())))
        .label_style((FAMILY, 15))
        .axis_desc_style((FAMILY, 17))
        .light_line_style(FINE_GRID)
        .bold_line_style(GRID)
        .draw()
        .map_err(fail)?;

    let (_, plot_y) = chart.plotting_area().get_pixel_range();
    let plot_left = chart.backend_coord(&(x_lo, y_hi)).0;
    let first = segments
        .iter()
        .rposition(|s| (s.start as f64) <= x_min)
        .unwrap_or(0);
    for (i, segment) in segments.iter().enumerate().skip(first) {
        let start = segment.start as f64;
        if start > x_max {
            break;
        }
        let px = if i == first {
            plot_left
        } else {
            let bx = start - 0.5;
            chart
                .draw_series(DashedLineSeries::new(
                    [(bx, y_lo), (bx, y_hi)],
                    6,
                    4,
                    BOUNDARY.stroke_width(2),
                ))
                .map_err(fail)?;
            chart.backend_coord(&(bx, y_hi)).0
        };
        if let Some(label) = &segment.label {
            draw_phase_label(&root, label, (px + 4, plot_y.start - 20)).map_err(fail)?;
        }
    }

    for (i, s) in series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let markers = if s.points.len() <= MARKERS_UP_TO {
            3
        } else {
            0
        };
        chart
            .draw_series(
                LineSeries::new(s.points.iter().copied(), color.stroke_width(2))
                    .point_size(markers),
            )
            .map_err(fail)?
            .label(s.label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 24, y)], color.stroke_width(3)));
    }
    draw_legend(&mut chart).map_err(fail)?;
    root.present().map_err(fail)
}

/// A grouped bar chart with 95% intervals (`longrl ablate`'s `ablation.png`): one group of bars
/// per entry of `groups` (x axis), one bar per series in each group (coloured, the first grey,
/// in the legend),
/// its height the value's `mean` in percent and a whisker of `mean +- ci95` where there is one.
pub fn plot_bars(
    path: &Path,
    title: &str,
    groups: &[String],
    series: &[(String, Vec<crate::ablation::Interval>)],
) -> Result<()> {
    register_font()?;
    let fail = |e: DrawingAreaErrorKind<_>| draw_error(path, e);
    let top = series
        .iter()
        .flat_map(|(_, v)| v.iter().map(|i| i.mean + i.ci95.unwrap_or(0.0)))
        .fold(0.0f64, f64::max);
    let y_hi = (100.0 * top * (1.12 + 0.07 * series.len() as f64)).clamp(10.0, 160.0);
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(fail)?;
    let titled = root
        .titled(title, (FAMILY, 24).into_font().color(&BLACK))
        .map_err(fail)?;
    let n = groups.len().max(1) as f64;
    let mut chart = ChartBuilder::on(&titled)
        .margin(14)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..n, 0.0..y_hi)
        .map_err(fail)?;
    let names = groups.to_vec();
    let group_label = move |x: &f64| {
        let k = x.floor() as usize;
        if (x - k as f64 - 0.5).abs() < 1e-6 {
            names.get(k).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(2 * groups.len() + 1)
        .x_label_formatter(&group_label)
        .y_desc("held-out accuracy (%)")
        .y_labels(10)
        .label_style((FAMILY, 15))
        .axis_desc_style((FAMILY, 17))
        .light_line_style(FINE_GRID)
        .bold_line_style(GRID)
        .draw()
        .map_err(fail)?;
    let width = 0.8 / series.len().max(1) as f64;
    for (k, (name, values)) in series.iter().enumerate() {
        let color = BARS[k % BARS.len()];
        let left = |g: usize| g as f64 + 0.1 + k as f64 * width;
        chart
            .draw_series(values.iter().enumerate().map(|(g, v)| {
                Rectangle::new(
                    [(left(g), 0.0), (left(g) + width * 0.92, 100.0 * v.mean)],
                    color.filled(),
                )
            }))
            .map_err(fail)?
            .label(name.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 18, y + 6)], color.filled()));
        let whiskers = values.iter().enumerate().filter_map(|(g, v)| {
            let c = v.ci95?;
            let x = left(g) + width * 0.46;
            let (lo, hi) = (100.0 * (v.mean - c).max(0.0), 100.0 * (v.mean + c));
            Some(PathElement::new([(x, lo), (x, hi)], BLACK.stroke_width(2)))
        });
        chart.draw_series(whiskers).map_err(fail)?;
    }
    draw_legend(&mut chart).map_err(fail)?;
    root.present().map_err(fail)
}

/// The series legend every chart shares: upper right, on a light box.
fn draw_legend<'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, BitMapBackend<'a>, CT>,
) -> std::result::Result<(), DrawingAreaErrorKind<<BitMapBackend<'a> as DrawingBackend>::ErrorType>>
{
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((FAMILY, 15))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(180, 180, 180))
        .draw()
}

fn draw_phase_label(
    root: &DrawingArea<BitMapBackend<'_>, Shift>,
    label: &str,
    at: (i32, i32),
) -> std::result::Result<
    (),
    DrawingAreaErrorKind<<BitMapBackend<'static> as DrawingBackend>::ErrorType>,
> {
    root.draw(&Text::new(
        label.to_string(),
        at,
        (FAMILY, 16).into_font().color(&BOUNDARY),
    ))
}
