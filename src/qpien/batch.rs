//! Replies of several conversations in one request.
//!
//! Qpien's budget counts requests (100 a minute, per API key), and a GraphQL
//! request may hold several root fields: a mutation's run one after the other
//! (the GraphQL spec, "Normal and Serial Execution"), each answered under its
//! alias, each error naming its alias in `path`. So the replies of different
//! conversations that are ready at the same moment leave as one document:
//!
//! ```graphql
//! mutation CreateMessage($input_0: CreateMessageInput!, $input_1: CreateMessageInput!) {
//!   m0: createMessage(input: $input_0) { _id frontMsgId }
//!   m1: createMessage(input: $input_1) { _id frontMsgId }
//! }
//! ```
//!
//! built from the operation's own document (embedded or replaced by
//! `qpien.documents_dir`): its root field once per reply, aliased, its
//! variables suffixed. A reply alone is sent with the document as it is.
//!
//! **When replies go together.** A request leaves at once while fewer than
//! `qpien.batch.in_flight` are under way; beyond, the replies that become
//! ready wait, and the next request takes all of them (at most
//! `qpien.batch.max`). So a quiet bot sends each reply alone the moment it is
//! ready, and a busy one, or one waiting for its budget, sends them together:
//! no timer, no delay added (what group commit does for a disk). A bot
//! answering 300 conversations a minute fits Qpien's 100 requests.
//!
//! **Order.** A conversation has one create under way at a time (the client's
//! per-conversation order, and the outbox's), so a request never holds two
//! replies of one conversation and never reorders a conversation's replies.
//!
//! **Failures.** A request that fails as a whole (no answer, 5xx, 429, a
//! transient error with no `path`) is retried as a whole by the client, every
//! reply with its own `frontMsgId`; an error naming one alias is that reply's
//! alone (retried alone if transient, dropped alone if refused for good). A
//! refused token is renewed once, as for any call.
//!
//! ASSUMED: Qpien runs a mutation of several root fields (any GraphQL server
//! does; its documentation says nothing of it). A Qpien that refuses one (an
//! error for the whole request, with no `path`, to a document of two or more
//! fields) gets one reply a request for an hour, with a warning, and then a
//! request of several is tried again; the replies of that request are sent
//! again alone. `qpien.batch.max = 1` never tries.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};

use apollo_compiler::ast::{self, Definition, Document, Selection};
use apollo_compiler::{Name, Node};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::documents::Operation;
use super::error::QpienError;
use super::response::{failure_of, unwrap_envelope, Failure};

/// The operations that send a reply: what may share a request.
pub(crate) const SENDS: [Operation; 3] = [
    Operation::CreateMessage,
    Operation::CreateMessageByWhatsapp,
    Operation::SendWhatsappTemplateMessage,
];

/// How replies share requests (`qpien.batch`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchConfig {
    /// The most replies one request carries (1: each alone).
    pub max: usize,
    /// Requests of replies under way at once; replies ready beyond wait for
    /// the next request, together.
    pub in_flight: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max: 20,
            in_flight: 2,
        }
    }
}

/// The alias of the `i`-th reply of a request.
fn alias(i: usize) -> String {
    format!("m{i}")
}

/// The index in `0..n` an alias (`m3`) names.
fn alias_index(alias: &str, n: usize) -> Option<usize> {
    let i: usize = alias.strip_prefix('m')?.parse().ok()?;
    (i < n && self::alias(i) == alias).then_some(i)
}

/// The document sending `n` of `single`'s root field at once, or `None`
/// when `single` is not one mutation of one root field (with no fragments):
/// only such a document can be repeated under aliases.
pub(crate) fn document(single: &str, n: usize) -> Option<String> {
    let doc = Document::parse(single, "batch.graphql").ok()?;
    let [Definition::OperationDefinition(op)] = doc.definitions.as_slice() else {
        return None;
    };
    if op.operation_type != ast::OperationType::Mutation {
        return None;
    }
    let [Selection::Field(field)] = op.selection_set.as_slice() else {
        return None;
    };
    let mut out = (**op).clone();
    out.variables.clear();
    out.selection_set.clear();
    for i in 0..n {
        let suffix = format!("_{i}");
        for var in &op.variables {
            let mut var = var.clone();
            let v = var.make_mut();
            v.name = suffixed(&v.name, &suffix)?;
            out.variables.push(var);
        }
        let mut field = field.clone();
        let f = field.make_mut();
        f.alias = Some(Name::new(&alias(i)).ok()?);
        rename_field(f, &suffix)?;
        out.selection_set.push(Selection::Field(field));
    }
    let mut batch = Document::new();
    batch
        .definitions
        .push(Definition::OperationDefinition(Node::new(out)));
    Some(batch.serialize().no_indent().to_string())
}

fn suffixed(name: &Name, suffix: &str) -> Option<Name> {
    Name::new(&format!("{name}{suffix}")).ok()
}

/// Renames every variable a field (and what it selects) uses.
fn rename_field(f: &mut ast::Field, suffix: &str) -> Option<()> {
    for arg in &mut f.arguments {
        rename_value(&mut arg.make_mut().value, suffix)?;
    }
    rename_directives(&mut f.directives, suffix)?;
    rename_selections(&mut f.selection_set, suffix)
}

fn rename_selections(set: &mut [Selection], suffix: &str) -> Option<()> {
    for s in set {
        match s {
            Selection::Field(f) => rename_field(f.make_mut(), suffix)?,
            Selection::InlineFragment(i) => {
                let i = i.make_mut();
                rename_directives(&mut i.directives, suffix)?;
                rename_selections(&mut i.selection_set, suffix)?;
            }
            // A named fragment is shared by every alias: its variables
            // cannot be told apart.
            Selection::FragmentSpread(_) => return None,
        }
    }
    Some(())
}

fn rename_directives(list: &mut ast::DirectiveList, suffix: &str) -> Option<()> {
    for d in list.iter_mut() {
        for arg in &mut d.make_mut().arguments {
            rename_value(&mut arg.make_mut().value, suffix)?;
        }
    }
    Some(())
}

fn rename_value(v: &mut Node<ast::Value>, suffix: &str) -> Option<()> {
    match v.make_mut() {
        ast::Value::Variable(name) => *name = suffixed(name, suffix)?,
        ast::Value::List(items) => {
            for item in items {
                rename_value(item, suffix)?;
            }
        }
        ast::Value::Object(fields) => {
            for (_, value) in fields {
                rename_value(value, suffix)?;
            }
        }
        _ => {}
    }
    Some(())
}

/// Each reply's result in the answer to a request of `n`; `Err`: the
/// request failed as a whole (an error with no alias in its `path`, or no
/// `data`).
pub(crate) fn split(
    op: Operation,
    mut body: Value,
    n: usize,
) -> Result<Vec<Result<Value, Failure>>, Failure> {
    let mut own: Vec<Option<Failure>> = vec![None; n];
    if let Some(errors) = body.get("errors").and_then(Value::as_array) {
        for error in errors {
            let at = error
                .get("path")
                .and_then(|p| p.get(0))
                .and_then(Value::as_str)
                .and_then(|a| alias_index(a, n));
            match at {
                Some(i) => {
                    own[i].get_or_insert_with(|| failure_of(op, error));
                }
                None => return Err(failure_of(op, error)),
            }
        }
    }
    let data = match body.get_mut("data").map(Value::take) {
        Some(Value::Object(data)) => data,
        // A field's error nulled the whole answer (a non-null field): the
        // others' results are lost, as with an answer lost on the way;
        // each is tried again, with its `frontMsgId`.
        _ if own.iter().any(Option::is_some) => serde_json::Map::new(),
        _ => {
            return Err(Failure::Error(QpienError::Decode {
                operation: op.name(),
                message: "no `data` in the answer to several replies".into(),
            }))
        }
    };
    let mut data = data;
    Ok(own
        .into_iter()
        .enumerate()
        .map(|(i, error)| match (error, data.remove(&alias(i))) {
            (Some(f), _) => Err(f),
            (None, Some(v)) => unwrap_envelope(op, v),
            (None, None) => Err(Failure::Error(QpienError::Transport {
                operation: op.name(),
                message: "the answer to several replies left this one out".into(),
            })),
        })
        .collect())
}

/// Whether a request of several replies failed as a whole because it held
/// several (a server that refuses such documents): a request-level error
/// that no retry or renewal can clear.
pub(crate) fn refused(failure: &Failure) -> bool {
    match failure {
        Failure::Error(e) => match e {
            QpienError::Api { retryable, .. } => !retryable,
            QpienError::Decode { .. } | QpienError::TooLarge { .. } => true,
            QpienError::Http { status, .. } => {
                (400..500).contains(status) && ![401, 403, 408, 429].contains(status)
            }
            _ => false,
        },
        Failure::Auth { .. } | Failure::Duplicate => false,
    }
}

/// How one reply's part of a request ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Its own result: created, or an error naming it.
    Own(Result<Value, Failure>),
    /// The request failed as a whole (after the client's retries).
    Whole(Failure),
    /// The request was refused for holding several: send it alone.
    Alone,
}

/// What a reply waiting in the queue is told.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) outcome: Outcome,
    /// The token the request carried (to forget it if refused).
    pub(crate) token: Option<Arc<str>>,
}

/// A reply waiting for a request.
#[derive(Debug)]
pub(crate) struct Waiting {
    pub(crate) op: Operation,
    /// Its `input`, written once.
    pub(crate) input: Box<RawValue>,
    done: oneshot::Sender<Answer>,
}

impl Waiting {
    pub(crate) fn answer(self, outcome: Outcome, token: Option<Arc<str>>) {
        // The sender may be gone (shutting down): nobody to tell.
        let _ = self.done.send(Answer { outcome, token });
    }
}

/// The queue of replies waiting for a request, and the requests' bodies.
#[derive(Debug)]
pub(crate) struct Batcher {
    config: BatchConfig,
    queue: Mutex<Queue>,
    /// Until when one reply a request is sent (Qpien refused a request of
    /// several, or the document cannot carry several).
    off_until: Mutex<Option<Instant>>,
}

/// How long replies go one a request after Qpien refused a request of
/// several; then a request of several is tried again (what refused it may
/// have been passing: a proxy's error page, a deployment).
pub(crate) const REFUSED_FOR: Duration = Duration::from_secs(3600);

/// The start of a request's body for `n` replies of a document, up to the
/// variables (`None`: the document cannot be repeated), by the document's
/// SHA-256 and `n`. One cache for the process, bounded: the bots that send
/// with the same documents (the built-in ones) share their heads, and an
/// idle bot keeps none.
type Heads = quick_cache::sync::Cache<([u8; 32], usize), Option<Arc<str>>>;

/// Heads kept (a few hundred bytes each).
const HEADS_KEPT: usize = 256;

fn heads() -> &'static Heads {
    static HEADS: OnceLock<Heads> = OnceLock::new();
    HEADS.get_or_init(|| Heads::new(HEADS_KEPT))
}

/// The head of a request of `n` replies sent with `single` (`None`: it
/// cannot carry `n`).
pub(crate) fn head(single: &str, n: usize) -> Option<Arc<str>> {
    use sha2::Digest;
    let key = (sha2::Sha256::digest(single.as_bytes()).into(), n);
    if let Some(head) = heads().get(&key) {
        return head;
    }
    let head = (|| {
        let query = if n == 1 {
            single.to_owned()
        } else {
            document(single, n)?
        };
        let query = serde_json::to_string(&query).ok()?;
        Some(Arc::from(format!(r#"{{"query":{query},"variables":{{"#)))
    })();
    heads().insert(key, head.clone());
    head
}

/// The body of a request carrying `batch`, whose operation's document is
/// `single`; `None`: that document cannot be repeated (only a request of
/// one can be made of it).
pub(crate) fn body(single: &str, batch: &[Waiting]) -> Option<Vec<u8>> {
    let n = batch.len();
    let head = head(single, n)?;
    let mut body = Vec::with_capacity(
        head.len()
            + batch
                .iter()
                .map(|w| w.input.get().len() + 12)
                .sum::<usize>()
            + 2,
    );
    body.extend_from_slice(head.as_bytes());
    for (i, w) in batch.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        if n == 1 {
            body.extend_from_slice(br#""input":"#);
        } else {
            body.extend_from_slice(format!(r#""input_{i}":"#).as_bytes());
        }
        body.extend_from_slice(w.input.get().as_bytes());
    }
    body.extend_from_slice(b"}}");
    Some(body)
}

#[derive(Debug, Default)]
struct Queue {
    waiting: VecDeque<Waiting>,
    /// Tasks sending requests now (at most `in_flight`).
    runners: usize,
}

impl Batcher {
    pub(crate) fn new(config: BatchConfig) -> Batcher {
        Batcher {
            config,
            queue: Mutex::default(),
            off_until: Mutex::new(None),
        }
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether replies go through the queue at all.
    pub(crate) fn on(&self) -> bool {
        self.config.max > 1 && !self.off()
    }

    /// Queues a reply; says whether a new runner must be started for it
    /// (then the caller starts one, which ends with [`Batcher::take`]).
    pub(crate) fn submit(
        &self,
        op: Operation,
        input: Box<RawValue>,
    ) -> (oneshot::Receiver<Answer>, bool) {
        let (done, answer) = oneshot::channel();
        let mut q = self.queue();
        q.waiting.push_back(Waiting { op, input, done });
        let start = q.runners < self.config.in_flight.max(1);
        if start {
            q.runners += 1;
        }
        (answer, start)
    }

    /// The next request's replies: the oldest waiting and those of its
    /// operation behind it, at most `max`. `None`: nothing waits, and the
    /// runner asking ends.
    pub(crate) fn take(&self) -> Option<Vec<Waiting>> {
        let mut q = self.queue();
        let Some(first) = q.waiting.pop_front() else {
            q.runners -= 1;
            return None;
        };
        let op = first.op;
        let mut batch = vec![first];
        let max = if self.off() {
            1
        } else {
            self.config.max.max(1)
        };
        let mut i = 0;
        while batch.len() < max && i < q.waiting.len() {
            if q.waiting[i].op == op {
                if let Some(w) = q.waiting.remove(i) {
                    batch.push(w);
                }
            } else {
                i += 1;
            }
        }
        Some(batch)
    }

    fn off_until(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.off_until.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether replies go one a request for now.
    fn off(&self) -> bool {
        self.off_until().is_some_and(|until| Instant::now() < until)
    }

    /// Qpien refused a request of several replies: one a request for
    /// [`REFUSED_FOR`]. Says whether they were shared until now (to warn
    /// once a time).
    pub(crate) fn refuse(&self) -> bool {
        let now = Instant::now();
        let mut until = self.off_until();
        let was_on = until.is_none_or(|u| now >= u);
        *until = Some(now + REFUSED_FOR);
        was_on
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qpien::Dialect;
    use serde_json::json;

    #[test]
    fn a_document_is_repeated_under_aliases_with_its_variables_suffixed() {
        let single = "mutation CreateMessage($input: CreateMessageInput!) {\n  createMessage(input: $input) { _id frontMsgId }\n}\n";
        let doc = document(single, 2).unwrap();
        assert_eq!(
            doc,
            "mutation CreateMessage($input_0: CreateMessageInput!, $input_1: CreateMessageInput!) \
             { m0: createMessage(input: $input_0) { _id frontMsgId } m1: createMessage(input: $input_1) { _id frontMsgId } }"
        );
        // Variables inside objects, lists and directives are renamed too.
        let nested = "mutation M($a: String, $b: Boolean!) { createMessage(input: {content: $a, list: [$a]}) @include(if: $b) { _id } }";
        let doc = document(nested, 2).unwrap();
        assert!(
            doc.contains(
                "m1: createMessage(input: {content: $a_1, list: [$a_1]}) @include(if: $b_1)"
            ),
            "{doc}"
        );
        // What cannot be repeated: a query, two root fields, fragments.
        assert_eq!(document("query Q { getMessage(id: 1) { _id } }", 2), None);
        assert_eq!(document("mutation M { a { _id } b { _id } }", 2), None);
        assert_eq!(
            document("mutation M { a { ...F } } fragment F on T { _id }", 2),
            None
        );
        assert_eq!(document("not graphql {", 2), None);
    }

    #[test]
    fn every_batched_message_document_is_valid_against_its_schema() {
        for dialect in [Dialect::Documented, Dialect::External] {
            let schema = apollo_compiler::Schema::parse_and_validate(
                crate::qpien::dialect::schema(dialect),
                "schema.graphql",
            )
            .unwrap();
            for op in SENDS {
                let doc = document(op.embedded_in(dialect), 3)
                    .unwrap_or_else(|| panic!("{dialect:?} {op}: not repeatable"));
                apollo_compiler::ExecutableDocument::parse_and_validate(&schema, &doc, "b.graphql")
                    .unwrap_or_else(|e| panic!("{dialect:?} {op}: {}\n{doc}", e.errors));
            }
        }
    }

    #[test]
    fn an_answer_is_split_by_alias_and_a_pathless_error_fails_the_whole() {
        let op = Operation::CreateMessage;
        let body = json!({
            "data": {"m0": {"_id": "a"}, "m1": null, "m2": {"success": true, "data": {"_id": "c"}}},
            "errors": [{"message": "no such conversation", "path": ["m1"], "extensions": {"code": "NOT_FOUND"}}],
        });
        let parts = split(op, body, 3).unwrap();
        assert_eq!(parts[0], Ok(json!({"_id": "a"})));
        assert!(
            matches!(&parts[1], Err(Failure::Error(QpienError::Api { code, .. })) if code == "NOT_FOUND")
        );
        assert_eq!(parts[2], Ok(json!({"_id": "c"})));
        let whole = json!({"errors": [{"message": "too many root fields", "extensions": {"code": "GRAPHQL_VALIDATION_FAILED"}}]});
        let failure = split(op, whole, 2).unwrap_err();
        assert!(refused(&failure));
        let expired =
            json!({"errors": [{"message": "expired", "extensions": {"code": "TOKEN_EXPIRED"}}]});
        assert!(!refused(&split(op, expired, 2).unwrap_err()));
        // An answer nulled by one field's error: the others are tried again.
        let nulled = json!({"data": null, "errors": [{"message": "x", "path": ["m0"]}]});
        let parts = split(op, nulled, 2).unwrap();
        assert!(matches!(&parts[1], Err(Failure::Error(e)) if e.is_retryable()));
        // An alias out of range is the request's.
        let stray = json!({"data": {}, "errors": [{"message": "x", "path": ["m7"]}]});
        assert!(split(op, stray, 2).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_sends_one_a_request_for_a_while_then_tries_again() {
        let b = Batcher::new(BatchConfig::default());
        assert!(b.on());
        assert!(b.refuse(), "the first refusal is told");
        assert!(!b.on());
        assert!(!b.refuse(), "a second one in the while is not");
        let raw = || RawValue::from_string("{}".into()).unwrap();
        for _ in 0..3 {
            let _ = b.submit(Operation::CreateMessage, raw());
        }
        assert_eq!(b.take().unwrap().len(), 1, "one a request meanwhile");
        tokio::time::advance(REFUSED_FOR).await;
        assert!(b.on(), "tried again after the while");
        assert_eq!(b.take().unwrap().len(), 2);
    }

    #[test]
    fn the_queue_takes_one_operation_at_most_max_and_starts_runners_up_to_in_flight() {
        let b = Batcher::new(BatchConfig {
            max: 2,
            in_flight: 1,
        });
        let raw = || RawValue::from_string("{}".into()).unwrap();
        let (_a, start) = b.submit(Operation::CreateMessage, raw());
        assert!(start);
        let (_b, start) = b.submit(Operation::CreateMessageByWhatsapp, raw());
        assert!(!start, "one runner at most");
        let (_c, _) = b.submit(Operation::CreateMessage, raw());
        let (_d, _) = b.submit(Operation::CreateMessage, raw());
        let ops = |batch: Vec<Waiting>| batch.into_iter().map(|w| w.op).collect::<Vec<_>>();
        assert_eq!(
            ops(b.take().unwrap()),
            [Operation::CreateMessage, Operation::CreateMessage]
        );
        assert_eq!(ops(b.take().unwrap()), [Operation::CreateMessageByWhatsapp]);
        assert_eq!(ops(b.take().unwrap()), [Operation::CreateMessage]);
        assert!(b.take().is_none());
        let (_e, start) = b.submit(Operation::CreateMessage, raw());
        assert!(start, "the runner ended; a new one starts");
        let batch = b.take().unwrap();
        let written = body(
            "mutation M($input: I!) { createMessage(input: $input) { _id } }",
            &batch,
        )
        .unwrap();
        let written: Value = serde_json::from_slice(&written).unwrap();
        assert_eq!(written["variables"], json!({"input": {}}));
    }
}
