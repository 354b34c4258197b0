//! mmx-loadgen: a small closed-loop HTTP load generator for the benchmarks.
//!
//! Runs `--concurrency` workers for `--warmup` then `--duration` seconds against loopback
//! URLs; request `i` goes to `--url[i % urls]` with `--body[i % bodies]`, so that requests
//! can alternate between models. Prints one JSON line: requests/s, latency percentiles,
//! and for streams (`--stream`) the time to first byte; a stream that does not end with
//! `data: [DONE]` counts as an error. The rate counts requests answered inside the
//! measuring window; the latencies only those also begun inside it. `--samples PATH`
//! writes each timed request's start, time to first byte and total (µs) to a file.
//!
//! ```text
//! mmx-loadgen --url http://127.0.0.1:8080/v1/completions --body '{"model":"a"}' \
//!             --body '{"model":"b"}' --concurrency 64 --duration 10 [--stream]
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

struct Args {
    urls: Vec<hyper::Uri>,
    bodies: Vec<Bytes>,
    concurrency: usize,
    duration: f64,
    warmup: f64,
    stream: bool,
    threads: usize,
    label: String,
    /// Where to write every measured request as `start_us ttfb_us total_us` (start from
    /// the beginning of the measurement), for looking at a tail over time.
    samples: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        urls: Vec::new(),
        bodies: Vec::new(),
        concurrency: 1,
        duration: 10.0,
        warmup: 2.0,
        stream: false,
        threads: 1,
        label: String::new(),
        samples: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => a
                .urls
                .push(value()?.parse().map_err(|e| format!("--url: {e}"))?),
            "--body" => a.bodies.push(Bytes::from(value()?)),
            "--concurrency" => {
                a.concurrency = value()?
                    .parse()
                    .map_err(|e| format!("--concurrency: {e}"))?
            }
            "--duration" => {
                a.duration = value()?.parse().map_err(|e| format!("--duration: {e}"))?
            }
            "--warmup" => a.warmup = value()?.parse().map_err(|e| format!("--warmup: {e}"))?,
            "--threads" => a.threads = value()?.parse().map_err(|e| format!("--threads: {e}"))?,
            "--label" => a.label = value()?,
            "--samples" => a.samples = Some(value()?),
            "--stream" => a.stream = true,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if a.urls.is_empty() || a.bodies.is_empty() {
        return Err("give at least one --url and one --body".into());
    }
    if a.duration > 600.0 || a.warmup > 600.0 {
        return Err("--duration and --warmup are capped at 600 s".into());
    }
    Ok(a)
}

/// One worker's observations, in microseconds.
#[derive(Default)]
struct Samples {
    latency: Vec<u32>,
    ttfb: Vec<u32>,
    /// Requests answered inside the window, timed or not.
    completed: u64,
    errors: u64,
    /// `(start, ttfb, total)` per request, in µs, when `--samples` asks for them.
    timeline: Vec<(u64, u32, u32)>,
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

async fn one(
    client: &HttpClient,
    url: &hyper::Uri,
    body: &Bytes,
    stream: bool,
) -> Result<(Duration, Option<Duration>), ()> {
    let req = hyper::Request::post(url.clone())
        .header("content-type", "application/json")
        .body(Full::new(body.clone()))
        .map_err(|_| ())?;
    let start = Instant::now();
    let resp = client.request(req).await.map_err(|_| ())?;
    if resp.status() != hyper::StatusCode::OK {
        let _ = resp.into_body().collect().await;
        return Err(());
    }
    let mut body = resp.into_body();
    let mut ttfb = None;
    let mut tail: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| ())?;
        if let Some(d) = frame.data_ref() {
            if ttfb.is_none() && !d.is_empty() {
                ttfb = Some(start.elapsed());
            }
            if stream {
                tail.extend_from_slice(d);
                let keep = tail.len().saturating_sub(32);
                tail.drain(..keep);
            }
        }
    }
    let total = start.elapsed();
    if stream && !tail.windows(12).any(|w| w == b"data: [DONE]") {
        return Err(());
    }
    Ok((total, ttfb))
}

fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("mmx-loadgen: {e}");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(args));
}

async fn run(args: Args) {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: HttpClient = Client::builder(TokioExecutor::new()).build(connector);
    let args = Arc::new(args);
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let origin = Instant::now();
    let mut workers = Vec::new();
    for w in 0..args.concurrency {
        let (client, args, measuring, stop) = (
            client.clone(),
            args.clone(),
            measuring.clone(),
            stop.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut s = Samples::default();
            let mut i = w;
            while !stop.load(Ordering::Relaxed) {
                let url = &args.urls[i % args.urls.len()];
                let body = &args.bodies[i % args.bodies.len()];
                i += 1;
                // Every request ended inside the window counts toward the rate, but only
                // those begun inside it toward the latencies: one begun in the warm-up
                // would carry the warm-up's burst of new connections into the tail.
                let timed = measuring.load(Ordering::Relaxed);
                let began = origin.elapsed();
                let r = one(&client, url, body, args.stream).await;
                if !measuring.load(Ordering::Relaxed) || stop.load(Ordering::Relaxed) {
                    continue;
                }
                if r.is_ok() {
                    s.completed += 1;
                }
                match r {
                    Ok(_) if !timed => {}
                    Ok((total, ttfb)) => {
                        s.latency.push(total.as_micros() as u32);
                        if let Some(t) = ttfb {
                            s.ttfb.push(t.as_micros() as u32);
                        }
                        if args.samples.is_some() {
                            let at = began.saturating_sub(Duration::from_secs_f64(args.warmup));
                            let ttfb = ttfb.map_or(0, |t| t.as_micros() as u32);
                            s.timeline.push((
                                at.as_micros() as u64,
                                ttfb,
                                total.as_micros() as u32,
                            ));
                        }
                    }
                    Err(()) => {
                        s.errors += 1;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            s
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(args.warmup)).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(args.duration)).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let mut all = Samples::default();
    for w in workers {
        // A worker stuck on a hung request must not hang the benchmark.
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(30), w).await {
            all.latency.extend(s.latency);
            all.ttfb.extend(s.ttfb);
            all.errors += s.errors;
            all.completed += s.completed;
            all.timeline.extend(s.timeline);
        }
    }
    all.latency.sort_unstable();
    all.ttfb.sort_unstable();
    if let Some(path) = &args.samples {
        all.timeline.sort_unstable();
        let lines: String = all
            .timeline
            .iter()
            .map(|(at, ttfb, total)| format!("{at} {ttfb} {total}\n"))
            .collect();
        if let Err(e) = std::fs::write(path, lines) {
            eprintln!("mmx-loadgen: --samples {path}: {e}");
        }
    }
    let out = serde_json::json!({
        "label": args.label,
        "concurrency": args.concurrency,
        "stream": args.stream,
        "requests": all.completed,
        "errors": all.errors,
        "rps": all.completed as f64 / elapsed,
        "p50_ms": pct(&all.latency, 0.5),
        "p90_ms": pct(&all.latency, 0.9),
        "p99_ms": pct(&all.latency, 0.99),
        "max_ms": pct(&all.latency, 1.0),
        "ttfb_p50_ms": pct(&all.ttfb, 0.5),
        "ttfb_p90_ms": pct(&all.ttfb, 0.9),
        "ttfb_p99_ms": pct(&all.ttfb, 0.99),
    });
    println!("{out}");
}
