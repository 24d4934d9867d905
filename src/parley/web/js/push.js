// Web Push for this browser: ask permission, subscribe with the server's VAPID
// key, and tell the server (POST /v1/push/subscriptions); turn it off again
// (unsubscribe + DELETE). See docs/push.md. Nothing here may break the app:
// every failure becomes a sentence for the user, never an exception.

// A browser whose push service cannot be reached (no network to it, or none
// at all) may leave subscribe() pending forever; give up after this long.
const SUBSCRIBE_TIMEOUT_MS = 15000;
const READY_TIMEOUT_MS = 10000;

export class PushError extends Error {}

export function pushSupport() {
  if (!("Notification" in window) || !("serviceWorker" in navigator) || !("PushManager" in window)) {
    return "This browser can’t show notifications from Parley.";
  }
  if (!window.isSecureContext) return "Notifications need a secure (https) connection to Parley.";
  return null;
}

// URL-safe base64 without padding (docs/push.md) to the bytes subscribe() wants.
export function keyBytes(b64url) {
  const b64 = b64url.replace(/-/g, "+").replace(/_/g, "/");
  const bin = atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4));
  return Uint8Array.from(bin, (c) => c.charCodeAt(0));
}

function sameKey(buffer, bytes) {
  if (!buffer) return true; // unknown: trust it
  const a = new Uint8Array(buffer);
  return a.length === bytes.length && a.every((x, i) => x === bytes[i]);
}

function timeout(promise, ms, message) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new PushError(message)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

function subscriptionBody(sub) {
  const json = sub.toJSON();
  return { endpoint: json.endpoint, keys: { p256dh: json.keys.p256dh, auth: json.keys.auth } };
}

export class PushSetup {
  constructor(api) {
    this.api = api;
  }

  async registration() {
    return timeout(
      navigator.serviceWorker.ready,
      READY_TIMEOUT_MS,
      "Parley’s service worker isn’t running in this browser.",
    );
  }

  // This browser's current subscription, or null (also when unsupported).
  async current() {
    if (pushSupport() || Notification.permission !== "granted") return null;
    try {
      const reg = await this.registration();
      return await reg.pushManager.getSubscription();
    } catch {
      return null;
    }
  }

  // Subscribe (asking permission first) and register with the server. Resolves
  // when notifications are on; rejects with a PushError carrying a sentence.
  async enable() {
    const unsupported = pushSupport();
    if (unsupported) throw new PushError(unsupported);
    let permission = Notification.permission;
    if (permission === "default") {
      try {
        permission = await Notification.requestPermission();
      } catch {
        permission = Notification.permission;
      }
    }
    if (permission === "denied") {
      throw new PushError(
        "Notifications are blocked for this site. Allow them in your browser’s site settings, then try again.",
      );
    }
    if (permission !== "granted") throw new PushError("Notifications weren’t allowed.");
    await this.subscribeAndSend();
  }

  async subscribeAndSend() {
    const reg = await this.registration();
    let key;
    try {
      key = keyBytes((await this.api.vapidPublicKey()).key);
    } catch {
      throw new PushError("Couldn’t get Parley’s push key from the server. Try again in a moment.");
    }
    let sub = await reg.pushManager.getSubscription();
    if (sub && !sameKey(sub.options && sub.options.applicationServerKey, key)) {
      // Made for another server key (the server's key was replaced): useless now.
      await sub.unsubscribe().catch(() => {});
      sub = null;
    }
    if (!sub) {
      try {
        sub = await timeout(
          reg.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: key }),
          SUBSCRIBE_TIMEOUT_MS,
          "timeout",
        );
      } catch (err) {
        throw new PushError(
          err instanceof PushError
            ? "Push notifications aren’t available: the browser’s push service didn’t answer."
            : "Push notifications aren’t available in this browser (private windows and some browsers have no push service).",
        );
      }
    }
    try {
      await this.api.addPushSubscription(subscriptionBody(sub));
    } catch (err) {
      // The server won't push to it: don't leave a dangling subscription.
      await sub.unsubscribe().catch(() => {});
      const reason = err && err.code === "push_endpoint_refused" ? " (it refused this browser’s push service)" : "";
      throw new PushError(`The server couldn’t turn on notifications${reason}. Try again later.`);
    }
    return sub;
  }

  // After login: if this browser is subscribed, tell the server again
  // (subscriptions belong to the signed-in user). Resolves to true when on.
  async resync() {
    const sub = await this.current();
    if (!sub) return false;
    await this.subscribeAndSend();
    return true;
  }

  // Turn notifications off for this browser.
  async disable() {
    const sub = await this.current();
    if (!sub) return;
    const endpoint = sub.endpoint;
    await sub.unsubscribe().catch(() => {});
    // Even if this fails the push service now answers 410 and the server forgets it.
    await this.api.removePushSubscription(endpoint).catch(() => {});
  }

  // On sign-out: the server stops notifying this browser for that user; the
  // browser keeps its subscription so the next sign-in can send it again.
  async forget() {
    const sub = await this.current();
    if (sub) await this.api.removePushSubscription(sub.endpoint).catch(() => {});
  }
}
