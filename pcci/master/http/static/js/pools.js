// Pools: the history, newest first, a page at a time, filtered by state,
// worker and command text; refreshed while it shows running pools (or the
// newest page, where new ones appear).  From GET /pools?results=false.

import { call, nextLink } from "./api.js";
import { badge, between, counts, duration, fill, h, notice, when } from "./dom.js";

const PAGE = 25;
const REFRESH = 3000; // ms

function address(params) {
  const query = new URLSearchParams([...params].filter(([, value]) => value)).toString();
  return `#/pools${query ? `?${query}` : ""}`;
}

function filters(params) {
  const state = h(
    "select",
    { name: "state", "aria-label": "State" },
    [["", "any state"], ["running", "running"], ["ok", "ok"], ["failed", "failed"]].map(([value, text]) =>
      h("option", { value, selected: params.get("state") === value }, text),
    ),
  );
  const worker = h("input", { name: "worker", placeholder: "worker", value: params.get("worker") || "", "aria-label": "Worker" });
  const cmd = h("input", { name: "cmd", placeholder: "command contains", value: params.get("cmd") || "", "aria-label": "Command contains" });
  const form = h("form", { class: "filters", id: "pool-filters" }, state, worker, cmd, h("button", { type: "submit" }, "Filter"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const chosen = { state: state.value, worker: worker.value.trim(), cmd: cmd.value.trim(), schedule: params.get("schedule") || "" };
    location.hash = address(new URLSearchParams(chosen));
  });
  state.addEventListener("change", () => form.requestSubmit());
  return form;
}

function row(pool) {
  const workers = Object.values(pool.counts || {}).reduce((a, b) => a + b, 0);
  return h(
    "tr",
    { dataset: { pool: pool.id } },
    h("td", { "data-label": "Pool" }, h("a", { href: `#/pools/${encodeURIComponent(pool.id)}`, class: "mono" }, pool.id)),
    h("td", { "data-label": "Command", class: "mono cmd" }, pool.cmd),
    h("td", { "data-label": "State" }, badge(pool.state)),
    h("td", { "data-label": "Jobs" }, `${workers} · ${counts(pool.counts)}`),
    h("td", { "data-label": "Started" }, when(pool.started_at)),
    h("td", { "data-label": "Took" }, duration(between(pool.started_at, pool.ended_at))),
    h("td", { "data-label": "By", class: "muted" }, pool.submitted_by || "–"),
  );
}

export function showPools(main, context, params) {
  const body = h("div", { id: "pools" }, notice("Loading pools…"));
  const pager = h("nav", { class: "pager" });
  const schedule = params.get("schedule");
  const title = schedule
    ? h("h1", {}, "Pools of schedule ", h("a", { href: `#/schedules/${encodeURIComponent(schedule)}` }, schedule))
    : h("h1", {}, "Pools");
  fill(main, h("div", { class: "view-head" }, title, filters(params)), body, pager);
  const controller = new AbortController();
  let timer = null;

  async function refresh() {
    const query = new URLSearchParams({ limit: String(PAGE), results: "false" });
    for (const name of ["state", "worker", "cmd", "schedule", "before"]) {
      if (params.get(name)) query.set(name, params.get(name));
    }
    let pools = [];
    try {
      const answer = await call(`/pools?${query}`, { signal: controller.signal, withResponse: true });
      pools = answer.body;
      const next = nextLink(answer.response);
      const nextBefore = next ? new URL(next, location.href).searchParams.get("before") : null;
      fill(
        pager,
        params.get("before") ? h("a", { href: address(new URLSearchParams({ ...Object.fromEntries(params), before: "" })) }, "← Newest") : null,
        nextBefore ? h("a", { href: address(new URLSearchParams({ ...Object.fromEntries(params), before: nextBefore })), id: "older" }, "Older →") : null,
      );
      if (!pools.length) {
        fill(body, notice(params.toString() ? "No pool matches these filters." : "No pool has run yet."));
      } else {
        fill(
          body,
          h(
            "table",
            { class: "pools" },
            h("thead", {}, h("tr", {}, ["Pool", "Command", "State", "Jobs", "Started", "Took", "By"].map((t) => h("th", {}, t)))),
            h("tbody", {}, pools.map(row)),
          ),
        );
      }
    } catch (error) {
      context.failed(error, body);
      if (error.status === 401) return;
    }
    const live = !params.get("before") || pools.some((p) => p.state === "running");
    if (live && !controller.signal.aborted) timer = setTimeout(refresh, REFRESH);
  }

  refresh();
  return () => {
    controller.abort();
    clearTimeout(timer);
  };
}
