//! The language server's transport: JSON-RPC messages framed by
//! `Content-Length` on stdin and stdout, read within bounds.
//!
//! `lsp_server`'s own stdio transport allocates whatever length a header
//! announces and stops at the first message it cannot read. Here a message
//! over [`MAX_MESSAGE`] is skipped unread (its bytes discarded, never held), a
//! header line over [`MAX_HEADER`] or a body that is not a JSON-RPC message
//! is answered with a JSON-RPC error (`id: null`, as the specification says
//! for a message whose id cannot be known) and the server goes on with the
//! next message. Only the end of stdin ends it.

use std::io::{BufRead, Read, Write};

use lsp_server::{Connection, Message};

/// The largest message read (an editor's whole file is one message).
pub(super) const MAX_MESSAGE: usize = 16 << 20;

/// The longest header line.
const MAX_HEADER: usize = 1024;

/// A connection over stdin and stdout, and the writer's thread (join it
/// after the connection is dropped, so that the last answers are out).
pub(super) fn stdio() -> (Connection, std::thread::JoinHandle<()>) {
    let (server, client) = Connection::memory();
    let sender = client.sender;
    std::thread::Builder::new()
        .name("flowbot-lsp-reader".into())
        .spawn(move || {
            let stdin = std::io::stdin();
            read_all(&mut stdin.lock(), |m| sender.send(m).is_ok());
        })
        .expect("a thread for the language server's input");
    let receiver = client.receiver;
    let writer = std::thread::Builder::new()
        .name("flowbot-lsp-writer".into())
        .spawn(move || {
            for message in receiver {
                let mut out = std::io::stdout().lock();
                if message.write(&mut out).is_err() || out.flush().is_err() {
                    return;
                }
            }
        })
        .expect("a thread for the language server's output");
    (server, writer)
}

/// Reads messages until the end of `input` (or until nobody listens).
fn read_all(input: &mut impl BufRead, mut send: impl FnMut(Message) -> bool) {
    loop {
        match read_one(input) {
            Frame::End => return,
            Frame::Message(m) => {
                if !send(m) {
                    return;
                }
            }
            Frame::Bad(code, why) => {
                let body = serde_json::json!({
                    "jsonrpc": "2.0",
                    "id": null,
                    "error": {"code": code, "message": why},
                })
                .to_string();
                let mut out = std::io::stdout().lock();
                let _ = write!(out, "Content-Length: {}\r\n\r\n{body}", body.len());
                let _ = out.flush();
            }
        }
    }
}

/// What one read found.
enum Frame {
    End,
    Message(Message),
    /// A JSON-RPC error code and why.
    Bad(i32, String),
}

/// JSON-RPC's codes.
const PARSE_ERROR: i32 = -32700;
const INVALID_REQUEST: i32 = -32600;

fn read_one(input: &mut impl BufRead) -> Frame {
    let mut length: Option<usize> = None;
    let mut too_long = false;
    let mut bad_header = None;
    loop {
        let mut line = Vec::new();
        match input
            .by_ref()
            .take(MAX_HEADER as u64 + 1)
            .read_until(b'\n', &mut line)
        {
            Ok(0) | Err(_) => return Frame::End,
            Ok(_) => {}
        }
        if line.len() > MAX_HEADER {
            // Skip the rest of this line, then say so.
            let mut rest = Vec::new();
            loop {
                rest.clear();
                match input
                    .by_ref()
                    .take(MAX_HEADER as u64)
                    .read_until(b'\n', &mut rest)
                {
                    Ok(0) | Err(_) => return Frame::End,
                    Ok(_) if rest.ends_with(b"\n") => break,
                    Ok(_) => {}
                }
            }
            bad_header = Some(format!("a header line longer than {MAX_HEADER} bytes"));
            continue;
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\r', '\n']);
        if text.is_empty() {
            break;
        }
        if let Some((name, value)) = text.split_once(':') {
            if name.trim().eq_ignore_ascii_case("content-length") {
                match value.trim().parse::<u64>() {
                    Ok(n) if n > MAX_MESSAGE as u64 => {
                        too_long = true;
                        length = Some(usize::try_from(n).unwrap_or(usize::MAX));
                        // Discarded below, a bounded buffer at a time.
                        if usize::try_from(n).is_err() {
                            return Frame::End;
                        }
                    }
                    Ok(n) => length = Some(n as usize),
                    Err(_) => {
                        bad_header =
                            Some(format!("a Content-Length that is not a number: {value:?}"))
                    }
                }
            }
        }
    }
    let Some(length) = length else {
        return Frame::Bad(
            INVALID_REQUEST,
            bad_header.unwrap_or_else(|| "a message without a Content-Length header".into()),
        );
    };
    if too_long {
        let skipped = std::io::copy(
            &mut input.by_ref().take(length as u64),
            &mut std::io::sink(),
        );
        if skipped.map_or(true, |n| n < length as u64) {
            return Frame::End;
        }
        return Frame::Bad(
            INVALID_REQUEST,
            format!(
                "a message of {length} bytes, over the {MAX_MESSAGE} this server reads; skipped"
            ),
        );
    }
    let mut body = vec![0; length];
    if input.read_exact(&mut body).is_err() {
        return Frame::End;
    }
    if let Some(why) = bad_header {
        return Frame::Bad(INVALID_REQUEST, why);
    }
    match serde_json::from_slice::<Message>(&body) {
        Ok(m) => Frame::Message(m),
        Err(e) => Frame::Bad(
            if serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_ok() {
                INVALID_REQUEST
            } else {
                PARSE_ERROR
            },
            format!("not a JSON-RPC message: {e}"),
        ),
    }
}
