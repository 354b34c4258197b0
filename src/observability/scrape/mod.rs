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
//!
//! The pieces:
//!
//! - this file: which engines a scrape asks ([`targets`]), the failed-scrape counter
//!   ([`ScrapeErrors`]) and the scrape itself ([`append_engines`]).
//! - `fetch`: fetching the engines' expositions over loopback, all at once within a budget.
//! - `exposition`: merging the engines' families into one exposition ([`Exposition`]).
//! - `sample`: reading and writing sample lines, label escaping, and [`sums`].

mod exposition;
mod fetch;
mod sample;

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::state::{Phase, RoutingTable, Snapshot};
pub use exposition::Exposition;
pub use fetch::{fetch_within, scrape_all};
pub use sample::{escape_label_value, sums};

/// How long one scrape waits for all the engines together.
pub const BUDGET: Duration = Duration::from_secs(1);

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
    /// `Bearer KEY` when the engine has an API key of its own (vLLM leaves `/metrics`
    /// open today; servers that guard every path do not).
    pub authorization: Option<String>,
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
                authorization: route.engine_authorization.as_deref().map(str::to_string),
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

#[cfg(test)]
mod tests;
