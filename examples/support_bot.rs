//! The support bot: `flows/support.yaml` with its Rust action `lookup_order`
//! (and `flows/food.yaml`'s `find_order`).
//!
//! ```text
//! cargo run --example support_bot -- chat flows/support.yaml
//! bot> Hi! How can we help?
//!      [1] My orders
//!      [2] Billing
//!      [3] Talk to us
//! you> 1
//! bot> Your order number? (6 digits)
//! you> 222222
//! bot> Order 222222 is shipped.
//! bot> What next?
//! ```
//!
//! Every `flowbot` subcommand works through this binary, with the action
//! registered: `cargo run --example support_bot -- test tests/conversations`.

use flowbot::{ActionContext, ActionError, ActionOutcome, Registry};

/// Looks an order up. A real bot would call the shop's API here; this one says
/// "shipped" for even numbers and "processing" for odd ones.
pub fn lookup_order(ctx: &mut ActionContext<'_>) -> Result<ActionOutcome, ActionError> {
    let number: u64 = ctx
        .arg_str("number")
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| ActionError::new("lookup_order needs a numeric `number`"))?;
    let status = if number.is_multiple_of(2) {
        "shipped"
    } else {
        "processing"
    };
    ctx.set("status", status);
    Ok(ActionOutcome::Continue)
}

/// Finds a food order (`flows/food.yaml`): numbers ending in 0 are not
/// found, and the action jumps to the state its `call:` declares for that
/// (`jumps: [order_missing]`); the others are on their way, due in 25
/// minutes (`eta`, a time the flow writes in the customer's language).
pub fn find_order(ctx: &mut ActionContext<'_>) -> Result<ActionOutcome, ActionError> {
    let number = ctx.arg_str("number").unwrap_or_default().trim().to_owned();
    if number.ends_with('0') {
        return Ok(ActionOutcome::Goto("order_missing".into()));
    }
    let now: i64 = ctx
        .arg_str("now")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| ActionError::new("find_order needs `now`"))?;
    ctx.set("eta", now + 25 * 60_000);
    Ok(ActionOutcome::Continue)
}

/// The handlers the example flows need.
pub fn registry() -> Registry {
    Registry::new()
        .action("lookup_order", lookup_order)
        .action("find_order", find_order)
}

#[allow(dead_code)]
fn main() -> std::process::ExitCode {
    flowbot::main(registry())
}
