// Dates and times in the user's own locale.

const time = new Intl.DateTimeFormat(undefined, { hour: "numeric", minute: "2-digit" });
const weekday = new Intl.DateTimeFormat(undefined, { weekday: "short" });
const weekdayLong = new Intl.DateTimeFormat(undefined, { weekday: "long" });
const shortDate = new Intl.DateTimeFormat(undefined, { day: "numeric", month: "short" });
const longDate = new Intl.DateTimeFormat(undefined, { day: "numeric", month: "long", year: "numeric" });
const fullStamp = new Intl.DateTimeFormat(undefined, { dateStyle: "full", timeStyle: "short" });

function startOfDay(t) {
  const d = new Date(t);
  d.setHours(0, 0, 0, 0);
  return d.getTime();
}

function daysAgo(t) {
  return Math.round((startOfDay(Date.now()) - startOfDay(t)) / 86400000);
}

export function clock(t) {
  return time.format(t);
}

export function stamp(t) {
  return fullStamp.format(t);
}

// For the conversation list: 14:05, Yesterday, Tue, 3 Mar.
export function listTime(t) {
  if (!t) return "";
  const d = daysAgo(t);
  if (d <= 0) return time.format(t);
  if (d === 1) return "Yesterday";
  if (d < 7) return weekday.format(t);
  return shortDate.format(t);
}

// Separators between days in a chat.
export function dayLabel(t) {
  const d = daysAgo(t);
  if (d <= 0) return "Today";
  if (d === 1) return "Yesterday";
  if (d < 7) return weekdayLong.format(t);
  return longDate.format(t);
}

export function sameDay(a, b) {
  return startOfDay(a) === startOfDay(b);
}

export function lastSeen(p) {
  if (!p) return "";
  if (p.status === "online") return "online";
  if (!p.last_seen) return p.status === "offline" ? "offline" : "";
  const mins = Math.floor((Date.now() - p.last_seen) / 60000);
  if (mins < 1) return "last seen just now";
  if (mins < 60) return `last seen ${mins} min ago`;
  const d = daysAgo(p.last_seen);
  if (d <= 0) return `last seen today at ${time.format(p.last_seen)}`;
  if (d === 1) return `last seen yesterday at ${time.format(p.last_seen)}`;
  return `last seen ${shortDate.format(p.last_seen)}`;
}
