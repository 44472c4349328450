// The page's frame: the sidebar of conversations (one shown at a time) and the guide.
// Loaded before sandbox.js, whose helpers (h, render, post) these call at run time.
"use strict";

// The sidebar: channels, the app (its Home tab) and the direct messages; one conversation at a time.
function conversations(data) {
  const [approvals, notifications, dm] = data.channels;
  return [
    { section: "Channels", id: approvals.id, label: approvals.label },
    { section: "Channels", id: notifications.id, label: notifications.label },
    { section: "Apps", id: "home", label: "dpor \u00b7 Home", about: "the app's Home tab: what waits for you, your requests, what you own" },
    { section: "Direct messages", id: dm.id, label: "dpor", dm: true },
  ];
}

function renderSidebar(data) {
  const bar = document.getElementById("sidebar");
  const all = conversations(data);
  if (!all.some((c) => c.id === sandbox.active)) sandbox.active = all[0].id;
  const ids = all.map((c) => c.id).join(",");
  if (bar.dataset.ids !== ids) {
    bar.dataset.ids = ids;
    const sections = [...new Set(all.map((c) => c.section))];
    bar.replaceChildren(
      ...sections.map((section) =>
        h(
          "div",
          { class: "nav-section" },
          h("h3", { text: section }),
          ...all
            .filter((c) => c.section === section)
            .map((c) => h("button", { type: "button", class: "nav-item", "data-target": c.id, onclick: () => show(c.id) }, h("span", { class: "nav-mark", text: c.id === "home" ? "\u2302" : c.dm ? "\u25cf" : "#" }), c.label.replace(/^#/, ""))),
        ),
      ),
    );
  }
  for (const item of bar.querySelectorAll(".nav-item")) {
    const on = item.dataset.target === sandbox.active;
    item.classList.toggle("active", on);
    if (on) item.setAttribute("aria-current", "page");
    else item.removeAttribute("aria-current");
  }
}

function show(id) {
  const changed = sandbox.active !== id;
  sandbox.active = id;
  document.body.classList.remove("menu-open");
  document.getElementById("menu").setAttribute("aria-expanded", "false");
  history.replaceState(null, "", `#as=${encodeURIComponent(sandbox.viewer || "")}&in=${encodeURIComponent(id)}`);
  if (sandbox.data) {
    renderSidebar(sandbox.data);
    renderPanes(sandbox.data);
  }
  if (id === "home" && changed && sandbox.viewer) {
    sandbox.homeFor = sandbox.viewer;
    window.sandboxViews.openHome();
  }
}

function renderGuide(data) {
  const guide = document.getElementById("guide");
  if (guide.childElementCount) return;
  const steps = [
    ["As ", b("Alex Admin"), ", click ", b("\u26a1\ufe0e"), " by the composer and ", b("Change a DPOR"), " (or send ", c("/dpor set"), "): pick the subscription and the partner as you type, give a reason, submit. No ID to type."],
    ["Switch to ", b("Ben Bystander"), " and click ", b("Approve"), " on the card: he holds no role, so he is refused, and only he sees why."],
    ["Switch to ", b("Olivia Owner"), ", open ", b("dpor \u00b7 Home"), " in the sidebar and approve there (or on the card): the card turns ", b("Applied"), ", its thread tells each step, #dpor-notifications hears of it and Alex gets a direct message."],
    ["Try ", c("/dpor show prod-eu"), ", ", c("/dpor history prod-eu"), ", a ", b("Reject"), " (it asks why), or ", c("/dpor role grant @ben owner prod-eu"), " as Olivia: the people list follows."],
    ["What only you see (\u201cOnly visible to you\u201d) is gone after a reload, as in Slack."],
  ];
  const examples = data.examples.map((text) =>
    h("button", { type: "button", class: "example", text, title: "Put this in the #dpor-approvals composer", onclick: () => fill(data.channels[0].id, text) }),
  );
  guide.append(
    h("h2", { text: "Try it" }),
    h("ol", { class: "steps" }, ...steps.map((parts) => h("li", {}, ...parts))),
    h("h3", { text: "Commands (click one to fill it in)" }),
    h("div", { class: "examples" }, ...examples),
    h("h3", { text: "People" }),
    table(["person", "role"], data.people.map((p) => [[p.name, h("div", { class: "fine", text: `@${p.handle} · ${p.id}` })], p.about])),
    h("h3", { text: "Subscriptions" }),
    table(["alias", "name", "ID"], data.subscriptions.map((s) => [s.alias, s.name, s.id])),
    h("h3", { text: "Partner directory" }),
    table(["partner ID", "name"], data.partners.map((p) => [p.id, p.name])),
    h("p", { class: "fine", text: "Each run starts from this data on a fresh database. The bot gets signed requests, exactly as from Slack." }),
  );
}

function b(text) {
  return h("b", { text });
}

function c(text) {
  return h("code", { class: "code", text });
}

function table(headers, rows) {
  return h(
    "table",
    {},
    h("thead", {}, h("tr", {}, ...headers.map((text) => h("th", { text })))),
    h("tbody", {}, ...rows.map((row) => h("tr", {}, ...row.map((cell) => h("td", {}, ...[cell].flat()))))),
  );
}

function fill(channel, text) {
  const pane = sandbox.panes.get(channel);
  if (!pane) return;
  pane.input.value = text;
  pane.input.focus();
}
