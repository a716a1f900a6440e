//! Reading a GraphQL answer: the result may come bare or wrapped in an envelope
//! `{success, data, code, message}`, and a failure may come in GraphQL `errors`
//! or as `success: false` with a `code` (both seen in integration code; Qpien
//! documents neither in full). This module turns all of them into one outcome.

use serde_json::Value;

use super::documents::Operation;
use super::error::{QpienError, DUPLICATE_CODES, RETRYABLE_CODES};

/// How an answer failed, before the client decides what to do about it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Failure {
    /// The token was refused (`UNAUTHORIZED`, `TOKEN_EXPIRED`): refresh and retry once.
    Auth { code: String, message: String },
    /// The message exists already (a retried create): counts as sent.
    Duplicate,
    /// Anything else.
    Error(QpienError),
}

fn str_at<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// Maps an error code to what it means.
pub(crate) fn classify(
    op: Operation,
    code: &str,
    message: &str,
    required_scope: Option<&str>,
) -> Failure {
    // What Qpien says is kept and logged: at most a short excerpt of it.
    let message = &crate::text::shorten(message, 300);
    let upper = crate::text::shorten(code, 64).to_ascii_uppercase();
    match upper.as_str() {
        "UNAUTHORIZED" | "UNAUTHENTICATED" | "TOKEN_EXPIRED" => Failure::Auth {
            code: upper,
            message: message.to_owned(),
        },
        "INVALID_CLIENT" => Failure::Error(QpienError::InvalidClient(message.to_owned())),
        "INSUFFICIENT_SCOPES" | "INSUFFICIENT_SCOPE" => {
            Failure::Error(QpienError::InsufficientScopes {
                operation: op.name(),
                required: required_scope
                    .map(str::to_owned)
                    .or_else(|| op.scope().map(str::to_owned))
                    .unwrap_or_else(|| "unknown".into()),
            })
        }
        c if DUPLICATE_CODES.contains(&c) => Failure::Duplicate,
        c => Failure::Error(QpienError::Api {
            operation: op.name(),
            retryable: RETRYABLE_CODES.contains(&c),
            code: upper.clone(),
            message: message.to_owned(),
        }),
    }
}

/// What one entry of a GraphQL answer's `errors` says.
pub(crate) fn failure_of(op: Operation, error: &Value) -> Failure {
    let ext = error.get("extensions").unwrap_or(&Value::Null);
    let code = str_at(ext, "code")
        .or_else(|| str_at(error, "code"))
        .unwrap_or("UNKNOWN");
    let message = str_at(error, "message").unwrap_or("");
    let scope = str_at(ext, "requiredScope").or_else(|| str_at(ext, "required_scope"));
    classify(op, code, message, scope)
}

/// The result of `op` in a GraphQL answer `body`, unwrapped from its envelope.
pub(crate) fn interpret(op: Operation, mut body: Value) -> Result<Value, Failure> {
    if let Some(errors) = body.get("errors").and_then(Value::as_array) {
        if let Some(first) = errors.first() {
            return Err(failure_of(op, first));
        }
    }
    let data = match body.get_mut("data").map(Value::take) {
        Some(Value::Object(map)) => map,
        _ => {
            // An envelope at the top level, with no GraphQL `data`.
            if body.get("success").is_some() {
                return unwrap_envelope(op, body);
            }
            return Err(Failure::Error(QpienError::Decode {
                operation: op.name(),
                message: "no `data` in the answer".into(),
            }));
        }
    };
    // The one root field, whatever a replaced document calls it.
    let result = if data.len() == 1 {
        data.into_iter().next().map(|(_, v)| v)
    } else {
        let mut data = data;
        data.remove(op.name())
    }
    .unwrap_or(Value::Null);
    unwrap_envelope(op, result)
}

/// A result unwrapped from its `{success, data, code, message}` envelope, if
/// it has one.
pub(crate) fn unwrap_envelope(op: Operation, mut value: Value) -> Result<Value, Failure> {
    let Some(success) = value.get("success").and_then(Value::as_bool) else {
        return Ok(value);
    };
    let looks_like_envelope = value.get("data").is_some()
        || value.get("code").is_some()
        || value.get("message").is_some();
    if !looks_like_envelope {
        return Ok(value);
    }
    if success {
        return Ok(value
            .get_mut("data")
            .map(Value::take)
            .unwrap_or(Value::Null));
    }
    let inner = value.get("data").unwrap_or(&Value::Null);
    let code = str_at(&value, "code")
        .or_else(|| str_at(inner, "code"))
        .unwrap_or("UNKNOWN");
    let message = str_at(&value, "message")
        .or_else(|| str_at(inner, "message"))
        .unwrap_or("");
    let scope = str_at(&value, "requiredScope").or_else(|| str_at(inner, "requiredScope"));
    Err(classify(op, code, message, scope))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const OP: Operation = Operation::CreateMessage;

    #[test]
    fn bare_and_enveloped_results_read_the_same() {
        let bare = json!({"data": {"createMessage": {"_id": "m1"}}});
        let wrapped = json!({"data": {"externalCreateMessage":
            {"success": true, "data": {"_id": "m1"}, "code": null, "message": null}}});
        assert_eq!(interpret(OP, bare).unwrap(), json!({"_id": "m1"}));
        assert_eq!(interpret(OP, wrapped).unwrap(), json!({"_id": "m1"}));
    }

    #[test]
    fn a_result_with_a_success_field_of_its_own_is_not_an_envelope() {
        let body = json!({"data": {"createMessage": {"success": true, "_id": "m1"}}});
        assert_eq!(
            interpret(OP, body).unwrap(),
            json!({"success": true, "_id": "m1"})
        );
    }

    #[test]
    fn failures_read_from_errors_and_from_envelopes() {
        let in_errors = json!({"errors": [{"message": "expired",
            "extensions": {"code": "TOKEN_EXPIRED"}}], "data": null});
        let in_envelope = json!({"data": {"createMessage":
            {"success": false, "data": {"code": "TOKEN_EXPIRED"}, "message": "expired"}}});
        for body in [in_errors, in_envelope] {
            assert_eq!(
                interpret(OP, body),
                Err(Failure::Auth {
                    code: "TOKEN_EXPIRED".into(),
                    message: "expired".into()
                })
            );
        }
    }
}
