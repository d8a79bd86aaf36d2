// fewshot explorers: what every page shares. No framework, no build step.
// All learning happens on the server (fewshot's own ProtoNet, MAML and transformer); pages only send inputs and
// draw answers.
"use strict";

// One colour per class (up to 10 ways), distinct on white and legible as region tints.
const CLASS_COLORS = ["#3b73c8", "#e8772e", "#d6404e", "#4aa7a3", "#4f9a3c",
                      "#d9b526", "#9b62b5", "#ef8aa8", "#8d6244", "#7c8796"];

// POST (with a body) or GET a JSON endpoint; a 4xx/5xx answer becomes an Error carrying the server's message.
async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body),
  };
  let response;
  try {
    response = await fetch(path, options);
  } catch (e) {
    throw new Error("cannot reach the fewshot server; is `fewshot serve` still running?");
  }
  let data = null;
  try { data = await response.json(); } catch (e) { /* not JSON: reported below */ }
  if (!response.ok) {
    throw new Error((data && data.error) || `${response.status} ${response.statusText}`);
  }
  return data;
}

function showError(message) {
  const box = document.getElementById("error");
  if (box) box.textContent = message || "";
}

// The page's navigation bar; `here` is the path of the current page.
function header(here) {
  const links = [["/protonet", "ProtoNet explorer"], ["/maml", "MAML adaptation"], ["/omniglot", "One-shot Omniglot"],
                 ["/incontext", "In-context learning"]];
  const nav = links.map(([href, text]) =>
    `<a href="${href}"${href === here ? ' class="here"' : ""}>${text}</a>`).join("");
  document.body.insertAdjacentHTML("afterbegin",
    `<header><a class="brand" href="/">fewshot explorers</a><nav>${nav}</nav></header>`);
}

// Tick positions at 1, 2 or 5 times a power of ten, about `count` of them between lo and hi.
function niceTicks(lo, hi, count) {
  const raw = (hi - lo) / count;
  const power = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 5, 10].map(m => m * power).find(s => s >= raw);
  const ticks = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + 1e-9; t += step) ticks.push(Math.round(t / step) * step);
  return ticks;
}

// A canvas with data coordinates, axes, ticks and grid lines, sharp on high-density screens.
class Plot {
  constructor(canvas, {xmin, xmax, ymin, ymax, xlabel = "", ylabel = "", title = ""}) {
    Object.assign(this, {canvas, xmin, xmax, ymin, ymax, xlabel, ylabel, title});
    this.margin = {left: 46, right: 14, top: title ? 28 : 12, bottom: 40};
    const ratio = window.devicePixelRatio || 1;
    this.width = canvas.clientWidth || canvas.width;
    this.height = canvas.clientHeight || canvas.height;
    canvas.width = Math.round(this.width * ratio);
    canvas.height = Math.round(this.height * ratio);
    canvas.style.width = this.width + "px";
    canvas.style.height = this.height + "px";
    this.ctx = canvas.getContext("2d");
    this.ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  }
  get left() { return this.margin.left; }
  get right() { return this.width - this.margin.right; }
  get top() { return this.margin.top; }
  get bottom() { return this.height - this.margin.bottom; }
  px(x) { return this.left + (x - this.xmin) / (this.xmax - this.xmin) * (this.right - this.left); }
  py(y) { return this.bottom - (y - this.ymin) / (this.ymax - this.ymin) * (this.bottom - this.top); }
  // Data coordinates of a mouse event, or null outside the plotting area.
  dataAt(event) {
    const box = this.canvas.getBoundingClientRect();
    const u = event.clientX - box.left, v = event.clientY - box.top;
    if (u < this.left || u > this.right || v < this.top || v > this.bottom) return null;
    return [this.xmin + (u - this.left) / (this.right - this.left) * (this.xmax - this.xmin),
            this.ymin + (this.bottom - v) / (this.bottom - this.top) * (this.ymax - this.ymin)];
  }
  clear() {
    const c = this.ctx;
    c.clearRect(0, 0, this.width, this.height);
    c.fillStyle = "#fff";
    c.fillRect(0, 0, this.width, this.height);
  }
  // Grid lines (under the data); call axes() after drawing for the frame, ticks and labels.
  grid() {
    const c = this.ctx;
    c.save();
    c.strokeStyle = "#eceff3";
    c.lineWidth = 1;
    for (const t of niceTicks(this.xmin, this.xmax, 8)) this.line(this.px(t), this.top, this.px(t), this.bottom);
    for (const t of niceTicks(this.ymin, this.ymax, 7)) this.line(this.left, this.py(t), this.right, this.py(t));
    c.strokeStyle = "#c9d0da";
    if (this.ymin < 0 && this.ymax > 0) this.line(this.left, this.py(0), this.right, this.py(0));
    if (this.xmin < 0 && this.xmax > 0) this.line(this.px(0), this.top, this.px(0), this.bottom);
    c.restore();
  }
  axes() {
    const c = this.ctx;
    c.save();
    c.strokeStyle = "#8a94a3";
    c.lineWidth = 1;
    c.strokeRect(this.left + 0.5, this.top + 0.5, this.right - this.left - 1, this.bottom - this.top - 1);
    c.fillStyle = "#4a5361";
    c.font = "12px system-ui, 'Liberation Sans', sans-serif";
    c.textAlign = "center";
    c.textBaseline = "top";
    for (const t of niceTicks(this.xmin, this.xmax, 8)) {
      this.line(this.px(t), this.bottom, this.px(t), this.bottom + 4);
      c.fillText(String(t), this.px(t), this.bottom + 6);
    }
    c.textAlign = "right";
    c.textBaseline = "middle";
    for (const t of niceTicks(this.ymin, this.ymax, 7)) {
      this.line(this.left - 4, this.py(t), this.left, this.py(t));
      c.fillText(String(t), this.left - 7, this.py(t));
    }
    c.font = "13px system-ui, 'Liberation Sans', sans-serif";
    c.textAlign = "center";
    c.textBaseline = "bottom";
    c.fillText(this.xlabel, (this.left + this.right) / 2, this.height - 4);
    if (this.title) {
      c.font = "600 14px system-ui, 'Liberation Sans', sans-serif";
      c.textBaseline = "top";
      c.fillStyle = "#1d2430";
      c.fillText(this.title, (this.left + this.right) / 2, 6);
    }
    c.translate(13, (this.top + this.bottom) / 2);
    c.rotate(-Math.PI / 2);
    c.textBaseline = "middle";
    c.font = "13px system-ui, 'Liberation Sans', sans-serif";
    c.fillStyle = "#4a5361";
    c.fillText(this.ylabel, 0, 0);
    c.restore();
  }
  // Restricts drawing to the plotting area until the matching restore().
  clip() {
    this.ctx.save();
    this.ctx.beginPath();
    this.ctx.rect(this.left, this.top, this.right - this.left, this.bottom - this.top);
    this.ctx.clip();
  }
  line(x0, y0, x1, y1) {
    const c = this.ctx;
    c.beginPath();
    c.moveTo(x0, y0);
    c.lineTo(x1, y1);
    c.stroke();
  }
  // A polyline through data points xs[i], ys[i].
  curve(xs, ys) {
    const c = this.ctx;
    c.beginPath();
    xs.forEach((x, i) => (i ? c.lineTo(this.px(x), this.py(ys[i])) : c.moveTo(this.px(x), this.py(ys[i]))));
    c.stroke();
  }
  dot(x, y, radius, fill, stroke = "#fff", width = 1.5) {
    const c = this.ctx;
    c.beginPath();
    c.arc(this.px(x), this.py(y), radius, 0, 2 * Math.PI);
    if (fill) { c.fillStyle = fill; c.fill(); }
    if (stroke) { c.strokeStyle = stroke; c.lineWidth = width; c.stroke(); }
  }
}

// Horizontal probability bars into `element`: one row per class, the most probable in bold.
function probabilityBars(element, probabilities, labels, colors) {
  const top = probabilities.indexOf(Math.max(...probabilities));
  element.innerHTML = probabilities.map((p, k) => `
    <div class="bar${k === top ? " top" : ""}" data-class="${k}">
      <span>${labels[k]}</span>
      <span class="track"><span class="fill" style="display:block;width:${(100 * p).toFixed(1)}%;background:${colors[k]}"></span></span>
      <span class="value">${(100 * p).toFixed(1)}%</span>
    </div>`).join("");
}

function fixed(value, digits = 3) {
  return value === undefined || value === null ? "–" : Number(value).toFixed(digits);
}
