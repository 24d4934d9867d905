// Parley service worker: keeps the app shell available offline (network
// first, cache as fallback; the API is never cached) and shows push
// notifications that open the conversation when clicked.

const CACHE = "parley-shell-v1";
const SHELL = [
  "/",
  "/app/styles.css",
  "/app/js/app.js",
  "/app/js/api.js",
  "/app/js/connection.js",
  "/app/js/dom.js",
  "/app/js/format.js",
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

// A push payload is JSON. Accepted shapes: {title, body, conversation_id, tag}
// or {message: {conversation_id, body, ...}, sender: {display_name}}.
function describe(data) {
  const m = data.message || {};
  const conversationId = data.conversation_id || m.conversation_id || null;
  const sender = data.sender_name || (data.sender && (data.sender.display_name || data.sender.username));
  const title = data.title || sender || "New message";
  const body = typeof data.body === "string" ? data.body : typeof m.body === "string" ? m.body : "";
  return { title, body: body.slice(0, 300), conversationId, tag: data.tag || conversationId || "parley" };
}

self.addEventListener("push", (event) => {
  let data = {};
  try {
    data = event.data ? event.data.json() : {};
  } catch {
    data = { body: event.data ? event.data.text() : "" };
  }
  const n = describe(data);
  event.waitUntil(
    self.clients.matchAll({ type: "window", includeUncontrolled: true }).then((wins) => {
      // Someone is looking at Parley right now: no need to interrupt.
      if (wins.some((w) => w.visibilityState === "visible" && w.focused)) return undefined;
      return self.registration.showNotification(n.title, {
        body: n.body,
        tag: n.tag,
        renotify: true,
        icon: "/app/icons/icon.svg",
        badge: "/app/icons/icon.svg",
        data: { conversation_id: n.conversationId },
      });
    }),
  );
});

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  const id = event.notification.data && event.notification.data.conversation_id;
  const target = id ? "/#/c/" + encodeURIComponent(id) : "/";
  event.waitUntil(
    self.clients.matchAll({ type: "window", includeUncontrolled: true }).then((wins) => {
      const win = wins.find((w) => new URL(w.url).origin === self.location.origin);
      if (win) {
        if (id) win.postMessage({ type: "open", conversation_id: id });
        return win.focus();
      }
      return self.clients.openWindow(target);
    }),
  );
});
