// Run: a form for a new pool.  While it is filled in, the master tells
// which workers the targets match (POST /job?dry_run=true); once started,
// the new pool's page opens.

import { call } from "./api.js";
import { fill, h, notice, scopeText } from "./dom.js";

const PREVIEW_DELAY = 300; // ms after the last keystroke

function words(text) {
  return text.split(/\s+/).filter(Boolean);
}

function field(label, input, hint) {
  return h("label", { class: "field" }, h("span", { class: "field-name" }, label), input, hint ? h("span", { class: "hint" }, hint) : null);
}

function number(text, name) {
  const value = Number(text);
  if (text.trim() === "" || Number.isNaN(value)) throw new Error(`${name} must be a number of seconds`);
  return value;
}

// `params` may fill the form in (cmd, workers, timeout...): "Run again".
export function showRun(main, context, params = new URLSearchParams()) {
  const inputs = {
    cmd: h("input", { name: "cmd", class: "mono", required: true, placeholder: "uname -a", autocomplete: "off", spellcheck: "false" }),
    workers: h("input", { name: "workers", class: "mono", placeholder: "pi[01-16] gpu-* build1", autocomplete: "off", spellcheck: "false" }),
    exclude: h("input", { name: "exclude", class: "mono", placeholder: "pi07", autocomplete: "off", spellcheck: "false" }),
    labels: h("input", { name: "labels", class: "mono", placeholder: "gpu os=linux", autocomplete: "off", spellcheck: "false" }),
    timeout: h("input", { name: "timeout", inputmode: "decimal", placeholder: "none" }),
    cwd: h("input", { name: "cwd", class: "mono", placeholder: "the worker's own", autocomplete: "off", spellcheck: "false" }),
    env: h("textarea", { name: "env", class: "mono", rows: 2, placeholder: "KEY=VALUE, one a line", spellcheck: "false" }),
    batch: h("input", { name: "batch", placeholder: "all at once", autocomplete: "off" }),
    wait_offline: h("input", { name: "wait_offline", inputmode: "decimal", placeholder: "no" }),
  };
  for (const [name, input] of Object.entries(inputs)) input.value = params.get(name) || "";
  const matches = h("div", { id: "matches", class: "matches", "aria-live": "polite" });
  const status = h("div", { id: "run-status" });
  const submit = h("button", { type: "submit", id: "run-submit" }, "Run");
  const form = h(
    "form",
    { class: "card run", id: "run-form" },
    field("Command", inputs.cmd, "split like a shell line, not run by one: use sh -c '…' for pipes"),
    field("Workers", inputs.workers, "names, node sets or globs, separated by spaces"),
    context.session.scope
      ? h("p", { class: "hint", id: "run-scope" }, "This token may use only: ", h("span", { class: "mono" }, scopeText(context.session.scope)))
      : null,
    matches,
    h(
      "details",
      { open: ["labels", "exclude", "timeout", "cwd", "env", "batch", "wait_offline"].some((name) => params.get(name)) },
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
    h("div", { class: "actions" }, submit),
    status,
  );
  fill(main, h("div", { class: "view-head" }, h("h1", {}, "Run a command")), form);
  const controller = new AbortController();
  let previewTimer = null;
  let previewed = 0;

  // The POST /job body the form describes.
  function body(cmd) {
    const request = { cmd };
    const workers = words(inputs.workers.value);
    const labels = words(inputs.labels.value);
    const exclude = words(inputs.exclude.value);
    if (workers.length) request.workers = workers;
    if (labels.length) request.labels = labels;
    if (exclude.length) request.exclude = exclude;
    if (inputs.timeout.value.trim()) request.timeout = number(inputs.timeout.value, "timeout");
    if (inputs.cwd.value.trim()) request.cwd = inputs.cwd.value.trim();
    const env = inputs.env.value.split("\n").map((line) => line.trim()).filter(Boolean);
    if (env.length) {
      request.env = {};
      for (const line of env) {
        const equals = line.indexOf("=");
        if (equals < 1) throw new Error(`env: "${line}" is not KEY=VALUE`);
        request.env[line.slice(0, equals)] = line.slice(equals + 1);
      }
    }
    const batch = inputs.batch.value.trim();
    if (batch) request.batch = /^\d+$/.test(batch) ? Number(batch) : batch;
    if (inputs.wait_offline.value.trim()) request.wait_offline = number(inputs.wait_offline.value, "wait for offline workers");
    return request;
  }

  async function preview() {
    const asked = ++previewed;
    if (!inputs.workers.value.trim() && !inputs.labels.value.trim()) {
      fill(matches, h("span", { class: "muted" }, "Name workers, or give labels, to see which match."));
      return;
    }
    try {
      const answer = await call("/job?dry_run=true", {
        method: "POST",
        body: body(inputs.cmd.value.trim() || "true"),
        signal: controller.signal,
      });
      if (asked !== previewed) return;
      const offline = answer.offline || [];
      fill(
        matches,
        h("span", {}, `Matches ${answer.workers.length} worker${answer.workers.length === 1 ? "" : "s"}: `),
        h("span", { class: "mono" }, answer.workers.join(", ")),
        offline.length ? h("span", { class: "muted" }, ` (${offline.length} offline, waited for: ${offline.join(", ")})`) : null,
      );
    } catch (error) {
      if (asked !== previewed) return;
      if (error.status === 401) context.failed(error, matches);
      else if (error.name !== "AbortError") fill(matches, h("span", { class: "error-text" }, error.message));
    }
  }

  form.addEventListener("input", () => {
    clearTimeout(previewTimer);
    previewTimer = setTimeout(preview, PREVIEW_DELAY);
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    submit.disabled = true;
    fill(status, notice("Starting…"));
    try {
      const answer = await call("/job", { method: "POST", body: body(inputs.cmd.value.trim()), signal: controller.signal });
      location.hash = `#/pools/${encodeURIComponent(answer.pool_id)}`;
    } catch (error) {
      context.failed(error, status);
      submit.disabled = false;
    }
  });
  preview();
  inputs.cmd.focus();
  return () => {
    controller.abort();
    clearTimeout(previewTimer);
  };
}
