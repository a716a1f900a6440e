//! The operator console: one server-rendered page per bot at `/console`
//! (with several bots, `/bots/<name>/console`), on when `server.admin_token`
//! is set.
//!
//! It shows what the reports say (the same [`Runs`] read the same way, so
//! the numbers are the report's), drawn as SVG on the server: outcomes per
//! flow version side by side, outcomes over time, the funnel per state with
//! where runs stopped, the answers, the conversations with a person now and
//! the dead letters. No JavaScript, nothing from another site; it fits a
//! phone's width.
//!
//! Signing in: the admin token as `Authorization: Bearer`, or through the
//! page's form, which sets a cookie holding a keyed hash of the token (never
//! the token), `HttpOnly`, `SameSite=Strict`. Without either: 401 and the
//! form.

use std::fmt::Write;
use std::sync::{Arc, LazyLock};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use hmac::{KeyInit, Mac};
use minijinja::{context, Environment, Value};

use super::http::{constant_eq, App};
use crate::engine::Stored;
use crate::insights::report::{DayRow, FunnelRow, OutcomeRow, Runs};

/// The cookie the form sets.
const COOKIE: &str = "flowbot_console";

static PAGES: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    // `.html`: every value escaped unless marked safe (the SVG drawn here).
    env.add_template("console.html", include_str!("console.html"))
        .expect("the console's template compiles");
    env
});

/// The cookie's value for a token: a keyed hash, so the token itself never
/// sits in the browser.
fn cookie_value(token: &str) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(token.as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(b"flowbot console");
    hex::encode(mac.finalize().into_bytes())
}

/// Whether the request carries the token, or the cookie made from it.
fn signed_in(app: &App, headers: &HeaderMap) -> bool {
    let token = app.server.admin_token.expose();
    if token.is_empty() {
        return false;
    }
    if super::http::bearer_is(headers, token) {
        return true;
    }
    let want = cookie_value(token);
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .any(|(k, v)| k == COOKIE && constant_eq(v.as_bytes(), want.as_bytes()))
}

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
            ),
        ],
        body,
    )
        .into_response()
}

fn render(ctx: Value) -> Result<String, minijinja::Error> {
    PAGES.get_template("console.html")?.render(ctx)
}

/// The sign-in form, with 401.
fn login(error: Option<&str>) -> Response {
    match render(context! { login => true, error => error, base => "", title => "flowbot" }) {
        Ok(page) => html(StatusCode::UNAUTHORIZED, page),
        Err(e) => html(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `POST console/login`: the form's token; right, a cookie and the page.
pub(crate) async fn sign_in(State(app): State<Arc<App>>, body: Body) -> Response {
    let Ok(bytes) = axum::body::to_bytes(body, 4096).await else {
        return login(Some("The form is too large."));
    };
    let token = url::form_urlencoded::parse(&bytes)
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    let want = app.server.admin_token.expose();
    if want.is_empty() || !constant_eq(token.as_bytes(), want.as_bytes()) {
        return login(Some("That is not the admin token."));
    }
    (
        StatusCode::SEE_OTHER,
        [
            // From `.../console/login` to `.../console`, wherever it is mounted.
            (header::LOCATION, "../console".to_owned()),
            (
                header::SET_COOKIE,
                format!(
                    "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict",
                    cookie_value(want)
                ),
            ),
        ],
    )
        .into_response()
}

/// `GET console`: the page, for the period of its query.
pub(crate) async fn page(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Response {
    if !signed_in(&app, &headers) {
        return login(None);
    }
    let q = match super::http::report_query(&app, query.as_deref()).await {
        Ok(q) => q,
        Err(why) => return html(StatusCode::BAD_REQUEST, escape(&why)),
    };
    let runs = match Runs::read(&*app.store, &q).await {
        Ok(r) => r,
        Err(e) => return html(StatusCode::SERVICE_UNAVAILABLE, escape(&e.to_string())),
    };
    let outcomes = runs.outcomes();
    let days = runs.outcomes_by_day();
    let funnel = runs.funnel();
    let answers = runs.answers();
    let mut named: Vec<&String> = outcomes.iter().flat_map(|o| o.named.keys()).collect();
    named.sort();
    named.dedup();
    let (flow, current, diagram) = match app.bot.get().await {
        Ok(bot) => {
            let current = format!("{:016x}", bot.flow().version);
            let rows: Vec<&FunnelRow> = funnel
                .iter()
                .filter(|r| r.flow_version == current)
                .collect();
            let diagram = (!rows.is_empty()).then(|| funnel_diagram(bot.flow(), &rows));
            (bot.flow().name.clone(), current, diagram)
        }
        Err(_) => ("(does not compile)".into(), String::new(), None),
    };
    let letters = app.store.dead_letters(None, 20).await.unwrap_or_default();
    let people = with_a_person(&app).await;
    let day = |ms: crate::time::Millis| crate::time::format(ms)[..10].to_owned();
    let ctx = context! {
        login => false,
        title => app.name.clone().unwrap_or_else(|| flow.clone()),
        flow => flow,
        from => day(q.from),
        to => day(q.to.saturating_sub(1)),
        channel => q.channel.clone().unwrap_or_default(),
        flow_version => q.flow_version.clone().unwrap_or_default(),
        include_test => q.include_test,
        named => named,
        outcome_bars => Value::from_safe_string(outcome_bars(&outcomes)),
        outcomes => outcomes,
        day_bars => Value::from_safe_string(day_bars(&days)),
        days => days,
        funnel => funnel_by_version(&funnel),
        current => current,
        diagram => diagram.map(Value::from_safe_string),
        answers => answers,
        people => people,
        dead_letters => letters.iter().map(|d| context! {
            id => d.id,
            received_at => crate::time::format(d.received_at),
            reason => d.reason.clone(),
            bytes => d.bytes,
        }).collect::<Vec<_>>(),
    };
    match render(ctx) {
        Ok(page) => html(StatusCode::OK, page),
        Err(e) => html(StatusCode::INTERNAL_SERVER_ERROR, escape(&e.to_string())),
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The conversations a person has now (the first 1,000 sessions looked at,
/// 50 listed).
async fn with_a_person(app: &App) -> Vec<Value> {
    let Ok(page) = app.store.sessions("", 1_000).await else {
        return Vec::new();
    };
    page.iter()
        .filter_map(|(c, s)| {
            let stored = super::payload::decode::<Stored>(&s.data).ok()?;
            stored.session.handoff.then(|| {
                context! {
                    conversation => c.clone(),
                    state => stored.state.to_string(),
                    since => match stored.session.handoff_since {
                        0 => String::new(),
                        at => crate::time::format(at),
                    },
                }
            })
        })
        .take(50)
        .collect()
}

/// The colours of the outcomes, in the order they are stacked.
const PARTS: [(&str, &str); 5] = [
    ("resolved", "#1e8449"),
    ("handed off", "#2874a6"),
    ("abandoned", "#b9770e"),
    ("failed", "#a93226"),
    ("open", "#aab7b8"),
];

/// One stacked bar (of 600 units) per version: its outcomes' shares.
fn outcome_bars(rows: &[OutcomeRow]) -> String {
    let h = 26 * rows.len() as u32 + 4;
    let mut svg = format!(
        r#"<svg viewBox="0 0 760 {h}" role="img" aria-label="outcomes per version" data-testid="outcome-bars">"#
    );
    for (i, o) in rows.iter().enumerate() {
        let y = 4 + 26 * i as u32;
        let named: u64 = o.named.values().sum();
        let parts = [
            o.resolved + named,
            o.handed_off,
            o.abandoned,
            o.failed,
            o.open,
        ];
        let _ = write!(
            svg,
            r#"<text x="0" y="{}" font-size="12">{}</text>"#,
            y + 15,
            escape(&o.flow_version[..o.flow_version.len().min(8)])
        );
        let mut x = 150.0;
        for ((label, colour), n) in PARTS.iter().zip(parts) {
            if n == 0 || o.started == 0 {
                continue;
            }
            let w = 600.0 * n as f64 / o.started as f64;
            let _ = write!(
                svg,
                r#"<rect x="{x:.1}" y="{y}" width="{w:.1}" height="20" fill="{colour}"><title>{label}: {n}</title></rect>"#
            );
            x += w;
        }
    }
    svg.push_str("</svg>");
    svg
}

/// Per day, a bar of the runs started, split by outcome.
fn day_bars(days: &[DayRow]) -> String {
    let most = days.iter().map(|d| d.started).max().unwrap_or(1).max(1);
    // At most 60 units a day, so that a short period is not one wide block.
    let w = (760.0 / days.len().max(1) as f64).min(60.0);
    let mut svg = String::from(
        r#"<svg viewBox="0 0 760 180" role="img" aria-label="outcomes per day" data-testid="day-bars">"#,
    );
    for (i, d) in days.iter().enumerate() {
        let x = i as f64 * w;
        let mut y = 150.0;
        let parts = [d.resolved, d.handed_off, d.abandoned, d.failed, d.open];
        for ((label, colour), n) in PARTS.iter().zip(parts) {
            if n == 0 {
                continue;
            }
            let h = 140.0 * n as f64 / most as f64;
            y -= h;
            let _ = write!(
                svg,
                r#"<rect x="{:.1}" y="{y:.1}" width="{:.1}" height="{h:.1}" fill="{colour}"><title>{} {label}: {n}</title></rect>"#,
                x + 2.0,
                (w - 4.0).max(1.0),
                d.day
            );
        }
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="170" font-size="11" text-anchor="middle">{}</text>"#,
            x + w / 2.0,
            &d.day[5..]
        );
    }
    svg.push_str("</svg>");
    svg
}

/// The flow drawn in layers (a state below the first state that leads to
/// it, counted from the start), each state with the runs that reached it and
/// the share abandoned there, its shade darker the more were.
fn funnel_diagram(flow: &crate::flow::Flow, rows: &[&FunnelRow]) -> String {
    const W: f64 = 156.0;
    const H: f64 = 46.0;
    const GAP_X: f64 = 18.0;
    const GAP_Y: f64 = 42.0;
    let (names, edges) = flow.state_graph();
    let n = names.len();
    // Layers: breadth first from the start; what it never reaches, last.
    let mut depth = vec![usize::MAX; n];
    let start = flow.start as usize;
    if start < n {
        depth[start] = 0;
        let mut queue = std::collections::VecDeque::from([start]);
        while let Some(s) = queue.pop_front() {
            for &(a, b) in &edges {
                let (a, b) = (a as usize, b as usize);
                if a == s && b < n && depth[b] == usize::MAX {
                    depth[b] = depth[s] + 1;
                    queue.push_back(b);
                }
            }
        }
    }
    let deepest = depth
        .iter()
        .filter(|d| **d != usize::MAX)
        .max()
        .copied()
        .unwrap_or(0);
    for d in &mut depth {
        if *d == usize::MAX {
            *d = deepest + 1;
        }
    }
    let layers = depth.iter().max().map_or(0, |d| d + 1);
    let mut place = vec![(0.0, 0.0); n];
    let mut widest = 1;
    for layer in 0..layers {
        let members: Vec<usize> = (0..n).filter(|&i| depth[i] == layer).collect();
        widest = widest.max(members.len());
        for (k, &i) in members.iter().enumerate() {
            place[i] = (k as f64 * (W + GAP_X), layer as f64 * (H + GAP_Y));
        }
    }
    let width = widest as f64 * (W + GAP_X);
    let height = layers as f64 * (H + GAP_Y);
    let mut svg = format!(
        r##"<svg viewBox="-4 -4 {0:.0} {1:.0}" width="{0:.0}" role="img" aria-label="the funnel on the flow" data-testid="funnel-diagram"><defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="6" markerHeight="6" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#95a5a6"/></marker></defs>"##,
        width + 8.0,
        height + 8.0
    );
    for &(a, b) in &edges {
        let ((ax, ay), (bx, by)) = (place[a as usize], place[b as usize]);
        let (x1, y1) = (ax + W / 2.0, ay + H);
        let (x2, y2) = (bx + W / 2.0, by);
        let bend = if by > ay { (y2 - y1) / 2.0 } else { 40.0 };
        let _ = write!(
            svg,
            r##"<path d="M{x1:.1},{y1:.1} C{x1:.1},{:.1} {x2:.1},{:.1} {x2:.1},{y2:.1}" fill="none" stroke="#95a5a6" stroke-width="1.2" marker-end="url(#arrow)"/>"##,
            y1 + bend,
            y2 - bend
        );
    }
    for (i, name) in names.iter().enumerate() {
        let (x, y) = place[i];
        let row = rows.iter().find(|r| r.state == *name);
        let (reached, drop) = row.map_or((0, 0.0), |r| (r.reached, r.drop_off));
        // From pale blue (nobody stopped here) to deep orange (everybody did).
        let shade = |from: f64, to: f64| from + (to - from) * drop;
        let fill = format!(
            "rgb({:.0},{:.0},{:.0})",
            shade(214.0, 202.0),
            shade(234.0, 111.0),
            shade(248.0, 30.0)
        );
        let label: String = name.chars().take(22).collect();
        let _ = write!(
            svg,
            r##"<g data-testid="node-{}"><rect x="{x:.1}" y="{y:.1}" width="{W}" height="{H}" rx="6" fill="{fill}" stroke="#5d6d7e"/><text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle" font-weight="600">{}</text><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">{reached} reached · {:.0}% stopped</text></g>"##,
            escape(name),
            x + W / 2.0,
            y + 18.0,
            escape(&label),
            x + W / 2.0,
            y + 35.0,
            drop * 100.0
        );
    }
    svg.push_str("</svg>");
    svg
}

/// The funnel's rows grouped by version, each with its bar.
fn funnel_by_version(rows: &[FunnelRow]) -> Vec<Value> {
    let mut out: Vec<(String, Vec<Value>)> = Vec::new();
    for r in rows {
        if out.last().is_none_or(|(v, _)| *v != r.flow_version) {
            out.push((r.flow_version.clone(), Vec::new()));
        }
        let reached = (200.0 * r.share).round();
        let stopped = (200.0 * r.share * r.drop_off).round();
        let bar = format!(
            r##"<svg viewBox="0 0 200 14" width="200" height="14"><rect width="{reached}" height="14" fill="#5dade2"/><rect width="{stopped}" height="14" fill="#b9770e"/></svg>"##
        );
        if let Some((_, list)) = out.last_mut() {
            list.push(context! {
                state => r.state.clone(),
                reached => r.reached,
                abandoned => r.abandoned,
                drop_off => r.drop_off,
                bar => Value::from_safe_string(bar),
            });
        }
    }
    out.into_iter()
        .map(|(version, rows)| context! { version => version, rows => rows })
        .collect()
}
