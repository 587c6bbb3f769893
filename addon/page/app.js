// keyswap status page: polls /api/auth/providers and /api/usage, and drives logins, logouts
// and resets. Plain DOM, no build step. Elements are kept between polls so focus and typing survive.
// Its authority is the HttpOnly session cookie (from `keyswap page`'s one-time link)
// plus the CSRF token below, which is bound to that session and sent on every change.
"use strict";

const CSRF = document.querySelector('meta[name="keyswap-csrf"]').content;
const STATE_LABEL = {
  "valid": "valid",
  "expired-refreshable": "refreshes on use",
  "needs-login": "needs login",
  "corrupt": "unreadable",
  "unsafe": "refused: file permissions",
};
const FLOW_LABEL = { "device": "device code", "auth_code": "browser sign-in" };

let skew = 0; // server clock minus ours, in seconds
let loginActive = false;
let timer = null;
const cards = new Map(); // provider name -> card parts
const dismissed = new Set(); // login ids the user closed

// -- helpers ------------------------------------------------------------------------------

function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = value;
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const kid of kids.flat()) if (kid !== null && kid !== undefined) el.append(kid);
  return el;
}

function svg(tag, attrs) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs || {})) el.setAttribute(key, String(value));
  return el;
}

function now() { return Date.now() / 1000 + skew; }

function announce(text) {
  const region = document.getElementById("announce");
  region.textContent = "";
  setTimeout(() => { region.textContent = text; }, 50);
}

function duration(seconds) {
  seconds = Math.max(0, Math.round(seconds));
  if (seconds < 60) return `${seconds} s`;
  const m = Math.floor(seconds / 60);
  if (m < 60) return `${m} min`;
  const hours = Math.floor(m / 60);
  if (hours < 48) return `${hours} h ${m % 60 ? `${m % 60} min` : ""}`.trim();
  return `${Math.floor(hours / 24)} days`;
}

function clock(seconds) {
  seconds = Math.max(0, Math.ceil(seconds));
  const m = Math.floor(seconds / 60);
  const s = String(seconds % 60).padStart(2, "0");
  return m >= 60 ? `${Math.floor(m / 60)}:${String(m % 60).padStart(2, "0")}:${s}` : `${m}:${s}`;
}

function localTime(epoch) { return new Date(epoch * 1000).toLocaleString(); }

async function api(method, path, body) {
  const options = { method, headers: { "Accept": "application/json" }, cache: "no-store" };
  if (method !== "GET") {
    options.headers["X-Keyswap-CSRF"] = CSRF;
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
  }
  const resp = await fetch(path, options);
  let data = null;
  try { data = await resp.json(); } catch { /* not JSON */ }
  if (!resp.ok) {
    const error = new Error((data && data.error) || `HTTP ${resp.status}`);
    error.status = resp.status;
    throw error;
  }
  return data;
}

async function copyText(text, button) {
  let ok = false;
  try {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(text);
      ok = true;
    }
  } catch { /* fall back below */ }
  if (!ok) {
    const area = h("textarea", { "aria-hidden": "true" });
    area.style.position = "fixed";
    area.style.opacity = "0";
    area.value = text;
    document.body.append(area);
    area.select();
    try { ok = document.execCommand("copy"); } catch { ok = false; }
    area.remove();
  }
  const label = button.textContent;
  button.textContent = ok ? "Copied" : "Select and copy";
  announce(ok ? `Copied ${text}` : "Could not copy; select the code and copy it");
  setTimeout(() => { button.textContent = label; }, 1600);
}

// -- polling --------------------------------------------------------------------------------

async function refresh() {
  clearTimeout(timer);
  const updated = document.getElementById("updated");
  const problem = document.getElementById("problem");
  try {
    // Usage is an addition: without it (an older proxy) the page still lists the buckets.
    const [data, usage] = await Promise.all([
      api("GET", "/api/auth/providers"),
      api("GET", "/api/usage").catch(() => null),
    ]);
    skew = data.now - Date.now() / 1000;
    render(data.providers, usageByBucket(usage));
    updated.textContent = `Updated ${new Date().toLocaleTimeString()}`;
    updated.classList.remove("stale");
    problem.hidden = true;
  } catch (err) {
    updated.textContent = "Not updating";
    updated.classList.add("stale");
    // 401: this browser's session ended (the proxy restarted, or the link was used twice).
    problem.textContent = err.status === 401
      ? "This page's session has ended. Run `keyswap page` for a new link."
      : `Cannot reach keyswap: ${err.message}. Is the proxy running?`;
    problem.hidden = false;
  }
  timer = setTimeout(refresh, loginActive ? 1000 : 3000);
}

function tick() {
  for (const card of cards.values()) {
    for (const row of card.rows.values()) paintClock(row);
  }
}

function usageByBucket(usage) {
  const found = new Map(); // "provider/bucket" -> that bucket's usage
  for (const p of (usage && usage.providers) || []) {
    for (const b of p.buckets) found.set(`${p.name}/${b.bucket}`, b);
  }
  return found;
}

function render(providers, usage) {
  const main = document.getElementById("providers");
  if (main.getAttribute("aria-busy")) {
    main.replaceChildren();
    main.removeAttribute("aria-busy");
  }
  loginActive = false;
  for (const p of providers) {
    let card = cards.get(p.name);
    if (!card) {
      card = makeCard(p);
      cards.set(p.name, card);
      main.append(card.root);
    }
    updateCard(card, p, usage);
  }
}

// -- a provider -----------------------------------------------------------------------------

function makeCard(p) {
  const id = `p-${p.name}`;
  const input = h("input", {
    type: "text", id: `${id}-bucket`, name: "bucket", value: "default", required: true,
    pattern: "[A-Za-z0-9][A-Za-z0-9@._+\\-]{0,127}", autocomplete: "off", spellcheck: "false",
    "aria-describedby": `${id}-hint`,
  });
  const submit = h("button", { class: "btn primary", type: "submit" }, "Log in");
  submit.setAttribute("aria-label", `Log in to ${p.title}`);
  const formError = h("p", { class: "form-error", role: "alert", hidden: true });
  const form = h("form", { class: "login-form", novalidate: true },
    h("div", { class: "field" },
      h("label", { for: input.id }, "Bucket (account name)"),
      input),
    submit);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    startLogin(p, input, submit, formError);
  });
  const meta = h("p", { class: "meta", id: `${id}-hint` });
  const tbody = h("tbody");
  const table = h("table", {},
    h("caption", { class: "sr-only" }, `${p.title} buckets`),
    h("colgroup", {},
      ["bucket", "account", "state", "token", "quota", "cooldown", "traffic", "actions"]
        .map((name) => h("col", { class: `c-${name}` }))),
    h("thead", {}, h("tr", {},
      h("th", { scope: "col" }, "Bucket"),
      h("th", { scope: "col" }, "Account"),
      h("th", { scope: "col" }, "State"),
      h("th", { scope: "col" }, "Expires"),
      h("th", { scope: "col" }, "Quota"),
      h("th", { scope: "col" }, "Cooldown"),
      h("th", { scope: "col" }, "Traffic (5 min)"),
      h("th", { scope: "col" }, h("span", { class: "sr-only" }, "Actions")))),
    tbody);
  const tableWrap = h("div", { class: "table-wrap" }, table);
  const empty = h("p", { class: "empty" }, "No account yet. Log in to add one.");
  const logins = h("div", { class: "logins" });
  const root = h("section", { class: "card", id, "aria-labelledby": `${id}-title` },
    h("div", { class: "card-head" },
      h("div", {}, h("h2", { id: `${id}-title` }, p.title), meta),
      form, formError),
    logins, tableWrap, empty);
  return { root, meta, tbody, tableWrap, empty, logins, rows: new Map(), panels: new Map() };
}

function updateCard(card, p, usage) {
  const flow = FLOW_LABEL[p.flow] || p.flow;
  const parts = [`oauth:${p.name}`, flow, p.strategy];
  // enabled as configured: "on", "off" or "not set"; enabled_means says what that does.
  card.meta.replaceChildren(
    h("code", {}, parts[0]),
    document.createTextNode(` · ${parts.slice(1).join(" · ")} · `),
    h("span", { class: "enabled", title: p.enabled_means }, `enabled: ${p.enabled}`),
    document.createTextNode(` (${p.enabled_means})`));
  card.root.classList.toggle("disabled", p.enabled === "off");

  // buckets, in the order the API gives
  const seen = new Set();
  let previous = null;
  for (const b of p.buckets) {
    seen.add(b.bucket);
    let row = card.rows.get(b.bucket);
    if (!row) {
      row = makeRow(p, b.bucket);
      card.rows.set(b.bucket, row);
    }
    updateRow(row, b, usage.get(`${p.name}/${b.bucket}`));
    const after = previous ? previous.tr.nextSibling : card.tbody.firstChild;
    if (after !== row.tr) card.tbody.insertBefore(row.tr, after);
    previous = row;
  }
  for (const [name, row] of card.rows) {
    if (!seen.has(name)) {
      row.tr.remove();
      card.rows.delete(name);
    }
  }
  card.tableWrap.hidden = p.buckets.length === 0;
  card.empty.hidden = p.buckets.length !== 0;

  // logins running (or just finished)
  const shown = new Set();
  for (const login of p.logins) {
    if (dismissed.has(login.id)) continue;
    if (login.state === "starting" || login.state === "waiting") loginActive = true;
    shown.add(login.id);
    let panel = card.panels.get(login.id);
    if (!panel) {
      panel = makePanel(p, login);
      card.panels.set(login.id, panel);
      card.logins.append(panel.root);
    }
    updatePanel(panel, p, login);
  }
  for (const [id, panel] of card.panels) {
    if (!shown.has(id)) {
      panel.root.remove();
      card.panels.delete(id);
    }
  }
}

async function startLogin(p, input, button, formError) {
  const bucket = input.value.trim() || "default";
  formError.hidden = true;
  if (!input.checkValidity()) {
    formError.textContent = "A bucket name is letters, digits and @._+- (no spaces or colons).";
    formError.hidden = false;
    input.focus();
    return;
  }
  button.disabled = true;
  const label = button.textContent;
  button.textContent = "Starting…";
  try {
    const data = await api("POST", `/api/auth/login/${p.name}?bucket=${encodeURIComponent(bucket)}`);
    const login = data.login;
    if (login.user_code) announce(`Your ${p.title} code is ${login.user_code.split("").join(" ")}`);
    else if (login.authorize_url) announce(`Open the ${p.title} sign-in page to continue`);
    await refresh();
    const panel = cards.get(p.name).panels.get(login.id);
    if (panel) panel.heading.focus();
  } catch (err) {
    formError.textContent = err.message;
    formError.hidden = false;
  } finally {
    button.disabled = false;
    button.textContent = label;
  }
}

// -- one bucket -----------------------------------------------------------------------------

function makeRow(p, bucket) {
  const label = `${p.title} ${bucket}`;
  const row = {
    bucket,
    label,
    quota: h("div", { class: "quota" }),
    windows: [],
    usageKey: null,
    holds: h("span", { class: "holds" }),
    badge: h("span", { class: "badge" }),
    rules: h("div", { class: "detail" }),
    detail: h("div", { class: "detail" }),
    account: h("td"),
    token: h("td", { class: "muted" }),
    coolText: h("span", { class: "countdown" }),
    chart: h("span"),
    counts: h("span", { class: "counts" }),
    data: null,
  };
  row.reset = h("button", {
    class: "btn small", type: "button", "aria-label": `End the cooldown of ${label}`,
    onclick: () => act(row.reset, `/api/buckets/${p.name}/${encodeURIComponent(bucket)}/reset`,
      `${label}: cooldown ended`),
  }, "Reset");
  row.logout = h("button", {
    class: "btn small danger", type: "button", "aria-label": `Log out ${label}`,
    onclick: () => {
      if (!window.confirm(`Log out ${label}? Its tokens are deleted from this machine.`)) return;
      act(row.logout, `/api/auth/logout/${p.name}?bucket=${encodeURIComponent(bucket)}`,
        `${label} logged out`);
    },
  }, "Log out");
  row.cool = h("div", { class: "cool" }, row.coolText, row.reset);
  row.tr = h("tr", { "data-bucket": bucket },
    h("td", {}, h("div", { class: "bucket" }, bucket), row.rules),
    row.account,
    h("td", {}, row.badge, row.detail),
    row.token,
    h("td", {}, row.quota),
    h("td", {}, row.cool),
    h("td", {}, h("div", { class: "traffic" }, row.chart, row.counts, row.holds)),
    h("td", { class: "actions" }, row.logout));
  return row;
}

function updateRow(row, b, usage) {
  row.data = b;
  updateUsage(row, usage);
  row.account.textContent = b.account || "—";
  row.account.classList.toggle("muted", !b.account);
  row.badge.className = `badge ${b.state}`;
  row.badge.textContent = STATE_LABEL[b.state] || b.state;
  row.detail.textContent = b.detail || "";
  row.detail.hidden = !b.detail;
  const rules = [];
  if (b.models) rules.push(`models ${b.models.join(", ")}`);
  if (b.exclude_models && b.exclude_models.length) rules.push(`not ${b.exclude_models.join(", ")}`);
  row.rules.textContent = rules.join("; ");
  row.rules.hidden = rules.length === 0;
  row.logout.hidden = !b.stored;
  const key = JSON.stringify(b.history) + b.served + b.limited;
  if (row.chartKey !== key) {
    row.chartKey = key;
    row.chart.replaceChildren(chart(b));
    const parts = [h("b", {}, String(b.served)), b.served === 1 ? " request" : " requests"];
    if (b.limited) parts.push(h("span", { class: "n429" }, ` · ${b.limited} × 429`));
    row.counts.replaceChildren(...parts);
  }
  paintClock(row);
}

function paintClock(row) {
  const b = row.data;
  if (!b) return;
  const t = now();
  for (const w of row.windows) paintReset(w, t);
  if (b.expires_at) {
    const left = b.expires_at - t;
    row.token.textContent = left > 0 ? `in ${duration(left)}` : `${duration(-left)} ago`;
    row.token.title = localTime(b.expires_at);
  } else {
    row.token.textContent = b.stored ? "no expiry" : "—";
    row.token.removeAttribute("title");
  }
  const rest = b.cooling_until ? b.cooling_until - t : 0;
  if (rest > 0) {
    row.coolText.textContent = `${clock(rest)} left`;
    row.coolText.title = `rate limited; usable again at ${localTime(b.cooling_until)}`;
    row.coolText.classList.remove("muted");
    row.reset.hidden = false;
  } else {
    row.coolText.textContent = "—";
    row.coolText.removeAttribute("title");
    row.coolText.classList.add("muted");
    row.reset.hidden = true;
  }
}

// -- quota windows: one bar each, with its reset time --------------------------------------

function updateUsage(row, usage) {
  const windows = (usage && usage.windows) || [];
  // Rebuilt only when the numbers change; the reset times count down in paintClock.
  const key = JSON.stringify(windows);
  if (row.usageKey !== key) {
    row.usageKey = key;
    row.windows = windows.map((w) => makeWindow(row.label, w));
    row.quota.replaceChildren(...(row.windows.length
      ? row.windows.map((w) => w.root)
      : [h("span", { class: "muted", title: "no usage reported yet" }, "—")]));
  }
  const held = usage ? usage.conversations : 0;
  row.holds.textContent = held ? `holds ${held} conversation${held === 1 ? "" : "s"}` : "";
  row.holds.hidden = !held;
}

function makeWindow(label, w) {
  const percent = Math.round(w.used * 100);
  const level = w.status === "rejected" || percent >= 95 ? "full" : percent >= 80 ? "high" : "ok";
  const fill = h("span", { class: "fill" });
  fill.style.width = `${Math.min(100, percent)}%`;
  const reset = h("span", { class: "reset" });
  const root = h("div", { class: `window ${level}`, "data-window": w.name },
    h("div", { class: "window-head" },
      h("span", { class: "window-name" }, w.name),
      h("span", { class: "window-used" }, `${percent}%`)),
    h("div", {
      class: "bar", role: "meter", "aria-valuemin": 0, "aria-valuemax": 100,
      "aria-valuenow": percent, "aria-label": `${label}, ${w.name} window: ${percent}% used`,
      title: w.status ? `${percent}% used (${w.status})` : `${percent}% used`,
    }, fill),
    reset);
  const parts = { root, reset, resetsAt: w.resets_at };
  paintReset(parts, now());
  return parts;
}

function paintReset(w, t) {
  if (!w.resetsAt) {
    w.reset.textContent = "";
    w.reset.hidden = true;
    return;
  }
  const left = w.resetsAt - t;
  w.reset.hidden = false;
  w.reset.textContent = left > 0 ? `resets in ${duration(left)}` : "has reset";
  w.reset.title = localTime(w.resetsAt);
}

function chart(b) {
  const hist = b.history;
  const n = hist.served.length;
  const bar = 3, gap = 1, height = 22;
  const width = n * (bar + gap) - gap;
  const peak = Math.max(1, ...hist.served.map((s, i) => s + hist.limited[i]));
  const minutes = Math.round((n * hist.interval) / 60);
  const total = hist.served.reduce((a, c) => a + c, 0);
  const total429 = hist.limited.reduce((a, c) => a + c, 0);
  const el = svg("svg", {
    class: "chart", width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": `${total} requests and ${total429} rate-limited in the last ${minutes} minutes`,
  });
  const title = svg("title");
  title.textContent = `last ${minutes} min, ${hist.interval} s per bar: ${total} served, ${total429} × 429`;
  el.append(title);
  hist.served.forEach((served, i) => {
    const x = i * (bar + gap);
    const limited = hist.limited[i];
    el.append(svg("rect", { class: "bg", x, y: height - 2, width: bar, height: 2, rx: 1 }));
    const hs = served ? Math.max(2, (served / peak) * height) : 0;
    const hl = limited ? Math.max(2, (limited / peak) * height) : 0;
    if (hs) el.append(svg("rect", { class: "served", x, y: height - hs, width: bar, height: hs, rx: 1 }));
    if (hl) el.append(svg("rect", { class: "limited", x, y: height - hs - hl, width: bar, height: hl, rx: 1 }));
  });
  return el;
}

async function act(button, path, done) {
  button.disabled = true;
  try {
    await api("POST", path);
    announce(done);
  } catch (err) {
    announce(err.message);
    window.alert(err.message);
  } finally {
    button.disabled = false;
    refresh();
  }
}

// -- a login in progress --------------------------------------------------------------------

function makePanel(p, login) {
  const heading = h("h3", { tabindex: "-1" });
  const body = h("div", { class: "panel-body" });
  const steps = h("ul", { class: "steps" });
  const actions = h("div", { class: "panel-actions" });
  const root = h("div", { class: "login-panel", role: "group", "data-login": login.id }, heading, body, steps, actions);
  return { root, heading, body, steps, actions, key: null };
}

function updatePanel(panel, p, login) {
  const key = `${login.state}|${login.user_code}|${login.authorize_url}|${login.error}`;
  panel.root.className = `login-panel state-${login.state}`;
  panel.root.setAttribute("aria-label", `${p.title} sign-in for bucket ${login.bucket}`);
  panel.steps.replaceChildren(...login.steps.map((s) => h("li", {}, s)));
  panel.steps.hidden = login.steps.length === 0 || login.state === "done";
  if (panel.key === key) return;
  const wasActive = Boolean(panel.key) && /^(starting|waiting)\|/.test(panel.key);
  panel.key = key;
  const bucket = h("code", {}, login.bucket);
  const active = login.state === "starting" || login.state === "waiting";

  if (login.state === "done") {
    panel.heading.replaceChildren(`Signed in to ${p.title} `, bucket);
    panel.body.replaceChildren(h("p", {}, login.account ? `Account: ${login.account}` : "The bucket is ready to use."));
    if (wasActive) announce(`Signed in to ${p.title}${login.account ? ` as ${login.account}` : ""}`);
  } else if (login.state === "failed" || login.state === "cancelled") {
    panel.heading.replaceChildren(`${p.title} sign-in `, bucket, login.state === "failed" ? " failed" : " stopped");
    panel.body.replaceChildren(h("p", {}, login.error || ""));
    if (wasActive) announce(`${p.title} sign-in ${login.state}: ${login.error || ""}`);
  } else if (login.user_code) {
    panel.heading.replaceChildren(`Sign in to ${p.title} as bucket `, bucket);
    const code = h("output", { class: "user-code", "aria-label": "one-time code" }, login.user_code);
    const copy = h("button", { class: "btn", type: "button", onclick: () => copyText(login.user_code, copy) }, "Copy code");
    const where = login.verification_uri;
    panel.body.replaceChildren(
      h("p", {}, "Enter this code at ",
        h("a", { href: where, target: "_blank", rel: "noopener noreferrer" }, where), ":"),
      h("div", { class: "code-row" }, code, copy,
        h("a", { class: "btn primary", href: where, target: "_blank", rel: "noopener noreferrer" }, "Open the page")),
      waiting("Waiting for you to approve…"));
  } else if (login.authorize_url) {
    panel.heading.replaceChildren(`Sign in to ${p.title} as bucket `, bucket);
    const input = h("input", { type: "text", id: `paste-${login.id}`, autocomplete: "off", spellcheck: "false" });
    const send = h("button", { class: "btn", type: "submit" }, "Submit");
    const form = h("form", { class: "paste" },
      h("div", { class: "field" },
        h("label", { for: input.id },
          login.listening ? "Or paste the redirect URL (browser on another machine)" : "Paste the code the page shows"),
        input),
      send);
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      if (!input.value.trim()) { input.focus(); return; }
      send.disabled = true;
      try {
        await api("POST", `/api/auth/paste/${p.name}?bucket=${encodeURIComponent(login.bucket)}`, { code: input.value });
        input.value = "";
      } catch (err) {
        announce(err.message);
      } finally {
        send.disabled = false;
        refresh();
      }
    });
    panel.body.replaceChildren(
      h("p", {}, h("a", { class: "btn primary", href: login.authorize_url, target: "_blank", rel: "noopener noreferrer" },
        `Open the ${p.title} sign-in page`)),
      waiting(login.listening ? "Waiting for the browser to come back…" : "Waiting for the code…"),
      form);
  } else {
    panel.heading.replaceChildren(`Starting the ${p.title} sign-in for `, bucket, "…");
    panel.body.replaceChildren(waiting("Contacting the provider…"));
  }

  const buttons = [];
  if (active) {
    const cancel = h("button", { class: "btn small", type: "button" }, "Cancel");
    cancel.addEventListener("click", () => act(cancel,
      `/api/auth/cancel/${p.name}?bucket=${encodeURIComponent(login.bucket)}`, "Sign-in stopped"));
    buttons.push(cancel);
  } else {
    const close = h("button", { class: "btn small", type: "button" }, "Dismiss");
    close.addEventListener("click", () => {
      dismissed.add(login.id);
      panel.root.remove();
      cards.get(p.name).panels.delete(login.id);
    });
    buttons.push(close);
  }
  panel.actions.replaceChildren(...buttons);
}

function waiting(text) {
  return h("p", { class: "waiting" }, h("span", { class: "spinner", "aria-hidden": "true" }), text);
}

refresh();
setInterval(tick, 1000);
