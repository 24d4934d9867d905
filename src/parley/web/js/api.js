// REST client for the Parley v1 contract. The token travels only in the
// Authorization header, never in a URL.

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message || code || `HTTP ${status}`);
    this.status = status;
    this.code = code || "http_" + status;
  }
}

export class Api {
  constructor({ getToken, onUnauthorized }) {
    this.getToken = getToken;
    this.onUnauthorized = onUnauthorized;
  }

  async request(method, path, body, { auth = true, signal } = {}) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const token = auth ? this.getToken() : null;
    if (token) headers.Authorization = "Bearer " + token;
    let res;
    try {
      res = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store",
        credentials: "omit",
        signal,
      });
    } catch (err) {
      if (err && err.name === "AbortError") throw err;
      throw new ApiError(0, "network", "Can't reach the server. Check your connection.");
    }
    if (res.status === 204) return null;
    let data = null;
    const text = await res.text();
    if (text) {
      try {
        data = JSON.parse(text);
      } catch {
        data = null;
      }
    }
    if (!res.ok) {
      const err = (data && data.error) || {};
      if (res.status === 401 && auth && token && this.onUnauthorized) this.onUnauthorized();
      throw new ApiError(res.status, err.code, err.message);
    }
    return data;
  }

  // accounts and sessions
  register(username, password, displayName) {
    const body = { username, password };
    if (displayName) body.display_name = displayName;
    return this.request("POST", "/v1/accounts", body, { auth: false });
  }
  login(username, password, deviceName) {
    return this.request(
      "POST",
      "/v1/sessions",
      { username, password, device_name: deviceName },
      { auth: false },
    );
  }
  logout() {
    return this.request("DELETE", "/v1/sessions/current");
  }

  // users, contacts, presence
  user(userId) {
    return this.request("GET", "/v1/users/" + encodeURIComponent(userId));
  }
  userByName(username) {
    return this.request("GET", "/v1/users?username=" + encodeURIComponent(username));
  }
  contacts() {
    return this.request("GET", "/v1/contacts");
  }
  addContact(userId) {
    return this.request("PUT", "/v1/contacts/" + encodeURIComponent(userId));
  }
  removeContact(userId) {
    return this.request("DELETE", "/v1/contacts/" + encodeURIComponent(userId));
  }
  presence(userIds) {
    const ids = userIds.map(encodeURIComponent).join(",");
    return this.request("GET", "/v1/presence?user_ids=" + ids);
  }

  // conversations
  conversations(limit = 100, before) {
    let q = "?limit=" + limit;
    if (before !== undefined && before !== null) q += "&before=" + before;
    return this.request("GET", "/v1/conversations" + q);
  }
  conversation(id) {
    return this.request("GET", "/v1/conversations/" + encodeURIComponent(id));
  }
  openDirect(userId) {
    return this.request("POST", "/v1/conversations", { type: "direct", user_id: userId });
  }
  createGroup(title, memberIds) {
    return this.request("POST", "/v1/conversations", {
      type: "group",
      title,
      member_ids: memberIds,
    });
  }
  addMember(id, userId) {
    return this.request("POST", `/v1/conversations/${encodeURIComponent(id)}/members`, {
      user_id: userId,
    });
  }
  removeMember(id, userId) {
    return this.request(
      "DELETE",
      `/v1/conversations/${encodeURIComponent(id)}/members/${encodeURIComponent(userId)}`,
    );
  }
  rename(id, title) {
    return this.request("PATCH", "/v1/conversations/" + encodeURIComponent(id), { title });
  }

  // messages
  messages(id, { before, after, limit = 50 } = {}) {
    let q = "?limit=" + limit;
    if (before) q += "&before=" + before;
    if (after !== undefined && after !== null) q += "&after=" + after;
    return this.request("GET", `/v1/conversations/${encodeURIComponent(id)}/messages${q}`);
  }
  send(id, clientMsgId, body) {
    return this.request("POST", `/v1/conversations/${encodeURIComponent(id)}/messages`, {
      client_msg_id: clientMsgId,
      body,
    });
  }
  markRead(id, seq) {
    return this.request("POST", `/v1/conversations/${encodeURIComponent(id)}/read`, { seq });
  }

  // push (docs/push.md)
  vapidPublicKey() {
    return this.request("GET", "/v1/push/vapid-public-key", undefined, { auth: false });
  }
  addPushSubscription(subscription) {
    return this.request("POST", "/v1/push/subscriptions", subscription);
  }
  removePushSubscription(endpoint) {
    return this.request("DELETE", "/v1/push/subscriptions", { endpoint });
  }

  // events
  currentCursor() {
    return this.request("GET", "/v1/events");
  }
}
