// A pool: each worker's state, exit status and time, its output as it
// arrives (GET /pools/<id>/events, read through fetch), a gathered view
// that groups workers whose output is the same, and Kill buttons.  A pool
// on thousands of workers shows its counts first; its rows and outputs are
// drawn as they scroll into view, and a filter by name or state finds one.

import { call, streamEvents } from "./api.js";
import { badge, between, byName, confirming, counts, duration, fill, h, nodeSet, notice, when, workerNames } from "./dom.js";
import { LazyList } from "./lazy.js";

const RETRY = 2000; // ms before a cut event stream is resumed

function piece(part) {
  if (part.dropped !== undefined) {
    return h("span", { class: "dropped" }, `[${part.dropped} bytes of output dropped here]\n`);
  }
  return part.stream === "stderr" ? h("span", { class: "stderr" }, part.text) : document.createTextNode(part.text);
}

// The states of a job not started yet.
const BEFORE_START = new Set(["pending", "waiting"]);

// The ends a retry runs again: every one but ok.
// Jobs past which a pool's page opens on the gathered outputs.
const GATHER_FROM = 50;
const GATHER_EVERY = 1000; // ms between two gatherings of a running pool's outputs

const RETRIED = new Set(["failed", "killed", "timed_out", "lost", "not_started", "cancelled"]);

export function showPool(main, context, poolId) {
  const controller = new AbortController();
  const signal = controller.signal;
  const readOnly = context.session.read_only;
  const jobs = new Map(); // worker -> job, with its output as pieces
  let pool = null;
  let lastEvent = 0;
  let ended = false;
  let interrupted = false; // the event stream was cut, and is being resumed
  let mode = "workers"; // or "gathered"
  let redraw = null;
  let gatherTimer = null;
  let ticker = null;
  let shown = []; // the jobs the filter lets through
  let drawnChoices = ""; // the state filter's choices, as last drawn
  const dirty = new Set(); // jobs changed since the last frame

  const head = h("div", { class: "view-head" }, notice("Loading pool…"));
  const status = h("div", { id: "pool-status" });
  const filter = {
    name: h("input", { type: "search", id: "jobs-filter", placeholder: "worker", "aria-label": "Filter by worker" }),
    state: h("select", { id: "jobs-state", "aria-label": "State" }),
  };
  filter.name.addEventListener("input", () => refilter());
  filter.state.addEventListener("change", () => refilter());
  const rows = h("tbody");
  const table = h("div", { id: "pool-jobs" });
  // The rows scroll in a box of their own: what is below them (the outputs)
  // stays in reach however many rows are drawn.
  const rowBox = h("div", { class: "rows-box" });
  const tabs = h("div", { class: "tabs", role: "tablist" });
  const outputs = h("div", { id: "outputs" });
  const rowList = new LazyList(rows, jobRow, { page: 100, noun: "jobs", root: rowBox });
  const outputList = new LazyList(outputs, outputBlock, { page: 20, noun: "outputs" });
  fill(main, head, status, table, tabs, outputs, outputList.more);

  async function retry() {
    title.retry.disabled = true;
    try {
      const answer = await call(`/pools/${encodeURIComponent(poolId)}/retry`, { method: "POST", signal });
      location.hash = `#/pools/${encodeURIComponent(answer.pool_id)}`;
    } catch (error) {
      title.retry.disabled = false;
      context.failed(error, status);
    }
  }

  async function goOn() {
    title.goOn.disabled = true;
    try {
      const answer = await call(`/pools/${encodeURIComponent(poolId)}/continue`, { method: "POST", signal });
      fill(status, notice(answer.message));
    } catch (error) {
      context.failed(error, status);
    } finally {
      title.goOn.disabled = false;
    }
  }

  async function kill(workers) {
    try {
      const body = workers ? { workers } : undefined;
      const answer = await call(`/kill/${encodeURIComponent(poolId)}`, { method: "PUT", body, signal });
      fill(status, notice(answer.message));
    } catch (error) {
      context.failed(error, status);
    }
  }

  // The head and the table are made once, then updated in place: a button
  // someone is about to click stays where it is.
  const title = {
    state: h("span", { id: "pool-state" }),
    kill: readOnly ? null : confirming("Kill all", "Really kill all?", () => kill(null), { id: "kill-all" }),
    goOn: readOnly ? null : h("button", { type: "button", id: "continue-pool", onclick: () => goOn() }, "Continue"),
    again: readOnly ? null : h("a", { class: "button quiet", id: "run-again" }, "Run again"),
    retry: readOnly ? null : h("button", { type: "button", class: "quiet", id: "retry-failed", onclick: () => retry() }, "Retry failed"),
    meta: h("p", { class: "muted" }),
  };

  function drawHead() {
    fill(
      head,
      h("div", { class: "pool-title" }, h("h1", {}, "Pool ", h("span", { class: "mono" }, pool.id)), title.state, title.goOn, title.kill, title.retry, title.again),
      h("pre", { class: "cmd-line mono" }, pool.cmd),
      title.meta,
    );
    if (title.again) title.again.setAttribute("href", againAddress()); // its workers never change
    updateHead();
  }

  // The run form, filled in with this pool's command, workers and options.
  function againAddress() {
    const names = [...jobs.keys()];
    const params = new URLSearchParams({ cmd: pool.cmd, workers: names.length > 10 ? nodeSet(names) : names.join(" ") });
    if (pool.timeout) params.set("timeout", String(pool.timeout));
    if (pool.batch) params.set("batch", String(pool.batch));
    return `#/run?${params}`;
  }

  function updateHead() {
    fill(title.state, badge(pool.state));
    if (title.kill) title.kill.hidden = pool.state !== "running" && pool.state !== "paused";
    if (title.goOn) title.goOn.hidden = pool.state !== "paused";
    // A pool of files is sent again with pcci cp or fetch, not retried.
    if (title.retry) title.retry.hidden = pool.kind !== "run" || ![...jobs.values()].some((job) => RETRIED.has(job.state));
    fill(
      title.meta,
      "Started ",
      when(pool.started_at),
      ` · took ${duration(between(pool.started_at, pool.ended_at))}`,
      pool.submitted_by ? ` · by ${pool.submitted_by}` : "",
      pool.schedule ? h("span", {}, " · schedule ", h("a", { id: "pool-schedule", href: `#/schedules/${encodeURIComponent(pool.schedule)}` }, pool.schedule)) : "",
      pool.retry_of ? h("span", {}, " · retry of ", h("a", { class: "mono", href: `#/pools/${encodeURIComponent(pool.retry_of)}` }, pool.retry_of)) : "",
      ` · ${counts(pool.counts)}`,
      pool.stopped ? h("span", { id: "pool-stopped" }, ` · stopped: ${pool.stopped}`) : "",
      pool.timeout ? ` · timeout ${pool.timeout} s` : "",
      pool.batch ? ` · batch ${pool.batch}` : "",
    );
  }

  function jobRow(job) {
    if (!job.row) {
      const cells = {
        state: h("td", { "data-label": "State" }),
        status: h("td", { "data-label": "Exit status" }),
        took: h("td", { "data-label": "Took" }),
        pid: h("td", { "data-label": "PID", class: "muted" }),
        kill: readOnly ? null : confirming("Kill", "Really kill?", () => kill([job.worker_id]), { class: "danger small" }),
      };
      const name = h("button", { type: "button", class: "link mono", onclick: () => show(job) }, job.worker_id);
      job.row = { cells, tr: h("tr", { dataset: { worker: job.worker_id } }, h("td", { "data-label": "Worker" }, name), cells.state, cells.status, cells.took, cells.pid, h("td", {}, cells.kill)) };
    }
    const { cells, tr } = job.row;
    tr.dataset.state = job.state;
    fill(cells.state, badge(job.state));
    fill(cells.status, job.status === null || job.status === undefined ? "–" : String(job.status));
    fill(cells.took, duration(job.time_to_calc != null ? job.time_to_calc / 1000 : between(job.started_at, job.ended_at)));
    fill(cells.pid, job.pid ?? "–");
    if (cells.kill) cells.kill.hidden = job.state !== "running";
    return tr;
  }

  function drawJobs() {
    fill(
      table,
      jobs.size > 1 ? h("div", { class: "filters" }, filter.name, filter.state) : null,
      fill(
        rowBox,
        h(
          "table",
          { class: "jobs" },
          h("thead", {}, h("tr", {}, ["Worker", "State", "Exit status", "Took", "PID", ""].map((t) => h("th", {}, t)))),
          rows,
        ),
        rowList.more,
      ),
    );
    stateChoices();
    refilter();
  }

  // The state filter's choices: each state the jobs are in, with its count.
  function stateChoices() {
    const chosen = filter.state.value;
    const drawn = `${chosen} ${JSON.stringify(pool.counts)}`;
    if (drawn === drawnChoices) return;
    drawnChoices = drawn;
    const choices = [["", `all ${jobs.size} workers`], ...Object.entries(pool.counts).map(([state, n]) => [state, `${n} ${state.replace("_", " ")}`])];
    if (chosen && !pool.counts[chosen]) choices.push([chosen, `0 ${chosen.replace("_", " ")}`]);
    fill(filter.state, choices.map(([value, text]) => h("option", { value, selected: value === chosen }, text)));
  }

  // Show the jobs the filter lets through, in the table and by worker.
  function refilter() {
    const text = filter.name.value.trim().toLowerCase();
    const state = filter.state.value;
    shown = [...jobs.values()].filter((job) => (!state || job.state === state) && (!text || job.worker_id.toLowerCase().includes(text)));
    rowList.show(shown);
    drawOutputs();
  }

  function drawTabs() {
    const tab = (name, text) =>
      h(
        "button",
        {
          type: "button",
          role: "tab",
          "aria-selected": String(mode === name),
          class: mode === name ? "tab current" : "tab",
          id: `tab-${name}`,
          onclick: () => {
            mode = name;
            drawTabs();
            drawOutputs();
          },
        },
        text,
      );
    fill(tabs, tab("workers", "By worker"), tab("gathered", "Gathered"));
  }

  // Each worker's output, kept in its <pre> and added to as it arrives.
  function outputBlock(job) {
    if (!job.pre) {
      job.pre = h("pre", { class: "output" }, job.parts.map(piece));
      job.badge = h("span", {}, badge(job.state));
      job.block = h(
        "section",
        { class: "worker-output", id: `output-${job.worker_id}`, dataset: { worker: job.worker_id } },
        h("h3", {}, h("span", { class: "mono" }, job.worker_id), job.badge),
        job.pre,
      );
    }
    return job.block;
  }

  // Scroll to a worker's output, drawing the outputs before it if need be.
  function show(job) {
    if (mode !== "workers") {
      mode = "workers";
      drawTabs();
      drawOutputs();
    }
    const index = outputList.items.indexOf(job);
    if (index >= outputList.drawn) outputList.draw(index + 1 - outputList.drawn);
    outputBlock(job).scrollIntoView({ block: "start" });
  }

  function gathered() {
    const groups = new Map(); // output text -> workers
    for (const job of shown) {
      const text = job.parts.map((p) => (p.dropped !== undefined ? `[${p.dropped} bytes dropped]\n` : p.text)).join("");
      const key = `${job.state}\u0000${job.status}\u0000${text}`;
      if (!groups.has(key)) groups.set(key, { jobs: [], parts: job.parts });
      groups.get(key).jobs.push(job);
    }
    return [...groups.values()]
      .sort((a, b) => b.jobs.length - a.jobs.length)
      .map((group) =>
        h(
          "section",
          { class: "worker-output gathered" },
          h(
            "h3",
            {},
            h("span", { class: "mono" }, workerNames(group.jobs.map((j) => j.worker_id))),
            h("span", { class: "muted" }, ` (${group.jobs.length} worker${group.jobs.length === 1 ? "" : "s"})`),
            badge(group.jobs[0].state),
          ),
          h("pre", { class: "output" }, group.parts.map(piece)),
        ),
      );
  }

  function drawOutputs() {
    if (mode === "gathered") {
      outputList.show([]);
      fill(outputs, gathered());
    } else {
      outputList.show(shown);
    }
  }

  // Redraw what changed, at most once a frame: the counts, and the rows
  // and outputs drawn of the jobs that changed.
  function changed(job) {
    if (job) dirty.add(job);
    if (redraw) return;
    redraw = requestAnimationFrame(() => {
      redraw = null;
      pool.counts = {};
      for (const each of jobs.values()) pool.counts[each.state] = (pool.counts[each.state] || 0) + 1;
      updateHead();
      stateChoices();
      for (const each of dirty) {
        if (each.row) jobRow(each);
        if (each.badge) fill(each.badge, badge(each.state));
      }
      // With a state filter, a job whose state changed may enter or leave the list.
      let moved = false;
      if (filter.state.value) {
        const through = new Set(shown);
        moved = [...dirty].some((each) => through.has(each) !== (each.state === filter.state.value));
      }
      dirty.clear();
      if (moved) refilter();
      else if (mode === "gathered") gatherSoon();
    });
  }

  // Gathering reads every job's output: while events pour in, at most once a GATHER_EVERY.
  function gatherSoon() {
    if (gatherTimer) return;
    gatherTimer = setTimeout(() => {
      gatherTimer = null;
      if (mode === "gathered") drawOutputs();
    }, ended ? 0 : GATHER_EVERY);
  }

  function append(job, part) {
    job.parts.push(part);
    if (mode === "workers" && job.pre) {
      const pre = job.pre;
      const following = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      pre.append(piece(part));
      if (following) pre.scrollTop = pre.scrollHeight;
    } else if (mode === "gathered") {
      changed();
    }
  }

  function onEvent(event) {
    if (interrupted) {
      interrupted = false;
      fill(status);
    }
    lastEvent = event.id ?? lastEvent;
    const data = event.data;
    const job = jobs.get(data.worker);
    if (event.name === "rollout") {
      pool = { ...pool, state: data.state, stopped: data.stopped };
      updateHead();
      return;
    }
    if (event.name === "pool") {
      ended = true;
      const { jobs: _, ...summary } = data;
      pool = summary;
      for (const final of data.jobs) {
        const known = jobs.get(final.worker_id);
        if (known) changed(Object.assign(known, final));
      }
    } else if (!job) {
      return;
    } else if (event.name === "started") {
      Object.assign(job, { pid: data.pid, started_at: data.at });
      // An ended pool's events replay from its start: an end stays an end.
      if (BEFORE_START.has(job.state)) job.state = "running";
    } else if (event.name === "output") {
      append(job, { stream: data.stream, text: data.data });
      return;
    } else if (event.name === "dropped") {
      append(job, { dropped: data.bytes });
      return;
    } else if (event.name === "ended") {
      Object.assign(job, { state: data.state, status: data.status, ended_at: data.at });
    }
    changed(job);
  }

  async function follow() {
    while (!ended && !signal.aborted) {
      try {
        await streamEvents(`/pools/${encodeURIComponent(poolId)}/events?after=${lastEvent}`, onEvent, { signal });
      } catch (error) {
        if (signal.aborted || error.status === 401 || error.status === 404) {
          context.failed(error, status);
          return;
        }
        interrupted = true;
        fill(status, notice(`Live output interrupted (${error.message}); reconnecting…`, "error"));
      }
      if (!ended && !signal.aborted) await new Promise((resolve) => setTimeout(resolve, RETRY));
    }
  }

  async function load() {
    try {
      const answer = await call(`/pools/${encodeURIComponent(poolId)}?results=false`, { signal });
      const { jobs: list, ...summary } = answer;
      pool = summary;
      list.sort((a, b) => byName(a.worker_id, b.worker_id));
      for (const job of list) jobs.set(job.worker_id, { ...job, parts: [] });
    } catch (error) {
      context.failed(error, head);
      return;
    }
    // A large pool opens on its outputs gathered: a few groups, not thousands of boxes.
    if (jobs.size > GATHER_FROM) mode = "gathered";
    drawHead();
    drawJobs();
    drawTabs();
    drawOutputs();
    // The time of each running job drawn goes on.
    ticker = setInterval(() => {
      if (pool.state !== "running") return;
      for (const job of rowList.items.slice(0, rowList.drawn)) if (job.state === "running") changed(job);
      changed();
    }, 1000);
    follow();
  }

  load();
  return () => {
    controller.abort();
    rowList.stop();
    outputList.stop();
    clearInterval(ticker);
    clearTimeout(gatherTimer);
    if (redraw) cancelAnimationFrame(redraw);
  };
}
