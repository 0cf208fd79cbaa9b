// sparse-infer feature browser: plain JavaScript, no external resources.
// data/index.json holds one compact row per feature; a feature's full records
// (data/<encoder>/<index>.json) are fetched only when it is opened.
"use strict";
const PAGE = 100;
let INDEX = null;

function esc(s) {
  return String(s).replace(/[&<>"']/g, c => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}
// A token as shown in lists: spaces and line breaks made visible.
function vis(t) {
  return t.replace(/ /g, "\u2423").replace(/\n/g, "\u21b5");
}
function fmt(x, digits) {
  if (x === null || x === undefined) return "–";
  if (x !== 0 && (Math.abs(x) < 1e-3 || Math.abs(x) >= 1e5)) return x.toExponential(2);
  return x.toFixed(digits === undefined ? 3 : digits);
}
function hashParams() {
  const h = new URLSearchParams(location.hash.slice(1));
  return { feature: h.get("feature"), page: parseInt(h.get("page") || "0", 10) || 0 };
}
function query() {
  return (new URLSearchParams(location.search).get("q") || "").trim();
}
function col(name) { return INDEX.columns.indexOf(name); }

function matches(row, q) {
  if (!q) return true;
  const ql = q.toLowerCase();
  if (String(row[0]) === q) return true;
  const toks = row[col("top_tokens")];
  if (toks.some(t => t.toLowerCase().trim() === ql.trim() || t.toLowerCase().includes(ql))) return true;
  return row[col("snippet")].toLowerCase().includes(ql);
}

function renderIndex() {
  document.getElementById("feature-view").hidden = true;
  const view = document.getElementById("index-view");
  view.hidden = false;
  const q = query();
  const rows = INDEX.features.filter(r => matches(r, q));
  const { page } = hashParams();
  const pages = Math.max(1, Math.ceil(rows.length / PAGE));
  const p = Math.min(page, pages - 1);
  const encs = INDEX.encoders;
  document.getElementById("summary").innerHTML =
    `<p>${rows.length} of ${INDEX.features.length} features` + (q ? ` matching <b id="query">${esc(q)}</b>` : "") +
    ` · ${INDEX.tokens_seen} tokens of the ${esc(INDEX.split)} split · encoders: ${encs.map(esc).join(", ")}</p>`;
  let head = `<tr><th>feature</th><th>density (${esc(encs[0])})</th><th>max (${esc(encs[0])})</th>`;
  for (const e of encs.slice(1)) head += `<th>density (${esc(e)})</th><th>max (${esc(e)})</th>`;
  head += `<th>top tokens</th><th>top example</th></tr>`;
  document.querySelector("#features thead").innerHTML = head;
  const body = rows.slice(p * PAGE, (p + 1) * PAGE).map(r => {
    let tds = `<td><a href="#feature=${r[0]}">#${r[0]}</a></td><td class="num">${fmt(r[1], 4)}</td><td class="num">${fmt(r[2])}</td>`;
    for (let k = 0; k < encs.length - 1; k++) tds += `<td class="num">${fmt(r[5 + 2 * k], 4)}</td><td class="num">${fmt(r[6 + 2 * k])}</td>`;
    tds += `<td>${r[3].map(t => `<code>${esc(vis(t))}</code>`).join(" ")}</td><td class="snippet">${esc(r[4])}</td>`;
    return `<tr class="feature-row" data-feature="${r[0]}">${tds}</tr>`;
  }).join("");
  document.querySelector("#features tbody").innerHTML = body;
  let pager = "";
  if (pages > 1) {
    for (let i = 0; i < pages; i++) pager += i === p ? `<span class="current">${i + 1}</span>` : `<a href="#page=${i}">${i + 1}</a>`;
  }
  document.getElementById("pager").innerHTML = pager;
  document.getElementById("status").textContent = "";
}

function tokensHtml(ex, scale) {
  return ex.tokens.map((t, i) => {
    const v = ex.activations[i];
    if (v > 0) {
      const a = Math.min(1, v / scale);
      return `<span class="tok hl" style="background: rgba(255, 140, 0, ${(0.15 + 0.85 * a).toFixed(3)})" title="${esc(t)}: ${fmt(v)}" data-v="${v}">${esc(t)}</span>`;
    }
    return `<span class="tok">${esc(t)}</span>`;
  }).join("");
}
function exampleHtml(ex, scale) {
  return `<div class="example" data-context="${ex.context}"><span class="max">${fmt(ex.max_activation)}</span>${tokensHtml(ex, scale)}</div>`;
}
function histogramSvg(h) {
  const W = 360, H = 110, n = h.counts.length, top = Math.max(1, ...h.counts);
  const bw = W / Math.max(1, n);
  let bars = "";
  h.counts.forEach((c, i) => {
    const bh = (c / top) * (H - 20);
    bars += `<rect x="${(i * bw).toFixed(2)}" y="${(H - 14 - bh).toFixed(2)}" width="${Math.max(1, bw - 1).toFixed(2)}" height="${bh.toFixed(2)}"><title>[${fmt(h.edges[i])}, ${fmt(h.edges[i + 1])}): ${c}</title></rect>`;
  });
  return `<svg class="hist" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" role="img" aria-label="activation histogram">${bars}` +
    `<text x="0" y="${H - 2}">0</text><text x="${W}" y="${H - 2}" text-anchor="end">${fmt(h.edges[n])}</text></svg>`;
}
function logitsHtml(r) {
  const table = (list, cls) => `<table><tbody>${list.map(l => `<tr><td><code>${esc(vis(l.token))}</code></td><td class="num ${cls}">${fmt(l.value)}</td></tr>`).join("")}</tbody></table>`;
  if (!r.top_logits.length) return "<p>no unembedding given</p>";
  return `<div class="logits"><div><b class="pos">promotes</b>${table(r.top_logits, "pos")}</div><div><b class="neg">suppresses</b>${table(r.bottom_logits, "neg")}</div></div>`;
}
function encoderHtml(r) {
  const scale = r.max_activation > 0 ? r.max_activation : 1;
  let s = `<div class="encoder" data-encoder="${esc(r.encoder)}"><h2>${esc(r.encoder)}</h2>`;
  s += `<div class="stats"><span>density <b class="density">${fmt(r.density, 5)}</b></span><span>fires on <b>${Math.round(r.density * r.tokens_seen)}</b> of ${r.tokens_seen} tokens</span><span>max <b>${fmt(r.max_activation)}</b></span></div>`;
  s += `<h3>Activation density</h3>${histogramSvg(r.histogram)}`;
  s += `<h3>Logits (decoder direction · unembedding)</h3>${logitsHtml(r)}`;
  s += `<h3>Top activations</h3><div class="top-examples">`;
  s += r.top_examples.length ? r.top_examples.map(e => exampleHtml(e, scale)).join("") : "<p>never fires on the scanned tokens</p>";
  s += `</div><h3>Quantile samples</h3><div class="quantiles">`;
  for (let q = r.quantile_examples.length - 1; q >= 0; q--) {
    const bin = r.quantile_examples[q];
    s += `<div class="quantile" data-quantile="${q}"><b>quantile ${q + 1} of ${r.quantile_examples.length}</b>${bin.map(e => exampleHtml(e, scale)).join("")}</div>`;
  }
  return s + `</div></div>`;
}

async function renderFeature(idx) {
  document.getElementById("index-view").hidden = true;
  const view = document.getElementById("feature-view");
  view.hidden = false;
  view.innerHTML = "";
  document.getElementById("status").textContent = `loading feature ${idx}…`;
  const row = INDEX.features.find(r => String(r[0]) === String(idx));
  if (!row) {
    view.innerHTML = `<p class="error">feature ${esc(idx)} is not in this browser (${INDEX.features.length} features)</p>`;
    document.getElementById("status").textContent = "";
    return;
  }
  try {
    const recs = await Promise.all(INDEX.encoders.map(e => fetch(`data/${encodeURIComponent(e)}/${idx}.json`).then(r => {
      if (!r.ok) throw new Error(`data/${e}/${idx}.json: HTTP ${r.status}`);
      return r.json();
    })));
    view.innerHTML = `<h1 id="feature-title">Feature ${esc(idx)}</h1><div class="columns">${recs.map(encoderHtml).join("")}</div>`;
    document.title = `feature ${idx} · sparse-infer`;
    document.getElementById("status").textContent = "";
  } catch (e) {
    view.innerHTML = `<p class="error">${esc(e.message)}</p>`;
  }
}

function route() {
  const { feature } = hashParams();
  if (feature !== null) renderFeature(feature); else renderIndex();
}

async function main() {
  try {
    const r = await fetch("data/index.json");
    if (!r.ok) throw new Error(`data/index.json: HTTP ${r.status}`);
    INDEX = await r.json();
  } catch (e) {
    document.getElementById("status").textContent = `cannot load the index: ${e.message}`;
    return;
  }
  document.getElementById("meta").textContent = `${INDEX.model} · ${INDEX.hook} · ${INDEX.n_latents} latents` +
    INDEX.notes.map(([k, v]) => ` · ${k} ${v}`).join("");
  const box = document.getElementById("search");
  box.value = query();
  document.getElementById("search-form").addEventListener("submit", ev => {
    ev.preventDefault();
    const u = new URL(location.href);
    if (box.value.trim()) u.searchParams.set("q", box.value.trim()); else u.searchParams.delete("q");
    u.hash = "";
    history.pushState(null, "", u);
    route();
  });
  document.querySelector("#features tbody").addEventListener("click", ev => {
    const tr = ev.target.closest("tr.feature-row");
    if (tr && ev.target.tagName !== "A") location.hash = `feature=${tr.dataset.feature}`;
  });
  window.addEventListener("hashchange", route);
  window.addEventListener("popstate", route);
  route();
}
main();
