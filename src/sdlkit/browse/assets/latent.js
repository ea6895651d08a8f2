// One latent's page: latent.html#ID loads data/latents/ID.js (window.SDL_LATENT) with a <script> tag,
// which works from file:// where fetch() does not, and renders it. Text goes in with textContent only.
"use strict";
(function () {
  const meta = window.SDL_META || {};
  const labels = meta.labels || [];
  const byId = (id) => document.getElementById(id);

  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = text;
    if (cls) node.className = cls;
    return node;
  }

  function latentLink(id, suffix) {
    const li = el("li");
    const a = el("a", `latent ${id}`);
    a.href = `#${id}`;
    li.appendChild(a);
    if (suffix) li.appendChild(document.createTextNode(suffix));
    return li;
  }

  function histogram(counts, max) {
    const ns = "http://www.w3.org/2000/svg", width = 340, height = 120, pad = 18;
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("width", width);
    svg.setAttribute("height", height + pad);
    const top = Math.max(...counts, 1), step = width / counts.length;
    counts.forEach((count, i) => {
      const bar = document.createElementNS(ns, "rect");
      const h = count ? Math.max(1, (height - 4) * count / top) : 0;
      bar.setAttribute("x", i * step + 1);
      bar.setAttribute("y", height - h);
      bar.setAttribute("width", Math.max(step - 2, 1));
      bar.setAttribute("height", h);
      bar.setAttribute("fill", "#d9480f");
      const tip = document.createElementNS(ns, "title");
      tip.textContent = `${(i * max / counts.length).toPrecision(3)}–${((i + 1) * max / counts.length).toPrecision(3)}: ${count} rows`;
      bar.appendChild(tip);
      svg.appendChild(bar);
    });
    [[0, "0", "start"], [width, max.toPrecision(3), "end"]].forEach(([x, text, anchor]) => {
      const label = document.createElementNS(ns, "text");
      label.setAttribute("x", x);
      label.setAttribute("y", height + 14);
      label.setAttribute("font-size", "11");
      label.setAttribute("text-anchor", anchor);
      label.textContent = text;
      svg.appendChild(label);
    });
    return svg;
  }

  function shade(a, max) {
    return `rgba(255, 120, 30, ${Math.min(1, 0.15 + 0.85 * a / max).toFixed(3)})`;
  }

  function example(ex, max) {
    const box = el("div", null, "example");
    const head = el("div", null, "meta");
    head.appendChild(el("span", ex.v.toPrecision(3), "value"));
    const label = ex.l !== undefined && ex.l >= 0 ? ` · ${labels[ex.l] || ex.l}` : "";
    head.appendChild(document.createTextNode(`sample ${ex.s}${label}`));
    box.appendChild(head);
    const context = el("div", null, "context");
    ex.t.forEach((text, i) => {
      const span = el("span", text, i === ex.c ? "tok focus" : "tok");
      const a = ex.a[i];
      if (a > 0) span.style.backgroundColor = shade(a, max);
      span.title = `activation ${a.toPrecision(3)}`;
      context.appendChild(span);
    });
    if (ex.x !== undefined) {  // a row that stands for a whole sample: its text, shaded by the row's activation
      const span = el("span", ex.x, "tok sample");
      span.style.backgroundColor = shade(ex.v, max);
      span.title = `activation ${ex.v.toPrecision(3)} (the whole sample)`;
      context.replaceChildren(span);
    } else if (!ex.t.length || ex.t.every((t) => t === "")) {
      context.textContent = "(no token text: a row per sample; pass --data to show the sample's text)";
    }
    box.appendChild(context);
    return box;
  }

  function render(d) {
    document.title = `sdlkit · latent ${d.id}`;
    const anchored = d.id < (meta.anchored || 0) ? " ⚓ anchored" : "";
    byId("title").textContent = `Latent ${d.id}${anchored}`;
    byId("stats").textContent = `fires on ${(100 * d.freq).toPrecision(3)}% of rows (${d.count.toLocaleString()}) · ` +
      `max activation ${d.max.toPrecision(3)} · mean when firing ${d.mean.toPrecision(3)} · ${meta.run || ""}`;
    byId("hist").replaceChildren(histogram(d.hist, d.max));
    byId("classes").replaceChildren(...(d.classes || []).map(([c, cos]) => el("li", `${labels[c] || c} (${cos.toFixed(3)})`)));
    const table = byId("labels");
    table.replaceChildren();
    const rowsPerLabel = meta.label_rows || [];
    const allRows = rowsPerLabel.reduce((a, b) => a + b, 0) || 1;
    (d.labels || []).forEach(([c, n]) => {
      const row = el("tr");
      const share = n / d.count, base = (rowsPerLabel[c] || 0) / allRows;
      row.appendChild(el("td", labels[c] || String(c)));
      const barCell = el("td");
      const bar = el("span", null, "bar");
      bar.style.width = `${Math.round(120 * share)}px`;
      barCell.appendChild(bar);
      row.appendChild(barCell);
      row.appendChild(el("td", `${(100 * share).toFixed(1)}%`, "num"));
      row.appendChild(el("td", base > 0 ? `×${(share / base).toFixed(1)}` : "", "num"));
      row.title = `${n} of the ${d.count} rows it fires on; ${(100 * base).toFixed(1)}% of all rows have this label`;
      table.appendChild(row);
    });
    byId("tokens").replaceChildren(...d.tokens.map(([t, n]) => el("li", `${t} (${n})`)));
    byId("tokens-head").hidden = !d.tokens.length;  // rows that stand for whole samples have no tokens
    byId("near").replaceChildren(...d.near.map(([id, cos]) => latentLink(id, ` (${cos.toFixed(3)})`)));
    byId("examples").replaceChildren(...d.examples.map((ex) => example(ex, d.max)));
  }

  function load() {
    const id = parseInt(location.hash.slice(1), 10);
    const n = meta.n_latents || 0;
    if (!(id >= 0 && id < n)) {
      byId("title").textContent = "No latent chosen";
      byId("stats").textContent = "open a latent from the index (latent.html#ID)";
      return;
    }
    byId("prev").href = `#${Math.max(id - 1, 0)}`;
    byId("next").href = `#${Math.min(id + 1, n - 1)}`;
    document.querySelectorAll("script[data-latent]").forEach((s) => s.remove());
    window.SDL_LATENT = undefined;
    const script = document.createElement("script");
    script.dataset.latent = String(id);
    script.src = `data/latents/${id}.js`;
    script.onload = () => render(window.SDL_LATENT);
    script.onerror = () => {
      byId("title").textContent = `Latent ${id}`;
      byId("stats").textContent = "never fired on the rows scanned: it has no page";
      ["hist", "classes", "labels", "tokens", "near", "examples"].forEach((k) => byId(k).replaceChildren());
    };
    document.body.appendChild(script);
  }

  window.addEventListener("hashchange", load);
  load();
})();
