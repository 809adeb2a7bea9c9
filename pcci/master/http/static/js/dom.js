// Building the page: elements are made here, and every name and output is
// set as text (never as HTML), so what a job prints shows as characters.

// An element: h("a", {href: "#/x", class: "y"}, "text", child, ...).
// Attributes starting with "on" are listeners; null and false are left out.
export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(element.dataset, value);
    else element.setAttribute(name, value === true ? "" : String(value));
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : String(child));
  }
}

// Replace what `element` holds.
export function fill(element, ...children) {
  element.replaceChildren();
  append(element, children);
  return element;
}

const STATE_WORDS = {
  ok: "ok",
  failed: "failed",
  running: "running",
  paused: "paused",
  pending: "pending",
  waiting: "waiting for worker",
  killed: "killed",
  timed_out: "timed out",
  lost: "lost",
  not_started: "not started",
  cancelled: "cancelled",
  online: "online",
  offline: "lost",
};

// A scope as a tokens file writes it: workers=lab* commands=uptime stdin=yes.
export function scopeText(scope) {
  return Object.entries(scope)
    .flatMap(([kind, items]) => (items === true ? ["yes"] : items === false ? [] : items).map((item) => `${kind}=${item}`))
    .join(" ");
}

// A state in words and colour.
export function badge(state) {
  return h("span", { class: `badge state-${state}` }, STATE_WORDS[state] || state);
}

// "3 min ago" (or "in 3 min"), with the exact time on hover; null shows as a dash.
export function when(iso) {
  if (!iso) return h("span", { class: "muted" }, "–");
  const date = new Date(iso);
  return h("time", { datetime: iso, title: date.toLocaleString() }, ago(date));
}

// "3 min ago", or "in 3 min" for a time to come (a schedule's next run).
export function ago(date, now = Date.now()) {
  const signed = Math.round((now - date.getTime()) / 1000);
  const seconds = Math.abs(signed);
  if (seconds < 5) return signed >= 0 ? "just now" : "now";
  let span;
  if (seconds < 60) span = `${seconds} s`;
  else if (seconds < 3600) span = `${Math.floor(seconds / 60)} min`;
  else if (seconds < 86400) span = `${Math.floor(seconds / 3600)} h`;
  else span = `${Math.floor(seconds / 86400)} d`;
  return signed > 0 ? `${span} ago` : `in ${span}`;
}

// Refresh every relative time on the page (they age while it is open).
export function ageTimes(root = document) {
  for (const time of root.querySelectorAll("time[datetime]")) {
    time.textContent = ago(new Date(time.getAttribute("datetime")));
  }
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return "–";
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 1 : 0)} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}

// Seconds between two RFC 3339 times; to now while `end` is null.
export function between(start, end) {
  if (!start) return null;
  const stop = end ? new Date(end).getTime() : Date.now();
  return Math.max(0, (stop - new Date(start).getTime()) / 1000);
}

export function bytes(count) {
  if (count === null || count === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = count;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(value < 10 && unit > 0 ? 1 : 0)} ${units[unit]}`;
}

// "2 ok · 1 failed", most common first.
export function counts(byState) {
  return Object.entries(byState || {})
    .sort((a, b) => b[1] - a[1])
    .map(([state, count]) => `${count} ${STATE_WORDS[state] || state}`)
    .join(" · ");
}

// A message in place of a view's content: an error, or that there is nothing.
export function notice(text, kind = "info") {
  return h("p", { class: `notice notice-${kind}`, role: kind === "error" ? "alert" : "status" }, text);
}

// A button that asks once more before it acts: act() returns a promise.
export function confirming(text, confirmText, act, attributes = {}) {
  const button = h("button", { type: "button", class: "danger", ...attributes }, text);
  let armed = null;
  button.addEventListener("click", () => {
    if (!armed) {
      button.textContent = confirmText;
      armed = setTimeout(() => {
        armed = null;
        button.textContent = text;
      }, 4000);
      return;
    }
    clearTimeout(armed);
    armed = null;
    button.disabled = true;
    act().finally(() => {
      button.disabled = false;
      button.textContent = text;
    });
  });
  return button;
}

// Compares names as people sort them: node2 before node10.
export const byName = new Intl.Collator(undefined, { numeric: true }).compare;

// Many workers' names as a node set: ["pi01", "pi02", "pi03", "gpu"] is
// "gpu pi[01-03]", as clush -b and the Workers field write them.  Names a
// node set cannot carry (brackets, commas, spaces) stay as they are.
export function nodeSet(names) {
  const numbered = new Map(); // prefix -> [[number, its digits]]
  const plain = [];
  for (const name of names) {
    const match = /^([\w.-]*?)(\d+)$/.exec(name);
    if (!match) plain.push(name);
    else if (numbered.has(match[1])) numbered.get(match[1]).push([Number(match[2]), match[2]]);
    else numbered.set(match[1], [[Number(match[2]), match[2]]]);
  }
  const sets = [...numbered].map(([prefix, numbers]) => {
    numbers.sort((a, b) => a[0] - b[0]);
    const ranges = []; // [first, last, digits of each]
    for (const [n, digits] of numbers) {
      const last = ranges[ranges.length - 1];
      if (last && n === last[1] + 1 && digits === String(n).padStart(last[2], "0")) last[1] = n;
      else ranges.push([n, n, digits.length]);
    }
    const text = ([a, b, width]) => {
      const pad = (n) => String(n).padStart(width, "0");
      return a === b ? pad(a) : `${pad(a)}-${pad(b)}`;
    };
    return ranges.length === 1 && ranges[0][0] === ranges[0][1]
      ? prefix + text(ranges[0])
      : `${prefix}[${ranges.map(text).join(",")}]`;
  });
  return [...plain, ...sets].sort().join(" ");
}

// Workers' names to read: a few listed, many as a node set.
export function workerNames(names, few = 10) {
  return names.length <= few ? names.join(", ") : nodeSet(names);
}
