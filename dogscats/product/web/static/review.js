// The review page: the audit's suspects by kind, worst first; one key (or click) per decision, each written at once
// to data/overrides.csv by POST /review/decide with this page's token; undo puts back what was there before. Ids and
// labels are shown as text, never as HTML.
"use strict";

const TOKEN = document.querySelector('meta[name="review-token"]').content;
const TABS = [
  ["label", "label issues"],
  ["pairs", "duplicates, leaks, conflicts"],
  ["outlier", "outliers"],
];
const PAIRS = ["conflict", "leak", "duplicate"];

const list = document.getElementById("suspects");
const where = document.getElementById("where");
const message = document.getElementById("message");
const next = document.getElementById("next");
const kinds = document.getElementById("kinds");

let state = { classes: [], suspects: [], progress: { kinds: {}, not_run: 0, next: "" } };
let tab = "label";
let current = 0;
const undo = [];

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function tabOf(suspect) {
  return PAIRS.includes(suspect.kind) ? "pairs" : suspect.kind;
}

function shown() {
  return state.suspects.filter((s) => tabOf(s) === tab);
}

function keyOf(s) {
  return [s.kind, s.id, s.other_id].join("\u0000");
}

function photoIds(s) {
  return s.other_id ? [s.id, s.other_id] : [s.id];
}

function labelled(s, side) {
  return (side === 0 ? s.split : s.other_split) === "train";
}

async function refresh(keep) {
  const response = await fetch("/review/state");
  const body = await response.json();
  if (!response.ok) {
    message.textContent = body.error || "the state could not be read: " + response.status;
    return;
  }
  const before = keep || (shown()[current] && keyOf(shown()[current]));
  state = body;
  const at = shown().findIndex((s) => keyOf(s) === before);
  current = at >= 0 ? at : Math.min(current, Math.max(shown().length - 1, 0));
  render();
}

function photo(id, caption) {
  const figure = element("figure");
  const image = element("img");
  image.loading = "lazy";
  image.src = "/review/photo/" + encodeURIComponent(id);
  image.alt = id;
  figure.append(image, element("figcaption", "", caption));
  return figure;
}

function mapOf(s) {
  const figure = element("figure", "map");
  const image = element("img");
  image.loading = "lazy";
  image.src = "/review/map/" + encodeURIComponent(s.id) + "?target=" + encodeURIComponent(s.suggested);
  image.alt = "why " + s.suggested + ": class activation map of " + s.id;
  image.addEventListener("error", () => figure.remove()); // a classifier without maps: the photo alone
  figure.append(image, element("figcaption", "", "looks like " + s.suggested + " here"));
  return figure;
}

function placeOf(s, side) {
  const split = side === 0 ? s.split : s.other_split;
  const fold = side === 0 ? s.fold : s.other_fold;
  return split === "train" ? "labelled, fold " + fold : split + " photo";
}

function button(label, changes, index, enabled = true) {
  const node = element("button", "", label);
  node.type = "button";
  node.disabled = !enabled;
  node.addEventListener("click", (event) => {
    event.stopPropagation();
    enqueue(() => {
      current = index; // the clicked card's suspect is the one decided, undone and moved on from
      return decide(changes);
    });
  });
  return node;
}

function choices(s, index) {
  const box = element("div", "choices");
  if (!s.other_id) {
    box.append(
      button("keep (k)", keepAll(s), index),
      button("exclude (x)", [[s.id, "exclude"]], index, labelled(s, 0)),
    );
    state.classes.forEach((c, i) => {
      box.append(button("relabel " + c + " (" + (i + 1) + ")", relabelTo(s, c), index, labelled(s, 0)));
    });
    return box;
  }
  box.append(
    button("drop the left (a)", [[s.id, "exclude"]], index, labelled(s, 0)),
    button("drop the right (d)", [[s.other_id, "exclude"]], index, labelled(s, 1)),
    button("keep both (b)", keepAll(s), index, labelled(s, 0) || labelled(s, 1)),
  );
  state.classes.forEach((c, i) => {
    box.append(button("left is " + c + " (" + (i + 1) + ")", relabelTo(s, c), index, labelled(s, 0)));
  });
  return box;
}

function keepAll(s) {
  return photoIds(s)
    .filter((_, side) => labelled(s, side))
    .map((id) => [id, "keep"]);
}

function relabelTo(s, c) {
  return [[s.id, "relabel:" + c], ...keepAll(s).slice(1)];
}

function card(s, index) {
  const item = element("article", "suspect" + (s.reviewed ? " reviewed" : "") + (index === current ? " current" : ""));
  item.dataset.id = s.id;
  item.dataset.other = s.other_id;
  item.dataset.kind = s.kind;
  item.addEventListener("click", () =>
    enqueue(() => {
      current = index;
      render();
    }),
  );
  const photos = element("div", "photos");
  const first = s.kind === "label" ? s.id + ", labelled " + s.given : s.id;
  photos.append(photo(s.id, first + " (" + placeOf(s, 0) + ")"));
  if (s.kind === "label") photos.append(mapOf(s));
  if (s.other_id) photos.append(photo(s.other_id, s.other_id + " (" + placeOf(s, 1) + ")"));
  const what =
    s.kind === "label"
      ? "labelled " + s.given + ", looks like " + s.suggested + "; 1 - p(" + s.given + ") = " + s.score.toFixed(4)
      : s.kind === "outlier"
        ? "outlier score " + s.score.toFixed(4)
        : s.kind + ": " + (s.exact ? "the same bytes" : "cosine " + s.score.toFixed(4));
  const decided = photoIds(s)
    .map((id, side) => (s.decisions[side] ? id + ": " + s.decisions[side] : ""))
    .filter(Boolean)
    .join(", ");
  const status = s.reviewed ? "reviewed" + (decided ? " (" + decided + ")" : ": nothing to decide") : "pending";
  item.append(photos, element("p", "what", what), element("p", "decision", status), choices(s, index));
  return item;
}

function render() {
  kinds.replaceChildren();
  for (const [name, title] of TABS) {
    const counts = { reviewed: 0, left: 0 };
    for (const [kind, figures] of Object.entries(state.progress.kinds)) {
      if ((PAIRS.includes(kind) ? "pairs" : kind) === name) {
        counts.reviewed += figures.reviewed;
        counts.left += figures.left;
      }
    }
    const tabButton = element("button", name === tab ? "tab active" : "tab", title + ": " + counts.left + " left");
    tabButton.type = "button";
    tabButton.setAttribute("role", "tab");
    tabButton.setAttribute("aria-selected", String(name === tab));
    tabButton.dataset.tab = name;
    tabButton.title = counts.reviewed + " reviewed, " + counts.left + " left";
    tabButton.addEventListener("click", () => enqueue(() => switchTab(name)));
    kinds.append(tabButton);
  }
  const all = Object.values(state.progress.kinds);
  const left = all.reduce((n, k) => n + k.left, 0);
  const reviewed = all.reduce((n, k) => n + k.reviewed, 0);
  where.textContent = reviewed + " reviewed, " + left + " left of " + state.suspects.length + " suspects";
  next.hidden = state.progress.not_run === 0;
  next.textContent =
    state.progress.not_run +
    " suspect(s) decided since the audit ran: run `" +
    state.progress.next +
    "` to rebuild from data/overrides.csv, then come back to see what remains.";
  list.replaceChildren(...shown().map(card));
  if (!shown().length) list.append(element("p", "empty", "No suspects of this kind."));
  const focused = list.querySelector(".current");
  if (focused) focused.scrollIntoView({ block: "nearest" });
}

function switchTab(name) {
  tab = name;
  current = Math.max(
    0,
    shown().findIndex((s) => !s.reviewed),
  );
  render();
}

async function post(changes) {
  const response = await fetch("/review/decide", {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-Review-Token": TOKEN },
    body: JSON.stringify({ decisions: changes.map(([id, action]) => ({ id, action })) }),
  });
  const body = await response.json().catch(() => ({ error: "status " + response.status }));
  if (!response.ok) throw new Error(body.error || "status " + response.status);
  return body;
}

function previousOf(ids) {
  const before = new Map();
  for (const s of state.suspects) {
    photoIds(s).forEach((id, side) => before.set(id, s.decisions[side] || ""));
  }
  return ids.map((id) => [id, before.get(id) || ""]);
}

async function decide(changes) {
  const s = shown()[current];
  if (!s || !changes.length) return;
  const previous = previousOf(changes.map(([id]) => id));
  try {
    await post(changes);
  } catch (err) {
    message.textContent = err.message;
    return;
  }
  message.textContent = "";
  undo.push({ changes: previous, tab, key: keyOf(s) });
  await refresh(keyOf(s));
  const rows = shown();
  const after = rows.findIndex((r, i) => i > current && !r.reviewed);
  if (after >= 0) current = after;
  render();
}

async function undoLast() {
  const last = undo.pop();
  if (!last) {
    message.textContent = "nothing to undo";
    return;
  }
  try {
    await post(last.changes);
  } catch (err) {
    undo.push(last); // refused (the page's reason below): still there to undo
    message.textContent = err.message;
    return;
  }
  message.textContent = "undone";
  tab = last.tab;
  await refresh(last.key);
}

function move(step) {
  const count = shown().length;
  if (!count) return;
  current = Math.min(Math.max(current + step, 0), count - 1);
  render();
}

// Keys and clicks run one after another, each on the state the one before left: a key pressed while a decision is
// on its way waits for it.
let queue = Promise.resolve();
function enqueue(action) {
  queue = queue.then(action).catch((err) => {
    message.textContent = err.message;
  });
}

const KEYS = new Set(["ArrowDown", "ArrowUp", "ArrowRight", "ArrowLeft", "u", "k", "x", "r", "a", "d", "b"]);

async function press(key, undoKey) {
  const s = shown()[current];
  const index = TABS.findIndex(([name]) => name === tab);
  const digit = /^[1-9]$/.test(key) ? Number(key) - 1 : -1;
  if (key === "ArrowDown") move(1);
  else if (key === "ArrowUp") move(-1);
  else if (key === "ArrowRight") switchTab(TABS[(index + 1) % TABS.length][0]);
  else if (key === "ArrowLeft") switchTab(TABS[(index + TABS.length - 1) % TABS.length][0]);
  else if (key === "u" || undoKey) await undoLast();
  else if (!s) return;
  else if (digit >= 0 && digit < state.classes.length) await decide(relabelTo(s, state.classes[digit]));
  else if (!s.other_id && key === "k") await decide(keepAll(s));
  else if (!s.other_id && key === "x") await decide([[s.id, "exclude"]]);
  else if (!s.other_id && key === "r" && s.suggested) await decide(relabelTo(s, s.suggested));
  else if (s.other_id && key === "a") await decide([[s.id, "exclude"]]);
  else if (s.other_id && key === "d") await decide([[s.other_id, "exclude"]]);
  else if (s.other_id && (key === "b" || key === "k")) await decide(keepAll(s));
}

document.addEventListener("keydown", (event) => {
  const undoKey = event.ctrlKey && event.key === "z";
  if (event.altKey || event.metaKey || (event.ctrlKey && !undoKey)) return;
  if (!KEYS.has(event.key) && !/^[1-9]$/.test(event.key) && !undoKey) return;
  event.preventDefault();
  if (event.repeat && !event.key.startsWith("Arrow")) return; // a held key decides once, never a run of suspects
  enqueue(() => press(event.key, undoKey));
});

window.addEventListener("focus", () => enqueue(() => refresh())); // back from a terminal's `dvc repro`
enqueue(() => refresh().then(() => switchTab(tab))); // the first suspect left
