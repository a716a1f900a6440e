//! The bot's Rust handlers: what its flow cannot say in YAML. `src/main.rs`
//! gives them to flowbot's command line; the tests use the same registry.

use flowbot::{ActionContext, ActionError, ActionOutcome, Registry};

/// Opens a callback ticket for the phone number the customer gave (`call:
/// { action: create_ticket, args: { phone: "{{ phone }}" } }` in the flow).
/// A real bot would call its helpdesk here; this one makes the ticket's
/// number from the phone number's last digits.
pub fn create_ticket(ctx: &mut ActionContext<'_>) -> Result<ActionOutcome, ActionError> {
    let phone = ctx
        .arg_str("phone")
        .ok_or_else(|| ActionError::new("create_ticket needs a `phone`"))?;
    let digits: Vec<char> = phone.chars().filter(char::is_ascii_digit).collect();
    let last: String = digits[digits.len().saturating_sub(4)..].iter().collect();
    ctx.set("ticket", format!("CB-{last}"));
    Ok(ActionOutcome::Continue)
}

/// Every handler the flow names, by the name it uses.
pub fn registry() -> Registry {
    Registry::new().action("create_ticket", create_ticket)
}
