//! Templates and expressions (minijinja), compiled once when a flow loads.
//!
//! Every visible text of a flow may be a template (`Hi {{ contact.first_name }}`)
//! and every `when:` is an expression. A text with no template syntax is kept as a
//! plain string and never touches minijinja, so the common case costs nothing per
//! turn. A text whose only syntax is plain `{{ name }}` placeholders, the next most
//! common, is split into pieces and filled in here, with the same lookups and the
//! same output as minijinja (tested against it), without a compiled template or a
//! virtual machine. Other templates are compiled into one [`Templates`] store
//! owned by the flow; a `when:` expression is compiled as
//! `{% if (EXPR) %}1{% endif %}` so it shares the store and is checked with the
//! same parser.
//!
//! Templates read variables through [`Scope`], a minijinja object that looks names
//! up in the session's variables, then the flow's defaults, then the built-ins
//! (`contact`, `channel`, `language`, `message`, `now`), without copying them
//! into a map. The flow's calendars are functions: `open('support')`,
//! `next_open('support')` (see [`super::calendar`]); dates and times are written
//! in the conversation's language by the `datetime` filter (`dates`).
//!
//! Before minijinja compiles a template, `guard` parses it and sizes what its
//! constant expressions fold to, and rewrites `*`, `+` and `~` into calls that
//! check the size of what they would build: no load and no render builds a text
//! larger than the output limit in one step.

use minijinja::value::{Enumerator, Object, Value};
use minijinja::{Environment, UndefinedBehavior};
use std::borrow::Cow;
use std::sync::Arc;

use super::bounds::FlowLimits;

mod dates;
mod guard;

/// A compiled text: plain, or a template in the flow's store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tpl {
    /// Contains no template syntax: used as is.
    Static(Box<str>),
    /// Text with plain `{{ name }}` placeholders only: filled in without
    /// minijinja, exactly as minijinja would (see [`Part`]).
    Interp {
        /// The text split at its placeholders.
        parts: Box<[Part]>,
        /// The source, for error messages.
        source: Box<str>,
    },
    /// A template, by its name in [`Templates`].
    Dynamic {
        /// Its name in the store.
        name: Box<str>,
        /// The variables it reads under the names `__flowbot_v0`, `__flowbot_v1`,
        /// ... (a `when:` compiled with its variables renamed, so that
        /// expressions differing only in them share one template); empty:
        /// none renamed.
        vars: Box<[Box<str>]>,
        /// The source, for error messages.
        source: Box<str>,
    },
}

impl Tpl {
    /// The source as written.
    pub fn source(&self) -> &str {
        match self {
            Tpl::Static(s) => s,
            Tpl::Interp { source, .. } | Tpl::Dynamic { source, .. } => source,
        }
    }

    /// Whether rendering it reads the scope.
    pub fn reads_scope(&self) -> bool {
        !matches!(self, Tpl::Static(_))
    }
}

/// A piece of an interpolated text ([`Tpl::Interp`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// Text used as is.
    Text(Box<str>),
    /// A variable's value, as `{{ name }}` renders it.
    Var(Box<str>),
    /// Any other `{{ expression }}`: the template (by its name in
    /// [`Templates`]) that is that placeholder alone, shared by every text
    /// with the same placeholder (the text around it is kept as is).
    Expr(Box<str>),
}

/// Names that mean something other than a variable in `{{ name }}`: the
/// language's literals and keywords, and the names minijinja defines.
const NOT_VARIABLES: &[&str] = &[
    "true",
    "false",
    "none",
    "True",
    "False",
    "None",
    "not",
    "and",
    "or",
    "in",
    "is",
    "if",
    "else",
    "elif",
    "endif",
    "for",
    "endfor",
    "block",
    "extends",
    "include",
    "import",
    "from",
    "with",
    "set",
    "macro",
    "call",
    "filter",
    "recursive",
    "loop",
    "self",
    "super",
    "caller",
    "varargs",
    "kwargs",
    "open",
    "next_open",
];

/// Splits a text whose only template syntax is `{{ name }}` placeholders
/// (a plain identifier, spaces allowed around it) into [`Part`]s; `None`
/// for anything else (filters, attributes, blocks, comments, whitespace
/// control), which minijinja compiles. Such a text needs no compiled
/// template: it costs no memory in minijinja's store and renders without a
/// virtual machine, which is most of the templates of most flows.
fn interpolation(source: &str, is_global: impl Fn(&str) -> bool) -> Option<Box<[Part]>> {
    if source.contains("{%") || source.contains("{#") {
        return None;
    }
    let mut parts = Vec::new();
    let mut rest = source;
    while let Some(open) = rest.find("{{") {
        if open > 0 {
            parts.push(Part::Text(rest[..open].into()));
        }
        let after = &rest[open + 2..];
        let close = after.find("}}")?;
        let name = after[..close].trim();
        let ident = name
            .bytes()
            .enumerate()
            .all(|(i, b)| b == b'_' || b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit()));
        if name.is_empty() {
            return None;
        }
        if !ident || NOT_VARIABLES.contains(&name) || is_global(name) {
            // An expression placeholder, compiled alone, unless it could
            // change the text around it (`{{-`, `-}}` trim whitespace) or a
            // brace in it makes where it ends uncertain.
            let raw = &after[..close];
            let trims = ["-", "+"]
                .iter()
                .any(|m| raw.starts_with(m) || raw.ends_with(m));
            if trims || raw.contains(['{', '}']) {
                return None;
            }
            parts.push(Part::Expr(name.into()));
            rest = &after[close + 2..];
            continue;
        }
        // `{{-` and `-}}` trim whitespace: not an identifier, so refused above.
        parts.push(Part::Var(name.into()));
        rest = &after[close + 2..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.into()));
    }
    Some(parts.into_boxed_slice())
}

/// What a renamed variable of a `when:` is called (`__flowbot_v0`, ...).
const RENAMED: &str = "__flowbot_v";

/// `expr` with each variable it reads renamed `__flowbot_v<k>` (a name once,
/// whatever its uses), and the names in that order; `None` when it does not
/// tokenize. A name is a variable unless it follows `.` (an attribute), `|`
/// (a filter), `is` or `is not` (a test), comes before `(` (a function) or
/// `=` (a keyword argument), is a keyword or literal, or a global.
fn rename_variables(
    expr: &str,
    is_global: impl Fn(&str) -> bool,
) -> Option<(String, Vec<Box<str>>)> {
    use minijinja::machinery::Token;
    let tokens: Vec<(Token<'_>, minijinja::machinery::Span)> =
        minijinja::machinery::tokenize(expr, true, Default::default(), Default::default())
            .collect::<Result<_, _>>()
            .ok()?;
    let mut out = String::with_capacity(expr.len());
    let mut vars: Vec<Box<str>> = Vec::new();
    let mut last = 0usize;
    for (i, (tok, span)) in tokens.iter().enumerate() {
        let Token::Ident(name) = tok else { continue };
        let before = |k: usize| i.checked_sub(k).map(|j| &tokens[j].0);
        let after = tokens.get(i + 1).map(|t| &t.0);
        let named_op =
            |t: Option<&Token<'_>>, w: &str| matches!(t, Some(Token::Ident(x)) if *x == w);
        let not_a_variable = matches!(before(1), Some(Token::Dot | Token::Pipe))
            || named_op(before(1), "is")
            || (named_op(before(1), "not") && named_op(before(2), "is"))
            || matches!(after, Some(Token::ParenOpen | Token::Assign))
            || NOT_VARIABLES.contains(name)
            || name.starts_with("__")
            || is_global(name);
        if not_a_variable {
            continue;
        }
        let (start, end) = (span.start_offset as usize, span.end_offset as usize);
        if expr.get(start..end) != Some(*name) {
            return None;
        }
        let k = match vars.iter().position(|v| &**v == *name) {
            Some(k) => k,
            None => {
                vars.push((*name).into());
                vars.len() - 1
            }
        };
        out.push_str(&expr[last..start]);
        out.push_str(RENAMED);
        out.push_str(&k.to_string());
        last = end;
    }
    out.push_str(&expr[last..]);
    Some((out, vars))
}

/// The scope of a `when:` compiled with its variables renamed: each
/// `__flowbot_v<k>` is the variable it stands for, anything else the scope's.
#[derive(Debug)]
struct Aliased {
    inner: Value,
    vars: Box<[Box<str>]>,
}

impl Object for Aliased {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let key = key.as_str()?;
        let name = match key
            .strip_prefix(RENAMED)
            .and_then(|k| k.parse::<usize>().ok())
        {
            Some(k) => self.vars.get(k)?,
            None => key,
        };
        self.inner.get_attr(name).ok().filter(|v| !v.is_undefined())
    }
}

/// A template that failed to render; the caller logs it and carries on.
#[derive(Debug, thiserror::Error)]
#[error("template `{source_text}` failed: {message}")]
pub struct RenderError {
    /// The template source.
    pub source_text: String,
    /// What minijinja said.
    pub message: String,
}

/// The flow's compiled templates.
pub struct Templates {
    env: Environment<'static>,
    next: usize,
    max_output: usize,
    /// The names of the flow's calendars, for `open('name')`.
    calendars: Vec<Box<str>>,
    /// Filters, tests and functions already found to exist (`filter:int`):
    /// each is probed once per flow, not once per template.
    known: std::collections::HashSet<String>,
    /// Each distinct template compiled once: its text to its name. A
    /// compiled template costs minijinja about 9 KiB (its instruction
    /// buffers are preallocated), so a text repeated across states is
    /// shared.
    names: std::collections::HashMap<String, Box<str>>,
    /// Bytes of constant text the templates fold to so far (see `guard`).
    folded: usize,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Templates")
            .field("count", &self.next)
            .finish()
    }
}

impl Templates {
    /// How many templates are compiled.
    pub(crate) fn count(&self) -> usize {
        self.next
    }
}

impl Default for Templates {
    fn default() -> Self {
        Self::new(&FlowLimits::default())
    }
}

fn has_syntax(s: &str) -> bool {
    s.contains("{{") || s.contains("{%") || s.contains("{#")
}

/// Names a template may call without defining them: the loop's and the
/// block machinery's own.
const IMPLICIT: &[&str] = &["loop", "super", "caller", "self", "varargs", "kwargs"];

/// Built-in filter names, offered as "did you mean".
const FILTERS: &[&str] = &[
    "abs",
    "datetime",
    "attr",
    "batch",
    "bool",
    "capitalize",
    "chain",
    "count",
    "d",
    "default",
    "dictsort",
    "e",
    "escape",
    "first",
    "float",
    "format",
    "groupby",
    "indent",
    "int",
    "items",
    "join",
    "last",
    "length",
    "lines",
    "list",
    "lower",
    "map",
    "max",
    "min",
    "pprint",
    "reject",
    "rejectattr",
    "replace",
    "reverse",
    "round",
    "safe",
    "select",
    "selectattr",
    "slice",
    "sort",
    "split",
    "string",
    "sum",
    "title",
    "tojson",
    "trim",
    "unique",
    "upper",
    "urlencode",
    "zip",
];

impl Templates {
    /// An empty store with minijinja's built-in filters and tests, rendering
    /// within `limits` (fuel and output size).
    pub fn new(limits: &FlowLimits) -> Templates {
        let mut env = Environment::new();
        // A missing variable renders as empty text, as in Jinja; `default()` works.
        env.set_undefined_behavior(UndefinedBehavior::Lenient);
        env.set_keep_trailing_newline(true);
        env.set_fuel(Some(limits.template_fuel));
        env.set_recursion_limit(32);
        guard::register(&mut env, limits.template_output_chars);
        env.add_filter("datetime", dates::filter);
        Templates {
            env,
            next: 0,
            max_output: limits.template_output_chars,
            calendars: Vec::new(),
            known: std::collections::HashSet::new(),
            names: std::collections::HashMap::new(),
            folded: 0,
        }
    }

    /// Makes the flow's calendars callable: `open('name')` (whether it is
    /// open at the turn's time, the scope's `now`) and `next_open('name')`
    /// (when it next opens, in its zone: its weekday and time in the
    /// conversation's language, `Monday 9:00 AM` or `Pazartesi 09:00`, or as
    /// a second argument's strftime format says).
    pub(crate) fn set_calendars(&mut self, calendars: Vec<super::calendar::Calendar>) {
        use minijinja::{Error, ErrorKind, State};
        self.calendars = calendars.iter().map(|c| c.name.clone()).collect();
        let calendars = Arc::new(calendars);
        let find = |calendars: &Arc<Vec<super::calendar::Calendar>>, state: &State, name: &str| {
            let calendar = calendars
                .iter()
                .find(|c| &*c.name == name)
                .cloned()
                .ok_or_else(|| {
                    Error::new(ErrorKind::InvalidOperation, format!("no calendar `{name}`"))
                })?;
            let now = state
                .lookup("now")
                .and_then(|v| i64::try_from(v).ok())
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::InvalidOperation,
                        "no time to read the calendar at",
                    )
                })?;
            Ok::<_, Error>((calendar, now))
        };
        let c = calendars.clone();
        self.env.add_function(
            "open",
            move |state: &State, name: String| -> Result<bool, Error> {
                let (calendar, now) = find(&c, state, &name)?;
                Ok(calendar.is_open(now))
            },
        );
        let c = calendars;
        self.env.add_function(
            "next_open",
            move |state: &State, name: String, format: Option<String>| -> Result<String, Error> {
                let (calendar, now) = find(&c, state, &name)?;
                let Some(at) = calendar.next_open(now) else {
                    return Ok(String::new());
                };
                match format.as_deref() {
                    // The weekday and time in the conversation's language.
                    None => Ok(dates::format(
                        &at,
                        dates::language(state).as_deref(),
                        dates::Style::Weekday,
                    )),
                    Some(f) => jiff::fmt::strtime::format(f, &at)
                        .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string())),
                }
            },
        );
    }

    /// Compiles a text template; plain text is kept as is.
    pub fn text(&mut self, source: &str) -> Result<Tpl, String> {
        if !has_syntax(source) {
            return Ok(Tpl::Static(source.into()));
        }
        let env = &self.env;
        if let Some(mut parts) = interpolation(source, |n| env.globals().any(|(g, _)| g == n)) {
            // Each expression placeholder compiled alone (and once for every
            // text that has it: a compiled template costs minijinja about
            // 9 KiB); if one does not compile, the whole text is compiled as
            // one template below, so that its error is the text's.
            let mut compiled = true;
            for p in parts.iter_mut() {
                if let Part::Expr(expr) = p {
                    match self.placeholder(expr) {
                        Ok(name) => *expr = name,
                        Err(_) => {
                            compiled = false;
                            break;
                        }
                    }
                }
            }
            if compiled {
                return Ok(Tpl::Interp {
                    parts,
                    source: source.into(),
                });
            }
        }
        // Parsed and sized before minijinja compiles it (see `guard`).
        let ast = minijinja::machinery::parse(
            source,
            "<template>",
            Default::default(),
            Default::default(),
        )
        .map_err(|e| describe(&e))?;
        let guarded = guard::Guard::check(source, &ast, self.max_output, &mut self.folded)?;
        self.add(source, guarded)
    }

    /// Compiles `{{ expr }}` alone: its template's name.
    fn placeholder(&mut self, expr: &str) -> Result<Box<str>, String> {
        let source = format!("{{{{ {expr} }}}}");
        let ast = minijinja::machinery::parse(
            &source,
            "<template>",
            Default::default(),
            Default::default(),
        )
        .map_err(|e| describe(&e))?;
        let guarded = guard::Guard::check(&source, &ast, self.max_output, &mut self.folded)?;
        match self.add(&source, guarded)? {
            Tpl::Dynamic { name, .. } => Ok(name),
            _ => Err("not a template".into()),
        }
    }

    /// Compiles a `when:` expression.
    pub fn expression(&mut self, source: &str) -> Result<Tpl, String> {
        // Parse as an expression first: its errors name the expression, not our wrapper.
        let ast = minijinja::machinery::parse_expr(source).map_err(|e| describe(&e))?;
        let guarded = guard::Guard::check_expr(source, &ast, self.max_output, &mut self.folded)?;
        // Its variables renamed, so that `a1 | int > 10` and `a2 | int > 10`
        // share one compiled template (about 9 KiB each in minijinja).
        let env = &self.env;
        if let Some((renamed, vars)) =
            rename_variables(&guarded, |n| env.globals().any(|(g, _)| g == n))
        {
            if !vars.is_empty() {
                let tpl = self.add(source, format!("{{% if ({renamed}) %}}1{{% endif %}}"))?;
                if let Tpl::Dynamic { name, source, .. } = tpl {
                    return Ok(Tpl::Dynamic {
                        name,
                        vars: vars.into_boxed_slice(),
                        source,
                    });
                }
            }
        }
        self.add(source, format!("{{% if ({guarded}) %}}1{{% endif %}}"))
    }

    fn add(&mut self, source: &str, template: String) -> Result<Tpl, String> {
        // A calendar named in the source must exist (checked here, not in
        // front of a customer).
        static CALLS: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
            regex::Regex::new(r#"\b(?:open|next_open)\(\s*['"]([^'"]*)['"]"#).expect("valid")
        });
        for cap in CALLS.captures_iter(source) {
            let name = &cap[1];
            if !self.calendars.iter().any(|c| &**c == name) {
                let known = if self.calendars.is_empty() {
                    "the flow has no `calendars:`".to_owned()
                } else {
                    let names: Vec<&str> = self.calendars.iter().map(|c| &**c).collect();
                    format!("its calendars: {}", names.join(", "))
                };
                return Err(format!("no calendar `{name}` ({known})"));
            }
        }
        if let Some(name) = self.names.get(&template) {
            return Ok(Tpl::Dynamic {
                name: name.clone(),
                vars: Box::default(),
                source: source.into(),
            });
        }
        let name = format!("t{}", self.next);
        self.next += 1;
        self.env
            .add_template_owned(name.clone(), template.clone())
            .map_err(|e| describe(&e))?;
        if let Err(e) = self.check_names(&name) {
            self.env.remove_template(&name);
            return Err(e);
        }
        let name: Box<str> = name.into();
        self.names.insert(template, name.clone());
        Ok(Tpl::Dynamic {
            name,
            vars: Box::default(),
            source: source.into(),
        })
    }

    /// Refuses a template that uses a filter, test or function minijinja does
    /// not have: without this it would fail only when rendered, in front of a
    /// customer. Each name the compiled code applies is tried once on `none`.
    fn check_names(&mut self, name: &str) -> Result<(), String> {
        use minijinja::machinery::{get_compiled_template, Instruction};
        let tmpl = self.env.get_template(name).map_err(|e| describe(&e))?;
        let code = &get_compiled_template(&tmpl).instructions;
        let mut defined: Vec<&str> = Vec::new();
        let mut used: Vec<(&'static str, &str)> = Vec::new();
        for i in 0..code.len() as u32 {
            match code.get(i) {
                Some(Instruction::ApplyFilter(n, ..)) => used.push(("filter", n)),
                Some(Instruction::PerformTest(n, ..)) => used.push(("test", n)),
                Some(Instruction::CallFunction(n, ..)) => used.push(("function", n)),
                Some(Instruction::StoreLocal(n)) => defined.push(n),
                _ => {}
            }
        }
        let used: Vec<(&'static str, String)> = used
            .into_iter()
            .filter(|(kind, n)| {
                *kind != "function"
                    || !(defined.contains(n) || IMPLICIT.contains(n) || *n == guard::MUL)
            })
            .map(|(kind, n)| (kind, n.to_owned()))
            .collect();
        for (kind, n) in used {
            let key = format!("{kind}:{n}");
            if self.known.contains(&key) {
                continue;
            }
            let n = n.as_str();
            let probe = match kind {
                "filter" => format!("{{{{ none | {n} }}}}"),
                "test" => format!("{{{{ none is {n} }}}}"),
                _ => format!("{{{{ {n}() }}}}"),
            };
            let unknown = match self.env.render_str(&probe, ()) {
                Ok(_) => false,
                Err(e) => matches!(
                    e.kind(),
                    minijinja::ErrorKind::UnknownFilter
                        | minijinja::ErrorKind::UnknownTest
                        | minijinja::ErrorKind::UnknownFunction
                ),
            };
            if unknown {
                let mut m = format!("unknown {kind} `{n}`");
                if kind == "filter" {
                    if let Some(s) = super::did_you_mean(n, FILTERS.iter().copied()) {
                        m.push_str(&format!(" (did you mean `{s}`?)"));
                    }
                }
                return Err(m);
            }
            self.known.insert(key);
        }
        Ok(())
    }

    /// Renders a text, within the limits: a render that runs out of fuel or
    /// would write more than the output limit fails.
    pub fn render<'t>(&self, tpl: &'t Tpl, scope: &Value) -> Result<Cow<'t, str>, RenderError> {
        match tpl {
            Tpl::Static(s) => Ok(Cow::Borrowed(s)),
            Tpl::Interp { parts, source } => {
                let mut out = String::new();
                for p in parts {
                    match p {
                        Part::Text(t) => out.push_str(t),
                        Part::Expr(name) => {
                            let left = self.max_output.saturating_sub(out.len());
                            let part = self.render_named(name, source, scope, left)?;
                            out.push_str(&part);
                        }
                        Part::Var(name) => {
                            // As minijinja's lenient lookup: a missing name is
                            // empty, a string as is, anything else displayed.
                            let v = scope.get_attr(name).unwrap_or_default();
                            match v.as_str() {
                                Some(s) => out.push_str(s),
                                None => {
                                    use std::fmt::Write;
                                    let _ = write!(out, "{v}");
                                }
                            }
                        }
                    }
                    if out.len() > self.max_output {
                        return Err(RenderError {
                            source_text: source.to_string(),
                            message: format!("the output is longer than {} bytes", self.max_output),
                        });
                    }
                }
                Ok(Cow::Owned(out))
            }
            Tpl::Dynamic { name, vars, source } if !vars.is_empty() => {
                let aliased = Value::from_object(Aliased {
                    inner: scope.clone(),
                    vars: vars.clone(),
                });
                self.render_named(name, source, &aliased, self.max_output)
                    .map(Cow::Owned)
            }
            Tpl::Dynamic { name, source, .. } => self
                .render_named(name, source, scope, self.max_output)
                .map(Cow::Owned),
        }
    }

    /// Renders the compiled template `name` (of the text `source`), within
    /// `max` bytes of output.
    fn render_named(
        &self,
        name: &str,
        source: &str,
        scope: &Value,
        max: usize,
    ) -> Result<String, RenderError> {
        let fail = |message: String| RenderError {
            source_text: source.to_string(),
            message,
        };
        let t = self
            .env
            .get_template(name)
            .map_err(|e| fail(describe(&e)))?;
        let mut out = Bounded {
            buf: Vec::new(),
            max,
        };
        match t.render_captured_to(scope, &mut out) {
            Ok(_) => String::from_utf8(out.buf).map_err(|_| fail("the output is not UTF-8".into())),
            Err(_) if out.buf.len() > max => Err(fail(format!(
                "the output is longer than {} bytes",
                self.max_output
            ))),
            Err(e) => Err(fail(describe(&e))),
        }
    }

    /// Evaluates a compiled `when:` expression for truth.
    pub fn truthy(&self, tpl: &Tpl, scope: &Value) -> Result<bool, RenderError> {
        self.render(tpl, scope).map(|s| !s.is_empty())
    }
}

/// A writer that refuses to grow past `max` bytes.
struct Bounded {
    buf: Vec<u8>,
    max: usize,
}

impl std::io::Write for Bounded {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + b.len() > self.max {
            self.buf.resize(self.max + 1, 0);
            return Err(std::io::Error::other("output limit"));
        }
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn describe(e: &minijinja::Error) -> String {
    let mut s = e.kind().to_string();
    if let Some(detail) = e.detail() {
        s.push_str(": ");
        s.push_str(detail);
    }
    s
}

/// Variables as a conversation holds them: name and value, in insertion order.
pub type VarList = Vec<(Arc<str>, Value)>;

/// What a template can see, looked up lazily (see the module docs).
#[derive(Debug, Default)]
pub struct Scope {
    /// The session's variables.
    pub vars: VarList,
    /// The flow's defaults.
    pub defaults: Arc<VarList>,
    /// Built-ins: `contact`, `channel`, `language`, `message`, `state`.
    pub builtins: Arc<[(&'static str, Value)]>,
}

/// The scope of an `http:` step's templates: `secret.NAME` is the marker
/// that stands for the secret (see [`crate::fetch`]), anything else the
/// scope's.
pub(crate) fn with_secrets(scope: Value) -> Value {
    Value::from_object(WithSecrets(scope))
}

#[derive(Debug)]
struct WithSecrets(Value);

impl Object for WithSecrets {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let k = key.as_str()?;
        if k == "secret" {
            return Some(Value::from_object(SecretRefs));
        }
        self.0.get_attr(k).ok().filter(|v| !v.is_undefined())
    }
}

#[derive(Debug)]
struct SecretRefs;

impl Object for SecretRefs {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        Some(Value::from(crate::fetch::marker(key.as_str()?)))
    }
}

impl Object for Scope {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let k = key.as_str()?;
        self.vars
            .iter()
            .rev()
            .find(|(n, _)| &**n == k)
            .or_else(|| self.defaults.iter().find(|(n, _)| &**n == k))
            .map(|(_, v)| v.clone())
            .or_else(|| {
                self.builtins
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.clone())
            })
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        let mut keys: Vec<Value> = self
            .vars
            .iter()
            .chain(self.defaults.iter())
            .map(|(n, _)| Value::from(&**n))
            .chain(self.builtins.iter().map(|(n, _)| Value::from(*n)))
            .collect();
        keys.dedup();
        Enumerator::Values(keys)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    #[test]
    fn a_repeated_text_is_compiled_once_and_names_are_still_checked() {
        let mut t = Templates::default();
        let a = t.text("Hi {{ name | default('you') }}").unwrap();
        let b = t.text("Hi {{ name | default('you') }}").unwrap();
        assert_eq!(a, b);
        assert_eq!(t.next, 1, "one compiled template for both");
        // A filter already found to exist is not probed again; an unknown
        // one is refused in every template that uses it.
        t.text("{{ other | default('x') }}").unwrap();
        for _ in 0..2 {
            let e = t.text("{{ n | nope }}").unwrap_err();
            assert!(e.contains("unknown filter `nope`"), "{e}");
        }
        let out = t
            .render(&b, &scope(&[("name", Value::from("Ana"))]))
            .unwrap();
        assert_eq!(out, "Hi Ana");
    }

    #[test]
    fn plain_placeholders_render_without_minijinja_exactly_as_it_would() {
        let mut t = Templates::default();
        let s = scope(&[
            ("name", Value::from("Ada")),
            ("n", Value::from(42)),
            ("f", Value::from(1.5)),
            ("yes", Value::from(true)),
            ("nothing", Value::from(())),
            ("list", Value::from(vec![1, 2])),
            ("_x1", Value::from("<b>&")),
        ]);
        // Kept as pieces, and rendered as minijinja renders the whole text.
        let same_as_minijinja = |t: &mut Templates, text: &str| {
            let tpl = t.text(text).unwrap();
            assert!(matches!(tpl, Tpl::Interp { .. }), "{text} is split");
            let fast = t.render(&tpl, &s).unwrap().into_owned();
            let slow = t.env.render_str(text, s.clone()).unwrap();
            assert_eq!(fast, slow, "{text}");
        };
        let start = t.next;
        for text in [
            "Hi {{ name }}!",
            "{{name}}{{n}}",
            "{{ n }} / {{ f }} / {{ yes }} / {{ nothing }} / {{ list }}",
            "{{ missing }}|{{\tname\n}}|",
            "a }} b {{ _x1 }} c",
            "trailing newline {{ name }}\n",
        ] {
            same_as_minijinja(&mut t, text);
        }
        assert_eq!(t.next, start, "plain placeholders compile nothing");
        // Other placeholders are minijinja's, each compiled alone and shared
        // by every text that has it: the same output as the whole text.
        let before = t.next;
        let texts = [
            "{{ name | upper }}",
            "Question 1 for {{ name | default('you') }}?",
            "Question 2 for {{ name | default('you') }}?",
            "{{ n + 1 }} and {{ f * 2 }}: {{ list | join(', ') }} {{ nothing }}",
            "{{ none }}|{{ range(3) | list }}|{{ missing | default('x') }}",
            "{{ 'a' ~ name }} {{ yes and n > 40 }}",
            "ends with a newline {{ n | string }}\n",
        ];
        for text in texts {
            same_as_minijinja(&mut t, text);
        }
        assert_eq!(
            t.next - before,
            11,
            "one template per distinct placeholder: the two questions share theirs"
        );
        // Anything that could change the text around it is one template.
        for text in [
            "{{- name }}",
            "{{ name +}}",
            "{{ name }}{% if n %}!{% endif %}",
            "{{ name }}{# note #}",
            "{{ {'a': 1}.a }}",
            "{{ name ",
        ] {
            assert!(
                !matches!(t.text(text), Ok(Tpl::Interp { .. })),
                "{text} is not split"
            );
        }
        // A placeholder that does not compile fails as the whole text does.
        let e = t.text("Hi {{ 1name }}").unwrap_err();
        let whole = minijinja::machinery::parse(
            "Hi {{ 1name }}",
            "<template>",
            Default::default(),
            Default::default(),
        )
        .unwrap_err();
        assert_eq!(e, describe(&whole));
        // The output limit holds for them too.
        let mut small = Templates::new(&FlowLimits {
            template_output_chars: 5,
            ..FlowLimits::default()
        });
        let tpl = small.text("{{ name }}{{ name }}").unwrap();
        let e = small.render(&tpl, &s).unwrap_err();
        assert!(e.message.contains("longer than 5 bytes"), "{e}");
    }

    pub(super) fn scope(vars: &[(&str, Value)]) -> Value {
        Value::from_object(Scope {
            vars: vars
                .iter()
                .map(|(k, v)| (Arc::from(*k), v.clone()))
                .collect(),
            ..Default::default()
        })
    }

    #[test]
    fn plain_text_is_static() {
        let mut t = Templates::default();
        assert_eq!(t.text("Hello").unwrap(), Tpl::Static("Hello".into()));
    }

    #[test]
    fn renders_variables_and_defaults() {
        let mut t = Templates::default();
        let tpl = t.text("Hi {{ name | default('there') }}!").unwrap();
        assert_eq!(t.render(&tpl, &scope(&[])).unwrap(), "Hi there!");
        let s = scope(&[("name", Value::from("Ada"))]);
        assert_eq!(t.render(&tpl, &s).unwrap(), "Hi Ada!");
    }

    #[test]
    fn when_expressions_differing_in_their_variables_share_a_template() {
        let mut t = Templates::default();
        let s = scope(&[
            ("a1", Value::from("12")),
            ("a2", Value::from("3")),
            ("lang", Value::from("tr")),
            ("contact", Value::from_iter([("name", Value::from("Ada"))])),
            ("list", Value::from(vec![1, 2])),
        ]);
        let before = t.next;
        let a1 = t.expression("a1 | int > 10").unwrap();
        let a2 = t.expression("a2 | int > 10").unwrap();
        assert_eq!(t.next - before, 1, "one template for both");
        assert!(t.truthy(&a1, &s).unwrap());
        assert!(!t.truthy(&a2, &s).unwrap());
        // The same truth as minijinja's, whatever the expression reads.
        for e in [
            "lang == 'tr' and contact.name == 'Ada'",
            "missing is defined",
            "missing is not defined",
            "a1 is divisibleby(3)",
            "missing | default(a2) == '3'",
            "1 in list and not (a1 | int < 5)",
            "contact['name'] | lower == 'ada'",
            "(list | length) > 1 if lang else false",
            "a1 ~ a2 == '123' and a1 + a1 == '1212'",
            "range(3) | list | length == 3",
            "lang in ['tr', 'en'] and lang != a1",
        ] {
            let tpl = t.expression(e).unwrap();
            let want = t
                .env
                .render_str(&format!("{{% if ({e}) %}}1{{% endif %}}"), s.clone())
                .unwrap()
                == "1";
            assert_eq!(t.truthy(&tpl, &s).unwrap(), want, "{e}");
        }
    }

    #[test]
    fn expressions_are_truthy_or_not() {
        let mut t = Templates::default();
        let e = t.expression("order|int % 2 == 0").unwrap();
        assert!(t
            .truthy(&e, &scope(&[("order", Value::from("222222"))]))
            .unwrap());
        assert!(!t
            .truthy(&e, &scope(&[("order", Value::from("123457"))]))
            .unwrap());
    }

    #[test]
    fn syntax_errors_are_reported_at_compile_time() {
        let mut t = Templates::default();
        assert!(t.text("Hi {{ name").is_err());
        assert!(t.expression("a ==").is_err());
    }
}
