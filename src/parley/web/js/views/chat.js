// One open conversation: header with presence or typing, the history (older
// pages load when scrolled to the top), ticks on your own messages and the
// composer (Enter sends, Shift+Enter adds a line).

import { avatar, h, icon } from "../dom.js";
import { clock, dayLabel, lastSeen, sameDay, stamp } from "../format.js";
import { tick } from "./list.js";

const NEAR_TOP = 400;
const NEAR_BOTTOM = 120;
const GROUP_GAP_MS = 5 * 60 * 1000;

function hue(id) {
  let x = 0;
  for (let i = 0; i < id.length; i++) x = (x * 31 + id.charCodeAt(i)) | 0;
  return Math.abs(x) % 8;
}

export class ChatView {
  constructor(store, id, { onBack, onInfo }) {
    this.store = store;
    this.id = id;
    this.items = new Map();
    this.seps = new Map();
    this.stuck = true; // keep the view at the newest message
    this.pinnedTop = 0; // scrollTop when last pinned to the bottom
    this.unseen = 0;

    const c = store.conversations.get(id);
    this.back = h(
      "button",
      { class: "icon-btn back-btn", type: "button", "aria-label": "Back to chats", title: "Back to chats" },
      icon("back"),
    );
    this.back.addEventListener("click", onBack);
    this.avatarSlot = h("span", { class: "chat-avatar" });
    this.titleEl = h("h2", { class: "chat-title", id: "chat-title" });
    this.subEl = h("p", { class: "chat-sub", "aria-live": "polite" });
    this.infoBtn = h(
      "button",
      { class: "icon-btn", type: "button", "aria-label": "Group info", title: "Group info" },
      icon("info"),
    );
    this.infoBtn.addEventListener("click", onInfo);
    this.infoBtn.hidden = !c || c.type !== "group";
    const headText = h("div", { class: "chat-head-text" }, this.titleEl, this.subEl);
    this.header = h("header", { class: "chat-head" }, this.back, this.avatarSlot, headText, this.infoBtn);

    this.olderStatus = h("div", { class: "older-status", role: "status" });
    this.list = h("ol", { class: "msg-list", "aria-label": "Conversation history" });
    this.typingBubble = h(
      "div",
      { class: "typing-bubble", "aria-hidden": "true" },
      h("span", { class: "dot" }),
      h("span", { class: "dot" }),
      h("span", { class: "dot" }),
    );
    this.scroller = h(
      "div",
      { class: "scroller", tabindex: "0", "aria-labelledby": "chat-title" },
      h("div", { class: "scroller-inner" }, this.olderStatus, this.list, this.typingBubble),
    );
    this.scroller.addEventListener("scroll", () => this.onScroll(), { passive: true });

    this.jump = h(
      "button",
      { class: "jump-btn", type: "button", "aria-label": "Jump to latest", title: "Jump to latest", hidden: true },
      icon("down"),
      h("span", { class: "jump-count" }),
    );
    this.jump.addEventListener("click", () => {
      this.toBottom(true);
      this.input.focus();
    });

    this.input = h("textarea", {
      class: "composer-input",
      rows: "1",
      "aria-label": "Message",
      placeholder: "Message",
      maxlength: "16000",
      enterkeyhint: "send",
    });
    this.sendBtn = h(
      "button",
      { class: "send-btn", type: "submit", "aria-label": "Send", title: "Send (Enter)" },
      icon("send"),
    );
    this.form = h("form", { class: "composer-form" }, this.input, this.sendBtn);
    this.form.addEventListener("submit", (e) => {
      e.preventDefault();
      this.submit();
    });
    this.input.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
        e.preventDefault();
        this.submit();
      }
    });
    this.input.addEventListener("input", () => {
      this.autosize();
      this.sendBtn.classList.toggle("ready", this.input.value.trim() !== "");
      if (this.input.value.trim()) store.typingNotice(id);
    });
    this.notice = h("p", { class: "composer-notice" });
    this.composer = h("footer", { class: "composer" }, this.form, this.notice);

    this.el = h(
      "section",
      { class: "chat-panel", "aria-labelledby": "chat-title" },
      this.header,
      h("div", { class: "chat-body" }, this.scroller, this.jump),
      this.composer,
    );

    this.list.addEventListener("click", (e) => {
      const btn = e.target.closest("button[data-action]");
      if (!btn) return;
      const key = btn.dataset.cmid;
      if (btn.dataset.action === "retry") store.retry(key);
      else if (btn.dataset.action === "discard") store.discard(key);
    });
  }

  mount() {
    this.renderHeader();
    this.renderMessages();
    this.toBottom();
    const h0 = this.store.history(this.id);
    if (!h0.loaded) this.store.loadNewest(this.id).then(() => this.toBottom());
  }

  autosize() {
    this.input.style.height = "auto";
    this.input.style.height = Math.min(this.input.scrollHeight, 160) + "px";
  }

  submit() {
    const body = this.input.value.trim();
    if (!body) return;
    const c = this.store.conversations.get(this.id);
    if (!c || !this.store.isMember(c)) return;
    this.store.send(this.id, body);
    this.input.value = "";
    this.autosize();
    this.sendBtn.classList.remove("ready");
    this.stuck = true;
    this.toBottom(true);
  }

  // ---------------------------------------------------------------- header
  renderHeader() {
    const s = this.store;
    const c = s.conversations.get(this.id);
    if (!c) return;
    const title = s.title(c);
    this.titleEl.textContent = title;
    const peer = s.peerId(c);
    const pres = c.type === "direct" ? s.presenceOf(peer) : null;
    const online = pres && pres.status === "online" && peer !== s.me.user_id;
    const sig = JSON.stringify([c.type, title, online]);
    if (this.avatarSlot.dataset.sig !== sig) {
      this.avatarSlot.dataset.sig = sig;
      this.avatarSlot.replaceChildren(
        avatar(c.type === "group" ? c.conversation_id : peer, title, {
          group: c.type === "group",
          presence: online ? "online" : null,
        }),
      );
    }
    this.infoBtn.hidden = c.type !== "group";
    const typers = s.typingIn(this.id);
    let sub = "";
    this.subEl.classList.toggle("is-typing", typers.length > 0);
    this.subEl.classList.toggle("is-online", !typers.length && !!online);
    if (typers.length) {
      if (c.type === "direct") sub = "typing…";
      else if (typers.length === 1) sub = `${s.userName(typers[0])} is typing…`;
      else if (typers.length === 2) sub = `${s.userName(typers[0])} and ${s.userName(typers[1])} are typing…`;
      else sub = `${typers.length} people are typing…`;
    } else if (c.type === "direct") {
      sub = peer === s.me.user_id ? "Notes to yourself" : lastSeen(pres);
    } else {
      const n = c.members.length;
      const on = c.members.filter(
        (m) => m.user_id !== s.me.user_id && s.presenceOf(m.user_id).status === "online",
      ).length;
      sub = `${n} member${n === 1 ? "" : "s"}` + (on ? `, ${on} online` : "");
    }
    this.subEl.textContent = sub;
    this.typingBubble.classList.toggle("show", typers.length > 0);
    const member = s.isMember(c);
    this.form.hidden = !member;
    this.notice.hidden = member;
    this.notice.textContent = member ? "" : "You can’t send messages here: you’re no longer a member of this group.";
  }

  // ---------------------------------------------------------------- messages
  messageNode(c, m, prev, next) {
    const s = this.store;
    const mine = m.sender_id === s.me.user_id;
    const startsRun =
      !prev || prev.sender_id !== m.sender_id || m.sent_at - prev.sent_at > GROUP_GAP_MS || !sameDay(prev.sent_at, m.sent_at);
    const endsRun =
      !next || next.sender_id !== m.sender_id || next.sent_at - m.sent_at > GROUP_GAP_MS || !sameDay(next.sent_at, m.sent_at);
    const status = mine ? s.tickFor(c, m) : null;
    const showSender = !mine && c.type === "group" && startsRun;
    const sig = [m.seq, status, startsRun, endsRun, showSender && s.userName(m.sender_id), m.error || ""].join("|");
    const key = m.sender_id + "\u0000" + m.client_msg_id;
    const old = this.items.get(key);
    if (old && old.dataset.sig === sig) return old;

    const text = h("span", { class: "msg-text" });
    text.textContent = m.body; // never innerHTML
    const meta = h(
      "span",
      { class: "msg-meta" },
      h("time", { datetime: new Date(m.sent_at).toISOString(), title: stamp(m.sent_at) }, clock(m.sent_at)),
      status ? tick(status) : null,
    );
    const li = h(
      "li",
      {
        class:
          "msg " +
          (mine ? "mine" : "theirs") +
          (startsRun ? " run-start" : "") +
          (endsRun ? " run-end" : "") +
          (m.pending ? " pending" : ""),
        dataset: { sig, seq: m.seq === null ? "" : String(m.seq) },
      },
      showSender ? h("span", { class: `msg-sender hue-text-${hue(m.sender_id)}` }, s.userName(m.sender_id)) : null,
      h("div", { class: "bubble" }, text, meta),
      m.pending === "failed"
        ? h(
            "div",
            { class: "msg-failed", role: "alert" },
            h("span", {}, (m.error || "Not sent") + "."),
            h("button", { type: "button", class: "link-btn", dataset: { action: "retry", cmid: m.client_msg_id } }, "Retry"),
            h("button", { type: "button", class: "link-btn", dataset: { action: "discard", cmid: m.client_msg_id } }, "Delete"),
          )
        : null,
    );
    this.items.set(key, li);
    return li;
  }

  separator(t) {
    const d = new Date(t);
    d.setHours(0, 0, 0, 0);
    const k = d.getTime();
    const label = dayLabel(t);
    let sep = this.seps.get(k);
    if (!sep || sep.dataset.label !== label) {
      sep = h("li", { class: "day-sep", dataset: { label } }, h("span", {}, label));
      this.seps.set(k, sep);
    }
    return sep;
  }

  renderMessages() {
    const s = this.store;
    const c = s.conversations.get(this.id);
    if (!c) return;
    const hist = s.history(this.id);
    const msgs = s.messagesOf(this.id);
    const fromBottom = this.scroller.scrollHeight - this.scroller.scrollTop;
    const wasAtBottom = this.atBottom();
    // The reader may have scrolled up since we pinned the view and the scroll
    // event is not in yet: never drag them back down.
    if (this.stuck && this.scroller.scrollTop + 1 < this.pinnedTop) this.stuck = false;
    const prevLast = this.lastKey;
    const prevFirst = this.firstKey;

    const nodes = [];
    for (let i = 0; i < msgs.length; i++) {
      const m = msgs[i];
      const prev = msgs[i - 1];
      if (!prev || !sameDay(prev.sent_at, m.sent_at)) nodes.push(this.separator(m.sent_at));
      nodes.push(this.messageNode(c, m, prev, msgs[i + 1]));
    }
    const current = [...this.list.children];
    if (current.length !== nodes.length || current.some((n, i) => n !== nodes[i])) {
      this.list.replaceChildren(...nodes);
    }

    if (!hist.loaded && hist.error) this.olderStatus.textContent = "Couldn’t load messages. Retrying when the connection is back.";
    else if (!hist.loaded) this.olderStatus.textContent = "Loading messages…";
    else if (hist.loadingOlder) this.olderStatus.textContent = "Loading earlier messages…";
    else if (!hist.hasMore && msgs.length) this.olderStatus.textContent = "This is the beginning of the conversation.";
    else if (!msgs.length) this.olderStatus.textContent = "No messages yet. Say hello!";
    else this.olderStatus.textContent = "";
    this.olderStatus.classList.toggle("is-loading", !hist.loaded || hist.loadingOlder);

    const last = msgs[msgs.length - 1];
    this.lastKey = last ? last.sender_id + "\u0000" + last.client_msg_id : null;
    this.firstKey = msgs.length ? msgs[0].sender_id + "\u0000" + msgs[0].client_msg_id : null;
    const grewAtEnd = this.lastKey !== prevLast;
    const grewAtStart = prevFirst && this.firstKey !== prevFirst;
    if (grewAtStart && !this.stuck) {
      // older messages went in above: keep what the reader was looking at in place
      this.scroller.scrollTop = this.scroller.scrollHeight - fromBottom;
    } else if (wasAtBottom || this.stuck) {
      this.toBottom();
    } else if (grewAtEnd && last && last.sender_id !== s.me.user_id) {
      this.unseen += 1;
    }
    this.updateJump();
    this.maybeRead();
    this.maybeLoadOlder();
  }

  atBottom() {
    const el = this.scroller;
    return el.scrollHeight - el.scrollTop - el.clientHeight < NEAR_BOTTOM;
  }

  toBottom(smooth = false) {
    this.stuck = true;
    this.unseen = 0;
    this.scroller.scrollTo({ top: this.scroller.scrollHeight, behavior: smooth ? "smooth" : "auto" });
    this.pinnedTop = this.scroller.scrollTop;
    this.updateJump();
  }

  updateJump() {
    const show = !this.atBottom() && !this.stuck;
    this.jump.hidden = !show;
    const count = this.jump.querySelector(".jump-count");
    count.textContent = show && this.unseen ? String(this.unseen) : "";
  }

  onScroll() {
    this.stuck = this.atBottom();
    if (this.stuck) {
      this.unseen = 0;
      this.pinnedTop = this.scroller.scrollTop;
    }
    this.updateJump();
    this.maybeRead();
    this.maybeLoadOlder();
  }

  maybeLoadOlder() {
    const hist = this.store.history(this.id);
    if (!hist.loaded || !hist.hasMore || hist.loadingOlder) return;
    if (this.scroller.scrollTop > NEAR_TOP && this.scroller.scrollHeight > this.scroller.clientHeight + NEAR_TOP) return;
    this.store.loadOlder(this.id);
  }

  // Read receipts go out only for what is on screen: the newest message is
  // visible and the page itself is visible.
  maybeRead() {
    if (document.visibilityState !== "visible") return;
    if (!this.el.isConnected || this.el.offsetParent === null) return;
    if (!this.atBottom()) return;
    this.store.markRead(this.id);
  }
}
