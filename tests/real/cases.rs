//! Cases of one test, run in order, each caught and reported on its own.

use std::time::{Duration, Instant};

use super::run::Record;

/// Log records as `LEVEL [model] message`, each cut to a readable length.
pub fn lines(records: &[Record]) -> String {
    records
        .iter()
        .map(|r| {
            let text = match &r.json {
                Some(_) => format!(
                    "{} [{}] {}",
                    r.level(),
                    r.model().unwrap_or("-"),
                    r.message()
                ),
                None => r.line.clone(),
            };
            let cut: String = text.chars().take(1500).collect();
            format!("  {}", cut.replace('\n', "\n    "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The outcome of one case: Ok with a note, or Err with what went wrong.
pub type Outcome = Result<String, String>;

/// Runs the cases of one test in order, each caught on its own, and reports them all.
pub struct Cases {
    test: String,
    results: Vec<(String, Outcome, Duration)>,
}

impl Cases {
    pub fn new(test: &str) -> Cases {
        Cases {
            test: test.to_string(),
            results: Vec::new(),
        }
    }

    /// Runs one case; a panic counts as a failure.
    pub fn run(&mut self, name: &str, f: impl FnOnce() -> Outcome) -> bool {
        eprintln!("[{}] case: {name}", self.test);
        let t0 = Instant::now();
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| {
            Err(p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panicked".into()))
        });
        let ok = out.is_ok();
        eprintln!(
            "[{}]   {} ({:.1} s): {}",
            self.test,
            if ok { "PASS" } else { "FAIL" },
            t0.elapsed().as_secs_f64(),
            match &out {
                Ok(s) | Err(s) => s,
            }
        );
        self.results.push((name.to_string(), out, t0.elapsed()));
        ok
    }

    /// Prints the summary and fails the test if any case failed.
    pub fn finish(self) {
        let mut failed = Vec::new();
        eprintln!("\n== {} ==", self.test);
        for (name, out, took) in &self.results {
            let verdict = if out.is_ok() { "PASS" } else { "FAIL" };
            eprintln!("  {verdict}  {name}  ({:.1} s)", took.as_secs_f64());
            if let Err(e) = out {
                failed.push(format!("--- {name}:\n{e}"));
            }
        }
        assert!(
            failed.is_empty(),
            "{} of {} cases failed:\n{}",
            failed.len(),
            self.results.len(),
            failed.join("\n")
        );
    }
}

/// `Err(format!(...))` unless `cond` holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        let holds: bool = $cond;
        if !holds {
            return Err(format!($($msg)+));
        }
    };
}
