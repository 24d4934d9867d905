// Parley web client: boot, routing (#/ and #/c/<id>) and the main layout.

import { Api, ApiError } from "./api.js";
import { Connection } from "./connection.js";
import { avatar, h, icon } from "./dom.js";
import { PushError, PushSetup } from "./push.js";
import { clearSession, loadSession, saveSession } from "./session.js";
import { Store } from "./store.js";
import { authView } from "./views/auth.js";
import { ChatView } from "./views/chat.js";
import { groupInfoDialog, newChatDialog, newGroupDialog } from "./views/dialogs.js";
import { ConversationList } from "./views/list.js";

const root = document.getElementById("app");
let session = loadSession();
let teardown = null;

const api = new Api({
  getToken: () => (session ? session.token : null),
  onUnauthorized: () => signOut(false),
});
const push = new PushSetup(api);

function route() {
  const m = /^#\/c\/(.+)$/.exec(location.hash);
  return m ? decodeURIComponent(m[1]) : null;
}

function showAuth() {
  document.title = "Parley";
  root.replaceChildren(
    authView({
      api,
      onSession: (s) => {
        session = s;
        saveSession(s);
        // A conversation link (a notification opened while signed out) is
        // kept: showMain opens it, or falls back to the list if it isn't ours.
        if (location.hash && !route()) history.replaceState(null, "", location.pathname);
        showMain();
      },
    }),
  );
}

let signingOut = false;

async function signOut(tellServer = true) {
  if (!session || (tellServer && signingOut)) return;
  if (tellServer) {
    signingOut = true;
    // This browser stops getting the user's notifications (at most a short wait).
    await Promise.race([push.forget(), new Promise((r) => setTimeout(r, 3000))]);
    try {
      if (session) await api.logout();
    } catch {
      /* the token is forgotten here whatever the server says */
    } finally {
      signingOut = false;
    }
    if (!session) return;
  }
  session = null;
  clearSession();
  if (teardown) teardown();
  teardown = null;
  if (location.hash) history.replaceState(null, "", location.pathname);
  showAuth();
}

function showMain() {
  const connection = new Connection({
    getToken: () => session.token,
    getCursor: () => store.cursor,
  });
  const store = new Store({ api, connection, session });
  connection.addEventListener("unauthorized", () => signOut(false));

  // ------------------------------------------------------------ sidebar
  const meSlot = h("span", { class: "me" });
  const newGroup = h(
    "button",
    { type: "button", class: "icon-btn", "aria-label": "New group", title: "New group" },
    icon("group"),
  );
  const newChat = h(
    "button",
    { type: "button", class: "icon-btn icon-btn-accent", "aria-label": "New chat", title: "New chat" },
    icon("compose"),
  );
  const bell = h("button", { type: "button", class: "icon-btn bell-btn" });
  const logout = h(
    "button",
    { type: "button", class: "icon-btn", "aria-label": "Log out", title: "Log out" },
    icon("logout"),
  );
  const banner = h("div", { class: "conn-banner", role: "status", hidden: true });
  const notice = noticeArea();
  const search = h("input", {
    type: "search",
    class: "search-input",
    "aria-label": "Search chats",
    placeholder: "Search",
    autocomplete: "off",
  });
  const list = new ConversationList(store);
  const sidebar = h(
    "aside",
    { class: "sidebar", "aria-label": "Chats" },
    h("header", { class: "sidebar-head" }, meSlot, h("div", { class: "head-actions" }, bell, newGroup, newChat, logout)),
    banner,
    notice.el,
    h("div", { class: "search" }, icon("search", "icon search-icon"), search),
    list.el,
  );

  // ------------------------------------------------------------ chat pane
  const placeholder = h(
    "div",
    { class: "chat-empty" },
    h("img", { src: "/app/icons/icon.svg", alt: "", class: "chat-empty-logo", width: "96", height: "96" }),
    h("h2", {}, "Parley"),
    h("p", {}, "Pick a conversation, or start a new one with someone’s username."),
  );
  const pane = h("main", { class: "pane" }, placeholder);
  const shell = h("div", { class: "shell" }, sidebar, pane);
  root.replaceChildren(shell);

  let chat = null;
  function openChat(id) {
    if (chat && chat.id === id) {
      if (!matchMedia("(pointer: coarse)").matches) chat.input.focus();
      return;
    }
    store.activeId = id;
    if (!id) {
      chat = null;
      pane.replaceChildren(placeholder);
      shell.classList.remove("show-chat");
      return;
    }
    if (!store.conversations.has(id)) {
      if (!store.loaded) return; // opened once the list is in
      store
        .fetchConversation(id)
        .then((c) => {
          if (c && route() === id) {
            chat = null;
            openChat(id);
          } else if (!c && route() === id) location.hash = "#/";
        })
        .catch((err) => {
          // Not ours (a link from another account): back to the list.
          if (err instanceof ApiError && err.status === 403 && route() === id) location.hash = "#/";
        });
      return;
    }
    chat = new ChatView(store, id, {
      onBack: () => {
        location.hash = "#/";
      },
      onInfo: () => groupInfoDialog(store, id, { onLeft: () => (location.hash = "#/") }),
    });
    pane.replaceChildren(chat.el);
    shell.classList.add("show-chat");
    chat.mount();
    render();
    // Focus the composer where a keyboard is at hand; on touch screens that
    // would pop up the on-screen keyboard over the conversation.
    if (!matchMedia("(pointer: coarse)").matches) chat.input.focus();
  }

  function render() {
    const me = store.me;
    const sig = me.display_name + "|" + me.username;
    if (meSlot.dataset.sig !== sig) {
      meSlot.dataset.sig = sig;
      meSlot.replaceChildren(
        avatar(me.user_id, me.display_name || me.username),
        h(
          "span",
          { class: "me-text" },
          h("span", { class: "me-name" }, me.display_name || me.username),
          h("span", { class: "me-sub" }, "@" + (me.username || "")),
        ),
      );
    }
    list.render(store.activeId);
    if (chat) {
      chat.renderHeader();
      chat.renderMessages();
    }
    const n = store.totalUnread();
    document.title = n ? `(${n}) Parley` : "Parley";
  }

  let scheduled = false;
  function schedule() {
    if (scheduled) return;
    scheduled = true;
    queueMicrotask(() => {
      scheduled = false;
      render();
    });
  }
  store.addEventListener("change", (e) => {
    if (e.detail.what === "connection") updateBanner();
    schedule();
  });

  // The banner shows only when the socket has been down for a moment.
  let bannerTimer = null;
  function updateBanner() {
    const state = connection.state;
    clearTimeout(bannerTimer);
    if (state === "online") {
      banner.hidden = true;
      shell.classList.remove("is-disconnected");
      return;
    }
    bannerTimer = setTimeout(() => {
      banner.textContent = state === "offline" ? "Waiting for network…" : "Connecting…";
      banner.hidden = false;
      shell.classList.add("is-disconnected");
    }, 1200);
  }

  const goTo = (id) => {
    if (route() === id) openChat(id);
    else location.hash = "#/c/" + encodeURIComponent(id);
  };
  newChat.addEventListener("click", () => newChatDialog(store, { onOpen: goTo }));
  newGroup.addEventListener("click", () => newGroupDialog(store, { onOpen: goTo }));
  logout.addEventListener("click", () => signOut(true));

  // ------------------------------------------------------------ notifications
  let alive = true;
  let pushOn = false;
  let pushBusy = false;
  function showPush() {
    const label = pushOn ? "Disable notifications" : "Enable notifications";
    bell.setAttribute("aria-label", label);
    bell.title = pushOn ? "Notifications on. Click to turn them off" : label;
    bell.replaceChildren(icon(pushOn ? "bell" : "bell_off"));
    bell.classList.toggle("is-on", pushOn);
    bell.setAttribute("aria-busy", String(pushBusy));
  }
  async function togglePush() {
    if (pushBusy) return;
    pushBusy = true;
    showPush();
    notice.hide();
    const enabling = !pushOn;
    try {
      if (enabling) await push.enable();
      else await push.disable();
      if (!alive) return;
      pushOn = enabling;
      notice.show(enabling ? "Notifications on." : "Notifications off.", "info");
    } catch (err) {
      if (!alive) return;
      const text = err instanceof PushError ? err.message : "Couldn’t change notifications. Try again.";
      notice.show(text, "error");
    } finally {
      pushBusy = false;
      showPush();
    }
  }
  bell.addEventListener("click", togglePush);
  showPush();
  // Signed in: if this browser is subscribed, the server hears it again (for
  // this user, who may not be the one who subscribed it).
  push
    .resync()
    .then((on) => {
      if (!alive || pushBusy) return;
      pushOn = on;
      showPush();
    })
    .catch((err) => {
      if (!alive || pushBusy) return;
      pushOn = false;
      showPush();
      if (err instanceof PushError) notice.show(err.message, "error");
    });
  search.addEventListener("input", () => {
    list.filter = search.value;
    list.render(store.activeId);
  });
  search.addEventListener("keydown", (e) => {
    if (e.key === "Enter") {
      const first = list.ul.querySelector("a");
      if (first) first.click();
    }
  });

  const onHash = () => openChat(route());
  const onVisible = () => {
    if (chat) chat.maybeRead();
  };
  const onKey = (e) => {
    if (e.key === "Escape" && chat && !document.querySelector("dialog[open]") && shell.classList.contains("show-chat")) {
      if (getComputedStyle(sidebar).display === "none") location.hash = "#/";
    }
  };
  // "last seen 3 min ago" and list times age: refresh them now and then.
  const ticker = setInterval(() => {
    if (chat) chat.renderHeader();
  }, 30000);
  window.addEventListener("hashchange", onHash);
  document.addEventListener("visibilitychange", onVisible);
  window.addEventListener("focus", onVisible);
  document.addEventListener("keydown", onKey);
  teardown = () => {
    alive = false;
    notice.hide();
    window.removeEventListener("hashchange", onHash);
    document.removeEventListener("visibilitychange", onVisible);
    window.removeEventListener("focus", onVisible);
    document.removeEventListener("keydown", onKey);
    connection.stop();
    clearInterval(ticker);
    document.querySelectorAll("dialog").forEach((d) => d.remove());
  };

  render();
  updateBanner();
  (async function boot() {
    for (let attempt = 0; ; attempt++) {
      try {
        await store.boot();
        break;
      } catch (err) {
        if (!session) return; // signed out (401)
        banner.textContent = "Can’t reach Parley. Retrying…";
        banner.hidden = false;
        await new Promise((r) => setTimeout(r, Math.min(1000 * (attempt + 1), 5000)));
      }
    }
    banner.hidden = connection.state === "online";
    render();
    openChat(route());
  })();
}

// A short, non-blocking line under the header: information fades after a few
// seconds, an error stays until dismissed or replaced.
function noticeArea() {
  const text = h("span", { class: "notice-text" });
  const dismiss = h(
    "button",
    { type: "button", class: "notice-close", "aria-label": "Dismiss", title: "Dismiss" },
    icon("close"),
  );
  const el = h("div", { class: "notice", role: "status", "aria-live": "polite", hidden: true }, text, dismiss);
  let timer = null;
  const hide = () => {
    clearTimeout(timer);
    el.hidden = true;
    text.textContent = "";
  };
  dismiss.addEventListener("click", hide);
  return {
    el,
    hide,
    show(message, kind) {
      clearTimeout(timer);
      text.textContent = message;
      el.className = "notice notice-" + kind;
      el.hidden = false;
      if (kind !== "error") timer = setTimeout(hide, 4000);
    },
  };
}

// Messages from the service worker (sw.js): a notification click asks the
// window to show a conversation (signed out, the link waits in the URL until
// sign-in); before showing a notification it asks which conversation is on
// screen, so the one being read does not notify.
if ("serviceWorker" in navigator) {
  navigator.serviceWorker.addEventListener("message", (e) => {
    const d = e.data;
    if (!d) return;
    if (d.type === "open" && typeof d.conversation_id === "string" && d.conversation_id) {
      const target = "#/c/" + encodeURIComponent(d.conversation_id);
      if (location.hash !== target) location.hash = target;
    } else if (d.type === "viewing" && e.ports[0]) {
      const looking = session && document.visibilityState === "visible" && document.hasFocus();
      e.ports[0].postMessage({ conversation_id: looking ? route() : null });
    }
  });
  navigator.serviceWorker.startMessages();
}

if ("serviceWorker" in navigator && window.isSecureContext) {
  navigator.serviceWorker.register("/sw.js", { scope: "/" }).catch(() => {});
}

if (session) showMain();
else showAuth();
