//! Health probes: `GET` of the engine's health path (its profile's: `/health`, or
//! `/v1/models` for a server without one) on its loopback port.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// A small HTTP client for probes; it never goes through a proxy (engines are on loopback).
#[derive(Clone)]
pub struct Prober {
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Default for Prober {
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        Prober {
            client: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(1)
                .build(connector),
        }
    }
}

impl Prober {
    /// True when `GET http://127.0.0.1:{port}{path}` answers 200 within `timeout`.
    pub async fn healthy(&self, port: u16, path: &str, timeout: Duration) -> bool {
        let uri = format!("http://127.0.0.1:{port}{path}");
        let Ok(uri) = uri.parse::<hyper::Uri>() else {
            return false;
        };
        match tokio::time::timeout(timeout, self.client.get(uri)).await {
            Ok(Ok(resp)) => resp.status() == hyper::StatusCode::OK,
            _ => false,
        }
    }
}

impl Prober {
    /// The engine's own `/v1/models` entries (`data`), or `None` if it does not answer them
    /// within `timeout`. `key` is the engine's own API key, when its params set one.
    pub async fn models(
        &self,
        port: u16,
        key: Option<&str>,
        timeout: Duration,
    ) -> Option<Vec<serde_json::Value>> {
        use http_body_util::BodyExt;
        let mut req = hyper::Request::get(format!("http://127.0.0.1:{port}/v1/models"));
        if let Some(key) = key {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {key}"));
        }
        let req = req.body(Empty::<Bytes>::new()).ok()?;
        let fetch = async {
            let resp = self.client.request(req).await.ok()?;
            if resp.status() != hyper::StatusCode::OK {
                return None;
            }
            let body = http_body_util::Limited::new(resp.into_body(), 4 << 20)
                .collect()
                .await
                .ok()?
                .to_bytes();
            let list: serde_json::Value = serde_json::from_slice(&body).ok()?;
            list.get("data")?.as_array().cloned()
        };
        tokio::time::timeout(timeout, fetch).await.ok().flatten()
    }
}
