// The client's model: conversations, history pages, the outbox of unsent
// messages, users, presence and typing. It applies server events and tells the
// views what changed through "change" events; the views never talk to the
// network themselves.

import { ApiError } from "./api.js";

const PAGE = 50;
const TYPING_SHOW_MS = 5000;
const TYPING_SEND_EVERY_MS = 2500;
const RETRYABLE = new Set(["unavailable", "rate_limited", "internal", "network"]);

export function newId() {
  if (globalThis.crypto && crypto.randomUUID && window.isSecureContext) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

function keyOf(m) {
  return m.sender_id + "\u0000" + m.client_msg_id;
}

class History {
  constructor() {
    this.byKey = new Map();
    this.loaded = false; // the newest page has been fetched
    this.hasMore = true; // older pages exist on the server
    this.loadingOlder = false;
    this.loadingNewest = null;
    this.sorted = null;
  }
  get oldest() {
    const list = this.list();
    return list.length ? list[0].seq : null;
  }
  get newest() {
    const list = this.list();
    return list.length ? list[list.length - 1].seq : 0;
  }
  add(m) {
    const k = keyOf(m);
    const had = this.byKey.get(k);
    if (had && had.seq === m.seq) return false;
    this.byKey.set(k, m);
    this.sorted = null;
    return true;
  }
  list() {
    if (!this.sorted) this.sorted = [...this.byKey.values()].sort((a, b) => a.seq - b.seq);
    return this.sorted;
  }
}

export class Store extends EventTarget {
  constructor({ api, connection, session }) {
    super();
    this.api = api;
    this.conn = connection;
    this.session = session;
    this.me = { user_id: session.user_id, username: session.username, display_name: "" };
    this.conversations = new Map();
    this.histories = new Map();
    this.pending = new Map();
    this.users = new Map();
    this.presence = new Map();
    this.presenceSupported = true;
    this.contactsSupported = true;
    this.typing = new Map(); // conversation_id -> Map(user_id -> timer)
    this.typingSentAt = new Map();
    this.cursor = null;
    this.activeId = null;
    this.readQueue = new Map();
    this.deliveredQueue = new Map();
    this.watermarkTimer = null;
    this.loaded = false;
    this.resyncing = null;
    this.userFetches = new Map();
    this.outboxKey = "parley.outbox." + session.user_id;
    this.loadOutbox();

    connection.addEventListener("ready", (e) => this.onReady(e.detail));
    connection.addEventListener("frame", (e) => this.onFrame(e.detail));
    connection.addEventListener("expired", () => this.resync());
    connection.addEventListener("state", () => this.emit("connection"));
  }

  emit(what, id = null) {
    this.dispatchEvent(new CustomEvent("change", { detail: { what, id } }));
  }

  // ---------------------------------------------------------------- boot / sync
  async boot() {
    const meP = this.api.user(this.me.user_id).then((u) => {
      this.me = u;
      this.users.set(u.user_id, u);
    });
    await this.loadState();
    await meP;
    this.loaded = true;
    this.emit("list");
    this.conn.start();
  }

  // Take the current cursor first, then read state: events that happen in
  // between are replayed by the socket (?since=), and applying them twice is
  // harmless (everything here is keyed by seq or is a max()).
  async loadState() {
    const { next } = await this.api.currentCursor();
    const all = [];
    let before = null;
    for (let page = 0; page < 20; page++) {
      const { conversations } = await this.api.conversations(100, before);
      all.push(...conversations);
      if (conversations.length < 100) break;
      before = this.activity(conversations[conversations.length - 1]);
    }
    for (const c of all) this.upsertConversation(c, { silent: true });
    this.cursor = next;
    this.ensureUsers(this.memberIds());
    this.refreshPresence();
    for (const c of all) {
      const mine = this.myMember(c);
      if (mine && mine.delivered_seq < c.last_seq) this.queueWatermark("delivered", c.conversation_id, c.last_seq);
    }
    for (const id of [...this.histories.keys()]) {
      if (id === this.activeId) this.loadNewest(id);
      else this.histories.delete(id); // reloaded when opened
    }
  }

  async resync() {
    if (this.resyncing) return this.resyncing;
    this.conn.pause();
    this.resyncing = (async () => {
      for (;;) {
        try {
          await this.loadState();
          break;
        } catch {
          await new Promise((r) => setTimeout(r, 2000));
        }
      }
    })();
    try {
      await this.resyncing;
    } finally {
      this.resyncing = null;
      this.emit("list");
      this.conn.resume();
    }
  }

  onReady(frame) {
    if (this.cursor === null) this.cursor = frame.cursor;
    this.flushOutbox();
    this.flushWatermarks();
    this.refreshPresence();
  }

  onFrame(f) {
    if (typeof f.cursor === "number" && (this.cursor === null || f.cursor > this.cursor)) {
      this.cursor = f.cursor;
    }
    switch (f.type) {
      case "message":
        return this.onMessage(f.message);
      case "receipt":
        return this.onReceipt(f);
      case "conversation":
        return this.onConversation(f.conversation);
      case "presence":
        this.presence.set(f.user_id, { status: f.status, last_seen: f.last_seen });
        return this.emit("presence", f.user_id);
      case "typing":
        return this.onTyping(f.conversation_id, f.user_id);
      case "ack":
        return this.onAck(f);
      case "error":
        return this.onError(f);
      default:
        return undefined;
    }
  }

  // ---------------------------------------------------------------- conversations
  activity(c) {
    let t = c.last_message ? c.last_message.sent_at : c.created_at;
    for (const p of this.pending.values()) {
      if (p.conversation_id === c.conversation_id && p.created > t) t = p.created;
    }
    return t;
  }

  sortedConversations() {
    return [...this.conversations.values()]
      .filter((c) => !c.hidden)
      .sort((a, b) => this.activity(b) - this.activity(a));
  }

  myMember(c) {
    return c.members.find((m) => m.user_id === this.me.user_id) || null;
  }

  isMember(c) {
    return !!this.myMember(c);
  }

  isAdmin(c) {
    const m = this.myMember(c);
    return !!m && m.role === "admin";
  }

  peerId(c) {
    if (c.type !== "direct") return null;
    const other = c.members.find((m) => m.user_id !== this.me.user_id);
    return other ? other.user_id : this.me.user_id;
  }

  memberIds(c = null) {
    const ids = new Set();
    const list = c ? [c] : this.conversations.values();
    for (const conv of list) for (const m of conv.members) ids.add(m.user_id);
    ids.delete(this.me.user_id);
    return [...ids];
  }

  upsertConversation(c, { silent = false } = {}) {
    const old = this.conversations.get(c.conversation_id);
    const merged = { ...c };
    if (old) {
      // Never let an older snapshot move watermarks or history backwards.
      merged.last_seq = Math.max(old.last_seq, c.last_seq);
      if (old.last_message && (!c.last_message || old.last_message.seq > c.last_message.seq)) {
        merged.last_message = old.last_message;
      }
      for (const m of merged.members) {
        const was = old.members.find((x) => x.user_id === m.user_id);
        if (was) {
          m.delivered_seq = Math.max(m.delivered_seq, was.delivered_seq);
          m.read_seq = Math.max(m.read_seq, was.read_seq);
        }
      }
      merged.hidden = old.hidden && !this.isMemberOf(merged);
    }
    this.conversations.set(c.conversation_id, merged);
    if (!silent) {
      this.ensureUsers(this.memberIds(merged));
      this.emit("list");
      this.emit("conversation", c.conversation_id);
    }
    return merged;
  }

  isMemberOf(c) {
    return c.members.some((m) => m.user_id === this.me.user_id);
  }

  async fetchConversation(id) {
    try {
      const c = await this.api.conversation(id);
      const merged = this.upsertConversation(c);
      this.refreshPresence(this.memberIds(merged));
      return merged;
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) return null;
      throw err;
    }
  }

  onConversation(c) {
    const merged = this.upsertConversation(c);
    if (!this.isMemberOf(merged)) merged.removed = true;
    else merged.removed = false;
    this.refreshPresence(this.memberIds(merged));
    this.emit("conversation", c.conversation_id);
  }

  // ---------------------------------------------------------------- users, presence
  userName(id) {
    if (id === this.me.user_id) return "You";
    const u = this.users.get(id);
    return u ? u.display_name || u.username : "…";
  }

  fullName(id) {
    const u = id === this.me.user_id ? this.me : this.users.get(id);
    return u ? u.display_name || u.username : "…";
  }

  title(c) {
    if (c.type === "group") {
      if (c.title) return c.title;
      return c.members.map((m) => this.userName(m.user_id)).join(", ");
    }
    return this.fullName(this.peerId(c));
  }

  ensureUsers(ids) {
    const missing = ids.filter((id) => !this.users.has(id) && !this.userFetches.has(id));
    for (const id of missing) {
      const p = this.api
        .user(id)
        .then((u) => {
          this.users.set(id, u);
          this.emit("users", id);
        })
        .catch(() => {})
        .finally(() => this.userFetches.delete(id));
      this.userFetches.set(id, p);
    }
    return Promise.all(ids.map((id) => this.userFetches.get(id)).filter(Boolean));
  }

  async refreshPresence(ids = null) {
    if (!this.presenceSupported) return;
    const want = ids || this.memberIds();
    for (let i = 0; i < want.length; i += 100) {
      const chunk = want.slice(i, i + 100);
      try {
        const { presence } = await this.api.presence(chunk);
        for (const [id, p] of Object.entries(presence || {})) this.presence.set(id, p);
        this.emit("presence");
      } catch (err) {
        if (err instanceof ApiError && (err.status === 404 || err.status === 405)) {
          this.presenceSupported = false;
        }
        return;
      }
    }
  }

  presenceOf(id) {
    return this.presence.get(id) || { status: "unknown", last_seen: null };
  }

  async contacts() {
    if (!this.contactsSupported) return [];
    try {
      const { contacts } = await this.api.contacts();
      for (const c of contacts) {
        this.users.set(c.user_id, {
          user_id: c.user_id,
          username: c.username,
          display_name: c.display_name,
        });
        if (c.presence) this.presence.set(c.user_id, c.presence);
      }
      return contacts;
    } catch (err) {
      if (err instanceof ApiError && (err.status === 404 || err.status === 405)) {
        this.contactsSupported = false;
      }
      return [];
    }
  }

  // ---------------------------------------------------------------- history
  history(id) {
    let h = this.histories.get(id);
    if (!h) {
      h = new History();
      this.histories.set(id, h);
    }
    return h;
  }

  // Messages to show in a conversation: the stored ones in seq order, then
  // the ones still on their way (optimistic), oldest first.
  messagesOf(id) {
    const h = this.history(id);
    const sent = h.list();
    const waiting = [...this.pending.values()]
      .filter((p) => p.conversation_id === id)
      .sort((a, b) => a.created - b.created)
      .map((p) => ({
        conversation_id: id,
        seq: null,
        message_id: null,
        sender_id: this.me.user_id,
        client_msg_id: p.client_msg_id,
        body: p.body,
        sent_at: p.created,
        pending: p.status,
        error: p.error,
      }));
    return waiting.length ? sent.concat(waiting) : sent;
  }

  loadNewest(id) {
    const h = this.history(id);
    if (h.loadingNewest) return h.loadingNewest;
    h.loadingNewest = (async () => {
      try {
        const page = await this.api.messages(id, { limit: PAGE });
        const prevNewest = h.newest;
        const known = h.loaded && h.byKey.size > 0;
        if (known && page.messages.length && page.messages[0].seq > prevNewest + 1) {
          // a hole between what we held and the newest page: start over from here
          h.byKey.clear();
          h.sorted = null;
          h.hasMore = page.has_more;
        } else if (!known) {
          h.hasMore = page.has_more;
        }
        for (const m of page.messages) h.add(m);
        h.loaded = true;
        h.error = null;
      } catch (err) {
        h.error = err.message;
      } finally {
        h.loadingNewest = null;
        this.emit("messages", id);
      }
    })();
    return h.loadingNewest;
  }

  async loadOlder(id) {
    const h = this.history(id);
    if (!h.loaded || !h.hasMore || h.loadingOlder) return false;
    const before = h.oldest;
    if (!before || before <= 1) {
      h.hasMore = false;
      return false;
    }
    h.loadingOlder = true;
    this.emit("messages", id);
    try {
      const page = await this.api.messages(id, { before, limit: PAGE });
      for (const m of page.messages) h.add(m);
      h.hasMore = page.has_more;
      return page.messages.length > 0;
    } catch {
      return false;
    } finally {
      h.loadingOlder = false;
      this.emit("messages", id, { older: true });
    }
  }

  // Fetch everything after the newest message we hold (a hole after a resync).
  async fillGap(id, from) {
    const h = this.history(id);
    if (h.filling) return;
    h.filling = true;
    try {
      let after = from;
      for (let i = 0; i < 20; i++) {
        const page = await this.api.messages(id, { after, limit: 200 });
        for (const m of page.messages) h.add(m);
        if (!page.has_more || !page.messages.length) break;
        after = page.messages[page.messages.length - 1].seq;
      }
    } catch {
      /* the next event or reconnect tries again */
    } finally {
      h.filling = false;
      this.emit("messages", id);
    }
  }

  // ---------------------------------------------------------------- incoming
  onMessage(m) {
    const id = m.conversation_id;
    const c = this.conversations.get(id);
    const h = this.histories.get(id);
    if (h && h.loaded) {
      const newest = h.newest;
      const gap = m.seq > newest + 1 && h.byKey.size > 0;
      h.add(m);
      if (gap) this.fillGap(id, newest);
    } else if (h && h.loadingNewest) {
      // The page on its way may have been read before this message was stored
      // (a read waits for the sync of what it saw, so its reply can come after
      // this event): keep the message, the page is merged into it.
      h.add(m);
    }
    if (m.sender_id === this.me.user_id && this.pending.has(m.client_msg_id)) {
      this.pending.delete(m.client_msg_id);
      this.saveOutbox();
    }
    this.clearTyping(id, m.sender_id);
    if (!c) {
      this.fetchConversation(id);
      if (m.sender_id !== this.me.user_id) this.queueWatermark("delivered", id, m.seq);
      return;
    }
    const isNew = m.seq > c.last_seq;
    // A sender has read everything up to its own message (docs/protocol.md,
    // "Sending"); no receipt is logged for that move, so infer it here.
    const sender = c.members.find((x) => x.user_id === m.sender_id);
    if (sender) {
      sender.read_seq = Math.max(sender.read_seq, m.seq);
      sender.delivered_seq = Math.max(sender.delivered_seq, m.seq);
    }
    if (!c.last_message || m.seq >= c.last_message.seq) c.last_message = m;
    c.last_seq = Math.max(c.last_seq, m.seq);
    if (c.hidden) c.hidden = false;
    if (m.sender_id === this.me.user_id) {
      const mine = this.myMember(c);
      if (mine) {
        mine.read_seq = Math.max(mine.read_seq, m.seq);
        mine.delivered_seq = Math.max(mine.delivered_seq, m.seq);
      }
    } else {
      const mine = this.myMember(c);
      if (isNew && mine && mine.read_seq < m.seq) c.unread = (c.unread || 0) + 1;
      if (mine && mine.delivered_seq < m.seq) this.queueWatermark("delivered", id, m.seq);
    }
    this.emit("list");
    this.emit("messages", id);
    this.emit("incoming", id);
  }

  onReceipt(r) {
    const c = this.conversations.get(r.conversation_id);
    if (!c) return;
    let m = c.members.find((x) => x.user_id === r.user_id);
    if (!m) {
      m = { user_id: r.user_id, role: "member", delivered_seq: 0, read_seq: 0 };
      c.members.push(m);
    }
    m.delivered_seq = Math.max(m.delivered_seq, r.seq);
    if (r.status === "read") m.read_seq = Math.max(m.read_seq, r.seq);
    if (r.user_id === this.me.user_id && r.status === "read") {
      if (r.seq >= c.last_seq) c.unread = 0;
      else this.fetchConversation(c.conversation_id);
    }
    this.emit("list");
    this.emit("receipts", r.conversation_id);
  }

  onTyping(id, userId) {
    if (userId === this.me.user_id) return;
    let m = this.typing.get(id);
    if (!m) {
      m = new Map();
      this.typing.set(id, m);
    }
    clearTimeout(m.get(userId));
    m.set(
      userId,
      setTimeout(() => this.clearTyping(id, userId), TYPING_SHOW_MS),
    );
    this.emit("typing", id);
  }

  clearTyping(id, userId) {
    const m = this.typing.get(id);
    if (!m || !m.has(userId)) return;
    clearTimeout(m.get(userId));
    m.delete(userId);
    this.emit("typing", id);
  }

  typingIn(id) {
    const m = this.typing.get(id);
    return m ? [...m.keys()] : [];
  }

  // ---------------------------------------------------------------- outgoing
  loadOutbox() {
    try {
      const saved = JSON.parse(localStorage.getItem(this.outboxKey) || "[]");
      for (const p of saved) this.pending.set(p.client_msg_id, { ...p, status: "sending" });
    } catch {
      /* a broken outbox is dropped */
    }
  }

  saveOutbox() {
    try {
      const list = [...this.pending.values()].map(({ client_msg_id, conversation_id, body, created }) => ({
        client_msg_id,
        conversation_id,
        body,
        created,
      }));
      if (list.length) localStorage.setItem(this.outboxKey, JSON.stringify(list));
      else localStorage.removeItem(this.outboxKey);
    } catch {
      /* storage full or disabled: the outbox lives in memory only */
    }
  }

  send(id, body) {
    const p = {
      client_msg_id: newId(),
      conversation_id: id,
      body,
      created: Date.now(),
      status: "sending",
    };
    this.pending.set(p.client_msg_id, p);
    this.saveOutbox();
    this.transmit(p);
    this.emit("messages", id);
    this.emit("list");
  }

  transmit(p) {
    this.conn.send({
      type: "send",
      conversation_id: p.conversation_id,
      client_msg_id: p.client_msg_id,
      body: p.body,
    });
  }

  retry(clientMsgId) {
    const p = this.pending.get(clientMsgId);
    if (!p) return;
    p.status = "sending";
    p.error = null;
    this.transmit(p);
    this.emit("messages", p.conversation_id);
  }

  discard(clientMsgId) {
    const p = this.pending.get(clientMsgId);
    if (!p) return;
    this.pending.delete(clientMsgId);
    this.saveOutbox();
    this.emit("messages", p.conversation_id);
    this.emit("list");
  }

  // After (re)connecting every unacknowledged message goes again with the same
  // client_msg_id: the server stores each one once, whatever happened before.
  flushOutbox() {
    const list = [...this.pending.values()]
      .filter((p) => p.status === "sending")
      .sort((a, b) => a.created - b.created);
    for (const p of list) this.transmit(p);
  }

  onAck(a) {
    const p = this.pending.get(a.client_msg_id);
    const c = this.conversations.get(a.conversation_id);
    if (p) {
      const m = {
        conversation_id: a.conversation_id,
        seq: a.seq,
        message_id: a.message_id,
        sender_id: this.me.user_id,
        client_msg_id: a.client_msg_id,
        body: p.body,
        sent_at: a.sent_at,
      };
      this.pending.delete(a.client_msg_id);
      this.saveOutbox();
      const h = this.histories.get(a.conversation_id);
      if (h && (h.loaded || h.loadingNewest)) h.add(m); // as in onMessage
      if (c) {
        if (!c.last_message || m.seq >= c.last_message.seq) c.last_message = m;
        c.last_seq = Math.max(c.last_seq, m.seq);
        const mine = this.myMember(c);
        if (mine) {
          mine.read_seq = Math.max(mine.read_seq, m.seq);
          mine.delivered_seq = Math.max(mine.delivered_seq, m.seq);
        }
      }
    }
    this.emit("messages", a.conversation_id);
    this.emit("list");
  }

  onError(f) {
    const p = f.ref ? this.pending.get(f.ref) : null;
    if (!p) return;
    if (RETRYABLE.has(f.code)) {
      setTimeout(() => {
        if (this.pending.get(p.client_msg_id) === p && p.status === "sending") this.transmit(p);
      }, 2000);
      return;
    }
    p.status = "failed";
    p.error =
      f.code === "body_too_large" ? "Message is too long" : f.message || "Couldn't send this message";
    this.emit("messages", p.conversation_id);
  }

  // ---------------------------------------------------------------- receipts
  queueWatermark(kind, id, seq) {
    const q = kind === "read" ? this.readQueue : this.deliveredQueue;
    if ((q.get(id) || 0) >= seq) return;
    q.set(id, seq);
    clearTimeout(this.watermarkTimer);
    this.watermarkTimer = setTimeout(() => this.flushWatermarks(), 60);
  }

  flushWatermarks() {
    for (const [q, type] of [
      [this.readQueue, "read"],
      [this.deliveredQueue, "delivered"],
    ]) {
      for (const [id, seq] of [...q]) {
        if (type === "delivered" && (this.readQueue.get(id) || 0) >= seq) {
          q.delete(id);
          continue;
        }
        if (this.conn.send({ type, conversation_id: id, seq })) q.delete(id);
      }
    }
  }

  markRead(id) {
    const c = this.conversations.get(id);
    if (!c) return;
    const mine = this.myMember(c);
    if (!mine) return;
    const seq = c.last_seq;
    if (seq <= 0 || (mine.read_seq >= seq && !c.unread)) return;
    mine.read_seq = Math.max(mine.read_seq, seq);
    mine.delivered_seq = Math.max(mine.delivered_seq, seq);
    c.unread = 0;
    this.queueWatermark("read", id, seq);
    this.emit("list");
  }

  // Where the other members are: the lowest watermark among them decides the
  // tick, so "read" in a group means read by everyone.
  tickFor(c, m) {
    if (m.pending === "failed") return "failed";
    if (m.seq === null || m.seq === undefined) return "sending";
    const others = c.members.filter((x) => x.user_id !== this.me.user_id);
    if (!others.length) return "read";
    let read = true;
    let delivered = true;
    for (const o of others) {
      if (o.read_seq < m.seq) read = false;
      if (o.delivered_seq < m.seq && o.read_seq < m.seq) delivered = false;
    }
    if (read) return "read";
    if (delivered) return "delivered";
    return "sent";
  }

  totalUnread() {
    let n = 0;
    for (const c of this.conversations.values()) if (!c.hidden) n += c.unread || 0;
    return n;
  }

  typingNotice(id) {
    const now = Date.now();
    if (now - (this.typingSentAt.get(id) || 0) < TYPING_SEND_EVERY_MS) return;
    if (this.conn.send({ type: "typing", conversation_id: id })) this.typingSentAt.set(id, now);
  }

  // ---------------------------------------------------------------- actions
  async findUser(username) {
    const name = username.trim().replace(/^@/, "").toLowerCase();
    if (!name) throw new ApiError(422, "validation_error", "Enter a username");
    try {
      return await this.api.userByName(name);
    } catch (err) {
      if (err instanceof ApiError && (err.status === 404 || err.status === 422)) {
        throw new ApiError(404, "not_found", `No one is called “${name}”`);
      }
      throw err;
    }
  }

  async startDirect(username) {
    const user = await this.findUser(username);
    this.users.set(user.user_id, user);
    const c = await this.api.openDirect(user.user_id);
    if (this.contactsSupported && user.user_id !== this.me.user_id) {
      this.api.addContact(user.user_id).catch(() => {});
    }
    const merged = this.upsertConversation(c);
    merged.hidden = false;
    this.refreshPresence([user.user_id]);
    return merged;
  }

  async createGroup(title, usernames) {
    const users = [];
    for (const name of usernames) users.push(await this.findUser(name));
    for (const u of users) this.users.set(u.user_id, u);
    const c = await this.api.createGroup(
      title,
      users.map((u) => u.user_id).filter((id) => id !== this.me.user_id),
    );
    const merged = this.upsertConversation(c);
    this.refreshPresence(this.memberIds(merged));
    return merged;
  }

  async addMember(id, username) {
    const user = await this.findUser(username);
    this.users.set(user.user_id, user);
    await this.api.addMember(id, user.user_id);
    await this.fetchConversation(id);
  }

  async removeMember(id, userId) {
    await this.api.removeMember(id, userId);
    await this.fetchConversation(id);
  }

  async leave(id) {
    await this.api.removeMember(id, this.me.user_id);
    const c = this.conversations.get(id);
    if (c) {
      c.hidden = true;
      c.removed = true;
      c.members = c.members.filter((m) => m.user_id !== this.me.user_id);
    }
    this.emit("list");
  }

  async rename(id, title) {
    const c = await this.api.rename(id, title);
    if (c && c.conversation_id) this.upsertConversation(c);
    else await this.fetchConversation(id);
  }
}
