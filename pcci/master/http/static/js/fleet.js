// The fleet (#/fleet): one row a worker, its columns chosen facts and
// health, sorted by any of them, filtered by a query (docs/api.md,
// Queries), or grouped by a fact with counts and states.  From
// GET /facts?all=true&fields=…, which the master keeps small; rows are
// drawn as they scroll into view, and the first screenful is asked for
// (and drawn) before the whole fleet, so 10,000 workers paint at once.

import { call } from "./api.js";
import { badge, bytes, fill, h, nodeSet, notice } from "./dom.js";
import { LazyList } from "./lazy.js";

// Rows asked for first, to paint while the whole fleet comes.
const FIRST = 100;

const COLUMNS = ["os.id", "os.version", "arch", "cpus", "memory", "gpu.count", "virtualization", "health.load_1m", "pcci"];
const BYTES = new Set(["memory", "health.memory_used_bytes", "health.memory_total_bytes"]);

function shown(column, value) {
  if (value === null || value === undefined) return "–";
  if (BYTES.has(column) && typeof value === "number") return bytes(value);
  if (typeof value === "number" && !Number.isInteger(value)) return value.toFixed(2);
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

const collator = new Intl.Collator(undefined, { numeric: true });

// Numbers as numbers, versions and names part by part, the rest as text; none last.
function compare(a, b) {
  if (a === b) return 0;
  if (a === null || a === undefined) return 1;
  if (b === null || b === undefined) return -1;
  if (typeof a === "number" && typeof b === "number") return a - b;
  return collator.compare(String(a), String(b));
}

// A group's workers as a node set, cut short past a few lines (all of it on hover).
function folded(names) {
  const text = nodeSet(names);
  return text.length <= 400 ? text : h("span", { title: text }, `${text.slice(0, 400)}…`);
}

export function showFleet(main, context, params) {
  const query = h("input", { type: "search", id: "fleet-query", value: params.get("q") || "", placeholder: "os.id=debian and cpus>=4", "aria-label": "Query" });
  const columns = h("input", { type: "text", id: "fleet-columns", value: params.get("columns") || COLUMNS.join(","), "aria-label": "Columns (facts)" });
  const groupBy = h("input", { type: "text", id: "fleet-group", value: params.get("group") || "", placeholder: "group by a fact (os.id)", "aria-label": "Group by" });
  const summary = h("p", { class: "muted", id: "fleet-summary", role: "status" });
  const body = h("div", { id: "fleet" }, notice("Loading the fleet…"));
  const controller = new AbortController();
  let workers = [];
  let sortBy = "name";
  let ascending = true;
  let list = null;

  // The address says the view: a query, columns and grouping can be shared.
  function apply() {
    const next = new URLSearchParams();
    if (query.value.trim()) next.set("q", query.value.trim());
    if (columns.value.trim() && columns.value.trim() !== COLUMNS.join(",")) next.set("columns", columns.value.trim());
    if (groupBy.value.trim()) next.set("group", groupBy.value.trim());
    const address = `#/fleet${next.toString() ? `?${next}` : ""}`;
    if (location.hash === address) load();
    else location.hash = address;
  }
  for (const input of [query, columns, groupBy]) input.addEventListener("keydown", (event) => event.key === "Enter" && apply());
  const form = h("div", { class: "filters fleet-controls" }, query, columns, groupBy, h("button", { type: "button", id: "fleet-apply", onclick: apply }, "Show"));
  fill(main, h("div", { class: "view-head" }, h("h1", {}, "Fleet"), summary), form, body);

  const chosen = () => columns.value.split(",").map((c) => c.trim()).filter(Boolean);

  function drawTable() {
    const names = chosen();
    const sorted = [...workers].sort((a, b) => {
      const order = sortBy === "name" ? compare(a.name, b.name) : sortBy === "state" ? compare(a.online, b.online) : compare(a.fields[sortBy], b.fields[sortBy]);
      return (ascending ? order : -order) || compare(a.name, b.name);
    });
    const header = (key, text) =>
      h("th", { scope: "col", class: "sortable", dataset: { column: key }, "aria-sort": sortBy === key ? (ascending ? "ascending" : "descending") : "none",
        onclick: () => { ascending = sortBy === key ? !ascending : true; sortBy = key; drawTable(); } },
        text, sortBy === key ? (ascending ? " ▲" : " ▼") : "");
    const rows = h("tbody");
    const table = h("table", { class: "fleet-table" }, h("thead", {}, h("tr", {}, header("name", "Name"), header("state", "State"), names.map((c) => header(c, c)))), rows);
    list?.stop();
    list = new LazyList(rows, (w) => h("tr", { dataset: { worker: w.name } },
      h("td", {}, h("a", { href: `#/pools?worker=${encodeURIComponent(w.name)}` }, w.name)),
      h("td", {}, badge(w.online ? "online" : "offline")),
      names.map((c) => h("td", { class: typeof w.fields[c] === "number" ? "number" : "", dataset: { label: c } }, shown(c, w.fields[c])))), { page: 100, noun: "workers" });
    fill(body, table, list.more);
    list.show(sorted);
    // The first rows on screen, for the scale test and bench/dashboard.py (User Timing).
    if (!performance.getEntriesByName("pcci:fleet-painted").length) {
      requestAnimationFrame(() => performance.mark("pcci:fleet-painted"));
    }
  }

  function drawGroups(fact) {
    const groups = new Map();
    for (const w of workers) {
      const key = shown(fact, w.fields[fact]);
      if (!groups.has(key)) groups.set(key, { value: w.fields[fact], names: [], online: 0 });
      const group = groups.get(key);
      group.names.push(w.name);
      if (w.online) group.online += 1;
    }
    const ordered = [...groups.entries()].sort((a, b) => b[1].names.length - a[1].names.length || compare(a[0], b[0]));
    const narrow = (value) => {
      const text = typeof value === "string" && !/^[^\s()=!<>~,"']+$/.test(value) ? `'${value}'` : String(value);
      query.value = [query.value.trim(), `${fact}=${text}`].filter(Boolean).join(" and ");
      groupBy.value = "";
      apply();
    };
    list?.stop();
    list = null;
    fill(body, h("table", { class: "fleet-groups" },
      h("thead", {}, h("tr", {}, h("th", {}, fact), h("th", {}, "Workers"), h("th", {}, "States"), h("th", {}, "Names"))),
      h("tbody", {}, ordered.map(([key, group]) => h("tr", { dataset: { group: key } },
        h("td", {}, group.value === undefined || group.value === null ? "–" : h("button", { type: "button", class: "link", onclick: () => narrow(group.value) }, key)),
        h("td", { class: "number", dataset: { label: "workers" } }, String(group.names.length)),
        h("td", {}, group.online ? [badge("online"), ` ${group.online} `] : null, group.names.length > group.online ? [badge("offline"), ` ${group.names.length - group.online}`] : null),
        h("td", { class: "mono names" }, folded(group.names)))))));
  }

  async function load() {
    const fact = groupBy.value.trim();
    const fields = [...new Set([...chosen(), ...(fact ? [fact] : [])])];
    const asked = new URLSearchParams({ all: "true", fields: fields.join(",") });
    if (query.value.trim()) asked.set("query", query.value.trim());
    fill(summary, "Loading…");
    try {
      // The table in its first order (by name, as the master lists them):
      // its first screenful drawn, then the whole fleet asked for.
      if (!fact && sortBy === "name" && ascending) {
        workers = await call(`/facts?${asked}&limit=${FIRST}`, { signal: controller.signal });
        if (workers.length < FIRST) return showLoaded(fact);  // that was all of it
        drawTable();
      }
      workers = await call(`/facts?${asked}`, { signal: controller.signal });
    } catch (error) {
      fill(summary);
      context.failed(error, body);
      return;
    }
    showLoaded(fact);
  }

  function showLoaded(fact) {
    const online = workers.filter((w) => w.online).length;
    fill(summary, `${workers.length} workers${query.value.trim() ? " match" : ""}: ${online} online, ${workers.length - online} offline`);
    if (!workers.length) fill(body, notice("No worker matches."));
    else if (fact) drawGroups(fact);
    else drawTable();
  }

  load();
  return () => {
    controller.abort();
    list?.stop();
  };
}
