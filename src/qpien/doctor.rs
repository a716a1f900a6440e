//! `flowbot doctor`: checks what flowbot assumes about Qpien against a live
//! account, with the same configuration as `flowbot run`, and says what to
//! change.
//!
//! In order: get a token (with the configured dialect's document, else the
//! other's) and learn which `Authorization` form the server takes; ask for the
//! schema by introspection where allowed and diff it against the dialect's
//! schema, type by type; validate every document in use (built-in or from
//! `qpien.documents_dir`) against the live schema with apollo-compiler; make one
//! harmless call per operation to learn missing scopes by name (reads read one
//! item; writes name a conversation that does not exist, so nothing is
//! created); report how results are wrapped and how `X-RateLimit-*` are sent;
//! and end with the configuration lines to set. It talks HTTP directly (not
//! through [`QpienClient`](super::QpienClient)) so that it can try what the
//! configuration does not say.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use serde_json::{json, Value};

use super::config::{AuthScheme, Dialect, QpienConfig};
use super::dialect;
use super::documents::{Documents, Operation};
use super::error::QpienError;
use super::response::{interpret, Failure};
use super::types::Page;

/// How one check went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Fine.
    Ok,
    /// Worth knowing; the bot can run.
    Note,
    /// The bot cannot run (or cannot do this) until it is fixed.
    Problem,
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Finding {
    /// How it went.
    pub status: Status,
    /// What was checked.
    pub topic: String,
    /// What was found.
    pub detail: String,
}

/// What `doctor` found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Every finding, in order.
    pub findings: Vec<Finding>,
    /// Configuration lines to set (`qpien.dialect = "external"`).
    pub settings: Vec<String>,
    /// The dialect whose documents suit the account.
    pub dialect: Option<Dialect>,
    /// The SDL the server gave by introspection.
    pub live_schema: Option<String>,
    /// The account's approved WhatsApp templates, when they could be read.
    pub templates: Option<Vec<crate::flow::TemplateInfo>>,
}

impl Report {
    fn push(&mut self, status: Status, topic: &str, detail: impl Into<String>) {
        self.findings.push(Finding {
            status,
            topic: topic.to_owned(),
            detail: detail.into(),
        });
    }

    /// Whether the bot can run as configured (nothing is a problem).
    pub fn ok(&self) -> bool {
        self.findings.iter().all(|f| f.status != Status::Problem)
    }

    /// The report as text, with the configuration to set at the end.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for f in &self.findings {
            let mark = match f.status {
                Status::Ok => "ok  ",
                Status::Note => "note",
                Status::Problem => "FAIL",
            };
            let _ = writeln!(out, "[{mark}] {}: {}", f.topic, f.detail);
        }
        if self.settings.is_empty() {
            out.push_str("\nNothing to change in the configuration.\n");
        } else {
            out.push_str("\nSet in flowbot.toml (or as FLOWBOT_... variables):\n");
            for s in &self.settings {
                let _ = writeln!(out, "  {s}");
            }
        }
        out.push_str(if self.ok() {
            "\nThe bot can run with this account.\n"
        } else {
            "\nThe bot cannot run as configured: see FAIL above.\n"
        });
        out
    }
}

/// One raw answer.
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
    /// The body was not JSON (`body` is then null).
    not_json: bool,
}

impl Answer {
    /// Why this is no GraphQL endpoint's answer, if it is none: a 404 or
    /// 405, a web page, something not JSON, JSON with neither `data` nor
    /// `errors`. `None`: a GraphQL answer (perhaps an error).
    fn not_graphql(&self, endpoint: &str) -> Option<String> {
        let kind = self
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        let fix = "check qpien.endpoint (Qpien's is https://api.qpien.com/api/v1; \
                   `flowbot sim` prints its own)";
        if matches!(self.status, 404 | 405) {
            return Some(format!(
                "{endpoint} answered {}: there is no GraphQL endpoint at this address: {fix}",
                self.status
            ));
        }
        if kind.contains("html") {
            return Some(format!(
                "{endpoint} answered a web page ({}, status {}), not GraphQL: {fix}",
                kind, self.status
            ));
        }
        if self.not_json {
            return Some(format!(
                "{endpoint} answered something that is not JSON (status {}, `{}`): {fix}",
                self.status,
                if kind.is_empty() {
                    "no content-type"
                } else {
                    &kind
                }
            ));
        }
        let graphql = self.body.get("data").is_some() || self.body.get("errors").is_some();
        (!graphql).then(|| {
            format!(
                "{endpoint} answered JSON that is not a GraphQL response (no `data`, no `errors`; status {}): {fix}",
                self.status
            )
        })
    }
}

struct Probe<'a> {
    http: reqwest::Client,
    config: &'a QpienConfig,
}

impl Probe<'_> {
    async fn post(
        &self,
        query: &str,
        variables: Value,
        auth: Option<String>,
    ) -> Result<Answer, String> {
        let mut req = self
            .http
            .post(&self.config.endpoint)
            .header(CONTENT_TYPE, "application/json")
            .body(json!({"query": query, "variables": variables}).to_string());
        if let Some(a) = auth {
            req = req.header(AUTHORIZATION, a);
        }
        let r = req.send().await.map_err(|e| e.to_string())?;
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let bytes = super::client::read_limited(r, self.config.max_response_bytes)
            .await
            .map_err(|e| match e {
                super::client::Limited::TooLarge(n) => format!(
                    "the answer is larger than {n} bytes (qpien.max_response_bytes); not read"
                ),
                super::client::Limited::Failed(e) => e.to_string(),
            })?;
        let body = serde_json::from_slice(&bytes);
        Ok(Answer {
            status,
            headers,
            not_json: body.is_err(),
            body: body.unwrap_or(Value::Null),
        })
    }
}

fn header(v: &AuthScheme, token: &str) -> String {
    match v {
        AuthScheme::Bearer => format!("Bearer {token}"),
        AuthScheme::Bare => token.to_owned(),
    }
}

fn other(d: Dialect) -> Dialect {
    match d {
        Dialect::Documented => Dialect::External,
        Dialect::External => Dialect::Documented,
    }
}

/// The documents `config` uses, and a name saying where they come from.
fn documents_in_use(config: &QpienConfig, dialect: Dialect) -> Result<Documents, QpienError> {
    match &config.documents_dir {
        Some(dir) => Documents::with_overrides(dir, dialect),
        None => Ok(Documents::embedded(dialect)),
    }
}

/// The standard introspection query (the parts the SDL needs).
const INTROSPECTION: &str = r#"query IntrospectionQuery {
  __schema {
    queryType { name } mutationType { name }
    types {
      kind name
      fields(includeDeprecated: true) { name args { name type { ...T } } type { ...T } }
      inputFields { name type { ...T } }
      enumValues(includeDeprecated: true) { name }
      possibleTypes { name }
    }
  }
}
fragment T on __Type { kind name ofType { kind name ofType { kind name ofType { kind name ofType { kind name } } } } }"#;

fn type_ref(t: &Value) -> String {
    match t["kind"].as_str() {
        Some("NON_NULL") => format!("{}!", type_ref(&t["ofType"])),
        Some("LIST") => format!("[{}]", type_ref(&t["ofType"])),
        _ => t["name"].as_str().unwrap_or("Unknown").to_owned(),
    }
}

/// An SDL from an introspection answer (`data.__schema`).
pub fn sdl_from_introspection(schema: &Value) -> String {
    let mut out = String::new();
    let roots = [
        ("query", &schema["queryType"]["name"]),
        ("mutation", &schema["mutationType"]["name"]),
    ];
    let named: Vec<(&str, &str)> = roots
        .iter()
        .filter_map(|(k, v)| v.as_str().map(|n| (*k, n)))
        .collect();
    if named.iter().any(|(k, n)| !n.eq_ignore_ascii_case(k)) {
        out.push_str("schema {\n");
        for (k, n) in &named {
            let _ = writeln!(out, "  {k}: {n}");
        }
        out.push_str("}\n\n");
    }
    for t in schema["types"].as_array().into_iter().flatten() {
        let name = t["name"].as_str().unwrap_or("");
        if name.starts_with("__") {
            continue;
        }
        match t["kind"].as_str() {
            Some("SCALAR") if !["String", "Int", "Float", "Boolean", "ID"].contains(&name) => {
                let _ = writeln!(out, "scalar {name}\n");
            }
            Some(kind @ ("OBJECT" | "INTERFACE" | "INPUT_OBJECT")) => {
                let word = match kind {
                    "OBJECT" => "type",
                    "INTERFACE" => "interface",
                    _ => "input",
                };
                let list = if kind == "INPUT_OBJECT" {
                    &t["inputFields"]
                } else {
                    &t["fields"]
                };
                let _ = writeln!(out, "{word} {name} {{");
                for f in list.as_array().into_iter().flatten() {
                    let args: Vec<String> = f["args"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|a| {
                            format!(
                                "{}: {}",
                                a["name"].as_str().unwrap_or(""),
                                type_ref(&a["type"])
                            )
                        })
                        .collect();
                    let args = if args.is_empty() {
                        String::new()
                    } else {
                        format!("({})", args.join(", "))
                    };
                    let _ = writeln!(
                        out,
                        "  {}{args}: {}",
                        f["name"].as_str().unwrap_or(""),
                        type_ref(&f["type"])
                    );
                }
                out.push_str("}\n\n");
            }
            Some("ENUM") => {
                let values: Vec<&str> = t["enumValues"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v["name"].as_str())
                    .collect();
                let _ = writeln!(out, "enum {name} {{ {} }}\n", values.join(" "));
            }
            Some("UNION") => {
                let members: Vec<&str> = t["possibleTypes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v["name"].as_str())
                    .collect();
                let _ = writeln!(out, "union {name} = {}\n", members.join(" | "));
            }
            _ => {}
        }
    }
    out
}

/// Types and fields of an SDL: type -> field -> type (with arguments).
fn shape(sdl: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    use apollo_compiler::schema::ExtendedType;
    let schema = match apollo_compiler::Schema::parse(sdl, "schema.graphql") {
        Ok(s) => s,
        Err(e) => e.partial,
    };
    let mut out = BTreeMap::new();
    for (name, ty) in &schema.types {
        if name.starts_with("__") || ty.is_built_in() {
            continue;
        }
        let fields = match ty {
            ExtendedType::Object(o) => o
                .fields
                .iter()
                .map(|(f, d)| {
                    let args: Vec<String> = d
                        .arguments
                        .iter()
                        .map(|a| format!("{}: {}", a.name, a.ty))
                        .collect();
                    let ty = if args.is_empty() {
                        d.ty.to_string()
                    } else {
                        format!("({}) {}", args.join(", "), d.ty)
                    };
                    (f.to_string(), ty)
                })
                .collect(),
            ExtendedType::InputObject(o) => o
                .fields
                .iter()
                .map(|(f, d)| (f.to_string(), d.ty.to_string()))
                .collect(),
            _ => BTreeMap::new(),
        };
        out.insert(name.to_string(), fields);
    }
    out
}

/// How `ours` differs from `live`, type by type: what flowbot expects and the
/// account does not have, or has with another type or other arguments.
pub fn schema_diff(ours: &str, live: &str) -> Vec<String> {
    let (ours, live) = (shape(ours), shape(live));
    let mut out = Vec::new();
    for (ty, fields) in &ours {
        let Some(theirs) = live.get(ty) else {
            out.push(format!("type {ty}: not in the account's schema"));
            continue;
        };
        for (f, t) in fields {
            match theirs.get(f) {
                None => out.push(format!("{ty}.{f}: not in the account's schema")),
                Some(lt) if lt.trim_end_matches('!') != t.trim_end_matches('!') => {
                    out.push(format!("{ty}.{f}: ours is {t}, the account's is {lt}"))
                }
                Some(_) => {}
            }
        }
    }
    out
}

fn scope_of(body: &Value) -> Option<String> {
    let from_errors = body["errors"][0]["extensions"]["requiredScope"].as_str();
    let from_envelope = body["data"]
        .as_object()
        .and_then(|d| d.values().next())
        .and_then(|v| v["requiredScope"].as_str());
    from_errors.or(from_envelope).map(str::to_owned)
}

/// Runs every check against the account `config` points at.
pub async fn run(config: &QpienConfig) -> Report {
    let mut report = Report::default();
    let http = match reqwest::Client::builder()
        .timeout(config.request_timeout)
        .user_agent(concat!("flowbot-doctor/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(h) => h,
        Err(e) => {
            report.push(Status::Problem, "HTTP client", e.to_string());
            return report;
        }
    };
    let probe = Probe { http, config };
    if config.client_id.is_empty() || config.client_secret.is_empty() {
        report.push(
            Status::Problem,
            "API key",
            "no client id or secret: set FLOWBOT_QPIEN__CLIENT_ID and FLOWBOT_QPIEN__CLIENT_SECRET",
        );
        return report;
    }
    // 1. A token, with the configured dialect's document, else the other's.
    let credentials = json!({"input": {
        "clientId": config.client_id.expose(),
        "clientSecret": config.client_secret.expose(),
    }});
    let mut token = None;
    let mut dialect = config.dialect;
    for d in [config.dialect, other(config.dialect)] {
        let docs = match documents_in_use(config, d) {
            Ok(docs) => docs,
            Err(e) => {
                report.push(Status::Problem, "documents_dir", e.to_string());
                return report;
            }
        };
        let answer = match probe
            .post(
                docs.get(Operation::GenerateOAuthToken),
                credentials.clone(),
                None,
            )
            .await
        {
            Ok(a) => a,
            Err(e) => {
                report.push(
                    Status::Problem,
                    "endpoint",
                    format!("{} does not answer: {e}", config.endpoint),
                );
                return report;
            }
        };
        // A wrong address is told apart from a wrong document.
        if let Some(why) = answer.not_graphql(&config.endpoint) {
            report.push(Status::Problem, "endpoint", why);
            return report;
        }
        match interpret(Operation::GenerateOAuthToken, answer.body.clone()) {
            Ok(v) => {
                let t = v["accessToken"]
                    .as_str()
                    .or_else(|| v["token"].as_str())
                    .or_else(|| v.as_str());
                if let Some(t) = t {
                    token = Some(t.to_owned());
                    dialect = d;
                    break;
                }
            }
            Err(Failure::Error(QpienError::InvalidClient(m)))
            | Err(Failure::Auth { message: m, .. }) => {
                report.push(
                    Status::Problem,
                    "token",
                    format!("the API key was refused ({m}): check the client id and secret"),
                );
                return report;
            }
            Err(_) => {}
        }
    }
    let Some(token) = token else {
        report.push(
            Status::Problem,
            "token",
            "the endpoint speaks GraphQL, but generateOAuthToken failed with both built-in \
             documents: replace it in qpien.documents_dir (see --write-documents)",
        );
        return report;
    };
    report.dialect = Some(dialect);
    report.push(
        Status::Ok,
        "token",
        format!("obtained with the {} dialect's document", dialect.as_str()),
    );
    if dialect != config.dialect {
        report.push(
            Status::Problem,
            "dialect",
            format!(
                "configured `{}`, the account speaks `{}`",
                config.dialect.as_str(),
                dialect.as_str()
            ),
        );
        report
            .settings
            .push(format!("qpien.dialect = \"{}\"", dialect.as_str()));
    }
    let docs = match documents_in_use(config, dialect) {
        Ok(d) => d,
        Err(e) => {
            report.push(Status::Problem, "documents_dir", e.to_string());
            return report;
        }
    };
    // 2. Which Authorization form the server takes (on a harmless read).
    let list_doc = docs.get(Operation::GetConversationList);
    let list_vars = json!({"page": 1, "limit": 1});
    let mut accepted = Vec::new();
    let mut first_read = None;
    for scheme in [AuthScheme::Bearer, AuthScheme::Bare] {
        if let Ok(a) = probe
            .post(list_doc, list_vars.clone(), Some(header(&scheme, &token)))
            .await
        {
            let auth_failed = matches!(
                interpret(Operation::GetConversationList, a.body.clone()),
                Err(Failure::Auth { .. })
            ) || a.status == 401;
            if !auth_failed {
                accepted.push(scheme);
                first_read.get_or_insert(a);
            }
        }
    }
    let configured = config.auth();
    let name = |s: &AuthScheme| match s {
        AuthScheme::Bearer => "bearer",
        AuthScheme::Bare => "bare",
    };
    match accepted.as_slice() {
        [] => report.push(
            Status::Problem,
            "auth scheme",
            "the token was refused both as `Bearer <token>` and bare",
        ),
        list => {
            let names: Vec<&str> = list.iter().map(name).collect();
            if list.contains(&configured) {
                report.push(
                    Status::Ok,
                    "auth scheme",
                    format!("the server takes: {}", names.join(", ")),
                );
            } else {
                report.push(
                    Status::Problem,
                    "auth scheme",
                    format!(
                        "configured `{}`, the server takes only `{}`",
                        name(&configured),
                        names.join(", ")
                    ),
                );
            }
            // The scheme in force once the suggested dialect is set.
            let in_force = config.auth_scheme.unwrap_or(dialect.auth_scheme());
            if let Some(s) = list.first().filter(|_| !list.contains(&in_force)) {
                report
                    .settings
                    .push(format!("qpien.auth_scheme = \"{}\"", name(s)));
            }
        }
    }
    let auth = header(accepted.first().unwrap_or(&configured), &token);
    // 3. The envelope and the rate-limit headers, from the first read.
    if let Some(a) = &first_read {
        let root = a.body["data"]
            .as_object()
            .and_then(|d| d.values().next())
            .cloned()
            .unwrap_or(Value::Null);
        let enveloped = root.get("success").is_some();
        report.push(
            Status::Ok,
            "answers",
            if enveloped {
                "results come in a {success, code, message, data} envelope"
            } else {
                "results come bare, under data.<operation>"
            },
        );
        let h = |n: &str| {
            a.headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        match (
            h("x-ratelimit-limit"),
            h("x-ratelimit-remaining"),
            h("x-ratelimit-reset"),
        ) {
            (limit, Some(remaining), Some(reset)) => {
                let form = match reset.parse::<f64>() {
                    Ok(v) if v >= 1e12 => "a Unix time in milliseconds",
                    Ok(v) if v >= 1e9 => "a Unix time in seconds",
                    Ok(_) => "seconds until the reset",
                    Err(_) => "unreadable",
                };
                report.push(
                    Status::Ok,
                    "rate limit",
                    format!(
                        "X-RateLimit-Limit {}, Remaining {remaining}, Reset {reset} ({form}); flowbot reads every form",
                        limit.as_deref().unwrap_or("(none)")
                    ),
                );
                if let Some(l) = limit.and_then(|l| l.parse::<u32>().ok()) {
                    if l != config.rate_limit.requests {
                        report.settings.push(format!(
                            "qpien.rate_limit.requests = {l}  # the account's limit per window"
                        ));
                    }
                }
            }
            _ => report.push(
                Status::Note,
                "rate limit",
                "no X-RateLimit-* headers: flowbot keeps to qpien.rate_limit and waits \
                 qpien.rate_limit.default_reset after a 429",
            ),
        }
    }
    // 4. The schema, by introspection, and the documents against it.
    let ours = dialect::schema(dialect);
    match probe.post(INTROSPECTION, json!({}), Some(auth.clone())).await {
        Ok(a) if a.body["data"]["__schema"].is_object() => {
            let live = sdl_from_introspection(&a.body["data"]["__schema"]);
            let diff = schema_diff(ours, &live);
            if diff.is_empty() {
                report.push(
                    Status::Ok,
                    "schema",
                    "every type and field flowbot's schema names is in the account's, with the same type",
                );
            } else {
                report.push(
                    Status::Note,
                    "schema",
                    format!(
                        "{} difference(s) from flowbot's schema:\n    {}",
                        diff.len(),
                        diff.join("\n    ")
                    ),
                );
            }
            match apollo_compiler::Schema::parse_and_validate(&live, "live.graphql") {
                Ok(schema) => {
                    let mut bad = Vec::new();
                    for op in Operation::ALL {
                        if let Err(e) = apollo_compiler::ExecutableDocument::parse_and_validate(
                            &schema,
                            docs.get(op),
                            format!("{}.graphql", op.name()),
                        ) {
                            bad.push(format!("{}: {}", op.name(), e.errors));
                        }
                    }
                    let from_files: Vec<&str> = Operation::ALL
                        .into_iter()
                        .filter(|op| docs.is_overridden(*op))
                        .map(Operation::name)
                        .collect();
                    let source = if from_files.is_empty() {
                        String::from("built-in")
                    } else {
                        format!("from qpien.documents_dir: {}", from_files.join(", "))
                    };
                    if bad.is_empty() {
                        report.push(
                            Status::Ok,
                            "documents",
                            format!(
                                "every document in use is valid against the account's schema ({source})"
                            ),
                        );
                    } else {
                        report.push(
                            Status::Problem,
                            "documents",
                            format!(
                                "invalid against the account's schema:\n    {}\n    fix them in \
                                 qpien.documents_dir (start from --write-documents DIR)",
                                bad.join("\n    ")
                            ),
                        );
                        if config.documents_dir.is_none() {
                            report
                                .settings
                                .push("qpien.documents_dir = \"qpien-documents\"  # flowbot doctor --write-documents qpien-documents".into());
                        }
                    }
                    if config.batch.max > 1 {
                        let (status, detail) = shared_requests(&schema, &docs);
                        report.push(status, "shared requests", detail);
                    }
                }
                Err(e) => report.push(
                    Status::Note,
                    "schema",
                    format!("the introspected schema does not validate: {}", e.errors),
                ),
            }
            report.live_schema = Some(live);
        }
        _ => report.push(
            Status::Note,
            "schema",
            "introspection is not allowed: the schema and documents are checked by the calls below only",
        ),
    }
    // 5. One harmless call per operation: scopes, and documents the server refuses.
    let probe_conv = "flowbot-doctor-probe-000000000000";
    let conversation = first_read
        .as_ref()
        .and_then(|a| interpret(Operation::GetConversationList, a.body.clone()).ok())
        .and_then(|v| v["docs"][0]["_id"].as_str().map(str::to_owned));
    let conv = conversation.as_deref().unwrap_or(probe_conv);
    let calls: Vec<(Operation, Value)> = vec![
        (
            Operation::GetConversationList,
            json!({"page": 1, "limit": 1}),
        ),
        (Operation::GetConversation, json!({"conversationId": conv})),
        (
            Operation::GetMessageList,
            json!({"conversationId": conv, "page": 1, "limit": 1}),
        ),
        (
            Operation::GetMessage,
            json!({"messageId": "flowbot-doctor-probe"}),
        ),
        (Operation::GetAllConnectedPlatformList, json!({})),
        (
            Operation::CreateMessage,
            json!({"input": {"conversationId": probe_conv, "content": "flowbot doctor",
                "messageType": "text", "frontMsgId": "flowbot-doctor:probe:0"}}),
        ),
        (
            Operation::UpdateConversation,
            json!({"input": {"conversationId": probe_conv}}),
        ),
        (
            Operation::GetWhatsappBusinessTemplateList,
            json!({"page": 1, "limit": 500}),
        ),
    ];
    let mut missing = Vec::new();
    for (op, vars) in calls {
        let answer = match probe.post(docs.get(op), vars, Some(auth.clone())).await {
            Ok(a) => a,
            Err(e) => {
                report.push(Status::Problem, op.name(), format!("no answer: {e}"));
                continue;
            }
        };
        match interpret(op, answer.body.clone()) {
            Ok(v) if op == Operation::GetWhatsappBusinessTemplateList => {
                let listed = serde_json::from_value::<Page<super::templates::WhatsappTemplate>>(v)
                    .map(|p| p.docs)
                    .unwrap_or_default();
                let approved: Vec<_> = listed.iter().filter_map(|t| t.info()).collect();
                let names: Vec<String> = approved
                    .iter()
                    .map(|t| format!("{} ({}, {} parameter(s))", t.name, t.language, t.params))
                    .collect();
                report.push(
                    Status::Ok,
                    op.name(),
                    format!(
                        "{} template(s) listed, {} approved{}{}",
                        listed.len(),
                        approved.len(),
                        if names.is_empty() { "" } else { ": " },
                        names.join(", ")
                    ),
                );
                report.templates = Some(approved);
            }
            Ok(_) => report.push(Status::Ok, op.name(), "allowed"),
            Err(Failure::Error(QpienError::InsufficientScopes { required, .. })) => {
                let scope = scope_of(&answer.body).unwrap_or(required);
                report.push(
                    Status::Problem,
                    op.name(),
                    format!("the API key lacks the scope `{scope}`"),
                );
                if !missing.contains(&scope) {
                    missing.push(scope);
                }
            }
            Err(Failure::Error(QpienError::Api { code, message, .. }))
                if code.contains("VALIDATION") || code.contains("PARSE") =>
            {
                report.push(
                    Status::Problem,
                    op.name(),
                    format!("the server refuses the document: {message}"),
                )
            }
            // Any other refusal (the probe names no real conversation) means
            // the call itself is allowed.
            Err(_) => report.push(Status::Ok, op.name(), "allowed"),
        }
    }
    if !missing.is_empty() {
        report.push(
            Status::Problem,
            "scopes",
            format!(
                "add {} to the API key in the Qpien app, then restart flowbot (old tokens do not gain scopes)",
                missing.join(", ")
            ),
        );
    }
    report
}

/// Whether the message documents in use, repeated for two replies (see
/// the `batch` module), are valid against the account's schema.
fn shared_requests(
    schema: &apollo_compiler::validation::Valid<apollo_compiler::Schema>,
    docs: &Documents,
) -> (Status, String) {
    let mut bad = Vec::new();
    for op in super::batch::SENDS {
        match super::batch::document(docs.get(op), 2) {
            None => bad.push(format!(
                "{}: not one mutation of one field; sent alone",
                op.name()
            )),
            Some(doc) => {
                if let Err(e) = apollo_compiler::ExecutableDocument::parse_and_validate(
                    schema,
                    doc,
                    format!("{} x2.graphql", op.name()),
                ) {
                    bad.push(format!("{}: {}", op.name(), e.errors));
                }
            }
        }
    }
    if bad.is_empty() {
        (
            Status::Ok,
            "replies of several conversations can share a request (the message documents, \
             repeated under aliases, are valid); whether Qpien runs one is seen on the first"
                .into(),
        )
    } else {
        (
            Status::Note,
            format!(
                "one reply a request for:\n    {}\n    (qpien.batch.max = 1 says so)",
                bad.join("\n    ")
            ),
        )
    }
}

/// Writes `dialect`'s built-in documents into `dir` as `<operation>.graphql`
/// files, ready to edit and to use as `qpien.documents_dir`.
pub fn write_documents(
    dir: &std::path::Path,
    dialect: Dialect,
) -> std::io::Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    for op in Operation::ALL {
        let path = dir.join(format!("{}.graphql", op.name()));
        std::fs::write(&path, op.embedded_in(dialect))?;
        written.push(path);
    }
    Ok(written)
}
