// Nodes: every worker the master has seen, online or lost, with its labels,
// jobs and health figures, and small charts of their history; above them,
// the workers that joined and wait for a person's approval, each with its
// key's fingerprint.  From GET /workers?all=true, GET /workers/<name> and
// GET /workers/pending, refreshed live.

import { call } from "./api.js";
import { sparkline } from "./chart.js";
import { badge, byName, bytes, duration, fill, h, notice, when } from "./dom.js";
import { LazyList } from "./lazy.js";

const REFRESH = 5000; // ms between lists of workers
const PER_WORKER = 1; // ms more between them for each worker: 10 s for 10,000, whose list is 5 MB
const SOON = 1000; // ms, while a new worker has too few figures for a chart
const HISTORY_REFRESH = 15000; // ms between each worker's history

// How a worker proved itself to its master (GET /workers' auth).
const AUTH_WORDS = { identity: "by its identity", secret: "by the cluster secret", local: "the master's own", none: "no auth" };

// The workers waiting for approval: name, key, where from, and what to do.
function pendingList(pending, decided) {
  if (!pending.length) return null;
  const decide = (worker, decision) => async (event) => {
    event.target.disabled = true;
    try {
      await call(`/workers/${encodeURIComponent(worker.name)}/${decision}`, { method: "POST" });
    } finally {
      decided();
    }
  };
  return h(
    "section",
    { class: "card pending", id: "nodes-pending", "aria-label": "Workers waiting for approval" },
    h("h2", {}, `Waiting for approval (${pending.length})`),
    h("p", { class: "muted" }, "Compare each key with the machine's before approving it: pcci workers pending shows the same."),
    h(
      "ul",
      {},
      pending.map((worker) =>
        h(
          "li",
          { dataset: { worker: worker.name } },
          h("strong", {}, worker.name),
          " ",
          h("code", { class: "fingerprint" }, worker.fingerprint),
          h("span", { class: "muted" }, ` from ${worker.address || "?"} · joined `, when(new Date(worker.joined_at * 1000).toISOString())),
          " ",
          h("button", { type: "button", class: "small approve", onclick: decide(worker, "approve") }, "Approve"),
          " ",
          h("button", { type: "button", class: "small quiet deny", onclick: decide(worker, "deny") }, "Deny"),
        ),
      ),
    ),
  );
}

function percent(ratio) {
  return ratio === null || ratio === undefined ? "–" : `${Math.round(ratio * 100)} %`;
}

function ratioColumn(history, used, total) {
  return history[used].map((value, i) => {
    const all = history[total][i];
    return value === null || !all ? null : value / all;
  });
}

function figure(name, value, chart) {
  return h("div", { class: "figure" }, h("span", { class: "figure-name" }, name), h("span", { class: "figure-value" }, value), chart);
}

// Whether this session's token may open shells (a scoped one needs shell=yes;
// the master checks the worker too).
function mayShell(session) {
  return Boolean(session && !session.read_only && (!session.auth || session.admin || session.scope?.shell));
}

function card(worker, history, shell = false) {
  const health = worker.health || {};
  const memory =
    health.memory_total_bytes
      ? `${bytes(health.memory_used_bytes)} / ${bytes(health.memory_total_bytes)}`
      : "–";
  const disk = health.disk_total_bytes ? percent(health.disk_used_bytes / health.disk_total_bytes) : "–";
  const temperature =
    health.temperature_celsius === null || health.temperature_celsius === undefined
      ? "–"
      : `${health.temperature_celsius.toFixed(0)} °C`;
  const charts = history
    ? {
        cpu: sparkline(history.cpu_ratio, { low: 0, high: 1, label: `CPU history of ${worker.id}` }),
        memory: sparkline(ratioColumn(history, "memory_used_bytes", "memory_total_bytes"), {
          low: 0,
          high: 1,
          label: `memory history of ${worker.id}`,
        }),
        temperature: sparkline(history.temperature_celsius, { label: `temperature history of ${worker.id}` }),
      }
    : {};
  const labels = Object.entries(worker.labels || {}).map(([key, value]) =>
    h("span", { class: "label" }, value === "" || value === null ? key : `${key}=${value}`),
  );
  return h(
    "article",
    { class: `card node ${worker.online ? "" : "node-lost"}`, dataset: { worker: worker.id } },
    h(
      "header",
      {},
      h("h2", {}, h("a", { href: `#/pools?worker=${encodeURIComponent(worker.id)}`, title: `Pools that ran on ${worker.id}` }, worker.id)),
      badge(worker.online ? "online" : "offline"),
      shell && worker.online
        ? h("a", { class: "button small quiet shell-link", href: `#/shell/${encodeURIComponent(worker.id)}`, title: `A shell on ${worker.id}` }, "Shell")
        : null,
    ),
    h(
      "p",
      { class: "muted node-where" },
      worker.address || "",
      worker.master ? ` · on master ${worker.master}` : "",
      worker.auth ? ` · ${AUTH_WORDS[worker.auth] || worker.auth}` : "",
      worker.pcci_version ? ` · pcci ${worker.pcci_version}` : "",
      worker.python_version ? `, Python ${worker.python_version}` : "",
      worker.online ? " · connected " : " · last seen ",
      when(worker.online ? worker.connected_at : worker.last_seen),
    ),
    labels.length ? h("p", { class: "labels" }, labels) : null,
    h(
      "div",
      { class: "figures" },
      figure("Jobs running", String(worker.jobs_running ?? 0)),
      figure("CPU", percent(health.cpu_ratio), charts.cpu),
      figure("Memory", memory, charts.memory),
      figure("Temperature", temperature, charts.temperature),
      figure("Load", health.load_1m === null || health.load_1m === undefined ? "–" : health.load_1m.toFixed(2)),
      figure("Disk", disk),
      figure("Up", health.uptime_seconds ? duration(health.uptime_seconds) : "–"),
    ),
  );
}

// Does a worker match what is typed in the filter: part of its name, or of
// one of its labels (rack=a)?
function matches(worker, text) {
  if (!text) return true;
  if (worker.id.toLowerCase().includes(text)) return true;
  return Object.entries(worker.labels || {}).some(([key, value]) => `${key}=${value ?? ""}`.toLowerCase().includes(text));
}

function controls(redraw) {
  const name = h("input", { type: "search", id: "nodes-filter", placeholder: "name or label", "aria-label": "Filter by name or label" });
  const state = h(
    "select",
    { id: "nodes-state", "aria-label": "State" },
    [["", "online and lost"], ["online", "online"], ["lost", "lost"]].map(([value, text]) => h("option", { value }, text)),
  );
  name.addEventListener("input", redraw);
  state.addEventListener("change", redraw);
  return { name, state, form: h("div", { class: "filters" }, name, state) };
}

export function showNodes(main, context) {
  const summary = h("p", { class: "muted", id: "nodes-summary" });
  const waiting = h("div", { id: "nodes-waiting" });
  const grid = h("div", { class: "grid", id: "nodes" }, notice("Loading workers…"));
  const histories = new Map(); // name -> {at, columns}
  const asked = new Set(); // names whose history is on its way
  const controller = new AbortController();
  let workers = [];
  let timer = null;

  // A worker's card, with its history's charts once they are here.
  function draw(worker) {
    const known = histories.get(worker.id);
    const shell = mayShell(context.session);
    const element = card(worker, known?.columns, shell);
    const fresh = known && Date.now() - known.at < HISTORY_REFRESH && known.columns.time.length >= 2;
    if (worker.online && !fresh && !asked.has(worker.id)) {
      asked.add(worker.id);
      call(`/workers/${encodeURIComponent(worker.id)}`, { signal: controller.signal })
        .then((body) => {
          histories.set(worker.id, { at: Date.now(), columns: body.history });
          if (element.isConnected) element.replaceWith(card(worker, body.history, shell));
        })
        .catch(() => undefined)
        .finally(() => asked.delete(worker.id));
    }
    return element;
  }

  const list = new LazyList(grid, draw, { page: 60, noun: "workers" });
  const filter = controls(() => show());
  fill(main, h("div", { class: "view-head" }, h("h1", {}, "Nodes"), summary, filter.form), waiting, grid, list.more);

  function show() {
    const text = filter.name.value.trim().toLowerCase();
    const state = filter.state.value;
    const shown = workers.filter((w) => (!state || w.online === (state === "online")) && matches(w, text));
    list.show(shown);
    if (!workers.length) {
      fill(grid, notice("No worker has connected yet: pcci join-token create prints the line that brings a machine in (see the README)."));
    } else if (!shown.length) {
      fill(grid, notice("No worker matches this filter."));
    }
  }

  async function refresh() {
    let next = REFRESH;
    try {
      workers = await call("/workers?all=true", { signal: controller.signal });
      // Only an administrator's token sees who waits (and nobody with --no-auth).
      const session = context.session;
      if (session?.auth && session.admin) {
        const pending = await call("/workers/pending", { signal: controller.signal }).catch(() => []);
        fill(waiting, pendingList(pending, () => { clearTimeout(timer); refresh(); }));
      }
      workers.sort((a, b) => Number(b.online) - Number(a.online) || byName(a.id, b.id));
      next = Math.max(REFRESH, workers.length * PER_WORKER);
      const online = workers.filter((w) => w.online).length;
      fill(summary, `${online} online, ${workers.length - online} lost · ${workers.reduce((n, w) => n + (w.jobs_running || 0), 0)} jobs running`);
      show();
      // A new worker has too few figures for a chart yet: look again soon
      // (in a small fleet: a big one's list is too big to fetch every second).
      const drawn = list.items.slice(0, list.drawn);
      if (next === REFRESH && drawn.some((w) => w.online && !(histories.get(w.id)?.columns.time.length >= 2))) next = SOON;
    } catch (error) {
      context.failed(error, grid);
      if (error.status === 401) return;
    }
    if (!controller.signal.aborted) timer = setTimeout(refresh, next);
  }

  refresh();
  return () => {
    controller.abort();
    list.stop();
    clearTimeout(timer);
  };
}
