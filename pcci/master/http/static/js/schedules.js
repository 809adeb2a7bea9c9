// Schedules: the list (#/schedules), each with its next run and latest
// pools, paused and resumed in place; a schedule's page (#/schedules/<name>)
// with its runs; and the form that makes one or changes it, for tokens that
// may run.  The form asks the master for the next runs as the cron line is
// typed (POST /schedules?dry_run=true).

import { call } from "./api.js";
import { badge, confirming, counts, fill, h, notice, when } from "./dom.js";
import { field, jobFields, jobValues, livePreview } from "./jobform.js";

const REFRESH = 5000; // ms
const MACROS = "@hourly, @daily, @weekly, @monthly or @yearly";

function address(name) {
  return `#/schedules/${encodeURIComponent(name)}`;
}

function poolLink(pool) {
  return h(
    "a",
    { href: `#/pools/${encodeURIComponent(pool.id)}`, class: "pool-link", title: `${pool.id}: ${counts(pool.counts)}` },
    badge(pool.state),
  );
}

function stateBadge(schedule) {
  return schedule.paused ? h("span", { class: "badge state-paused" }, "paused") : h("span", { class: "badge state-active" }, "active");
}

// A run time in the schedule's own time zone (its cron line's), and how far off.
function runTime(iso, timezone) {
  let text;
  try {
    text = new Date(iso).toLocaleString(undefined, { timeZone: timezone, year: "numeric", month: "short", day: "numeric", hour: "numeric", minute: "2-digit", timeZoneName: "short" });
  } catch (_) {
    text = new Date(iso).toLocaleString();
  }
  return h("span", { class: "run-time" }, text, " ", h("span", { class: "muted" }, "(", when(iso), ")"));
}

// The workers a schedule names and the labels they must have.
function targets(schedule) {
  return [...(schedule.workers || []), ...(schedule.labels || []).map((label) => `label ${label}`)].join(" ");
}

// What the latest run did, when it did not start a pool.
function lastTrouble(schedule) {
  const last = schedule.runs[schedule.runs.length - 1];
  if (!last || last.outcome === "started") return null;
  const kind = last.outcome === "refused" ? "error-text" : "muted";
  return h("div", { class: `${kind} run-trouble` }, `${last.outcome}: ${last.why || ""}`);
}

// The button that pauses or resumes `schedule`, then calls `changed`.
function pauseButton(context, schedule, place, changed) {
  const button = h("button", { type: "button", class: "quiet small pause" }, schedule.paused ? "Resume" : "Pause");
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      await call(`/schedules/${encodeURIComponent(schedule.name)}`, { method: "PATCH", body: { paused: !schedule.paused } });
      changed();
    } catch (error) {
      button.disabled = false;
      context.failed(error, place);
    }
  });
  return button;
}

// The form that makes a schedule (`schedule` null) or changes one.
function scheduleForm(context, schedule, signal, saved) {
  const making = schedule === null;
  const zone = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
  const job = jobFields(context, making ? {} : jobValues(schedule), signal);
  const inputs = {
    name: h("input", { name: "name", class: "mono", required: true, placeholder: "nightly-backup", autocomplete: "off", spellcheck: "false" }),
    cron: h("input", { name: "cron", class: "mono", required: true, placeholder: "0 3 * * *", autocomplete: "off", spellcheck: "false" }),
    timezone: h("input", { name: "timezone", class: "mono", list: "time-zones", placeholder: "UTC", autocomplete: "off", spellcheck: "false" }),
    overlap: h("input", { name: "overlap", type: "checkbox" }),
    catch_up: h("input", { name: "catch_up", type: "checkbox" }),
    notify: h("textarea", { name: "notify", class: "mono", rows: 2, placeholder: "https://hooks.example.org/…, one a line", spellcheck: "false" }),
    notify_on: h("select", { name: "notify_on" }, h("option", { value: "failed" }, "failed"), h("option", { value: "ended" }, "ended")),
  };
  inputs.name.value = making ? "" : schedule.name;
  inputs.cron.value = making ? "" : schedule.cron;
  inputs.timezone.value = making ? zone : schedule.timezone;
  inputs.overlap.checked = !making && schedule.overlap;
  inputs.catch_up.checked = !making && schedule.catch_up;
  inputs.notify.value = making ? "" : (schedule.notify || []).join("\n");
  inputs.notify_on.value = making ? "failed" : schedule.notify_on || "failed";
  const zones = typeof Intl.supportedValuesOf === "function" ? Intl.supportedValuesOf("timeZone") : [];
  const next = h("div", { id: "schedule-next", class: "matches", "aria-live": "polite" });
  const status = h("div", { id: "schedule-status" });
  const submit = h("button", { type: "submit", id: "schedule-submit" }, making ? "Make schedule" : "Save changes");
  const form = h(
    "form",
    { class: "card run schedule-form", id: making ? "schedule-new" : "schedule-change" },
    making ? h("h2", {}, "New schedule") : h("h2", {}, "Change"),
    making ? field("Name", inputs.name, "letters, digits and _ . @ : -; it cannot change later") : null,
    h(
      "div",
      { class: "fields when" },
      field("Cron line", inputs.cron, `minute hour day month weekday, or ${MACROS}`),
      field("Time zone", inputs.timezone, "an IANA name: the cron line's hours are this zone's"),
    ),
    h("datalist", { id: "time-zones" }, zones.map((name) => h("option", { value: name }))),
    next,
    job.head,
    job.more,
    h(
      "details",
      { open: inputs.overlap.checked || inputs.catch_up.checked || inputs.notify.value !== "" },
      h("summary", {}, "Overlap, missed runs, notifications"),
      h(
        "div",
        { class: "fields" },
        h("label", { class: "check" }, inputs.overlap, " Run even while the previous pool still runs"),
        h("label", { class: "check" }, inputs.catch_up, " When a master starts, run the latest run missed while none was up"),
        field("Tell these URLs", inputs.notify, "a JSON POST when a pool ends, signed like the master's webhooks"),
        field("Tell them when a pool", inputs.notify_on),
      ),
    ),
    h("div", { class: "actions" }, submit),
    status,
  );

  // The schedule the form describes: a POST body, or (`cleared`) a PATCH's.
  function body(cleared) {
    const urls = inputs.notify.value.split("\n").map((line) => line.trim()).filter(Boolean);
    return {
      ...(making ? { name: inputs.name.value.trim() } : {}),
      cron: inputs.cron.value.trim(),
      timezone: inputs.timezone.value.trim() || "UTC",
      overlap: inputs.overlap.checked,
      catch_up: inputs.catch_up.checked,
      ...job.body(cleared),
      notify: urls.length ? urls : cleared ? null : undefined,
      notify_on: inputs.notify_on.value,
    };
  }

  // The next runs, as the master answers a dry run of the schedule.
  async function nextRuns() {
    if (!inputs.cron.value.trim()) {
      return h("span", { class: "muted" }, `A cron line (or ${MACROS}) shows the next runs here.`);
    }
    // What is not filled in yet is the Command and Workers fields' to
    // tell of: here, only the cron line and the time zone are asked about.
    const tried = { ...body(false), name: inputs.name.value.trim() || "new" };
    tried.cmd = tried.cmd || "true";
    if (!tried.workers && !tried.labels) tried.workers = ["*"];
    const answer = await call("/schedules?dry_run=true", { method: "POST", body: tried, signal });
    const timezone = inputs.timezone.value.trim() || "UTC";
    return [h("span", {}, "Next runs: "), ...answer.next_runs.flatMap((iso, i) => [i ? " · " : "", runTime(iso, timezone)])];
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    submit.disabled = true;
    fill(status, notice(making ? "Making…" : "Saving…"));
    try {
      const answer = making
        ? await call("/schedules", { method: "POST", body: body(false), signal })
        : await call(`/schedules/${encodeURIComponent(schedule.name)}`, { method: "PATCH", body: body(true), signal });
      fill(status, notice(making ? `Schedule ${answer.name} made.` : "Saved."));
      saved(answer);
    } catch (error) {
      context.failed(error, status);
    }
    submit.disabled = false;
  });
  job.watch(form);
  livePreview(context, form, next, signal, nextRuns);
  return form;
}

function row(context, schedule, place, changed) {
  const readOnly = context.session.read_only;
  return h(
    "tr",
    { dataset: { schedule: schedule.name } },
    h("td", { "data-label": "Schedule" }, h("a", { href: address(schedule.name), class: "mono" }, schedule.name)),
    h("td", { "data-label": "When" }, h("span", { class: "mono" }, schedule.cron), h("span", { class: "muted" }, ` ${schedule.timezone}`)),
    h("td", { "data-label": "Command", class: "mono cmd" }, schedule.cmd),
    h("td", { "data-label": "On", class: "mono" }, targets(schedule)),
    h(
      "td",
      { "data-label": "Next run", class: "next-run" },
      schedule.next_runs.length ? runTime(schedule.next_runs[0], schedule.timezone) : stateBadge(schedule),
    ),
    h(
      "td",
      { "data-label": "Last pools" },
      h("span", { class: "last-pools" }, schedule.last_pools.length ? schedule.last_pools.map(poolLink) : h("span", { class: "muted" }, "none yet")),
      lastTrouble(schedule),
    ),
    h("td", { "data-label": "Skipped" }, String(schedule.skipped)),
    readOnly ? null : h("td", {}, pauseButton(context, schedule, place, changed)),
  );
}

export function showSchedules(main, context) {
  const controller = new AbortController();
  const readOnly = context.session.read_only;
  const body = h("div", { id: "schedules" }, notice("Loading schedules…"));
  const making = h("div", { id: "schedule-making" });
  const newButton = readOnly
    ? null
    : h("button", { type: "button", id: "new-schedule" }, "New schedule");
  fill(main, h("div", { class: "view-head" }, h("h1", {}, "Schedules"), newButton), making, body);
  let timer = null;

  newButton?.addEventListener("click", () => {
    if (making.firstChild) {
      making.replaceChildren();
      return;
    }
    fill(making, scheduleForm(context, null, controller.signal, (made) => (location.hash = address(made.name))));
    making.querySelector("input[name=name]").focus();
  });

  async function refresh() {
    clearTimeout(timer);
    try {
      const schedules = await call("/schedules", { signal: controller.signal });
      if (!schedules.length) {
        fill(body, notice(readOnly ? "No schedule yet." : "No schedule yet: make one with New schedule (or pcci schedule add)."));
      } else {
        const heads = ["Schedule", "When", "Command", "On", "Next run", "Last pools", "Skipped", ...(readOnly ? [] : [""])];
        fill(
          body,
          h(
            "table",
            { class: "schedules" },
            h("thead", {}, h("tr", {}, heads.map((t) => h("th", {}, t)))),
            h("tbody", {}, schedules.map((s) => row(context, s, body, refresh))),
          ),
        );
      }
    } catch (error) {
      context.failed(error, body);
      if (error.status === 401 || error.status === 409) return;
    }
    if (!controller.signal.aborted) timer = setTimeout(refresh, REFRESH);
  }

  refresh();
  return () => {
    controller.abort();
    clearTimeout(timer);
  };
}

export function showSchedule(main, context, name) {
  const controller = new AbortController();
  const readOnly = context.session.read_only;
  const head = h("div", { class: "view-head" }, notice("Loading schedule…"));
  const status = h("div", { id: "schedule-page-status" });
  const facts = h("div", { id: "schedule-facts" });
  const change = h("div", { id: "schedule-changing" });
  fill(main, head, status, facts, change);
  let timer = null;

  async function remove() {
    try {
      await call(`/schedules/${encodeURIComponent(name)}`, { method: "DELETE", signal: controller.signal });
      location.hash = "#/schedules";
    } catch (error) {
      context.failed(error, status);
    }
  }

  function draw(schedule) {
    fill(
      head,
      h(
        "div",
        { class: "pool-title" },
        h("h1", {}, "Schedule ", h("span", { class: "mono" }, schedule.name)),
        h("span", { id: "schedule-state" }, stateBadge(schedule)),
        readOnly ? null : pauseButton(context, schedule, status, refresh),
        readOnly ? null : confirming("Remove", "Really remove?", remove, { id: "remove-schedule" }),
      ),
      h("pre", { class: "cmd-line mono" }, schedule.cmd),
      h(
        "p",
        { class: "muted" },
        h("span", { class: "mono" }, schedule.cron),
        ` in ${schedule.timezone}`,
        ` · on ${targets(schedule)}`,
        ` · made by ${schedule.created_by || "–"} `,
        when(schedule.created_at),
        schedule.overlap ? " · runs overlap" : "",
        schedule.catch_up ? " · catches up" : "",
        ` · ${schedule.skipped} skipped`,
      ),
    );
    const runs = [...schedule.runs].reverse();
    fill(
      facts,
      h(
        "section",
        { class: "card facts" },
        h("h2", {}, "Next runs"),
        schedule.next_runs.length
          ? h("ul", { id: "next-runs" }, schedule.next_runs.map((iso) => h("li", {}, runTime(iso, schedule.timezone))))
          : h("p", { class: "muted", id: "next-runs" }, "None while paused."),
        h("h2", {}, "Latest runs"),
        runs.length
          ? h(
              "table",
              { id: "schedule-runs" },
              h("thead", {}, h("tr", {}, ["At", "Outcome", "Pool"].map((t) => h("th", {}, t)))),
              h(
                "tbody",
                {},
                runs.map((run) =>
                  h(
                    "tr",
                    {},
                    h("td", { "data-label": "At" }, when(run.at)),
                    h("td", { "data-label": "Outcome" }, run.outcome),
                    h(
                      "td",
                      { "data-label": "Pool" },
                      run.pool ? h("a", { class: "mono", href: `#/pools/${encodeURIComponent(run.pool)}` }, run.pool) : h("span", { class: "muted" }, run.why || "–"),
                    ),
                  ),
                ),
              ),
            )
          : h("p", { class: "muted" }, "It has not run yet."),
        h(
          "p",
          {},
          "Latest pools: ",
          h("span", { class: "last-pools", id: "schedule-pools" }, schedule.last_pools.length ? schedule.last_pools.map(poolLink) : h("span", { class: "muted" }, "none yet")),
          " ",
          h("a", { href: `#/pools?schedule=${encodeURIComponent(schedule.name)}`, id: "all-pools" }, "All its pools →"),
        ),
      ),
    );
    // The form is made once: what someone is typing is not redrawn away.
    if (!readOnly && !change.firstChild) fill(change, scheduleForm(context, schedule, controller.signal, (changed) => draw(changed)));
  }

  async function refresh() {
    clearTimeout(timer);
    try {
      draw(await call(`/schedules/${encodeURIComponent(name)}`, { signal: controller.signal }));
    } catch (error) {
      context.failed(error, head);
      if (error.status === 401 || error.status === 404) return;
    }
    if (!controller.signal.aborted) timer = setTimeout(refresh, REFRESH);
  }

  refresh();
  return () => {
    controller.abort();
    clearTimeout(timer);
  };
}
