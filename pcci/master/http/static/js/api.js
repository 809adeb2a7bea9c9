// The master's JSON API, as the page calls it: the token goes in the
// Authorization header of each call, and lives in sessionStorage only (it
// is never put in a URL or a cookie).

const TOKEN_KEY = "pcci.token";

export class APIError extends Error {
  constructor(status, message, body = null) {
    super(message);
    this.status = status;
    this.body = body; // the answer's other fields, if it was JSON
  }
}

export function savedToken() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function saveToken(token) {
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
}

function headers(token, extra = {}) {
  const all = { Accept: "application/json", ...extra };
  if (token) all.Authorization = `Bearer ${token}`;
  return all;
}

async function failure(response) {
  let message = `${response.status} ${response.statusText}`;
  let body = null;
  try {
    body = await response.json();
    if (body && typeof body.message === "string") message = body.message;
  } catch (_) {
    // Not JSON (a proxy's page, say): the status line says enough.
  }
  return new APIError(response.status, message, body);
}

async function send(path, { method = "GET", body, token = savedToken(), signal } = {}) {
  const init = { method, headers: headers(token), signal, cache: "no-store" };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new APIError(0, "the master cannot be reached");
  }
  if (!response.ok) throw await failure(response);
  return response;
}

// The JSON answer of a call; with `withResponse`, also the response (for
// its headers).
export async function call(path, options = {}) {
  const response = await send(path, options);
  const body = await response.json();
  return options.withResponse ? { body, response } : body;
}

// The `next` address of a Link header, or null.
export function nextLink(response) {
  const link = response.headers.get("Link") || "";
  const match = /<([^>]+)>;\s*rel="next"/.exec(link);
  return match ? match[1] : null;
}

// Server-sent events from a fetch stream (EventSource cannot send a
// token).  Calls onEvent({id, name, data}) with data parsed, and resolves
// when the master ends the stream; rejects when the call fails.
export async function streamEvents(path, onEvent, { signal } = {}) {
  const response = await send(path, { signal });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  const parser = new EventParser(onEvent);
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    parser.feed(value);
  }
}

// The text/event-stream format, fed text in any pieces.
export class EventParser {
  constructor(onEvent) {
    this.onEvent = onEvent;
    this.buffer = "";
    this.fields = {};
  }

  feed(text) {
    this.buffer += text;
    const lines = this.buffer.split("\n");
    this.buffer = lines.pop();
    for (const raw of lines) {
      const line = raw.endsWith("\r") ? raw.slice(0, -1) : raw;
      if (line === "") this.dispatch();
      else if (!line.startsWith(":")) {
        const colon = line.indexOf(":");
        const name = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        (this.fields[name] ||= []).push(value);
      }
    }
  }

  dispatch() {
    const fields = this.fields;
    this.fields = {};
    if (!fields.data) return;
    const id = fields.id ? Number(fields.id[fields.id.length - 1]) : null;
    const name = fields.event ? fields.event[fields.event.length - 1] : "message";
    this.onEvent({ id, name, data: JSON.parse(fields.data.join("\n")) });
  }
}
