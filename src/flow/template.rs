//! Templates and expressions (minijinja), compiled once when a flow loads.
//!
//! Every visible text of a flow may be a template (`Hi {{ contact.first_name }}`)
//! and every `when:` is an expression. A text with no template syntax is kept as a
//! plain string and never touches minijinja, so the common case costs nothing per
//! turn. Templated ones are compiled into one [`Templates`] store owned by the flow;
//! a `when:` expression is compiled as `{% if (EXPR) %}1{% endif %}` so it shares the
//! store and is checked with the same parser.
//!
//! Templates read variables through [`Scope`], a minijinja object that looks names
//! up in the session's variables, then the flow's defaults, then the built-ins
//! (`contact`, `channel`, `language`, `message`), without copying them into a map.

use minijinja::value::{Enumerator, Object, Value};
use minijinja::{Environment, UndefinedBehavior};
use std::borrow::Cow;
use std::sync::Arc;

/// A compiled text: plain, or a template in the flow's store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tpl {
    /// Contains no template syntax: used as is.
    Static(Box<str>),
    /// A template, by its name in [`Templates`].
    Dynamic {
        /// Its name in the store.
        name: Box<str>,
        /// The source, for error messages.
        source: Box<str>,
    },
}

impl Tpl {
    /// The source as written.
    pub fn source(&self) -> &str {
        match self {
            Tpl::Static(s) => s,
            Tpl::Dynamic { source, .. } => source,
        }
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
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Templates")
            .field("count", &self.next)
            .finish()
    }
}

impl Default for Templates {
    fn default() -> Self {
        Self::new()
    }
}

fn has_syntax(s: &str) -> bool {
    s.contains("{{") || s.contains("{%") || s.contains("{#")
}

impl Templates {
    /// An empty store with minijinja's built-in filters and tests.
    pub fn new() -> Templates {
        let mut env = Environment::new();
        // A missing variable renders as empty text, as in Jinja; `default()` works.
        env.set_undefined_behavior(UndefinedBehavior::Lenient);
        env.set_keep_trailing_newline(true);
        Templates { env, next: 0 }
    }

    /// Compiles a text template; plain text is kept as is.
    pub fn text(&mut self, source: &str) -> Result<Tpl, String> {
        if !has_syntax(source) {
            return Ok(Tpl::Static(source.into()));
        }
        self.add(source, source.to_owned())
    }

    /// Compiles a `when:` expression.
    pub fn expression(&mut self, source: &str) -> Result<Tpl, String> {
        // Parse as an expression first: its errors name the expression, not our wrapper.
        self.env
            .compile_expression(source)
            .map_err(|e| describe(&e))?;
        self.add(source, format!("{{% if ({source}) %}}1{{% endif %}}"))
    }

    fn add(&mut self, source: &str, template: String) -> Result<Tpl, String> {
        let name = format!("t{}", self.next);
        self.next += 1;
        self.env
            .add_template_owned(name.clone(), template)
            .map_err(|e| describe(&e))?;
        Ok(Tpl::Dynamic {
            name: name.into(),
            source: source.into(),
        })
    }

    /// Renders a text.
    pub fn render<'t>(&self, tpl: &'t Tpl, scope: &Value) -> Result<Cow<'t, str>, RenderError> {
        match tpl {
            Tpl::Static(s) => Ok(Cow::Borrowed(s)),
            Tpl::Dynamic { name, source } => self
                .env
                .get_template(name)
                .and_then(|t| t.render(scope))
                .map(Cow::Owned)
                .map_err(|e| RenderError {
                    source_text: source.to_string(),
                    message: describe(&e),
                }),
        }
    }

    /// Evaluates a compiled `when:` expression for truth.
    pub fn truthy(&self, tpl: &Tpl, scope: &Value) -> Result<bool, RenderError> {
        self.render(tpl, scope).map(|s| !s.is_empty())
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
    pub builtins: Vec<(&'static str, Value)>,
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
mod tests {
    use super::*;

    fn scope(vars: &[(&str, Value)]) -> Value {
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
        let mut t = Templates::new();
        assert_eq!(t.text("Hello").unwrap(), Tpl::Static("Hello".into()));
    }

    #[test]
    fn renders_variables_and_defaults() {
        let mut t = Templates::new();
        let tpl = t.text("Hi {{ name | default('there') }}!").unwrap();
        assert_eq!(t.render(&tpl, &scope(&[])).unwrap(), "Hi there!");
        let s = scope(&[("name", Value::from("Ada"))]);
        assert_eq!(t.render(&tpl, &s).unwrap(), "Hi Ada!");
    }

    #[test]
    fn expressions_are_truthy_or_not() {
        let mut t = Templates::new();
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
        let mut t = Templates::new();
        assert!(t.text("Hi {{ name").is_err());
        assert!(t.expression("a ==").is_err());
    }
}
