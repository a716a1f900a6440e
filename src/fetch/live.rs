//! [`LiveHttp`]: the client that calls the network, within the allow lists.
//!
//! One `reqwest` client per distinct allow list (the flow's with the
//! process's), each with a resolver that drops the addresses the list does
//! not allow and a redirect policy that checks every hop, and no proxy (a
//! proxy would resolve names where these checks cannot see). The clients
//! keep their connections alive; at most [`CLIENTS`] are kept.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};

use super::{fill, shown, AllowList, HttpClient, HttpError, HttpRequest, HttpResponse};
use crate::retry::Backoff;

/// The most allow lists a process keeps a client for.
const CLIENTS: usize = 64;

/// The most redirects one request follows.
const MAX_REDIRECTS: usize = 5;

/// The process's side of flows' HTTP requests (`[http]` in flowbot.toml).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Hosts and networks every bot's requests may reach, besides each
    /// flow's `settings.http.allow`.
    pub allow: Vec<String>,
    /// A folder of secrets, one file per name (`SHOP_TOKEN`), read when a
    /// request needs one; `FLOWBOT_SECRET_<NAME>` in the environment wins.
    pub secrets_dir: Option<PathBuf>,
}

/// Where `{{ secret.NAME }}` values come from.
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    dir: Option<PathBuf>,
}

impl Secrets {
    /// Secrets from the environment, then from files in `dir`.
    pub fn new(dir: Option<PathBuf>) -> Secrets {
        Secrets { dir }
    }

    /// A secret's value.
    pub fn get(&self, name: &str) -> Result<String, HttpError> {
        if let Ok(v) = std::env::var(format!("FLOWBOT_SECRET_{name}")) {
            return Ok(v);
        }
        if let Some(dir) = &self.dir {
            if let Ok(v) = std::fs::read_to_string(dir.join(name)) {
                return Ok(v.trim_end_matches(['\r', '\n']).to_owned());
            }
        }
        let where_ = match &self.dir {
            Some(d) => format!(" or the file {}", d.join(name).display()),
            None => String::new(),
        };
        Err(HttpError::Refused(format!(
            "secret `{name}` is not set: set FLOWBOT_SECRET_{name}{where_}"
        )))
    }
}

/// Calls the network for flows' `http:` steps (see the module docs).
pub struct LiveHttp {
    allow: AllowList,
    secrets: Secrets,
    body_bytes: u64,
    clients: Mutex<HashMap<AllowList, reqwest::Client>>,
}

impl std::fmt::Debug for LiveHttp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveHttp")
            .field("allow", &self.allow)
            .field("body_bytes", &self.body_bytes)
            .finish_non_exhaustive()
    }
}

impl LiveHttp {
    /// A client with the process's allow list and secrets, reading at most
    /// `body_bytes` of an answer. A bad `allow` entry is an error.
    pub fn new(config: &HttpConfig, body_bytes: u64) -> Result<LiveHttp, String> {
        let allow =
            AllowList::parse(&config.allow).map_err(|(i, e)| format!("http.allow[{i}]: {e}"))?;
        Ok(LiveHttp {
            allow,
            secrets: Secrets::new(config.secrets_dir.clone()),
            body_bytes,
            clients: Mutex::new(HashMap::new()),
        })
    }

    fn client(&self, allow: &AllowList) -> Result<reqwest::Client, HttpError> {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = clients.get(allow) {
            return Ok(c.clone());
        }
        if clients.len() >= CLIENTS {
            clients.clear();
        }
        let hops = allow.clone();
        let client = reqwest::Client::builder()
            .no_proxy()
            .dns_resolver(Arc::new(Guarded(allow.clone())))
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() >= MAX_REDIRECTS {
                    return attempt.error(Blocked(format!("more than {MAX_REDIRECTS} redirects")));
                }
                let to = attempt.url().clone();
                match hop_allowed(&hops, &to) {
                    Ok(()) => attempt.follow(),
                    Err(e) => attempt.error(Blocked(format!("a redirect to {to}: {e}"))),
                }
            }))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| HttpError::Network(e.to_string()))?;
        clients.insert(allow.clone(), client.clone());
        Ok(client)
    }
}

/// Whether a URL (the first or a redirect's) may be called: its scheme,
/// its host, and its address when written as one.
fn hop_allowed(allow: &AllowList, url: &url::Url) -> Result<(), String> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("scheme `{}` (only http and https)", url.scheme()));
    }
    let host = url.host().ok_or("the URL has no host")?;
    allow.check_host(&host)?;
    match host {
        url::Host::Ipv4(ip) => allow.check_addr(ip.into()),
        url::Host::Ipv6(ip) => allow.check_addr(ip.into()),
        url::Host::Domain(_) => Ok(()),
    }
}

/// A request stopped by a check (found in reqwest's error's sources).
#[derive(Debug)]
struct Blocked(String);

impl std::fmt::Display for Blocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Blocked {}

/// Resolves names the list allows, to the addresses it allows.
struct Guarded(AllowList);

impl Resolve for Guarded {
    fn resolve(&self, name: Name) -> Resolving {
        let allow = self.0.clone();
        Box::pin(async move {
            type BoxError = Box<dyn std::error::Error + Send + Sync>;
            let host = name.as_str().to_owned();
            allow
                .check_host(&url::Host::Domain(host.as_str()))
                .map_err(|e| Box::new(Blocked(e)) as BoxError)?;
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|e| Box::new(e) as BoxError)?
                .collect();
            let mut refused = None;
            let kept: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| match allow.check_addr(a.ip()) {
                    Ok(()) => true,
                    Err(e) => {
                        refused.get_or_insert(e);
                        false
                    }
                })
                .collect();
            if kept.is_empty() {
                let why = refused.unwrap_or_else(|| "no address".into());
                return Err(Box::new(Blocked(format!("`{host}` resolves to {why}"))) as BoxError);
            }
            Ok(Box::new(kept.into_iter()) as Addrs)
        })
    }
}

/// What reqwest's error was, without the URL (which may hold a secret).
fn failure(e: reqwest::Error, timeout: Duration) -> HttpError {
    if e.is_timeout() {
        return HttpError::Timeout(timeout);
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(s) = source {
        if let Some(b) = s.downcast_ref::<Blocked>() {
            return HttpError::Refused(b.0.clone());
        }
        source = s.source();
    }
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    HttpError::Network(text)
}

/// Whether an attempt that ended so is worth another.
fn transient(r: &Result<reqwest::Response, reqwest::Error>) -> bool {
    match r {
        Ok(resp) => matches!(resp.status().as_u16(), 429 | 502 | 503 | 504),
        Err(e) => e.is_timeout() || e.is_connect(),
    }
}

fn fill_json(v: &serde_json::Value, secrets: &Secrets) -> Result<serde_json::Value, HttpError> {
    use serde_json::Value;
    Ok(match v {
        Value::String(s) => Value::String(fill(s, |n| secrets.get(n))?),
        Value::Array(a) => Value::Array(
            a.iter()
                .map(|x| fill_json(x, secrets))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, x)| Ok((k.clone(), fill_json(x, secrets)?)))
                .collect::<Result<_, HttpError>>()?,
        ),
        other => other.clone(),
    })
}

#[async_trait::async_trait]
impl HttpClient for LiveHttp {
    async fn send(&self, request: &HttpRequest) -> Result<HttpResponse, HttpError> {
        let secret = |n: &str| self.secrets.get(n);
        let allow = request.allow.union(&self.allow);
        let mut url = url::Url::parse(&fill(&request.url, secret)?).map_err(|e| {
            HttpError::Refused(format!("`{}` is not a URL: {e}", shown(&request.url)))
        })?;
        hop_allowed(&allow, &url).map_err(HttpError::Refused)?;
        if !request.query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in &request.query {
                pairs.append_pair(k, &fill(v, secret)?);
            }
        }
        let mut headers = HeaderMap::new();
        for (k, v) in &request.headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| HttpError::Refused(format!("`{k}` is not a header name")))?;
            let mut value = HeaderValue::from_str(&fill(v, secret)?).map_err(|_| {
                HttpError::Refused(format!("header `{k}`: its value is not valid in a header"))
            })?;
            value.set_sensitive(v != &shown(v));
            headers.append(name, value);
        }
        let body = match &request.body {
            Some(b) => {
                headers.insert(
                    reqwest::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                Some(serde_json::to_vec(&fill_json(b, &self.secrets)?).unwrap_or_default())
            }
            None => None,
        };
        let method = reqwest::Method::from_bytes(request.method.as_bytes())
            .map_err(|_| HttpError::Refused(format!("`{}` is not a method", request.method)))?;
        let client = self.client(&allow)?;
        let timeout = request.timeout.min(super::MAX_TIMEOUT);
        let retries = if request.idempotent() {
            request.retries
        } else {
            0
        };
        let mut delays = Backoff {
            min_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(2),
            max_attempts: Some(retries + 1),
        }
        .delays();
        let mut resp = loop {
            let mut b = client
                .request(method.clone(), url.clone())
                .headers(headers.clone())
                .timeout(timeout);
            if let Some(body) = &body {
                b = b.body(body.clone());
            }
            let r = b.send().await;
            if transient(&r) {
                if let Some(d) = delays.next() {
                    // Its name, not its URL: a URL may hold what a customer wrote.
                    tracing::debug!(step = %request.name, method = %request.method, delay = ?d, "retrying an http step");
                    tokio::time::sleep(d).await;
                    continue;
                }
            }
            break r.map_err(|e| failure(e, timeout))?;
        };
        let status = resp.status().as_u16();
        if !resp.status().is_success() {
            return Err(HttpError::Status { status });
        }
        if resp.content_length().is_some_and(|n| n > self.body_bytes) {
            return Err(HttpError::TooLarge(self.body_bytes));
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| failure(e, timeout))? {
            if (bytes.len() + chunk.len()) as u64 > self.body_bytes {
                return Err(HttpError::TooLarge(self.body_bytes));
            }
            bytes.extend_from_slice(&chunk);
        }
        let json = if bytes.iter().all(u8::is_ascii_whitespace) {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&bytes).map_err(|e| HttpError::BadJson(e.to_string()))?
        };
        Ok(HttpResponse { status, json })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_come_from_the_environment_then_the_folder() {
        let dir = std::env::temp_dir().join(format!("flowbot-secrets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("FROM_FILE_T1"), "file-value\n").unwrap();
        let s = Secrets::new(Some(dir.clone()));
        assert_eq!(s.get("FROM_FILE_T1").unwrap(), "file-value");
        let e = s.get("NOT_SET_T1").unwrap_err().to_string();
        assert!(e.contains("FLOWBOT_SECRET_NOT_SET_T1"), "{e}");
        assert!(e.contains("NOT_SET_T1"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn bad_process_entries_are_refused_with_their_place() {
        let e = LiveHttp::new(
            &HttpConfig {
                allow: vec!["ok.test".into(), "http://x".into()],
                secrets_dir: None,
            },
            1024,
        )
        .unwrap_err();
        assert!(e.starts_with("http.allow[1]"), "{e}");
    }

    fn request(url: &str, allow: &[&str]) -> HttpRequest {
        HttpRequest {
            name: "t".into(),
            method: "GET".into(),
            url: url.into(),
            query: Vec::new(),
            headers: Vec::new(),
            body: None,
            timeout: Duration::from_secs(2),
            retries: 0,
            allow: Arc::new(AllowList::parse(allow).unwrap()),
        }
    }

    /// A listed name that resolves to a loopback address is refused after
    /// resolution, unless the address is listed too; an unlisted host and a
    /// metadata address are refused before anything is resolved.
    #[tokio::test]
    async fn names_are_checked_again_after_they_resolve() {
        let live = LiveHttp::new(&HttpConfig::default(), 1024).unwrap();
        let e = live
            .send(&request("http://localhost:1/x", &["localhost"]))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, HttpError::Refused(m) if m.contains("loopback")),
            "{e:?}"
        );
        // Listed as addresses too: the connection is tried (and fails).
        let e = live
            .send(&request(
                "http://localhost:1/x",
                &["localhost", "127.0.0.1", "::1"],
            ))
            .await
            .unwrap_err();
        assert!(matches!(e, HttpError::Network(_)), "{e:?}");
        let e = live
            .send(&request("http://169.254.169.254/latest", &["localhost"]))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, HttpError::Refused(m) if m.contains("169.254.169.254")),
            "{e:?}"
        );
        let e = live
            .send(&request("http://example.org/", &["localhost"]))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, HttpError::Refused(m) if m.contains("example.org")),
            "{e:?}"
        );
        let e = live
            .send(&request("file:///etc/passwd", &["localhost"]))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, HttpError::Refused(m) if m.contains("scheme")),
            "{e:?}"
        );
    }
}
