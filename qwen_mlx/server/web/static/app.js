// The qwen-mlx web chat. Hand-written, no build step, no libraries: the server renders
// Markdown to safe HTML (model text escaped), this script puts it in place and talks to
// /web/api with the page's CSRF token.
"use strict";

const csrf = document.querySelector('meta[name="csrf-token"]').content;
const $ = (id) => document.getElementById(id);
const PARAMS = ["temperature", "top_p", "top_k", "max_tokens", "repetition_penalty"];
const state = { info: null, chat: null, streaming: false, pending: null, busyTimer: null };

async function api(path, options = {}) {
  const headers = { "X-CSRF-Token": csrf, ...(options.headers || {}) };
  if (options.json !== undefined) {
    headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(options.json);
  }
  const response = await fetch("/web/api" + path, { ...options, headers, credentials: "same-origin" });
  if (!response.ok) throw new Error(await errorText(response));
  return response;
}

async function errorText(response) {
  try {
    const body = await response.json();
    return (body.error && body.error.message) || response.statusText;
  } catch (e) {
    return response.status + " " + response.statusText;
  }
}

// The notice box: one line per notice (a list is shown as separate lines, never run
// together); `extra` is an element put after them (a button, say).
function notice(text, kind = "info", extra = null) {
  const box = $("notice");
  const lines = (Array.isArray(text) ? text : [text]).filter(Boolean);
  box.replaceChildren(...lines.map((line) => {
    const p = document.createElement("p");
    p.textContent = line;
    return p;
  }));
  if (extra) box.append(extra);
  box.dataset.kind = kind;
  box.hidden = !lines.length;
}

function addNotice(text, kind = "warning") {
  const box = $("notice");
  if (box.hidden) return notice(text, kind);
  const p = document.createElement("p");
  p.textContent = text;
  box.append(p);
  box.dataset.kind = kind;
}

// -- chats ------------------------------------------------------------------------------

async function loadChats() {
  const { chats } = await (await api("/chats")).json();
  const list = $("chats");
  list.replaceChildren();
  for (const chat of chats) {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "chat" + (state.chat && state.chat.id === chat.id ? " current" : "");
    button.dataset.id = chat.id;
    button.textContent = chat.title;
    button.title = chat.updated_at;
    button.addEventListener("click", () => openChat(chat.id));
    item.append(button);
    list.append(item);
  }
}

async function openChat(id) {
  if (state.streaming) return notice("A reply is streaming: stop it first.", "warning");
  try {
    const view = await (await api("/chats/" + encodeURIComponent(id))).json();
    showChat(view);
  } catch (e) {
    notice(e.message, "error");
    history.replaceState(null, "", "/");
  }
  await loadChats();
}

function showChat(view) {
  if (!state.chat || !view || state.chat.id !== view.id) $("stats").textContent = ""; // another chat's
  state.chat = view;
  history.replaceState(null, "", view ? "/?chat=" + encodeURIComponent(view.id) : "/");
  $("title").textContent = view ? view.title : "New chat";
  renderMessages(view ? view.messages : []);
  if (view && view.context) showContext(view.context);
  else if (!view) showContext({ used: 0, limit: 0 });
  fillSettings(view ? view.settings : state.pending || defaults());
  clearTimeout(state.busyTimer);
  if (view && view.busy) {
    showBusy(view);
    state.busyTimer = setTimeout(() => openChat(view.id), 2000);
  } else if (view && view.notices.length) {
    notice(view.notices, "warning");
  } else {
    notice("");
  }
  $("send").disabled = Boolean(view && view.busy);
}

// A chat held by work elsewhere (another tab, or one closed since: until the server has
// stopped it): what, since when, and a button to stop it from here.
function showBusy(view) {
  const since = new Date(view.busy.since * 1000);
  const minutes = Math.floor((Date.now() - since) / 60000);
  const ago = minutes < 1 ? "less than a minute ago" : `${minutes} min ago`;
  const stopIt = document.createElement("button");
  stopIt.type = "button";
  stopIt.id = "stop-elsewhere";
  stopIt.textContent = "Stop it";
  stopIt.addEventListener("click", async () => {
    try {
      await api("/chats/" + encodeURIComponent(view.id) + "/stop", { method: "POST" });
    } catch (e) {
      notice(e.message, "error");
    }
  });
  notice(
    `This chat is busy in another tab or window: ${view.busy.what}, since ` +
    `${since.toLocaleTimeString()} (${ago}). It opens here when that is done.`,
    "warning",
    stopIt,
  );
}

function newChat() {
  if (state.streaming) return;
  state.pending = null;
  showChat(null);
  loadChats();
  $("prompt").focus();
}

async function ensureChat(firstText) {
  if (state.chat) return state.chat;
  const view = await (await api("/chats", { method: "POST", json: { title: firstText, settings: state.pending || {} } })).json();
  state.pending = null;
  showChat(view);
  await loadChats();
  return view;
}

// -- messages -----------------------------------------------------------------------------

function bubble(message) {
  const div = document.createElement("div");
  div.className = "message " + message.role + (message.stopped ? " stopped" : "");
  div.dataset.index = message.index;
  const role = document.createElement("div");
  role.className = "role";
  role.textContent = message.role === "assistant" ? "Assistant" : message.role === "user" ? "You" : message.role;
  const body = document.createElement("div");
  body.className = message.role === "assistant" ? "body md" : "body plain";
  body.innerHTML = message.html; // made by the server: escaped, never the model's own markup
  div.append(role, body);
  if (message.role === "user") {
    const edit = document.createElement("button");
    edit.type = "button";
    edit.className = "edit";
    edit.textContent = "Edit";
    edit.addEventListener("click", () => startEdit(div, message));
    role.append(edit);
  }
  if (message.stopped) {
    const mark = document.createElement("div");
    mark.className = "mark";
    mark.textContent = "(stopped)";
    div.append(mark);
  }
  return div;
}

function renderMessages(messages) {
  const box = $("messages");
  box.replaceChildren(...messages.map(bubble));
  box.scrollTop = box.scrollHeight;
}

function startEdit(div, message) {
  if (state.streaming) return;
  const body = div.querySelector(".body");
  const area = document.createElement("textarea");
  area.className = "edit-area";
  area.value = body.textContent;
  const send = document.createElement("button");
  send.type = "button";
  send.textContent = "Send";
  send.className = "edit-send";
  const cancel = document.createElement("button");
  cancel.type = "button";
  cancel.textContent = "Cancel";
  const row = document.createElement("div");
  row.className = "edit-row";
  row.append(send, cancel);
  body.replaceChildren(area, row);
  area.focus();
  cancel.addEventListener("click", () => renderMessages(state.chat.messages));
  send.addEventListener("click", () => {
    const text = area.value;
    if (!text.trim()) return;
    body.textContent = text;
    body.className = "body plain";
    let next = div.nextSibling;
    while (next) { const after = next.nextSibling; next.remove(); next = after; }
    stream("/edit", { index: message.index, text });
  });
}

// -- replies ------------------------------------------------------------------------------

async function send(text) {
  if (state.streaming || !text.trim()) return;
  let chat;
  try {
    chat = await ensureChat(text);
  } catch (e) {
    return notice(e.message, "error");
  }
  $("prompt").value = "";
  $("messages").append(bubble({ index: -1, role: "user", html: escapeHtml(text), stopped: false }));
  const ok = await stream("/send", { text }, chat);
  if (!ok) $("prompt").value = text; // not sent: back in the input
}

async function regenerate() {
  if (state.streaming || !state.chat) return;
  const last = $("messages").lastElementChild;
  if (last && last.classList.contains("assistant")) last.remove();
  await stream("/regenerate", {});
}

function escapeHtml(text) {
  const div = document.createElement("div");
  div.textContent = text;
  return div.innerHTML;
}

function setStreaming(on) {
  state.streaming = on;
  $("stop").hidden = !on;
  $("send").hidden = on;
  $("regenerate").disabled = on;
  document.body.classList.toggle("streaming", on);
}

// POST `path` and read its server-sent events: `progress` (the prompt being read),
// `notice` (what the context policy did), `reply` (HTML of the blocks completed since the
// last one, and of the open block), then `done` or `error`. True if it came.
async function stream(path, body, chat = state.chat) {
  setStreaming(true);
  notice("");
  showProgress(null, "Waiting for the model…");
  const reply = bubble({ index: -1, role: "assistant", html: "", stopped: false });
  reply.classList.add("live");
  $("messages").append(reply);
  const stable = document.createElement("div"); // finished blocks: appended to, never redone
  const tail = document.createElement("div"); // the block still being written: replaced
  reply.querySelector(".body").append(stable, tail);
  let ok = false;
  try {
    const response = await api("/chats/" + encodeURIComponent(chat.id) + path, { method: "POST", json: body });
    await readEvents(response, {
      progress: (data) => showProgress(data, "Reading the prompt"),
      notice: (data) => addNotice(data.text),
      reply: (data) => {
        hideProgress();
        // server-made HTML, see bubble()
        if (data.append) stable.insertAdjacentHTML("beforeend", data.append);
        tail.innerHTML = data.tail;
        const box = $("messages");
        box.scrollTop = box.scrollHeight;
      },
      done: (data) => { ok = true; finish(data); },
      error: (data) => notice(data.message, "error"),
    });
  } catch (e) {
    notice(e.message, "error");
  } finally {
    hideProgress();
    setStreaming(false);
    if (!ok) await openChat(chat.id);
    else await loadChats();
  }
  return ok;
}

// Read a response's server-sent events, calling `handlers[name](data)` for each.
async function readEvents(response, handlers) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = parseEvent(buffer.slice(0, cut));
      buffer = buffer.slice(cut + 2);
      if (handlers[event.name]) handlers[event.name](event.data);
    }
  }
}

// The progress row: `data` is a progress event (tokens of the prompt in the cache, of its
// total, and the seconds left once measured); null shows `label` alone (waiting).
function showProgress(data, label) {
  const row = $("progress");
  const bar = $("progress-bar");
  row.hidden = false;
  if (!data) {
    bar.removeAttribute("value"); // indeterminate: nothing to count yet
    $("progress-text").textContent = label;
    return;
  }
  bar.max = Math.max(data.total, 1);
  bar.value = data.done;
  const cached = data.start ? ` (${data.start.toLocaleString()} from the cache)` : "";
  const left = data.eta == null ? "" : ` · about ${duration(data.eta)} left`;
  $("progress-text").textContent =
    `${label}: ${data.done.toLocaleString()} of ${data.total.toLocaleString()} tokens${cached}${left}`;
}

function hideProgress() {
  $("progress").hidden = true;
}

function duration(seconds) {
  const s = Math.max(Math.round(seconds), 1);
  return s < 60 ? `${s} s` : `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

function parseEvent(raw) {
  let name = "message";
  const data = [];
  for (const line of raw.split("\n")) {
    if (line.startsWith("event:")) name = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).trim());
  }
  return { name, data: JSON.parse(data.join("\n") || "{}") };
}

function finish(data) {
  state.chat.messages = data.messages;
  renderMessages(data.messages);
  showContext(data.context);
  const s = data.stats;
  if (s) {
    const dropped = s.dropped_messages ? ` · ${s.dropped_messages} oldest messages not in the prompt` : "";
    $("stats").textContent =
      `first token ${Math.round(s.ttft_ms)} ms · ${s.tokens_per_second.toFixed(1)} tok/s · ` +
      `read ${s.prefilled_tokens.toLocaleString()} of ${s.prompt_tokens.toLocaleString()}${dropped}`;
  }
  if (data.notices.length) notice(data.notices, "warning");
}

function showContext(context) {
  const meter = $("context-meter");
  meter.max = Math.max(context.limit, 1);
  meter.value = context.used ?? context.limit;
  const used = context.used == null ? "more than fits" : context.used.toLocaleString();
  $("context-text").textContent = context.limit
    ? `${used} / ${context.limit.toLocaleString()} tokens`
    : "0 tokens";
}

async function stop() {
  if (!state.chat) return;
  try {
    await api("/chats/" + encodeURIComponent(state.chat.id) + "/stop", { method: "POST" });
  } catch (e) {
    notice(e.message, "error");
  }
}

// -- settings, attachments, export ----------------------------------------------------------

function defaults() {
  return { params: state.info ? state.info.defaults : {}, system: "", policy: "truncate" };
}

function fillSettings(settings) {
  const form = $("settings-form");
  for (const key of PARAMS) form.elements[key].value = settings.params[key] ?? "";
  form.elements.system.value = settings.system || "";
  form.elements.policy.value = settings.policy;
}

function readSettings() {
  const form = $("settings-form");
  const params = {};
  for (const key of PARAMS) {
    const raw = form.elements[key].value.trim();
    params[key] = raw === "" ? null : Number(raw);
  }
  return { params, system: form.elements.system.value, policy: form.elements.policy.value };
}

async function saveSettings(event) {
  event.preventDefault();
  const settings = readSettings();
  if (!state.chat) {
    state.pending = settings;
    return notice("Settings kept for this new chat.");
  }
  try {
    const view = await (await api("/chats/" + encodeURIComponent(state.chat.id) + "/settings", { method: "POST", json: settings })).json();
    showChat(view);
    notice("Settings saved for this chat.");
  } catch (e) {
    notice(e.message, "error");
  }
}

async function attach() {
  const input = $("attach");
  const file = input.files[0];
  input.value = "";
  if (!file || state.streaming) return;
  let chat;
  try {
    chat = await ensureChat("About " + file.name);
  } catch (e) {
    return notice(e.message, "error");
  }
  setStreaming(true);
  notice("");
  showProgress(null, `Reading ${file.name}…`);
  let done = null;
  try {
    const path = "/chats/" + encodeURIComponent(chat.id) + "/attach?name=" + encodeURIComponent(file.name);
    const response = await api(path, { method: "POST", body: file, headers: { "Content-Type": "application/octet-stream" } });
    await readEvents(response, {
      progress: (data) => showProgress(data, `Reading ${file.name}`),
      notice: (data) => addNotice(data.text),
      done: (data) => { done = data; },
      error: (data) => notice(data.message, "error"),
    });
  } catch (e) {
    notice(e.message, "error");
  } finally {
    hideProgress();
    setStreaming(false);
  }
  if (done) {
    state.chat.messages = done.messages;
    renderMessages(done.messages);
    showContext(done.context);
    notice(done.complete
      ? `Read ${file.name}: ${done.read_tokens.toLocaleString()} tokens.`
      : `Stopped reading ${file.name} after ${done.read_tokens.toLocaleString()} tokens; the rest is read with your next message.`);
  }
  await loadChats();
}

async function exportChat() {
  if (!state.chat) return notice("Nothing to export yet.");
  try {
    const response = await api("/chats/" + encodeURIComponent(state.chat.id) + "/export");
    const disposition = response.headers.get("Content-Disposition") || "";
    const match = /filename\*=UTF-8''([^;]+)/.exec(disposition);
    const link = document.createElement("a");
    link.href = URL.createObjectURL(await response.blob());
    link.download = match ? decodeURIComponent(match[1]) : "chat.md";
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
  } catch (e) {
    notice(e.message, "error");
  }
}

async function deleteChat() {
  if (!state.chat || state.streaming) return;
  if (!confirm(`Delete “${state.chat.title}” and its saved KV cache?`)) return;
  try {
    await api("/chats/" + encodeURIComponent(state.chat.id) + "/delete", { method: "POST" });
    newChat();
  } catch (e) {
    notice(e.message, "error");
  }
}

// -- start ------------------------------------------------------------------------------------

async function start() {
  $("composer").addEventListener("submit", (e) => { e.preventDefault(); send($("prompt").value); });
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); send($("prompt").value); }
  });
  $("stop").addEventListener("click", stop);
  $("regenerate").addEventListener("click", regenerate);
  $("new-chat").addEventListener("click", newChat);
  $("export").addEventListener("click", exportChat);
  $("delete").addEventListener("click", deleteChat);
  $("attach").addEventListener("change", attach);
  $("settings-form").addEventListener("submit", saveSettings);
  $("settings-toggle").addEventListener("click", () => {
    const panel = $("settings");
    panel.hidden = !panel.hidden;
    $("settings-toggle").setAttribute("aria-expanded", String(!panel.hidden));
  });
  try {
    state.info = await (await api("/info")).json();
  } catch (e) {
    return notice(e.message, "error");
  }
  const select = $("settings-form").elements.policy;
  for (const name of state.info.policies) select.append(new Option(name, name));
  $("settings-form").elements.max_tokens.max = state.info.max_tokens;
  fillSettings(defaults());
  // The chat asked for, else the most recent one (the list is newest first), else a new one.
  let id = new URLSearchParams(location.search).get("chat");
  if (!id) {
    const { chats } = await (await api("/chats")).json();
    if (chats.length) id = chats[0].id;
  }
  if (id) await openChat(id);
  else await loadChats();
  document.body.dataset.ready = "1";
}

start();
