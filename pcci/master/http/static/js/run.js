// Run: a form for a new pool.  While it is filled in, the master tells
// which workers the targets match; once started, the new pool's page opens.

import { call } from "./api.js";
import { fill, h, notice } from "./dom.js";
import { jobFields } from "./jobform.js";

// `params` may fill the form in (cmd, workers, timeout...): "Run again".
export function showRun(main, context, params = new URLSearchParams()) {
  const controller = new AbortController();
  const job = jobFields(context, params, controller.signal);
  const status = h("div", { id: "run-status" });
  const submit = h("button", { type: "submit", id: "run-submit" }, "Run");
  const form = h("form", { class: "card run", id: "run-form" }, job.head, job.more, h("div", { class: "actions" }, submit), status);
  fill(main, h("div", { class: "view-head" }, h("h1", {}, "Run a command")), form);

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    submit.disabled = true;
    fill(status, notice("Starting…"));
    try {
      const answer = await call("/job", { method: "POST", body: job.body(), signal: controller.signal });
      location.hash = `#/pools/${encodeURIComponent(answer.pool_id)}`;
    } catch (error) {
      context.failed(error, status);
      submit.disabled = false;
    }
  });
  job.watch(form);
  job.inputs.cmd.focus();
  return () => controller.abort();
}
