//! `flowbot lsp`: a language server for flow files, over stdio.
//!
//! The protocol is rust-analyzer's `lsp-server` (framing, initialize and
//! shutdown) with `lsp-types` (the messages); the knowledge is the flow
//! loader's own, so the editor says what `flowbot validate` says:
//!
//! - **diagnostics** on open, change and save, with ranges, for the file and
//!   each file it includes (an included file that is open is analysed
//!   through the flow that includes it, with the editor's unsaved text);
//! - **completion** of state names (after `goto:`, `next:`, `on_error:`,
//!   `release:`, `start:`, `state:`), actions (`action:`) and matchers
//!   (`match:`) registered in the binary, the button and list ids the flow
//!   offers (`button:`, `list:`, its intents' conditions), and the kinds of
//!   `validate:` and `media:`;
//! - **go to definition** from a state's name to its key, in whichever file
//!   of the flow it is;
//! - **hover** on a state's name: what the state says, asks and does.
//!
//! Each request is answered from the last analysis; a file that does not
//! parse mid-edit keeps the outline of its last good version, so completion
//! still knows its states.

use lsp_server::{Connection, Message, Notification, Request, Response};
use lsp_types::notification::{
    DidChangeTextDocument, DidCloseTextDocument, DidOpenTextDocument, DidSaveTextDocument,
    Notification as _, PublishDiagnostics,
};
use lsp_types::request::{Completion, GotoDefinition, HoverRequest, Request as _};
use lsp_types::{
    CompletionItem, CompletionItemKind, CompletionOptions, CompletionParams, CompletionResponse,
    Diagnostic as LspDiagnostic, DiagnosticSeverity, GotoDefinitionParams, GotoDefinitionResponse,
    Hover, HoverContents, HoverParams, HoverProviderCapability, Location, MarkupContent,
    MarkupKind, OneOf, Position, PublishDiagnosticsParams, Range, ServerCapabilities,
    TextDocumentSyncCapability, TextDocumentSyncKind, Uri,
};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::flow::model::{Rule, Say, SayItem, State, Text};
use crate::flow::{analyze, join_key, HandlerNames, Loaded, Severity};

/// Runs the server on stdin/stdout until the editor says `exit`; the exit
/// code.
pub(super) fn run(names: HandlerNames) -> u8 {
    let (connection, io) = super::lsp_io::stdio();
    let code = match serve(&connection, names) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: flowbot lsp: {e}");
            1
        }
    };
    // The writer ends once the connection is gone, its last answers out.
    drop(connection);
    match io.join() {
        Ok(()) => code,
        Err(_) => {
            eprintln!("error: flowbot lsp: the output thread failed");
            1
        }
    }
}

type Failure = Box<dyn std::error::Error + Send + Sync>;

fn capabilities() -> ServerCapabilities {
    ServerCapabilities {
        text_document_sync: Some(TextDocumentSyncCapability::Kind(TextDocumentSyncKind::FULL)),
        completion_provider: Some(CompletionOptions {
            trigger_characters: Some(vec![":".into(), " ".into()]),
            ..CompletionOptions::default()
        }),
        definition_provider: Some(OneOf::Left(true)),
        hover_provider: Some(HoverProviderCapability::Simple(true)),
        ..ServerCapabilities::default()
    }
}

fn serve(connection: &Connection, names: HandlerNames) -> Result<(), Failure> {
    connection.initialize(serde_json::to_value(capabilities())?)?;
    let mut server = Server {
        names,
        open: HashMap::new(),
        roots: HashMap::new(),
        outlines: HashMap::new(),
        published: HashMap::new(),
    };
    for message in &connection.receiver {
        match message {
            Message::Request(req) => {
                if connection.handle_shutdown(&req)? {
                    return Ok(());
                }
                let response = server.request(req);
                connection.sender.send(Message::Response(response))?;
            }
            Message::Notification(n) => {
                for out in server.notification(n) {
                    connection.sender.send(Message::Notification(out))?;
                }
            }
            Message::Response(_) => {}
        }
    }
    Ok(())
}

/// A file as the editor has it.
struct OpenDoc {
    uri: Uri,
    text: String,
}

/// What one file of a flow defines, from its last version that parsed.
#[derive(Default, Clone)]
struct Outline {
    /// Its states.
    states: Vec<StateInfo>,
    /// Quick-reply ids the file offers.
    buttons: BTreeSet<String>,
    /// List row ids the file offers.
    rows: BTreeSet<String>,
    /// The flow it belongs to: 0 the main one (with its includes), else a
    /// subflow, whose states are its own.
    unit: usize,
}

/// A state, where its key is, and what hover says of it.
#[derive(Clone)]
struct StateInfo {
    name: String,
    /// 0-based line of its key.
    line: usize,
    /// 0-based char column of its key.
    column: usize,
    /// What it says and does, in Markdown.
    summary: String,
}

struct Server {
    names: HandlerNames,
    /// Open documents, by file.
    open: HashMap<PathBuf, OpenDoc>,
    /// For each analysed flow (by its main file), the files it was read from.
    roots: HashMap<PathBuf, Vec<PathBuf>>,
    /// Each file's outline.
    outlines: HashMap<PathBuf, Outline>,
    /// Files that have diagnostics published, per root (to clear them).
    published: HashMap<PathBuf, BTreeSet<PathBuf>>,
}

/// The file a URI names (only `file:` URIs are served).
fn uri_path(uri: &Uri) -> Option<PathBuf> {
    let path = url::Url::parse(uri.as_str()).ok()?.to_file_path().ok()?;
    Some(canonical(&path))
}

fn path_uri(path: &Path) -> Option<Uri> {
    Uri::from_str(url::Url::from_file_path(path).ok()?.as_str()).ok()
}

/// A file's path as a key: resolved when it exists.
fn canonical(path: &Path) -> PathBuf {
    path.canonicalize().unwrap_or_else(|_| path.to_path_buf())
}

/// The UTF-16 offset of 1-based char column `column` on `line`.
fn utf16(line: &str, column: usize) -> u32 {
    line.chars()
        .take(column.saturating_sub(1))
        .map(char::len_utf16)
        .sum::<usize>() as u32
}

/// The char index on `line` of a UTF-16 offset.
fn char_index(line: &str, offset: u32) -> usize {
    let mut units = 0usize;
    for (i, c) in line.chars().enumerate() {
        if units >= offset as usize {
            return i;
        }
        units += c.len_utf16();
    }
    line.chars().count()
}

impl Server {
    fn request(&mut self, req: Request) -> Response {
        let id = req.id.clone();
        let result = match req.method.as_str() {
            Completion::METHOD => serde_json::from_value::<CompletionParams>(req.params)
                .map(|p| serde_json::to_value(self.complete(&p)).unwrap_or_default()),
            GotoDefinition::METHOD => serde_json::from_value::<GotoDefinitionParams>(req.params)
                .map(|p| serde_json::to_value(self.definition(&p)).unwrap_or_default()),
            HoverRequest::METHOD => serde_json::from_value::<HoverParams>(req.params)
                .map(|p| serde_json::to_value(self.hover(&p)).unwrap_or_default()),
            other => {
                return Response::new_err(
                    id,
                    lsp_server::ErrorCode::MethodNotFound as i32,
                    format!("flowbot lsp does not serve `{other}`"),
                )
            }
        };
        match result {
            Ok(value) => Response::new_ok(id, value),
            Err(e) => Response::new_err(
                id,
                lsp_server::ErrorCode::InvalidParams as i32,
                e.to_string(),
            ),
        }
    }

    fn notification(&mut self, n: Notification) -> Vec<Notification> {
        match n.method.as_str() {
            DidOpenTextDocument::METHOD => {
                let Ok(p) =
                    n.extract::<lsp_types::DidOpenTextDocumentParams>(DidOpenTextDocument::METHOD)
                else {
                    return Vec::new();
                };
                let Some(path) = uri_path(&p.text_document.uri) else {
                    return Vec::new();
                };
                let doc = OpenDoc {
                    uri: p.text_document.uri,
                    text: p.text_document.text,
                };
                self.open.insert(path.clone(), doc);
                self.changed(&path)
            }
            DidChangeTextDocument::METHOD => {
                let Ok(p) = n.extract::<lsp_types::DidChangeTextDocumentParams>(
                    DidChangeTextDocument::METHOD,
                ) else {
                    return Vec::new();
                };
                let Some(path) = uri_path(&p.text_document.uri) else {
                    return Vec::new();
                };
                // Full sync: the last change is the whole text.
                let (Some(change), Some(doc)) = (
                    p.content_changes.into_iter().next_back(),
                    self.open.get_mut(&path),
                ) else {
                    return Vec::new();
                };
                doc.text = change.text;
                self.changed(&path)
            }
            DidSaveTextDocument::METHOD => {
                let Ok(p) =
                    n.extract::<lsp_types::DidSaveTextDocumentParams>(DidSaveTextDocument::METHOD)
                else {
                    return Vec::new();
                };
                match uri_path(&p.text_document.uri) {
                    Some(path) => self.changed(&path),
                    None => Vec::new(),
                }
            }
            DidCloseTextDocument::METHOD => {
                let Ok(p) = n
                    .extract::<lsp_types::DidCloseTextDocumentParams>(DidCloseTextDocument::METHOD)
                else {
                    return Vec::new();
                };
                let Some(path) = uri_path(&p.text_document.uri) else {
                    return Vec::new();
                };
                self.open.remove(&path);
                if self.root_of(&path) != path {
                    // Read through an open flow: analysed again from disk.
                    return self.changed(&path);
                }
                // A flow closed: what was published for it goes.
                self.roots.remove(&path);
                let files = self.published.remove(&path).unwrap_or_default();
                files.iter().filter_map(|f| clear(f)).collect()
            }
            _ => Vec::new(),
        }
    }

    /// A file changed: analyse the flow it belongs to.
    fn changed(&mut self, path: &Path) -> Vec<Notification> {
        let root = self.root_of(path);
        self.analyse(&root)
    }

    /// The flow a file is read through: an open flow that includes it, else
    /// the file itself.
    fn root_of(&self, path: &Path) -> PathBuf {
        self.roots
            .iter()
            .find(|(root, files)| root.as_path() != path && files.iter().any(|f| f == path))
            .map(|(root, _)| root.clone())
            .unwrap_or_else(|| path.to_path_buf())
    }

    /// Analyses the flow whose main file is `root`; the diagnostics to publish.
    fn analyse(&mut self, root: &Path) -> Vec<Notification> {
        let open = |p: &Path| self.open.get(&canonical(p)).map(|d| d.text.clone());
        let analysis = analyze(root, &open, &self.names);
        let files: Vec<PathBuf> = analysis
            .files
            .iter()
            .map(|f| canonical(&f.source.path))
            .collect();
        for (file, loaded) in files.iter().zip(&analysis.files) {
            self.outlines.insert(file.clone(), outline(loaded));
        }
        let mut by_file: HashMap<PathBuf, Vec<LspDiagnostic>> = HashMap::new();
        for d in &analysis.diagnostics.0 {
            let file = canonical(&d.file);
            let text = self.text_of(&file);
            let line_text = text
                .as_deref()
                .and_then(|t| t.lines().nth(d.line.saturating_sub(1)))
                .unwrap_or("");
            let line = d.line.saturating_sub(1) as u32;
            let start = utf16(line_text, d.column.max(1));
            let end = utf16(line_text, d.column.max(1) + d.width.max(1));
            let mut message = d.message.clone();
            if let Some(h) = &d.hint {
                message.push_str("\nhint: ");
                message.push_str(h);
            }
            by_file.entry(file).or_default().push(LspDiagnostic {
                range: Range::new(Position::new(line, start), Position::new(line, end)),
                severity: Some(match d.severity {
                    Severity::Error => DiagnosticSeverity::ERROR,
                    Severity::Warning => DiagnosticSeverity::WARNING,
                }),
                source: Some("flowbot".into()),
                message,
                ..LspDiagnostic::default()
            });
        }
        let before = self.published.remove(root).unwrap_or_default();
        let mut out = Vec::new();
        let mut now = BTreeSet::new();
        for file in files.iter().chain(by_file.keys()).chain(&before) {
            if !now.insert(file.clone()) {
                continue;
            }
            let diagnostics = by_file.get(file).cloned().unwrap_or_default();
            let uri = match self.open.get(file) {
                Some(d) => Some(d.uri.clone()),
                None => path_uri(file),
            };
            if let Some(uri) = uri {
                out.push(publish(uri, diagnostics));
            }
        }
        self.published.insert(root.to_path_buf(), now);
        // The root's files: the ones that parsed, and the root itself.
        let mut read = files;
        if !read.iter().any(|f| f == root) {
            read.push(root.to_path_buf());
        }
        self.roots.insert(root.to_path_buf(), read);
        out
    }

    fn text_of(&self, file: &Path) -> Option<String> {
        match self.open.get(file) {
            Some(d) => Some(d.text.clone()),
            // Only a regular file, and only so much of it: never a device
            // (`/dev/zero`) or a FIFO, which would never end.
            None => {
                let meta = std::fs::metadata(file).ok()?;
                if !meta.is_file() || meta.len() > super::lsp_io::MAX_MESSAGE as u64 {
                    return None;
                }
                let mut text = String::new();
                std::io::Read::read_to_string(
                    &mut std::io::Read::take(
                        std::fs::File::open(file).ok()?,
                        super::lsp_io::MAX_MESSAGE as u64,
                    ),
                    &mut text,
                )
                .ok()?;
                Some(text)
            }
        }
    }

    /// The outlines of the flow a file belongs to.
    fn flow_outlines(&self, path: &Path) -> Vec<(&PathBuf, &Outline)> {
        let root = self.root_of(path);
        let files = self.roots.get(&root).cloned().unwrap_or_else(|| vec![root]);
        self.outlines
            .iter()
            .filter(|(f, _)| files.contains(f))
            .collect()
    }

    fn complete(&self, p: &CompletionParams) -> Option<CompletionResponse> {
        let pos = &p.text_document_position;
        let path = uri_path(&pos.text_document.uri)?;
        let text = &self.open.get(&path)?.text;
        let line = text.lines().nth(pos.position.line as usize).unwrap_or("");
        let before: String = line
            .chars()
            .take(char_index(line, pos.position.character))
            .collect();
        let key = key_before(&before)?;
        let outlines = self.flow_outlines(&path);
        // A state is named within its own flow: the main flow's files, or
        // one subflow's.
        let unit = outlines
            .iter()
            .find(|(f, _)| **f == path)
            .map_or(0, |(_, o)| o.unit);
        let (items, kind, detail): (Vec<String>, _, &str) = match key {
            "goto" | "next" | "on_error" | "release" | "start" | "state" => (
                outlines
                    .iter()
                    .filter(|(_, o)| o.unit == unit)
                    .flat_map(|(_, o)| o.states.iter().map(|s| s.name.clone()))
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect(),
                CompletionItemKind::REFERENCE,
                "state",
            ),
            "action" => (
                self.names.actions.clone(),
                CompletionItemKind::FUNCTION,
                "action",
            ),
            "match" => (
                self.names.matchers.clone(),
                CompletionItemKind::FUNCTION,
                "matcher",
            ),
            "button" => (
                ids(&outlines, |o| &o.buttons),
                CompletionItemKind::VALUE,
                "quick-reply id",
            ),
            "list" => (
                ids(&outlines, |o| &o.rows),
                CompletionItemKind::VALUE,
                "list row id",
            ),
            "validate" | "kind" => (
                ["text", "number", "email", "phone", "date"]
                    .map(String::from)
                    .to_vec(),
                CompletionItemKind::ENUM_MEMBER,
                "answer kind",
            ),
            "media" => (
                ["any", "image", "document", "video", "audio"]
                    .map(String::from)
                    .to_vec(),
                CompletionItemKind::ENUM_MEMBER,
                "media kind",
            ),
            _ => return None,
        };
        Some(CompletionResponse::Array(
            items
                .into_iter()
                .map(|label| CompletionItem {
                    label,
                    kind: Some(kind),
                    detail: Some(detail.into()),
                    ..CompletionItem::default()
                })
                .collect(),
        ))
    }

    /// The state named at a position, and where it is defined.
    fn state_at(
        &self,
        pos: &lsp_types::TextDocumentPositionParams,
    ) -> Option<(PathBuf, &StateInfo)> {
        let path = uri_path(&pos.text_document.uri)?;
        let text = &self.open.get(&path)?.text;
        let line = text.lines().nth(pos.position.line as usize)?;
        let word = word_at(line, char_index(line, pos.position.character))?;
        let outlines = self.flow_outlines(&path);
        let unit = outlines
            .iter()
            .find(|(f, _)| **f == path)
            .map_or(0, |(_, o)| o.unit);
        outlines
            .into_iter()
            .filter(|(_, o)| o.unit == unit)
            .find_map(|(file, o)| {
                o.states
                    .iter()
                    .find(|s| s.name == word)
                    .map(|s| (file.clone(), s))
            })
    }

    fn definition(&self, p: &GotoDefinitionParams) -> Option<GotoDefinitionResponse> {
        let (file, state) = self.state_at(&p.text_document_position_params)?;
        let uri = match self.open.get(&file) {
            Some(d) => d.uri.clone(),
            None => path_uri(&file)?,
        };
        let text = self.text_of(&file)?;
        let line = text.lines().nth(state.line).unwrap_or("");
        let start = utf16(line, state.column + 1);
        let end = utf16(line, state.column + 1 + state.name.chars().count());
        let at = state.line as u32;
        Some(GotoDefinitionResponse::Scalar(Location::new(
            uri,
            Range::new(Position::new(at, start), Position::new(at, end)),
        )))
    }

    fn hover(&self, p: &HoverParams) -> Option<Hover> {
        let (file, state) = self.state_at(&p.text_document_position_params)?;
        let name = file.file_name().map(|f| f.to_string_lossy().into_owned());
        Some(Hover {
            contents: HoverContents::Markup(MarkupContent {
                kind: MarkupKind::Markdown,
                value: format!(
                    "**state `{}`** ({}:{})\n\n{}",
                    state.name,
                    name.unwrap_or_default(),
                    state.line + 1,
                    state.summary
                ),
            }),
            range: None,
        })
    }
}

fn publish(uri: Uri, diagnostics: Vec<LspDiagnostic>) -> Notification {
    Notification::new(
        PublishDiagnostics::METHOD.into(),
        PublishDiagnosticsParams {
            uri,
            diagnostics,
            version: None,
        },
    )
}

fn clear(file: &Path) -> Option<Notification> {
    Some(publish(path_uri(file)?, Vec::new()))
}

fn ids(
    outlines: &[(&PathBuf, &Outline)],
    f: impl Fn(&Outline) -> &BTreeSet<String>,
) -> Vec<String> {
    outlines
        .iter()
        .flat_map(|(_, o)| f(o).iter().cloned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// The key whose value is being written at the end of `before` (`goto` in
/// `      - { button: x, goto: ask_`), if any.
fn key_before(before: &str) -> Option<&str> {
    // The value written so far: a name, maybe quoted.
    let value_start = before
        .rfind(|c: char| !(c.is_alphanumeric() || matches!(c, '_' | '-' | '.')))
        .map_or(0, |i| i + 1);
    let rest = before[..value_start]
        .trim_end_matches(['"', '\''])
        .trim_end();
    let rest = rest.strip_suffix(':')?;
    let key_start = rest
        .rfind(|c: char| !(c.is_alphanumeric() || c == '_'))
        .map_or(0, |i| i + 1);
    let key = &rest[key_start..];
    (!key.is_empty()).then_some(key)
}

/// The name (state-name characters) around char index `at` of `line`.
fn word_at(line: &str, at: usize) -> Option<String> {
    let chars: Vec<char> = line.chars().collect();
    let is_name = |c: char| c.is_alphanumeric() || matches!(c, '_' | '-' | '.');
    let mut start = at.min(chars.len());
    while start > 0 && is_name(chars[start - 1]) {
        start -= 1;
    }
    let mut end = at.min(chars.len());
    while end < chars.len() && is_name(chars[end]) {
        end += 1;
    }
    (start < end).then(|| chars[start..end].iter().collect())
}

/// What a file defines: its states (where, and a summary), the ids it offers.
fn outline(loaded: &Loaded) -> Outline {
    let mut o = Outline {
        unit: loaded.unit,
        ..Outline::default()
    };
    for (name, state) in &loaded.doc.states {
        let pos = loaded.source.key_pos(&join_key("states", name));
        let (line, column) = pos.map_or((0, 0), |p| {
            (p.line.saturating_sub(1), p.column.saturating_sub(1))
        });
        o.states.push(StateInfo {
            name: name.clone(),
            line,
            column,
            summary: summary(state),
        });
        collect_ids(state, &mut o);
    }
    o
}

fn collect_ids(state: &State, o: &mut Outline) {
    let says = state
        .say
        .iter()
        .chain(state.on.iter().filter_map(|r: &Rule| r.say.as_ref()));
    for say in says {
        for item in &say.0 {
            if let SayItem::Rich(rich) = item {
                for q in rich.quick_replies.iter().flatten() {
                    o.buttons.insert(q.id.clone());
                }
                for section in rich.list.iter().flat_map(|l| &l.sections) {
                    for row in &section.rows {
                        o.rows.insert(row.id.clone());
                    }
                }
            }
        }
    }
    if let Some(ask) = &state.ask {
        for q in &ask.quick_replies {
            o.buttons.insert(q.id.clone());
        }
    }
}

/// A text as the hover shows it: the first language's, with its code.
fn show(text: &Text) -> String {
    match text {
        Text::One(s) => s.clone(),
        Text::ByLanguage(m) => m
            .iter()
            .next()
            .map(|(lang, s)| format!("{s} ({lang})"))
            .unwrap_or_default(),
    }
}

fn say_lines(say: &Say, out: &mut Vec<String>) {
    for item in &say.0 {
        let line = match item {
            SayItem::Plain(t) => show(t),
            SayItem::Rich(r) => {
                let mut parts = Vec::new();
                if let Some(t) = &r.text {
                    parts.push(show(t));
                }
                if let Some(l) = &r.list {
                    parts.push(format!("{} [list: {}]", show(&l.body), show(&l.button)));
                }
                if let Some(q) = &r.quick_replies {
                    let titles: Vec<String> = q.iter().map(|c| show(&c.title)).collect();
                    parts.push(format!("[{}]", titles.join("] [")));
                }
                if let Some(t) = &r.template {
                    parts.push(format!("template `{}`", t.name));
                }
                if let Some(m) = &r.media {
                    parts.push(format!("{} {}", m.kind, m.url));
                }
                parts.join(" ")
            }
        };
        out.push(format!("> {}", line.replace('\n', " ")));
    }
}

/// What a state says, asks and does, in a few Markdown lines.
fn summary(state: &State) -> String {
    let mut lines = Vec::new();
    if let Some(say) = &state.say {
        say_lines(say, &mut lines);
    }
    if let Some(ask) = &state.ask {
        if let Some(t) = &ask.text {
            lines.push(format!("> {}", show(t).replace('\n', " ")));
        }
        if let Some(save) = &ask.save {
            let kind = ask
                .validate
                .as_ref()
                .and_then(|v| v.kind.clone())
                .map(|k| format!(" ({k})"))
                .unwrap_or_default();
            lines.push(format!("asks into `{save}`{kind}"));
        }
    }
    if let Some(call) = &state.call {
        if let Some(action) = &call.action {
            lines.push(format!("calls `{action}`"));
        }
        if let Some(flow) = &call.flow {
            lines.push(format!("runs the subflow `{flow}`"));
        }
    }
    if let Some(h) = &state.http {
        let method = h.method.as_deref().unwrap_or(match h.json {
            Some(_) => "POST",
            None => "GET",
        });
        lines.push(format!(
            "requests `{} {}`",
            method.to_ascii_uppercase(),
            h.url
        ));
    }
    if state.ret.is_some() {
        lines.push("returns to its caller".into());
    }
    match &state.next {
        Some(crate::flow::model::Next::To(next)) => lines.push(format!("then `{next}`")),
        Some(crate::flow::model::Next::Branches(list)) => {
            let each: Vec<String> = list
                .iter()
                .map(|b| match &b.when {
                    Some(w) => format!("`{}` if {w}", b.goto),
                    None => format!("else `{}`", b.goto),
                })
                .collect();
            lines.push(format!("then {}", each.join(", ")));
        }
        None => {}
    }
    // Each state once, in the order the rules name them.
    let mut targets: Vec<String> = Vec::new();
    for g in state.on.iter().filter_map(|r| r.goto.as_ref()) {
        let g = format!("`{g}`");
        if !targets.contains(&g) {
            targets.push(g);
        }
    }
    if !targets.is_empty() {
        lines.push(format!("rules go to {}", targets.join(", ")));
    }
    if state.handoff {
        lines.push("a person takes over".into());
    }
    if state.end {
        lines.push("the conversation ends".into());
    }
    if lines.is_empty() {
        lines.push("(says nothing)".into());
    }
    lines.join("\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_being_written() {
        assert_eq!(key_before("    goto: "), Some("goto"));
        assert_eq!(key_before("      - { button: x, goto: ask_"), Some("goto"));
        assert_eq!(key_before("    next: \"st"), Some("next"));
        assert_eq!(key_before("    call: { action: "), Some("action"));
        assert_eq!(key_before("    say: hello "), None);
        assert_eq!(key_before("  start"), None);
    }

    #[test]
    fn utf16_columns() {
        let line = "say: \"héllo 👋\" goto: x";
        // 1-based char column 14 is after the emoji's closing quote.
        assert_eq!(utf16(line, 1), 0);
        assert_eq!(utf16(line, 14), 14);
        assert_eq!(utf16(line, 15), 15);
        assert_eq!(char_index(line, 15), 14);
        assert_eq!(
            word_at("    goto: ask_order", 12).as_deref(),
            Some("ask_order")
        );
        assert_eq!(
            word_at("    goto: ask_order", 19).as_deref(),
            Some("ask_order")
        );
    }
}
