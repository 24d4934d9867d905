// The conversation list: newest activity first, with the last message, its
// time, an unread badge and the peer's presence.

import { avatar, h, icon } from "../dom.js";
import { listTime } from "../format.js";

const TICK_ICON = { sending: "clock", sent: "check", delivered: "checks", read: "checks", failed: "alert" };
const TICK_WORD = { sending: "sending", sent: "sent", delivered: "delivered", read: "read", failed: "not sent" };

export function tick(status) {
  return h(
    "span",
    { class: `tick tick-${status}`, role: "img", "aria-label": TICK_WORD[status], title: TICK_WORD[status] },
    icon(TICK_ICON[status], "icon tick-icon"),
  );
}

export class ConversationList {
  constructor(store) {
    this.store = store;
    this.filter = "";
    this.items = new Map();
    this.ul = h("ul", { class: "conv-list", "aria-label": "Conversations" });
    this.empty = h(
      "div",
      { class: "list-empty" },
      h("div", { class: "list-empty-art", "aria-hidden": "true" }, icon("chat", "icon")),
      h("p", { class: "list-empty-title" }, "No conversations yet"),
      h("p", { class: "list-empty-text" }, "Start one with someone’s username, or create a group."),
    );
    this.noMatch = h("p", { class: "list-nomatch" });
    this.el = h("div", { class: "conv-scroll" }, this.ul, this.empty, this.noMatch);
  }

  preview(c) {
    const s = this.store;
    const typers = s.typingIn(c.conversation_id);
    if (typers.length) {
      const who = c.type === "group" ? s.userName(typers[0]) + " is typing…" : "typing…";
      return { text: who, typing: true };
    }
    const msgs = [...s.pending.values()].filter((p) => p.conversation_id === c.conversation_id);
    let m = c.last_message;
    let status = null;
    if (msgs.length) {
      const p = msgs.sort((a, b) => b.created - a.created)[0];
      m = { sender_id: s.me.user_id, body: p.body, sent_at: p.created, seq: null };
      status = p.status === "failed" ? "failed" : "sending";
    } else if (m && m.sender_id === s.me.user_id) {
      status = s.tickFor(c, m);
    }
    if (!m) {
      if (c.removed) return { text: "You’re no longer a member" };
      return { text: c.type === "group" ? "Group created" : "Say hello 👋" };
    }
    let prefix = "";
    if (m.sender_id === s.me.user_id) prefix = status ? "" : "You: ";
    else if (c.type === "group") prefix = s.userName(m.sender_id) + ": ";
    const body = m.body.replace(/\s+/g, " ").slice(0, 200);
    return { text: prefix + body, status, time: m.sent_at };
  }

  render(activeId) {
    const s = this.store;
    const q = this.filter.trim().toLowerCase();
    const all = s.sortedConversations();
    const list = q ? all.filter((c) => s.title(c).toLowerCase().includes(q)) : all;
    const focusedId = document.activeElement && document.activeElement.dataset
      ? document.activeElement.dataset.conv
      : null;
    const nodes = [];
    const seen = new Set();
    for (const c of list) {
      const id = c.conversation_id;
      seen.add(id);
      const title = s.title(c);
      const pv = this.preview(c);
      const peer = s.peerId(c);
      const online = c.type === "direct" && peer !== s.me.user_id && s.presenceOf(peer).status === "online";
      const unread = c.unread || 0;
      const sig = JSON.stringify([title, pv, online, unread, id === activeId, c.last_message && c.last_message.sent_at]);
      let li = this.items.get(id);
      if (!li || li.dataset.sig !== sig) {
        const a = h(
          "a",
          {
            href: "#/c/" + encodeURIComponent(id),
            class: "conv-item" + (id === activeId ? " active" : "") + (unread ? " has-unread" : ""),
            "aria-current": id === activeId ? "page" : null,
            dataset: { conv: id },
          },
          avatar(c.type === "group" ? id : peer, title, {
            group: c.type === "group",
            presence: online ? "online" : null,
          }),
          h(
            "span",
            { class: "conv-main" },
            h(
              "span",
              { class: "conv-top" },
              h("span", { class: "conv-title" }, title),
              h("span", { class: "conv-time" }, listTime(pv.time || s.activity(c))),
            ),
            h(
              "span",
              { class: "conv-bottom" },
              h(
                "span",
                { class: "conv-preview" + (pv.typing ? " is-typing" : "") },
                pv.status ? tick(pv.status) : null,
                h("span", { class: "conv-preview-text" }, pv.text),
              ),
              unread
                ? h("span", { class: "badge", role: "img", "aria-label": `${unread} new`, title: `${unread} new` }, unread > 99 ? "99+" : String(unread))
                : null,
            ),
          ),
        );
        const fresh = h("li", { dataset: { sig } }, a);
        if (li) li.replaceWith(fresh);
        li = fresh;
        this.items.set(id, li);
      }
      nodes.push(li);
    }
    for (const id of [...this.items.keys()]) if (!seen.has(id)) this.items.delete(id);
    const current = [...this.ul.children];
    if (current.length !== nodes.length || current.some((n, i) => n !== nodes[i])) {
      this.ul.replaceChildren(...nodes);
    }
    if (focusedId && document.activeElement === document.body) {
      const again = this.ul.querySelector(`[data-conv="${CSS.escape(focusedId)}"]`);
      if (again) again.focus();
    }
    this.empty.hidden = !s.loaded || all.length > 0;
    this.noMatch.hidden = !q || list.length > 0;
    this.noMatch.textContent = q ? `No chats match “${this.filter.trim()}”` : "";
  }
}
