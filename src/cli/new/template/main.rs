//! The bot's binary: every `flowbot` subcommand (`demo`, `chat`, `test`,
//! `validate`, `run`, ...) with this bot's handlers registered.

fn main() -> std::process::ExitCode {
    flowbot::main(__CRATE__::registry())
}
