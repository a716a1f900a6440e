//! The dispatcher: every event the inbox recorded (`inbox.rs`) is run as a
//! turn, one at a time per conversation, in arrival order, and committed
//! atomically.
//!
//! A turn is four steps: decode the event and the stored conversation, ask the
//! engine ([`Bot::step`](crate::Bot::step), which makes every decision), plan
//! the replies as `createMessage` inputs, and commit inbox item, conversation
//! and outbox in one write. Then the replies go to the sender.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::Instrument;

use super::at_once::{Pending, Taken};
use super::claims::Claims;
use super::flows::BotSlot;
use super::lanes::Worker;
use super::metrics::Metrics;
use super::outbox::Outbox;
use super::payload::{self, event_letter, OutboxAction};
use super::Stop;
use crate::engine::{Bot, Stored, Turn};
use crate::message::{Channel, Effect, Event};
use crate::qpien::types::ExternalConversation;
use crate::qpien::{plan_replies, Operation, QpienClient};
use crate::retry::{until_ok, Backoff};
use crate::store::{InboxItem, OutboxItem, StateStore, StoreError, StoredSession, TurnCommit};
use crate::time::Millis;

/// Runs turns: what the dispatcher's lanes do with each inbox item.
pub(crate) struct Dispatcher {
    pub(crate) store: Arc<dyn StateStore>,
    pub(crate) bot: Arc<BotSlot>,
    /// For planning replies (`frontMsgId` prefix, WhatsApp mutation) and for
    /// reading a handed-off conversation.
    pub(crate) client: QpienClient,
    pub(crate) outbox: Arc<Outbox>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) stop: Stop,
    /// Runs a turn may take (see [`Dispatcher::turn`]).
    pub(crate) max_attempts: u32,
    /// Which conversations this instance runs (shared store).
    pub(crate) claims: Arc<Claims>,
    /// Suspect turns run one at a time.
    pub(crate) suspects: tokio::sync::Semaphore,
    pub(crate) handoff: Handoff,
    /// What turns are timed by.
    pub(crate) clock: crate::time::ClockHandle,
    /// The conversation event log its commits write to.
    pub(crate) log: Arc<crate::insights::Log>,
}

/// What a panic said, if it said it in text.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .map_or_else(|| "(no message)".into(), |m| crate::text::shorten(&m, 300))
}

/// Watching handed-off conversations: Qpien documents no event for an agent
/// leaving, but `joinedCPerson` is "the person currently joined". So when the
/// customer writes during a handoff, the conversation is read (at most once per
/// `check_interval` each) and given back to the bot when nobody is joined or
/// its status is one of `qpien.released_statuses`.
pub(crate) struct Handoff {
    check_interval: Duration,
    released: Vec<String>,
    last_check: Mutex<HashMap<String, Instant>>,
}

impl Handoff {
    pub(crate) fn new(check_interval: Duration, released_statuses: &[String]) -> Handoff {
        Handoff {
            check_interval,
            released: released_statuses.to_vec(),
            last_check: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a check is due for `conversation` now (and marks it done).
    fn due(&self, conversation: &str) -> bool {
        let mut last = self.last_check.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if last
            .get(conversation)
            .is_some_and(|t| now.duration_since(*t) < self.check_interval)
        {
            return false;
        }
        if last.len() >= 100_000 {
            let every = self.check_interval;
            last.retain(|_, t| now.duration_since(*t) < every);
        }
        last.insert(conversation.to_owned(), now);
        true
    }

    /// Whether Qpien shows the conversation as nobody's.
    fn is_back(&self, c: &ExternalConversation) -> bool {
        !c.has_agent()
            || c.status
                .as_deref()
                .is_some_and(|s| self.released.iter().any(|r| r.eq_ignore_ascii_case(s)))
    }
}

/// A turn waiting in its conversation's lane: the inbox item, and its event
/// as the webhook or the poller read it when it comes straight from there
/// (the body is parsed once); an item read back from the store has none and
/// its payload is decoded.
#[derive(Debug)]
pub(crate) struct Queued {
    pub(crate) item: InboxItem,
    pub(crate) event: Option<Event>,
    /// Its acceptance, when it runs at once and is written with its commit
    /// (see `at_once.rs`; the item is numbered 0 until it is written).
    pub(crate) pending: Option<Arc<Pending>>,
    /// The fencing token of the claim it was queued under (a store shared
    /// by instances). A turn queued under a claim that was lost and taken
    /// back since is left: taking it back reads the conversation's pending
    /// messages again, this one among them, in their order, and queues them
    /// in place of the old claim's copies (`Lanes::requeue`); this covers
    /// the moment between the new claim and that reading.
    pub(crate) claim: Option<u64>,
}

impl From<InboxItem> for Queued {
    fn from(item: InboxItem) -> Queued {
        Queued {
            item,
            event: None,
            pending: None,
            claim: None,
        }
    }
}

impl Worker for Dispatcher {
    type Item = Queued;

    fn key(queued: &Queued) -> (&str, u64) {
        (&queued.item.conversation, queued.item.seq)
    }

    async fn run(&self, conversation: &str, queued: Queued) -> bool {
        let span = tracing::info_span!(
            "turn",
            conversation = tracing::field::Empty,
            key = tracing::field::Empty
        );
        // Named (a keyed hash) only for a log that shows it.
        if !span.is_disabled() {
            let name = self.log.name(conversation).await;
            let key = self.log.key(&queued.item.key, conversation, &name);
            span.record("conversation", tracing::field::display(&name));
            span.record("key", tracing::field::display(&key));
        }
        self.turn(queued).instrument(span).await;
        true
    }
}

impl Dispatcher {
    /// Retries a store call until it works (a turn cannot be skipped); gives
    /// up only at shutdown, leaving the item for the next start.
    async fn persist<T, F, Fut>(&self, what: &str, f: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        until_ok(Backoff::STORE, what, |d| self.stop.pause(d), f).await
    }

    /// Before a customer's message in a handoff, reads the conversation (when
    /// a check is due) and, when Qpien shows nobody on it, gives it back to the
    /// bot first: the release's turn, and the conversation after it.
    async fn check_handoff(
        &self,
        bot: &Bot,
        conversation: &str,
        stored: Option<Stored>,
        event: &Event,
        now: Millis,
    ) -> (Option<Turn>, Option<Stored>) {
        let in_handoff = stored.as_ref().is_some_and(|s| s.session.handoff);
        if !in_handoff || !matches!(event, Event::Message(_)) || !self.handoff.due(conversation) {
            return (None, stored);
        }
        let back = match self.client.get_conversation(conversation).await {
            Ok(Some(c)) => self.handoff.is_back(&c),
            Ok(None) => {
                tracing::warn!(
                    "Qpien does not know a handed-off conversation; the bot takes it back"
                );
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read a handed-off conversation; it stays with the person");
                false
            }
        };
        if !back {
            return (None, stored);
        }
        let mut release = bot.step(conversation, stored, &Event::Release, now).await;
        // `then` puts the message turn's stored form back.
        let stored = release.stored.take();
        (Some(release), stored)
    }

    /// Decodes the event and asks the engine (after a handoff check); says
    /// what released the conversation, if something did.
    async fn step(
        &self,
        bot: &Bot,
        conversation: &str,
        stored: Option<Stored>,
        item: &InboxItem,
        event: Option<&Event>,
    ) -> (Turn, Option<&'static str>) {
        let now = self.clock.now();
        let decoded = match event {
            Some(event) => Ok(std::borrow::Cow::Borrowed(event)),
            None => payload::decode::<Event>(&item.payload).map(std::borrow::Cow::Owned),
        };
        match decoded {
            Ok(event) => {
                let (checked, stored) = self
                    .check_handoff(bot, conversation, stored, &event, now)
                    .await;
                let turn = bot.step(conversation, stored, &event, now).await;
                match checked {
                    Some(release) => (release.then(turn), Some("checked")),
                    None => {
                        let by = turn.released.then_some(match *event {
                            Event::Release => "manual",
                            Event::HandoffFailed => "handoff_failed",
                            Event::AgentLeft => "agent_left",
                            _ => "timeout",
                        });
                        (turn, by)
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "unreadable inbox item; skipped");
                (bot.unchanged(stored), None)
            }
        }
    }

    /// Counts a run of `item` in the store (`None` at shutdown).
    async fn count_attempt(&self, item: &InboxItem) -> Option<u32> {
        self.persist("count a turn's attempt", || {
            self.store.attempt(item.seq, &item.conversation)
        })
        .await
    }

    /// Sets a poison message aside: a dead letter (the event and why), the
    /// inbox item done with the conversation as it was, logged and counted.
    async fn set_aside(
        &self,
        item: &InboxItem,
        event: Option<&Event>,
        fence: Option<u64>,
        attempts: u32,
        why: &str,
    ) {
        let reason = format!("set aside after {attempts} attempts: {why}");
        // The payload is the event's encoding; a message run at once is
        // queued with its event only.
        let payload = event.map_or_else(|| item.payload.clone(), payload::encode);
        tracing::error!(%reason, "a message is set aside; the conversation goes on");
        let letter = event_letter(
            "turn",
            &item.conversation,
            &item.key,
            reason,
            payload,
            self.clock.now(),
        );
        if self
            .persist("keep a dead letter", || {
                self.store.add_dead_letter(letter.clone())
            })
            .await
            .is_none()
        {
            return;
        }
        self.metrics.dead_letters.inc();
        self.metrics.turns.count("set_aside");
        let Some(session) = self
            .persist("load a session", || self.store.session(&item.conversation))
            .await
        else {
            return;
        };
        let commit = TurnCommit {
            inbox_seq: item.seq,
            conversation: item.conversation.clone(),
            session,
            outbox: Vec::new(),
            fence,
            at: self.clock.now(),
            events: Vec::new(),
        };
        let _ = self.commit(&commit).await;
    }

    /// Writes the acceptance of a message run at once on its own (or waits
    /// for whoever writes it), before anything that needs the message in the
    /// store: an attempt counted, a commit of the turn alone. `false`:
    /// nothing to run (a duplicate, or the write failed and the delivery was
    /// refused, to come again).
    async fn write_first(&self, seq: &mut u64, pending: &mut Option<Arc<Pending>>) -> bool {
        let Some(p) = pending.take() else {
            return true;
        };
        match p.write(&*self.store, &self.metrics).await {
            Ok(Some(written)) => {
                *seq = written;
                true
            }
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(error = %e, "a message could not be written; its delivery was refused");
                false
            }
        }
    }

    /// Writes a message run at once with its turn's commit, in one write
    /// (see `at_once.rs`). Tried once: the delivery waits on it, and is
    /// refused if it fails (Qpien sends it again). `None`: nothing written
    /// (a duplicate, or the write failed).
    async fn commit_accepting(&self, mut taken: Taken, commit: TurnCommit) -> Option<Vec<u64>> {
        match self.store.accept_and_commit(taken.item(), commit).await {
            Ok(Some((seq, ids))) => {
                self.metrics.acceptances.count("with_turn");
                taken.written(Ok(Some(seq)));
                Some(ids)
            }
            Ok(None) => {
                taken.written(Ok(None));
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "a message and its turn could not be written; its delivery was refused");
                taken.written(Err(e));
                None
            }
        }
    }

    /// Commits a turn, retrying until the store takes it, unless the claim
    /// changed hands (then the turn is dropped: the instance that holds the
    /// conversation now runs it from the inbox).
    async fn commit(&self, commit: &TurnCommit) -> Option<Vec<u64>> {
        let result = until_ok(
            Backoff::STORE,
            "commit a turn",
            |d| self.stop.pause(d),
            || async {
                match self.store.commit(commit.clone()).await {
                    Ok(ids) => Ok(Ok(ids)),
                    Err(e) if e.is_fenced() => Ok(Err(e)),
                    Err(e) => Err(e),
                }
            },
        )
        .await?;
        match result {
            Ok(ids) => Some(ids),
            Err(e) => {
                tracing::warn!(error = %e, "a turn was dropped: its conversation moved");
                self.claims.lost(&commit.conversation, commit.fence);
                None
            }
        }
    }

    /// One turn. A resumed item counts an attempt first; a turn that panics
    /// counts one and runs again. Past `max_attempts` the item is set aside
    /// (a dead letter) and the conversation goes on with its next message.
    async fn turn(&self, queued: Queued) {
        let Queued {
            mut item,
            event,
            mut pending,
            claim,
        } = queued;
        let started = Instant::now();
        let conversation = item.conversation.as_str();
        let fence = self.claims.fence(conversation);
        let stale = claim.is_some() && claim != fence;
        if (fence.is_none() || stale) && self.claims.shared() {
            // Queued while this instance held the conversation, and taken
            // over by another since (a commit here was fenced, or a renewal
            // found the claim gone). Run here, its commit would carry no
            // token and could write over the holder's: it is left to the
            // holder, woken to read it from the inbox. Taken back here
            // since, its claim is a new one, whose taking queued the
            // conversation's pending messages again in their order: run
            // now, this one would overtake those before it.
            tracing::info!("a turn of a conversation taken over is left to its new holder");
            if let Err(e) = self.store.notify(conversation).await {
                tracing::warn!(error = %e, "cannot wake the conversation's holder; its sweep finds the message");
            }
            return;
        }
        let mut _alone = None;
        if item.resumed {
            let Some(n) = self.count_attempt(&item).await else {
                return;
            };
            if n == 0 {
                // No longer pending: committed already (read before that).
                return;
            }
            if n > self.max_attempts {
                return self
                    .set_aside(
                        &item,
                        event.as_ref(),
                        fence,
                        n,
                        "its turn never finished (the process stopped during it)",
                    )
                    .await;
            }
            if n > 1 {
                // A suspect: resumed before and still unfinished.
                _alone = self.suspects.acquire().await.ok();
            }
        }
        // The flow, compiled now if no turn needed it lately. One that does
        // not compile (a broken file read at start) is tried again, each try
        // an attempt, so that a fix (the reload) runs the turn; past the
        // attempts, the message is set aside like a turn that panics.
        let bot = loop {
            match self.bot.get().await {
                Ok(bot) => break bot,
                Err(e) => {
                    tracing::error!(error = %e, "the bot's flow does not compile; its turn waits");
                    if !self.write_first(&mut item.seq, &mut pending).await {
                        return;
                    }
                    let Some(n) = self.count_attempt(&item).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    if n > self.max_attempts {
                        let why = format!("its bot's flow does not compile: {e}");
                        return self.set_aside(&item, event.as_ref(), fence, n, &why).await;
                    }
                    if !self.stop.pause(Duration::from_secs(1 << n.min(5))).await {
                        return;
                    }
                }
            }
        };
        let loaded = self
            .persist("load a session", || {
                self.store.session_for_turn(conversation, fence)
            })
            .await;
        let Some(loaded) = loaded else { return };
        let Some(recorder) = self
            .persist("read the event log's key", || self.log.recorder())
            .await
        else {
            return;
        };
        let (turn, before) = loop {
            let stored: Option<Stored> = loaded.as_ref().and_then(|s| match payload::decode(&s.data) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!(error = %e, "unreadable session; the conversation starts over");
                    None
                }
            });
            let before = recorder
                .and(stored.as_ref())
                .map(crate::insights::Before::of);
            let caller = bot
                .classifier
                .is_some()
                .then(|| self.metrics.classify.caller());
            // The engine's step, in an allocation of its own for as long as
            // it runs: it is most of what a turn keeps in its future, and
            // inline it would make every turn's task that size throughout.
            let run = Box::pin(futures_util::FutureExt::catch_unwind(
                std::panic::AssertUnwindSafe(crate::nlu::for_caller(
                    caller,
                    self.step(&bot, conversation, stored, &item, event.as_ref()),
                )),
            ));
            match run.await {
                Ok(turn) => break (turn, before),
                Err(panic) => {
                    let what = panic_message(&panic);
                    tracing::error!(panic = %what, "the turn panicked");
                    if !self.write_first(&mut item.seq, &mut pending).await {
                        return;
                    }
                    let Some(n) = self.count_attempt(&item).await else {
                        return;
                    };
                    if n > self.max_attempts {
                        return self
                            .set_aside(
                                &item,
                                event.as_ref(),
                                fence,
                                n,
                                &format!("its turn panicked: {what}"),
                            )
                            .await;
                    }
                }
            }
        };
        let (mut turn, released_by) = turn;
        // A schedule that fires faster than the budget sends: a firing that
        // finds the conversation's messages still queued sends nothing new,
        // so the queue holds one firing's messages, not a backlog.
        if let Some(schedule) = &turn.schedule {
            if self.outbox.has(conversation) && !turn.messages.is_empty() {
                tracing::info!(%schedule, "a schedule fired with its conversation's messages still queued: nothing new is sent");
                self.metrics.schedule_coalesced.inc();
                turn.messages.clear();
            }
        }
        let channel = turn
            .stored
            .as_ref()
            .map_or(Channel::default(), |s| s.channel);
        let plan = plan_replies(
            self.client.config(),
            conversation,
            channel,
            &item.key,
            &turn.messages,
        );
        if turn.withheld > 0 {
            self.metrics.withheld.inc_by(turn.withheld as u64);
        }
        let mut actions: Vec<OutboxAction> = plan
            .into_iter()
            .map(|message| {
                let free_form = message.operation != Operation::SendWhatsappTemplateMessage;
                OutboxAction::Message {
                    message: Box::new(message),
                    window_until: turn.window_closes.filter(|_| free_form),
                }
            })
            .collect();
        if turn.effects.contains(&Effect::Handoff) {
            actions.push(OutboxAction::Handoff);
        }
        if let Some(by) = released_by {
            tracing::info!(by, "the conversation is back with the bot");
            self.metrics.releases.count(by);
            // Qpien still shows a person on it: say it is released.
            if matches!(by, "manual" | "timeout") {
                actions.push(OutboxAction::Release);
            }
        }
        let outbox = actions.iter().map(payload::encode).collect();
        let mut commit = TurnCommit {
            inbox_seq: item.seq,
            conversation: conversation.to_owned(),
            session: turn.stored.as_ref().map(|s| StoredSession {
                data: payload::encode(s),
                due_at: turn.due,
            }),
            outbox,
            fence,
            at: self.clock.now(),
            events: recorder.map_or_else(Vec::new, |r| {
                r.events(
                    bot.flow(),
                    conversation,
                    before.as_ref(),
                    &turn,
                    self.clock.now(),
                )
            }),
        };
        let ids = match pending.as_ref().and_then(|p| p.take()) {
            // Run at once: the message is written with its commit.
            Some(taken) => match self.commit_accepting(taken, commit).await {
                Some(ids) => ids,
                None => return,
            },
            None => {
                // Written already (at the deadline, or before a later
                // message of the conversation): committed under its number.
                if !self.write_first(&mut item.seq, &mut pending).await {
                    return;
                }
                commit.inbox_seq = item.seq;
                let Some(ids) = self.commit(&commit).await else {
                    return;
                };
                ids
            }
        };
        // A turn whose only problem is WhatsApp's window (a start where the
        // customer never wrote, say) is no error of the bot's: it has its
        // own result.
        let result = match turn.errors.len() {
            0 => "ok",
            1 if turn.withheld > 0 => "withheld",
            _ => "error",
        };
        self.metrics.turns.count(result);
        if let Some(c) = &turn.intent {
            if c.by.is_none() {
                let result = if c.intent.is_some() {
                    "intent"
                } else {
                    "not_sure"
                };
                self.metrics.classify.count("builtin", result, None);
            }
            if let Some(recent) = &self.metrics.classify.recent {
                recent.note(conversation, c);
            }
        }
        for step in &turn.trace {
            if let crate::engine::Step::Split(id, n) = *step {
                let st = bot.flow().state(id);
                if let Some((to, _)) = st.split.get(n as usize) {
                    self.metrics
                        .splits
                        .count(&st.name, &bot.flow().state(*to).name);
                }
            }
        }
        self.metrics
            .turn_latency
            .observe(started.elapsed().as_secs_f64());
        tracing::debug!(replies = ids.len(), "turn committed");
        // Sent from what the turn made: the stored payload is for a restart.
        for (id, action) in ids.into_iter().zip(actions) {
            let item = OutboxItem {
                id,
                conversation: conversation.to_owned(),
                payload: Vec::new(),
            };
            self.outbox.queue(item, action);
        }
    }
}
