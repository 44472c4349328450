// The sandbox page: shows what the chosen person sees in Slack and sends what they do.
// Messages arrive as an element tree rendered by the server (sandbox/render.py). Every node is made
// with createElement from a fixed list of tags and every string goes in as a text node: no innerHTML,
// so text from a message can never become markup.
"use strict";

const TAGS = new Set(["div", "span", "b", "i", "s", "code", "pre", "hr", "time", "button"]);

const hashParams = new URLSearchParams(location.hash.slice(1));
const sandbox = {
  viewer: hashParams.get("as"),
  active: hashParams.get("in"),
  since: null, // when this page session started (the server's clock): older ephemerals are not shown
  openThreads: new Set(),
  version: -1,
  data: null,
  loop: 0,
  abort: null,
  panes: new Map(),
};

// The page's own elements. Strings passed as children become text nodes.
function h(tag, props = {}, ...kids) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = value;
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value);
  }
  el.append(...kids);
  return el;
}

// One node of the server's element tree.
function build(node) {
  if (typeof node === "string") return document.createTextNode(node);
  if (node === null || typeof node !== "object") return document.createTextNode("");
  const el = document.createElement(TAGS.has(node.el) ? node.el : "span");
  if (typeof node.class === "string") el.className = node.class;
  if (typeof node.title === "string") el.title = node.title;
  const dated = el.tagName === "TIME" && node.epoch != null ? window.slackDates.formatDate(node.epoch, node.format) : null;
  if (dated !== null) {
    el.textContent = dated;
    el.dataset.epoch = String(node.epoch);
  } else {
    for (const kid of Array.isArray(node.kids) ? node.kids : []) el.append(build(kid));
  }
  if (el.tagName === "BUTTON") wireButton(el, node);
  return el;
}

function wireButton(el, node) {
  el.type = "button";
  const action = node.action;
  if (!action) {
    el.disabled = true;
    return;
  }
  el.dataset.actionId = String(action.action_id);
  el.addEventListener("click", async () => {
    if (node.confirm && !(await confirmDialog(node.confirm))) return;
    el.disabled = true;
    try {
      await post("/sandbox/click", { user: sandbox.viewer, ...action }, action.view ? "home" : action.channel);
    } finally {
      el.disabled = false;
    }
  });
}

// A button's confirm object, as Slack shows it: title, text, a deny and a confirm button.
function confirmDialog(confirm) {
  return new Promise((resolve) => {
    const modal = document.getElementById("modal");
    const onKey = (event) => {
      if (event.key === "Escape") done(false);
    };
    const done = (ok) => {
      modal.hidden = true;
      modal.replaceChildren();
      document.removeEventListener("keydown", onKey);
      resolve(ok);
    };
    const style = confirm.style === "danger" ? "btn-danger" : "btn-primary";
    const dialog = h(
      "div",
      { class: "dialog", role: "dialog", "aria-modal": "true", "aria-labelledby": "dialog-title" },
      h("h2", { id: "dialog-title", text: confirm.title }),
      h("div", { class: "dialog-text" }, ...(confirm.text || []).map(build)),
      h(
        "div",
        { class: "dialog-buttons" },
        h("button", { type: "button", class: "btn", "data-role": "deny", text: confirm.deny, onclick: () => done(false) }),
        h("button", { type: "button", class: `btn ${style}`, "data-role": "confirm", text: confirm.confirm, onclick: () => done(true) }),
      ),
    );
    modal.replaceChildren(dialog);
    modal.hidden = false;
    document.addEventListener("keydown", onKey);
    dialog.querySelector("[data-role=confirm]").focus();
  });
}

// A POST to the page's API: its JSON answer, or {ok: false, problem} when it failed.
async function api(url, body) {
  try {
    const response = await fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    const answer = await response.json().catch(() => ({}));
    if (!response.ok) return { ...answer, ok: false, problem: answer.problem || `the sandbox answered HTTP ${response.status}` };
    return answer;
  } catch (error) {
    return { ok: false, problem: "Cannot reach the sandbox server: is dpor-bot sandbox still running?" };
  }
}

async function post(url, body, channel) {
  const answer = await api(url, body);
  if (!answer.ok && answer.problem) notify(channel, answer.problem);
  return answer;
}

function notify(channel, text) {
  const pane = sandbox.panes.get(channel);
  if (!pane) return;
  pane.notice.textContent = text;
  pane.notice.hidden = false;
  clearTimeout(pane.noticeTimer);
  pane.noticeTimer = setTimeout(() => (pane.notice.hidden = true), 8000);
}

function setStatus(text) {
  const status = document.getElementById("status");
  status.textContent = text;
  status.hidden = !text;
}

// Rendering the state

function render(data) {
  sandbox.data = data;
  sandbox.version = data.version;
  sandbox.viewer = data.viewer;
  if (sandbox.since === null) sandbox.since = data.now;
  renderPeople(data);
  renderGuide(data);
  renderSidebar(data);
  if (sandbox.active === "home" && sandbox.homeFor !== data.viewer) {
    sandbox.homeFor = data.viewer; // the Home tab is open on this person's screen: Slack tells the app
    window.sandboxViews.openHome();
  }
  renderPanes(data);
  window.sandboxViews.renderModal(data);
}

function person(id) {
  return (sandbox.data?.people || []).find((p) => p.id === id) || { id, name: id, role: "" };
}

function renderPeople(data) {
  const box = document.getElementById("people");
  if (!box.childElementCount) {
    for (const p of data.people) {
      box.append(
        h(
          "button",
          { type: "button", class: "person", "data-user": p.id, title: p.about, onclick: () => view(p.id) },
          h("span", { class: "person-name", text: p.name }),
          h("span", { class: "person-role", text: p.role }),
        ),
      );
    }
  }
  for (const button of box.children) {
    const p = data.people.find((x) => x.id === button.dataset.user);
    if (p) button.querySelector(".person-role").textContent = p.role;
    const on = button.dataset.user === data.viewer;
    button.classList.toggle("active", on);
    button.setAttribute("aria-pressed", String(on));
  }
}

function renderPanes(data) {
  const panes = document.getElementById("panes");
  const all = conversations(data);
  const ids = all.map((c) => c.id).join(",");
  if (panes.dataset.ids !== ids) {
    sandbox.panes.clear();
    panes.replaceChildren(...all.map((c) => (c.id === "home" ? makeHome(c) : makePane({ ...data.channels.find((x) => x.id === c.id), ...c }))));
    panes.dataset.ids = ids;
  }
  for (const c of all) {
    const pane = sandbox.panes.get(c.id);
    pane.pane.hidden = c.id !== sandbox.active;
    if (c.id === "home") window.sandboxViews.renderHome(pane, data);
    else fillTimeline(pane, data.channels.find((x) => x.id === c.id));
  }
}

function makeHome(c) {
  const list = h("div", { class: "home" });
  const notice = h("div", { class: "notice", role: "alert" });
  notice.hidden = true;
  const pane = h(
    "section",
    { class: "pane pane-home", "data-channel": "home", "aria-label": "dpor Home" },
    h("header", { class: "pane-head" }, h("h2", { text: "dpor" }), h("div", { class: "tabs" }, h("span", { class: "tab active", text: "Home" })), h("p", { class: "about", text: c.about })),
    notice,
    list,
  );
  sandbox.panes.set("home", { pane, list, notice, shown: null });
  return pane;
}

function makePane(channel) {
  const list = h("ol", { class: "timeline", "aria-live": "polite" });
  const input = h("input", {
    type: "text",
    class: "composer-input",
    placeholder: `/dpor …  in ${channel.label}`,
    autocomplete: "off",
    spellcheck: "false",
    "aria-label": `Command in ${channel.label}`,
  });
  const menu = h("div", { class: "shortcut-menu", role: "menu" });
  menu.hidden = true;
  const lightning = h("button", { type: "button", class: "icon-btn shortcut-btn", title: "Shortcuts", "aria-label": "Shortcuts", "aria-haspopup": "menu", text: "\u26a1\ufe0e" });
  lightning.addEventListener("click", () => {
    menu.replaceChildren(
      h("div", { class: "menu-title", text: "Shortcuts" }),
      ...(sandbox.data?.shortcuts || []).map((s) =>
        h("button", { type: "button", class: "menu-item", role: "menuitem", "data-callback-id": s.callback_id, text: s.name, onclick: () => {
          menu.hidden = true;
          post("/sandbox/shortcut", { user: sandbox.viewer, callback_id: s.callback_id }, channel.id);
        } }),
      ),
    );
    menu.hidden = !menu.hidden;
  });
  const form = h("form", { class: "composer" }, lightning, input, h("button", { type: "submit", class: "btn btn-primary", text: "Send" }), menu);
  const notice = h("div", { class: "notice", role: "alert" });
  notice.hidden = true;
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = input.value.trim();
    if (!text) return;
    input.value = "";
    post("/sandbox/command", { user: sandbox.viewer, channel: channel.id, text }, channel.id);
  });
  const pane = h(
    "section",
    { class: "pane", "data-channel": channel.id, "aria-label": channel.label },
    h("header", { class: "pane-head" }, h("h2", { text: channel.label }), h("p", { class: "about", text: channel.about })),
    list,
    notice,
    form,
  );
  sandbox.panes.set(channel.id, { pane, list, input, notice, shown: null });
  return pane;
}

function fillTimeline(pane, channel) {
  const shown = JSON.stringify([channel.items, [...sandbox.openThreads]]);
  if (pane.shown === shown) return;
  const list = pane.list;
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 60;
  const grew = pane.shown === null || channel.items.length > pane.count;
  pane.shown = shown;
  pane.count = channel.items.length;
  if (!channel.items.length) {
    list.replaceChildren(h("li", { class: "empty", text: "Nothing here yet." }));
    return;
  }
  list.replaceChildren(...channel.items.map(buildItem));
  if (atBottom || grew) list.scrollTop = list.scrollHeight;
}

function buildItem(item) {
  const fromBot = item.kind === "message" || item.kind === "ephemeral";
  const author = fromBot ? "dpor" : item.kind === "problem" ? "Slack (sandbox)" : person(sandbox.viewer).name;
  const meta = h("div", { class: "meta" }, h("b", { class: "author", text: author }));
  if (fromBot) meta.append(h("span", { class: "badge", text: "APP" }));
  meta.append(h("span", { class: "time", text: item.epoch ? window.slackDates.clock(item.epoch) : item.time }));
  if (item.edited) meta.append(h("span", { class: "edited", text: "(edited)" }));
  if (item.thread) meta.append(h("span", { class: "edited", text: "· reply in a thread" }));
  const body = h("div", { class: "body" });
  if (item.command) {
    body.append(h("div", { class: "typed", text: item.command }));
    const answer = h("div", { class: "answer" });
    answer.append(...item.body.map(build));
    if (item.pending) answer.append(h("div", { class: "waiting", text: "waiting for dpor…" }));
    if (answer.childElementCount) body.append(answer);
  } else {
    body.append(...item.body.map(build));
  }
  const content = h("div", { class: "content" }, meta, body);
  if (item.kind !== "message") content.append(h("div", { class: "only-you", text: "Only visible to you" }));
  const replies = item.replies || [];
  if (replies.length) {
    const open = sandbox.openThreads.has(item.key);
    const toggle = h("button", { type: "button", class: "thread-toggle", "aria-expanded": String(open), text: open ? "Hide replies" : `${replies.length} ${replies.length === 1 ? "reply" : "replies"}` });
    toggle.addEventListener("click", () => {
      if (open) sandbox.openThreads.delete(item.key);
      else sandbox.openThreads.add(item.key);
      renderPanes(sandbox.data);
    });
    content.append(toggle);
    if (open) content.append(h("ol", { class: "replies", "aria-label": "Replies in the thread" }, ...replies.map(buildItem)));
  }
  const initial = fromBot ? "D" : author.slice(0, 1);
  return h(
    "li",
    { class: `item item-${item.kind}`, "data-key": item.key, "data-kind": item.kind },
    h("div", { class: fromBot ? "avatar avatar-bot" : "avatar", text: initial }),
    content,
  );
}

// Keeping up: a long poll that answers as soon as anything changed since the version we have.

async function poll() {
  const mine = ++sandbox.loop;
  if (sandbox.abort) sandbox.abort.abort();
  while (mine === sandbox.loop) {
    const abort = new AbortController();
    sandbox.abort = abort;
    try {
      const who = sandbox.viewer ? `user=${encodeURIComponent(sandbox.viewer)}&` : "";
      const since = sandbox.since === null ? "" : `since=${sandbox.since}&`;
      const response = await fetch(`/sandbox/state?${who}${since}after=${sandbox.version}`, { signal: abort.signal });
      if (response.status === 400 && sandbox.viewer) {
        sandbox.viewer = null; // someone not in this workspace: show the first person instead
        continue;
      }
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const data = await response.json();
      if (mine !== sandbox.loop) return;
      setStatus("");
      render(data);
    } catch (error) {
      if (mine !== sandbox.loop) return;
      setStatus("Lost the sandbox server; retrying… (is dpor-bot sandbox still running?)");
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }
}

function view(userId) {
  if (userId === sandbox.viewer && sandbox.version >= 0) return;
  sandbox.viewer = userId;
  sandbox.version = -1;
  history.replaceState(null, "", `#as=${encodeURIComponent(userId)}&in=${encodeURIComponent(sandbox.active || "")}`);
  poll();
}

function toggle(buttonId, className) {
  const button = document.getElementById(buttonId);
  button.addEventListener("click", () => {
    const on = document.body.classList.toggle(className);
    button.setAttribute("aria-expanded", String(on));
  });
}

window.sandboxPage = { build }; // for the renderer's tests
toggle("menu", "menu-open");
toggle("guide-toggle", "guide-open");
poll().catch(() => {});
