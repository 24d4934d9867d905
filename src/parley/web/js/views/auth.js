// The sign-in screen: one form, "Log in" or "Sign up" with the same fields.

import { ApiError } from "../api.js";
import { h, setBusy } from "../dom.js";
import { deviceName } from "../session.js";

const USERNAME = /^[a-z0-9_.-]{3,32}$/;

export function authView({ api, onSession }) {
  const username = h("input", {
    id: "auth-username",
    name: "username",
    autocomplete: "username",
    autocapitalize: "none",
    spellcheck: "false",
    required: true,
    maxlength: "32",
  });
  const password = h("input", {
    id: "auth-password",
    name: "password",
    type: "password",
    autocomplete: "current-password",
    required: true,
    maxlength: "256",
  });
  const error = h("p", { class: "form-error", role: "alert", "aria-live": "assertive" });
  const login = h("button", { type: "submit", class: "btn btn-primary btn-block" }, "Log in");
  const signup = h("button", { type: "button", class: "btn btn-secondary btn-block" }, "Sign up");

  function fail(msg) {
    error.textContent = msg;
  }

  function values() {
    const u = username.value.trim().toLowerCase();
    const p = password.value;
    return { u, p };
  }

  async function run(button, register) {
    const { u, p } = values();
    fail("");
    if (!u || !p) return fail("Enter a username and a password.");
    if (register) {
      if (!USERNAME.test(u)) {
        return fail("Usernames are 3–32 characters: lowercase letters, digits, “.”, “_” or “-”.");
      }
      if (p.length < 8) return fail("Choose a password of at least 8 characters.");
    }
    setBusy(login, true);
    setBusy(signup, true);
    try {
      if (register) await api.register(u, p);
      const s = await api.login(u, p, deviceName());
      onSession({ ...s, username: u });
    } catch (err) {
      if (!(err instanceof ApiError)) throw err;
      if (err.code === "username_taken") fail("That username is taken. Try another one.");
      else if (err.status === 401) fail("Wrong username or password.");
      else if (err.status === 429) fail("Too many attempts. Wait a moment and try again.");
      else fail(err.message);
      setBusy(login, false);
      setBusy(signup, false);
      (err.code === "username_taken" || err.status === 401 ? username : password).focus();
    }
  }

  const form = h(
    "form",
    { class: "auth-form", novalidate: true },
    h("label", { for: "auth-username" }, "Username"),
    username,
    h("label", { for: "auth-password" }, "Password"),
    password,
    error,
    login,
    h("div", { class: "divider" }, h("span", {}, "New to Parley?")),
    signup,
  );
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    run(login, false);
  });
  signup.addEventListener("click", () => {
    password.setAttribute("autocomplete", "new-password");
    run(signup, true);
  });

  const view = h(
    "main",
    { class: "auth" },
    h(
      "div",
      { class: "auth-card" },
      h(
        "div",
        { class: "brand" },
        h("img", { src: "/app/icons/icon.svg", alt: "", class: "brand-logo", width: "56", height: "56" }),
        h("h1", {}, "Parley"),
      ),
      h("p", { class: "tagline" }, "Messages that arrive. Every time."),
      form,
      h(
        "p",
        { class: "auth-hint" },
        "Usernames use lowercase letters, digits, “.”, “_” and “-”. Passwords need at least 8 characters.",
      ),
    ),
  );
  queueMicrotask(() => username.focus());
  return view;
}
