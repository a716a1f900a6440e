//! `http:` steps and `settings.http`: the request's templates, its method,
//! timeout and retries, the pointers it saves by, and its host against the
//! allow list, each checked where it is written.

use super::*;
use crate::fetch::{pointer_error, AllowList, MAX_TIMEOUT};

const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"];

/// Where `secret` is read in a template: inside `{{ }}` or `{% %}` only.
static SECRET_USE: std::sync::LazyLock<Regex> =
    std::sync::LazyLock::new(|| Regex::new(r"(?s)\{\{.*?\}\}|\{%.*?%\}").expect("valid"));
static SECRET_NAME: std::sync::LazyLock<Regex> = std::sync::LazyLock::new(|| {
    Regex::new(r"\bsecret\b(\s*\.\s*([A-Za-z_][A-Za-z0-9_]*))?").expect("valid")
});

/// The secrets a template's source reads: each `secret.NAME` (`Ok`), or
/// a use of `secret` that is not of that form (`Err`: outside an `http:`
/// step, that is a variable of that name).
pub(super) fn secrets_in(src: &str) -> Vec<Result<String, ()>> {
    let mut out = Vec::new();
    for block in SECRET_USE.find_iter(src) {
        for cap in SECRET_NAME.captures_iter(block.as_str()) {
            out.push(cap.get(2).map(|m| m.as_str().to_owned()).ok_or(()));
        }
    }
    out
}

impl Compiler<'_> {
    /// `settings.http`.
    pub(super) fn http_settings(
        &mut self,
        r: &mut Reporter<'_>,
        s: Option<&model::HttpSettings>,
    ) -> Arc<AllowList> {
        let Some(s) = s else {
            return Arc::default();
        };
        match AllowList::parse(&s.allow) {
            Ok(l) => Arc::new(l),
            Err((i, e)) => {
                r.error(&join_index("settings.http.allow", i), e, None);
                Arc::default()
            }
        }
    }

    /// A template of an `http:` step, where `{{ secret.NAME }}` may be used.
    fn http_template(&mut self, r: &mut Reporter<'_>, path: &str, src: &str) -> Option<Tpl> {
        for s in secrets_in(src) {
            if s.is_err() {
                r.error(
                    path,
                    "a secret is read as `secret.NAME`",
                    Some("write `{{ secret.SHOP_TOKEN }}`: the value comes from FLOWBOT_SECRET_SHOP_TOKEN or the secrets folder".into()),
                );
                return None;
            }
        }
        self.in_http = true;
        let t = self.template(r, path, src);
        self.in_http = false;
        t
    }

    fn body(&mut self, r: &mut Reporter<'_>, path: &str, v: &serde_json::Value) -> Option<Body> {
        use serde_json::Value;
        Some(match v {
            Value::String(s) => Body::Text(self.http_template(r, path, s)?),
            Value::Array(a) => Body::List(
                a.iter()
                    .enumerate()
                    .map(|(i, x)| self.body(r, &join_index(path, i), x))
                    .collect::<Option<_>>()?,
            ),
            Value::Object(m) => Body::Map(
                m.iter()
                    .map(|(k, x)| Some((k.as_str().into(), self.body(r, &join_key(path, k), x)?)))
                    .collect::<Option<_>>()?,
            ),
            other => Body::Value(other.clone()),
        })
    }

    /// `http:` of state `state` (its full name).
    pub(super) fn http(
        &mut self,
        r: &mut Reporter<'_>,
        path: &str,
        state: &str,
        h: &model::HttpDoc,
    ) -> Option<Box<HttpNode>> {
        let p = |k: &str| join_key(path, k);
        let mut ok = true;
        let name: Box<str> = h.name.as_deref().unwrap_or(state).into();
        if name.is_empty() {
            r.error(&p("name"), "an `http:` step's name cannot be empty", None);
            ok = false;
        } else if self.http_names.contains(&name) {
            r.error(
                &p("name"),
                format!("two `http:` steps are named `{name}`"),
                Some("give each its own `name:`: tests' `mocks:` answer a request by it".into()),
            );
            ok = false;
        }
        self.http_names.push(name.clone());
        let method = match &h.method {
            None if h.json.is_some() => "POST".to_owned(),
            None => "GET".to_owned(),
            Some(m) => m.to_ascii_uppercase(),
        };
        if !METHODS.contains(&method.as_str()) {
            r.error(
                &p("method"),
                format!("`{method}` is not a method an `http:` step makes"),
                Some(format!("use one of {}", METHODS.join(", "))),
            );
            ok = false;
        } else if h.json.is_some() && matches!(method.as_str(), "GET" | "HEAD") {
            r.error(
                &p("json"),
                format!("a {method} request has no body"),
                Some("use `method: POST` (or PUT, PATCH), or send the values as `query:`".into()),
            );
            ok = false;
        }
        let url = self.http_template(r, &p("url"), &h.url);
        if let Some(src) = url.as_ref().map(|t| t.source().to_owned()) {
            ok &= self.check_url(r, &p("url"), &src);
        }
        let query = h
            .query
            .iter()
            .filter_map(|(k, v)| {
                Some((
                    k.as_str().into(),
                    self.http_template(r, &join_key(&p("query"), k), v)?,
                ))
            })
            .collect();
        let mut headers = Vec::new();
        for (k, v) in &h.headers {
            let at = join_key(&p("headers"), k);
            if k.is_empty()
                || !k
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
            {
                r.key_error(&at, format!("`{k}` is not a header name"), None);
                ok = false;
                continue;
            }
            if let Some(t) = self.http_template(r, &at, v) {
                headers.push((k.as_str().into(), t));
            }
        }
        let body = h.json.as_ref().and_then(|j| self.body(r, &p("json"), j));
        let timeout_ms = match &h.timeout {
            None => crate::fetch::DEFAULT_TIMEOUT.as_millis() as u32,
            Some(t) => match humantime::parse_duration(t) {
                Ok(d) if d.is_zero() || d > MAX_TIMEOUT => {
                    r.error(
                        &p("timeout"),
                        format!("`{t}`: a timeout is more than 0 and at most 30s"),
                        None,
                    );
                    ok = false;
                    0
                }
                Ok(d) => d.as_millis() as u32,
                Err(e) => {
                    r.error(
                        &p("timeout"),
                        format!("`{t}` is not a duration: {e}"),
                        Some("write it like `5s` or `1500ms`".into()),
                    );
                    ok = false;
                    0
                }
            },
        };
        let retries = h.retries.unwrap_or(1);
        if retries > 3 {
            r.error(&p("retries"), format!("{retries} retries: at most 3"), None);
            ok = false;
        }
        let mut save = Vec::new();
        for (var, pointer) in &h.save {
            let at = join_key(&p("save"), var);
            if !is_identifier(var) {
                r.key_error(&at, format!("`{var}` is not a variable name"), None);
                ok = false;
            } else if let Some(e) = pointer_error(pointer) {
                r.error(
                    &at,
                    e,
                    Some("a JSON pointer: `/order/status`, `/items/0/name`".into()),
                );
                ok = false;
            } else {
                save.push((Arc::from(var.as_str()), pointer.as_str().into()));
            }
        }
        let status = match &h.status {
            Some(v) if !is_identifier(v) => {
                r.error(&p("status"), format!("`{v}` is not a variable name"), None);
                ok = false;
                None
            }
            other => other.as_deref().map(Arc::from),
        };
        let on_error = match &h.on_error {
            Some(s) => {
                let id = self.state_ref(r, &p("on_error"), s);
                ok &= id.is_some();
                id
            }
            None => None,
        };
        let url = url?;
        if !ok || body.is_none() && h.json.is_some() {
            return None;
        }
        Some(Box::new(HttpNode {
            name,
            method: method.into(),
            url,
            query,
            headers,
            body,
            timeout_ms,
            retries,
            save,
            status,
            on_error,
        }))
    }

    /// The parts of a URL that are written out: its scheme, and its host
    /// against `settings.http.allow` (a warning: the process's list may
    /// name it).
    fn check_url(&mut self, r: &mut Reporter<'_>, path: &str, url: &str) -> bool {
        let fixed = url
            .split("{{")
            .next()
            .unwrap_or("")
            .split("{%")
            .next()
            .unwrap_or("");
        let Some((scheme, rest)) = fixed.split_once("://") else {
            if fixed.len() == url.len() || fixed.contains(':') {
                r.error(
                    path,
                    format!("`{url}` is not an http or https URL"),
                    Some("write it in full: `https://api.example.com/orders/{{ id }}`".into()),
                );
                return false;
            }
            return true;
        };
        if !matches!(scheme.to_ascii_lowercase().as_str(), "http" | "https") {
            r.error(
                path,
                format!("scheme `{scheme}`: an `http:` step calls http or https"),
                None,
            );
            return false;
        }
        // The host is known when it ends before the first template.
        let host_done = fixed.len() == url.len() || rest.contains(['/', '?', '#']);
        if !host_done {
            return true;
        }
        let upto = rest
            .find(['/', '?', '#'])
            .map_or(fixed.len(), |i| scheme.len() + 3 + i);
        match url::Url::parse(&fixed[..upto]) {
            Err(e) => {
                r.error(path, format!("`{url}` is not a URL: {e}"), None);
                false
            }
            Ok(u) => {
                if let Some(host) = u.host() {
                    if let Err(e) = self.http_allow.check_host(&host) {
                        let host = host.to_string();
                        r.warning(
                            path,
                            e,
                            Some(format!("add `{host}` to settings.http.allow (or to the process's http.allow in flowbot.toml), or it is refused when called")),
                        );
                    }
                }
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::secrets_in;

    #[test]
    fn secrets_are_found_inside_template_syntax_only() {
        assert_eq!(
            secrets_in("Bearer {{ secret.SHOP_TOKEN }} and {{secret . B}}"),
            vec![Ok("SHOP_TOKEN".to_owned()), Ok("B".to_owned())]
        );
        assert_eq!(secrets_in("my secret. {{ name }}"), vec![]);
        assert_eq!(secrets_in("{{ secret['X'] }}"), vec![Err(())]);
        assert!(secrets_in("{{ secrets.X }}").is_empty());
    }
}
