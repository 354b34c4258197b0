//! Fetching engines' expositions: one `GET` per engine on a fresh loopback connection, all
//! at once within a budget. Apart from the text handling so that the network side (hyper,
//! timeouts, cancellation) reads on its own.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::task::JoinSet;

use super::Target;

/// Largest exposition read from one engine; a larger one counts as a failed scrape.
const MAX_BODY: usize = 16 << 20;

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
        let authorization = t.authorization.clone();
        tasks.spawn(async move { (i, fetch(&authority, &path, authorization).await) });
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
async fn fetch(
    authority: &str,
    path: &str,
    authorization: Option<String>,
) -> Result<String, String> {
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| format!("cannot connect to {authority}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    let mut request = http::Request::get(path).header(http::header::HOST, authority);
    if let Some(value) = authorization {
        request = request.header(http::header::AUTHORIZATION, value);
    }
    let request = request
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
    authorization: Option<String>,
    timeout: Duration,
) -> Result<String, String> {
    tokio::time::timeout(timeout, fetch(authority, path, authorization))
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
}
