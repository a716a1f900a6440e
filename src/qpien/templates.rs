//! The account's WhatsApp message templates, as Qpien lists them.
//!
//! FACT: a WhatsappBusinessTemplates module exists, read with the scope
//! `read_whatsappBusinessTemplates`. ASSUMED (no shape is published): the
//! operation `getWhatsappBusinessTemplateList` and each template's fields.
//! They are read leniently: the name from `name`; the language from
//! `language` (a code, or an object with `code`) or `languageCode`; only
//! templates whose `status` is absent or `APPROVED` (any case) count; the
//! number of parameters from `params`/`parameterCount` when given, else the
//! highest `{{n}}` in `body` or in the text of any of `components`.

use serde::Deserialize;
use serde_json::Value;

use crate::flow::TemplateInfo;

/// One template as Qpien lists it (ASSUMED shape).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WhatsappTemplate {
    /// Its name.
    #[serde(default)]
    pub name: Option<String>,
    /// Its language: a code, or an object with one.
    #[serde(default)]
    pub language: Value,
    /// Its language code, under another name.
    #[serde(default)]
    pub language_code: Option<String>,
    /// `APPROVED`, `PENDING`, `REJECTED`...
    #[serde(default)]
    pub status: Option<String>,
    /// The body text, with `{{1}}`, `{{2}}`... placeholders.
    #[serde(default)]
    pub body: Option<String>,
    /// The parts of the template (header, body, footer, buttons), as the
    /// WhatsApp Business API writes them.
    #[serde(default)]
    pub components: Vec<Value>,
    /// How many parameters it takes, if said.
    #[serde(default, alias = "parameterCount", alias = "paramCount")]
    pub params: Option<Value>,
}

impl WhatsappTemplate {
    /// What the flow language needs to know of it; `None` when it is not
    /// approved or names no template.
    pub fn info(&self) -> Option<TemplateInfo> {
        let name = self.name.as_deref().filter(|n| !n.is_empty())?;
        if self
            .status
            .as_deref()
            .is_some_and(|s| !s.eq_ignore_ascii_case("approved"))
        {
            return None;
        }
        let language = match &self.language {
            Value::String(s) => s.clone(),
            Value::Object(o) => o.get("code").and_then(Value::as_str)?.to_owned(),
            _ => self.language_code.clone()?,
        };
        let said = match &self.params {
            Some(Value::Number(n)) => n.as_u64().map(|n| n as usize),
            Some(Value::Array(a)) => Some(a.len()),
            _ => None,
        };
        let params = said.unwrap_or_else(|| {
            let texts = self.body.iter().map(String::as_str).chain(
                self.components
                    .iter()
                    .filter_map(|c| c.get("text").and_then(Value::as_str)),
            );
            texts.map(placeholders).max().unwrap_or(0)
        });
        Some(TemplateInfo {
            name: name.to_owned(),
            language,
            params,
        })
    }
}

/// How many placeholders a template text has: its highest `{{n}}`.
pub fn placeholders(text: &str) -> usize {
    text.split("{{")
        .skip(1)
        .filter_map(|rest| rest.split_once("}}"))
        .filter_map(|(n, _)| n.trim().parse::<usize>().ok())
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(v: Value) -> Option<TemplateInfo> {
        serde_json::from_value::<WhatsappTemplate>(v).ok()?.info()
    }

    #[test]
    fn templates_are_read_in_any_of_the_likely_shapes() {
        let info = |name: &str, language: &str, params| TemplateInfo {
            name: name.into(),
            language: language.into(),
            params,
        };
        assert_eq!(
            read(
                serde_json::json!({"name": "a", "language": "en", "status": "APPROVED",
                "body": "Hi {{1}}, order {{2}}"})
            ),
            Some(info("a", "en", 2))
        );
        assert_eq!(
            read(serde_json::json!({"name": "b", "language": {"code": "tr"},
                "components": [{"type": "HEADER", "text": "x {{1}}"},
                               {"type": "BODY", "text": "{{1}} {{3}}"}]})),
            Some(info("b", "tr", 3))
        );
        assert_eq!(
            read(serde_json::json!({"name": "c", "languageCode": "de", "parameterCount": 4})),
            Some(info("c", "de", 4))
        );
        assert_eq!(
            read(serde_json::json!({"name": "d", "language": "en", "status": "rejected"})),
            None
        );
        assert_eq!(read(serde_json::json!({"language": "en"})), None);
        assert_eq!(placeholders("no placeholder {{name}} here"), 0);
    }
}
