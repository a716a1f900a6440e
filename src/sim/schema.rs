//! The simulator's GraphQL schema, built from `src/qpien/schema.graphql`.
//!
//! Every object type of the SDL becomes a dynamic object whose fields read the
//! same-named key of a JSON value, so stored messages and conversations are
//! served as they are. The root fields of `Query` and `Mutation` get the
//! simulator's behaviour. A root field the SDL names but the simulator does not
//! implement would fail at build time, not at a request.

use std::collections::HashSet;
use std::sync::Arc;

use async_graphql::dynamic::{
    Field, FieldFuture, FieldValue, InputObject, InputValue, Object, ResolverContext, Scalar,
    Schema, TypeRef,
};
use async_graphql::parser::types::{BaseType, Type, TypeKind, TypeSystemDefinition};
use async_graphql::{Error, ErrorExtensions, Value as GqlValue};
use serde_json::{json, Value};

use super::state::{SimState, PLATFORMS};
use crate::qpien::{Dialect, Operation};

/// What the HTTP layer passes to resolvers.
pub(crate) struct Auth(pub(crate) Option<String>);

fn type_ref(ty: &Type) -> TypeRef {
    let base = match &ty.base {
        BaseType::Named(name) => TypeRef::Named(name.to_string().into()),
        BaseType::List(inner) => TypeRef::List(Box::new(type_ref(inner))),
    };
    if ty.nullable {
        base
    } else {
        TypeRef::NonNull(Box::new(base))
    }
}

fn base_name(ty: &Type) -> String {
    match &ty.base {
        BaseType::Named(n) => n.to_string(),
        BaseType::List(inner) => base_name(inner),
    }
}

/// A JSON value as a field value: objects stay JSON (their fields read it),
/// scalars become GraphQL values.
fn field_value(v: Value, object: bool) -> Result<Option<FieldValue<'static>>, Error> {
    Ok(match v {
        Value::Null => None,
        Value::Array(items) => Some(FieldValue::list(
            items
                .into_iter()
                .map(|i| field_value(i, object).map(|f| f.unwrap_or(FieldValue::NULL)))
                .collect::<Result<Vec<_>, _>>()?,
        )),
        v if object => Some(FieldValue::owned_any(v)),
        v => Some(FieldValue::value(
            GqlValue::from_json(v).map_err(|e| Error::new(e.to_string()))?,
        )),
    })
}

fn api_error(code: &str, scope: Option<String>) -> Error {
    let code = code.to_owned();
    Error::new(format!("{code} (Qpien simulator)")).extend_with(move |_, e| {
        e.set("code", code.clone());
        if let Some(s) = &scope {
            e.set("requiredScope", s.clone());
        }
    })
}

fn arg(ctx: &ResolverContext<'_>, name: &str) -> Value {
    ctx.args
        .get(name)
        .map(|a| a.as_value().clone().into_json().unwrap_or(Value::Null))
        .unwrap_or(Value::Null)
}

fn page(all: Vec<Value>, page: &Value, limit: &Value) -> Value {
    let limit = limit.as_u64().unwrap_or(20).max(1) as usize;
    let page = page.as_u64().unwrap_or(1).max(1) as usize;
    let total = all.len();
    let docs: Vec<Value> = all
        .into_iter()
        .skip((page - 1) * limit)
        .take(limit)
        .collect();
    json!({"docs": docs, "hasNextPage": page * limit < total, "totalDocs": total})
}

/// A failure as the API reports it: a code, and the scope it lacked.
struct Failure(String, Option<String>);

impl Failure {
    fn code(code: &str) -> Failure {
        Failure(code.to_owned(), None)
    }
}

/// Set by a resolver when the answer must be lost (HTTP 500 after the work).
#[derive(Default)]
pub(crate) struct Lost(pub(crate) std::sync::atomic::AtomicBool);

async fn root(op: Operation, ctx: &ResolverContext<'_>) -> Result<Value, Failure> {
    let sim = ctx
        .data::<Arc<SimState>>()
        .map_err(|_| Failure::code("INTERNAL"))?;
    if op == Operation::GenerateOAuthToken {
        let delay = sim.config().token_delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let input = arg(ctx, "input");
        let id = input["clientId"].as_str().unwrap_or("");
        let secret = input["clientSecret"].as_str().unwrap_or("");
        return sim
            .issue_token(id, secret)
            .ok_or_else(|| Failure::code("INVALID_CLIENT"));
    }
    let auth = ctx.data::<Auth>().map_err(|_| Failure::code("INTERNAL"))?;
    sim.authorize(auth.0.as_deref(), op.scope())
        .map_err(|(code, s)| Failure(code.to_owned(), s))?;
    if let Some(code) = sim.injected(op.name()) {
        return Err(Failure(code, None));
    }
    Ok(match op {
        Operation::GenerateOAuthToken => Value::Null,
        Operation::GetMessage => {
            let id = arg(ctx, "messageId");
            let inner = sim.inner();
            inner
                .conversations
                .values()
                .flat_map(|c| c.messages.iter())
                .find(|m| m["_id"] == id)
                .cloned()
                .unwrap_or(Value::Null)
        }
        Operation::GetMessageList => {
            let id = arg(ctx, "conversationId");
            let all = {
                let inner = sim.inner();
                let Some(c) = inner.conversations.get(id.as_str().unwrap_or("")) else {
                    return Err(Failure::code("NOT_FOUND"));
                };
                c.messages.clone()
            };
            page(all, &arg(ctx, "page"), &arg(ctx, "limit"))
        }
        Operation::GetConversation => {
            let id = arg(ctx, "conversationId");
            let inner = sim.inner();
            inner
                .conversations
                .get(id.as_str().unwrap_or(""))
                .map(|c| c.data.clone())
                .unwrap_or(Value::Null)
        }
        Operation::GetConversationList => {
            let status = arg(ctx, "status");
            let all: Vec<Value> = sim
                .conversations()
                .into_iter()
                .filter(|c| status.is_null() || c["status"] == status)
                .collect();
            page(all, &arg(ctx, "page"), &arg(ctx, "limit"))
        }
        Operation::GetAllConnectedPlatformList => Value::Array(
            PLATFORMS
                .iter()
                .map(|(id, name, ty)| {
                    json!({"_id": id, "name": name, "channelType": ty, "status": "ACTIVE"})
                })
                .collect(),
        ),
        Operation::GetWhatsappBusinessTemplateList => sim.template_list(),
        Operation::CreateMessage
        | Operation::CreateMessageByWhatsapp
        | Operation::SendWhatsappTemplateMessage => {
            let mut input = arg(ctx, "input");
            // Only the template operation sends templates.
            if op != Operation::SendWhatsappTemplateMessage {
                input["template"] = Value::Null;
            } else if !input["template"].is_object() {
                return Err(Failure::code("BAD_USER_INPUT"));
            }
            let (message, new) = sim
                .create(input, op == Operation::CreateMessageByWhatsapp)
                .map_err(Failure::code)?;
            if new && sim.take(|s| &mut s.lose_next_creates) {
                if let Ok(lost) = ctx.data::<Arc<Lost>>() {
                    lost.0.store(true, std::sync::atomic::Ordering::SeqCst);
                }
            }
            if new && sim.take(|s| &mut s.hold_next_creates) {
                sim.held.notify_one();
                tokio::time::sleep(std::time::Duration::from_secs(30)).await;
            }
            message
        }
        Operation::UpdateConversation => sim
            .update(&arg(ctx, "input"))
            .ok_or_else(|| Failure::code("NOT_FOUND"))?,
    })
}

/// The answer of a root field in the dialect's form.
async fn answer(op: Operation, dialect: Dialect, ctx: ResolverContext<'_>) -> Result<Value, Error> {
    let result = root(op, &ctx).await;
    match dialect {
        Dialect::Documented => result.map_err(|Failure(code, scope)| api_error(&code, scope)),
        Dialect::External => Ok(match result {
            Ok(data) => json!({"success": true, "code": null, "message": null, "data": data}),
            Err(Failure(code, scope)) => json!({
                "success": false,
                "code": code,
                "message": match &scope {
                    Some(s) => format!("{code}: requires {s} (Qpien simulator)"),
                    None => format!("{code} (Qpien simulator)"),
                },
                "requiredScope": scope,
                "data": null,
            }),
        }),
    }
}

/// Builds the schema of a dialect from the client's SDL.
pub(crate) fn build(dialect: Dialect, introspection: bool) -> Result<Schema, String> {
    let doc = async_graphql::parser::parse_schema(crate::qpien::dialect::schema(dialect))
        .map_err(|e| e.to_string())?;
    let mut objects: HashSet<String> = HashSet::new();
    for def in &doc.definitions {
        if let TypeSystemDefinition::Type(t) = def {
            if matches!(t.node.kind, TypeKind::Object(_)) {
                objects.insert(t.node.name.node.to_string());
            }
        }
    }
    let mut builder = Schema::build("Query", Some("Mutation"), None);
    let mut implemented = 0;
    for def in &doc.definitions {
        let TypeSystemDefinition::Type(t) = def else {
            continue;
        };
        let name = t.node.name.node.to_string();
        let description = t.node.description.as_ref().map(|d| d.node.clone());
        match &t.node.kind {
            TypeKind::Scalar => {
                let mut s = Scalar::new(name);
                if let Some(d) = description {
                    s = s.description(d);
                }
                builder = builder.register(s);
            }
            TypeKind::InputObject(input) => {
                let mut o = InputObject::new(name);
                for f in &input.fields {
                    o = o.field(InputValue::new(
                        f.node.name.node.to_string(),
                        type_ref(&f.node.ty.node),
                    ));
                }
                builder = builder.register(o);
            }
            TypeKind::Object(obj) => {
                let is_root = name == "Query" || name == "Mutation";
                let mut o = Object::new(name.clone());
                if let Some(d) = description {
                    o = o.description(d);
                }
                for f in &obj.fields {
                    let fname = f.node.name.node.to_string();
                    let ty = type_ref(&f.node.ty.node);
                    let object = objects.contains(&base_name(&f.node.ty.node));
                    let mut field = if is_root {
                        let Some(op) = Operation::from_root_field(&fname, dialect) else {
                            return Err(format!("the simulator does not implement {name}.{fname}"));
                        };
                        implemented += 1;
                        Field::new(fname, ty, move |ctx| {
                            FieldFuture::new(async move {
                                let v = answer(op, dialect, ctx).await?;
                                field_value(v, object)
                            })
                        })
                    } else {
                        let key = fname.clone();
                        Field::new(fname, ty, move |ctx| {
                            let key = key.clone();
                            FieldFuture::new(async move {
                                let parent = ctx.parent_value.try_downcast_ref::<Value>()?;
                                field_value(
                                    parent.get(&key).cloned().unwrap_or(Value::Null),
                                    object,
                                )
                            })
                        })
                    };
                    for a in &f.node.arguments {
                        field = field.argument(InputValue::new(
                            a.node.name.node.to_string(),
                            type_ref(&a.node.ty.node),
                        ));
                    }
                    o = o.field(field);
                }
                builder = builder.register(o);
            }
            _ => return Err(format!("unsupported type kind for {name}")),
        }
    }
    if implemented != Operation::ALL.len() {
        return Err(format!(
            "the schema has {implemented} of the client's {} operations",
            Operation::ALL.len()
        ));
    }
    if !introspection {
        builder = builder.disable_introspection();
    }
    builder.finish().map_err(|e| e.to_string())
}

/// The schema's SDL as the simulator serves it in a dialect (for the drift test).
pub fn sdl(dialect: Dialect) -> Result<String, String> {
    build(dialect, true).map(|s| s.sdl())
}
