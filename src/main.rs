//! The `flowbot` binary: the library's CLI with no custom handlers.
//! Bots with Rust handlers call `flowbot::cli::main` from their own binary.

fn main() -> std::process::ExitCode {
    flowbot::cli::main(flowbot::Registry::default())
}
