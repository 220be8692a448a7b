// arw-models web page: the installed models, live downloads and their controls.
//
// State: on load the page asks /probe for the newest event id, then reads the
// snapshot (GET /models, /models/downloads), then follows /events from that id,
// so what happened between the two is replayed on top of the snapshot. A
// bus.gap (events lost, or a restarted service) reads the snapshot again.
//
// Connection: EventSource reconnects by itself (with Last-Event-ID) after a
// network error, but gives up for good on any non-200 answer (a proxy's 502
// while the service restarts, a 503 too-many-streams, a 401). The page then
// opens a new stream with ?after=<last id>, backing off, and says on screen
// that it is disconnected, and why, until a stream is back. While it is, speeds
// and ETAs are not shown: they would be stale.
//
// A failed job whose .part was kept offers Resume; one without (nothing to resume:
// /resume would answer 404) offers Retry, which POSTs its url and sha256 again.
//
// A model of many files (a hub repository, a registry's model: a job or an
// installed model with `files`) is one row like any other, with a toggle that
// opens a row under it listing each file: its size, and for a job its progress and
// state. A row without `files` gets neither.
"use strict";

(() => {
  const TOKEN_KEY = "arw-models-token";
  const TERMINAL = new Set(["complete", "error", "canceled"]);
  const STARTS = new Set(["queued", "started", "resumed"]);
  const ACTIVE = new Set(["queued", "started", "resumed", "downloading", "retrying"]);
  const MAX_DELAY_MS = 15000;
  // A file of a many-file job is done fetched and verified, or found in the store.
  const FILE_DONE = new Set(["complete", "stored"]);

  const $ = (id) => document.getElementById(id);
  const meta = document.querySelector('meta[name="arw-api"]');
  // Relative to the page: "/ai/" under url_prefix "/ai", "/" standalone.
  const base = new URL((meta && meta.content) || ".", document.baseURI);
  const apiUrl = (path) => new URL(path, base).toString();

  const state = {
    auth: "none",
    retryMs: 3000,
    lastId: null, // the id of the last event applied, as a string of digits
    source: null,
    timer: null,
    failures: 0,
    jobs: new Map(), // id -> {fields of the job, row elements}
    models: new Map(), // id -> row elements
    modelsSeq: 0,
    syncing: null, // events that arrive while a snapshot is being read
    loaded: false, // the first snapshot is in
    live: false, // the event stream is open: speeds and ETAs are current
    posted: new Map(), // id -> the body this page POSTed for it, whole url included
    lists: new WeakMap(), // a row -> its list of files {toggle, body, row}, once it has files
    listSeq: 0,
  };

  // -- helpers ---------------------------------------------------------------------

  function token() {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  }

  function bytes(n) {
    if (typeof n !== "number" || !isFinite(n)) return "";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) {
      n /= 1024;
      i += 1;
    }
    return (i === 0 ? String(n) : n.toFixed(n < 10 ? 2 : 1)) + " " + units[i];
  }

  function duration(s) {
    if (typeof s !== "number" || !isFinite(s) || s < 0) return "";
    s = Math.round(s);
    const h = Math.floor(s / 3600);
    const m = Math.floor((s % 3600) / 60);
    const sec = String(s % 60).padStart(2, "0");
    if (h) return `${h}:${String(m).padStart(2, "0")}:${sec}`;
    return m ? `${m}:${sec}` : `${s} s`;
  }

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    Object.assign(node, props || {});
    for (const child of children) node.append(child);
    return node;
  }

  function say(text, kind) {
    const box = $("message");
    box.textContent = text || "";
    box.className = "message" + (kind === "info" ? " info" : "");
    box.hidden = !text;
  }

  class ApiError extends Error {
    constructor(message, status, code) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function call(method, path, body) {
    const headers = { Accept: "application/json" };
    if (token()) headers.Authorization = "Bearer " + token();
    const init = { method, headers, cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch(apiUrl(path), init);
    } catch (err) {
      // fetch says no more than this (the browser keeps the cause to itself).
      throw new ApiError(`cannot reach the service: ${err.message}`, 0, null);
    }
    let data = null;
    try {
      data = await res.json();
    } catch (err) {
      data = null;
    }
    if (!res.ok) {
      const problem = data || {};
      if (res.status === 401) askToken(problem.code === "invalid-token");
      const code = problem.code ? ` (${problem.code})` : "";
      // Not a problem document (a proxy's 502 page, say): the status says what there is.
      const detail = problem.detail || problem.title || `HTTP ${res.status} ${res.statusText}`.trim();
      throw new ApiError(detail + code, res.status, problem.code);
    }
    return { status: res.status, data };
  }

  // -- connection status and token ---------------------------------------------------

  function setConn(what, detail) {
    const live = what === "live";
    if (live !== state.live) {
      state.live = live;
      for (const job of state.jobs.values()) showJob(job); // speeds and ETAs shown or hidden
    }
    const node = $("conn");
    node.dataset.state = what;
    node.dataset.failures = String(state.failures);
    node.textContent = detail ? `${what}: ${detail}` : what;
  }

  function askToken(refused) {
    $("token-form").hidden = false;
    $("token-why").textContent = refused
      ? "The service refused this admin token. Enter the right one; it is kept in this tab only (sessionStorage)."
      : "This service needs its admin token to start, pause, cancel or remove downloads and to follow their " +
        "progress. It is kept in this tab only (sessionStorage).";
    $("token-input").focus();
  }

  $("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const value = $("token-input").value.trim();
    if (!value) return;
    sessionStorage.setItem(TOKEN_KEY, value);
    $("token-input").value = "";
    $("token-form").hidden = true;
    say("");
    reconnectNow();
  });

  $("token-forget").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    $("token-input").value = "";
  });

  $("token-button").addEventListener("click", () => askToken(false));

  // -- downloads -----------------------------------------------------------------------

  function jobRow(id) {
    let job = state.jobs.get(id);
    if (job) return job;
    const cells = {
      status: el("td", { className: "status" }),
      bar: el("progress", { max: 100 }),
      bytes: el("td"),
      speed: el("td"),
      eta: el("td"),
      pause: el("button", { type: "button", textContent: "Pause" }),
      resume: el("button", { type: "button", textContent: "Resume" }),
      retry: el("button", { type: "button", textContent: "Retry" }),
      cancel: el("button", { type: "button", textContent: "Cancel" }),
    };
    cells.pause.addEventListener("click", () => control("pause", id));
    cells.resume.addEventListener("click", () => control("resume", id));
    cells.cancel.addEventListener("click", () => control("cancel", id));
    cells.retry.addEventListener("click", () => retry(id));
    const row = el("tr", {}, el("td", {}, el("code", { textContent: id })), cells.status, el("td", {}, cells.bar),
      cells.bytes, cells.speed, cells.eta, el("td", { className: "actions" }, cells.pause, cells.resume, cells.retry, cells.cancel));
    row.dataset.id = id;
    $("downloads").tBodies[0].append(row);
    job = { fields: { id }, row, cells };
    state.jobs.set(id, job);
    return job;
  }

  function showJob(job) {
    const f = job.fields;
    const c = job.cells;
    const status = f.status || "";
    let label = status;
    if (status === "error") label = `error: ${f.code || ""}${f.error ? " (" + f.error + ")" : ""}`;
    if (status === "retrying") label = `retrying (attempt ${f.attempt || "?"}${f.code ? ", " + f.code : ""})`;
    c.status.textContent = label;
    c.status.className = "status status-" + status;
    job.row.dataset.status = status;
    if (typeof f.progress === "number") {
      c.bar.value = f.progress;
      c.bar.textContent = f.progress + " %";
    } else if (status === "complete") {
      c.bar.value = 100;
    } else if (!ACTIVE.has(status)) {
      c.bar.value = 0; // nothing moves: a bar that looks busy would say otherwise
    } else {
      c.bar.removeAttribute("value"); // size unknown: an indeterminate bar
    }
    c.bytes.textContent = f.total ? `${bytes(f.downloaded || 0)} / ${bytes(f.total)}` : bytes(f.downloaded);
    // Disconnected, the last speed and ETA are stale: they come back with the stream.
    const moving = status === "downloading" && state.live;
    let speed = moving && typeof f.speed === "number" ? bytes(f.speed) + "/s" : "";
    if (speed && f.segments > 1) speed += ` · ${f.segments} connections`;
    c.speed.textContent = speed;
    c.eta.textContent = moving ? duration(f.eta_s) : "";
    job.row.dataset.stale = String(status === "downloading" && !state.live);
    // A failed job is resumable only when the service says its .part was kept.
    const resumable = status === "paused" || status === "resumable" || (status === "error" && f.resumable === true);
    c.pause.hidden = !ACTIVE.has(status);
    c.resume.hidden = !resumable;
    c.retry.hidden = !(status === "error" && !resumable && retryBody(f));
    c.cancel.hidden = !(ACTIVE.has(status) || resumable);
    showJobFiles(job);
    $("downloads-empty").hidden = state.jobs.size > 0;
  }

  // -- many-file models: the row's toggle, and the row under it that lists the files ---

  // The list of `row`'s files, made (closed) the first time the row has files.
  function fileList(row, cell, headings) {
    let list = state.lists.get(row);
    if (list) return list;
    const body = el("tbody");
    const table = el("table", { className: "files" },
      el("thead", {}, el("tr", {}, ...headings.map((h) => el("th", { textContent: h })))), body);
    const under = el("tr", { className: "files-row", id: `files-${++state.listSeq}`, hidden: true },
      el("td", { colSpan: row.cells.length }, table));
    under.dataset.filesOf = row.dataset.id;
    const toggle = el("button", { type: "button", className: "files-toggle" });
    toggle.setAttribute("aria-expanded", "false");
    toggle.setAttribute("aria-controls", under.id);
    toggle.addEventListener("click", () => {
      under.hidden = !under.hidden;
      toggle.setAttribute("aria-expanded", String(!under.hidden));
    });
    cell.append(" ", toggle);
    row.after(under);
    list = { toggle, body, row: under };
    state.lists.set(row, list);
    return list;
  }

  // Each file once, by path, in the order the last list gave them: an event may
  // carry only the files that changed.
  function mergeFiles(before, after) {
    if (!Array.isArray(after)) return before;
    if (!Array.isArray(before)) return after.slice();
    const byPath = new Map(before.map((x) => [x.path, x]));
    for (const x of after) byPath.set(x.path, Object.assign({}, byPath.get(x.path), x));
    return Array.from(byPath.values());
  }

  function showJobFiles(job) {
    const files = job.fields.files;
    if (!Array.isArray(files) || files.length === 0) {
      const list = state.lists.get(job.row);
      if (list) list.toggle.hidden = list.row.hidden = true;
      return;
    }
    const list = fileList(job.row, job.row.cells[0], ["File", "Status", "Progress", "Bytes"]);
    const done = files.filter((x) => FILE_DONE.has(x.status)).length;
    list.toggle.hidden = false;
    list.toggle.textContent = `${done}/${files.length} files`;
    list.body.replaceChildren(...files.map((x) => {
      const status = x.status || "";
      const bar = el("progress", { max: 100 });
      if (FILE_DONE.has(status)) bar.value = 100;
      else if (typeof x.total === "number" && x.total > 0) bar.value = Math.min(100, ((x.downloaded || 0) * 100) / x.total);
      else if (status !== "downloading") bar.value = 0;
      const tr = el("tr", {}, el("td", {}, el("code", { textContent: x.path || "" })),
        el("td", { className: "status status-" + status, textContent: status === "stored" ? "in store" : status }),
        el("td", {}, bar),
        el("td", { textContent: typeof x.total === "number" ? `${bytes(x.downloaded || 0)} / ${bytes(x.total)}` : bytes(x.downloaded) }));
      tr.dataset.path = x.path || "";
      tr.dataset.status = status;
      return tr;
    }));
  }

  function showModelFiles(row, m) {
    const files = Array.isArray(m.files) ? m.files : [];
    if (files.length === 0) {
      const list = state.lists.get(row);
      if (list) list.toggle.hidden = list.row.hidden = true;
      return;
    }
    const list = fileList(row, row.cells[1], ["File", "Size", "SHA-256"]);
    list.toggle.hidden = false;
    list.toggle.textContent = `${files.length} files`;
    list.body.replaceChildren(...files.map((x) => {
      const digest = x.sha256 || x.git_oid || "";
      const sha = el("code", { textContent: digest ? digest.slice(0, 12) + "…" : "", title: digest });
      const tr = el("tr", {}, el("td", {}, el("code", { textContent: x.path || "" })),
        el("td", { textContent: bytes(x.bytes) }), el("td", {}, sha));
      tr.dataset.path = x.path || "";
      return tr;
    }));
  }

  // One event's payload, or one snapshot item, on top of what the page knows.
  function apply(p) {
    if (!p || typeof p.id !== "string") return;
    const job = jobRow(p.id);
    const before = job.fields;
    let f;
    if (STARTS.has(p.status) && TERMINAL.has(before.status)) {
      f = { id: p.id, url: before.url }; // a new job for the same id
    } else {
      f = Object.assign({}, before);
    }
    // Whether a .part was kept is known afresh for each new state.
    if (p.status !== before.status && typeof p.resumable !== "boolean") delete f.resumable;
    const files = mergeFiles(f.files, p.files);
    Object.assign(f, p);
    if (files !== undefined) f.files = files;
    if (p.status === "resumed" && typeof p.offset === "number") f.downloaded = p.offset;
    if (p.status === "complete" && typeof p.bytes === "number") {
      f.downloaded = f.total = p.bytes;
      f.progress = 100;
    }
    if (p.status !== "error" && p.status !== "retrying") {
      delete f.code;
      delete f.error;
    }
    job.fields = f;
    showJob(job);
    if (p.status === "error" && before.status !== "error" && typeof p.resumable !== "boolean") learnResumable(p.id);
  }

  // What a retry POSTs: the url this page sent, or the one the service shows when
  // it is whole (a shown url has its credentials and query replaced by ***).
  function retryBody(f) {
    const own = state.posted.get(f.id);
    if (own) return own;
    if (typeof f.url !== "string" || !f.url || f.url.includes("***")) return null;
    const body = { id: f.id, url: f.url };
    if (f.sha256) body.sha256 = f.sha256;
    return body;
  }

  async function retry(id) {
    const job = state.jobs.get(id);
    const body = job && retryBody(job.fields);
    if (!body) return;
    say("");
    try {
      const { status, data } = await call("POST", "models/download", body);
      if (status === 200) say(`${id} is already installed from this url.`, "info");
      else if (data && data.status && job.fields.status === "error") apply(data); // unless an event came first
    } catch (err) {
      say(`retry ${id}: ${err.message}`);
    }
  }

  // An error event does not say whether the .part was kept: the job's snapshot does.
  async function learnResumable(id) {
    try {
      const { data } = await call("GET", `models/downloads/${encodeURIComponent(id)}`);
      const job = state.jobs.get(id);
      if (job && job.fields.status === "error" && data && data.status === "error") {
        job.fields = Object.assign({}, job.fields, { resumable: data.resumable === true, url: data.url,
          sha256: data.sha256 });
        showJob(job);
      }
    } catch (err) {
      // Not known: no Resume, and Retry when the url is.
    }
  }

  async function control(action, id) {
    say("");
    try {
      const { data } = await call("POST", `models/download/${action}`, { id });
      // The event stream says the same; this shows it at once if the stream is down.
      if (data && data.status && (state.source === null || state.source.readyState !== EventSource.OPEN)) apply(data);
    } catch (err) {
      say(`${action} ${id}: ${err.message}`);
    }
  }

  $("download-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const form = ev.target;
    const body = { id: form.elements.id.value.trim(), url: form.elements.url.value.trim() };
    const sha = form.elements.sha256.value.trim();
    if (sha) body.sha256 = sha;
    state.posted.set(body.id, body);
    say("");
    try {
      const { status, data } = await call("POST", "models/download", body);
      if (status === 200) {
        say(`${body.id} is already installed from this url.`, "info");
      } else if (data && !state.jobs.has(body.id)) {
        apply(data); // only if no event got here first: an event is newer than this answer
      }
      form.reset();
    } catch (err) {
      say(`download ${body.id}: ${err.message}`);
    }
  });

  // -- installed models ------------------------------------------------------------------

  function showModels(items) {
    const seen = new Set();
    for (const m of items) {
      seen.add(m.id);
      let row = state.models.get(m.id);
      if (!row) {
        const remove = el("button", { type: "button", textContent: "Remove" });
        remove.addEventListener("click", () => removeModel(m.id, remove));
        row = el("tr", {}, el("td", {}, el("code", { textContent: m.id })), el("td", {}, el("span")), el("td"),
          el("td", {}, el("code")), el("td", { className: "status" }), el("td", { className: "actions" }, remove));
        row.dataset.id = m.id;
        $("models").tBodies[0].append(row);
        state.models.set(m.id, row);
      }
      const cells = row.cells;
      cells[1].firstChild.textContent = m.file || "";
      cells[2].textContent = bytes(m.bytes);
      const sha = cells[3].firstChild;
      sha.textContent = m.sha256 ? m.sha256.slice(0, 12) + "…" : "";
      sha.title = m.sha256 || "";
      cells[4].textContent = m.status || "";
      cells[4].className = "status status-" + (m.status || "");
      row.dataset.status = m.status || "";
      showModelFiles(row, m);
    }
    for (const [id, row] of state.models) {
      if (!seen.has(id)) {
        if (state.lists.has(row)) state.lists.get(row).row.remove();
        row.remove();
        state.models.delete(id);
      }
    }
    $("models-empty").hidden = state.models.size > 0;
  }

  async function refreshModels() {
    const seq = ++state.modelsSeq;
    const { data } = await call("GET", "models");
    if (seq === state.modelsSeq) showModels(data.items || []); // a later refresh may have answered first
  }

  function removeModel(id, button) {
    // Two clicks: a model can be many gigabytes to fetch again.
    if (!button.classList.contains("armed")) {
      button.classList.add("armed");
      button.textContent = "Really remove?";
      setTimeout(() => {
        button.classList.remove("armed");
        button.textContent = "Remove";
      }, 5000);
      return;
    }
    say("");
    call("DELETE", `models/${encodeURIComponent(id)}`)
      .then(() => refreshModels())
      .catch((err) => say(`remove ${id}: ${err.message}`));
  }

  // -- snapshot and events ---------------------------------------------------------------

  async function sync() {
    if (state.syncing) {
      state.syncing.again = true;
      return;
    }
    const pending = [];
    state.syncing = pending;
    try {
      const [, downloads] = await Promise.all([refreshModels(), call("GET", "models/downloads")]);
      const listed = new Set();
      for (const item of downloads.data.items || []) {
        listed.add(item.id);
        apply(Object.assign({ progress: undefined, speed: undefined, eta_s: undefined }, item));
      }
      // Jobs the page showed as running that the snapshot no longer lists ended
      // while the page was not listening: ask how.
      for (const [id, job] of state.jobs) {
        if (listed.has(id) || TERMINAL.has(job.fields.status)) continue;
        try {
          apply((await call("GET", `models/downloads/${encodeURIComponent(id)}`)).data);
        } catch (err) {
          if (err.status !== 404) throw err;
          apply({ id, status: state.models.has(id) ? "complete" : "canceled" });
        }
      }
    } finally {
      state.syncing = null;
      // Events that came while the snapshot was read, in order, on top of it:
      // the last one for a job is newer than the snapshot, whichever came first.
      for (const p of pending) apply(p);
      if (pending.again) sync().catch(() => {});
    }
  }

  function onProgress(ev) {
    if (ev.lastEventId) state.lastId = ev.lastEventId;
    const payload = JSON.parse(ev.data).payload;
    if (state.syncing) state.syncing.push(payload);
    apply(payload);
  }

  function onChanged(ev) {
    if (ev.lastEventId) state.lastId = ev.lastEventId;
    refreshModels().catch((err) => say(`models: ${err.message}`));
  }

  function open() {
    clearTimeout(state.timer);
    if (state.source) state.source.close();
    const params = new URLSearchParams({ prefix: "Models." });
    if (state.lastId !== null) params.set("after", state.lastId);
    // EventSource cannot send headers: the token goes in the query, accepted on this route only.
    if (token()) params.set("access_token", token());
    const es = new EventSource(apiUrl("events?" + params.toString()));
    state.source = es;
    setConn("connecting");
    let opened = false;
    es.addEventListener("service.connected", () => {
      opened = true;
      state.failures = 0;
      setConn("live");
    });
    es.addEventListener("Models.DownloadProgress", onProgress);
    es.addEventListener("Models.Changed", onChanged);
    es.addEventListener("bus.gap", () => sync().catch((err) => say(`refresh: ${err.message}`)));
    es.addEventListener("error", () => {
      if (es !== state.source) return;
      if (es.readyState === EventSource.CLOSED) {
        state.source = null;
        // Refused: why (a wrong token is worth saying, rather than retrying it forever).
        whyRefused().then((why) => {
          if (why.status !== 401 || opened || state.auth !== "token") return retryLater(why.reason);
          askToken(true);
          setConn("disconnected", "the admin token was refused");
        });
      } else {
        // The browser retries by itself; the reason is asked of /probe meanwhile.
        setConn("disconnected", "connection lost, reconnecting…");
        call("GET", "probe").then(
          () => {
            if (es === state.source && !state.live) setConn("disconnected", "the event stream broke, reconnecting…");
          },
          (err) => {
            if (es === state.source && !state.live) setConn("disconnected", `${err.message}; reconnecting…`);
          });
      }
    });
  }

  // EventSource does not say why it was refused; a fetch of the same route does:
  // {status, reason}, status 0 when the service could not be reached at all.
  async function whyRefused() {
    const abort = new AbortController();
    const headers = { Accept: "text/event-stream, application/problem+json" };
    if (token()) headers.Authorization = "Bearer " + token();
    try {
      const res = await fetch(apiUrl("events?prefix=arw-stream-check"), {
        headers,
        cache: "no-store",
        signal: abort.signal,
      });
      if (res.ok) return { status: res.status, reason: "the event stream ended" };
      let problem = {};
      try {
        problem = (await res.json()) || {};
      } catch (err) {
        problem = {};
      }
      const code = problem.code ? ` (${problem.code})` : "";
      const detail = problem.detail || `${res.statusText}`.trim();
      return { status: res.status, reason: `HTTP ${res.status}${detail ? ": " + detail : ""}${code}` };
    } catch (err) {
      return { status: 0, reason: `cannot reach the service: ${err.message}` };
    } finally {
      abort.abort(); // a stream that was granted is not read
    }
  }

  function retryLater(reason) {
    state.failures += 1;
    const delay = Math.min(state.retryMs * 2 ** (state.failures - 1), MAX_DELAY_MS) * (0.8 + Math.random() * 0.4);
    const when = `retrying in ${Math.ceil(delay / 1000)} s`;
    setConn("disconnected", reason ? `${reason}; ${when}` : when);
    clearTimeout(state.timer);
    state.timer = setTimeout(connect, delay);
  }

  async function probe() {
    const { data } = await call("GET", "probe");
    const settings = data.settings || {};
    state.auth = settings.auth || "none";
    if (settings.events_retry_ms > 0) state.retryMs = settings.events_retry_ms;
    $("token-button").hidden = state.auth !== "token";
    return data;
  }

  // Asks /probe first: it costs no stream slot, and says whether the service is
  // up. The first time, it also gives the newest event id, from which the stream
  // replays what changes while the snapshot is read.
  async function connect() {
    try {
      const info = await probe();
      if (!state.loaded) {
        const cursor = typeof info.last_event_id === "number" ? String(info.last_event_id) : null;
        await sync();
        state.lastId = cursor;
        state.loaded = true;
        say("");
      }
    } catch (err) {
      if (!state.loaded) say(`loading: ${err.message}`);
      retryLater(err.message);
      return;
    }
    if (state.auth === "token" && !token()) {
      askToken(false);
      setConn("disconnected", "needs the admin token");
      return;
    }
    open();
  }

  function reconnectNow() {
    state.failures = 0;
    clearTimeout(state.timer);
    connect();
  }

  connect();
})();
