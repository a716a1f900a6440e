//! The two operation sets flowbot speaks, as schemas.
//!
//! `documented` is `schema.graphql` itself. `external` is derived from it: each
//! root field `f(args): T` becomes `externalF(args): ExternalFResponse` (the
//! token operation keeps its name), where the response type is the envelope
//! `{success, code, message, data: T}` seen in public third-party code. The
//! built-in documents of each dialect are validated against its schema by the
//! tests, the simulator serves either, and `flowbot doctor` compares both with
//! a live account.

use std::fmt::Write as _;
use std::sync::OnceLock;

use apollo_compiler::ast::{Definition, Document};

use super::config::Dialect;
use super::documents::Operation;
use super::SCHEMA;

/// The SDL of a dialect.
pub fn schema(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Documented => SCHEMA,
        Dialect::External => {
            static EXTERNAL: OnceLock<String> = OnceLock::new();
            EXTERNAL.get_or_init(|| derive_external(SCHEMA))
        }
    }
}

/// The envelope type of an external root field.
pub(crate) fn envelope_type(field: &str) -> String {
    let mut name = String::from("External");
    name.push(field.as_bytes()[0].to_ascii_uppercase() as char);
    name.push_str(&field[1..]);
    name.push_str("Response");
    name
}

fn derive_external(sdl: &str) -> String {
    let doc = match Document::parse(sdl, "schema.graphql") {
        Ok(d) => d,
        // The embedded schema parses: the tests hold it to that.
        Err(e) => e.partial,
    };
    let mut out = String::from(
        "# Derived from schema.graphql: the `external` dialect (root fields prefixed,\n\
         # results in a {success, code, message, data} envelope). ASSUMED, from\n\
         # public third-party code.\n\n",
    );
    let mut envelopes = String::new();
    for def in &doc.definitions {
        match def {
            Definition::ObjectTypeDefinition(t) if t.name == "Query" || t.name == "Mutation" => {
                let _ = writeln!(out, "type {} {{", t.name);
                for f in &t.fields {
                    let Some(op) = Operation::from_name(&f.name) else {
                        continue;
                    };
                    let env = envelope_type(&f.name);
                    let args: Vec<String> = f.arguments.iter().map(|a| a.to_string()).collect();
                    let args = if args.is_empty() {
                        String::new()
                    } else {
                        format!("({})", args.join(", "))
                    };
                    let _ = writeln!(out, "  {}{args}: {env}", op.root_field(Dialect::External));
                    let _ = writeln!(
                        envelopes,
                        "type {env} {{\n  success: Boolean!\n  code: String\n  message: String\n  data: {}\n}}\n",
                        f.ty
                    );
                }
                out.push_str("}\n\n");
            }
            other => {
                let _ = writeln!(out, "{other}\n");
            }
        }
    }
    out.push_str(&envelopes);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_schemas_are_valid_and_hold_every_operation() {
        for dialect in [Dialect::Documented, Dialect::External] {
            let schema = apollo_compiler::Schema::parse_and_validate(schema(dialect), "s.graphql")
                .unwrap_or_else(|e| panic!("{dialect:?}: {}", e.errors));
            for op in Operation::ALL {
                let root = if op.embedded().trim_start().starts_with("mutation") {
                    "Mutation"
                } else {
                    "Query"
                };
                let ty = schema.get_object(root).unwrap();
                assert!(
                    ty.fields.contains_key(op.root_field(dialect).as_str()),
                    "{dialect:?}: {root}.{}",
                    op.root_field(dialect)
                );
            }
        }
    }
}
