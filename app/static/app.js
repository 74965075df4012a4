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

async function submit(event) {
  event.preventDefault();
  const turns = $("context").value.split("\n").map((t) => t.trim()).filter((t) => t.length > 0);
  const list = $("replies");
  list.replaceChildren();
  if (turns.length === 0) { $("status").textContent = "Type at least one turn."; return; }
  const req = { context: turns, n: Number($("n").value || 5), strategy: $("strategy").value,
                latent_temperature: Number($("latent_temperature").value || 1) };
  if ($("seed").value !== "") req.seed = Number($("seed").value);
  const headers = { "Content-Type": "application/json" };
  if ($("api_key").value) headers.Authorization = `Bearer ${$("api_key").value}`;
  $("status").textContent = "Thinking...";
  $("submit").disabled = true;
  try {
    const r = await fetch("/respond", { method: "POST", headers, body: JSON.stringify(req) });
    const body = await r.json().catch(() => null);
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
      score.title = `mean log-probability per token; seed ${reply.seed}, ${reply.finish_reason}`;
      li.append(text, score);
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
