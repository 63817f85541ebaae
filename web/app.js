// MVSS-Net web page: upload, poll for progress, draw maps; threshold and opacity are
// applied here, in the browser, without running the model again. No external assets.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const thresholdInput = $("#threshold");
const opacityInput = $("#opacity");
const cards = [];
const running = new Set();  // job ids this page is waiting for (cancelled if the page goes)

function threshold() { return parseFloat(thresholdInput.value); }
function opacity() { return parseFloat(opacityInput.value); }

async function describeModel() {
  try {
    const r = await fetch("/api/model");
    const m = await r.json();
    const kind = { localization: "binary localisation", three_class: "three classes (tampered / desensitised)",
                   classification: "classifier" }[m.kind] || m.kind;
    $("#model-info").textContent =
      `${m.name}: ${kind}, ${m.backbone}, ${m.precision}${m.fast ? " fast path" : ""} on ${m.device}`;
    // the page starts at the model's own pixel threshold (chosen on a validation set
    // where the checkpoint or a thresholds file says so)
    thresholdInput.value = m.pixel_threshold;
    $("#threshold-value").textContent = Number(m.pixel_threshold).toFixed(3);
    const c = m.calibration;
    $("#thresholds-info").textContent =
      `Thresholds: ${m.thresholds_source}. ` + (c
        ? `Image scores are calibrated on ${c.fitted_on} (${c.images} images).`
        : "Image scores are not calibrated: a score is not a probability.");
  } catch (e) {
    $("#model-info").textContent = "the server does not answer: is serve.py running?";
  }
}

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the browser cannot display this file"));
    img.src = src;
  });
}

async function loadFile(file) {  // an object URL only as long as the decoding needs it
  const url = URL.createObjectURL(file);
  try { return await loadImage(url); } finally { URL.revokeObjectURL(url); }
}

function pixelsOf(img, width, height) {
  const c = document.createElement("canvas");
  c.width = width; c.height = height;
  const ctx = c.getContext("2d");
  ctx.drawImage(img, 0, 0, width, height);
  return ctx.getImageData(0, 0, width, height).data;
}

class Card {
  constructor(file) {
    this.file = file;
    this.el = $("#card-template").content.firstElementChild.cloneNode(true);
    $(".name", this.el).textContent = file.name;
    $("#results").prepend(this.el);
    $(".gt-file", this.el).addEventListener("change", (e) => this.compareWith(e.target.files[0]));
    // downloads are made when clicked, from the canvases as they are then
    const stem = file.name.replace(/\.[^.]+$/, "");
    for (const [cls, canvas, suffix] of [[".download-binary", "canvas.binary", "_binary.png"],
                                         [".download-overlay", "canvas.overlay", "_overlay.png"]]) {
      const a = $(cls, this.el);
      a.download = stem + suffix;
      a.addEventListener("click", () => { a.href = $(canvas, this.el).toDataURL("image/png"); });
    }
  }

  status(text, progress) {
    $(".status-text", this.el).textContent = text;
    if (progress !== undefined) $("progress", this.el).value = progress;
  }

  fail(message) {
    $(".status", this.el).hidden = true;
    const p = $(".error", this.el);
    p.textContent = message;
    p.hidden = false;
  }

  async run() {
    const form = new FormData();
    form.append("image", this.file);
    form.append("resize", $("#resize").value);
    form.append("threshold", thresholdInput.value);
    this.status("uploading…", 0);
    let job;
    for (;;) {
      const r = await fetch("/api/jobs", { method: "POST", body: form });
      const body = await r.json().catch(() => ({}));
      if (r.status === 503) {
        const wait = parseInt(r.headers.get("Retry-After") || "5", 10);
        this.status(`the server is busy; trying again in ${wait} s…`);
        await new Promise((ok) => setTimeout(ok, wait * 1000));
        continue;
      }
      if (!r.ok) { this.fail(body.error || `the server answered ${r.status}`); return; }
      job = body;
      break;
    }
    running.add(job.id);
    try {
      for (;;) {
        await new Promise((ok) => setTimeout(ok, 300));
        const r = await fetch(`/api/jobs/${job.id}`);
        const body = await r.json().catch(() => ({}));
        if (!r.ok) { this.fail(body.error || `the server answered ${r.status}`); return; }
        if (body.state === "done") { await this.show(body.result); return; }
        if (body.state === "error" || body.state === "cancelled") { this.fail(body.error || "the analysis stopped"); return; }
        const pct = Math.round(100 * body.progress);
        this.status(body.state === "queued" ? "waiting for the model…" : `analysing… ${pct} %`, body.progress);
      }
    } finally {
      running.delete(job.id);
    }
  }

  async show(result) {
    this.result = result;
    const w = result.width, h = result.height;
    this.map = pixelsOf(await loadImage("data:image/png;base64," + result.map_png), w, h);
    this.classes = result.classes_png
      ? pixelsOf(await loadImage("data:image/png;base64," + result.classes_png), w, h) : null;
    try {  // what the server decoded when the browser cannot draw the file (TIFF, say)
      const img = result.preview_jpg
        ? await loadImage("data:image/jpeg;base64," + result.preview_jpg)
        : await loadFile(this.file);
      this.photo = pixelsOf(img, w, h);
    } catch (e) {
      this.photo = null;  // neither drawable: the map is shown alone
    }
    $(".status", this.el).hidden = true;
    $(".result", this.el).hidden = false;
    $(".legend", this.el).hidden = !this.classes;
    const link = $(".download-map", this.el);
    link.href = "data:image/png;base64," + result.map_png;
    link.download = this.file.name.replace(/\.[^.]+$/, "") + "_map.png";
    const t = result.timings;
    $(".details", this.el).textContent =
      `image-level score ${result.score.toFixed(3)}` +
      (result.calibrated ? ` (calibrated: ${(100 * result.probability).toFixed(0)} %)` : " (uncalibrated)") +
      ` · ${w}×${h} px · ` +
      `${result.resize === "none" ? "full resolution" : "resized to " + result.resize} · ` +
      `${(t.inference_s + (t.decode_s || 0)).toFixed(2)} s`;
    this.redraw();
  }

  redraw() {
    if (!this.result) return;
    const w = this.result.width, h = this.result.height, cut = threshold() * 255, alpha = opacity();
    // the verdict is the server's: the image threshold, and words that claim only what
    // was measured (a calibrated frequency, or an uncalibrated score's side of the cut)
    const v = $(".verdict", this.el);
    v.textContent = this.result.verdict.charAt(0).toUpperCase() + this.result.verdict.slice(1) + ".";
    v.classList.toggle("flagged", this.result.manipulated);
    const over = $("canvas.overlay", this.el), bin = $("canvas.binary", this.el);
    for (const c of [over, bin]) { c.width = w; c.height = h; }
    const o = over.getContext("2d").createImageData(w, h), b = bin.getContext("2d").createImageData(w, h);
    const m = this.map, p = this.photo, k = this.classes;
    for (let i = 0; i < w * h * 4; i += 4) {
      const level = m[i], on = level > cut;
      const base = p ? [p[i], p[i + 1], p[i + 2]] : [128, 128, 128];
      // three classes: the likelier of tampered (red) and desensitised (blue) where
      // P(manipulated) passes the threshold
      const colour = k && k[i] === 2 ? [30, 90, 230] : [230, 30, 30];
      // above the threshold: full opacity; below: a faint tint that follows the probability
      const a = on ? alpha : 0.35 * alpha * level / 255;
      for (let c = 0; c < 3; c++) o.data[i + c] = Math.round(base[c] * (1 - a) + colour[c] * a);
      o.data[i + 3] = 255;
      const g = on ? 255 : 0;
      b.data[i] = b.data[i + 1] = b.data[i + 2] = g; b.data[i + 3] = 255;
    }
    over.getContext("2d").putImageData(o, 0, 0);
    bin.getContext("2d").putImageData(b, 0, 0);
    if (this.truth) this.score();
  }

  async compareWith(file) {
    if (!file || !this.result) return;
    // the server reads the mask by the toolkit's rules (grey, index 0/1/2, the seed's
    // colours), so the page scores it as the evaluation scripts do
    const form = new FormData();
    form.append("mask", file);
    form.append("width", this.result.width);
    form.append("height", this.result.height);
    const out = $(".gt-metrics", this.el);
    try {
      const r = await fetch("/api/mask", { method: "POST", body: form });
      const body = await r.json().catch(() => ({}));
      if (!r.ok) { out.textContent = body.error || `the server answered ${r.status}`; return; }
      const img = await loadImage("data:image/png;base64," + body.mask_png);
      this.truth = pixelsOf(img, this.result.width, this.result.height);
      this.score();
    } catch (e) {
      out.textContent = "cannot read this mask: " + e.message;
    }
  }

  score() {
    const m = this.map, t = this.truth, cut = threshold() * 255;
    let tp = 0, fp = 0, fn = 0;
    for (let i = 0; i < m.length; i += 4) {
      const truth = t[i] > 127, pred = m[i] > cut;
      if (pred && truth) tp++; else if (pred) fp++; else if (truth) fn++;
    }
    const f1 = tp + fp + fn ? 2 * tp / (2 * tp + fp + fn) : 1, iou = tp + fp + fn ? tp / (tp + fp + fn) : 1;
    $(".gt-metrics", this.el).textContent = `pixel-F1 ${f1.toFixed(3)} · IoU ${iou.toFixed(3)}`;
  }
}

async function submit(files) {
  const fresh = Array.from(files).map((f) => new Card(f));
  cards.push(...fresh);
  for (const card of fresh) {  // one at a time: the server has one model
    try { await card.run(); } catch (e) { card.fail("the server cannot be reached: " + e.message); }
  }
}

function bindSlider(input, output, digits) {
  input.addEventListener("input", () => {
    output.textContent = parseFloat(input.value).toFixed(digits);
    for (const c of cards) c.redraw();
  });
}

bindSlider(thresholdInput, $("#threshold-value"), 3);
bindSlider(opacityInput, $("#opacity-value"), 2);
$("#files").addEventListener("change", (e) => submit(e.target.files));
const drop = $("#drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); submit(e.dataTransfer.files); });
// a page that goes away cancels what it was waiting for (the server also drops jobs
// that are no longer polled)
window.addEventListener("pagehide", () => {
  for (const id of running) fetch(`/api/jobs/${id}`, { method: "DELETE", keepalive: true });
});
describeModel();
