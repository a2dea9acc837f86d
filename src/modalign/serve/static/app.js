// modalign search page: plain DOM, no build step. Text goes into the page with textContent only.
"use strict";

const $ = (id) => document.getElementById(id);

function say(text, isError = false) {
  $("message").textContent = text;
  $("message").className = isError ? "error" : "";
}

async function call(url, options) {
  const response = await fetch(url, options);
  const body = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

function card(hit) {
  const div = document.createElement("div");
  div.className = "card";
  div.dataset.id = hit.id;
  div.title = "search with this item";
  const caption = (hit.metadata && hit.metadata.caption) || "";
  if (hit.media && hit.modality === "image") {
    const img = document.createElement("img");
    img.src = hit.media;
    img.alt = caption || hit.id;
    img.loading = "lazy";
    div.append(img);
  } else if (hit.media && hit.modality === "audio") {
    const audio = document.createElement("audio");
    audio.controls = true;
    audio.preload = "none";
    audio.src = hit.media;
    audio.addEventListener("click", (e) => e.stopPropagation());
    div.append(audio);
  }
  const text = document.createElement("div");
  text.className = "caption";
  text.textContent = caption || hit.id;
  const meta = document.createElement("div");
  meta.className = "meta";
  const badge = document.createElement("span");
  badge.className = "badge";
  badge.textContent = hit.modality;
  const score = document.createElement("span");
  score.className = "score";
  score.textContent = hit.score.toFixed(3);
  meta.append(badge, score);
  div.append(text, meta);
  div.addEventListener("click", () => search({ id: hit.id }, `items like ${hit.id}`));
  return div;
}

function show(results, what) {
  const main = $("results");
  main.replaceChildren(...results.map(card));
  say(`${results.length} results for ${what}`);
}

function options() {
  const modality = $("modality").value || null;
  return { k: Number($("k").value), modality };
}

async function search(query, what) {
  say("searching…");
  try {
    const body = await call("/search", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ ...query, ...options() }),
    });
    show(body.results, what);
  } catch (err) {
    say(err.message, true);
  }
}

async function searchFile(file) {
  say(`searching with ${file.name}…`);
  const form = new FormData();
  form.append("file", file);
  const { k, modality } = options();
  form.append("k", String(k));
  if (modality) form.append("modality", modality);
  try {
    const body = await call("/search/file", { method: "POST", body: form });
    show(body.results, file.name);
  } catch (err) {
    say(err.message, true);
  }
}

async function start() {
  try {
    const health = await call("/health");
    $("status").textContent = `${health.items} items · ${health.backend} index`;
    for (const m of health.modalities) {
      const option = document.createElement("option");
      option.value = m;
      option.textContent = m;
      $("modality").append(option);
    }
  } catch (err) {
    say(err.message, true);
  }
  $("search-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = $("query").value.trim();
    if (text) search({ text }, `“${text}”`);
  });
  const drop = $("drop");
  drop.addEventListener("click", () => $("file").click());
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter") $("file").click(); });
  $("file").addEventListener("change", () => { if ($("file").files[0]) searchFile($("file").files[0]); });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files[0]) searchFile(e.dataTransfer.files[0]);
  });
}

start();
