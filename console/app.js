// Sitekeep console: a small single-page app over the documented service API (docs/openapi.yaml).
// No framework and no build step: ES modules served by `sitekeep serve`, nothing loaded from
// elsewhere. Every view calls the same endpoints the CLI's `service` commands use.

const main = document.getElementById("main");
let csrf = sessionStorage.getItem("sitekeep.csrf") || "";
let timers = [];

// ---- tiny DOM helpers -----------------------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) if (c !== null && c !== undefined && c !== false) el.append(c instanceof Node ? c : String(c));
  return el;
}

function render(...nodes) {
  main.replaceChildren(...nodes);
  main.focus({ preventScroll: true });
}

function fmtBytes(n) {
  if (!Number.isFinite(n)) return "-";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${u[i]}`;
}

function fmtAge(sec) {
  if (sec < 90) return `${Math.round(sec)} s`;
  if (sec < 5400) return `${Math.round(sec / 60)} min`;
  if (sec < 172800) return `${(sec / 3600).toFixed(1)} h`;
  return `${(sec / 86400).toFixed(1)} days`;
}

function fmtTime(iso) {
  return iso ? new Date(iso).toLocaleString() : "-";
}

// ---- API ------------------------------------------------------------------------------------

async function api(method, path, body) {
  const res = await fetch(path, {
    method,
    credentials: "same-origin",
    headers: { "content-type": "application/json", "x-csrf-token": csrf },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (res.status === 401 && path !== "/api/session") {
    location.href = "/login";
    throw new Error("not logged in");
  }
  const data = await res.json().catch(() => null);
  if (!res.ok) {
    const err = new Error(data?.error?.message || `HTTP ${res.status}`);
    err.status = res.status;
    err.hint = data?.error?.hint;
    err.data = data;
    throw err;
  }
  return data;
}

function errorNotice(err) {
  return h("div", { class: "notice bad", role: "alert" }, err.message, err.hint ? ` (${err.hint})` : "");
}

// ---- login ----------------------------------------------------------------------------------

function loginView() {
  document.getElementById("nav").hidden = true;
  const msg = h("div", { role: "alert" });
  const pw = h("input", { type: "password", id: "password", name: "password", autocomplete: "current-password", required: true });
  const form = h(
    "form",
    {
      onsubmit: async (e) => {
        e.preventDefault();
        msg.replaceChildren();
        try {
          const r = await api("POST", "/api/session", { password: pw.value, token: pw.value });
          csrf = r.csrf;
          sessionStorage.setItem("sitekeep.csrf", csrf);
          location.href = "/#/overview";
        } catch (err) {
          msg.replaceChildren(errorNotice(err));
          pw.select();
        }
      },
    },
    h("label", { for: "password" }, "Password (or the service token)"),
    pw,
    h("button", { type: "submit" }, "Log in"),
  );
  main.replaceChildren(h("div", { class: "login" }, h("h1", {}, "Sitekeep console"), form, msg));
  pw.focus();
}

// ---- views ----------------------------------------------------------------------------------

function sparkline(values, label) {
  const pts = values.filter((v) => Number.isFinite(v));
  if (pts.length < 2) return h("p", { class: "muted" }, `${label}: not enough runs yet`);
  const max = Math.max(...pts) || 1;
  const step = 300 / (pts.length - 1);
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", "0 0 300 60");
  svg.setAttribute("class", "chart");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `${label}, last ${pts.length} runs, max ${max}`);
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", pts.map((v, i) => `${(i * step).toFixed(1)},${(56 - (v / max) * 52).toFixed(1)}`).join(" "));
  svg.append(line);
  return h("div", {}, h("div", { class: "label muted" }, label), svg);
}

async function overviewView() {
  const s = await api("GET", "/api/status");
  const runs = await api("GET", "/api/runs?limit=40");
  const backups = runs.filter((r) => r.kind === "backup" && r.status !== "running").reverse();
  const summaries = backups.map((r) => { try { return JSON.parse(r.summary || "{}"); } catch { return {}; } });
  const drills = runs.filter((r) => r.kind === "drill" && r.summary).reverse().map((r) => { try { return JSON.parse(r.summary).rtoMs / 1000; } catch { return NaN; } });
  const crit = s.openAlerts.filter((a) => a.severity === "critical");
  const color = crit.length ? "red" : s.windowExceeded || s.openAlerts.length ? "amber" : "green";
  const reason = crit.length ? crit[0].text : s.windowExceeded ? "the newest good backup is older than the retention window" : s.openAlerts.length ? s.openAlerts[0].text : "backups are current and no alert is open";
  render(
    h("h1", {}, `Site ${s.site}`),
    h("div", { class: `health ${color}`, id: "health", role: "status" }, h("strong", {}, color === "green" ? "Healthy" : color === "amber" ? "Attention" : "Failing"), h("span", {}, reason)),
    h(
      "div",
      { class: "cards" },
      h("div", { class: "card" }, h("div", { class: "label" }, "Last good backup"), h("div", { class: "value" }, s.lastGood ? `${fmtAge(s.lastGood.ageSeconds)} ago` : "none yet"), h("div", { class: "muted" }, s.lastGood ? fmtTime(s.lastGood.finishedAt) : "")),
      h("div", { class: "card" }, h("div", { class: "label" }, "Retention window"), h("div", { class: "value" }, fmtAge(s.retentionWindowSeconds)), h("div", { class: "muted" }, s.windowExceeded ? "exceeded" : "within")),
      h("div", { class: "card" }, h("div", { class: "label" }, "Next backup"), h("div", { class: "value", id: "next-backup" }, fmtTime(s.next_runs.backup)), h("div", { class: "muted" }, s.next_runs.drill ? `next drill ${fmtTime(s.next_runs.drill)}` : "no drill schedule")),
      h("div", { class: "card" }, h("div", { class: "label" }, "Now"), h("div", { class: "value" }, s.active ? `${s.active.kind} running` : "idle"), h("div", { class: "muted" }, `${s.openAlerts.length} open alert(s)`)),
    ),
    h("h2", {}, "Over time"),
    h(
      "div",
      { class: "cards" },
      h("div", { class: "card" }, sparkline(backups.map((r) => (Date.parse(r.finished_at) - Date.parse(r.started_at)) / 1000), "Run duration (s)")),
      h("div", { class: "card" }, sparkline(backups.map((r) => (r.freeze_ms ?? NaN) / 1000), "Freeze window (s)")),
      h("div", { class: "card" }, sparkline(summaries.map((x) => x.data_added ?? NaN), "Data added (bytes)")),
      h("div", { class: "card" }, sparkline(drills, "Drill time to recover (s)")),
    ),
    h("h2", {}, "Open alerts"),
    s.openAlerts.length ? alertsTable(s.openAlerts, false) : h("p", { class: "muted" }, "None."),
  );
}

function taskField(id, label, input, hint) {
  return [h("label", { for: id }, label), h("div", {}, input, hint ? h("div", { class: "hint" }, hint) : null, h("div", { class: "field-error", id: `err-${id}`, role: "alert" }))];
}

async function taskView() {
  const cfg = await api("GET", "/api/config");
  const b = cfg.backup;
  const f = {
    enabled: h("input", { type: "checkbox", id: "enabled", checked: b.enabled }),
    schedule: h("input", { type: "text", id: "schedule", value: b.schedule ?? "", placeholder: "0 2 * * 1,4" }),
    timezone: h("input", { type: "text", id: "timezone", value: b.timezone ?? "local" }),
    destination: h("input", { type: "text", id: "destination", value: b.destination }),
    keepLast: h("input", { type: "number", id: "keepLast", min: -1, value: b.retention?.keepLast ?? "" }),
    keepDaily: h("input", { type: "number", id: "keepDaily", min: -1, value: b.retention?.keepDaily ?? "" }),
    keepWeekly: h("input", { type: "number", id: "keepWeekly", min: -1, value: b.retention?.keepWeekly ?? "" }),
    keepMonthly: h("input", { type: "number", id: "keepMonthly", min: -1, value: b.retention?.keepMonthly ?? "" }),
    retentionWindow: h("input", { type: "text", id: "retentionWindow", value: b.retentionWindow }),
    alertOnFailure: h("input", { type: "checkbox", id: "alertOnFailure", checked: b.alertOnFailure }),
    afterBackup: h("input", { type: "text", id: "afterBackup", value: b.afterBackup ?? "" }),
    copyTo: h("textarea", { id: "copyTo", rows: 2 }, (b.copyTo ?? []).join("\n")),
  };
  const preview = h("ul", { id: "preview", class: "hint" });
  const updatePreview = async () => {
    if (!f.schedule.value.trim()) return preview.replaceChildren(h("li", {}, "no schedule: runs only when started"));
    try {
      const r = await api("GET", `/api/schedule/preview?cron=${encodeURIComponent(f.schedule.value)}&timezone=${encodeURIComponent(f.timezone.value)}`);
      preview.replaceChildren(...r.next.map((d) => h("li", {}, fmtTime(d))));
      document.getElementById("err-schedule").textContent = "";
    } catch (err) {
      preview.replaceChildren(h("li", { class: "field-error" }, err.message));
    }
  };
  let debounce;
  for (const el of [f.schedule, f.timezone]) el.addEventListener("input", () => { clearTimeout(debounce); debounce = setTimeout(updatePreview, 250); });
  const result = h("div", { role: "status" });
  const num = (el) => (el.value === "" ? undefined : Number(el.value));
  const form = h(
    "form",
    {
      class: "grid",
      onsubmit: async (e) => {
        e.preventDefault();
        for (const el of form.querySelectorAll(".field-error")) el.textContent = "";
        result.replaceChildren();
        const retention = Object.fromEntries(Object.entries({ keepLast: num(f.keepLast), keepDaily: num(f.keepDaily), keepWeekly: num(f.keepWeekly), keepMonthly: num(f.keepMonthly) }).filter(([, v]) => v !== undefined));
        const backup = {
          enabled: f.enabled.checked,
          schedule: f.schedule.value.trim() || null,
          timezone: f.timezone.value.trim() || "local",
          destination: f.destination.value.trim(),
          retention: Object.keys(retention).length ? { ...b.retention, ...retention } : null,
          retentionWindow: f.retentionWindow.value.trim(),
          alertOnFailure: f.alertOnFailure.checked,
          afterBackup: f.afterBackup.value.trim() || null,
          copyTo: f.copyTo.value.split(/[\n,]/).map((x) => x.trim()).filter(Boolean),
        };
        try {
          const r = await api("PUT", "/api/config", { backup });
          result.replaceChildren(h("div", { class: "notice ok" }, `Saved ${r.saved} (previous version: ${r.previous}); the service reloaded it. Next backup: ${fmtTime(r.next_runs.backup)}`));
        } catch (err) {
          const problems = err.data?.problems ?? [];
          for (const p of problems) {
            const key = String(p.path).replace(/^backup\./, "").replace(/\.(keep\w+)$/, "$1").split(/[.[]/)[0];
            const slot = document.getElementById(`err-${key}`) ?? document.getElementById(`err-${String(p.path).split(".").pop()}`);
            if (slot) slot.textContent = `${p.message} (${p.hint})`;
          }
          result.replaceChildren(errorNotice(err));
        }
      },
    },
    ...taskField("enabled", "Enabled", f.enabled, "the scheduler runs the task only when enabled"),
    ...taskField("schedule", "Schedule (cron)", f.schedule, "minute hour day month weekday; next runs:"),
    h("span"),
    preview,
    ...taskField("timezone", "Time zone", f.timezone, "local, UTC or an IANA zone like Europe/Berlin"),
    ...taskField("destination", "Destination", f.destination, "a path, a mounted share, or s3:https://host/bucket/prefix"),
    ...taskField("keepLast", "Keep last", f.keepLast),
    ...taskField("keepDaily", "Keep daily", f.keepDaily),
    ...taskField("keepWeekly", "Keep weekly", f.keepWeekly),
    ...taskField("keepMonthly", "Keep monthly", f.keepMonthly),
    ...taskField("retentionWindow", "Retention window", f.retentionWindow, 'alert when the newest good backup is older, e.g. "5d"'),
    ...taskField("alertOnFailure", "Alert on failure", f.alertOnFailure),
    ...taskField("afterBackup", "After-backup script", f.afterBackup, "runs after each successful backup; must not be writable by others"),
    ...taskField("copyTo", "Copy to", f.copyTo, "one destination per line"),
    h("span"),
    h("div", {}, h("button", { type: "submit", id: "save" }, "Save")),
  );
  render(h("h1", {}, "Backup task"), h("p", { class: "muted mono" }, cfg.file), form, result);
  void updatePreview();
}

async function runView() {
  const out = h("ul", { class: "live", id: "live", "aria-live": "polite" });
  const state = h("p", { id: "run-state", role: "status" });
  const progress = h("p", { id: "run-progress", class: "muted" });
  const btn = h("button", { type: "button", id: "run-now" }, "Back up now");
  const watch = async (runId) => {
    const t = setInterval(async () => {
      try {
        const run = await api("GET", `/api/runs/${encodeURIComponent(runId)}`);
        out.replaceChildren(...run.messages.map((m) => h("li", { class: `sev-${m.severity}` }, `${m.message_id} ${m.severity} ${m.text}`)));
        state.replaceChildren(h("span", { class: `badge ${run.status}` }, run.status), ` run ${run.id}${run.freeze_ms != null ? `, freeze window ${run.freeze_ms} ms` : ""}`);
        if (run.status === "running") {
          const st = await api("GET", "/api/status");
          const p = st.active?.runId === runId ? st.active.progress : undefined;
          if (p) {
            const parts = [`phase: ${p.phase}`];
            if (p.files !== undefined) parts.push(`${p.files}${p.totalFiles ? `/${p.totalFiles}` : ""} files`, `${fmtBytes(p.bytes)}${p.totalBytes ? ` of ${fmtBytes(p.totalBytes)}` : ""}`);
            if (p.rate) parts.push(`${fmtBytes(p.rate)}/s`);
            if (p.etaSeconds) parts.push(`ETA ${fmtAge(p.etaSeconds)}`);
            progress.textContent = parts.join(" · ");
          }
        } else progress.textContent = "";
        if (run.status !== "running") { clearInterval(t); btn.disabled = false; }
      } catch (err) {
        clearInterval(t);
        state.replaceChildren(errorNotice(err));
      }
    }, 700);
    timers.push(t);
  };
  btn.addEventListener("click", async () => {
    btn.disabled = true;
    out.replaceChildren();
    try {
      const r = await api("POST", "/api/runs", { kind: "backup" });
      state.textContent = `started run ${r.run_id}`;
      void watch(r.run_id);
    } catch (err) {
      btn.disabled = false;
      state.replaceChildren(errorNotice(err));
    }
  });
  render(h("h1", {}, "Run now"), h("div", { class: "row" }, btn), state, progress, out);
  const s = await api("GET", "/api/status");
  if (s.active) { btn.disabled = true; void watch(s.active.runId); }
}

async function messagesView() {
  const all = await api("GET", "/api/messages?limit=1000");
  const sev = h("select", { id: "f-sev" }, h("option", { value: "" }, "any severity"), h("option", { value: "E" }, "errors"), h("option", { value: "W" }, "warnings"), h("option", { value: "I" }, "information"));
  const id = h("input", { type: "text", id: "f-id", placeholder: "message ID, e.g. 5035", inputmode: "numeric" });
  const run = h("input", { type: "text", id: "f-run", placeholder: "run ID" });
  const text = h("input", { type: "text", id: "f-text", placeholder: "text contains" });
  const body = h("tbody");
  const apply = () => {
    const rows = all.filter((m) => (!sev.value || m.severity === sev.value) && (!id.value || String(m.message_id) === id.value.trim()) && (!run.value || (m.run_id || "").includes(run.value.trim())) && (!text.value || m.text.toLowerCase().includes(text.value.toLowerCase())));
    body.replaceChildren(...rows.map((m) => h("tr", {}, h("td", {}, fmtTime(m.time)), h("td", { class: `sev-${m.severity}` }, `${m.message_id} ${m.severity}`), h("td", { class: "mono" }, m.run_id || ""), h("td", {}, m.text))));
  };
  for (const el of [sev, id, run, text]) el.addEventListener("input", apply);
  render(
    h("h1", {}, "Status messages"),
    h("div", { class: "row" }, sev, id, run, text),
    h("div", { class: "table-wrap" }, h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "Time"), h("th", {}, "ID"), h("th", {}, "Run"), h("th", {}, "Text"))), body)),
  );
  apply();
}

function alertsTable(alerts, actions) {
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      { id: "alerts" },
      h("thead", {}, h("tr", {}, h("th", {}, "Alert"), h("th", {}, "Opened"), h("th", {}, "Text"), actions ? h("th", {}, "Notifications / actions") : null)),
      h(
        "tbody",
        {},
        alerts.map((a) =>
          h(
            "tr",
            { "data-alert": a.id },
            h("td", {}, h("span", { class: `badge ${a.severity}` }, a.severity), " ", a.kind, a.message_id ? ` (${a.message_id})` : ""),
            h("td", {}, fmtTime(a.opened_at), a.closed_at ? h("div", { class: "muted" }, `closed ${fmtTime(a.closed_at)} by ${a.closed_by}`) : null, a.postponed_until ? h("div", { class: "muted" }, `postponed until ${fmtTime(a.postponed_until)}`) : null),
            h("td", {}, a.text),
            actions
              ? h(
                  "td",
                  {},
                  (a.notifications || []).map((n) => h("div", { class: "muted" }, `${n.state} → ${n.channel} ${n.ok ? "ok" : `failed: ${n.error || ""}`}`)),
                  a.closed_at ? null : h("div", { class: "row" },
                    h("button", { type: "button", class: "secondary", onclick: async () => { await api("POST", `/api/alerts/${a.id}/close`); void route(); } }, "Close"),
                    h("button", { type: "button", class: "secondary", onclick: async () => { await api("POST", `/api/alerts/${a.id}/postpone`, { for: "1d" }); void route(); } }, "Postpone 1 day")),
                )
              : null,
          ),
        ),
      ),
    ),
  );
}

async function alertsView() {
  const showAll = location.hash.includes("all");
  const alerts = await api("GET", `/api/alerts${showAll ? "?all" : ""}`);
  render(
    h("h1", {}, "Alerts"),
    h("div", { class: "row" }, h("a", { href: showAll ? "/#/alerts" : "/#/alerts/all" }, showAll ? "Show open alerts only" : "Show closed alerts too")),
    alerts.length ? alertsTable(alerts, true) : h("p", { class: "muted", id: "no-alerts" }, showAll ? "No alerts." : "No open alerts."),
  );
}

async function snapshotsView(params) {
  const [id, ...rest] = params;
  if (id) return browseView(id, "/" + rest.map(decodeURIComponent).join("/"));
  const snaps = await api("GET", "/api/snapshots");
  const picked = [];
  const compare = h("button", { type: "button", id: "compare", class: "secondary", onclick: () => {
    if (picked.length !== 2) return;
    const [a, b] = [...picked].sort((x, y) => Date.parse(snaps.find((s) => s.id === x).time) - Date.parse(snaps.find((s) => s.id === y).time));
    location.hash = `#/compare/${a}/${b}`;
  } }, "Compare the two selected");
  compare.disabled = true;
  const pick = (id, on) => {
    if (on) picked.push(id);
    else picked.splice(picked.indexOf(id), 1);
    compare.disabled = picked.length !== 2;
  };
  render(
    h("h1", {}, "Snapshots"),
    h("div", { class: "row" }, compare),
    snaps.length
      ? h("div", { class: "table-wrap" }, h("table", { id: "snapshots" }, h("thead", {}, h("tr", {}, h("th", {}, ""), h("th", {}, "Snapshot"), h("th", {}, "Time"), h("th", {}, "Tags"), h("th", {}, "Paths"))), h("tbody", {}, snaps.map((s) => h("tr", {}, h("td", {}, h("input", { type: "checkbox", "aria-label": `select snapshot ${s.short_id}`, onchange: (e) => pick(s.id, e.target.checked) })), h("td", {}, h("a", { href: `/#/snapshots/${s.id}`, class: "mono" }, s.short_id)), h("td", {}, fmtTime(s.time)), h("td", { class: "mono" }, s.tags.join(" ")), h("td", { class: "mono" }, s.paths.join(" ")))))))
      : h("p", { class: "muted" }, "No snapshots yet."),
  );
}

async function browseView(id, path) {
  const data = await api("GET", `/api/snapshots/${id}/tree?path=${encodeURIComponent(path)}`);
  const parts = path.split("/").filter(Boolean);
  const link = (p) => `/#/snapshots/${id}/${p.map(encodeURIComponent).join("/")}`;
  const crumbs = h("nav", { class: "crumbs", "aria-label": "Path" }, h("a", { href: link([]) }, "/"), ...parts.flatMap((p, i) => [h("a", { href: link(parts.slice(0, i + 1)) }, p), i < parts.length - 1 ? "/" : ""]));
  const selected = new Set();
  const view = h("div");
  const result = h("div", { role: "status", id: "restore-result" });
  const target = h("input", { type: "text", id: "restore-target", placeholder: "original (or an absolute folder)" });
  const full = (name) => (path === "/" ? "" : path) + "/" + name;
  const rows = data.entries.map((e) =>
    h(
      "tr",
      {},
      h("td", {}, h("input", { type: "checkbox", "aria-label": `select ${e.name}`, onchange: (ev) => (ev.target.checked ? selected.add(full(e.name)) : selected.delete(full(e.name))) })),
      h("td", {}, e.type === "dir" ? h("a", { href: link([...parts, e.name]) }, `${e.name}/`) : e.type === "file"
        ? h("button", { type: "button", class: "link", onclick: async () => {
            const res = await fetch(`/api/snapshots/${id}/file?path=${encodeURIComponent(full(e.name))}`, { credentials: "same-origin" });
            const buf = new Uint8Array(await res.arrayBuffer());
            const text = new TextDecoder("utf-8", { fatal: false }).decode(buf.slice(0, 65536));
            view.replaceChildren(h("h2", {}, full(e.name)), h("pre", { class: "view", id: "file-view" }, text));
          } }, e.name)
        : `${e.name}${e.linktarget ? ` → ${e.linktarget}` : ""}`),
      h("td", {}, e.type),
      h("td", {}, e.type === "file" ? fmtBytes(e.size) : ""),
      h("td", { class: "mono" }, e.mode),
      h("td", {}, e.type === "file" ? h("a", { href: `/api/snapshots/${id}/file?path=${encodeURIComponent(full(e.name))}`, download: e.name }, "download") : ""),
    ),
  );
  const restore = h("button", { type: "button", id: "restore-selected", onclick: async () => {
    if (!selected.size) return result.replaceChildren(h("div", { class: "notice bad" }, "Select items to restore first."));
    try {
      const r = await api("POST", `/api/snapshots/${id}/restore`, { paths: [...selected], target: target.value.trim() || "original" });
      result.replaceChildren(h("div", { class: "notice ok" }, `Restored ${r.files_restored} file(s), ${fmtBytes(r.bytes_restored)}${r.errors.length ? `; ${r.errors.length} errors` : ""}.`));
    } catch (err) {
      result.replaceChildren(errorNotice(err));
    }
  } }, "Restore selected");
  render(
    h("h1", {}, `Snapshot ${id.slice(0, 8)}`),
    crumbs,
    h("div", { class: "table-wrap" }, h("table", { id: "tree" }, h("thead", {}, h("tr", {}, h("th", {}, ""), h("th", {}, "Name"), h("th", {}, "Type"), h("th", {}, "Size"), h("th", {}, "Mode"), h("th", {}, ""))), h("tbody", {}, rows))),
    h("div", { class: "row" }, h("label", { for: "restore-target" }, "Restore to"), target, restore),
    result,
    view,
  );
}

async function compareView([a, b]) {
  const d = await api("GET", `/api/snapshots/diff?a=${a}&b=${b}`);
  render(
    h("h1", {}, `Changes from ${a.slice(0, 8)} to ${b.slice(0, 8)}`),
    d.entries.length
      ? h("div", { class: "table-wrap" }, h("table", { id: "diff" }, h("thead", {}, h("tr", {}, h("th", {}, "Change"), h("th", {}, "Path"), h("th", {}, "Size"))), h("tbody", {}, d.entries.map((e) => h("tr", {}, h("td", {}, h("span", { class: `badge ${e.change === "removed" ? "failed" : e.change === "added" ? "succeeded" : "warning"}` }, e.change)), h("td", { class: "mono" }, e.path), h("td", {}, e.sizes ? `${fmtBytes(e.sizes[0])} → ${fmtBytes(e.sizes[1])}` : e.type))))))
      : h("p", { class: "muted" }, "No differences."),
    d.truncated ? h("p", { class: "muted" }, "Only the first 2000 changes are shown.") : null,
  );
}

async function recoverView() {
  const snaps = await api("GET", "/api/snapshots");
  const snap = h("select", { id: "rc-snapshot" }, snaps.map((s, i) => h("option", { value: s.id, selected: i === 0 }, `${s.short_id} — ${fmtTime(s.time)}${i === 0 ? " (latest)" : ""}`)));
  const only = ["files", "captures", "databases"].map((w) => h("input", { type: "checkbox", id: `rc-${w}`, checked: true, value: w }));
  const root = h("input", { type: "text", id: "rc-root", placeholder: "empty: original paths" });
  const db = h("select", { id: "rc-database" }, h("option", { value: "restore" }, "restore from the snapshot"), h("option", { value: "existing" }, "verify a database recovered by other means"), h("option", { value: "skip" }, "skip databases"));
  const replace = h("input", { type: "checkbox", id: "rc-replace" });
  const dry = h("input", { type: "checkbox", id: "rc-dry", checked: true });
  const out = h("div", { id: "rc-report", role: "status" });
  const go = h("button", { type: "submit", id: "rc-go" }, "Recover");
  const form = h("form", { class: "grid", onsubmit: async (e) => {
    e.preventDefault();
    if (!dry.checked && !window.confirm("Recover the site now? Files and captures are put back; databases per your choice.")) return;
    go.disabled = true;
    out.replaceChildren(h("p", { class: "muted" }, "working…"));
    try {
      const r = await api("POST", "/api/recover", { snapshot: snap.value, only: only.filter((c) => c.checked).map((c) => c.value), root: root.value.trim(), database: db.value, replace: replace.checked, dryRun: dry.checked });
      const t = setInterval(async () => {
        const run = await api("GET", `/api/runs/${encodeURIComponent(r.run_id)}`);
        if (run.status === "running") return;
        clearInterval(t);
        go.disabled = false;
        const rep = run.result;
        if (!rep) return out.replaceChildren(h("div", { class: "notice bad" }, "no report"));
        if (rep.error) return out.replaceChildren(h("div", { class: "notice bad", role: "alert" }, rep.error.message, rep.error.hint ? ` (${rep.error.hint})` : ""));
        out.replaceChildren(
          h("div", { class: `notice ${rep.ok ? "ok" : "bad"}` }, rep.dryRun ? "Plan only — nothing was changed." : rep.ok ? "Recovered." : "Finished with failures."),
          h("div", { class: "table-wrap" }, h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "Item"), h("th", {}, "Result"))), h("tbody", {}, rep.items.map((i) => h("tr", {}, h("td", {}, `${i.kind} ${i.name}`), h("td", {}, `${i.ok ? "✓" : "✗"} ${i.detail}`)))))),
          h("h2", {}, "What you still have to do"),
          h("ul", {}, rep.todo.map((x) => h("li", {}, x))),
        );
      }, 700);
      timers.push(t);
    } catch (err) {
      go.disabled = false;
      out.replaceChildren(errorNotice(err));
    }
  } },
    h("label", { for: "rc-snapshot" }, "Snapshot"), snap,
    h("span", {}, "What"), h("div", { class: "row" }, only.map((c) => h("label", {}, c, ` ${c.value}`))),
    h("label", { for: "rc-root" }, "Files under"), h("div", {}, root, h("div", { class: "hint" }, "an absolute folder to restore files beside the live site; empty for their original paths")),
    h("label", { for: "rc-database" }, "Databases"), db,
    h("label", { for: "rc-replace" }, "Replace existing"), h("div", {}, replace, h("div", { class: "hint" }, "without it, a database that exists and has tables is left alone")),
    h("label", { for: "rc-dry" }, "Plan only (dry run)"), dry,
    h("span"), h("div", {}, go),
  );
  render(h("h1", {}, "Recover the site"), form, out);
}

async function drillsView() {
  const runs = (await api("GET", "/api/runs?limit=200")).filter((r) => r.kind === "drill");
  const state = h("p", { role: "status", id: "drill-state" });
  const btn = h("button", { type: "button", id: "run-drill", onclick: async () => {
    btn.disabled = true;
    try {
      const r = await api("POST", "/api/drills");
      state.textContent = `drill ${r.run_id} started`;
      const t = setInterval(async () => {
        const run = await api("GET", `/api/runs/${encodeURIComponent(r.run_id)}`);
        if (run.status !== "running") { clearInterval(t); void route(); }
      }, 800);
      timers.push(t);
    } catch (err) {
      btn.disabled = false;
      state.replaceChildren(errorNotice(err));
    }
  } }, "Run a drill now");
  const rows = runs.map((r) => {
    let s = {};
    try { s = JSON.parse(r.summary || "{}"); } catch { /* running */ }
    return h("tr", {}, h("td", {}, fmtTime(r.started_at)), h("td", {}, h("span", { class: `badge ${r.status}` }, r.status)), h("td", {}, s.rtoMs !== undefined ? `${(s.rtoMs / 1000).toFixed(1)} s` : "-"),
      h("td", {}, (s.items || []).map((i) => h("div", {}, `${i.ok ? "✓" : "✗"} ${i.kind} ${i.name} (${(i.rtoMs / 1000).toFixed(1)} s)`))));
  });
  render(h("h1", {}, "Drills"), h("div", { class: "row" }, btn), state,
    runs.length ? h("div", { class: "table-wrap" }, h("table", { id: "drills" }, h("thead", {}, h("tr", {}, h("th", {}, "Started"), h("th", {}, "Result"), h("th", {}, "Time to recover"), h("th", {}, "Items"))), h("tbody", {}, rows))) : h("p", { class: "muted" }, "No drills yet."));
}

// ---- routing --------------------------------------------------------------------------------

const views = { overview: overviewView, task: taskView, run: runView, messages: messagesView, alerts: alertsView, snapshots: snapshotsView, compare: compareView, recover: recoverView, drills: drillsView };

async function route() {
  for (const t of timers) clearInterval(t);
  timers = [];
  if (location.pathname === "/login") return loginView();
  const [name, ...params] = (location.hash.replace(/^#\/?/, "") || "overview").split("/");
  for (const a of document.querySelectorAll("#nav a")) {
    if (a.getAttribute("href") === `/#/${name}`) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const view = views[name] ?? overviewView;
  try {
    await view(params.filter((p) => p !== "all"));
  } catch (err) {
    if (err.message !== "not logged in") render(h("h1", {}, "Error"), errorNotice(err));
  }
}

async function start() {
  if (location.pathname !== "/login") {
    try {
      const s = await api("GET", "/api/session");
      csrf = s.csrf;
      sessionStorage.setItem("sitekeep.csrf", csrf);
      document.getElementById("site").textContent = s.site;
    } catch {
      location.href = "/login";
      return;
    }
  }
  document.getElementById("logout").addEventListener("click", async () => {
    await api("DELETE", "/api/session").catch(() => undefined);
    sessionStorage.removeItem("sitekeep.csrf");
    location.href = "/login";
  });
  window.addEventListener("hashchange", route);
  await route();
}

void start();
