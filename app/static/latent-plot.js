// The latent picture beside the replies: each reply's latent code z in two latent dimensions, with the
// prior's 1- and 2-sigma ellipses.
//
// The two dimensions are the ones where the prior p(z | dialog) is widest (largest std), a plain coordinate
// projection rather than a PCA of the sampled codes. Two reasons: the prior is a diagonal Gaussian, so its
// marginal in two coordinates is exactly the drawn ellipse (axis-aligned, semi-axes k * std) and every point
// sits at its code's true values; and nothing is fitted to the samples, so the points fall where the prior
// says they fall. A PCA of 5 codes in 64 dimensions would choose the directions that spread those 5 codes
// most: at latent temperature 0.7 it shows them a median 3.9 sigma from the centre (0.84 in a fixed plane;
// simulated), as if they came from outside the prior they were drawn from.
// Axes have equal scale, so the ellipses keep the prior's true shape.
"use strict";

const NS = "http://www.w3.org/2000/svg";
const SIZE = 300;  // viewBox width and height
const PAD = { left: 30, right: 12, top: 12, bottom: 30 };
const R = 10;  // marker radius
// Distinct on white and for common colour-vision deficiencies (Okabe-Ito, darkened); numbers tell repeats apart.
export const COLORS = ["#0072b2", "#d55e00", "#009e73", "#cc79a7", "#b8860b", "#56b4e9", "#6a3d9a", "#444444"];

export const color = (i) => COLORS[i % COLORS.length];

/** Indices of the k largest values of std, largest first (the lower index on ties). */
export function widestDims(std, k = 2) {
  return std.map((s, i) => [s, i]).sort((a, b) => b[0] - a[0] || a[1] - b[1]).slice(0, k).map((p) => p[1]);
}

function el(name, attrs = {}, parent = null) {
  const e = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  if (parent) parent.append(e);
  return e;
}

const fmt = (x) => (Math.abs(x) < 0.005 ? "0.00" : x.toFixed(2));

/** What to draw: per reply its (x, y), the centre and spread of the prior in those two dimensions (a model
 * with one latent dimension gets y = 0). ``body`` is a /respond answer with return_latents. */
export function projection(body) {
  const { mean, std, latent_temperature: temperature } = body.prior;
  const [a, b] = std.length > 1 ? widestDims(std) : [0, null];
  const y = (z) => (b === null ? 0 : z[b]);
  return {
    dims: [a, b], temperature,
    centre: [mean[a], b === null ? 0 : mean[b]], spread: [std[a], b === null ? std[a] : std[b]],
    points: body.replies.map((r) => [r.latent[a], y(r.latent)]),
  };
}

/** Draw the picture into ``svg`` and its caption; ``on.hover(i | null)`` and ``on.choose(i)`` link points and
 * replies. Returns ``highlight(i | null)``, to be called when a reply is hovered or focused. */
export function render(svg, caption, body, on) {
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${SIZE} ${SIZE}`);
  const p = projection(body);
  const [cx, cy] = p.centre, [sx, sy] = p.spread;
  // half-extent in each direction: the 2-sigma ellipse and every point, with a margin
  let hx = 2.2 * sx, hy = 2.2 * sy;
  for (const [x, y] of p.points) { hx = Math.max(hx, 1.12 * Math.abs(x - cx)); hy = Math.max(hy, 1.12 * Math.abs(y - cy)); }
  const w = SIZE - PAD.left - PAD.right, h = SIZE - PAD.top - PAD.bottom;
  const scale = Math.min(w / (2 * hx || 1), h / (2 * hy || 1));  // equal scale on both axes
  const ox = PAD.left + w / 2, oy = PAD.top + h / 2;
  const X = (x) => ox + (x - cx) * scale, Y = (y) => oy - (y - cy) * scale;

  el("title", {}, svg).textContent = "Latent codes of the replies";
  const desc = el("desc", {}, svg);
  el("rect", { x: PAD.left, y: PAD.top, width: w, height: h, class: "frame" }, svg);
  el("line", { x1: PAD.left, x2: PAD.left + w, y1: oy, y2: oy, class: "axis" }, svg);
  el("line", { x1: ox, x2: ox, y1: PAD.top, y2: PAD.top + h, class: "axis" }, svg);
  el("ellipse", { cx: ox, cy: oy, rx: 2 * sx * scale, ry: 2 * sy * scale, class: "sigma2" }, svg);
  el("ellipse", { cx: ox, cy: oy, rx: sx * scale, ry: sy * scale, class: "sigma1" }, svg);
  for (const k of [1, 2]) {  // ring labels at 45 degrees, just outside each ring
    el("text", { x: ox + k * sx * scale * Math.SQRT1_2 + 3, y: oy - k * sy * scale * Math.SQRT1_2 - 3,
                 class: "ring-label" }, svg).textContent = `${k}σ`;
  }
  el("path", { d: `M${ox - 5},${oy}h10M${ox},${oy - 5}v10`, class: "mean" }, svg);
  const [a, b] = p.dims;
  el("text", { x: PAD.left + w, y: SIZE - 8, class: "axis-label", "text-anchor": "end" }, svg).textContent =
    `z[${a}]  (σ ${sx.toFixed(2)})`;
  if (b !== null) {
    el("text", { x: 12, y: PAD.top + h, class: "axis-label", transform: `rotate(-90 12 ${PAD.top + h})` }, svg)
      .textContent = `z[${b}]  (σ ${sy.toFixed(2)})`;
  }

  // Markers at the codes' positions; one that would cover an earlier one moves aside, tied to its true
  // position (a small dot) by a line, so coinciding codes (latent temperature 0) stay readable.
  const placed = [];
  const groups = body.replies.map((reply, i) => {
    const [x, y] = p.points[i];
    const tx = X(x), ty = Y(y);
    let mx = tx, my = ty;
    const free = (u, v) => placed.every(([pu, pv]) => Math.hypot(u - pu, v - pv) >= 2 * R + 1);
    for (let ring = 1; !free(mx, my) && ring < 6; ring++) {
      for (let k = 0; k < 8; k++) {
        const t = (k / 8) * 2 * Math.PI + ring;
        const u = tx + Math.cos(t) * ring * (2 * R + 2), v = ty + Math.sin(t) * ring * (2 * R + 2);
        if (free(u, v)) { mx = u; my = v; break; }
      }
    }
    placed.push([mx, my]);
    const g = el("g", { class: "point", "data-reply": i + 1, "data-x": x, "data-y": y }, svg);
    el("title", {}, g).textContent = `${i + 1}: ${reply.text}\nz[${a}] = ${fmt(x)}` +
      (b === null ? "" : `, z[${b}] = ${fmt(y)}`);
    if (mx !== tx || my !== ty) {
      el("line", { x1: tx, y1: ty, x2: mx, y2: my, class: "leader", stroke: color(i) }, g);
      el("circle", { cx: tx, cy: ty, r: 2.5, fill: color(i) }, g);
    }
    el("circle", { cx: mx, cy: my, r: R, fill: color(i), class: "marker" }, g);
    el("text", { x: mx, y: my, class: "marker-label", "text-anchor": "middle", "dominant-baseline": "central" }, g)
      .textContent = String(i + 1);
    g.addEventListener("mouseenter", () => on.hover(i));
    g.addEventListener("mouseleave", () => on.hover(null));
    g.addEventListener("click", () => on.choose(i));
    return g;
  });

  desc.textContent = `${body.replies.length} points, one per reply, numbered as the replies, in latent ` +
    `dimensions ${a}` + (b === null ? "" : ` and ${b}`) + ", with the prior's 1- and 2-sigma ellipses.";
  const t = p.temperature;
  caption.textContent = `Each numbered point is the latent code of that reply, in the two latent dimensions ` +
    `where the prior p(z | dialog) is widest (equal scales). +: the prior's mean; rings: its 1σ and 2σ ellipses.` +
    (t === null ? "" : ` Codes drawn at latent temperature ${t}: mean + ${t} σ × noise.`);

  return (i) => {
    groups.forEach((g, j) => g.classList.toggle("active", j === i));
    if (i !== null && groups[i] && svg.lastChild !== groups[i]) svg.append(groups[i]);  // on top of the others
  };
}
