// autotune dashboard: polls the server's JSON endpoints every second and draws them (no libraries).
"use strict";

(() => {
  const POLL_MS = 1000;
  const HIDDEN_POLL_MS = 5000;
  const EVENTS_RETRY_POLLS = 10; // while /api/events answers 404, ask again every 10th poll
  const HISTORY = 120; // samples kept for the sparklines (two minutes at 1 s)
  const CHART_REQUESTS = 100;
  const TABLE_ROWS = 20;
  const KEY_STORE = "autotune.apiKey";
  const SVG_NS = "http://www.w3.org/2000/svg";

  // ---------------------------------------------------------------- API key
  // A key given as ?key= is moved into this tab's sessionStorage and taken out of the address
  // bar (so it stays out of history and bookmarks); the page sends it as a Bearer token.
  function takeKeyFromUrl() {
    const url = new URL(window.location.href);
    const given = url.searchParams.get("key");
    if (given === null) return;
    if (given) sessionStorage.setItem(KEY_STORE, given);
    url.searchParams.delete("key");
    window.history.replaceState(null, "", url.pathname + url.search + url.hash);
  }
  const apiKey = () => sessionStorage.getItem(KEY_STORE) || "";

  class AuthError extends Error {}
  class NotFound extends Error {}

  async function getJson(path) {
    const headers = { Accept: "application/json" };
    const key = apiKey();
    if (key) headers.Authorization = "Bearer " + key;
    const res = await fetch(path, { headers, cache: "no-store", credentials: "omit" });
    if (res.status === 401) throw new AuthError("unauthorized");
    if (res.status === 404) throw new NotFound(path);
    if (!res.ok) throw new Error(path + ": HTTP " + res.status);
    return res.json();
  }

  // ---------------------------------------------------------------- helpers
  const $ = (id) => document.getElementById(id);

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else node.setAttribute(k, String(v));
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== null && v !== undefined) node.setAttribute(k, String(v));
    }
    for (const c of children) if (c) node.append(c);
    return node;
  }

  const isNum = (v) => typeof v === "number" && Number.isFinite(v);
  const pad2 = (n) => String(n).padStart(2, "0");

  function clock(unixSeconds) {
    if (!isNum(unixSeconds)) return "–";
    const d = new Date(unixSeconds * 1000);
    return pad2(d.getHours()) + ":" + pad2(d.getMinutes()) + ":" + pad2(d.getSeconds());
  }

  function ago(unixSeconds) {
    if (!isNum(unixSeconds)) return "–";
    const s = Math.max(0, Date.now() / 1000 - unixSeconds);
    if (s < 60) return Math.round(s) + " s ago";
    if (s < 3600) return Math.round(s / 60) + " min ago";
    if (s < 86400) return (s / 3600).toFixed(1) + " h ago";
    return (s / 86400).toFixed(1) + " d ago";
  }

  function bytes(n) {
    if (!isNum(n)) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return (i === 0 ? n : n.toFixed(n < 10 ? 2 : 1)) + " " + units[i];
  }

  function ms(v) {
    if (!isNum(v)) return "–";
    if (v >= 10000) return (v / 1000).toFixed(1) + " s";
    if (v >= 100) return Math.round(v) + " ms";
    if (v < 0.05) return "0 ms";
    return v.toFixed(v >= 10 ? 1 : 2) + " ms";
  }

  const num = (v, digits = 0) => (isNum(v) ? v.toFixed(digits) : "–");
  const isCacheHit = (r) => isNum(r.cached_tokens) && r.cached_tokens > 0;
  // The conversation's KV came back from a file on disk (autotune's KV-cache manager).
  const isRestored = (r) => r.kv === "restored";
  // Speculative decoding: the share of drafted tokens the model accepted (null: no drafts).
  const acceptance = (r) =>
    isNum(r.draft_tokens) && r.draft_tokens > 0 && isNum(r.draft_accepted)
      ? r.draft_accepted / r.draft_tokens : null;
  const pct = (v) => (isNum(v) ? Math.round(v * 100) + "%" : "–");

  // A tick step of 1, 2, 2.5 or 5 × 10^k that splits [0, max] into at most `count` parts.
  function niceStep(max, count) {
    if (!isNum(max) || max <= 0) return 1;
    const raw = max / count;
    const p = Math.pow(10, Math.floor(Math.log10(raw)));
    for (const m of [1, 2, 2.5, 5, 10]) if (raw <= m * p) return m * p;
    return 10 * p;
  }

  function niceMax(v) {
    const step = niceStep(v, 4);
    return Math.max(step, Math.ceil(v / step) * step);
  }

  function tickLabel(v) {
    const trim = (x) => String(Number(x.toFixed(2)));
    if (v >= 1e6) return trim(v / 1e6) + "M";
    if (v >= 1000) return trim(v / 1000) + "k";
    return trim(v);
  }

  // Time ticks on round seconds/minutes/hours, at most `count` of them in [t0, t1].
  const TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 86400];
  function timeTicks(t0, t1, count) {
    const step = TIME_STEPS.find((s) => (t1 - t0) / s <= count) || 86400;
    const ticks = [];
    for (let t = Math.ceil(t0 / step) * step; t <= t1; t += step) ticks.push(t);
    return ticks;
  }

  // ---------------------------------------------------------------- state
  const state = {
    ram: [],
    queue: [],
    requests: [],
    requestsSig: "",
    seenIds: new Set(),
    eventsMissing: false,
    polls: 0,
    authFailed: false,
  };

  function pushHistory(list, value) {
    list.push(value);
    if (list.length > HISTORY) list.splice(0, list.length - HISTORY);
  }

  // ---------------------------------------------------------------- header + tiles
  function renderHealth(h) {
    const pill = $("status-pill");
    pill.textContent = h.status;
    pill.className = "pill " + (h.status === "ok" ? "pill-ok" : "pill-degraded");
    $("primary-backend").textContent = h.primary_backend || "–";
    const backends = $("backends");
    backends.replaceChildren(
      ...Object.entries(h.backends || {}).map(([name, up]) =>
        el("span", { class: "backend" + (up ? " up" : ""), title: up ? "answers" : "not answering" }, name)
      )
    );

    const mem = h.memory || {};
    const used = mem.used_fraction;
    const tier = mem.pressure || "normal";
    const level = "lvl-" + tier;
    $("ram-used").textContent = isNum(used) ? (used * 100).toFixed(1) + "%" : "–";
    $("ram-used").className = level;
    const bar = $("ram-bar");
    bar.style.width = isNum(used) ? Math.min(100, used * 100).toFixed(1) + "%" : "0";
    bar.className = "bar-fill " + level;
    $("ram-detail").textContent =
      bytes(mem.available_bytes) + " available · swap " + bytes(mem.swap_used_bytes);
    if (isNum(used)) pushHistory(state.ram, used);
    sparkline($("spark-ram"), state.ram, 1, tierColor(tier));

    $("pressure").textContent = tier;
    $("pressure").className = "tier " + level;
    $("pressure-detail").textContent =
      { normal: "below 80% used", elevated: "80% used or more", high: "88% used or more",
        critical: "93% used or more" }[tier] || "";
    for (const span of document.querySelectorAll(".tiers span")) {
      span.classList.toggle("on", span.dataset.tier === tier);
    }

    const q = h.queue || {};
    $("queue-running").textContent = num(q.running);
    $("queue-queued").textContent = num(q.queued);
    $("queue-detail").textContent =
      "at most " + num(q.max_concurrent) + " running, " + num(q.max_queued) + " waiting";
    const depth = (q.running || 0) + (q.queued || 0);
    pushHistory(state.queue, depth);
    const cap = Math.max(1, (q.max_concurrent || 0) + (q.max_queued || 0));
    sparkline($("spark-queue"), state.queue, Math.max(2, Math.min(cap, niceMax(Math.max(...state.queue)))),
      cssVar("--blue"));
  }

  function cssVar(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }

  function tierColor(tier) {
    return cssVar({ normal: "--green", elevated: "--yellow", high: "--orange", critical: "--red" }[tier]
      || "--green");
  }

  function sparkline(node, values, max, color) {
    const w = node.clientWidth || 200;
    const h = node.clientHeight || 44;
    node.setAttribute("viewBox", "0 0 " + w + " " + h);
    node.replaceChildren();
    if (values.length < 2) return;
    const step = w / (HISTORY - 1);
    const x0 = w - (values.length - 1) * step;
    const pts = values.map((v, i) => [x0 + i * step, h - 2 - (Math.min(v, max) / max) * (h - 6)]);
    const line = pts.map((p, i) => (i ? "L" : "M") + p[0].toFixed(1) + " " + p[1].toFixed(1)).join(" ");
    node.append(
      svg("path", { class: "area", d: line + " L" + w + " " + h + " L" + x0.toFixed(1) + " " + h + " Z", fill: color }),
      svg("path", { class: "line", d: line, stroke: color })
    );
  }

  function renderModelsTile(models) {
    $("models-count").textContent = String(models.length);
    const total = models.reduce((s, m) => s + (isNum(m.size_bytes) ? m.size_bytes : 0), 0);
    $("models-detail").textContent = models.length
      ? models.map((m) => m.name).join(", ") + " · " + bytes(total)
      : "none resident";
  }

  // ---------------------------------------------------------------- charts
  // One point per request, oldest left; cache hits get a green ring, reloads an orange
  // dashed line with a triangle on top, errors a red diamond on the baseline.
  function drawRequestChart(node, requests, pick, color, format) {
    const W = Math.max(240, node.clientWidth || 600);
    const H = Math.max(120, node.clientHeight || 220);
    const m = { l: 46, r: 12, t: 14, b: 24 };
    const iw = W - m.l - m.r;
    const ih = H - m.t - m.b;
    node.setAttribute("viewBox", "0 0 " + W + " " + H);
    node.replaceChildren();

    const rows = requests.slice().sort((a, b) => a.started_at - b.started_at);
    const values = rows.map(pick).filter(isNum);
    const yMax = niceMax(Math.max(0, ...values) * 1.05);
    const times = rows.map((r) => r.started_at).filter(isNum);
    let t0 = Math.min(...times);
    let t1 = Math.max(...times);
    if (!times.length) { t1 = Date.now() / 1000; t0 = t1 - 60; }
    if (t1 - t0 < 10) { const mid = (t0 + t1) / 2; t0 = mid - 5; t1 = mid + 5; }
    const padT = (t1 - t0) * 0.04;
    t0 -= padT; t1 += padT;
    const x = (t) => m.l + ((t - t0) / (t1 - t0)) * iw;
    const y = (v) => m.t + ih - (Math.min(v, yMax) / yMax) * ih;

    const grid = svg("g", {});
    const yStep = niceStep(yMax, 4);
    for (let v = 0; v <= yMax + yStep / 1000; v += yStep) {
      const yy = y(v);
      grid.append(svg("line", { class: "grid-line", x1: m.l, x2: W - m.r, y1: yy, y2: yy }));
      if (rows.length) {
        grid.append(svg("text", { class: "axis-label", x: m.l - 6, y: yy + 4, "text-anchor": "end" },
          document.createTextNode(tickLabel(v))));
      }
    }
    for (const t of timeTicks(t0, t1, Math.max(2, Math.min(7, Math.floor(iw / 90))))) {
      const xx = x(t);
      grid.append(
        svg("line", { class: "grid-line tick", x1: xx, x2: xx, y1: m.t + ih, y2: m.t + ih + 4 }),
        svg("text", { class: "axis-label", x: xx, y: H - 6, "text-anchor": "middle" }, document.createTextNode(clock(t)))
      );
    }
    node.append(grid);

    if (!rows.length) {
      node.append(svg("text", { class: "empty-label", x: m.l + iw / 2, y: m.t + ih / 2, "text-anchor": "middle" },
        document.createTextNode("waiting for requests…")));
      return;
    }

    const marks = svg("g", {});
    for (const r of rows) {
      if (r.reloaded !== true || !isNum(r.started_at)) continue;
      const xx = x(r.started_at);
      marks.append(
        svg("line", { class: "reload-line", x1: xx, x2: xx, y1: m.t, y2: m.t + ih }),
        svg("path", { class: "reload-mark", d: "M" + (xx - 5) + " " + (m.t - 8) + " L" + (xx + 5) + " " + (m.t - 8) + " L" + xx + " " + (m.t + 1) + " Z" })
      );
    }
    node.append(marks);

    const okPts = rows.filter((r) => isNum(pick(r)) && isNum(r.started_at));
    if (okPts.length > 1) {
      const d = okPts.map((r, i) => (i ? "L" : "M") + x(r.started_at).toFixed(1) + " " + y(pick(r)).toFixed(1)).join(" ");
      node.append(svg("path", { class: "series", d, stroke: color }));
    }

    const points = svg("g", { class: "points" });
    for (const r of rows) {
      if (!isNum(r.started_at)) continue;
      const v = pick(r);
      const xx = x(r.started_at);
      const g = svg("g", {
        class: "point" + (isCacheHit(r) ? " cache-hit" : "") + (r.reloaded ? " reload" : "") +
          (isRestored(r) ? " restored" : "") +
          (r.status !== "ok" ? " failed" : ""),
        "data-request-id": r.id,
      });
      if (isNum(v)) {
        const yy = y(v);
        if (isCacheHit(r)) g.append(svg("circle", { class: "cache-ring", cx: xx, cy: yy, r: 7 }));
        if (isRestored(r)) g.append(svg("rect", { class: "restore-mark", x: xx - 9, y: yy - 9, width: 18, height: 18 }));
        g.append(svg("circle", { class: "dot", cx: xx, cy: yy, r: 4, fill: r.status === "ok" ? color : cssVar("--red") }));
      } else {
        const yy = m.t + ih;
        g.append(svg("path", { class: "error-mark", d: "M" + xx + " " + (yy - 6) + " L" + (xx + 5) + " " + (yy - 1) + " L" + xx + " " + (yy + 4) + " L" + (xx - 5) + " " + (yy - 1) + " Z" }));
      }
      g.append(svg("title", {}, document.createTextNode(r.id + " · " + format(v))));
      g.addEventListener("mouseenter", (ev) => showTooltip(ev, r));
      g.addEventListener("mouseleave", hideTooltip);
      points.append(g);
    }
    node.append(points);
    node.dataset.points = String(rows.length);
  }

  function showTooltip(ev, r) {
    const tip = $("tooltip");
    const row = (k, v) => el("div", { class: "row" }, el("span", {}, k), el("span", {}, v));
    const flags = [isCacheHit(r) ? "cache hit" : null, isRestored(r) ? "KV restored from disk" : null,
      r.reloaded ? "reload" : null].filter(Boolean);
    tip.replaceChildren(
      el("div", {}, el("b", {}, r.id)),
      row("model", r.model + " (" + r.backend + ")"),
      row("status", r.status + (r.error ? ": " + r.error : "")),
      row("started", clock(r.started_at)),
      row("TTFT", ms(r.ttft_ms)),
      row("tokens/s", num(r.tokens_per_s, 1)),
      acceptance(r) !== null
        ? row("drafts accepted", num(r.draft_accepted) + " of " + num(r.draft_tokens) + " (" + pct(acceptance(r)) + ")")
        : null,
      row("prompt (cached)", num(r.prompt_tokens) + " (" + num(r.cached_tokens) + ")"),
      row("completion", num(r.completion_tokens)),
      row("total", ms(r.total_ms)),
      flags.length ? row("flags", flags.join(", ")) : null
    );
    const panel = tip.parentElement.getBoundingClientRect();
    tip.hidden = false;
    const left = Math.min(ev.clientX - panel.left + 14, panel.width - tip.offsetWidth - 8);
    tip.style.left = Math.max(8, left) + "px";
    tip.style.top = (ev.clientY - panel.top + 14) + "px";
  }

  function hideTooltip() { $("tooltip").hidden = true; }

  function renderCharts() {
    const reqs = state.requests.slice(0, CHART_REQUESTS);
    drawRequestChart($("chart-ttft"), reqs, (r) => r.ttft_ms, cssVar("--blue"), ms);
    drawRequestChart($("chart-tps"), reqs, (r) => r.tokens_per_s, cssVar("--purple"),
      (v) => num(v, 1) + " tok/s");
  }

  // ---------------------------------------------------------------- tables
  function renderRequestsTable() {
    const reqs = state.requests.slice(0, TABLE_ROWS);
    const first = state.seenIds.size === 0;
    const body = $("requests-table").querySelector("tbody");
    body.replaceChildren(
      ...reqs.map((r) => {
        const flags = el("td", {},
          isCacheHit(r) ? el("span", { class: "flag flag-cache", title: r.cached_tokens + " prompt tokens reused" }, "cache") : null,
          isRestored(r) ? el("span", { class: "flag flag-restored", title: "the conversation's KV was restored from disk" }, "restored") : null,
          r.reloaded ? el("span", { class: "flag flag-reload", title: "the model was (re)loaded for this request" }, "reload") : null);
        const isNew = !first && !state.seenIds.has(r.id);
        return el("tr", { "data-request-id": r.id, class: isNew ? "new-row" : null, title: r.plan || null },
          el("td", { class: "mono" }, clock(r.started_at)),
          el("td", { class: "mono" }, r.id),
          el("td", {}, r.model),
          el("td", {}, r.backend),
          el("td", {}, r.profile),
          el("td", { class: "status-" + r.status, title: r.error || null }, r.status),
          el("td", { class: "num" }, ms(r.queue_ms)),
          el("td", { class: "num" }, ms(r.ttft_ms)),
          el("td", { class: "num" }, ms(r.total_ms)),
          el("td", { class: "num" }, num(r.prompt_tokens) + " (" + num(r.cached_tokens) + ")"),
          el("td", { class: "num" }, num(r.completion_tokens)),
          el("td", { class: "num" }, num(r.tokens_per_s, 1)),
          el("td", { class: "num drafts", title: acceptance(r) === null ? "no speculative drafts"
            : r.draft_accepted + " of " + r.draft_tokens + " drafted tokens accepted" }, pct(acceptance(r))),
          el("td", { class: "num" }, num(r.n_ctx)),
          flags);
      })
    );
    for (const r of state.requests) state.seenIds.add(r.id);
    $("requests-empty").hidden = reqs.length > 0;
    const n = state.requests.length;
    const ttfts = state.requests.map((r) => r.ttft_ms).filter(isNum).sort((a, b) => a - b);
    const hits = state.requests.filter(isCacheHit).length;
    const reloads = state.requests.filter((r) => r.reloaded === true).length;
    const restores = state.requests.filter(isRestored).length;
    const drafted = state.requests.filter((r) => acceptance(r) !== null);
    const draftTotal = drafted.reduce((sum, r) => sum + r.draft_tokens, 0);
    const accepted = drafted.reduce((sum, r) => sum + r.draft_accepted, 0);
    $("requests-summary").textContent = n
      ? n + " recent · median TTFT " + ms(ttfts[Math.floor(ttfts.length / 2)]) + " · " + hits +
        " cache hits · " + restores + " restored from disk · " + reloads + " reloads" +
        (draftTotal ? " · drafts " + pct(accepted / draftTotal) + " accepted" : "")
      : "";
  }

  function settingsText(s) {
    if (!s || typeof s !== "object") return "";
    const keep = ["n_ctx", "n_parallel", "n_threads", "cache_type_k", "cache_type_v", "flash_attn", "n_batch",
      "speculative"];
    return Object.entries(s)
      .filter(([k, v]) => keep.includes(k) && v !== null && v !== undefined)
      .map(([k, v]) => k + "=" + v)
      .join(" ");
  }

  function renderModels(models, errors) {
    const body = $("models-table").querySelector("tbody");
    body.replaceChildren(
      ...models.map((mo) =>
        el("tr", { "data-model": mo.name },
          el("td", {}, el("b", {}, mo.name)),
          el("td", {}, mo.backend),
          el("td", { class: "num" }, bytes(mo.size_bytes)),
          el("td", { class: "num" }, num(mo.context_length)),
          el("td", {}, mo.quantization || "–"),
          el("td", { title: isNum(mo.loaded_at) ? new Date(mo.loaded_at * 1000).toLocaleString() : null }, ago(mo.loaded_at)),
          el("td", { class: "num" }, num(mo.loads)),
          el("td", { class: "settings mono" }, settingsText(mo.settings)))
      )
    );
    const errs = Object.entries(errors || {});
    $("models-empty").hidden = models.length > 0 && !errs.length;
    $("models-empty").textContent = errs.length
      ? errs.map(([b, e]) => b + ": " + e).join(" · ")
      : "No model is loaded.";
    renderModelsTile(models);
  }

  // ---------------------------------------------------------------- events
  function detailText(detail) {
    if (!detail || typeof detail !== "object") return detail ? String(detail) : "";
    return Object.entries(detail)
      .map(([k, v]) => k + "=" + (v !== null && typeof v === "object" ? JSON.stringify(v) : v))
      .join("  ");
  }

  function renderEvents(events) {
    const list = $("events");
    const sorted = events.slice().sort((a, b) => (b.at || 0) - (a.at || 0));
    list.replaceChildren(
      ...sorted.map((e) => {
        const kind = String(e.kind || "event");
        const detail = (e.run_id ? e.run_id + "  " : "") + detailText(e.detail);
        return el("li", { "data-kind": kind },
          el("span", { class: "at", title: isNum(e.at) ? new Date(e.at * 1000).toLocaleString() : null }, clock(e.at)),
          el("div", {},
            el("div", { class: "what" },
              el("span", { class: "kind kind-" + kind.replace(/[^a-z0-9_-]/gi, "") }, kind.replace(/_/g, " ")),
              el("span", { class: "model" }, e.model || "")),
            detail ? el("div", { class: "detail" }, detail) : null));
      })
    );
    $("events-empty").hidden = events.length > 0;
    $("events-empty").textContent = "No events yet.";
    $("events-note").textContent = events.length ? events.length + " recent" : "";
  }

  function renderKv(kv) {
    const files = Array.isArray(kv.files) ? kv.files : [];
    $("kv-note").textContent = kv.enabled
      ? files.length + " files · " + bytes(kv.bytes) + " of " + bytes(kv.budget)
      : "off (no engine with slots, or AUTOTUNE_KV_DISK_BUDGET=0)";
    $("kv-table").querySelector("tbody").replaceChildren(
      ...files.slice(0, TABLE_ROWS).map((f) =>
        el("tr", {},
          el("td", {}, f.preview || "—"),
          el("td", {}, f.model),
          el("td", { class: "num" }, num(f.tokens)),
          el("td", { class: "num" }, bytes(f.bytes)),
          el("td", { class: "num" }, num(f.hits)),
          el("td", {}, ago(f.last_used)),
          el("td", { class: "mono" }, f.conversation_id || "—")))
    );
    $("kv-empty").hidden = files.length > 0;
  }

  function renderEventsMissing() {
    $("events").replaceChildren();
    $("events-empty").hidden = false;
    $("events-empty").textContent = "This server has no /api/events endpoint yet.";
    $("events-note").textContent = "";
  }

  // ---------------------------------------------------------------- auth UI
  function showAuth(refused) {
    state.authFailed = true;
    $("auth").hidden = false;
    $("auth-error").hidden = !refused;
    const pill = $("status-pill");
    pill.textContent = "API key needed";
    pill.className = "pill pill-auth";
    if (document.activeElement !== $("auth-key")) $("auth-key").focus();
  }

  function hideAuth() {
    state.authFailed = false;
    $("auth").hidden = true;
  }

  // ---------------------------------------------------------------- polling
  let timer = null;

  async function poll() {
    state.polls += 1;
    const askEvents = !state.eventsMissing || state.polls % EVENTS_RETRY_POLLS === 0;
    const [health, reqs, models, events, kv] = await Promise.allSettled([
      getJson("health"),
      getJson("api/requests?limit=" + CHART_REQUESTS),
      getJson("api/running_models"),
      askEvents ? getJson("api/events?limit=50") : Promise.resolve(null),
      getJson("api/kv"),
    ]);
    const results = [health, reqs, models, events, kv];
    if (results.some((r) => r.status === "rejected" && r.reason instanceof AuthError)) {
      showAuth(Boolean(apiKey()));
      $("forget-key").hidden = !apiKey();
      return;
    }
    hideAuth();
    $("forget-key").hidden = !apiKey();

    const failures = [];
    if (health.status === "fulfilled") renderHealth(health.value);
    else {
      failures.push("health");
      $("status-pill").textContent = "unreachable";
      $("status-pill").className = "pill pill-down";
    }
    if (reqs.status === "fulfilled") {
      const list = Array.isArray(reqs.value.requests) ? reqs.value.requests : [];
      const sig = list.map((r) => r.id + ":" + r.status).join(",");
      state.requests = list;
      if (sig !== state.requestsSig) {
        state.requestsSig = sig;
        renderCharts();
        renderRequestsTable();
      }
    } else failures.push("requests");
    if (models.status === "fulfilled") {
      renderModels(Array.isArray(models.value.models) ? models.value.models : [], models.value.errors);
    } else failures.push("running models");
    if (events.status === "fulfilled" && events.value) {
      state.eventsMissing = false;
      renderEvents(Array.isArray(events.value.events) ? events.value.events : []);
    } else if (events.status === "rejected") {
      if (events.reason instanceof NotFound) {
        state.eventsMissing = true;
        renderEventsMissing();
      } else failures.push("events");
    }

    if (kv.status === "fulfilled") renderKv(kv.value);
    else failures.push("saved KV caches");
    $("error-note").textContent = failures.length ? "could not read: " + failures.join(", ") : "";
    $("updated").textContent = "updated " + clock(Date.now() / 1000);
    document.body.dataset.polls = String(state.polls);
  }

  function schedule(delay) {
    clearTimeout(timer);
    timer = setTimeout(loop, delay);
  }

  async function loop() {
    try {
      await poll();
    } catch (err) {
      $("error-note").textContent = String(err);
    }
    schedule(state.authFailed ? 3000 : document.hidden ? HIDDEN_POLL_MS : POLL_MS);
  }

  function start() {
    takeKeyFromUrl();
    $("auth-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const key = $("auth-key").value.trim();
      if (!key) return;
      sessionStorage.setItem(KEY_STORE, key);
      $("auth-key").value = "";
      schedule(0);
    });
    $("forget-key").addEventListener("click", () => {
      sessionStorage.removeItem(KEY_STORE);
      schedule(0);
    });
    document.addEventListener("visibilitychange", () => { if (!document.hidden) schedule(0); });
    let resizeTimer = null;
    window.addEventListener("resize", () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(renderCharts, 150);
    });
    renderCharts();
    loop();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
