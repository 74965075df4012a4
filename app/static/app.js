// Demo page: a dialog built turn by turn. Each step sends the dialog so far to POST /respond, shows the n
// replies as choices beside a picture of their latent codes (latent-plot.js), and a chosen (or typed) turn
// is added to the dialog, which asks again. Every step is kept, so Undo goes back to the replies offered
// before; the dialog only grows when the server answered.
import { color, render as renderPlot } from "./latent-plot.js";

const $ = (id) => document.getElementById(id);
const MAX_SEED = 9223372036854775806n;  // 2^63 - 2: seeds are taken modulo 2^63 - 1

// history[i] = { turns, answer }: the dialog after step i and the server's answer to it (null: none yet).
// A turn is { text, origin: "typed" } or { text, origin: "reply", index (1-based), of, seed (digits) }.
let history = [{ turns: [], answer: null }];
let maxTurns = 20;  // the server's limit on context turns (from /info): longer dialogs send their last turns
let busy = false;
let highlightPoint = () => {};
const current = () => history[history.length - 1];
const speaker = (i) => (i % 2 === 0 ? "A" : "B");

async function loadInfo() {
  try {
    const r = await fetch("/info");
    if (!r.ok) return;
    const info = await r.json();
    $("model").textContent = `model ${info.model.name} (${info.model.sha256.slice(0, 12)}) on ${info.device}`;
    $("n").max = info.limits.max_n;
    maxTurns = info.limits.max_turns;
  } catch (e) { /* the page works without it */ }
}

// JSON.parse would round seeds past 2^53 to the nearest double: read every "seed" value as its digits.
// (Inside a JSON string a quote is always escaped, so reply texts cannot match.)
function exactSeeds(text) {
  return JSON.parse(text.replace(/"seed":\s*([0-9]+)/g, '"seed":"$1"'));
}

function errorText(status, body, offset) {
  if (status === 401) return "the server needs an API key: enter it under Options (missing or invalid key).";
  if (body && Array.isArray(body.detail)) {
    return body.detail.map((d) => {
      const loc = (d.loc || []).slice(1);
      const where = loc[0] === "context" && typeof loc[1] === "number" ? `turn ${offset + loc[1] + 1}` : loc.join(".");
      return `${where}: ${d.msg}`;
    }).join("; ");
  }
  return (body && body.detail) || `HTTP ${status}`;
}

function showError(text) {
  $("error").textContent = text ? `Error: ${text}` : "";
  $("error").hidden = !text;
}

/** The request body for ``turns`` as JSON text; throws an Error with a message for the user. */
function requestText(turns) {
  const sent = turns.slice(-maxTurns);
  const req = { context: sent.map((t) => t.text), n: Number($("n").value || 5), strategy: $("strategy").value,
                return_latents: true };
  // empty: the server's default latent temperature
  if ($("latent_temperature").value !== "") req.latent_temperature = Number($("latent_temperature").value);
  let text = JSON.stringify(req);
  // Seeds go up to 2^63 - 2, past the 2^53 that a JavaScript number holds exactly: they travel as the
  // digits typed (spliced into the JSON text) and come back as strings (see exactSeeds).
  const seed = $("seed").value.trim();
  if (seed !== "") {
    if (!/^[0-9]{1,19}$/.test(seed) || BigInt(seed) > MAX_SEED) {
      throw new Error(`the seed is a whole number from 0 to ${MAX_SEED}.`);
    }
    text = text.replace(/}$/, `,"seed":${seed}}`);
  }
  return { text, offset: turns.length - sent.length };
}

/** Send the dialog with ``added`` turns appended; on an answer, that becomes the new step. */
async function ask(added) {
  if (busy) return false;
  const turns = [...current().turns, ...added];
  let req;
  try { req = requestText(turns); } catch (e) { showError(e.message); return false; }
  const headers = { "Content-Type": "application/json" };
  if ($("api_key").value) headers.Authorization = `Bearer ${$("api_key").value}`;
  showError("");
  setBusy(true);
  renderDialog(turns, added.length);
  $("status").textContent = "Thinking…";
  try {
    const r = await fetch("/respond", { method: "POST", headers, body: req.text });
    const body = await r.text().then(exactSeeds).catch(() => null);
    if (!r.ok || body === null) {
      if (r.status === 401) $("options").open = true;
      showError(errorText(r.status, body, req.offset));
      $("status").textContent = "";
      return false;
    }
    history.push({ turns, answer: body });
    return true;
  } catch (e) {
    showError(`could not reach the server (${e.message || e}).`);
    $("status").textContent = "";
    return false;
  } finally {
    setBusy(false);
    render();
  }
}

function setBusy(on) {
  busy = on;
  $("submit").disabled = on;
  $("undo").disabled = on || history.length < 2;
  $("restart").disabled = on || history.length < 2;
  for (const b of document.querySelectorAll("#replies button")) b.disabled = on;
  document.body.classList.toggle("busy", on);
}

function renderDialog(turns, pending = 0) {
  const list = $("dialog");
  list.replaceChildren(...turns.map((t, i) => {
    const li = document.createElement("li");
    li.className = `turn ${speaker(i).toLowerCase()}` + (i >= turns.length - pending ? " pending" : "");
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = speaker(i);
    who.setAttribute("aria-label", `speaker ${speaker(i)}:`);
    const bubble = document.createElement("div");
    bubble.className = "bubble";
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = t.text;
    const origin = document.createElement("span");
    origin.className = "origin";
    origin.textContent = t.origin === "typed" ? "typed" : `reply ${t.index} of ${t.of}` +
      (t.seed === null ? "" : ` · seed ${t.seed}`);
    bubble.append(text, origin);
    li.append(who, bubble);
    return li;
  }));
  $("empty").hidden = turns.length > 0;
}

function render() {
  const { turns, answer } = current();
  renderDialog(turns);
  const next = speaker(turns.length);
  $("context-label").textContent = turns.length === 0 ? "What does the other person say?"
    : `Or type the next turn (${next}) yourself`;
  $("undo").disabled = busy || history.length < 2;
  $("restart").disabled = busy || history.length < 2;
  $("choices").hidden = answer === null;
  if (answer === null) {
    $("replies").replaceChildren();
    $("status").textContent = "";
    return;
  }
  $("replies-h").textContent = answer.replies.length ? `Next turn (${next}): choose one` : "No reply this time";
  const hadFocus = $("replies").contains(document.activeElement) || document.activeElement === document.body;
  $("replies").replaceChildren(...answer.replies.map((reply, i) => choiceItem(reply, i, answer)));
  const plot = document.querySelector(".plot");
  plot.hidden = !answer.replies.length || !answer.prior || !answer.replies[0].latent;
  highlightPoint = plot.hidden ? () => {} : renderPlot($("latent-plot"), $("plot-caption"), answer, {
    hover: (i) => highlight(i), choose: (i) => choose(i),
  });
  $("status").textContent = `${answer.n_returned} of ${answer.n_requested} replies` +
    (answer.duplicates_dropped ? `, ${answer.duplicates_dropped} duplicates dropped` : "") +
    ` · seed ${answer.seed} · ${Math.round(answer.timing_ms.total)} ms`;
  // keyboard users who chose a reply continue from the new replies
  if (hadFocus && answer.replies.length) $("replies").querySelector("button").focus();
}

function choiceItem(reply, i, answer) {
  const li = document.createElement("li");
  li.className = "reply";
  li.dataset.index = String(i + 1);
  const button = document.createElement("button");
  button.type = "button";
  button.className = "choice";
  button.disabled = busy;
  const badge = document.createElement("span");
  badge.className = "badge";
  badge.style.background = color(i);
  badge.textContent = String(i + 1);
  badge.setAttribute("aria-label", `reply ${i + 1}:`);
  const text = document.createElement("span");
  text.className = "text";
  text.textContent = reply.text || "(empty)";
  const meta = document.createElement("span");
  meta.className = "meta";
  const score = document.createElement("span");
  score.className = "score";
  score.textContent = reply.score.toFixed(3);
  score.title = `mean log-probability per token; ${reply.finish_reason}`;
  const seed = document.createElement("span");
  seed.className = "seed";
  seed.textContent = reply.seed === null ? "" : `seed ${reply.seed}`;
  seed.title = "replay this reply: this seed, n = 1, rerank off";
  meta.append(score, seed);
  button.append(badge, text, meta);
  button.addEventListener("click", () => choose(i));
  for (const [ev, k] of [["mouseenter", i], ["focus", i], ["mouseleave", null], ["blur", null]]) {
    button.addEventListener(ev, () => highlight(k));
  }
  li.append(button);
  return li;
}

function highlight(i) {
  document.querySelectorAll("#replies li.reply").forEach((li, j) => li.classList.toggle("active", j === i));
  highlightPoint(i);
}

function choose(i) {
  const { answer } = current();
  if (busy || !answer || !answer.replies[i]) return;
  const reply = answer.replies[i];
  ask([{ text: reply.text, origin: "reply", index: i + 1, of: answer.replies.length, seed: reply.seed }]);
}

async function say(event) {
  event.preventDefault();
  const lines = $("context").value.split("\n").map((t) => t.trim()).filter((t) => t.length > 0);
  if (lines.length === 0) { showError("type a turn first."); $("context").focus(); return; }
  if (await ask(lines.map((text) => ({ text, origin: "typed" })))) $("context").value = "";
  $("context").focus();
}

$("form").addEventListener("submit", say);
$("context").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); $("form").requestSubmit(); }
});
$("undo").addEventListener("click", () => {
  if (busy || history.length < 2) return;
  history.pop();
  showError("");
  render();
  if ($("undo").disabled) $("context").focus(); else $("undo").focus();
});
$("restart").addEventListener("click", () => {
  if (busy) return;
  history = [history[0]];
  showError("");
  render();
  $("context").focus();
});
// 1-9 choose a reply, unless the key is typed into a field
document.addEventListener("keydown", (e) => {
  if (e.ctrlKey || e.metaKey || e.altKey || !/^[1-9]$/.test(e.key)) return;
  if (e.target.closest && e.target.closest("input, textarea, select")) return;
  if (!$("choices").hidden) choose(Number(e.key) - 1);
});
render();
loadInfo();
