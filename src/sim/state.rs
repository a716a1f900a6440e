//! The simulator's data: conversations, messages, tokens, the rate window,
//! and the operations the API, the playground and tests perform on them.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedSender;
use tokio::time::Instant;

use super::SimConfig;
use crate::qpien::AuthScheme;

/// What a customer sends from the playground (or a test).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CustomerInput {
    /// The text.
    pub text: String,
    /// The quick-reply button tapped (its id); `text` then holds its title.
    pub button: Option<String>,
    /// The list row picked (its id); `text` then holds its title.
    pub list: Option<String>,
    /// An attachment kind (`image`, `document`...), with its URL.
    pub media: Option<String>,
}

/// Counts since start, for tests and the playground.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SimStats {
    /// API requests received.
    pub requests: u64,
    /// Answered 429.
    pub rate_limited: u64,
    /// Answered 500 by fault injection.
    pub injected_errors: u64,
    /// Messages created through the API.
    pub created: u64,
    /// Creates recognised by their `frontMsgId` and not stored again.
    pub duplicate_creates: u64,
    /// Tokens issued.
    pub tokens: u64,
    /// Webhook deliveries answered 200.
    pub webhooks_delivered: u64,
    /// Webhook deliveries that failed (and were retried).
    pub webhook_failures: u64,
    /// Free-form WhatsApp messages refused outside the 24-hour window.
    pub window_refusals: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) requests: AtomicU64,
    pub(crate) rate_limited: AtomicU64,
    pub(crate) injected_errors: AtomicU64,
    pub(crate) created: AtomicU64,
    pub(crate) duplicate_creates: AtomicU64,
    pub(crate) tokens: AtomicU64,
    pub(crate) webhooks_delivered: AtomicU64,
    pub(crate) webhook_failures: AtomicU64,
    pub(crate) window_refusals: AtomicU64,
}

#[derive(Debug)]
pub(crate) struct Conversation {
    /// As the API serves it (FACT types: ids as strings, channels and tags as
    /// objects).
    pub(crate) data: Value,
    pub(crate) messages: Vec<Value>,
    /// The contact (the end customer): the sender of its messages.
    pub(crate) contact: Value,
    /// The `channelType` of its messages.
    pub(crate) channel_type: &'static str,
    /// When the customer last wrote (through the simulator), for WhatsApp's
    /// 24-hour window; `None`: never (its messages came some other way).
    pub(crate) customer_at: Option<i64>,
}

/// One API request as the simulator saw it (for tests).
#[derive(Debug, Clone)]
pub struct SeenRequest {
    /// When it came.
    pub at: Instant,
    /// The operation, by its documented name (`createMessage`), whatever the dialect.
    pub operation: String,
    /// Its variables.
    pub variables: Value,
    /// Its `Authorization` header.
    pub authorization: Option<String>,
    /// The HTTP status answered.
    pub status: u16,
}

/// Behaviour switched on for the next requests (for tests).
#[derive(Debug, Default)]
pub(crate) struct Scripted {
    /// Answer the next N requests 500 before doing anything.
    pub(crate) fail_next: u32,
    /// Record the next N new creates, then answer 500 (the answer is lost).
    pub(crate) lose_next_creates: u32,
    /// Record the next N new creates, then hold the answer back for 30 s.
    pub(crate) hold_next_creates: u32,
    /// Error codes for the next authorized requests.
    pub(crate) inject: VecDeque<String>,
    /// Error codes for the next requests of one operation.
    pub(crate) inject_on: Vec<(String, String)>,
    /// Refuse every token, as if revoked.
    pub(crate) reject_tokens: bool,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) conversations: IndexMap<String, Conversation>,
    /// frontMsgId -> (conversation, message id)
    pub(crate) fronts: HashMap<String, Value>,
    pub(crate) tokens: HashMap<String, Instant>,
    pub(crate) window: Option<(Instant, u32)>,
    pub(crate) rng: fastrand::Rng,
    next_id: u64,
    pub(crate) scripted: Scripted,
    pub(crate) seen: Vec<SeenRequest>,
    pub(crate) updates: Vec<Value>,
    /// Every new create: `{operation, input}`, in order.
    pub(crate) created: Vec<Value>,
}

/// The simulator's state, shared by its HTTP handlers and its webhook sender.
#[derive(Debug)]
pub struct SimState {
    pub(crate) config: RwLock<SimConfig>,
    pub(crate) inner: Mutex<Inner>,
    pub(crate) counters: Counters,
    deliveries: UnboundedSender<Vec<u8>>,
    /// Woken when a held create has been recorded.
    pub(crate) held: tokio::sync::Notify,
    /// How far the simulator's clock is ahead of the system's, in ms.
    clock_offset: AtomicI64,
}

/// WhatsApp's customer-service window (FACT): free-form messages only
/// within 24 hours of the customer's last message.
const WHATSAPP_WINDOW_MS: i64 = 24 * 3600 * 1000;

/// The `channelType` Qpien reports for a playground channel name.
fn channel_type(channel: &str) -> &'static str {
    match channel.to_ascii_lowercase().as_str() {
        "instagram" => "Instagram",
        "email" | "e-mail" => "Email",
        "livechat" | "live_chat" => "LiveChat",
        _ => "WhatsApp",
    }
}

/// The connected channel (platform) of a `channelType`, as
/// `getAllConnectedPlatformList` lists them.
pub(crate) const PLATFORMS: [(&str, &str, &str); 4] = [
    ("p-whatsapp", "WhatsApp (simulated)", "WhatsApp"),
    ("p-instagram", "Instagram (simulated)", "Instagram"),
    ("p-email", "E-mail (simulated)", "Email"),
    ("p-livechat", "Live chat (simulated)", "LiveChat"),
];

fn platform(channel_type: &str) -> (&'static str, &'static str, &'static str) {
    PLATFORMS
        .into_iter()
        .find(|p| p.2 == channel_type)
        .unwrap_or(PLATFORMS[0])
}

/// The simulated account (the conversations' `customer`, FACT: an ID).
pub(crate) const ACCOUNT: &str = "acct-sim";
/// The simulated agent (a CustomerPerson).
pub(crate) const AGENT: &str = "agent-1";

/// A message as `lastMessage` (LastMessageType) shows it.
fn last_message(m: &Value) -> Value {
    let mut last = json!({});
    for key in [
        "_id",
        "content",
        "senderType",
        "frontMsgId",
        "createdAt",
        "sender",
    ] {
        if !m[key].is_null() {
            last[key] = m[key].clone();
        }
    }
    last
}

impl SimState {
    pub(crate) fn new(config: SimConfig, deliveries: UnboundedSender<Vec<u8>>) -> SimState {
        let seed = config.faults.seed;
        SimState {
            config: RwLock::new(config),
            inner: Mutex::new(Inner {
                conversations: IndexMap::new(),
                fronts: HashMap::new(),
                tokens: HashMap::new(),
                window: None,
                rng: fastrand::Rng::with_seed(seed),
                next_id: 0,
                scripted: Scripted::default(),
                seen: Vec::new(),
                updates: Vec::new(),
                created: Vec::new(),
            }),
            counters: Counters::default(),
            deliveries,
            held: tokio::sync::Notify::new(),
            clock_offset: AtomicI64::new(0),
        }
    }

    /// The simulator's time: the system's, plus how far it was moved.
    pub fn now(&self) -> i64 {
        crate::time::now() + self.clock_offset.load(Ordering::SeqCst)
    }

    /// Moves the simulator's clock forward (WhatsApp's window closes by it).
    pub fn advance_clock(&self, by: std::time::Duration) -> i64 {
        self.clock_offset
            .fetch_add(by.as_millis() as i64, Ordering::SeqCst);
        self.now()
    }

    /// The approved template `name` in `language`, and its placeholders.
    fn template(&self, name: &str, language: &str) -> Option<usize> {
        self.config()
            .templates
            .iter()
            .find(|(n, l, _)| n == name && l == language)
            .map(|(_, _, body)| crate::qpien::templates::placeholders(body))
    }

    /// `getWhatsappBusinessTemplateList`, in its ASSUMED shape.
    pub(crate) fn template_list(&self) -> Value {
        Value::Array(
            self.config()
                .templates
                .iter()
                .enumerate()
                .map(|(i, (name, language, body))| {
                    json!({"_id": format!("tpl-{i}"), "name": name, "language": language,
                        "status": "APPROVED", "body": body})
                })
                .collect(),
        )
    }

    pub(crate) fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current settings.
    pub fn config(&self) -> SimConfig {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Changes settings while running (faults, webhook URL...).
    pub fn configure(&self, f: impl FnOnce(&mut SimConfig)) {
        f(&mut self.config.write().unwrap_or_else(|e| e.into_inner()));
    }

    /// Answers the next `n` API requests with HTTP 500, doing nothing.
    pub fn fail_next(&self, n: u32) {
        self.inner().scripted.fail_next += n;
    }

    /// Records the next `n` new messages created, then answers HTTP 500: the
    /// message exists but the caller does not know it.
    pub fn lose_next_creates(&self, n: u32) {
        self.inner().scripted.lose_next_creates += n;
    }

    /// Records the next `n` new messages created, then holds the answer back
    /// for 30 s (the caller may die meanwhile); [`SimState::held`] resolves
    /// when one is recorded.
    pub fn hold_next_creates(&self, n: u32) {
        self.inner().scripted.hold_next_creates += n;
    }

    /// Resolves when a held create has been recorded.
    pub async fn held(&self) {
        self.held.notified().await;
    }

    /// Answers the next authorized requests with these error codes, in order.
    pub fn inject<S: Into<String>>(&self, codes: impl IntoIterator<Item = S>) {
        self.inner()
            .scripted
            .inject
            .extend(codes.into_iter().map(Into::into));
    }

    /// Answers the next request of `operation` (its documented name) with `code`.
    pub fn inject_on(&self, operation: &str, code: &str) {
        self.inner()
            .scripted
            .inject_on
            .push((operation.to_owned(), code.to_owned()));
    }

    /// Refuses every token from now on (as if revoked), or stops doing so.
    pub fn reject_tokens(&self, reject: bool) {
        self.inner().scripted.reject_tokens = reject;
    }

    /// The API requests seen so far, in order.
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.inner().seen.clone()
    }

    /// How many requests of `operation` were answered `status`.
    pub fn count(&self, operation: &str, status: u16) -> usize {
        self.inner()
            .seen
            .iter()
            .filter(|r| r.operation == operation && r.status == status)
            .count()
    }

    /// Every new message created through the API: `{operation, input}`.
    pub fn created(&self) -> Vec<Value> {
        self.inner().created.clone()
    }

    /// Every `updateConversation` input, in order.
    pub fn updates(&self) -> Vec<Value> {
        self.inner().updates.clone()
    }

    pub(crate) fn record(&self, request: SeenRequest) {
        let mut inner = self.inner();
        if inner.seen.len() >= 100_000 {
            inner.seen.drain(..50_000);
        }
        inner.seen.push(request);
    }

    /// Takes one scripted step, if any is left.
    pub(crate) fn take(&self, pick: impl FnOnce(&mut Scripted) -> &mut u32) -> bool {
        let mut inner = self.inner();
        let n = pick(&mut inner.scripted);
        if *n > 0 {
            *n -= 1;
            true
        } else {
            false
        }
    }

    /// The next injected error code for `operation`, if any.
    pub(crate) fn injected(&self, operation: &str) -> Option<String> {
        let mut inner = self.inner();
        let on = &mut inner.scripted.inject_on;
        if let Some(i) = on.iter().position(|(op, _)| op == operation) {
            return Some(on.remove(i).1);
        }
        inner.scripted.inject.pop_front()
    }

    /// Counts since start.
    pub fn stats(&self) -> SimStats {
        let c = &self.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        SimStats {
            requests: g(&c.requests),
            rate_limited: g(&c.rate_limited),
            injected_errors: g(&c.injected_errors),
            created: g(&c.created),
            duplicate_creates: g(&c.duplicate_creates),
            tokens: g(&c.tokens),
            webhooks_delivered: g(&c.webhooks_delivered),
            webhook_failures: g(&c.webhook_failures),
            window_refusals: g(&c.window_refusals),
        }
    }

    pub(crate) fn next_id(inner: &mut Inner) -> String {
        inner.next_id += 1;
        format!("{:024x}", 0x5eed_0000_0000u64 + inner.next_id)
    }

    /// A `{event, data}` webhook, queued for delivery in order.
    pub(crate) fn emit(&self, event: &str, data: Value) {
        if self.config().webhook_url.is_none() {
            return;
        }
        let body = serde_json::to_vec(&json!({"event": event, "data": data})).unwrap_or_default();
        let _ = self.deliveries.send(body);
    }

    /// Opens a conversation with a new customer on `channel`.
    pub fn create_conversation(&self, channel: &str, language: Option<&str>, name: &str) -> String {
        let id = Self::next_id(&mut self.inner());
        self.create_conversation_with_id(&id, channel, language, name)
    }

    /// Opens a conversation of a given id (for tests).
    pub fn create_conversation_with_id(
        &self,
        id: &str,
        channel: &str,
        language: Option<&str>,
        name: &str,
    ) -> String {
        let mut inner = self.inner();
        let id = id.to_owned();
        let customer_id = Self::next_id(&mut inner);
        let (first, last) = name.split_once(' ').unwrap_or((name, ""));
        let channel_type = channel_type(channel);
        let (platform_id, platform_name, _) = platform(channel_type);
        let data = json!({
            "_id": id,
            "customer": ACCOUNT,
            "joinedPerson": null,
            "joinedCPerson": null,
            "isStarred": false,
            "status": "OPEN",
            "isGroupOrChannel": false,
            "lastMessage": null,
            "lastReceivedMessageChannel": platform_id,
            "tags": [],
            "channels": [{"_id": platform_id, "name": platform_name, "type": channel_type}],
            "type": "direct",
            "priority": "NORMAL",
        });
        let contact = json!({"_id": customer_id, "name": name, "firstName": first,
            "lastName": if last.is_empty() { Value::Null } else { json!(last) },
            "language": language});
        inner.conversations.insert(
            id.clone(),
            Conversation {
                data,
                messages: Vec::new(),
                contact,
                channel_type,
                customer_at: None,
            },
        );
        id
    }

    fn push(&self, conversation: &str, message: Value) -> Option<Value> {
        let mut inner = self.inner();
        let conv = inner.conversations.get_mut(conversation)?;
        conv.data["lastMessage"] = last_message(&message);
        conv.messages.push(message.clone());
        Some(message)
    }

    /// The customer writes, taps or picks; the webhook tells the bot.
    pub fn customer_message(&self, conversation: &str, input: &CustomerInput) -> Option<String> {
        let now = self.now();
        let (id, channel, customer) = {
            let mut inner = self.inner();
            let id = Self::next_id(&mut inner);
            let conv = inner.conversations.get_mut(conversation)?;
            conv.customer_at = Some(now);
            (id, conv.channel_type, conv.contact.clone())
        };
        let mut message = json!({
            "_id": id,
            "conversation": conversation,
            "senderType": "user",
            "sender": customer,
            "channelType": channel,
            "messageType": "text",
            "content": input.text,
            "createdAt": self.now(),
        });
        if let Some(button) = &input.button {
            message["flowBotQuickReplyResponseId"] = json!(button);
        }
        if let Some(row) = &input.list {
            message["listMessage"] = json!({"selectedRowId": row});
            message["listReply"] = json!({"id": row, "title": input.text});
        }
        if let Some(kind) = &input.media {
            message["messageType"] = json!(kind);
            message["media"] =
                json!([{"type": kind, "url": format!("https://media.example/{id}")}]);
        }
        let message = self.push(conversation, message)?;
        self.emit("NEW_INCOMING_MESSAGE", message);
        Some(id)
    }

    /// A person of the team joins (the bot must step back).
    pub fn agent_join(&self, conversation: &str) -> bool {
        let data = {
            let mut inner = self.inner();
            let Some(conv) = inner.conversations.get_mut(conversation) else {
                return false;
            };
            conv.data["joinedPerson"] = json!(AGENT);
            conv.data["joinedCPerson"] = json!(AGENT);
            conv.data["status"] = json!("OPEN");
            conv.data.clone()
        };
        self.emit("JOIN_CONVERSATION", data);
        true
    }

    /// The person leaves the conversation. Qpien documents no event for this:
    /// the conversation just shows nobody joined (`joinedCPerson` empty). With
    /// `leave_events` on, the simulator also sends the ASSUMED
    /// `LEAVE_CONVERSATION`.
    pub fn agent_leave(&self, conversation: &str) -> bool {
        let data = {
            let mut inner = self.inner();
            let Some(conv) = inner.conversations.get_mut(conversation) else {
                return false;
            };
            conv.data["joinedPerson"] = Value::Null;
            conv.data["joinedCPerson"] = Value::Null;
            conv.data.clone()
        };
        if self.config().leave_events {
            self.emit("LEAVE_CONVERSATION", data);
        }
        true
    }

    /// Sets a conversation's status (as an agent closing it would), leaving
    /// who is joined as it is.
    pub fn set_status(&self, conversation: &str, status: &str) -> bool {
        let mut inner = self.inner();
        let Some(conv) = inner.conversations.get_mut(conversation) else {
            return false;
        };
        conv.data["status"] = json!(status);
        true
    }

    /// Stores a message as given (any JSON; for tests of odd shapes).
    pub fn insert_message(&self, conversation: &str, message: Value) -> bool {
        self.push(conversation, message).is_some()
    }

    /// The person writes (the bot must not answer).
    pub fn agent_message(&self, conversation: &str, text: &str) -> Option<String> {
        let id = Self::next_id(&mut self.inner());
        let message = json!({
            "_id": id, "conversation": conversation, "senderType": "user",
            "sender": {"_id": "agent-1", "name": "Alex (agent)", "type": "PERSON"},
            "messageType": "text", "content": text, "createdAt": self.now(),
        });
        let message = self.push(conversation, message)?;
        self.emit("NEW_INCOMING_MESSAGE", message);
        Some(id)
    }

    /// A conversation with its messages, oldest first.
    pub fn conversation(&self, conversation: &str) -> Option<Value> {
        let inner = self.inner();
        let conv = inner.conversations.get(conversation)?;
        Some(json!({"conversation": conv.data, "contact": conv.contact, "messages": conv.messages}))
    }

    /// Every conversation (without messages), newest first, each with its
    /// `contact` (for the playground).
    pub fn conversation_list(&self) -> Vec<Value> {
        self.inner()
            .conversations
            .values()
            .rev()
            .map(|c| {
                let mut v = c.data.clone();
                v["contact"] = c.contact.clone();
                v
            })
            .collect()
    }

    /// Every conversation (without messages), newest first.
    pub fn conversations(&self) -> Vec<Value> {
        self.inner()
            .conversations
            .values()
            .rev()
            .map(|c| c.data.clone())
            .collect()
    }

    /// The messages the bot created in a conversation, oldest first.
    pub fn bot_messages(&self, conversation: &str) -> Vec<Value> {
        self.inner()
            .conversations
            .get(conversation)
            .map(|c| {
                c.messages
                    .iter()
                    .filter(|m| m["senderType"] == "bot")
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Stores a message the API created; `None` when its `frontMsgId` was seen
    /// (the earlier message is returned instead, as Qpien does).
    pub(crate) fn create(
        &self,
        input: Value,
        whatsapp: bool,
    ) -> Result<(Value, bool), &'static str> {
        let mut inner = self.inner();
        let front = input["frontMsgId"].as_str().unwrap_or("").to_owned();
        if !front.is_empty() && self.config().dedup_creates {
            if let Some(existing) = inner.fronts.get(&front) {
                self.counters
                    .duplicate_creates
                    .fetch_add(1, Ordering::Relaxed);
                return Ok((existing.clone(), false));
            }
        }
        let conversation = input["conversationId"].as_str().unwrap_or("").to_owned();
        if !inner.conversations.contains_key(&conversation)
            && !conversation.is_empty()
            && self.config().auto_create_conversations
        {
            drop(inner);
            let channel = if whatsapp { "whatsapp" } else { "livechat" };
            self.create_conversation_with_id(&conversation, channel, None, "Customer");
            inner = self.inner();
        }
        let id = Self::next_id(&mut inner);
        let Some(conv) = inner.conversations.get_mut(&conversation) else {
            return Err("NOT_FOUND");
        };
        let channel = conv.channel_type;
        if whatsapp && channel != "WhatsApp" {
            return Err("BAD_USER_INPUT");
        }
        let template = &input["template"];
        if template.is_object() {
            // A template: any time, if approved and given its parameters.
            if channel != "WhatsApp" {
                return Err("BAD_USER_INPUT");
            }
            let given = template["params"].as_array().map_or(0, Vec::len);
            let name = template["name"].as_str().unwrap_or("");
            let language = template["language"].as_str().unwrap_or("");
            match self.template(name, language) {
                None => return Err("TEMPLATE_NOT_FOUND"),
                Some(n) if n != given => return Err("TEMPLATE_PARAMS_MISMATCH"),
                Some(_) => {}
            }
        } else if channel == "WhatsApp"
            && conv
                .customer_at
                .is_some_and(|at| self.now() >= at + WHATSAPP_WINDOW_MS)
        {
            // As WhatsApp refuses it (Cloud API error 131047).
            self.counters
                .window_refusals
                .fetch_add(1, Ordering::Relaxed);
            return Err("WHATSAPP_WINDOW_CLOSED");
        }
        let mut message = json!({
            "_id": id, "conversation": conversation, "senderType": "bot",
            "sender": {"_id": "flowbot", "name": "flowbot", "type": "ROBOT"},
            "channelType": channel, "createdAt": self.now(), "ackStatus": "SENT",
        });
        for key in [
            "content",
            "messageType",
            "frontMsgId",
            "media",
            "flowBotQuickReply",
            "flowBotQuickReplyButtonsRequired",
            "listMessage",
            "informativeButtons",
            "template",
        ] {
            if !input[key].is_null() {
                message[key] = input[key].clone();
            }
        }
        conv.data["lastMessage"] = last_message(&message);
        conv.messages.push(message.clone());
        if !front.is_empty() && self.config().dedup_creates {
            inner.fronts.insert(front, message.clone());
        }
        let operation = if template.is_object() {
            "sendWhatsappTemplateMessage"
        } else if whatsapp {
            "createMessageByWhatsapp"
        } else {
            "createMessage"
        };
        inner
            .created
            .push(json!({"operation": operation, "input": input}));
        self.counters.created.fetch_add(1, Ordering::Relaxed);
        Ok((message, true))
    }

    /// Changes status or assignment; `None` for an unknown conversation.
    pub(crate) fn update(&self, input: &Value) -> Option<Value> {
        let mut inner = self.inner();
        inner.updates.push(input.clone());
        let id = input["conversationId"].as_str()?.to_owned();
        if !inner.conversations.contains_key(&id) && self.config().auto_create_conversations {
            drop(inner);
            self.create_conversation_with_id(&id, "livechat", None, "Customer");
            inner = self.inner();
        }
        let id = id.as_str();
        let conv = inner.conversations.get_mut(id)?;
        if let Some(status) = input["status"].as_str() {
            conv.data["status"] = json!(status);
        }
        if let Some(person) = input["joinedPerson"].as_str() {
            conv.data["joinedPerson"] = json!(person);
        }
        Some(conv.data.clone())
    }

    /// Issues a token, or says why not.
    pub(crate) fn issue_token(&self, client_id: &str, secret: &str) -> Option<Value> {
        let config = self.config();
        if client_id != config.client_id || secret != config.client_secret {
            return None;
        }
        let mut inner = self.inner();
        let n = inner.rng.u64(..);
        let token = format!("sim-{n:016x}");
        let real = config.token_real_lifetime.unwrap_or(config.token_lifetime);
        inner.tokens.insert(token.clone(), Instant::now() + real);
        self.counters.tokens.fetch_add(1, Ordering::Relaxed);
        Some(
            json!({"accessToken": token, "expiresIn": config.token_lifetime.as_secs(), "tokenType": "Bearer"}),
        )
    }

    /// `Ok` or the error code for `authorization` needing `scope`.
    pub(crate) fn authorize(
        &self,
        authorization: Option<&str>,
        scope: Option<&str>,
    ) -> Result<(), (&'static str, Option<String>)> {
        let auth = authorization.unwrap_or("");
        let token = match self.config().auth {
            None => Some(auth.strip_prefix("Bearer ").unwrap_or(auth).trim()),
            Some(AuthScheme::Bearer) => auth.strip_prefix("Bearer ").map(str::trim),
            Some(AuthScheme::Bare) => (!auth.starts_with("Bearer ")).then_some(auth.trim()),
        }
        .unwrap_or("");
        let (expiry, rejected) = {
            let inner = self.inner();
            (
                inner.tokens.get(token).copied(),
                inner.scripted.reject_tokens,
            )
        };
        if rejected {
            return Err(("UNAUTHORIZED", None));
        }
        match expiry {
            None => return Err(("UNAUTHORIZED", None)),
            Some(t) if Instant::now() >= t => return Err(("TOKEN_EXPIRED", None)),
            Some(_) => {}
        }
        if let Some(scope) = scope {
            if !self.config().scopes.iter().any(|s| s == scope) {
                return Err(("INSUFFICIENT_SCOPES", Some(scope.to_owned())));
            }
        }
        Ok(())
    }

    /// Counts a request against the window; `Err(reset)` when over the limit.
    /// Returns (limit, remaining, reset) for the headers.
    pub(crate) fn rate(&self) -> Result<Option<(u32, u32, Duration)>, Duration> {
        let Some((limit, window)) = self.config().rate_limit else {
            return Ok(None);
        };
        let now = Instant::now();
        let mut inner = self.inner();
        let (start, count) = match inner.window {
            Some((start, count)) if now < start + window => (start, count),
            _ => (now, 0),
        };
        let reset = (start + window).saturating_duration_since(now);
        if count >= limit {
            self.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
            return Err(reset);
        }
        inner.window = Some((start, count + 1));
        Ok(Some((limit, limit - count - 1, reset)))
    }

    /// Whether to inject a fault of this share now.
    pub(crate) fn roll(&self, share: f64) -> bool {
        share > 0.0 && self.inner().rng.f64() < share
    }
}
