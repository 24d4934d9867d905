// One self-healing WebSocket to /v1/ws.
//
// Browsers cannot set headers on a WebSocket, so the token goes in the first
// frame ({"type":"auth"}), never in the URL. After every drop the socket comes
// back within seconds and resumes with ?since=<last cursor seen>, so the
// server replays exactly what was missed. The window's `online` event and a
// page becoming visible reconnect at once.

const BACKOFF_MS = [250, 1000, 2000, 3000, 5000];
const READY_TIMEOUT_MS = 10000;
const IDLE_PING_MS = 20000;
const PONG_TIMEOUT_MS = 8000;

export class Connection extends EventTarget {
  constructor({ getToken, getCursor }) {
    super();
    this.getToken = getToken;
    this.getCursor = getCursor;
    this.ws = null;
    this.ready = false;
    this.state = "idle";
    this.attempt = 0;
    this.retryTimer = null;
    this.readyTimer = null;
    this.lastRx = 0;
    this.pingSentAt = 0;
    this.running = false;
    this.paused = false;
    this.onOnline = () => this.connectNow();
    this.onOffline = () => this.drop("offline");
    this.onVisible = () => {
      if (document.visibilityState === "visible" && !this.ws) this.connectNow();
    };
    this.heartbeat = null;
  }

  start() {
    if (this.running) return;
    this.running = true;
    window.addEventListener("online", this.onOnline);
    window.addEventListener("offline", this.onOffline);
    document.addEventListener("visibilitychange", this.onVisible);
    this.heartbeat = setInterval(() => this.tick(), 2000);
    this.connect();
  }

  stop() {
    this.running = false;
    window.removeEventListener("online", this.onOnline);
    window.removeEventListener("offline", this.onOffline);
    document.removeEventListener("visibilitychange", this.onVisible);
    clearInterval(this.heartbeat);
    clearTimeout(this.retryTimer);
    this.teardown();
    this.setState("idle");
  }

  // Hold off connecting (while the app re-reads state after an expired cursor).
  pause() {
    this.paused = true;
    clearTimeout(this.retryTimer);
    this.teardown();
  }

  resume() {
    this.paused = false;
    this.connectNow();
  }

  setState(state) {
    if (state === this.state) return;
    this.state = state;
    this.dispatchEvent(new CustomEvent("state", { detail: state }));
  }

  connectNow() {
    if (!this.running || this.paused) return;
    clearTimeout(this.retryTimer);
    this.attempt = 0;
    if (this.ws && this.ready) return;
    this.teardown();
    this.connect();
  }

  connect() {
    if (!this.running || this.paused || this.ws) return;
    if (navigator.onLine === false) {
      this.setState("offline");
      return; // the `online` event (or the heartbeat) brings us back
    }
    this.setState("connecting");
    const cursor = this.getCursor();
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const url = `${scheme}//${location.host}/v1/ws` + (cursor !== null ? `?since=${cursor}` : "");
    let ws;
    try {
      ws = new WebSocket(url);
    } catch {
      this.scheduleRetry();
      return;
    }
    this.ws = ws;
    this.ready = false;
    this.lastRx = Date.now();
    this.pingSentAt = 0;
    this.readyTimer = setTimeout(() => {
      if (this.ws === ws && !this.ready) this.drop("retry");
    }, READY_TIMEOUT_MS);
    ws.onopen = () => {
      ws.send(JSON.stringify({ type: "auth", token: this.getToken() }));
    };
    ws.onmessage = (ev) => {
      if (this.ws !== ws) return;
      this.lastRx = Date.now();
      this.pingSentAt = 0;
      let frame;
      try {
        frame = JSON.parse(ev.data);
      } catch {
        return;
      }
      if (frame.type === "ready") {
        clearTimeout(this.readyTimer);
        this.ready = true;
        this.attempt = 0;
        this.setState("online");
        this.dispatchEvent(new CustomEvent("ready", { detail: frame }));
        return;
      }
      if (frame.type === "pong") return;
      if (frame.type === "error" && frame.code === "cursor_expired") {
        this.dispatchEvent(new CustomEvent("expired"));
        return;
      }
      this.dispatchEvent(new CustomEvent("frame", { detail: frame }));
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.teardown();
      if (ev.code === 4401) {
        this.setState("idle");
        this.dispatchEvent(new CustomEvent("unauthorized"));
        return;
      }
      this.scheduleRetry(ev.code === 4429 ? 10000 : undefined);
    };
    ws.onerror = () => {
      /* onclose follows and schedules the retry */
    };
  }

  teardown() {
    clearTimeout(this.readyTimer);
    const ws = this.ws;
    this.ws = null;
    this.ready = false;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      try {
        ws.close(1000);
      } catch {
        /* already closed */
      }
    }
  }

  // Abandon the current socket: "offline" waits for the network, "retry" reconnects.
  drop(why) {
    this.teardown();
    if (why === "offline") {
      clearTimeout(this.retryTimer);
      this.setState("offline");
    } else {
      this.scheduleRetry();
    }
  }

  scheduleRetry(delay) {
    if (!this.running || this.paused) return;
    clearTimeout(this.retryTimer);
    const wait = delay ?? BACKOFF_MS[Math.min(this.attempt, BACKOFF_MS.length - 1)];
    this.attempt += 1;
    this.setState(navigator.onLine === false ? "offline" : "connecting");
    this.retryTimer = setTimeout(() => this.connect(), wait);
  }

  tick() {
    if (!this.running || this.paused) return;
    if (!this.ws) {
      if (this.state === "offline" && navigator.onLine !== false) this.connectNow();
      return;
    }
    if (!this.ready) return;
    const now = Date.now();
    if (this.pingSentAt && now - this.pingSentAt > PONG_TIMEOUT_MS) {
      this.drop("retry"); // the socket looks open but nothing comes back
    } else if (!this.pingSentAt && now - this.lastRx > IDLE_PING_MS) {
      this.pingSentAt = now;
      this.send({ type: "ping" });
    }
  }

  send(frame) {
    if (!this.ws || !this.ready || this.ws.readyState !== WebSocket.OPEN) return false;
    try {
      this.ws.send(JSON.stringify(frame));
      return true;
    } catch {
      return false;
    }
  }
}
