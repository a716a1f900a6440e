//! Templates build text only as large as a bound, checked before anything is
//! built.
//!
//! minijinja folds constant expressions while it compiles, so
//! `{% set y = 'AB' * 50000000 %}` would allocate 100 MB while the flow loads,
//! before any render limit applies; and at render time `name * (n | int)` with a
//! customer-typed `n` builds the whole text before the output cap sees it. So a
//! template is parsed here first, and its syntax tree walked:
//!
//! - a repetition of a constant text or list (`'ab' * 3`, also inside larger
//!   constant expressions) is sized without building it, and refused when its
//!   factor is over [`MAX_REPEAT`] or its size over the template output limit;
//!   the constant texts a flow's templates fold to are capped in total
//!   ([`MAX_FOLDED`]), so loading allocates in proportion to the file;
//! - every other multiplication is rewritten into a call of [`MUL`], which
//!   checks the size a repetition would have against the output limit and only
//!   then multiplies, with minijinja's own operator (numbers multiply as before).

use minijinja::machinery::ast::{BinOpKind, CallArg, Expr, Stmt, UnaryOpKind};
use minijinja::machinery::Span;
use minijinja::value::{Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind};

/// The largest constant factor a text or list may be repeated by.
pub(super) const MAX_REPEAT: usize = 10_000;

/// The most text (in bytes) the constant repetitions of one flow may fold to.
pub(super) const MAX_FOLDED: usize = 1 << 20;

/// The functions a template's multiplications, additions and
/// concatenations are rewritten into.
pub(super) const MUL: &str = "__flowbot_mul";
pub(super) const ADD: &str = "__flowbot_add";
pub(super) const CAT: &str = "__flowbot_cat";

/// What a constant expression folds to, as far as size goes.
enum Folded {
    Number(Value),
    Text(usize),
    List(usize),
    Other,
}

/// Walks one template: checks its constant repetitions and records where its
/// other multiplications are.
pub(super) struct Guard<'s> {
    source: &'s str,
    max_output: usize,
    /// Bytes of constant text folded so far, in the whole flow.
    folded: &'s mut usize,
    /// Edits to the source: (offset, order, text) with `order` keeping
    /// insertions at one offset outer first.
    edits: Vec<(u32, u32, &'static str, bool)>,
    depth: u32,
}

impl<'s> Guard<'s> {
    fn new(source: &'s str, max_output: usize, folded: &'s mut usize) -> Guard<'s> {
        Guard {
            source,
            max_output,
            folded,
            edits: Vec::new(),
            depth: 0,
        }
    }

    /// Checks `template` (already parsed from `source`) and returns the
    /// source to compile: `source` with its non-constant multiplications,
    /// additions and concatenations rewritten into calls of [`MUL`], [`ADD`]
    /// and [`CAT`].
    pub(super) fn check(
        source: &'s str,
        template: &Stmt<'_>,
        max_output: usize,
        folded: &'s mut usize,
    ) -> Result<String, String> {
        let mut g = Guard::new(source, max_output, folded);
        g.stmt(template)?;
        Ok(g.rewrite())
    }

    /// Checks a standalone expression (a `when:`), parsed from `source`.
    pub(super) fn check_expr(
        source: &'s str,
        expr: &Expr<'_>,
        max_output: usize,
        folded: &'s mut usize,
    ) -> Result<String, String> {
        let mut g = Guard::new(source, max_output, folded);
        g.expr(expr)?;
        Ok(g.rewrite())
    }

    fn rewrite(mut self) -> String {
        if self.edits.is_empty() {
            return self.source.to_owned();
        }
        // Insertions of `MUL(` at one offset: outer first (larger span, lower
        // order); a replaced `*` has a single position.
        self.edits.sort_by_key(|e| (e.0, e.1));
        let mut out = String::with_capacity(self.source.len() + self.edits.len() * 16);
        let mut at = 0usize;
        for (offset, _, text, replaces) in &self.edits {
            let offset = *offset as usize;
            out.push_str(&self.source[at..offset]);
            out.push_str(text);
            at = if *replaces { offset + 1 } else { offset };
        }
        out.push_str(&self.source[at..]);
        out
    }

    fn stmts(&mut self, stmts: &[Stmt<'_>]) -> Result<(), String> {
        stmts.iter().try_for_each(|s| self.stmt(s))
    }

    fn stmt(&mut self, stmt: &Stmt<'_>) -> Result<(), String> {
        match stmt {
            Stmt::Template(t) => self.stmts(&t.children),
            Stmt::EmitExpr(e) => self.walk(&e.expr),
            Stmt::EmitRaw(_) => Ok(()),
            Stmt::ForLoop(f) => {
                self.walk(&f.target)?;
                self.walk(&f.iter)?;
                if let Some(e) = &f.filter_expr {
                    self.walk(e)?;
                }
                self.stmts(&f.body)?;
                self.stmts(&f.else_body)
            }
            Stmt::IfCond(i) => {
                self.walk(&i.expr)?;
                self.stmts(&i.true_body)?;
                self.stmts(&i.false_body)
            }
            Stmt::WithBlock(w) => {
                for (a, b) in &w.assignments {
                    self.walk(a)?;
                    self.walk(b)?;
                }
                self.stmts(&w.body)
            }
            Stmt::Set(s) => {
                self.walk(&s.target)?;
                self.walk(&s.expr)
            }
            Stmt::SetBlock(s) => {
                self.walk(&s.target)?;
                if let Some(f) = &s.filter {
                    self.walk(f)?;
                }
                self.stmts(&s.body)
            }
            Stmt::AutoEscape(a) => {
                self.walk(&a.enabled)?;
                self.stmts(&a.body)
            }
            Stmt::FilterBlock(f) => {
                self.walk(&f.filter)?;
                self.stmts(&f.body)
            }
            Stmt::Block(b) => self.stmts(&b.body),
            Stmt::Import(i) => {
                self.walk(&i.expr)?;
                self.walk(&i.name)
            }
            Stmt::FromImport(i) => {
                self.walk(&i.expr)?;
                for (a, b) in &i.names {
                    self.walk(a)?;
                    if let Some(b) = b {
                        self.walk(b)?;
                    }
                }
                Ok(())
            }
            Stmt::Extends(e) => self.walk(&e.name),
            Stmt::Include(i) => self.walk(&i.name),
            Stmt::Macro(m) => {
                self.exprs(&m.args)?;
                self.exprs(&m.defaults)?;
                self.stmts(&m.body)
            }
            Stmt::CallBlock(c) => {
                self.walk(&c.call.expr)?;
                self.args(&c.call.args)?;
                self.exprs(&c.macro_decl.args)?;
                self.exprs(&c.macro_decl.defaults)?;
                self.stmts(&c.macro_decl.body)
            }
            Stmt::Do(d) => {
                self.walk(&d.call.expr)?;
                self.args(&d.call.args)
            }
        }
    }

    fn exprs(&mut self, exprs: &[Expr<'_>]) -> Result<(), String> {
        exprs.iter().try_for_each(|e| self.walk(e))
    }

    fn args(&mut self, args: &[CallArg<'_>]) -> Result<(), String> {
        for a in args {
            match a {
                CallArg::Pos(e)
                | CallArg::Kwarg(_, e)
                | CallArg::PosSplat(e)
                | CallArg::KwargSplat(e) => self.walk(e)?,
            }
        }
        Ok(())
    }

    fn walk(&mut self, expr: &Expr<'_>) -> Result<(), String> {
        self.expr(expr).map(|_| ())
    }

    /// Walks `expr` and says what it folds to when minijinja's compiler
    /// folds it (as `Expr::as_const` does), or `None`.
    fn expr(&mut self, expr: &Expr<'_>) -> Result<Option<Folded>, String> {
        // The parser bounds nesting; this is a second guard for the walk.
        self.depth += 1;
        if self.depth > 512 {
            return Err("the template nests too deeply".into());
        }
        let r = self.expr_inner(expr);
        self.depth -= 1;
        r
    }

    fn expr_inner(&mut self, expr: &Expr<'_>) -> Result<Option<Folded>, String> {
        Ok(match expr {
            Expr::Const(c) => Some(of_value(&c.value)),
            Expr::Var(_) => None,
            Expr::List(l) => {
                self.exprs(&l.items)?;
                l.items
                    .iter()
                    .all(|e| matches!(e, Expr::Const(_)))
                    .then_some(Folded::List(l.items.len()))
            }
            Expr::Map(m) => {
                self.exprs(&m.keys)?;
                self.exprs(&m.values)?;
                let all = m.keys.iter().chain(&m.values);
                all.clone()
                    .all(|e| matches!(e, Expr::Const(_)))
                    .then_some(Folded::Other)
            }
            Expr::UnaryOp(u) => {
                let inner = self.expr(&u.expr)?;
                match (&u.op, inner) {
                    (UnaryOpKind::Not, Some(_)) => Some(Folded::Other),
                    (UnaryOpKind::Neg, Some(Folded::Number(_))) => {
                        u.expr.as_const().map(|_| Folded::Other)
                    }
                    _ => None,
                }
            }
            Expr::Compare(c) => {
                let mut all = self.expr(&c.expr)?.is_some();
                for op in &c.ops {
                    all &= self.expr(&op.expr)?.is_some();
                }
                all.then_some(Folded::Other)
            }
            Expr::BinOp(b) => {
                let left = self.expr(&b.left)?;
                let right = self.expr(&b.right)?;
                match (left, right) {
                    (Some(l), Some(r)) => Some(self.fold(b.op, l, r, expr)?),
                    _ => {
                        let guarded = match b.op {
                            BinOpKind::Mul => Some(('*', MUL)),
                            BinOpKind::Add => Some(('+', ADD)),
                            BinOpKind::Concat => Some(('~', CAT)),
                            _ => None,
                        };
                        if let Some((op, call)) = guarded {
                            self.guard(op, call, b.span(), b.left.span(), b.right.span())?;
                        }
                        None
                    }
                }
            }
            Expr::Slice(s) => {
                self.walk(&s.expr)?;
                for e in [&s.start, &s.stop, &s.step].into_iter().flatten() {
                    self.walk(e)?;
                }
                None
            }
            Expr::IfExpr(i) => {
                self.walk(&i.test_expr)?;
                self.walk(&i.true_expr)?;
                if let Some(e) = &i.false_expr {
                    self.walk(e)?;
                }
                None
            }
            Expr::Filter(f) => {
                if let Some(e) = &f.expr {
                    self.walk(e)?;
                }
                self.args(&f.args)?;
                None
            }
            Expr::Test(t) => {
                self.walk(&t.expr)?;
                self.args(&t.args)?;
                None
            }
            Expr::GetAttr(g) => {
                self.walk(&g.expr)?;
                None
            }
            Expr::GetItem(g) => {
                self.walk(&g.expr)?;
                self.walk(&g.subscript_expr)?;
                None
            }
            Expr::Call(c) => {
                self.walk(&c.expr)?;
                self.args(&c.args)?;
                None
            }
        })
    }

    /// What folding `left op right` gives, refusing a repetition too large.
    fn fold(
        &mut self,
        op: BinOpKind,
        left: Folded,
        right: Folded,
        expr: &Expr<'_>,
    ) -> Result<Folded, String> {
        use Folded::*;
        Ok(match (op, left, right) {
            (BinOpKind::Mul, Text(len), Number(n)) | (BinOpKind::Mul, Number(n), Text(len)) => {
                let n = self.factor(&n)?;
                let size = len.saturating_mul(n);
                if size > self.max_output {
                    return Err(format!(
                        "this repetition would build {size} bytes of text; a template writes at most {}",
                        self.max_output
                    ));
                }
                *self.folded += size;
                if *self.folded > MAX_FOLDED {
                    return Err(format!(
                        "the flow's templates repeat constant text to more than {MAX_FOLDED} bytes in all"
                    ));
                }
                Text(size)
            }
            (BinOpKind::Mul, List(len), Number(n)) | (BinOpKind::Mul, Number(n), List(len)) => {
                let n = self.factor(&n)?;
                List(len.saturating_mul(n))
            }
            (BinOpKind::Add | BinOpKind::Concat, Text(a), Text(b)) => Text(a + b),
            (BinOpKind::Concat, Text(a), _) | (BinOpKind::Concat, _, Text(a)) => Text(a + 32),
            (BinOpKind::Add, List(a), List(b)) => List(a + b),
            (_, Number(_), Number(_)) => expr.as_const().map_or(Other, |v| of_value(&v)),
            _ => Other,
        })
    }

    /// A constant repetition factor, refused over [`MAX_REPEAT`].
    fn factor(&self, n: &Value) -> Result<usize, String> {
        match n.as_usize() {
            Some(n) if n > MAX_REPEAT => Err(format!(
                "`* {n}` repeats more than {MAX_REPEAT} times; templates may not build text that large"
            )),
            Some(n) => Ok(n),
            None => Ok(0),
        }
    }

    /// Rewrites `left op right` (spanning `whole`) into `call(left, right)`.
    fn guard(
        &mut self,
        op: char,
        call: &'static str,
        whole: Span,
        left: Span,
        right: Span,
    ) -> Result<(), String> {
        let gap = self
            .source
            .get(left.end_offset as usize..right.start_offset as usize)
            .unwrap_or("");
        // Between the operands there are only blanks, brackets and the operator.
        let Some(at) = gap.find(op) else {
            return Err(format!(
                "cannot find the operator `{op}` of this expression"
            ));
        };
        let at = left.end_offset + at as u32;
        // Outer operations span more, so they sort first at one offset.
        let order = u32::MAX - (whole.end_offset - whole.start_offset);
        self.edits.push((whole.start_offset, order, call, false));
        self.edits.push((whole.start_offset, order, "(", false));
        self.edits.push((at, 0, ",", true));
        self.edits.push((whole.end_offset, 0, ")", false));
        Ok(())
    }
}

fn of_value(v: &Value) -> Folded {
    match v.kind() {
        ValueKind::Number | ValueKind::Bool => Folded::Number(v.clone()),
        ValueKind::String => Folded::Text(v.as_str().map_or(0, str::len)),
        ValueKind::Seq => Folded::List(v.len().unwrap_or(0)),
        _ => Folded::Other,
    }
}

/// Registers [`MUL`], [`ADD`] and [`CAT`]: `a * b`, `a + b` and `a ~ b` as
/// minijinja computes them, after checking that the text or list they build
/// would be no longer than `max_output`.
pub(super) fn register(env: &mut Environment<'_>, max_output: usize) {
    let too_long = move |size: Option<usize>| {
        let size = size.map_or_else(|| format!("more than {max_output}"), |s| s.to_string());
        Error::new(
            ErrorKind::InvalidOperation,
            format!("this would build {size} bytes; a template writes at most {max_output}"),
        )
    };
    env.add_function(MUL, move |a: Value, b: Value| -> Result<Value, Error> {
        let repeated = |x: &Value, n: &Value| Some(size(x)?.saturating_mul(n.as_usize()?));
        if let Some(size) = repeated(&a, &b).or_else(|| repeated(&b, &a)) {
            if size > max_output {
                return Err(too_long(Some(size)));
            }
        }
        native("a * b")?.eval(minijinja::context! { a, b })
    });
    env.add_function(ADD, move |a: Value, b: Value| -> Result<Value, Error> {
        if let (Some(x), Some(y)) = (size(&a), size(&b)) {
            if x + y > max_output {
                return Err(too_long(Some(x + y)));
            }
        }
        native("a + b")?.eval(minijinja::context! { a, b })
    });
    env.add_function(CAT, move |a: Value, b: Value| -> Result<Value, Error> {
        // As minijinja's `~`: both displayed, one after the other; displayed
        // into a bounded buffer, so a deeply nested list stops at the limit.
        let mut out = Limited {
            text: String::new(),
            max: max_output,
        };
        use std::fmt::Write;
        write!(out, "{a}{b}").map_err(|_| too_long(None))?;
        Ok(Value::from(out.text))
    });
}

/// The length of a text (bytes) or a list (items), for the checks above.
fn size(v: &Value) -> Option<usize> {
    match v.kind() {
        ValueKind::String => v.as_str().map(str::len),
        ValueKind::Seq | ValueKind::Iterable => v.len(),
        _ => None,
    }
}

/// minijinja's own operator, compiled once.
fn native(expr: &'static str) -> Result<&'static minijinja::Expression<'static, 'static>, Error> {
    use std::sync::LazyLock;
    type Compiled = Option<minijinja::Expression<'static, 'static>>;
    static ENV: LazyLock<Environment<'static>> = LazyLock::new(Environment::new);
    static MUL: LazyLock<Compiled> = LazyLock::new(|| ENV.compile_expression("a * b").ok());
    static ADD: LazyLock<Compiled> = LazyLock::new(|| ENV.compile_expression("a + b").ok());
    let compiled = if expr == "a * b" { &*MUL } else { &*ADD };
    compiled
        .as_ref()
        .ok_or_else(|| Error::new(ErrorKind::InvalidOperation, "the operator is unavailable"))
}

/// A `fmt::Write` that fails past `max` bytes.
struct Limited {
    text: String,
    max: usize,
}

impl std::fmt::Write for Limited {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        if self.text.len() + s.len() > self.max {
            return Err(std::fmt::Error);
        }
        self.text.push_str(s);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::scope;
    use super::super::Templates;
    use minijinja::Value;

    #[test]
    fn constant_repetitions_over_the_limit_are_refused_before_anything_is_built() {
        let mut t = Templates::default();
        for (source, why) in [
            (
                "{% set y = 'AB' * 50000000 %}len {{ y | length }}",
                "repeats more than 10000 times",
            ),
            ("{{ 'x' * 1000000 }}", "repeats more than 10000 times"),
            ("{{ 1000000 * 'x' }}", "repeats more than 10000 times"),
            // Each factor is small; the product is not.
            ("{{ ('x' * 9000) * 9000 }}", "would build 81000000 bytes"),
            (
                "{{ (('abcd' ~ 'efgh') * 9000) | length }}",
                "would build 72000 bytes",
            ),
            (
                "{% if ('x' * 9000 * 9000) == 'x' %}{% endif %}",
                "would build",
            ),
            ("{{ [1, 2] * 20000 }}", "repeats more than 10000 times"),
        ] {
            let e = t.text(source).unwrap_err();
            assert!(e.contains(why), "{source}: {e}");
        }
        let e = t.expression("'x' * 9000 * 9000 == name").unwrap_err();
        assert!(e.contains("would build"), "{e}");
        // Small ones fold and render as before.
        let tpl = t.text("{{ '-' * 5 }}|{{ 2 * 3 }}|{{ [1] * 2 }}").unwrap();
        assert_eq!(t.render(&tpl, &scope(&[])).unwrap(), "-----|6|[1, 1]");
    }

    #[test]
    fn the_flow_folds_a_bounded_total_of_constant_text() {
        let mut t = Templates::default();
        let mut refused = None;
        for i in 0..400 {
            if let Err(e) = t.text(&format!("{{{{ '{i}' * 10000 }}}}")) {
                refused = Some((i, e));
                break;
            }
        }
        let (i, e) = refused.expect("the total is capped");
        assert!(e.contains("more than 1048576 bytes in all"), "{e}");
        assert!(i < 400, "{i}");
    }

    #[test]
    fn a_repetition_by_a_variable_is_sized_before_it_is_built() {
        let mut t = Templates::default();
        let tpl = t
            .text("{% set y = name * (n | int) %}{{ y | length }}")
            .unwrap();
        let s = |n: &str| {
            scope(&[
                ("name", Value::from("x".repeat(100))),
                ("n", Value::from(n)),
            ])
        };
        assert_eq!(t.render(&tpl, &s("3")).unwrap(), "300");
        let e = t.render(&tpl, &s("1000000")).unwrap_err();
        assert!(
            e.message.contains("this would build 100000000 bytes"),
            "{e}"
        );
        let list = t.text("{{ (items * (n | int)) | join(',') }}").unwrap();
        let s = |n: &str| scope(&[("items", Value::from(vec![1, 2])), ("n", Value::from(n))]);
        assert_eq!(t.render(&list, &s("2")).unwrap(), "1,2,1,2");
        assert!(t.render(&list, &s("100000000")).is_err());
    }

    #[test]
    fn text_doubled_in_a_loop_stops_at_the_limit() {
        let mut t = Templates::default();
        for source in [
            "{% set ns = namespace(s=name) %}{% for i in range(n) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}",
            "{% set ns = namespace(s=name) %}{% for i in range(n) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s | length }}",
            "{% set ns = namespace(s=[name]) %}{% for i in range(n) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s | length }}",
            "{% set ns = namespace(s=[name]) %}{% for i in range(n) %}{% set ns.s = [ns.s, ns.s] %}{% endfor %}{{ (ns.s ~ '') | length }}",
        ] {
            let tpl = t.text(source).unwrap();
            let s = |n: i64| minijinja::context! { name => "x", n => n };
            assert!(t.render(&tpl, &s(3)).is_ok(), "{source}");
            let e = t.render(&tpl, &s(40)).unwrap_err();
            assert!(e.message.contains("this would build"), "{source}: {e}");
        }
    }

    #[test]
    fn operations_rewritten_compute_what_minijinja_computes() {
        let mut t = Templates::default();
        let s = scope(&[
            ("a", Value::from(2)),
            ("b", Value::from(3)),
            ("f", Value::from(1.5)),
            ("name", Value::from("ab")),
        ]);
        for (source, want) in [
            ("{{ a * b }}", "6"),
            ("{{ a * b * a }}", "12"),
            ("{{ a * (b * a) }}", "12"),
            ("{{ (a + 1) * (b) }}", "9"),
            ("{{ a*b+1 }}", "7"),
            ("{{ a ** b * a }}", "16"),
            ("{{ f * a }}", "3.0"),
            ("{{ name * a }}{{ b * name }}", "ababababab"),
            ("{{ [a * b, a] | sum }}", "8"),
            ("{{ (a * 2) | string }}", "4"),
            ("{{ -a * b }}", "-6"),
            ("{{ 'x' * a }}", "xx"),
            ("{{ name ~ a ~ none ~ missing }}", "ab2None"),
            ("{{ (a + b) ~ (name + 'c') }}", "5abc"),
            ("{{ ([a] + [b]) | join('-') }}", "2-3"),
            ("{{ f + a }}", "3.5"),
        ] {
            let tpl = t.text(source).unwrap();
            assert_eq!(t.render(&tpl, &s).unwrap(), want, "{source}");
            assert_eq!(
                t.env.render_str(source, s.clone()).unwrap(),
                want,
                "minijinja agrees on {source}"
            );
        }
        let e = t.expression("a * b == 6 and name * 2 == 'abab'").unwrap();
        assert!(t.truthy(&e, &s).unwrap());
    }
}
