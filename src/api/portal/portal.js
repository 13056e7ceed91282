// dnsledger portal: one search box over the query API (COF pages), results as tables with a
// timeline, pivots by click, COF/CSV export. No external assets; works with an API key.
"use strict";

const PAGE = 1000;
const $ = (id) => document.getElementById(id);
const keyInput = $("key");
keyInput.value = localStorage.getItem("dnsledger-key") || "";
keyInput.addEventListener("change", () => localStorage.setItem("dnsledger-key", keyInput.value.trim()));

const IPV4 = /^(25[0-5]|2[0-4]\d|1?\d?\d)(\.(25[0-5]|2[0-4]\d|1?\d?\d)){3}$/;
const isIPv4 = (s) => IPV4.test(s);
const isIPv6 = (s) => s.includes(":") && /^[0-9a-fA-F:.]+$/.test(s) && s.split("::").length <= 2;
const isIP = (s) => isIPv4(s) || isIPv6(s);
const NAME = /^(\*\.)?([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.)*[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.?(\.\*)?$/;

// What the search box holds -> the lookups to run, or a message for the user.
function classify(raw) {
  const q = raw.trim();
  if (!q) return { error: "Type a name, a wildcard, an address or a prefix." };
  if (/\s/.test(q)) return { error: "One name, address or prefix at a time (no spaces)." };
  if (q.includes("/")) {
    const [addr, len] = q.split("/");
    const max = isIPv4(addr) ? 32 : isIPv6(addr) ? 128 : -1;
    if (max < 0 || !/^\d+$/.test(len || "") || +len > max)
      return { error: `"${q}" is not a prefix. Write it like 192.0.2.0/24 or 2001:db8::/32.` };
    return { lookups: [{ title: `Names on ${q}`, path: `rdata/ip/${encodeURIComponent(addr + "," + len)}` }] };
  }
  if (q.includes("-") && q.split("-").length === 2 && q.split("-").every(isIP))
    return { lookups: [{ title: `Names on ${q}`, path: `rdata/ip/${encodeURIComponent(q)}` }] };
  if (isIP(q)) return { lookups: [{ title: `Names on ${q}`, path: `rdata/ip/${encodeURIComponent(q)}` }] };
  if (q === "*" || q === "*." || q === ".")
    return { error: "A bare * would match everything. Try *.example.com (names below a zone) or www.example.* (names starting so)." };
  if (!NAME.test(q) || q.length > 254 || (q.startsWith("*.") && q.endsWith(".*")))
    return { error: `"${q}" is not a DNS name. Names are labels of letters, digits and hyphens separated by dots; one * at the start (*.example.com) or the end (www.example.*).` };
  const enc = encodeURIComponent(q);
  if (q.includes("*"))
    return { lookups: [
      { title: `Records of ${q}`, path: `rrset/name/${enc}` },
      { title: `Records pointing at ${q}`, path: `rdata/name/${enc}` },
    ] };
  return { lookups: [
    { title: `Records of ${q}`, path: `rrset/name/${enc}` },
    { title: `Records pointing at ${q} (its aliases, and the zones using it as NS, MX, SRV)`, path: `rdata/name/${enc}` },
  ] };
}

async function fetchPage(path, cursor) {
  const headers = { Accept: "application/x-ndjson" };
  const key = keyInput.value.trim();
  if (key) headers["X-API-Key"] = key;
  let url = `/cof/v1/lookup/${path}?limit=${PAGE}`;
  if (cursor) url += `&cursor=${encodeURIComponent(cursor)}`;
  const resp = await fetch(url, { headers });
  const text = await resp.text();
  if (!resp.ok) {
    const msg = text.trim().replace(/^Error:\s*/, "");
    if (resp.status === 403) throw new Error(`The server wants an API key (open "API key" above): ${msg}`);
    if (resp.status === 429) throw new Error(`This key's quota is used up: ${msg}`);
    throw new Error(msg || `The server answered ${resp.status}.`);
  }
  const rows = text.split("\n").filter((l) => l.trim()).map((l) => JSON.parse(l));
  return { rows, cursor: resp.headers.get("x-cursor") };
}

const fmt = (t) => new Date(t * 1000).toISOString().replace("T", " ").replace(".000Z", "");
const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
const link = (q, label, how) => `<a class="pivot" href="#q=${encodeURIComponent(q)}" title="${esc(how)}">${esc(label)}</a>`;

// The target a record points at, for pivots (NS, CNAME, PTR, DNAME, MX, SRV).
function target(rrtype, rdata) {
  const p = rdata.split(/\s+/);
  switch (rrtype) {
    case "NS": case "CNAME": case "PTR": case "DNAME": return rdata;
    case "MX": return p[1];
    case "SRV": return p[3];
    default: return null;
  }
}

function rdataCell(o) {
  return o.rdata.map((d) => {
    if (o.rrtype === "A" || o.rrtype === "AAAA") return `<div>${link(d, d, "names on this address")}</div>`;
    const t = target(o.rrtype, d);
    if (t && t !== ".") {
      const shown = esc(d).replace(esc(t), link(t, t, "records of this name, and what points at it"));
      return `<div>${shown}</div>`;
    }
    return `<div>${esc(d)}</div>`;
  }).join("");
}

function nameCell(o) {
  const n = o.rrname;
  return `${link(n, n, "records of this name")}<br><small>${link("*." + n, "subdomains", "names below " + n)}</small>`;
}

function timeline(rows) {
  if (!rows.length) return "";
  const shown = rows.slice(0, 200);
  const t0 = Math.min(...shown.map((r) => r.time_first));
  const t1 = Math.max(...shown.map((r) => r.time_last), t0 + 1);
  const W = 1000, left = 250, rowH = 16, top = 22, H = top + shown.length * rowH + 6;
  const x = (t) => left + ((t - t0) / (t1 - t0)) * (W - left - 10);
  let svg = `<svg class="timeline" viewBox="0 0 ${W} ${H}" role="img" aria-label="When each answer was seen, from ${fmt(t0)} to ${fmt(t1)}">`;
  for (let i = 0; i <= 4; i++) {
    const t = t0 + ((t1 - t0) * i) / 4, gx = x(t);
    svg += `<line class="grid" x1="${gx}" x2="${gx}" y1="${top - 4}" y2="${H}"/><text x="${gx}" y="12" text-anchor="${i === 0 ? "start" : i === 4 ? "end" : "middle"}">${fmt(Math.round(t))}</text>`;
  }
  shown.forEach((r, i) => {
    const y = top + i * rowH;
    const label = `${r.rrname} ${r.rrtype} ${r.rdata.join(" ")}`;
    const bx = x(r.time_first), bw = Math.max(3, x(r.time_last) - bx);
    svg += `<text x="4" y="${y + 11}">${esc(label.length > 40 ? label.slice(0, 39) + "…" : label)}</text>`;
    svg += `<rect class="bar" x="${bx}" y="${y + 2}" width="${bw}" height="${rowH - 5}" rx="2"><title>${esc(label)}\n${fmt(r.time_first)} .. ${fmt(r.time_last)}, seen ${r.count} times</title></rect>`;
  });
  return svg + "</svg>" + (rows.length > shown.length ? `<p>Timeline of the first ${shown.length} RRsets.</p>` : "");
}

function table(rows) {
  const body = rows.map((o) => `<tr><td>${nameCell(o)}</td><td>${esc(o.rrtype)}</td><td class="rdata">${rdataCell(o)}</td>` +
    `<td class="time">${fmt(o.time_first)}</td><td class="time">${fmt(o.time_last)}</td><td class="num">${o.count}</td><td>${esc(o.bailiwick || "")}</td>` +
    `<td>${esc((o.sensor_ids || []).join(", "))}</td></tr>`).join("");
  return `<table><thead><tr><th scope="col">Name</th><th scope="col">Type</th><th scope="col">Data</th><th scope="col">First seen</th>` +
    `<th scope="col">Last seen</th><th scope="col">Count</th><th scope="col">Bailiwick</th><th scope="col">Sensors</th></tr></thead><tbody>${body}</tbody></table>`;
}

function download(name, type, text) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([text], { type }));
  a.download = name;
  a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}

const csvField = (s) => (/[",\n]/.test(s) ? `"${String(s).replace(/"/g, '""')}"` : String(s));
function toCsv(rows) {
  const lines = ["time_first,time_last,count,bailiwick,rrname,rrtype,rdata"];
  for (const o of rows) for (const d of o.rdata)
    lines.push([fmt(o.time_first), fmt(o.time_last), o.count, o.bailiwick || "", o.rrname, o.rrtype, d].map(csvField).join(","));
  return lines.join("\n") + "\n";
}

async function section(lookup, holder) {
  const div = document.createElement("section");
  div.innerHTML = `<h2>${esc(lookup.title)}</h2><p class="loading">Loading…</p>`;
  holder.appendChild(div);
  let rows = [], cursor = null;
  const draw = () => {
    const slug = lookup.path.replace(/[^a-z0-9]+/gi, "_");
    div.innerHTML = `<h2>${esc(lookup.title)}</h2>` + (rows.length === 0 ? `<p class="empty">Nothing recorded.</p>` :
      `<div class="tools"><span class="count">${rows.length} RRset${rows.length === 1 ? "" : "s"}${cursor ? " (more available)" : ""}</span>` +
      `<button class="secondary export-cof" type="button">Export COF</button><button class="secondary export-csv" type="button">Export CSV</button>` +
      (cursor ? `<button class="secondary more" type="button">Load more</button>` : "") + `</div>` +
      timeline(rows) + table(rows));
    const on = (sel, f) => { const b = div.querySelector(sel); if (b) b.addEventListener("click", f); };
    on(".export-cof", () => download(`${slug}.cof.ndjson`, "application/x-ndjson", rows.map((r) => JSON.stringify(r)).join("\n") + "\n"));
    on(".export-csv", () => download(`${slug}.csv`, "text/csv", toCsv(rows)));
    on(".more", async () => { const p = await fetchPage(lookup.path, cursor); rows = rows.concat(p.rows); cursor = p.cursor; draw(); });
  };
  const p = await fetchPage(lookup.path, null);
  rows = p.rows; cursor = p.cursor;
  draw();
  return rows.length;
}

async function run(q) {
  $("q").value = q;
  const status = $("status"), holder = $("sections");
  holder.innerHTML = "";
  status.className = "";
  const plan = classify(q);
  if (plan.error) {
    status.className = "alert";
    status.textContent = plan.error;
    return;
  }
  status.textContent = "Searching…";
  try {
    const counts = [];
    for (const l of plan.lookups) counts.push(await section(l, holder));
    const total = counts.reduce((a, b) => a + b, 0);
    status.textContent = total ? `${total} RRset${total === 1 ? "" : "s"} found.` : `Nothing recorded for ${q}.`;
    document.title = `${q} - dnsledger`;
  } catch (e) {
    status.className = "alert";
    status.textContent = e.message;
  }
}

function fromHash() {
  const m = location.hash.match(/^#q=(.*)$/);
  if (m) run(decodeURIComponent(m[1]));
}

$("search-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const q = $("q").value.trim();
  const h = "#q=" + encodeURIComponent(q);
  if (location.hash === h) run(q); else location.hash = h;
});
window.addEventListener("hashchange", fromHash);
fromHash();
