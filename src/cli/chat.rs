//! `flowbot chat FLOW`: a terminal conversation with a flow.
//!
//! Options are shown numbered; type a number to tap one, or type freely.
//! Commands: `/join` and `/leave` (an agent), `/wait 31m`, `/state`, `/vars`,
//! `/button ID`, `/list ID`, `/quit`.

use std::io::{BufRead, Write};
use std::path::Path;

use crate::handler::Registry;
use crate::message::{Channel, Outgoing};
use crate::testing::TestConversation;

enum Pick {
    Button(String),
    Row(String),
}

fn show(messages: &[Outgoing], effects: &[crate::message::Effect], options: &mut Vec<Pick>) {
    for m in messages {
        if !m.text.is_empty() {
            println!("bot> {}", m.text.replace('\n', "\n     "));
        }
        if !m.quick_replies.is_empty() {
            options.clear();
            for q in &m.quick_replies {
                options.push(Pick::Button(q.id.clone()));
                println!("     [{}] {}", options.len(), q.title);
            }
        }
        for b in &m.buttons {
            println!("     ({}: {})", b.title, b.value);
        }
        if let Some(l) = &m.list {
            options.clear();
            if let Some(h) = &l.header {
                println!("bot> {h}");
            }
            println!("bot> {}", l.body);
            println!("     <{}>", l.button);
            for s in &l.sections {
                if let Some(t) = &s.title {
                    println!("     {t}");
                }
                for r in &s.rows {
                    options.push(Pick::Row(r.id.clone()));
                    match &r.description {
                        Some(d) => println!("     [{}] {} - {d}", options.len(), r.title),
                        None => println!("     [{}] {}", options.len(), r.title),
                    }
                }
            }
            if let Some(f) = &l.footer {
                println!("     {f}");
            }
        }
        if let Some(md) = &m.media {
            println!(
                "bot> [{}] {}{}",
                md.kind.as_str(),
                md.url,
                md.caption
                    .as_deref()
                    .map(|c| format!(" {c}"))
                    .unwrap_or_default()
            );
        }
    }
    for e in effects {
        println!(
            "     -- {} --",
            match e {
                crate::message::Effect::Handoff => "handed off to a person",
                crate::message::Effect::End => "conversation ended",
            }
        );
    }
}

pub(super) async fn run(
    path: &Path,
    channel: &str,
    language: Option<String>,
    at: Option<&str>,
    registry: Registry,
) -> u8 {
    let fixed = match at.map(|t| (t, crate::time::parse_time(t))) {
        None => None,
        Some((_, Some(t))) => Some(t),
        Some((t, None)) => {
            eprintln!("error: --at: `{t}` is not a time like 2026-12-24T10:00:00Z");
            return 2;
        }
    };
    let channel: Channel = match channel.parse() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let bot = match super::load_bot(path, registry) {
        Ok(b) => b,
        Err(code) => return code,
    };
    println!(
        "Chatting with `{}` on {channel}. Type /quit to leave, a number to pick an option.",
        bot.flow().name
    );
    // The real clock, unless `--at` fixes it; `/wait` moves either.
    let start = fixed.unwrap_or_else(crate::time::now);
    let mut conv = TestConversation::new(bot).channel(channel).at(start);
    if let Some(l) = language {
        conv = conv.language(l);
    }
    let shown = crate::time::format(start);
    match fixed {
        Some(_) => println!("Clock: fixed at {shown} (--at); /wait 31m moves it."),
        None => println!("Clock: real ({shown}); /wait 31m moves it ahead, --at TIME fixes it."),
    }
    let mut ticked = std::time::Instant::now();
    let mut options: Vec<Pick> = Vec::new();
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        print!("you> ");
        let _ = std::io::stdout().flush();
        let Some(Ok(line)) = lines.next() else { break };
        let line = line.trim().to_owned();
        if line.is_empty() {
            continue;
        }
        let before = conv.transcript().0.len();
        // On the real clock, the time that passed at the prompt passes in
        // the conversation too (a nudge due meanwhile fires).
        if fixed.is_none() {
            conv.wait(ticked.elapsed()).await;
            ticked = std::time::Instant::now();
        }
        let (cmd, arg) = line
            .split_once(' ')
            .map_or((line.as_str(), ""), |(c, a)| (c, a.trim()));
        match cmd {
            "/quit" | "/exit" => break,
            "/join" => {
                conv.agent_joins().await;
                println!("     -- an agent joined: the bot is silent --");
            }
            "/leave" => {
                conv.agent_leaves().await;
                println!("     -- the agent left: the next message starts over --");
            }
            "/state" => println!("     state: {}", conv.state().unwrap_or("(no session)")),
            "/vars" => match conv.session() {
                Some(s) => {
                    for (k, v) in &s.vars {
                        println!("     {k} = {v}");
                    }
                }
                None => println!("     (no session)"),
            },
            "/wait" => match humantime::parse_duration(arg) {
                Ok(d) => {
                    conv.wait(d).await;
                }
                Err(e) => println!("     /wait: {e} (like /wait 31m)"),
            },
            "/button" => {
                conv.tap(arg).await;
            }
            "/list" => {
                conv.pick(arg).await;
            }
            _ if cmd.starts_with('/') => println!(
                "     commands: /join /leave /wait 31m /state /vars /button ID /list ID /quit"
            ),
            _ => match line
                .parse::<usize>()
                .ok()
                .and_then(|n| n.checked_sub(1))
                .and_then(|i| options.get(i))
            {
                Some(Pick::Button(id)) => {
                    let id = id.clone();
                    conv.tap(&id).await;
                }
                Some(Pick::Row(id)) => {
                    let id = id.clone();
                    conv.pick(&id).await;
                }
                None => {
                    conv.send(&line).await;
                }
            },
        }
        for ex in &conv.transcript().0[before..] {
            if let Some(i) = &ex.intent {
                let by =
                    i.by.as_deref()
                        .map(|b| format!(" · {b}"))
                        .unwrap_or_default();
                match &i.intent {
                    Some(name) => println!("     (intent: {name} {:.2}{by})", i.confidence),
                    None => println!("     (not sure: best {:.2}{by})", i.confidence),
                }
            }
            show(&ex.bot, &ex.effects, &mut options);
            for e in &ex.errors {
                println!("     !! {e}");
            }
        }
    }
    0
}
