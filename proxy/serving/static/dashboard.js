// club-proxy admin dashboard: polls /-/routes, /-/shadow and /-/stats (relative
// to this page) and renders them. Every value from the proxy, and above all the
// bodies and headers of shadow examples, reaches the page as text
// (textContent, Element.append of strings), never as markup.
"use strict";

(() => {
  const REFRESH_MS = 2000;
  const TOKEN_KEY = "club-proxy-admin-token";
  const NO_VALUE = "–";
  const SIDES = ["primary", "candidate"];

  // The admin token, from the fragment (`#token=…`, never sent to the server)
  // into this tab's sessionStorage, then out of the address bar.
  function adminToken() {
    const token = new URLSearchParams(location.hash.slice(1)).get("token");
    if (token) {
      sessionStorage.setItem(TOKEN_KEY, token);
      history.replaceState(null, "", location.pathname + location.search);
    }
    return sessionStorage.getItem(TOKEN_KEY);
  }

  const token = adminToken();
  const state = {
    selected: null, // the route whose groups are shown
    signature: null, // the group whose example is shown
    detail: null, // GET /-/shadow/{selected}
    previous: null, // the last /-/stats, for rates
    rows: new Map(), // route id -> {tr, cells, verdict}
    groupRows: new Map(), // signature -> {tr, cells}
    timer: null,
  };

  async function getJSON(path) {
    const headers = token ? { Authorization: `Bearer ${token}` } : {};
    const response = await fetch(path, { headers, cache: "no-store" });
    if (response.status === 404) return null; // shadow off, or a route without results
    if (response.status === 401) throw new Error("unauthorized: open /-/dashboard#token=<admin token>");
    if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
    return response.json();
  }

  function el(tag, className, ...children) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    node.append(...children);
    return node;
  }

  function setStatus(text, failed) {
    const status = document.getElementById("status");
    status.textContent = text;
    status.classList.toggle("failed", failed);
  }

  // ---- formatting ----

  function seconds(value) {
    if (value === null || value === undefined) return NO_VALUE;
    if (value >= 1) return `${value.toFixed(2)} s`;
    return `${(value * 1000).toFixed(value < 0.01 ? 2 : 1)} ms`;
  }

  function percent(value, digits = 2) {
    return value === null || value === undefined ? NO_VALUE : `${(value * 100).toFixed(digits)}%`;
  }

  function quantiles(entry) {
    return `${seconds(entry.p50)} / ${seconds(entry.p99)}`;
  }

  // One line per entry: "name  value".
  function lines(entries) {
    return entries.map(([name, value]) => el("div", "pair", el("span", "name", name), " ", value));
  }

  // ---- the routes table ----

  function byRoute(list) {
    const found = new Map();
    for (const entry of list || []) {
      if (!found.has(entry.route)) found.set(entry.route, []);
      found.get(entry.route).push(entry);
    }
    return found;
  }

  function rates(traffic, stats) {
    const previous = state.previous;
    if (!previous || stats.at <= previous.at) return { rate: null, errorShare: null };
    let requests = 0;
    let errors = 0;
    for (const entry of traffic) {
      const before = previous.totals.get(`${entry.route}\u0000${entry.target}`) || [0, 0];
      requests += entry.requests - before[0];
      errors += entry.errors - before[1];
    }
    const elapsed = stats.at - previous.at;
    return { rate: requests / elapsed, errorShare: requests > 0 ? errors / requests : null };
  }

  function remember(stats) {
    const totals = new Map();
    for (const entry of stats.traffic) {
      totals.set(`${entry.route}\u0000${entry.target}`, [entry.requests, entry.errors]);
    }
    state.previous = { at: stats.at, totals };
  }

  function routeModels(routes, shadow, stats) {
    const table = routes ? routes.active.routes : [];
    const results = new Map((shadow ? shadow.routes : []).map((r) => [r.id, r]));
    const traffic = byRoute(stats.traffic);
    const latency = byRoute(stats.shadow_latency);
    const ids = [...table.map((r) => r.id)];
    for (const id of [...results.keys(), ...traffic.keys()]) if (!ids.includes(id)) ids.push(id);
    const config = new Map(table.map((r) => [r.id, r]));
    return ids.map((id) => ({
      id,
      route: config.get(id) || null,
      result: results.get(id) || null,
      traffic: traffic.get(id) || [],
      latency: latency.get(id) || [],
    }));
  }

  function routeRow(id) {
    let row = state.rows.get(id);
    if (row) return row;
    const cells = Array.from({ length: 12 }, (_, i) => el("td", [5, 6, 7, 10].includes(i) ? "num" : ""));
    const verdict = el("span", "verdict");
    cells[11].append(verdict);
    const tr = el("tr", "route", ...cells);
    tr.dataset.route = id;
    tr.addEventListener("click", () => selectRoute(id).catch((error) => setStatus(error.message, true)));
    row = { tr, cells, verdict };
    state.rows.set(id, row);
    return row;
  }

  function fillRow(row, model) {
    const { route, result, traffic, latency } = model;
    const cells = row.cells;
    const { rate, errorShare } = rates(traffic, state.stats);
    const requests = traffic.reduce((sum, entry) => sum + entry.requests, 0);
    cells[0].textContent = model.id;
    cells[1].textContent = route ? `${route.methods.join(",") || "*"} ${route.path}` : "(not in the table)";
    cells[2].textContent = route ? route.to : NO_VALUE;
    cells[3].textContent = route && route.canary ? `${route.canary.to} ${percent(route.canary.weight, 1)}` : NO_VALUE;
    const shadowTo = route && route.shadow ? `${route.shadow.to} · ${percent(route.shadow.sample, 0)}` : NO_VALUE;
    cells[4].textContent = result && !result.active ? `${shadowTo} (inactive)` : shadowTo;
    cells[5].textContent = String(requests);
    cells[6].textContent = rate === null ? NO_VALUE : rate.toFixed(1);
    cells[7].textContent = percent(errorShare, 1);
    cells[8].replaceChildren(...lines(traffic.map((e) => [e.target, quantiles(e)])));
    const sides = [...latency].sort((a, b) => SIDES.indexOf(a.side) - SIDES.indexOf(b.side));
    cells[9].replaceChildren(...lines(sides.map((e) => [e.side, quantiles(e)])));
    cells[10].textContent = result ? percent(result.match_rate) : NO_VALUE;
    row.verdict.textContent = result ? result.verdict : "";
    row.verdict.className = result ? `verdict verdict-${result.verdict}` : "verdict";
    row.verdict.title = result ? result.verdict_reason : "";
    row.tr.classList.toggle("shadowed", Boolean(result));
    row.tr.classList.toggle("inactive", !route);
    row.tr.classList.toggle("selected", state.selected === model.id);
  }

  function renderRoutes(routes, shadow, stats) {
    state.stats = stats;
    const body = document.querySelector("#routes tbody");
    const models = routeModels(routes, shadow, stats);
    const seen = new Set();
    for (const model of models) {
      const row = routeRow(model.id);
      fillRow(row, model);
      body.append(row.tr); // moves it into table order
      seen.add(model.id);
    }
    for (const [id, row] of state.rows) {
      if (!seen.has(id)) {
        row.tr.remove();
        state.rows.delete(id);
      }
    }
    remember(stats);
  }

  // ---- one route's difference groups ----

  async function selectRoute(id) {
    if (state.selected !== id) {
      state.selected = id;
      state.signature = null;
      document.getElementById("example").hidden = true;
      for (const row of state.groupRows.values()) row.tr.remove();
      state.groupRows.clear();
    }
    for (const [rowId, row] of state.rows) row.tr.classList.toggle("selected", rowId === id);
    await refreshDetail();
  }

  async function refreshDetail() {
    const id = state.selected;
    const detail = await getJSON(`shadow/${encodeURIComponent(id)}`);
    if (id !== state.selected) return; // another route was clicked meanwhile
    state.detail = detail;
    renderDetail(id, detail);
  }

  function groupRow(signature) {
    let row = state.groupRows.get(signature);
    if (row) return row;
    const cells = Array.from({ length: 7 }, (_, i) => el("td", [3, 4].includes(i) ? "num" : ""));
    const tr = el("tr", "group", ...cells);
    tr.dataset.signature = signature;
    tr.addEventListener("click", () => selectGroup(signature));
    row = { tr, cells };
    state.groupRows.set(signature, row);
    return row;
  }

  function renderDetail(id, detail) {
    document.getElementById("details").hidden = false;
    document.getElementById("details-id").textContent = id;
    const reason = document.getElementById("details-reason");
    if (!detail) {
      reason.textContent = "No shadow results for this route.";
      return;
    }
    const skipped = Object.values(detail.skipped).reduce((a, b) => a + b, 0);
    reason.textContent =
      `${detail.verdict}: ${detail.verdict_reason}. Compared ${detail.compared} ` +
      `(matched ${detail.matched}, mismatched ${detail.mismatched}, noise ${detail.noise}), ` +
      `errors ${detail.errors}, skipped ${skipped}.`;
    const body = document.querySelector("#groups tbody");
    const seen = new Set();
    for (const group of detail.differences) {
      const row = groupRow(group.signature);
      const noisy = group.noisy ? `noisy (${percent(group.noise_rate, 1)})` : "no";
      const values = [group.signature, group.kind, group.path, group.count, group.mismatches, noisy, group.last_seen];
      values.forEach((value, i) => {
        row.cells[i].textContent = String(value);
      });
      row.tr.classList.toggle("noisy", group.noisy);
      row.tr.classList.toggle("selected", group.signature === state.signature);
      body.append(row.tr);
      seen.add(group.signature);
    }
    for (const [signature, row] of state.groupRows) {
      if (!seen.has(signature)) {
        row.tr.remove();
        state.groupRows.delete(signature);
      }
    }
    document.getElementById("no-groups").hidden = detail.differences.length > 0;
  }

  // ---- one example, side by side ----

  function selectGroup(signature) {
    const group = state.detail && state.detail.differences.find((g) => g.signature === signature);
    if (!group) return;
    state.signature = signature;
    for (const [sig, row] of state.groupRows) row.tr.classList.toggle("selected", sig === signature);
    document.getElementById("example").hidden = false;
    document.getElementById("example-signature").textContent = signature;
    const picker = document.getElementById("example-picker");
    const buttons = group.examples.map((example, i) => {
      const button = el("button", "", `${i + 1} · ${example.at.slice(11, 19)}`);
      button.type = "button";
      button.addEventListener("click", () => showExample(group, i, buttons));
      return button;
    });
    picker.replaceChildren(...buttons);
    if (group.examples.length) showExample(group, group.examples.length - 1, buttons);
  }

  function showExample(group, index, buttons) {
    const example = group.examples[index];
    buttons.forEach((button, i) => button.classList.toggle("selected", i === index));
    document.getElementById("example-request").textContent = `${example.method} ${example.target}`;
    const rows = example.differences.map((d) =>
      el("tr", "", el("td", "path", d.path), el("td", "", d.kind), el("td", "", d.primary), el("td", "", d.candidate)),
    );
    document.querySelector("#example-differences tbody").replaceChildren(...rows);
    const count = example.differences.length;
    document.querySelector("#example-differences summary").textContent =
      `${count} difference${count === 1 ? "" : "s"} in this example`;
    renderSide(document.getElementById("side-primary"), example.primary, example.differences, "primary");
    renderSide(document.getElementById("side-candidate"), example.candidate, example.differences, "candidate");
  }

  // A JSON path as the proxy writes it (proxy.shadow._jsonpath.child_path).
  function childPath(parent, key) {
    if (typeof key === "number") return `${parent}[${key}]`;
    if (/^[A-Za-z_][A-Za-z0-9_-]*$/.test(key)) return `${parent}.${key}`;
    return key.includes("'") && !key.includes('"') ? `${parent}["${key}"]` : `${parent}['${key}']`;
  }

  // Pretty-printed JSON, one {text, path} per line; a container's lines carry its path.
  function jsonLines(value, path, depth, prefix, comma, out) {
    const pad = "  ".repeat(depth);
    const end = comma ? "," : "";
    const isArray = Array.isArray(value);
    const keys = value !== null && typeof value === "object" ? Object.keys(value) : [];
    if (!keys.length) {
      out.push({ text: `${pad}${prefix}${JSON.stringify(value)}${end}`, path });
      return out;
    }
    out.push({ text: `${pad}${prefix}${isArray ? "[" : "{"}`, path });
    keys.forEach((key, i) => {
      const child = isArray ? childPath(path, i) : childPath(path, key);
      const label = isArray ? "" : `${JSON.stringify(key)}: `;
      jsonLines(value[key], child, depth + 1, label, i < keys.length - 1, out);
    });
    out.push({ text: `${pad}${isArray ? "]" : "}"}${end}`, path });
    return out;
  }

  function bodyLines(answer) {
    if (answer.body_encoding === "base64") {
      return [{ text: `(binary body, ${answer.body.length} base64 characters)`, path: "body" }];
    }
    try {
      return jsonLines(JSON.parse(answer.body), "$", 0, "", false, []);
    } catch {
      // Not JSON (or nested too deep to print): the text, numbered as the proxy counts lines.
      return answer.body.split("\n").map((text, i) => ({ text, path: "body", line: i + 1 }));
    }
  }

  function answerLines(answer) {
    const found = [{ text: `HTTP ${answer.status}`, path: "status" }];
    for (const [name, value] of answer.headers) {
      found.push({ text: `${name}: ${value}`, path: `headers.${name.toLowerCase()}` });
    }
    found.push({ text: "", path: null }, ...bodyLines(answer));
    if (answer.body_truncated) found.push({ text: "… (body cut)", path: null });
    return found;
  }

  // A difference path as a test on line paths: the value at the path and
  // everything inside it; `[*]` (an unordered array's contents) is any index.
  function matcher(difference, side) {
    const path = difference.path;
    if (path === "body") {
      const number = /^line (\d+)/.exec(difference[side]);
      return (line) => line.path === "body" && (!number || line.line === Number(number[1]));
    }
    if (path.startsWith("$")) {
      const pattern = path.replace(/[.*+?^${}()|[\]\\]/g, "\\$&").replace(/\\\[\\\*\\\]/g, "\\[\\d+\\]");
      const regex = new RegExp(`^${pattern}(?=$|[.[])`);
      return (line) => line.path !== null && line.path.startsWith("$") && regex.test(line.path);
    }
    // status, headers.NAME, headers.set-cookie.NAME.ATTRIBUTE
    return (line) => line.path !== null && (path === line.path || path.startsWith(`${line.path}.`));
  }

  function renderSide(pre, answer, differences, side) {
    const tests = differences.map((d) => [d, matcher(d, side)]);
    const nodes = answerLines(answer).map((line) => {
      const node = el("div", "line", line.text || "\u00a0");
      const hit = tests.find(([, test]) => test(line));
      if (hit) {
        node.classList.add("diff");
        node.title = `${hit[0].kind} ${hit[0].path}`;
      }
      if (line.path) node.dataset.path = line.path;
      return node;
    });
    pre.replaceChildren(...nodes);
    // The first marked line in view, two lines below the top unless it is on the
    // first screen already (the pre is the lines' offsetParent).
    const first = pre.querySelector(".diff");
    const below = first ? first.offsetTop + first.offsetHeight - pre.clientHeight : 0;
    pre.scrollTop = below > 0 ? first.offsetTop - 2 * first.offsetHeight : 0;
  }

  // ---- polling ----

  async function refresh() {
    try {
      const [routes, shadow, stats] = await Promise.all([getJSON("routes"), getJSON("shadow"), getJSON("stats")]);
      renderRoutes(routes, shadow, stats);
      if (state.selected !== null) await refreshDetail();
      setStatus(`updated ${new Date().toLocaleTimeString()}`, false);
    } catch (error) {
      setStatus(error.message, true);
    }
  }

  async function poll() {
    await refresh();
    if (!document.getElementById("pause").checked) state.timer = setTimeout(poll, REFRESH_MS);
  }

  document.getElementById("pause").addEventListener("change", (event) => {
    clearTimeout(state.timer);
    if (!event.target.checked) poll();
  });
  poll();
})();
