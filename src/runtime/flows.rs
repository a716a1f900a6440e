//! Compiled flows, for every bot of the process: compiled when a turn first
//! needs one, shared by content, kept in a cache bounded in bytes.
//!
//! A bot keeps its flow's *sources* ([`FlowSources`]: the texts of its
//! files, read at start and at each reload, a few kilobytes) and asks
//! [`Flows`] for the compiled flow when a turn, a start or a page needs it
//! ([`BotSlot::get`]). A compiled flow is many times its sources (about
//! 3.4 KiB a state, BENCHMARKS.md), so an idle bot keeps none:
//!
//! - **On first use.** A flow is compiled the first time it is asked for,
//!   from the texts read before (never the disk, so a file changed or gone
//!   meanwhile changes nothing until the reload reads it), on a blocking
//!   thread, not the async workers'.
//! - **Shared by content.** The cache is keyed by what the flow is made of:
//!   the texts of its files, the main file's name (a flow's default name) and
//!   the WhatsApp templates it was checked against. Bots whose flows hold the
//!   same, wherever their files are, run one compiled flow; a key that
//!   matches is also checked text for text, so no hash collision can hand a
//!   bot another's flow.
//! - **Bounded in bytes.** Each compiled flow weighs [`Flow::weight`] (an
//!   estimate from its templates, states and texts, checked against a
//!   counting allocator by `benches/startup.rs`); past `runtime.flow_cache_bytes`,
//!   the least recently used are dropped. Never one that a turn holds (its
//!   `Arc` is shared: dropping it would free nothing and compile it again
//!   at once), and never the one just asked for, so a flow larger than the
//!   whole cache still serves its bot.
//!
//! With one bot the flow is compiled at start (a flow that does not compile
//! stops the start, as it always did); with several, the admin API and `run
//! --check` compile a flow before it is accepted, and `flowbot run` only
//! reads the sources at start: a file that cannot be read stops the start,
//! a flow that does not compile is said in its bot's log and `/readyz` and
//! fails its turns (retried, then set aside) until it is fixed.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::SystemTime;

use crate::engine::{Bot, BotError};
use crate::flow::{Flow, FlowLimits, FlowSources, TemplateInfo};
use crate::handler::Registry;
use crate::qpien::QpienClient;

/// The approved WhatsApp templates a flow is checked against.
pub(crate) type Approved = Arc<[TemplateInfo]>;

/// The process's compiled flows.
pub(crate) struct Flows {
    handlers: Registry,
    limits: FlowLimits,
    /// `runtime.flow_cache_bytes`.
    cap: u64,
    cache: Mutex<Cache>,
    /// Flows compiled (a miss of the cache, or a check).
    compiled: AtomicU64,
    /// Flows dropped to stay within the bound.
    evicted: AtomicU64,
    /// Compilations at once: as many as there are cores, so that many bots
    /// asking at once (a start, a readiness probe of all) queue here rather
    /// than start a blocking thread each.
    compiling: tokio::sync::Semaphore,
}

impl std::fmt::Debug for Flows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flows")
            .field("cap", &self.cap)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Cache {
    entries: HashMap<u64, Entry>,
    /// The entries by when they were last used (a tick), oldest first.
    order: BTreeMap<u64, u64>,
    tick: u64,
    bytes: u64,
    /// Sources read, by main file: a bot reading a file another bot read,
    /// unchanged since (by modification times), takes the same texts.
    read: HashMap<PathBuf, (Vec<Option<SystemTime>>, Weak<FlowSources>)>,
    /// How many entries `read` may have before its dead ones are swept.
    sweep_at: usize,
}

struct Entry {
    bot: Arc<Bot>,
    /// What it was compiled from, to check a match text for text.
    sources: Arc<FlowSources>,
    templates: Option<Approved>,
    bytes: u64,
    used: u64,
}

/// What the cache holds now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CacheStats {
    /// Compiled flows held.
    pub(crate) flows: usize,
    /// Their weight, in bytes.
    pub(crate) bytes: u64,
    /// Flows compiled since the start.
    pub(crate) compiled: u64,
    /// Flows dropped to stay within the bound since the start.
    pub(crate) evicted: u64,
}

impl Flows {
    pub(crate) fn new(handlers: Registry, limits: FlowLimits, cap: u64) -> Flows {
        Flows {
            handlers,
            limits,
            cap,
            cache: Default::default(),
            compiled: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            compiling: tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            ),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the flow at `path` (and its includes and subflows), or takes
    /// the texts another bot read of the same files, unchanged since.
    pub(crate) fn read(&self, path: &Path) -> Result<Arc<FlowSources>, BotError> {
        // The files are looked at (their times) after the lock is let go:
        // every turn's `hit` takes it.
        let known = self
            .cache()
            .read
            .get(path)
            .and_then(|(stamps, sources)| Some((stamps.clone(), sources.upgrade()?)));
        if let Some((stamps, sources)) = known {
            if stamps == stamps_of(&sources) {
                return Ok(sources);
            }
        }
        let sources = Arc::new(Flow::read_sources(path, &self.limits)?);
        let stamps = stamps_of(&sources);
        let mut cache = self.cache();
        // Bots removed leave dead entries: swept when the map has doubled
        // since the last sweep.
        if cache.read.len() >= cache.sweep_at {
            cache.read.retain(|_, (_, s)| s.strong_count() > 0);
            cache.sweep_at = (2 * cache.read.len()).max(64);
        }
        cache
            .read
            .insert(path.to_path_buf(), (stamps, Arc::downgrade(&sources)));
        Ok(sources)
    }

    /// The compiled flow of `sources` (checked against `templates`, when
    /// known), from the cache or compiled now on a blocking thread.
    pub(crate) async fn bot(
        self: &Arc<Self>,
        sources: &Arc<FlowSources>,
        templates: Option<&Approved>,
    ) -> Result<Arc<Bot>, BotError> {
        let key = key_of(sources, templates);
        if let Some(bot) = self.hit(key, sources, templates) {
            return Ok(bot);
        }
        let _turn = self.compiling.acquire().await;
        // Compiled by another task while this one waited: taken from there.
        if let Some(bot) = self.hit(key, sources, templates) {
            return Ok(bot);
        }
        let this = self.clone();
        let (owned, approved) = (sources.clone(), templates.cloned());
        match tokio::task::spawn_blocking(move || this.compile(key, &owned, approved)).await {
            Ok(compiled) => compiled,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // The runtime is shutting down: compiled here instead.
            Err(_) => self.compile(key, sources, templates.cloned()),
        }
    }

    /// [`Flows::bot`] on the calling thread: for a check, or a start.
    pub(crate) fn bot_now(
        &self,
        sources: &Arc<FlowSources>,
        templates: Option<&Approved>,
    ) -> Result<Arc<Bot>, BotError> {
        let key = key_of(sources, templates);
        if let Some(bot) = self.hit(key, sources, templates) {
            return Ok(bot);
        }
        self.compile(key, sources, templates.cloned())
    }

    fn hit(
        &self,
        key: u64,
        sources: &Arc<FlowSources>,
        templates: Option<&Approved>,
    ) -> Option<Arc<Bot>> {
        let mut cache = self.cache();
        let cache = &mut *cache;
        let entry = cache.entries.get_mut(&key)?;
        let same = (Arc::ptr_eq(&entry.sources, sources) || entry.sources.same_texts(sources))
            && entry.templates.as_deref() == templates.map(|t| &**t);
        if !same {
            return None;
        }
        cache.tick += 1;
        cache.order.remove(&entry.used);
        entry.used = cache.tick;
        cache.order.insert(entry.used, key);
        Some(entry.bot.clone())
    }

    fn compile(
        &self,
        key: u64,
        sources: &Arc<FlowSources>,
        templates: Option<Approved>,
    ) -> Result<Arc<Bot>, BotError> {
        let mut names = self.handlers.names();
        names.templates = templates.as_deref().map(<[_]>::to_vec);
        let flow = Flow::compile_sources(sources, &names, &self.limits)?;
        let bytes = flow.weight() as u64;
        let bot = Arc::new(Bot::new(flow, self.handlers.clone())?);
        self.compiled.fetch_add(1, Ordering::Relaxed);
        if bytes > self.cap {
            tracing::warn!(
                flow = %sources.main.display(),
                bytes,
                cap = self.cap,
                "a compiled flow weighs more than runtime.flow_cache_bytes: it is kept only while it is the last used"
            );
        }
        let mut cache = self.cache();
        let cache = &mut *cache;
        cache.tick += 1;
        let used = cache.tick;
        // Compiled meanwhile by another task for another bot: either serves.
        if let Some(old) = cache.entries.remove(&key) {
            cache.order.remove(&old.used);
            cache.bytes -= old.bytes;
        }
        cache.entries.insert(
            key,
            Entry {
                bot: bot.clone(),
                sources: sources.clone(),
                templates,
                bytes,
                used,
            },
        );
        cache.order.insert(used, key);
        cache.bytes += bytes;
        // The least recently used first; never one a turn holds (besides
        // the entry, the `bot` above counts for the one just compiled), nor
        // the one just compiled.
        let mut held = Vec::new();
        while cache.bytes > self.cap {
            let Some((&tick, &oldest)) = cache
                .order
                .iter()
                .find(|(_, k)| **k != key && !held.contains(*k))
            else {
                break;
            };
            let entry = &cache.entries[&oldest];
            if Arc::strong_count(&entry.bot) > 1 {
                held.push(oldest);
                continue;
            }
            cache.order.remove(&tick);
            let entry = cache.entries.remove(&oldest).expect("an entry");
            cache.bytes -= entry.bytes;
            self.evicted.fetch_add(1, Ordering::Relaxed);
        }
        Ok(bot)
    }

    /// What the cache holds now.
    pub(crate) fn stats(&self) -> CacheStats {
        let cache = self.cache();
        CacheStats {
            flows: cache.entries.len(),
            bytes: cache.bytes,
            compiled: self.compiled.load(Ordering::Relaxed),
            evicted: self.evicted.load(Ordering::Relaxed),
        }
    }
}

/// The key of a compiled flow: its texts (by their fingerprint), its main
/// file's name and the templates it was checked against.
fn key_of(sources: &FlowSources, templates: Option<&Approved>) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    sources.version.hash(&mut h);
    sources.files.len().hash(&mut h);
    sources.main.file_name().hash(&mut h);
    templates.map(|t| &**t).hash(&mut h);
    h.finish()
}

/// The files' modification times.
pub(crate) fn stamps_of(sources: &FlowSources) -> Vec<Option<SystemTime>> {
    sources
        .files
        .iter()
        .map(|(f, _)| std::fs::metadata(f).and_then(|m| m.modified()).ok())
        .collect()
}

/// A bot's flow: the sources it runs, compiled through the process's cache
/// when asked for. A reload replaces the sources.
pub(crate) struct BotSlot {
    flows: Arc<Flows>,
    sources: RwLock<Arc<FlowSources>>,
    /// To read the account's approved WhatsApp templates, once, the first
    /// time a flow that names some is compiled.
    client: QpienClient,
    templates: tokio::sync::OnceCell<Option<Approved>>,
    /// The flow version, for the metrics.
    version: Arc<AtomicI64>,
}

impl BotSlot {
    pub(crate) fn new(
        flows: Arc<Flows>,
        sources: Arc<FlowSources>,
        client: QpienClient,
    ) -> BotSlot {
        BotSlot {
            flows,
            version: Arc::new(AtomicI64::new(metric_version(sources.version))),
            sources: RwLock::new(sources),
            client,
            templates: Default::default(),
        }
    }

    /// The sources in service.
    pub(crate) fn sources(&self) -> Arc<FlowSources> {
        self.sources
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Puts other sources in service (a reload that compiled them).
    pub(crate) fn set(&self, sources: Arc<FlowSources>) {
        self.version
            .store(metric_version(sources.version), Ordering::Relaxed);
        *self.sources.write().unwrap_or_else(|e| e.into_inner()) = sources;
    }

    /// The bot in service, compiled if the cache does not hold it.
    pub(crate) async fn get(&self) -> Result<Arc<Bot>, BotError> {
        self.compiled(&self.sources()).await
    }

    /// The bot of `sources` (in service or not), compiled if the cache does
    /// not hold it, and checked against the account's WhatsApp templates
    /// when the flow names some.
    pub(crate) async fn compiled(&self, sources: &Arc<FlowSources>) -> Result<Arc<Bot>, BotError> {
        if let Some(templates) = self.templates.get() {
            return self.flows.bot(sources, templates.as_ref()).await;
        }
        let plain = self.flows.bot(sources, None).await?;
        if plain.flow().whatsapp_templates.is_empty() {
            return Ok(plain);
        }
        let templates = self
            .templates
            .get_or_init(|| async {
                super::read_templates(&self.client)
                    .await
                    .map(Approved::from)
            })
            .await;
        match templates {
            Some(t) => self.flows.bot(sources, Some(t)).await,
            None => Ok(plain),
        }
    }

    /// The flow version as a gauge shows it.
    pub(crate) fn version_gauge(&self) -> Arc<AtomicI64> {
        self.version.clone()
    }
}

/// A flow's fingerprint as a gauge can carry it exactly (low 52 bits).
fn metric_version(version: u64) -> i64 {
    (version & ((1 << 52) - 1)) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(say: &str) -> String {
        format!("version: 1\nstates:\n  start: {{ say: \"{say} {{{{ name | upper }}}}\" }}\n")
    }

    fn flows(cap: u64) -> Arc<Flows> {
        Arc::new(Flows::new(Registry::new(), FlowLimits::default(), cap))
    }

    #[tokio::test]
    async fn bots_with_the_same_flow_anywhere_share_one_compiled_flow() {
        let dir = crate::files::private_temp_dir("flowbot-flows-").unwrap();
        let (a, b, c) = (
            dir.path().join("a/shop.yaml"),
            dir.path().join("b/shop.yaml"),
            dir.path().join("c/other.yaml"),
        );
        for p in [&a, &b, &c] {
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, flow("Hi")).unwrap();
        }
        let flows = flows(u64::MAX);
        let (sa, sb, sc) = (
            flows.read(&a).unwrap(),
            flows.read(&b).unwrap(),
            flows.read(&c).unwrap(),
        );
        // One file read twice is one set of texts.
        assert!(Arc::ptr_eq(&sa, &flows.read(&a).unwrap()));
        let (ba, bb, bc) = (
            flows.bot(&sa, None).await.unwrap(),
            flows.bot(&sb, None).await.unwrap(),
            flows.bot(&sc, None).await.unwrap(),
        );
        // The same texts in two folders: one compiled flow; another name
        // (the default flow name is the file's): another.
        assert!(Arc::ptr_eq(&ba, &bb));
        assert!(!Arc::ptr_eq(&ba, &bc));
        assert_eq!(bc.flow().name, "other");
        assert_eq!(flows.stats().compiled, 2);
        // A file changed is read again, and compiled apart.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&a, flow("Hello")).unwrap();
        let sa2 = flows.read(&a).unwrap();
        assert!(!Arc::ptr_eq(&sa, &sa2));
        let ba2 = flows.bot(&sa2, None).await.unwrap();
        assert_ne!(ba2.flow().version, ba.flow().version);
        // A change that does not parse is an error, with its place.
        std::fs::write(&a, "version: 1\nstates: [").unwrap();
        let e = flows.read(&a).unwrap_err().to_string();
        assert!(e.contains("shop.yaml:2"), "{e}");
    }

    #[tokio::test]
    async fn the_cache_keeps_to_its_bound_least_recently_used_first_never_a_flow_in_use() {
        let dir = crate::files::private_temp_dir("flowbot-flows-").unwrap();
        let mut sources = Vec::new();
        for i in 0..4 {
            let p = dir.path().join(format!("f{i}.yaml"));
            std::fs::write(&p, flow(&format!("Hi {i}"))).unwrap();
            sources.push(flows(0).read(&p).unwrap());
        }
        let one = {
            let f = flows(u64::MAX);
            let bot = f.bot(&sources[0], None).await.unwrap();
            bot.flow().weight() as u64
        };
        // Room for two.
        let flows = flows(2 * one + one / 2);
        let first = flows.bot(&sources[0], None).await.unwrap();
        drop(flows.bot(&sources[1], None).await.unwrap());
        // The first used again: the second is now the least recently used.
        drop(flows.bot(&sources[0], None).await.unwrap());
        drop(flows.bot(&sources[2], None).await.unwrap());
        let s = flows.stats();
        assert_eq!((s.flows, s.compiled, s.evicted), (2, 3, 1));
        assert!(s.bytes <= 2 * one + one / 2);
        drop(flows.bot(&sources[0], None).await.unwrap());
        assert_eq!(flows.stats().compiled, 3, "the first was kept");
        drop(flows.bot(&sources[1], None).await.unwrap());
        assert_eq!(flows.stats().compiled, 4, "the second was dropped");
        // `first` is held (a turn running): it outlives any eviction, and
        // the others go instead, even if it is the oldest.
        drop(flows.bot(&sources[3], None).await.unwrap());
        drop(flows.bot(&sources[2], None).await.unwrap());
        let again = flows.bot(&sources[0], None).await.unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        // A cache with room for none still serves the flow asked for.
        let tiny = self::flows(1);
        let a = tiny.bot(&sources[0], None).await.unwrap();
        let b = tiny.bot(&sources[0], None).await.unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(tiny.stats().flows, 1);
    }
}
