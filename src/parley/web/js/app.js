// Parley web client: boot, routing (#/ and #/c/<id>) and the main layout.

import { Api } from "./api.js";
import { Connection } from "./connection.js";
import { avatar, h, icon } from "./dom.js";
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
        if (location.hash) history.replaceState(null, "", location.pathname);
        showMain();
      },
    }),
  );
}

async function signOut(tellServer = true) {
  if (!session) return;
  if (tellServer) {
    try {
      await api.logout();
    } catch {
      /* the token is forgotten here whatever the server says */
    }
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
  const logout = h(
    "button",
    { type: "button", class: "icon-btn", "aria-label": "Log out", title: "Log out" },
    icon("logout"),
  );
  const banner = h("div", { class: "conn-banner", role: "status", hidden: true });
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
    h("header", { class: "sidebar-head" }, meSlot, h("div", { class: "head-actions" }, newGroup, newChat, logout)),
    banner,
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
      store.fetchConversation(id).then((c) => {
        if (c && route() === id) {
          chat = null;
          openChat(id);
        } else if (!c) location.hash = "#/";
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

  // Notification clicks from the service worker open the conversation.
  if ("serviceWorker" in navigator) {
    navigator.serviceWorker.addEventListener("message", (e) => {
      if (e.data && e.data.type === "open" && e.data.conversation_id) {
        location.hash = "#/c/" + encodeURIComponent(e.data.conversation_id);
      }
    });
  }
}

if ("serviceWorker" in navigator && window.isSecureContext) {
  navigator.serviceWorker.register("/sw.js", { scope: "/" }).catch(() => {});
}

if (session) showMain();
else showAuth();
