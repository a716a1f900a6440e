//! `flowbot lsp` over stdio, driven by a JSON-RPC script as an editor would:
//! diagnostics with ranges, completion, go to definition across `include:`,
//! hover, a fix clearing the diagnostics, and a clean shutdown.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

struct Client {
    child: Child,
    stdin: ChildStdin,
    incoming: Receiver<Value>,
    next_id: u64,
}

impl Client {
    fn start() -> Client {
        let mut child = Command::new(env!("CARGO_BIN_EXE_flowbot"))
            .arg("lsp")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let (tx, incoming) = channel();
        std::thread::spawn(move || loop {
            // Content-Length framing, as LSP says.
            let mut length = None;
            loop {
                let mut header = String::new();
                if stdout.read_line(&mut header).unwrap_or(0) == 0 {
                    return;
                }
                let header = header.trim_end();
                if header.is_empty() {
                    break;
                }
                if let Some(n) = header.strip_prefix("Content-Length: ") {
                    length = n.parse::<usize>().ok();
                }
            }
            let mut body = vec![0; length.expect("a Content-Length header")];
            stdout.read_exact(&mut body).unwrap();
            if tx.send(serde_json::from_slice(&body).unwrap()).is_err() {
                return;
            }
        });
        Client {
            child,
            stdin,
            incoming,
            next_id: 1,
        }
    }

    fn send(&mut self, message: Value) {
        let body = message.to_string();
        write!(self.stdin, "Content-Length: {}\r\n\r\n{body}", body.len()).unwrap();
        self.stdin.flush().unwrap();
    }

    fn notify(&mut self, method: &str, params: Value) {
        self.send(json!({ "jsonrpc": "2.0", "method": method, "params": params }));
    }

    /// Sends a request and returns its result (notifications meanwhile are dropped).
    fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.send(json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params }));
        let answer = self.wait(|m| m["id"] == json!(id));
        assert!(answer.get("error").is_none(), "{method}: {answer}");
        answer["result"].clone()
    }

    /// The next message that `want` accepts.
    fn wait(&mut self, want: impl Fn(&Value) -> bool) -> Value {
        loop {
            let m = self
                .incoming
                .recv_timeout(Duration::from_secs(20))
                .expect("the server answers within 20 s");
            if want(&m) {
                return m;
            }
        }
    }

    /// The next diagnostics published for `uri`.
    fn diagnostics(&mut self, uri: &str) -> Vec<Value> {
        let m = self.wait(|m| {
            m["method"] == "textDocument/publishDiagnostics" && m["params"]["uri"] == uri
        });
        m["params"]["diagnostics"].as_array().unwrap().clone()
    }
}

const MAIN: &str = r#"version: 1
start: start
include: [more.yaml]
states:
  start:
    say:
      - text: "Hi!"
        quick_replies: [{ id: orders, title: Orders }]
    on:
      - { button: orders, goto: ask_ordr }
      - { button: help, goto: helpdesk }
"#;

const MORE: &str = r#"states:
  ask_order:
    ask: { text: "Your order number?", save: number }
    next: lookup
  lookup:
    call: { action: lookup_order, args: { number: "{{ number }}" } }
    next: helpdesk
  helpdesk:
    say: "A person will answer."
    handoff: true
"#;

fn labels(completion: &Value) -> Vec<String> {
    let items = completion
        .as_array()
        .or_else(|| completion["items"].as_array())
        .unwrap();
    items
        .iter()
        .map(|i| i["label"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn an_editor_session() {
    let dir = crate::runtime::temp_dir("lsp").canonicalize().unwrap();
    std::fs::write(dir.join("main.yaml"), MAIN).unwrap();
    std::fs::write(dir.join("more.yaml"), MORE).unwrap();
    let main_uri = format!("file://{}", dir.join("main.yaml").display());
    let more_uri = format!("file://{}", dir.join("more.yaml").display());

    let mut c = Client::start();
    let init = c.request(
        "initialize",
        json!({ "processId": null, "rootUri": null, "capabilities": {} }),
    );
    let caps = &init["capabilities"];
    assert_eq!(caps["definitionProvider"], json!(true), "{init}");
    assert_eq!(caps["hoverProvider"], json!(true), "{init}");
    assert!(caps["completionProvider"].is_object(), "{init}");
    c.notify("initialized", json!({}));

    // Open: the misspelt state is an error where it is written.
    c.notify(
        "textDocument/didOpen",
        json!({ "textDocument": { "uri": main_uri, "languageId": "yaml", "version": 1, "text": MAIN } }),
    );
    let diags = c.diagnostics(&main_uri);
    let unknown = diags
        .iter()
        .find(|d| {
            d["message"]
                .as_str()
                .unwrap()
                .contains("unknown state `ask_ordr`")
        })
        .unwrap_or_else(|| panic!("{diags:?}"));
    let line = MAIN.lines().nth(9).unwrap();
    let col = line.find("ask_ordr").unwrap() as u64;
    assert_eq!(
        unknown["range"]["start"],
        json!({ "line": 9, "character": col })
    );
    assert_eq!(
        unknown["range"]["end"],
        json!({ "line": 9, "character": col + 8 })
    );
    assert_eq!(unknown["severity"], json!(1));
    assert!(unknown["message"]
        .as_str()
        .unwrap()
        .contains("did you mean `ask_order`"));

    // Completion of states (from both files), actions, button ids.
    let at = |line: u32, character: usize| json!({ "textDocument": { "uri": main_uri }, "position": { "line": line, "character": character } });
    let goto_col = line.find("goto: ").unwrap() + "goto: ".len();
    let states = labels(&c.request("textDocument/completion", at(9, goto_col)));
    for s in ["start", "ask_order", "lookup", "helpdesk"] {
        assert!(states.contains(&s.to_owned()), "{states:?}");
    }
    let button_col = line.find("button: ").unwrap() + "button: ".len();
    let buttons = labels(&c.request("textDocument/completion", at(9, button_col)));
    assert_eq!(buttons, ["orders"]);

    // Go to definition: `helpdesk` is defined in the included file.
    let help_line = MAIN.lines().nth(10).unwrap();
    let help_col = help_line.find("helpdesk").unwrap() + 3;
    let def = c.request("textDocument/definition", at(10, help_col));
    assert_eq!(def["uri"], json!(more_uri), "{def}");
    assert_eq!(
        def["range"]["start"],
        json!({ "line": 7, "character": 2 }),
        "{def}"
    );

    // Hover on it: what the state says and does.
    let hover = c.request("textDocument/hover", at(10, help_col));
    let text = hover["contents"]["value"].as_str().unwrap();
    assert!(text.contains("state `helpdesk`"), "{text}");
    assert!(text.contains("A person will answer."), "{text}");
    assert!(text.contains("a person takes over"), "{text}");

    // The included file, opened: completion of the binary's actions there.
    c.notify(
        "textDocument/didOpen",
        json!({ "textDocument": { "uri": more_uri, "languageId": "yaml", "version": 1, "text": MORE } }),
    );
    let action_line = MORE.lines().nth(5).unwrap();
    let action_col = action_line.find("action: ").unwrap() + "action: ".len();
    let actions = labels(&c.request(
        "textDocument/completion",
        json!({ "textDocument": { "uri": more_uri }, "position": { "line": 5, "character": action_col } }),
    ));
    assert!(actions.contains(&"lookup_order".to_owned()), "{actions:?}");

    // Fixed: the diagnostics go.
    let fixed = MAIN.replace("ask_ordr", "ask_order");
    c.notify(
        "textDocument/didChange",
        json!({ "textDocument": { "uri": main_uri, "version": 2 }, "contentChanges": [{ "text": fixed }] }),
    );
    let diags = c.diagnostics(&main_uri);
    assert!(diags.is_empty(), "{diags:?}");

    // A broken edit in the included file shows in that file.
    let broken = MORE.replace("next: helpdesk", "next: nowhere");
    c.notify(
        "textDocument/didChange",
        json!({ "textDocument": { "uri": more_uri, "version": 2 }, "contentChanges": [{ "text": broken }] }),
    );
    // (Diagnostics for it published after the fix above come first.)
    let mut diags = c.diagnostics(&more_uri);
    while diags.is_empty() {
        diags = c.diagnostics(&more_uri);
    }
    assert!(
        diags.iter().any(|d| d["message"]
            .as_str()
            .unwrap()
            .contains("unknown state `nowhere`")
            && d["range"]["start"]["line"] == json!(6)),
        "{diags:?}"
    );

    c.request("shutdown", Value::Null);
    c.notify("exit", Value::Null);
    let status = c.child.wait().unwrap();
    assert!(status.success(), "{status}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Hostile input to the server: a message over the size it reads (skipped
/// unread), a body that is not JSON, a frame without a length, and a saved
/// "file" that is a device: each answered with a JSON-RPC error or ignored,
/// and the server goes on answering.
#[test]
fn bad_messages_are_answered_and_the_server_goes_on() {
    let mut c = Client::start();
    c.request(
        "initialize",
        json!({ "processId": null, "rootUri": null, "capabilities": {} }),
    );
    c.notify("initialized", json!({}));
    // 20 MiB announced and sent: over the 16 MiB read, skipped.
    let big = vec![b' '; 20 << 20];
    write!(c.stdin, "Content-Length: {}\r\n\r\n", big.len()).unwrap();
    c.stdin.write_all(&big).unwrap();
    let error = c.wait(|m| m.get("error").is_some());
    assert_eq!(error["id"], Value::Null, "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("skipped"),
        "{error}"
    );
    // Not JSON.
    write!(c.stdin, "Content-Length: 9\r\n\r\nnot json!").unwrap();
    let error = c.wait(|m| m.get("error").is_some());
    assert_eq!(error["error"]["code"], -32700, "{error}");
    // No length: the frame is refused, the next one read.
    write!(c.stdin, "X-Other: 1\r\n\r\n").unwrap();
    let error = c.wait(|m| m.get("error").is_some());
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Content-Length"),
        "{error}"
    );
    // A save of a device and of a FIFO: nothing is read from them.
    let dir = crate::runtime::temp_dir("lsp-fifo");
    let fifo = dir.join("flow.yaml");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    for uri in [
        "file:///dev/zero".to_owned(),
        format!("file://{}", fifo.display()),
    ] {
        c.notify(
            "textDocument/didSave",
            json!({ "textDocument": { "uri": uri } }),
        );
    }
    // Still answering.
    let hover = c.request(
        "textDocument/hover",
        json!({ "textDocument": { "uri": "file:///nowhere.yaml" }, "position": { "line": 0, "character": 0 } }),
    );
    assert!(hover.is_null() || hover.is_object(), "{hover}");
}

/// A subflow's states are its own: completion after `goto:` offers the
/// main flow's states in the main file and the subflow's in the subflow's
/// file, never the other's; hover names each rule's target once.
#[test]
fn completion_stays_within_its_own_flow_and_hover_says_each_target_once() {
    let dir = crate::runtime::temp_dir("lsp-sub").canonicalize().unwrap();
    let main = "states:\n  start:\n    say: Hi\n    on:\n      - { text: a, goto: phone_in }\n      - { text: b, goto: phone_in }\n      - { text: c, goto: done }\n  phone_in:\n    call: { flow: phone.yaml }\n    next: done\n  done: { end: true }\n";
    let sub = "states:\n  start:\n    ask: { text: Your phone?, save: phone }\n    next: thanks\n  thanks:\n    say: Thanks\n    return: true\n";
    std::fs::write(dir.join("main.yaml"), main).unwrap();
    std::fs::write(dir.join("phone.yaml"), sub).unwrap();
    let main_uri = format!("file://{}", dir.join("main.yaml").display());
    let sub_uri = format!("file://{}", dir.join("phone.yaml").display());
    let mut c = Client::start();
    c.request(
        "initialize",
        json!({ "processId": null, "rootUri": null, "capabilities": {} }),
    );
    c.notify("initialized", json!({}));
    c.notify(
        "textDocument/didOpen",
        json!({ "textDocument": { "uri": main_uri, "languageId": "yaml", "version": 1, "text": main } }),
    );
    let diags = c.diagnostics(&main_uri);
    assert!(diags.is_empty(), "{diags:?}");
    let complete = |c: &mut Client, uri: &str, text: &str, line: usize, key: &str| {
        let l = text.lines().nth(line).unwrap();
        let col = l.find(key).unwrap() + key.len();
        labels(&c.request(
            "textDocument/completion",
            json!({ "textDocument": { "uri": uri }, "position": { "line": line, "character": col } }),
        ))
    };
    let states = complete(&mut c, &main_uri, main, 4, "goto: ");
    assert_eq!(states, ["done", "phone_in", "start"], "{states:?}");
    c.notify(
        "textDocument/didOpen",
        json!({ "textDocument": { "uri": sub_uri, "languageId": "yaml", "version": 1, "text": sub } }),
    );
    let states = complete(&mut c, &sub_uri, sub, 3, "next: ");
    assert_eq!(states, ["start", "thanks"], "{states:?}");
    let hover = c.request(
        "textDocument/hover",
        json!({ "textDocument": { "uri": main_uri }, "position": { "line": 1, "character": 4 } }),
    );
    let text = hover["contents"]["value"].as_str().unwrap();
    assert!(text.contains("rules go to `phone_in`, `done`"), "{text}");
    c.request("shutdown", Value::Null);
    c.notify("exit", Value::Null);
    assert!(c.child.wait().unwrap().success());
}

/// docs/editor.md's snippet for Neovim 0.7 to 0.9, as written there, starts
/// `flowbot lsp` for a project's flow in a headless Neovim, whose
/// diagnostics then show the flow's problem. Needs `nvim` (`.ci/run`
/// installs Debian's, 0.7.2).
#[test]
#[ignore = "needs nvim; .ci/run runs it"]
fn neovim_starts_flowbot_lsp_with_the_documented_snippet() {
    let docs =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/editor.md")).unwrap();
    let from = docs.find("On **Neovim 0.7 to 0.9**").unwrap();
    let start = docs[from..].find("```lua\n").unwrap() + from + 7;
    let end = docs[start..].find("```").unwrap() + start;
    let dir = crate::runtime::temp_dir("nvim").canonicalize().unwrap();
    let project = dir.join("shop");
    std::fs::create_dir_all(project.join("target/debug")).unwrap();
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_flowbot"),
        project.join("target/debug/shop"),
    )
    .unwrap();
    std::fs::write(project.join("flowbot.toml"), "flow = \"flow.yaml\"\n").unwrap();
    std::fs::write(
        project.join("flow.yaml"),
        "states:\n  start: { say: Hi, next: ask_ordr }\n  ask_order: { end: true }\n",
    )
    .unwrap();
    std::fs::write(dir.join("init.lua"), &docs[start..end]).unwrap();
    let probe = "lua vim.defer_fn(function() local n = 0; \
        for _ in pairs(vim.lsp.get_active_clients()) do n = n + 1 end; \
        local out = 'clients ' .. n .. '\\n'; \
        for _, d in ipairs(vim.diagnostic.get(0)) do out = out .. d.message .. '\\n' end; \
        io.stdout:write(out); vim.cmd('qa!') end, 4000)";
    let out = Command::new("nvim")
        .current_dir(&project)
        .args(["--headless", "-u"])
        .arg(dir.join("init.lua"))
        .args(["+".to_owned() + probe, "flow.yaml".to_owned()])
        .output()
        .expect("nvim");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("clients 1"), "{text}");
    assert!(text.contains("unknown state `ask_ordr`"), "{text}");
}
