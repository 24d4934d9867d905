// Parley service worker: keeps the app shell available offline (network
// first, cache as fallback; the API is never cached) and shows push
// notifications that open the conversation when clicked.

const CACHE = "parley-shell-v2";
const SHELL = [
  "/",
  "/app/styles.css",
  "/app/js/app.js",
  "/app/js/api.js",
  "/app/js/connection.js",
  "/app/js/dom.js",
  "/app/js/format.js",
  "/app/js/push.js",
  "/app/js/session.js",
  "/app/js/store.js",
  "/app/js/views/auth.js",
  "/app/js/views/chat.js",
  "/app/js/views/dialogs.js",
  "/app/js/views/list.js",
  "/app/icons/icon.svg",
  "/manifest.webmanifest",
];

self.addEventListener("install", (event) => {
  event.waitUntil(
    caches
      .open(CACHE)
      .then((c) => c.addAll(SHELL))
      .catch(() => {})
      .then(() => self.skipWaiting()),
  );
});

self.addEventListener("activate", (event) => {
  event.waitUntil(
    caches
      .keys()
      .then((keys) => Promise.all(keys.filter((k) => k !== CACHE).map((k) => caches.delete(k))))
      .then(() => self.clients.claim()),
  );
});

self.addEventListener("fetch", (event) => {
  const req = event.request;
  if (req.method !== "GET") return;
  const url = new URL(req.url);
  if (url.origin !== self.location.origin) return;
  const shell = url.pathname === "/" || url.pathname.startsWith("/app/") || url.pathname === "/manifest.webmanifest";
  if (!shell) return; // API calls and the WebSocket go straight to the network
  event.respondWith(
    fetch(req)
      .then((res) => {
        if (res.ok) {
          const copy = res.clone();
          caches.open(CACHE).then((c) => c.put(req, copy)).catch(() => {});
        }
        return res;
      })
      .catch(() => caches.match(req, { ignoreSearch: true }).then((hit) => hit || Response.error())),
  );
});

// The push payload is JSON (docs/push.md, "Payload"): {type: "message", title,
// body, tag, conversation_id, conversation, sender, message, count, unread}.
// Older or foreign shapes still give a sensible notification.
function describe(data) {
  const m = data.message || {};
  const conversationId = String(data.conversation_id || m.conversation_id || "") || null;
  const sender = data.sender && (data.sender.display_name || data.sender.username);
  const title = typeof data.title === "string" && data.title ? data.title : sender || "New message";
  const body = typeof data.body === "string" ? data.body : typeof m.body === "string" ? m.body : "";
  const count = Number(data.count) || 1;
  return {
    title: title.slice(0, 200),
    body: body.slice(0, 400),
    conversationId,
    // One notification per conversation: a newer one replaces it on screen.
    tag: String(data.tag || conversationId || "parley"),
    // Coalesced messages (count > 1) alert again; otherwise the replacement is quiet.
    renotify: count > 1,
    timestamp: Number(m.sent_at) || Date.now(),
  };
}

function conversationUrl(id) {
  return id ? "/#/c/" + encodeURIComponent(id) : "/";
}

// Is someone looking at this very conversation right now? Then the app shows
// the message and a notification would only interrupt. Only the page knows
// what it shows (a client's URL here does not follow its #/c/<id> route), so
// focused, visible windows are asked; no answer in time means "no".
function ask(win, question, ms) {
  return new Promise((resolve) => {
    const channel = new MessageChannel();
    const timer = setTimeout(() => resolve(null), ms);
    channel.port1.onmessage = (e) => {
      clearTimeout(timer);
      resolve(e.data);
    };
    try {
      win.postMessage(question, [channel.port2]);
    } catch {
      clearTimeout(timer);
      resolve(null);
    }
  });
}

async function watching(wins, conversationId) {
  if (!conversationId) return false;
  const looking = wins.filter(
    (w) => w.focused && w.visibilityState === "visible" && new URL(w.url).origin === self.location.origin,
  );
  const answers = await Promise.all(looking.map((w) => ask(w, { type: "viewing" }, 500)));
  return answers.some((a) => a && a.conversation_id === conversationId);
}

self.addEventListener("push", (event) => {
  let data = {};
  try {
    data = event.data ? event.data.json() : {};
  } catch {
    data = { body: event.data ? event.data.text() : "" };
  }
  if (!data || typeof data !== "object") data = {};
  const n = describe(data);
  event.waitUntil(
    self.clients
      .matchAll({ type: "window", includeUncontrolled: true })
      .then((wins) => watching(wins, n.conversationId))
      .then((seen) => {
        if (seen) return undefined;
        return self.registration.showNotification(n.title, {
          body: n.body,
          tag: n.tag,
          renotify: n.renotify,
          timestamp: n.timestamp,
          icon: "/app/icons/icon.svg",
          badge: "/app/icons/icon.svg",
          data: { conversation_id: n.conversationId, url: conversationUrl(n.conversationId) },
        });
      }),
  );
});

// Show the conversation of a clicked notification: in an open Parley window
// (focused, visible or any, in that order) told by message to go there, or in
// a new window at its link. Named so tests can drive it: headless browsers
// cannot click a system notification.
async function openConversation(data) {
  const id = data && data.conversation_id ? String(data.conversation_id) : null;
  const wins = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
  const ours = wins.filter((w) => new URL(w.url).origin === self.location.origin);
  const win =
    ours.find((w) => w.focused) || ours.find((w) => w.visibilityState === "visible") || ours[0];
  if (!win) return self.clients.openWindow(conversationUrl(id));
  if (id) win.postMessage({ type: "open", conversation_id: id });
  try {
    return await win.focus();
  } catch {
    return win; // focusing is only allowed from a real click
  }
}

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  event.waitUntil(openConversation(event.notification.data));
});
