//! Merging engines' expositions into one: families in order of first appearance, each
//! `# HELP` and `# TYPE` once, every sample labelled with its model, OpenMetrics spellings
//! mapped onto text format 0.0.4. Apart because it is the scrape's one piece of real logic.

use std::collections::HashMap;
use std::fmt::Write;

use super::sample::{Sample, escape_label_value};

/// Families of modelmux's own; an engine's family of the same prefix is dropped.
const OWN_PREFIX: &str = "modelmux_";

/// A family's type in the output (text format 0.0.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
    Summary,
    Untyped,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
            Kind::Summary => "summary",
            Kind::Untyped => "untyped",
        }
    }
}

/// One merged family: its samples already carry the `model` label.
#[derive(Debug)]
struct Family {
    name: String,
    kind: Kind,
    help: Option<String>,
    samples: Vec<String>,
}

/// The `# HELP` / `# TYPE` lines in force while an engine's text is read.
#[derive(Debug, Default)]
struct Header {
    name: String,
    /// The type as written (OpenMetrics types included); `untyped` when none was given.
    kind: String,
    help: Option<String>,
}

/// Families merged from several engines, in order of first appearance.
#[derive(Debug, Default)]
pub struct Exposition {
    families: Vec<Family>,
    by_name: HashMap<String, usize>,
    /// Lines dropped: unparsable, a type clash, or one of modelmux's own names.
    pub dropped: usize,
}

impl Exposition {
    /// Adds one engine's exposition, labelling every sample `model="<model>"`.
    pub fn add(&mut self, model: &str, text: &str) {
        let model = escape_label_value(model);
        let mut header = Header::default();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            if let Some(comment) = line.strip_prefix('#') {
                read_comment(comment, &mut header);
                continue;
            }
            let Some(sample) = Sample::parse(line) else {
                self.dropped += 1;
                continue;
            };
            let (family, kind, help) = family_of(&header, sample.name);
            if family.starts_with(OWN_PREFIX) {
                self.dropped += 1;
                continue;
            }
            let Some(rendered) = sample.render(&model) else {
                self.dropped += 1;
                continue;
            };
            match self.by_name.get(family) {
                Some(&i) if self.families[i].kind == kind => {
                    let f = &mut self.families[i];
                    if f.help.is_none() {
                        f.help = help.map(str::to_string);
                    }
                    f.samples.push(rendered);
                }
                Some(_) => self.dropped += 1,
                None => {
                    self.by_name.insert(family.to_string(), self.families.len());
                    self.families.push(Family {
                        name: family.to_string(),
                        kind,
                        help: help.map(str::to_string),
                        samples: vec![rendered],
                    });
                }
            }
        }
    }

    /// Writes every family: `# HELP` (when some engine gave one), `# TYPE`, the samples.
    pub fn render(&self, out: &mut String) {
        for f in &self.families {
            if let Some(help) = &f.help {
                let _ = writeln!(out, "# HELP {} {help}", f.name);
            }
            let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind.as_str());
            for s in &f.samples {
                out.push_str(s);
                out.push('\n');
            }
        }
    }
}

/// Applies a `# HELP`, `# TYPE` or other comment line (without its `#`) to `header`.
fn read_comment(comment: &str, header: &mut Header) {
    let mut parts = comment.trim_start().splitn(3, [' ', '\t']);
    let (Some(keyword), Some(name)) = (parts.next(), parts.next()) else {
        return;
    };
    let rest = parts.next().unwrap_or("").trim();
    if !matches!(keyword, "HELP" | "TYPE") {
        // `# UNIT`, `# EOF` and plain comments carry nothing the output needs.
        return;
    }
    if name != header.name {
        *header = Header {
            name: name.to_string(),
            kind: "untyped".into(),
            help: None,
        };
    }
    if keyword == "HELP" {
        header.help = Some(rest.to_string());
    } else {
        header.kind = rest.to_ascii_lowercase();
    }
}

/// Which family a sample belongs to, with that family's type and help: the header's own
/// family when the name fits its type, a derived family for OpenMetrics spellings and
/// `_created` series, else an untyped family named after the sample.
fn family_of<'a>(header: &'a Header, sample: &'a str) -> (&'a str, Kind, Option<&'a str>) {
    let help = header.help.as_deref();
    let base = header.name.as_str();
    let suffix = sample.strip_prefix(base);
    let derived_gauge = || (sample, Kind::Gauge, help);
    if !base.is_empty() {
        match (header.kind.as_str(), suffix) {
            ("counter", Some("")) => return (base, Kind::Counter, help),
            ("counter", Some("_total")) => return (sample, Kind::Counter, help),
            ("gauge", Some("")) => return (base, Kind::Gauge, help),
            ("stateset", Some("")) => return (base, Kind::Gauge, help),
            ("info", Some("_info")) => return derived_gauge(),
            ("histogram", Some("_bucket" | "_sum" | "_count")) => {
                return (base, Kind::Histogram, help);
            }
            ("summary", Some("" | "_sum" | "_count")) => return (base, Kind::Summary, help),
            ("counter" | "histogram" | "summary", Some("_created")) => return derived_gauge(),
            ("untyped" | "unknown", Some("")) => return (base, Kind::Untyped, help),
            _ => {}
        }
    }
    (sample, Kind::Untyped, None)
}
