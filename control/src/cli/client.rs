//! A small HTTP/1.1 client for the control plane's API, which turns its error bodies into
//! readable messages.

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::path::Path;

pub struct Client {
    base: String,
    token: Option<String>,
    http: hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>,
}

pub struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Reply {
    pub fn json<T: DeserializeOwned>(&self) -> anyhow::Result<T> {
        serde_json::from_slice(&self.body)
            .context("the control plane's answer is not the JSON expected")
    }

    /// Fails with the server's reason unless the status is a success.
    pub fn ok(self) -> anyhow::Result<Reply> {
        if self.status.is_success() {
            return Ok(self);
        }
        if self.status == StatusCode::UNAUTHORIZED {
            bail!("unauthorized: give --token-file FILE or set OUTRIGGER_TOKEN");
        }
        let reason = serde_json::from_slice::<Value>(&self.body)
            .ok()
            .and_then(|v| {
                v.get("reason")
                    .or_else(|| v.get("error"))
                    .and_then(|r| r.as_str().map(str::to_string))
            })
            .unwrap_or_else(|| String::from_utf8_lossy(&self.body).into_owned());
        bail!("{}: {reason}", self.status)
    }
}

impl Client {
    pub fn new(base: &str, token_file: Option<&Path>) -> anyhow::Result<Self> {
        let uri: Uri = base
            .parse()
            .with_context(|| format!("--control-plane {base:?} is not a URL"))?;
        if uri.scheme_str() != Some("http") || uri.authority().is_none() {
            bail!("--control-plane must be an http:// URL, e.g. http://127.0.0.1:15010");
        }
        let token = match token_file {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read --token-file {}", p.display()))?
                    .trim()
                    .to_string(),
            ),
            None => std::env::var("OUTRIGGER_TOKEN")
                .ok()
                .map(|t| t.trim().to_string()),
        }
        .filter(|t| !t.is_empty());
        Ok(Self {
            base: base.trim_end_matches('/').to_string(),
            token,
            http: hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http(),
        })
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<(Bytes, &str)>,
    ) -> anyhow::Result<Reply> {
        let url = format!("{}{path}", self.base);
        let mut req = Request::builder().method(method.clone()).uri(&url);
        if let Some(t) = &self.token {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = match body {
            Some((bytes, content_type)) => req
                .header(http::header::CONTENT_TYPE, content_type)
                .body(Full::new(bytes)),
            None => req.body(Full::new(Bytes::new())),
        }
        .context("building the request")?;
        let resp = self
            .http
            .request(req)
            .await
            .map_err(|e| anyhow!("cannot reach the control plane at {}: {e}", self.base))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| anyhow!("reading the answer to {method} {path}: {e}"))?
            .to_bytes();
        Ok(Reply { status, body })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send(Method::GET, path, None).await?.ok()?.json()
    }

    pub async fn send_json(
        &self,
        method: Method,
        path: &str,
        body: &Value,
    ) -> anyhow::Result<Reply> {
        let bytes = Bytes::from(serde_json::to_vec(body)?);
        self.send(method, path, Some((bytes, "application/json")))
            .await
    }
}
