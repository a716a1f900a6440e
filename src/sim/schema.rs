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

use super::state::SimState;
use crate::qpien::Operation;

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

/// The root fields the simulator serves: every operation the client knows.
fn is_root_field(name: &str) -> bool {
    Operation::from_name(name).is_some()
}

/// The scope an operation needs: the one table, the client's own.
fn scope(field: &str) -> Option<&'static str> {
    Operation::from_name(field).and_then(Operation::scope)
}

async fn root(field: &str, ctx: ResolverContext<'_>) -> Result<Value, Error> {
    let sim = ctx.data::<Arc<SimState>>()?;
    if field == "generateOAuthToken" {
        let input = arg(&ctx, "input");
        let id = input["clientId"].as_str().unwrap_or("");
        let secret = input["clientSecret"].as_str().unwrap_or("");
        return sim
            .issue_token(id, secret)
            .ok_or_else(|| api_error("INVALID_CLIENT", None));
    }
    let auth = ctx.data::<Auth>()?;
    sim.authorize(auth.0.as_deref(), scope(field))
        .map_err(|(code, s)| api_error(code, s))?;
    Ok(match field {
        "getMessage" => {
            let id = arg(&ctx, "messageId");
            let inner = sim.inner();
            inner
                .conversations
                .values()
                .flat_map(|c| c.messages.iter())
                .find(|m| m["_id"] == id)
                .cloned()
                .unwrap_or(Value::Null)
        }
        "getMessageList" => {
            let id = arg(&ctx, "conversationId");
            let all = {
                let inner = sim.inner();
                let Some(c) = inner.conversations.get(id.as_str().unwrap_or("")) else {
                    return Err(api_error("NOT_FOUND", None));
                };
                c.messages.clone()
            };
            page(all, &arg(&ctx, "page"), &arg(&ctx, "limit"))
        }
        "getConversation" => {
            let id = arg(&ctx, "conversationId");
            let inner = sim.inner();
            inner
                .conversations
                .get(id.as_str().unwrap_or(""))
                .map(|c| c.data.clone())
                .unwrap_or(Value::Null)
        }
        "getConversationList" => {
            let status = arg(&ctx, "status");
            let all: Vec<Value> = sim
                .conversations()
                .into_iter()
                .filter(|c| status.is_null() || c["status"] == status)
                .collect();
            page(all, &arg(&ctx, "page"), &arg(&ctx, "limit"))
        }
        "getAllConnectedPlatformList" => json!([
            {"_id": "p-whatsapp", "name": "WhatsApp (simulated)", "channelType": "WhatsApp", "status": "ACTIVE"},
            {"_id": "p-instagram", "name": "Instagram (simulated)", "channelType": "Instagram", "status": "ACTIVE"},
            {"_id": "p-email", "name": "E-mail (simulated)", "channelType": "Email", "status": "ACTIVE"},
            {"_id": "p-livechat", "name": "Live chat (simulated)", "channelType": "LiveChat", "status": "ACTIVE"}
        ]),
        "createMessage" | "createMessageByWhatsapp" => sim
            .create(arg(&ctx, "input"), field == "createMessageByWhatsapp")
            .map_err(|code| api_error(code, None))?,
        "updateConversation" => sim
            .update(&arg(&ctx, "input"))
            .ok_or_else(|| api_error("NOT_FOUND", None))?,
        other => return Err(api_error("NOT_IMPLEMENTED", Some(other.to_owned()))),
    })
}

/// Builds the schema from the client's SDL.
pub(crate) fn build() -> Result<Schema, String> {
    let doc =
        async_graphql::parser::parse_schema(crate::qpien::SCHEMA).map_err(|e| e.to_string())?;
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
                        if !is_root_field(&fname) {
                            return Err(format!("the simulator does not implement {name}.{fname}"));
                        }
                        implemented += 1;
                        let key = fname.clone();
                        Field::new(fname, ty, move |ctx| {
                            let key = key.clone();
                            FieldFuture::new(async move {
                                let v = root(&key, ctx).await?;
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
    builder.finish().map_err(|e| e.to_string())
}

/// The schema's SDL as the simulator serves it (for the drift test).
pub fn sdl() -> Result<String, String> {
    build().map(|s| s.sdl())
}
