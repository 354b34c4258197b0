//! Prometheus text format at the level of one line: parsing a sample (name, labels, value,
//! timestamp; exemplars cut), writing it again with a `model` label, escaping label values,
//! and summing samples by name. Apart because both the merge and the supervisor's progress
//! check ([`sums`]) read samples this way.

use std::fmt::Write;

/// For each of `names`, the sum of its samples over every label set (several engine
/// processes, finish reasons, ...), or `None` when the text has no sample of that name.
/// Names are matched exactly: `foo_total` does not match `foo_created`.
pub fn sums(text: &str, names: &[&str]) -> Vec<Option<f64>> {
    let mut out = vec![None; names.len()];
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some(sample) = Sample::parse(line) else {
            continue;
        };
        if let Some(i) = names.iter().position(|n| *n == sample.name)
            && let Ok(v) = sample.value.parse::<f64>()
        {
            *out[i].get_or_insert(0.0) += v;
        }
    }
    out
}

/// A Prometheus label value with `\`, `"` and newlines escaped.
pub fn escape_label_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}
/// A sample line split into its parts; label values keep their quotes and escapes.
#[derive(Debug)]
pub(super) struct Sample<'a> {
    /// The metric name.
    pub(super) name: &'a str,
    labels: Vec<(&'a str, &'a str)>,
    value: &'a str,
    timestamp: Option<&'a str>,
}

fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl<'a> Sample<'a> {
    /// Parses `name{label="value",...} value [timestamp] [# exemplar]`; `None` when the line
    /// is not a valid sample.
    pub(super) fn parse(line: &'a str) -> Option<Self> {
        let name_end = line.find(['{', ' ', '\t'])?;
        let name = &line[..name_end];
        if !is_metric_name(name) {
            return None;
        }
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(inner) = rest.strip_prefix('{') {
            let mut s = inner;
            loop {
                s = s.trim_start();
                if let Some(after) = s.strip_prefix('}') {
                    rest = after;
                    break;
                }
                let eq = s.find('=')?;
                let label = s[..eq].trim();
                if !is_label_name(label) {
                    return None;
                }
                s = s[eq + 1..].trim_start();
                let end = closing_quote(s)?;
                labels.push((label, &s[..=end]));
                s = s[end + 1..].trim_start();
                if let Some(after) = s.strip_prefix(',') {
                    s = after;
                } else if !s.starts_with('}') {
                    return None;
                }
            }
        }
        // An OpenMetrics exemplar (` # {...} v`) follows the value: cut it.
        let rest = rest.split(" # ").next().unwrap_or("");
        let mut words = rest.split_ascii_whitespace();
        let value = words.next()?;
        value.parse::<f64>().ok()?;
        // Text format 0.0.4 timestamps are integer milliseconds; anything else is dropped.
        let timestamp = words.next().filter(|t| t.parse::<i64>().is_ok());
        Some(Sample {
            name,
            labels,
            value,
            timestamp,
        })
    }

    /// The sample with `model="<model>"` first (`model` is already escaped) and an
    /// existing `model` label renamed `exported_model`; `None` if a label name repeats.
    pub(super) fn render(&self, model: &str) -> Option<String> {
        let mut names: Vec<&str> = Vec::with_capacity(self.labels.len() + 1);
        names.push("model");
        let mut out = String::with_capacity(64 + model.len());
        let _ = write!(out, "{}{{model=\"{model}\"", self.name);
        for (label, value) in &self.labels {
            let label = if *label == "model" {
                "exported_model"
            } else {
                label
            };
            if names.contains(&label) {
                return None;
            }
            names.push(label);
            let _ = write!(out, ",{label}={value}");
        }
        let _ = write!(out, "}} {}", self.value);
        if let Some(ts) = self.timestamp {
            let _ = write!(out, " {ts}");
        }
        Some(out)
    }
}

/// Index of the quote closing the quoted string at the start of `s`.
fn closing_quote(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    if bytes.first() != Some(&b'"') {
        return None;
    }
    let mut i = 1;
    loop {
        match bytes.get(i)? {
            b'\\' => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
}
