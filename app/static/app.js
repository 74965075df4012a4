// Demo page: POST /respond with the typed turns and show the replies, best first.
"use strict";

const $ = (id) => document.getElementById(id);

async function loadInfo() {
  try {
    const r = await fetch("/info");
    if (!r.ok) return;
    const info = await r.json();
    $("model").textContent = `model ${info.model.name} (${info.model.sha256.slice(0, 12)}) on ${info.device}`;
    $("n").max = info.limits.max_n;
  } catch (e) { /* the page still works without it */ }
}

function errorText(status, body) {
  if (body && Array.isArray(body.detail)) {
    return body.detail.map((d) => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("; ");
  }
  return (body && body.detail) || `HTTP ${status}`;
}

// JSON.parse would round 20-digit seeds to the nearest double: read every "seed" value as its digits.
function exactSeeds(text) {
  return JSON.parse(text.replace(/"seed":\s*([0-9]+)/g, '"seed":"$1"'));
}

async function submit(event) {
  event.preventDefault();
  const turns = $("context").value.split("\n").map((t) => t.trim()).filter((t) => t.length > 0);
  const list = $("replies");
  list.replaceChildren();
  if (turns.length === 0) { $("status").textContent = "Type at least one turn."; return; }
  const req = { context: turns, n: Number($("n").value || 5), strategy: $("strategy").value };
  // empty: the server's default latent temperature
  if ($("latent_temperature").value !== "") req.latent_temperature = Number($("latent_temperature").value);
  // Seeds go up to 2^63 - 2, past the 2^53 that a JavaScript number holds exactly: they travel as the
  // digits typed (spliced into the JSON text) and come back as strings (see exactSeeds).
  const seedText = $("seed").value.trim();
  if (seedText !== "" && !/^[0-9]{1,19}$/.test(seedText)) {
    $("status").textContent = "The seed is a whole number from 0 to 9223372036854775806."; return;
  }
  const headers = { "Content-Type": "application/json" };
  if ($("api_key").value) headers.Authorization = `Bearer ${$("api_key").value}`;
  $("status").textContent = "Thinking...";
  $("submit").disabled = true;
  try {
    let payload = JSON.stringify(req);
    if (seedText !== "") payload = payload.replace(/}$/, `,"seed":${seedText}}`);
    const r = await fetch("/respond", { method: "POST", headers, body: payload });
    const body = await r.text().then(exactSeeds).catch(() => null);
    if (!r.ok) { $("status").textContent = `Error: ${errorText(r.status, body)}`; return; }
    for (const reply of body.replies) {
      const li = document.createElement("li");
      li.className = "reply";
      const text = document.createElement("span");
      text.className = "text";
      text.textContent = reply.text || "(empty)";
      const score = document.createElement("span");
      score.className = "score";
      score.textContent = reply.score.toFixed(3);
      score.title = `mean log-probability per token; ${reply.finish_reason}`;
      const seed = document.createElement("span");
      seed.className = "seed";
      seed.textContent = reply.seed === null ? "" : `seed ${reply.seed}`;
      seed.title = "replay this reply: this seed, n = 1, reranking off";
      li.append(text, score, seed);
      list.append(li);
    }
    $("status").textContent = `${body.n_returned} of ${body.n_requested} replies` +
      (body.duplicates_dropped ? `, ${body.duplicates_dropped} duplicates dropped` : "") +
      ` · seed ${body.seed} · ${Math.round(body.timing_ms.total)} ms`;
  } catch (e) {
    $("status").textContent = `Error: ${e}`;
  } finally {
    $("submit").disabled = false;
  }
}

$("form").addEventListener("submit", submit);
loadInfo();
