// A shell on a worker in the page (#/shell/<name>), the shells open and
// kept (#/shells), and a kept shell's recording played back
// (#/shells/<id>).  The terminal is xterm.js (vendored, see
// /ui/vendor/xterm/README), loaded when one is first shown; the shell goes
// over the master's WebSocket, GET /workers/<name>/shell (docs/api.md).

import { APIError, call, savedToken } from "./api.js";
import { fill, h, notice, when } from "./dom.js";

let loaded = null;

// xterm.js writes its theme and cell sizes into <style> elements, and some
// colours into style attributes: this page's policy (style-src 'self')
// refuses to apply both, and reports each.  So the <style> elements it
// makes are inert <template> elements instead (never applied, never
// refused), each one's text mirrored into a constructed stylesheet; and a
// style attribute is set through the element's style object.  Both are
// CSSOM, which the policy leaves to scripts: it stays as strict as it was.
function policyFriendlyStyles() {
  const create = Document.prototype.createElement;
  Document.prototype.createElement = function (tag, options) {
    if (String(tag).toLowerCase() !== "style") return create.call(this, tag, options);
    const element = create.call(this, "template");
    element.dataset.pcciStyle = "";
    return element;
  };
  const setAttribute = Element.prototype.setAttribute;
  Element.prototype.setAttribute = function (name, value) {
    if (String(name).toLowerCase() === "style" && this.style) this.style.cssText = String(value);
    else setAttribute.call(this, name, value);
  };
  const sheets = new Map(); // inert <style> -> its stylesheet
  const mirror = () => {
    for (const [element, sheet] of sheets) {
      if (!element.isConnected) {
        sheets.delete(element);
        document.adoptedStyleSheets = document.adoptedStyleSheets.filter((s) => s !== sheet);
      }
    }
    for (const element of document.querySelectorAll("template[data-pcci-style]")) {
      let sheet = sheets.get(element);
      if (!sheet) {
        sheet = new CSSStyleSheet();
        sheets.set(element, sheet);
        document.adoptedStyleSheets = [...document.adoptedStyleSheets, sheet];
      }
      if (sheet.pcciText !== element.textContent) {
        sheet.replaceSync(element.textContent);
        sheet.pcciText = element.textContent;
      }
    }
  };
  new MutationObserver(mirror).observe(document.body, { subtree: true, childList: true, characterData: true });
}

function xterm() {
  if (!loaded) {
    policyFriendlyStyles();
    loaded = Promise.all([import("/ui/vendor/xterm/xterm.mjs"), import("/ui/vendor/xterm/addon-fit.mjs")]).then(
      ([core, fit]) => ({ Terminal: core.Terminal, FitAddon: fit.FitAddon }),
    );
  }
  return loaded;
}

// A terminal in `place`, fitted to it as the window changes; copy with
// Ctrl+Shift+C (paste is the browser's own).
async function terminal(place, options = {}) {
  const { Terminal, FitAddon } = await xterm();
  const term = new Terminal({ cursorBlink: true, scrollback: 5000, fontSize: 14, ...options });
  const fit = new FitAddon();
  term.loadAddon(fit);
  term.open(place);
  fit.fit();
  term.attachCustomKeyEventHandler((event) => {
    if (event.type === "keydown" && event.ctrlKey && event.shiftKey && event.code === "KeyC") {
      navigator.clipboard?.writeText(term.getSelection());
      return false;
    }
    return true;
  });
  const resized = () => fit.fit();
  window.addEventListener("resize", resized);
  return { term, stop: () => (window.removeEventListener("resize", resized), term.dispose()) };
}

function copyButton(get) {
  return h(
    "button",
    { type: "button", class: "small quiet", id: "shell-copy", onclick: () => navigator.clipboard?.writeText(get()?.term.getSelection() || "") },
    "Copy selection",
  );
}

// The shell's WebSocket address: a browser cannot send an Authorization
// header, so the token goes as a subprotocol beside "pcci.shell".
function socketFor(name, term) {
  const url = new URL(`/workers/${encodeURIComponent(name)}/shell`, location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  url.search = new URLSearchParams({ rows: term.rows, cols: term.cols, term: "xterm-256color" });
  const token = savedToken();
  const socket = new WebSocket(url, token ? ["pcci.shell", `pcci.bearer.${token}`] : ["pcci.shell"]);
  socket.binaryType = "arraybuffer";
  return socket;
}

// Why a shell did not open, in the master's words (a refused WebSocket
// tells a page nothing): the same address without the upgrade answers 426
// when it would have opened, else the refusal.  A worker another master
// holds opens there: its dashboard, one click away (this page may only
// connect to its own master, and its token is this page's).
async function refusal(name) {
  try {
    await call(`/workers/${encodeURIComponent(name)}/shell`);
  } catch (error) {
    if (!(error instanceof APIError && error.status === 426)) {
      const there = error.body?.url ? new URL(error.body.url) : null;
      if (!there) return error.message;
      const link = `${there.origin}/#/shell/${encodeURIComponent(name)}`;
      return [error.message, " ", h("a", { href: link, id: "shell-elsewhere" }, `Open it on master ${error.body.master}`)];
    }
  }
  return "the master closed the connection";
}

export function showShell(main, context, name) {
  const status = h("p", { class: "muted", id: "shell-status", role: "status" }, `Opening a shell on ${name}…`);
  const screen = h("div", { class: "terminal", id: "shell-screen" });
  let shown = null;
  let socket = null;
  let over = false;
  fill(main, h("div", { class: "view-head" }, h("h1", {}, `Shell on ${name}`), status, copyButton(() => shown)), screen);

  function ended(message, line) {
    if (over) return;
    over = true;
    fill(status, message);
    shown?.term.write(`\r\n\x1b[7m[pcci: ${line}]\x1b[0m\r\n`);
  }

  (async () => {
    shown = await terminal(screen);
    const { term } = shown;
    socket = socketFor(name, term);
    const encoder = new TextEncoder();
    const send = (bytes) => {
      if (socket.readyState !== WebSocket.OPEN) return;
      const message = new Uint8Array(bytes.length + 1); // stream 0: input
      message.set(bytes, 1);
      socket.send(message);
    };
    term.onData((data) => send(encoder.encode(data)));
    term.onBinary((data) => send(Uint8Array.from(data, (c) => c.charCodeAt(0))));
    term.onResize(({ rows, cols }) => {
      if (socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ type: "resize", rows, cols }));
    });
    socket.onmessage = (event) => {
      if (typeof event.data !== "string") {
        term.write(new Uint8Array(event.data, 1)); // stdout or stderr, as the terminal shows them
        return;
      }
      const message = JSON.parse(event.data);
      if (message.type === "started") fill(status, `Connected to ${name} (pid ${message.pid}). Copy: Ctrl+Shift+C; paste: the browser's own.`);
      if (message.type === "ended") {
        const how = message.status === null ? message.reason : `status ${message.status}${message.reason ? `: ${message.reason}` : ""}`;
        ended(`The shell ended (${how}).`, `the shell ended: ${how}`);
      }
    };
    let opened = false;
    socket.onopen = () => (opened = true);
    socket.onclose = async () => {
      if (opened) ended("The connection to the master closed.", "the connection to the master closed");
      else if (!over) {
        const why = await refusal(name);
        over = true;
        fill(status, notice(why, "error"));
      }
    };
    term.focus();
  })().catch((error) => context.failed(error, status));

  return () => {
    over = true;
    socket?.close();
    shown?.stop();
  };
}

// The shells open and kept, newest first, each with its recording to replay.
export function showShells(main, context) {
  const list = h("div", { id: "shells" }, notice("Loading shells…"));
  fill(main, h("div", { class: "view-head" }, h("h1", {}, "Shells"), h("p", { class: "muted" }, "Opened with pcci shell or a node's Shell button; each is recorded (what it showed, not what was typed).")), list);
  const controller = new AbortController();
  call("/shells", { signal: controller.signal })
    .then((shells) => {
      if (!shells.length) {
        fill(list, notice("No shell has been opened yet (or they are past their retention)."));
        return;
      }
      const rows = shells.map((s) =>
        h(
          "tr",
          { dataset: { shell: s.id } },
          h("td", {}, s.recorded === null ? s.id : h("a", { href: `#/shells/${encodeURIComponent(s.id)}` }, s.id)),
          h("td", {}, s.worker),
          h("td", {}, s.user || "–"),
          h("td", {}, s.by),
          h("td", {}, when(s.opened_at)),
          h("td", {}, s.open ? "open" : s.status !== null ? `status ${s.status}` : s.reason || "ended"),
          h("td", {}, s.cmd || "(login)"),
        ),
      );
      fill(list, h("table", { class: "table" }, h("thead", {}, h("tr", {}, ["Shell", "Worker", "User", "By", "Opened", "Ended", "Command"].map((t) => h("th", {}, t)))), h("tbody", {}, rows)));
    })
    .catch((error) => context.failed(error, list));
  return () => controller.abort();
}

// A kept shell's recording, played at its own pace (silences cut to 2 s).
export function showReplay(main, context, id) {
  const status = h("p", { class: "muted", id: "replay-status", role: "status" }, "Loading the recording…");
  const screen = h("div", { class: "terminal", id: "replay-screen" });
  fill(main, h("div", { class: "view-head" }, h("h1", {}, `Shell ${id}`), status), screen);
  let shown = null;
  let timer = null;
  const controller = new AbortController();
  (async () => {
    const shell = await call(`/shells/${encodeURIComponent(id)}`, { signal: controller.signal });
    const response = await fetch(`/shells/${encodeURIComponent(id)}/recording`, {
      headers: { Authorization: `Bearer ${savedToken()}` },
      signal: controller.signal,
    });
    if (!response.ok) throw new APIError(response.status, (await response.json()).message);
    const [header, ...lines] = (await response.text()).split("\n").filter(Boolean);
    const { width, height } = JSON.parse(header);
    shown = await terminal(screen, { cols: width, rows: height, cursorBlink: false, disableStdin: true });
    const events = lines.flatMap((line) => {
      try {
        const [at, kind, text] = JSON.parse(line);
        return kind === "o" ? [{ at, text }] : [];
      } catch (_) {
        return []; // a piece cut short: what is whole plays
      }
    });
    fill(status, `${shell.by} on ${shell.worker}${shell.user ? ` as ${shell.user}` : ""}, opened `, when(shell.opened_at), ": playing…");
    let index = 0;
    let last = 0;
    const next = () => {
      if (index >= events.length) {
        fill(status, `${shell.by} on ${shell.worker}: the end of the recording.`);
        return;
      }
      const { at, text } = events[index++];
      timer = setTimeout(() => {
        shown.term.write(text);
        next();
      }, Math.min(Math.max(at - last, 0), 2) * 1000);
      last = at;
    };
    next();
  })().catch((error) => context.failed(error, status));
  return () => {
    controller.abort();
    clearTimeout(timer);
    shown?.stop();
  };
}
