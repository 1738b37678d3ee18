//! The results: one row per scenario figure, one column per proxy (median and min–max over the
//! runs), the ratios terminus/HAProxy and terminus/nginx; as a text table and as JSON.

use serde_json::{json, Value};
use terminus_benches::stats::{median, range};

use crate::proxies::Proxy;
use crate::scenarios::{Measurement, Metric, Scenario, Settings};

#[derive(Debug)]
struct Row {
    scenario: Scenario,
    metric: Metric,
    /// Per proxy, indexed by `Proxy::index`.
    values: [Vec<f64>; 3],
}

#[derive(Debug, Default)]
pub(crate) struct Report {
    rows: Vec<Row>,
    measurements: Vec<Value>,
    /// Scenario and proxy pairs with a failed run (start failure, tool error, zero successes).
    failed: Vec<(Scenario, Proxy)>,
    /// Messages that make the exit status non-zero.
    pub(crate) failures: Vec<String>,
    /// Runs that succeeded with some errors.
    pub(crate) warnings: Vec<String>,
}

impl Report {
    pub(crate) fn new(scenarios: &[Scenario], settings: &Settings) -> Self {
        let rows = scenarios
            .iter()
            .flat_map(|&scenario| {
                scenario
                    .metrics(settings)
                    .into_iter()
                    .map(move |metric| Row {
                        scenario,
                        metric,
                        values: Default::default(),
                    })
            })
            .collect();
        Self {
            rows,
            ..Self::default()
        }
    }

    pub(crate) fn record(&mut self, scenario: Scenario, proxy: Proxy, run: usize, m: &Measurement) {
        let rows = self.rows.iter_mut().filter(|r| r.scenario == scenario);
        for (row, &value) in rows.zip(&m.values) {
            if value.is_finite() && m.ok > 0 {
                row.values[proxy.index()].push(value);
            }
        }
        let what = format!("{} {} run {run}", scenario.name(), proxy.name());
        if m.ok == 0 {
            self.failed.push((scenario, proxy));
            self.failures
                .push(format!("{what}: no successful requests ({})", m.detail));
        } else if m.errors > 0 {
            let samples = m
                .detail
                .get("error_samples")
                .cloned()
                .unwrap_or(Value::Null);
            self.warnings.push(format!(
                "{what}: {} errors besides {} successes {samples}",
                m.errors, m.ok
            ));
        }
        self.measurements.push(json!({
            "scenario": scenario.name(),
            "proxy": proxy.name(),
            "run": run,
            "ok": m.ok,
            "errors": m.errors,
            "values": m.values.iter().map(|v| finite(*v)).collect::<Vec<_>>(),
            "usage": m.usage.json(),
            "detail": m.detail,
        }));
    }

    pub(crate) fn fail(&mut self, scenario: Scenario, proxy: Proxy, run: usize, error: &str) {
        self.failed.push((scenario, proxy));
        self.failures.push(format!(
            "{} {} run {run}: {error}",
            scenario.name(),
            proxy.name()
        ));
    }

    fn cell(&self, row: &Row, proxy: Proxy, selected: &[Proxy]) -> String {
        let values = &row.values[proxy.index()];
        let Some(med) = median(values) else {
            let failed = self.failed.contains(&(row.scenario, proxy));
            return if failed || selected.contains(&proxy) {
                "failed".into()
            } else {
                "-".into()
            };
        };
        match range(values) {
            Some((lo, hi)) if values.len() > 1 => {
                format!("{} ({}–{})", number(med), number(lo), number(hi))
            }
            _ => number(med),
        }
    }

    /// The table, as printed.
    pub(crate) fn table(&self, selected: &[Proxy]) -> String {
        let mut lines = vec![[
            "scenario",
            "metric",
            "better",
            "terminus",
            "haproxy",
            "nginx",
            "t/haproxy",
            "t/nginx",
        ]
        .map(str::to_owned)
        .to_vec()];
        for row in &self.rows {
            let ratio = |peer: Proxy| {
                let t = median(&row.values[Proxy::Terminus.index()]);
                match (t, median(&row.values[peer.index()])) {
                    (Some(t), Some(p)) if p != 0.0 => format!("{:.2}", t / p),
                    _ => "-".into(),
                }
            };
            lines.push(vec![
                row.scenario.name().to_owned(),
                row.metric.label.clone(),
                row.metric.better.as_str().to_owned(),
                self.cell(row, Proxy::Terminus, selected),
                self.cell(row, Proxy::Haproxy, selected),
                self.cell(row, Proxy::Nginx, selected),
                ratio(Proxy::Haproxy),
                ratio(Proxy::Nginx),
            ]);
        }
        let widths: Vec<usize> = (0..lines[0].len())
            .map(|c| {
                lines
                    .iter()
                    .map(|l| l[c].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for (i, line) in lines.iter().enumerate() {
            let cells: Vec<String> = line
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(c, (text, &w))| {
                    let pad = " ".repeat(w - text.chars().count());
                    // Text columns left-aligned, figures right-aligned.
                    if c < 3 {
                        format!("{text}{pad}")
                    } else {
                        format!("{pad}{text}")
                    }
                })
                .collect();
            out.push_str(cells.join("  ").trim_end());
            out.push('\n');
            if i == 0 {
                let total = widths.iter().sum::<usize>() + 2 * (widths.len() - 1);
                out.push_str(&"-".repeat(total));
                out.push('\n');
            }
        }
        out
    }

    /// Everything, for `--json`.
    pub(crate) fn json(&self, machine: Value, settings: &Settings, notes: &[String]) -> Value {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|row| {
                let mut v = json!({
                    "scenario": row.scenario.name(),
                    "metric": row.metric.label,
                    "better": row.metric.better.as_str(),
                });
                for proxy in Proxy::ALL {
                    let values = &row.values[proxy.index()];
                    let (lo, hi) = range(values).unzip();
                    v[proxy.name()] = json!({
                        "values": values,
                        "median": median(values),
                        "min": lo,
                        "max": hi,
                    });
                }
                let t = median(&row.values[Proxy::Terminus.index()]);
                for peer in [Proxy::Haproxy, Proxy::Nginx] {
                    let ratio = t
                        .zip(median(&row.values[peer.index()]))
                        .filter(|(_, p)| *p != 0.0)
                        .map(|(t, p)| t / p);
                    v[format!("terminus_over_{}", peer.name())] = json!(ratio);
                }
                v
            })
            .collect();
        json!({
            "machine": machine,
            "quick": settings.quick,
            "runs": settings.runs,
            "duration_s": settings.duration,
            "idle_connections": settings.idle_connections,
            "lat_rate": settings.lat_rate,
            "rows": rows,
            "measurements": self.measurements,
            "failures": self.failures,
            "warnings": self.warnings,
            "notes": notes,
        })
    }
}

fn finite(v: f64) -> Value {
    if v.is_finite() {
        json!(v)
    } else {
        Value::Null
    }
}

/// 35,812 / 589 / 27.9 / 3.41
fn number(x: f64) -> String {
    let abs = x.abs();
    if abs >= 1000.0 {
        let digits = format!("{:.0}", abs);
        let mut grouped = String::new();
        for (i, ch) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                grouped.push(',');
            }
            grouped.push(ch);
        }
        format!("{}{grouped}", if x < 0.0 { "-" } else { "" })
    } else if abs >= 100.0 {
        format!("{x:.0}")
    } else if abs >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(number(35812.4), "35,812");
        assert_eq!(number(1_234_567.0), "1,234,567");
        assert_eq!(number(589.4), "589");
        assert_eq!(number(27.94), "27.9");
        assert_eq!(number(3.414), "3.41");
        assert_eq!(number(-16.2), "-16.2");
    }
}
