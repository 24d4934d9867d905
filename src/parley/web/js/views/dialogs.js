// Modal dialogs, built when opened and removed when closed (so their fields
// are never in the page while hidden): new chat, new group, group info.

import { ApiError } from "../api.js";
import { avatar, h, icon, setBusy } from "../dom.js";
import { lastSeen } from "../format.js";

function errorText(err) {
  if (err instanceof ApiError) {
    if (err.status === 403) return "Only group admins can do that.";
    if (err.status === 0) return err.message;
    if (err.code === "validation_error" && /member/i.test(err.message)) return err.message;
    return err.message;
  }
  return "Something went wrong. Try again.";
}

function modal(titleText, { onClose } = {}) {
  const title = h("h2", { class: "dialog-title", id: "dialog-title" }, titleText);
  const closeBtn = h(
    "button",
    { type: "button", class: "icon-btn", "aria-label": "Close", title: "Close" },
    icon("close"),
  );
  const body = h("div", { class: "dialog-body" });
  const dialog = h(
    "dialog",
    { class: "dialog", "aria-labelledby": "dialog-title" },
    h("header", { class: "dialog-head" }, title, closeBtn),
    body,
  );
  closeBtn.addEventListener("click", () => dialog.close());
  dialog.addEventListener("click", (e) => {
    if (e.target === dialog) dialog.close(); // a click on the backdrop
  });
  dialog.addEventListener("close", () => {
    dialog.remove();
    if (onClose) onClose();
  });
  document.body.append(dialog);
  return { dialog, body, title };
}

function field(id, label, attrs = {}) {
  const input = h("input", {
    id,
    autocomplete: "off",
    autocapitalize: "none",
    spellcheck: "false",
    ...attrs,
  });
  return { input, label: h("label", { for: id }, label) };
}

export function newChatDialog(store, { onOpen }) {
  const returnFocus = document.activeElement;
  let opened = null; // once a chat is chosen, focus goes to it, not back to the button
  const { dialog, body } = modal("Start a chat", {
    onClose: () => (opened ? onOpen(opened) : returnFocus && returnFocus.focus && returnFocus.focus()),
  });
  const user = field("newchat-username", "Username", { placeholder: "e.g. alice", required: true });
  const error = h("p", { class: "form-error", role: "alert" });
  const go = h("button", { type: "submit", class: "btn btn-primary" }, "Start chat");
  const form = h(
    "form",
    { class: "dialog-form" },
    user.label,
    h("div", { class: "input-with-prefix" }, h("span", { class: "prefix", "aria-hidden": "true" }, "@"), user.input),
    error,
    h("div", { class: "dialog-actions" }, go),
  );
  const contacts = h("div", { class: "contact-picks" });
  body.append(form, contacts);

  async function open(username) {
    error.textContent = "";
    setBusy(go, true);
    try {
      const c = await store.startDirect(username);
      opened = c.conversation_id;
      dialog.close();
    } catch (err) {
      error.textContent = errorText(err);
      setBusy(go, false);
      user.input.focus();
    }
  }
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    if (user.input.value.trim()) open(user.input.value);
    else error.textContent = "Enter a username.";
  });
  dialog.showModal();
  user.input.focus();

  store.contacts().then((list) => {
    if (!list.length || !dialog.isConnected) return;
    const ul = h("ul", { class: "people" });
    for (const p of list) {
      const b = h(
        "button",
        { type: "button", class: "person" },
        avatar(p.user_id, p.display_name || p.username, {
          size: "sm",
          presence: p.presence && p.presence.status === "online" ? "online" : null,
        }),
        h(
          "span",
          { class: "person-text" },
          h("span", { class: "person-name" }, p.display_name || p.username),
          h("span", { class: "person-sub" }, "@" + p.username),
        ),
      );
      b.addEventListener("click", () => open(p.username));
      ul.append(h("li", {}, b));
    }
    contacts.append(h("h3", { class: "section-title" }, "Contacts"), ul);
  });
}

export function newGroupDialog(store, { onOpen }) {
  const returnFocus = document.activeElement;
  let opened = null;
  const { dialog, body } = modal("New group", {
    onClose: () => (opened ? onOpen(opened) : returnFocus && returnFocus.focus && returnFocus.focus()),
  });
  const name = field("group-title", "Group name", { maxlength: "100", placeholder: "e.g. Weekend trip" });
  const user = field("group-username", "Username", { placeholder: "Add people by username" });
  const add = h("button", { type: "button", class: "btn btn-secondary" }, "Add");
  const chips = h("ul", { class: "chips", "aria-label": "People in the new group" });
  const error = h("p", { class: "form-error", role: "alert" });
  const create = h("button", { type: "submit", class: "btn btn-primary" }, "Create group");
  const picked = new Map(); // username -> user

  function renderChips() {
    chips.replaceChildren(
      ...[...picked.values()].map((u) => {
        const label = u.display_name || u.username;
        const rm = h(
          "button",
          { type: "button", class: "chip-x", "aria-label": `Remove ${label}`, title: `Remove ${label}` },
          icon("close"),
        );
        rm.addEventListener("click", () => {
          picked.delete(u.username);
          renderChips();
          user.input.focus();
        });
        return h("li", { class: "chip" }, avatar(u.user_id, label, { size: "xs" }), h("span", {}, label), rm);
      }),
    );
  }

  async function addUser() {
    const v = user.input.value.trim();
    if (!v) return;
    error.textContent = "";
    setBusy(add, true);
    try {
      const u = await store.findUser(v);
      if (u.user_id === store.me.user_id) throw new ApiError(422, "self", "You’re in the group already.");
      picked.set(u.username, u);
      store.users.set(u.user_id, u);
      if (user.input.value.trim() === v) user.input.value = "";
      renderChips();
    } catch (err) {
      error.textContent = errorText(err);
    } finally {
      setBusy(add, false);
      user.input.focus();
    }
  }
  add.addEventListener("click", addUser);
  user.input.addEventListener("keydown", (e) => {
    if (e.key === "Enter") {
      e.preventDefault();
      addUser();
    }
  });

  const form = h(
    "form",
    { class: "dialog-form" },
    name.label,
    name.input,
    user.label,
    h("div", { class: "input-row" }, user.input, add),
    chips,
    error,
    h("div", { class: "dialog-actions" }, create),
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const title = name.input.value.trim();
    if (!title) {
      error.textContent = "Give the group a name.";
      name.input.focus();
      return;
    }
    if (user.input.value.trim()) await addUser();
    setBusy(create, true);
    try {
      const c = await store.createGroup(title, [...picked.keys()]);
      opened = c.conversation_id;
      dialog.close();
    } catch (err) {
      error.textContent = errorText(err);
      setBusy(create, false);
    }
  });
  body.append(form);
  dialog.showModal();
  name.input.focus();
}

export function groupInfoDialog(store, id, { onLeft }) {
  const returnFocus = document.activeElement;
  const { dialog, body } = modal("Group info", { onClose: () => {
    store.removeEventListener("change", onChange);
    if (returnFocus && returnFocus.isConnected) returnFocus.focus();
  } });
  const error = h("p", { class: "form-error", role: "alert" });

  function render() {
    const c = store.conversations.get(id);
    if (!c) return;
    const admin = store.isAdmin(c);
    const member = store.isMember(c);
    const parts = [];

    if (admin) {
      const t = field("info-title", "Group name", { value: c.title || "", maxlength: "100" });
      const save = h("button", { type: "submit", class: "btn btn-secondary" }, "Rename");
      const f = h("form", { class: "dialog-form" }, t.label, h("div", { class: "input-row" }, t.input, save));
      f.addEventListener("submit", async (e) => {
        e.preventDefault();
        const title = t.input.value.trim();
        if (!title) return;
        setBusy(save, true);
        try {
          await store.rename(id, title);
          error.textContent = "";
        } catch (err) {
          error.textContent = errorText(err);
        } finally {
          setBusy(save, false);
        }
      });
      parts.push(f);
    } else {
      parts.push(h("p", { class: "info-title" }, store.title(c)));
    }

    const roster = h("ul", { class: "people", "aria-label": "Members" });
    const members = [...c.members].sort((a, b) =>
      a.user_id === store.me.user_id ? -1 : b.user_id === store.me.user_id ? 1 : store.fullName(a.user_id).localeCompare(store.fullName(b.user_id)),
    );
    for (const m of members) {
      const me = m.user_id === store.me.user_id;
      const name = me ? "You" : store.fullName(m.user_id);
      const u = store.users.get(m.user_id);
      const pres = store.presenceOf(m.user_id);
      const row = h(
        "li",
        { class: "person" },
        avatar(m.user_id, store.fullName(m.user_id), { size: "sm", presence: !me && pres.status === "online" ? "online" : null }),
        h(
          "span",
          { class: "person-text" },
          h("span", { class: "person-name" }, name, m.role === "admin" ? h("span", { class: "role" }, "admin") : null),
          h("span", { class: "person-sub" }, me ? "@" + store.me.username : [u ? "@" + u.username : "", pres.status !== "unknown" ? " · " + lastSeen(pres) : ""].join("")),
        ),
      );
      if (admin && !me) {
        const rm = h("button", { type: "button", class: "btn btn-ghost btn-small", "aria-label": `Remove ${name}` }, "Remove");
        rm.addEventListener("click", async () => {
          setBusy(rm, true);
          try {
            await store.removeMember(id, m.user_id);
            error.textContent = "";
          } catch (err) {
            error.textContent = errorText(err);
            setBusy(rm, false);
          }
        });
        row.append(rm);
      }
      roster.append(row);
    }
    parts.push(h("h3", { class: "section-title" }, `${c.members.length} member${c.members.length === 1 ? "" : "s"}`), roster);

    if (admin) {
      const a = field("info-add", "Username", { placeholder: "Add someone by username" });
      const go = h("button", { type: "submit", class: "btn btn-secondary" }, "Add member");
      const f = h("form", { class: "dialog-form" }, a.label, h("div", { class: "input-row" }, a.input, go));
      f.addEventListener("submit", async (e) => {
        e.preventDefault();
        if (!a.input.value.trim()) return;
        setBusy(go, true);
        try {
          await store.addMember(id, a.input.value);
          error.textContent = "";
          a.input.value = "";
        } catch (err) {
          error.textContent = errorText(err);
        } finally {
          setBusy(go, false);
        }
      });
      parts.push(f);
    }
    parts.push(error);
    if (member) {
      const leave = h("button", { type: "button", class: "btn btn-danger btn-block" }, "Leave group");
      leave.addEventListener("click", async () => {
        setBusy(leave, true);
        try {
          await store.leave(id);
          dialog.close();
          onLeft();
        } catch (err) {
          error.textContent = errorText(err);
          setBusy(leave, false);
        }
      });
      parts.push(leave);
    }
    const focusedId = document.activeElement && dialog.contains(document.activeElement) ? document.activeElement.id : null;
    const keep = document.activeElement && document.activeElement.tagName === "INPUT" ? document.activeElement.value : null;
    body.replaceChildren(...parts);
    if (focusedId) {
      const again = body.querySelector("#" + CSS.escape(focusedId));
      if (again) {
        if (keep !== null && again.tagName === "INPUT" && focusedId !== "info-title") again.value = keep;
        again.focus();
      }
    }
  }

  let pending = false;
  function onChange(e) {
    const { what, id: which } = e.detail;
    if (which && which !== id && what !== "users" && what !== "presence") return;
    if (!["conversation", "users", "presence"].includes(what)) return;
    if (pending) return;
    pending = true;
    queueMicrotask(() => {
      pending = false;
      if (dialog.isConnected) render();
    });
  }
  store.addEventListener("change", onChange);
  render();
  dialog.showModal();
  const first = body.querySelector("input, button");
  if (first) first.focus();
}
