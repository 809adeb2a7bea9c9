// The dashboard: signing in, the views' addresses (#/nodes, #/pools,
// #/pools/<id>, #/run, #/schedules, #/schedules/<name>, #/shell/<name>,
// #/shells, #/shells/<id>, #/fleet) and the bar at the top.

import { APIError, call, saveToken, savedToken } from "./api.js";
import { ageTimes, fill, h, notice, scopeText } from "./dom.js";
import { showFleet } from "./fleet.js";
import { showNodes } from "./nodes.js";
import { showPool } from "./pool.js";
import { showPools } from "./pools.js";
import { showRun } from "./run.js";
import { showSchedule, showSchedules } from "./schedules.js";
import { showReplay, showShell, showShells } from "./terminal.js";

const main = document.getElementById("main");
let session = null; // {auth, name, read_only, admin, scope} from GET /whoami
let stopView = () => {};

// What the views share: who is signed in, and how a failed call is shown.
const context = {
  get session() {
    return session;
  },
  // Show `error` in `place`; a refused token sends the person to sign in.
  failed(error, place) {
    if (error.name === "AbortError") return;
    if (error instanceof APIError && error.status === 401) {
      signOut("The master no longer accepts this token: sign in again.");
      return;
    }
    fill(place, notice(error.message, "error"));
  },
};

function route() {
  stopView();
  stopView = () => {};
  if (!session) return;
  const [path, query = ""] = location.hash.replace(/^#/, "").split("?");
  const parts = path.split("/").filter(Boolean);
  const params = new URLSearchParams(query);
  let view = parts[0] || "nodes";
  if ((view === "run" || view === "shell") && session.read_only) view = "nodes";
  for (const link of document.querySelectorAll("#nav a")) {
    link.classList.toggle("current", link.dataset.view === view);
  }
  main.replaceChildren();
  const titles = {
    nodes: "Nodes", pools: parts[1] ? "Pool" : "Pools", run: "Run", schedules: parts[1] ? "Schedule" : "Schedules",
    shell: "Shell", shells: parts[1] ? "Shell" : "Shells", fleet: "Fleet",
  };
  document.title = `${titles[view] || "Nodes"} · pcci`;
  if (view === "pools" && parts[1]) {
    stopView = showPool(main, context, decodeURIComponent(parts[1]));
  } else if (view === "pools") {
    stopView = showPools(main, context, params);
  } else if (view === "schedules" && parts[1]) {
    stopView = showSchedule(main, context, decodeURIComponent(parts[1]));
  } else if (view === "schedules") {
    stopView = showSchedules(main, context);
  } else if (view === "run") {
    stopView = showRun(main, context, params);
  } else if (view === "shell" && parts[1]) {
    stopView = showShell(main, context, decodeURIComponent(parts[1]));
  } else if (view === "shells" && parts[1]) {
    stopView = showReplay(main, context, decodeURIComponent(parts[1]));
  } else if (view === "shells") {
    stopView = showShells(main, context);
  } else if (view === "fleet") {
    stopView = showFleet(main, context, params);
  } else {
    stopView = showNodes(main, context);
  }
}

function signedIn(who) {
  session = who;
  document.getElementById("nav").hidden = false;
  document.getElementById("nav-run").hidden = who.read_only;
  const name = who.auth ? who.name || "token" : "no auth";
  fill(
    document.getElementById("who-name"),
    name,
    who.read_only ? h("span", { class: "badge read-only" }, "read-only") : null,
    who.scope ? h("span", { class: "badge scoped", id: "scope-badge", title: scopeText(who.scope) }, "scoped") : null,
  );
  document.getElementById("sign-out").hidden = !who.auth;
  document.getElementById("who").hidden = false;
  route();
}

function signOut(message) {
  stopView();
  stopView = () => {};
  session = null;
  saveToken(null);
  document.getElementById("nav").hidden = true;
  document.getElementById("who").hidden = true;
  showSignIn(message);
}

function showSignIn(message) {
  const input = h("input", {
    id: "token",
    name: "token",
    type: "password",
    autocomplete: "current-password",
    required: true,
    placeholder: "API token",
    "aria-label": "API token",
  });
  const status = h("div", { class: "sign-in-status" }, message ? notice(message, "error") : null);
  const form = h(
    "form",
    { class: "card sign-in", id: "sign-in" },
    h("h1", {}, "Sign in to pcci"),
    h(
      "p",
      { class: "muted" },
      "Paste an API token. The master writes one to ~/.pcci/api-token on its first start; ",
      "a token marked read only shows everything but cannot run or kill.",
    ),
    input,
    h("button", { type: "submit" }, "Sign in"),
    status,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const token = input.value.trim();
    fill(status, notice("Checking…"));
    try {
      const who = await call("/whoami", { token });
      saveToken(token);
      signedIn(who);
    } catch (error) {
      const text =
        error.status === 401
          ? "The master refused this token. Check it against the api-token file on the master."
          : error.message;
      fill(status, notice(text, "error"));
      input.select();
    }
  });
  fill(main, form);
  input.focus();
}

async function start() {
  document.getElementById("sign-out").addEventListener("click", () => signOut());
  window.addEventListener("hashchange", route);
  setInterval(() => ageTimes(main), 10000);
  const token = savedToken();
  try {
    signedIn(await call("/whoami", { token }));
  } catch (error) {
    if (error.status === 401) {
      // Forget the token refused, not one saved while the answer was on its way.
      if (savedToken() === token) saveToken(null);
      showSignIn(token ? "The master no longer accepts this token: sign in again." : null);
    }
    else fill(main, notice(`pcci: ${error.message}`, "error"));
  }
}

start();
