//! Engine metrics in modelmux's own scrape (SPEC §6). Each engine's `/metrics` is only on
//! loopback, where Prometheus cannot reach it, so `/metrics` fetches every ready engine's
//! exposition in parallel within [`BUDGET`], adds a `model` label (the model's name as in
//! `/health`) to every sample, and merges the families so that each `# HELP` and `# TYPE`
//! appears once however many engines export it. An engine that does not answer in time is
//! left out of that scrape and counted in `modelmux_engine_scrape_errors_total`.
//!
//! The output is Prometheus text format 0.0.4. Engines are asked for that format; what an
//! OpenMetrics engine might send anyway is normalised: `# UNIT` and `# EOF` are dropped,
//! exemplars are cut, a counter `foo` sampled as `foo_total` becomes the family
//! `foo_total`, and `_created` series become gauge families of their own (as Python's
//! `prometheus_client` writes them). An engine label called `model` is kept as
//! `exported_model`, Prometheus's own rule for a clash. Lines that do not parse are
//! dropped; a family whose type differs between engines keeps the first engine's samples.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::task::JoinSet;

use crate::state::{Phase, RoutingTable, Snapshot};

/// How long one scrape waits for all the engines together.
pub const BUDGET: Duration = Duration::from_secs(1);
/// Largest exposition read from one engine; a larger one counts as a failed scrape.
const MAX_BODY: usize = 16 << 20;
/// Families of modelmux's own; an engine's family of the same prefix is dropped.
const OWN_PREFIX: &str = "modelmux_";

/// One engine to scrape.
#[derive(Debug, Clone)]
pub struct Target {
    /// Index of the model in the plan (and in [`ScrapeErrors`]).
    pub index: usize,
    /// The model's name: the value of the `model` label.
    pub model: String,
    /// `127.0.0.1:PORT` of its engine.
    pub authority: String,
    /// Its metrics path (`/metrics`; engine profiles say).
    pub path: String,
}

/// The engines a scrape asks: those whose model is ready and whose server has metrics.
pub fn targets(table: &RoutingTable, snapshot: &Snapshot) -> Vec<Target> {
    table
        .models
        .iter()
        .filter(|route| {
            snapshot
                .models
                .get(route.index)
                .is_some_and(|m| m.state == Phase::Ready)
        })
        .filter_map(|route| {
            Some(Target {
                index: route.index,
                model: route.model.to_string(),
                authority: route.authority.to_string(),
                path: route.metrics_path.as_deref()?.to_string(),
            })
        })
        .collect()
}

/// Failed engine scrapes per model, for `modelmux_engine_scrape_errors_total`.
pub struct ScrapeErrors {
    models: Vec<(String, AtomicU64)>,
}

impl ScrapeErrors {
    /// A counter at zero for each model, in plan order.
    pub fn new<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        ScrapeErrors {
            models: names
                .into_iter()
                .map(|n| (escape_label_value(n), AtomicU64::new(0)))
                .collect(),
        }
    }

    /// Counts one failed scrape of the model at `index`.
    pub fn count(&self, index: usize) {
        if let Some((_, c)) = self.models.get(index) {
            c.fetch_add(1, Relaxed);
        }
    }

    /// Failed scrapes of the model at `index` so far.
    pub fn get(&self, index: usize) -> u64 {
        self.models.get(index).map_or(0, |(_, c)| c.load(Relaxed))
    }

    fn render(&self, out: &mut String) {
        out.push_str(
            "# HELP modelmux_engine_scrape_errors_total Engine metrics scrapes that failed or \
             took longer than 1 s; that engine's metrics were left out.\n",
        );
        out.push_str("# TYPE modelmux_engine_scrape_errors_total counter\n");
        for (name, c) in &self.models {
            let _ = writeln!(
                out,
                "modelmux_engine_scrape_errors_total{{model=\"{name}\"}} {}",
                c.load(Relaxed)
            );
        }
    }
}

/// Scrapes `targets` within [`BUDGET`], then appends `modelmux_engine_scrape_errors_total`
/// and the engines' merged families to `out`.
pub async fn append_engines(out: &mut String, targets: Vec<Target>, errors: &ScrapeErrors) {
    let mut merged = Exposition::default();
    for (target, result) in scrape_all(targets, BUDGET).await {
        match result {
            Ok(text) => merged.add(&target.model, &text),
            Err(why) => {
                errors.count(target.index);
                tracing::debug!(model = %target.model, "engine metrics left out of this scrape: {why}");
            }
        }
    }
    errors.render(out);
    merged.render(out);
}

/// Fetches every target's `/metrics` at once; those without an answer by `budget` get an
/// error. Results come back in the order of `targets`.
pub async fn scrape_all(
    targets: Vec<Target>,
    budget: Duration,
) -> Vec<(Target, Result<String, String>)> {
    let deadline = tokio::time::Instant::now() + budget;
    let mut tasks = JoinSet::new();
    for (i, t) in targets.iter().enumerate() {
        let (authority, path) = (t.authority.clone(), t.path.clone());
        tasks.spawn(async move { (i, fetch(&authority, &path).await) });
    }
    let mut results: Vec<Option<Result<String, String>>> = vec![None; targets.len()];
    while let Ok(Some(joined)) = tokio::time::timeout_at(deadline, tasks.join_next()).await {
        if let Ok((i, r)) = joined {
            results[i] = Some(r);
        }
    }
    // Dropping the set aborts the engines that did not answer and closes their sockets.
    drop(tasks);
    targets
        .into_iter()
        .zip(results)
        .map(|(t, r)| {
            let r = r.unwrap_or_else(|| Err(format!("no answer within {budget:?}")));
            (t, r)
        })
        .collect()
}

/// One `GET` of the metrics path on a fresh loopback connection (never through an HTTP
/// proxy).
async fn fetch(authority: &str, path: &str) -> Result<String, String> {
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| format!("cannot connect to {authority}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    let request = http::Request::get(path)
        .header(http::header::HOST, authority)
        .header(
            http::header::ACCEPT,
            "text/plain;version=0.0.4;q=1,*/*;q=0.1",
        )
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    // The connection is driven here, beside the request, so that nothing outlives a scrape
    // cut short by the budget; it ends once the sender is dropped with the request.
    let exchange = async move {
        let resp = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        if resp.status() != http::StatusCode::OK {
            return Err(format!("GET {path} answered {}", resp.status()));
        }
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| format!("reading the metrics: {e}"))?
            .to_bytes();
        String::from_utf8(body.to_vec()).map_err(|_| "the metrics are not UTF-8".to_string())
    };
    let (result, _) = tokio::join!(exchange, conn);
    result
}

/// One engine's metrics text (at its profile's `path`) within `timeout`, outside any scrape (the supervisor's
/// progress check reads its counters this way).
pub async fn fetch_within(
    authority: &str,
    path: &str,
    timeout: Duration,
) -> Result<String, String> {
    tokio::time::timeout(timeout, fetch(authority, path))
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
}

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

/// A sample line split into its parts; label values keep their quotes and escapes.
#[derive(Debug)]
struct Sample<'a> {
    name: &'a str,
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
    fn parse(line: &'a str) -> Option<Self> {
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
    fn render(&self, model: &str) -> Option<String> {
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

#[cfg(test)]
mod tests;
