// Slack's views on the page: the modal on top of the viewer's stack and their App Home tab.
// The server describes each (sandbox/modals.py); display blocks are built with build() like messages,
// input blocks become form controls made here. What the person types stays in `draft` while the page
// redraws (an error answer, another person's action), until the modal closes or the app replaces it.
"use strict";

const draft = { id: null, hash: null, values: {} };
let modalShown = null;

function renderModal(data) {
  const box = document.getElementById("view-modal");
  const view = data.modal;
  if (!view) {
    if (modalShown !== null) {
      box.hidden = true;
      box.replaceChildren();
      modalShown = null;
    }
    return;
  }
  const key = `${data.viewer}|${view.id}|${view.hash}|${JSON.stringify(view.errors)}`;
  if (key === modalShown) return;
  const fresh = draft.id !== view.id || draft.hash !== view.hash;
  if (fresh) Object.assign(draft, { id: view.id, hash: view.hash, values: {} });
  modalShown = key;
  const inputs = new Set(view.blocks.filter((b) => b.input).map((b) => b.input.block_id));
  const stray = Object.entries(view.errors || {}).filter(([blockId]) => !inputs.has(blockId));
  const notice = h("div", { class: "notice modal-notice", role: "alert" });
  notice.hidden = !stray.length;
  notice.textContent = stray.map(([, text]) => text).join(" ");
  const form = h(
    "form",
    { class: "slack-modal", role: "dialog", "aria-modal": "true", "aria-labelledby": "slack-modal-title", "data-view-id": view.id, "data-callback-id": view.callback_id, novalidate: "" },
    h(
      "header",
      { class: "slack-modal-head" },
      h("h2", { id: "slack-modal-title", text: view.title }),
      h("button", { type: "button", class: "icon-btn close-x", "aria-label": "Close", text: "\u00d7", onclick: () => closeModal(view) }),
    ),
    h("div", { class: "slack-modal-body" }, notice, ...view.blocks.map((b) => (b.input ? buildInput(b.input, view) : build(b.node)))),
    h(
      "footer",
      { class: "slack-modal-foot" },
      h("button", { type: "button", class: "btn", "data-role": "close", text: view.close, onclick: () => closeModal(view) }),
      ...(view.submit ? [h("button", { type: "submit", class: "btn btn-primary", "data-role": "submit", text: view.submit })] : []),
    ),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    submitModal(view, form, notice);
  });
  form.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && !event.target.closest(".select")) closeModal(view);
  });
  box.replaceChildren(form);
  box.hidden = false;
  const focus = form.querySelector(".has-error input, .has-error textarea, .has-error select") || (fresh ? form.querySelector("input, textarea, select") : null);
  if (focus) focus.focus();
}

function buildInput(spec, view) {
  const id = `input-${spec.block_id}`;
  const wrap = h("div", { class: `input-block input-${spec.type}`, "data-block-id": spec.block_id });
  wrap.append(h("label", { for: id, class: "input-label" }, spec.label, spec.optional ? h("span", { class: "optional", text: " (optional)" }) : ""));
  const saved = draft.values[spec.block_id];
  let control;
  if (spec.type === "plain_text_input") {
    control = h(spec.multiline ? "textarea" : "input", { id, class: "text-input", placeholder: spec.placeholder || "" });
    if (!spec.multiline) control.type = "text";
    if (spec.multiline) control.rows = 4;
    if (spec.max_length) control.maxLength = spec.max_length;
    control.value = saved ? saved.value : spec.initial || "";
    control.addEventListener("input", () => (draft.values[spec.block_id] = { value: control.value }));
    wrap.append(control);
  } else if (spec.type === "static_select") {
    control = h("select", { id, class: "text-input" }, h("option", { value: "", text: spec.placeholder || "Select an item" }));
    for (const o of spec.options || []) control.append(h("option", { value: o.value, text: o.text }));
    const chosen = saved ? saved.option : spec.initial;
    control.value = chosen ? chosen.value : "";
    control.addEventListener("change", () => {
      const o = (spec.options || []).find((x) => x.value === control.value);
      draft.values[spec.block_id] = o ? { option: o } : {};
    });
    wrap.append(control);
  } else if (spec.type === "external_select") {
    const box = typeahead(spec, view, id);
    control = box.querySelector("input");
    wrap.append(box);
  } else {
    wrap.append(h("div", { class: "unsupported", text: spec.note || "" }));
  }
  if (spec.hint && spec.hint.length) wrap.append(h("div", { class: "hint" }, ...spec.hint.map(build)));
  if (spec.error) {
    wrap.classList.add("has-error");
    if (control) control.setAttribute("aria-invalid", "true");
    wrap.append(h("div", { class: "input-error", role: "alert", text: spec.error }));
  }
  return wrap;
}

// An external select: as the person types, the bot is asked (block_suggestion) and its options listed.
function typeahead(spec, view, id) {
  const saved = draft.values[spec.block_id];
  const picked = saved ? saved.option : spec.initial;
  const input = h("input", { type: "text", id, class: "text-input select-input", role: "combobox", autocomplete: "off", spellcheck: "false", "aria-autocomplete": "list", "aria-expanded": "false", placeholder: spec.placeholder || "Type to search" });
  const list = h("ul", { class: "options", role: "listbox" });
  list.hidden = true;
  if (picked) {
    input.value = picked.text;
    input.dataset.picked = picked.value;
    if (!saved) draft.values[spec.block_id] = { option: picked };
  }
  let timer = null;
  let asked = 0;
  const hide = () => {
    list.hidden = true;
    input.setAttribute("aria-expanded", "false");
  };
  const pick = (o) => {
    draft.values[spec.block_id] = { option: { text: o.text, value: o.value } };
    input.value = o.text;
    input.dataset.picked = o.value;
    hide();
  };
  const ask = async () => {
    const mine = ++asked;
    if (input.value.length < (spec.min_query_length || 0)) return hide();
    const answer = await api("/sandbox/suggest", { user: sandbox.viewer, view: view.id, block_id: spec.block_id, action_id: spec.action_id, value: input.value });
    if (mine !== asked || document.activeElement !== input) return;
    const options = answer.options || [];
    list.replaceChildren(
      ...options.map((o) =>
        h(
          "li",
          { role: "option", class: "option", "data-value": o.value, onmousedown: (event) => (event.preventDefault(), pick(o)) },
          h("span", { class: "option-text", text: o.text }),
          o.description ? h("span", { class: "option-desc", text: o.description }) : "",
        ),
      ),
    );
    if (!options.length) list.replaceChildren(h("li", { class: "option-none", text: answer.problem || "No matches" }));
    list.hidden = false;
    input.setAttribute("aria-expanded", "true");
  };
  input.addEventListener("input", () => {
    delete draft.values[spec.block_id];
    delete input.dataset.picked;
    clearTimeout(timer);
    timer = setTimeout(ask, 150);
  });
  input.addEventListener("focus", () => {
    if (!input.dataset.picked) ask();
  });
  input.addEventListener("blur", () => setTimeout(hide, 150));
  input.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && !list.hidden) {
      event.stopPropagation();
      hide();
    } else if (event.key === "Enter" && !list.hidden) {
      event.preventDefault();
      const first = list.querySelector(".option");
      if (first) first.dispatchEvent(new MouseEvent("mousedown"));
    }
  });
  return h("div", { class: "select" }, input, list);
}

function modalValues(form) {
  const values = {};
  for (const wrap of form.querySelectorAll(".input-block")) {
    const blockId = wrap.dataset.blockId;
    const text = wrap.querySelector("input.text-input:not(.select-input), textarea");
    if (text) values[blockId] = { value: text.value };
    else values[blockId] = draft.values[blockId] || {};
  }
  return values;
}

async function submitModal(view, form, notice) {
  const submit = form.querySelector("[data-role=submit]");
  if (submit) submit.disabled = true;
  const answer = await api("/sandbox/submit", { user: sandbox.viewer, view: view.id, values: modalValues(form) });
  if (submit) submit.disabled = false;
  if (!answer.ok) {
    notice.textContent = answer.problem || "The submission failed.";
    notice.hidden = false;
  }
}

async function closeModal(view) {
  const box = document.getElementById("view-modal");
  box.hidden = true;
  box.replaceChildren();
  modalShown = null;
  await api("/sandbox/close", { user: sandbox.viewer, view: view.id });
}

// App Home: opening the tab tells the bot (app_home_opened); it publishes what this person sees.
function openHome() {
  api("/sandbox/home", { user: sandbox.viewer }).then((answer) => {
    if (!answer.ok) notify("home", answer.problem || "The Home tab could not be opened.");
  });
}

function renderHome(pane, data) {
  const shown = JSON.stringify([data.viewer, data.home]);
  if (pane.shown === shown) return;
  pane.shown = shown;
  if (!data.home) {
    pane.list.replaceChildren(h("div", { class: "empty", text: "Opening the Home tab… the app publishes it when you open it." }));
    return;
  }
  pane.list.replaceChildren(h("div", { class: "home-view", "data-view-id": data.home.id }, ...data.home.blocks.map(build)));
}

window.sandboxViews = { renderModal, renderHome, openHome };
