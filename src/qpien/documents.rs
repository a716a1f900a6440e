//! The GraphQL operations flowbot sends, as `.graphql` documents.
//!
//! The documents are embedded from `src/qpien/documents/` and validated against
//! `src/qpien/schema.graphql` by the test suite. Because that schema is partly
//! ASSUMED, a deployment can replace any document with its own file, without
//! recompiling: point `documents_dir` at a folder holding `<operation>.graphql`
//! files (for instance a `createMessage.graphql` that calls
//! `externalCreateMessage`). The client reads results by position (the one field
//! under `data`), so a renamed root field needs no other change.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use super::config::Dialect;
use super::error::QpienError;

/// One operation of the Qpien API that flowbot uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Operation {
    /// Exchanges the API key (client id and secret) for a one-hour token.
    GenerateOAuthToken,
    /// Reads one message.
    GetMessage,
    /// Reads a page of a conversation's messages.
    GetMessageList,
    /// Sends a message into a conversation.
    CreateMessage,
    /// Sends a message into a WhatsApp conversation.
    CreateMessageByWhatsapp,
    /// Reads one conversation.
    GetConversation,
    /// Reads a page of conversations.
    GetConversationList,
    /// Changes a conversation's status or assignment (handoff, release).
    UpdateConversation,
    /// Lists the connected channels.
    GetAllConnectedPlatformList,
    /// Lists the account's WhatsApp message templates (ASSUMED: the
    /// WhatsappBusinessTemplates page publishes no shape; the scope is FACT).
    GetWhatsappBusinessTemplateList,
    /// Sends an approved template into a WhatsApp conversation (ASSUMED: a
    /// SendMessages module exists, its operations are not published).
    SendWhatsappTemplateMessage,
}

/// How many operations there are.
const N: usize = 11;

impl Operation {
    /// Every operation, in a stable order.
    pub const ALL: [Operation; N] = [
        Operation::GenerateOAuthToken,
        Operation::GetMessage,
        Operation::GetMessageList,
        Operation::CreateMessage,
        Operation::CreateMessageByWhatsapp,
        Operation::GetConversation,
        Operation::GetConversationList,
        Operation::UpdateConversation,
        Operation::GetAllConnectedPlatformList,
        Operation::GetWhatsappBusinessTemplateList,
        Operation::SendWhatsappTemplateMessage,
    ];

    /// The operation's root field, which is also its document's file stem.
    pub const fn name(self) -> &'static str {
        match self {
            Operation::GenerateOAuthToken => "generateOAuthToken",
            Operation::GetMessage => "getMessage",
            Operation::GetMessageList => "getMessageList",
            Operation::CreateMessage => "createMessage",
            Operation::CreateMessageByWhatsapp => "createMessageByWhatsapp",
            Operation::GetConversation => "getConversation",
            Operation::GetConversationList => "getConversationList",
            Operation::UpdateConversation => "updateConversation",
            Operation::GetAllConnectedPlatformList => "getAllConnectedPlatformList",
            Operation::GetWhatsappBusinessTemplateList => "getWhatsappBusinessTemplateList",
            Operation::SendWhatsappTemplateMessage => "sendWhatsappTemplateMessage",
        }
    }

    /// The scope the API key needs for this operation (FACT, from Qpien's docs).
    pub const fn scope(self) -> Option<&'static str> {
        match self {
            Operation::GenerateOAuthToken => None,
            Operation::GetMessage | Operation::GetMessageList => Some("read_messages"),
            Operation::CreateMessage | Operation::CreateMessageByWhatsapp => Some("write_messages"),
            Operation::GetConversation | Operation::GetConversationList => {
                Some("read_conversations")
            }
            Operation::UpdateConversation => Some("write_conversations"),
            Operation::GetAllConnectedPlatformList => Some("read_channels"),
            Operation::GetWhatsappBusinessTemplateList => Some("read_whatsappBusinessTemplates"),
            // ASSUMED: the Scopes page lists no SendMessages operation.
            Operation::SendWhatsappTemplateMessage => Some("write_messages"),
        }
    }

    /// The root field this operation has in a dialect (`createMessage`, or
    /// `externalCreateMessage`; the token operation keeps its name).
    pub fn root_field(self, dialect: Dialect) -> String {
        let name = self.name();
        match dialect {
            Dialect::Documented => name.to_owned(),
            Dialect::External if self == Operation::GenerateOAuthToken => name.to_owned(),
            Dialect::External => {
                let mut out = String::with_capacity(name.len() + 8);
                out.push_str("external");
                out.push(name.as_bytes()[0].to_ascii_uppercase() as char);
                out.push_str(&name[1..]);
                out
            }
        }
    }

    /// The operation whose root field in `dialect` is `field`.
    pub fn from_root_field(field: &str, dialect: Dialect) -> Option<Operation> {
        Operation::ALL
            .into_iter()
            .find(|op| op.root_field(dialect) == field)
    }

    /// The built-in document of a dialect.
    pub fn embedded_in(self, dialect: Dialect) -> &'static str {
        match dialect {
            Dialect::Documented => self.embedded(),
            Dialect::External => self.external(),
        }
    }

    /// The external dialect's document, derived from the documented one: the
    /// root field prefixed (`externalCreateMessage`; the token operation keeps
    /// its name) and its selection wrapped in the `{success, code, message,
    /// data}` envelope. Derived, so the two sets cannot drift apart.
    fn external(self) -> &'static str {
        static EXTERNAL: std::sync::OnceLock<[String; N]> = std::sync::OnceLock::new();
        &EXTERNAL.get_or_init(|| Operation::ALL.map(|op| op.derive_external()))[self as usize]
    }

    fn derive_external(self) -> String {
        let doc = self.embedded();
        let lines: Vec<&str> = doc.trim_end().lines().collect();
        // The documented documents are written as: header, root field, the
        // selection, and two closing braces.
        let [header, root, body @ .., close_root, close_op] = lines.as_slice() else {
            return doc.to_owned();
        };
        let name = self.name();
        let header = if self == Operation::GenerateOAuthToken {
            header.to_string()
        } else {
            header.replacen(' ', " External", 1)
        };
        let root = root.replacen(name, &self.root_field(Dialect::External), 1);
        let mut out =
            format!("{header}\n{root}\n    success\n    code\n    message\n    data {{\n");
        for line in body {
            out.push_str("  ");
            out.push_str(line);
            out.push('\n');
        }
        out.push_str(&format!("    }}\n{close_root}\n{close_op}\n"));
        out
    }

    /// The embedded document of the documented dialect.
    pub const fn embedded(self) -> &'static str {
        match self {
            Operation::GenerateOAuthToken => include_str!("documents/generateOAuthToken.graphql"),
            Operation::GetMessage => include_str!("documents/getMessage.graphql"),
            Operation::GetMessageList => include_str!("documents/getMessageList.graphql"),
            Operation::CreateMessage => include_str!("documents/createMessage.graphql"),
            Operation::CreateMessageByWhatsapp => {
                include_str!("documents/createMessageByWhatsapp.graphql")
            }
            Operation::GetConversation => include_str!("documents/getConversation.graphql"),
            Operation::GetConversationList => include_str!("documents/getConversationList.graphql"),
            Operation::UpdateConversation => include_str!("documents/updateConversation.graphql"),
            Operation::GetAllConnectedPlatformList => {
                include_str!("documents/getAllConnectedPlatformList.graphql")
            }
            Operation::GetWhatsappBusinessTemplateList => {
                include_str!("documents/getWhatsappBusinessTemplateList.graphql")
            }
            Operation::SendWhatsappTemplateMessage => {
                include_str!("documents/sendWhatsappTemplateMessage.graphql")
            }
        }
    }

    /// Whether the operation is sent with the access token.
    pub const fn needs_token(self) -> bool {
        !matches!(self, Operation::GenerateOAuthToken)
    }

    /// The operation whose root field is `name`.
    pub fn from_name(name: &str) -> Option<Operation> {
        Operation::ALL.into_iter().find(|op| op.name() == name)
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The document text for each operation: a dialect's built-in ones, some
/// perhaps replaced from files.
#[derive(Debug, Clone)]
pub struct Documents {
    texts: Arc<[Arc<str>; N]>,
    /// Which operations were replaced from files.
    overridden: [bool; N],
}

impl Default for Documents {
    fn default() -> Self {
        Documents::embedded(Dialect::Documented)
    }
}

impl Documents {
    /// The documents shipped with flowbot for `dialect`.
    pub fn embedded(dialect: Dialect) -> Self {
        Documents {
            texts: Arc::new(Operation::ALL.map(|op| Arc::from(op.embedded_in(dialect)))),
            overridden: [false; N],
        }
    }

    /// The built-in documents of `dialect`, with each `<operation>.graphql`
    /// file of `dir` taking the place of its operation's document. A
    /// `.graphql` file whose name is no operation is an error (a misspelt
    /// override would otherwise be silently ignored).
    pub fn with_overrides(dir: &Path, dialect: Dialect) -> Result<Self, QpienError> {
        let mut texts = Operation::ALL.map(|op| Arc::<str>::from(op.embedded_in(dialect)));
        let mut overridden = [false; N];
        let entries = std::fs::read_dir(dir).map_err(|e| {
            QpienError::Config(format!("cannot read documents_dir {}: {e}", dir.display()))
        })?;
        for entry in entries {
            let path = entry
                .map_err(|e| QpienError::Config(format!("{}: {e}", dir.display())))?
                .path();
            if path.extension().and_then(|e| e.to_str()) != Some("graphql") {
                continue;
            }
            let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
            let Some(op) = Operation::from_name(stem) else {
                let known: Vec<&str> = Operation::ALL.iter().map(|o| o.name()).collect();
                return Err(QpienError::Config(format!(
                    "{}: no operation is called `{stem}` (expected one of: {})",
                    path.display(),
                    known.join(", ")
                )));
            };
            let text = std::fs::read_to_string(&path)
                .map_err(|e| QpienError::Config(format!("{}: {e}", path.display())))?;
            if !text.contains('{') {
                return Err(QpienError::Config(format!(
                    "{}: not a GraphQL document (no selection set)",
                    path.display()
                )));
            }
            texts[op as usize] = Arc::from(text);
            overridden[op as usize] = true;
        }
        Ok(Documents {
            texts: Arc::new(texts),
            overridden,
        })
    }

    /// Whether `op`'s document came from a file.
    pub fn is_overridden(&self, op: Operation) -> bool {
        self.overridden[op as usize]
    }

    /// The document sent for `op`.
    pub fn get(&self, op: Operation) -> &str {
        &self.texts[op as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_documents_wrap_the_documented_ones() {
        assert_eq!(
            Operation::CreateMessage.embedded_in(Dialect::External),
            "mutation ExternalCreateMessage($input: CreateMessageInput!) {\n  externalCreateMessage(input: $input) {\n    success\n    code\n    message\n    data {\n      _id\n      frontMsgId\n    }\n  }\n}\n"
        );
        assert!(Operation::GenerateOAuthToken
            .embedded_in(Dialect::External)
            .contains("  generateOAuthToken(input: $input) {\n    success"));
    }
}
