// The index page: one row per latent from window.SDL_INDEX (columns) and window.SDL_META; sort by a column
// header, filter by the search box. Cells are filled with textContent only.
"use strict";
(function () {
  const LIMIT = 2000;
  const meta = window.SDL_META, data = window.SDL_INDEX;
  const summary = document.getElementById("summary");
  if (!meta || !data) {
    summary.textContent = "The data files (data/meta.js, data/index.js) did not load: open this page inside the folder sdlkit browse wrote.";
    summary.className = "error";
    return;
  }
  const labels = meta.labels || [];
  const latents = data.freq.map((freq, id) => ({
    id: id,
    freq: freq,
    max: data.max[id],
    mean: data.mean[id],
    tokens: data.tokens[id],
    clsName: data.cls ? labels[data.cls[id]] || "" : "",
    cos: data.cos ? data.cos[id] : null,
    dead: freq === 0,
    anchored: id < (meta.anchored || 0),
  }));
  const dead = latents.filter((l) => l.dead).length;
  summary.textContent = `${meta.run} on ${meta.store}: ${meta.n_latents.toLocaleString()} latents ` +
    `(${meta.method}), ${dead.toLocaleString()} never fired on the ${meta.rows.toLocaleString()} rows scanned` +
    (meta.anchored ? `; latents 0–${meta.anchored - 1} are anchored to class means (⚓)` : "") + ".";
  if (meta.per_sample) {  // rows stand for whole samples: the column shows the top sample's text
    const th = document.querySelector('#latents th[data-key="tokens"]');
    th.textContent = "top text";
    th.title = "the start of the text of its top activating sample";
    document.getElementById("search").placeholder = "search top text, class, or latent id";
  }
  let key = "freq", descending = true;
  const search = document.getElementById("search");
  const showDead = document.getElementById("show-dead");
  const body = document.querySelector("#latents tbody");
  const headers = document.querySelectorAll("#latents th");

  function cell(row, text, cls) {
    const td = document.createElement("td");
    if (cls) td.className = cls;
    td.textContent = text;
    row.appendChild(td);
    return td;
  }

  function render() {
    const query = search.value.trim().toLowerCase();
    let shown = latents.filter((l) => (showDead.checked || !l.dead) &&
      (!query || String(l.id) === query || l.tokens.toLowerCase().includes(query) || l.clsName.toLowerCase().includes(query)));
    const sign = descending ? -1 : 1;
    shown.sort((a, b) => {
      const x = a[key], y = b[key];
      if (x === y) return a.id - b.id;
      if (x === null) return 1;
      if (y === null) return -1;
      return (x < y ? -1 : 1) * sign;
    });
    const total = shown.length;
    shown = shown.slice(0, LIMIT);
    const maxFreq = Math.max(...latents.map((l) => l.freq), 1e-12);
    const fragment = document.createDocumentFragment();
    for (const l of shown) {
      const row = document.createElement("tr");
      row.className = l.dead ? "latent dead" : "latent";
      row.dataset.id = l.id;
      const first = cell(row, "", "num");
      if (l.dead) first.textContent = String(l.id);
      else {
        const link = document.createElement("a");
        link.href = `latent.html#${l.id}`;
        link.textContent = (l.anchored ? "⚓ " : "") + l.id;
        first.appendChild(link);
      }
      const freq = cell(row, "", "num");
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.style.width = `${Math.round(60 * l.freq / maxFreq)}px`;
      freq.appendChild(bar);
      freq.appendChild(document.createTextNode(`${(100 * l.freq).toPrecision(3)}%`));
      cell(row, l.max.toPrecision(3), "num");
      cell(row, l.mean.toPrecision(3), "num");
      cell(row, l.tokens, "tokens");
      cell(row, l.clsName);
      cell(row, l.cos === null ? "" : l.cos.toFixed(3), "num");
      fragment.appendChild(row);
    }
    body.replaceChildren(fragment);
    document.getElementById("shown").textContent = `${total.toLocaleString()} latents match`;
    document.getElementById("more").textContent = total > LIMIT ? `showing the first ${LIMIT} of ${total}; refine the search to see others` : "";
    headers.forEach((th) => th.removeAttribute("aria-sort"));
    document.querySelector(`#latents th[data-key="${key}"]`).setAttribute("aria-sort", descending ? "descending" : "ascending");
  }

  headers.forEach((th) => th.addEventListener("click", () => {
    descending = th.dataset.key === key ? !descending : th.dataset.key !== "id" && th.dataset.key !== "tokens" && th.dataset.key !== "clsName";
    key = th.dataset.key;
    render();
  }));
  search.addEventListener("input", render);
  showDead.addEventListener("change", render);
  render();
})();
