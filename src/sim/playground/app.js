// The playground: plays the customer (and an agent) against the simulated
// Qpien, and shows what the bot thinks (its debug endpoints, when given).
"use strict";

const $ = (id) => document.getElementById(id);
let botUrl = null;
let current = null;      // conversation id
let lastRendered = "";   // to redraw only on change
let lastNode = null;
let flowText = null;
let lang = "en";         // the conversation's language: dates, and the page's `lang`
let zoom = null;         // the graph's scale (null: fit the panel's width)
let around = false;      // the graph shows only the current state's neighbours
let aroundNode = null;   // the state `flowText` was drawn around

async function api(path, body) {
  const init = body === undefined ? {} : {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  };
  const r = await fetch(path, init);
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
  return r.json();
}

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

function send(input) {
  if (!current) return;
  return api(`/sim/conversations/${current}/messages`, input).then(refresh);
}

function openList(list) {
  $("sheet").setAttribute("lang", lang);
  $("sheet-title").textContent = list.buttonText || "Options";
  const body = $("sheet-body");
  body.replaceChildren();
  for (const section of list.sections || []) {
    // Upper-cased as WhatsApp shows it, by the conversation's language's rules
    // (Turkish: i to İ), not by CSS.
    if (section.title) body.append(el("div", { class: "section-title" }, upper(section.title)));
    for (const row of section.rows || []) {
      body.append(el("button", {
        class: "row-option",
        "data-testid": `list-row-${row.id}`,
        onclick: () => { closeSheet(); send({ text: row.title, list: row.id }); },
      }, row.title, row.description ? el("small", {}, row.description) : null));
    }
  }
  $("sheet").classList.remove("hidden");
}

function upper(text) {
  try { return text.toLocaleUpperCase(lang); } catch (e) { return text.toUpperCase(); }
}

function closeSheet() { $("sheet").classList.add("hidden"); }

function renderMessage(m) {
  const sender = m.sender || {};
  const kind = m.senderType === "bot" ? "bot"
    : (sender.type && sender.type !== "ROBOT") ? "agent" : "customer";
  const row = el("div", { class: `row ${kind}`, "data-testid": `message-${kind}`, lang });
  if (kind === "agent") row.append(el("div", { class: "who" }, sender.name || "agent"));
  const bubble = el("div", { class: "bubble" });
  const list = m.listMessage && m.listMessage.sections ? m.listMessage : null;
  if (list && list.header) bubble.append(el("div", { class: "header" }, list.header));
  bubble.append(el("div", { class: "text" }, m.content || (list ? list.body : "") || ""));
  if (list && list.footer) bubble.append(el("div", { class: "footer" }, list.footer));
  for (const media of m.media || []) {
    bubble.append(el("div", {}, el("a", { href: media.url, target: "_blank" }, `📎 ${media.type || "file"}`)));
  }
  row.append(bubble);
  if (kind === "bot" && Array.isArray(m.flowBotQuickReply) && m.flowBotQuickReply.length) {
    const box = el("div", { class: "quick-replies" });
    for (const b of m.flowBotQuickReply) {
      box.append(el("button", {
        "data-testid": `quick-reply-${b.id}`,
        onclick: () => send({ text: b.title, button: b.id }),
      }, b.title));
    }
    row.append(box);
  }
  if (kind === "bot" && list) {
    row.append(el("button", {
      class: "list-open",
      "data-testid": "list-open",
      onclick: () => openList(list),
    }, `☰ ${list.buttonText || "Options"}`));
  }
  const buttons = m.informativeButtons && m.informativeButtons.buttons;
  if (kind === "bot" && buttons && buttons.length) {
    const box = el("div", { class: "info-buttons" });
    for (const b of buttons) {
      const href = b.type === "PHONE" ? `tel:${b.value}` : b.value;
      box.append(el("a", { href, target: "_blank", "data-testid": "info-button" },
        `${b.type === "PHONE" ? "📞" : "🔗"} ${b.title}`));
    }
    row.append(box);
  }
  return row;
}

async function renderGraph(node, state) {
  if (!botUrl || !window.mermaid) return;
  const want = around && state ? state : null;
  if (flowText === null || want !== aroundNode) {
    const path = want ? `/debug/flow/around/${encodeURIComponent(want)}` : "/debug/flow";
    try {
      const flow = await api(`${botUrl}${path}`);
      flowText = flow.mermaid;
      aroundNode = want;
      lastNode = undefined;
      $("flow-name").textContent = flow.name;
    } catch (e) { return; }
  }
  if (node === lastNode && $("graph").childElementCount) return;
  lastNode = node;
  let text = flowText;
  if (node) text += `\n  style ${node} fill:#25d366,stroke:#075e54,stroke-width:3px,color:#fff`;
  try {
    const { svg } = await window.mermaid.render(`g${Date.now()}`, text);
    $("graph").innerHTML = svg;
    $("graph").dataset.current = node || "";
    applyZoom();
    focusNode(node);
  } catch (e) {
    $("graph").textContent = `graph: ${e.message || e}`;
  }
}

// The graph's natural width (its viewBox).
function naturalWidth(svg) {
  const box = svg.viewBox && svg.viewBox.baseVal;
  return box && box.width ? box.width : svg.getBoundingClientRect().width;
}

// The scale at which the graph fills the panel's width (never above 1).
function fitScale(svg) {
  return Math.min(1, Math.max(0.2, ($("graph").clientWidth - 4) / naturalWidth(svg)));
}

// The graph at `zoom` times its natural size, scrolled by dragging.
function applyZoom() {
  const svg = $("graph").querySelector("svg");
  if (!svg) return;
  const scale = zoom === null ? fitScale(svg) : zoom;
  svg.style.maxWidth = "none";
  svg.style.width = `${Math.round(naturalWidth(svg) * scale)}px`;
  svg.style.height = "auto";
  svg.removeAttribute("height");
  $("graph").dataset.zoom = scale.toFixed(2);
}

// Scrolls the current state's node to the middle of the panel.
function focusNode(node) {
  const g = $("graph");
  const n = node && g.querySelector(`g.node[id*="-${node}-"]`);
  if (!n) return;
  const r = n.getBoundingClientRect(), box = g.getBoundingClientRect();
  g.scrollLeft += r.left + r.width / 2 - (box.left + g.clientWidth / 2);
  g.scrollTop += r.top + r.height / 2 - (box.top + g.clientHeight / 2);
}

function zoomBy(f) {
  const svg = $("graph").querySelector("svg");
  if (!svg) return;
  const scale = zoom === null ? fitScale(svg) : zoom;
  zoom = Math.min(4, Math.max(0.2, scale * f));
  applyZoom();
  focusNode($("graph").dataset.current);
}

function fitGraph() {
  zoom = null;
  applyZoom();
}

(function panning() {
  const g = $("graph");
  let from = null;
  g.addEventListener("pointerdown", (e) => {
    from = { x: e.clientX, y: e.clientY, left: g.scrollLeft, top: g.scrollTop };
    g.classList.add("dragging");
  });
  g.addEventListener("pointermove", (e) => {
    if (!from) return;
    g.scrollLeft = from.left - (e.clientX - from.x);
    g.scrollTop = from.top - (e.clientY - from.y);
  });
  for (const end of ["pointerup", "pointerleave", "pointercancel"]) {
    g.addEventListener(end, () => { from = null; g.classList.remove("dragging"); });
  }
  g.addEventListener("wheel", (e) => {
    if (!e.ctrlKey) return;
    e.preventDefault();
    zoomBy(e.deltaY < 0 ? 1.2 : 1 / 1.2);
  }, { passive: false });
})();

// A time in the conversation's language.
function when(ms) {
  try { return new Date(ms).toLocaleString(lang); } catch (e) { return new Date(ms).toLocaleString(); }
}

// WhatsApp's 24-hour window, as the bot sees it (its clock: `now`).
function windowText(s) {
  if (!s.state || s.window_closes == null) return "–";
  if (s.window_closes === 0) return "closed: the customer has not written; templates only";
  const left = s.window_closes - s.now;
  const at = when(s.window_closes);
  if (left <= 0) return `closed since ${at}: templates only`;
  const h = Math.floor(left / 3600000), m = Math.floor((left % 3600000) / 60000);
  return `open until ${at} (${h}h ${m}m left)`;
}

// How the last message was understood: its intent and confidence.
function intentText(i) {
  if (!i) return "–";
  const by = i.by ? ` · ${i.by}` : "";
  const sure = `${Math.round(i.confidence * 100)}%`;
  return i.intent ? `${i.intent} (${sure}${by})` : `not sure (best ${sure}${by})`;
}

// The bot's clock, and whether the playground may move it.
async function refreshClock() {
  if (!botUrl) return;
  let c;
  try { c = await api(`${botUrl}/debug/clock`); } catch (e) { return; }
  $("bot-time").textContent = when(c.now);
  for (const x of ["clock-hour", "clock-day"]) $(x).disabled = !c.movable;
}

// A plain-text POST: the bot is on another origin, and a JSON content type
// would need a CORS preflight, which the bot does not answer.
async function moveClock(advance) {
  const r = await fetch(`${botUrl}/debug/clock`, { method: "POST", body: JSON.stringify({ advance }) });
  if (!r.ok) throw new Error(`clock: HTTP ${r.status}`);
  await refresh();
}

async function refreshBot() {
  await refreshClock();
  if (!botUrl || !current) return renderGraph(null, null);
  let s;
  try { s = await api(`${botUrl}/debug/conversations/${current}`); } catch (e) { return; }
  $("bot-state").textContent = s.state || "– (no session)";
  $("bot-handoff").textContent = s.state ? (s.handoff ? "yes: a person has it" : "no") : "–";
  $("bot-language").textContent = s.language || "–";
  $("bot-intent").textContent = intentText(s.intent);
  $("bot-window").textContent = windowText(s);
  const tbody = $("vars").querySelector("tbody");
  tbody.replaceChildren(...Object.entries(s.vars || {}).map(([k, v]) =>
    el("tr", {}, el("td", {}, k), el("td", {}, typeof v === "string" ? v : JSON.stringify(v)))));
  await renderGraph(s.node || null, s.state || null);
}

async function refresh() {
  const list = await api("/sim/conversations");
  const ul = $("conversation-list");
  ul.replaceChildren(...list.map((c) => el("li", {
    class: c._id === current ? "active" : "",
    onclick: () => select(c._id),
  }, `${(c.contact && c.contact.name) || c._id} · ${((c.channels || [])[0] || {}).type || ""}`)));
  if (!current) return;
  const data = await api(`/sim/conversations/${current}`);
  const conv = data.conversation;
  setLanguage((data.contact && data.contact.language) || "en");
  const key = JSON.stringify([data.messages.length, conv.joinedCPerson, conv.status,
    data.messages.length ? data.messages[data.messages.length - 1]._id : null]);
  $("chat-title").textContent = (data.contact && data.contact.name) || conv._id;
  $("chat-subtitle").textContent =
    `${((conv.channels || [])[0] || {}).type || ""} · ${conv.status}${conv.joinedCPerson ? " · agent: " + conv.joinedCPerson : ""}`;
  if (key !== lastRendered) {
    lastRendered = key;
    const box = $("messages");
    box.replaceChildren(...data.messages.map(renderMessage));
    box.scrollTop = box.scrollHeight;
  }
  await refreshBot();
}

// The conversation's language for the page (`lang`: how the browser breaks,
// upper-cases and reads text) and its dates.
function setLanguage(l) {
  if (l === lang) return;
  lang = l;
  document.documentElement.lang = l;
  lastRendered = "";
}

function select(id) {
  current = id;
  lastRendered = "";
  for (const x of ["text", "agent-text"]) $(x).disabled = false;
  for (const x of ["send", "join", "leave"]) $(x).disabled = false;
  refresh();
}

$("new-conversation").addEventListener("submit", async (e) => {
  e.preventDefault();
  const r = await api("/sim/conversations", {
    channel: $("channel").value,
    language: $("language").value || null,
    name: $("name").value || "Customer",
  });
  select(r.id);
  $("text").focus();
});

$("composer").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("text").value.trim();
  if (!text) return;
  $("text").value = "";
  send({ text });
});

$("join").addEventListener("click", () => current && api(`/sim/conversations/${current}/agent`, { action: "join" }).then(refresh));
$("leave").addEventListener("click", () => current && api(`/sim/conversations/${current}/agent`, { action: "leave" }).then(refresh));
$("agent-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("agent-text").value.trim();
  if (!text || !current) return;
  $("agent-text").value = "";
  api(`/sim/conversations/${current}/agent`, { action: "say", text }).then(refresh);
});
$("sheet-close").addEventListener("click", closeSheet);
$("clock-hour").addEventListener("click", () => moveClock("1h"));
$("clock-day").addEventListener("click", () => moveClock("1day"));
$("graph-zoom-in").addEventListener("click", () => zoomBy(1.25));
$("graph-zoom-out").addEventListener("click", () => zoomBy(0.8));
$("graph-fit").addEventListener("click", fitGraph);
$("graph-around").addEventListener("change", (e) => { around = e.target.checked; refreshBot(); });
$("sheet").addEventListener("click", (e) => { if (e.target === $("sheet")) closeSheet(); });

(async function main() {
  if (window.mermaid) window.mermaid.initialize({ startOnLoad: false, securityLevel: "strict", flowchart: { htmlLabels: false } });
  try { botUrl = (await api("/sim/config")).botUrl; } catch (e) { botUrl = null; }
  if (!botUrl) $("graph").textContent = "No bot attached (run `flowbot demo` to see its state here).";
  await refresh();
  setInterval(() => refresh().catch(() => {}), 700);
})();
