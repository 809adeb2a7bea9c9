// The fields of a POST /job body as the Run and Schedules forms show them:
// the command, the targets (and, while they are typed, the workers they
// match, asked of the master as a dry run) and the options under "More".

import { call } from "./api.js";
import { fill, h, scopeText, workerNames } from "./dom.js";

const PREVIEW_DELAY = 300; // ms after the last keystroke
const OPTIONS = ["labels", "exclude", "timeout", "cwd", "env", "batch", "wait_offline"];

// Fill `place` with what `ask()` resolves to, now and a moment after each
// change to `form` (until `signal` aborts): only the latest answer shows,
// and a failure shows its message there.
export function livePreview(context, form, place, signal, ask) {
  let timer = null;
  let asked = 0;
  async function show() {
    const mine = ++asked;
    try {
      const shown = await ask();
      if (mine === asked) fill(place, shown);
    } catch (error) {
      if (mine !== asked || error.name === "AbortError") return;
      if (error.status === 401) context.failed(error, place);
      else fill(place, h("span", { class: "error-text" }, error.message));
    }
  }
  form.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(show, PREVIEW_DELAY);
  });
  signal.addEventListener("abort", () => clearTimeout(timer));
  show();
}

function words(text) {
  return text.split(/\s+/).filter(Boolean);
}

export function field(label, input, hint) {
  return h("label", { class: "field" }, h("span", { class: "field-name" }, label), input, hint ? h("span", { class: "hint" }, hint) : null);
}

export function seconds(text, name) {
  const value = Number(text);
  if (text.trim() === "" || Number.isNaN(value)) throw new Error(`${name} must be a number of seconds`);
  return value;
}

function text(attributes) {
  return h("input", { class: "mono", autocomplete: "off", spellcheck: "false", ...attributes });
}

// The form's text for each field of a job as the API shows it (a schedule's):
// lists are spaced, env is a KEY=VALUE line each.
export function jobValues(job) {
  const values = {};
  for (const [name, value] of Object.entries(job)) {
    if (Array.isArray(value)) values[name] = value.join(" ");
    else if (name === "env" && value) values.env = Object.entries(value).map(([k, v]) => `${k}=${v}`).join("\n");
    else if (value !== null && value !== undefined) values[name] = String(value);
  }
  return values;
}

// `values` fills the fields in (a URLSearchParams, or jobValues' answer);
// `signal` ends the previews when the view goes.
export function jobFields(context, values, signal) {
  const get = (name) => (values instanceof URLSearchParams ? values.get(name) : values[name]) || "";
  const inputs = {
    cmd: text({ name: "cmd", required: true, placeholder: "uname -a" }),
    workers: text({ name: "workers", placeholder: "pi[01-16] gpu-* build1" }),
    exclude: text({ name: "exclude", placeholder: "pi07" }),
    labels: text({ name: "labels", placeholder: "gpu os=linux" }),
    timeout: h("input", { name: "timeout", inputmode: "decimal", placeholder: "none" }),
    cwd: text({ name: "cwd", placeholder: "the worker's own" }),
    env: h("textarea", { name: "env", class: "mono", rows: 2, placeholder: "KEY=VALUE, one a line", spellcheck: "false" }),
    batch: h("input", { name: "batch", placeholder: "all at once", autocomplete: "off" }),
    wait_offline: h("input", { name: "wait_offline", inputmode: "decimal", placeholder: "no" }),
  };
  for (const [name, input] of Object.entries(inputs)) input.value = get(name);
  const matches = h("div", { id: "matches", class: "matches", "aria-live": "polite" });
  // The job the fields describe; with `cleared`, an emptied option is
  // null (a PATCH removes it) rather than left out.
  function body(cleared = false) {
    const job = { cmd: inputs.cmd.value.trim() };
    const set = (name, value, empty) => {
      if (!empty) job[name] = value;
      else if (cleared) job[name] = null;
    };
    for (const name of ["workers", "labels", "exclude"]) {
      const list = words(inputs[name].value);
      set(name, list, !list.length);
    }
    for (const [name, label] of [["timeout", "timeout"], ["wait_offline", "wait for offline workers"]]) {
      const value = inputs[name].value.trim();
      set(name, value && seconds(value, label), !value);
    }
    set("cwd", inputs.cwd.value.trim(), !inputs.cwd.value.trim());
    const env = inputs.env.value.split("\n").map((line) => line.trim()).filter(Boolean);
    const pairs = {};
    for (const line of env) {
      const equals = line.indexOf("=");
      if (equals < 1) throw new Error(`env: "${line}" is not KEY=VALUE`);
      pairs[line.slice(0, equals)] = line.slice(equals + 1);
    }
    set("env", pairs, !env.length);
    const batch = inputs.batch.value.trim();
    set("batch", /^\d+$/.test(batch) ? Number(batch) : batch, !batch);
    return job;
  }

  // The workers the targets match, as the master answers a dry run.
  async function matching() {
    if (!inputs.workers.value.trim() && !inputs.labels.value.trim()) {
      return h("span", { class: "muted" }, "Name workers, or give labels, to see which match.");
    }
    const job = body();
    const answer = await call("/job?dry_run=true", { method: "POST", body: { ...job, cmd: job.cmd || "true" }, signal });
    const offline = answer.offline || [];
    return [
      h("span", {}, `Matches ${answer.workers.length} worker${answer.workers.length === 1 ? "" : "s"}: `),
      h("span", { class: "mono" }, workerNames(answer.workers)),
      offline.length ? h("span", { class: "muted" }, ` (${offline.length} offline, waited for: ${workerNames(offline)})`) : null,
    ];
  }

  return {
    inputs,
    body,
    // The command, the targets and the workers they match.
    head: [
      field("Command", inputs.cmd, "split like a shell line, not run by one: use sh -c '…' for pipes"),
      field("Workers", inputs.workers, "names, node sets or globs, separated by spaces"),
      context.session.scope
        ? h("p", { class: "hint", id: "run-scope" }, "This token may use only: ", h("span", { class: "mono" }, scopeText(context.session.scope)))
        : null,
      matches,
    ],
    more: h(
      "details",
      { open: OPTIONS.some((name) => get(name)) },
      h("summary", {}, "More: labels, exclude, timeout, cwd, env, batch, offline workers"),
      h(
        "div",
        { class: "fields" },
        field("Labels", inputs.labels, "only workers with all of these"),
        field("Exclude", inputs.exclude, "leave these workers out"),
        field("Timeout (s)", inputs.timeout, "kill the job after this long"),
        field("Working directory", inputs.cwd),
        field("Environment", inputs.env),
        field("Batch", inputs.batch, "N or N%: how many run at a time"),
        field("Wait for offline workers (s)", inputs.wait_offline, "jobs on workers that are off start when they connect, within this long"),
      ),
    ),
    // Preview the matches now, and again whenever `form` changes.
    watch(form) {
      livePreview(context, form, matches, signal, matching);
    },
  };
}
