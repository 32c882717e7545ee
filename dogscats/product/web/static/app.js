// The upload page: photos dropped or chosen are sent to POST /predict?maps=true; each comes back with its class,
// every class's probability and its class activation map (or why it could not be read). Names are shown as text,
// never as HTML.
"use strict";

const results = document.getElementById("results");
const status = document.getElementById("status");
const tokenRow = document.getElementById("token-row");
const tokenInput = document.getElementById("token");

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function headers() {
  const token = tokenInput.value || sessionStorage.getItem("dogscats-token") || "";
  return token ? { Authorization: "Bearer " + token } : {};
}

function card(photo) {
  const item = element("article", photo.error ? "photo error" : "photo");
  item.dataset.name = photo.name;
  if (photo.error) {
    item.append(element("div", "name", photo.name), element("div", "reason", photo.error));
    return item;
  }
  if (photo.map) {
    const image = element("img");
    image.src = photo.map;
    image.alt = "class activation map of " + photo.name;
    item.append(image);
  }
  item.append(element("div", "class", photo.class), element("div", "name", photo.name));
  for (const [name, p] of Object.entries(photo.probabilities)) {
    const bar = element("div", "bar");
    const track = element("span");
    const fill = element("span", "fill");
    fill.style.width = (100 * p).toFixed(1) + "%";
    track.append(fill);
    bar.dataset.class = name;
    bar.append(element("span", "label", name), track, element("span", "p", p.toFixed(4)));
    item.append(bar);
  }
  if (photo.map_error) item.append(element("div", "reason", photo.map_error));
  return item;
}

async function send(files) {
  if (!files.length) return;
  const form = new FormData();
  for (const file of files) form.append("files", file, file.name);
  status.textContent = "classifying " + files.length + " photo(s)…";
  const response = await fetch("/predict?maps=true", { method: "POST", body: form, headers: headers() });
  const json = (response.headers.get("content-type") || "").startsWith("application/json");
  const body = json ? await response.json() : { error: response.status + " " + response.statusText };
  if (response.status === 401) tokenRow.hidden = false;
  if (!response.ok) {
    status.textContent = "refused: " + body.error;
    return;
  }
  if (tokenInput.value) sessionStorage.setItem("dogscats-token", tokenInput.value);
  results.replaceChildren(...body.photos.map(card));
  const unreadable = body.photos.filter((photo) => photo.error).length;
  status.textContent = body.photos.length + " photo(s), " + unreadable + " unreadable; model " + body.version;
}

async function describeModel() {
  const response = await fetch("/readyz");
  const body = await response.json();
  document.getElementById("model").textContent = body.ready
    ? "model " + body.version + ": " + body.classes.join(", ")
    : "no model: " + body.problem;
}

const drop = document.getElementById("drop");
const input = document.getElementById("files");
const showFailure = (err) => { status.textContent = "failed: " + err; };
input.addEventListener("change", () => send(input.files).catch(showFailure));
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  send(event.dataTransfer.files).catch(showFailure);
});
describeModel().catch(showFailure);
